//! [`AppState`]: the handles every request shares (store, configuration, wake-ups, batchers,
//! the sync client), and what the API and the dashboard both do with them.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Allowed, Batcher, Metrics};
use crate::config::LiveConfig;
use crate::home::DaemonInfo;
use crate::placement::{Added, Place, PlacementError};
use crate::store::{HookJob, Ingested, NewTask, Store};

/// Handles shared by every request; cloning it (once per request) copies one pointer.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub store: Store,
    /// The configuration, read again when its files change (`config.current()`).
    pub config: LiveConfig,
    /// Bearer token of the API.
    pub token: Arc<str>,
    pub allowed: Arc<Allowed>,
    pub daemon: DaemonInfo,
    pub metrics: Arc<Metrics>,
    /// Wakes the scheduler after a change.
    pub scheduler_wake: Arc<Notify>,
    /// Wakes the agent runtime after a change.
    pub runtime_wake: Arc<Notify>,
    /// Wakes the lander (`ccm land` queued a task).
    pub land_wake: Arc<Notify>,
    /// Wakes the hooks waiting for a human's answer after a decision was answered.
    pub decisions: Arc<Notify>,
    /// The ccm home directory.
    pub home: std::path::PathBuf,
    /// Stores hook events in groups.
    pub hooks: Batcher<Vec<HookJob>, Vec<Ingested>>,
    /// Creates tasks in groups.
    pub creations: Batcher<(NewTask, String), ccm_schema::Task>,
    /// The sync engine's client, when `sync:` is configured (its token is replaced on
    /// enrolment).
    pub sync: Option<ccm_sync::Client>,
    /// The daemon's long-lived loops, for `ccm status`, `/metrics` and the watchdog.
    pub loops: Arc<crate::watchdog::Loops>,
    /// Cancelled when the daemon begins to stop: long-lived responses (the dashboard's event
    /// streams) end then, so that the server's drain does not wait for them.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Lets the scheduler and the runtime look at a change right away.
    pub fn wake(&self) {
        self.scheduler_wake.notify_one();
        self.runtime_wake.notify_one();
    }

    /// Lets the scheduler look at a new or newly waiting task (it wakes the runtime when it
    /// admits one).
    pub fn wake_scheduler(&self) {
        self.scheduler_wake.notify_one();
    }

    /// Creates a task given as the API and the dashboard take it (its `repo` a URL or an
    /// absolute path) where [`crate::placement::decide`] says: here (through the batcher, the
    /// scheduler woken) or routed to the fleet.
    pub async fn add_task(
        &self,
        new: NewTask,
        pin: Option<&str>,
        actor: String,
    ) -> Result<Added, PlacementError> {
        let config = self.config.current();
        // Without sync every task runs here, wherever it works: no checkouts to read.
        let contexts =
            if config.sync.enabled() { self.store.contexts().await? } else { Vec::new() };
        let place = Place::of_repo(new.repo.as_deref(), &contexts);
        let here = async |new| self.creations.submit((new, actor)).await;
        let added = crate::placement::add(&self.store, &config, new, &place, pin, here).await?;
        if let Added::Here(_) = added {
            self.metrics.tasks_created.inc();
            self.wake_scheduler();
        }
        Ok(added)
    }
}
