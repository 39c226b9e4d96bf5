//! Shared vocabulary of ccm: the words of the product as types, the task state machine, and the
//! SQLite migrations of the node's local store.
//!
//! - [`state`]: [`TaskState`], [`TaskEvent`] and the pure [`transition`] function that decides
//!   every state change and the effects the node must carry out; [`LandState`] and the pure
//!   [`land_transition`] for a complete task's landing (a sub-state). It does no IO.
//! - [`types`]: the domain records (tasks, log entries, contexts, alerts, decisions) as they are
//!   stored and shown, and [`Timestamp`].
//! - [`repo_url`]: normalization of git remote URLs, so one repository has one name everywhere.
//! - [`MIGRATOR`]: the embedded SQLite migrations (`schema/migrations/`), forward-only.
//!
//! This crate knows nothing of HTTP, tmux, processes or Supabase.

pub mod repo_url;
pub mod state;
pub mod types;

pub use state::{
    backoff, land_transition, transition, Effect, FailureClass, LandEvent, LandState,
    LandTransitionError, TaskEvent, TaskState, Transition, TransitionError,
};
pub use types::{
    Agent, AgentKind, AgentStatus, Alert, Attempt, Context, Decision, DecisionKind, Report,
    Severity, SystemInfo, Task, TaskLogEntry, Timestamp,
};

/// The local store's migrations, embedded at compile time. Applied by the node at open.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
