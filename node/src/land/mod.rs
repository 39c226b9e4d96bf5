//! Landing finished work (issue 23): from a `complete` task's branch to its repository's target
//! branch, through one land queue per repository and target.
//!
//! - `mod.rs`: [`Lander`], the daemon's long-lived task (one pass on every wake-up and every
//!   second: auto-enqueue, then one landing job per queue whose turn it is); [`Policy`] (a
//!   task's repository, target and `land:` settings, one decision for the daemon, the API and the
//!   CLI); [`enqueue`]; [`status`] and [`plan`], the read models of `ccm land status` and
//!   `ccm land --plan`.
//! - `git.rs`: the git steps of one landing (target head, merged result in a fresh worktree,
//!   compare-and-swap move, removal of the branch; for `mode: pr` the push of the branch and
//!   the follow of the remote's target).
//! - `github.rs`: the forge of `land.mode: pr` (GitHub's REST API: open, look at checks and
//!   reviews, merge). A pull request's landing is `Lander::pull_request`: the `landing` step
//!   waits at the forge (one look every `land.poll_secs`, the reason in `ccm land status`), and
//!   the forge's merge commit is its `merged` result.
//!
//! A landing's steps are recorded as they happen (`store/land.rs`: `landing` with the head it
//! started from, `merged` with the verified result, `moved`, `landed`), so after a crash the next
//! pass resumes it from its last step: a `merged` landing whose target already is the result was
//! moved before the crash, and is only finished; one whose target is still the old head moves
//! it now; anything else starts again from the new head. The target moves at most once.
//!
//! **Boundary:** conflict prediction (which finished branches overlap) is not decided here:
//! [`plan`] orders the tasks not yet queued by the time they finished, then puts tasks the
//! predictor (`crate::conflicts`) found in conflict one right after the other, and shows its
//! record in [`PlannedTask::predicted`].

pub mod git;
pub mod github;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_schema::{Context, FailureClass, LandEvent, LandState, Task, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};
use uuid::Uuid;

use crate::config::{LandConfig, LandMode, LiveConfig, OnChecksFailed};
use crate::home::Home;
use crate::store::{LandFailure, LandStep, Landing, RetryPolicy, Stack, Store, StoreError};
use crate::worktree::WorktreeError;
use git::{Build, Built, Moved, Target};

/// How often a pass runs when nothing wakes the lander.
const PASS_EVERY: Duration = Duration::from_secs(1);
/// How often one job starts a landing again because its target moved, before it gives the
/// queue back (the next pass goes on).
const MAX_RESTARTS: u32 = 20;
/// The fleet's land lease lasts the verify's time limit and this much more (at most an hour);
/// it is renewed at each pass of the landing.
const LEASE_MARGIN_SECS: u64 = 300;

/// Why a landing step failed; the step runs again at the next pass.
#[derive(Debug, thiserror::Error)]
pub enum LandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Git(#[from] WorktreeError),
    /// The task's repository has no registered checkout here.
    #[error("no checkout of {repo} is registered on this system; run `ccm context add PATH` with a clone of it")]
    NoCheckout { repo: String },
    /// The task has no repository: nothing to land.
    #[error("task {task} has no repository: there is nothing to land")]
    NoRepository { task: String },
    /// The project's configuration does not load.
    #[error("{0}")]
    Config(String),
    #[error("a blocking step did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
}

type Result<T, E = LandError> = std::result::Result<T, E>;

/// Where and how a task lands: its checkout, target branch and the repository's `land:`
/// settings (the defaults when the project sets none: then only `ccm land` lands it).
#[derive(Debug, Clone)]
pub struct Policy {
    /// The registered checkout.
    pub repo: PathBuf,
    pub target: String,
    pub land: LandConfig,
    /// Whether the project has a `land:` section at all.
    pub configured: bool,
}

impl Policy {
    /// The policy of `task`'s repository.
    pub async fn of(store: &Store, home: &Path, task: &Task) -> Result<Policy> {
        let Some(repo) = &task.repo else {
            return Err(LandError::NoRepository { task: task.short_id() });
        };
        Policy::of_repo(store, home, repo).await
    }

    /// The policy of the repository `repo` (a task's `repo`: a normalized URL or a path).
    pub async fn of_repo(store: &Store, home: &Path, repo: &str) -> Result<Policy> {
        let contexts = store.contexts().await?;
        let context = checkout_of(&contexts, repo)
            .ok_or_else(|| LandError::NoCheckout { repo: repo.to_string() })?;
        let path = PathBuf::from(&context.path);
        let config =
            crate::config::load_checked(store, home, &path).await.map_err(LandError::Config)?;
        let configured = config.land.is_some();
        let land = config.land.unwrap_or_default();
        let target = land
            .target
            .clone()
            .or_else(|| context.default_branch.clone())
            .unwrap_or_else(|| "main".into());
        Ok(Policy { repo: path, target, land, configured })
    }

    fn target(&self) -> Target {
        // A pull request lands on the remote's target: its head is always fetched.
        let remote = self.land.push || self.land.mode == LandMode::Pr;
        Target {
            repo: self.repo.clone(),
            branch: self.target.clone(),
            push: remote.then(|| self.land.remote.clone()),
        }
    }
}

fn checkout_of<'a>(contexts: &'a [Context], repo: &str) -> Option<&'a Context> {
    contexts.iter().find(|c| c.repo_url.as_deref() == Some(repo) || c.path == repo)
}

/// Puts a complete task in its repository's land queue (the API's and the CLI's `ccm land`).
pub async fn enqueue(store: &Store, home: &Path, task: &str) -> Result<Landing> {
    let detail = store.task(task).await?;
    let policy = Policy::of(store, home, &detail.task).await?;
    let repo = policy.repo.to_string_lossy();
    Ok(store.enqueue_landing(task, &repo, &policy.target).await?)
}

/// Body of `POST /api/land`: the tasks to put in their land queues, or `all` the finished,
/// unlanded tasks (of the checkout `repo`, else of every one).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LandRequest {
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub repo: Option<PathBuf>,
}

/// `ccm land [ID...] [--all]` and `POST /api/land`: queues the named tasks, or with `all` every
/// finished, unlanded task (of the checkout `repo` when given) in plan order.
pub async fn enqueue_request(
    store: &Store,
    home: &Path,
    request: &LandRequest,
) -> Result<Vec<Landing>> {
    if request.tasks.is_empty() && !request.all {
        return Err(LandError::Store(StoreError::Invalid {
            field: "tasks",
            message: "name the tasks to land, or ask for all of them".into(),
        }));
    }
    let mut ids: Vec<String> = request.tasks.clone();
    if request.all {
        for planned in plan(store, home, request.repo.as_deref()).await? {
            if planned.land_state.is_none() || planned.land_state == Some(LandState::LandFailed) {
                ids.push(planned.task_id.to_string());
            }
        }
    }
    let mut landings = Vec::with_capacity(ids.len());
    for id in ids {
        landings.push(enqueue(store, home, &id).await?);
    }
    Ok(landings)
}

/// The daemon's landing task.
#[derive(Clone)]
pub struct Lander {
    pub store: Store,
    /// The configuration (runtime timings, the verify timeout).
    pub live: LiveConfig,
    pub home: Home,
    /// Wakes the lander: a task completed, `ccm land` queued one.
    pub wake: Arc<Notify>,
    /// Wakes the runtime and the scheduler: a failed landing gave its task a new attempt.
    pub runtime_wake: Arc<Notify>,
    pub scheduler_wake: Arc<Notify>,
    pub shutdown: CancellationToken,
    /// The central, when sync is on: a named lease per repository and target
    /// (`api.acquire_lease`) keeps the landings of the whole fleet one at a time.
    pub central: Option<ccm_sync::Client>,
    /// Queues (checkout, target) with a landing job in flight: one at a time per queue, any
    /// number of queues at once (a queue that waits holds up no other).
    running: Arc<Mutex<HashSet<(String, String)>>>,
    /// `land.mode: pr`: when each landing last looked at its pull request, so that the forge is
    /// asked once every `land.poll_secs`, not at every pass.
    polled: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl Lander {
    pub fn new(
        store: Store,
        live: LiveConfig,
        home: Home,
        runtime_wake: Arc<Notify>,
        scheduler_wake: Arc<Notify>,
        shutdown: CancellationToken,
        central: Option<ccm_sync::Client>,
    ) -> Lander {
        Lander {
            store,
            live,
            home,
            wake: Arc::new(Notify::new()),
            runtime_wake,
            scheduler_wake,
            shutdown,
            central,
            running: Arc::default(),
            polled: Arc::default(),
        }
    }

    /// Runs passes until shutdown. A landing cut short by the shutdown resumes from its last
    /// recorded step at the next start.
    pub async fn run(self) {
        async move {
            loop {
                if let Err(error) = self.pass().await {
                    warn!(error = %format!("{error:#}"), "land pass failed; retrying");
                }
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(PASS_EVERY) => {}
                }
            }
        }
        .instrument(info_span!("lander"))
        .await
    }

    /// One pass: complete tasks of `auto: true` repositories join their queue; each queue
    /// without a job in flight gets one for its first landing.
    pub async fn pass(&self) -> Result<()> {
        self.record_policies().await?;
        // One policy per repository and pass: its configuration is read once.
        let mut policies: BTreeMap<String, Option<Policy>> = BTreeMap::new();
        for (id, repo, failed_before) in self.store.unqueued_complete().await? {
            if !policies.contains_key(&repo) {
                let policy = self.repo_policy(&repo).await;
                policies.insert(repo.clone(), policy);
            }
            let Some(Some(policy)) = policies.get(&repo) else { continue };
            if (policy.configured && policy.land.auto) || failed_before {
                let checkout = policy.repo.to_string_lossy();
                self.store.enqueue_landing(&id.to_string(), &checkout, &policy.target).await?;
            }
        }
        let stacks = stack_bases(self.store.stacks().await?);
        let mut firsts: BTreeMap<(String, String), Landing> = BTreeMap::new();
        for landing in queue_order(self.store.landings().await?, &stacks) {
            if matches!(landing.state, LandState::LandFailed | LandState::Landed) {
                continue;
            }
            let queue = (landing.repo.clone(), landing.target.clone());
            if firsts.contains_key(&queue) {
                continue;
            }
            // A stacked task waits for its base to land, without holding up its queue.
            let waits = stacks.get(&landing.task_id).and_then(Stack::waits_for);
            if let Some(waits) = waits.filter(|_| !landing.state.in_progress()) {
                if landing.reason.as_deref() != Some(waits.as_str()) {
                    self.store.note_landing(landing.task_id, &waits).await?;
                }
                continue;
            }
            firsts.insert(queue, landing);
        }
        for (queue, landing) in firsts {
            if !self.queues().insert(queue.clone()) {
                continue;
            }
            let lander = self.clone();
            let span = info_span!("landing", task = %ccm_schema::types::short_id(&landing.task_id), target = %queue.1);
            tokio::spawn(
                async move {
                    if let Err(error) = lander.land(landing).await {
                        warn!(error = %format!("{error:#}"), "landing step failed; it runs again at the next pass");
                    }
                    lander.queues().remove(&queue);
                    lander.wake.notify_one();
                }
                .instrument(span),
            );
        }
        Ok(())
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records which repositories have a landing policy, for the scheduler: a task that
    /// depends on a task of one waits until that task has landed.
    async fn record_policies(&self) -> Result<()> {
        let mut policies = Vec::new();
        for context in self.store.contexts().await? {
            let repo = context.repo_url.clone().unwrap_or_else(|| context.path.clone());
            if let Some(policy) = self.repo_policy(&repo).await.filter(|p| p.configured) {
                policies.push((repo, policy.target, policy.land.auto));
            }
        }
        if self.store.set_land_policies(&policies).await? {
            self.scheduler_wake.notify_one();
        }
        Ok(())
    }

    /// The policy of the repository `repo`; `None` when it has no checkout here or its
    /// configuration does not load (said at debug level: most repositories have no policy, and
    /// a broken file raises its own alert).
    async fn repo_policy(&self, repo: &str) -> Option<Policy> {
        match Policy::of_repo(&self.store, self.home.root(), repo).await {
            Ok(policy) => Some(policy),
            Err(error) => {
                tracing::debug!(%repo, %error, "no land policy");
                None
            }
        }
    }

    /// Carries one landing from where it is to its end (or to a wait).
    async fn land(&self, mut landing: Landing) -> Result<()> {
        let detail = self.store.task(&landing.task_id.to_string()).await?;
        let task = detail.task;
        if task.state != TaskState::Complete && !landing.state.in_progress() {
            // Retried or cancelled since it was queued: it leaves the queue as failed.
            let failure = LandFailure {
                class: FailureClass::Fatal,
                reason: format!("task {} is {} and no longer lands", task.short_id(), task.state),
                conflicts: vec![],
                output: None,
                target_head: landing.old_head.clone().unwrap_or_default(),
                decide: false,
            };
            return self.drop_from_queue(&task, &failure).await;
        }
        let policy = Policy::of(&self.store, self.home.root(), &task).await?;
        let pr = policy.land.mode == LandMode::Pr;
        if pr && landing.state == LandState::Landing && !self.time_to_poll(task.id, &policy) {
            return Ok(());
        }
        // A stacked task lands after its base (the pass skips it until then; this is for a
        // pass that read the queue just before).
        let stack = detail.stack;
        if let Some(waits) = stack.as_ref().and_then(Stack::waits_for) {
            if !landing.state.in_progress() {
                if landing.reason.as_deref() != Some(waits.as_str()) {
                    self.store.note_landing(task.id, &waits).await?;
                }
                return Ok(());
            }
        }
        if !self.fleet_lease(&task, &policy, &landing).await? {
            return Ok(());
        }
        let target = policy.target();
        let short = task.short_id();
        let branch = format!("ccm/{short}");
        let fork = stack.and_then(|s| s.fork_commit);
        for _ in 0..MAX_RESTARTS {
            landing = match landing.state {
                LandState::LandQueued => {
                    let head = self
                        .blocking({
                            let target = target.clone();
                            move || target.head()
                        })
                        .await?;
                    if !self.store.begin_landing(task.id, &head).await? {
                        return Ok(());
                    }
                    info!(old_head = %head, "landing started");
                    self.store
                        .landing(task.id)
                        .await?
                        .ok_or_else(|| StoreError::TaskNotFound(task.id.to_string()))?
                }
                LandState::Landing if pr => {
                    match self.pull_request(&task, &policy, &landing, &branch).await? {
                        Some(next) => next,
                        None => return Ok(()),
                    }
                }
                LandState::Landing => {
                    let fork = fork.as_deref();
                    match self.merge_and_verify(&task, &policy, &landing, &branch, fork).await? {
                        Some(next) => next,
                        None => return Ok(()),
                    }
                }
                LandState::Merged if pr => {
                    // The forge moved the remote's target; it is landed once a fetch shows it.
                    let new = landing.new_head.clone().unwrap_or_default();
                    let followed = self
                        .blocking({
                            let (target, new) = (target.clone(), new.clone());
                            move || target.follow_remote(&new)
                        })
                        .await?;
                    if followed.is_none() {
                        let reason = format!(
                            "waiting for {}/{} to show the merge {} of PR #{}",
                            policy.land.remote,
                            policy.target,
                            &new[..new.len().min(12)],
                            landing.pr_number.unwrap_or_default()
                        );
                        self.note(&task, &landing, &reason).await?;
                        return Ok(());
                    }
                    info!(merge = %new, target = %policy.target, "the forge merged the pull request");
                    self.store.land_step(task.id, LandEvent::Moved, &LandStep::default()).await?
                }
                LandState::Merged => {
                    let old = landing.old_head.clone().unwrap_or_default();
                    let new = landing.new_head.clone().unwrap_or_default();
                    let moved = self
                        .blocking({
                            let target = target.clone();
                            let (old, new) = (old.clone(), new.clone());
                            move || {
                                // After a crash the target may have moved already: then only
                                // the record is missing.
                                if target.current()? == new {
                                    return Ok(Moved::Moved);
                                }
                                target.move_to(&old, &new)
                            }
                        })
                        .await?;
                    match moved {
                        Moved::Moved => {
                            info!(%old, %new, target = %policy.target, "target moved");
                            self.store
                                .land_step(task.id, LandEvent::Moved, &LandStep::default())
                                .await?
                        }
                        Moved::TargetMoved { now } => {
                            info!(%now, "the target moved meanwhile; landing again from its new head");
                            let step = LandStep { old_head: Some(&now), ..LandStep::default() };
                            self.store.land_step(task.id, LandEvent::TargetMoved, &step).await?
                        }
                        Moved::Wait { reason } => {
                            if landing.reason.as_deref() != Some(reason.as_str()) {
                                info!(%reason, "landing waits");
                                self.store.note_landing(task.id, &reason).await?;
                            }
                            return Ok(());
                        }
                    }
                }
                LandState::Moved => {
                    self.finish(&task, &policy, &branch).await?;
                    let landed = self
                        .store
                        .land_step(task.id, LandEvent::Finished, &LandStep::default())
                        .await?;
                    info!(restarts = landed.restarts, "landed");
                    self.release_lease(&task, &policy).await;
                    self.wake.notify_one();
                    // Tasks that waited for this one to land.
                    self.scheduler_wake.notify_one();
                    return Ok(());
                }
                LandState::Landed | LandState::LandFailed => return Ok(()),
            };
        }
        Ok(())
    }

    /// The central's name of a queue's lease: the repository's normalized URL and the target.
    /// `None` for a repository known by its path only (no other system has it) or without sync.
    fn lease_name(&self, task: &Task, policy: &Policy) -> Option<String> {
        let repo = task.repo.as_deref().filter(|r| !r.starts_with('/'))?;
        self.central.as_ref().filter(|c| c.has_token())?;
        Some(format!("land:{repo}#{}", policy.target))
    }

    /// Takes (or renews) the fleet's lease of the task's queue; `false` when another system
    /// holds it (the landing waits, saying so). Without sync, or when the central cannot be
    /// reached, the landing goes on: the compare-and-swap move keeps the target right, the lease
    /// only keeps systems from doing the same work twice.
    async fn fleet_lease(&self, task: &Task, policy: &Policy, landing: &Landing) -> Result<bool> {
        let (Some(name), Some(central)) = (self.lease_name(task, policy), &self.central) else {
            return Ok(true);
        };
        let verify = self.live.current().runtime.verify_timeout_secs;
        let ttl = u32::try_from(verify.saturating_add(LEASE_MARGIN_SECS)).unwrap_or(3600).min(3600);
        let params = ccm_sync::wire::AcquireLeaseV1 { p_name: name, p_ttl_s: ttl, p_value: None };
        let params = serde_json::to_value(&params).unwrap_or_default();
        match central.call::<ccm_sync::wire::NamedLeaseV1>("acquire_lease", &params).await {
            Ok(lease) if lease.held => Ok(true),
            Ok(lease) => {
                let reason = format!(
                    "the fleet's land lease of {} is held by {}",
                    policy.target,
                    lease.holder.as_deref().unwrap_or("another system")
                );
                if landing.reason.as_deref() != Some(reason.as_str()) {
                    self.store.note_landing(task.id, &reason).await?;
                }
                Ok(false)
            }
            Err(failure) => {
                warn!(error = %failure.message, "cannot ask the central for the land lease; landing without it");
                Ok(true)
            }
        }
    }

    /// Gives the fleet's lease back once the landing ended.
    async fn release_lease(&self, task: &Task, policy: &Policy) {
        let (Some(name), Some(central)) = (self.lease_name(task, policy), &self.central) else {
            return;
        };
        let params = serde_json::to_value(ccm_sync::wire::ReleaseLeaseV1 { p_name: name })
            .unwrap_or_default();
        if let Err(failure) = central.call::<serde_json::Value>("release_lease", &params).await {
            warn!(error = %failure.message, "cannot give the land lease back; it runs out by itself");
        }
    }

    /// `land.mode: pr`: whether the landing of `task` may look at its pull request again (once
    /// every `land.poll_secs`).
    fn time_to_poll(&self, task: Uuid, policy: &Policy) -> bool {
        let every = Duration::from_secs(policy.land.poll_secs);
        let polled = self.polled.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        polled.get(&task).is_none_or(|at| at.elapsed() >= every)
    }

    fn forget_poll(&self, task: Uuid) {
        self.polled.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&task);
    }

    /// Records why a landing waits, when that changed.
    async fn note(&self, task: &Task, landing: &Landing, reason: &str) -> Result<()> {
        if landing.reason.as_deref() != Some(reason) {
            info!(%reason, "landing waits");
            self.store.note_landing(task.id, reason).await?;
        }
        Ok(())
    }

    /// The forge client of the policy's repository: its API, `owner/name` (`land.repo`, else
    /// the remote's URL) and token (`auth.json`, else `GITHUB_TOKEN`).
    async fn forge(&self, policy: &Policy) -> Result<github::GitHub, String> {
        let crate::config::Forge::Github = policy.land.forge;
        let (owner, name) = match policy.land.repo.as_deref().and_then(|r| r.split_once('/')) {
            Some((owner, name)) => (owner.to_string(), name.to_string()),
            None => {
                let (repo, remote) = (policy.repo.clone(), policy.land.remote.clone());
                let url = self
                    .blocking(move || git::remote_url(&repo, &remote))
                    .await
                    .map_err(|e| e.to_string())?;
                github::repo_of_url(&url).ok_or_else(|| {
                    github::ForgeError::NoRepository {
                        remote: policy.land.remote.clone(),
                        url: url.clone(),
                    }
                    .to_string()
                })?
            }
        };
        let auth = self.home.read_auth().ok();
        let token = github::token(auth.as_ref()).map_err(|e| e.to_string())?;
        github::GitHub::new(&github::api_url(&policy.land), &owner, &name, &token)
            .map_err(|e| e.to_string())
    }

    /// `land.mode: pr`, the `landing` step: push the task's branch (never forced), open its pull
    /// request (or find the one open for it), then at each look: a merged pull request is
    /// `merged`; failing checks or a "changes requested" review on its head end the landing as
    /// failed (the next attempt's feedback, or a decision); pending checks wait, saying so;
    /// passing ones merge it. `None` when the landing waits or ended here.
    async fn pull_request(
        &self,
        task: &Task,
        policy: &Policy,
        landing: &Landing,
        branch: &str,
    ) -> Result<Option<Landing>> {
        self.polled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(task.id, Instant::now());
        let forge = match self.forge(policy).await {
            Ok(forge) => forge,
            Err(reason) => {
                self.note(task, landing, &format!("cannot open a pull request: {reason}")).await?;
                return Ok(None);
            }
        };
        let asked = |error: github::ForgeError| format!("GitHub: {error}; asking again");
        // A pull request this landing opened before: merged meanwhile (a crash after the merge),
        // still open, or closed (then a new one is opened).
        let known = match landing.pr_number {
            Some(number) => match forge.pull(number).await {
                Ok(pull) => Some(pull),
                Err(error) => {
                    self.note(task, landing, &asked(error)).await?;
                    return Ok(None);
                }
            },
            None => None,
        };
        if let Some(pull) = known.as_ref().filter(|p| p.merged) {
            let (repo, name) = (policy.repo.clone(), branch.to_string());
            let tip = self.blocking(move || git::branch_tip(&repo, &name)).await?;
            if pull.head.sha == tip {
                return self.pull_merged(task, pull).await;
            }
            // Merged with an earlier attempt's head: this attempt's work needs a new one.
        }
        let (repo, remote, name) =
            (policy.repo.clone(), policy.land.remote.clone(), branch.to_string());
        let head = match self.blocking(move || git::push_branch(&repo, &remote, &name)).await? {
            git::Pushed::Pushed { sha } => sha,
            git::Pushed::Rejected { stderr } => {
                let reason = format!(
                    "{}/{branch} has commits the task's branch lacks, and ccm never force-pushes: {stderr}",
                    policy.land.remote
                );
                self.note(task, landing, &reason).await?;
                return Ok(None);
            }
        };
        let pull = match known.filter(|p| p.state == "open" && !p.merged) {
            Some(pull) => pull,
            None => {
                let detail = self.store.task(&task.id.to_string()).await?;
                let title = format!("[{}] {}", task.short_id(), task.title);
                let body = pr_body(&detail);
                let new = github::NewPullV1 {
                    title: &title,
                    head: branch,
                    base: &policy.target,
                    body: &body,
                };
                match forge.open(&new).await {
                    Ok(pull) => {
                        info!(number = pull.number, url = %pull.html_url, "pull request open");
                        self.store.set_landing_pr(task.id, pull.number, &pull.html_url).await?;
                        pull
                    }
                    Err(error) => {
                        self.note(task, landing, &asked(error)).await?;
                        return Ok(None);
                    }
                }
            }
        };
        let number = pull.number;
        if pull.merged {
            return self.pull_merged(task, &pull).await;
        }
        if pull.head.sha != head {
            let reason = format!(
                "waiting for PR #{number} to show the pushed head {}",
                &head[..head.len().min(12)]
            );
            self.note(task, landing, &reason).await?;
            return Ok(None);
        }
        let (runs, reviews) = match tokio::try_join!(forge.check_runs(&head), forge.reviews(number))
        {
            Ok(answers) => answers,
            Err(error) => {
                self.note(task, landing, &asked(error)).await?;
                return Ok(None);
            }
        };
        let failed: Vec<&github::CheckRun> =
            runs.check_runs.iter().filter(|r| r.failed()).collect();
        let requested = changes_requested(&reviews, &head);
        if !failed.is_empty() || !requested.is_empty() {
            let mut why = Vec::new();
            if !failed.is_empty() {
                let names: Vec<&str> = failed.iter().map(|r| r.name.as_str()).collect();
                why.push(format!("checks failed on PR #{number}: {}", names.join(", ")));
            }
            if !requested.is_empty() {
                let who: Vec<&str> = requested
                    .iter()
                    .map(|r| r.user.as_ref().map_or("a reviewer", |u| u.login.as_str()))
                    .collect();
                why.push(format!("changes requested on PR #{number} by {}", who.join(", ")));
            }
            let failure = LandFailure {
                class: FailureClass::VerifyFailed,
                reason: why.join("; "),
                conflicts: vec![],
                output: Some(checks_output(&failed, &requested)),
                target_head: landing.old_head.clone().unwrap_or_default(),
                decide: policy.land.on_checks_failed == OnChecksFailed::Decide,
            };
            info!(reason = %failure.reason, "the pull request did not pass");
            self.forget_poll(task.id);
            self.fail(task, policy, &failure).await?;
            return Ok(None);
        }
        let pending: Vec<&str> =
            runs.check_runs.iter().filter(|r| !r.completed()).map(|r| r.name.as_str()).collect();
        if !pending.is_empty() {
            let done = runs.check_runs.len() - pending.len();
            let reason = format!(
                "waiting for checks on PR #{number} ({done} of {} done; running: {})",
                runs.check_runs.len(),
                pending.join(", ")
            );
            self.note(task, landing, &reason).await?;
            return Ok(None);
        }
        if runs.check_runs.is_empty() {
            let since = landing.started_at.map_or(0, Timestamp::millis);
            let grace = i64::try_from(policy.land.checks_grace_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            if Timestamp::now().millis() - since < grace {
                let reason = format!("waiting for checks on PR #{number} (none reported yet)");
                self.note(task, landing, &reason).await?;
                return Ok(None);
            }
        }
        match pull.mergeable {
            None => {
                let reason = format!("waiting for GitHub to tell whether PR #{number} merges");
                self.note(task, landing, &reason).await?;
                return Ok(None);
            }
            Some(false) => {
                let target = policy.target();
                let now = self.blocking(move || target.head()).await?;
                let failure = LandFailure {
                    class: FailureClass::Conflict,
                    reason: format!(
                        "PR #{number} does not merge with {} at {}",
                        policy.target,
                        &now[..now.len().min(12)]
                    ),
                    conflicts: vec![],
                    output: None,
                    target_head: now,
                    decide: false,
                };
                self.forget_poll(task.id);
                self.fail(task, policy, &failure).await?;
                return Ok(None);
            }
            Some(true) => {}
        }
        let title = format!("[{}] {} (#{number})", task.short_id(), task.title);
        match forge.merge(number, &head, &title).await {
            Ok(github::Merge::Merged { sha }) => {
                info!(number, merge = %sha, "pull request merged");
                self.forget_poll(task.id);
                let step = LandStep { new_head: Some(&sha), ..LandStep::default() };
                Ok(Some(self.store.land_step(task.id, LandEvent::Merged, &step).await?))
            }
            Ok(github::Merge::NotMergeable(message)) => {
                let reason = format!("GitHub does not merge PR #{number} yet: {message}");
                self.note(task, landing, &reason).await?;
                Ok(None)
            }
            Ok(github::Merge::HeadModified(message)) => {
                let reason = format!("the head of PR #{number} moved ({message}); looking again");
                self.note(task, landing, &reason).await?;
                Ok(None)
            }
            Err(error) => {
                self.note(task, landing, &asked(error)).await?;
                Ok(None)
            }
        }
    }

    /// A pull request found merged (by this landing before a crash, or by a person): the
    /// landing is `merged` with the forge's merge commit.
    async fn pull_merged(&self, task: &Task, pull: &github::Pull) -> Result<Option<Landing>> {
        let Some(sha) = pull.merge_commit_sha.as_deref() else {
            return Ok(None);
        };
        info!(number = pull.number, merge = %sha, "the pull request is merged");
        self.forget_poll(task.id);
        let step = LandStep { new_head: Some(sha), ..LandStep::default() };
        Ok(Some(self.store.land_step(task.id, LandEvent::Merged, &step).await?))
    }

    /// The `landing` step: the merged result from the recorded head (or a new head, when the
    /// target moved), its verify, and the `merged` record. `None` when the landing ended here
    /// (failed, or nothing to land and finished).
    async fn merge_and_verify(
        &self,
        task: &Task,
        policy: &Policy,
        landing: &Landing,
        branch: &str,
        fork: Option<&str>,
    ) -> Result<Option<Landing>> {
        let old = landing.old_head.clone().unwrap_or_default();
        let fork = fork.map(str::to_owned);
        let root = self.home.root().join("worktrees");
        let (short, title, mode) = (task.short_id(), task.title.clone(), policy.land.mode);
        let built = self
            .blocking({
                let (repo, root, branch, old) =
                    (policy.repo.clone(), root.clone(), branch.to_string(), old.clone());
                let (short, title) = (short.clone(), title.clone());
                move || {
                    git::build(&Build {
                        repo: &repo,
                        root: &root,
                        short_id: &short,
                        title: &title,
                        branch: &branch,
                        old_head: &old,
                        mode,
                        fork: fork.as_deref(),
                    })
                }
            })
            .await?;
        let (path, new) = match built {
            Built::Conflict { files, diff } => {
                info!(files = %files.join(", "), "the branch conflicts with the target");
                let failure = LandFailure {
                    class: FailureClass::Conflict,
                    reason: format!(
                        "conflict with {} at {} in {}",
                        policy.target,
                        &old[..old.len().min(12)],
                        files.join(", ")
                    ),
                    conflicts: files,
                    output: Some(diff),
                    target_head: old,
                    decide: false,
                };
                self.fail(task, policy, &failure).await?;
                return Ok(None);
            }
            Built::NothingToLand => {
                // Already on the target: record it as merged at the same head, so it finishes
                // through the same steps without moving anything.
                let step = LandStep { new_head: Some(&old), ..LandStep::default() };
                return Ok(Some(self.store.land_step(task.id, LandEvent::Merged, &step).await?));
            }
            Built::Merged { path, new_head } => (path, new_head),
        };
        let command = policy.land.verify.clone().or_else(|| task.verify.clone());
        let verified = match command.filter(|_| policy.land.verify_after_merge) {
            Some(command) => Some(self.verify(&command, &path).await),
            None => None,
        };
        // The worktree has served; the result stays reachable through its ref until the end.
        let discard = {
            let (repo, path) = (policy.repo.clone(), path.clone());
            move || -> Result<(), WorktreeError> {
                let repo = crate::worktree::canonical(&repo)?;
                git_remove_worktree(&repo, &path)
            }
        };
        self.blocking(discard).await?;
        match verified {
            Some(Err(output)) => {
                info!("the verify failed on the merged result");
                let failure = LandFailure {
                    class: FailureClass::VerifyFailed,
                    reason: format!(
                        "the verify failed on the result merged with {} at {}",
                        policy.target,
                        &old[..old.len().min(12)]
                    ),
                    conflicts: vec![],
                    output: Some(output),
                    target_head: old,
                    decide: false,
                };
                self.fail(task, policy, &failure).await?;
                Ok(None)
            }
            Some(Ok(output)) => {
                let step = LandStep {
                    new_head: Some(&new),
                    verify_output: Some(&output),
                    ..LandStep::default()
                };
                Ok(Some(self.store.land_step(task.id, LandEvent::Merged, &step).await?))
            }
            None => {
                let step = LandStep { new_head: Some(&new), ..LandStep::default() };
                Ok(Some(self.store.land_step(task.id, LandEvent::Merged, &step).await?))
            }
        }
    }

    /// Runs the verify in the merged result; its output (the end of it), `Err` when it failed.
    async fn verify(&self, command: &str, cwd: &Path) -> Result<String, String> {
        let timeout = Duration::from_secs(self.live.current().runtime.verify_timeout_secs);
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let text = crate::text::tail(&text, git::FEEDBACK_LIMIT);
                match out.status.code() {
                    Some(0) => Ok(text),
                    Some(code) => Err(format!("{text}\n(`{command}` exited with status {code})")),
                    None => Err(format!("{text}\n(`{command}` was killed by a signal)")),
                }
            }
            Ok(Err(e)) => Err(format!("cannot run `{command}`: {e}")),
            Err(_) => Err(format!("`{command}` timed out after {}s", timeout.as_secs())),
        }
    }

    /// Ends a failed landing: the task gets its next attempt (or a decision).
    async fn fail(&self, task: &Task, policy: &Policy, failure: &LandFailure) -> Result<()> {
        let retry = RetryPolicy::from(&*self.live.current());
        self.store.fail_landing(task.id, failure, retry).await?;
        self.release_lease(task, policy).await;
        self.runtime_wake.notify_one();
        self.scheduler_wake.notify_one();
        Ok(())
    }

    async fn drop_from_queue(&self, task: &Task, failure: &LandFailure) -> Result<()> {
        self.store.drop_landing(task.id, &failure.reason).await?;
        Ok(())
    }

    /// After the target moved: the task's worktree (when the runtime has not removed it yet),
    /// the landing's result ref and the task's branch go.
    async fn finish(&self, task: &Task, policy: &Policy, branch: &str) -> Result<()> {
        let saved = self.store.worktree(task.id).await?;
        let copy_files = crate::config::load_checked(&self.store, self.home.root(), &policy.repo)
            .await
            .map_err(LandError::Config)?
            .worktree
            .copy_files;
        let root = self.home.root().join("worktrees");
        let (repo, branch, short) = (policy.repo.clone(), branch.to_string(), task.short_id());
        let remote = (policy.land.mode == LandMode::Pr).then(|| policy.land.remote.clone());
        let kept = self
            .blocking(move || {
                let mut notes = Vec::new();
                if let Some(saved) = &saved {
                    let outcome =
                        crate::worktree::cleanup(&saved.repo, &saved.worktree, &copy_files)?;
                    notes = outcome.notes;
                }
                let path = crate::worktree::worktree_path(&repo, &root, &format!("land-{short}"))?;
                git::discard_result(&repo, &path, &short)?;
                if notes.is_empty() {
                    git::delete_branch(&repo, &branch)?;
                }
                if let Some(remote) = &remote {
                    git::delete_remote_branch(&repo, remote, &branch)?;
                }
                Ok::<_, WorktreeError>(notes)
            })
            .await?;
        self.store.set_worktree(task.id, None).await?;
        if !kept.is_empty() {
            let message =
                format!("task {} ({}) landed; {}", task.short_id(), task.title, kept.join("; "));
            self.store
                .alert(Some(task.id), ccm_schema::Severity::Info, "work_kept", &message)
                .await?;
        }
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        step: impl FnOnce() -> Result<T, WorktreeError> + Send + 'static,
    ) -> Result<T> {
        let span = tracing::Span::current();
        Ok(tokio::task::spawn_blocking(move || {
            let _step = span.enter();
            step()
        })
        .await??)
    }
}

fn git_remove_worktree(repo: &Path, path: &Path) -> Result<(), WorktreeError> {
    let registered = crate::worktree::list_worktrees(repo)?.iter().any(|w| w.path == path);
    if !registered {
        return Ok(());
    }
    let lock = crate::worktree::repository_lock(repo);
    let _git = lock.exclusive();
    let args =
        [std::ffi::OsStr::new("worktree"), "remove".as_ref(), "--force".as_ref(), path.as_os_str()];
    crate::worktree::git(repo, &args)?;
    Ok(())
}

/// The body of a task's pull request: its report (the last attempt's summary, the verify's
/// command and the end of its output) and what its agents cost.
pub fn pr_body(detail: &crate::store::TaskDetail) -> String {
    let task = &detail.task;
    let report = detail.reports.last().map(|r| &r.summary.0);
    let field = |path: &[&str]| -> Option<String> {
        let mut value = report?;
        for key in path {
            value = value.get(key)?;
        }
        value.as_str().map(str::to_string)
    };
    let mut body = format!(
        "Task `{}`: {}\n\nAttempt {} of {}, by ccm.\n\n## Summary\n\n{}\n",
        task.short_id(),
        task.title,
        task.attempts,
        task.max_attempts,
        field(&["last_message"]).unwrap_or_else(|| "(no summary)".into())
    );
    let command = field(&["verify", "command"]).or_else(|| task.verify.clone());
    let output = field(&["verify", "output"]).unwrap_or_default();
    match command {
        Some(command) => body.push_str(&format!(
            "\n## Verify\n\n`{command}` passed:\n\n```\n{}\n```\n",
            crate::text::tail(output.trim_end(), 4000)
        )),
        None => body.push_str("\n## Verify\n\nThe task has no verify command.\n"),
    }
    body.push_str(&format!(
        "\n## Cost\n\n${:.4} ({} input and {} output tokens)\n",
        detail.cost_usd, detail.tokens.input, detail.tokens.output
    ));
    body
}

/// The "changes requested" reviews on `head`: each reviewer's latest review that counts
/// (approved, changes requested or dismissed), when it requests changes on this very head (a
/// request on an earlier head was answered by the commits pushed since).
fn changes_requested<'a>(reviews: &'a [github::Review], head: &str) -> Vec<&'a github::Review> {
    let mut latest: BTreeMap<String, &github::Review> = BTreeMap::new();
    for review in reviews {
        if matches!(review.state.as_str(), "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED") {
            let who =
                review.user.as_ref().map_or_else(|| review.id.to_string(), |u| u.login.clone());
            latest.insert(who, review);
        }
    }
    latest
        .into_values()
        .filter(|r| r.state == "CHANGES_REQUESTED")
        .filter(|r| r.commit_id.as_deref().is_none_or(|c| c == head))
        .collect()
}

/// What failing check runs and reviews said, for the next attempt's prompt: each run's
/// `output.title`, `summary` and `text`, each review's body.
fn checks_output(failed: &[&github::CheckRun], requested: &[&github::Review]) -> String {
    let mut text = String::new();
    for run in failed {
        text.push_str(&format!(
            "check `{}`: {}\n",
            run.name,
            run.conclusion.as_deref().unwrap_or("failed")
        ));
        for part in [&run.output.title, &run.output.summary, &run.output.text].into_iter().flatten()
        {
            text.push_str(part.trim_end());
            text.push('\n');
        }
        text.push('\n');
    }
    for review in requested {
        let who = review.user.as_ref().map_or("a reviewer", |u| u.login.as_str());
        text.push_str(&format!(
            "review by {who}: changes requested\n{}\n\n",
            review.body.as_deref().unwrap_or("").trim_end()
        ));
    }
    crate::text::head(text.trim_end(), git::FEEDBACK_LIMIT)
}

/// What a task's next attempt is told about its failed landing: the conflict (files and the
/// conflicted diff with its markers) or the verify's output on the merged result, and the
/// target's newest head to rebase onto.
pub fn feedback(landing: &Landing) -> String {
    let head = landing.old_head.as_deref().unwrap_or("(unknown)");
    let target = &landing.target;
    let mut text = format!(
        "\n\n---\nLanding attempt {}'s work on `{target}` failed: {}.\nThe newest head of `{target}` is {head}.\n",
        landing.attempt,
        landing.reason.as_deref().unwrap_or("unknown reason"),
    );
    let files: Vec<String> =
        landing.conflicts.as_deref().and_then(|c| serde_json::from_str(c).ok()).unwrap_or_default();
    if let Some(number) = landing.pr_number {
        let url = landing.pr_url.as_deref().unwrap_or("");
        text.push_str(&format!(
            "Your branch is pull request #{number} ({url}). Fix it with new commits on your branch; do not rebase or amend: the branch is pushed to the pull request again (never forced).\n"
        ));
        if landing.reason.as_deref().is_some_and(|r| r.contains("does not merge")) {
            text.push_str(&format!(
                "Merge the target into your branch (`git merge {head}`), resolve the conflicts, and commit the result.\n"
            ));
        } else {
            text.push_str(&format!(
                "What the pull request's checks and reviews said:\n```\n{}\n```\n",
                landing.verify_output.as_deref().unwrap_or("(none)")
            ));
        }
        return text;
    }
    if files.is_empty() {
        text.push_str(&format!(
            "Rebase your branch onto it (`git rebase {head}`) and make the verify pass on the result.\nThe verify's output on the merged result:\n```\n{}\n```\n",
            landing.verify_output.as_deref().unwrap_or("(none)")
        ));
    } else {
        text.push_str(&format!(
            "Conflicting files: {}.\nRebase your branch onto it (`git rebase {head}`), resolve the conflicts, and commit the result.\nThe conflict:\n```diff\n{}\n```\n",
            files.join(", "),
            landing.verify_output.as_deref().unwrap_or("(none)")
        ));
    }
    text
}

/// One entry of a land queue, with what it waits for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    #[serde(flatten)]
    pub landing: Landing,
    pub title: String,
    /// In words: "landing (merged, moving the target)", "its turn", "task 1a2b3c4d to land",
    /// or the reason it waits.
    pub waits_for: String,
}

/// One land queue: a repository's checkout and target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queue {
    pub repo: String,
    pub target: String,
    pub entries: Vec<QueueEntry>,
}

/// Every land queue with its entries in order (`ccm land status`, `GET /api/land`).
pub async fn status(store: &Store) -> Result<Vec<Queue>> {
    let mut queues: Vec<Queue> = Vec::new();
    let stacks = stack_bases(store.stacks().await?);
    for landing in queue_order(store.landings().await?, &stacks) {
        let title = store
            .task(&landing.task_id.to_string())
            .await
            .map(|d| d.task.title)
            .unwrap_or_default();
        let key = (landing.repo.clone(), landing.target.clone());
        if queues.last().map(|q| (q.repo.clone(), q.target.clone())) != Some(key.clone()) {
            queues.push(Queue { repo: key.0, target: key.1, entries: Vec::new() });
        }
        let Some(queue) = queues.last_mut() else { continue };
        let ahead = queue
            .entries
            .iter()
            .find(|e| e.landing.state != LandState::LandFailed)
            .map(|e| ccm_schema::types::short_id(&e.landing.task_id));
        let waits_for = match (landing.state, &landing.reason) {
            (LandState::LandFailed, reason) => format!(
                "a new attempt of the task (the landing failed: {})",
                reason.as_deref().unwrap_or("unknown")
            ),
            (_, Some(reason)) => reason.clone(),
            (LandState::Landing, None) => "landing: merging and verifying".into(),
            (LandState::Merged, None) => "landing: moving the target".into(),
            (LandState::Moved, None) => "landing: removing the branch".into(),
            (_, None) => match ahead {
                Some(first) => format!("task {first} to land"),
                None => "its turn".into(),
            },
        };
        queue.entries.push(QueueEntry { landing, title, waits_for });
    }
    Ok(queues)
}

/// A finished, unlanded task in the order it would land (`ccm land --plan`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedTask {
    pub task_id: Uuid,
    pub title: String,
    pub repo: String,
    pub target: String,
    /// The task's land state, when it is in a queue.
    pub land_state: Option<LandState>,
    pub finished_at: Timestamp,
    /// Conflicts predicted with the target or with other active tasks, as the daemon's
    /// predictor last recorded them (`crate::conflicts`).
    pub predicted: Vec<crate::conflicts::PredictedConflict>,
}

/// The finished, unlanded tasks of the checkout `repo` (every checkout when `None`), in queue
/// order: those in a queue in its order, then the others by when they finished.
pub async fn plan(store: &Store, home: &Path, repo: Option<&Path>) -> Result<Vec<PlannedTask>> {
    let stacks = stack_bases(store.stacks().await?);
    let landings: Vec<Landing> = queue_order(store.landings().await?, &stacks);
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for landing in landings.iter().filter(|l| l.state != LandState::LandFailed) {
        if repo.is_some_and(|r| Path::new(&landing.repo) != r) {
            continue;
        }
        let detail = store.task(&landing.task_id.to_string()).await?;
        seen.insert(landing.task_id);
        planned.push(PlannedTask {
            task_id: landing.task_id,
            title: detail.task.title,
            repo: landing.repo.clone(),
            target: landing.target.clone(),
            land_state: Some(landing.state),
            finished_at: detail.task.updated_at,
            predicted: detail.conflicts,
        });
    }
    let queued = planned.len();
    let filter = crate::store::TaskFilter { state: Some(TaskState::Complete), finished: None };
    for task in store.tasks(&filter).await? {
        if seen.contains(&task.id) || task.repo.is_none() {
            continue;
        }
        if landings.iter().any(|l| l.task_id == task.id && l.state == LandState::Landed)
            || store.discarded(task.id).await?.is_some()
        {
            continue;
        }
        let Ok(policy) = Policy::of(store, home, &task).await else { continue };
        if repo.is_some_and(|r| policy.repo != r) {
            continue;
        }
        let land_state = landings.iter().find(|l| l.task_id == task.id).map(|l| l.state);
        planned.push(PlannedTask {
            task_id: task.id,
            title: task.title.clone(),
            repo: policy.repo.to_string_lossy().into_owned(),
            target: policy.target.clone(),
            land_state,
            finished_at: task.updated_at,
            predicted: store.conflicts_of_task(task.id, task.repo.as_deref()).await?,
        });
    }
    // Those not queued yet: tasks predicted to conflict one right after the other, so the
    // second is rebased onto the first.
    let waiting = planned.split_off(queued);
    let predicted: Vec<_> = waiting.iter().flat_map(|p| p.predicted.iter().cloned()).collect();
    let ids: Vec<String> = waiting.iter().map(|p| p.task_id.to_string()).collect();
    let mut waiting: HashMap<String, PlannedTask> =
        waiting.into_iter().map(|p| (p.task_id.to_string(), p)).collect();
    let mut ordered = Vec::with_capacity(waiting.len());
    for id in crate::conflicts::land_order(&ids, &predicted) {
        ordered.extend(waiting.remove(&id));
    }
    planned.extend(ordered);
    // A stacked task after its base, queued or not.
    let base = |p: &PlannedTask| stacks.get(&p.task_id).map(|s| s.base_task);
    Ok(stack_order(planned, |p| p.task_id, base))
}

/// The stacked tasks by their id.
fn stack_bases(stacks: Vec<Stack>) -> HashMap<Uuid, Stack> {
    stacks.into_iter().map(|s| (s.task_id, s)).collect()
}

/// Landings in the order their queues take them: as the store lists them (each queue's
/// landing in progress first, then by when they were queued), except that a stacked task comes
/// after its base.
fn queue_order(landings: Vec<Landing>, stacks: &HashMap<Uuid, Stack>) -> Vec<Landing> {
    stack_order(landings, |l| l.task_id, |l| stacks.get(&l.task_id).map(|s| s.base_task))
}

/// `items` in their order, except that an item whose base (`base_of`) is among them comes
/// right after it (and after the items stacked on it that came earlier), however deep the
/// stack. Items whose base is not among them keep their place.
pub fn stack_order<T>(
    items: Vec<T>,
    id_of: impl Fn(&T) -> Uuid,
    base_of: impl Fn(&T) -> Option<Uuid>,
) -> Vec<T> {
    let present: HashSet<Uuid> = items.iter().map(&id_of).collect();
    let mut placed: HashSet<Uuid> = HashSet::with_capacity(items.len());
    let mut ordered = Vec::with_capacity(items.len());
    // Items whose base has not been placed yet, in their order.
    let mut deferred: Vec<T> = Vec::new();
    for item in items {
        if base_of(&item).is_some_and(|base| present.contains(&base) && !placed.contains(&base)) {
            deferred.push(item);
            continue;
        }
        placed.insert(id_of(&item));
        ordered.push(item);
        // Whatever waited for what is now placed follows it (a stack of any depth).
        while let Some(at) =
            deferred.iter().position(|d| base_of(d).is_some_and(|base| placed.contains(&base)))
        {
            let next = deferred.remove(at);
            placed.insert(id_of(&next));
            ordered.push(next);
        }
    }
    // Only a cycle leaves something here, which the dependency DAG forbids: keep it anyway.
    ordered.extend(deferred);
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `items` are letters; `stacked` pairs (task, base); `expected` the order as letters.
    fn check(items: &str, stacked: &[(char, char)], expected: &str) {
        let id = |c: char| Uuid::from_u128(c as u128);
        let bases: HashMap<Uuid, Uuid> = stacked.iter().map(|&(t, b)| (id(t), id(b))).collect();
        let ordered =
            stack_order(items.chars().collect(), |&c| id(c), |c| bases.get(&id(*c)).copied());
        assert_eq!(ordered.into_iter().collect::<String>(), expected, "{items} {stacked:?}");
    }

    #[test]
    fn stack_order_puts_a_stacked_task_after_its_base() {
        check("abc", &[], "abc");
        // Already after its base: stays.
        check("abc", &[('c', 'a')], "abc");
        // Before its base: right after it, the others keep their place.
        check("bca", &[('b', 'a')], "cab");
        check("bxay", &[('b', 'a')], "xaby");
        // A stack three deep, listed upside down.
        check("cba", &[('c', 'b'), ('b', 'a')], "abc");
        // Two tasks on one base keep their order after it.
        check("cbxa", &[('c', 'a'), ('b', 'a')], "xacb");
        // A base that is not listed (landed, or not queued) keeps the task in its place.
        check("bc", &[('b', 'a')], "bc");
    }

    #[test]
    fn a_stacked_task_waits_until_its_base_landed_saying_why() {
        let base = Uuid::from_u128(0xa1b2c3d4 << 96);
        let stack = |base_state, base_land_state, base_discarded| Stack {
            task_id: Uuid::from_u128(2),
            base_task: base,
            fork_commit: None,
            base_state,
            base_land_state,
            base_discarded,
        };
        let waits = |s: Stack| s.waits_for();
        assert_eq!(
            waits(stack(TaskState::Complete, Some(LandState::LandQueued), false)).as_deref(),
            Some("task a1b2c3d4, its stack base, to land")
        );
        assert_eq!(waits(stack(TaskState::Complete, Some(LandState::Landed), false)), None);
        assert!(waits(stack(TaskState::Executing, Some(LandState::LandFailed), false))
            .is_some_and(|w| w.ends_with("(it is executing)")));
        assert!(waits(stack(TaskState::Failed, None, false))
            .is_some_and(|w| w.contains("it is failed: it will not land")));
        assert!(waits(stack(TaskState::Complete, None, true))
            .is_some_and(|w| w.contains("its work was discarded")));
        assert_eq!(stack(TaskState::Complete, None, false).base_branch(), "ccm/a1b2c3d4");
    }
}
