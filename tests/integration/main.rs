//! ccm's integration tests: the real binary, a real daemon on `127.0.0.1:0`, real SQLite
//! files and real git repositories in temporary directories.

mod api;
mod config;
mod dashboard;
mod durability;
mod hooks;
mod init;
mod runtime;
mod tasks;
