//! `ccm land [ID...] [--all] [--plan]` and `ccm land status`: landing finished tasks on their
//! repository's target branch (the daemon's lander does the landing; these queue and show).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::backend::Backend;
use super::output::{print, table};
use crate::config::Config;
use crate::home::Home;
use crate::land::{LandRequest, PlannedTask, Queue};
use crate::store::Landing;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LandArgs {
    #[command(subcommand)]
    command: Option<LandCommand>,
    /// Tasks to land (ids or unique id prefixes).
    ids: Vec<String>,
    /// Land every finished, unlanded task of the repository around the current directory, in
    /// queue order.
    #[arg(long, conflicts_with = "plan")]
    all: bool,
    /// Print the finished, unlanded tasks of the repository around the current directory in
    /// the order they would land, and land nothing.
    #[arg(long)]
    plan: bool,
    /// The repository's checkout (default: the one around the current directory).
    #[arg(long, value_name = "PATH")]
    repo: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum LandCommand {
    /// The land queue of each repository and target, with what each entry waits for.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(home: &Home, config: &Config, args: LandArgs, cwd: &Path) -> anyhow::Result<()> {
    let backend = Backend::connect(home, config).await?;
    if let Some(LandCommand::Status { json }) = args.command {
        let queues: Vec<Queue> = match &backend {
            Backend::Daemon(client) => client.get(&["land"]).await?,
            Backend::Local { store, .. } => crate::land::status(store).await?,
        };
        return print(json, &queues, |queues| show_queues(queues));
    }
    let repo = match args.repo {
        Some(repo) => Some(
            std::fs::canonicalize(&repo)
                .map_err(|e| anyhow::anyhow!("--repo {}: {e}", repo.display()))?,
        ),
        None => checkout_around(cwd),
    };
    if args.plan {
        let planned: Vec<PlannedTask> = match &backend {
            Backend::Daemon(client) => {
                let query: Vec<(&str, String)> =
                    repo.iter().map(|r| ("repo", r.to_string_lossy().into_owned())).collect();
                let query: Vec<(&str, &str)> =
                    query.iter().map(|(k, v)| (*k, v.as_str())).collect();
                client.get_query(&["land", "plan"], &query).await?
            }
            Backend::Local { store, .. } => {
                crate::land::plan(store, home.root(), repo.as_deref()).await?
            }
        };
        return print(args.json, &planned, |planned| show_plan(planned));
    }
    if args.ids.is_empty() && !args.all {
        anyhow::bail!("name the tasks to land (`ccm land ID...`), or land them all with `--all`; `--plan` shows them first");
    }
    let request = LandRequest { tasks: args.ids, all: args.all, repo };
    let landings: Vec<Landing> = match &backend {
        Backend::Daemon(client) => client.post(&["land"], serde_json::to_value(&request)?).await?,
        Backend::Local { store, .. } => {
            crate::land::enqueue_request(store, home.root(), &request).await?
        }
    };
    print(args.json, &landings, |landings| {
        for landing in landings {
            println!(
                "{} queued to land on {} in {}",
                ccm_schema::types::short_id(&landing.task_id),
                landing.target,
                landing.repo
            );
        }
        if matches!(backend, Backend::Local { .. }) && !landings.is_empty() {
            println!("no daemon runs: they land once `ccm up` starts it");
        }
    })
}

/// The top level of the git checkout around `dir`, when there is one.
fn checkout_around(dir: &Path) -> Option<PathBuf> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let top = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::canonicalize(top).ok()
}

fn show_queues(queues: &[Queue]) {
    if queues.is_empty() {
        println!("no task waits to land");
        return;
    }
    for queue in queues {
        println!("{} → {}", queue.repo, queue.target);
        table(
            &["  TASK", "STATE", "TITLE", "WAITS FOR"],
            queue.entries.iter().map(|e| {
                vec![
                    format!("  {}", ccm_schema::types::short_id(&e.landing.task_id)),
                    e.landing.state.label().to_string(),
                    e.title.clone(),
                    e.waits_for.clone(),
                ]
            }),
        );
    }
}

/// A planned task's predicted conflicts in a line: `with 1a2b3c4d: src/a.rs; with main: b.txt`.
fn predicted(p: &PlannedTask) -> String {
    if p.predicted.is_empty() {
        return "-".into();
    }
    let mine = ccm_schema::types::short_id(&p.task_id);
    p.predicted
        .iter()
        .map(|c| {
            let other = match (&c.other, &c.target) {
                (Some(other), _) if other.short_id == mine => c.task.short_id.clone(),
                (Some(other), _) => other.short_id.clone(),
                (None, target) => target.clone().unwrap_or_else(|| p.target.clone()),
            };
            format!("with {other}: {}", c.files.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn show_plan(planned: &[PlannedTask]) {
    if planned.is_empty() {
        println!("no finished task waits to land");
        return;
    }
    table(
        &["#", "TASK", "STATE", "TARGET", "TITLE", "PREDICTED CONFLICTS"],
        planned.iter().enumerate().map(|(i, p)| {
            vec![
                (i + 1).to_string(),
                ccm_schema::types::short_id(&p.task_id),
                p.land_state.map_or("complete", |s| s.label()).to_string(),
                p.target.clone(),
                p.title.clone(),
                predicted(p),
            ]
        }),
    );
}
