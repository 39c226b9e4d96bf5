//! The wire format of the central `api` functions, version 1 (the contract: `supabase/README.md`).
//!
//! These structs are the contract, converted by hand from `ccm_schema` types: a field added to
//! a local type never leaks to the central side by accident, and a change of the contract is a
//! new version of these structs, not a change of the local ones.

use std::collections::BTreeMap;

use ccm_schema::{TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::outbox::{check_version, AlertRowV1, HealthRowV1, ReportRowV1, TaskSummaryRowV1};
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
    /// Left out when `None` (the function's default keeps the lease's value): a JSON `null` is
    /// not read as SQL null by every PostgREST-compatible server (postrust sends `''`).
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// Parameters of `api.fleet_digest` (migration `20261209070000_fleet_digest.sql`): the
/// fleet as the central sees it, tasks counted since `p_since` (RFC 3339; `None`: all).
#[derive(Debug, Clone, Serialize)]
pub struct FleetDigestParamsV1 {
    /// Left out when `None` (the function's default): a JSON `null` is not read as SQL null
    /// by every PostgREST-compatible server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_since: Option<String>,
}

/// The answer of `api.fleet_digest`: every system of the caller's owner.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetDigestV1 {
    #[serde(default)]
    pub systems: Vec<FleetDigestSystemV1>,
    #[serde(default)]
    pub tasks_by_state: Vec<FleetDigestStateCountV1>,
    #[serde(default)]
    pub open_alerts: Vec<FleetDigestAlertV1>,
    #[serde(default)]
    pub routed_tasks: Vec<FleetRoutedTaskV1>,
    #[serde(default)]
    pub cost_by_day: Vec<FleetCostV1>,
}

/// A system's presence (`online` when active and heard from in the last 45 s).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetDigestSystemV1 {
    pub name: String,
    pub presence: String,
    #[serde(default)]
    pub running: i64,
    #[serde(default)]
    pub slots: i64,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub last_heartbeat_at: Option<String>,
}

/// How many of a system's tasks are in a state, and how many of them changed since the
/// digest's `p_since`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetDigestStateCountV1 {
    pub system: String,
    pub state: String,
    pub tasks: i64,
    #[serde(default)]
    pub changed: i64,
}

/// An open alert of a system.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetDigestAlertV1 {
    pub system: String,
    pub severity: String,
    pub kind: String,
    pub message: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A routed task that is not done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetRoutedTaskV1 {
    pub title: String,
    pub state: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub executing: Option<String>,
    #[serde(default)]
    pub attempts: i64,
}

/// A system's tasks and cost of one UTC day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetCostV1 {
    pub system: String,
    pub day: String,
    pub tasks: i64,
    pub cost_usd: f64,
}

/// Parameters of `api.acquire_lock` (migration `20261209050000_fleet_locks_allocations.sql`):
/// take or renew the fleet-scoped lock `p_name` (the named lease `lock:<p_name>`).
#[derive(Debug, Clone, Serialize)]
pub struct AcquireLockV1 {
    pub p_name: String,
    pub p_ttl_s: u32,
}

/// Parameters of `api.release_lock`.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseLockV1 {
    pub p_name: String,
}

/// The answer of `api.acquire_lock`: whether the caller holds the lock, who does, and the
/// current holder's fencing token (one more with every new holder).
#[derive(Debug, Clone, Deserialize)]
pub struct FleetLockV1 {
    pub held: bool,
    #[serde(default)]
    pub holder: Option<String>,
    pub fence: i64,
}

/// The answer of `api.release_lock`.
#[derive(Debug, Clone, Deserialize)]
pub struct LockReleasedV1 {
    pub released: bool,
}

/// Parameters of `api.allocate`: the next value of sequence `p_sequence` of repository
/// `p_repo` (a remote URL, normalized by the central) for task `p_task`, from `p_start`.
#[derive(Debug, Clone, Serialize)]
pub struct AllocateV1 {
    pub p_repo: String,
    pub p_sequence: String,
    /// Left out when `None` (the function's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_task: Option<Uuid>,
    pub p_start: i64,
}

/// Parameters of `api.release_allocation`: with `p_task`, only that task's own value.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseAllocationV1 {
    pub p_repo: String,
    pub p_sequence: String,
    pub p_value: i64,
    /// Left out when `None` (the function's default: any task's value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_task: Option<Uuid>,
}

/// Parameters of `api.list_allocations`.
#[derive(Debug, Clone, Serialize)]
pub struct ListAllocationsV1 {
    /// Left out when `None` (the function's default: every repository).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_repo: Option<String>,
}

/// One value of a sequence as the central answers it (`api.allocate`,
/// `api.release_allocation`, `api.list_allocations`); its times as the central wrote them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllocationV1 {
    pub repo: String,
    pub sequence: String,
    pub value: i64,
    /// `held` or `released`.
    pub state: String,
    #[serde(default)]
    pub task_id: Option<Uuid>,
    /// The system that got it.
    #[serde(default)]
    pub system: Option<String>,
    pub allocated_at: String,
    #[serde(default)]
    pub released_at: Option<String>,
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
    /// The files the task touched (at most 200, relative to its repository), so that the
    /// other systems' conflict prediction includes it; empty in rows written before.
    pub touched_files: Vec<String>,
    /// Where a `complete` task's landing on its target branch is (`land_queued`, `landing`,
    /// `merged`, `moved`, `landed`, `land_failed`); none before it entered a land queue.
    pub land_state: Option<String>,
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

/// A health snapshot's metrics: in a `health` outbox row ([`crate::outbox::HealthRowV1`]) and
/// on the wire alike (the node builds them for sync only).
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
                let task: TaskSummaryRowV1 = serde_json::from_str(&row.payload).map_err(bad)?;
                check_version(&row.stream, task.v)?;
                let state: TaskState = task
                    .state
                    .parse()
                    .map_err(|e| format!("task_summary payload is not valid: {e}"))?;
                Item::TaskSummary(TaskSummaryV1 {
                    seq,
                    task_id: task.id,
                    version: task.version,
                    state: state.to_string(),
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
                    touched_files: task.touched_files,
                    land_state: task.land_state,
                })
            }
            "alert" => {
                let alert: AlertRowV1 = serde_json::from_str(&row.payload).map_err(bad)?;
                check_version(&row.stream, alert.v)?;
                Item::Alert(AlertV1 {
                    seq,
                    alert_id: alert.id,
                    version,
                    severity: alert.severity,
                    kind: alert.reason,
                    message: alert.message,
                    task_id: alert.task_id.and_then(|t| t.parse().ok()),
                    created_at: alert.created_at,
                    resolved_at: alert.resolved_at,
                })
            }
            "report" => {
                let report: ReportRowV1 = serde_json::from_str(&row.payload).map_err(bad)?;
                check_version(&row.stream, report.v)?;
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
                    cost_usd: report.summary.get("cost_usd").and_then(|c| c.as_f64()),
                    summary: report.summary.to_string(),
                    created_at: report.created_at,
                })
            }
            "health" => {
                let snapshot: HealthRowV1 = serde_json::from_str(&row.payload).map_err(bad)?;
                check_version(&row.stream, snapshot.v)?;
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

/// The parameters of `api.heartbeat`.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatParamsV1 {
    pub p_status: HeartbeatV1,
}

/// The parameters of `api.claim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimV1 {
    /// Most tasks to take.
    pub p_max: i64,
}

/// The parameters of `api.report_account_limit`: this system's agents of `p_account` hit a
/// usage limit that resets at `p_reset_at` (RFC 3339).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAccountLimitV1 {
    pub p_account: String,
    pub p_reset_at: String,
    pub p_message: String,
}

impl ReportAccountLimitV1 {
    pub fn new(account: &str, reset_at: Timestamp, message: &str) -> ReportAccountLimitV1 {
        ReportAccountLimitV1 {
            p_account: account.to_string(),
            p_reset_at: reset_at.to_string(),
            p_message: message.to_string(),
        }
    }
}

/// A usage limit in force, as `api.report_account_limit` and `api.fleet_account_limits`
/// answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimitV1 {
    pub account: String,
    /// When it resets, in milliseconds since the epoch.
    pub reset_at_ms: i64,
    /// The system that reported it.
    pub system_name: String,
    #[serde(default)]
    pub message: String,
}

/// The parameters of `api.fleet_account_limits`: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetAccountLimitsV1 {}

/// The parameters of `api.routed_status`: the origin's tasks changed since `p_since` (all of
/// them without it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedStatusParamsV1 {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub p_since: Option<String>,
}

/// `p_task` of `api.submit_task`: a task this system routes to the fleet. Its id is the
/// idempotency key, so a resend is answered `duplicate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmittedTaskV1 {
    pub idempotency_key: String,
    pub task_id: Uuid,
    pub title: String,
    pub prompt: String,
    /// A URL (`scheme://`), never a local path; `None` for a task without a repository.
    pub repo_url: Option<String>,
    /// A system's name or id.
    pub pin: Option<String>,
    pub profile: Option<String>,
    pub verify: Option<String>,
    pub priority: i64,
    pub max_attempts: i64,
}

/// The parameters of `api.submit_task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitTaskV1 {
    pub p_task: SubmittedTaskV1,
}

/// `p_progress` of `api.report_progress`: the agent started (`phase` `agent`, with the local
/// state and attempt), or the daemon restarted and confirms its lease (`restarted`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressV1 {
    pub phase: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attempt: Option<u32>,
}

/// The parameters of `api.report_progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportProgressV1 {
    pub p_task_id: Uuid,
    pub p_fencing_token: i64,
    pub p_progress: ProgressV1,
}

/// `p_result` of `api.complete`: how the attempt ended, as the origin shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultV1 {
    /// `done` (complete, or flagged by its review) or `failed`.
    pub status: String,
    /// The local state it ended in.
    pub state: String,
    /// The reason of its last change.
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub verdict: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    /// The latest report (the agent's own JSON).
    #[serde(default)]
    pub report: Option<serde_json::Value>,
}

/// The parameters of `api.complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteV1 {
    pub p_task_id: Uuid,
    pub p_fencing_token: i64,
    pub p_result: ResultV1,
}

/// The parameters of `api.release`: the task goes back to the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseV1 {
    pub p_task_id: Uuid,
    pub p_fencing_token: i64,
    pub p_reason: String,
}

/// The parameters of `api.cancel_routed` and `api.retry_routed` (the origin's control).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedControlV1 {
    pub p_task_id: Uuid,
    #[serde(default)]
    pub p_reason: Option<String>,
}

/// The parameters of `api.pin_routed`: `p_system` a system's name or id, `None` for any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRoutedV1 {
    pub p_task_id: Uuid,
    #[serde(default)]
    pub p_system: Option<String>,
}

/// A call to a central routing function that must be made once the central is reachable: the
/// node queues it durably in the transaction of the change, and the driver's calls lane sends
/// it, resending the same parameters (idempotency key, fencing token) until it is answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum CallV1 {
    SubmitTask(SubmitTaskV1),
    ReportProgress(ReportProgressV1),
    Complete(CompleteV1),
    Release(ReleaseV1),
    CancelRouted(RoutedControlV1),
    RetryRouted(RoutedControlV1),
    PinRouted(PinRoutedV1),
}

impl CallV1 {
    /// The central function (`api.<function>`).
    pub fn function(&self) -> &'static str {
        match self {
            CallV1::SubmitTask(_) => "submit_task",
            CallV1::ReportProgress(_) => "report_progress",
            CallV1::Complete(_) => "complete",
            CallV1::Release(_) => "release",
            CallV1::CancelRouted(_) => "cancel_routed",
            CallV1::RetryRouted(_) => "retry_routed",
            CallV1::PinRouted(_) => "pin_routed",
        }
    }

    /// The routed task it is about.
    pub fn task_id(&self) -> Uuid {
        match self {
            CallV1::SubmitTask(c) => c.p_task.task_id,
            CallV1::ReportProgress(c) => c.p_task_id,
            CallV1::Complete(c) => c.p_task_id,
            CallV1::Release(c) => c.p_task_id,
            CallV1::CancelRouted(c) | CallV1::RetryRouted(c) => c.p_task_id,
            CallV1::PinRouted(c) => c.p_task_id,
        }
    }

    /// The fencing token of an executor's call (`None` for the origin's).
    pub fn fencing_token(&self) -> Option<i64> {
        match self {
            CallV1::ReportProgress(c) => Some(c.p_fencing_token),
            CallV1::Complete(c) => Some(c.p_fencing_token),
            CallV1::Release(c) => Some(c.p_fencing_token),
            _ => None,
        }
    }

    /// Whether the answer is the task as the origin sees it (cancel, retry, pin).
    pub fn is_control(&self) -> bool {
        matches!(self, CallV1::CancelRouted(_) | CallV1::RetryRouted(_) | CallV1::PinRouted(_))
    }

    /// The request body: the function's named parameters.
    pub fn params(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    /// A call as the node stored it (`function`, and [`CallV1::params`] as JSON text); the
    /// error names the function and what does not fit.
    pub fn parse(function: &str, params: &str) -> Result<CallV1, String> {
        fn read<T: serde::de::DeserializeOwned>(function: &str, params: &str) -> Result<T, String> {
            serde_json::from_str(params)
                .map_err(|e| format!("queued `{function}` call does not parse: {e}"))
        }
        Ok(match function {
            "submit_task" => CallV1::SubmitTask(read(function, params)?),
            "report_progress" => CallV1::ReportProgress(read(function, params)?),
            "complete" => CallV1::Complete(read(function, params)?),
            "release" => CallV1::Release(read(function, params)?),
            "cancel_routed" => CallV1::CancelRouted(read(function, params)?),
            "retry_routed" => CallV1::RetryRouted(read(function, params)?),
            "pin_routed" => CallV1::PinRouted(read(function, params)?),
            other => return Err(format!("`{other}` is not a queued central call")),
        })
    }
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

/// The parameters of `api.fleet_overview`: none.
#[derive(Debug, Clone, Serialize)]
pub struct FleetOverviewParamsV1 {}

/// The answer of `api.fleet_overview` (migration `20261209080000_fleet_overview.sql`): the
/// fleet as a node's dashboard shows it. `server_time` is left out of comparisons by callers
/// that look for a change.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetOverviewV1 {
    #[serde(default)]
    pub server_time: String,
    #[serde(default)]
    pub systems: Vec<FleetSystemV1>,
    #[serde(default)]
    pub tasks_by_state: Vec<FleetStateCountV1>,
    #[serde(default)]
    pub open_alerts: Vec<FleetAlertV1>,
    #[serde(default)]
    pub daily_cost: Vec<FleetDailyCostV1>,
}

/// One system of the fleet: presence with its reason, slots, repositories, latest health.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetSystemV1 {
    pub system_id: Uuid,
    pub name: String,
    /// `online` or `offline`.
    #[serde(default)]
    pub presence: String,
    /// `stale_heartbeat`, `not_enrolled`, `sync_paused`, `draining`, or none when online.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub slots: i64,
    #[serde(default)]
    pub slots_used: i64,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub repos: Vec<String>,
    #[serde(default)]
    pub last_heartbeat_at: Option<String>,
    #[serde(default)]
    pub cost_today: f64,
    #[serde(default)]
    pub health: Option<FleetHealthV1>,
    #[serde(default)]
    pub health_at: Option<String>,
}

/// What the dashboard reads of a system's latest health snapshot (`HealthMetricsV1`'s names).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetHealthV1 {
    #[serde(default)]
    pub load1: Option<f64>,
    #[serde(default)]
    pub disk_free_home_bytes: Option<u64>,
    #[serde(default)]
    pub backlog: Option<i64>,
    #[serde(default)]
    pub agents_running: Option<i64>,
}

/// Tasks of one system in one state.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetStateCountV1 {
    pub system_name: String,
    pub state: String,
    pub tasks: i64,
}

/// An open alert of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetAlertV1 {
    pub alert_id: Uuid,
    pub system_name: String,
    #[serde(default)]
    pub severity: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub task_id: Option<Uuid>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Cost of one system on one day (UTC).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetDailyCostV1 {
    pub system_name: String,
    pub day: String,
    #[serde(default)]
    pub cost_usd: f64,
}

/// A row of the view `api.fleet_tasks` as an operator reads it (every task of the systems they
/// own; a system reads only its own).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FleetTaskV1 {
    pub task_id: Uuid,
    #[serde(default)]
    pub system_name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub repo_url: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub attempts: i64,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// The columns [`FleetTaskV1`] reads of `api.fleet_tasks`.
pub const FLEET_TASK_COLUMNS: &str =
    "task_id,system_name,state,title,repo_url,profile,attempts,cost_usd,updated_at";

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

    const TASK: &str = "0193a000-0000-7000-8000-000000000001";

    fn json_of(call: &CallV1) -> serde_json::Value {
        call.params().unwrap()
    }

    /// `api.report_account_limit` gets its named parameters, the reset as RFC 3339, and the
    /// answer of `api.fleet_account_limits` (`..._account_limits.sql`) reads back.
    #[test]
    fn an_account_limit_is_reported_and_read_with_the_central_functions_names() {
        let report = ReportAccountLimitV1::new("team", Timestamp(1_893_456_000_000), "limit");
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({ "p_account": "team", "p_reset_at": "2030-01-01T00:00:00.000Z",
                                "p_message": "limit" })
        );
        assert_eq!(serde_json::to_value(FleetAccountLimitsV1 {}).unwrap(), serde_json::json!({}));
        let answer: Vec<AccountLimitV1> = serde_json::from_str(
            r#"[{"account": "team", "reset_at": "2030-01-01T00:00:00+00:00",
                 "reset_at_ms": 1893456000000, "system_name": "alpha", "message": "limit"}]"#,
        )
        .unwrap();
        assert_eq!(
            answer,
            [AccountLimitV1 {
                account: "team".into(),
                reset_at_ms: 1_893_456_000_000,
                system_name: "alpha".into(),
                message: "limit".into(),
            }]
        );
    }

    /// Each queued call carries exactly the named parameters of its central function
    /// (`supabase/migrations/`), and reads back from its stored text.
    #[test]
    fn each_routing_call_carries_its_central_functions_parameter_names() {
        let id: Uuid = TASK.parse().unwrap();
        let submit = CallV1::SubmitTask(SubmitTaskV1 {
            p_task: SubmittedTaskV1 {
                idempotency_key: TASK.into(),
                task_id: id,
                title: "t".into(),
                prompt: "p".into(),
                repo_url: Some("https://example.com/r.git".into()),
                pin: None,
                profile: Some("claude".into()),
                verify: None,
                priority: 5,
                max_attempts: 3,
            },
        });
        assert_eq!(
            json_of(&submit),
            serde_json::json!({ "p_task": {
                "idempotency_key": TASK, "task_id": TASK, "title": "t", "prompt": "p",
                "repo_url": "https://example.com/r.git", "pin": null, "profile": "claude",
                "verify": null, "priority": 5, "max_attempts": 3 } })
        );
        let progress = CallV1::ReportProgress(ReportProgressV1 {
            p_task_id: id,
            p_fencing_token: 7,
            p_progress: ProgressV1 {
                phase: "agent".into(),
                state: Some("executing".into()),
                attempt: Some(1),
            },
        });
        assert_eq!(
            json_of(&progress),
            serde_json::json!({ "p_task_id": TASK, "p_fencing_token": 7,
                "p_progress": { "phase": "agent", "state": "executing", "attempt": 1 } })
        );
        let restarted = CallV1::ReportProgress(ReportProgressV1 {
            p_task_id: id,
            p_fencing_token: 7,
            p_progress: ProgressV1 { phase: "restarted".into(), state: None, attempt: None },
        });
        assert_eq!(json_of(&restarted)["p_progress"], serde_json::json!({ "phase": "restarted" }));
        let complete = CallV1::Complete(CompleteV1 {
            p_task_id: id,
            p_fencing_token: 8,
            p_result: ResultV1 {
                status: "done".into(),
                state: "complete".into(),
                summary: Some("verify passed".into()),
                verdict: None,
                attempts: 1,
                cost_usd: Some(0.5),
                input_tokens: Some(10),
                output_tokens: None,
                report: Some(serde_json::json!({ "changed": 1 })),
            },
        });
        assert_eq!(
            json_of(&complete),
            serde_json::json!({ "p_task_id": TASK, "p_fencing_token": 8, "p_result": {
                "status": "done", "state": "complete", "summary": "verify passed",
                "verdict": null, "attempts": 1, "cost_usd": 0.5, "input_tokens": 10,
                "output_tokens": null, "report": { "changed": 1 } } })
        );
        let release = CallV1::Release(ReleaseV1 {
            p_task_id: id,
            p_fencing_token: 9,
            p_reason: "draining".into(),
        });
        assert_eq!(
            json_of(&release),
            serde_json::json!({ "p_task_id": TASK, "p_fencing_token": 9, "p_reason": "draining" })
        );
        let control = RoutedControlV1 { p_task_id: id, p_reason: Some("no longer needed".into()) };
        let cancel = CallV1::CancelRouted(control.clone());
        let retry = CallV1::RetryRouted(control);
        for call in [&cancel, &retry] {
            assert_eq!(
                json_of(call),
                serde_json::json!({ "p_task_id": TASK, "p_reason": "no longer needed" })
            );
        }
        let pin = CallV1::PinRouted(PinRoutedV1 { p_task_id: id, p_system: Some("beta".into()) });
        assert_eq!(json_of(&pin), serde_json::json!({ "p_task_id": TASK, "p_system": "beta" }));
        let calls = [submit, progress, restarted, complete, release, cancel, retry, pin];
        let functions: Vec<_> = calls.iter().map(CallV1::function).collect();
        assert_eq!(
            functions,
            [
                "submit_task",
                "report_progress",
                "report_progress",
                "complete",
                "release",
                "cancel_routed",
                "retry_routed",
                "pin_routed"
            ]
        );
        for call in &calls {
            let stored = json_of(call).to_string();
            assert_eq!(&CallV1::parse(call.function(), &stored).unwrap(), call);
            assert_eq!(call.task_id(), id);
        }
        assert_eq!(
            serde_json::to_value(ClaimV1 { p_max: 4 }).unwrap(),
            serde_json::json!({ "p_max": 4 })
        );
        let since = RoutedStatusParamsV1 { p_since: Some("2026-12-08T01:00:00Z".into()) };
        assert_eq!(
            serde_json::to_value(since).unwrap(),
            serde_json::json!({ "p_since": "2026-12-08T01:00:00Z" })
        );
        let all = RoutedStatusParamsV1 { p_since: None };
        assert_eq!(serde_json::to_value(all).unwrap(), serde_json::json!({}));
    }

    /// Calls queued before they were typed (hand-built JSON, `attempt`/`state` of a restart
    /// left out) are still read and sent unchanged.
    #[test]
    fn a_call_queued_in_the_old_hand_built_form_is_read_and_resent_unchanged() {
        let stored = serde_json::json!({ "p_task_id": TASK, "p_fencing_token": 3,
                                         "p_progress": { "phase": "restarted" } });
        let call = CallV1::parse("report_progress", &stored.to_string()).unwrap();
        assert_eq!(call.fencing_token(), Some(3));
        assert_eq!(call.params().unwrap(), stored);
        let stored = serde_json::json!({ "p_task_id": TASK, "p_fencing_token": 3, "p_result": {
            "status": "failed", "state": "blocked", "summary": null, "verdict": null,
            "attempts": 3, "cost_usd": null, "input_tokens": null, "output_tokens": null,
            "report": null } });
        let call = CallV1::parse("complete", &stored.to_string()).unwrap();
        assert_eq!(call.params().unwrap(), stored);
        let pin = serde_json::json!({ "p_task_id": TASK, "p_system": null });
        assert_eq!(CallV1::parse("pin_routed", &pin.to_string()).unwrap().params().unwrap(), pin);
        let bad = CallV1::parse("complete", "{}").unwrap_err();
        assert!(bad.contains("`complete`") && bad.contains("p_task_id"), "{bad}");
        assert!(CallV1::parse("drop_table", "{}").unwrap_err().contains("`drop_table`"));
    }
}
