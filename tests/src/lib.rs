//! Shared helpers of ccm's integration tests and benchmarks: the real `ccm` binary, run in a
//! temporary home, driven through its CLI, its HTTP API and its database file.
//!
//! - [`ccm_bin`]: builds (once) and locates the `ccm` binary of the current profile.
//! - [`TestHome`]: a temporary `CCM_HOME` (and working directory) named after the test.
//! - [`Daemon`]: a running `ccm up`, with an authenticated HTTP client.
//! - [`git_repo`]: a real git repository in a temporary directory.
//! - [`agent_cli`]: the real Claude Code, Gemini CLI or Codex, installed from npm at the versions
//!   `tests/agent-clis/package.json` pins.
//! - [`standin`]: scripted stand-ins of the model APIs the agent CLIs call.
//! - [`bench`]: numbers shared by the benchmarks.
//! - [`central`]: a real central (PostgreSQL 15 with `supabase/`, postrust in front), for the
//!   central schema's tests and the sync engine's.
//! - [`faultproxy`]: a fault-injecting HTTP proxy on loopback between a node and postrust.
//! - [`fleet`]: several nodes against one central, for routing across systems.
//! - [`browser`]: a real headless Chromium through WebDriver, for the dashboard.
//! - [`wait_until`]: polls a condition with a deadline, for state the scheduler reaches.
//! - [`HOLDER_PROFILE`] and [`Api::agent_token`]: an agent that only holds its task, whose
//!   hook credential a test uses to send events as that agent.

pub mod bench;
pub mod browser;
pub mod central;
pub mod faultproxy;
pub mod fleet;
pub mod standin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `ccm` binary of the profile these tests were built with, built once per test process
/// (with `ccm-hook` beside it, the program the hooks it installs run).
pub fn ccm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary knows its path");
        // target/<profile>/deps/<test-binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in target/<profile>/deps");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", "ccm-node", "--bins"]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the ccm binary failed");
        profile_dir.join("ccm")
    })
}

/// The real agent CLI `name` (`claude`, `gemini` or `codex`) at the version the tests cover,
/// installed once from the npm registry into `tests/agent-clis/` by its `install.sh`.
pub fn agent_cli(name: &str) -> PathBuf {
    static INSTALLED: OnceLock<PathBuf> = OnceLock::new();
    let dir = INSTALLED.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent-clis");
        let bin = dir.join("node_modules/.bin");
        // Written by install.sh once everything is in place (npm ci alone leaves a stub claude).
        if !dir.join("node_modules/.ccm-installed").exists() {
            let status = Command::new("sh")
                .arg(dir.join("install.sh"))
                .status()
                .expect("sh runs tests/agent-clis/install.sh (Node.js and npm are needed)");
            assert!(status.success(), "{}/install.sh failed", dir.display());
        }
        bin
    });
    let path = dir.join(name);
    assert!(path.exists(), "no agent CLI named {name} in {}", dir.display());
    path
}

/// A temporary ccm home and working directory, removed when dropped together with the
/// test's private tmux server.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl Drop for TestHome {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.tmux_socket(), "kill-server"]).output();
    }
}

impl TestHome {
    pub fn new(name: &str) -> TestHome {
        let dir =
            tempfile::Builder::new().prefix(&format!("ccm-{name}-")).tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("work")).expect("work dir");
        TestHome { dir }
    }

    /// The socket name of this test's private tmux server.
    pub fn tmux_socket(&self) -> String {
        let dir = self.dir.path().file_name().expect("temp dir has a name").to_string_lossy();
        format!("ccm-test-{dir}")
    }

    /// The agent windows of this test's tmux server, as `window_name` lines.
    pub fn agent_windows(&self) -> Vec<String> {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.tmux_socket(),
                "list-windows",
                "-a",
                "-F",
                "#{session_name}:#{window_name}",
            ])
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|w| *w != "ccm:ccm")
            .map(str::to_string)
            .collect()
    }

    /// Writes `~/.ccm-global/config.yaml`.
    pub fn write_config(&self, yaml: &str) {
        std::fs::create_dir_all(self.home()).expect("home dir");
        std::fs::write(self.home().join("config.yaml"), yaml).expect("config written");
    }

    /// The `CCM_HOME` directory.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A directory that is not a git repository, where commands run by default.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn db_file(&self) -> PathBuf {
        self.home().join("ccm.db")
    }

    /// `ccm` with this home, port 0 (any free port), no disk-space alerts and no other `CCM_*`
    /// variable.
    pub fn ccm(&self) -> Command {
        self.command(ccm_bin())
    }

    /// `ccm-hook`, the program installed hooks run, in this home's environment (see [`TestHome::ccm`]).
    pub fn ccm_hook(&self) -> Command {
        self.command(&ccm_bin().with_file_name("ccm-hook"))
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("CCM_")) {
            command.env_remove(name);
        }
        command
            .env("CCM_HOME", self.home())
            .env("CCM_DAEMON__PORT", "0")
            .env("CCM_LOG", "warn")
            // Tasks that name no profile are driven by the tests through the API.
            .env("CCM_TASKS__PROFILE", "manual")
            .env("CCM_RUNTIME__TMUX_SOCKET", self.tmux_socket())
            // A test machine's disk may be nearly full: no `disk_low` alert among the ones a
            // test counts (the test of that alert sets its own threshold).
            .env("CCM_NOTIFY__HEALTH__DISK_MIN_FREE_MB", "0")
            .env("CCM_NOTIFY__HEALTH__DISK_MIN_FREE_PERCENT", "0")
            .current_dir(self.work());
        command
    }

    /// [`TestHome::ccm`] run through `sh -c 'SETUP; exec ccm ...'`, for limits a process
    /// inherits (`umask 000`, `ulimit -n 256`).
    pub fn ccm_after(&self, setup: &str) -> Command {
        let ccm = self.ccm();
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!("{setup}; exec \"$0\" \"$@\"")).arg(ccm.get_program());
        for (name, value) in ccm.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        command.current_dir(self.work());
        command
    }

    /// Runs `ccm ARGS` and returns its output, whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.ccm().args(args).output().expect("ccm runs")
    }

    /// Runs `ccm ARGS`, panicking with its stderr unless it succeeds; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "ccm {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Runs `ccm ARGS --json` (ARGS must end where `--json` is accepted) and parses stdout.
    pub fn run_json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.run_ok(&args)).expect("ccm printed JSON")
    }

    /// Starts `ccm up` and waits until it answers.
    pub fn start(&self) -> Daemon {
        self.start_with(|_| {})
    }

    /// Starts `ccm up` after `configure` adjusted the command (extra environment, ...).
    pub fn start_with(&self, configure: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = self.ccm();
        configure(&mut command);
        self.start_command(command)
    }

    /// Starts `command` (a `ccm` command of this home) with `up`, and waits until it answers.
    pub fn start_command(&self, command: Command) -> Daemon {
        self.start_within(command, Duration::from_secs(20))
    }

    /// [`TestHome::start_command`], waiting up to `within` (a large store's integrity check at
    /// start-up, in a dev build).
    pub fn start_within(&self, mut command: Command, within: Duration) -> Daemon {
        let log_path = self.dir.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let log = std::fs::File::create(&log_path).expect("log file");
        command.arg("up").env("CCM_LOG", "info").stdout(Stdio::null()).stderr(log);
        let child = command.spawn().expect("ccm up starts");
        let pid = child.id();
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        // Owned by `Daemon` from here on, so its `Drop` kills the child on every path.
        let mut daemon = Daemon {
            child,
            log: log_path,
            api: Api { addr: String::new(), token: String::new(), http },
        };
        let deadline = Instant::now() + within;
        loop {
            if let Some(info) = std::fs::read_to_string(self.home().join("daemon.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            {
                if info["pid"].as_u64() == Some(u64::from(pid)) {
                    daemon.api.addr = info["addr"].as_str().expect("addr in port file").to_string();
                    let auth: Value = serde_json::from_str(
                        &std::fs::read_to_string(self.home().join("auth.json")).expect("auth.json"),
                    )
                    .expect("auth json");
                    daemon.api.token = auth["token"].as_str().expect("token").to_string();
                    return daemon;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not start: {}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Config of the agent profile `holder`: its agent writes its hook credential
/// (`CCM_AGENT_TOKEN`) to `token` in its directory and sleeps, so that a test can send hook
/// events as that agent (see [`Api::agent_token`]).
pub const HOLDER_PROFILE: &str = "profiles:\n  holder:\n    command: [sh, -c, 'printf %s \"$CCM_AGENT_TOKEN\" > \"$CCM_AGENT_DIR/token.tmp\" && mv \"$CCM_AGENT_DIR/token.tmp\" \"$CCM_AGENT_DIR/token\"; exec sleep 600']\n";

/// An authenticated client of a daemon's API; cheap to clone into spawned tasks.
#[derive(Clone)]
pub struct Api {
    /// `host:port` the daemon listens on.
    pub addr: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET` with the token; returns the status and the JSON body (`Null` when not JSON).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    /// The tools the task's agents called, in order, as its hooks saw them (`PreToolUse`), and
    /// the task's hook events they were read from.
    pub async fn tool_calls(&self, task: &str) -> (Vec<String>, Value) {
        let events = self.get(&format!("/api/tasks/{task}/events")).await.1;
        let tools = events
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["event"] == "PreToolUse")
            .filter_map(|e| e["tool"].as_str().map(str::to_string))
            .collect();
        (tools, events)
    }

    /// `POST` with the token and a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    /// A call as an agent: its credential, no API token (what `ccm mcp` sends); the status
    /// and the JSON body (`Null` when not JSON).
    pub async fn as_agent(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let request = self
            .http
            .request(method, self.url(path))
            .header("x-ccm-agent-token", token)
            .json(&body);
        let response = request.send().await.expect("the daemon answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The hook credential of the live agent of `task` (id), once that agent (of the
    /// [`HOLDER_PROFILE`]) has written it.
    pub async fn agent_token(&self, task: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, agents) = self.get("/api/agents").await;
            let live = agents.as_array().into_iter().flatten().find(|a| {
                a["task_id"] == task && matches!(a["status"].as_str(), Some("starting" | "running"))
            });
            if let Some(dir) = live.and_then(|a| a["dir"].as_str()) {
                if let Ok(token) = std::fs::read_to_string(Path::new(dir).join("token")) {
                    return token;
                }
            }
            assert!(Instant::now() < deadline, "no agent of task {task} wrote its token: {agents}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.token).send().await.expect("daemon answers");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

/// A running `ccm up`, killed when dropped. Dereferences to its [`Api`].
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub api: Api,
}

impl std::ops::Deref for Daemon {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Daemon {
    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
        self.child.wait().expect("daemon exits")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Creates a git repository with one commit at `dir`, with `origin` set to `remote` if given.
pub fn git_repo(dir: &Path, remote: Option<&str>) {
    std::fs::create_dir_all(dir).expect("repo dir");
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "test@example.com"]);
    git(&["config", "user.name", "ccm test"]);
    std::fs::write(dir.join("README.md"), "test repo\n").expect("write");
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "initial"]);
    if let Some(remote) = remote {
        git(&["remote", "add", "origin", remote]);
    }
}

/// Opens the database file as another process would (read-write, its own connection).
pub async fn open_db(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .expect("database opens")
}
