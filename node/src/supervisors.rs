//! Scheduled supervisors (`supervisors:` in the configuration): agents that watch agents.
//!
//! Each supervisor has a scope (`project` with its `repo`, `system`, `task:<workflow>`,
//! `fleet`), a
//! schedule (`every: {completions: N}`, `{failures: N}` or `{interval: 2h}`), a profile and a
//! prompt template whose `{digest}` the store fills with what happened in the scope since the
//! supervisor's previous run ([`Store::digest`]). A run is a headless agent in its own tmux
//! window (`sup-<id>`), started through the same launcher as the runtime's agents; it is not a
//! task and holds no worker slot (its own pool: `slots` runs of a supervisor at a time, 1 by
//! default). Its final answer is the report (`supervisor_runs`, `ccm supervisors`, `ccm report
//! ID`); each `ALERT: ...` line of it becomes a `supervisor_alert` alert, which the notifiers
//! route like any other.
//!
//! The loop ([`Supervisors::run`]) checks every second: runs whose agent wrote its exit status
//! are finished, and due supervisors are started.
//!
//! A fleet manager (scope `fleet`, with sync) runs on one system of the owner at a time: the
//! holder of the central named lease `supervisor:<name>` (`api.acquire_lease`, renewed every
//! third of `lease`, given back when the daemon stops; a crashed holder's lease runs out). Its
//! digest is the central's view of every system (`api.fleet_digest`: presence, tasks by state
//! per system, open alerts, routed tasks, cost by day), which no node sees alone.
//!
//! The change requests' reviewer (`change_requests: {reviewer: PROFILE}`) runs the same way: a
//! run per pending change request (named `change_request:<id>`), its prompt the request and the
//! owner's diff; its `VERDICT: approve|reject` line (with a reason on it or on a `REASON:` line)
//! answers the request's decision as `reviewer:<profile>`, unless someone answered first. A run
//! without a verdict leaves the decision to the operator.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_schema::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::agents::launcher::{self, Launch};
use crate::agents::parse::OutputSummary;
use crate::agents::profile::{check_command, Mode, Placeholders, Profile};
use crate::config::LiveConfig;
use crate::home::Home;
use crate::store::{ScopeFilter, Store, StoreError, SupervisorRun};
use crate::tmux::{Tmux, WindowSpec};

/// The tmux window names of supervisor runs start with this (the orphan-window check skips
/// them).
pub const WINDOW_PREFIX: &str = "sup-";
/// A review run of a change request is named this followed by the request's id.
pub const REVIEW_PREFIX: &str = "change_request:";
/// Longest diff of the owner a review prompt carries, in bytes.
const REVIEW_DIFF_MAX_BYTES: usize = 64 * 1024;

/// Why a supervisor run could not start or finish; it is tried again at the next check.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tmux(#[from] crate::tmux::TmuxError),
    #[error("supervisor run files: {0}")]
    Io(#[from] std::io::Error),
    #[error("supervisor `{name}`: {message}")]
    Config { name: String, message: String },
    #[error("no supervisor named `{name}`; configured: {known}")]
    Unknown { name: String, known: String },
    /// The central did not answer a fleet manager's digest.
    #[error("the central's fleet digest: {0}")]
    Central(String),
}

/// One supervisor of `supervisors:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// `project` (with `repo`), `system`, `task:<workflow>`, or `fleet` (with sync).
    pub scope: String,
    /// The repository of a `project` scope, as its tasks name it (a path or a URL).
    #[serde(default)]
    pub repo: Option<String>,
    pub every: Every,
    /// The agent profile a run uses.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// The prompt; `{digest}`, `{name}` and `{scope}` are filled in.
    pub prompt: String,
    /// Runs of this supervisor at a time (its own pool, never a worker slot).
    #[serde(default = "one")]
    pub slots: u32,
    /// A fleet manager's lease on the central (`30s`, `2m`; default 60 s): how long another
    /// system waits to take over when its holder stops without giving it back.
    #[serde(default)]
    pub lease: Option<String>,
}

/// A fleet manager's lease when `lease:` is not given.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

fn default_profile() -> String {
    "claude".into()
}

fn one() -> u32 {
    1
}

/// When a supervisor runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Every {
    /// After this many tasks of the scope completed since its previous run.
    Completions(u32),
    /// After this many tasks of the scope failed or were blocked since its previous run.
    Failures(u32),
    /// This long after its previous run (`2h`, `30m`).
    Interval(String),
}

impl SupervisorConfig {
    /// Checks the scope, the schedule and the profile; the message names what is wrong.
    pub fn validate(&self, name: &str, profiles: &BTreeMap<String, Profile>) -> Result<(), String> {
        let at = |message: String| format!("`{name}`: {message}");
        self.filter().map_err(at)?;
        match &self.every {
            Every::Completions(0) | Every::Failures(0) => {
                return Err(at("every: the count must be at least 1".into()))
            }
            Every::Interval(text) => {
                self.interval(text).map_err(at)?;
            }
            _ => {}
        }
        match profiles.get(&self.profile) {
            None => return Err(at(format!("unknown profile `{}`", self.profile))),
            Some(p) if p.mode == Mode::External => {
                return Err(at(format!(
                    "profile `{}` is external: ccm runs no agent for it",
                    self.profile
                )))
            }
            Some(_) => {}
        }
        if self.slots == 0 {
            return Err(at("slots must be at least 1".into()));
        }
        if !self.prompt.contains("{digest}") {
            return Err(at("the prompt must contain {digest}".into()));
        }
        if self.is_fleet() {
            if !matches!(self.every, Every::Interval(_)) {
                return Err(at("scope fleet runs on an interval (every: {interval: 1h}): \
                               completions and failures are counted per system"
                    .into()));
            }
            self.lease_duration().map_err(at)?;
        } else if self.lease.is_some() {
            return Err(at("lease is for scope fleet only".into()));
        }
        Ok(())
    }

    /// Whether this is a fleet manager (scope `fleet`).
    pub fn is_fleet(&self) -> bool {
        self.scope == "fleet"
    }

    /// A fleet manager's lease on the central.
    pub fn lease_duration(&self) -> Result<Duration, String> {
        let Some(text) = &self.lease else { return Ok(DEFAULT_LEASE) };
        match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => Ok(d),
            _ => Err(format!("lease `{text}` is not a duration from 1s to 1h, such as 60s")),
        }
    }

    /// The name of a fleet manager's lease on the central.
    fn lease_name(name: &str) -> String {
        format!("supervisor:{name}")
    }

    fn interval(&self, text: &str) -> Result<Duration, String> {
        match humantime::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(1) => Ok(d),
            _ => Err(format!("every: interval `{text}` is not a duration such as 30m or 2h")),
        }
    }

    /// Which tasks the scope covers.
    pub fn filter(&self) -> Result<ScopeFilter, String> {
        match self.scope.as_str() {
            "system" => Ok(ScopeFilter::default()),
            "project" => match &self.repo {
                Some(repo) if !repo.trim().is_empty() => {
                    Ok(ScopeFilter { repo: Some(repo.clone()), workflow: None })
                }
                _ => Err("scope project needs `repo:` (the repository its tasks name)".into()),
            },
            // Its tasks are the whole fleet's, read from the central, not from this store.
            "fleet" => Ok(ScopeFilter::default()),
            scope => match scope.strip_prefix("task:") {
                Some(workflow) if !workflow.is_empty() => {
                    Ok(ScopeFilter { repo: None, workflow: Some(workflow.to_string()) })
                }
                _ => Err(format!(
                    "unknown scope `{scope}`: use project, system, task:<workflow> or fleet"
                )),
            },
        }
    }
}

/// The daemon's supervisor loop.
pub struct Supervisors {
    pub store: Store,
    pub live: LiveConfig,
    pub home: Home,
    /// `host:port` of the API, given to runs as `CCM_API`.
    pub api_addr: String,
    /// When the daemon started: an `interval` supervisor that never ran counts from here.
    pub started: Timestamp,
    pub beat: Arc<ccm_sync::Beat>,
    pub shutdown: CancellationToken,
    /// The central, when sync is on: fleet managers' leases and digests.
    pub central: Option<ccm_sync::Client>,
    /// Fleet managers' leases by supervisor: whether this system holds it, as last asked.
    pub leases: Arc<Mutex<HashMap<String, Lease>>>,
}

/// What this system last heard of a fleet manager's lease.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    held: bool,
    asked: Instant,
}

impl Supervisors {
    pub async fn run(self) {
        async move {
            // Runs of an earlier daemon may still be running: looked for once at start.
            let mut may_run = true;
            loop {
                let step = self.beat.step().await;
                if let Err(error) = self.check(&mut may_run).await {
                    warn!(%error, "supervisor check failed; retrying");
                }
                drop(step);
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            self.release_leases().await;
        }
        .instrument(info_span!("supervisors"))
        .await
    }

    /// Whether this system holds the fleet manager's lease: taken or renewed on the central
    /// when a third of it has passed since it was last asked. A system that cannot ask does
    /// not run the manager (it could not read the fleet's digest either).
    async fn fleet_lease(&self, name: &str, supervisor: &SupervisorConfig) -> bool {
        let Some(central) = &self.central else { return false };
        let ttl = supervisor.lease_duration().unwrap_or(DEFAULT_LEASE);
        let last = self.leases().get(name).copied();
        if let Some(lease) = last.filter(|l| l.asked.elapsed() < ttl / 3) {
            return lease.held;
        }
        let params = ccm_sync::wire::AcquireLeaseV1 {
            p_name: SupervisorConfig::lease_name(name),
            p_ttl_s: u32::try_from(ttl.as_secs()).unwrap_or(3600),
            p_value: None,
        };
        let held = match central
            .call::<ccm_sync::wire::NamedLeaseV1>("acquire_lease", &params)
            .await
        {
            Ok(lease) => {
                if lease.held != last.is_some_and(|l| l.held) {
                    let holder = lease.holder.as_deref().unwrap_or("another system");
                    info!(supervisor = %name, held = lease.held, %holder, "fleet manager's lease");
                }
                lease.held
            }
            Err(failure) => {
                warn!(supervisor = %name, error = %failure.message, "cannot ask the central for the fleet manager's lease");
                false
            }
        };
        self.leases().insert(name.to_string(), Lease { held, asked: Instant::now() });
        held
    }

    /// Gives back the fleet managers' leases this system holds, so another system takes over
    /// at once.
    async fn release_leases(&self) {
        let Some(central) = &self.central else { return };
        let held: Vec<String> =
            self.leases().iter().filter(|(_, l)| l.held).map(|(n, _)| n.clone()).collect();
        for name in held {
            let params =
                ccm_sync::wire::ReleaseLeaseV1 { p_name: SupervisorConfig::lease_name(&name) };
            let released = central.call::<serde_json::Value>("release_lease", &params);
            match tokio::time::timeout(Duration::from_secs(3), released).await {
                Ok(Ok(_)) => info!(supervisor = %name, "fleet manager's lease given back"),
                Ok(Err(failure)) => {
                    warn!(supervisor = %name, error = %failure.message, "cannot give the lease back")
                }
                Err(_) => warn!(supervisor = %name, "cannot give the lease back: no answer in 3 s"),
            }
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases.lock().expect("leases lock is never poisoned: no code panics holding it")
    }

    fn tmux(&self) -> Tmux {
        Tmux::new(self.live.current().runtime.tmux_socket.clone())
    }

    /// Finishes the runs that ended, then starts the due ones. Without supervisors configured
    /// and no run left (`may_run` false), it reads nothing: an idle daemon does no query here.
    async fn check(&self, may_run: &mut bool) -> Result<(), SupervisorError> {
        let config = self.live.current();
        let reviewer = config.change_requests.reviewer.clone();
        if config.supervisors.is_empty() && reviewer.is_none() && !*may_run {
            return Ok(());
        }
        let running = self.store.running_supervisor_runs().await?;
        *may_run = !running.is_empty() || !config.supervisors.is_empty() || reviewer.is_some();
        if !running.is_empty() {
            let windows: Vec<String> =
                self.tmux().windows().await.map(|w| w.into_iter().map(|w| w.id).collect())?;
            for run in &running {
                self.observe(run, &windows).await?;
            }
        }
        for (name, supervisor) in &config.supervisors {
            if supervisor.is_fleet() && !self.fleet_lease(name, supervisor).await {
                continue;
            }
            let busy = running.iter().filter(|r| &r.supervisor == name).count();
            if busy >= supervisor.slots as usize {
                continue;
            }
            if let Err(error) = self.start_if_due(name, supervisor, &config.profiles).await {
                warn!(supervisor = %name, %error, "cannot start the supervisor");
            }
        }
        if let Some(reviewer) = &reviewer {
            if let Err(error) = self.review_change_requests(reviewer, &config.profiles).await {
                warn!(%reviewer, %error, "cannot start a change request's review");
            }
        }
        Ok(())
    }

    /// Starts a review run for each pending change request that has none yet.
    async fn review_change_requests(
        &self,
        reviewer: &str,
        profiles: &BTreeMap<String, Profile>,
    ) -> Result<(), SupervisorError> {
        let config_error = |message: String| SupervisorError::Config {
            name: "change_requests.reviewer".into(),
            message,
        };
        for request in self.store.change_requests_to_review(REVIEW_PREFIX).await? {
            let profile = profiles
                .get(reviewer)
                .cloned()
                .ok_or_else(|| config_error(format!("unknown profile `{reviewer}`")))?;
            let diff = if uuid::Uuid::parse_str(&request.owner).is_ok() {
                match crate::conflicts::diff(&self.store, &request.owner).await {
                    Ok(diff) if diff.text.is_empty() => "(no commits yet)".to_string(),
                    Ok(diff) => crate::text::head(&diff.text, REVIEW_DIFF_MAX_BYTES),
                    Err(error) => format!("(no diff: {error})"),
                }
            } else {
                format!("(the file is pre-assigned to `{}`; no task owns it)", request.owner)
            };
            let prompt = review_prompt(&request, &diff);
            let name = format!("{REVIEW_PREFIX}{}", request.id);
            let id = uuid::Uuid::new_v4().to_string();
            let dir = self.home.root().join("supervisors").join(&id);
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(dir.join("prompt.md"), &prompt).await?;
            let cwd = self.home.root().join("scratch");
            tokio::fs::create_dir_all(&cwd).await?;
            let window_id = self.launch(&name, &id, &dir, &cwd, &profile, &prompt).await?;
            let short = &request.id[..8];
            let run = SupervisorRun {
                id: id.clone(),
                supervisor: name,
                scope: "change_request".into(),
                reason: format!("change request {short} of {}", request.path),
                status: "running".into(),
                profile: reviewer.to_string(),
                dir: dir.to_string_lossy().into_owned(),
                window_id: Some(window_id),
                digest: prompt,
                report: None,
                alerts: 0,
                cost_usd: 0.0,
                started_at: Timestamp::now(),
                ended_at: None,
            };
            self.store.begin_supervisor_run(&run).await?;
            info!(run = %&id[..8], change_request = short, "change request review started");
        }
        Ok(())
    }

    /// A finished review run answers its change request's decision with its verdict.
    async fn decide_change_request(&self, run: &SupervisorRun, request: &str, report: &str) {
        let Some((approve, reason)) = change_verdict(report) else {
            warn!(run = %&run.id[..8], "the change request's reviewer gave no verdict; the operator decides");
            return;
        };
        let decided = async {
            let request = self.store.change_request(request).await?;
            let Some(decision) = request.decision_id else { return Ok(()) };
            let policy = crate::store::RetryPolicy::from(&*self.live.current());
            let actor = format!("reviewer:{}", run.profile);
            let answer = if approve { "approve" } else { "reject" };
            self.store
                .answer_decision_with(&decision, answer, &actor, policy, Some(&reason))
                .await?;
            Ok::<_, StoreError>(())
        };
        if let Err(error) = decided.await {
            // Answered already (by the operator), or the request is gone: nothing to do.
            info!(run = %&run.id[..8], %error, "the reviewer's verdict was not applied");
        }
    }

    /// Why the supervisor is due now, if it is.
    async fn due(
        &self,
        supervisor: &SupervisorConfig,
        filter: &ScopeFilter,
        last: Option<&SupervisorRun>,
    ) -> Result<Option<String>, SupervisorError> {
        let since = last.map_or(Timestamp(0), |r| r.started_at);
        Ok(match &supervisor.every {
            Every::Completions(n) | Every::Failures(n) => {
                let (done, failed) = self.store.scope_outcomes_since(filter, since).await?;
                let (count, what) = match supervisor.every {
                    Every::Completions(_) => (done, "completions"),
                    _ => (failed, "failures"),
                };
                (count >= i64::from(*n)).then(|| format!("{count} {what}"))
            }
            Every::Interval(text) => {
                let every = supervisor.interval(text).unwrap_or(Duration::from_secs(3600));
                let from = last.map_or(self.started, |r| r.started_at);
                let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
                (Timestamp::now().millis() - from.millis() >= every_ms)
                    .then(|| format!("interval {text}"))
            }
        })
    }

    async fn start_if_due(
        &self,
        name: &str,
        supervisor: &SupervisorConfig,
        profiles: &BTreeMap<String, Profile>,
    ) -> Result<(), SupervisorError> {
        let config_error = |message: String| SupervisorError::Config { name: name.into(), message };
        let filter = supervisor.filter().map_err(config_error)?;
        let runs = self.store.supervisor_runs(Some(name)).await?;
        let Some(reason) = self.due(supervisor, &filter, runs.first()).await? else {
            return Ok(());
        };
        let profile = profiles
            .get(&supervisor.profile)
            .cloned()
            .ok_or_else(|| config_error(format!("unknown profile `{}`", supervisor.profile)))?;
        let digest = digest(&self.store, self.central.as_ref(), name, supervisor, &runs).await?;
        let prompt = supervisor
            .prompt
            .replace("{name}", name)
            .replace("{scope}", &supervisor.scope)
            .replace("{digest}", &digest);
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.home.root().join("supervisors").join(&id);
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join("prompt.md"), &prompt).await?;
        let cwd = filter
            .repo
            .as_deref()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| self.home.root().join("scratch"));
        tokio::fs::create_dir_all(&cwd).await?;
        let window_id = self.launch(name, &id, &dir, &cwd, &profile, &prompt).await?;
        let run = SupervisorRun {
            id: id.clone(),
            supervisor: name.to_string(),
            scope: supervisor.scope.clone(),
            reason: reason.clone(),
            status: "running".into(),
            profile: supervisor.profile.clone(),
            dir: dir.to_string_lossy().into_owned(),
            window_id: Some(window_id),
            digest,
            report: None,
            alerts: 0,
            cost_usd: 0.0,
            started_at: Timestamp::now(),
            ended_at: None,
        };
        self.store.begin_supervisor_run(&run).await?;
        info!(supervisor = %name, run = %&id[..8], %reason, "supervisor started");
        Ok(())
    }

    /// Opens the run's window running its launcher; the window's id.
    async fn launch(
        &self,
        name: &str,
        id: &str,
        dir: &Path,
        cwd: &Path,
        profile: &Profile,
        prompt: &str,
    ) -> Result<String, SupervisorError> {
        let config_error = |message: String| SupervisorError::Config { name: name.into(), message };
        let prompt_file = dir.join("prompt.md").to_string_lossy().into_owned();
        let session_id = uuid::Uuid::new_v4().to_string();
        let cwd_text = cwd.to_string_lossy().into_owned();
        let dir_text = dir.to_string_lossy().into_owned();
        let allowed_tools = profile.allowed_tools.join(",");
        let argv = profile.argv(&Placeholders {
            codex_hooks: &[],
            prompt,
            prompt_file: &prompt_file,
            session_id: &session_id,
            cwd: &cwd_text,
            allowed_tools: &allowed_tools,
            // A supervisor run has no agent credential, so no MCP server to offer.
            mcp_config: "",
        });
        let mut env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(n, v)| Some((n.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(n, _)| !n.starts_with("TMUX"))
            .collect();
        env.extend(profile.env.clone());
        env.extend([
            ("CCM_SUPERVISOR".to_string(), name.to_string()),
            ("CCM_SUPERVISOR_RUN".to_string(), id.to_string()),
            ("CCM_AGENT_DIR".to_string(), dir_text.clone()),
            ("CCM_HOME".to_string(), self.home.root().to_string_lossy().into_owned()),
            ("CCM_API".to_string(), format!("http://{}", self.api_addr)),
        ]);
        check_command(&format!("supervisor {name}"), &argv, &env).map_err(config_error)?;
        let script = launcher::script(&Launch {
            argv: &argv,
            env: &env,
            mode: Mode::Headless,
            stdin: profile.stdin,
            dir: &dir_text,
            prompt_file: &prompt_file,
            about: &format!("ccm's launcher of supervisor `{name}`, run {id}"),
        });
        let launcher_file = dir.join(launcher::FILE);
        crate::fs::write_atomic(&launcher_file, script.as_bytes(), crate::fs::Mode::Private)?;
        let window_argv = ["sh".to_string(), launcher_file.to_string_lossy().into_owned()];
        let window_name = format!("{WINDOW_PREFIX}{}", &id[..8]);
        let tmux = self.tmux();
        tmux.ensure_session().await?;
        let window =
            tmux.spawn(&WindowSpec { name: &window_name, cwd, argv: &window_argv }).await?;
        Ok(window.id)
    }

    /// A run whose agent wrote its exit status is finished: its final answer is the report,
    /// its `ALERT:` lines are raised. A run whose window is gone without one failed.
    async fn observe(
        &self,
        run: &SupervisorRun,
        windows: &[String],
    ) -> Result<(), SupervisorError> {
        let dir = Path::new(&run.dir);
        let exit = tokio::fs::read_to_string(dir.join("exit")).await.ok();
        let window_alive = run.window_id.as_ref().is_some_and(|w| windows.contains(w));
        let Some(exit) = exit else {
            if !window_alive {
                let report = "the supervisor's window closed without an exit status";
                self.store.end_supervisor_run(&run.id, false, report, &[], 0.0).await?;
                warn!(supervisor = %run.supervisor, run = %&run.id[..8], "{report}");
            }
            return Ok(());
        };
        let format = self.live.current().profiles.get(&run.profile).map(|p| p.output);
        let output = tokio::fs::read(dir.join("output.log")).await.unwrap_or_default();
        let output = String::from_utf8_lossy(&output);
        let summary =
            OutputSummary::of(format.unwrap_or(crate::agents::parse::OutputFormat::Plain), &output);
        let ok = exit.trim() == "0";
        let report = summary
            .last_message
            .clone()
            .or_else(|| crate::agents::parse::last_text_line(&output))
            .unwrap_or_else(|| format!("no answer (exit status {})", exit.trim()));
        let short = &run.id[..8];
        let alerts: Vec<String> = alert_lines(&report)
            .into_iter()
            .map(|line| {
                format!("supervisor `{}`: {line} (report: ccm report {short})", run.supervisor)
            })
            .collect();
        let cost = summary.cost_usd.unwrap_or(0.0);
        self.store.end_supervisor_run(&run.id, ok, &report, &alerts, cost).await?;
        if let Some(request) = run.supervisor.strip_prefix(REVIEW_PREFIX) {
            if ok {
                self.decide_change_request(run, request, &report).await;
            }
        }
        info!(supervisor = %run.supervisor, run = short, alerts = alerts.len(), "supervisor reported");
        Ok(())
    }
}

/// The supervisor `name` of `supervisors`, or an error naming those configured.
pub fn configured<'a>(
    supervisors: &'a BTreeMap<String, SupervisorConfig>,
    name: &str,
) -> Result<&'a SupervisorConfig, SupervisorError> {
    supervisors.get(name).ok_or_else(|| SupervisorError::Unknown {
        name: name.into(),
        known: supervisors.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
    })
}

/// The digest `name`'s next run carries, given its runs (newest first): what happened in its
/// scope since the newest started, and the last report. A fleet manager's comes from `central`;
/// any other's from the store, built at a lower priority ([`Store::digest`]). Scheduled runs,
/// `ccm supervisors --digest` and `GET /api/supervisors/{name}/digest` all build it here.
pub async fn digest(
    store: &Store,
    central: Option<&ccm_sync::Client>,
    name: &str,
    supervisor: &SupervisorConfig,
    runs: &[SupervisorRun],
) -> Result<String, SupervisorError> {
    let since = runs.first().map_or(Timestamp(0), |r| r.started_at);
    let previous = runs.iter().find_map(|r| r.report.as_deref());
    if supervisor.is_fleet() {
        let Some(central) = central else {
            return Err(SupervisorError::Central("sync is off: no central to ask".into()));
        };
        return fleet_digest(central, since, previous).await;
    }
    let filter = supervisor
        .filter()
        .map_err(|message| SupervisorError::Config { name: name.into(), message })?;
    Ok(store.digest(&filter, since, previous).await?)
}

/// A fleet manager's digest from the central (`api.fleet_digest`, tasks changed since
/// `since`), as text for its prompt.
pub async fn fleet_digest(
    central: &ccm_sync::Client,
    since: Timestamp,
    previous: Option<&str>,
) -> Result<String, SupervisorError> {
    let p_since = (since.millis() > 0).then(|| {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(since.millis().unsigned_abs());
        humantime::format_rfc3339_millis(at).to_string()
    });
    let params = ccm_sync::wire::FleetDigestParamsV1 { p_since };
    let digest = central
        .call::<ccm_sync::wire::FleetDigestV1>("fleet_digest", &params)
        .await
        .map_err(|failure| SupervisorError::Central(failure.message))?;
    Ok(fleet_digest_text(&digest, since, previous))
}

/// A fleet manager's digest: the central's view of every system of the owner.
pub fn fleet_digest_text(
    digest: &ccm_sync::wire::FleetDigestV1,
    since: Timestamp,
    previous: Option<&str>,
) -> String {
    let mut text = String::from("The fleet, as the central sees every system:\n");
    text.push_str(&format!("- systems ({}):\n", digest.systems.len()));
    for s in &digest.systems {
        let draining = if s.draining { ", draining" } else { "" };
        let heard = s.last_heartbeat_at.as_deref().unwrap_or("never");
        text.push_str(&format!(
            "  - {}: {}, {} running of {} slots{draining}, last heartbeat {heard}\n",
            s.name, s.presence, s.running, s.slots
        ));
    }
    text.push_str(&format!("- tasks by state per system (in brackets: changed since {since}):\n"));
    let mut by_system: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for row in &digest.tasks_by_state {
        let line = format!("{} {} ({})", row.state, row.tasks, row.changed);
        by_system.entry(row.system.as_str()).or_default().push(line);
    }
    if by_system.is_empty() {
        text.push_str("  - none\n");
    }
    for (system, states) in &by_system {
        text.push_str(&format!("  - {system}: {}\n", states.join(", ")));
    }
    text.push_str(&format!("- open alerts ({}):\n", digest.open_alerts.len()));
    for a in &digest.open_alerts {
        let first = a.message.lines().next().unwrap_or_default();
        text.push_str(&format!(
            "  - {} [{}] {}: {}\n",
            a.system,
            a.severity,
            a.kind,
            crate::text::head(first, 200)
        ));
    }
    text.push_str(&format!("- routed tasks not done ({}):\n", digest.routed_tasks.len()));
    for r in &digest.routed_tasks {
        let reason = r.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let origin = r.origin.as_deref().unwrap_or("?");
        let executing = r.executing.as_deref().map(|e| format!(", on {e}")).unwrap_or_default();
        text.push_str(&format!(
            "  - \"{}\" {}{reason} from {origin}{executing}, attempts {}\n",
            r.title, r.state, r.attempts
        ));
    }
    text.push_str("- cost by UTC day:\n");
    if digest.cost_by_day.is_empty() {
        text.push_str("  - none\n");
    }
    for c in &digest.cost_by_day {
        text.push_str(&format!(
            "  - {} {}: {} task(s), ${:.4}\n",
            c.day, c.system, c.tasks, c.cost_usd
        ));
    }
    match previous {
        Some(report) => {
            text.push_str(&format!("- previous report:\n{}\n", crate::text::head(report, 2_000)))
        }
        None => text.push_str("- previous report: none (first run here)\n"),
    }
    text
}

/// The review prompt of a change request, with the owner's diff.
fn review_prompt(request: &crate::store::ChangeRequest, diff: &str) -> String {
    let what = request.what.clone().unwrap_or_else(|| {
        format!(
            "its agent's write ({}) of the file was refused; it wanted to write the file itself",
            request.tool.as_deref().unwrap_or("a write")
        )
    });
    format!(
        "You review a change request. Each file of this repository is owned by one task; another \
         task's agent asks for a change to a file it does not own.\n\n\
         Requesting task: {}\nFile: `{}`\nOwner: {}\nWhat: {what}\nWhy: {}\n\n\
         The owner's current work (its branch against the target):\n```diff\n{diff}\n```\n\n\
         Approve it when the change is sound and fits the owner's work; reject it otherwise. End \
         your answer with the line `VERDICT: approve` or `VERDICT: reject`, then a line \
         `REASON: <one sentence>` that the requesting agent will read.\n",
        &request.requester_task[..8],
        request.path,
        request.owner,
        request.why.as_deref().unwrap_or("(not given)"),
    )
}

/// A reviewer's verdict on a change request: its last `VERDICT: approve|reject` line, and the
/// reason (the rest of that line, else the last `REASON:` line).
pub fn change_verdict(report: &str) -> Option<(bool, String)> {
    let clean = |line: &str| {
        line.trim().trim_start_matches(['-', '*', '>', ' ']).trim_matches(['*', '`']).to_string()
    };
    let prefixed = |line: &str, prefix: &str| {
        let line = clean(line);
        let lower = line.to_ascii_lowercase();
        lower.starts_with(prefix).then(|| line[prefix.len()..].trim().to_string())
    };
    let (approve, rest) = report.lines().rev().find_map(|line| {
        let value = prefixed(line, "verdict:")?;
        let (word, rest) = value.split_once(char::is_whitespace).unwrap_or((&value, ""));
        let word = word.trim_matches(|c: char| !c.is_ascii_alphabetic()).to_ascii_lowercase();
        let approve = match word.as_str() {
            "approve" | "approved" => true,
            "reject" | "rejected" => false,
            _ => return None,
        };
        let rest = rest.trim().trim_start_matches(['-', '—', ':', ',', ';', '*', '`', ' ']).trim();
        Some((approve, rest.to_string()))
    })?;
    let reason = if rest.is_empty() {
        report
            .lines()
            .rev()
            .find_map(|line| prefixed(line, "reason:"))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| {
                format!("the reviewer answered {}", if approve { "approve" } else { "reject" })
            })
    } else {
        rest
    };
    Some((approve, reason))
}

/// The `ALERT: ...` lines of a report (markdown emphasis and list marks around them allowed).
pub fn alert_lines(report: &str) -> Vec<String> {
    report
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches(['-', '*', ' ']).trim_matches(['*', '`']);
            let rest = line.strip_prefix("ALERT:").or_else(|| line.strip_prefix("Alert:"))?;
            let rest = rest.trim().trim_matches(['*', '`']).trim();
            (!rest.is_empty()).then(|| rest.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_verdict_is_read_with_its_reason() {
        let check = |report: &str, expected: Option<(bool, &str)>| {
            let expected = expected.map(|(a, r)| (a, r.to_string()));
            assert_eq!(change_verdict(report), expected, "{report}");
        };
        check("fine\nVERDICT: approve\nREASON: small and safe", Some((true, "small and safe")));
        check(
            "**VERDICT: reject** — the owner is mid-refactor",
            Some((false, "the owner is mid-refactor")),
        );
        check(
            "VERDICT: approve\nlater VERDICT: reject",
            Some((true, "the reviewer answered approve")),
        );
        check("- verdict: Rejected: breaks the API", Some((false, "breaks the API")));
        check("VERDICT: maybe\nno idea", None);
        check("no verdict here", None);
    }

    #[test]
    fn alert_lines_are_read_from_the_report() {
        let report = "All fine mostly.\nALERT: parser tasks fail verify\n- **ALERT: cost spike**\nALERT:\nnot an ALERT: here";
        assert_eq!(alert_lines(report), ["parser tasks fail verify", "cost spike"]);
    }

    #[test]
    fn a_scope_and_schedule_are_checked_naming_what_is_wrong() {
        let profiles = crate::agents::profile::builtin();
        let config = |scope: &str, every: Every, prompt: &str| SupervisorConfig {
            scope: scope.into(),
            repo: None,
            every,
            profile: "claude".into(),
            prompt: prompt.into(),
            slots: 1,
            lease: None,
        };
        let check = |c: SupervisorConfig| c.validate("review", &profiles);
        assert!(check(config("system", Every::Completions(3), "{digest}")).is_ok());
        assert!(check(config("task:code-review", Every::Interval("2h".into()), "{digest}")).is_ok());
        assert!(check(config("fleet", Every::Interval("1h".into()), "{digest}")).is_ok());
        let cases = [
            (config("project", Every::Completions(3), "{digest}"), "needs `repo:`"),
            (config("fleet", Every::Completions(3), "{digest}"), "scope fleet runs on an interval"),
            (config("galaxy", Every::Completions(3), "{digest}"), "unknown scope `galaxy`"),
            (config("system", Every::Failures(0), "{digest}"), "at least 1"),
            (
                config("system", Every::Interval("soon".into()), "{digest}"),
                "`soon` is not a duration",
            ),
            (config("system", Every::Completions(1), "no digest"), "must contain {digest}"),
        ];
        for (c, expected) in cases {
            let error = check(c).unwrap_err();
            assert!(error.starts_with("`review`: ") && error.contains(expected), "{error}");
        }
    }
}
