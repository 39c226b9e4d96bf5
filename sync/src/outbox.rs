//! The outbox's durable form: the payload of each outbox row, versioned types of this crate
//! that the node writes through (never the serde form of a `ccm_schema` type), so a change to
//! a local type cannot silently change what is stored, or strand rows already stored.
//!
//! Each payload carries `v` (its version, 1 today). Rows written before these types existed
//! (the schema types' serde form of 2026-12) have no `v` and are read as version 0: the field
//! names of version 1 are theirs, so one struct reads both. A row of a newer version than this
//! build knows is refused with a reason (kept locally, like any invalid row), never misread.
//!
//! A change of this contract is a new version (a new struct, or a new optional field read by
//! default), never a rename of a field here.

use ccm_schema::{Alert, Context, Decision, Report, Task, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::wire::HealthMetricsV1;

/// The payload version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

/// A payload of an outbox row: its stream, and how it is keyed and versioned there.
pub trait Payload: Serialize {
    /// The outbox stream (`task_summary`, `alert`, `report`, `health`, `context`).
    const STREAM: &'static str;

    /// The entity's own version when it has one (a task's), else the row's seq is used.
    fn entity_version(&self) -> Option<i64> {
        None
    }

    /// Whether the row counts as a completion (the normal lane's threshold).
    fn completes(&self) -> bool {
        false
    }
}

/// Checks the `v` of a stored payload: version 0 (no `v`, the old form) or one this build
/// knows.
pub fn check_version(stream: &str, v: u32) -> Result<(), String> {
    if v > VERSION {
        return Err(format!(
            "{stream} payload is version {v}, newer than this build reads ({VERSION}): written by a newer ccm"
        ));
    }
    Ok(())
}

/// A `task_summary` row: the task's fields the central shows, and the cost and tokens of the
/// agents that worked on it so far (`None`: unknown, or not counted in the row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSummaryRowV1 {
    #[serde(default)]
    pub v: u32,
    pub id: Uuid,
    pub title: String,
    pub repo: Option<String>,
    pub profile: String,
    pub max_attempts: u32,
    pub attempts: u32,
    pub priority: i64,
    /// The task's state (`ccm_schema::TaskState`'s name).
    pub state: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    /// The files the task touched so far, at most 200 (`conflicts`; none in older rows).
    #[serde(default)]
    pub touched_files: Vec<String>,
    /// The task's land state (`ccm_schema::LandState`'s name; none in older rows).
    #[serde(default)]
    pub land_state: Option<String>,
}

impl TaskSummaryRowV1 {
    /// The row of `task`, without cost (set the three fields when they are counted).
    pub fn of(task: &Task) -> TaskSummaryRowV1 {
        TaskSummaryRowV1 {
            v: VERSION,
            id: task.id,
            title: task.title.clone(),
            repo: task.repo.clone(),
            profile: task.profile.clone(),
            max_attempts: task.max_attempts,
            attempts: task.attempts,
            priority: task.priority,
            state: task.state.to_string(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            version: task.version,
            cost_usd: None,
            input_tokens: None,
            output_tokens: None,
            touched_files: Vec::new(),
            land_state: task.land_state.map(|s| s.as_str().to_string()),
        }
    }
}

impl Payload for TaskSummaryRowV1 {
    const STREAM: &'static str = "task_summary";

    fn entity_version(&self) -> Option<i64> {
        Some(self.version)
    }

    fn completes(&self) -> bool {
        self.state == "complete"
    }
}

/// An `alert` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRowV1 {
    #[serde(default)]
    pub v: u32,
    pub id: Uuid,
    pub task_id: Option<String>,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The machine-readable reason (`attempts_exhausted`, ...).
    pub reason: String,
    pub message: String,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

impl From<&Alert> for AlertRowV1 {
    fn from(alert: &Alert) -> AlertRowV1 {
        AlertRowV1 {
            v: VERSION,
            id: alert.id,
            task_id: alert.task_id.clone(),
            severity: alert.severity.to_string(),
            reason: alert.reason.clone(),
            message: alert.message.clone(),
            created_at: alert.created_at,
            resolved_at: alert.resolved_at,
        }
    }
}

impl Payload for AlertRowV1 {
    const STREAM: &'static str = "alert";
}

/// A `report` row (keyed `task/attempt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRowV1 {
    #[serde(default)]
    pub v: u32,
    pub attempt: u32,
    /// The agent's report as it wrote it.
    pub summary: serde_json::Value,
    /// `ok` or `issue` once reviewed.
    pub verdict: Option<String>,
    pub created_at: Timestamp,
}

impl From<&Report> for ReportRowV1 {
    fn from(report: &Report) -> ReportRowV1 {
        ReportRowV1 {
            v: VERSION,
            attempt: report.attempt,
            summary: report.summary.0.clone(),
            verdict: report.verdict.clone(),
            created_at: report.created_at,
        }
    }
}

impl Payload for ReportRowV1 {
    const STREAM: &'static str = "report";
}

/// A `health` row: one snapshot of the node (the node builds it for sync only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthRowV1 {
    #[serde(default)]
    pub v: u32,
    pub window_start: Timestamp,
    pub window_len_s: u64,
    pub metrics: HealthMetricsV1,
}

impl Payload for HealthRowV1 {
    const STREAM: &'static str = "health";
}

/// A `context` row: a change of the node's set of contexts. Only its seq is read (the set's
/// generation, `api.register_contexts` sends the whole set); the payload says what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextRowV1 {
    #[serde(default)]
    pub v: u32,
    pub id: Uuid,
    pub path: String,
    #[serde(default)]
    pub repo_url: Option<String>,
    #[serde(default)]
    pub default_branch: Option<String>,
    /// The context was unregistered.
    #[serde(default)]
    pub removed: bool,
}

impl ContextRowV1 {
    /// The row of a context registered (`removed` false) or unregistered.
    pub fn of(context: &Context, removed: bool) -> ContextRowV1 {
        ContextRowV1 {
            v: VERSION,
            id: context.id,
            path: context.path.clone(),
            repo_url: context.repo_url.clone(),
            default_branch: context.default_branch.clone(),
            removed,
        }
    }
}

impl Payload for ContextRowV1 {
    const STREAM: &'static str = "context";
}

/// A `decision` row: a change notice for the node's own dashboard, never shipped (no central
/// stream reads decisions; the node's trigger `outbox_local_only` writes them acknowledged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRowV1 {
    #[serde(default)]
    pub v: u32,
    pub id: Uuid,
    pub task_id: Option<String>,
    pub answered: bool,
}

impl From<&Decision> for DecisionRowV1 {
    fn from(decision: &Decision) -> DecisionRowV1 {
        DecisionRowV1 {
            v: VERSION,
            id: decision.id,
            task_id: decision.task_id.clone(),
            answered: decision.answered_at.is_some(),
        }
    }
}

impl Payload for DecisionRowV1 {
    const STREAM: &'static str = "decision";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Item;
    use crate::OutboxRow;
    use ccm_schema::{Severity, TaskState};

    fn row(stream: &str, key: &str, payload: String) -> OutboxRow {
        OutboxRow {
            seq: 5,
            stream: stream.into(),
            entity_key: key.into(),
            entity_version: 5,
            payload,
        }
    }

    fn shipped(row: &OutboxRow) -> serde_json::Value {
        let mut streams = crate::wire::StreamsV1::default();
        Item::from_row(row).unwrap().push_into(&mut streams);
        serde_json::to_value(&streams).unwrap()
    }

    fn task() -> Task {
        Task {
            id: "0193a000-0000-7000-8000-000000000001".parse().unwrap(),
            title: "t".into(),
            prompt: "a prompt never shipped".into(),
            repo: Some("https://example.com/r.git".into()),
            profile: "claude".into(),
            workflow: None,
            verify: None,
            max_attempts: 3,
            attempts: 1,
            priority: 2,
            state: TaskState::Complete,
            wake_at: None,
            created_at: Timestamp(1_700_000_000_000),
            updated_at: Timestamp(1_700_000_001_000),
            version: 7,
            depends_on: vec![],
            land_state: None,
        }
    }

    /// Rows stored as the serde form of the schema types (databases written before the
    /// versioned payloads) ship exactly as rows written through the payload types.
    #[test]
    fn rows_in_the_old_schema_serde_form_ship_as_their_versioned_form_does() {
        let task = task();
        let old = row("task_summary", "k", serde_json::to_string(&task).unwrap());
        let new =
            row("task_summary", "k", serde_json::to_string(&TaskSummaryRowV1::of(&task)).unwrap());
        assert_eq!(shipped(&old), shipped(&new));
        assert_eq!(shipped(&new)["task_summary"][0]["state"], "complete");
        assert!(!new.payload.contains("prompt"), "the prompt is not stored: {}", new.payload);
        assert!(new.payload.contains(r#""v":1"#));
        assert_eq!(shipped(&old)["task_summary"][0]["touched_files"], serde_json::json!([]));
        let mut touched = TaskSummaryRowV1::of(&task);
        touched.touched_files = vec!["src/a.rs".into(), "b.txt".into()];
        let touched = row("task_summary", "k", serde_json::to_string(&touched).unwrap());
        assert_eq!(
            shipped(&touched)["task_summary"][0]["touched_files"],
            serde_json::json!(["src/a.rs", "b.txt"])
        );

        // The old forms as the node stored them (the schema types' serde form).
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "id": "0193a000-0000-7000-8000-0000000000a1", "task_id": task.id.to_string(),
            "severity": "critical", "reason": "attempts_exhausted", "message": "m",
            "details": { "x": 1 }, "created_at": "2026-11-30T10:00:00.000Z", "resolved_at": null
        }))
        .unwrap();
        assert_eq!(alert.severity, Severity::Critical);
        let old = row("alert", "a", serde_json::to_string(&alert).unwrap());
        let new = row("alert", "a", serde_json::to_string(&AlertRowV1::from(&alert)).unwrap());
        assert_eq!(shipped(&old), shipped(&new));
        assert_eq!(shipped(&new)["alert"][0]["severity"], "critical");

        let report: Report = serde_json::from_value(serde_json::json!({
            "attempt": 1, "summary": { "cost_usd": 0.25, "done": true }, "verdict": "ok",
            "review": "fine", "created_at": "2026-11-30T10:00:00.000Z"
        }))
        .unwrap();
        let key = format!("{}/1", task.id);
        let old = row("report", &key, serde_json::to_string(&report).unwrap());
        let new = row("report", &key, serde_json::to_string(&ReportRowV1::from(&report)).unwrap());
        assert_eq!(shipped(&old), shipped(&new));
        assert_eq!(shipped(&new)["report"][0]["cost_usd"], 0.25);
    }

    #[test]
    fn a_row_of_a_newer_payload_version_is_refused_with_why_not_misread() {
        let mut payload = serde_json::to_value(TaskSummaryRowV1::of(&task())).unwrap();
        payload["v"] = 2.into();
        let error = Item::from_row(&row("task_summary", "k", payload.to_string())).unwrap_err();
        assert!(error.contains("version 2") && error.contains("newer ccm"), "{error}");
        payload["v"] = 1.into();
        payload["state"] = "sleeping".into();
        let error = Item::from_row(&row("task_summary", "k", payload.to_string())).unwrap_err();
        assert!(error.contains("sleeping"), "{error}");
    }
}
