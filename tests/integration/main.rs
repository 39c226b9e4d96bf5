//! ccm's integration tests: the real binary, a real daemon on `127.0.0.1:0`, real SQLite
//! files and real git repositories in temporary directories.

mod accounts;
mod api;
mod central;
mod change_requests;
mod claude;
mod cli;
mod config;
mod conflicts;
mod context;
mod coordination;
mod dashboard;
mod dashboard_fleet;
mod durability;
mod fleet_coordination;
mod gemini_codex;
mod hardening;
mod hooks;
mod init;
mod land;
mod land_pr;
mod messages;
mod notify;
mod prompts;
mod retention;
mod review;
mod routing;
mod routing_central;
mod runtime;
mod startup;
mod supervisors;
mod sync;
mod sync_auth;
mod tasks;
mod watchdog;
mod worktree_hooks;
