//! The local store: one SQLite file in WAL mode, the node's primary store (not a cache).
//!
//! - [`Store`]: opens the file, applies the migrations, and owns a pool of up to four readers
//!   and exactly one writer connection, so writes of this process never contend with each other.
//! - `tasks`: tasks, their dependencies (a DAG), the append-only task log, and state changes
//!   driven by [`ccm_schema::transition`].
//! - `contexts`: repository checkouts registered on this system.
//! - `records`: alerts, decisions, the outbox, counts, backup and integrity checks.
//! - `agents`: agents, attempts and reports, written by the agent runtime.
//! - `hooks`: hook events and their effects, file claims and change requests.
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`, so a commit is on disk before it
//! is acknowledged; every write transaction starts with `BEGIN IMMEDIATE` and other processes
//! (the CLI, `ccm hook`) wait up to the busy timeout instead of failing. Every change that must
//! reach the central store is written to `outbox` in the same transaction as the change.

mod agents;
mod contexts;
mod hooks;
mod records;
mod tasks;
mod views;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ccm_schema::{SystemInfo, Timestamp, TransitionError};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};
use tokio::sync::{watch, Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};
use uuid::Uuid;

pub use agents::{AgentProgress, AttemptEnd, CostTotals, NewAgent};
pub use contexts::ContextProbe;
pub use hooks::{
    ChangeRequest, Claim, HookJob, Ingested, Origin, Ownership, Receipt, StoredHookEvent, Via,
};
pub use records::{OutboxCounts, StateCounts};
pub use tasks::{NewTask, RetryPolicy, TaskDetail, TaskFilter};
pub use views::{BoardFilter, BoardTask, CostDay, DashboardCounts};

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file cannot be opened or migrated.
    #[error("cannot open database {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// No task has this id or id prefix.
    #[error("no task matches `{0}`")]
    TaskNotFound(String),
    /// An id prefix matches more than one task.
    #[error("task id `{prefix}` is ambiguous: it matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    /// No context has this id or path.
    #[error("no context matches `{0}`")]
    ContextNotFound(String),
    /// A field of a request is not acceptable.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The store was closed (the daemon is stopping).
    #[error("the database is closed")]
    Closed,
    /// A dependency would close a cycle.
    #[error("dependency cycle refused: {0}")]
    Cycle(String),
    /// An event that is not legal in the task's state.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Writing a backup failed.
    #[error("cannot back up to {path}: {message}")]
    Backup { path: PathBuf, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle to the local store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    /// Read-only queries.
    readers: SqlitePool,
    /// The only connection that writes, so transactions of this process queue instead of
    /// failing with SQLITE_BUSY; `None` once closed.
    writer: Arc<Mutex<Option<Writer>>>,
    /// Counts the times the writer connection was given back: each may have committed a change.
    changes: Arc<watch::Sender<u64>>,
}

/// The writer connection. It is lent by a lock rather than by a pool: a pool tests each
/// connection it takes back with a round trip to SQLite's thread, from a task of its own, and
/// the next write waited for that (most of the time a group of hook events took under load).
#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
    /// A transaction was left open (its [`Writing`] dropped before the commit, by an error or a
    /// cancelled request); it is rolled back before the connection is lent again.
    abandoned: bool,
}

/// The writer connection, lent. Giving it back counts as a change (see [`Store::changes`]).
struct Lent {
    writer: OwnedMappedMutexGuard<Option<Writer>, Writer>,
    changes: Arc<watch::Sender<u64>>,
}

impl Deref for Lent {
    type Target = Writer;

    fn deref(&self) -> &Writer {
        &self.writer
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Writer {
        &mut self.writer
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Whatever the borrower wrote is committed (or rolled back) by now.
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A write transaction (`BEGIN IMMEDIATE`) on the writer connection, used as the connection
/// itself. Dropped before [`Writing::commit`], it is rolled back.
pub(crate) struct Writing {
    lent: Lent,
    open: bool,
}

impl Writing {
    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut self.lent.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Deref for Writing {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.lent.conn
    }
}

impl DerefMut for Writing {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.lent.conn
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if self.open {
            self.lent.abandoned = true;
        }
    }
}

impl Writer {
    fn shared(conn: SqliteConnection) -> Arc<Mutex<Option<Writer>>> {
        Arc::new(Mutex::new(Some(Writer { conn, abandoned: false })))
    }
}

impl Store {
    /// Opens (creating when missing) the database at `path`, applies pending migrations and
    /// records this system's identity on first open.
    pub async fn open(path: &Path, system_name: &str) -> Result<Store> {
        let open_error = |message: String| StoreError::Open { path: path.to_path_buf(), message };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_error(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let mut writer = options.connect().await.map_err(|e| open_error(e.to_string()))?;
        ccm_schema::MIGRATOR
            .run(&mut writer)
            .await
            .map_err(|e| open_error(format!("migration failed: {e}")))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| open_error(e.to_string()))?;
        let store = Store {
            path: path.to_path_buf(),
            readers,
            writer: Writer::shared(writer),
            changes: Arc::new(watch::Sender::new(0)),
        };
        store.ensure_system(system_name).await?;
        Ok(store)
    }

    /// Opens an existing database with one writer connection and a short busy timeout, applying no
    /// migration and writing nothing: the fast path of `ccm hook`. A missing file is created
    /// with [`Store::open`].
    pub async fn open_existing(path: &Path, busy_timeout: Duration) -> Result<Store> {
        if !path.exists() {
            let name = gethostname::gethostname().to_string_lossy().into_owned();
            return Store::open(path, &name).await;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let open_error =
            |e: sqlx::Error| StoreError::Open { path: path.to_path_buf(), message: e.to_string() };
        let writer = options.connect().await.map_err(open_error)?;
        // A reader is opened only if a read is needed (most events need none).
        let readers =
            SqlitePoolOptions::new().max_connections(1).connect_lazy_with(options.read_only(true));
        Ok(Store {
            path: path.to_path_buf(),
            readers,
            writer: Writer::shared(writer),
            changes: Arc::new(watch::Sender::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wakes up after writes of this process: its value changes each time the writer
    /// connection is given back, after the borrower's commit. Readers of the change (the
    /// dashboard's live updates) coalesce wake-ups and read what changed from the outbox.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Closes the readers and the writer, checkpointing the WAL; writes after this fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        self.readers.close().await;
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = sqlx::Connection::close(writer.conn).await;
        }
    }

    /// The writer connection, once whoever has it is done, for statements that each commit on
    /// their own.
    async fn writer(&self) -> Result<Lent> {
        let writer = self.writer.clone().lock_owned().await;
        let writer =
            OwnedMutexGuard::try_map(writer, Option::as_mut).map_err(|_| StoreError::Closed)?;
        let mut lent = Lent { writer, changes: self.changes.clone() };
        if lent.abandoned {
            // SQLite may have rolled it back itself already (after an I/O error, say), and then
            // says so: nothing is left to undo either way.
            let _ = sqlx::query("ROLLBACK").execute(&mut lent.conn).await;
            lent.abandoned = false;
        }
        Ok(lent)
    }

    /// Starts a write transaction that holds the write lock from its first statement.
    async fn write(&self) -> Result<Writing> {
        let mut lent = self.writer().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut lent.conn).await?;
        Ok(Writing { lent, open: true })
    }

    async fn ensure_system(&self, name: &str) -> Result<()> {
        sqlx::query(
            r#"
            INSERT INTO system (singleton, id, name, created_at) VALUES (1, ?, ?, ?)
            ON CONFLICT (singleton) DO UPDATE SET name = excluded.name WHERE name <> excluded.name
            "#,
        )
        .bind(Uuid::new_v4().hyphenated())
        .bind(name)
        .bind(Timestamp::now())
        .execute(&mut self.writer().await?.conn)
        .await?;
        Ok(())
    }

    /// This system's identity.
    pub async fn system(&self) -> Result<SystemInfo> {
        Ok(sqlx::query_as("SELECT id, name, created_at FROM system")
            .fetch_one(&self.readers)
            .await?)
    }
}

/// Writes an outbox row for `kind`/`entity_id` carrying `payload`, inside `tx`.
async fn outbox(
    tx: &mut Writing,
    kind: &str,
    entity_id: &str,
    payload: &impl serde::Serialize,
    urgent: bool,
) -> Result<()> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| StoreError::Invalid { field: "payload", message: e.to_string() })?;
    sqlx::query(
        "INSERT INTO outbox (kind, entity_id, payload, urgent, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(kind)
    .bind(entity_id)
    .bind(payload)
    .bind(urgent)
    .bind(Timestamp::now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_dropped_before_its_commit_is_undone_and_the_next_one_goes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ccm.db"), "node").await.unwrap();
        let mut dropped = store.write().await.unwrap();
        sqlx::query("UPDATE system SET name = 'dropped'").execute(&mut *dropped).await.unwrap();
        drop(dropped); // an error or a cancelled request between two statements
        let mut next = store.write().await.unwrap();
        sqlx::query("UPDATE system SET name = name || '+next'").execute(&mut *next).await.unwrap();
        next.commit().await.unwrap();
        assert_eq!(store.system().await.unwrap().name, "node+next");

        store.close().await;
        assert!(matches!(store.write().await, Err(StoreError::Closed)));
    }
}
