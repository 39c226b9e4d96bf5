//! Configuration, layered with the `config` crate:
//! built-in defaults < `~/.ccm-global/config.yaml` < `.ccm/config.yaml` < `CCM_*` environment.
//!
//! Environment variables name a key with `__` between its parts: `CCM_DAEMON__PORT=9000` sets
//! `daemon.port`. Variables without `__` (such as `CCM_HOME`) are not configuration.
//!
//! Every layer is validated on its own before the layers are merged, so an unknown key or a
//! wrong type is reported with the file (or variable) and the key that hold it, and nothing
//! starts half-configured.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agents::profile::{Mode, Profile as AgentProfile};

mod live;
mod retention;
pub use live::{ConfigStatus, LiveConfig, RESTART_ONLY};
pub use retention::{BackupConfig, Keep, RetentionConfig};

/// Error loading configuration; always names where the bad value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file that exists but is not valid YAML or cannot be read.
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// A key with an unknown name or a value of the wrong type.
    #[error("config file {path}: key `{key}`: {message}")]
    Key { path: PathBuf, key: String, message: String },
    /// An environment variable with an unknown key or a bad value.
    #[error("environment variable {var}: key `{key}`: {message}")]
    Env { var: String, key: String, message: String },
    /// A value of the right type that is not acceptable.
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The node's whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub daemon: DaemonConfig,
    pub scheduler: SchedulerConfig,
    pub tasks: TaskDefaults,
    pub runtime: RuntimeConfig,
    /// Agent profiles by name, added to (or replacing) the built-in `claude`, `gemini`, `codex`.
    pub profiles: BTreeMap<String, AgentProfile>,
    /// Tools a profile's agents may use without asking, by profile name: replaces the
    /// profile's own `allowed_tools` (a project sets it in its `.ccm/config.yaml`).
    pub allowed_tools: BTreeMap<String, Vec<String>>,
    /// Workflows by name, added to (or replacing) the built-in `code-review`.
    pub workflows: BTreeMap<String, Workflow>,
    /// How task worktrees are prepared (usually set in the project's `.ccm/config.yaml`).
    pub worktree: WorktreeConfig,
    /// Tool calls that wait for a human decision. By default none do.
    pub approvals: ApprovalConfig,
    /// Pre-assigned file ownership: owner (a workflow name or a task id prefix) → globs of
    /// paths relative to the repository root. Usually set in the project's `.ccm/config.yaml`.
    pub ownership: BTreeMap<String, Vec<String>>,
    /// The sync engine: off until a URL is set.
    pub sync: SyncConfig,
    /// Notifiers, routing rules, digests and health checks.
    pub notify: crate::notify::NotifyConfig,
    /// The landing policy of the project's repository (its `.ccm/config.yaml`): without a
    /// `land:` section, finished tasks are not landed.
    pub land: Option<LandConfig>,
    /// Scheduled supervisors by name: headless agents that review a scope's recent work.
    pub supervisors: BTreeMap<String, crate::supervisors::SupervisorConfig>,
    /// Sub-tasks, splitting, locks (issue 24).
    pub coordination: CoordinationConfig,
    /// Who decides change requests besides the operator (`change_requests: {reviewer: P}`).
    pub change_requests: ChangeRequestsConfig,
    /// Named sequences agents allocate from (`allocate`), per repository: usually set in the
    /// project's `.ccm/config.yaml` (`sequences: {migrations: {start: 1, format: "{:04}"}}`).
    pub sequences: BTreeMap<String, SequenceConfig>,
    /// How long each kind of record is kept, and how the daemon's retention pass runs.
    pub retention: RetentionConfig,
    /// The daemon's scheduled backup.
    pub backup: BackupConfig,
    /// Accounts by name (a profile's `account`, by default the profile's name), each with an
    /// optional daily cost cap: `accounts: {team: {daily_cost_cap_usd: 20}}`.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// The project's daily cost cap in US dollars (set in its `.ccm/config.yaml`; in the global
    /// file, each project's): once its tasks' agents cost this much today, no new one starts
    /// until the next day or a raise the operator approves.
    pub daily_cost_cap_usd: Option<f64>,
}

/// One account of `accounts:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountConfig {
    /// Once the account's agents cost this much today (US dollars, the local day), no new
    /// agent of it starts until the next day or a raise the operator approves.
    pub daily_cost_cap_usd: Option<f64>,
}

/// A daily cost cap must be an amount of money, more than nothing: the problem, and the value.
fn check_cap(cap: Option<f64>) -> Result<(), (String, f64)> {
    match cap {
        Some(usd) if !(usd.is_finite() && usd > 0.0) => Err((
            "must be a positive amount of US dollars, such as 20 (leave it out for no cap)".into(),
            usd,
        )),
        _ => Ok(()),
    }
}

/// Change requests (a write refused by ownership, an agent's `request_change`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChangeRequestsConfig {
    /// A profile whose headless run reviews each pending request (the request and the owner's
    /// diff as input) and answers `VERDICT: approve|reject` with a `REASON:`; without one (the
    /// default) the operator decides. The operator may still answer first.
    pub reviewer: Option<String>,
}

/// What agents may ask of ccm through `ccm mcp`, and how a task is split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationConfig {
    /// How deep sub-tasks may nest (1: a top-level task's sub-tasks may have none).
    pub max_subtask_depth: u32,
    /// Sub-tasks one task may create at most (an alert when reached).
    pub max_subtasks_per_parent: u32,
    /// Longest wait of `wait_subtasks`, `wait_change` and `lock`, in seconds.
    pub max_wait_secs: u64,
    /// A worker that ends while sub-tasks it created on this node are open does not go to its
    /// verify: its task waits for them and a follow-up attempt (not counted against the
    /// budget) starts once they are complete, with their results in its prompt.
    pub resume_parent: bool,
    /// The deterministic splitting heuristic (`ccm task add --split`).
    pub split: SplitConfig,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            max_subtask_depth: 2,
            max_subtasks_per_parent: 20,
            max_wait_secs: 3600,
            resume_parent: false,
            split: SplitConfig::default(),
        }
    }
}

/// Seed 001 D3: parallel keywords against sequential ones, and a length threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Words that start an independent part (`Implement A, create B, build C`).
    pub parallel_keywords: Vec<String>,
    /// Words and phrases that order parts (`Do A, then B after A`).
    pub sequential_keywords: Vec<String>,
    /// A prompt shorter than this (characters) is split only when it orders its parts.
    pub min_chars: usize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        let words = |list: &[&str]| list.iter().map(|w| (*w).to_string()).collect();
        SplitConfig {
            parallel_keywords: words(&[
                "implement",
                "create",
                "build",
                "add",
                "write",
                "component",
            ]),
            sequential_keywords: words(&[
                "then",
                "after",
                "afterwards",
                "depends on",
                "finally",
                "once",
            ]),
            min_chars: 2000,
        }
    }
}

/// A named sequence: its first value and how a value is written (`{}` or `{:0N}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequenceConfig {
    pub start: i64,
    pub format: String,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        SequenceConfig { start: 1, format: "{}".into() }
    }
}

impl SequenceConfig {
    /// `value` written with the format: `{}` as is, `{:0N}` zero-padded to N digits, with
    /// any text around it.
    pub fn render(&self, value: i64) -> String {
        let Some(open) = self.format.find('{') else {
            return format!("{}{value}", self.format);
        };
        let Some(close) = self.format[open..].find('}').map(|c| c + open) else {
            return format!("{}{value}", self.format);
        };
        let spec = &self.format[open + 1..close];
        let width =
            spec.trim_start_matches(':').trim_start_matches('0').parse::<usize>().unwrap_or(0);
        let number = if spec.starts_with(":0") {
            format!("{value:0width$}")
        } else {
            format!("{value:width$}")
        };
        format!("{}{number}{}", &self.format[..open], &self.format[close + 1..])
    }

    fn check(&self, name: &str) -> Result<(), String> {
        let open = self.format.matches('{').count();
        let close = self.format.matches('}').count();
        let spec_ok = self.format.find('{').zip(self.format.find('}')).is_some_and(|(o, c)| {
            let spec = &self.format[o + 1..c];
            spec.is_empty()
                || spec
                    .strip_prefix(':')
                    .is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
        });
        if open != 1 || close != 1 || !spec_ok {
            return Err(format!(
                "sequence `{name}`: format `{}` must hold one `{{}}` or `{{:0N}}` (e.g. \"{{:04}}\")",
                self.format
            ));
        }
        Ok(())
    }
}

/// This system's identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of this system; the hostname when unset.
    pub name: Option<String>,
}

/// The daemon's HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address to bind: must be a loopback address.
    pub host: String,
    /// Port to bind; 0 picks a free one (the port file says which).
    pub port: u16,
    /// `full` (API and dashboard) or `minimal` (API only).
    pub profile: Profile,
    /// Connections served at once; more wait to be accepted until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, in milliseconds, counted from when the
    /// connection opens or its previous answer was sent (so it also closes idle connections).
    pub header_timeout_ms: u64,
    /// Longest silence while a request's body arrives, in milliseconds.
    pub body_timeout_ms: u64,
    /// Largest request body, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most hook events in one NDJSON request; more get 413.
    pub max_batch_events: usize,
    /// How long a dashboard sign-in lasts, in seconds.
    pub dashboard_session_secs: u64,
    /// A daemon loop (scheduler, runtime, sync lanes, routing, notifiers) inside one step for
    /// longer than this, in seconds, is stalled: the watchdog stops feeding systemd and raises
    /// `loop_stalled`.
    pub stall_secs: u64,
    /// Exit (code 70) when a loop stalls, so the service manager restarts the daemon (the
    /// launchd agent `ccm service install` writes sets it; systemd uses its watchdog instead).
    pub watchdog_exit: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            host: "127.0.0.1".into(),
            port: 8765,
            profile: Profile::Full,
            max_connections: 512,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_body_bytes: 16 * 1024 * 1024,
            max_batch_events: 10_000,
            dashboard_session_secs: 12 * 3600,
            stall_secs: 120,
            watchdog_exit: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    Full,
    Minimal,
}

/// The scheduler that admits tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Agent slots: how many tasks may hold a slot (queued up to supervisory) at once.
    pub slots: u32,
    /// How often the scheduler looks at the database when nothing wakes it, in milliseconds.
    pub tick_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { slots: 4, tick_ms: 1000 }
    }
}

/// Defaults for new tasks and their retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskDefaults {
    /// Agent profile of a task that names none.
    pub profile: String,
    pub max_attempts: u32,
    /// First retry backoff, in seconds; doubles per failed attempt.
    pub retry_base_secs: u64,
    /// Longest retry backoff, in seconds.
    pub retry_cap_secs: u64,
}

impl Default for TaskDefaults {
    fn default() -> Self {
        TaskDefaults {
            profile: "claude".into(),
            max_attempts: 3,
            retry_base_secs: 10,
            retry_cap_secs: 600,
        }
    }
}

/// The agent runtime: tmux, supervision timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Socket name of ccm's own tmux server (`tmux -L <name>`).
    pub tmux_socket: String,
    /// How often the runtime looks at its agents when nothing wakes it, in milliseconds.
    pub poll_ms: u64,
    /// An agent silent (no output, no hook event) this long raises a `stalled` alert.
    pub stall_secs: u64,
    /// An agent silent this long shows as stale.
    pub stale_secs: u64,
    /// An executing task whose agent is silent this long is reclaimed and retried.
    pub lease_secs: u64,
    /// How long to wait after a usage limit when the agent did not say when it resets.
    pub quota_wait_secs: u64,
    /// Longest run of a `verify` command.
    pub verify_timeout_secs: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            tmux_socket: "ccm".into(),
            poll_ms: 100,
            stall_secs: 300,
            stale_secs: 120,
            lease_secs: 1800,
            quota_wait_secs: 3600,
            verify_timeout_secs: 1800,
        }
    }
}

/// A predefined orchestration pattern: the steps a task goes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub steps: Vec<Step>,
    /// Profiles its tasks' workers may run under while their profile's account is at its
    /// usage limit, tried after the profile's own `fallback_profiles`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_profiles: Vec<String>,
}

/// One step of a workflow: who runs it, with which profile and prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub role: Role,
    /// Agent profile; the task's profile when omitted.
    #[serde(default)]
    pub profile: Option<String>,
    /// Prompt template: `{title}`, `{prompt}` (the task's), and for a supervisor `{report}`.
    pub prompt: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Worker,
    Supervisor,
}

impl Workflow {
    pub fn step(&self, role: Role) -> Option<&Step> {
        self.steps.iter().find(|s| s.role == role)
    }
}

/// The built-in workflows: `code-review`, where a worker does the task and a supervisor
/// reviews the report.
pub fn builtin_workflows() -> BTreeMap<String, Workflow> {
    let review = Workflow {
        fallback_profiles: Vec::new(),
        steps: vec![
            Step { role: Role::Worker, profile: None, prompt: "{prompt}".into() },
            Step {
                role: Role::Supervisor,
                profile: None,
                prompt: "You review the work an agent did for the task \"{title}\".\n\
                         Task prompt:\n{prompt}\n\nReport (JSON: diff stat, commits, verification, cost, last message):\n{report}\n\n\
                         Check that the work does what the task asks and nothing it should not. \
                         Answer with a short review, then a last line `VERDICT: ok` or `VERDICT: issue`."
                    .into(),
            },
        ],
    };
    BTreeMap::from([("code-review".to_string(), review)])
}

/// How a task's worktree is prepared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorktreeConfig {
    /// Files copied from the checkout into each new worktree, such as `.env`.
    pub copy_files: Vec<String>,
    /// Command run with `sh -c` in each new worktree, such as `npm ci`.
    pub setup: Option<String>,
}

/// How a repository's finished tasks land on their target branch (`land:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LandConfig {
    /// The branch work lands on; the checkout's default branch when unset.
    pub target: Option<String>,
    /// How the task's branch is put on the target.
    pub mode: LandMode,
    /// Land every task that passes its gate; otherwise wait for `ccm land`.
    pub auto: bool,
    /// Run the verify (the task's, or `verify` below) on the merged result before the target
    /// moves.
    pub verify_after_merge: bool,
    /// A repository-wide verify for the merged result; the task's own when unset.
    pub verify: Option<String>,
    /// Also push the target to its remote after landing (never a force push).
    pub push: bool,
    /// The remote pushed to and fetched from.
    pub remote: String,
    /// Days the daemon's janitor leaves an ended task's worktree and branch in place (`ccm gc`).
    pub keep_days: u32,
    /// Disk the worktrees of ended tasks may take on this node, in MiB; past it the janitor
    /// removes what it may at once, oldest first, whatever `keep_days` says. 0: no budget.
    pub disk_budget_mb: u64,
    /// `mode: pr`: the forge whose REST API opens, checks and merges the pull request.
    pub forge: Forge,
    /// `mode: pr`: the forge's API; `GITHUB_API_URL`, else `https://api.github.com`, when unset.
    pub api_url: Option<String>,
    /// `mode: pr`: the forge's `owner/name`; read from the remote's URL when unset.
    pub repo: Option<String>,
    /// `mode: pr`: what failing checks or a "changes requested" review lead to.
    pub on_checks_failed: OnChecksFailed,
    /// `mode: pr`: seconds between two looks at a pull request's checks.
    pub poll_secs: u64,
    /// `mode: pr`: seconds a pull request without any check run waits for one before it merges.
    pub checks_grace_secs: u64,
}

/// The forge of `land.mode: pr` (`land.forge`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forge {
    /// GitHub's REST API (or GitHub Enterprise Server's, through `land.api_url`).
    #[default]
    Github,
}

/// What failing checks on a pull request lead to (`land.on_checks_failed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChecksFailed {
    /// The task's next attempt, with the checks' output in its prompt (a decision once its
    /// attempts are spent).
    #[default]
    Retry,
    /// A decision for the operator at once (retry or cancel).
    Decide,
}

impl Default for LandConfig {
    fn default() -> Self {
        LandConfig {
            target: None,
            mode: LandMode::Rebase,
            auto: false,
            verify_after_merge: true,
            verify: None,
            push: false,
            remote: "origin".into(),
            keep_days: 7,
            disk_budget_mb: 0,
            forge: Forge::Github,
            api_url: None,
            repo: None,
            on_checks_failed: OnChecksFailed::Retry,
            poll_secs: 15,
            checks_grace_secs: 60,
        }
    }
}

/// How a task's branch lands (`land.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LandMode {
    /// A merge commit on the target whose subject carries the task id.
    Merge,
    /// The task's commits replayed onto the target's head (linear history).
    Rebase,
    /// One commit on the target, subject `[<short id>] <title>`.
    Squash,
    /// A pull request through the forge's API (`land/github.rs`), merged by the forge once its
    /// checks pass.
    Pr,
}

impl<'de> Deserialize<'de> for LandMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let written = String::deserialize(deserializer)?;
        [LandMode::Merge, LandMode::Rebase, LandMode::Squash, LandMode::Pr]
            .into_iter()
            .find(|mode| mode.as_str() == written)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown mode `{written}`, expected merge, rebase, squash or pr"
                ))
            })
    }
}

impl LandMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LandMode::Merge => "merge",
            LandMode::Rebase => "rebase",
            LandMode::Squash => "squash",
            LandMode::Pr => "pr",
        }
    }
}

impl LandConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        if let Some(target) = &self.target {
            if !is_branch_name(target) {
                return invalid(
                    "land.target",
                    "must be a branch name such as `main` (no spaces, `..`, `~^:?*[\\`, leading `-`)",
                );
            }
        }
        if self.verify.as_deref().is_some_and(|v| v.trim().is_empty()) {
            return invalid(
                "land.verify",
                "must not be empty (leave it out to use the task's verify)",
            );
        }
        if !is_branch_name(&self.remote) {
            return invalid("land.remote", "must be a remote's name such as `origin`");
        }
        if let Some(url) = &self.api_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return invalid(
                    "land.api_url",
                    "must be an http(s) URL such as `https://api.github.com`",
                );
            }
        }
        if let Some(repo) = &self.repo {
            let parts: Vec<&str> = repo.split('/').collect();
            let good = |p: &str| {
                !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if parts.len() != 2 || !parts.iter().all(|p| good(p)) {
                return invalid("land.repo", "must be `owner/name`, such as `octo-org/app`");
            }
        }
        if self.poll_secs == 0 {
            return invalid("land.poll_secs", "must be at least 1");
        }
        Ok(())
    }
}

/// A name git accepts as a branch (the common rules of `git check-ref-format`).
fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with(".lock")
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("@{")
        && !name.contains("//")
        && !name.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
}

/// Which tool calls wait for a human, how long, and what happens when nobody answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalConfig {
    /// A tool call matching any rule waits for `ccm decide` (or the API, or Telegram).
    pub rules: Vec<ApprovalRule>,
    /// How long a tool call waits for an answer, in seconds.
    pub timeout_secs: u64,
    /// The answer when nobody decides in time.
    pub default: Answer,
}

impl Default for ApprovalConfig {
    fn default() -> Self {
        ApprovalConfig { rules: Vec::new(), timeout_secs: 300, default: Answer::Deny }
    }
}

/// One approval rule; every condition it sets must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalRule {
    /// Tool names as the CLI sends them (`Bash`, `run_shell_command`, `Write`, ...); empty: any.
    pub tools: Vec<String>,
    /// A regular expression the shell command must match (shell tools only).
    pub command: Option<Pattern>,
    /// Only writes to files outside the agent's working directory.
    pub writes_outside_worktree: bool,
}

/// A regular expression of the configuration, compiled once when it is read (a tool call an
/// agent waits on is matched against it).
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = regex::Error;

    fn from_str(text: &str) -> Result<Pattern, regex::Error> {
        regex::Regex::new(text).map(Pattern)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Pattern, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a valid regular expression: {e}"))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Allow,
    Deny,
}

/// The sync engine (SPEC section 7): where the central REST API is, and when to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Supabase project URL; its REST API is `<url>/rest/v1`.
    pub url: Option<String>,
    /// REST base URL of self-hosted Supabase or any PostgREST-compatible server; wins over `url`.
    pub rest_url: Option<String>,
    /// Supabase Auth's base URL, instead of `<url>/auth/v1` (needed with `rest_url` alone for
    /// `ccm sync enroll --email` or `--code`).
    pub auth_url: Option<String>,
    /// The project's publishable (anon) key; never the service role key.
    pub publishable_key: Option<String>,
    /// Sets the normal lane's timer: `high` 5 min, `normal` 15 min, `low` 60 min.
    pub priority: SyncPriority,
    /// The normal lane's timer in seconds, instead of the priority's.
    pub interval_secs: Option<u64>,
    /// Seal the normal lane after this many hook events...
    pub hook_events: u64,
    /// ...or this many task completions, whichever comes first.
    pub completions: u64,
    /// How long an urgent change waits for others to share its batch, in milliseconds.
    pub urgent_window_ms: u64,
    /// Seconds between two heartbeats to the central (which also carry context changes).
    pub heartbeat_secs: u64,
    /// While agent slots are free, ask the central for routed work this often (± 20 %), in
    /// milliseconds; a heartbeat that says work waits asks at once.
    pub claim_ms: u64,
    /// How often the origin of routed tasks asks the central how they are doing, in
    /// milliseconds (only while one is unfinished).
    pub routed_status_ms: u64,
    /// A routed agent is stopped when its lease was not renewed for the lease time minus this
    /// margin (at least half the lease), so it stops before another system may take the task.
    pub fence_margin_secs: u64,
    /// Seconds between two health snapshots (load, memory, disk, agents, sync backlog).
    pub health_secs: u64,
    /// Most health snapshots waiting to be sent; beyond it the oldest are dropped and counted.
    pub health_backlog: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            url: None,
            rest_url: None,
            auth_url: None,
            publishable_key: None,
            priority: SyncPriority::Normal,
            interval_secs: None,
            hook_events: 50,
            completions: 5,
            urgent_window_ms: 50,
            heartbeat_secs: 15,
            claim_ms: 2000,
            routed_status_ms: 2000,
            fence_margin_secs: 15,
            health_secs: 60,
            health_backlog: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPriority {
    High,
    Normal,
    Low,
}

impl SyncConfig {
    /// Sync runs when a URL is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.rest_url.is_some()
    }

    /// The central endpoint; `None` when sync is off.
    pub fn endpoint(&self) -> Result<Option<ccm_sync::Endpoint>, ConfigError> {
        if !self.enabled() {
            return Ok(None);
        }
        let key = self.publishable_key.as_deref().unwrap_or_default();
        let endpoint = ccm_sync::Endpoint::new(self.url.as_deref(), self.rest_url.as_deref(), key)
            .map_err(|e| ConfigError::Invalid {
                key: if self.rest_url.is_some() { "sync.rest_url" } else { "sync.url" },
                message: e.to_string(),
            })?;
        match &self.auth_url {
            None => Ok(Some(endpoint)),
            Some(auth) => endpoint
                .with_auth_url(auth)
                .map(Some)
                .map_err(|e| ConfigError::Invalid { key: "sync.auth_url", message: e.to_string() }),
        }
    }

    /// The normal lane's timer.
    pub fn interval(&self) -> std::time::Duration {
        let minutes = match self.priority {
            SyncPriority::High => 5,
            SyncPriority::Normal => 15,
            SyncPriority::Low => 60,
        };
        std::time::Duration::from_secs(self.interval_secs.unwrap_or(minutes * 60))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        if self.hook_events == 0 {
            return invalid("sync.hook_events", "must be at least 1");
        }
        if self.completions == 0 {
            return invalid("sync.completions", "must be at least 1");
        }
        if self.heartbeat_secs == 0 {
            return invalid("sync.heartbeat_secs", "must be at least 1");
        }
        if self.health_secs == 0 {
            return invalid("sync.health_secs", "must be at least 1");
        }
        if self.health_backlog == 0 {
            return invalid("sync.health_backlog", "must be at least 1");
        }
        if self.interval_secs == Some(0) {
            return invalid("sync.interval_secs", "must be at least 1");
        }
        if self.urgent_window_ms > 200 {
            return invalid(
                "sync.urgent_window_ms",
                "must be at most 200 (urgent changes go out within 250 ms)",
            );
        }
        if self.enabled() && self.publishable_key.as_deref().is_none_or(|k| k.trim().is_empty()) {
            return invalid(
                "sync.publishable_key",
                "must be set when sync.url or sync.rest_url is (the project's publishable key)",
            );
        }
        self.endpoint().map(|_| ())
    }
}

/// The last configuration that loaded with each project's layer, in this process.
static LAST_GOOD: std::sync::Mutex<BTreeMap<PathBuf, Config>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The configuration with a project's layer, for the daemon and hooks (see [`load_checked`]).
///
/// When the project's `.ccm/config.yaml` (or another layer) no longer loads, the last good
/// configuration this process loaded for the project is used, and an alert names the file and
/// the key (once while it is open). When there is none, the error message is returned and the
/// caller refuses what needs the configuration: a broken file never turns a policy off.
pub async fn load_checked(
    store: &crate::store::Store,
    home: &Path,
    project: &Path,
) -> Result<Config, String> {
    let (error, kept) = match load_or_last_good(home, project) {
        (Ok(config), _) => return Ok(config),
        (Err(error), kept) => (error, kept),
    };
    let file = project.join(".ccm").join("config.yaml");
    let problem = format!("the configuration of {} does not load: {error}", file.display());
    let (message, result) = match kept {
        Some(config) => (format!("{problem}; the last good configuration is kept"), Ok(config)),
        None => (problem.clone(), Err(problem)),
    };
    if let Err(e) =
        store.alert_once(None, ccm_schema::Severity::Warning, "config_invalid", &message).await
    {
        tracing::warn!(error = %e, "cannot raise the alert about a broken configuration");
    }
    result
}

/// The configuration with `project`'s layer, and when it does not load, the last good one this
/// process loaded for the project, if any.
fn load_or_last_good(home: &Path, project: &Path) -> (Result<Config, ConfigError>, Option<Config>) {
    let loaded = Config::load(home, Some(project));
    let mut last = LAST_GOOD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match &loaded {
        Ok(config) => {
            last.insert(project.to_path_buf(), config.clone());
            (loaded, None)
        }
        Err(_) => (loaded, last.get(project).cloned()),
    }
}

/// Where one layer of configuration came from.
enum Layer {
    File(PathBuf),
    Env(HashMap<String, String>),
}

impl Config {
    /// The profiles no runtime runs (`mode: external`): their tasks hold no agent slot and the
    /// runtime has nothing to do for them until they end.
    pub fn external_profiles(&self) -> Vec<String> {
        self.profiles
            .iter()
            .filter(|(_, p)| p.mode == crate::agents::profile::Mode::External)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Loads and validates every layer: the global file in `home`, the project file under
    /// `project` (the repository root) when given, then the `CCM_*` environment.
    pub fn load(home: &Path, project: Option<&Path>) -> Result<Config, ConfigError> {
        let mut layers = Vec::new();
        for path in std::iter::once(home.join("config.yaml"))
            .chain(project.map(|p| p.join(".ccm").join("config.yaml")))
        {
            if path.exists() {
                layers.push(Layer::File(path));
            }
        }
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(name, _)| name.starts_with("CCM_") && name.contains("__"))
            .collect();
        if !env.is_empty() {
            layers.push(Layer::Env(env));
        }

        let mut merged = config::Config::builder();
        for layer in &layers {
            let single = layer.add_to(config::Config::builder());
            let built = single.build().map_err(|e| layer.error(None, e.to_string()))?;
            deserialize(built).map_err(|(key, message)| layer.error(Some(key), message))?;
            layer.check_numbers()?;
            merged = layer.add_to(merged);
        }
        let merged =
            merged.build().map_err(|e| ConfigError::Invalid { key: "", message: e.to_string() })?;
        let mut config = deserialize(merged).map_err(|(key, message)| ConfigError::Invalid {
            key: "",
            message: format!("{key}: {message}"),
        })?;
        for (name, builtin) in crate::agents::profile::builtin() {
            match config.profiles.get_mut(&name) {
                // `profiles.claude.context: ...` (or `account`, `fallback_profiles`) alone: the
                // built-in with that policy.
                Some(given) if given.command.is_empty() && given.mode != Mode::External => {
                    *given = AgentProfile {
                        context: given.context,
                        account: given.account.take(),
                        fallback_profiles: std::mem::take(&mut given.fallback_profiles),
                        ..builtin
                    };
                }
                Some(_) => {}
                None => {
                    config.profiles.insert(name, builtin);
                }
            }
        }
        for (name, workflow) in builtin_workflows() {
            config.workflows.entry(name).or_insert(workflow);
        }
        for (name, tools) in &config.allowed_tools {
            let Some(profile) = config.profiles.get_mut(name) else {
                return Err(ConfigError::Invalid {
                    key: "allowed_tools",
                    message: format!("names unknown profile `{name}`"),
                });
            };
            profile.allowed_tools.clone_from(tools);
        }
        config.validate().map_err(|error| match error {
            // Named with the layer that set the key (the last one that does), and its value.
            ConfigError::Invalid { key, message } => {
                match layers.iter().rev().find_map(|l| Some((l, l.written(key)?))) {
                    Some((layer, written)) => {
                        let shown = if written.is_empty() {
                            message
                        } else {
                            format!("{message} (it is `{written}`)")
                        };
                        layer.error(Some(key.to_string()), shown)
                    }
                    None => ConfigError::Invalid { key, message },
                }
            }
            other => other,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_string() });
        match self.daemon.host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_loopback() => {}
            _ => {
                return invalid(
                    "daemon.host",
                    "must be a loopback address such as 127.0.0.1 (the API is local only)",
                )
            }
        }
        for (key, value) in [
            ("daemon.max_connections", self.daemon.max_connections as u64),
            ("daemon.header_timeout_ms", self.daemon.header_timeout_ms),
            ("daemon.body_timeout_ms", self.daemon.body_timeout_ms),
            ("daemon.max_body_bytes", self.daemon.max_body_bytes as u64),
            ("daemon.max_batch_events", self.daemon.max_batch_events as u64),
            ("daemon.dashboard_session_secs", self.daemon.dashboard_session_secs),
            ("daemon.stall_secs", self.daemon.stall_secs),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        if self.scheduler.slots == 0 {
            return invalid("scheduler.slots", "must be at least 1");
        }
        if self.scheduler.tick_ms == 0 {
            return invalid("scheduler.tick_ms", "must be at least 1");
        }
        if self.tasks.max_attempts == 0 {
            return invalid("tasks.max_attempts", "must be at least 1");
        }
        if self.tasks.profile.trim().is_empty() {
            return invalid("tasks.profile", "must not be empty");
        }
        if self.tasks.retry_cap_secs < self.tasks.retry_base_secs {
            return invalid("tasks.retry_cap_secs", "must not be less than tasks.retry_base_secs");
        }
        if self.runtime.poll_ms == 0 {
            return invalid("runtime.poll_ms", "must be at least 1");
        }
        if self.runtime.tmux_socket.is_empty() || self.runtime.tmux_socket.contains('/') {
            return invalid("runtime.tmux_socket", "must be a plain name such as `ccm`");
        }
        for (owner, globs) in &self.ownership {
            for glob in globs {
                if let Err(e) = globset::Glob::new(glob) {
                    return Err(ConfigError::Invalid {
                        key: "ownership",
                        message: format!("`{owner}`: bad glob `{glob}`: {e}"),
                    });
                }
            }
        }
        for (name, sequence) in &self.sequences {
            sequence
                .check(name)
                .map_err(|message| ConfigError::Invalid { key: "sequences", message })?;
        }
        if let Some(reviewer) = &self.change_requests.reviewer {
            match self.profiles.get(reviewer) {
                None => {
                    return invalid(
                        "change_requests.reviewer",
                        &format!("names unknown profile `{reviewer}`"),
                    )
                }
                Some(p) if p.mode == crate::agents::profile::Mode::External => {
                    return invalid(
                        "change_requests.reviewer",
                        &format!("profile `{reviewer}` is external: nothing would run it"),
                    )
                }
                Some(_) => {}
            }
        }
        check_cap(self.daily_cost_cap_usd)
            .map_err(|(message, _)| ConfigError::Invalid { key: "daily_cost_cap_usd", message })?;
        for (name, account) in &self.accounts {
            check_cap(account.daily_cost_cap_usd).map_err(|(problem, usd)| {
                ConfigError::Invalid {
                    key: "accounts",
                    message: format!("`{name}.daily_cost_cap_usd` {problem}; it is `{usd}`"),
                }
            })?;
            if !self.profiles.iter().any(|(profile, p)| p.account(profile) == name) {
                return Err(ConfigError::Invalid {
                    key: "accounts",
                    message: format!(
                        "`{name}` is the account of no profile (a profile's `account`, by \
                         default its name)"
                    ),
                });
            }
        }
        if self.coordination.max_subtasks_per_parent == 0 {
            return invalid("coordination.max_subtasks_per_parent", "must be at least 1");
        }
        self.sync.validate()?;
        self.notify.validate()?;
        if let Some(land) = &self.land {
            land.validate()?;
        }
        self.retention.validate()?;
        self.backup.validate()?;
        for (name, profile) in &self.profiles {
            profile
                .validate(name)
                .map_err(|message| ConfigError::Invalid { key: "profiles", message })?;
            for fallback in &profile.fallback_profiles {
                let problem = match self.profiles.get(fallback) {
                    None => "an unknown profile",
                    Some(_) if fallback == name => "the profile itself",
                    Some(p) if p.mode == crate::agents::profile::Mode::External => {
                        "an external profile (no agent runs it)"
                    }
                    Some(_) => continue,
                };
                return Err(ConfigError::Invalid {
                    key: "profiles",
                    message: format!(
                        "profile `{name}`: fallback_profiles names `{fallback}`, {problem}"
                    ),
                });
            }
        }
        for (name, supervisor) in &self.supervisors {
            supervisor
                .validate(name, &self.profiles)
                .map_err(|message| ConfigError::Invalid { key: "supervisors", message })?;
            if supervisor.is_fleet() && self.sync.url.is_none() && self.sync.rest_url.is_none() {
                return Err(ConfigError::Invalid {
                    key: "supervisors",
                    message: format!(
                        "`{name}`: scope fleet reads the central: it needs sync (sync.url or \
                         sync.rest_url)"
                    ),
                });
            }
        }
        for (name, workflow) in &self.workflows {
            if let Some(fallback) =
                workflow.fallback_profiles.iter().find(|p| !self.profiles.contains_key(*p))
            {
                return Err(ConfigError::Invalid {
                    key: "workflows",
                    message: format!(
                        "workflow `{name}`: fallback_profiles names unknown profile `{fallback}`"
                    ),
                });
            }
            for step in &workflow.steps {
                if let Some(profile) =
                    step.profile.as_deref().filter(|p| !self.profiles.contains_key(*p))
                {
                    return Err(ConfigError::Invalid {
                        key: "workflows",
                        message: format!("workflow `{name}` names unknown profile `{profile}`"),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Layer {
    fn add_to(
        &self,
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> config::ConfigBuilder<config::builder::DefaultState> {
        match self {
            Layer::File(path) => builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Yaml)),
            Layer::Env(vars) => builder.add_source(
                config::Environment::with_prefix("CCM")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(vars.clone().into_iter().collect())),
            ),
        }
    }

    /// The value this layer gives `key` (dotted), as written in the file or the variable (empty
    /// for a list or a map); `None` when it does not set the key.
    fn written(&self, key: &str) -> Option<String> {
        match self {
            Layer::File(path) => {
                let text = std::fs::read_to_string(path).ok()?;
                let docs = yaml_rust2::YamlLoader::load_from_str(&text).ok()?;
                let mut node = docs.into_iter().next()?;
                for part in key.split('.') {
                    node = node.as_hash()?.get(&yaml_rust2::Yaml::String(part.into()))?.clone();
                }
                match node {
                    yaml_rust2::Yaml::Real(text) | yaml_rust2::Yaml::String(text) => Some(text),
                    yaml_rust2::Yaml::Integer(n) => Some(n.to_string()),
                    yaml_rust2::Yaml::Boolean(b) => Some(b.to_string()),
                    yaml_rust2::Yaml::Null => Some("null".into()),
                    // A list or a map: set here, but no one value to show.
                    _ => Some(String::new()),
                }
            }
            Layer::Env(vars) => {
                let wanted = format!("CCM_{}", key.replace('.', "__")).to_ascii_uppercase();
                vars.iter()
                    .find(|(name, _)| name.to_ascii_uppercase() == wanted)
                    .map(|(_, v)| v.clone())
            }
        }
    }

    /// A file's `true` or `1.5` where a whole number belongs, which the `config` crate would
    /// quietly turn into one, is a wrong type.
    fn check_numbers(&self) -> Result<(), ConfigError> {
        let Layer::File(path) = self else { return Ok(()) };
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
        let Some(doc) =
            yaml_rust2::YamlLoader::load_from_str(&text).ok().and_then(|d| d.into_iter().next())
        else {
            return Ok(());
        };
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        match not_whole(&doc, &defaults, "") {
            Some((key, written)) => Err(ConfigError::Key {
                path: path.clone(),
                key,
                message: format!(
                    "wrong type: `{written}` is not a whole number, expected an integer"
                ),
            }),
            None => Ok(()),
        }
    }

    fn error(&self, key: Option<String>, message: String) -> ConfigError {
        let message = match (message.split_once(", expected "), key.as_deref()) {
            (Some((found, expected)), Some(key)) => {
                type_message(found, expected, self.written(key)).unwrap_or(message)
            }
            _ => message,
        };
        match (self, key) {
            (Layer::File(path), Some(key)) => ConfigError::Key { path: path.clone(), key, message },
            (Layer::File(path), None) => ConfigError::File { path: path.clone(), message },
            (Layer::Env(vars), key) => {
                let key = key.unwrap_or_default();
                let wanted = format!("CCM_{}", key.replace('.', "__")).to_ascii_uppercase();
                let var = vars
                    .keys()
                    .find(|name| {
                        name.to_ascii_uppercase() == wanted
                            || name.to_ascii_uppercase().starts_with(&wanted)
                    })
                    .cloned()
                    .unwrap_or_else(|| vars.keys().cloned().collect::<Vec<_>>().join(", "));
                ConfigError::Env { var, key, message }
            }
        }
    }
}

/// The first key under `node` (YAML) whose default in `defaults` is a whole number but which
/// holds a boolean or a fraction, with its value as written.
fn not_whole(
    node: &yaml_rust2::Yaml,
    defaults: &serde_json::Value,
    prefix: &str,
) -> Option<(String, String)> {
    let (yaml_rust2::Yaml::Hash(map), serde_json::Value::Object(defaults)) = (node, defaults)
    else {
        return None;
    };
    map.iter().find_map(|(name, value)| {
        let name = name.as_str()?;
        let default = defaults.get(name)?;
        let key = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        match (value, default) {
            (yaml_rust2::Yaml::Boolean(b), serde_json::Value::Number(n))
                if n.is_u64() || n.is_i64() =>
            {
                Some((key, b.to_string()))
            }
            (yaml_rust2::Yaml::Real(r), serde_json::Value::Number(n))
                if n.is_u64() || n.is_i64() =>
            {
                Some((key, r.clone()))
            }
            _ => not_whole(value, default, &key),
        }
    })
}

/// serde's "invalid type: integer `5`, expected a map" as the user wrote it: a number beyond
/// what an integer key holds is out of range, any other mismatch a wrong type, naming what was
/// written (serde shows a number as the one it was converted to: a value beyond 64 bits as
/// 18446744073709551615) and what the key takes. `None` for other messages.
fn type_message(found: &str, expected: &str, written: Option<String>) -> Option<String> {
    let found =
        found.strip_prefix("invalid type: ").or_else(|| found.strip_prefix("invalid value: "))?;
    let number = found.contains("integer") || found.starts_with("floating point");
    let written = written.filter(|w| !w.is_empty());
    if number && expected.contains("integer") {
        let written = written.unwrap_or_else(|| found.to_string());
        return Some(format!("`{written}` is out of range: expected {expected}"));
    }
    let kind = match found.split([' ', '`']).next().unwrap_or_default() {
        _ if number => "a number",
        "string" => "a string",
        "boolean" => "true or false",
        "sequence" => "a list",
        "map" => "a map of keys",
        "unit" => "empty",
        _ => found,
    };
    let expected = match expected {
        "a sequence" => "a list".to_string(),
        "a map" => "a map of keys".to_string(),
        other => match other.strip_prefix("struct ") {
            Some(_) => "a section of keys".to_string(),
            None => other.to_string(),
        },
    };
    Some(match written {
        Some(written) if kind != "empty" => {
            format!("wrong type: `{written}` is {kind}, expected {expected}")
        }
        _ => format!("wrong type: {kind}, expected {expected}"),
    })
}

/// Deserializes into [`Config`], returning the dotted key and the message on failure. For an
/// unknown key the path stops at its parent, so the key itself is taken from the message.
fn deserialize(source: config::Config) -> Result<Config, (String, String)> {
    serde_path_to_error::deserialize(source).map_err(|error| {
        let mut key = error.path().to_string();
        let message = error.inner().to_string();
        if let Some(unknown) =
            message.strip_prefix("unknown field `").and_then(|rest| rest.split('`').next())
        {
            key = match key.as_str() {
                "." | "" => unknown.to_string(),
                path if path == unknown || path.ends_with(&format!(".{unknown}")) => key,
                path => format!("{path}.{unknown}"),
            };
        }
        // `config` appends its own origin and key to some messages; keep the serde part.
        let message = message.split(" for key `").next().unwrap_or(&message).to_string();
        (key, message)
    })
}

/// The `.ccm/config.yaml` that `ccm init` writes: every key commented out at its default.
pub const PROJECT_TEMPLATE: &str = "\
# ccm project configuration. Keys here override ~/.ccm-global/config.yaml;
# CCM_<SECTION>__<KEY> environment variables override both.
#
# scheduler:
#   slots: 4             # tasks that may hold an agent slot at once
# tasks:
#   profile: claude      # agent profile of tasks that name none
#   max_attempts: 3
#   retry_base_secs: 10
#   retry_cap_secs: 600
# worktree:
#   copy_files: [.env]   # copied into each task's worktree
#   setup: npm ci        # run in each new worktree
# ownership:             # files pre-assigned to a workflow or task (strict ownership)
#   code-review: ['src/api/**']
# approvals:             # tool calls that wait for `ccm decide`
#   timeout_secs: 300
#   default: deny
#   rules:
#     - tools: [Bash]
#       command: '^git push'
# land:                  # landing finished tasks on the target branch (`ccm land`)
#   target: main         # default: the checkout's default branch
#   mode: rebase         # merge | rebase | squash | pr
#   auto: false          # true: land every task that passes its gate
#   verify_after_merge: true
#   verify: cargo test   # default: the task's own verify
#   push: false          # also push the target to its remote (never forced)
#   remote: origin
#   keep_days: 7         # ended tasks' branches and worktrees kept this long (`ccm gc`)
#   forge: github        # mode pr: a pull request through GitHub's REST API
#   api_url: https://api.github.com   # default: $GITHUB_API_URL, else GitHub's
#   repo: owner/name     # default: from the remote's URL; token: auth.json github_token or $GITHUB_TOKEN
#   on_checks_failed: retry   # or decide: failing checks ask the operator
#   poll_secs: 15        # between two looks at the pull request's checks
# allowed_tools:         # tools a profile's agents use without asking (replaces its list)
#   claude: [Bash, Edit, Write, NotebookEdit, mcp__ccm]
# sequences:             # numbers agents allocate through ccm's MCP server (`allocate`)
#   migrations: {start: 1, format: \"{:04}\"}
# change_requests:       # writes refused by ownership and agents' request_change
#   reviewer: claude     # a headless run decides each one (VERDICT: approve|reject); default: you
# daily_cost_cap_usd: 5  # no new agent of this project starts once its agents cost $5 today
# accounts:              # (global file) per account: accounts: {team-a: {daily_cost_cap_usd: 20}}
# coordination:          # sub-tasks agents create through ccm's MCP server, and --split
#   max_subtask_depth: 2
#   max_subtasks_per_parent: 20
#   resume_parent: true  # a parent that ends with open sub-tasks resumes when they are complete
# profiles:              # custom agents; {prompt} {prompt_file} {session_id} {cwd} {allowed_tools} {mcp_config}
#   my-agent:
#     command: [my-agent, --prompt, '{prompt}']
#     stdin: none        # or prompt: the prompt on stdin (headless; any size, unlike {prompt})
#     output: plain      # claude | gemini | codex | plain
#     context: {threshold: 0.8, action: warn, window: 200000}  # or action: handoff
#   claude:              # a built-in without a command: the built-in with this context policy
#     context: {threshold: 0.8, action: handoff}
#     account: team-a    # whose usage limit its agents share (default: the profile's name)
#     fallback_profiles: [other]  # run under these while its account is at its limit
{}
";

#[cfg(test)]
mod tests {
    use super::*;

    fn load_yaml(yaml: &str) -> Result<Config, ConfigError> {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("config.yaml"), yaml).unwrap();
        Config::load(home.path(), None)
    }

    /// The configuration with no file: defaults plus the built-in profiles and workflows.
    fn defaults() -> Config {
        let home = tempfile::tempdir().unwrap();
        Config::load(home.path(), None).unwrap()
    }

    #[test]
    fn sync_section_is_off_by_default_and_validated_when_set() {
        assert!(!defaults().sync.enabled());
        let config = load_yaml(
            "sync:\n  url: https://abc.supabase.co\n  publishable_key: sb_publishable_x\n  priority: high\n",
        )
        .unwrap();
        let endpoint = config.sync.endpoint().unwrap().unwrap();
        assert_eq!(endpoint.rest_url.as_str(), "https://abc.supabase.co/rest/v1/");
        assert_eq!(config.sync.interval(), std::time::Duration::from_secs(300));
        let missing_key = load_yaml("sync:\n  rest_url: http://127.0.0.1:3000\n").unwrap_err();
        assert!(missing_key.to_string().contains("sync.publishable_key"), "{missing_key}");
        let bad_url = load_yaml("sync:\n  rest_url: nowhere\n  publishable_key: k\n").unwrap_err();
        assert!(bad_url.to_string().contains("sync.rest_url"), "{bad_url}");
        let bad_auth = load_yaml(
            "sync:\n  rest_url: http://127.0.0.1:3000\n  auth_url: nowhere\n  publishable_key: k\n",
        )
        .unwrap_err();
        assert!(bad_auth.to_string().contains("sync.auth_url"), "{bad_auth}");
        let own = load_yaml("sync:\n  rest_url: http://127.0.0.1:3000\n  auth_url: http://127.0.0.1:9999/auth/v1\n  publishable_key: k\n")
            .unwrap();
        let endpoint = own.sync.endpoint().unwrap().unwrap();
        assert_eq!(endpoint.auth_url.unwrap().as_str(), "http://127.0.0.1:9999/auth/v1/");
        let zero = load_yaml("sync:\n  completions: 0\n").unwrap_err();
        assert!(zero.to_string().contains("sync.completions"), "{zero}");
        for key in ["health_secs", "health_backlog"] {
            let zero = load_yaml(&format!("sync:\n  {key}: 0\n")).unwrap_err();
            assert!(zero.to_string().contains(&format!("sync.{key}")), "{zero}");
        }
    }

    #[test]
    fn defaults_apply_without_files() {
        let config = defaults();
        assert_eq!(config.daemon, DaemonConfig::default());
        assert!(["claude", "gemini", "codex"].iter().all(|p| config.profiles.contains_key(*p)));
        assert!(config.workflows["code-review"].step(Role::Supervisor).is_some());
    }

    #[test]
    fn custom_profile_and_workflow_are_added_to_the_builtins() {
        let config = load_yaml(
            "profiles:\n  fake:\n    command: [sh, -c, 'echo {prompt}']\n\
             workflows:\n  check:\n    steps:\n      - role: supervisor\n        profile: fake\n        prompt: '{report}'\n",
        )
        .unwrap();
        assert_eq!(config.profiles["fake"].command, ["sh", "-c", "echo {prompt}"]);
        assert!(config.profiles.contains_key("claude"));
        assert!(
            config.workflows.contains_key("check") && config.workflows.contains_key("code-review")
        );
        let error = load_yaml("workflows:\n  w:\n    steps:\n      - role: worker\n        profile: nope\n        prompt: x\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown profile `nope`"), "{error}");
    }

    #[test]
    fn fallback_profiles_must_name_other_profiles_that_run_agents() {
        let profile = |extra: &str| {
            format!("profiles:\n  mine:\n    command: [mine]\n    account: team\n{extra}")
        };
        let config = load_yaml(&profile("    fallback_profiles: [claude]\n")).unwrap();
        assert_eq!(config.profiles["mine"].account("mine"), "team");
        assert_eq!(config.profiles["claude"].account("claude"), "claude");
        for (fallback, problem) in [
            ("nobody", "`nobody`, an unknown profile"),
            ("mine", "`mine`, the profile itself"),
            ("manual", "`manual`, an external profile (no agent runs it)"),
        ] {
            let extra = format!("    fallback_profiles: [{fallback}]\n");
            let error = load_yaml(&profile(&extra)).unwrap_err().to_string();
            assert!(error.contains(&format!("fallback_profiles names {problem}")), "{error}");
        }
        let workflow = "workflows:\n  w:\n    steps: []\n    fallback_profiles: [nobody]\n";
        let error = load_yaml(workflow).unwrap_err().to_string();
        assert!(
            error.contains("workflow `w`: fallback_profiles names unknown profile `nobody`"),
            "{error}"
        );
    }

    #[test]
    fn a_project_replaces_a_profiles_allowed_tools() {
        let home = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        std::fs::create_dir(project.path().join(".ccm")).unwrap();
        std::fs::write(
            project.path().join(".ccm/config.yaml"),
            "allowed_tools:\n  claude: ['Bash(git *)', Edit]\n",
        )
        .unwrap();
        let config = Config::load(home.path(), Some(project.path())).unwrap();
        assert_eq!(config.profiles["claude"].allowed_tools, ["Bash(git *)", "Edit"]);
        assert_eq!(
            defaults().profiles["claude"].allowed_tools,
            ["Bash", "Edit", "Write", "NotebookEdit", "mcp__ccm"]
        );
        let error = load_yaml("allowed_tools:\n  cluade: [Bash]\n").unwrap_err().to_string();
        assert_eq!(error, "config key `allowed_tools`: names unknown profile `cluade`");
    }

    #[test]
    fn project_file_overrides_global_file() {
        let home = tempfile::tempdir().unwrap();
        let project = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("config.yaml"), "scheduler:\n  slots: 2\n  tick_ms: 50\n")
            .unwrap();
        std::fs::create_dir(project.path().join(".ccm")).unwrap();
        std::fs::write(project.path().join(".ccm/config.yaml"), "scheduler:\n  slots: 7\n")
            .unwrap();
        let config = Config::load(home.path(), Some(project.path())).unwrap();
        assert_eq!(config.scheduler.slots, 7);
        assert_eq!(config.scheduler.tick_ms, 50);
    }

    #[test]
    fn unknown_key_is_named_with_its_file() {
        let error = load_yaml("daemon:\n  prot: 9000\n").unwrap_err().to_string();
        assert!(error.contains("config.yaml"), "{error}");
        assert!(error.contains("key `daemon.prot`"), "{error}");
    }

    #[test]
    fn wrong_type_is_named_with_its_file_and_key() {
        let error = load_yaml("daemon:\n  port: lots\n").unwrap_err().to_string();
        assert!(error.contains("config.yaml"), "{error}");
        assert!(error.contains("key `daemon.port`"), "{error}");
    }

    #[test]
    fn wrong_type_is_reported_as_a_wrong_type_with_the_expected_one() {
        for (yaml, key, expected) in [
            ("profiles: 5\n", "profiles", "wrong type: `5` is a number, expected a map of keys"),
            (
                "worktree:\n  copy_files: 5\n",
                "worktree.copy_files",
                "wrong type: `5` is a number, expected a list",
            ),
            (
                "scheduler:\n  slots: many\n",
                "scheduler.slots",
                "wrong type: `many` is a string, expected an integer",
            ),
            (
                "scheduler:\n  slots: [1]\n",
                "scheduler.slots",
                "wrong type: a list, expected an integer",
            ),
            (
                "scheduler: lots\n",
                "scheduler",
                "wrong type: `lots` is a string, expected a section of keys",
            ),
            (
                "daemon:\n  port: 70000\n",
                "daemon.port",
                "`70000` is out of range: expected an unsigned 16 bit integer",
            ),
            (
                "scheduler:\n  slots: 1.5\n",
                "scheduler.slots",
                "wrong type: `1.5` is not a whole number, expected an integer",
            ),
            (
                "daemon:\n  port: true\n",
                "daemon.port",
                "wrong type: `true` is not a whole number, expected an integer",
            ),
        ] {
            let error = load_yaml(yaml).unwrap_err().to_string();
            assert!(error.contains(&format!("key `{key}`: {expected}")), "{yaml}: {error}");
        }
    }

    #[test]
    fn approval_pattern_that_is_not_a_regular_expression_is_named_with_its_key() {
        let error =
            load_yaml("approvals:\n  rules:\n    - tools: [Bash]\n      command: 'git (push'\n")
                .unwrap_err()
                .to_string();
        assert!(error.contains("key `approvals.rules[0].command`"), "{error}");
        assert!(error.contains("`git (push` is not a valid regular expression"), "{error}");
    }

    #[test]
    fn a_land_section_is_read_with_its_defaults_and_bad_values_are_named() {
        assert_eq!(defaults().land, None);
        let land = load_yaml("land:\n  auto: true\n  mode: squash\n").unwrap().land.unwrap();
        assert_eq!(
            land,
            LandConfig { auto: true, mode: LandMode::Squash, ..LandConfig::default() }
        );
        assert!(land.verify_after_merge);
        assert!(!land.push);
        for (yaml, expected) in [
            (
                "land:\n  mode: fast\n",
                "key `land.mode`: unknown mode `fast`, expected merge, rebase, squash or pr",
            ),
            ("land:\n  atuo: true\n", "key `land.atuo`"),
            ("land:\n  auto: sometimes\n", "key `land.auto`"),
            (
                "land:\n  target: 'my branch'\n",
                "key `land.target`: must be a branch name such as `main`",
            ),
            ("land:\n  target: 'main'\n  verify: ' '\n", "key `land.verify`: must not be empty"),
            ("land:\n  keep_days: -1\n", "key `land.keep_days`"),
            ("land:\n  mode: pr\n  repo: app\n", "key `land.repo`: must be `owner/name`"),
            ("land:\n  mode: pr\n  api_url: api.github.com\n", "key `land.api_url`"),
            ("land:\n  on_checks_failed: ask\n", "key `land.on_checks_failed`"),
            ("land:\n  forge: gitlab\n", "key `land.forge`"),
            ("land:\n  poll_secs: 0\n", "key `land.poll_secs`: must be at least 1"),
        ] {
            let error = load_yaml(yaml).unwrap_err().to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        let error = load_yaml("land:\n  target: 'a b'\n").unwrap_err().to_string();
        assert!(error.contains("(it is `a b`)"), "{error}");
        let pr = "land:\n  mode: pr\n  repo: octo-org/app\n  on_checks_failed: decide\n";
        let land = load_yaml(pr).unwrap().land.unwrap();
        assert_eq!(land.repo.as_deref(), Some("octo-org/app"));
        assert_eq!(land.on_checks_failed, OnChecksFailed::Decide);
        assert_eq!(land.forge, Forge::Github);
    }

    #[test]
    fn project_template_is_valid_config() {
        let project = tempfile::tempdir().unwrap();
        std::fs::create_dir(project.path().join(".ccm")).unwrap();
        std::fs::write(project.path().join(".ccm/config.yaml"), PROJECT_TEMPLATE).unwrap();
        let home = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(home.path(), Some(project.path())).unwrap(), defaults());
    }
}
