//! `ccm task ...`: create, list, show, cancel, retry, depend, logs, event.

use std::path::PathBuf;

use anyhow::Context as _;
use ccm_schema::types::short_id;
use ccm_schema::{Task, TaskEvent, TaskState};
use clap::{Args, Subcommand};

use super::backend::Backend;
use super::not_empty;
use super::output::{print, table};
use crate::config::Config;
use crate::home::{open_store, Home};
use crate::store::{NewTask, Store, TaskDetail};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
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
pub struct AddArgs {
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

pub async fn run(home: &Home, config: &Config, command: TaskCommand) -> anyhow::Result<()> {
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

pub(super) fn show_task(detail: &TaskDetail) {
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
