//! Domain records as the node stores and shows them (SPEC section 2).
//!
//! Ids are UUIDs stored as hyphenated TEXT so the database reads well in `sqlite3`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use crate::state::TaskState;

/// A point in time, stored as milliseconds since the Unix epoch and shown as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, sqlx::Type)]
#[sqlx(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// This time plus `duration`, saturating.
    /// How long before `now` this was, for people: `42s ago`, `5m ago`, `3h ago`, `2d ago`.
    pub fn ago(self, now: Timestamp) -> String {
        let secs = (now.0 - self.0).max(0) / 1000;
        match secs {
            0..60 => format!("{secs}s ago"),
            60..3600 => format!("{}m ago", secs / 60),
            3600..86400 => format!("{}h ago", secs / 3600),
            _ => format!("{}d ago", secs / 86400),
        }
    }

    pub fn after(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration.as_millis().try_into().unwrap_or(i64::MAX)))
    }

    fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.max(0) as u64)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        let millis = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Timestamp(millis.try_into().unwrap_or(i64::MAX))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.system_time()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp::from)
            .map_err(|e| serde::de::Error::custom(format!("invalid timestamp `{text}`: {e}")))
    }
}

/// The first 8 hex digits of an id: what the CLI shows and what branch names and commit
/// subjects carry.
pub fn short_id(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

/// This machine as a ccm system.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct SystemInfo {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub name: String,
    pub created_at: Timestamp,
}

/// A unit of work for an agent.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Task {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub title: String,
    pub prompt: String,
    /// Normalized URL of the repository the task works in, if any.
    pub repo: Option<String>,
    /// Agent profile that runs the task.
    pub profile: String,
    pub workflow: Option<String>,
    /// Command of the verification gate, run in the task's worktree.
    pub verify: Option<String>,
    pub max_attempts: u32,
    /// Attempts started so far.
    pub attempts: u32,
    /// Higher runs first.
    pub priority: i64,
    pub state: TaskState,
    /// When a task in `retry` or `waiting_quota` may be queued again.
    pub wake_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped on every change.
    pub version: i64,
    /// Tasks that must be complete before this one is queued.
    #[sqlx(skip)]
    pub depends_on: Vec<Uuid>,
    /// Where a `complete` task's landing is (`landed`, ...), once it entered a land queue.
    #[sqlx(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub land_state: Option<crate::state::LandState>,
}

impl Task {
    /// The state as shown: a complete task's land state reads in its place (`landed`,
    /// `landing`, `land_queued`, `land_failed`).
    pub fn shown_state(&self) -> &'static str {
        match (self.state, self.land_state) {
            (crate::state::TaskState::Complete, Some(land)) => land.label(),
            (state, _) => state.as_str(),
        }
    }
}

impl Task {
    pub fn short_id(&self) -> String {
        short_id(&self.id)
    }
}

/// One transition in a task's append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct TaskLogEntry {
    pub at: Timestamp,
    /// `None` for the entry that records the task's creation.
    pub from_state: Option<TaskState>,
    pub to_state: TaskState,
    pub reason: String,
    /// Who caused it: `cli`, `api`, `scheduler`, an agent id, ...
    pub actor: String,
}

/// A repository checkout on this system.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Context {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub path: String,
    /// Normalized remote URL (see [`crate::repo_url::normalize`]); `None` without a remote.
    pub repo_url: Option<String>,
    pub default_branch: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// How urgent an alert is (ordered: `info` < `warning` < `critical`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        })
    }
}

/// Something the operator must know.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Alert {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub task_id: Option<String>,
    pub severity: Severity,
    /// Machine-readable reason, such as `attempts_exhausted`.
    pub reason: String,
    pub message: String,
    /// JSON attached to the alert, such as the supervisory report.
    pub details: Option<sqlx::types::Json<serde_json::Value>>,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

/// What a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum DecisionKind {
    /// A blocked task: run it again or cancel it.
    RetryOrCancel,
    /// A tool call waiting for approval.
    ApproveTool,
    /// A change request to a file another task owns: forward it to the owner, or refuse it.
    ChangeRequest,
    /// An account's or a project's daily cost cap was reached: raise it for the day, or keep
    /// its tasks waiting until the next day.
    CostCap,
}

impl DecisionKind {
    pub fn options(self) -> &'static [&'static str] {
        match self {
            DecisionKind::RetryOrCancel => &["retry", "cancel"],
            DecisionKind::ApproveTool => &["allow", "deny"],
            DecisionKind::ChangeRequest | DecisionKind::CostCap => &["approve", "reject"],
        }
    }
}

/// A question for the human, with its answer once given.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Decision {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub task_id: Option<String>,
    pub kind: DecisionKind,
    pub question: String,
    pub options: sqlx::types::Json<Vec<String>>,
    pub answer: Option<String>,
    pub answered_by: Option<String>,
    pub created_at: Timestamp,
    pub answered_at: Option<Timestamp>,
}

/// What an agent is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum AgentKind {
    /// Runs an attempt of a task.
    Worker,
    /// Reviews a task's report and gives a verdict.
    Supervisory,
}

/// Where an agent process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum AgentStatus {
    /// Recorded; its tmux window is being created.
    Starting,
    Running,
    /// Exited on its own; `exit_code` says how.
    Exited,
    /// Gone without an exit status: crashed, or killed from outside.
    Lost,
    /// Stopped by the node (task cancelled, lease expired, quota).
    Killed,
}

impl AgentStatus {
    pub fn is_live(self) -> bool {
        matches!(self, AgentStatus::Starting | AgentStatus::Running)
    }
}

impl fmt::Display for AgentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentStatus::Starting => "starting",
            AgentStatus::Running => "running",
            AgentStatus::Exited => "exited",
            AgentStatus::Lost => "lost",
            AgentStatus::Killed => "killed",
        })
    }
}

impl fmt::Display for AgentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentKind::Worker => "worker",
            AgentKind::Supervisory => "supervisory",
        })
    }
}

/// One agent process, as the node records it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Agent {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    #[sqlx(try_from = "Hyphenated")]
    pub task_id: Uuid,
    /// The task attempt this agent serves.
    pub attempt: u32,
    pub kind: AgentKind,
    pub profile: String,
    pub status: AgentStatus,
    /// tmux window id (`@N`) once the window exists.
    pub window_id: Option<String>,
    pub pane_pid: Option<i64>,
    /// Directory with the prompt, the output log and the exit file.
    pub dir: String,
    pub cwd: String,
    pub session_id: Option<String>,
    pub exit_code: Option<i64>,
    /// USD cost; `None` when the agent's CLI reports none (unknown, not zero).
    pub cost_usd: Option<f64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub tool_calls: i64,
    pub started_at: Timestamp,
    pub last_heartbeat: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// Tokens in the agent's context after its latest model call, as its CLI reported them.
    pub context_tokens: i64,
    /// The context window it was started with; `None` when unknown (a plain profile).
    pub context_window: Option<i64>,
    /// What ccm did when the context passed its profile's threshold: `warn` or `handoff`.
    pub context_action: Option<String>,
    /// How many times its CLI compacted the context.
    pub compactions: i64,
}

impl Agent {
    pub fn short_id(&self) -> String {
        short_id(&self.id)
    }

    /// The share of its context window in use (0.62 for 62 %), when the window is known.
    pub fn context_share(&self) -> Option<f64> {
        let window = self.context_window.filter(|w| *w > 0)?;
        Some(self.context_tokens as f64 / window as f64)
    }

    /// `ctx 62%` (with `, 1 compaction` after any), `-` before the first usage report or
    /// without a known window.
    pub fn context_label(&self) -> String {
        let share = match self.context_share() {
            Some(share) if self.context_tokens > 0 => format!("ctx {:.0}%", share * 100.0),
            _ => "-".to_string(),
        };
        match self.compactions {
            0 => share,
            1 => format!("{share}, 1 compaction"),
            n => format!("{share}, {n} compactions"),
        }
    }
}

/// One run of a task by a worker agent.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Attempt {
    pub number: u32,
    #[sqlx(try_from = "Hyphenated")]
    pub agent_id: Uuid,
    pub prompt: String,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// `success`, `crash`, `verify_failed`, `timeout`, `quota`, `handoff`, `cancelled`; `None`
    /// while running.
    pub outcome: Option<String>,
    pub verify_output: Option<String>,
    pub last_message: Option<String>,
    /// The summary the attempt wrote when it handed off (outcome `handoff`).
    pub handoff: Option<String>,
}

/// What report generation gathered about an attempt, and the supervisory verdict on it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Report {
    pub attempt: u32,
    pub summary: sqlx::types::Json<serde_json::Value>,
    /// `ok` or `issue` once a supervisory agent reviewed it.
    pub verdict: Option<String>,
    /// The supervisory agent's review.
    pub review: Option<String>,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_show_as_rfc3339_and_parse_back() {
        let t = Timestamp(1_700_000_000_123);
        let shown = t.to_string();
        assert_eq!(shown, "2023-11-14T22:13:20.123Z");
        let back = Timestamp::from(humantime::parse_rfc3339_weak(&shown).unwrap());
        assert_eq!(back, t);
    }

    #[test]
    fn short_id_is_the_first_eight_hex_digits() {
        let id: Uuid = "3f2a9c41-0000-7000-8000-000000000000".parse().unwrap();
        assert_eq!(short_id(&id), "3f2a9c41");
    }
}
