//! The `ccm` command: argument parsing (clap) and one function per verb.
//!
//! Commands that change state go through the daemon's API when it runs and write SQLite
//! directly when it does not ([`Backend`]); read-only commands (`dump-state`, `backup`,
//! `doctor`) always read the database file.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ccm_schema::types::short_id;
use ccm_schema::{Context, Task, TaskEvent, TaskState};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::client::Client;
use crate::config::{Config, PROJECT_TEMPLATE};
use crate::home::Home;
use crate::hooks::event::System;
use crate::status::{StateDump, Status};
use crate::store::{
    ContextProbe, NewTask, RetryPolicy, Store, StoreError, StoredHookEvent, TaskDetail, TaskFilter,
};

#[derive(Debug, Parser)]
#[command(name = "ccm", version, about = "Local-first orchestrator for AI coding agents")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `ccm hook` alone: a short-lived process on every agent's path parses its own arguments
/// without building the whole command tree (see `main.rs`).
#[derive(Debug, Parser)]
#[command(name = "ccm hook", version)]
pub struct HookCli {
    #[command(flatten)]
    pub args: HookArgs,
}

/// The arguments of `ccm hook`.
#[derive(Debug, Default, Args)]
pub struct HookArgs {
    /// The CLI whose hook runs this: claude, gemini or codex (detected when omitted).
    #[arg(long)]
    agent: Option<String>,
    /// The event, for CLIs that pass it as an argument (Codex notify).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    payload: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up ccm in the current git repository (.ccm/) and register it as a context.
    Init,
    /// Run the daemon in the foreground (the form a service supervisor runs).
    Up,
    /// Show the node: daemon, tasks per state, alerts, decisions, outbox.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check tmux, git, the config, the database and the port, and say how to fix problems.
    Doctor,
    /// Create, list, show, cancel and retry tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Repository checkouts registered on this system.
    #[command(subcommand)]
    Context(ContextCommand),
    /// Agents: list them, attach a terminal to one, kill one.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Hook entry point for the agent CLIs: reads one event (stdin, or the last argument for
    /// Codex's notify), stores it, prints a decision when a policy made one. Always exits 0.
    Hook(HookArgs),
    /// Install ccm's hooks into the repository's agent CLI settings (Claude Code, Gemini CLI,
    /// Codex), show them, or remove exactly what was installed.
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// The sync engine: enrol this system, show the lanes, send now, pause and resume.
    #[command(subcommand)]
    Sync(crate::sync::SyncCommand),
    /// Files claimed by tasks (strict ownership) and the change requests refused writes left.
    Claims {
        #[arg(long)]
        json: bool,
    },
    /// List the decisions waiting for you, or answer one: `ccm decide ID retry`.
    Decide {
        /// Decision id (or unique prefix) to answer.
        #[arg(value_parser = not_empty)]
        id: Option<String>,
        /// The answer: one of the decision's options.
        answer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the whole state of the node, human-readable (or --json).
    DumpState {
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the database to FILE, even while the daemon runs.
    Backup { file: PathBuf },
    /// Open the web dashboard signed in (a one-time link), or end every dashboard sign-in.
    Dashboard {
        /// Print the sign-in link instead of opening a browser.
        #[arg(long)]
        print: bool,
        /// Sign out every browser.
        #[arg(long, conflicts_with = "print")]
        revoke: bool,
    },
    /// Notifiers (Telegram, ntfy, Slack, webhooks): send a test message, show what was sent.
    #[command(subcommand)]
    Notify(crate::notify::cli::NotifyCommand),
    /// Run the daemon as a user service (systemd or launchd): install, uninstall, status.
    #[command(subcommand)]
    Service(crate::notify::cli::ServiceCommand),
}

#[derive(Debug, Subcommand)]
enum TaskCommand {
    /// Create a task.
    Add(AddArgs),
    /// List tasks, oldest first.
    List {
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<TaskState>,
        #[arg(long)]
        json: bool,
    },
    /// Show a task and its log.
    Show {
        /// Task id or unique id prefix.
        #[arg(value_parser = not_empty)]
        id: String,
        /// Show the task's hook events (its agents' timeline) instead.
        #[arg(long)]
        events: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a task.
    Cancel {
        #[arg(value_parser = not_empty)]
        id: String,
        #[arg(long, default_value = "cancelled by the operator")]
        reason: String,
    },
    /// Run a blocked, failed, flagged or cancelled task again with a fresh attempt budget.
    Retry {
        #[arg(value_parser = not_empty)]
        id: String,
        #[arg(long, default_value = "retried by the operator")]
        reason: String,
    },
    /// Make a waiting task depend on other tasks (a cycle is refused).
    Depend {
        #[arg(value_parser = not_empty)]
        id: String,
        /// Tasks that must complete first.
        #[arg(long = "on", required = true, num_args = 1..)]
        on: Vec<String>,
    },
    /// Print the output of the task's latest agent.
    Logs {
        #[arg(value_parser = not_empty)]
        id: String,
        /// Keep printing as the agent writes, until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Apply a state-machine event given as JSON, e.g. '{"event": "verify_passed"}'
    /// (for scripts and runners outside ccm).
    Event {
        #[arg(value_parser = not_empty)]
        id: String,
        /// The event, as `{"event": NAME, ...fields}`.
        event: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
struct AddArgs {
    title: String,
    /// What the agent is asked to do (default: the title); may begin with `-`.
    #[arg(long, allow_hyphen_values = true)]
    prompt: Option<String>,
    /// Repository URL the task works in.
    #[arg(long)]
    repo: Option<String>,
    /// Agent profile (default: tasks.profile from the config).
    #[arg(long)]
    profile: Option<String>,
    #[arg(long)]
    workflow: Option<String>,
    /// Verification command, run in the task's worktree.
    #[arg(long)]
    verify: Option<String>,
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Higher runs first; from -1000 to 1000.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// Tasks that must complete first (repeatable).
    #[arg(long = "after")]
    after: Vec<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum HooksCommand {
    /// Add ccm's hooks, keeping every hook that is already there (idempotent).
    Install(HooksArgs),
    /// Remove exactly the hooks ccm added.
    Uninstall(HooksArgs),
    /// Show which settings files have ccm's hooks.
    Status(HooksArgs),
}

#[derive(Debug, Args)]
struct HooksArgs {
    /// Claude Code: use the committed `.claude/settings.json` instead of `.claude/settings.local.json`.
    #[arg(long)]
    shared: bool,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Agents, live ones first: status, task, heartbeat age, cost so far.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Attach this terminal to the agent's tmux window (detach with the tmux prefix, then d).
    Attach {
        #[arg(value_parser = not_empty)]
        id: String,
    },
    /// Kill the agent's window; its attempt counts as a crash and is retried while attempts remain.
    Kill {
        #[arg(value_parser = not_empty)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ContextCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Register the checkout at PATH (default: the current directory).
    Add { path: Option<PathBuf> },
    /// Unregister a context by id, id prefix or path.
    Remove {
        #[arg(value_parser = not_empty)]
        key: String,
    },
}

/// An id (or id prefix, or key) argument: an empty one would match everything or nothing.
fn not_empty(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        Err("the id is empty; give an id or a unique id prefix".into())
    } else {
        Ok(value.to_string())
    }
}

/// Runs `ccm hook`, which loads no configuration up front and never fails.
pub async fn hook(HookArgs { agent, mut payload }: HookArgs) {
    let system = agent.and_then(|a| a.parse::<System>().ok());
    match Home::locate() {
        Ok(home) => crate::hooks::command::run(&home, system, payload.pop()).await,
        Err(e) => eprintln!("ccm hook: {e:#}; the event is not stored"),
    }
}

/// Parses the arguments and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::locate()?;
    let db = home.db_file();
    command(cli, home).await.map_err(|error| match error.downcast_ref::<StoreError>() {
        Some(StoreError::Busy | StoreError::DiskFull) => {
            anyhow::anyhow!("cannot write {}: {error}", db.display())
        }
        _ => error,
    })
}

async fn command(cli: Cli, home: Home) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let project = project_root(&cwd);
    match cli.command {
        Command::Doctor => return crate::doctor::run(&home, project.as_deref()).await,
        Command::Hook(args) => {
            hook(args).await;
            return Ok(());
        }
        _ => {}
    }
    let config = Config::load(home.root(), project.as_deref())?;
    match cli.command {
        Command::Up => crate::daemon::run(home, config).await,
        Command::Dashboard { print, revoke } => dashboard(&home, &config, print, revoke).await,
        Command::Init => init(&home, &config, &cwd).await,
        Command::Status { json } => {
            let status = Backend::connect(&home, &config).await?.status().await?;
            print(json, &status, show_status)
        }
        Command::Task(command) => task(&home, &config, command).await,
        Command::Context(command) => {
            context(Backend::connect(&home, &config).await?, command, &cwd).await
        }
        Command::Agent(command) => {
            agent(&open_store(&home, &config).await?, &config, command).await
        }
        Command::Decide { id, answer, json } => match (id, answer) {
            (Some(id), Some(answer)) => {
                let decision = Backend::connect(&home, &config).await?.answer(&id, &answer).await?;
                println!("decision {} answered `{answer}`", short_id(&decision.id));
                Ok(())
            }
            (Some(_), None) => anyhow::bail!("give the answer too: `ccm decide ID ANSWER`"),
            _ => {
                let store = open_store(&home, &config).await?;
                let pending: Vec<_> =
                    store.decisions().await?.into_iter().filter(|d| d.answer.is_none()).collect();
                print(json, &pending, |pending| {
                    if pending.is_empty() {
                        println!("no decisions pending");
                    }
                    for d in pending {
                        println!(
                            "{}  {}  [{}]",
                            short_id(&d.id),
                            d.question,
                            d.options.0.join(" | ")
                        );
                    }
                })
            }
        },
        Command::DumpState { json } => {
            let store = open_store(&home, &config).await?;
            let daemon = Client::connect(&home).await.ok().flatten().map(|c| c.daemon);
            let dump = StateDump::gather(&store, daemon).await?;
            print(json, &dump, show_dump)
        }
        Command::Backup { file } => {
            let store = open_store(&home, &config).await?;
            store.backup(&file).await?;
            let copy = Store::open_existing(&file, std::time::Duration::from_secs(10)).await?;
            let check = copy.integrity_check().await?;
            copy.close().await;
            anyhow::ensure!(
                check == "ok",
                "backup {} failed its integrity check: {check}",
                file.display()
            );
            println!(
                "backed up {} to {} (integrity check: ok)",
                store.path().display(),
                file.display()
            );
            Ok(())
        }
        Command::Doctor | Command::Hook(_) => {
            unreachable!("handled before the config is loaded")
        }
        Command::Hooks { command } => hooks(&config, &cwd, command),
        Command::Sync(command) => crate::sync::run(&home, &config, command).await,
        Command::Notify(command) => crate::notify::cli::notify(&home, &config, command).await,
        Command::Service(command) => crate::notify::cli::service(&home, &config, command),
        Command::Claims { json } => {
            let store = open_store(&home, &config).await?;
            let view = crate::daemon::ClaimsView {
                claims: store.claims().await?,
                change_requests: store.change_requests().await?,
            };
            print(json, &view, show_claims)
        }
    }
}

/// The nearest directory at or above `dir` holding `.ccm/`.
fn project_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join(".ccm").is_dir()).map(Path::to_path_buf)
}

pub(crate) async fn open_store(home: &Home, config: &Config) -> anyhow::Result<Store> {
    home.ensure()?;
    let name = config
        .node
        .name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    Ok(Store::open(&home.db_file(), &name).await?)
}

/// Where state-changing commands go: the running daemon, or the database file.
enum Backend {
    Daemon(Client),
    Local { store: Store, config: Box<Config> },
}

impl Backend {
    async fn connect(home: &Home, config: &Config) -> anyhow::Result<Backend> {
        let client = Client::connect(home)
            .await
            .map_err(|silent| anyhow::anyhow!("{silent}; {}", silent.fix()))?;
        match client {
            Some(client) => Ok(Backend::Daemon(client)),
            None => Ok(Backend::Local {
                store: open_store(home, config).await?,
                config: Box::new(config.clone()),
            }),
        }
    }

    async fn status(&self) -> anyhow::Result<Status> {
        match self {
            Backend::Daemon(client) => client.get(&["status"]).await,
            Backend::Local { store, .. } => Ok(Status::gather(store, None).await?),
        }
    }

    async fn create_task(&self, new: NewTask) -> anyhow::Result<Task> {
        match self {
            Backend::Daemon(client) => client.post(&["tasks"], serde_json::to_value(new)?).await,
            Backend::Local { store, config } => Ok(store.create_task(new, config, "cli").await?),
        }
    }

    async fn tasks(&self, state: Option<TaskState>) -> anyhow::Result<Vec<Task>> {
        match self {
            Backend::Daemon(client) => match state {
                Some(state) => client.get_query(&["tasks"], &[("state", state.as_str())]).await,
                None => client.get(&["tasks"]).await,
            },
            Backend::Local { store, .. } => Ok(store.tasks(&TaskFilter { state }).await?),
        }
    }

    async fn task(&self, id: &str) -> anyhow::Result<TaskDetail> {
        match self {
            Backend::Daemon(client) => client.get(&["tasks", id]).await,
            Backend::Local { store, .. } => Ok(store.task(id).await?),
        }
    }

    async fn apply_event(&self, id: &str, event: TaskEvent, reason: &str) -> anyhow::Result<Task> {
        match self {
            Backend::Daemon(client) => {
                let mut body = serde_json::to_value(event)?;
                body["reason"] = json!(reason);
                client.post(&["tasks", id, "events"], body).await
            }
            Backend::Local { store, config } => {
                let policy = RetryPolicy::from(&**config);
                Ok(store.apply_event(id, event, reason, "cli", policy).await?.0)
            }
        }
    }

    async fn add_dependencies(&self, id: &str, on: &[String]) -> anyhow::Result<Task> {
        match self {
            Backend::Daemon(client) => {
                client.post(&["tasks", id, "dependencies"], json!({ "depends_on": on })).await
            }
            Backend::Local { store, .. } => Ok(store.add_dependencies(id, on, "cli").await?),
        }
    }

    async fn answer(&self, id: &str, answer: &str) -> anyhow::Result<ccm_schema::Decision> {
        match self {
            Backend::Daemon(client) => {
                client.post(&["decisions", id], json!({ "answer": answer })).await
            }
            Backend::Local { store, config } => {
                Ok(store.answer_decision(id, answer, "cli", RetryPolicy::from(&**config)).await?)
            }
        }
    }

    async fn contexts(&self) -> anyhow::Result<Vec<Context>> {
        match self {
            Backend::Daemon(client) => client.get(&["contexts"]).await,
            Backend::Local { store, .. } => Ok(store.contexts().await?),
        }
    }

    async fn add_context(&self, path: &Path) -> anyhow::Result<Context> {
        match self {
            Backend::Daemon(client) => client.post(&["contexts"], json!({ "path": path })).await,
            Backend::Local { store, .. } => {
                Ok(store.upsert_context(&ContextProbe::inspect(path)?).await?)
            }
        }
    }

    async fn remove_context(&self, key: &str) -> anyhow::Result<Context> {
        match self {
            Backend::Daemon(client) => client.delete(&["contexts", key]).await,
            Backend::Local { store, .. } => Ok(store.remove_context(key).await?),
        }
    }
}

/// Options for the hook installer in the repository around `cwd`.
fn hook_options<'a>(
    config: &Config,
    repo: &'a Path,
    ccm: &'a str,
    shared: bool,
) -> crate::hooks::install::Options<'a> {
    crate::hooks::install::Options {
        repo,
        ccm,
        shared,
        // A gate waits at most the approval timeout, plus time for the answer to travel.
        gate_timeout_secs: config.approvals.timeout_secs + 30,
    }
}

/// The command hooks run: this very binary for local settings, `ccm` from PATH for committed ones.
fn ccm_command(shared: bool) -> String {
    if shared {
        "ccm".into()
    } else {
        crate::hooks::ccm_command()
    }
}

fn hooks(config: &Config, cwd: &Path, command: HooksCommand) -> anyhow::Result<()> {
    let probe = ContextProbe::inspect(cwd)
        .map_err(|e| anyhow::anyhow!("ccm hooks works in a git repository: {e}"))?;
    let (args, run): (&HooksArgs, fn(&crate::hooks::install::Options) -> _) = match &command {
        HooksCommand::Install(args) => (args, crate::hooks::install::install),
        HooksCommand::Uninstall(args) => (args, crate::hooks::install::uninstall),
        HooksCommand::Status(args) => (args, crate::hooks::install::status),
    };
    let ccm = ccm_command(args.shared);
    let reports = run(&hook_options(config, &probe.path, &ccm, args.shared))?;
    show_hook_reports(&reports);
    Ok(())
}

fn show_hook_reports(reports: &[crate::hooks::install::FileReport]) {
    for report in reports {
        let action = serde_json::to_value(report.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("{:<7} {:<16} {}  {}", report.agent, action, report.file.display(), report.detail);
    }
}

async fn init(home: &Home, config: &Config, cwd: &Path) -> anyhow::Result<()> {
    let probe = ContextProbe::inspect(cwd)
        .map_err(|e| anyhow::anyhow!("ccm init needs a git repository: {e}"))?;
    let dot = probe.path.join(".ccm");
    for dir in [dot.clone(), dot.join("prompts"), dot.join("skills")] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let config_file = dot.join("config.yaml");
    let wrote_config = !config_file.exists();
    if wrote_config {
        std::fs::write(&config_file, PROJECT_TEMPLATE)
            .with_context(|| format!("cannot write {}", config_file.display()))?;
    }
    let ccm = ccm_command(false);
    let reports = crate::hooks::install::install(&hook_options(config, &probe.path, &ccm, false))?;
    let backend = Backend::connect(home, config).await?;
    let context = backend.add_context(&probe.path).await?;
    show_hook_reports(&reports);
    println!("{} {}", if wrote_config { "created" } else { "kept   " }, config_file.display());
    println!(
        "context {} registered: {} ({}, branch {})",
        short_id(&context.id),
        context.path,
        context.repo_url.as_deref().unwrap_or("no remote"),
        context.default_branch.as_deref().unwrap_or("none"),
    );
    Ok(())
}

async fn task(home: &Home, config: &Config, command: TaskCommand) -> anyhow::Result<()> {
    if let TaskCommand::Logs { id, follow } = command {
        return logs(&open_store(home, config).await?, &id, follow).await;
    }
    let backend = Backend::connect(home, config).await?;
    match command {
        TaskCommand::Add(args) => {
            let new = NewTask {
                title: args.title,
                prompt: args.prompt,
                repo: args.repo,
                profile: args.profile,
                workflow: args.workflow,
                verify: args.verify,
                max_attempts: args.max_attempts,
                priority: args.priority,
                depends_on: args.after,
            };
            let task = backend.create_task(new).await?;
            print(args.json, &task, |t| {
                println!("created task {} ({}): {}", t.short_id(), t.state, t.title)
            })
        }
        TaskCommand::List { state, json } => {
            print(json, &backend.tasks(state).await?, |tasks| show_tasks(tasks))
        }
        TaskCommand::Show { id, events: true, json } => {
            let events: Vec<StoredHookEvent> = match &backend {
                Backend::Daemon(client) => client.get(&["tasks", &id, "events"]).await?,
                Backend::Local { store, .. } => store.task_hook_events(&id).await?,
            };
            print(json, &events, |events| {
                if events.is_empty() {
                    println!("no hook events");
                }
                for e in events {
                    let agent = e.agent_id.as_deref().map_or("-", |a| &a[..8]);
                    println!(
                        "{}  {agent}  {:<8} {:<18} {:<20} {}",
                        e.at,
                        e.system,
                        e.kind,
                        e.event,
                        e.tool.as_deref().unwrap_or("")
                    );
                }
            })
        }
        TaskCommand::Show { id, json, .. } => print(json, &backend.task(&id).await?, show_task),
        TaskCommand::Cancel { id, reason } => {
            let task = backend.apply_event(&id, TaskEvent::Cancel, &reason).await?;
            println!("task {} is {}", task.short_id(), task.state);
            Ok(())
        }
        TaskCommand::Retry { id, reason } => {
            let task = backend.apply_event(&id, TaskEvent::Retry, &reason).await?;
            println!("task {} is {} again", task.short_id(), task.state);
            Ok(())
        }
        TaskCommand::Depend { id, on } => {
            let task = backend.add_dependencies(&id, &on).await?;
            let deps: Vec<String> = task.depends_on.iter().map(short_id).collect();
            println!("task {} depends on {}", task.short_id(), deps.join(", "));
            Ok(())
        }
        TaskCommand::Logs { .. } => unreachable!("handled before connecting"),
        TaskCommand::Event { id, event, reason } => {
            let event: TaskEvent =
                serde_json::from_str(&event).with_context(|| format!("invalid event `{event}`"))?;
            let reason = reason.unwrap_or_else(|| event.name().replace('_', " "));
            let task = backend.apply_event(&id, event, &reason).await?;
            println!("task {} is {}", task.short_id(), task.state);
            Ok(())
        }
    }
}

async fn context(backend: Backend, command: ContextCommand, cwd: &Path) -> anyhow::Result<()> {
    match command {
        ContextCommand::List { json } => print(json, &backend.contexts().await?, |contexts| {
            table(
                &["ID", "PATH", "REPO", "BRANCH"],
                contexts.iter().map(|c| {
                    vec![
                        short_id(&c.id),
                        c.path.clone(),
                        c.repo_url.clone().unwrap_or_default(),
                        c.default_branch.clone().unwrap_or_default(),
                    ]
                }),
            )
        }),
        ContextCommand::Add { path } => {
            let path = path.unwrap_or_else(|| cwd.to_path_buf());
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("cannot use {} as a context", path.display()))?;
            let context = backend.add_context(&path).await?;
            println!("context {} registered: {}", short_id(&context.id), context.path);
            Ok(())
        }
        ContextCommand::Remove { key } => {
            let context = backend.remove_context(&key).await?;
            println!("context {} removed: {}", short_id(&context.id), context.path);
            Ok(())
        }
    }
}

async fn agent(store: &Store, config: &Config, command: AgentCommand) -> anyhow::Result<()> {
    let tmux = crate::tmux::Tmux::new(config.runtime.tmux_socket.clone());
    match command {
        AgentCommand::List { json } => {
            let agents = store.agents().await?;
            let stale_after = config.runtime.stale_secs as i64;
            print(json, &agents, |agents| {
                if agents.is_empty() {
                    println!("no agents");
                    return;
                }
                let now = ccm_schema::Timestamp::now().millis();
                table(
                    &[
                        "ID",
                        "TASK",
                        "KIND",
                        "PROFILE",
                        "STATUS",
                        "HEARTBEAT",
                        "COST",
                        "TOKENS IN/OUT",
                    ],
                    agents.iter().map(|a| {
                        let age = (now - a.last_heartbeat.millis()) / 1000;
                        let heartbeat = if !a.status.is_live() {
                            "-".to_string()
                        } else if age > stale_after {
                            format!("{age}s (stale)")
                        } else {
                            format!("{age}s")
                        };
                        vec![
                            a.short_id(),
                            short_id(&a.task_id),
                            format!("{:?}", a.kind).to_lowercase(),
                            a.profile.clone(),
                            format!("{:?}", a.status).to_lowercase(),
                            heartbeat,
                            a.cost_usd.map_or_else(|| "unknown".into(), |c| format!("${c:.4}")),
                            format!("{}/{}", a.input_tokens, a.output_tokens),
                        ]
                    }),
                )
            })
        }
        AgentCommand::Attach { id } => {
            let agent = store.agent(&id).await?;
            let window =
                agent.window_id.as_deref().filter(|_| agent.status.is_live()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "agent {} is {:?}: there is no window to attach to",
                        agent.id,
                        agent.status
                    )
                })?;
            let argv = tmux.attach_argv(window);
            use std::os::unix::process::CommandExt;
            let error = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
            Err(anyhow::anyhow!("cannot run tmux attach: {error}"))
        }
        AgentCommand::Kill { id } => {
            let agent = store.agent(&id).await?;
            match agent.window_id.as_deref().filter(|_| agent.status.is_live()) {
                Some(window) => {
                    tmux.kill(window).await?;
                    println!(
                        "agent {} killed; the runtime retries its task while attempts remain",
                        agent.short_id()
                    );
                    Ok(())
                }
                None => {
                    anyhow::bail!("agent {} is not running ({:?})", agent.short_id(), agent.status)
                }
            }
        }
    }
}

/// Prints the output log of the task's latest agent; with `follow`, keeps printing until the
/// agent has ended and its log is drained.
async fn logs(store: &Store, id: &str, follow: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let task = store.task(id).await?.task;
    let agents = store.task_agents(task.id).await?;
    let agent = agents
        .last()
        .ok_or_else(|| anyhow::anyhow!("task {} has not run an agent yet", task.short_id()))?;
    let dir = PathBuf::from(&agent.dir);
    let mut offset = 0;
    loop {
        let ended = !follow
            || dir.join("exit").exists()
            || !store.agent(&agent.id.to_string()).await?.status.is_live();
        if let Ok(mut file) = tokio::fs::File::open(dir.join("output.log")).await {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut fresh = Vec::new();
            file.read_to_end(&mut fresh).await?;
            offset += fresh.len() as u64;
            std::io::stdout().write_all(&fresh)?;
            std::io::stdout().flush()?;
        }
        if ended {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Prints `value` as pretty JSON, or with `human`.
pub(crate) fn print<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T),
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human(value);
    }
    Ok(())
}

fn table(headers: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn show_tasks(tasks: &[Task]) {
    if tasks.is_empty() {
        println!("no tasks");
        return;
    }
    table(
        &["ID", "STATE", "PRI", "ATTEMPTS", "AFTER", "TITLE"],
        tasks.iter().map(|t| {
            vec![
                t.short_id(),
                t.state.to_string(),
                t.priority.to_string(),
                format!("{}/{}", t.attempts, t.max_attempts),
                t.depends_on.iter().map(short_id).collect::<Vec<_>>().join(","),
                t.title.clone(),
            ]
        }),
    );
}

fn show_task(detail: &TaskDetail) {
    let t = &detail.task;
    println!("task {}  {}", t.id, t.title);
    println!(
        "  state     {}  (attempts {}/{}, priority {})",
        t.state, t.attempts, t.max_attempts, t.priority
    );
    println!(
        "  profile   {}{}",
        t.profile,
        t.workflow.as_ref().map(|w| format!("  workflow {w}")).unwrap_or_default()
    );
    if let Some(repo) = &t.repo {
        println!("  repo      {repo}");
    }
    if let Some(verify) = &t.verify {
        println!("  verify    {verify}");
    }
    if !t.depends_on.is_empty() {
        println!(
            "  after     {}",
            t.depends_on.iter().map(short_id).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(wake) = t.wake_at {
        println!("  wakes at  {wake}");
    }
    println!("  prompt    {}", t.prompt);
    println!("log:");
    for entry in &detail.log {
        let from = entry.from_state.map_or("-".to_string(), |s| s.to_string());
        println!(
            "  {}  {from} → {}  ({}, by {})",
            entry.at, entry.to_state, entry.reason, entry.actor
        );
    }
}

fn show_claims(view: &crate::daemon::ClaimsView) {
    println!("claims ({})", view.claims.len());
    for c in &view.claims {
        println!("  {}  {}  task {} ({}, {})", c.repo, c.path, &c.task_id[..8], c.title, c.state);
    }
    println!("change requests ({})", view.change_requests.len());
    for r in &view.change_requests {
        let status = r.resolution.as_deref().unwrap_or("open");
        println!(
            "  {}  {}  owner {}  requested by task {}  {status}",
            r.repo,
            r.path,
            r.owner,
            &r.requester_task[..8]
        );
    }
}

fn show_status(status: &Status) {
    println!("system  {} ({})", status.system.name, status.system.id);
    match &status.daemon {
        Some(d) => {
            println!("daemon  running at {} (pid {}, since {})", d.addr, d.pid, d.started_at)
        }
        None => println!("daemon  not running (start it with `ccm up`)"),
    }
    let total: i64 = status.tasks.values().sum();
    let states: Vec<String> = status.tasks.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!(
        "tasks   {total}{}",
        if states.is_empty() { String::new() } else { format!(": {}", states.join(", ")) }
    );
    println!(
        "agents  {} running; today ${:.4}, {} tokens in, {} out",
        status.agents_running,
        status.today.cost_usd,
        status.today.input_tokens,
        status.today.output_tokens
    );
    println!("alerts  {} open", status.open_alerts);
    println!("decide  {} pending", status.pending_decisions);
    println!(
        "outbox  {} pending, {} delivered, {} rejected",
        status.outbox.pending, status.outbox.delivered, status.outbox.rejected
    );
    for (lane, s) in &status.sync {
        let ok = s.last_ok_at.map_or("never".to_string(), |t| t.to_string());
        let paused = s.paused_reason.as_ref().map(|r| format!(", paused: {r}")).unwrap_or_default();
        let error = s.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default();
        println!("sync    {lane}: backlog {}, last success {ok}{error}{paused}", s.backlog);
    }
}

fn show_dump(dump: &StateDump) {
    show_status(&dump.status);
    println!("\n== contexts ({})", dump.contexts.len());
    for c in &dump.contexts {
        println!(
            "{}  {}  {}  {}",
            short_id(&c.id),
            c.path,
            c.repo_url.as_deref().unwrap_or("-"),
            c.default_branch.as_deref().unwrap_or("-")
        );
    }
    println!("\n== tasks ({})", dump.tasks.len());
    for (task, log) in &dump.tasks {
        show_task(&TaskDetail {
            task: task.clone(),
            log: log.clone(),
            runs: Vec::new(),
            reports: Vec::new(),
            cost_usd: 0.0,
            tokens: Default::default(),
        });
        println!();
    }
    println!("== open alerts ({})", dump.alerts.len());
    for a in &dump.alerts {
        println!("{}  {}  {}  {}", a.created_at, a.severity, a.reason, a.message);
    }
    println!("\n== decisions ({})", dump.decisions.len());
    for d in &dump.decisions {
        let answer = d.answer.as_ref().map_or("pending".to_string(), |a| {
            format!("{a} (by {})", d.answered_by.as_deref().unwrap_or("?"))
        });
        println!("{}  {}  [{}]  {answer}", d.created_at, d.question, d.options.0.join("/"));
    }
}

/// `ccm dashboard`: a one-time sign-in link from the daemon, opened in the browser (or printed);
/// `--revoke` ends every sign-in, through the daemon or, when none runs, in the sessions file.
async fn dashboard(home: &Home, config: &Config, print: bool, revoke: bool) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    if revoke {
        match client {
            Some(client) => {
                let answer: serde_json::Value =
                    client.post(&["dashboard", "revoke"], json!({})).await?;
                println!("signed out {} browser session(s)", answer["revoked"]);
            }
            None => {
                let file = home.root().join(crate::dashboard::SESSIONS_FILE);
                crate::dashboard::revoke_offline(&file)
                    .with_context(|| format!("cannot remove {}", file.display()))?;
                println!("signed out every browser session");
            }
        }
        return Ok(());
    }
    if config.daemon.profile != crate::config::Profile::Full {
        anyhow::bail!("the dashboard is served only under daemon.profile `full`");
    }
    let client = client.context("the daemon is not running: start it with `ccm up`")?;
    let answer: serde_json::Value = client.post(&["dashboard", "codes"], json!({})).await?;
    let url = answer["url"].as_str().context("the daemon sent no sign-in link")?;
    if print {
        println!("{url}");
        return Ok(());
    }
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let opened = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if opened {
        println!("opened the dashboard in your browser (the link works once)");
    } else {
        println!(
            "open this link in a browser on this machine (it works once, for {} seconds):\n{url}",
            answer["expires_in_secs"]
        );
    }
    Ok(())
}
