//! Routing across systems, the node's side (SPEC section 9; the central contract is
//! `supabase/README.md`, "Routing").
//!
//! - Origin: a new task this system cannot run now (no checkout of its repository, pinned
//!   elsewhere, or no free slot; `crate::placement` decides, for the CLI, the API and the
//!   dashboard alike) goes to the fleet: a routed task and its queued submission
//!   ([`Store::route_task`]). While one is unfinished, the origin asks
//!   `api.routed_status` how it is doing and keeps the answer for `ccm task list|show`, with a
//!   log of each change it observes; while the central says `no_context` the origin's own
//!   `unroutable` alert is open. A task not submitted yet whose repository gets a checkout here
//!   becomes a local task.
//! - Origin control: `ccm task cancel|retry|pin` of a routed task queue `api.cancel_routed`,
//!   `retry_routed` or `pin_routed` ([`Store::control_routed`]); the answer (the task as the
//!   origin sees it) is kept as the central's view at once.
//! - Executor: while slots are free it asks `api.claim` every `sync.claim_ms` (jittered; at once
//!   when a heartbeat says work is offered). A claimed task is an ordinary local task with the
//!   central's id and a held lease; its start and its end go back as `report_progress` and
//!   `complete`, queued in the transaction of the change. The sync driver's heartbeat lists
//!   the held leases: renewed ones restart their clock, revoked ones (lost, or cancelled or
//!   moved by the origin) are cancelled, which stops their agents.
//! - Self-fencing: a lease not renewed for the lease time minus `sync.fence_margin_secs` is
//!   given up here (its task cancelled, which stops its agent) before the central's reaper can
//!   hand the task to another system.
//! - Calls to the central wait in `route_calls` as typed calls of the sync crate
//!   (`ccm_sync::wire::CallV1`) and are sent in order by the sync driver's calls lane, each
//!   retried with the same idempotency key or fencing token (a replay is `duplicate`, a late
//!   one `stale_lease`), classified and backed off like the outbox's batches. After a restart
//!   each held lease is confirmed by a progress report.
//! - Stale copies: a lease lost here (self-fenced, revoked, or a finished task's result
//!   answered `stale_lease`, which names the system holding the task now) stays `lost` with
//!   its reason, and `ccm task show|list` mark the local task stale with it: what it shows here
//!   is not the task's outcome.
//!
//! `ccm systems` and `ccm systems drain NAME` (in `cli/systems.rs`) ask the central directly.

use std::sync::Arc;
use std::time::Duration;

use ccm_sync::wire::{ClaimAnswerV1, ClaimV1, RoutedStatusParamsV1, RoutedStatusV1};
use ccm_sync::{Lane, Outbox as _, Signals};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::Config;
use crate::store::Store;

/// Why a claim or a status read did not go through; the loop tries again at its next turn.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the central call failed: {0}")]
    Central(String),
}

/// How often routed tasks waiting here are checked for a checkout that appeared.
const LOCALIZE_POLL: Duration = Duration::from_secs(1);
/// Most tasks asked for in one claim.
const CLAIM_MAX: i64 = 10;

/// The daemon's routing tasks.
#[derive(Clone)]
pub struct Router {
    pub store: Store,
    pub config: Arc<Config>,
    pub client: ccm_sync::Client,
    pub signals: Arc<Signals>,
    /// Woken when a claimed task was created (the scheduler admits it).
    pub scheduler_wake: Arc<Notify>,
    /// Woken when a routed task was cancelled (the runtime stops its agent).
    pub runtime_wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    pub seed: u64,
    /// The liveness of the loops, for the watchdog: localize, claims, fence, origin.
    pub beats: [Arc<ccm_sync::Beat>; 4],
}

impl Router {
    /// Starts the loops; they end at shutdown.
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(error) = self.store.confirm_leases().await {
                warn!(%error, "cannot queue the confirmation of held leases");
            }
            let loops = [
                tokio::spawn(self.clone().localize().instrument(info_span!("route_localize"))),
                tokio::spawn(self.clone().stale().instrument(info_span!("route_stale"))),
                tokio::spawn(self.clone().claims().instrument(info_span!("route_claims"))),
                tokio::spawn(self.clone().fence().instrument(info_span!("route_fence"))),
                tokio::spawn(self.clone().origin().instrument(info_span!("route_origin"))),
            ];
            for task in loops {
                if let Err(error) = task.await {
                    warn!(%error, "a routing loop ended abnormally");
                }
            }
        })
    }

    /// Whether calls to the central can be made now (enrolled, sync not paused).
    async fn can_call(&self) -> bool {
        self.client.has_token() && matches!(self.store.paused(Lane::Urgent).await, Ok(None))
    }

    /// Sleeps `wait`, or less when `wake` fires; false at shutdown.
    async fn pause(&self, wait: Duration, wake: &Notify) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = wake.notified() => true,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// Every second: routed tasks not submitted yet whose repository got a checkout here
    /// become local tasks.
    async fn localize(self) {
        let idle = Notify::new();
        loop {
            let step = self.beats[0].step().await;
            match self.store.localize_routed(&self.config).await {
                Ok(ids) if !ids.is_empty() => {
                    info!(
                        tasks = ids.len(),
                        "routed tasks not submitted yet run here: a checkout appeared"
                    );
                    self.scheduler_wake.notify_one();
                }
                Ok(_) => {}
                Err(error) => warn!(%error, "cannot look for routed tasks to run here"),
            }
            drop(step);
            if !self.pause(LOCALIZE_POLL, &idle).await {
                return;
            }
        }
    }

    /// A queued call answered `stale_lease` (the driver's calls lane): the runtime stops the
    /// agent of the lease lost.
    async fn stale(self) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.signals.lease_lost.notified() => self.runtime_wake.notify_one(),
            }
        }
    }

    /// Claims routed work while slots are free.
    async fn claims(self) {
        let every = Duration::from_millis(self.config.sync.claim_ms);
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let mut failing = Complaint::default();
        loop {
            let step = self.beats[1].step().await;
            let more = match self.claim().await {
                Ok(more) => {
                    failing.clear();
                    more
                }
                Err(error) => {
                    failing.warn(error.to_string(), "cannot ask the central for routed work");
                    false
                }
            };
            drop(step);
            let wait = if more { Duration::ZERO } else { every.mul_f64(0.8 + 0.4 * rng.f64()) };
            if !self.pause(wait, &self.signals.offers).await {
                return;
            }
        }
    }

    /// One `api.claim`; true when it took as many tasks as it asked for (ask again at once).
    async fn claim(&self) -> Result<bool, RouteError> {
        if !self.can_call().await {
            return Ok(false);
        }
        let free = self.store.free_for_claims(self.config.scheduler.slots).await?;
        if free <= 0 {
            return Ok(false);
        }
        let max = free.min(CLAIM_MAX);
        let answer: ClaimAnswerV1 = self
            .client
            .call("claim", &ClaimV1 { p_max: max })
            .await
            .map_err(|f| RouteError::Central(f.message))?;
        if answer.claimed.is_empty() {
            if let Some(reason) = &answer.reason {
                debug!(%reason, "nothing claimed");
            }
            return Ok(false);
        }
        let lease_s = answer.lease_s.unwrap_or(90);
        let taken = self.store.claimed(&answer.claimed, lease_s, &self.config).await?;
        for task in &answer.claimed {
            info!(task = %task.task_id, origin = task.origin_name.as_deref().unwrap_or("?"), token = task.fencing_token, "claimed a routed task");
        }
        self.scheduler_wake.notify_one();
        Ok(taken.len() as i64 >= max)
    }

    /// Gives up leases not renewed in time.
    async fn fence(self) {
        let margin = i64::try_from(self.config.sync.fence_margin_secs * 1000).unwrap_or(i64::MAX);
        let idle = Notify::new();
        loop {
            let step = self.beats[2].step().await;
            match self.store.leases_to_fence(margin).await {
                Ok(due) => {
                    for (task, age_ms) in due {
                        let reason = format!(
                            "self-fenced: the central has not renewed the lease for {:.1}s (sync cut off?); stopped before another system may take the task",
                            age_ms as f64 / 1000.0
                        );
                        warn!(%task, "{reason}");
                        if let Err(error) = self.store.lease_lost(task, &reason).await {
                            warn!(%error, "cannot stop a routed task");
                        }
                        self.runtime_wake.notify_one();
                    }
                }
                Err(error) => warn!(%error, "cannot check the leases"),
            }
            drop(step);
            if !self.pause(Duration::from_millis(250), &idle).await {
                return;
            }
        }
    }

    /// Keeps the origin's view of its routed tasks current: the changes since its last answer,
    /// and every [`READ_ALL_EVERY`] all of its routed tasks.
    async fn origin(self) {
        let every = Duration::from_millis(self.config.sync.routed_status_ms);
        let idle = Notify::new();
        let mut since: Option<String> = None;
        let mut read_all = tokio::time::Instant::now() + READ_ALL_EVERY;
        let mut failing = Complaint::default();
        loop {
            let step = self.beats[3].step().await;
            if tokio::time::Instant::now() >= read_all {
                since = None;
                read_all = tokio::time::Instant::now() + READ_ALL_EVERY;
            }
            match self.follow(&mut since).await {
                Ok(()) => failing.clear(),
                Err(error) => {
                    failing.warn(error.to_string(), "cannot read how the routed tasks are doing")
                }
            }
            drop(step);
            if !self.pause(every, &idle).await {
                return;
            }
        }
    }

    async fn follow(&self, since: &mut Option<String>) -> Result<(), RouteError> {
        if !self.store.routed_unfinished().await? || !self.can_call().await {
            return Ok(());
        }
        let status: RoutedStatusV1 = self
            .client
            .call("routed_status", &RoutedStatusParamsV1 { p_since: since.clone() })
            .await
            .map_err(|f| RouteError::Central(f.message))?;
        let changed = self.store.routed_seen(&status.tasks).await?;
        if changed > 0 {
            debug!(changed, "routed tasks changed centrally");
        }
        // Ask again from a little before the server's time: a transaction that started before
        // it may commit after (the contract's 10 s).
        *since = ten_seconds_before(&status.server_time);
        Ok(())
    }
}

/// How often the origin reads all of its routed tasks rather than the changes since its last
/// answer. The central stamps a change with its transaction's start (`now()`), and the origin
/// asks from 10 s before its last answer: a write that waited longer (on a row lock, on a
/// starved machine) commits with a stamp before that window and is read only by this.
const READ_ALL_EVERY: Duration = Duration::from_secs(30);

/// A failure of a polling loop, logged once per cause rather than at every poll.
#[derive(Default)]
struct Complaint(Option<String>);

impl Complaint {
    fn warn(&mut self, error: String, what: &str) {
        if self.0.as_ref() != Some(&error) {
            warn!(%error, "{what}");
            self.0 = Some(error);
        }
    }

    fn clear(&mut self) {
        self.0 = None;
    }
}

/// `server_time` (PostgreSQL's `timestamptz` in JSON, UTC) minus 10 s; `None` (everything)
/// when it does not parse.
fn ten_seconds_before(server_time: &str) -> Option<String> {
    let time = humantime::parse_rfc3339_weak(server_time.get(..19)?).ok()?;
    let earlier = time.checked_sub(Duration::from_secs(10))?;
    Some(humantime::format_rfc3339_seconds(earlier).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_status_poll_starts_ten_seconds_before_the_servers_time() {
        let since = ten_seconds_before("2026-11-30T21:13:29.549281+00:00");
        assert_eq!(since.as_deref(), Some("2026-11-30T21:13:19Z"));
        assert_eq!(ten_seconds_before("not a time"), None);
    }
}
