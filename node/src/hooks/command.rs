//! `ccm hook [--agent claude|gemini|codex] [PAYLOAD]`: the command form of ccm's hooks.
//!
//! It reads the event (stdin for Claude Code and Gemini CLI; the last argument for Codex's
//! `notify`), tags it with the agent's credential (`CCM_AGENT_TOKEN`), and stores it durably by the first
//! path that works: the daemon's API, else SQLite directly (daemon down), else a spool file
//! (database busy). Whatever happens to ccm it exits 0, printing on stdout only a decision in
//! the CLI's JSON format when a policy decided one; problems go to `~/.ccm-global/logs/hook.log`,
//! and to stderr as well when the event could not be stored or the log not written.
//!
//! Only a tool call that an approval rule may hold waits for the daemon longer than
//! `DAEMON_TIMEOUT`, and then only up to the rule's timeout (plus `GATE_MARGIN`); past its
//! wait the hook takes the direct path.

use std::io::{Read, Write};
use std::time::Duration;

use ccm_schema::{Severity, Timestamp};
use serde_json::Value;
use uuid::Uuid;

use super::event::{HookEvent, Kind, System};
use super::gate::{self, Verdict};
use super::spool;
use crate::config::Config;
use crate::home::Home;
use crate::store::{Origin, Receipt, RetryPolicy, Store, Via};

/// Bytes read from stdin at most; the rest is drained and the payload marked truncated.
const READ_LIMIT: u64 = 16 * 1024 * 1024;
/// How long connecting to the daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a non-gate event may wait for the daemon.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);
/// How much longer than an approval rule's timeout a gate it holds waits for the daemon (which
/// answers the rule's default when the timeout passes).
const GATE_MARGIN: Duration = Duration::from_secs(5);
/// How long the direct path waits for another writer before spooling.
const DIRECT_BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// Why one path (the daemon's API, or SQLite directly) did not take the event; the hook then
/// tries the next one and logs this.
#[derive(Debug, thiserror::Error)]
enum PathError {
    #[error("no port file")]
    NoPortFile,
    #[error("no connection within {}s", CONNECT_TIMEOUT.as_secs_f32())]
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

/// Runs the hook; always succeeds (the exit code is 0).
pub async fn run(home: &Home, system: Option<System>, argument: Option<String>) {
    let received_at = Timestamp::now();
    let bytes = match argument {
        Some(payload) => payload.into_bytes(),
        None => read_stdin(),
    };
    let event = HookEvent::parse(system, &bytes);
    let key = Uuid::now_v7().to_string(); // time-ordered: appended to the key index
    let origin = Origin { agent_token: std::env::var("CCM_AGENT_TOKEN").ok() };
    let mut notes: Vec<String> = event.problem.iter().cloned().collect();
    let mut lost = false;

    let wait = daemon_wait(home, &event);
    let output = match through_daemon(home, &event, &key, &origin, wait).await {
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
        let line = format!(
            "{received_at} {key} {} {} {}",
            event.system,
            display_name(&event),
            notes.join("; ")
        );
        if let Err(e) = log(home, &line) {
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

fn display_name(event: &HookEvent) -> &str {
    if event.name.is_empty() {
        event.kind.as_str()
    } else {
        &event.name
    }
}

/// All of stdin up to `READ_LIMIT`; anything beyond is read and dropped (the payload is then
/// not valid JSON, and is stored truncated).
fn read_stdin() -> Vec<u8> {
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

/// How long the hook waits for the daemon's answer: a tool call an approval rule may hold, up
/// to the rule's timeout (and a margin); anything else, `DAEMON_TIMEOUT`.
fn daemon_wait(home: &Home, event: &HookEvent) -> Duration {
    if !matches!(event.kind, Kind::PreTool | Kind::PermissionRequest) {
        return DAEMON_TIMEOUT;
    }
    // A broken config holds no rule here: the daemon keeps its own, and the direct path
    // answers a gate with a deny while the config is broken.
    let Ok(config) = Config::load(home.root(), None) else { return DAEMON_TIMEOUT };
    if gate::may_need_approval(&config.approvals, event) {
        Duration::from_secs(config.approvals.timeout_secs).saturating_add(GATE_MARGIN)
    } else {
        DAEMON_TIMEOUT
    }
}

/// Posts the event to the running daemon and returns its decision, if any, waiting at most
/// `wait`. One HTTP/1.1 exchange on a fresh loopback connection (hyper's client connection,
/// without a pool).
async fn through_daemon(
    home: &Home,
    event: &HookEvent,
    key: &str,
    origin: &Origin,
    wait: Duration,
) -> Result<Option<Value>, PathError> {
    use http_body_util::{BodyExt, Full};
    use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};

    let daemon = home.read_daemon_info().ok_or(PathError::NoPortFile)?;
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
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect).await??;
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
    let ingested = store.ingest_hook(event, &receipt, policy, true).await?;
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
    let Some(task) = ingested.task else { return Ok(None) };
    let approvals = &config.approvals;
    let workdir = ingested.agent.as_ref().map(|a| a.cwd.as_str());
    let verdict = match gate::verdict(&store, home, &task, event, approvals, workdir).await? {
        Verdict::Ask => Verdict::approved(
            approvals.default,
            "the ccm daemon is not running, so nobody can approve: the configured default applies"
                .to_string(),
        ),
        verdict => verdict,
    };
    Ok(verdict.output(event))
}

/// Appends a line to `logs/hook.log`.
fn log(home: &Home, line: &str) -> std::io::Result<()> {
    let dir = home.root().join("logs");
    crate::home::private_dir(&dir)?;
    let mut file = crate::home::private_file(&dir.join("hook.log"))?;
    writeln!(file, "{line}")
}
