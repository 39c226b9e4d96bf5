//! `ccm sync enroll|invite|status|now|pause|resume|operator`; the daemon's sync task is `crate::sync`.

use anyhow::Context as _;
use ccm_sync::wire::{EnrollAnswerV1, InviteAnswerV1};
use ccm_sync::{Credential, LaneStatus};
use clap::Subcommand;
use serde_json::json;

use super::output::print;
use crate::client::Client;
use crate::config::Config;
use crate::home::{open_store, Home, SyncIdentity};
use crate::sync::{credential, paused_reason, set_session, SyncStatus, RESUME_HINT};

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
    /// Sign an operator in on this node, apart from the system's identity: the dashboard then
    /// shows every task of the operator's fleet (a system's own identity reads only its rows).
    #[command(group = clap::ArgGroup::new("operator").required(true).args(["email", "jwt", "off"]))]
    Operator {
        /// Sign in to Supabase Auth as the operator (password from a prompt, or stdin with
        /// --password-stdin); the user's `app_metadata.role` must be `operator`.
        #[arg(long)]
        email: Option<String>,
        #[arg(long, requires = "email")]
        password_stdin: bool,
        /// An operator's JWT (used as is until it expires; no refresh).
        #[arg(long)]
        jwt: Option<String>,
        /// Sign the operator out of this node.
        #[arg(long)]
        off: bool,
    },
}

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
                None => open_store(home, config).await?.sync_status().await?,
            };
            print(json, &status, show)
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
                None => open_store(home, config).await?.pause_sync_by_operator(&reason).await?,
            }
            println!("sync paused: {reason}");
            Ok(())
        }
        SyncCommand::Resume => {
            resume(home, config, daemon).await?;
            println!("sync resumed");
            Ok(())
        }
        SyncCommand::Operator { email, password_stdin, jwt, off } => {
            operator(home, config, email, password_stdin, jwt, off).await
        }
    }
}

/// `ccm sync operator`: signs an operator in on this node (`auth.json`'s `operator`, apart
/// from the system's `sync`), or out with `--off`. The daemon's fleet view picks it up within
/// a refresh, without a restart.
async fn operator(
    home: &Home,
    config: &Config,
    email: Option<String>,
    password_stdin: bool,
    jwt: Option<String>,
    off: bool,
) -> anyhow::Result<()> {
    home.ensure()?;
    let mut auth = home.ensure_auth()?;
    if off {
        auth.operator = None;
        home.write_auth(&auth)?;
        println!("operator signed out of this node");
        return Ok(());
    }
    let endpoint = config.sync.endpoint()?.context(
        "sync is not configured: set sync.url (or sync.rest_url) and sync.publishable_key",
    )?;
    let mut identity = SyncIdentity {
        access_token: String::new(),
        refresh_token: None,
        expires_at: None,
        expires_in: None,
        user_id: None,
        system_id: None,
    };
    match (email, jwt) {
        (Some(email), _) => {
            let auth = auth_client(&endpoint)?;
            let password =
                if password_stdin { password_from_stdin()? } else { prompt_password(&email)? };
            let session = auth.password(email.trim(), &password).await.map_err(|e| {
                anyhow::anyhow!("signing in to Supabase Auth as {email} failed: {e}")
            })?;
            set_session(&mut identity, session);
        }
        (None, Some(jwt)) => {
            let jwt = jwt.trim().to_string();
            anyhow::ensure!(
                jwt.split('.').count() == 3,
                "--jwt: not a JWT (expected three dot-separated parts)"
            );
            identity.access_token = jwt;
        }
        (None, None) => anyhow::bail!("operator: give --email, --jwt or --off"),
    }
    // A JWT the central refuses, or one of a system, would show nothing: check it reads.
    let client =
        ccm_sync::Client::new(endpoint, ccm_sync::Credential::Jwt(identity.access_token.clone()))?;
    let rows: Vec<serde_json::Value> =
        client.select("fleet_tasks", &[("select", "task_id"), ("limit", "1")]).await.map_err(
            |f| anyhow::anyhow!("the central refused the operator's session: {}", f.message),
        )?;
    drop(rows);
    auth.operator = Some(identity);
    home.write_auth(&auth)?;
    println!("operator signed in on this node: the dashboard shows every task of the fleet");
    Ok(())
}

async fn resume(home: &Home, config: &Config, daemon: Option<Client>) -> anyhow::Result<()> {
    match daemon {
        Some(daemon) => {
            let _: SyncStatus = daemon.post(&["sync", "resume"], json!({})).await?;
        }
        None => open_store(home, config).await?.pause_sync(None).await?,
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
    let store = open_store(home, config).await?;
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
