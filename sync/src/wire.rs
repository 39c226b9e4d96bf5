//! The wire format of the central `api` functions, version 1 (the contract: `supabase/README.md`).
//!
//! These structs are the contract, converted by hand from `ccm_schema` types: a field added to
//! a local type never leaks to the central side by accident, and a change of the contract is a
//! new version of these structs, not a change of the local ones.

use std::collections::BTreeMap;

use ccm_schema::{Alert, Report, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Lane, OutboxRow};

/// The parameters of `api.ingest_batch`: the request body, stored as sealed.
#[derive(Debug, Clone, Serialize)]
pub struct IngestParams<'a> {
    pub p_batch: BatchV1<'a>,
}

/// `p_batch` of `api.ingest_batch`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchV1<'a> {
    pub batch_id: Uuid,
    pub lane: Lane,
    pub streams: &'a StreamsV1,
    /// Per stream, the seq range the batch covers after coalescing (normal lane only).
    pub ranges: &'a BTreeMap<String, RangeV1>,
}

/// The items of a batch, per stream; an empty stream is left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamsV1 {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub task_summary: Vec<TaskSummaryV1>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert: Vec<AlertV1>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<ReportV1>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub health: Vec<HealthV1>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RangeV1 {
    pub seq_lo: i64,
    pub seq_hi: i64,
}

/// Parameters of `api.acquire_lease` (migration `20261130170000_named_leases.sql`): take or
/// renew the named lease `p_name` of the caller's owner for `p_ttl_s` seconds.
#[derive(Debug, Clone, Serialize)]
pub struct AcquireLeaseV1 {
    pub p_name: String,
    pub p_ttl_s: u32,
    pub p_value: Option<String>,
}

/// Parameters of `api.release_lease`.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseLeaseV1 {
    pub p_name: String,
}

/// The answer of `api.acquire_lease`: whether the caller holds the lease, and who does.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedLeaseV1 {
    pub held: bool,
    #[serde(default)]
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskSummaryV1 {
    pub seq: i64,
    pub task_id: Uuid,
    pub version: i64,
    pub state: String,
    pub title: String,
    pub repo_url: Option<String>,
    pub profile: String,
    pub priority: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cost_usd: Option<f64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
pub struct AlertV1 {
    pub seq: i64,
    pub alert_id: Uuid,
    pub version: i64,
    pub severity: String,
    pub kind: String,
    pub message: String,
    pub task_id: Option<Uuid>,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportV1 {
    pub seq: i64,
    pub task_id: Uuid,
    pub attempt: u32,
    pub version: i64,
    pub verdict: Option<String>,
    pub summary: String,
    pub cost_usd: Option<f64>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthV1 {
    pub seq: i64,
    pub window_start: Timestamp,
    pub window_len_s: u64,
    pub version: i64,
    pub metrics: HealthMetricsV1,
}

/// A health snapshot: the local payload of a `health` outbox row and its wire form alike
/// (the node builds it for sync only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthMetricsV1 {
    pub agents_running: i64,
    /// The node's agent slots.
    #[serde(default)]
    pub slots: i64,
    pub load1: f64,
    pub cpu_pct: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub disk_free_home_bytes: u64,
    pub disk_free_worktrees_bytes: u64,
    pub queue_depth: BTreeMap<String, i64>,
    pub stale_agents: i64,
    pub orphans: i64,
    pub last_sync_at: Option<Timestamp>,
    /// Outbox rows not yet acknowledged, all lanes.
    pub backlog: i64,
    /// The same per lane (`urgent`, `normal`).
    #[serde(default)]
    pub lane_backlog: BTreeMap<String, i64>,
    /// Pending health rows ever dropped to keep the health backlog under its cap (S-13).
    pub dropped_total: i64,
}

/// The local payload of a `health` outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSnapshot {
    pub window_start: Timestamp,
    pub window_len_s: u64,
    pub metrics: HealthMetricsV1,
}

/// The payload of a `task_summary` row as the node writes it: the task's fields this crate
/// ships (the rest, such as the prompt, is skipped unread), and the cost and tokens of the
/// agents that worked on it so far (absent in rows written before they were added, unknown
/// for tasks no agent worked on).
#[derive(Debug, Deserialize)]
struct SummaryRow {
    id: Uuid,
    title: String,
    repo: Option<String>,
    profile: String,
    max_attempts: u32,
    attempts: u32,
    priority: i64,
    state: TaskState,
    created_at: Timestamp,
    updated_at: Timestamp,
    version: i64,
    #[serde(default)]
    cost_usd: Option<f64>,
    #[serde(default)]
    input_tokens: Option<i64>,
    #[serde(default)]
    output_tokens: Option<i64>,
}

/// One item converted from its outbox row.
#[derive(Debug, Clone)]
pub enum Item {
    TaskSummary(TaskSummaryV1),
    Alert(AlertV1),
    Report(ReportV1),
    Health(HealthV1),
}

impl Item {
    /// Converts an outbox row; the error says why its payload does not fit its stream.
    pub fn from_row(row: &OutboxRow) -> Result<Item, String> {
        let seq = row.seq;
        let version = row.entity_version;
        let bad = |e: serde_json::Error| format!("{} payload is not valid: {e}", row.stream);
        Ok(match row.stream.as_str() {
            "task_summary" => {
                let task: SummaryRow = serde_json::from_str(&row.payload).map_err(bad)?;
                Item::TaskSummary(TaskSummaryV1 {
                    seq,
                    task_id: task.id,
                    version: task.version,
                    state: task.state.to_string(),
                    title: task.title,
                    repo_url: task.repo,
                    profile: task.profile,
                    priority: task.priority,
                    attempts: task.attempts,
                    max_attempts: task.max_attempts,
                    cost_usd: task.cost_usd,
                    input_tokens: task.input_tokens,
                    output_tokens: task.output_tokens,
                    created_at: task.created_at,
                    updated_at: task.updated_at,
                })
            }
            "alert" => {
                let alert: Alert = serde_json::from_str(&row.payload).map_err(bad)?;
                Item::Alert(AlertV1 {
                    seq,
                    alert_id: alert.id,
                    version,
                    severity: alert.severity.to_string(),
                    kind: alert.reason,
                    message: alert.message,
                    task_id: alert.task_id.and_then(|t| t.parse().ok()),
                    created_at: alert.created_at,
                    resolved_at: alert.resolved_at,
                })
            }
            "report" => {
                let report: Report = serde_json::from_str(&row.payload).map_err(bad)?;
                let task_id = row
                    .entity_key
                    .split('/')
                    .next()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| format!("report key `{}` names no task", row.entity_key))?;
                Item::Report(ReportV1 {
                    seq,
                    task_id,
                    attempt: report.attempt,
                    version,
                    verdict: report.verdict,
                    summary: report.summary.0.to_string(),
                    cost_usd: report.summary.0.get("cost_usd").and_then(|c| c.as_f64()),
                    created_at: report.created_at,
                })
            }
            "health" => {
                let snapshot: HealthSnapshot = serde_json::from_str(&row.payload).map_err(bad)?;
                Item::Health(HealthV1 {
                    seq,
                    window_start: snapshot.window_start,
                    window_len_s: snapshot.window_len_s,
                    version,
                    metrics: snapshot.metrics,
                })
            }
            other => return Err(format!("stream `{other}` is not shipped by ingest_batch")),
        })
    }

    /// Its JSON size in the body.
    pub fn encoded_len(&self) -> usize {
        /// Counts the bytes written to it, so an item is measured without being kept.
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        let written = match self {
            Item::TaskSummary(i) => serde_json::to_writer(&mut count, i),
            Item::Alert(i) => serde_json::to_writer(&mut count, i),
            Item::Report(i) => serde_json::to_writer(&mut count, i),
            Item::Health(i) => serde_json::to_writer(&mut count, i),
        };
        written.map_or(0, |()| count.0) + 1
    }

    pub fn push_into(self, streams: &mut StreamsV1) {
        match self {
            Item::TaskSummary(i) => streams.task_summary.push(i),
            Item::Alert(i) => streams.alert.push(i),
            Item::Report(i) => streams.report.push(i),
            Item::Health(i) => streams.health.push(i),
        }
    }
}

/// The answer of `api.ingest_batch`.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestAnswerV1 {
    pub batch_id: String,
    pub status: String,
    #[serde(default)]
    pub accepted: Option<i64>,
    #[serde(default)]
    pub rejected: Vec<RejectedV1>,
}

/// One item the central side refused, inside a 2xx.
#[derive(Debug, Clone, Deserialize)]
pub struct RejectedV1 {
    pub stream: String,
    /// The item's natural key: a string, or an object for a compound key.
    pub key: serde_json::Value,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

impl RejectedV1 {
    /// The key in the outbox's `entity_key` spelling (`task/attempt` for a report).
    pub fn entity_key(&self) -> String {
        match &self.key {
            serde_json::Value::String(s) => s.replace(':', "/"),
            serde_json::Value::Object(o) => match (o.get("task_id"), o.get("attempt")) {
                (Some(serde_json::Value::String(t)), Some(a)) => format!("{t}/{a}"),
                _ => self.key.to_string(),
            },
            other => other.to_string(),
        }
    }

    pub fn reason(&self) -> String {
        format!(
            "{}: {}",
            self.code.as_deref().unwrap_or("rejected"),
            self.message.as_deref().unwrap_or("no message")
        )
    }
}

/// `p_status` of `api.heartbeat`.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatV1 {
    pub running: i64,
    pub slots: i64,
    pub draining: bool,
    /// Paused by the operator: other systems see `sync_paused` (no lease is listed then).
    pub sync_paused: bool,
    /// The leases the node believes it holds: renewed when the central agrees.
    pub leases: Vec<LeaseV1>,
}

/// A lease on a routed task: the task and the fencing token of the claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseV1 {
    pub task_id: Uuid,
    pub fencing_token: i64,
}

/// The answer of `api.heartbeat` (read leniently: unknown fields are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeartbeatAnswerV1 {
    #[serde(default)]
    pub lease_s: Option<i64>,
    #[serde(default)]
    pub draining: bool,
    /// The leases renewed by this heartbeat.
    #[serde(default)]
    pub leases: Vec<LeaseV1>,
    /// Listed leases this system no longer holds: stop their agents.
    #[serde(default)]
    pub revoked: Vec<RevokedV1>,
    /// Queued tasks this system could take now.
    #[serde(default)]
    pub offers: i64,
}

/// A lease the central took back (`reason`: `lease_lost`, `finished`, `unknown_task`, or
/// `cancelled` and `repinned` by the origin, with why in `message`).
#[derive(Debug, Clone, Deserialize)]
pub struct RevokedV1 {
    pub task_id: Uuid,
    pub fencing_token: i64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: Option<String>,
}

/// A routed task as the central functions answer it (`supabase/README.md`, Routing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutedTaskV1 {
    pub task_id: Uuid,
    #[serde(default)]
    pub origin_name: Option<String>,
    #[serde(default)]
    pub repo_url: Option<String>,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub verify: Option<String>,
    #[serde(default)]
    pub priority: i64,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub attempt: i64,
    #[serde(default)]
    pub max_attempts: i64,
    #[serde(default)]
    pub fencing_token: Option<i64>,
    /// Why no system takes the task (`no_context`, `all_busy`, `all_stale`,
    /// `pinned_system_draining`).
    #[serde(default)]
    pub reason: Option<String>,
    /// `api.routed_status` only: where it runs, how far it got and how it ended.
    #[serde(default)]
    pub executing_name: Option<String>,
    #[serde(default)]
    pub progress: Option<serde_json::Value>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub attempts: Vec<serde_json::Value>,
    /// Why it was last queued again, failed, cancelled or moved (`api.routed_status`).
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// The answer of `api.claim`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ClaimAnswerV1 {
    #[serde(default)]
    pub claimed: Vec<RoutedTaskV1>,
    #[serde(default)]
    pub lease_s: Option<i64>,
    /// Why nothing was claimed because of the caller (`stale_heartbeat`, `draining`, ...).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer of `api.submit_task`, `api.report_progress`, `api.complete` and `api.release`:
/// `status` is `queued`, `duplicate`, `applied` or `stale_lease` (`applied` or `unchanged` for
/// `api.cancel_routed`, `retry_routed` and `pin_routed`, which also answer the task as a
/// [`RoutedTaskV1`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RouteAnswerV1 {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub state: Option<String>,
    /// `stale_lease` only: the system the task went to, when another one has it now.
    #[serde(default)]
    pub holder: Option<String>,
}

/// The answer of `api.routed_status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoutedStatusV1 {
    pub server_time: String,
    #[serde(default)]
    pub tasks: Vec<RoutedTaskV1>,
}

/// One context of `api.register_contexts` (a checkout with a remote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextV1 {
    /// Normalized by `ccm_schema::repo_url::normalize`.
    pub repo_url: String,
    pub path: String,
    pub default_branch: Option<String>,
    pub head_sha: Option<String>,
    pub updated_at: Timestamp,
}

/// The parameters of `api.register_contexts`: the whole set, replaced centrally when
/// `p_generation` is newer than the stored one.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterContextsV1 {
    pub p_generation: i64,
    pub p_contexts: Vec<ContextV1>,
}

/// The answer of `api.register_contexts`.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisterAnswerV1 {
    /// `applied`, or `stale` when the central holds a newer generation.
    pub status: String,
    pub generation: i64,
}

/// The answer of `api.enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollAnswerV1 {
    pub system_id: Uuid,
    pub name: String,
    pub owner: Uuid,
}

/// The answer of `api.create_invite`: a one-time code for a new system of `owner` (shown once;
/// the central keeps only its SHA-256).
#[derive(Clone, Deserialize)]
pub struct InviteAnswerV1 {
    pub code: String,
    pub owner: Uuid,
    pub expires_at: String,
}

impl std::fmt::Debug for InviteAnswerV1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InviteAnswerV1")
            .field("owner", &self.owner)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(extra: serde_json::Value) -> TaskSummaryV1 {
        let mut payload = serde_json::json!({
            "id": "0193a000-0000-7000-8000-000000000001", "title": "t", "prompt": "p",
            "repo": null, "profile": "claude", "workflow": null, "verify": null,
            "max_attempts": 3, "attempts": 1, "priority": 0, "state": "complete",
            "wake_at": null, "created_at": "2026-11-30T10:00:00.000Z",
            "updated_at": "2026-11-30T10:00:00.000Z", "version": 7, "depends_on": []
        });
        payload.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let row = OutboxRow {
            seq: 1,
            stream: "task_summary".into(),
            entity_key: "0193a000-0000-7000-8000-000000000001".into(),
            entity_version: 7,
            payload: payload.to_string(),
        };
        match Item::from_row(&row) {
            Ok(Item::TaskSummary(summary)) => summary,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_task_summary_carries_the_cost_and_tokens_of_its_row() {
        let known = summary(serde_json::json!({
            "cost_usd": 0.0143, "input_tokens": 200, "output_tokens": 40
        }));
        assert_eq!(
            (known.cost_usd, known.input_tokens, known.output_tokens),
            (Some(0.0143), Some(200), Some(40))
        );
        let unknown = summary(serde_json::json!({ "cost_usd": null }));
        assert_eq!((unknown.cost_usd, unknown.input_tokens), (None, None), "unknown, not $0");
    }
}
