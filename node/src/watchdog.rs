//! The monitor of the monitor: the daemon's long-lived loops (scheduler, runtime, sync lanes,
//! routing, notifiers) each mark their steps on a [`Beat`]; a thread of its own reads them.
//!
//! A loop is stalled when one step has lasted longer than `daemon.stall_secs` (a loop waiting
//! for work is never stalled). While no loop is stalled the thread feeds systemd's watchdog
//! (`WATCHDOG=1` on `NOTIFY_SOCKET`, every half of `WATCHDOG_USEC`); once one is, it stops
//! feeding (systemd restarts the daemon after `WatchdogSec`), writes the stall to
//! `watchdog.json` in the home (so the next daemon raises `daemon_restarted` naming the loop),
//! says it in `STATUS=`, raises a critical `loop_stalled` alert (the only sign without a
//! service manager), and with `daemon.watchdog_exit` (launchd's agent sets it) exits with
//! [`STALL_EXIT_CODE`] so that `KeepAlive` restarts it.
//!
//! The thread is a plain OS thread, so a tokio runtime whose workers are all blocked stops the
//! feed too (without the file: nothing in-process can be trusted then). At idle it wakes a few
//! times per `WatchdogSec` and reads a handful of atomics.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ccm_schema::{Severity, Timestamp};
use ccm_sync::liveness::{now_millis, Reading};
use ccm_sync::{Beat, Signals};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::home::Home;
use crate::store::Store;

/// The exit code of a daemon that stopped itself because a loop stalled
/// (`daemon.watchdog_exit`): EX_SOFTWARE.
pub const STALL_EXIT_CODE: i32 = 70;

/// The alert raised while a loop is stalled, keyed by the loop's name.
pub const STALLED_ALERT: &str = "loop_stalled";

/// The alert a daemon raises when the previous one was restarted because a loop stalled.
pub const RESTARTED_ALERT: &str = "daemon_restarted";

/// Every loop the watchdog watches, by name; loops are added while the daemon starts.
#[derive(Default)]
pub struct Loops {
    own: Mutex<Vec<(String, Arc<Beat>)>>,
    /// The sync driver's lanes and presence loop, when sync runs.
    sync: Mutex<Option<Arc<Signals>>>,
}

/// One loop as `ccm status` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopStatus {
    pub name: String,
    /// Inside a step now.
    pub busy: bool,
    /// When the current step began (busy) or the last one ended; `None`: no step yet.
    pub last_progress: Option<Timestamp>,
    /// Inside one step for longer than `daemon.stall_secs`.
    pub stalled: bool,
}

impl Loops {
    /// A new loop's beat.
    pub fn add(&self, name: impl Into<String>) -> Arc<Beat> {
        let beat = Arc::new(Beat::default());
        self.watch(name, beat.clone());
        beat
    }

    /// Watches a loop whose beat exists already.
    pub fn watch(&self, name: impl Into<String>, beat: Arc<Beat>) {
        self.own.lock().unwrap_or_else(PoisonError::into_inner).push((name.into(), beat));
    }

    /// Watches the sync driver's loops too.
    pub fn with_sync(&self, signals: Arc<Signals>) {
        *self.sync.lock().unwrap_or_else(PoisonError::into_inner) = Some(signals);
    }

    /// Calls `f` with each loop's name and beat.
    fn each(&self, mut f: impl FnMut(&str, &Beat)) {
        for (name, beat) in self.own.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            f(name, beat);
        }
        if let Some(signals) = &*self.sync.lock().unwrap_or_else(PoisonError::into_inner) {
            f("sync_urgent", &signals.lane_beats[ccm_sync::Lane::Urgent as usize]);
            f("sync_normal", &signals.lane_beats[ccm_sync::Lane::Normal as usize]);
            f("sync_presence", &signals.presence_beat);
            f("sync_calls", &signals.calls_beat);
        }
    }

    /// Every loop, now.
    pub fn status(&self, limit: Duration) -> Vec<LoopStatus> {
        let now = now_millis();
        let mut out = Vec::new();
        self.each(|name, beat| {
            let reading = beat.read();
            out.push(LoopStatus {
                name: name.to_string(),
                busy: reading.busy,
                last_progress: (reading.busy || reading.since > 0)
                    .then(|| Timestamp(Beat::wall_millis(reading.since))),
                stalled: reading.stalled(now, limit),
            });
        });
        out
    }

    /// The stalled loops and since when each is inside its step.
    fn stalled(&self, limit: Duration) -> Vec<(String, Reading)> {
        let now = now_millis();
        let mut out = Vec::new();
        self.each(|name, beat| {
            let reading = beat.read();
            if reading.stalled(now, limit) {
                out.push((name.to_string(), reading));
            }
        });
        out
    }

    /// The test fault switch: makes the named loop's next step hang. False for an unknown name.
    pub fn stall_for_test(&self, name: &str) -> bool {
        let mut found = false;
        self.each(|each, beat| {
            if each == name {
                beat.stall_for_test();
                found = true;
            }
        });
        found
    }
}

/// What `watchdog.json` records about a stall, for the next daemon.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stall {
    /// The loop that stalled (the first, when several did).
    #[serde(rename = "loop")]
    pub name: String,
    /// Every loop stalled at the time.
    pub loops: Vec<String>,
    pub pid: u32,
    /// When the stalled step began.
    pub since: Timestamp,
    pub limit_secs: u64,
}

/// The watchdog thread's settings and handles.
pub struct Watchdog {
    pub loops: Arc<Loops>,
    /// `daemon.stall_secs`.
    pub limit: Duration,
    /// `daemon.watchdog_exit`: exit when a loop stalls (launchd).
    pub exit: bool,
    pub home: Home,
    pub store: Store,
    /// Where the alerts are written (the daemon's async runtime).
    pub runtime: tokio::runtime::Handle,
}

impl Watchdog {
    /// Starts the thread; it runs as long as the process.
    pub fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new().name("ccm-watchdog".into()).spawn(move || self.run())?;
        Ok(())
    }

    fn run(self) {
        let feed = sd_notify::watchdog_enabled();
        let period = feed
            .map_or(self.limit / 4, |usec| (usec / 2).min(self.limit / 4))
            .max(Duration::from_millis(50));
        if let Some(usec) = feed {
            info!(every = ?period, watchdog = ?usec, "feeding the service manager's watchdog");
        }
        let mut shown: Vec<String> = Vec::new();
        loop {
            let stalled = self.stalled_now();
            let names: Vec<String> = stalled.iter().map(|(n, _)| n.clone()).collect();
            if stalled.is_empty() {
                if feed.is_some() {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            } else if names != shown {
                self.stalled(&stalled);
            }
            if names != shown {
                if names.is_empty() {
                    self.recovered();
                }
                self.settle_alerts(&stalled);
                shown = names;
            }
            std::thread::sleep(period);
        }
    }

    fn stalled_now(&self) -> Vec<(String, Reading)> {
        self.loops.stalled(self.limit)
    }

    /// A loop stalled: the stall is on disk before anything else (the next thing may be a kill).
    fn stalled(&self, stalled: &[(String, Reading)]) {
        let (name, reading) = &stalled[0];
        let stall = Stall {
            name: name.clone(),
            loops: stalled.iter().map(|(n, _)| n.clone()).collect(),
            pid: std::process::id(),
            since: Timestamp(Beat::wall_millis(reading.since)),
            limit_secs: self.limit.as_secs(),
        };
        if let Err(e) = write_stall(&self.home, &stall) {
            warn!(error = %e, "cannot record the stalled loop for the next daemon");
        }
        let words = stall_words(&stall);
        error!(loops = ?stall.loops, "{words}; the watchdog is no longer fed");
        notify(&[sd_notify::NotifyState::Status(&words)]);
        if self.exit {
            error!("daemon.watchdog_exit is set: exiting so that the service manager restarts it");
            std::process::exit(STALL_EXIT_CODE);
        }
    }

    fn recovered(&self) {
        let _ = std::fs::remove_file(self.home.watchdog_file());
        info!("every loop makes progress again; feeding the watchdog");
        notify(&[sd_notify::NotifyState::Status("every loop makes progress")]);
    }

    /// Raises `loop_stalled` per stalled loop and resolves the others, on the async runtime
    /// (which may be the stalled part: the file above does not depend on it).
    fn settle_alerts(&self, stalled: &[(String, Reading)]) {
        let store = self.store.clone();
        let limit = self.limit.as_secs();
        let raise: Vec<(String, String)> = stalled
            .iter()
            .map(|(name, reading)| {
                let since = Timestamp(Beat::wall_millis(reading.since));
                let message = format!(
                    "the daemon's {name} loop has been inside one step since {since}, longer \
                     than daemon.stall_secs ({limit} s); under systemd the watchdog restarts the \
                     daemon, otherwise restart it with `ccm stop --force` and `ccm up`; \
                     `ccm status` shows each loop's last progress"
                );
                (name.clone(), message)
            })
            .collect();
        self.runtime.spawn(async move {
            for (name, message) in &raise {
                if let Err(e) =
                    store.raise_health(Severity::Critical, STALLED_ALERT, name, message).await
                {
                    warn!(error = %e, loop_name = %name, "cannot raise the stalled loop's alert");
                }
            }
            let still: Vec<String> = raise.into_iter().map(|(n, _)| n).collect();
            if let Err(e) = store.settle_health(STALLED_ALERT, &still).await {
                warn!(error = %e, "cannot resolve the stalled loops' alerts");
            }
        });
    }
}

/// Tells the service manager `state` when there is one (`NOTIFY_SOCKET`); a failure is logged.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

fn stall_words(stall: &Stall) -> String {
    format!(
        "the {} loop stalled: inside one step since {}, longer than daemon.stall_secs ({} s)",
        stall.name, stall.since, stall.limit_secs
    )
}

fn write_stall(home: &Home, stall: &Stall) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(stall).map_err(std::io::Error::other)?;
    crate::fs::write_atomic(&home.watchdog_file(), &bytes, crate::fs::Mode::Private)
}

/// At start-up: a stall recorded by the previous daemon becomes a `daemon_restarted` alert
/// naming the loop (true when there was one: the previous run ended there, which explains a
/// port file left behind); stalled-loop alerts of earlier daemons are resolved (their loops are
/// new).
pub async fn note_restart(home: &Home, store: &Store) -> Result<bool, crate::store::StoreError> {
    store.settle_health(STALLED_ALERT, &[]).await?;
    let path = home.watchdog_file();
    let Some(stall) =
        std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<Stall>(&bytes).ok())
    else {
        let _ = std::fs::remove_file(&path);
        return Ok(false);
    };
    let also = if stall.loops.len() > 1 {
        format!(" (stalled with it: {})", stall.loops[1..].join(", "))
    } else {
        String::new()
    };
    let message = format!(
        "the daemon (pid {}) was restarted because its {} loop stalled{also}: inside one step \
         since {}, longer than daemon.stall_secs ({} s); look for the cause in \
         `journalctl --user -u ccm` or logs/daemon.log",
        stall.pid, stall.name, stall.since, stall.limit_secs
    );
    store.alert(None, Severity::Critical, RESTARTED_ALERT, &message).await?;
    let _ = std::fs::remove_file(&path);
    Ok(true)
}
