//! The sync engine (SPEC section 7): ships the outbox to one central Supabase (PostgREST)
//! project, and is the only code that knows PostgREST's wire format.
//!
//! Stages, a module each, the way vector lays out a sink:
//! - [`seal`]: reads pending outbox rows in pages, coalesces them (latest version per entity)
//!   and seals a batch: a UUIDv7 id and the exact body every retry sends again.
//! - [`outbox`]: the outbox rows' durable form: versioned payload types of this crate the node
//!   writes through (never the local serde form of `ccm_schema` types); rows stored before
//!   them (no `v`) are read too.
//! - [`wire`]: the versioned JSON the central `api` functions take, converted by hand from
//!   the outbox payloads and the node's types: the batches of `api.ingest_batch`, the
//!   heartbeat, and one typed request per routing function ([`wire::CallV1`] for the calls
//!   the node queues durably).
//! - [`client`]: the PostgREST RPC client and the classification of its answers (S-9).
//! - [`auth`]: Supabase Auth: signing a system in, and the [`auth::Keeper`] that refreshes its
//!   session before the access token expires and saves each rotated refresh token.
//! - [`driver`]: the long-lived loop of each lane (urgent, normal) that seals, sends, retries
//!   with backoff, splits, bisects, pauses and acknowledges; the presence loop (heartbeat,
//!   contexts); and the calls lane that sends the node's queued routing calls, classified and
//!   backed off the same way.
//! - [`liveness`]: a loop's [`Beat`] (inside a step since when), read by the daemon's watchdog.
//!
//! The node lends its outbox (and its queue of routing calls) through the [`Outbox`] trait, so every write (sealing,
//! acknowledgement) goes through the node's one writer connection; this crate knows nothing of
//! the node (`node → sync → schema`).

pub mod auth;
pub mod client;
pub mod driver;
pub mod liveness;
pub mod outbox;
pub mod seal;
pub mod wire;

use std::fmt;
use std::future::Future;

use ccm_schema::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use client::{error_chain, Class, Client, ClientError, Credential, Endpoint};
pub use driver::{Driver, Settings, Signals};
pub use liveness::Beat;

/// The reason (`alerts.reason`) of the alert raised once per batch with refused items.
pub const REJECTED_ALERT: &str = "sync_rejected";

/// The two ways out of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Critical alerts, failed verdicts and the like: sent within 250 ms of the commit.
    Urgent,
    /// Everything else: sealed on the per-system timer or a threshold.
    Normal,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Urgent, Lane::Normal];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Normal => "normal",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outbox streams the central `api.ingest_batch` takes; `context` rows only count the
/// contexts' generation (`api.register_contexts` sends the whole set).
pub const SHIPPED_STREAMS: [&str; 4] = ["task_summary", "alert", "report", "health"];

/// One outbox row, as the node stored it in the transaction of the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub stream: String,
    pub entity_key: String,
    pub entity_version: i64,
    /// JSON snapshot of the entity: a payload of [`outbox`] (`v` 1), or its old form.
    pub payload: String,
}

/// A batch ready to be stored: what [`Outbox::seal`] writes in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub id: Uuid,
    pub lane: Lane,
    /// Send order within the lane (see the `outbox_batch.ord` column).
    pub ord: String,
    pub parent: Option<Uuid>,
    /// The rows whose entity the body carries.
    pub items: Vec<i64>,
    /// Rows covered by a newer version of their entity in the same batch.
    pub superseded: Vec<i64>,
    /// Rows whose payload cannot be converted: rejected locally with their reason.
    pub invalid: Vec<Rejection>,
    pub seq_lo: i64,
    pub seq_hi: i64,
    /// Per stream, the highest seq this batch declares in its `ranges` (normal lane only).
    pub declared: Vec<(String, i64)>,
    /// The exact request body.
    pub body: Vec<u8>,
}

/// A sealed batch waiting for a final outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenBatch {
    pub id: Uuid,
    pub lane: Lane,
    pub ord: String,
    /// The stored body; shared with the request that sends it, never copied.
    pub body: bytes::Bytes,
    pub items: i64,
    pub attempts: i64,
}

/// An item the central side refused, matched to its outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub seq: i64,
    /// The refusal's code: the central's (`42501`, `22P05`, ...), or `invalid` for a row the
    /// node could not convert; `None` when the answer gave none.
    pub code: Option<String>,
    pub reason: String,
}

/// A refused outbox row as `ccm sync status` shows it: kept locally, never sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedItem {
    pub seq: i64,
    pub stream: String,
    /// The entity's key (task id, alert id, `task/attempt`, ...).
    pub key: String,
    pub code: Option<String>,
    pub message: String,
    pub rejected_at: Option<Timestamp>,
}

/// What `ccm sync status` shows of one lane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneStatus {
    /// Rows not yet acknowledged (pending or sealed) in shipped streams.
    pub backlog: i64,
    pub last_ok_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_error_at: Option<Timestamp>,
    /// Why sending is paused (queueing goes on); `None` when it runs.
    pub paused_reason: Option<String>,
    /// Rows dropped from this lane's backlog to keep it bounded (only ever health rows).
    #[serde(default)]
    pub dropped_total: i64,
    /// Rows of this lane the central side (or the node) refused, all time.
    #[serde(default)]
    pub rejected_total: i64,
    /// The newest of them, newest first (at most [`REJECTED_SHOWN`]).
    #[serde(default)]
    pub rejected: Vec<RejectedItem>,
}

/// Refused rows `ccm sync status` lists per lane.
pub const REJECTED_SHOWN: usize = 20;

/// A call to a central routing function waiting in the node's durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedCall {
    /// Its place in the queue (calls are sent in this order).
    pub seq: i64,
    pub call: wire::CallV1,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// How a queued call ended.
#[derive(Debug, Clone)]
pub enum CallOutcome {
    /// The central answered (`applied`, `queued`, `duplicate`, `stale_lease`, ...); a cancel,
    /// retry or pin also answers the task as the origin sees it.
    Answered { answer: wire::RouteAnswerV1, task: Option<Box<wire::RoutedTaskV1>> },
    /// The central will never take it (a 400 or a 413): it leaves the queue with the reason.
    Refused { reason: String },
}

/// The outbox as the node lends it. Every method that writes does so in one transaction on the
/// node's writer connection.
pub trait Outbox: Clone + Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Up to `limit` pending rows of `lane` in shipped streams with `seq > after`, oldest first.
    fn pending(
        &self,
        lane: Lane,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, Self::Error>> + Send;

    /// The rows a sealed batch carries (its items, not the superseded rows), oldest first.
    fn batch_rows(
        &self,
        batch: Uuid,
    ) -> impl Future<Output = Result<Vec<OutboxRow>, Self::Error>> + Send;

    /// Per shipped stream, the highest seq declared in the ranges of a sealed batch.
    fn declared(&self) -> impl Future<Output = Result<Vec<(String, i64)>, Self::Error>> + Send;

    /// Stores the batch and marks its rows sealed (items) or acked (superseded).
    fn seal(&self, batch: &NewBatch) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The lane's first batch (by `ord`) still waiting for a final outcome.
    fn open_batch(
        &self,
        lane: Lane,
    ) -> impl Future<Output = Result<Option<OpenBatch>, Self::Error>> + Send;

    /// A 2xx that echoed the batch id: its rows are acked, except `rejected` ones, which keep
    /// their reason (and raise one alert for the batch). Clears the lane's last error and
    /// records the success.
    fn acknowledge(
        &self,
        batch: Uuid,
        rejected: &[Rejection],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The whole batch (its one item) was refused: the rows are rejected with `code` and
    /// `reason`.
    fn reject_batch(
        &self,
        batch: Uuid,
        code: Option<&str>,
        reason: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Replaces `parent` by `children` (each sealed with its rows) in one transaction.
    fn split(
        &self,
        parent: Uuid,
        children: &[NewBatch],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// A failed attempt: counts it and records the error on the batch and its lane.
    fn record_failure(
        &self,
        batch: Uuid,
        lane: Lane,
        error: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Pauses sending on `lane` with `reason` (`None` resumes).
    fn set_paused(
        &self,
        lane: Lane,
        reason: Option<&str>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Why sending is paused on `lane`, if it is.
    fn paused(
        &self,
        lane: Lane,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;

    /// Whether sync is paused by the operator (`ccm sync pause`): the presence loop then goes
    /// on sending a heartbeat that says so (and renews no lease).
    fn paused_by_operator(&self) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        async { Ok(false) }
    }

    /// Agents running now (sent with each heartbeat).
    fn running(&self) -> impl Future<Output = Result<i64, Self::Error>> + Send;

    /// The routed tasks this system believes it holds a lease on (sent with each heartbeat).
    fn leases(&self) -> impl Future<Output = Result<Vec<wire::LeaseV1>, Self::Error>> + Send;

    /// What a heartbeat answered: renewed leases restart their self-fencing clock, revoked
    /// ones stop their agents, offers wake the claimer.
    fn heartbeat_answered(
        &self,
        answer: &wire::HeartbeatAnswerV1,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The node's contexts with a remote, and their generation: a number that grows whenever
    /// the set changes (the newest context outbox row).
    fn contexts(
        &self,
    ) -> impl Future<Output = Result<(i64, Vec<wire::ContextV1>), Self::Error>> + Send;

    /// The central holds the contexts of `generation` (or newer): their outbox rows are acked.
    fn contexts_registered(
        &self,
        generation: i64,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The oldest queued call to the central routing functions (the calls lane sends them in
    /// order, one at a time). A node that routes nothing keeps the default.
    fn next_call(&self) -> impl Future<Output = Result<Option<QueuedCall>, Self::Error>> + Send {
        async { Ok(None) }
    }

    /// A queued call has its final outcome: it leaves the queue, and the node applies it.
    fn call_answered(
        &self,
        _call: &QueuedCall,
        _outcome: &CallOutcome,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// A queued call failed and stays queued, counted with its error, for the next attempt.
    fn call_failed(
        &self,
        _call: &QueuedCall,
        _error: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// Raises a local critical alert (it travels in the urgent lane like any other).
    fn raise_alert(
        &self,
        reason: &str,
        message: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
