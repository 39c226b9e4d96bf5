//! Where state-changing commands go: the running daemon's API, or the database file. Every
//! command that may change state asks [`Backend`]; nothing else in the CLI chooses.

use std::path::Path;

use ccm_schema::{Alert, Context, Task, TaskEvent};
use serde_json::json;

use crate::client::Client;
use crate::config::Config;
use crate::home::{open_store, Home};
use crate::placement::{self, Added, Place, PlacementError};
use crate::status::Status;
use crate::store::{
    ContextProbe, Discarded, NewTask, RetryPolicy, RoutedControl, RoutedTask, StaleTask, Store,
    StoredHookEvent, TaskDetail, TaskFilter,
};

/// Where state-changing commands go: the running daemon, or the database file.
pub enum Backend {
    Daemon(Client),
    Local { store: Store, config: Box<Config> },
}

impl Backend {
    pub async fn connect(home: &Home, config: &Config) -> anyhow::Result<Backend> {
        let client = Client::connect(home)
            .await
            .map_err(|silent| anyhow::anyhow!("{silent}; {}", silent.fix()))?;
        match client {
            Some(client) => Ok(Backend::Daemon(client)),
            None => Ok(Backend::Local {
                store: open_store(home, config).await?,
                config: Box::new(config.clone()),
            }),
        }
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        match self {
            Backend::Daemon(client) => Ok(client.get(&["status"]).await?),
            Backend::Local { store, .. } => Ok(Status::gather(store, None).await?),
        }
    }

    /// Creates a task where [`crate::placement::decide`] says: here, or routed to the fleet
    /// (the daemon decides when it runs; `place` is where the task works, its `repo` given).
    pub async fn add_task(
        &self,
        new: NewTask,
        place: &Place,
        pin: Option<&str>,
    ) -> anyhow::Result<Added> {
        match self {
            Backend::Daemon(client) => {
                let query: Vec<(&str, &str)> = pin.map(|pin| ("system", pin)).into_iter().collect();
                Ok(client.post_query(&["tasks"], &query, serde_json::to_value(new)?).await?)
            }
            Backend::Local { store, config } => {
                let here = async |new| store.create_task(new, config, "cli").await;
                placement::add(store, config, new, place, pin, here).await.map_err(|e| match e {
                    // As a `StoreError`, for `main` to name the database when it is busy.
                    PlacementError::Store(e) => e.into(),
                    e => e.into(),
                })
            }
        }
    }

    /// Creates a task split into parts (sub-tasks the task depends on), in one transaction.
    pub async fn create_split(
        &self,
        request: crate::daemon::SplitRequest,
    ) -> anyhow::Result<crate::daemon::SplitAnswer> {
        match self {
            Backend::Daemon(client) => {
                Ok(client.post(&["tasks", "split"], serde_json::to_value(request)?).await?)
            }
            Backend::Local { store, config } => {
                let parts = request.parts.into_iter().map(|p| (p.task, p.after)).collect();
                let (parent, parts) =
                    store.create_split(request.task, parts, config, "cli").await?;
                Ok(crate::daemon::SplitAnswer { parent, parts })
            }
        }
    }

    pub async fn routed_tasks(&self) -> anyhow::Result<Vec<RoutedTask>> {
        match self {
            Backend::Daemon(client) => Ok(client.get(&["routed"]).await?),
            Backend::Local { store, .. } => Ok(store.routed_tasks().await?),
        }
    }

    /// Tasks run here for the fleet whose lease was lost.
    pub async fn stale_routed(&self) -> anyhow::Result<Vec<StaleTask>> {
        match self {
            Backend::Daemon(client) => Ok(client.get(&["routed", "stale"]).await?),
            Backend::Local { store, .. } => Ok(store.routed_stale_all().await?),
        }
    }

    /// The routed task with this id or id prefix, if there is one.
    pub async fn routed_task(&self, id: &str) -> anyhow::Result<Option<RoutedTask>> {
        match self {
            Backend::Daemon(client) => {
                let routed: Vec<RoutedTask> = client.get(&["routed"]).await?;
                Ok(routed
                    .into_iter()
                    .find(|r| r.id.hyphenated().to_string().starts_with(&id.to_ascii_lowercase())))
            }
            Backend::Local { store, .. } => Ok(store.routed_task(id).await?),
        }
    }

    /// Asks the central to cancel, retry or re-pin a task this system routed; `None` when no
    /// routed task matches `id`.
    pub async fn control_routed(
        &self,
        id: &str,
        control: RoutedControl,
        reason: &str,
        system: Option<&str>,
    ) -> anyhow::Result<Option<RoutedTask>> {
        match self {
            Backend::Daemon(client) => {
                if self.routed_task(id).await?.is_none() {
                    return Ok(None);
                }
                let body = json!({ "control": control, "reason": reason, "system": system });
                Ok(Some(client.post(&["routed", id, "control"], body).await?))
            }
            Backend::Local { store, .. } => {
                Ok(store.control_routed(id, control, reason, system).await?)
            }
        }
    }

    /// Tasks, oldest first: see [`TaskFilter`].
    pub async fn tasks(&self, filter: TaskFilter) -> anyhow::Result<Vec<Task>> {
        match self {
            Backend::Daemon(client) => {
                let finished = filter.finished.map(|n| n.to_string());
                let query: Vec<(&str, &str)> = [
                    filter.state.map(|s| ("state", s.as_str())),
                    finished.as_deref().map(|n| ("finished", n)),
                ]
                .into_iter()
                .flatten()
                .collect();
                Ok(client.get_query(&["tasks"], &query).await?)
            }
            Backend::Local { store, .. } => Ok(store.tasks(&filter).await?),
        }
    }

    pub async fn task(&self, id: &str) -> anyhow::Result<TaskDetail> {
        match self {
            Backend::Daemon(client) => Ok(client.get(&["tasks", id]).await?),
            Backend::Local { store, .. } => Ok(store.task(id).await?),
        }
    }

    /// The hook timeline of the task's agents.
    pub async fn task_events(&self, id: &str) -> anyhow::Result<Vec<StoredHookEvent>> {
        match self {
            Backend::Daemon(client) => Ok(client.get(&["tasks", id, "events"]).await?),
            Backend::Local { store, .. } => Ok(store.task_hook_events(id).await?),
        }
    }

    pub async fn apply_event(
        &self,
        id: &str,
        event: TaskEvent,
        reason: &str,
    ) -> anyhow::Result<Task> {
        match self {
            Backend::Daemon(client) => {
                let mut body = serde_json::to_value(event)?;
                body["reason"] = json!(reason);
                Ok(client.post(&["tasks", id, "events"], body).await?)
            }
            Backend::Local { store, config } => {
                crate::store::check_event_reason(reason)?;
                let policy = RetryPolicy::from(&**config);
                Ok(store.apply_event(id, event, reason, "cli", policy).await?)
            }
        }
    }

    pub async fn add_dependencies(&self, id: &str, on: &[String]) -> anyhow::Result<Task> {
        match self {
            Backend::Daemon(client) => {
                Ok(client.post(&["tasks", id, "dependencies"], json!({ "depends_on": on })).await?)
            }
            Backend::Local { store, .. } => Ok(store.add_dependencies(id, on, "cli").await?),
        }
    }

    pub async fn discard(&self, id: &str, reason: &str) -> anyhow::Result<Discarded> {
        match self {
            Backend::Daemon(client) => {
                Ok(client.post(&["tasks", id, "discard"], json!({ "reason": reason })).await?)
            }
            Backend::Local { store, .. } => Ok(store.discard_task(id, reason).await?),
        }
    }

    /// Comments on a finished task's diff and/or requests changes (`crate::review::review`).
    pub async fn review(
        &self,
        id: &str,
        request: &crate::review::ReviewRequest,
    ) -> anyhow::Result<crate::review::Reviewed> {
        match self {
            Backend::Daemon(client) => {
                Ok(client.post(&["tasks", id, "review"], serde_json::to_value(request)?).await?)
            }
            Backend::Local { store, config } => {
                let policy = RetryPolicy::from(&**config);
                Ok(crate::review::review(store, id, request, "cli", policy).await?)
            }
        }
    }

    /// Answers a decision; `reason` is told to a rejected change request's requester.
    pub async fn answer(
        &self,
        id: &str,
        answer: &str,
        reason: Option<&str>,
    ) -> anyhow::Result<ccm_schema::Decision> {
        match self {
            Backend::Daemon(client) => Ok(client
                .post(&["decisions", id], json!({ "answer": answer, "reason": reason }))
                .await?),
            Backend::Local { store, config } => Ok(store
                .answer_decision_with(id, answer, "cli", RetryPolicy::from(&**config), reason)
                .await?),
        }
    }

    pub async fn alerts(&self, all: bool) -> anyhow::Result<Vec<Alert>> {
        match self {
            Backend::Daemon(client) => Ok(client
                .get_query(&["alerts"], &[("all", if all { "true" } else { "false" })])
                .await?),
            Backend::Local { store, .. } => Ok(store.alerts(all).await?),
        }
    }

    pub async fn acknowledge_alert(&self, id: &str) -> anyhow::Result<Alert> {
        match self {
            Backend::Daemon(client) => Ok(client.post(&["alerts", id, "ack"], json!({})).await?),
            Backend::Local { store, .. } => Ok(store.acknowledge_alert(id).await?),
        }
    }

    pub async fn contexts(&self) -> anyhow::Result<Vec<Context>> {
        match self {
            Backend::Daemon(client) => Ok(client.get(&["contexts"]).await?),
            Backend::Local { store, .. } => Ok(store.contexts().await?),
        }
    }

    pub async fn add_context(&self, path: &Path) -> anyhow::Result<Context> {
        match self {
            Backend::Daemon(client) => {
                Ok(client.post(&["contexts"], json!({ "path": path })).await?)
            }
            Backend::Local { store, .. } => {
                Ok(store.upsert_context(&ContextProbe::inspect(path)?).await?)
            }
        }
    }

    pub async fn remove_context(&self, key: &str) -> anyhow::Result<Context> {
        match self {
            Backend::Daemon(client) => Ok(client.delete(&["contexts", key]).await?),
            Backend::Local { store, .. } => Ok(store.remove_context(key).await?),
        }
    }
}
