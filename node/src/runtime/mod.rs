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

mod cleanup;
pub mod context;
mod observe;
mod outcome;
mod report;
mod review;
mod start;
mod verify;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_schema::{Agent, AgentKind, FailureClass, Task, TaskEvent, TaskState};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};
use uuid::Uuid;

use crate::agents::profile::{Mode, Profile};
use crate::config::{Config, LiveConfig};
use crate::home::Home;
use crate::store::{AttemptEnd, RetryPolicy, Store};
use crate::tmux::Tmux;
use observe::Observed;

/// Why a runtime step failed; the step runs again at the next pass.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tmux(#[from] crate::tmux::TmuxError),
    #[error(transparent)]
    Worktree(#[from] crate::worktree::WorktreeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("a blocking step did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Other(String),
}

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The agent runtime; cheap to clone (jobs hold a clone).
#[derive(Clone)]
pub struct Runtime {
    pub store: Store,
    /// The configuration, read again when its files change ([`Runtime::config`]).
    pub live: LiveConfig,
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
    /// The reconciler loop's liveness (a step is a pass), for the watchdog.
    pub beat: Arc<ccm_sync::Beat>,
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

/// The runtime's memory between passes; rebuilt from files after a restart.
#[derive(Default)]
pub struct Passes {
    observed: HashMap<Uuid, Observed>,
    windows: Option<(Instant, HashSet<String>)>,
}

impl Runtime {
    pub fn new(
        store: Store,
        live: LiveConfig,
        home: Home,
        api_addr: String,
        scheduler_wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Runtime {
        let tmux = Tmux::new(live.current().runtime.tmux_socket.clone());
        Runtime {
            store,
            live,
            home,
            tmux,
            api_addr,
            wake: Arc::new(Notify::new()),
            scheduler_wake,
            shutdown,
            jobs: Arc::default(),
            beat: Arc::default(),
        }
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy::from(&*self.config())
    }

    /// The configuration in use now (profiles and workflows edited while the daemon runs
    /// apply to the next step that reads them).
    pub fn config(&self) -> Arc<Config> {
        self.live.current()
    }

    /// Runs passes until shutdown; agents keep running in tmux after it.
    pub async fn run(self, mut passes: Passes) {
        let poll = Duration::from_millis(self.config().runtime.poll_ms);
        async move {
            loop {
                let step = self.beat.step().await;
                if let Err(error) = self.pass(&mut passes).await {
                    warn!(error = %format!("{error:#}"), "runtime pass failed; retrying");
                }
                drop(step);
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
    pub async fn pass(&self, passes: &mut Passes) -> Result<()> {
        // Before the tasks are read: jobs that ended until now are in what is read.
        self.jobs().ended.clear();
        // Approved change requests go to their owner (re-opened when complete) or a new task.
        if let Err(error) = self.store.forward_change_requests(&self.config(), self.policy()).await
        {
            warn!(%error, "cannot forward the approved change requests; trying again");
        }
        let tasks: HashMap<Uuid, Task> = self
            .store
            .runtime_tasks(&self.config().external_profiles())
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
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

    /// Starts the job the task's state calls for, unless one is in flight.
    async fn advance(&self, task: &Task, dispatching: bool) -> Result<()> {
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

    async fn run_job(&self, task: &Task, job: Job) -> Result<()> {
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

    fn profile(&self, name: &str) -> Option<Profile> {
        self.config().profiles.get(name).cloned()
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
