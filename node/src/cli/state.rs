//! The node at a glance: `ccm status`, `ccm dump-state`, `ccm claims`, `ccm conflicts`,
//! `ccm backup`.

use anyhow::Context as _;
use std::path::Path;

use ccm_schema::types::short_id;

use super::backend::Backend;
use super::open_store;
use super::output::print;
use super::task::show_task;
use crate::client::Client;
use crate::config::Config;
use crate::home::Home;
use crate::status::StateDump;
use crate::status::Status;
use crate::store::{Store, TaskDetail};

pub async fn status(home: &Home, config: &Config, json: bool) -> anyhow::Result<()> {
    let status = Backend::connect(home, config).await?.status().await?;
    print(json, &status, |status| show_status(status, config.sync.enabled()))
}

pub async fn dump(home: &Home, config: &Config, json: bool) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    let daemon = Client::connect(home).await.ok().flatten().map(|c| c.daemon);
    let dump = StateDump::gather(&store, daemon).await?;
    print(json, &dump, |dump| show_dump(dump, config.sync.enabled()))
}

pub async fn backup(home: &Home, config: &Config, file: &Path) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    store.backup(file).await?;
    let copy = Store::open_existing(file, std::time::Duration::from_secs(10)).await?;
    let check = copy.integrity_check().await?;
    copy.close().await;
    anyhow::ensure!(check == "ok", "backup {} failed its integrity check: {check}", file.display());
    println!("backed up {} to {} (integrity check: ok)", store.path().display(), file.display());
    Ok(())
}

/// `ccm backup DIR --keep N`: a checked copy in `DIR`, the oldest beyond `keep` removed.
pub async fn backup_rotated(
    home: &Home,
    config: &Config,
    dir: &Path,
    keep: u64,
) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let rotated = crate::retention::backup_rotated(&store, dir, keep).await?;
    println!(
        "backed up {} to {} (integrity check: ok)",
        store.path().display(),
        rotated.written.display()
    );
    for old in &rotated.removed {
        println!("removed {} (keeping the {keep} newest)", old.display());
    }
    Ok(())
}

pub async fn claims(home: &Home, config: &Config, json: bool) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    let view = crate::daemon::ClaimsView {
        claims: store.claims().await?,
        change_requests: store.change_requests().await?,
        locks: store.locks().await?,
        allocations: store.allocations().await?,
        fleet_allocations: None,
    }
    .with_fleet(crate::fleet::cli_client(home, config).as_ref(), std::time::Duration::from_secs(3))
    .await;
    print(json, &view, show_claims)
}

/// `ccm conflicts`: the recorded predictions (all repositories, or one), or a fresh one.
pub async fn conflicts(
    home: &Home,
    config: &Config,
    repo: Option<&str>,
    fresh: bool,
    json: bool,
    cwd: &Path,
) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    let repo = match repo {
        Some(repo) => Some(repo_key(&store, repo).await?),
        None if fresh => {
            let contexts = store.contexts().await?;
            let place = crate::placement::Place::resolve(None, &contexts, cwd)?;
            Some(place.repo().context(
                "--fresh needs a repository: --repo, or run it in a registered checkout",
            )?)
        }
        None => None,
    };
    let view: Vec<crate::daemon::RepoConflicts> = match (&repo, fresh) {
        (Some(repo), true) => vec![crate::daemon::RepoConflicts {
            repo: repo.clone(),
            conflicts: crate::conflicts::predict(&store, repo).await?,
        }],
        _ => store
            .all_conflicts()
            .await?
            .into_iter()
            .filter(|(r, _)| repo.as_ref().is_none_or(|repo| repo == r))
            .map(|(repo, conflicts)| crate::daemon::RepoConflicts { repo, conflicts })
            .collect(),
    };
    print(json, &view, |view| {
        let count: usize = view.iter().map(|r| r.conflicts.len()).sum();
        if count == 0 {
            println!("no conflicts predicted");
        }
        for r in view.iter().filter(|r| !r.conflicts.is_empty()) {
            println!("{}", r.repo);
            for c in &r.conflicts {
                let from = &c.task.task_id;
                println!("  {} ({}) {}", c.task.short_id, c.task.title, c.describe_from(from));
            }
        }
    })
}

/// A task's `repo` for a repository the operator named: a registered checkout's path (or a
/// path inside it) is its remote URL when it has one, else its path.
async fn repo_key(store: &Store, repo: &str) -> anyhow::Result<String> {
    let contexts = store.contexts().await?;
    let path = std::fs::canonicalize(repo).ok();
    let found = contexts.iter().find(|c| {
        c.repo_url.as_deref() == Some(repo)
            || c.path == repo
            || path.as_ref().is_some_and(|p| p.starts_with(&c.path))
    });
    Ok(match found {
        Some(c) => c.repo_url.clone().unwrap_or_else(|| c.path.clone()),
        None => repo.to_string(),
    })
}

fn show_claims(view: &crate::daemon::ClaimsView) {
    println!("claims ({})", view.claims.len());
    for c in &view.claims {
        println!("  {}  {}  task {} ({}, {})", c.repo, c.path, &c.task_id[..8], c.title, c.state);
    }
    println!("change requests ({})", view.change_requests.len());
    for r in &view.change_requests {
        let owner = if r.owner.len() == 36 { &r.owner[..8] } else { r.owner.as_str() };
        let mut status = r.state.to_string();
        if let Some(to) = &r.forwarded_to {
            status.push_str(&format!(" → task {}", &to[..8.min(to.len())]));
        }
        if let Some(decision) = r.decision_id.as_deref().filter(|_| r.state.as_str() == "pending") {
            status.push_str(&format!(" (ccm decide {} approve|reject)", &decision[..8]));
        }
        if let Some(why) = &r.resolution {
            status.push_str(&format!(": {why}"));
        }
        println!(
            "  {}  {}  {}  owner {owner}  requested by task {}  {status}",
            &r.id[..8],
            r.repo,
            r.path,
            &r.requester_task[..8]
        );
    }
    println!("locks ({})", view.locks.len());
    for l in &view.locks {
        let held = match (&l.holder, l.expires_at, &l.fleet_holder) {
            (Some(holder), Some(until), _) => format!("held by {holder} until {until}"),
            (None, _, Some(system)) if l.waiters.is_some() => format!("held by system {system}"),
            _ => "free".to_string(),
        };
        let waiters = l.waiters.as_deref().map(|w| format!("  waiting: {w}")).unwrap_or_default();
        println!("  {} ({})  {held}  fence {}{waiters}", l.name, l.scope, l.fence);
    }
    if let Some(fleet) = &view.fleet_allocations {
        let held: Vec<_> = fleet.iter().filter(|a| a.state == "held").collect();
        println!("fleet allocations held ({})", held.len());
        for a in held {
            let task = a.task_id.map_or("-".to_string(), |t| t.to_string()[..8].to_string());
            let system = a.system.as_deref().unwrap_or("-");
            println!("  {}  {}  {}  system {system}  task {task}", a.repo, a.sequence, a.value);
        }
    }
    let held: Vec<_> = view.allocations.iter().filter(|a| a.state == "held").collect();
    println!("allocations held ({})", held.len());
    for a in held {
        let task = a.task_id.as_deref().map_or("-", |t| &t[..8]);
        println!("  {}  {}  {}  task {task}", a.repo, a.sequence, a.formatted);
    }
}

/// `sync`: whether sync is configured; without it the outbox is not shown (its count only
/// grows).
fn show_status(status: &Status, sync: bool) {
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
    for l in &status.account_limits {
        let whose = match (&l.system, &l.task_id) {
            (Some(system), _) => format!("reported by {system}"),
            (None, Some(task)) => format!("hit by task {}", &task[..task.len().min(8)]),
            (None, None) => "hit here".to_string(),
        };
        println!(
            "limit   account {} at its usage limit until {} ({whose}; {} tasks waiting)",
            l.account, l.reset_at, l.waiting
        );
    }
    for c in &status.cost_caps {
        let short = &c.decision_id[..c.decision_id.len().min(8)];
        let state = match c.state.as_str() {
            "raised" => format!(
                "raised to ${:.2} for {} by {}",
                c.cap_usd,
                c.day,
                c.answered_by.as_deref().unwrap_or("someone")
            ),
            "kept" => format!("kept at ${:.2}: its tasks wait until {}", c.cap_usd, c.day_ends_at),
            _ => format!(
                "${:.2} reached (${:.2} spent on {}); raise to ${:.2}? `ccm decide {short} approve`",
                c.cap_usd, c.spent_usd, c.day, c.raise_to_usd
            ),
        };
        println!(
            "cap     {} {}: daily cost cap {state} ({} tasks waiting)",
            c.scope, c.name, c.waiting
        );
    }
    for l in &status.loops {
        let last = l.last_progress.map_or("no step yet".to_string(), |t| t.to_string());
        let state = match (l.stalled, l.busy) {
            (true, _) => "STALLED in a step since",
            (false, true) => "in a step since",
            (false, false) => "last progress",
        };
        println!("loop    {}: {state} {last}", l.name);
    }
    let see =
        |n: usize, command: &str| if n > 0 { format!(" (`{command}`)") } else { String::new() };
    println!("alerts  {} open{}", status.open_alerts, see(status.open_alerts, "ccm alerts"));
    println!(
        "decide  {} pending{}",
        status.pending_decisions,
        see(status.pending_decisions, "ccm decide")
    );
    show_storage(&status.storage, sync);
    if !sync {
        println!("sync    not configured (changes stay on this machine; see sync: in the config)");
        return;
    }
    println!(
        "outbox  {} pending, {} delivered, {} rejected{}",
        status.outbox.pending,
        status.outbox.delivered,
        status.outbox.rejected,
        see(usize::try_from(status.outbox.rejected).unwrap_or(0), "ccm sync status")
    );
    for (lane, s) in &status.sync {
        let ok = s.last_ok_at.map_or("never".to_string(), |t| t.to_string());
        let paused = s.paused_reason.as_ref().map(|r| format!(", paused: {r}")).unwrap_or_default();
        let error = s.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default();
        println!("sync    {lane}: backlog {}, last success {ok}{error}{paused}", s.backlog);
    }
    if crate::sync::paused_reason(&status.sync).is_some() {
        println!("sync    paused: {}", crate::sync::RESUME_HINT);
    }
}

/// The database's lines of `ccm status`: size, rows of the biggest kinds, the last pass.
/// Without sync the outbox's tables are left out (as its counts are).
fn show_storage(storage: &crate::store::StorageStats, sync: bool) {
    let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
    println!(
        "db      {:.1} MiB ({:.1} MiB free, WAL {:.1} MiB, auto-vacuum {})",
        mib(storage.db_bytes),
        mib(storage.free_bytes),
        mib(storage.wal_bytes),
        storage.auto_vacuum
    );
    let rows: Vec<String> = storage
        .rows
        .iter()
        .filter(|(table, _)| sync || !table.starts_with("outbox"))
        .map(|(table, n)| format!("{table} {n}"))
        .collect();
    println!("rows    {}", rows.join(", "));
    match &storage.last_pass {
        None => println!("gc      no retention pass yet (`ccm gc --db` runs one)"),
        Some(pass) => {
            let removed: Vec<String> = pass
                .removed
                .iter()
                .filter(|(kind, n)| **n > 0 && (sync || !kind.starts_with("outbox")))
                .map(|(kind, n)| format!("{kind} {n}"))
                .collect();
            println!(
                "gc      last retention pass {}: removed {}",
                pass.finished_at,
                if removed.is_empty() { "nothing".into() } else { removed.join(", ") }
            );
        }
    }
}

fn show_dump(dump: &StateDump, sync: bool) {
    show_status(&dump.status, sync);
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
            worktree: None,
            hook_events: 0,
            stale: None,
            conflicts: Vec::new(),
            touched_files: Vec::new(),
            landing: None,
            discarded: None,
            stack: None,
            parent: None,
            subtasks: Vec::new(),
            review: Vec::new(),
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
