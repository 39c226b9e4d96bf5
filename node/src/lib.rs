//! The ccm node: the daemon, the `ccm` command, the local HTTP API and the local store.
//!
//! - [`cli`]: the `ccm` command: arguments, a module per verb group, the daemon-or-store backend.
//! - [`daemon`]: `ccm up`: the axum API, its guards, the scheduler, metrics, shutdown.
//! - [`dashboard`]: the web dashboard (profile `full`): pages, sign-in, live updates.
//! - [`store`]: the SQLite store: tasks, log, dependencies, contexts, alerts, decisions, outbox.
//! - [`runtime`]: the agent runtime: worktrees, agents in tmux, verification, reports,
//!   supervisory review, retries, leases, adoption after a restart.
//! - [`agents`]: agent profiles (argv templates) and parsers of the agents' output.
//! - [`hooks`]: hook events from the agent CLIs, parsed leniently, and the answers to them;
//!   installing ccm's hooks into the CLIs' project settings.
//! - [`tmux`]: ccm's own tmux server, one window per agent.
//! - [`fs`]: writing a file atomically (the one helper for it).
//! - [`text`]: cutting text to size (heads, tails, previews for logs).
//! - [`background`]: background work (prediction's git, digests) at a lower CPU priority.
//! - [`worktree`]: a git worktree per task, and cleanup that never loses work.
//! - [`conflicts`]: conflict prediction between the active tasks of a repository (here and on
//!   other systems), the land order it implies, a task's diff against its target.
//! - [`land`]: landing finished tasks on their target branch through one queue per repository
//!   and target (the daemon's `Lander`, `ccm land`); [`review`]: line comments on a finished
//!   task's diff and "request changes" (`ccm task review`, the API, the dashboard).
//! - [`config`]: layered configuration, validated at load.
//! - [`home`]: the global home (`~/.ccm-global`, `CCM_HOME`) and its files (token, port file).
//! - [`client`]: the CLI's client of a running daemon.
//! - [`placement`]: where a new task runs (here or routed to the fleet), for the CLI, the API
//!   and the dashboard alike.
//! - [`status`]: what `status` and `dump-state` show.
//! - [`sync`]: `ccm sync ...` and the daemon's sync task (config, `auth.json`, `ccm-sync`).
//! - [`doctor`]: `ccm doctor`'s checks.
//! - [`supervisors`]: scheduled supervisors: headless agents reviewing a scope's recent work.
//! - [`watchdog`]: the daemon watching its own loops (systemd's watchdog, `loop_stalled`,
//!   `daemon_restarted`).
//! - [`retention`]: bounded storage: the daemon's retention pass, janitor and scheduled
//!   backup; [`janitor`]: what ended tasks left in repositories (branches, worktrees).
//! - [`mcp`]: `ccm mcp`, the MCP server the agents call (sub-tasks, locks, allocations), which
//!   speaks to the daemon as the calling agent; [`split`]: the deterministic splitting of
//!   `ccm task add --split`.
//! - [`fleet`]: coordination across systems through the central: `fleet` named locks (a
//!   central lease and its fencing token, renewed by the daemon's `FleetLocks` loop) and the
//!   central's allocators of named sequences.
//! - [`routing`]: the node's side of routing across systems (origin, executor, fencing).
//! - [`accounts`]: usage limits shared with the other systems of an account (the daemon's
//!   loop reporting and reading them through the central).
//! - [`notify`]: notifiers (Telegram, ntfy, Slack, webhooks) with durable delivery, health
//!   alerts, `ccm service`.
//!
//! This is the only crate that knows HTTP, the CLI, tmux and git; it glues `ccm-schema`
//! (types, state machine, migrations) and `ccm-sync` together.

pub mod accounts;
pub mod agents;
pub mod background;
pub mod cli;
pub mod client;
pub mod config;
pub mod conflicts;
pub mod daemon;
pub mod dashboard;
pub mod doctor;
pub mod fleet;
pub mod fs;
pub mod home;
pub mod hooks;
pub mod janitor;
pub mod land;
pub mod mcp;
pub mod notify;
pub mod placement;
pub mod retention;
pub mod review;
pub mod routing;
pub mod runtime;
pub mod split;
pub mod status;
pub mod store;
pub mod supervisors;
pub mod sync;
pub mod text;
pub mod tmux;
pub mod watchdog;
pub mod worktree;
