//! Several nodes against one real central, for the routing tests and the routing benchmark:
//! each node a home, a daemon and a tmux server of its own, behind its own [`FaultProxy`], with
//! (or without) a git checkout cloned from one bare remote; the central PostgreSQL 15 with
//! postrust of [`Central`]. The agents are the scripted Claude Code of
//! `tests/fixtures/fake-claude.sh`.
//!
//! [`Clocks::Short`] shortens the lease, heartbeat and claim times in the central's settings and
//! the nodes' config, for tests; [`Clocks::Default`] leaves every routing setting at its
//! default, for the benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::central::Central;
use crate::faultproxy::FaultProxy;
use crate::{Daemon, TestHome};

/// The operator who owns every system of a fleet.
pub const OWNER: &str = "00000000-0000-4000-8000-00000000f0f0";
/// The central's lease with [`Clocks::Short`] (the default is 90 s).
pub const LEASE_S: u64 = 6;

/// The routing times of the central and the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clocks {
    /// Seconds instead of minutes: lease [`LEASE_S`], heartbeats every second, claims every
    /// 300 ms, no backoff.
    Short,
    /// The documented defaults of `private.routing_settings` and of the nodes' `sync:` section.
    Default,
}

/// How a node's agents behave and how many run at once.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The fixture's `FAKE_MODE` (`commit`, `slow`, ...).
    pub mode: &'static str,
    /// `scheduler.slots`.
    pub slots: u32,
    /// `FAKE_SLEEP`: how long a `slow` agent works, in seconds.
    pub sleep_s: u32,
    /// `FAKE_DELAY`: how long a `commit` agent waits before committing, in seconds.
    pub delay_s: u32,
}

impl NodeOptions {
    pub fn new(mode: &'static str) -> NodeOptions {
        NodeOptions { mode, slots: 2, sleep_s: 30, delay_s: 1 }
    }
}

/// The central, and the bare remote every checkout is cloned from.
pub struct Fleet {
    pub central: Central,
    pub clocks: Clocks,
    /// Holds the bare remotes.
    pub dir: tempfile::TempDir,
    /// The remote's URL (`file://...`), the repository of the routed tasks.
    pub remote: String,
}

impl Fleet {
    /// A fleet with [`Clocks::Short`].
    pub fn start() -> Fleet {
        Fleet::with_clocks(Clocks::Short)
    }

    pub fn with_clocks(clocks: Clocks) -> Fleet {
        let central = Central::start();
        if clocks == Clocks::Short {
            central.pg.query(&format!(
                "update private.routing_settings set lease_s = {LEASE_S}, heartbeat_s = 1, \
                 stale_after_s = 3, offer_s = 1, reap_interval_s = 0, backoff_base_s = 0, \
                 backoff_cap_s = 0, unroutable_alert_s = 1"
            ));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let seed = dir.path().join("seed");
        crate::git_repo(&seed, None);
        let bare = dir.path().join("app.git");
        git(
            dir.path(),
            &["clone", "-q", "--bare", &seed.to_string_lossy(), &bare.to_string_lossy()],
        );
        let remote = format!("file://{}", bare.display());
        Fleet { central, clocks, dir, remote }
    }

    /// A node named `name` (system number `n`) with two agent slots, a checkout of the remote
    /// when `checkout`, whose agents behave as `mode` (the fixture's `FAKE_MODE`).
    pub fn node(&self, n: u8, name: &str, checkout: bool, mode: &'static str) -> Node {
        self.node_with(n, name, checkout, &NodeOptions::new(mode))
    }

    /// A node as [`Fleet::node`], its agents and slots as `options` say; enrolled, its daemon
    /// not started yet.
    pub fn node_with(&self, n: u8, name: &str, checkout: bool, options: &NodeOptions) -> Node {
        self.node_extra(n, name, checkout, options, "", "")
    }

    /// A node as [`Fleet::node_with`], with more `profiles` (YAML lines under `profiles:`,
    /// indented by two) and more configuration (`extra`, top-level YAML).
    pub fn node_extra(
        &self,
        n: u8,
        name: &str,
        checkout: bool,
        options: &NodeOptions,
        profiles: &str,
        extra: &str,
    ) -> Node {
        let home = TestHome::new(&format!("route-{name}"));
        let proxy = FaultProxy::start(&self.central.rest_url(), "rpc/");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh");
        let NodeOptions { mode, slots, sleep_s, delay_s } = options;
        let mut config = format!(
            "node:\n  name: {name}\nscheduler:\n  slots: {slots}\n\
             profiles:\n  fake:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: {mode}, FAKE_SLEEP: '{sleep_s}', FAKE_DELAY: '{delay_s}'}}\n{profiles}\
             sync:\n  rest_url: {}\n  publishable_key: {}\n",
            fixture.display(),
            proxy.url(),
            self.central.anon_key()
        );
        if self.clocks == Clocks::Short {
            config.push_str(
                "  interval_secs: 2\n  heartbeat_secs: 1\n  claim_ms: 300\n  routed_status_ms: 300\n  fence_margin_secs: 2\n\
                 tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\n\
                 runtime:\n  poll_ms: 50\n",
            );
        }
        config.push_str(extra);
        home.write_config(&config);
        if checkout {
            let clone = home.work().join("app");
            git(&home.work(), &["clone", "-q", &self.remote, &clone.to_string_lossy()]);
            git(&clone, &["config", "user.email", "test@example.com"]);
            git(&clone, &["config", "user.name", "ccm test"]);
            home.run_ok(&["context", "add", &clone.to_string_lossy()]);
        }
        let sub = format!("00000000-0000-4000-8000-0000000000{n:02x}");
        let out =
            home.run_ok(&["sync", "enroll", "--jwt", &self.central.system_token(&sub, OWNER)]);
        assert!(out.contains("enrolled as"), "{out}");
        Node { home, daemon: None, proxy }
    }

    /// The central's row of a routed task (`Null` when the central has none).
    pub fn task(&self, id: &str) -> Value {
        let rows = self.central.pg.rows(&format!(
            "select t.state, t.reason, t.attempts, (select s.name from private.task_attempts a \
             join private.systems s using (system_id) where a.task_id = t.task_id \
             order by a.attempt desc limit 1) as executing \
             from private.routed_tasks t where t.task_id = '{id}'"
        ));
        rows.as_array().and_then(|r| r.first().cloned()).unwrap_or(Value::Null)
    }

    /// `(system name, fencing token, outcome)` of each attempt at the task.
    pub fn attempts(&self, id: &str) -> Vec<(String, i64, Option<String>)> {
        let rows = self.central.pg.rows(&format!(
            "select s.name, a.fencing_token, a.outcome from private.task_attempts a \
             join private.systems s using (system_id) where a.task_id = '{id}' order by a.attempt"
        ));
        rows.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r["fencing_token"].as_i64().unwrap_or_default(),
                    r["outcome"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    /// Whether the central holds a context of system `name` (its first heartbeat and context
    /// registration arrived).
    pub fn has_context(&self, name: &str) -> bool {
        let count = self.central.pg.query(&format!(
            "select count(*) from private.contexts join private.systems s using (system_id) \
             where s.name = '{name}'"
        ));
        count != "0"
    }
}

/// One node of a fleet: its home, its daemon once started, and the proxy in front of the
/// central, which records every request the node makes.
pub struct Node {
    pub home: TestHome,
    pub daemon: Option<Daemon>,
    pub proxy: FaultProxy,
}

impl Node {
    /// Starts the daemon.
    pub fn up(mut self) -> Node {
        self.daemon = Some(self.home.start());
        self
    }

    /// Starts the daemon after `configure` adjusted its command (extra environment, ...).
    pub fn up_with(mut self, configure: impl FnOnce(&TestHome, &mut Command)) -> Node {
        let daemon = self.home.start_with(|command| configure(&self.home, command));
        self.daemon = Some(daemon);
        self
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    /// `ccm task add --profile fake ARGS`; the id of the task (local or routed).
    pub fn add(&self, args: &[&str]) -> String {
        let mut all = vec!["task", "add", "--profile", "fake"];
        all.extend(args);
        self.home.run_json(&all)["id"].as_str().expect("an id").to_string()
    }

    /// Sends a task of profile `fake` for `repo` to the fleet through the API
    /// (`POST /api/routed`), pinned to `pin` if given; its id.
    pub async fn route(&self, title: &str, repo: &str, pin: Option<&str>) -> String {
        let body =
            json!({ "task": { "title": title, "repo": repo, "profile": "fake" }, "pin": pin });
        let (status, routed) = self.daemon().post("/api/routed", body).await;
        assert_eq!(status, 201, "{routed}");
        routed["id"].as_str().expect("a routed task id").to_string()
    }

    /// The local task with this id, if the node has one.
    pub async fn local(&self, id: &str) -> Option<Value> {
        let (status, task) = self.daemon().get(&format!("/api/tasks/{id}")).await;
        (status == 200).then_some(task)
    }

    /// The routed task as `ccm task show --json` shows it on its origin.
    pub fn routed(&self, id: &str) -> Value {
        self.home.run_json(&["task", "show", id])
    }

    pub fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log_text).unwrap_or_default()
    }

    /// The node's checkout of the fleet's repository (made by `checkout: true`).
    pub fn checkout(&self) -> PathBuf {
        let path = self.home.work().join("app");
        std::fs::canonicalize(&path).unwrap_or(path)
    }

    /// A task of the [`crate::HOLDER_PROFILE`] in the node's checkout (it runs here: the node
    /// has the checkout and, the caller makes sure, a free slot) and its agent's credential.
    pub async fn holder(&self) -> (String, String) {
        let repo = self.checkout().to_string_lossy().into_owned();
        let added =
            self.home.run_json(&["task", "add", "hold", "--repo", &repo, "--profile", "holder"]);
        let id = added["id"].as_str().expect("a task id").to_string();
        let token = self.daemon().agent_token(&id).await;
        (id, token)
    }

    /// Kills the daemon and every agent of this node with SIGKILL.
    pub fn crash(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill9();
        }
        let _ = Command::new("tmux").args(["-L", &self.home.tmux_socket(), "kill-server"]).output();
    }
}

/// `git -C DIR ARGS`, which must succeed.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Polls `probe` every 100 ms until it answers `Some`, panicking after `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
