//! `ccm hook [--agent claude|gemini|codex] [PAYLOAD]`: the command form of ccm's hooks.
//!
//! It reads the event (stdin for Claude Code and Gemini CLI; the last argument for Codex's
//! `notify`), tags it with the agent's credential (`CCM_AGENT_TOKEN`), and stores it durably by the first
//! path that works: the daemon's API, else SQLite directly (daemon down), else a spool file
//! (database busy). Whatever happens to ccm it exits 0, printing on stdout only a decision in
//! the CLI's JSON format when a policy decided one; problems go to `~/.ccm-global/logs/hook.log`,
//! and to stderr as well when the event could not be stored or the log not written.
//!
//! Only a tool call waits for the daemon longer than `DAEMON_TIMEOUT`, and only when the daemon
//! has approval rules (its port file says so), up to their timeout plus `GATE_MARGIN_SECS`;
//! past its wait the hook takes the direct path.
//!
//! The hooks run `ccm-hook` ([`super::fast`]), which posts the event to the daemon itself and
//! runs this only when the daemon did not take it (then with its key, straight to the direct
//! path) or when it cannot tell what to do.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use ccm_schema::{Severity, Timestamp};
use serde_json::Value;
use uuid::Uuid;

use super::event::{HookEvent, System};
use super::gate::{self, Verdict};
use super::spool;
use crate::config::Config;
use crate::home::Home;
use crate::store::{Origin, Receipt, RetryPolicy, Store, Via};

/// Bytes read from stdin at most; the rest is drained and the payload marked truncated.
const READ_LIMIT: u64 = 16 * 1024 * 1024;
/// How long the direct path waits for another writer before spooling.
const DIRECT_BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// Why one path (the daemon's API, or SQLite directly) did not take the event; the hook then
/// tries the next one and logs this.
#[derive(Debug, thiserror::Error)]
enum PathError {
    #[error("no port file")]
    NoPortFile,
    #[error("no connection within {}s", super::CONNECT_TIMEOUT.as_secs_f32())]
    Connect(#[from] tokio::time::error::Elapsed),
    #[error("the daemon answered {0}")]
    Status(hyper::StatusCode),
    #[error("no answer within {0}s")]
    NoAnswer(f32),
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::http::Error),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What `ccm-hook` passes on when it hands an event over after trying the daemon itself.
#[derive(Debug, Default)]
pub struct HandedOver {
    /// The key `ccm-hook` posted the event under (the daemon may have stored it).
    pub key: Option<Uuid>,
    /// Why the daemon did not take it; the daemon is then not tried again.
    pub daemon_failed: Option<String>,
}

/// Runs the hook; always succeeds (the exit code is 0).
pub async fn run(
    home: &Home,
    system: Option<System>,
    argument: Option<String>,
    handed_over: HandedOver,
) {
    let received_at = Timestamp::now();
    let bytes = match argument {
        Some(payload) => payload.into_bytes(),
        None => read_stdin(),
    };
    let event = HookEvent::parse(system, &bytes);
    // Time-ordered: appended to the key index.
    let key = handed_over.key.unwrap_or_else(Uuid::now_v7).to_string();
    let origin = Origin { agent_token: std::env::var("CCM_AGENT_TOKEN").ok() };
    let mut notes: Vec<String> = event.problem.iter().cloned().collect();
    let mut lost = false;

    let daemon = match handed_over.daemon_failed {
        Some(reason) => Err(reason),
        None => through_daemon(home, &event, &key, &origin).await.map_err(|e| e.to_string()),
    };
    let output = match daemon {
        Ok(output) => output,
        Err(daemon) => {
            notes.push(format!("daemon unreachable ({daemon}); writing the database directly"));
            match directly(home, &event, &key, &origin, received_at).await {
                Ok(output) => output,
                Err(direct) => {
                    notes.push(format!("direct write failed ({direct}); spooling"));
                    let entry = spool::Entry {
                        key: key.clone(),
                        origin,
                        received_at,
                        event: event.clone(),
                    };
                    if let Err(e) = spool::write(home.root(), &entry) {
                        notes.push(format!("spooling failed too, event lost: {e}"));
                        lost = true;
                    }
                    None
                }
            }
        }
    };
    if !notes.is_empty() {
        let line = log_line(received_at, &key, &event, &notes.join("; "));
        if let Err(e) = log(home.root(), &line) {
            eprintln!(
                "ccm hook: cannot write {}: {e}",
                home.root().join("logs/hook.log").display()
            );
            lost = true;
        }
        if lost {
            eprintln!("ccm hook: {line}");
        }
    }
    if let Some(output) = output {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{output}");
    }
}

/// The line `hook.log` gets for `notes` about an event.
pub(crate) fn log_line(
    received_at: Timestamp,
    key: &str,
    event: &HookEvent,
    notes: &str,
) -> String {
    let name = if event.name.is_empty() { event.kind.as_str() } else { &event.name };
    format!("{received_at} {key} {} {name} {notes}", event.system)
}

/// All of stdin up to `READ_LIMIT`; anything beyond is read and dropped (the payload is then
/// not valid JSON, and is stored truncated).
pub(super) fn read_stdin() -> Vec<u8> {
    /// Bytes a usual event fits in (a few KB), read before deciding how to buffer the rest.
    const FIRST: usize = 64 * 1024;
    let mut stdin = std::io::stdin().lock();
    let mut bytes = Vec::with_capacity(FIRST);
    let _ = (&mut stdin).take(FIRST as u64).read_to_end(&mut bytes);
    if bytes.len() == FIRST {
        // A large payload: room for the limit at once, so it is never copied into a larger
        // buffer on the way (untouched pages cost nothing).
        let mut large = Vec::with_capacity(READ_LIMIT as usize);
        large.extend_from_slice(&bytes);
        bytes = large;
        let _ = (&mut stdin).take(READ_LIMIT - FIRST as u64).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut stdin, &mut std::io::sink());
    }
    bytes
}

/// Posts the event to the running daemon and returns its decision, if any, waiting as long as
/// [`super::daemon_wait`] says. One HTTP/1.1 exchange on a fresh loopback connection (hyper's
/// client connection, without a pool).
async fn through_daemon(
    home: &Home,
    event: &HookEvent,
    key: &str,
    origin: &Origin,
) -> Result<Option<Value>, PathError> {
    use http_body_util::{BodyExt, Full};
    use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};

    let daemon = home.read_daemon_info().ok_or(PathError::NoPortFile)?;
    let wait = super::daemon_wait(&daemon, || event.kind.is_gate());
    let token = home.read_auth()?.token;
    // The event as parsed here, so what this process saw (invalid UTF-8, truncation) is kept.
    let mut request = hyper::Request::post(format!("/api/hooks?format=ccm&key={key}"))
        .header(HOST, &daemon.addr)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json");
    if let Some(token) = &origin.agent_token {
        request = request.header("x-ccm-agent-token", token);
    }
    let request = request.body(Full::new(hyper::body::Bytes::from(serde_json::to_vec(event)?)))?;
    let exchange = async {
        let connect = tokio::net::TcpStream::connect(&daemon.addr);
        let stream = tokio::time::timeout(super::CONNECT_TIMEOUT, connect).await??;
        stream.set_nodelay(true)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(PathError::Status(status));
        }
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<Value, PathError>(serde_json::from_slice(&body)?)
    };
    let answer = tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| PathError::NoAnswer(wait.as_secs_f32()))??;
    Ok(answer.as_object().is_some_and(|o| !o.is_empty()).then_some(answer))
}

/// Stores the event in SQLite without the daemon, and answers what can be answered without
/// it: strict ownership; approvals get their configured default (nobody can answer).
async fn directly(
    home: &Home,
    event: &HookEvent,
    key: &str,
    origin: &Origin,
    received_at: Timestamp,
) -> Result<Option<Value>, PathError> {
    let store = Store::open_existing(&home.db_file(), DIRECT_BUSY_TIMEOUT).await?;
    let loaded = Config::load(home.root(), None);
    let policy = RetryPolicy::from(loaded.as_ref().unwrap_or(&Config::default()));
    let receipt = Receipt { key, origin, via: Via::Direct, received_at };
    let ingested = store.ingest_hook(event, &receipt, policy).await?;
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            // Fail closed: without the configuration nobody knows which approval rules apply.
            let problem = format!("ccm's configuration does not load: {error}");
            // The answer matters more than the alert, which the next hook raises if this one
            // could not.
            let _ = store.alert_once(None, Severity::Warning, "config_invalid", &problem).await;
            let reason = format!(
                "{problem}; the daemon is not running, so the tool call is refused until it is fixed"
            );
            return Ok(Verdict::Deny(reason).output(event));
        }
    };
    let (Some(task), Some(agent)) = (ingested.task, ingested.agent) else { return Ok(None) };
    let approvals = &config.approvals;
    let worktree = Path::new(&agent.cwd);
    let verdict = match gate::verdict(&store, home, &task, event, approvals, worktree).await? {
        Verdict::Ask => Verdict::approved(
            approvals.default,
            "the ccm daemon is not running, so nobody can approve: the configured default applies"
                .to_string(),
        ),
        verdict => verdict,
    };
    Ok(verdict.output(event))
}

/// Appends a line to `logs/hook.log` in the home `root`.
pub(crate) fn log(root: &Path, line: &str) -> std::io::Result<()> {
    let dir = root.join("logs");
    crate::home::private_dir(&dir)?;
    let mut file = crate::home::private_file(&dir.join("hook.log"))?;
    writeln!(file, "{line}")
}
