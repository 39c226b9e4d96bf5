//! `ccm task ...`: create, list, show, cancel, retry, depend, logs, event.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ccm_schema::types::short_id;
use ccm_schema::{Task, TaskEvent, TaskState};
use clap::{Args, Subcommand};

use super::backend::Backend;
use super::not_empty;
use super::output::{print, table};
use crate::config::Config;
use crate::home::{open_store, Home};
use crate::placement::{Added, Place};
use crate::store::{NewTask, RoutedControl, RoutedTask, Store, TaskDetail, TaskFilter};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a task.
    Add(AddArgs),
    /// List tasks, oldest first: every unfinished task and the most recently finished ones.
    List {
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<TaskState>,
        /// Finished tasks (complete, failed, cancelled) to list, the most recent.
        #[arg(long, default_value_t = 50, conflicts_with = "all")]
        limit: u32,
        /// Every task, however many have finished.
        #[arg(long)]
        all: bool,
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
    /// Run a task routed to the fleet on another system (`--any`: on any system that can).
    Pin {
        #[arg(value_parser = not_empty)]
        id: String,
        /// The system's name or id.
        #[arg(required_unless_present = "any", conflicts_with = "any")]
        system: Option<String>,
        #[arg(long)]
        any: bool,
    },
    /// Make a waiting task depend on other tasks (a cycle is refused).
    Depend {
        #[arg(value_parser = not_empty)]
        id: String,
        /// Tasks that must complete first.
        #[arg(long = "on", required = true, num_args = 1..)]
        on: Vec<String>,
    },
    /// Drop a finished task's work: it leaves the land queue, and `ccm gc` may then remove its
    /// branch and worktree whatever they hold.
    Discard {
        #[arg(value_parser = not_empty)]
        id: String,
        #[arg(long, default_value = "discarded by the operator")]
        reason: String,
    },
    /// Print the task's branch against its target (what landing it would bring).
    Diff {
        #[arg(value_parser = not_empty)]
        id: String,
        /// Files with their hunks, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Comment on lines of a finished task's diff (`ccm task diff`), and request changes: the
    /// pending comments go to its next attempt, which does not count against its budget.
    Review {
        #[arg(value_parser = not_empty)]
        id: String,
        /// A comment on line LINE of the branch's FILE (a line the diff shows); repeatable.
        #[arg(long = "comment", num_args = 2, value_names = ["FILE:LINE", "TEXT"], allow_hyphen_values = true)]
        comment: Vec<String>,
        /// Start the next attempt with the task's pending comments in its prompt.
        #[arg(long)]
        request_changes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the output of the task's latest agent.
    Logs {
        #[arg(value_parser = not_empty)]
        id: String,
        /// Keep printing as the agent writes, until it ends.
        #[arg(long, short)]
        follow: bool,
        /// The agent's output as it wrote it (JSON events), not rendered.
        #[arg(long)]
        raw: bool,
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
pub struct AddArgs {
    title: String,
    /// What the agent is asked to do (default: the title); may begin with `-`. `-` alone reads
    /// it from stdin.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from this file (UTF-8 text, of any size).
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// The repository the task works in: a remote URL, the path of a registered checkout
    /// (`.` included) or a context id. Default: the registered checkout around the current
    /// directory, if any.
    #[arg(long, conflicts_with = "no_repo")]
    repo: Option<String>,
    /// Work in a scratch directory, not in a repository.
    #[arg(long)]
    no_repo: bool,
    /// Run on this system of the fleet (its name or id); it waits for that system.
    #[arg(long)]
    system: Option<String>,
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
    /// Tasks that must complete first (repeatable). A task of a repository with a landing
    /// policy (`land:`) waits until they landed.
    #[arg(long = "after")]
    after: Vec<String>,
    /// With one --after A: start from A's branch as soon as A is complete (not waiting for A
    /// to land); it lands after A, rebased so that only its own commits land.
    #[arg(long, requires = "after")]
    stack: bool,
    /// Split the task into sub-tasks when the prompt says it has parts (seed 001's
    /// deterministic heuristic: numbered lists and then/after ordering, or parallel keywords
    /// in a long prompt; the keyword lists are `coordination.split` in the config). The task
    /// itself runs after its parts.
    #[arg(long)]
    split: bool,
    /// With --split: print the plan, create nothing (--json: the parts with their titles and
    /// dependencies).
    #[arg(long, requires = "split")]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

/// The task and its parts for the daemon (or the store): each part a task of its own in the
/// same repository, with the parent's profile and priority; the parent keeps the whole prompt
/// and its verify, and runs last.
fn split_request(mut parent: NewTask, plan: &crate::split::Plan) -> crate::daemon::SplitRequest {
    let count = plan.parts.len();
    let parts = plan
        .parts
        .iter()
        .enumerate()
        .map(|(i, part)| crate::daemon::SplitPart {
            task: NewTask {
                title: part.title.clone(),
                prompt: Some(format!(
                    "{}\n\n(Part {} of {count} of the task \"{}\"; the other parts are done by other agents.)",
                    part.prompt,
                    i + 1,
                    parent.title
                )),
                repo: parent.repo.clone(),
                profile: parent.profile.clone(),
                workflow: None,
                verify: None,
                max_attempts: parent.max_attempts,
                priority: parent.priority,
                depends_on: Vec::new(),
                stack: false,
            },
            after: part.depends_on.clone(),
        })
        .collect();
    let whole = parent.prompt.take().unwrap_or_else(|| parent.title.clone());
    parent.prompt = Some(format!(
        "{whole}\n\nThis task was split into {count} sub-tasks, which ran before it (`ccm task \
         show` lists them): check that their work fits together and finish what is missing."
    ));
    crate::daemon::SplitRequest { task: parent, parts }
}

/// `--split --dry-run`: the plan in words.
fn show_plan(plan: &crate::split::Plan) {
    if plan.parts.is_empty() {
        println!("not split: {}", plan.reason);
        return;
    }
    println!("split into {} sub-tasks: {}", plan.parts.len(), plan.reason);
    for (i, part) in plan.parts.iter().enumerate() {
        let after: Vec<String> = part.depends_on.iter().map(|d| (d + 1).to_string()).collect();
        let after = if after.is_empty() {
            String::new()
        } else {
            format!("  (after {})", after.join(", "))
        };
        println!("  {}. {}{after}", i + 1, part.title);
    }
}

/// The prompt of `task add`: `--prompt TEXT`, `--prompt -` (stdin) or `--prompt-file FILE`.
/// Read from stdin or a file, it must be UTF-8 text and not empty.
fn read_prompt(prompt: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let (bytes, source) = match (prompt, file) {
        (Some(prompt), _) if prompt != "-" => return Ok(Some(prompt)),
        (Some(_), _) => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
                .context("cannot read the prompt from stdin (--prompt -)")?;
            (bytes, "the prompt read from stdin (--prompt -)".to_string())
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read prompt file {}", path.display()))?;
            (bytes, format!("prompt file {}", path.display()))
        }
        (None, None) => return Ok(None),
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        anyhow::anyhow!("{source} is not UTF-8 text (invalid byte at offset {at})")
    })?;
    if text.trim().is_empty() {
        anyhow::bail!("{source} is empty");
    }
    Ok(Some(text))
}

pub async fn run(
    home: &Home,
    config: &Config,
    command: TaskCommand,
    cwd: &Path,
) -> anyhow::Result<()> {
    if let TaskCommand::Logs { id, follow, raw } = command {
        return logs(&open_store(home, config).await?, &id, follow, raw).await;
    }
    if let TaskCommand::Diff { id, json } = command {
        let store = open_store(home, config).await?;
        let diff = crate::conflicts::diff(&store, &id).await?;
        return print(json, &diff, |diff| {
            if diff.files.is_empty() {
                println!("branch {} changes nothing against {}", diff.branch, diff.target);
            }
            print!("{}", diff.text);
            if diff.truncated {
                println!(
                    "(cut at {} bytes; `git diff {}...{}` shows it whole)",
                    crate::conflicts::DIFF_LIMIT,
                    diff.target,
                    diff.branch
                );
            }
        });
    }
    let backend = Backend::connect(home, config).await?;
    match command {
        TaskCommand::Add(args) => {
            let contexts = backend.contexts().await?;
            let place = if args.no_repo {
                Place::Scratch
            } else {
                Place::resolve(args.repo.as_deref(), &contexts, cwd)?
            };
            let prompt = read_prompt(args.prompt, args.prompt_file.as_deref())?;
            let plan = args.split.then(|| {
                let text = prompt.as_deref().unwrap_or(&args.title);
                crate::split::plan(text, &config.coordination.split)
            });
            if let Some(plan) = plan.as_ref().filter(|_| args.dry_run) {
                return print(args.json, &plan.parts, |_| show_plan(plan));
            }
            let new = NewTask {
                title: args.title,
                prompt,
                repo: place.repo(),
                profile: args.profile,
                workflow: args.workflow,
                verify: args.verify,
                max_attempts: args.max_attempts,
                priority: args.priority,
                depends_on: args.after,
                stack: args.stack,
            };
            if let Some(plan) = plan.as_ref().filter(|p| !p.parts.is_empty()) {
                if args.system.is_some() {
                    anyhow::bail!("--split creates the task and its parts here: drop --system");
                }
                let answer = backend.create_split(split_request(new, plan)).await?;
                return print(args.json, &answer, |a| {
                    println!(
                        "created task {} split into {} sub-tasks ({}):",
                        a.parent.short_id(),
                        a.parts.len(),
                        plan.reason
                    );
                    for part in &a.parts {
                        let after: Vec<String> = part.depends_on.iter().map(short_id).collect();
                        let after = if after.is_empty() {
                            String::new()
                        } else {
                            format!("  (after {})", after.join(", "))
                        };
                        println!("  {}  {}{after}", part.short_id(), part.title);
                    }
                });
            }
            if let Some(plan) = &plan {
                eprintln!("not split: {}", plan.reason);
            }
            let pin = args.system.as_deref();
            // Whether the central answers (asked once, for a pin or a routed task).
            let mut reachable = None;
            if let Some(pin) = pin.filter(|_| config.sync.enabled()) {
                // Named wrong, it would only be refused by the central later: say so now when
                // the central answers.
                let known = super::systems::known_systems(home, config, FLEET_WAIT).await;
                if let Some(known) = &known {
                    check_pin(pin, known)?;
                }
                reachable = Some(known.is_some());
            }
            match backend.add_task(new, &place, pin).await? {
                Added::Routed(routed) => {
                    let reachable = match reachable {
                        Some(reachable) => reachable,
                        None => {
                            super::systems::known_systems(home, config, FLEET_WAIT).await.is_some()
                        }
                    };
                    print(args.json, &routed, |r| {
                        let short = short_id(&r.task.id);
                        println!("routed task {short} to the fleet: {}", r.task.title);
                        println!("  {}; `ccm task show {short}` follows it", r.routed_because);
                        if !reachable {
                            println!(
                                "  the central cannot be asked now (see `ccm sync status`): the \
                                 task waits here and is sent once it can"
                            );
                        }
                    })
                }
                Added::Here(task) => {
                    warn_if_program_missing(config, &task.profile);
                    print(args.json, &task, |t| {
                        println!("created task {} ({}): {}", t.short_id(), t.state, t.title);
                        println!("  {place}");
                    })
                }
            }
        }
        TaskCommand::List { state, limit, all, json } => {
            // One more than shown says whether older finished tasks were left out.
            let finished = (!all).then_some(i64::from(limit) + 1);
            let mut tasks = backend.tasks(TaskFilter { state, finished }).await?;
            let older = finished.is_some_and(|n| {
                tasks.iter().filter(|t| t.state.is_terminal()).count() as i64 >= n
            });
            if older {
                let oldest = tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.state.is_terminal())
                    .min_by(|(_, a), (_, b)| a.updated_at.cmp(&b.updated_at).then(b.id.cmp(&a.id)))
                    .map(|(i, _)| i);
                if let Some(i) = oldest {
                    tasks.remove(i);
                }
            }
            let mut routed =
                if config.sync.enabled() { backend.routed_tasks().await? } else { vec![] };
            if let Some(state) = state {
                routed.retain(|r| r.state() == state.as_str());
            }
            // Tasks run here for the fleet whose lease was lost: marked stale.
            let stale: std::collections::HashMap<uuid::Uuid, String> =
                if config.sync.enabled() { backend.stale_routed().await? } else { vec![] }
                    .into_iter()
                    .map(|s| (s.id, s.reason))
                    .collect();
            if json {
                // One list of every task this system knows of: its own, then those it routed
                // to the fleet (`routed` says where they run).
                let mut all = serde_json::to_value(&tasks)?;
                if let Some(all) = all.as_array_mut() {
                    for task in all.iter_mut() {
                        let why = task["id"]
                            .as_str()
                            .and_then(|id| uuid::Uuid::parse_str(id).ok())
                            .and_then(|id| stale.get(&id));
                        if let (Some(why), Some(task)) = (why, task.as_object_mut()) {
                            task.insert("stale".into(), why.clone().into());
                        }
                    }
                    all.extend(routed.iter().map(routed_json));
                }
                return print(true, &all, |_| {});
            }
            show_tasks(&tasks, &stale);
            if older {
                println!(
                    "older finished tasks are not listed (--limit N lists more, --all every one)"
                );
            }
            show_routed_tasks(&routed);
            Ok(())
        }
        TaskCommand::Show { id, events: true, json } => {
            let events = backend.task_events(&id).await?;
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
        TaskCommand::Show { id, json, .. } => match backend.task(&id).await {
            Ok(detail) => print(json, &detail, show_detail),
            Err(error) => match backend.routed_task(&id).await {
                Ok(Some(routed)) => print(json, &routed, show_routed),
                _ => Err(error),
            },
        },
        TaskCommand::Cancel { id, reason } => {
            match backend.apply_event(&id, TaskEvent::Cancel, &reason).await {
                Ok(task) => println!("task {} is {}", task.short_id(), task.state),
                Err(error) => {
                    control(&backend, &id, RoutedControl::Cancel, &reason, None, error).await?
                }
            }
            Ok(())
        }
        TaskCommand::Retry { id, reason } => {
            match backend.apply_event(&id, TaskEvent::Retry, &reason).await {
                Ok(task) => println!("task {} is {} again", task.short_id(), task.state),
                Err(error) => {
                    control(&backend, &id, RoutedControl::Retry, &reason, None, error).await?
                }
            }
            Ok(())
        }
        TaskCommand::Pin { id, system, .. } => {
            let not_routed = match backend.task(&id).await {
                Ok(detail) => anyhow::anyhow!(
                    "task {} runs on this system; only a task routed to the fleet has a system to pin",
                    detail.task.short_id()
                ),
                Err(error) => error,
            };
            if let Some(system) = &system {
                // Named wrong, it would only be refused by the central later: say so now when
                // the central answers.
                if let Some(known) = super::systems::known_systems(home, config, FLEET_WAIT).await {
                    check_pin(system, &known)?;
                }
            }
            let reason = "moved by the operator";
            control(&backend, &id, RoutedControl::Pin, reason, system.as_deref(), not_routed).await
        }
        TaskCommand::Discard { id, reason } => {
            let discarded = backend.discard(&id, &reason).await?;
            println!(
                "task {} discarded: its work will not land; `ccm gc` removes its branch",
                short_id(&discarded.task_id)
            );
            Ok(())
        }
        TaskCommand::Review { id, comment, request_changes, json } => {
            let mut comments = Vec::new();
            for pair in comment.chunks(2) {
                let [at, text] = pair else { unreachable!("clap takes --comment's two values") };
                let (file, line) = crate::review::parse_location(at)
                    .map_err(|why| anyhow::anyhow!("--comment {why}"))?;
                comments.push(crate::store::NewComment { file, line, text: text.clone() });
            }
            if comments.is_empty() && !request_changes {
                anyhow::bail!(
                    "nothing to do: give --comment FILE:LINE TEXT (repeatable), --request-changes, or both"
                );
            }
            let request = crate::review::ReviewRequest { comments, request_changes };
            let reviewed = backend.review(&id, &request).await?;
            print(json, &reviewed, |reviewed| {
                let short = reviewed.task.short_id();
                for c in &reviewed.added {
                    println!("comment {} on {}:{} added to task {short}", c.id, c.file, c.line);
                }
                if !reviewed.sent.is_empty() {
                    println!(
                        "changes requested: {} comment(s) go to attempt {} of task {short} (not counted against its budget; it is {})",
                        reviewed.sent.len(),
                        reviewed.task.attempts + 1,
                        reviewed.task.state
                    );
                }
            })
        }
        TaskCommand::Depend { id, on } => {
            let task = backend.add_dependencies(&id, &on).await?;
            let deps: Vec<String> = task.depends_on.iter().map(short_id).collect();
            println!("task {} depends on {}", task.short_id(), deps.join(", "));
            Ok(())
        }
        TaskCommand::Logs { .. } | TaskCommand::Diff { .. } => {
            unreachable!("handled before connecting")
        }
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

/// Prints the output log of the task's latest agent; with `follow`, keeps printing until the
/// agent has ended and its log is drained.
async fn logs(store: &Store, id: &str, follow: bool, raw: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let task = store.task(id).await?.task;
    let agents = store.task_agents(task.id).await?;
    let agent = agents
        .last()
        .ok_or_else(|| anyhow::anyhow!("task {} has not run an agent yet", task.short_id()))?;
    let dir = PathBuf::from(&agent.dir);
    let mut offset = 0;
    // The end of the output that is not a whole line yet.
    let mut partial = Vec::new();
    loop {
        let ended = !follow
            || dir.join("exit").exists()
            || !store.agent(&agent.id.to_string()).await?.status.is_live();
        if let Ok(mut file) = tokio::fs::File::open(dir.join("output.log")).await {
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut fresh = Vec::new();
            file.read_to_end(&mut fresh).await?;
            offset += fresh.len() as u64;
            let mut out = std::io::stdout().lock();
            if raw {
                out.write_all(&fresh)?;
            } else {
                partial.extend_from_slice(&fresh);
                let whole = partial.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                for line in String::from_utf8_lossy(&partial[..whole]).lines() {
                    for rendered in crate::agents::render::render(line) {
                        writeln!(out, "{rendered}")?;
                    }
                }
                partial.drain(..whole);
            }
            out.flush()?;
        }
        if ended {
            if !raw && !partial.is_empty() {
                for rendered in crate::agents::render::render(&String::from_utf8_lossy(&partial)) {
                    println!("{rendered}");
                }
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A cancel, retry or pin of a task routed from here, when `id` names none here (`local`,
/// the error of the local attempt, is the answer when no routed task matches either).
async fn control(
    backend: &Backend,
    id: &str,
    control: RoutedControl,
    reason: &str,
    system: Option<&str>,
    local: anyhow::Error,
) -> anyhow::Result<()> {
    let Some(routed) = backend.control_routed(id, control, reason, system).await? else {
        return Err(local);
    };
    let short = short_id(&routed.id);
    let on =
        routed.system().map(|s| format!(" (now {} on {s})", routed.state())).unwrap_or_default();
    let what = match (control, system) {
        (RoutedControl::Cancel, _) => "cancel".to_string(),
        (RoutedControl::Retry, _) => "retry".to_string(),
        (RoutedControl::Pin, Some(system)) => format!("move to {system}"),
        (RoutedControl::Pin, None) => "move to any system".to_string(),
    };
    println!("routed task {short}: {what} requested{on}");
    let after = match control {
        RoutedControl::Cancel => "the system running it stops its agent at its next heartbeat",
        RoutedControl::Retry => "it is queued again for the fleet",
        RoutedControl::Pin => "a system running it elsewhere gives it up at its next heartbeat",
    };
    println!("  sent to the central with sync; {after}; `ccm task show {short}` follows it");
    Ok(())
}

/// How long `task add` and `task pin` wait for the central to list the fleet's systems.
const FLEET_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Refuses a pin that names none of the fleet's `systems` (`(name, id)`), naming those it has.
fn check_pin(pin: &str, systems: &[(String, String)]) -> anyhow::Result<()> {
    if systems.iter().any(|(name, id)| name == pin || *id == pin.to_ascii_lowercase()) {
        return Ok(());
    }
    let names: Vec<&str> = systems.iter().map(|(name, _)| name.as_str()).collect();
    anyhow::bail!(
        "unknown system `{pin}`: no system of the fleet has that name or id (the fleet has: {})",
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    )
}

fn show_routed_tasks(routed: &[RoutedTask]) {
    if routed.is_empty() {
        return;
    }
    println!("routed to the fleet:");
    table(
        &["ID", "STATE", "SYSTEM", "PRI", "TITLE"],
        routed.iter().map(|r| {
            vec![
                short_id(&r.id),
                match r.requested {
                    Some(control) => format!("{} ({control} requested)", r.state()),
                    None => r.state(),
                },
                r.system().unwrap_or("-").to_string(),
                r.priority.to_string(),
                r.title.clone(),
            ]
        }),
    );
}

/// How much of a prompt `task show` prints as text; `--json` has all of it.
const SHOWN_PROMPT_BYTES: usize = 2000;

/// A prompt as `task show` prints it: whole when short, else its beginning and its size.
fn shown_prompt(prompt: &str) -> String {
    if prompt.len() <= SHOWN_PROMPT_BYTES {
        return prompt.to_string();
    }
    format!(
        "{}\n            ({} bytes in all; `--json` shows it whole)",
        crate::text::head(prompt, SHOWN_PROMPT_BYTES),
        prompt.len()
    )
}

/// A routed task in `ccm task list --json`: the keys of a local task where it has them, and
/// `routed` with where it runs.
fn routed_json(r: &RoutedTask) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "title": r.title,
        "state": r.state(),
        "priority": r.priority,
        "max_attempts": r.max_attempts,
        "repo": r.repo,
        "profile": r.profile,
        "verify": r.verify,
        "created_at": r.created_at,
        "routed": {
            "system": r.system(),
            "pin": r.pin,
            "submitted_at": r.submitted_at,
            "waiting": r.central.as_ref().and_then(|c| c.reason.as_deref()),
        },
    })
}

/// `ccm task show` of a routed task: what the central says of it.
fn show_routed(r: &RoutedTask) {
    println!("task {}  {}", r.id, r.title);
    let central = r.central.as_ref();
    let on = r.system().map(|s| format!(" on {s}")).unwrap_or_default();
    println!("  state     {}{on} (routed to the fleet)", r.state());
    if let Some(control) = r.requested {
        println!("  requested {control} (waits for the central's answer)");
    }
    if let Some(reason) = central.and_then(|c| c.reason.as_deref()) {
        println!("  waiting   {reason}{}", waiting_why(reason));
    }
    if let Some(why) = central.and_then(|c| c.last_error.as_deref()) {
        println!("  last      {why}");
    }
    if let Some(repo) = &r.repo {
        println!("  repo      {repo}");
    }
    if let Some(pin) = &r.pin {
        println!("  pinned    {pin}");
    }
    match r.submitted_at {
        Some(at) => println!("  submitted {at}"),
        None => println!("  submitted not yet (waits for sync to reach the central)"),
    }
    println!("  prompt    {}", shown_prompt(&r.prompt));
    let attempts = central.map(|c| c.attempts.as_slice()).unwrap_or_default();
    if !attempts.is_empty() {
        println!("attempts:");
    }
    for a in attempts {
        let text = |k: &str| a[k].as_str().unwrap_or("-").to_string();
        println!(
            "  #{} on {}  token {}  claimed {}  ended {}  {}",
            a["attempt"],
            text("system_name"),
            a["fencing_token"],
            text("claimed_at"),
            text("ended_at"),
            text("outcome"),
        );
    }
    if !r.log.is_empty() {
        println!("log (as this system saw it):");
    }
    for e in &r.log {
        println!(
            "  {}  {} -> {}{}{}",
            e.at,
            e.from.as_deref().unwrap_or("-"),
            e.to,
            e.system.as_deref().map(|s| format!(" on {s}")).unwrap_or_default(),
            e.reason.as_deref().map(|r| format!("  {r}")).unwrap_or_default(),
        );
    }
    if let Some(result) = central.and_then(|c| c.result.as_ref()) {
        println!("result:");
        println!(
            "  {} ({}), cost ${:.4}, tokens {} in / {} out",
            result["status"].as_str().unwrap_or("?"),
            result["summary"].as_str().unwrap_or("-"),
            result["cost_usd"].as_f64().unwrap_or(0.0),
            result["input_tokens"],
            result["output_tokens"],
        );
        show_work(&result["report"]["work"]);
    }
}

/// What the central's reason for a waiting routed task means, after its code.
fn waiting_why(reason: &str) -> &'static str {
    match reason {
        "no_context" => " (no system of the fleet has a checkout of its repository)",
        "all_busy" => " (every system that could run it is busy)",
        "all_stale" => " (no system that could run it has sent a heartbeat lately)",
        "pinned_system_draining" => {
            " (the system it is pinned to is draining; `ccm task pin` moves it)"
        }
        _ => "",
    }
}

/// A report's work: its diff stat and commits.
fn show_work(work: &serde_json::Value) {
    match work["diff_stat"].as_str().map(str::trim_end) {
        Some("") => println!("  no changes"),
        Some(stat) => stat.lines().for_each(|line| println!("  {}", line.trim())),
        None if work["error"].is_string() => println!("  work: {}", work["error"]),
        None => {}
    }
    let commits = work["commits"].as_array().map(Vec::as_slice).unwrap_or_default();
    for c in commits {
        let sha = c["sha"].as_str().unwrap_or_default();
        println!("  commit {}  {}", &sha[..sha.len().min(10)], c["subject"].as_str().unwrap_or(""));
    }
}

fn show_tasks(tasks: &[Task], stale: &std::collections::HashMap<uuid::Uuid, String>) {
    if tasks.is_empty() {
        println!("no tasks");
        return;
    }
    table(
        &["ID", "STATE", "PRI", "ATTEMPTS", "AFTER", "TITLE"],
        tasks.iter().map(|t| {
            vec![
                t.short_id(),
                match (stale.contains_key(&t.id), t.state, t.wake_at) {
                    (true, _, _) => format!("{} (stale)", t.shown_state()),
                    (false, ccm_schema::TaskState::WaitingQuota, Some(wake)) => {
                        format!("{} until {wake}", t.shown_state())
                    }
                    _ => t.shown_state().to_string(),
                },
                t.priority.to_string(),
                format!("{}/{}", t.attempts, t.max_attempts),
                t.depends_on.iter().map(short_id).collect::<Vec<_>>().join(","),
                t.title.clone(),
            ]
        }),
    );
}

pub(super) fn show_task(detail: &TaskDetail) {
    let t = &detail.task;
    println!("task {}  {}", t.id, t.title);
    println!(
        "  state     {}{}  (attempts {}/{}, priority {})",
        t.shown_state(),
        if detail.stale.is_some() { " (stale)" } else { "" },
        t.attempts,
        t.max_attempts,
        t.priority
    );
    if let Some(why) = &detail.stale {
        println!("  stale     {why}; the fleet's result is on the task's origin");
    }
    if let Some(discarded) = &detail.discarded {
        println!("  discarded {} ({})", discarded.discarded_at, discarded.reason);
    }
    if let Some(landing) = &detail.landing {
        let head = |h: &Option<String>| {
            h.as_deref().map_or("-".to_string(), |h| h[..h.len().min(10)].to_string())
        };
        println!(
            "  landing   {} on {} in {} (from {} to {}{})",
            landing.state,
            landing.target,
            landing.repo,
            head(&landing.old_head),
            head(&landing.new_head),
            if landing.restarts > 0 {
                format!(", {} restarts", landing.restarts)
            } else {
                String::new()
            }
        );
        if let (Some(number), Some(url)) = (landing.pr_number, &landing.pr_url) {
            println!("            pull request #{number} {url}");
        }
        if let Some(reason) = &landing.reason {
            println!("            {reason}");
        }
    }
    for c in &detail.review {
        let status = match c.for_attempt {
            Some(n) if c.requested_at.is_some() => format!("sent to attempt {n}"),
            _ => "pending".to_string(),
        };
        println!("  review    {}:{} ({}, {status}): {}", c.file, c.line, c.created_by, c.text);
    }
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
    if let Some(stack) = &detail.stack {
        let fork = stack.fork_commit.as_deref().map(|f| format!(" at {}", &f[..f.len().min(10)]));
        println!(
            "  stacked   on {}: starts from its branch {}{}, lands after it{}",
            short_id(&stack.base_task),
            stack.base_branch(),
            fork.unwrap_or_default(),
            stack
                .waits_for()
                .filter(|_| t.state == ccm_schema::TaskState::Complete)
                .map(|w| format!(" (waits for {w})"))
                .unwrap_or_default()
        );
    }
    if let Some(wake) = t.wake_at {
        println!("  wakes at  {wake}");
    }
    println!("  prompt    {}", shown_prompt(&t.prompt));
    println!("log:");
    for entry in &detail.log {
        let from = entry.from_state.map_or("-".to_string(), |s| s.to_string());
        println!(
            "  {}  {from} → {}  ({}, by {})",
            entry.at, entry.to_state, entry.reason, entry.actor
        );
    }
}

/// `ccm task show`: the task, its attempts (with their verify output), the latest report,
/// where its work is, its hook timeline, its log, and the commands to go further.
/// A sub-task tree, one line each, indented by depth: id, state, title, what it waits for,
/// its result's first line.
fn show_tree(subtasks: &[crate::store::Subtask], depth: usize) {
    for s in subtasks {
        let indent = "  ".repeat(depth);
        let after = if s.depends_on.is_empty() {
            String::new()
        } else {
            let ids: Vec<&str> = s.depends_on.iter().map(|d| &d[..d.len().min(8)]).collect();
            format!("  (after {})", ids.join(", "))
        };
        let system = match (&s.system, s.routed) {
            (Some(system), _) => format!("  on {system}"),
            (None, true) => "  routed".to_string(),
            (None, false) => String::new(),
        };
        println!(
            "{indent}└─ {}  {:<10} {}{after}{system}",
            &s.id[..s.id.len().min(8)],
            s.state.to_string(),
            s.title
        );
        if let Some(result) =
            s.result.as_deref().and_then(|r| r.lines().find(|l| !l.trim().is_empty()))
        {
            println!("{indent}     result: {}", crate::text::head(result, 120));
        }
        show_tree(&s.subtasks, depth + 1);
    }
}

fn show_detail(detail: &TaskDetail) {
    let t = &detail.task;
    let short = t.short_id();
    show_task(detail);
    if let Some(parent) = &detail.parent {
        println!("parent: {}", &parent[..parent.len().min(8)]);
    }
    if !detail.subtasks.is_empty() {
        println!("sub-tasks:");
        show_tree(&detail.subtasks, 1);
    }
    if let Some(worktree) = &detail.worktree {
        let worktree = &worktree.worktree;
        println!("work:\n  branch    {}\n  worktree  {}", worktree.branch, worktree.path.display());
    } else if t.repo.is_some() && !detail.runs.is_empty() {
        println!("work:\n  branch    ccm/{short} (its worktree is removed once the task ends)");
    }
    if detail.runs.is_empty() {
        println!("attempts: none yet");
    } else {
        println!("attempts:");
    }
    for run in &detail.runs {
        let took = run.ended_at.map(|end| {
            let secs = (end.millis() - run.started_at.millis()).max(0) as f64 / 1000.0;
            format!(", took {secs:.1}s")
        });
        println!(
            "  {}  {}  started {}{}  agent {}",
            run.number,
            run.outcome.as_deref().unwrap_or("running"),
            run.started_at,
            took.unwrap_or_default(),
            short_id(&run.agent_id)
        );
        if let Some(output) = run.verify_output.as_deref().filter(|o| !o.trim().is_empty()) {
            println!("     verify output:");
            for line in output.trim_end().lines() {
                println!("       | {line}");
            }
        }
        if let Some(message) = run.last_message.as_deref().filter(|m| !m.trim().is_empty()) {
            println!("     last message: {}", first_line(message, 200));
        }
    }
    if let Some(report) = detail.reports.last() {
        let r = &report.summary.0;
        println!("report (attempt {}):", report.attempt);
        show_work(&r["work"]);
        let cost = r["cost_usd"].as_f64().map_or("unknown".into(), |c| format!("${c:.4}"));
        println!(
            "  cost {cost}, tokens {} in / {} out, {} tool calls",
            r["tokens"]["input"], r["tokens"]["output"], r["tool_calls"]
        );
        if let Some(verdict) = &report.verdict {
            println!(
                "  review: {verdict}{}",
                report
                    .review
                    .as_deref()
                    .map(|r| format!(": {}", first_line(r, 200)))
                    .unwrap_or_default()
            );
        }
    }
    if !detail.touched_files.is_empty() {
        let more = detail.touched_files.len().saturating_sub(10);
        let shown = detail.touched_files.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        println!("touched: {shown}{more}");
    }
    if !detail.conflicts.is_empty() {
        println!("conflicts (predicted):");
        let id = t.id.to_string();
        for conflict in &detail.conflicts {
            println!("  {}", conflict.describe_from(&id));
        }
    }
    println!("hook events: {}", detail.hook_events);
    println!("next:");
    println!("  ccm task logs {short} [--follow]     what the agent printed");
    if let Some(run) = detail.runs.last().filter(|r| r.ended_at.is_none()) {
        println!(
            "  ccm agent attach {}            watch it in its terminal",
            short_id(&run.agent_id)
        );
    }
    if detail.hook_events > 0 {
        println!("  ccm task show {short} --events       the hook timeline");
    }
    if t.repo.is_some() && !detail.runs.is_empty() {
        println!("  ccm task diff {short}                its branch against the target");
    }
    if matches!(
        t.state,
        TaskState::Blocked | TaskState::Failed | TaskState::Alert | TaskState::Cancelled
    ) {
        println!("  ccm task retry {short}               run it again");
    }
}

/// The first line of `text`, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.trim().lines().next().unwrap_or_default();
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_string(),
    }
}

/// Says on stderr, when a task was just created, that its profile's program is not on PATH:
/// the task would fail when it starts (`ccm doctor` checks every profile).
fn warn_if_program_missing(config: &Config, profile: &str) {
    let Some(profile_config) = config.profiles.get(profile) else { return };
    if profile_config.mode == crate::agents::profile::Mode::External {
        return;
    }
    let Some(program) = profile_config.command.first() else { return };
    if crate::agents::on_path(program).is_none() {
        eprintln!(
            "warning: `{program}` (the program of profile {profile}) is not on PATH, so the task \
             fails when it starts unless it is installed first (`ccm doctor` checks the profiles)"
        );
    }
}
