//! Hook events: what the agent CLIs (Claude Code, Gemini CLI, Codex) report while they work.
//!
//! - [`event`]: one event as ccm understands it, parsed leniently from any bytes, and the
//!   allow/deny answer in the sending CLI's own output format.
//! - [`install`]: installing, removing and checking ccm's hooks in each CLI's project settings.
//! - [`command`]: `ccm hook`: the daemon, else SQLite directly, else the spool; always exit 0.
//! - [`fast`]: `ccm-hook`, the command the hooks run: the daemon's path in a small executable,
//!   handing everything else to `ccm hook`.
//! - [`gate`]: strict file ownership and approval rules: what a tool call is answered.
//! - [`shell`]: the simple commands of a shell command line and the files they obviously
//!   write, for the approval rules.
//! - [`spool`]: events stored as files while the database was busy, ingested by the daemon.

pub mod command;
pub mod event;
pub mod fast;
pub mod gate;
pub mod install;
pub mod shell;
pub mod spool;

use std::time::Duration;

use crate::home::DaemonInfo;

/// The program ccm's hooks run, before `--agent <cli>`: `ccm-hook` beside this very binary (by
/// its absolute path); else this binary's `hook` command, or `ccm hook` from PATH when this
/// binary's path cannot be known.
pub fn hook_program() -> Vec<String> {
    let Ok(exe) = std::env::current_exe() else { return vec!["ccm".into(), "hook".into()] };
    let hook = exe.with_file_name("ccm-hook");
    if hook.is_file() {
        vec![hook.to_string_lossy().into_owned()]
    } else {
        vec![exe.to_string_lossy().into_owned(), "hook".into()]
    }
}

/// How long connecting to the daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long an event no approval rule can hold waits for the daemon's answer.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(2);
/// How much longer than an approval rule's timeout a tool call waits for the daemon (which
/// answers the rule's default when the timeout passes).
pub const GATE_MARGIN_SECS: u64 = 5;

/// How long a hook waits for the daemon's answer: a tool call (`gate` says whether the event is
/// one; asked only when it matters) up to the daemon's approval timeout when it has approval
/// rules, anything else [`DAEMON_TIMEOUT`].
fn daemon_wait(daemon: &DaemonInfo, gate: impl FnOnce() -> bool) -> Duration {
    match daemon.gate_wait_secs {
        Some(secs) if gate() => Duration::from_secs(secs),
        _ => DAEMON_TIMEOUT,
    }
}
