//! The node's side of sync: `ccm sync enroll|invite|status|now|pause|resume`, and the daemon's
//! long-lived sync task built from the config's `sync:` section and `auth.json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use std::os::unix::fs::OpenOptionsExt;

use ccm_sync::auth::{Keeper, Session, SessionStore};
use ccm_sync::wire::{EnrollAnswerV1, HealthMetricsV1, HealthSnapshot, InviteAnswerV1};
use ccm_sync::{Credential, Driver, Lane, LaneStatus, Settings};
use clap::Subcommand;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::config::Config;
use crate::home::{Home, SyncIdentity};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Give this system its central identity, then the central `enroll` call; resumes sync.
    /// The session (or JWT) goes to auth.json (0600); a session is refreshed before it expires.
    #[command(group = clap::ArgGroup::new("identity").required(true).args(["email", "code", "jwt"]))]
    Enroll {
        /// Sign in to Supabase Auth as this system's user (password from a prompt, or stdin
        /// with --password-stdin).
        #[arg(long)]
        email: Option<String>,
        /// Read the password from stdin (its first line) instead of prompting.
        #[arg(long, requires = "email")]
        password_stdin: bool,
        /// A one-time code from `ccm sync invite` on an enrolled system: no password here; the
        /// system signs in to Supabase Auth anonymously and the code makes it a system.
        #[arg(long)]
        code: Option<String>,
        /// A JWT the operator minted (used as is until it expires; no refresh).
        #[arg(long)]
        jwt: Option<String>,
    },
    /// A one-time code that enrols another system of this system's owner (`ccm sync enroll
    /// --code CODE` there); shown once.
    Invite {
        /// How long the code stays valid, in hours (1 to 168).
        #[arg(long, default_value_t = 24)]
        hours: u32,
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
        SyncCommand::Enroll { email, password_stdin, code, jwt } => {
            let identity = match (email, code, jwt) {
                (Some(email), _, _) => Identity::Password { email, password_stdin },
                (None, Some(code), _) => Identity::Code(code),
                (None, None, Some(jwt)) => Identity::Jwt(jwt),
                (None, None, None) => anyhow::bail!("enroll: give --email, --code or --jwt"),
            };
            enroll(home, config, daemon, identity).await
        }
        SyncCommand::Invite { hours } => invite(home, config, hours).await,
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
                    crate::cli::open_store(home, config)
                        .await?
                        .pause_sync_by_operator(&reason)
                        .await?
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

/// How `ccm sync enroll` gets the system's identity.
enum Identity {
    Password { email: String, password_stdin: bool },
    Code(String),
    Jwt(String),
}

/// `ccm sync invite`: asks the central for a one-time code for another system of this owner.
async fn invite(home: &Home, config: &Config, hours: u32) -> anyhow::Result<()> {
    anyhow::ensure!((1..=168).contains(&hours), "--hours: must be 1 to 168 (it is {hours})");
    let endpoint = config.sync.endpoint()?.context(
        "sync is not configured: set sync.url (or sync.rest_url) and sync.publishable_key",
    )?;
    let credential = credential(home, &endpoint, None);
    anyhow::ensure!(
        !matches!(credential, Credential::None),
        "this system is not enrolled: run `ccm sync enroll` first (only an enrolled system invites)"
    );
    let client = ccm_sync::Client::new(endpoint, credential)?;
    let answer: InviteAnswerV1 = client
        .call("create_invite", &json!({ "p_ttl_s": hours * 3600 }))
        .await
        .map_err(|f| anyhow::anyhow!("the central `create_invite` call failed: {}", f.message))?;
    println!("invite code (works once, until {}):", answer.expires_at);
    println!("  {}", answer.code);
    println!("on the new system: ccm sync enroll --code {}", answer.code);
    Ok(())
}

async fn enroll(
    home: &Home,
    config: &Config,
    daemon: Option<Client>,
    identity: Identity,
) -> anyhow::Result<()> {
    let endpoint = config.sync.endpoint()?.context(
        "sync is not configured: set sync.url (or sync.rest_url) and sync.publishable_key",
    )?;
    let mut redeem = None;
    let (jwt, session) = match identity {
        Identity::Jwt(jwt) => {
            let jwt = jwt.trim().to_string();
            anyhow::ensure!(
                jwt.split('.').count() == 3,
                "--jwt: not a JWT (expected three dot-separated parts)"
            );
            (jwt, None)
        }
        Identity::Password { email, password_stdin } => {
            let auth = auth_client(&endpoint)?;
            let password =
                if password_stdin { password_from_stdin()? } else { prompt_password(&email)? };
            let session = auth.password(email.trim(), &password).await.map_err(|e| {
                anyhow::anyhow!("signing in to Supabase Auth as {email} failed: {e}")
            })?;
            (session.access_token.clone(), Some(session))
        }
        Identity::Code(code) => {
            let code = code.trim().to_string();
            anyhow::ensure!(
                !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric()),
                "--code: not an invite code (letters and digits, as `ccm sync invite` printed it)"
            );
            let session = auth_client(&endpoint)?.anonymous().await.map_err(|e| {
                anyhow::anyhow!(
                    "the anonymous sign-in to Supabase Auth failed: {e} (an invite needs \
                     \"Allow anonymous sign-ins\" in the project's Auth settings)"
                )
            })?;
            redeem = Some(code);
            (session.access_token.clone(), Some(session))
        }
    };
    let client = ccm_sync::Client::new(endpoint, ccm_sync::Credential::Jwt(jwt.clone()))?;
    let store = crate::cli::open_store(home, config).await?;
    let system = store.system().await?;
    let mut params = json!({
        "p_name": system.name,
        "p_slots": config.scheduler.slots,
        "p_version": env!("CARGO_PKG_VERSION"),
    });
    let answer: EnrollAnswerV1 = match redeem {
        None => client.call("enroll", &params).await.context("the central enroll call failed")?,
        Some(code) => {
            params["p_code"] = json!(code);
            client
                .call("redeem_invite", &params)
                .await
                .context("the central redeem_invite call failed")?
        }
    };
    home.ensure()?;
    let mut auth = home.ensure_auth()?;
    let mut identity = SyncIdentity {
        access_token: jwt,
        refresh_token: None,
        expires_at: None,
        expires_in: None,
        user_id: None,
        system_id: Some(answer.system_id),
    };
    if let Some(session) = session {
        set_session(&mut identity, session);
    }
    auth.sync = Some(identity);
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
            let mut keeper = Keeper::new(auth, Arc::new(AuthFile(home.clone())), session);
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

/// The node's [`SessionStore`]: the session in `auth.json`, refreshed under an flock on
/// `auth.lock`.
struct AuthFile(Home);

impl SessionStore for AuthFile {
    fn lock(&self) -> Result<Box<dyn Send>, String> {
        let path = self.0.auth_lock_file();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        file.lock().map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(Box::new(file))
    }

    fn load(&self) -> Result<Option<Session>, String> {
        let auth = self.0.read_auth().map_err(|e| e.to_string())?;
        Ok(auth.sync.as_ref().and_then(session_of))
    }

    fn save(&self, session: &Session) -> Result<(), String> {
        let mut auth = self.0.read_auth().map_err(|e| e.to_string())?;
        let identity = auth.sync.as_mut().ok_or("auth.json no longer holds a sync identity")?;
        set_session(identity, session.clone());
        self.0.write_auth(&auth).map_err(|e| e.to_string())
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

fn set_session(identity: &mut SyncIdentity, session: Session) {
    identity.access_token = session.access_token;
    identity.refresh_token = Some(session.refresh_token);
    identity.expires_at = Some(session.expires_at);
    identity.expires_in = Some(session.expires_in);
    identity.user_id = session.user_id;
}

/// The project's Supabase Auth, or an error saying how to configure it.
fn auth_client(endpoint: &ccm_sync::Endpoint) -> anyhow::Result<ccm_sync::auth::AuthClient> {
    ccm_sync::auth::AuthClient::new(endpoint)?
        .context("sync has no Supabase Auth URL: set sync.url (the project URL) or sync.auth_url")
}

/// The first line of stdin, without its line end.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!password.is_empty(), "--password-stdin: stdin holds no password");
    Ok(password)
}

/// Asks for the password on the terminal, without echo.
fn prompt_password(email: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let tty =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").context(
            "no terminal to ask the password on: pass it on stdin with --password-stdin",
        )?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tty);
    // SAFETY: termios is plain data, filled by tcgetattr on an open descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is the open terminal; `saved` is a valid termios to fill.
    anyhow::ensure!(
        unsafe { libc::tcgetattr(fd, &mut saved) } == 0,
        "cannot read the terminal's settings"
    );
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    let mut out = &tty;
    write!(out, "password for {email}: ")?;
    out.flush()?;
    // SAFETY: as above; the settings are put back below whatever the read gives.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the settings read above.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read.context("cannot read the password")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!password.is_empty(), "no password given");
    Ok(password)
}
