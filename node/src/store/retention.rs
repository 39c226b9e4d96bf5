//! Bounded storage (issue 28): the retention pass, which deletes what is past its age per kind
//! in small batches, gives the space back to the file system, and says what it did; and the
//! numbers `ccm status` and `/metrics` show about the database.
//!
//! Each batch is one short transaction on the store's one writer (`retention.batch_rows` rows,
//! then a pause of `retention.pause_ms` or four times the batch's time on the writer, whichever
//! is longer; 199 times while others write), so hooks and task changes wait at most one batch
//! and the pass has the writer at most a fifth of the time (a two-hundredth under their load).
//! Never deleted: what a task that has not ended needs (its hook events), an open alert or a
//! pending decision (their notifications), an outbox row not acknowledged (pending, sealed,
//! rejected) and the newest outbox row (its seq keeps the sequence monotonic), and aggregates
//! (tasks, attempts, reports, agents with their cost and tokens, the task log).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ccm_schema::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Result, Store};
use crate::config::RetentionConfig;

/// Task states after which the runtime does nothing more with a task. (The landing states
/// are listed for the land queue; a state the schema does not have matches no row.)
pub(crate) const ENDED_STATES: &str = "('complete', 'failed', 'cancelled', 'landed', 'discarded')";

/// What one pass removed (or, dry, would remove).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// Rows (or agents' files) per kind.
    pub removed: BTreeMap<String, u64>,
    /// Pages given back to the file system.
    pub freed_pages: i64,
}

/// The newest recorded pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RetentionPass {
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// JSON object: rows removed per kind.
    pub removed: sqlx::types::Json<BTreeMap<String, u64>>,
    pub freed_pages: i64,
}

/// The database at a glance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageStats {
    /// The database file, in bytes (its pages, free ones included).
    pub db_bytes: u64,
    /// Free pages, in bytes: what an incremental vacuum gives back.
    pub free_bytes: u64,
    /// The write-ahead log, in bytes.
    pub wal_bytes: u64,
    /// `none`, `full` or `incremental`.
    pub auto_vacuum: String,
    /// Rows per table.
    pub rows: BTreeMap<String, i64>,
    pub last_pass: Option<RetentionPass>,
}

/// One kind of row the pass removes.
struct Kind {
    name: &'static str,
    table: &'static str,
    /// An integer key (a rowid alias or `rowid`).
    key: &'static str,
    /// The time the age is counted from.
    time: &'static str,
    /// What must also hold for a row to go.
    cond: &'static str,
    /// Statements run before the row's own delete, with `?1` the JSON array of the keys.
    dependents: &'static [&'static str],
}

const HOOK_EVENTS: Kind = Kind {
    name: "hook_events",
    table: "hook_events",
    key: "id",
    time: "at",
    cond: "task_id IS NULL OR NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = hook_events.task_id \
           AND t.state NOT IN ('complete', 'failed', 'cancelled', 'landed', 'discarded'))",
    dependents: &[],
};

const OUTBOX: Kind = Kind {
    name: "outbox_acked",
    table: "outbox",
    key: "seq",
    time: "created_at",
    cond: "state = 'acked' AND seq < (SELECT max(seq) FROM outbox)",
    dependents: &[],
};

const OUTBOX_BATCHES: Kind = Kind {
    name: "outbox_batches",
    table: "outbox_batch",
    key: "rowid",
    time: "coalesce(acked_at, sealed_at)",
    cond: "state IN ('acked', 'split') \
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.batch_id = outbox_batch.batch_id \
                           AND o.state <> 'acked') \
           AND NOT EXISTS (SELECT 1 FROM outbox_batch c WHERE c.parent_id = outbox_batch.batch_id \
                           AND c.state = 'sealed')",
    dependents: &[],
};

const NOTIFICATIONS: Kind = Kind {
    name: "notifications",
    table: "notifications",
    key: "id",
    time: "created_at",
    cond: "routed_at IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM notification_sends s WHERE s.notification_id = notifications.id \
                           AND (s.state IN ('pending', 'digest') OR s.live_buttons = 1)) \
           AND NOT (source = 'alert' AND EXISTS (SELECT 1 FROM alerts a \
                    WHERE a.id = notifications.source_id AND a.resolved_at IS NULL)) \
           AND NOT (source = 'decision' AND EXISTS (SELECT 1 FROM decisions d \
                    WHERE d.id = notifications.source_id AND d.answered_at IS NULL))",
    dependents: &["DELETE FROM notification_sends WHERE notification_id IN (SELECT value FROM json_each(?1))"],
};

const ALERTS: Kind = Kind {
    name: "alerts_resolved",
    table: "alerts",
    key: "rowid",
    time: "resolved_at",
    cond: "resolved_at IS NOT NULL",
    dependents: &[
        r#"
        DELETE FROM notification_sends WHERE notification_id IN (
            SELECT n.id FROM notifications n JOIN alerts a ON n.source = 'alert' AND n.source_id = a.id
            WHERE a.rowid IN (SELECT value FROM json_each(?1)))
        "#,
        r#"
        DELETE FROM notifications WHERE source = 'alert' AND source_id IN (
            SELECT id FROM alerts WHERE rowid IN (SELECT value FROM json_each(?1)))
        "#,
    ],
};

const DECISIONS: Kind = Kind {
    name: "decisions_answered",
    table: "decisions",
    key: "rowid",
    time: "answered_at",
    cond: "answered_at IS NOT NULL",
    dependents: &[
        r#"
        DELETE FROM notification_sends WHERE notification_id IN (
            SELECT n.id FROM notifications n JOIN decisions d ON n.source = 'decision' AND n.source_id = d.id
            WHERE d.rowid IN (SELECT value FROM json_each(?1)))
        "#,
        r#"
        DELETE FROM notifications WHERE source = 'decision' AND source_id IN (
            SELECT id FROM decisions WHERE rowid IN (SELECT value FROM json_each(?1)))
        "#,
    ],
};

/// Tables whose rows `ccm status` and `/metrics` count.
const COUNTED: &[&str] = &[
    "tasks",
    "task_log",
    "attempts",
    "agents",
    "reports",
    "hook_events",
    "outbox",
    "outbox_batch",
    "alerts",
    "decisions",
    "notifications",
    "notification_sends",
];

/// After a batch, the pass pauses at least this many times as long as the batch held the
/// writer: the writer is the pass's at most a fifth of the time.
const WRITER_SHARE_PAUSE: u32 = 4;
/// The same when others wrote during the last pause (hooks coming in): a write that finds the
/// writer held waits for the rest of the batch, so the pass then keeps it at most a
/// two-hundredth of the time, and fewer than one hook in a hundred meets it (hook p99 during a
/// pass under 1,000 events a second: 1.43–1.51× idle with a fifth, 1.16–1.41× with a
/// fiftieth, 1.03–1.07× with a two-hundredth; BENCHMARKS.md, soak).
const WRITER_SHARE_PAUSE_BUSY: u32 = 199;
/// Pages an incremental vacuum step gives back (1 MiB at 4 KiB pages) while holding the writer.
const VACUUM_STEP_PAGES: i64 = 256;
/// Passes kept in `retention_passes`.
const PASSES_KEPT: i64 = 100;

impl Store {
    /// Runs a retention pass at `now` (or, `dry_run`, counts what it would remove and changes
    /// nothing). `agents_root` is the home's `agents/` directory: agents' files are removed only
    /// under it.
    pub async fn retention_pass(
        &self,
        config: &RetentionConfig,
        agents_root: &Path,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        let started_at = Timestamp::now();
        let mut report = RetentionReport {
            dry_run,
            started_at,
            finished_at: started_at,
            removed: BTreeMap::new(),
            freed_pages: 0,
        };
        let pause = Duration::from_millis(config.pause_ms);
        let batch = i64::from(config.batch_rows);
        for (kind, keep) in [
            (&HOOK_EVENTS, config.hook_events),
            (&OUTBOX, config.outbox_acked),
            (&OUTBOX_BATCHES, config.outbox_acked),
            (&NOTIFICATIONS, config.notifications),
            (&ALERTS, config.alerts_resolved),
            (&DECISIONS, config.decisions_answered),
        ] {
            let Some(cutoff) = keep.cutoff(now.millis()) else { continue };
            let n = self.remove_kind(kind, cutoff, batch, pause, dry_run).await?;
            report.removed.insert(kind.name.to_string(), n);
        }
        let (output, dirs) =
            self.remove_agent_files(config, agents_root, now, batch, pause, dry_run).await?;
        report.removed.insert("agent_output".into(), output);
        report.removed.insert("agent_dirs".into(), dirs);
        if !dry_run {
            report.freed_pages = self.give_space_back(pause).await?;
        }
        report.finished_at = Timestamp::now();
        if !dry_run {
            self.record_pass(&report).await?;
        }
        Ok(report)
    }

    /// Removes `kind`'s rows older than `cutoff`, a batch at a time: the batch is chosen on a
    /// reader (walking the key upwards, so the table is read once per pass and no write lock is
    /// held meanwhile), then deleted in one short transaction that checks the conditions again.
    async fn remove_kind(
        &self,
        kind: &Kind,
        cutoff: i64,
        batch: i64,
        pause: Duration,
        dry_run: bool,
    ) -> Result<u64> {
        let Kind { table, key, time, cond, .. } = kind;
        let selection = format!("{time} < ?2 AND ({cond})");
        if dry_run {
            let n: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {selection}"))
                    .bind(0)
                    .bind(cutoff)
                    .fetch_one(&self.readers)
                    .await?;
            return Ok(u64::try_from(n).unwrap_or(0));
        }
        let mut removed = 0u64;
        let mut after = i64::MIN;
        // Whether others wrote during the last pause.
        let mut busy = false;
        loop {
            let keys: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT {key} FROM {table} WHERE {key} > ?1 AND {selection} ORDER BY {key} LIMIT ?3"
            ))
            .bind(after)
            .bind(cutoff)
            .bind(batch)
            .fetch_all(&self.readers)
            .await?;
            let Some(&last) = keys.last() else { return Ok(removed) };
            after = last;
            let json = serde_json::Value::from(keys.clone()).to_string();
            let mut tx = self.write().await?;
            let held = std::time::Instant::now();
            // Still past its age and unneeded: the conditions are checked again under the lock.
            let gone: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT {key} FROM {table} WHERE {key} IN (SELECT value FROM json_each(?1)) \
                 AND {selection}"
            ))
            .bind(&json)
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
            let json = serde_json::Value::from(gone.clone()).to_string();
            for statement in kind.dependents {
                sqlx::query(statement).bind(&json).execute(&mut *tx).await?;
            }
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE {key} IN (SELECT value FROM json_each(?1))"
            ))
            .bind(&json)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            let held = held.elapsed();
            removed += gone.len() as u64;
            if (keys.len() as i64) < batch {
                return Ok(removed);
            }
            // The pass holds the writer at most a fifth of the time, however slow the disk, and
            // a two-hundredth while others write.
            let share = if busy { WRITER_SHARE_PAUSE_BUSY } else { WRITER_SHARE_PAUSE };
            let written = *self.changes.borrow();
            tokio::time::sleep(pause.max(held * share)).await;
            busy = *self.changes.borrow() != written;
        }
    }

    /// Agents' output logs past `agent_output`, then their whole directories past `task_logs`,
    /// for agents whose task ended; returns how many of each went.
    async fn remove_agent_files(
        &self,
        config: &RetentionConfig,
        agents_root: &Path,
        now: Timestamp,
        batch: i64,
        pause: Duration,
        dry_run: bool,
    ) -> Result<(u64, u64)> {
        let mut counts = [0u64; 2];
        for (step, keep, column) in
            [(0, config.agent_output, "output_removed_at"), (1, config.task_logs, "dir_removed_at")]
        {
            let Some(cutoff) = keep.cutoff(now.millis()) else { continue };
            let mut after = String::new();
            loop {
                let found: Vec<(String, String)> = sqlx::query_as(&format!(
                    r#"
                    SELECT a.id, a.dir FROM agents a JOIN tasks t ON t.id = a.task_id
                    WHERE a.{column} IS NULL AND a.ended_at IS NOT NULL AND a.ended_at < ?1
                      AND t.state IN {ENDED_STATES} AND a.id > ?2
                    ORDER BY a.id LIMIT ?3
                    "#
                ))
                .bind(cutoff)
                .bind(&after)
                .bind(batch)
                .fetch_all(&self.readers)
                .await?;
                let Some((last, _)) = found.last() else { break };
                after = last.clone();
                let full = found.len() as i64 == batch;
                if dry_run {
                    counts[step] += found.len() as u64;
                } else {
                    let mut done = Vec::with_capacity(found.len());
                    for (id, dir) in found {
                        let dir = Path::new(&dir);
                        // Only directories of the home's `agents/`, whatever the row says.
                        if !dir.starts_with(agents_root) || dir == agents_root {
                            continue;
                        }
                        let gone = if step == 0 {
                            remove(&dir.join("output.log"), false)
                        } else {
                            remove(dir, true)
                        };
                        match gone {
                            Ok(()) => done.push(id),
                            Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
                                "retention: cannot remove an agent's files; trying again next pass"),
                        }
                    }
                    counts[step] += done.len() as u64;
                    let mut tx = self.write().await?;
                    sqlx::query(&format!(
                        "UPDATE agents SET {column} = ?1 WHERE id IN (SELECT value FROM json_each(?2))"
                    ))
                    .bind(now)
                    .bind(serde_json::Value::from(done).to_string())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    tokio::time::sleep(pause).await;
                }
                if !full {
                    break;
                }
            }
        }
        Ok((counts[0], counts[1]))
    }

    /// Gives free pages back to the file system (`PRAGMA incremental_vacuum`, a megabyte per
    /// step on the writer), then checkpoints so the file shrinks; returns the pages freed.
    /// Nothing to do unless the database is in incremental auto-vacuum mode.
    async fn give_space_back(&self, pause: Duration) -> Result<i64> {
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&self.readers).await?;
        if mode != 2 {
            return Ok(0);
        }
        let mut freed = 0;
        loop {
            let mut lent = self.writer().await?;
            let free: i64 =
                sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut lent.conn).await?;
            if free == 0 {
                break;
            }
            let step = free.min(VACUUM_STEP_PAGES);
            sqlx::query(&format!("PRAGMA incremental_vacuum({step})"))
                .execute(&mut lent.conn)
                .await?;
            drop(lent);
            freed += step;
            tokio::time::sleep(pause).await;
        }
        if freed > 0 {
            let mut lent = self.writer().await?;
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut lent.conn).await?;
        }
        Ok(freed)
    }

    async fn record_pass(&self, report: &RetentionReport) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            INSERT INTO retention_passes (started_at, finished_at, removed, freed_pages)
            VALUES (?, ?, ?, ?)
            "#,
        )
        .bind(report.started_at)
        .bind(report.finished_at)
        .bind(serde_json::to_string(&report.removed).unwrap_or_else(|_| "{}".into()))
        .bind(report.freed_pages)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            r#"
            DELETE FROM retention_passes
            WHERE id <= (SELECT max(id) FROM retention_passes) - ?
            "#,
        )
        .bind(PASSES_KEPT)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The newest recorded retention pass.
    pub async fn last_retention_pass(&self) -> Result<Option<RetentionPass>> {
        Ok(sqlx::query_as(
            r#"
            SELECT started_at, finished_at, removed, freed_pages FROM retention_passes
            ORDER BY id DESC LIMIT 1
            "#,
        )
        .fetch_optional(&self.readers)
        .await?)
    }

    /// The database's size, its free space, the WAL, rows per table and the last pass.
    pub async fn storage_stats(&self) -> Result<StorageStats> {
        let mut conn = self.readers.acquire().await?;
        let page_size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&mut *conn).await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&mut *conn).await?;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count").fetch_one(&mut *conn).await?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut *conn).await?;
        let mut rows = BTreeMap::new();
        for table in COUNTED {
            let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut *conn)
                .await?;
            rows.insert((*table).to_string(), n);
        }
        drop(conn);
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(StorageStats {
            db_bytes: u64::try_from(pages * page_size).unwrap_or(0),
            free_bytes: u64::try_from(free * page_size).unwrap_or(0),
            wal_bytes: std::fs::metadata(&wal).map_or(0, |m| m.len()),
            auto_vacuum: match mode {
                1 => "full",
                2 => "incremental",
                _ => "none",
            }
            .into(),
            rows,
            last_pass: self.last_retention_pass().await?,
        })
    }
}

/// Removes a file or a directory tree; one already gone counts as removed.
fn remove(path: &Path, tree: bool) -> std::io::Result<()> {
    let result = if tree { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Store {
    /// Puts the database into incremental auto-vacuum mode when it is not (a `VACUUM`: the
    /// file is rewritten while the writer is held); returns whether it converted.
    pub async fn convert_to_incremental(&self) -> Result<bool> {
        let mut lent = self.writer().await?;
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut lent.conn).await?;
        if mode == 2 {
            return Ok(false);
        }
        super::convert_to_incremental(&mut lent.conn).await?;
        Ok(true)
    }
}

/// What the janitor knows of a task: enough to match its branch and judge its work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct TaskEnd {
    pub id: String,
    pub title: String,
    pub state: String,
    /// When its state last changed (for an ended task: when it ended).
    pub updated_at: Timestamp,
    /// Whether `tasks.worktree` still names a worktree.
    pub has_worktree: bool,
}

impl Store {
    /// Every task's id, title, state (`landed` or `discarded` when its work was) and last
    /// change, for the janitor.
    pub async fn task_ends(&self) -> Result<Vec<TaskEnd>> {
        Ok(sqlx::query_as(
            r#"
            SELECT t.id, t.title,
                   CASE WHEN d.task_id IS NOT NULL THEN 'discarded'
                        WHEN l.state = 'landed' THEN 'landed'
                        ELSE t.state END AS state,
                   t.updated_at, t.worktree IS NOT NULL AS has_worktree
            FROM tasks t
            LEFT JOIN discarded_tasks d ON d.task_id = t.id
            LEFT JOIN landings l ON l.task_id = t.id
            "#,
        )
        .fetch_all(&self.readers)
        .await?)
    }
}

/// `PRAGMA integrity_check` of the database file at `path` (a backup copy), on a read-only
/// connection of its own: `ok`, or the problems SQLite found.
pub async fn integrity_check_file(path: &Path) -> Result<String> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .disable_statement_logging()
        .connect()
        .await?;
    let rows: Vec<String> =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&mut conn).await?;
    sqlx::Connection::close(conn).await?;
    Ok(rows.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::ConnectOptions;

    #[tokio::test]
    async fn a_database_made_without_incremental_auto_vacuum_is_converted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ccm.db");
        let mut old = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE leftover (x)").execute(&mut old).await.unwrap();
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut old).await.unwrap();
        assert_eq!(mode, 0, "SQLite's default");
        sqlx::Connection::close(old).await.unwrap();

        let store = Store::open(&path, "node").await.unwrap();
        assert_eq!(store.storage_stats().await.unwrap().auto_vacuum, "incremental");
        assert!(!store.convert_to_incremental().await.unwrap(), "nothing more to do");
        store.close().await;
    }
}
