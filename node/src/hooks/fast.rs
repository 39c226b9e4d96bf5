//! `ccm-hook [--agent claude|gemini|codex] [PAYLOAD]`: the command ccm installs in the agent
//! CLIs' hook settings, run once per event.
//!
//! The usual event needs only the daemon: this reads the payload as `ccm hook` does (stdin, or
//! the last argument for Codex's `notify`), posts it as received to `POST /api/hooks` (the
//! daemon parses it as `ccm hook` would have) on one blocking connection (the daemon's Unix
//! socket, else loopback TCP), and prints the daemon's decision, if any. It is a small
//! executable of its own, with no async runtime and no allocator set-up, because starting
//! `ccm` (13 MB of code, its shared libraries) costs more than the rest of a hook
//! (BENCHMARKS.md, hook pipeline).
//!
//! Everything else goes to `ccm hook` (the `ccm` beside this executable, else the one on PATH),
//! which exits 0 whatever happens: arguments this does not know, with stdin untouched; no home
//! or token, with the payload on its stdin; no port file, no answer in time or an error status,
//! with the payload, the key the event was posted under (the daemon may have stored it: the
//! direct path then stores it once) and why, so it goes straight to the direct path (without
//! looking for the daemon again) and logs that. A payload that fits in a pipe's buffer is
//! written into a pipe and this process becomes `ccm hook` (exec), so the agent waits for one
//! process start instead of two. When `ccm hook` cannot be run at all, the event goes to the
//! spool, which the daemon ingests.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use socket2::{Domain, SockAddr, Socket, Type};
use uuid::Uuid;

use super::event::{HookEvent, System};
use crate::home::Home;

/// Runs `ccm-hook` with the process's arguments (the process then exits 0, whatever happened).
pub fn main() {
    let args: Option<Vec<String>> =
        std::env::args_os().skip(1).map(|a| a.into_string().ok()).collect();
    let Some(Arguments { agent, payload: argument }) = args.as_deref().and_then(parse_args) else {
        // `--help`, an option it does not know, or an argument that is not UTF-8: `ccm hook`
        // says what it makes of them, reading the payload itself.
        return hand_over(&Handover::Arguments(std::env::args_os().skip(1).collect()));
    };
    let payload = match argument {
        Some(payload) => payload.as_bytes().to_vec(),
        None => super::command::read_stdin(),
    };
    let system = agent.and_then(|a| a.parse::<System>().ok());
    let key = Uuid::now_v7();
    match post(system, &payload, key) {
        Ok(answer) => {
            if let Some(answer) = answer {
                let _ = writeln!(std::io::stdout().lock(), "{answer}");
            }
        }
        Err(Failure::Before) => hand_over(&Handover::Event { agent, payload, tried: None }),
        // Nothing was sent; `ccm hook` writes the database at once instead of looking again.
        Err(Failure::NotRunning) => hand_over(&Handover::Event {
            agent,
            payload,
            tried: Some((key, "no port file, the daemon is not running (seen by ccm-hook)".into())),
        }),
        Err(Failure::Daemon(reason)) => {
            hand_over(&Handover::Event { agent, payload, tried: Some((key, reason)) })
        }
    }
}

/// What the arguments say.
#[derive(Debug, PartialEq)]
struct Arguments<'a> {
    /// `--agent`'s value.
    agent: Option<&'a str>,
    /// The last positional argument (Codex's `notify` passes the event so).
    payload: Option<&'a str>,
}

/// The arguments, or `None` for any option but `--agent`. As with `ccm hook`, everything from
/// the first positional argument on is positional.
fn parse_args(args: &[String]) -> Option<Arguments<'_>> {
    let mut agent = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--agent" {
            agent = Some(rest.next()?.as_str());
        } else if let Some(value) = arg.strip_prefix("--agent=") {
            agent = Some(value);
        } else if arg.starts_with('-') {
            return None;
        } else {
            return Some(Arguments { agent, payload: Some(rest.next_back().unwrap_or(arg)) });
        }
    }
    Some(Arguments { agent, payload: None })
}

/// Why the daemon's path did not give an answer.
enum Failure {
    /// Nothing was sent: no home or token (`ccm hook` says which).
    Before,
    /// Nothing was sent: no port file, so no daemon runs.
    NotRunning,
    /// The event was sent, or sending it failed: it may be stored under its key.
    Daemon(String),
}

/// Posts the payload under `key` and returns the daemon's decision (`None` for `{}`).
fn post(
    system: Option<System>,
    payload: &[u8],
    key: Uuid,
) -> Result<Option<serde_json::Value>, Failure> {
    let home = Home::locate().map_err(|_| Failure::Before)?;
    let daemon = home.read_daemon_info().ok_or(Failure::NotRunning)?;
    let token = home.read_auth().map_err(|_| Failure::Before)?.token;
    let addr: SocketAddr = daemon.addr.parse().map_err(|_| Failure::Before)?;
    // A value hyper would refuse as a header is left to `ccm hook`, which reports it.
    let agent_token = std::env::var("CCM_AGENT_TOKEN").ok();
    if agent_token.as_deref().is_some_and(|t| t.bytes().any(|b| b.is_ascii_control())) {
        return Err(Failure::Before);
    }
    let started = Instant::now();
    let wait = super::daemon_wait(&daemon, || HookEvent::parse(system, payload).kind.is_gate());

    let mut request = format!("POST /api/hooks?key={key}");
    if let Some(system) = system {
        request.push_str("&system=");
        request.push_str(system.as_str());
    }
    request.push_str(&format!(
        " HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        payload.len()
    ));
    if let Some(agent_token) = agent_token {
        request.push_str(&format!("X-Ccm-Agent-Token: {agent_token}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(payload);

    let failed =
        |what: &'static str| move |e: std::io::Error| Failure::Daemon(format!("{what}: {e}"));
    let mut stream = connect(daemon.socket.as_deref(), addr).map_err(failed("cannot connect"))?;
    stream.write_all(&bytes).map_err(failed("cannot send the event"))?;

    let no_answer = || Failure::Daemon(format!("no answer within {}s", wait.as_secs_f32()));
    let mut received = Vec::with_capacity(1024);
    loop {
        let left = wait.checked_sub(started.elapsed()).filter(|d| !d.is_zero());
        stream.set_read_timeout(Some(left.ok_or_else(no_answer)?)).map_err(failed("socket"))?;
        let mut chunk = [0u8; 4096];
        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(no_answer())
            }
            Err(e) => return Err(failed("cannot read the answer")(e)),
        };
        received.extend_from_slice(&chunk[..read]);
        if let Answer::Complete(decision) = answer(&received, read == 0)? {
            return Ok(decision);
        }
    }
}

/// A connection to the daemon: its Unix socket when it has one, else (or when that refuses)
/// TCP.
fn connect(socket: Option<&Path>, addr: SocketAddr) -> std::io::Result<Socket> {
    if let Some(path) = socket {
        let unix = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        if unix.connect_timeout(&SockAddr::unix(path)?, super::CONNECT_TIMEOUT).is_ok() {
            return Ok(unix);
        }
    }
    let tcp = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    tcp.connect_timeout(&addr.into(), super::CONNECT_TIMEOUT)?;
    tcp.set_tcp_nodelay(true)?;
    Ok(tcp)
}

/// What the bytes received so far hold.
enum Answer {
    /// Not all of the answer yet.
    Partial,
    /// The daemon's decision (`None` for `{}`).
    Complete(Option<serde_json::Value>),
}

/// Reads the daemon's answer from the bytes received so far (`closed`: no more will come).
fn answer(received: &[u8], closed: bool) -> Result<Answer, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let incomplete = || Failure::Daemon("the daemon closed the connection mid-answer".into());
    let head = match response.parse(received) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if closed => return Err(incomplete()),
        Ok(httparse::Status::Partial) => return Ok(Answer::Partial),
        Err(e) => return Err(Failure::Daemon(format!("malformed answer: {e}"))),
    };
    let status = response.code.unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(Failure::Daemon(format!("the daemon answered {status}")));
    }
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    let body = &received[head..];
    let body = match length {
        Some(length) if body.len() >= length => &body[..length],
        None if closed => body,
        _ if closed => return Err(incomplete()),
        _ => return Ok(Answer::Partial),
    };
    let decision: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Daemon(format!("the daemon's answer is not JSON: {e}")))?;
    Ok(Answer::Complete(decision.as_object().is_some_and(|o| !o.is_empty()).then_some(decision)))
}

/// What `ccm hook` is given.
enum Handover<'a> {
    /// This process's own arguments, stdin not read.
    Arguments(Vec<std::ffi::OsString>),
    /// The event read, and, when it was posted, its key and why the daemon did not take it.
    Event { agent: Option<&'a str>, payload: Vec<u8>, tried: Option<(Uuid, String)> },
}

/// Bytes a pipe holds without a reader (Linux's default capacity).
const PIPE_CAPACITY: usize = 64 * 1024;

/// Runs `ccm hook` with the event, its stdout and stderr this process's own.
fn hand_over(handover: &Handover) {
    let ccm = std::env::current_exe()
        .map(|exe| exe.with_file_name("ccm"))
        .ok()
        .filter(|ccm| ccm.is_file())
        .unwrap_or_else(|| "ccm".into());
    let mut command = Command::new(&ccm);
    command.arg("hook");
    let payload = match handover {
        Handover::Arguments(args) => {
            command.args(args);
            None
        }
        Handover::Event { agent, payload, tried } => {
            if let Some(agent) = agent {
                command.args(["--agent", agent]);
            }
            if let Some((key, reason)) = tried {
                command.arg(format!("--key={key}")).arg(format!("--daemon-failed={reason}"));
            }
            command.stdin(Stdio::piped());
            Some(payload)
        }
    };
    // An event that fits in a pipe's buffer is written there before this process becomes
    // `ccm hook` (exec): the agent then waits for one process, not for two.
    if let Some(small) = payload.filter(|p| p.len() <= PIPE_CAPACITY) {
        if let Ok((reader, mut writer)) = std::io::pipe() {
            // Never blocks: a pipe smaller than usual (the user's pipe pages are used up) takes
            // the spawn below instead.
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl(2) on a descriptor this function owns.
            let nonblocking = unsafe {
                let fd = writer.as_raw_fd();
                libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK)
            } == 0;
            if nonblocking && writer.write_all(small).is_ok() {
                drop(writer);
                command.stdin(reader);
                // Returns only when the exec failed; the spawn below fails the same way.
                let _ = std::os::unix::process::CommandExt::exec(&mut command);
                command.stdin(Stdio::piped());
            }
        }
    }
    let run = command.spawn().and_then(|mut child| {
        if let (Some(payload), Some(mut stdin)) = (payload, child.stdin.take()) {
            // `ccm hook` reads all of it; a failed write shows in what it stores.
            let _ = stdin.write_all(payload);
        }
        child.wait()
    });
    let Err(error) = run else { return };
    let problem = format!("cannot run `{} hook` ({error})", ccm.display());
    let home = Home::locate();
    let spooled = match (handover, &home) {
        (Handover::Event { agent, payload, tried }, Ok(home)) => {
            spool(home, *agent, payload, tried)
        }
        _ => Err("no event read or no home".into()),
    };
    let (line, lost) = match spooled {
        Ok(()) => (format!("ccm-hook: {problem}; spooled the event for the daemon"), false),
        Err(why) => {
            let line = format!("ccm-hook: {problem}; cannot spool it either ({why})");
            (format!("{line}: the event is not stored"), true)
        }
    };
    let logged = home.as_ref().is_ok_and(|home| super::command::log(home.root(), &line).is_ok());
    if lost || !logged {
        eprintln!("{line}");
    }
}

/// Writes the event to the spool, which the daemon ingests once it runs: what `ccm-hook` does
/// when `ccm hook` cannot be run.
fn spool(
    home: &Home,
    agent: Option<&str>,
    payload: &[u8],
    tried: &Option<(Uuid, String)>,
) -> Result<(), String> {
    let system = agent.and_then(|a| a.parse::<System>().ok());
    let entry = super::spool::Entry {
        key: tried.as_ref().map_or_else(Uuid::now_v7, |(key, _)| *key).to_string(),
        origin: crate::store::Origin { agent_token: std::env::var("CCM_AGENT_TOKEN").ok() },
        received_at: ccm_schema::Timestamp::now(),
        event: HookEvent::parse(system, payload),
    };
    super::spool::write(home.root(), &entry).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn arguments_give_the_agent_and_the_last_positional_payload() {
        let given = |agent, payload| Some(Arguments { agent, payload });
        let cases: [(&[&str], Option<Arguments>); 7] = [
            (&[], given(None, None)),
            (&["--agent", "claude"], given(Some("claude"), None)),
            (&["--agent=codex", "{}"], given(Some("codex"), Some("{}"))),
            (
                &["--agent", "codex", "a", "--x", "{\"b\":1}"],
                given(Some("codex"), Some("{\"b\":1}")),
            ),
            (&["--agent"], None),
            (&["--help"], None),
            (&["--key", "k"], None),
        ];
        for (list, expected) in cases {
            let list = args(list);
            assert_eq!(parse_args(&list), expected, "{list:?}");
        }
    }

    #[test]
    fn an_answer_is_read_once_complete_and_refused_when_not_a_success() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(matches!(answer(ok, false), Ok(Answer::Complete(None))));
        assert!(matches!(answer(&ok[..ok.len() - 1], false), Ok(Answer::Partial)));
        assert!(matches!(answer(&ok[..ok.len() - 1], true), Err(Failure::Daemon(_))));
        let decision = b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\n{\"decision\":\"x\"}\n";
        let Ok(Answer::Complete(Some(value))) = answer(&decision[..], false) else {
            panic!("no decision")
        };
        assert_eq!(value, serde_json::json!({"decision": "x"}));
        let refused = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        let Err(Failure::Daemon(reason)) = answer(refused, false) else { panic!("accepted") };
        assert_eq!(reason, "the daemon answered 401");
    }
}
