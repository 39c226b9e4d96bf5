//! The fleet as the dashboard shows it (issue 26, "One fleet"): a background refresher asks the
//! central, never a page render, so pages stay as fast as the local store.
//!
//! While a page is open (an event stream, or a page rendered in the last [`DEMAND`]; an idle
//! node asks the central nothing) and every [`REFRESH`], the [`Refresher`] calls `api.fleet_overview` with the system's own
//! identity (every system of its owner with presence, slots, repositories and health; tasks per
//! state per system; open alerts; cost per system per day) and, when an operator is signed in
//! on this node (`ccm sync operator`, `auth.json`'s `operator`, a client of its own), reads the
//! view `api.fleet_tasks` with the operator's session: every task of the fleet. The answers are
//! kept in memory ([`FleetView`]); when the central cannot be asked, the last answer stays with
//! its age and why. A change (of the fleet, of reachability, or of the routed tasks' central
//! view kept in the store) moves the hub's fleet version and sends the pages a `fleet` change,
//! so they come back live without a reload.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ccm_schema::Timestamp;
use ccm_sync::wire::{FleetOverviewParamsV1, FleetOverviewV1, FleetTaskV1, FLEET_TASK_COLUMNS};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::live::Hub;
use crate::home::Home;
use crate::store::Store;

/// How often the central is asked while a page is open.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long after a page was rendered the refresher keeps asking without an open stream (the
/// new-task form has none).
pub const DEMAND: Duration = Duration::from_secs(30);
/// A state older than this is shown with its age even when the central answers.
const FRESH_MS: i64 = 5_000;
/// The most fleet tasks an operator's board reads (the most recently changed).
const FLEET_TASKS: &str = "500";

/// What the dashboard knows of the fleet now.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// The last answer of `api.fleet_overview`, and when it came.
    pub overview: Option<Arc<FleetOverviewV1>>,
    pub fetched_at: Option<Timestamp>,
    /// Every task of the fleet, when an operator is signed in here.
    pub tasks: Option<Arc<Vec<FleetTaskV1>>>,
    /// Why the central could not be asked at the last try (`None`: it answered).
    pub unreachable: Option<String>,
    /// Why the operator's read failed at the last try.
    pub operator_error: Option<String>,
}

impl Known {
    /// One line saying where the fleet state comes from and how old it is.
    pub fn status(&self, now: Timestamp) -> String {
        let age = self.fetched_at.map(|at| at.ago(now));
        let fresh = self.fetched_at.is_some_and(|at| now.0 - at.0 <= FRESH_MS);
        match (&self.unreachable, age) {
            (None, Some(_)) if fresh => "live from the central".into(),
            (None, Some(age)) => format!("from the central, {age} (refreshing)"),
            (None, None) => "waiting for the central's first answer".into(),
            (Some(why), Some(age)) => format!(
                "the central is unreachable ({why}): showing the last known fleet state, from {age}"
            ),
            (Some(why), None) => {
                format!("the central is unreachable ({why}): no fleet state known yet")
            }
        }
    }
}

/// The fleet state the pages read; written by the [`Refresher`] only.
#[derive(Default)]
pub struct FleetView {
    known: RwLock<Known>,
    /// When a page last read it (ms since the epoch), and the refresher's wake-up when one
    /// reads it while it idles.
    read_at: AtomicI64,
    demand: Notify,
}

impl FleetView {
    /// What is known now; wakes an idle refresher.
    pub fn known(&self) -> Known {
        let now = Timestamp::now().0;
        let before = self.read_at.swap(now, Ordering::SeqCst);
        if now - before > DEMAND.as_millis() as i64 {
            self.demand.notify_one();
        }
        self.known.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// Whether a page was rendered within [`DEMAND`].
    fn wanted(&self) -> bool {
        Timestamp::now().0 - self.read_at.load(Ordering::SeqCst) <= DEMAND.as_millis() as i64
    }
}

/// The background task that keeps a [`FleetView`] current.
pub struct Refresher {
    /// Where the answers go.
    pub view: Arc<FleetView>,
    /// The system's own client (its identity; `api.fleet_overview`).
    pub client: ccm_sync::Client,
    /// Where `auth.json` (the operator's session) is.
    pub home: Home,
    /// The routed tasks' central view, whose changes the pages are told of too.
    pub store: Store,
    /// Told of every change, so pages refresh.
    pub hub: Arc<Hub>,
    pub shutdown: CancellationToken,
}

/// What is compared between two refreshes: the answers without their clocks (a heartbeat's
/// time alone does not re-render every page).
#[derive(PartialEq, Default)]
struct Digest {
    overview: Option<String>,
    tasks: Option<Vec<FleetTaskV1>>,
    unreachable: bool,
    operator_error: bool,
    routed: (i64, i64),
}

#[derive(Serialize)]
struct SystemDigest<'a> {
    name: &'a str,
    presence: &'a str,
    reason: &'a Option<String>,
    slots: i64,
    slots_used: i64,
    repos: &'a [String],
}

fn digest_of(overview: &FleetOverviewV1) -> String {
    let systems: Vec<SystemDigest> = overview
        .systems
        .iter()
        .map(|s| SystemDigest {
            name: &s.name,
            presence: &s.presence,
            reason: &s.reason,
            slots: s.slots,
            slots_used: s.slots_used,
            repos: &s.repos,
        })
        .collect();
    let counts: Vec<(&str, &str, i64)> = overview
        .tasks_by_state
        .iter()
        .map(|c| (c.system_name.as_str(), c.state.as_str(), c.tasks))
        .collect();
    let alerts: Vec<String> = overview.open_alerts.iter().map(|a| a.alert_id.to_string()).collect();
    let cost: Vec<(&str, &str, String)> = overview
        .daily_cost
        .iter()
        .map(|c| (c.system_name.as_str(), c.day.as_str(), format!("{:.4}", c.cost_usd)))
        .collect();
    serde_json::to_string(&(systems, counts, alerts, cost)).unwrap_or_default()
}

impl Refresher {
    /// Refreshes until shutdown.
    pub async fn run(self) {
        let mut last = Digest::default();
        let mut operator: Option<(String, ccm_sync::Client)> = None;
        loop {
            if self.hub.watchers() > 0 || self.view.wanted() {
                let digest = self.refresh(&mut operator).await;
                if digest != last {
                    debug!("the fleet changed");
                    self.hub.fleet_changed();
                    last = digest;
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(REFRESH) => {}
                () = self.view.demand.notified() => {}
            }
        }
    }

    async fn refresh(&self, operator: &mut Option<(String, ccm_sync::Client)>) -> Digest {
        // Read without counting as a page's demand.
        let mut known = self.view.known.read().map(|k| k.clone()).unwrap_or_default();
        let mut digest =
            Digest { overview: known.overview.as_deref().map(digest_of), ..Digest::default() };
        match self.client.call::<FleetOverviewV1>("fleet_overview", &FleetOverviewParamsV1 {}).await
        {
            Ok(overview) => {
                if known.unreachable.is_some() {
                    info!("the central answers again: the fleet view is live");
                }
                digest.overview = Some(digest_of(&overview));
                known.overview = Some(Arc::new(overview));
                known.fetched_at = Some(Timestamp::now());
                known.unreachable = None;
            }
            Err(failure) => {
                if known.unreachable.is_none() {
                    info!(error = %failure.message, "the central cannot be asked: the fleet view shows the last known state");
                }
                known.unreachable = Some(failure.message);
            }
        }
        digest.unreachable = known.unreachable.is_some();
        match self.operator_client(operator) {
            Some(client) if known.unreachable.is_none() => {
                let query = [
                    ("select", FLEET_TASK_COLUMNS),
                    ("order", "updated_at.desc"),
                    ("limit", FLEET_TASKS),
                ];
                match client.select::<FleetTaskV1>("fleet_tasks", &query).await {
                    Ok(tasks) => {
                        known.tasks = Some(Arc::new(tasks));
                        known.operator_error = None;
                    }
                    Err(failure) => known.operator_error = Some(failure.message),
                }
            }
            Some(_) => {}
            None => {
                known.tasks = None;
                known.operator_error = None;
            }
        }
        digest.tasks = known.tasks.as_deref().cloned();
        digest.operator_error = known.operator_error.is_some();
        digest.routed = self.store.routed_version().await.unwrap_or_default();
        if let Ok(mut slot) = self.view.known.write() {
            *slot = known;
        }
        digest
    }

    /// The operator's client, built again when `auth.json`'s operator changed; `None` when no
    /// operator is signed in here.
    fn operator_client(
        &self,
        operator: &mut Option<(String, ccm_sync::Client)>,
    ) -> Option<ccm_sync::Client> {
        let identity = self.home.read_auth().ok()?.operator;
        let Some(identity) = identity else {
            *operator = None;
            return None;
        };
        let key = identity.refresh_token.clone().unwrap_or(identity.access_token.clone());
        if let Some((current, client)) = operator.as_ref() {
            if *current == key {
                return Some(client.clone());
            }
        }
        let endpoint = self.client.endpoint().clone();
        let credential = crate::sync::operator_credential(&self.home, &endpoint)?;
        let client = ccm_sync::Client::new(endpoint, credential).ok()?;
        *operator = Some((key, client.clone()));
        Some(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_status_says_live_or_unreachable_with_the_last_states_age() {
        let now = Timestamp(1_000_000);
        let mut known = Known::default();
        assert_eq!(known.status(now), "waiting for the central's first answer");
        known.fetched_at = Some(Timestamp(now.0 - 2_000));
        assert_eq!(known.status(now), "live from the central");
        known.unreachable = Some("connection refused".into());
        assert_eq!(
            known.status(now),
            "the central is unreachable (connection refused): showing the last known fleet \
             state, from 2s ago"
        );
        known.unreachable = None;
        known.fetched_at = Some(Timestamp(now.0 - 90_000));
        assert_eq!(known.status(now), "from the central, 1m ago (refreshing)");
        known = Known { unreachable: Some("timeout".into()), ..Known::default() };
        assert!(known.status(now).ends_with("no fleet state known yet"), "{}", known.status(now));
    }
}
