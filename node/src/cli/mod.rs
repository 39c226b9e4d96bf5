//! The `ccm` command: argument parsing (clap), and a module per verb group.
//!
//! - [`task`] (its `logs` renders with [`crate::agents::render`]), [`context`], [`agent`]:
//!   tasks, checkouts, agents; [`land`]: `ccm land` and `ccm land status`.
//! - [`setup`]: `init` and `hooks`; [`daemon`]: `up` and `stop`; [`state`]: `status`,
//!   `dump-state`, `claims`, `conflicts`, `backup`; [`gc`]: `gc` (janitor and retention); [`alerts`],
//!   [`decide`]: what needs the operator;
//!   [`dashboard`]: the web dashboard; [`sync`]: `ccm sync ...`; [`systems`]: `ccm systems`
//!   and the fleet's names.
//! - [`backend`]: where state changes go (the daemon's API, or SQLite when no daemon runs);
//!   [`output`]: JSON or aligned text.
//!
//! Read-only commands (`dump-state`, `backup`, `claims`, `agent`, `task logs`) read the database
//! file directly.

mod agent;
mod alerts;
mod backend;
mod context;
mod coord;
mod daemon;
mod dashboard;
mod decide;
mod gc;
mod land;
mod output;
mod setup;
mod state;
mod supervisors;
mod sync;
mod systems;
mod task;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::home::open_store;
use crate::home::Home;
use crate::hooks::event::System;
use crate::store::StoreError;
use backend::Backend;

#[derive(Debug, Parser)]
#[command(name = "ccm", version, about = "Local-first orchestrator for AI coding agents")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether this command runs the daemon (in this process).
    pub fn runs_daemon(&self) -> bool {
        matches!(self.command, Command::Up { .. })
    }

    /// `ccm mcp`: its stderr goes to the agent CLI's logs, so it logs warnings only by default.
    pub fn runs_mcp_server(&self) -> bool {
        matches!(self.command, Command::Mcp)
    }
}

// `ccm hook` alone: a short-lived process on every agent's path parses its own arguments
// without building the whole command tree (see `main.rs`). Its help is the command's own.
#[derive(Debug, Parser)]
#[command(
    name = "ccm hook",
    bin_name = "ccm hook",
    version,
    about = "Hook entry point for the agent CLIs: reads one event (stdin, or the last argument \
             for Codex's notify), stores it, prints a decision when a policy made one",
    long_about = "Hook entry point for the agent CLIs (Claude Code, Gemini CLI, Codex).\n\n\
                  Reads one event from stdin (or, for Codex's notify, from the last argument), \
                  stores it through the daemon, else in the database directly, else in the \
                  spool, and prints a decision on stdout when a policy made one. It always \
                  exits 0, so a problem of ccm never stops the agent; problems go to \
                  logs/hook.log in the ccm home.\n\n\
                  `ccm hooks install` writes it into a repository's agent settings (as \
                  `ccm-hook`, which hands over to it); there is no need to run it by hand."
)]
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
    /// The key `ccm-hook` posted the event under (set by `ccm-hook` only).
    #[arg(long, hide = true)]
    key: Option<uuid::Uuid>,
    /// Why the daemon did not take the event `ccm-hook` posted (set by `ccm-hook` only).
    #[arg(long, hide = true)]
    daemon_failed: Option<String>,
    /// The event, for CLIs that pass it as an argument (Codex notify).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    payload: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up ccm in the current git repository (.ccm/) and register it as a context.
    Init,
    /// Run the daemon: in the foreground (the form a service supervisor runs), or with
    /// --detach in the background, logging to logs/daemon.log.
    Up {
        /// Start in the background and return once the daemon answers.
        #[arg(long, short)]
        detach: bool,
    },
    /// Stop the daemon gracefully and wait until it has exited (agents keep running).
    Stop {
        /// Seconds to wait for the daemon to exit.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
        /// Kill the daemon (SIGKILL) when it has not exited within the timeout: nothing it
        /// acknowledged is lost, agents keep running.
        #[arg(long)]
        force: bool,
    },
    /// Show the node: daemon, tasks per state, agents, alerts, decisions, sync.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check tmux, git, the config, the database, the port and each profile's program, and
    /// say how to fix problems.
    Doctor,
    /// Create, list, show, cancel and retry tasks.
    #[command(subcommand)]
    Task(task::TaskCommand),
    /// Repository checkouts registered on this system.
    /// Land finished tasks on their repository's target branch (`ccm land ID...`, `--all`,
    /// `--plan`), or show the land queues (`ccm land status`).
    Land(land::LandArgs),
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// Agents: list them, attach a terminal to one, kill one.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Hook entry point for the agent CLIs: reads one event (stdin, or the last argument for
    /// Codex's notify), stores it, prints a decision when a policy made one. Always exits 0.
    Hook(HookArgs),
    /// Install ccm's hooks into the repository's agent CLI settings (Claude Code, Gemini CLI,
    /// Codex), show them, or remove exactly what was installed.
    Hooks {
        #[command(subcommand)]
        command: setup::HooksCommand,
    },
    /// The sync engine: enrol this system, show the lanes, send now, pause and resume.
    #[command(subcommand)]
    Sync(sync::SyncCommand),
    /// The systems of the fleet (presence with its reason, slots, repositories, last heartbeat,
    /// cost today); `ccm systems drain NAME` stops a system from taking new work.
    Systems {
        #[command(subcommand)]
        command: Option<systems::SystemsCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Files claimed by tasks (strict ownership) and the change requests refused writes left.
    Claims {
        #[arg(long)]
        json: bool,
    },
    /// Conflicts predicted between active tasks: as the daemon last recorded them, or with
    /// --fresh computed now for one repository (--repo, or the checkout around the current
    /// directory) with git.
    Conflicts {
        /// The repository: a registered checkout's path or its remote URL.
        #[arg(long)]
        repo: Option<String>,
        /// Compute the prediction now (this system's tasks only) instead of reading the
        /// daemon's.
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        json: bool,
    },
    /// Open alerts (--all: resolved ones too); `ccm alerts ack ID` acknowledges one.
    Alerts(alerts::AlertsArgs),
    /// Scheduled supervisors (supervisors: in the configuration) and their runs, newest first.
    Supervisors {
        /// Print the digest supervisor NAME's next run would carry (what happened in its scope
        /// since its last run) instead of the list.
        #[arg(long, value_name = "NAME")]
        digest: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One supervisor run: why it ran, its report and the digest its prompt carried.
    Report {
        /// Run id (or a unique prefix of at least 4 characters), as `ccm supervisors` lists it.
        #[arg(value_parser = not_empty)]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List the decisions waiting for you, or answer one: `ccm decide ID retry`.
    Decide {
        /// Decision id (or unique prefix) to answer, or the id of a task with one pending
        /// decision.
        #[arg(value_parser = not_empty)]
        id: Option<String>,
        /// The answer: one of the decision's options.
        answer: Option<String>,
        /// Why (a change request's rejection: the reason its requester is told).
        #[arg(long, value_parser = not_empty)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the whole state of the node, human-readable (or --json).
    DumpState {
        #[arg(long)]
        json: bool,
    },
    /// Write a consistent copy of the database to FILE, even while the daemon runs; with
    /// --keep N, FILE is a directory: the copy is `ccm-<time>.db` in it, and only the N newest
    /// copies are kept.
    Backup {
        file: PathBuf,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        keep: Option<u64>,
    },
    /// Remove what is past its time: the worktrees and `ccm/*` branches of ended tasks (never a
    /// branch with commits its target lacks, unless its task was discarded), or with --db the
    /// database rows and agents' files past their `retention:` age.
    Gc {
        /// The database and agents' files instead of branches and worktrees.
        #[arg(long)]
        db: bool,
        /// Say what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --db: put a database made before incremental auto-vacuum into that mode (a
        /// full VACUUM: the file is rewritten, writes wait meanwhile).
        #[arg(long, requires = "db")]
        vacuum: bool,
        /// With --db: the pass's clock, in milliseconds since the epoch, instead of now (the
        /// soak bench advances it over backdated rows).
        #[arg(long, requires = "db", hide = true)]
        as_of: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Open the web dashboard signed in (a one-time link), or end every dashboard sign-in.
    Dashboard {
        /// Print the sign-in link instead of opening a browser.
        #[arg(long)]
        print: bool,
        /// Sign out every browser.
        #[arg(long, conflicts_with = "print")]
        revoke: bool,
    },
    /// ccm's MCP server over stdio, for the agent CLIs (installed by `ccm hooks install`):
    /// sub-tasks, named locks and sequences, as the calling agent (CCM_AGENT_TOKEN).
    Mcp,
    /// Hold the named lock NAME of this node while COMMAND runs (for verify scripts):
    /// `ccm lock build -- cargo build`. Exits with the command's status.
    Lock(coord::LockArgs),
    /// Notifiers (Telegram, ntfy, Slack, webhooks): send a test message, show what was sent.
    #[command(subcommand)]
    Notify(crate::notify::cli::NotifyCommand),
    /// Run the daemon as a user service (systemd or launchd): install, uninstall, status.
    #[command(subcommand)]
    Service(crate::notify::cli::ServiceCommand),
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
pub async fn hook(HookArgs { agent, key, daemon_failed, mut payload }: HookArgs) {
    let system = agent.and_then(|a| a.parse::<System>().ok());
    let handed_over = crate::hooks::command::HandedOver { key, daemon_failed };
    match Home::locate() {
        Ok(home) => crate::hooks::command::run(&home, system, payload.pop(), handed_over).await,
        Err(e) => eprintln!("ccm hook: {e:#}; the event is not stored"),
    }
}

/// Parses the arguments and runs the command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::locate()?;
    let db = home.db_file();
    command(cli, home).await.map_err(|error| {
        let store = error.downcast_ref::<StoreError>().or_else(|| {
            match error.downcast_ref::<crate::home::HomeError>() {
                Some(crate::home::HomeError::Store(e)) => Some(e),
                _ => None,
            }
        });
        match store {
            Some(StoreError::Busy | StoreError::DiskFull) => {
                anyhow::anyhow!("cannot write {}: {error}", db.display())
            }
            _ => error,
        }
    })
}

async fn command(cli: Cli, home: Home) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let project = project_root(&cwd);
    // These need no configuration (doctor reports it; a hook never fails; stop works whatever
    // the configuration became since the daemon started).
    let command = match cli.command {
        Command::Stop { timeout, force } => {
            return daemon::stop(&home, std::time::Duration::from_secs(timeout), force).await
        }
        Command::Doctor => return crate::doctor::run(&home, project.as_deref()).await,
        Command::Hook(args) => {
            hook(args).await;
            return Ok(());
        }
        Command::Mcp => return Ok(crate::mcp::serve().await?),
        command => command,
    };
    let config = Config::load(home.root(), project.as_deref())?;
    match command {
        Command::Up { detach } => daemon::up(home, config, project.as_deref(), detach).await,
        Command::Dashboard { print, revoke } => dashboard::run(&home, &config, print, revoke).await,
        Command::Init => setup::init(&home, &config, &cwd).await,
        Command::Hooks { command } => setup::hooks(&config, &cwd, command),
        Command::Status { json } => state::status(&home, &config, json).await,
        Command::DumpState { json } => state::dump(&home, &config, json).await,
        Command::Backup { file, keep: None } => state::backup(&home, &config, &file).await,
        Command::Backup { file, keep: Some(keep) } => {
            state::backup_rotated(&home, &config, &file, keep).await
        }
        Command::Gc { db: false, dry_run, json, .. } => {
            gc::janitor(&home, &config, dry_run, json).await
        }
        Command::Gc { db: true, dry_run, vacuum, as_of, json } => {
            let now = as_of.map_or_else(ccm_schema::Timestamp::now, ccm_schema::Timestamp);
            gc::database(&home, &config, dry_run, vacuum, now, json).await
        }
        Command::Claims { json } => state::claims(&home, &config, json).await,
        Command::Conflicts { repo, fresh, json } => {
            state::conflicts(&home, &config, repo.as_deref(), fresh, json, &cwd).await
        }
        Command::Task(command) => task::run(&home, &config, command, &cwd).await,
        Command::Land(args) => land::run(&home, &config, args, &cwd).await,
        Command::Context(command) => {
            context::run(Backend::connect(&home, &config).await?, command, &cwd).await
        }
        Command::Agent(command) => {
            agent::run(&open_store(&home, &config).await?, &config, command).await
        }
        Command::Supervisors { digest: Some(name), .. } => {
            supervisors::digest(&home, &config, &name).await
        }
        Command::Supervisors { digest: None, json } => {
            supervisors::list(&home, &config, json).await
        }
        Command::Report { id, json } => supervisors::report(&home, &config, &id, json).await,
        Command::Alerts(args) => alerts::run(Backend::connect(&home, &config).await?, args).await,
        Command::Decide { id, answer, reason, json } => {
            decide::run(&home, &config, id, answer, reason, json).await
        }
        Command::Sync(command) => sync::run(&home, &config, command).await,
        Command::Systems { command, json } => systems::systems(&home, &config, command, json).await,
        Command::Notify(command) => crate::notify::cli::notify(&home, &config, command).await,
        Command::Service(command) => crate::notify::cli::service(&home, &config, command),
        Command::Lock(args) => coord::lock(&home, &config, args).await,
        Command::Doctor | Command::Hook(_) | Command::Stop { .. } | Command::Mcp => {
            unreachable!("handled before the config is loaded")
        }
    }
}

/// The nearest directory at or above `dir` holding `.ccm/`.
fn project_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join(".ccm").is_dir()).map(Path::to_path_buf)
}
