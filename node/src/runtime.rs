//! The agent runtime: carries tasks from `queued` to `complete` (SPEC sections 4 and 5).
//!
//! It is a reconciler. Each pass compares what the database says should happen with what is
//! really there (exit files, output logs, tmux windows) and closes the gap:
//!
//! - a `queued` task gets its worktree and a worker agent in a tmux window;
//! - a live agent's output is parsed (session, cost, tokens, last message, usage limits) and
//!   counts as a heartbeat; silence raises a `stalled` alert, and past the lease the task is
//!   reclaimed; an agent whose task no longer wants it is stopped;
//! - a finished worker goes through the verification gate (`verify` in the worktree);
//! - `report_generation` gathers the report; `supervisory` runs the workflow's supervisor and
//!   applies its verdict; a finished task's worktree is cleaned up without losing work.
//!
//! Work that takes time runs as a job (one per task at a time), so one slow `verify` holds up
//! nothing else. Everything the runtime knows lives in the database and the agent directories,
//! so after a restart the first pass adopts running agents and finishes what was cut short:
//! that is the whole of adoption.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_schema::{
    Agent, AgentKind, AgentStatus, FailureClass, Severity, Task, TaskEvent, TaskState, Timestamp,
};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::agents::gemini_state;
use crate::agents::parse::{last_text_line, ExitMeaning, OutputFormat, OutputSummary, Quota};
use crate::agents::profile::{Mode, Placeholders, Profile};
use crate::config::{Config, Role};
use crate::home::Home;
use crate::store::{AgentProgress, AttemptEnd, NewAgent, RetryPolicy, Store};
use crate::tmux::{Tmux, WindowSpec};
use crate::worktree::{self, Worktree};

/// Longest verify output kept with an attempt (its end is kept).
const VERIFY_OUTPUT_LIMIT: usize = 16 * 1024;
/// How often a live agent's progress is written to the database at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the tmux window list is read at most.
const WINDOWS_EVERY: Duration = Duration::from_millis(500);
/// How long an agent's window must stay missing (and no exit status appear) before the agent
/// counts as vanished.
const VANISHED_AFTER: Duration = Duration::from_secs(1);
/// How long an agent whose own turn failed (its `StopFailure` hook moved the task on) may take
/// to exit by itself before it is stopped.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// The agent runtime; cheap to clone (jobs hold a clone).
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    pub config: Arc<Config>,
    pub home: Home,
    pub tmux: Tmux,
    /// `host:port` of the API, given to agents as `CCM_API`.
    pub api_addr: String,
    /// Wakes the runtime (a task was queued, cancelled, ...).
    pub wake: Arc<Notify>,
    /// Wakes the scheduler (a slot may have been freed).
    pub scheduler_wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// Tasks with a job in flight, and those whose job ended during the current pass.
    jobs: Arc<Mutex<Jobs>>,
}

/// The runtime's jobs, by task.
#[derive(Default)]
struct Jobs {
    /// Tasks with a job in flight.
    running: HashSet<Uuid>,
    /// Tasks whose job ended since the current pass read the tasks: what that pass read of
    /// them is stale (the job moved them on), so they wait for the next pass, which the end of
    /// the job wakes.
    ended: HashSet<Uuid>,
}

/// What the runtime has read of one live agent's output.
struct Observed {
    format: OutputFormat,
    offset: u64,
    partial: Vec<u8>,
    summary: OutputSummary,
    last_output: Instant,
    saved: Option<Instant>,
    dirty: bool,
    /// Since when the agent's window has been missing (one missing list may be a hiccup).
    missing_since: Option<Instant>,
}

/// The runtime's memory between passes; rebuilt from files after a restart.
#[derive(Default)]
pub struct Passes {
    observed: HashMap<Uuid, Observed>,
    windows: Option<(Instant, HashSet<String>)>,
}

impl Runtime {
    pub fn new(
        store: Store,
        config: Arc<Config>,
        home: Home,
        api_addr: String,
        scheduler_wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Runtime {
        let tmux = Tmux::new(config.runtime.tmux_socket.clone());
        Runtime {
            store,
            config,
            home,
            tmux,
            api_addr,
            wake: Arc::new(Notify::new()),
            scheduler_wake,
            shutdown,
            jobs: Arc::default(),
        }
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy::from(&*self.config)
    }

    /// Runs passes until shutdown; agents keep running in tmux after it.
    pub async fn run(self, mut passes: Passes) {
        let poll = Duration::from_millis(self.config.runtime.poll_ms);
        async move {
            loop {
                if let Err(error) = self.pass(&mut passes).await {
                    warn!(error = %format!("{error:#}"), "runtime pass failed; retrying");
                }
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        }
        .instrument(info_span!("runtime"))
        .await
    }

    /// One reconciliation of the database with reality.
    pub async fn pass(&self, passes: &mut Passes) -> anyhow::Result<()> {
        // Before the tasks are read: jobs that ended until now are in what is read.
        self.jobs().ended.clear();
        let tasks: HashMap<Uuid, Task> =
            self.store.runtime_tasks().await?.into_iter().map(|t| (t.id, t)).collect();
        // Queued tasks first: starting them waits for nothing the rest of the pass finds, and
        // observing the agents takes a while (a tmux window list, a read of every output log).
        // Cleanups wait while tasks are queued, so no dispatch waits behind one.
        let dispatching = tasks.values().any(|t| t.state == TaskState::Queued);
        for task in tasks.values().filter(|t| t.state == TaskState::Queued) {
            self.advance(task, dispatching).await?;
        }
        let agents = self.store.live_agents().await?;
        passes.observed.retain(|id, _| agents.iter().any(|a| a.id == *id));
        for agent in agents {
            if let Err(error) = self.observe(&agent, tasks.get(&agent.task_id), passes).await {
                warn!(agent = %agent.short_id(), error = %format!("{error:#}"), "cannot observe agent");
            }
        }
        for task in tasks.values().filter(|t| t.state != TaskState::Queued) {
            self.advance(task, dispatching).await?;
        }
        Ok(())
    }

    /// Reads the agent's new output, and ends it when it exited, vanished, or is not wanted.
    async fn observe(
        &self,
        agent: &Agent,
        task: Option<&Task>,
        passes: &mut Passes,
    ) -> anyhow::Result<()> {
        if agent.status == AgentStatus::Starting {
            return self.settle_start(agent).await;
        }
        let dir = PathBuf::from(&agent.dir);
        let format = self.profile(&agent.profile).map_or(OutputFormat::Plain, |p| p.output);
        let Passes { observed, windows } = passes;
        let observed = observed.entry(agent.id).or_insert_with(|| Observed {
            format,
            offset: 0,
            partial: Vec::new(),
            summary: OutputSummary::default(),
            last_output: Instant::now(),
            saved: None,
            dirty: false,
            missing_since: None,
        });
        read_output(&dir.join("output.log"), observed).await?;

        if let Some(code) = read_exit(&dir).await {
            read_output(&dir.join("output.log"), observed).await?;
            self.save_progress(agent, observed, true).await?;
            self.store.agent_ended(agent.id, AgentStatus::Exited, Some(code)).await?;
            if let Some(until) = observed.summary.quota.as_ref().and_then(quota_until) {
                // A hook may have moved the task to `waiting_quota` before the output said
                // when the limit resets.
                self.store.set_quota_reset(agent.task_id, agent.attempt, until).await?;
            }
            info!(agent = %agent.short_id(), code, "agent exited");
            self.wake.notify_one();
            return Ok(());
        }
        self.save_progress(agent, observed, false).await?;

        let wanted = task.is_some_and(|t| {
            t.attempts == agent.attempt
                && match agent.kind {
                    AgentKind::Worker => t.state == TaskState::Executing,
                    AgentKind::Supervisory => t.state == TaskState::Supervisory,
                }
        });
        if !wanted && self.exiting_by_itself(agent, task).await? {
            return Ok(());
        }
        if !wanted {
            info!(agent = %agent.short_id(), "task no longer needs the agent; stopping it");
            return self.stop(agent, AgentStatus::Killed).await;
        }

        let alive = match &agent.window_id {
            Some(window) => self.window_exists(window, windows).await?,
            None => false,
        };
        if alive {
            observed.missing_since = None;
        } else if read_exit(&dir).await.is_none() {
            // Gone for good only when missing from lists taken a while apart.
            let since = *observed.missing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= VANISHED_AFTER {
                warn!(agent = %agent.short_id(), "agent vanished without an exit status");
                self.store.agent_ended(agent.id, AgentStatus::Lost, None).await?;
                self.wake.notify_one();
            }
            return Ok(());
        }

        let heartbeat = Timestamp::now().millis() - agent.last_heartbeat.millis();
        let silent =
            observed.last_output.elapsed().min(Duration::from_millis(heartbeat.max(0) as u64));
        let runtime = &self.config.runtime;
        if agent.kind == AgentKind::Worker && silent >= Duration::from_secs(runtime.lease_secs) {
            warn!(agent = %agent.short_id(), "lease expired; reclaiming the task");
            self.stop(agent, AgentStatus::Killed).await?;
            let end = AttemptEnd {
                outcome: "timeout",
                verify_output: None,
                last_message: observed.summary.last_message.clone(),
            };
            let reason = format!("no sign of life for {}s: lease expired", silent.as_secs());
            self.store
                .end_attempt(
                    agent.task_id,
                    &end,
                    TaskEvent::Failed { class: FailureClass::Timeout },
                    &reason,
                    self.policy(),
                )
                .await?;
            self.scheduler_wake.notify_one();
        } else if silent >= Duration::from_secs(runtime.stall_secs) {
            self.store.alert_stalled(agent, silent.as_secs()).await?;
        }
        Ok(())
    }

    /// Whether the agent's task left `executing` a moment ago because of the agent's own failure
    /// (its `StopFailure` hook moved it to `waiting_quota` or `retry`), so the agent is
    /// exiting by itself and gets `EXIT_GRACE` to do so before it is stopped.
    async fn exiting_by_itself(&self, agent: &Agent, task: Option<&Task>) -> anyhow::Result<bool> {
        if agent.kind != AgentKind::Worker {
            return Ok(false);
        }
        let task = match task {
            Some(task) => task.clone(),
            None => self.store.task(&agent.task_id.to_string()).await?.task,
        };
        let since = Timestamp::now().millis() - task.updated_at.millis();
        // A usage limit uncounts the attempt it interrupted.
        let moved_by_its_failure = matches!(
            task.state,
            TaskState::WaitingQuota | TaskState::Retry | TaskState::Error | TaskState::Blocked
        );
        Ok(moved_by_its_failure
            && task.attempts <= agent.attempt
            && since < EXIT_GRACE.as_millis() as i64)
    }

    /// An agent recorded as starting and no job opening its window: the daemon stopped between
    /// recording the agent and recording its window. Adopt the window if it was opened (it is
    /// named after the agent), else the agent never ran.
    async fn settle_start(&self, agent: &Agent) -> anyhow::Result<()> {
        if self.has_job(agent.task_id) {
            return Ok(()); // its window is being opened right now
        }
        if self.store.agent(&agent.id.to_string()).await?.status != AgentStatus::Starting {
            return Ok(()); // the job finished since this pass read the agent
        }
        let name = agent.short_id();
        match self.tmux.windows().await?.into_iter().find(|w| w.name == name) {
            Some(window) => self.store.agent_running(agent.id, &window.id, window.pane_pid).await?,
            None => {
                warn!(agent = %name, "agent was recorded but its window never opened");
                self.store.agent_ended(agent.id, AgentStatus::Lost, None).await?;
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Writes the agent's progress when its output changed (at most every second, and always
    /// at the end).
    async fn save_progress(
        &self,
        agent: &Agent,
        observed: &mut Observed,
        last: bool,
    ) -> anyhow::Result<()> {
        let due = observed.saved.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if !(observed.dirty && (due || last)) {
            return Ok(());
        }
        let s = &observed.summary;
        let progress = AgentProgress {
            session_id: s.session_id.clone(),
            cost_usd: s.cost_usd,
            input_tokens: s.input_tokens as i64,
            output_tokens: s.output_tokens as i64,
            tool_calls: i64::from(s.tool_calls),
            summary: serde_json::to_value(s)?,
        };
        self.store.agent_progress(agent.id, &progress).await?;
        observed.saved = Some(Instant::now());
        observed.dirty = false;
        Ok(())
    }

    /// Whether the window exists. A window list at most `WINDOWS_EVERY` old answers yes; a
    /// no is checked against a fresh list (the window may be newer than the list).
    async fn window_exists(
        &self,
        window: &str,
        windows: &mut Option<(Instant, HashSet<String>)>,
    ) -> anyhow::Result<bool> {
        let listed = |windows: &Option<(Instant, HashSet<String>)>| {
            windows
                .as_ref()
                .is_some_and(|(at, ids)| at.elapsed() < WINDOWS_EVERY && ids.contains(window))
        };
        if !listed(windows) {
            let ids = self.tmux.windows().await?.into_iter().map(|w| w.id).collect();
            *windows = Some((Instant::now(), ids));
        }
        Ok(listed(windows))
    }

    /// Closes the agent's window and records why it ended.
    async fn stop(&self, agent: &Agent, status: AgentStatus) -> anyhow::Result<()> {
        if let Some(window) = &agent.window_id {
            self.tmux.kill(window).await?;
        }
        self.store.agent_ended(agent.id, status, None).await?;
        Ok(())
    }

    /// Starts the job the task's state calls for, unless one is in flight.
    async fn advance(&self, task: &Task, dispatching: bool) -> anyhow::Result<()> {
        let external = self.profile(&task.profile).is_some_and(|p| p.mode == Mode::External);
        let busy = {
            let jobs = self.jobs();
            jobs.running.contains(&task.id) || jobs.ended.contains(&task.id)
        };
        if busy || (external && !task.state.is_terminal()) {
            return Ok(());
        }
        let job = match task.state {
            TaskState::Queued => Job::StartWorker,
            TaskState::Executing => {
                match self.store.current_agent(task.id, task.attempts, AgentKind::Worker).await? {
                    Some(agent) if agent.status.is_live() => return Ok(()),
                    Some(agent) => Job::FinishWorker(agent),
                    None => Job::Orphaned,
                }
            }
            TaskState::ReportGeneration => Job::Report,
            TaskState::Supervisory => match self
                .store
                .current_agent(task.id, task.attempts, AgentKind::Supervisory)
                .await?
            {
                Some(agent) if agent.status.is_live() => return Ok(()),
                Some(agent) => Job::Judge(agent),
                None => Job::StartReview,
            },
            _ if dispatching => return Ok(()),
            _ => Job::Cleanup,
        };
        self.jobs().running.insert(task.id);
        let runtime = self.clone();
        let task = task.clone();
        let span = info_span!("job", task = %task.short_id(), job = job.name());
        tokio::spawn(
            async move {
                if let Err(error) = runtime.run_job(&task, job).await {
                    warn!(error = %format!("{error:#}"), "job failed; it runs again at the next pass");
                }
                let mut jobs = runtime.jobs();
                jobs.running.remove(&task.id);
                jobs.ended.insert(task.id);
                drop(jobs);
                runtime.wake.notify_one();
                runtime.scheduler_wake.notify_one();
            }
            .instrument(span),
        );
        Ok(())
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.lock().expect("jobs lock is never poisoned: no code panics while holding it")
    }

    fn has_job(&self, task: Uuid) -> bool {
        self.jobs().running.contains(&task)
    }

    async fn run_job(&self, task: &Task, job: Job) -> anyhow::Result<()> {
        debug!("job started");
        match job {
            Job::StartWorker => self.start_worker(task).await,
            Job::FinishWorker(agent) => self.finish_worker(task, &agent).await,
            Job::Orphaned => {
                let end = AttemptEnd { outcome: "crash", verify_output: None, last_message: None };
                let event = TaskEvent::Failed { class: FailureClass::Crash };
                self.store
                    .end_attempt(
                        task.id,
                        &end,
                        event,
                        "no worker agent is recorded for this attempt",
                        self.policy(),
                    )
                    .await?;
                Ok(())
            }
            Job::Report => self.report(task).await,
            Job::StartReview => self.start_review(task).await,
            Job::Judge(agent) => self.judge(task, &agent).await,
            Job::Cleanup => self.cleanup(task).await,
        }
    }

    fn profile(&self, name: &str) -> Option<&Profile> {
        self.config.profiles.get(name)
    }

    /// Fails the task's attempt before any agent ran.
    async fn fail_before_start(
        &self,
        task: &Task,
        class: FailureClass,
        reason: &str,
    ) -> anyhow::Result<()> {
        warn!(reason, "task cannot start");
        self.store
            .runtime_event(task.id, TaskEvent::Failed { class }, reason, self.policy())
            .await?;
        Ok(())
    }

    /// Worktree (or scratch directory), prompt, agent row and tmux window for a queued task.
    async fn start_worker(&self, task: &Task) -> anyhow::Result<()> {
        let workflow = task.workflow.as_deref().map(|w| self.config.workflows.get(w).ok_or(w));
        let workflow = match workflow.transpose() {
            Ok(workflow) => workflow,
            Err(name) => {
                return self
                    .fail_before_start(
                        task,
                        FailureClass::Fatal,
                        &format!("unknown workflow `{name}`"),
                    )
                    .await
            }
        };
        let step = workflow.and_then(|w| w.step(Role::Worker));
        let profile_name =
            step.and_then(|s| s.profile.clone()).unwrap_or_else(|| task.profile.clone());
        let Some(profile) = self.profile(&profile_name).cloned() else {
            return self
                .fail_before_start(
                    task,
                    FailureClass::Fatal,
                    &format!("unknown agent profile `{profile_name}`"),
                )
                .await;
        };
        // The previous attempts (for the prompt) are read while the worktree is prepared.
        let (workspace, attempts) =
            tokio::join!(self.workspace(task), self.store.attempts(task.id));
        let (cwd, unrecorded) = match workspace {
            Ok(workspace) => workspace,
            Err(Workspace::Fatal(reason)) => {
                return self.fail_before_start(task, FailureClass::Fatal, &reason).await
            }
            Err(Workspace::Retry(reason)) => {
                return self.fail_before_start(task, FailureClass::Crash, &reason).await
            }
        };
        let template = step.map_or("{prompt}", |s| s.prompt.as_str());
        let mut prompt =
            render(template, &[("title", &task.title), ("prompt", &task.prompt), ("report", "")]);
        let begun = async {
            if let Some(previous) = attempts?.into_iter().rfind(|a| a.outcome.is_some()) {
                prompt.push_str(&format!(
                    "\n\n---\nThis is attempt {} of {}. Attempt {} ended with `{}`.\nIts verification output:\n```\n{}\n```\nIts last message:\n{}\n",
                    task.attempts + 1,
                    task.max_attempts,
                    previous.number,
                    previous.outcome.as_deref().unwrap_or("unknown"),
                    previous.verify_output.as_deref().unwrap_or("(none)"),
                    previous.last_message.as_deref().unwrap_or("(none)"),
                ));
            }
            let agent = self.new_agent(AgentKind::Worker, &profile_name, &cwd, &prompt).await?;
            let policy = self.policy();
            let begun =
                self.store.begin_attempt(task.id, &agent, &prompt, unrecorded.as_ref(), policy);
            anyhow::Ok((begun.await?, agent.token))
        };
        let ((task, recorded), token) = match begun.await {
            Ok(begun) => begun,
            Err(error) => {
                // The attempt did not begin (the task may have been cancelled meanwhile), but
                // its new worktree must be known, to be cleaned up.
                if let Some(worktree) = &unrecorded {
                    self.store.set_worktree(task.id, Some(worktree)).await?;
                }
                return Err(error);
            }
        };
        self.launch(&task, &recorded, &token, &profile, &prompt).await
    }

    /// The directory the task's agents work in: its git worktree when it has a repository,
    /// else a scratch directory. A worktree made now comes with its record for
    /// `tasks.worktree`, which the caller saves (with the attempt's beginning, for a worker).
    async fn workspace(
        &self,
        task: &Task,
    ) -> Result<(PathBuf, Option<serde_json::Value>), Workspace> {
        let internal = |e: &dyn std::fmt::Display| Workspace::Retry(e.to_string());
        let Some(repo) = &task.repo else {
            let dir = self.home.root().join("scratch").join(task.short_id());
            tokio::fs::create_dir_all(&dir).await.map_err(|e| internal(&e))?;
            return Ok((dir, None));
        };
        if let Some(saved) = self.store.worktree(task.id).await.map_err(|e| internal(&e))? {
            if let Ok(saved) = serde_json::from_value::<SavedWorktree>(saved) {
                if saved.worktree.path.is_dir() {
                    return Ok((saved.worktree.path, None));
                }
            }
        }
        let contexts = self.store.contexts().await.map_err(|e| internal(&e))?;
        let Some(context) = contexts
            .into_iter()
            .find(|c| c.repo_url.as_deref() == Some(repo.as_str()) || c.path == *repo)
        else {
            return Err(Workspace::Fatal(format!(
                "no checkout of {repo} is registered on this system; run `ccm context add PATH` with a clone of it"
            )));
        };
        let repo_path = PathBuf::from(&context.path);
        let settings = crate::config::load_checked(&self.store, self.home.root(), &repo_path)
            .await
            .map_err(|problem| Workspace::Retry(format!("cannot prepare the worktree: {problem}")))?
            .worktree;
        let base = context.default_branch.clone().unwrap_or_else(|| "main".into());
        let short = task.short_id();
        let home = self.home.root().to_owned();
        let runtime = self.clone();
        let repo_for_job = repo_path.clone();
        // Files and git only, all blocking: on a blocking thread, so the preparations of
        // several tasks overlap and none holds up the runtime's other work.
        let span = tracing::Span::current();
        let prepared = tokio::task::spawn_blocking(move || {
            let _job = span.enter();
            let prepared = worktree::prepare(&worktree::Spec {
                repo: &repo_for_job,
                base_branch: &base,
                short_id: &short,
                root: &home.join("worktrees"),
                copy_files: &settings.copy_files,
                setup: settings.setup.as_deref(),
            })?;
            // Local hook settings are not committed, so the worktree gets ccm's hooks of its own,
            // kept out of the agent's commits whatever git command it runs.
            let ccm = crate::hooks::ccm_command();
            let options = runtime.hook_options(&prepared.path, &ccm);
            match crate::hooks::install::install(&options) {
                Ok(reports) => {
                    let files: Vec<&Path> = reports
                        .iter()
                        .filter(|r| {
                            use crate::hooks::install::Action;
                            matches!(r.action, Action::Added | Action::AlreadyPresent)
                        })
                        .map(|r| r.file.as_path())
                        .collect();
                    if let Err(e) =
                        worktree::keep_out_of_commits(&repo_for_job, &prepared.path, &files)
                    {
                        warn!(error = %e, "cannot keep ccm's hooks out of the worktree's commits; the agent runs without them");
                        if let Err(e) = crate::hooks::install::uninstall(&options) {
                            warn!(error = %e, "cannot remove ccm's hooks from the worktree");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot install ccm's hooks into the worktree; the agent runs without them")
                }
            }
            Ok::<_, worktree::WorktreeError>(prepared)
        })
        .await
        .map_err(|e| internal(&e))?
        .map_err(|e| Workspace::Retry(format!("cannot prepare the worktree: {e}")))?;
        let saved = SavedWorktree { repo: repo_path, worktree: prepared.clone() };
        let json = serde_json::to_value(&saved).map_err(|e| internal(&e))?;
        Ok((prepared.path, Some(json)))
    }

    fn hook_options<'a>(
        &self,
        worktree: &'a Path,
        ccm: &'a str,
    ) -> crate::hooks::install::Options<'a> {
        crate::hooks::install::Options {
            repo: worktree,
            ccm,
            shared: false,
            gate_timeout_secs: self.gate_timeout_secs(),
        }
    }

    /// How long an agent CLI waits for a gate hook: the approval timeout, plus a margin so
    /// ccm answers (deny) before the CLI gives up on the hook.
    fn gate_timeout_secs(&self) -> u64 {
        self.config.approvals.timeout_secs + 30
    }

    async fn new_agent(
        &self,
        kind: AgentKind,
        profile: &str,
        cwd: &Path,
        prompt: &str,
    ) -> anyhow::Result<NewAgent> {
        let id = Uuid::new_v4();
        let dir = self.home.root().join("agents").join(id.to_string());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join("prompt.md"), prompt).await?;
        Ok(NewAgent {
            id,
            kind,
            profile: profile.to_string(),
            dir: dir.to_string_lossy().into_owned(),
            cwd: cwd.to_string_lossy().into_owned(),
            token: crate::store::new_agent_token()?,
        })
    }

    /// Opens the agent's tmux window; its output goes to `output.log` and its exit status to
    /// `exit` in the agent's directory. `token` is the agent's credential for its hook events.
    async fn launch(
        &self,
        task: &Task,
        agent: &Agent,
        token: &str,
        profile: &Profile,
        prompt: &str,
    ) -> anyhow::Result<()> {
        let dir = PathBuf::from(&agent.dir);
        let session_id = Uuid::new_v4().to_string();
        let prompt_file = dir.join("prompt.md");
        let allowed_tools = self.allowed_tools(task, &agent.profile, profile).await.join(",");
        let codex_hooks = crate::hooks::install::codex_overrides(
            &crate::hooks::ccm_command(),
            self.gate_timeout_secs(),
        );
        let argv = profile.argv(&Placeholders {
            codex_hooks: &codex_hooks,
            prompt,
            prompt_file: &prompt_file.to_string_lossy(),
            session_id: &session_id,
            cwd: &agent.cwd,
            allowed_tools: &allowed_tools,
        });
        let script = match profile.mode {
            Mode::Headless => {
                r#"D="$CCM_AGENT_DIR"; { "$@" </dev/null; echo $? >"$D/exit.tmp"; } 2>&1 | tee -a "$D/output.log"; mv "$D/exit.tmp" "$D/exit""#
            }
            Mode::Interactive => {
                r#"D="$CCM_AGENT_DIR"; "$@"; echo $? >"$D/exit.tmp"; mv "$D/exit.tmp" "$D/exit""#
            }
            Mode::External => {
                anyhow::bail!("profile `{}` is external: ccm runs no agent for it", agent.profile)
            }
        };
        let mut full =
            vec!["sh".to_string(), "-c".to_string(), script.to_string(), "sh".to_string()];
        full.extend(argv);
        // Every variable is given to the window: it would otherwise get the environment of
        // whichever process started ccm's tmux server, not this daemon's.
        let mut env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .filter(|(name, _)| !name.starts_with("TMUX"))
            .collect();
        env.extend(profile.env.clone());
        env.extend([
            ("CCM_TASK_ID".to_string(), task.id.to_string()),
            ("CCM_AGENT_ID".to_string(), agent.id.to_string()),
            ("CCM_AGENT_TOKEN".to_string(), token.to_string()),
            ("CCM_ATTEMPT".to_string(), task.attempts.to_string()),
            ("CCM_AGENT_DIR".to_string(), agent.dir.clone()),
            ("CCM_HOME".to_string(), self.home.root().to_string_lossy().into_owned()),
            ("CCM_API".to_string(), format!("http://{}", self.api_addr)),
        ]);
        let spec = WindowSpec {
            name: &agent.short_id(),
            cwd: Path::new(&agent.cwd),
            env: &env,
            argv: &full,
        };
        match self.tmux.spawn(&spec).await {
            Ok(window) => {
                if profile.mode == Mode::Interactive {
                    self.tmux.pipe_to(&window.id, &dir.join("output.log")).await?;
                }
                self.store.agent_running(agent.id, &window.id, window.pane_pid).await?;
                info!(agent = %agent.short_id(), window = %window.id, kind = ?agent.kind, "agent started");
                Ok(())
            }
            Err(error) => {
                self.store.agent_ended(agent.id, AgentStatus::Lost, None).await?;
                Err(error.into())
            }
        }
    }

    /// The tools the profile's agents may use without asking, as the task's project
    /// configures them (`allowed_tools` in its `.ccm/config.yaml`), else as the profile says.
    async fn allowed_tools(&self, task: &Task, name: &str, profile: &Profile) -> Vec<String> {
        let saved = self.store.worktree(task.id).await.ok().flatten();
        let repo = saved.and_then(|w| serde_json::from_value::<SavedWorktree>(w).ok());
        repo.and_then(|saved| Config::load(self.home.root(), Some(&saved.repo)).ok())
            .and_then(|config| config.profiles.get(name).map(|p| p.allowed_tools.clone()))
            .unwrap_or_else(|| profile.allowed_tools.clone())
    }

    /// The worker is gone: a usage limit, a crash, or the verification gate.
    async fn finish_worker(&self, task: &Task, agent: &Agent) -> anyhow::Result<()> {
        let (summary, output) = self.summary_and_output(agent).await;
        let last_message = summary.last_message.clone();
        let policy = self.policy();
        if !summary.permission_denials.is_empty() {
            let denied: Vec<String> =
                summary.permission_denials.iter().map(ToString::to_string).collect();
            let message = format!(
                "task {} ({}): the agent was denied {} tool call(s): {}",
                task.short_id(),
                task.title,
                denied.len(),
                denied.join("; ")
            );
            self.store
                .alert(Some(task.id), Severity::Warning, "permission_denied", &message)
                .await?;
        }
        let format = self.profile(&agent.profile).map_or(OutputFormat::Plain, |p| p.output);
        let meaning = agent.exit_code.filter(|_| agent.status == AgentStatus::Exited);
        let meaning = meaning.and_then(|code| format.exit_meaning(code));
        let cause = || last_text_line(&output);
        // The exit status says "quota" even when the output does not.
        let quota = summary.quota.clone().or_else(|| {
            (meaning == Some(ExitMeaning::Quota)).then(|| Quota {
                message: cause().unwrap_or_else(|| "quota exhausted".to_string()),
                reset_at: None,
                retry_after_secs: None,
            })
        });
        if let Some(ExitMeaning::Fatal(what)) = meaning {
            let code = agent.exit_code.unwrap_or(-1);
            let program = self.profile(&agent.profile).and_then(|p| p.command.first());
            let what = match program.filter(|_| matches!(code, 126 | 127)) {
                Some(program) => format!(
                    "{what}: `{program}` of profile {}; is it installed and on the daemon's PATH? `ccm doctor` checks",
                    agent.profile
                ),
                None => what.to_string(),
            };
            let reason = match cause() {
                Some(cause) => format!("worker exited with status {code} ({what}): {cause}"),
                None => format!("worker exited with status {code} ({what})"),
            };
            let end = AttemptEnd { outcome: "crash", verify_output: None, last_message };
            let event = TaskEvent::Failed { class: FailureClass::Fatal };
            self.store.end_attempt(task.id, &end, event, &reason, policy).await?;
            return Ok(());
        }
        if let Some(quota) = &quota {
            let until = quota_until(quota);
            let end = AttemptEnd { outcome: "quota", verify_output: None, last_message };
            let reason = format!("usage limit: {}", quota.message);
            self.store
                .end_attempt(task.id, &end, TaskEvent::QuotaExhausted { until }, &reason, policy)
                .await?;
            return Ok(());
        }
        let failure = match (agent.status, agent.exit_code, &summary.outcome) {
            (AgentStatus::Exited, Some(0), None | Some(crate::agents::parse::Outcome::Success)) => {
                None
            }
            (
                AgentStatus::Exited,
                Some(0),
                Some(crate::agents::parse::Outcome::Error { message }),
            ) => Some(format!("worker reported an error: {message}")),
            (AgentStatus::Exited, code, _) => {
                Some(format!("worker exited with status {}", code.unwrap_or(-1)))
            }
            (AgentStatus::Killed, ..) => Some("worker was stopped".to_string()),
            _ => Some(
                "worker vanished without an exit status (crashed or killed from outside)"
                    .to_string(),
            ),
        };
        if let Some(reason) = failure {
            let end = AttemptEnd { outcome: "crash", verify_output: None, last_message };
            self.store
                .end_attempt(
                    task.id,
                    &end,
                    TaskEvent::Failed { class: FailureClass::Crash },
                    &reason,
                    policy,
                )
                .await?;
            return Ok(());
        }

        self.store
            .runtime_event(task.id, TaskEvent::WorkerFinished, "worker exited 0; verifying", policy)
            .await?;
        let (passed, output, reason) = match &task.verify {
            None => (true, None, "no verify command".to_string()),
            Some(command) => {
                let (passed, output, detail) = self.verify(command, Path::new(&agent.cwd)).await;
                (passed, Some(output), format!("verify `{command}` {detail}"))
            }
        };
        let (outcome, event) = if passed && !summary.permission_denials.is_empty() {
            ("success_with_denials", TaskEvent::VerifyPassed)
        } else if passed {
            ("success", TaskEvent::VerifyPassed)
        } else {
            ("verify_failed", TaskEvent::Failed { class: FailureClass::VerifyFailed })
        };
        let end = AttemptEnd { outcome, verify_output: output, last_message };
        self.store.end_attempt(task.id, &end, event, &reason, policy).await?;
        Ok(())
    }

    /// Runs the verification command in `cwd`; returns whether it passed, its output (the
    /// end of it) and a short description.
    async fn verify(&self, command: &str, cwd: &Path) -> (bool, String, String) {
        let timeout = Duration::from_secs(self.config.runtime.verify_timeout_secs);
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(cwd)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let detail = match out.status.code() {
                    Some(0) => "passed".to_string(),
                    Some(code) => format!("failed with status {code}"),
                    None => "was killed by a signal".to_string(),
                };
                (out.status.success(), tail(&text, VERIFY_OUTPUT_LIMIT), detail)
            }
            Ok(Err(e)) => (false, e.to_string(), format!("could not run: {e}")),
            Err(_) => (false, String::new(), format!("timed out after {}s", timeout.as_secs())),
        }
    }

    /// Everything the agent printed, summarized (read again from its log, so it is right
    /// after a restart too).
    async fn summary(&self, agent: &Agent) -> OutputSummary {
        self.summary_and_output(agent).await.0
    }

    /// The summary, and the output it was made from.
    async fn summary_and_output(&self, agent: &Agent) -> (OutputSummary, String) {
        let format = self.profile(&agent.profile).map_or(OutputFormat::Plain, |p| p.output);
        let output =
            tokio::fs::read(Path::new(&agent.dir).join("output.log")).await.unwrap_or_default();
        let output = String::from_utf8_lossy(&output).into_owned();
        (OutputSummary::of(format, &output), output)
    }

    /// `report_generation`: diff stat, commits, verification, cost, tokens, tool calls,
    /// duration and the last message, stored with the attempt.
    async fn report(&self, task: &Task) -> anyhow::Result<()> {
        let agents = self.store.task_agents(task.id).await?;
        let attempts = self.store.attempts(task.id).await?;
        let attempt = attempts.last();
        let worker =
            agents.iter().rev().find(|a| a.kind == AgentKind::Worker && a.attempt == task.attempts);
        let summary = match worker {
            Some(agent) => self.summary(agent).await,
            None => OutputSummary::default(),
        };
        let work = match self
            .store
            .worktree(task.id)
            .await?
            .and_then(|w| serde_json::from_value::<SavedWorktree>(w).ok())
        {
            Some(saved) => {
                let short = task.short_id();
                let summarized = tokio::task::spawn_blocking(move || {
                    worktree::summarize(&saved.worktree, &short)
                })
                .await?;
                match summarized {
                    Ok(work) => serde_json::to_value(work)?,
                    Err(e) => json!({ "error": e.to_string() }),
                }
            }
            None => serde_json::Value::Null,
        };
        let duration_ms = attempt
            .map(|a| a.ended_at.unwrap_or_else(Timestamp::now).millis() - a.started_at.millis());
        let report = json!({
            "task": task.id,
            "title": task.title,
            "attempt": task.attempts,
            "work": work,
            "verify": { "command": task.verify, "output": attempt.and_then(|a| a.verify_output.clone()) },
            // Unknown (null) when any agent's CLI reports no cost.
            "cost_usd": agents.iter().map(|a| a.cost_usd).sum::<Option<f64>>(),
            "tokens": {
                "input": agents.iter().map(|a| a.input_tokens).sum::<i64>(),
                "output": agents.iter().map(|a| a.output_tokens).sum::<i64>(),
            },
            "tool_calls": summary.tool_calls,
            "permission_denials": summary.permission_denials.iter().map(ToString::to_string).collect::<Vec<_>>(),
            // Writes ccm's hooks refused (the file belongs to another task).
            "denied_writes": self
                .store
                .change_requests_of(task.id)
                .await?
                .into_iter()
                .map(|r| json!({ "path": r.path, "owner": r.owner, "tool": r.tool }))
                .collect::<Vec<_>>(),
            "duration_ms": duration_ms,
            "last_message": summary.last_message,
        });
        let supervised = task
            .workflow
            .as_deref()
            .and_then(|w| self.config.workflows.get(w))
            .is_some_and(|w| w.step(Role::Supervisor).is_some());
        self.store.save_report(task.id, &report, supervised, self.policy()).await?;
        Ok(())
    }

    /// `supervisory`: a headless supervisory agent over the report.
    async fn start_review(&self, task: &Task) -> anyhow::Result<()> {
        let step = task
            .workflow
            .as_deref()
            .and_then(|w| self.config.workflows.get(w))
            .and_then(|w| w.step(Role::Supervisor))
            .cloned();
        let Some(step) = step else {
            // The workflow lost its supervisor step (config changed): nothing to review with.
            self.store
                .save_verdict(task.id, true, "no supervisor step in the workflow", self.policy())
                .await?;
            return Ok(());
        };
        let profile_name = step.profile.clone().unwrap_or_else(|| task.profile.clone());
        let Some(profile) = self.profile(&profile_name).cloned() else {
            let reason = format!("unknown supervisor profile `{profile_name}`");
            self.store
                .runtime_event(
                    task.id,
                    TaskEvent::Failed { class: FailureClass::Fatal },
                    &reason,
                    self.policy(),
                )
                .await?;
            return Ok(());
        };
        let report =
            self.store.reports(task.id).await?.into_iter().find(|r| r.attempt == task.attempts);
        let report = report
            .map(|r| serde_json::to_string_pretty(&r.summary.0))
            .transpose()?
            .unwrap_or_default();
        let prompt = render(
            &step.prompt,
            &[("title", &task.title), ("prompt", &task.prompt), ("report", &report)],
        );
        let cwd = match self.workspace(task).await {
            Ok((cwd, unrecorded)) => {
                if let Some(worktree) = &unrecorded {
                    self.store.set_worktree(task.id, Some(worktree)).await?;
                }
                cwd
            }
            Err(_) => self.home.root().join("scratch"),
        };
        tokio::fs::create_dir_all(&cwd).await?;
        let agent = self.new_agent(AgentKind::Supervisory, &profile_name, &cwd, &prompt).await?;
        let recorded = self.store.begin_review(task.id, &agent).await?;
        self.launch(task, &recorded, &agent.token, &profile, &prompt).await
    }

    /// The supervisory agent is gone: apply its verdict.
    async fn judge(&self, task: &Task, agent: &Agent) -> anyhow::Result<()> {
        let summary = self.summary(agent).await;
        if agent.status != AgentStatus::Exited || agent.exit_code != Some(0) {
            let reason = format!(
                "supervisory agent {} ended without a verdict ({:?})",
                agent.short_id(),
                agent.status
            );
            self.store
                .runtime_event(
                    task.id,
                    TaskEvent::Failed { class: FailureClass::Crash },
                    &reason,
                    self.policy(),
                )
                .await?;
            return Ok(());
        }
        let review = summary.last_message.unwrap_or_default();
        let ok = verdict(&review).unwrap_or(false);
        self.store.save_verdict(task.id, ok, &review, self.policy()).await?;
        Ok(())
    }

    /// A finished task's worktree goes, unless that would lose work; what is kept is said in an
    /// info alert.
    async fn cleanup(&self, task: &Task) -> anyhow::Result<()> {
        let Some(saved) = self.store.worktree(task.id).await? else { return Ok(()) };
        let saved: SavedWorktree = serde_json::from_value(saved)?;
        // ccm's own hook settings are not the agent's work: remove them before judging what is left.
        if saved.worktree.path.is_dir() {
            if let Err(e) = crate::hooks::install::uninstall(
                &self.hook_options(&saved.worktree.path, &crate::hooks::ccm_command()),
            ) {
                warn!(error = %e, "cannot remove ccm's hooks from the worktree");
            }
        }
        let settings = crate::config::load_checked(&self.store, self.home.root(), &saved.repo)
            .await
            .map_err(|problem| anyhow::anyhow!("cannot clean the worktree up: {problem}"))?
            .worktree;
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = worktree::cleanup(&saved.repo, &saved.worktree, &settings.copy_files)?;
            // Gemini CLI's records of the worktree (its agents share the daemon's HOME).
            if let (true, Some(home)) = (outcome.worktree_removed, std::env::var_os("HOME")) {
                let gemini = Path::new(&home).join(".gemini");
                if let Err(e) = gemini_state::forget_folder(&gemini, &saved.worktree.path) {
                    warn!(error = %e, "cannot remove Gemini CLI's records of the worktree");
                }
            }
            Ok::<_, worktree::WorktreeError>(outcome)
        })
        .await??;
        self.store.set_worktree(task.id, None).await?;
        if !outcome.notes.is_empty() {
            let message =
                format!("task {} ({}): {}", task.short_id(), task.title, outcome.notes.join("; "));
            self.store.alert(Some(task.id), Severity::Info, "work_kept", &message).await?;
        }
        Ok(())
    }
}

/// A job of the runtime for one task.
enum Job {
    StartWorker,
    FinishWorker(Agent),
    /// An executing task with no worker recorded.
    Orphaned,
    Report,
    StartReview,
    Judge(Agent),
    Cleanup,
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::StartWorker => "start_worker",
            Job::FinishWorker(_) => "finish_worker",
            Job::Orphaned => "orphaned",
            Job::Report => "report",
            Job::StartReview => "start_review",
            Job::Judge(_) => "judge",
            Job::Cleanup => "cleanup",
        }
    }
}

/// Why a task has no directory to work in.
enum Workspace {
    /// Nothing a retry can fix (no checkout of its repository here).
    Fatal(String),
    /// Perhaps a retry fixes it (setup failed, git hiccup).
    Retry(String),
}

/// What `tasks.worktree` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedWorktree {
    repo: PathBuf,
    worktree: Worktree,
}

/// Appends the new complete lines of the agent's output log to its summary.
async fn read_output(log: &Path, observed: &mut Observed) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut file) = tokio::fs::File::open(log).await else { return Ok(()) };
    let len = file.metadata().await?.len();
    if len <= observed.offset {
        return Ok(());
    }
    file.seek(std::io::SeekFrom::Start(observed.offset)).await?;
    let mut fresh = Vec::with_capacity((len - observed.offset) as usize);
    file.take(len - observed.offset).read_to_end(&mut fresh).await?;
    observed.offset += fresh.len() as u64;
    observed.partial.extend_from_slice(&fresh);
    if let Some(end) = observed.partial.iter().rposition(|&b| b == b'\n') {
        let complete: Vec<u8> = observed.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            observed.summary.feed(observed.format, line);
        }
    }
    observed.last_output = Instant::now();
    observed.dirty = true;
    Ok(())
}

/// When a usage limit resets: its reset time, else now plus its retry-after, if it says.
fn quota_until(quota: &crate::agents::parse::Quota) -> Option<Timestamp> {
    quota.reset_at.map(|secs| Timestamp(secs.saturating_mul(1000))).or_else(|| {
        quota.retry_after_secs.map(|secs| Timestamp::now().after(Duration::from_secs(secs)))
    })
}

/// The exit status the agent's wrapper wrote, once it has.
async fn read_exit(dir: &Path) -> Option<i64> {
    let text = tokio::fs::read_to_string(dir.join("exit")).await.ok()?;
    Some(text.trim().parse().unwrap_or(-1))
}

/// Replaces `{name}` placeholders in one pass (substituted text is not scanned again).
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let value = after.find('}').and_then(|end| {
            let name = &after[..end];
            values.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v, end))
        });
        match value {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The verdict in a review: its last `VERDICT: ok|issue` line.
fn verdict(review: &str) -> Option<bool> {
    review.lines().rev().find_map(|line| {
        let line = line.trim().trim_matches(|c| c == '*' || c == '`').to_ascii_lowercase();
        let value = line
            .strip_prefix("verdict:")?
            .trim()
            .trim_matches(|c| c == '*' || c == '`' || c == '.');
        match value {
            "ok" => Some(true),
            "issue" => Some(false),
            _ => None,
        }
    })
}

/// The last `limit` bytes of `text`, cut at a character boundary.
fn tail(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut start = text.len() - limit;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[…]{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_placeholders_once() {
        assert_eq!(
            render("{title}: {prompt}", &[("title", "T"), ("prompt", "do {title}")]),
            "T: do {title}"
        );
        assert_eq!(render("keep {unknown} and {", &[("title", "T")]), "keep {unknown} and {");
    }

    #[test]
    fn verdict_is_read_from_the_last_verdict_line() {
        assert_eq!(verdict("looks fine\nVERDICT: ok"), Some(true));
        assert_eq!(verdict("**Verdict: issue**\n"), Some(false));
        assert_eq!(verdict("VERDICT: ok\nlater: VERDICT: issue"), Some(true));
        assert_eq!(verdict("VERDICT: issue\nverdict: ok"), Some(true));
        assert_eq!(verdict("no verdict here"), None);
    }

    #[test]
    fn tail_keeps_the_end_at_a_char_boundary() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("aaaaébbbb", 5), "[…]bbbb");
    }
}
