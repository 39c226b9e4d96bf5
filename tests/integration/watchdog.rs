//! The watchdog (issue 25): the daemon's loops report liveness; systemd's watchdog is fed
//! (`READY=1`, `WATCHDOG=1` on a real Unix datagram socket as `NOTIFY_SOCKET`) only while every
//! loop makes progress; a stalled loop (the test fault switch `POST /api/test/stall`, present
//! only with `CCM_TEST_FAULTS`) stops the feed, raises `loop_stalled`, and the next daemon says
//! `daemon_restarted` naming the loop.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccm_tests::{wait_until, Daemon, TestHome};
use serde_json::{json, Value};

/// A service manager's notification socket: every datagram received, in order.
struct NotifySocket {
    path: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("notify socket binds");
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    into.lock().unwrap().extend(text.lines().map(str::to_string));
                }
            }
        });
        NotifySocket { path, received, stop }
    }

    fn lines(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    /// Waits for a line starting with `prefix`; its index.
    async fn wait_for(&self, prefix: &str) -> usize {
        let mut found = None;
        let seen = wait_until(Duration::from_secs(30), || {
            found = self.lines().iter().position(|l| l.starts_with(prefix));
            std::future::ready(found.is_some())
        })
        .await;
        assert!(seen, "no `{prefix}` on the notify socket: {:?}", self.lines());
        found.unwrap()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn open_alert(daemon: &Daemon, reason: &str, naming: &str) -> Option<Value> {
    let (_, alerts) = daemon.get("/api/alerts").await;
    alerts
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| {
            a["reason"] == reason && a["message"].as_str().is_some_and(|m| m.contains(naming))
        })
        .cloned()
}

async fn wait_for_alert(daemon: &Daemon, reason: &str, naming: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = open_alert(daemon, reason, naming).await {
            return found;
        }
        if std::time::Instant::now() > deadline {
            let (_, alerts) = daemon.get("/api/alerts").await;
            panic!("no open `{reason}` alert naming `{naming}`: {alerts}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn loop_named<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["loops"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no loop `{name}` in {status}"))
}

/// Acceptance 3: the unit `ccm service install` writes uses systemd's watchdog (and
/// `systemd-analyze verify` accepts it); the daemon says `READY=1` and feeds `WATCHDOG=1`;
/// `ccm status` and `/metrics` show each loop's last progress; a stalled runtime loop stops the
/// feed and raises a critical `loop_stalled` alert; after the kill the unit's `WatchdogSec`
/// would make, the restarted daemon raises `daemon_restarted` naming the runtime loop.
#[tokio::test]
async fn a_stalled_runtime_loop_stops_the_watchdog_feed_and_the_restart_names_it() {
    let home = TestHome::new("watchdog");

    // The unit: Type=notify with a watchdog, accepted by systemd.
    let units = home.dir.path().join("units");
    let out = home
        .ccm()
        .env("CCM_SERVICE_DIR", &units)
        .args(["service", "install", "--no-start"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit_file = units.join("ccm.service");
    let unit = std::fs::read_to_string(&unit_file).unwrap();
    for line in ["Type=notify", "NotifyAccess=main", "WatchdogSec=60s", "Restart=on-failure"] {
        assert!(unit.lines().any(|l| l == line), "`{line}` in the unit:\n{unit}");
    }
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && !said.contains("ccm.service:"), "systemd-analyze: {said}");

    // The daemon under a (stand-in) service manager: a 400 ms watchdog, stalls after 1 s.
    let socket = NotifySocket::bind(home.dir.path());
    let mut daemon = home.start_with(|c| {
        c.env("NOTIFY_SOCKET", &socket.path)
            .env("WATCHDOG_USEC", "400000")
            .env("CCM_DAEMON__STALL_SECS", "1")
            .env("CCM_TEST_FAULTS", "1");
    });
    socket.wait_for("READY=1").await;
    socket.wait_for("WATCHDOG=1").await;

    // Each loop's last progress, in `ccm status` and `/metrics`.
    let status = home.run_json(&["status"]);
    for name in ["scheduler", "runtime", "notify"] {
        let each = loop_named(&status, name);
        assert_eq!(each["stalled"], false, "{each}");
    }
    assert!(loop_named(&status, "runtime")["last_progress"].is_string(), "{status}");
    let text = home.run_ok(&["status"]);
    assert!(text.contains("loop    runtime: "), "{text}");
    let metrics = reqwest::get(daemon.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ccm_loop_last_progress_seconds{loop=\"runtime\"}"), "{metrics}");
    assert!(metrics.contains("ccm_loop_stalled{loop=\"runtime\"} 0"), "{metrics}");

    // An unknown loop is refused by name.
    let (code, body) = daemon.post("/api/test/stall", json!({ "loop": "nope" })).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.to_string().contains("no loop named `nope`"), "{body}");

    // The runtime loop stalls: a critical alert, the service manager told why, the feed stops.
    let (code, body) = daemon.post("/api/test/stall", json!({ "loop": "runtime" })).await;
    assert_eq!(code, 200, "{body}");
    let alert = wait_for_alert(&daemon, "loop_stalled", "runtime loop").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    let told = socket.wait_for("STATUS=the runtime loop stalled").await;
    // Seven feed periods later, nothing was fed since.
    tokio::time::sleep(Duration::from_millis(1_400)).await;
    let after: Vec<String> = socket.lines()[told..].to_vec();
    assert!(!after.iter().any(|l| l == "WATCHDOG=1"), "fed after the stall: {after:?}");
    let status = home.run_json(&["status"]);
    assert_eq!(loop_named(&status, "runtime")["stalled"], true, "{status}");
    assert_eq!(loop_named(&status, "scheduler")["stalled"], false, "{status}");
    let metrics = reqwest::get(daemon.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ccm_loop_stalled{loop=\"runtime\"} 1"), "{metrics}");

    // systemd kills it after WatchdogSec; the next daemon names the loop that stalled.
    daemon.kill9();
    let daemon = home.start();
    let restarted = wait_for_alert(&daemon, "daemon_restarted", "runtime loop stalled").await;
    assert_eq!(restarted["severity"], "critical", "{restarted}");
    assert!(open_alert(&daemon, "loop_stalled", "runtime").await.is_none(), "a new loop runs");
    assert!(open_alert(&daemon, "daemon_crashed", "").await.is_none(), "said once, by name");
}

/// Without a service manager a stalled loop still raises a critical alert; with
/// `daemon.watchdog_exit` (the launchd agent's setting) the daemon exits by itself so that
/// `KeepAlive` restarts it, and the restart names the loop.
#[tokio::test]
async fn without_systemd_a_stalled_loop_raises_an_alert_and_watchdog_exit_restarts_the_daemon() {
    let home = TestHome::new("watchdog-exit");
    let faults = |c: &mut std::process::Command| {
        c.env("CCM_DAEMON__STALL_SECS", "1").env("CCM_TEST_FAULTS", "1");
    };
    let mut daemon = home.start_with(faults);
    let (code, body) = daemon.post("/api/test/stall", json!({ "loop": "scheduler" })).await;
    assert_eq!(code, 200, "{body}");
    let alert = wait_for_alert(&daemon, "loop_stalled", "scheduler loop").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(daemon.child.try_wait().unwrap().is_none(), "without watchdog_exit it keeps running");
    daemon.kill9();

    let mut daemon = home.start_with(|c| {
        faults(c);
        c.env("CCM_DAEMON__WATCHDOG_EXIT", "true");
    });
    let (code, body) = daemon.post("/api/test/stall", json!({ "loop": "runtime" })).await;
    assert_eq!(code, 200, "{body}");
    let mut exited = None;
    let child = &mut daemon.child;
    wait_until(Duration::from_secs(30), || {
        exited = child.try_wait().unwrap();
        std::future::ready(exited.is_some())
    })
    .await;
    assert_eq!(exited.and_then(|s| s.code()), Some(70), "exits by itself: {}", daemon.log_text());

    let daemon = home.start();
    wait_for_alert(&daemon, "daemon_restarted", "runtime loop stalled").await;
    assert!(open_alert(&daemon, "loop_stalled", "scheduler").await.is_none(), "resolved");
}
