//! Hook events: what the agent CLIs (Claude Code, Gemini CLI, Codex) report while they work.
//!
//! - [`event`]: one event as ccm understands it, parsed leniently from any bytes, and the
//!   allow/deny answer in the sending CLI's own output format.
//! - [`install`]: installing, removing and checking ccm's hooks in each CLI's project settings.
//! - [`command`]: `ccm hook`: the daemon, else SQLite directly, else the spool; always exit 0.
//! - [`gate`]: strict file ownership and approval rules: what a tool call is answered.
//! - [`spool`]: events stored as files while the database was busy, ingested by the daemon.

pub mod command;
pub mod event;
pub mod gate;
pub mod install;
pub mod spool;

/// The command ccm's hooks run: this very binary (its absolute path), or `ccm` when the path
/// cannot be known.
pub fn ccm_command() -> String {
    std::env::current_exe().map_or_else(|_| "ccm".into(), |p| p.to_string_lossy().into_owned())
}
