//! Bounded storage in the daemon (issue 28): a background task that runs the retention pass
//! (`Store::retention_pass`) every `retention.every`, the janitor under `land.keep_days` and
//! `land.disk_budget_mb`, and the scheduled backup (`backup.dir`, rotated to `backup.keep`
//! copies). `ccm gc` and `ccm backup DIR --keep N` run the same code now.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ccm_schema::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, LiveConfig};
use crate::home::Home;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup directory {}: {message}", path.display())]
    BackupDir { path: PathBuf, message: String },
    #[error("backup {} failed its integrity check: {check}", path.display())]
    Integrity { path: PathBuf, check: String },
}

/// Prefix and suffix of the copies `backup_rotated` writes; only such files are rotated.
const BACKUP_PREFIX: &str = "ccm-";
const BACKUP_SUFFIX: &str = ".db";
/// How often the daemon looks whether a pass or a backup is due (and sees a changed config).
const TICK: Duration = Duration::from_secs(60);

/// What [`backup_rotated`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotated {
    pub written: PathBuf,
    /// Older copies removed to keep `keep`.
    pub removed: Vec<PathBuf>,
}

/// Writes a consistent copy of the database into `dir` as `ccm-<UTC time>.db`, checks it
/// (`PRAGMA integrity_check`), then removes the oldest copies beyond `keep`. Files of other
/// names in `dir` are left alone.
pub async fn backup_rotated(
    store: &Store,
    dir: &Path,
    keep: usize,
) -> Result<Rotated, RetentionError> {
    let written = backup_path(dir, keep)?;
    store.backup(&written).await?;
    let check = crate::store::integrity_check_file(&written).await?;
    if check != "ok" {
        return Err(RetentionError::Integrity { path: written, check });
    }
    let removed = rotate(dir, &written, keep)?;
    Ok(Rotated { written, removed })
}

fn dir_error(dir: &Path, message: String) -> RetentionError {
    RetentionError::BackupDir { path: dir.to_path_buf(), message }
}

/// A new file name for a copy in `dir` (created when missing).
fn backup_path(dir: &Path, keep: usize) -> Result<PathBuf, RetentionError> {
    if keep == 0 {
        return Err(dir_error(dir, "--keep must be at least 1".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| dir_error(dir, format!("cannot create it: {e}")))?;
    if !dir.is_dir() {
        return Err(dir_error(dir, "is not a directory".into()));
    }
    let stamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string().replace(':', "");
    let mut written = dir.join(format!("{BACKUP_PREFIX}{stamp}{BACKUP_SUFFIX}"));
    let mut n = 1;
    while written.exists() {
        written = dir.join(format!("{BACKUP_PREFIX}{stamp}-{n}{BACKUP_SUFFIX}"));
        n += 1;
    }
    Ok(written)
}

fn is_backup(entry: &std::fs::DirEntry) -> bool {
    let name = entry.file_name();
    let name = name.to_string_lossy();
    name.starts_with(BACKUP_PREFIX) && name.ends_with(BACKUP_SUFFIX)
}

/// Removes the copies in `dir` beyond the `keep` newest (`written` among them).
fn rotate(dir: &Path, written: &Path, keep: usize) -> Result<Vec<PathBuf>, RetentionError> {
    let mut copies: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| dir_error(dir, format!("cannot list it: {e}")))?
        .flatten()
        .filter(is_backup)
        .map(|e| {
            let modified =
                e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            (modified, e.path())
        })
        .filter(|(_, path)| path != written)
        .collect();
    // Newest first: by time written, then by name (the names sort by time too).
    copies.sort_by(|a, b| b.cmp(a));
    let mut removed = Vec::new();
    for (_, path) in copies.into_iter().skip(keep - 1) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old backup")
            }
        }
    }
    Ok(removed)
}

/// The home's directory of agents' files.
pub fn agents_root(home: &Home) -> PathBuf {
    home.root().join("agents")
}

/// The newest copy in `dir`'s rotation, by modification time.
fn newest_backup(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(is_backup)
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

/// One pass of everything that is due: the retention pass, the janitor, the backup.
async fn run_due(store: Store, home: Home, config: std::sync::Arc<Config>, pass_due: bool) {
    let (store, home, config) = (&store, &home, &*config);
    if pass_due {
        match store
            .retention_pass(&config.retention, &agents_root(home), Timestamp::now(), false)
            .await
        {
            Ok(report) => {
                tracing::info!(removed = ?report.removed, freed_pages = report.freed_pages, "retention pass")
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed; trying again at the next one")
            }
        }
        let land = config.land.clone().unwrap_or_default();
        let options = crate::janitor::Options {
            min_age: Duration::from_secs(u64::from(land.keep_days) * 24 * 3600),
            disk_budget: land.disk_budget_mb.saturating_mul(1024 * 1024),
        };
        let janitor = async {
            let plan = crate::janitor::plan(store, options).await?;
            crate::janitor::apply(store, plan).await
        };
        if let Err(e) = janitor.await {
            tracing::warn!(error = %e, "janitor failed; trying again at the next pass");
        }
    }
    if let (Some(dir), Some(every)) = (&config.backup.dir, config.backup.every.0) {
        let due = newest_backup(dir).and_then(|t| t.elapsed().ok()).is_none_or(|age| age >= every);
        if due {
            match backup_rotated(store, dir, config.backup.keep).await {
                Ok(r) => {
                    tracing::info!(written = %r.written.display(), removed = r.removed.len(), "scheduled backup")
                }
                Err(e) => tracing::warn!(error = %e, "scheduled backup failed; trying again later"),
            }
        }
    }
}

/// The daemon's task: a pass `retention.every` after start and then every `retention.every`
/// (read anew each time, so a changed config applies), a backup whenever the newest copy is
/// older than `backup.every`, until `shutdown`.
pub fn start(
    store: Store,
    live: LiveConfig,
    home: Home,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_pass = tokio::time::Instant::now();
        loop {
            let config = live.current();
            let every = config.retention.every.0;
            let wait = every.map_or(TICK, |e| e.saturating_sub(last_pass.elapsed()).min(TICK));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let config = live.current();
            let pass_due = config.retention.every.0.is_some_and(|e| last_pass.elapsed() >= e);
            if pass_due {
                last_pass = tokio::time::Instant::now();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = run_due(store.clone(), home.clone(), config.clone(), pass_due) => {}
            }
        }
    })
}
