//! What `ccm status`, `GET /api/status` and `ccm dump-state` show, gathered from the store.

use ccm_schema::{Alert, Context, Decision, SystemInfo, Task, TaskLogEntry};
use serde::{Deserialize, Serialize};

use crate::home::DaemonInfo;
use crate::store::{CostTotals, OutboxCounts, StateCounts, StorageStats, Store, TaskFilter};

/// The node at a glance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub system: SystemInfo,
    /// The running daemon, when there is one.
    pub daemon: Option<DaemonInfo>,
    /// Tasks per state.
    pub tasks: StateCounts,
    pub open_alerts: usize,
    pub pending_decisions: usize,
    pub outbox: OutboxCounts,
    /// Agents running now.
    pub agents_running: usize,
    /// Cost and tokens of the agents started today (UTC).
    pub today: CostTotals,
    /// Per sync lane: backlog, last success, last error, pause reason.
    pub sync: crate::sync::SyncStatus,
    /// The running daemon's loops: last progress, and whether one is stalled (from the daemon
    /// only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loops: Vec<crate::watchdog::LoopStatus>,
    /// The database: size, rows per table, the last retention pass.
    #[serde(default)]
    pub storage: StorageStats,
    /// Accounts at their usage limit: no agent of them starts before the reset.
    #[serde(default)]
    pub account_limits: Vec<crate::store::AccountLimit>,
    /// Daily cost caps reached today (or still holding tasks): the cap in force, what was
    /// spent, the decision and its answer, the tasks waiting.
    #[serde(default)]
    pub cost_caps: Vec<crate::store::CostCap>,
}

impl Status {
    pub async fn gather(store: &Store, daemon: Option<DaemonInfo>) -> crate::store::Result<Status> {
        let counts = store.dashboard_counts().await?;
        Ok(Status {
            system: store.system().await?,
            daemon,
            tasks: store.state_counts().await?,
            open_alerts: usize::try_from(counts.open_alerts).unwrap_or(0),
            pending_decisions: usize::try_from(counts.pending_decisions).unwrap_or(0),
            outbox: store.outbox_counts().await?,
            agents_running: usize::try_from(counts.live_agents).unwrap_or(0),
            today: store.cost_since(start_of_today()).await?,
            sync: store.sync_status().await?,
            loops: Vec::new(),
            storage: store.storage_stats().await?,
            account_limits: store.account_limits().await?,
            cost_caps: store
                .cost_caps(&crate::notify::daily::local_day(ccm_schema::Timestamp::now()).0)
                .await?,
        })
    }
}

/// Midnight UTC of the current day.
fn start_of_today() -> ccm_schema::Timestamp {
    const DAY_MS: i64 = 24 * 60 * 60 * 1000;
    let now = ccm_schema::Timestamp::now().millis();
    ccm_schema::Timestamp(now - now.rem_euclid(DAY_MS))
}

/// The whole state of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateDump {
    pub status: Status,
    pub contexts: Vec<Context>,
    pub tasks: Vec<(Task, Vec<TaskLogEntry>)>,
    pub agents: Vec<ccm_schema::Agent>,
    pub alerts: Vec<Alert>,
    pub decisions: Vec<Decision>,
}

impl StateDump {
    pub async fn gather(
        store: &Store,
        daemon: Option<DaemonInfo>,
    ) -> crate::store::Result<StateDump> {
        let mut tasks = Vec::new();
        for task in store.tasks(&TaskFilter::default()).await? {
            let detail = store.task(&task.id.to_string()).await?;
            tasks.push((task, detail.log));
        }
        Ok(StateDump {
            status: Status::gather(store, daemon).await?,
            contexts: store.contexts().await?,
            tasks,
            agents: store.agents(None).await?,
            alerts: store.open_alerts().await?,
            decisions: store.decisions().await?,
        })
    }
}
