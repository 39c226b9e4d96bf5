//! `ccm gc`: the janitor now (worktrees and branches of ended tasks, whatever their age), or
//! with `--db` a retention pass now (rows and agents' files past their `retention:` age).

use ccm_schema::Timestamp;

use super::output::print;
use crate::config::Config;
use crate::home::{open_store, Home};
use crate::janitor::{self, Verdict};
use crate::store::RetentionReport;

pub async fn janitor(
    home: &Home,
    config: &Config,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    let options = janitor::Options { min_age: std::time::Duration::ZERO, disk_budget: 0 };
    let plan = janitor::plan(&store, options).await?;
    let report = if dry_run { plan } else { janitor::apply(&store, plan).await? };
    print(json, &report, show_janitor)?;
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} removal(s) failed: {}",
        report.errors.len(),
        report.errors.join("; ")
    );
    Ok(())
}

fn show_janitor(report: &janitor::Report) {
    if report.items.is_empty() {
        println!("no task branches in the registered repositories");
        return;
    }
    let (remove, keep) =
        if report.dry_run { ("would remove", "would keep") } else { ("removed", "kept") };
    for item in &report.items {
        let (what, why) = match &item.verdict {
            Verdict::Remove(why) => (remove, why),
            Verdict::Keep(why) => (keep, why),
        };
        let worktree = item
            .work
            .worktree
            .as_ref()
            .map(|w| format!(" and worktree {}", w.display()))
            .unwrap_or_default();
        println!("{what} {}{worktree} in {}: {why}", item.work.branch, item.repo.display());
    }
    let removed = report.removed().count();
    println!(
        "{} {removed} of {} task branches",
        if report.dry_run { "would remove" } else { "removed" },
        report.items.len()
    );
}

pub async fn database(
    home: &Home,
    config: &Config,
    dry_run: bool,
    vacuum: bool,
    now: Timestamp,
    json: bool,
) -> anyhow::Result<()> {
    let store = open_store(home, config).await?;
    if vacuum && !dry_run && store.convert_to_incremental().await? {
        eprintln!("converted {} to incremental auto-vacuum", store.path().display());
    }
    let report = store
        .retention_pass(&config.retention, &crate::retention::agents_root(home), now, dry_run)
        .await?;
    let stats = store.storage_stats().await?;
    store.close().await;
    print(json, &report, |report| show_pass(report, &stats))
}

fn show_pass(report: &RetentionReport, stats: &crate::store::StorageStats) {
    let verb = if report.dry_run { "would remove" } else { "removed" };
    for (kind, n) in &report.removed {
        println!("{verb} {n:>8}  {kind}");
    }
    if !report.dry_run {
        println!(
            "gave back {} pages; the database is now {:.1} MiB",
            report.freed_pages,
            stats.db_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    if stats.auto_vacuum != "incremental" {
        println!(
            "the database is not in incremental auto-vacuum mode: freed pages are reused, not \
             given back (`ccm gc --db --vacuum` converts it once)"
        );
    }
}
