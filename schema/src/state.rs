//! The task state machine (SPEC section 4) as one pure function.
//!
//! [`transition`] takes the current [`TaskState`] and a [`TaskEvent`] and returns the next state
//! and the [`Effect`]s the node must carry out, or a [`TransitionError`] naming both states when
//! the move is illegal. It does no IO and reads no clock: everything it needs is in its inputs.
//!
//! ```text
//! created ─admit→ queued ─start→ executing ─verify_passed→ report_generation ─report_ready→ supervisory ─verdict→ complete | alert
//!                                    │  ▲                                          └─(no supervisor)→ complete
//!                                    │  └ worker_finished (runs the verification gate)
//!                                    ├─failed→ error ─resolve→ retry ─retry_due→ queued   (queued ─failed→ error too)
//!                                    │                   ├→ blocked (attempts exhausted: alert + decision)
//!                                    │                   └→ failed  (fatal)
//!                                    ├─quota_exhausted→ waiting_quota ─quota_reset→ queued
//!                                    │    (queued ─quota_exhausted→ waiting_quota too: its account is limited)
//!                                    └─handed_off→ queued (a context handoff: the attempt does not count)
//! created ─dependency_failed→ blocked;  any unfinished state ─cancel→ cancelled
//! blocked | failed | alert | cancelled ─retry→ created (attempts reset);  alert ─accept→ complete
//! complete ─land_failed→ error (a landing that conflicts or fails its verify: a new attempt)
//! complete | alert ─changes_requested→ created (a review's comments: a new attempt that does not
//!                                              count against the budget)
//! ```
//!
//! Landing is a sub-state of `complete` ([`LandState`], moved by [`land_transition`]):
//!
//! ```text
//! (none) | land_failed ─enqueue→ land_queued ─begin→ landing ─merged→ merged ─moved→ moved ─finished→ landed
//!                                    ▲  (wait)           │  (target_moved: start again) │
//!                                    └───────────────────┴──────────────────────────────┘ (before `moved`)
//! landing | merged ─failed→ land_failed
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::{DecisionKind, Severity, Timestamp};

/// Where a task is in its lifecycle.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for its dependencies and a free agent slot.
    Created,
    /// Admitted: dependencies complete and an agent slot reserved.
    Queued,
    /// A worker agent runs the current attempt (the verification gate runs in this state too).
    Executing,
    /// The node gathers the attempt's summary.
    ReportGeneration,
    /// A supervisory agent reviews the report.
    Supervisory,
    /// Done and accepted.
    Complete,
    /// Done, but the supervisory review found an issue the operator must look at.
    Alert,
    /// The attempt failed; being assessed against the retry budget.
    Error,
    /// Waiting out the backoff before the next attempt.
    Retry,
    /// Failed for good (a fatal error).
    Failed,
    /// Needs a human: a dependency failed or the attempts are exhausted.
    Blocked,
    /// The agent hit a usage or rate limit; resumes at the reset time.
    WaitingQuota,
    /// Stopped by the operator.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 13] = [
        TaskState::Created,
        TaskState::Queued,
        TaskState::Executing,
        TaskState::ReportGeneration,
        TaskState::Supervisory,
        TaskState::Complete,
        TaskState::Alert,
        TaskState::Error,
        TaskState::Retry,
        TaskState::Failed,
        TaskState::Blocked,
        TaskState::WaitingQuota,
        TaskState::Cancelled,
    ];

    /// The one spelling used in SQLite, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Queued => "queued",
            TaskState::Executing => "executing",
            TaskState::ReportGeneration => "report_generation",
            TaskState::Supervisory => "supervisory",
            TaskState::Complete => "complete",
            TaskState::Alert => "alert",
            TaskState::Error => "error",
            TaskState::Retry => "retry",
            TaskState::Failed => "failed",
            TaskState::Blocked => "blocked",
            TaskState::WaitingQuota => "waiting_quota",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Finished states: nothing happens to the task any more unless a human retries it.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Complete | TaskState::Failed | TaskState::Cancelled)
    }

    /// States that hold one of the system's agent slots.
    pub fn holds_slot(self) -> bool {
        matches!(
            self,
            TaskState::Queued
                | TaskState::Executing
                | TaskState::ReportGeneration
                | TaskState::Supervisory
                | TaskState::Error
                | TaskState::Retry
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown task state `{s}`, expected one of: {}", all.join(", "))
        })
    }
}

/// Why an attempt failed; decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The worker crashed or exited non-zero.
    Crash,
    /// The attempt ran past its time limit or its lease.
    Timeout,
    /// The verification gate failed.
    VerifyFailed,
    /// A transient error, such as an API error of the agent's provider.
    Transient,
    /// An error no retry can fix.
    Fatal,
    /// The task's branch conflicts with its landing target.
    Conflict,
}

impl FailureClass {
    pub fn is_retriable(self) -> bool {
        !matches!(self, FailureClass::Fatal)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Crash => "crash",
            FailureClass::Timeout => "timeout",
            FailureClass::VerifyFailed => "verify_failed",
            FailureClass::Transient => "transient",
            FailureClass::Fatal => "fatal",
            FailureClass::Conflict => "conflict",
        })
    }
}

/// Something that happened to a task. Serialized as `{"event": "<name>", ...fields}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskEvent {
    /// The scheduler admits the task: dependencies complete, agent slot free.
    Admit,
    /// A dependency ended failed or cancelled.
    DependencyFailed,
    /// A worker agent starts the next attempt.
    Start,
    /// The worker finished its turn (Stop hook, exit or result event): run the verification gate.
    WorkerFinished,
    /// The verification gate passed.
    VerifyPassed,
    /// The report is gathered; `supervised` says whether the workflow has a supervisor step.
    ReportReady { supervised: bool },
    /// The supervisory agent's verdict: `ok` or not.
    Verdict { ok: bool },
    /// The attempt (or its review) failed.
    Failed { class: FailureClass },
    /// Follows `failed`: decides between retry, blocked and failed. `attempt` is the attempt
    /// that failed, counted from 1; the store fills both numbers from the task.
    Resolve {
        class: FailureClass,
        #[serde(default)]
        attempt: u32,
        #[serde(default)]
        max_attempts: u32,
    },
    /// The retry backoff elapsed.
    RetryDue,
    /// The agent hit a usage or rate limit (from `executing`), or its account is at one (from
    /// `queued`: no agent of the account starts); `until` is the reset time when it is known.
    QuotaExhausted {
        #[serde(default)]
        until: Option<Timestamp>,
    },
    /// The usage limit reset.
    QuotaReset,
    /// The worker's context passed its profile's threshold and it wrote a summary for the
    /// next attempt: the attempt ends without failing and the task runs again at once.
    HandedOff,
    /// The worker ended while sub-tasks it created are still open (`coordination.resume_parent`):
    /// the task waits for them in `created` (depending on each) and its next attempt, not
    /// counted against the budget, starts when they are complete.
    AwaitSubtasks,
    /// The operator accepts a task the supervisory review flagged.
    Accept,
    /// The operator cancels the task.
    Cancel,
    /// The operator runs a stopped task again, with a fresh attempt budget.
    Retry,
    /// Landing a complete task failed (a conflict with the target, the verify on the merged
    /// result, or a pull request's checks): weighed against the attempt budget like a failed
    /// attempt, or, with `decide` (`land.on_checks_failed: decide`), put to the operator at once.
    LandFailed {
        class: FailureClass,
        #[serde(default)]
        decide: bool,
    },
    /// The operator reviewed a finished task's diff and requested changes: its next attempt
    /// carries the review's comments and is not counted against the attempt budget.
    ChangesRequested,
    /// A complete task gets a new attempt: an approved change request of another task's was
    /// forwarded to it (the attempt budget is kept, so attempt numbers stay distinct).
    Reopen,
}

impl TaskEvent {
    /// The event's name as it is serialized.
    pub fn name(&self) -> &'static str {
        match self {
            TaskEvent::Admit => "admit",
            TaskEvent::DependencyFailed => "dependency_failed",
            TaskEvent::Start => "start",
            TaskEvent::WorkerFinished => "worker_finished",
            TaskEvent::VerifyPassed => "verify_passed",
            TaskEvent::ReportReady { .. } => "report_ready",
            TaskEvent::Verdict { .. } => "verdict",
            TaskEvent::Failed { .. } => "failed",
            TaskEvent::Resolve { .. } => "resolve",
            TaskEvent::RetryDue => "retry_due",
            TaskEvent::QuotaExhausted { .. } => "quota_exhausted",
            TaskEvent::QuotaReset => "quota_reset",
            TaskEvent::HandedOff => "handed_off",
            TaskEvent::AwaitSubtasks => "await_subtasks",
            TaskEvent::Accept => "accept",
            TaskEvent::Cancel => "cancel",
            TaskEvent::Retry => "retry",
            TaskEvent::LandFailed { .. } => "land_failed",
            TaskEvent::ChangesRequested => "changes_requested",
            TaskEvent::Reopen => "reopen",
        }
    }

    /// The state this event leads to when it is legal, for error messages.
    fn target(&self) -> TaskState {
        match *self {
            TaskEvent::Admit
            | TaskEvent::RetryDue
            | TaskEvent::QuotaReset
            | TaskEvent::HandedOff => TaskState::Queued,
            TaskEvent::DependencyFailed => TaskState::Blocked,
            TaskEvent::Start | TaskEvent::WorkerFinished => TaskState::Executing,
            TaskEvent::VerifyPassed => TaskState::ReportGeneration,
            TaskEvent::ReportReady { supervised: true } => TaskState::Supervisory,
            TaskEvent::ReportReady { supervised: false } => TaskState::Complete,
            TaskEvent::Verdict { ok: true } | TaskEvent::Accept => TaskState::Complete,
            TaskEvent::Verdict { ok: false } => TaskState::Alert,
            TaskEvent::Failed { .. } | TaskEvent::LandFailed { .. } => TaskState::Error,
            TaskEvent::Resolve { class, attempt, max_attempts } => {
                resolution(class, attempt, max_attempts)
            }
            TaskEvent::QuotaExhausted { .. } => TaskState::WaitingQuota,
            TaskEvent::Cancel => TaskState::Cancelled,
            TaskEvent::Retry
            | TaskEvent::ChangesRequested
            | TaskEvent::Reopen
            | TaskEvent::AwaitSubtasks => TaskState::Created,
        }
    }
}

/// What the store must do, in the transaction of a transition, because of it. What happens
/// next outside the database (starting an agent, verifying, gathering the report, the
/// supervisory review, stopping an agent) is not an effect: the runtime derives it from the
/// task's state and its attempt, so it has one owner and survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Count a new attempt.
    BeginAttempt,
    /// Release the task's file claims.
    ReleaseClaims,
    /// Wait out the backoff for the given failed attempt, then fire `retry_due`.
    ScheduleRetry { attempt: u32 },
    /// Wait until the usage limit resets (or the configured wait), then fire `quota_reset`.
    WaitForQuota { until: Option<Timestamp> },
    /// Weigh the failure against the attempt budget: apply `resolve` right away, in the same
    /// transaction, with the task's attempt counts.
    Assess { class: FailureClass },
    /// Raise an alert for the operator.
    RaiseAlert { severity: Severity, reason: &'static str },
    /// Ask the operator a question.
    AskDecision { kind: DecisionKind },
    /// Start over with a fresh attempt budget.
    ResetAttempts,
    /// Grant one attempt more (`max_attempts + 1`): the next attempt answers a review, it is
    /// not a failure.
    GrantAttempt,
    /// The attempt that just ended does not count against the budget (a handoff).
    UncountAttempt,
}

/// The outcome of a legal transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub to: TaskState,
    pub effects: Vec<Effect>,
}

/// An event that is not legal in the task's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition from {from} to {to}: event `{event}` is not allowed in state {from}")]
pub struct TransitionError {
    pub from: TaskState,
    pub to: TaskState,
    pub event: &'static str,
}

/// Decides the next state of a task and what the node must do about it.
pub fn transition(from: TaskState, event: TaskEvent) -> Result<Transition, TransitionError> {
    use Effect as E;
    use TaskEvent as Ev;
    use TaskState as S;

    let go = |to: TaskState, effects: Vec<Effect>| Ok(Transition { to, effects });
    match (from, event) {
        (S::Created, Ev::Admit) => go(S::Queued, vec![]),
        (S::Created, Ev::DependencyFailed) => go(
            S::Blocked,
            vec![E::RaiseAlert { severity: Severity::Warning, reason: "dependency_failed" }],
        ),
        (S::Queued, Ev::Start) => go(S::Executing, vec![E::BeginAttempt]),
        (S::Executing, Ev::WorkerFinished) => go(S::Executing, vec![]),
        (S::Executing, Ev::VerifyPassed) => go(S::ReportGeneration, vec![]),
        (S::ReportGeneration, Ev::ReportReady { supervised: true }) => go(S::Supervisory, vec![]),
        (S::ReportGeneration, Ev::ReportReady { supervised: false })
        | (S::Supervisory, Ev::Verdict { ok: true })
        | (S::Alert, Ev::Accept) => go(S::Complete, vec![E::ReleaseClaims]),
        (S::Supervisory, Ev::Verdict { ok: false }) => go(
            S::Alert,
            vec![E::RaiseAlert { severity: Severity::Warning, reason: "supervisory_issue" }],
        ),
        // Queued: the attempt failed before its agent ran (no checkout, worktree setup failed).
        (S::Queued | S::Executing | S::ReportGeneration | S::Supervisory, Ev::Failed { class }) => {
            go(S::Error, vec![E::Assess { class }])
        }
        (S::Complete, Ev::LandFailed { class, decide: false }) => {
            go(S::Error, vec![E::Assess { class }])
        }
        (S::Complete, Ev::LandFailed { decide: true, .. }) => go(
            S::Blocked,
            vec![
                E::RaiseAlert { severity: Severity::Warning, reason: "land_failed" },
                E::AskDecision { kind: DecisionKind::RetryOrCancel },
            ],
        ),
        (S::Complete, Ev::Reopen) => go(S::Created, vec![]),
        (S::Error, Ev::Resolve { class, attempt, max_attempts }) => {
            let to = resolution(class, attempt, max_attempts);
            let effects = match to {
                S::Retry => vec![E::ScheduleRetry { attempt }],
                S::Blocked => vec![
                    E::RaiseAlert { severity: Severity::Critical, reason: "attempts_exhausted" },
                    E::AskDecision { kind: DecisionKind::RetryOrCancel },
                ],
                _ => vec![
                    E::RaiseAlert { severity: Severity::Critical, reason: "fatal_error" },
                    E::ReleaseClaims,
                ],
            };
            go(to, effects)
        }
        (S::Retry, Ev::RetryDue) | (S::WaitingQuota, Ev::QuotaReset) => go(S::Queued, vec![]),
        // A handoff keeps its slot: the next attempt starts from `queued` with the summary.
        (S::Executing, Ev::HandedOff) => go(S::Queued, vec![E::UncountAttempt]),
        // Its slot is given back while the sub-tasks run; admitted again once they are complete.
        (S::Executing, Ev::AwaitSubtasks) => go(S::Created, vec![E::GrantAttempt]),
        (S::Queued | S::Executing, Ev::QuotaExhausted { until }) => {
            go(S::WaitingQuota, vec![E::WaitForQuota { until }])
        }
        (from, Ev::Cancel) if !from.is_terminal() => go(S::Cancelled, vec![E::ReleaseClaims]),
        (S::Blocked | S::Failed | S::Alert | S::Cancelled, Ev::Retry) => {
            go(S::Created, vec![E::ResetAttempts])
        }
        (S::Complete | S::Alert, Ev::ChangesRequested) => go(S::Created, vec![E::GrantAttempt]),
        (from, event) => Err(TransitionError { from, to: event.target(), event: event.name() }),
    }
}

/// Where a failed attempt goes: retry while attempts remain, blocked when they are exhausted,
/// failed when the error is fatal.
fn resolution(class: FailureClass, attempt: u32, max_attempts: u32) -> TaskState {
    if !class.is_retriable() {
        TaskState::Failed
    } else if attempt < max_attempts {
        TaskState::Retry
    } else {
        TaskState::Blocked
    }
}

/// Where a `complete` task's landing is: a sub-state kept in the node's `landings` table, one
/// spelling for SQLite, JSON and messages. `landing`, `merged` and `moved` are the durable steps
/// of one landing in progress (at most one per repository and target), so that a restart knows
/// whether the target already moved.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum LandState {
    /// Waiting in its repository's land queue.
    LandQueued,
    /// The target's newest head is being merged with the task's branch (and verified).
    Landing,
    /// The merged result passed its verify; the target has not moved yet.
    Merged,
    /// The target moved to the merged result; the task's branch and worktree remain to go.
    Moved,
    /// On the target, branch and worktree gone.
    Landed,
    /// The last landing failed (conflict or verify); the task got a new attempt or a decision.
    LandFailed,
}

impl LandState {
    pub const ALL: [LandState; 6] = [
        LandState::LandQueued,
        LandState::Landing,
        LandState::Merged,
        LandState::Moved,
        LandState::Landed,
        LandState::LandFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LandState::LandQueued => "land_queued",
            LandState::Landing => "landing",
            LandState::Merged => "merged",
            LandState::Moved => "moved",
            LandState::Landed => "landed",
            LandState::LandFailed => "land_failed",
        }
    }

    /// A landing in progress: holds its queue's lease.
    pub fn in_progress(self) -> bool {
        matches!(self, LandState::Landing | LandState::Merged | LandState::Moved)
    }

    /// What a `complete` task is shown as: `land_queued`, `landing` (any step of one),
    /// `landed` or `land_failed`.
    pub fn label(self) -> &'static str {
        if self.in_progress() {
            "landing"
        } else {
            self.as_str()
        }
    }
}

impl fmt::Display for LandState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LandState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LandState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = LandState::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown land state `{s}`, expected one of: {}", all.join(", "))
        })
    }
}

/// Something that happened to a landing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandEvent {
    /// The task is put in its land queue (by `auto: true`, or `ccm land`).
    Enqueue,
    /// The queue's lease is taken: the landing starts from the target's newest head.
    Begin,
    /// The task's branch is merged with the target's head and the result passed its verify.
    Merged,
    /// The target moved (a compare-and-swap from the head the landing started from).
    Moved,
    /// The task's branch and worktree are gone.
    Finished,
    /// The target moved meanwhile: start again from its new head.
    TargetMoved,
    /// A conflict, or the verify failed on the merged result.
    Failed,
}

impl LandEvent {
    pub fn name(self) -> &'static str {
        match self {
            LandEvent::Enqueue => "enqueue",
            LandEvent::Begin => "begin",
            LandEvent::Merged => "merged",
            LandEvent::Moved => "moved",
            LandEvent::Finished => "finished",
            LandEvent::TargetMoved => "target_moved",
            LandEvent::Failed => "failed",
        }
    }
}

/// A landing event that is not legal in the landing's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal landing move: event `{event}` is not allowed {}", match from {
    Some(state) => format!("in land state {state}"),
    None => "before the task is in a land queue".to_string(),
})]
pub struct LandTransitionError {
    pub from: Option<LandState>,
    pub event: &'static str,
}

/// The next land state. `None` is a task not (yet) in a land queue. Once the target moved
/// (`moved`) the landing can only finish: the move happened exactly once and is never undone.
pub fn land_transition(
    from: Option<LandState>,
    event: LandEvent,
) -> Result<LandState, LandTransitionError> {
    use LandEvent as Ev;
    use LandState as S;
    match (from, event) {
        (None | Some(S::LandFailed | S::LandQueued), Ev::Enqueue) => Ok(S::LandQueued),
        (Some(S::LandQueued), Ev::Begin) => Ok(S::Landing),
        (Some(S::Landing), Ev::Merged) => Ok(S::Merged),
        (Some(S::Landing | S::Merged), Ev::TargetMoved) => Ok(S::Landing),
        (Some(S::Merged), Ev::Moved) => Ok(S::Moved),
        (Some(S::Moved), Ev::Finished) => Ok(S::Landed),
        (Some(S::Landing | S::Merged), Ev::Failed) => Ok(S::LandFailed),
        (from, event) => Err(LandTransitionError { from, event: event.name() }),
    }
}

/// Capped exponential backoff before retrying after failed attempt `attempt` (from 1):
/// `base`, `2 × base`, `4 × base`, ... never more than `cap`.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    base.saturating_mul(1 << exponent).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(from: TaskState, event: TaskEvent, expected: Result<(TaskState, Vec<Effect>), &str>) {
        let actual = transition(from, event).map(|t| (t.to, t.effects)).map_err(|e| e.to_string());
        assert_eq!(actual, expected.map_err(str::to_string), "transition({from}, {event:?})");
    }

    const fn failed(class: FailureClass) -> TaskEvent {
        TaskEvent::Failed { class }
    }

    const fn resolve(class: FailureClass, attempt: u32) -> TaskEvent {
        TaskEvent::Resolve { class, attempt, max_attempts: 3 }
    }

    #[test]
    fn happy_path_reaches_complete() {
        use TaskState::*;
        check(Created, TaskEvent::Admit, Ok((Queued, vec![])));
        check(Queued, TaskEvent::Start, Ok((Executing, vec![Effect::BeginAttempt])));
        check(Executing, TaskEvent::WorkerFinished, Ok((Executing, vec![])));
        check(Executing, TaskEvent::VerifyPassed, Ok((ReportGeneration, vec![])));
        check(
            ReportGeneration,
            TaskEvent::ReportReady { supervised: true },
            Ok((Supervisory, vec![])),
        );
        check(
            Supervisory,
            TaskEvent::Verdict { ok: true },
            Ok((Complete, vec![Effect::ReleaseClaims])),
        );
        check(
            ReportGeneration,
            TaskEvent::ReportReady { supervised: false },
            Ok((Complete, vec![Effect::ReleaseClaims])),
        );
    }

    #[test]
    fn supervisory_issue_raises_alert_that_operator_can_accept() {
        use TaskState::*;
        check(
            Supervisory,
            TaskEvent::Verdict { ok: false },
            Ok((
                Alert,
                vec![Effect::RaiseAlert {
                    severity: Severity::Warning,
                    reason: "supervisory_issue",
                }],
            )),
        );
        check(Alert, TaskEvent::Accept, Ok((Complete, vec![Effect::ReleaseClaims])));
    }

    #[test]
    fn failures_retry_until_attempts_are_exhausted_then_block() {
        use FailureClass::*;
        use TaskState::*;
        let assess = |class| vec![Effect::Assess { class }];
        check(Executing, failed(VerifyFailed), Ok((Error, assess(VerifyFailed))));
        check(Supervisory, failed(Crash), Ok((Error, assess(Crash))));
        check(Queued, failed(Fatal), Ok((Error, assess(Fatal))));
        check(Error, resolve(Crash, 1), Ok((Retry, vec![Effect::ScheduleRetry { attempt: 1 }])));
        check(Error, resolve(Timeout, 2), Ok((Retry, vec![Effect::ScheduleRetry { attempt: 2 }])));
        check(
            Error,
            resolve(Transient, 3),
            Ok((
                Blocked,
                vec![
                    Effect::RaiseAlert {
                        severity: Severity::Critical,
                        reason: "attempts_exhausted",
                    },
                    Effect::AskDecision { kind: DecisionKind::RetryOrCancel },
                ],
            )),
        );
        check(
            Error,
            resolve(Fatal, 1),
            Ok((
                Failed,
                vec![
                    Effect::RaiseAlert { severity: Severity::Critical, reason: "fatal_error" },
                    Effect::ReleaseClaims,
                ],
            )),
        );
        check(Retry, TaskEvent::RetryDue, Ok((Queued, vec![])));
    }

    #[test]
    fn quota_waits_then_resumes() {
        use TaskState::*;
        let until = Some(Timestamp(1_800_000_000_000));
        check(
            Executing,
            TaskEvent::QuotaExhausted { until },
            Ok((WaitingQuota, vec![Effect::WaitForQuota { until }])),
        );
        check(WaitingQuota, TaskEvent::QuotaReset, Ok((Queued, vec![])));
    }

    #[test]
    fn a_parent_that_awaits_its_subtasks_waits_in_created_with_an_attempt_granted() {
        use TaskState::*;
        check(Executing, TaskEvent::AwaitSubtasks, Ok((Created, vec![Effect::GrantAttempt])));
        for from in TaskState::ALL.into_iter().filter(|s| *s != Executing) {
            assert!(transition(from, TaskEvent::AwaitSubtasks).is_err(), "from {from}");
        }
    }

    #[test]
    fn a_handoff_requeues_the_task_without_counting_the_attempt() {
        use TaskState::*;
        check(Executing, TaskEvent::HandedOff, Ok((Queued, vec![Effect::UncountAttempt])));
        for from in TaskState::ALL.into_iter().filter(|s| *s != Executing) {
            check(
                from,
                TaskEvent::HandedOff,
                Err(&format!(
                    "illegal transition from {from} to queued: event `handed_off` is not allowed in state {from}"
                )),
            );
        }
    }

    #[test]
    fn a_queued_task_of_a_limited_account_waits_for_the_reset() {
        use TaskState::*;
        let until = Some(Timestamp(1_800_000_000_000));
        check(
            Queued,
            TaskEvent::QuotaExhausted { until },
            Ok((WaitingQuota, vec![Effect::WaitForQuota { until }])),
        );
    }

    #[test]
    fn dependency_failure_blocks_a_waiting_task() {
        check(
            TaskState::Created,
            TaskEvent::DependencyFailed,
            Ok((
                TaskState::Blocked,
                vec![Effect::RaiseAlert {
                    severity: Severity::Warning,
                    reason: "dependency_failed",
                }],
            )),
        );
    }

    #[test]
    fn every_unfinished_state_can_be_cancelled_and_finished_ones_cannot() {
        for from in TaskState::ALL {
            let result = transition(from, TaskEvent::Cancel);
            if from.is_terminal() {
                let error = result.expect_err("terminal states refuse cancel");
                assert_eq!(
                    error.to_string(),
                    format!("illegal transition from {from} to cancelled: event `cancel` is not allowed in state {from}")
                );
            } else {
                let t = result.expect("unfinished states accept cancel");
                assert_eq!(t.to, TaskState::Cancelled);
            }
        }
    }

    #[test]
    fn stopped_tasks_can_be_retried_with_a_fresh_budget() {
        use TaskState::*;
        for from in [Blocked, Failed, Alert, Cancelled] {
            check(from, TaskEvent::Retry, Ok((Created, vec![Effect::ResetAttempts])));
        }
        check(
            Complete,
            TaskEvent::Retry,
            Err("illegal transition from complete to created: event `retry` is not allowed in state complete"),
        );
        check(
            Executing,
            TaskEvent::Retry,
            Err("illegal transition from executing to created: event `retry` is not allowed in state executing"),
        );
    }

    #[test]
    fn illegal_moves_name_both_states() {
        use TaskState::*;
        check(
            Created,
            TaskEvent::Start,
            Err("illegal transition from created to executing: event `start` is not allowed in state created"),
        );
        check(
            Queued,
            TaskEvent::VerifyPassed,
            Err("illegal transition from queued to report_generation: event `verify_passed` is not allowed in state queued"),
        );
        check(
            Complete,
            TaskEvent::Admit,
            Err("illegal transition from complete to queued: event `admit` is not allowed in state complete"),
        );
    }

    #[test]
    fn every_state_is_reachable_from_created() {
        let events = [
            TaskEvent::Admit,
            TaskEvent::DependencyFailed,
            TaskEvent::Start,
            TaskEvent::WorkerFinished,
            TaskEvent::VerifyPassed,
            TaskEvent::ReportReady { supervised: true },
            TaskEvent::ReportReady { supervised: false },
            TaskEvent::Verdict { ok: true },
            TaskEvent::Verdict { ok: false },
            failed(FailureClass::Crash),
            resolve(FailureClass::Crash, 1),
            resolve(FailureClass::Crash, 3),
            resolve(FailureClass::Fatal, 1),
            TaskEvent::RetryDue,
            TaskEvent::QuotaExhausted { until: None },
            TaskEvent::QuotaReset,
            TaskEvent::HandedOff,
            TaskEvent::Accept,
            TaskEvent::Cancel,
            TaskEvent::Retry,
        ];
        let mut seen = vec![TaskState::Created];
        let mut frontier = vec![TaskState::Created];
        while let Some(state) = frontier.pop() {
            for event in events {
                if let Ok(t) = transition(state, event) {
                    if !seen.contains(&t.to) {
                        seen.push(t.to);
                        frontier.push(t.to);
                    }
                }
            }
        }
        for state in TaskState::ALL {
            assert!(seen.contains(&state), "{state} is unreachable");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(10);
        let cap = Duration::from_secs(60);
        let delays: Vec<_> = (1..=5).map(|a| backoff(base, cap, a).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        assert_eq!(backoff(base, cap, u32::MAX), cap);
    }

    fn land(from: Option<LandState>, event: LandEvent, expected: Result<LandState, &str>) {
        let actual = land_transition(from, event).map_err(|e| e.to_string());
        assert_eq!(
            actual,
            expected.map_err(str::to_string),
            "land_transition({from:?}, {event:?})"
        );
    }

    #[test]
    fn a_landing_goes_from_the_queue_through_its_steps_to_landed() {
        use LandEvent::*;
        use LandState::*;
        land(None, Enqueue, Ok(LandQueued));
        land(Some(LandQueued), Begin, Ok(Landing));
        land(Some(Landing), LandEvent::Merged, Ok(LandState::Merged));
        land(Some(LandState::Merged), LandEvent::Moved, Ok(LandState::Moved));
        land(Some(LandState::Moved), Finished, Ok(Landed));
    }

    #[test]
    fn a_moved_target_restarts_the_landing() {
        use LandEvent::*;
        use LandState::*;
        land(Some(Landing), TargetMoved, Ok(Landing));
        land(Some(LandState::Merged), TargetMoved, Ok(Landing));
    }

    #[test]
    fn a_failed_landing_can_be_queued_again_but_a_moved_target_only_finishes() {
        use LandEvent::*;
        use LandState::*;
        land(Some(Landing), Failed, Ok(LandFailed));
        land(Some(LandState::Merged), Failed, Ok(LandFailed));
        land(Some(LandFailed), Enqueue, Ok(LandQueued));
        land(
            Some(LandState::Moved),
            Failed,
            Err("illegal landing move: event `failed` is not allowed in land state moved"),
        );
        land(
            Some(LandState::Moved),
            TargetMoved,
            Err("illegal landing move: event `target_moved` is not allowed in land state moved"),
        );
        land(
            Some(Landed),
            Enqueue,
            Err("illegal landing move: event `enqueue` is not allowed in land state landed"),
        );
        land(
            None,
            Begin,
            Err("illegal landing move: event `begin` is not allowed before the task is in a land queue"),
        );
    }

    #[test]
    fn a_landing_that_fails_gives_a_complete_task_a_new_attempt_or_a_decision() {
        use TaskState::*;
        let conflict = TaskEvent::LandFailed { class: FailureClass::Conflict, decide: false };
        check(
            Complete,
            conflict,
            Ok((Error, vec![Effect::Assess { class: FailureClass::Conflict }])),
        );
        // `land.on_checks_failed: decide`: failing checks go to the operator at once.
        check(
            Complete,
            TaskEvent::LandFailed { class: FailureClass::VerifyFailed, decide: true },
            Ok((
                Blocked,
                vec![
                    Effect::RaiseAlert { severity: Severity::Warning, reason: "land_failed" },
                    Effect::AskDecision { kind: DecisionKind::RetryOrCancel },
                ],
            )),
        );
        check(
            Error,
            resolve(FailureClass::Conflict, 1),
            Ok((Retry, vec![Effect::ScheduleRetry { attempt: 1 }])),
        );
        check(
            Executing,
            conflict,
            Err("illegal transition from executing to error: event `land_failed` is not allowed in state executing"),
        );
    }

    #[test]
    fn requested_changes_start_a_finished_task_again_with_one_attempt_more() {
        use TaskState::*;
        for from in [Complete, Alert] {
            check(from, TaskEvent::ChangesRequested, Ok((Created, vec![Effect::GrantAttempt])));
        }
        check(
            Executing,
            TaskEvent::ChangesRequested,
            Err("illegal transition from executing to created: event `changes_requested` is not allowed in state executing"),
        );
        check(
            Failed,
            TaskEvent::ChangesRequested,
            Err("illegal transition from failed to created: event `changes_requested` is not allowed in state failed"),
        );
    }

    #[test]
    fn a_complete_task_reopens_for_a_change_request_keeping_its_attempts() {
        use TaskState::*;
        check(Complete, TaskEvent::Reopen, Ok((Created, vec![])));
        check(
            Executing,
            TaskEvent::Reopen,
            Err("illegal transition from executing to created: event `reopen` is not allowed in state executing"),
        );
        check(
            Cancelled,
            TaskEvent::Reopen,
            Err("illegal transition from cancelled to created: event `reopen` is not allowed in state cancelled"),
        );
    }

    #[test]
    fn land_states_round_trip_and_in_progress_ones_read_as_landing() {
        for state in LandState::ALL {
            assert_eq!(state.as_str().parse::<LandState>(), Ok(state));
        }
        let labels: Vec<_> = LandState::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(
            labels,
            ["land_queued", "landing", "landing", "landing", "landed", "land_failed"]
        );
    }

    #[test]
    fn states_round_trip_through_their_spelling() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
        assert!("done".parse::<TaskState>().unwrap_err().contains("unknown task state `done`"));
    }
}
