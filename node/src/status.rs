//! What `ccm status`, `GET /api/status` and `ccm dump-state` show, gathered from the store.

use ccm_schema::{Alert, Context, Decision, SystemInfo, Task, TaskLogEntry};
use serde::{Deserialize, Serialize};

use crate::home::DaemonInfo;
use crate::store::{OutboxCounts, StateCounts, Store, TaskFilter};

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
}

impl Status {
    pub async fn gather(store: &Store, daemon: Option<DaemonInfo>) -> crate::store::Result<Status> {
        Ok(Status {
            system: store.system().await?,
            daemon,
            tasks: store.state_counts().await?,
            open_alerts: store.open_alerts().await?.len(),
            pending_decisions: store
                .decisions()
                .await?
                .iter()
                .filter(|d| d.answered_at.is_none())
                .count(),
            outbox: store.outbox_counts().await?,
        })
    }
}

/// The whole state of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateDump {
    pub status: Status,
    pub contexts: Vec<Context>,
    pub tasks: Vec<(Task, Vec<TaskLogEntry>)>,
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
            alerts: store.open_alerts().await?,
            decisions: store.decisions().await?,
        })
    }
}
