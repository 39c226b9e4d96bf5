//! The node's side of sync: the daemon's long-lived sync task built from the config's `sync:`
//! section and `auth.json`, and the credential it (and the CLI's `ccm sync`, in
//! `cli/sync.rs`) sends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ccm_sync::auth::{Keeper, Session, SessionStore};
use ccm_sync::outbox::HealthRowV1;
use ccm_sync::wire::HealthMetricsV1;
use ccm_sync::{Credential, Driver, Lane, LaneStatus, Settings};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::home::{Home, SyncIdentity};
use crate::store::Store;

/// The sync state of both lanes, as `ccm sync status` and `/api/sync` show it.
pub type SyncStatus = BTreeMap<Lane, LaneStatus>;

/// Why sync is paused, if either lane is.
pub fn paused_reason(status: &SyncStatus) -> Option<&str> {
    status.values().find_map(|lane| lane.paused_reason.as_deref())
}

/// What to do about a pause, said wherever a pause is shown.
pub const RESUME_HINT: &str = "`ccm sync resume` sends again once the cause is fixed";

/// Why the sync task cannot start: the `sync:` section or the central's client.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Central(#[from] ccm_sync::ClientError),
}

/// The daemon's sync task, when `sync:` is configured: its client (to replace the token after
/// an enrolment) and the task.
pub fn start(
    store: &Store,
    config: &Config,
    home: &Home,
    system_id: uuid::Uuid,
    shutdown: CancellationToken,
) -> Result<Option<(ccm_sync::Client, tokio::task::JoinHandle<()>)>, StartError> {
    let Some(endpoint) = config.sync.endpoint()? else {
        return Ok(None);
    };
    let fingerprint = fingerprint(&endpoint, identity_key(home).as_deref());
    let client = ccm_sync::Client::new(endpoint.clone(), credential(home, &endpoint, Some(store)))?;
    let (high, low) = system_id.as_u64_pair();
    let driver = Driver {
        outbox: store.clone(),
        client: client.clone(),
        signals: Arc::clone(store.sync_signals()),
        settings: Settings {
            interval: config.sync.interval(),
            hook_events: config.sync.hook_events,
            completions: config.sync.completions,
            urgent_window: Duration::from_millis(config.sync.urgent_window_ms),
            seed: high ^ low,
            heartbeat: Duration::from_secs(config.sync.heartbeat_secs),
            slots: i64::from(config.scheduler.slots),
        },
        shutdown: shutdown.clone(),
    };
    let health = health(store.clone(), home.clone(), config.clone(), shutdown);
    let store = store.clone();
    let task = tokio::spawn(async move {
        match store.outbox_on().await {
            Ok(0) => {}
            Ok(tasks) => tracing::info!(
                tasks,
                "sync enabled after a time without: the current state of every task is queued"
            ),
            Err(error) => tracing::warn!(%error, "cannot queue the tasks' current state"),
        }
        match store.sync_started(&fingerprint).await {
            Ok(true) => tracing::info!(
                "sync resumed: its endpoint or identity changed since the driver paused it"
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "sync start not recorded"),
        }
        tokio::join!(driver.run(), health);
    });
    Ok(Some((client, task)))
}

/// Every `sync.health_secs`, a health snapshot in the normal lane, its backlog bounded by
/// `sync.health_backlog` (S-13). A failure is logged and the next period tries again.
async fn health(store: Store, home: Home, config: Config, shutdown: CancellationToken) {
    let every = Duration::from_secs(config.sync.health_secs);
    let mut system = sysinfo::System::new();
    // CPU usage is measured between two refreshes: the first snapshot has one to compare with.
    system.refresh_cpu_usage();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let written = match snapshot(&store, &home, &config, &mut system).await {
            Ok(snapshot) => store.record_health(snapshot, config.sync.health_backlog).await,
            Err(error) => Err(error),
        };
        match written {
            Ok(0) => {}
            Ok(dropped) => tracing::warn!(
                dropped,
                cap = config.sync.health_backlog,
                "health backlog full: dropped the oldest snapshots waiting to be sent"
            ),
            Err(error) => tracing::warn!(%error, "health snapshot not written"),
        }
    }
}

/// The node's health now: load, CPU, memory, disk free, agents, queue and sync backlog.
/// `dropped_total` is filled in by [`Store::record_health`].
async fn snapshot(
    store: &Store,
    home: &Home,
    config: &Config,
    system: &mut sysinfo::System,
) -> Result<HealthRowV1, crate::store::StoreError> {
    system.refresh_memory();
    system.refresh_cpu_usage();
    let now = ccm_schema::Timestamp::now();
    let len = config.sync.health_secs;
    let window_ms = i64::try_from(len * 1000).unwrap_or(i64::MAX);
    let free = |path: &std::path::Path| {
        crate::notify::health::disk_space(path).map_or(0, |(free, _, _)| free)
    };
    let worktrees = home.root().join("worktrees");
    // Worktrees not made yet will be made under the home, on its file system.
    let worktrees = if worktrees.exists() { worktrees } else { home.root().to_path_buf() };
    let lanes = store.sync_status().await?;
    let metrics = HealthMetricsV1 {
        agents_running: ccm_sync::Outbox::running(store).await?,
        slots: i64::from(config.scheduler.slots),
        load1: sysinfo::System::load_average().one,
        cpu_pct: f64::from(system.global_cpu_usage()),
        mem_used_bytes: system.used_memory(),
        mem_total_bytes: system.total_memory(),
        disk_free_home_bytes: free(home.root()),
        disk_free_worktrees_bytes: free(&worktrees),
        queue_depth: store
            .state_counts()
            .await?
            .into_iter()
            .map(|(state, n)| (state.to_string(), n))
            .collect(),
        stale_agents: store.open_alerts_of("stalled").await?,
        orphans: store.open_alerts_of("orphan_window").await?,
        last_sync_at: lanes.values().filter_map(|l| l.last_ok_at).max(),
        backlog: lanes.values().map(|l| l.backlog).sum(),
        lane_backlog: lanes.iter().map(|(lane, l)| (lane.to_string(), l.backlog)).collect(),
        dropped_total: 0,
    };
    Ok(HealthRowV1 {
        v: ccm_sync::outbox::VERSION,
        window_start: ccm_schema::Timestamp(now.millis() - now.millis().rem_euclid(window_ms)),
        window_len_s: len,
        metrics,
    })
}

/// What a pause of the driver is about: the endpoint and the identity (a hash; the token is
/// never stored). A daemon started with another one lifts the pause (`Store::sync_started`).
fn fingerprint(endpoint: &ccm_sync::Endpoint, token: Option<&str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [endpoint.rest_url.as_str(), &endpoint.publishable_key, token.unwrap_or_default()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Who this system is to the central, for [`fingerprint`]: its Supabase Auth user (a session's
/// access token changes at every refresh), else the JWT an operator minted.
fn identity_key(home: &Home) -> Option<String> {
    let identity = home.read_auth().ok()?.sync?;
    Some(
        identity
            .user_id
            .filter(|_| identity.refresh_token.is_some())
            .unwrap_or(identity.access_token),
    )
}

/// What the central client sends for this system, from `auth.json`: its Supabase Auth session
/// (kept fresh by a [`Keeper`], which saves each rotated refresh token back there), the JWT an
/// operator minted, or nothing when it is not enrolled.
///
/// With `store` (the daemon), a session Auth refuses pauses both lanes at once with the reason
/// and raises the `sync_paused` alert, as a refused batch does.
pub fn credential(home: &Home, endpoint: &ccm_sync::Endpoint, store: Option<&Store>) -> Credential {
    let Some(identity) = home.read_auth().ok().and_then(|a| a.sync) else {
        return Credential::None;
    };
    let Some(session) = session_of(&identity) else {
        return Credential::Jwt(identity.access_token);
    };
    match ccm_sync::auth::AuthClient::new(endpoint) {
        Ok(Some(auth)) => {
            let file = AuthFile { home: home.clone(), operator: false };
            let mut keeper = Keeper::new(auth, Arc::new(file), session);
            if let Some(store) = store {
                keeper = keeper.on_refused(pause_on_refusal(store.clone()));
            }
            Credential::Session(Arc::new(keeper))
        }
        _ => {
            tracing::warn!(
                "auth.json holds a Supabase Auth session but sync has no auth URL (set sync.url \
                 or sync.auth_url): its access token is used until it expires"
            );
            Credential::Jwt(identity.access_token)
        }
    }
}

/// The operator's credential on this node (`ccm sync operator`), apart from the system's:
/// `None` when no operator is signed in. A session is kept fresh as the system's is, saved
/// back to `auth.json`'s `operator`.
pub fn operator_credential(home: &Home, endpoint: &ccm_sync::Endpoint) -> Option<Credential> {
    let identity = home.read_auth().ok()?.operator?;
    let Some(session) = session_of(&identity) else {
        return Some(Credential::Jwt(identity.access_token));
    };
    match ccm_sync::auth::AuthClient::new(endpoint) {
        Ok(Some(auth)) => {
            let file = AuthFile { home: home.clone(), operator: true };
            Some(Credential::Session(Arc::new(Keeper::new(auth, Arc::new(file), session))))
        }
        _ => Some(Credential::Jwt(identity.access_token)),
    }
}

/// Pauses both lanes with `unauthorized: <reason>` and raises the `sync_paused` alert.
fn pause_on_refusal(store: Store) -> ccm_sync::auth::OnRefused {
    Box::new(move |reason| {
        let store = store.clone();
        tokio::spawn(async move {
            let reason = format!("{}: {reason}", ccm_sync::Class::Unauthorized.reason());
            let text = format!("sync paused ({reason}); changes keep queueing");
            let paused = match store.pause_sync(Some(&reason)).await {
                Ok(()) => ccm_sync::Outbox::raise_alert(&store, "sync_paused", &text).await,
                Err(e) => Err(e),
            };
            if let Err(error) = paused {
                tracing::warn!(%error, "cannot pause sync after the session was refused");
            }
        });
    })
}

/// The node's [`SessionStore`]: the system's session in `auth.json` (or, with `operator`, the
/// operator's), refreshed under an flock on `auth.lock`.
struct AuthFile {
    home: Home,
    operator: bool,
}

impl AuthFile {
    fn slot<'a>(&self, auth: &'a mut crate::home::Auth) -> &'a mut Option<SyncIdentity> {
        if self.operator {
            &mut auth.operator
        } else {
            &mut auth.sync
        }
    }
}

impl SessionStore for AuthFile {
    fn lock(&self) -> Result<Box<dyn Send>, String> {
        let path = self.home.auth_lock_file();
        let file = crate::fs::open_lock_file(&path)?;
        file.lock().map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(Box::new(file))
    }

    fn load(&self) -> Result<Option<Session>, String> {
        let mut auth = self.home.read_auth().map_err(|e| e.to_string())?;
        Ok(self.slot(&mut auth).as_ref().and_then(session_of))
    }

    fn save(&self, session: &Session) -> Result<(), String> {
        let mut auth = self.home.read_auth().map_err(|e| e.to_string())?;
        let identity =
            self.slot(&mut auth).as_mut().ok_or("auth.json no longer holds this identity")?;
        set_session(identity, session.clone());
        self.home.write_auth(&auth).map_err(|e| e.to_string())
    }
}

/// The Supabase Auth session in an identity, when it has one.
fn session_of(identity: &SyncIdentity) -> Option<Session> {
    Some(Session {
        access_token: identity.access_token.clone(),
        refresh_token: identity.refresh_token.clone()?,
        expires_at: identity.expires_at?,
        expires_in: identity.expires_in.unwrap_or(3600),
        user_id: identity.user_id.clone(),
    })
}

pub(crate) fn set_session(identity: &mut SyncIdentity, session: Session) {
    identity.access_token = session.access_token;
    identity.refresh_token = Some(session.refresh_token);
    identity.expires_at = Some(session.expires_at);
    identity.expires_in = Some(session.expires_in);
    identity.user_id = session.user_id;
}
