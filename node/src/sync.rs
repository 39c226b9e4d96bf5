//! The node's side of sync: `ccm sync enroll|status|now|pause|resume`, and the daemon's
//! long-lived sync task built from the config's `sync:` section and `auth.json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ccm_sync::wire::{EnrollAnswerV1, HealthMetricsV1, HealthSnapshot};
use ccm_sync::{Driver, Lane, LaneStatus, Settings};
use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::config::Config;
use crate::home::{Home, SyncIdentity};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Give this system its central identity: a JWT the operator minted, stored in auth.json
    /// (0600), then the central `enroll` call; resumes sync.
    Enroll {
        #[arg(long)]
        jwt: String,
    },
    /// Per lane: backlog, last success, last error, pause reason.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Seal and send now, retrying at once what waits for a backoff (needs the daemon).
    Now,
    /// Stop sending (changes keep queueing).
    Pause {
        #[arg(long, default_value = "paused by the operator")]
        reason: String,
    },
    /// Send again after a pause.
    Resume,
}

/// The sync state of both lanes, as `ccm sync status` and `/api/sync` show it.
pub type SyncStatus = BTreeMap<Lane, LaneStatus>;

pub async fn run(home: &Home, config: &Config, command: SyncCommand) -> anyhow::Result<()> {
    let daemon = Client::connect(home).await?;
    match command {
        SyncCommand::Enroll { jwt } => enroll(home, config, daemon, jwt).await,
        SyncCommand::Status { json } => {
            let status: SyncStatus = match daemon {
                Some(daemon) => daemon.get(&["sync"]).await?,
                None => crate::cli::open_store(home, config).await?.sync_status().await?,
            };
            crate::cli::print(json, &status, show)
        }
        SyncCommand::Now => {
            let daemon = daemon.context("the daemon is not running: sync runs in it (`ccm up`)")?;
            let status: SyncStatus = daemon.post(&["sync", "now"], json!({})).await?;
            if let Some(reason) = paused_reason(&status) {
                anyhow::bail!(
                    "sync is paused ({reason}): nothing was sent; fix the cause, then run \
                     `ccm sync resume`"
                );
            }
            println!("sync requested");
            Ok(())
        }
        SyncCommand::Pause { reason } => {
            match daemon {
                Some(daemon) => {
                    let _: SyncStatus =
                        daemon.post(&["sync", "pause"], json!({ "reason": reason })).await?;
                }
                None => {
                    crate::cli::open_store(home, config).await?.pause_sync(Some(&reason)).await?
                }
            }
            println!("sync paused: {reason}");
            Ok(())
        }
        SyncCommand::Resume => {
            resume(home, config, daemon).await?;
            println!("sync resumed");
            Ok(())
        }
    }
}

async fn resume(home: &Home, config: &Config, daemon: Option<Client>) -> anyhow::Result<()> {
    match daemon {
        Some(daemon) => {
            let _: SyncStatus = daemon.post(&["sync", "resume"], json!({})).await?;
        }
        None => crate::cli::open_store(home, config).await?.pause_sync(None).await?,
    }
    Ok(())
}

async fn enroll(
    home: &Home,
    config: &Config,
    daemon: Option<Client>,
    jwt: String,
) -> anyhow::Result<()> {
    let endpoint = config.sync.endpoint()?.context(
        "sync is not configured: set sync.url (or sync.rest_url) and sync.publishable_key",
    )?;
    let jwt = jwt.trim().to_string();
    anyhow::ensure!(
        jwt.split('.').count() == 3,
        "--jwt: not a JWT (expected three dot-separated parts)"
    );
    let client = ccm_sync::Client::new(endpoint, Some(jwt.clone()))?;
    let store = crate::cli::open_store(home, config).await?;
    let system = store.system().await?;
    let params = json!({
        "p_name": system.name,
        "p_slots": config.scheduler.slots,
        "p_version": env!("CARGO_PKG_VERSION"),
    });
    let answer: EnrollAnswerV1 =
        client.call("enroll", &params).await.context("the central enroll call failed")?;
    home.ensure()?;
    let mut auth = home.ensure_auth()?;
    auth.sync = Some(SyncIdentity {
        access_token: jwt,
        refresh_token: None,
        system_id: Some(answer.system_id),
    });
    home.write_auth(&auth)?;
    store.close().await;
    resume(home, config, daemon).await?;
    println!("enrolled as {} (central system id {})", answer.name, answer.system_id);
    Ok(())
}

/// Why sync is paused, if either lane is.
pub fn paused_reason(status: &SyncStatus) -> Option<&str> {
    status.values().find_map(|lane| lane.paused_reason.as_deref())
}

/// What to do about a pause, said wherever a pause is shown.
pub const RESUME_HINT: &str = "`ccm sync resume` sends again once the cause is fixed";

pub fn show(status: &SyncStatus) {
    for (lane, s) in status {
        println!("{lane:<7} {}", lane_line(s));
        if s.rejected_total > 0 {
            println!(
                "        {} refused {}, kept locally and not sent again{}:",
                s.rejected_total,
                if s.rejected_total == 1 { "item" } else { "items" },
                if s.rejected_total > s.rejected.len() as i64 { " (newest first)" } else { "" }
            );
            for item in &s.rejected {
                let code = item.code.as_deref().unwrap_or("rejected");
                let at = item.rejected_at.map(|t| format!(" at {t}")).unwrap_or_default();
                println!("          {} {} {code}: {}{at}", item.stream, item.key, item.message);
            }
        }
    }
    if paused_reason(status).is_some() {
        println!("{RESUME_HINT}");
    }
}

/// One lane on one line: backlog, last success, last error, pause, drops.
pub fn lane_line(s: &LaneStatus) -> String {
    let ok = s.last_ok_at.map_or("never".to_string(), |t| t.to_string());
    let mut line = format!("backlog {}, last success {ok}", s.backlog);
    if let Some(error) = &s.last_error {
        line.push_str(&format!(", last error {error}"));
    }
    if let Some(reason) = &s.paused_reason {
        line.push_str(&format!(", paused: {reason}"));
    }
    if s.dropped_total > 0 {
        line.push_str(&format!(", dropped {} health snapshots", s.dropped_total));
    }
    if s.rejected_total > 0 {
        line.push_str(&format!(", {} refused", s.rejected_total));
    }
    line
}

/// The daemon's sync task, when `sync:` is configured: its client (to replace the token after
/// an enrolment) and the task.
pub fn start(
    store: &Store,
    config: &Config,
    home: &Home,
    system_id: uuid::Uuid,
    shutdown: CancellationToken,
) -> Result<Option<(ccm_sync::Client, tokio::task::JoinHandle<()>)>, crate::daemon::StartError> {
    let Some(endpoint) = config.sync.endpoint()? else {
        return Ok(None);
    };
    let token = access_token(home);
    let fingerprint = fingerprint(&endpoint, token.as_deref());
    let client = ccm_sync::Client::new(endpoint, token)?;
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
) -> Result<HealthSnapshot, crate::store::StoreError> {
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
    Ok(HealthSnapshot {
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

/// The access token in `auth.json`, if the system is enrolled.
pub fn access_token(home: &Home) -> Option<String> {
    home.read_auth().ok()?.sync.map(|s| s.access_token)
}
