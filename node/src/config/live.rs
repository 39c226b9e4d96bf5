//! The daemon's configuration, read again when a file it came from changes.
//!
//! [`LiveConfig::current`] looks at the global `config.yaml` (and the project file the daemon
//! started with, if any) on every call: one `stat` each. When one changed it loads every layer
//! again. What can change while the daemon runs (profiles, workflows, approvals, allowed tools,
//! ownership, worktree settings, task defaults and retries, slots, runtime timings) applies to
//! the next use. What the daemon set up once at start ([`RESTART_ONLY`]: the listener, the
//! tmux server, sync and the notifiers) keeps its value, and [`ConfigStatus::restart_needed`]
//! names the keys whose new value waits for a restart. A file that no longer loads leaves the
//! last good configuration in use, and [`ConfigStatus::invalid`] says why; the daemon raises an
//! alert for both (`daemon::watch_config`) and answers them on `GET /api/config`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use super::Config;

/// The sections (or `section.key`s) the daemon reads only at start.
pub const RESTART_ONLY: &[&str] = &[
    "node",
    "daemon",
    "sync",
    "notify",
    "runtime.tmux_socket",
    "runtime.poll_ms",
    "scheduler.tick_ms",
];

/// A cheap-to-clone handle on the daemon's configuration.
#[derive(Clone)]
pub struct LiveConfig(Arc<Inner>);

struct Inner {
    /// The home whose `config.yaml` is the global layer.
    home: PathBuf,
    /// The project whose `.ccm/config.yaml` the daemon started with (`ccm up` in a project).
    project: Option<PathBuf>,
    /// The configuration the daemon started with: the source of the restart-only settings.
    started: Arc<Config>,
    state: Mutex<State>,
}

struct State {
    /// The files as they were when last read.
    stamps: Vec<Option<Stamp>>,
    /// The configuration in use.
    current: Arc<Config>,
    status: ConfigStatus,
}

/// What the files say that the daemon does not use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ConfigStatus {
    /// Why the files as they are now do not load (the last good configuration is in use).
    pub invalid: Option<String>,
    /// Keys whose value in the files differs from the one the daemon started with, and which
    /// take effect only when it restarts (`daemon.port`, ...).
    pub restart_needed: Vec<String>,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl LiveConfig {
    /// The configuration `config`, loaded from `home` (and `project`) at start.
    pub fn new(home: &Path, project: Option<&Path>, config: Config) -> LiveConfig {
        let config = Arc::new(config);
        let inner = Inner {
            home: home.to_path_buf(),
            project: project.map(Path::to_path_buf),
            started: config.clone(),
            state: Mutex::new(State {
                stamps: Vec::new(),
                current: config,
                status: ConfigStatus::default(),
            }),
        };
        let live = LiveConfig(Arc::new(inner));
        // The files as they are now are the ones just loaded.
        live.lock().stamps = live.stamps();
        live
    }

    /// The configuration in use, read again first when a file changed since the last call.
    pub fn current(&self) -> Arc<Config> {
        let stamps = self.stamps();
        {
            let state = self.lock();
            if state.stamps == stamps {
                return state.current.clone();
            }
        }
        // Loaded outside the lock; two callers that both saw the change load it twice.
        let loaded = Config::load(&self.0.home, self.0.project.as_deref());
        let mut state = self.lock();
        state.stamps = stamps;
        match loaded {
            Ok(config) => {
                let (config, restart_needed) = keep_restart_only(&self.0.started, config);
                if restart_needed.is_empty() {
                    tracing::info!("configuration reloaded");
                } else {
                    tracing::warn!(keys = %restart_needed.join(", "), "configuration reloaded; some keys need a restart");
                }
                state.current = Arc::new(config);
                state.status = ConfigStatus { invalid: None, restart_needed };
            }
            Err(error) => {
                tracing::warn!(%error, "the changed configuration does not load; keeping the last good one");
                state.status.invalid = Some(error.to_string());
            }
        }
        state.current.clone()
    }

    /// What the files say that the daemon does not use (after reading them again if they
    /// changed).
    pub fn status(&self) -> ConfigStatus {
        self.current();
        self.lock().status.clone()
    }

    /// The global configuration file.
    pub fn file(&self) -> PathBuf {
        self.0.home.join("config.yaml")
    }

    fn files(&self) -> Vec<PathBuf> {
        std::iter::once(self.file())
            .chain(self.0.project.as_ref().map(|p| p.join(".ccm").join("config.yaml")))
            .collect()
    }

    fn stamps(&self) -> Vec<Option<Stamp>> {
        self.files()
            .iter()
            .map(|file| {
                std::fs::metadata(file).ok().map(|m| Stamp {
                    inode: m.ino(),
                    len: m.len(),
                    modified: (m.mtime(), m.mtime_nsec()),
                    changed: (m.ctime(), m.ctime_nsec()),
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `loaded` with the restart-only settings of `started`, and the keys where they differ.
fn keep_restart_only(started: &Config, mut loaded: Config) -> (Config, Vec<String>) {
    let mut changed = Vec::new();
    let was = serde_json::to_value(started).unwrap_or_default();
    let now = serde_json::to_value(&loaded).unwrap_or_default();
    for key in RESTART_ONLY {
        let pointer = format!("/{}", key.replace('.', "/"));
        let (before, after) = (was.pointer(&pointer), now.pointer(&pointer));
        match (before, after) {
            (Some(serde_json::Value::Object(before)), Some(serde_json::Value::Object(after))) => {
                let names = before.keys().chain(after.keys().filter(|k| !before.contains_key(*k)));
                for name in names {
                    if before.get(name) != after.get(name) {
                        changed.push(format!("{key}.{name}"));
                    }
                }
            }
            (before, after) if before != after => changed.push((*key).to_string()),
            _ => {}
        }
    }
    loaded.node.clone_from(&started.node);
    loaded.daemon.clone_from(&started.daemon);
    loaded.sync.clone_from(&started.sync);
    loaded.notify.clone_from(&started.notify);
    loaded.runtime.tmux_socket.clone_from(&started.runtime.tmux_socket);
    loaded.runtime.poll_ms = started.runtime.poll_ms;
    loaded.scheduler.tick_ms = started.scheduler.tick_ms;
    (loaded, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_good() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join("config.yaml");
        std::fs::write(&file, "scheduler:\n  slots: 2\n").unwrap();
        let live = LiveConfig::new(home.path(), None, Config::load(home.path(), None).unwrap());
        assert_eq!(live.current().scheduler.slots, 2);

        std::fs::write(&file, "scheduler:\n  slots: 5\ndaemon:\n  port: 9999\n").unwrap();
        let config = live.current();
        assert_eq!(config.scheduler.slots, 5, "a runtime setting applies");
        assert_eq!(config.daemon.port, 8765, "the listener keeps its port");
        assert_eq!(live.status().restart_needed, ["daemon.port"]);

        std::fs::write(&file, "scheduler: [broken\n").unwrap();
        assert_eq!(live.current().scheduler.slots, 5, "the last good configuration stays");
        let status = live.status();
        assert!(status.invalid.as_deref().is_some_and(|e| e.contains("config.yaml")), "{status:?}");
        assert_eq!(status.restart_needed, ["daemon.port"], "still waiting for a restart");

        std::fs::write(&file, "scheduler:\n  slots: 3\n").unwrap();
        assert_eq!(live.current().scheduler.slots, 3);
        assert_eq!(live.status(), ConfigStatus::default(), "back to what the daemon runs with");
    }
}
