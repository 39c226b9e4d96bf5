//! The local store: one SQLite file in WAL mode, the node's primary store (not a cache).
//!
//! - [`Store`]: opens the file, applies the migrations, and owns a pool of up to four readers
//!   and exactly one writer connection, so writes of this process never contend with each other.
//! - `tasks`: tasks, their dependencies (a DAG), the append-only task log, and state changes
//!   driven by [`ccm_schema::transition`].
//! - `contexts`: repository checkouts registered on this system.
//! - `records`: alerts, decisions, the outbox, counts, backup and integrity checks.
//! - `agents`: agents, attempts and reports, written by the agent runtime.
//! - `accounts`: usage limits per account, and the tasks waiting for them (issue 25).
//! - `cost_caps`: daily cost caps per account and project, their decisions and waiting tasks.
//! - `hooks`: hook events and their effects, file claims and change requests.
//! - `conflicts`: what active tasks touched, and each repository's predicted conflicts.
//! - `land`: the land queues and the durable steps of each landing (issue 23).
//! - `review`: review comments on a finished task's diff, and "request changes".
//! - `stacks`: stacked tasks, each with its base and where its branch forked from the base's.
//! - `fleet`: the central lease behind a `fleet` named lock and the central allocator's values
//!   recorded here.
//! - `notify`: durable delivery of notifications (the queue, sends per notifier, digests).
//!
//! Durability: `journal_mode=WAL` with `synchronous=FULL`, so a commit is on disk before it
//! is acknowledged; every write transaction starts with `BEGIN IMMEDIATE` and other processes
//! (the CLI, `ccm hook`) wait up to the busy timeout instead of failing. Every change that must
//! reach the central store is written to `outbox` in the same transaction as the change.

mod accounts;
mod agents;
mod claims;
mod conflicts;
mod context;
mod contexts;
mod coordination;
mod cost_caps;
mod fleet;
mod hooks;
mod land;
mod notify;
mod records;
mod retention;
mod review;
mod routing;
mod stacks;
mod supervisors;
mod sync;
mod tasks;
mod views;

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccm_schema::{SystemInfo, Timestamp, TransitionError};
use ccm_sync::outbox::{Payload, TaskSummaryRowV1};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, SqliteConnection, SqlitePool};
use tokio::sync::{watch, Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};
use uuid::Uuid;

pub use accounts::{AccountLimit, FleetLimit};
pub use agents::{new_agent_token, AgentProgress, AttemptEnd, CostTotals, NewAgent};
pub use claims::{ChangeAsk, ChangeRequest, ChangeState, Claim, Ownership};
pub use conflicts::{ActiveRow, CONFLICT_ALERT};
pub use context::CONTEXT_ALERT;
pub use contexts::ContextProbe;
pub use coordination::{
    Acquired, AgentIdentity, Allocation, LockGrant, LockHolder, LockScope, LockView, Subtask,
    SubtaskLimits,
};
pub use cost_caps::{CapReached, CapScope, CostCap};
pub use fleet::FleetLease;
pub use hooks::{HookJob, Ingested, Origin, Receipt, StoredHookEvent, Via};
pub use land::{Discarded, LandFailure, LandStep, Landing};
pub use notify::{NotifierError, NotifierStatus, Outgoing, Routes, Subject};
pub use records::{OutboxCounts, StateCounts};
pub use retention::{integrity_check_file, RetentionPass, RetentionReport, StorageStats, TaskEnd};
pub use review::{NewComment, ReviewComment, COMMENT_MAX_BYTES};
pub use routing::{RoutedControl, RoutedTask, StaleTask};
pub use stacks::Stack;
pub use supervisors::{ScopeFilter, SupervisorRun, SUPERVISOR_ALERT};
pub use tasks::{check_event_reason, NewTask, RetryPolicy, TaskDetail, TaskFilter};
pub use views::{BoardFilter, BoardTask, CostDay, DashboardCounts, BOARD_COLUMN_LIMIT};

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections, at most: one per core, at least 2 and at most 4. SQLite reads a cached
/// database on the CPU, so readers beyond the cores add only their threads and memory (about
/// 0.3 MB each, opened together at start-up and kept: BENCHMARKS.md, idle RSS).
fn readers() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32).clamp(2, 4)
}
/// How often, at most, the daemon's checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// The daemon's writer checkpoints only past this many WAL pages (SQLite's default is 1,000):
/// a backstop for writes that never pause long enough for the checkpointer to catch up, since
/// the log starts over only once a checkpoint copied all of it.
const WRITER_CHECKPOINT_PAGES: u32 = 2000;
/// SQLite's page cache of each reader, in KiB (SQLite's default is 2,000 per connection). A
/// reader's work is small pages of rows and index-only counts, which SQLite reads again from
/// the OS's cache; with the default, the page caches were a good part of what the daemon grew
/// by while it drained a large backlog (BENCHMARKS.md, T11).
const READER_CACHE_KIB: u32 = 256;
/// The writer's page cache, in KiB, for the same reason: a catch-up batch's seal or
/// acknowledgement touches about 1.5 MB of pages, and SQLite writes what does not fit to the
/// WAL before the commit (the catch-up's throughput, T3, did not move).
const WRITER_CACHE_KIB: u32 = 1024;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file cannot be opened or migrated.
    #[error("cannot open database {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// The file is not an SQLite database (an empty file included).
    #[error("{} is not a database ({detail}); restore the newest `ccm backup` copy over it, or move it away to start with an empty database", path.display())]
    NotADatabase { path: PathBuf, detail: String },
    /// No task has this id or id prefix.
    #[error("no task matches `{0}`")]
    TaskNotFound(String),
    /// An id prefix matches more than one task.
    #[error("task id `{prefix}` is ambiguous: it matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    /// No decision has this id or id prefix.
    #[error("no decision matches `{0}`")]
    DecisionNotFound(String),
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
    /// A cancel, retry or pin that the routed task's state makes pointless.
    #[error("{0}")]
    Routed(String),
    /// An event that is not legal in the task's state.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A landing event that is not legal in the landing's state.
    #[error(transparent)]
    Land(#[from] ccm_schema::LandTransitionError),
    /// Writing a backup failed.
    #[error("cannot back up to {path}: {message}")]
    Backup { path: PathBuf, message: String },
    /// Another process held the write lock for longer than the busy timeout.
    #[error("database busy: another process has held its write lock too long; try again")]
    Busy,
    /// The disk holding the database is full (or the file may not grow).
    #[error("disk full (or a write error): the database cannot grow")]
    DiskFull,
    /// What the caller may not do (an agent outside its task's scope, a limit reached).
    #[error("{0}")]
    Refused(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// SQLite's primary result code of a database error: the low byte of the extended one sqlx
/// reports.
fn sqlite_code(error: &sqlx::Error) -> Option<i32> {
    extended_code(error).map(|code| code & 0xff)
}

fn extended_code(error: &sqlx::Error) -> Option<i32> {
    error.as_database_error()?.code()?.parse().ok()
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match sqlite_code(&error) {
            Some(5 | 6) => StoreError::Busy, // SQLITE_BUSY, SQLITE_LOCKED
            // SQLITE_FULL; a write that failed for want of room without ENOSPC (a file size
            // limit, a quota) comes as SQLITE_IOERR_WRITE.
            Some(13) => StoreError::DiskFull,
            _ if extended_code(&error) == Some(778) => StoreError::DiskFull,
            _ => StoreError::Database(error),
        }
    }
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
    /// Tells the sync driver about urgent rows, hook events and completions, after commit.
    signals: Arc<ccm_sync::Signals>,
    /// A transaction was left open on the writer (its [`Writing`] dropped before the commit, by
    /// an error or a cancelled request); it is rolled back before the writer is lent again, or
    /// by [`Store::settle`].
    abandoned: Arc<AtomicBool>,
    /// Counts the times the writer connection was given back: each may have committed a change.
    changes: Arc<watch::Sender<u64>>,
    /// Live agents' credentials already looked up, so the agent API reads nothing to
    /// authenticate a call (`Store::agent_by_token`); an agent's is dropped when it ends.
    credentials: Arc<coordination::Credentials>,
}

/// The writer connection. It is lent by a lock rather than by a pool: a pool tests each
/// connection it takes back with a round trip to SQLite's thread, from a task of its own, and
/// the next write waited for that (most of the time a group of hook events took under load).
#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
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
    signals: Arc<ccm_sync::Signals>,
    /// An urgent outbox row was written: the sync driver is woken after the commit.
    urgent: bool,
    /// Tasks this transaction completed.
    completions: u64,
    /// A call to the central routing functions was queued: the sender is woken after commit.
    route_call: bool,
    abandoned: Arc<AtomicBool>,
}

impl Writing {
    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::query("COMMIT").execute(&mut self.lent.conn).await?;
        self.open = false;
        if self.urgent {
            self.signals.urgent_committed();
        }
        if self.completions > 0 {
            self.signals.completions(self.completions);
        }
        if self.route_call {
            self.signals.route_calls.notify_one();
        }
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
            // Set while the writer is still held: whoever takes it next sees the flag.
            self.abandoned.store(true, Ordering::Release);
        }
    }
}

impl Store {
    fn with_writer(path: &Path, readers: SqlitePool, conn: SqliteConnection) -> Store {
        Store {
            path: path.to_path_buf(),
            readers,
            writer: Arc::new(Mutex::new(Some(Writer { conn }))),
            abandoned: Arc::default(),
            changes: Arc::new(watch::Sender::new(0)),
            signals: ccm_sync::Signals::new(),
            credentials: Arc::default(),
        }
    }
}

impl Store {
    /// Opens (creating when missing) the database at `path`, applies pending migrations and
    /// records this system's identity on first open.
    ///
    /// Set-up is serialized across processes by an exclusive lock on `<path>.lock`, so parallel
    /// commands on a fresh home migrate once; an up-to-date database with this identity is only
    /// read, so opening it never waits for another process's writer.
    pub async fn open(path: &Path, system_name: &str) -> Result<Store> {
        let open_error = |message: String| StoreError::Open { path: path.to_path_buf(), message };
        if let Some(parent) = path.parent() {
            crate::home::private_dir(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(|e| open_error(e.to_string()))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Waits show as errors; the SQL of a slow statement is not for the user's terminal.
            .disable_statement_logging();
        let set_up = SetUpLock::acquire(path).await.map_err(open_error)?;
        let not_a_database = |detail: &str| StoreError::NotADatabase {
            path: path.to_path_buf(),
            detail: detail.into(),
        };
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            // A file being created is never seen here: its creator holds the set-up lock.
            return Err(not_a_database("the file is empty"));
        }
        let writer_options = options.clone().pragma("cache_size", format!("-{WRITER_CACHE_KIB}"));
        let mut writer = writer_options.connect().await.map_err(|e| match StoreError::from(e) {
            StoreError::Database(e) if sqlite_code(&e) == Some(26) => {
                not_a_database(&e.to_string())
            }
            e => open_error(e.to_string()),
        })?;
        crate::home::private_database(path)
            .map_err(|e| open_error(format!("cannot make it private (mode 600): {e}")))?;
        let empty: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master").fetch_one(&mut writer).await?;
        if empty == 0 {
            // A new database is made in incremental auto-vacuum mode (set before its first
            // table), so the retention pass can give freed pages back; an older one is converted
            // below (`incremental_auto_vacuum`). Set here, not on every connection: on an
            // existing database the pragma takes the write lock.
            sqlx::query("PRAGMA auto_vacuum = INCREMENTAL").execute(&mut writer).await?;
        }
        if migrations_pending(&mut writer).await? {
            ccm_schema::MIGRATOR
                .run(&mut writer)
                .await
                .map_err(|e| open_error(format!("migration failed: {e}")))?;
            // Migrating filled the writer's page cache with pages it will not need again.
            sqlx::query("PRAGMA shrink_memory").execute(&mut writer).await?;
        }
        ensure_system(&mut writer, system_name).await?;
        incremental_auto_vacuum(&mut writer, path).await?;
        drop(set_up);
        let readers = SqlitePoolOptions::new()
            .max_connections(readers())
            .min_connections(0)
            .test_before_acquire(false)
            .connect_with(
                options.read_only(true).pragma("cache_size", format!("-{READER_CACHE_KIB}")),
            )
            .await
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Store::with_writer(path, readers, writer))
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
        Ok(Store::with_writer(path, readers, writer))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the sync driver is woken by.
    pub fn sync_signals(&self) -> &Arc<ccm_sync::Signals> {
        &self.signals
    }

    /// Wakes up after writes of this process: its value changes each time the writer
    /// connection is given back, after the borrower's commit. Readers of the change (the
    /// dashboard's live updates) coalesce wake-ups and read what changed from the outbox.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Moves WAL checkpoints off the writer, for the daemon: SQLite would run one inside
    /// whichever commit took the WAL past 1,000 pages, holding the one writer (and every write
    /// waiting for it, such as an urgent alert's batch) while it copies the WAL into the
    /// database: tens of milliseconds during a catch-up, whose batches write a megabyte or two
    /// each. Here a connection of its own runs a passive checkpoint, which waits for no writer
    /// or reader and none waits for it, after writes, at most every [`CHECKPOINT_EVERY`], until
    /// `shutdown`; the writer checkpoints only past [`WRITER_CHECKPOINT_PAGES`]. Other
    /// processes (the CLI, `ccm hook`) keep SQLite's own checkpoints.
    pub async fn checkpoint_in_background(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<()> {
        // Opened for each checkpoint and closed after it: an idle daemon keeps no connection
        // (and no memory) for it.
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .disable_statement_logging();
        sqlx::query(&format!("PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}"))
            .execute(&mut self.writer().await?.conn)
            .await?;
        let mut changes = self.changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let checkpoint = async {
                    let mut checkpointer = options.connect().await?;
                    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                        .execute(&mut checkpointer)
                        .await?;
                    sqlx::Connection::close(checkpointer).await
                };
                if let Err(e) = checkpoint.await {
                    tracing::warn!(error = %e, "WAL checkpoint failed; trying again after the next write");
                }
                release_freed_memory();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(CHECKPOINT_EVERY) => {}
                }
            }
        });
        Ok(())
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
        if self.abandoned.swap(false, Ordering::AcqRel) {
            // SQLite may have rolled it back itself already (after an I/O error, say), and then
            // says so: nothing is left to undo either way.
            let _ = sqlx::query("ROLLBACK").execute(&mut lent.conn).await;
        }
        Ok(lent)
    }

    /// Rolls back a transaction that a failed or refused write left open, so that no other
    /// process waits for this one's write lock; the daemon calls it before answering a request.
    pub async fn settle(&self) {
        if self.abandoned.load(Ordering::Acquire) {
            let _ = self.writer().await;
        }
    }

    /// Starts a write transaction that holds the write lock from its first statement.
    async fn write(&self) -> Result<Writing> {
        let mut lent = self.writer().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut lent.conn).await?;
        Ok(Writing {
            lent,
            open: true,
            abandoned: self.abandoned.clone(),
            signals: self.signals.clone(),
            urgent: false,
            route_call: false,
            completions: 0,
        })
    }

    /// This system's identity.
    pub async fn system(&self) -> Result<SystemInfo> {
        Ok(sqlx::query_as("SELECT id, name, created_at FROM system")
            .fetch_one(&self.readers)
            .await?)
    }
}

/// Gives the pages SQLite freed back to the OS. SQLite allocates with the C library's malloc,
/// which keeps what was freed inside its heaps for reuse: while a large backlog drained, the
/// daemon's SQLite connections kept about 15 MB that way (BENCHMARKS.md, T11). Run after
/// writes by the checkpointer, at most every [`CHECKPOINT_EVERY`]; a fraction of a millisecond.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the C library's heaps to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The exclusive lock that serializes the set-up of one database across processes: an flock
/// on `<database>.lock`, released when dropped.
struct SetUpLock {
    _file: std::fs::File,
}

impl SetUpLock {
    async fn acquire(db: &Path) -> Result<SetUpLock, String> {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let file = crate::fs::open_lock_file(&path)?;
        let locked = match file.try_lock() {
            Ok(()) => Ok(file),
            // Set-up takes milliseconds; a blocking thread waits for whoever does it now.
            Err(std::fs::TryLockError::WouldBlock) => {
                tokio::task::spawn_blocking(move || file.lock().map(|()| file))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        };
        locked
            .map(|file| SetUpLock { _file: file })
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))
    }
}

/// Whether some migration of [`ccm_schema::MIGRATOR`] is not applied yet (read only).
async fn migrations_pending(conn: &mut SqliteConnection) -> Result<bool> {
    let table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if table.is_none() {
        return Ok(true);
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await?;
    Ok(ccm_schema::MIGRATOR.iter().any(|m| !applied.contains(&m.version)))
}

/// Databases up to this size made before incremental auto-vacuum are converted when opened
/// (a `VACUUM`, which rewrites the file: about a second per 100 MB); a larger one is converted
/// by `ccm gc --db --vacuum`, at a time the operator chooses.
pub const CONVERT_AT_OPEN_BYTES: u64 = 64 * 1024 * 1024;

/// Puts a database made before incremental auto-vacuum into that mode (once: a `VACUUM`), when
/// it is small enough to do so at open; reads only when it is in that mode already.
async fn incremental_auto_vacuum(conn: &mut SqliteConnection, path: &Path) -> Result<()> {
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut *conn).await?;
    if mode == 2 || std::fs::metadata(path).map_or(0, |m| m.len()) > CONVERT_AT_OPEN_BYTES {
        return Ok(());
    }
    convert_to_incremental(conn).await
}

/// Sets incremental auto-vacuum and rewrites the file with `VACUUM` so that it applies.
pub(crate) async fn convert_to_incremental(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL").execute(&mut *conn).await?;
    sqlx::query("VACUUM").execute(&mut *conn).await?;
    Ok(())
}

/// Records this system's identity, or its new name; writes only when either is missing.
async fn ensure_system(conn: &mut SqliteConnection, name: &str) -> Result<()> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT name FROM system").fetch_optional(&mut *conn).await?;
    if stored.as_deref() == Some(name) {
        return Ok(());
    }
    sqlx::query(
        r#"
        INSERT INTO system (singleton, id, name, created_at) VALUES (1, ?, ?, ?)
        ON CONFLICT (singleton) DO UPDATE SET name = excluded.name WHERE name <> excluded.name
        "#,
    )
    .bind(Uuid::new_v4().hyphenated())
    .bind(name)
    .bind(Timestamp::now())
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes an outbox row for `entity_id` carrying `payload` (a versioned payload of
/// `ccm_sync::outbox`, which names the stream), inside `tx`, in the urgent lane when `urgent`.
/// The row's entity version is the payload's (a task's `version`) or else the row's own seq,
/// which only grows.
async fn outbox<P: Payload + Clone>(
    tx: &mut Writing,
    entity_id: &str,
    payload: &P,
    urgent: bool,
) -> Result<()> {
    outbox_rows(tx, &[(entity_id.to_string(), payload.clone())], urgent).await
}

/// Writes an alert's row (a new alert, or one resolved), in the urgent lane when `urgent`.
async fn outbox_alert(tx: &mut Writing, alert: &ccm_schema::Alert, urgent: bool) -> Result<()> {
    outbox(tx, &alert.id.to_string(), &ccm_sync::outbox::AlertRowV1::from(alert), urgent).await
}

/// Writes a task's summary row: the task as the outbox carries it, with the cost and tokens
/// of every agent that worked on it (worker and supervisory, all attempts) so far
/// (`cost_usd` unknown, `None`, when no agent reported one).
async fn outbox_task(tx: &mut Writing, task: &ccm_schema::Task, urgent: bool) -> Result<()> {
    let mut row = TaskSummaryRowV1::of(task);
    (row.cost_usd, row.input_tokens, row.output_tokens) = sqlx::query_as(
        "SELECT sum(cost_usd), sum(input_tokens), sum(output_tokens) FROM agents WHERE task_id = ?",
    )
    .bind(task.id.hyphenated())
    .fetch_one(&mut **tx)
    .await?;
    // What the task touched, for other systems' conflict prediction (`conflicts`).
    let touched: Option<String> =
        sqlx::query_scalar("SELECT files FROM task_touched WHERE task_id = ?")
            .bind(task.id.hyphenated())
            .fetch_optional(&mut **tx)
            .await?;
    row.touched_files = touched.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    row.touched_files.truncate(crate::conflicts::SHIPPED_FILES);
    outbox_rows(tx, &[(task.id.to_string(), row)], urgent).await
}

/// [`outbox`] for many entities of one kind, in one statement. Meant for payloads that carry
/// their `version` (tasks); a versionless one, whose version is the next seq, goes through
/// [`outbox`] alone.
async fn outbox_rows<P: Payload>(
    tx: &mut Writing,
    rows: &[(String, P)],
    urgent: bool,
) -> Result<()> {
    let stream = P::STREAM;
    tx.completions += rows.iter().filter(|(_, payload)| payload.completes()).count() as u64;
    tx.urgent |= urgent;
    let now = Timestamp::now();
    let rows = rows
        .iter()
        .map(|(key, payload)| {
            let json = serde_json::to_string(payload)
                .map_err(|e| StoreError::Invalid { field: "payload", message: e.to_string() })?;
            Ok((key, payload.entity_version(), json))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at) ",
    );
    insert.push_values(rows, |mut row, (entity_id, version, json)| {
        row.push_bind(stream)
            .push_bind(entity_id.as_str())
            .push("coalesce(")
            .push_bind_unseparated(version)
            .push_unseparated(", (SELECT coalesce(max(seq), 0) + 1 FROM outbox))")
            .push_bind(if urgent { "urgent" } else { "normal" })
            .push_bind(json)
            .push_bind(now);
    });
    insert.build().execute(&mut **tx).await?;
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

    /// The newest `task_summary` row of `task`: its version and payload.
    async fn last_summary(store: &Store, task: Uuid) -> (i64, serde_json::Value) {
        let (version, payload): (i64, String) = sqlx::query_as(
            "SELECT entity_version, payload FROM outbox WHERE stream = 'task_summary' \
             AND entity_key = ? ORDER BY seq DESC LIMIT 1",
        )
        .bind(task.to_string())
        .fetch_one(&store.readers)
        .await
        .unwrap();
        (version, serde_json::from_str(&payload).unwrap())
    }

    #[tokio::test]
    async fn an_agents_cost_known_after_its_task_left_its_step_travels_in_a_new_summary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ccm.db"), "node").await.unwrap();
        let config = crate::config::Config::load(dir.path(), None).unwrap();
        let new = NewTask { title: "costs".into(), ..NewTask::default() };
        let task = store.create_task(new, &config, "test").await.unwrap();
        let (_, created) = last_summary(&store, task.id).await;
        assert_eq!(created["cost_usd"], serde_json::Value::Null, "no agent yet: unknown");
        store.schedule(1, &[], RetryPolicy::default()).await.unwrap();
        let agent = agents::NewAgent {
            id: Uuid::new_v4(),
            kind: ccm_schema::AgentKind::Worker,
            profile: "claude".into(),
            account: "claude".into(),
            dir: dir.path().display().to_string(),
            cwd: dir.path().display().to_string(),
            token: "t".into(),
            context_window: None,
        };
        let (_, agent) =
            store.begin_attempt(task.id, &agent, "p", None, RetryPolicy::default()).await.unwrap();
        let progress = |cost: f64| agents::AgentProgress {
            cost_usd: Some(cost),
            input_tokens: 100,
            output_tokens: 20,
            ..Default::default()
        };
        store.agent_progress(agent.id, &progress(0.01)).await.unwrap();
        let id = task.id.to_string();
        let policy = RetryPolicy::default();
        let cancelled = store
            .apply_event(&id, ccm_schema::TaskEvent::Cancel, "operator", "test", policy)
            .await
            .unwrap();
        let (version, summary) = last_summary(&store, task.id).await;
        assert_eq!((version, &summary["cost_usd"]), (cancelled.version, &serde_json::json!(0.01)));

        // the agent's last words, read after the cancel, carry its final cost
        store.agent_progress(agent.id, &progress(0.25)).await.unwrap();
        store.agent_ended(agent.id, ccm_schema::AgentStatus::Killed, None).await.unwrap();
        let (version, summary) = last_summary(&store, task.id).await;
        assert_eq!(version, cancelled.version + 1, "a new version, so the central takes it");
        assert_eq!(summary["state"], "cancelled");
        assert_eq!(summary["cost_usd"], 0.25);
        assert_eq!(
            (&summary["input_tokens"], &summary["output_tokens"]),
            (&100.into(), &20.into())
        );
    }
}
