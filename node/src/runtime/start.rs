//! Starting agents: the task's workspace (worktree or scratch directory), the agent's row and
//! its tmux window.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ccm_schema::{Agent, AgentKind, AgentStatus, FailureClass, Task, TaskEvent, Timestamp};
use tracing::{info, warn};
use uuid::Uuid;

use super::{Result, Runtime, RuntimeError};
use crate::agents::launcher::{self, Launch};
use crate::agents::profile::{check_command, Mode, Placeholders, Profile};
use crate::config::Role;
use crate::store::{AttemptEnd, CapReached, CapScope, NewAgent};
use crate::tmux::WindowSpec;
use crate::worktree::{self, SavedWorktree};

/// Whether an agent may start, as its account's usage limit says.
pub(super) enum Allowed {
    /// Under this profile (the task's, or a fallback of it).
    Under(String, Profile),
    /// Not before this limit resets.
    Wait(Box<crate::store::AccountLimit>),
}

impl Runtime {
    /// Fails the task's attempt before any agent ran.
    pub(super) async fn fail_before_start(
        &self,
        task: &Task,
        class: FailureClass,
        reason: &str,
    ) -> Result<()> {
        warn!(reason, "task cannot start");
        self.store
            .runtime_event(task.id, TaskEvent::Failed { class }, reason, self.policy())
            .await?;
        Ok(())
    }

    /// Worktree (or scratch directory), prompt, agent row and tmux window for a queued task.
    pub(super) async fn start_worker(&self, task: &Task) -> Result<()> {
        let config = self.config();
        let workflow = task.workflow.as_deref().map(|w| config.workflows.get(w).ok_or(w));
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
        let Some(profile) = self.profile(&profile_name) else {
            return self
                .fail_before_start(
                    task,
                    FailureClass::Fatal,
                    &format!("unknown agent profile `{profile_name}`"),
                )
                .await;
        };
        // No agent of an account at its usage limit starts: the task runs under a fallback
        // profile whose account is not limited, or waits for the reset.
        let fallbacks = workflow.map_or(&[][..], |w| &w.fallback_profiles[..]);
        let allowed = self.account_allows(&profile_name, profile, fallbacks).await?;
        let (profile_name, profile) = match allowed {
            Allowed::Under(name, profile) => (name, profile),
            Allowed::Wait(limit) => {
                let task = self.store.wait_for_account(task.id, &limit, self.policy()).await?;
                info!(account = %limit.account, until = %limit.reset_at, state = %task.state, "account at its usage limit; the task waits");
                self.scheduler_wake.notify_one();
                return Ok(());
            }
        };
        // No agent of an account or project whose daily cost cap is reached starts: the task
        // waits for the next day, or for the operator to raise the cap (one decision a day).
        if let Some(reached) = self.cost_cap_reached(task, profile.account(&profile_name)).await? {
            let task = self.store.wait_for_cost_cap(task.id, &reached, self.policy()).await?;
            info!(scope = %reached.scope, name = %reached.name, cap_usd = reached.cap_usd, spent_usd = reached.spent_usd, state = %task.state, "daily cost cap reached; the task waits");
            self.scheduler_wake.notify_one();
            return Ok(());
        }
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
            let attempts = attempts?;
            let previous = attempts.iter().rfind(|a| a.outcome.is_some());
            let handed_off = previous
                .filter(|p| p.outcome.as_deref() == Some("handoff"))
                .and_then(|p| p.handoff.as_deref());
            if let Some(summary) = handed_off {
                let handoffs = attempts.iter().filter(|a| a.handoff.is_some()).count();
                prompt.push_str(&format!(
                    "\n\n---\nThis run continues the task's attempt {} of {} (handoff {handoffs}): the \
                     agent before you filled its context window and handed the work over (it did \
                     not fail). The working directory holds its work so far. Its summary:\n{summary}\n",
                    task.attempts + 1,
                    task.max_attempts,
                ));
            } else if let Some(previous) = previous {
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
            if let Some(landing) = self.store.land_feedback(task.id, task.attempts).await? {
                prompt.push_str(&crate::land::feedback(&landing));
            }
            let review = self.store.review_feedback(task.id).await?;
            if !review.is_empty() {
                prompt.push_str(&crate::review::prompt(&review));
            }
            // What its sub-tasks did (a parent's next attempt, or a split task's own run).
            let subtasks = self.store.subtasks(task.id).await?;
            if !subtasks.is_empty() {
                prompt.push_str("\n\n---\nSub-tasks of this task:\n");
                for sub in &subtasks {
                    let result = sub.result.as_deref().unwrap_or("(no report yet)");
                    prompt.push_str(&format!(
                        "- {} `{}`: {}; its last message: {}\n",
                        &sub.id[..sub.id.len().min(8)],
                        sub.title,
                        sub.state,
                        crate::text::head(result, 2000)
                    ));
                }
            }
            // Approved change requests of other tasks' agents this attempt applies, and what
            // became of the ones this task asked for.
            let carried = self.store.change_requests_for(task.id).await?;
            prompt.push_str(&change_requests_section(
                &carried,
                &self.store.change_requests_of(task.id).await?,
            ));
            let carried: Vec<String> = carried.into_iter().map(|c| c.id).collect();
            let agent = self.new_agent(AgentKind::Worker, &profile_name, &cwd, &prompt).await?;
            let policy = self.policy();
            let begun = self.store.begin_attempt_carrying(
                task.id,
                &agent,
                &prompt,
                unrecorded.as_ref(),
                policy,
                &carried,
            );
            Ok::<_, RuntimeError>((begun.await?, agent.token))
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

    /// The profile an agent starts under: `profile` while its account is not at its usage
    /// limit, else the first of its `fallback_profiles` (then `more`, the workflow's) whose
    /// account is not, else the limit it waits for.
    pub(super) async fn account_allows(
        &self,
        name: &str,
        profile: Profile,
        more: &[String],
    ) -> Result<Allowed> {
        let Some(limit) = self.store.account_limit(profile.account(name)).await? else {
            return Ok(Allowed::Under(name.to_string(), profile));
        };
        for fallback in profile.fallback_profiles.iter().chain(more) {
            let Some(candidate) = self.profile(fallback) else { continue };
            if self.store.account_limit(candidate.account(fallback)).await?.is_none() {
                info!(
                    account = %limit.account,
                    fallback = %fallback,
                    "account at its usage limit; the task runs under a fallback profile"
                );
                return Ok(Allowed::Under(fallback.clone(), candidate));
            }
        }
        Ok(Allowed::Wait(Box::new(limit)))
    }

    /// The daily cost cap a worker of `task` under `account` would go past: its account's
    /// (`accounts.NAME.daily_cost_cap_usd`) or its project's (`daily_cost_cap_usd` of the
    /// checkout's configuration), once what their agents cost today reached it.
    pub(super) async fn cost_cap_reached(
        &self,
        task: &Task,
        account: &str,
    ) -> Result<Option<CapReached>> {
        let config = self.config();
        let mut caps = Vec::new();
        if let Some(cap) = config.accounts.get(account).and_then(|a| a.daily_cost_cap_usd) {
            caps.push((CapScope::Account, account.to_string(), cap));
        }
        if let Some(repo) = &task.repo {
            if let Some(cap) = self.project_cost_cap(repo).await? {
                caps.push((CapScope::Project, repo.clone(), cap));
            }
        }
        if caps.is_empty() {
            return Ok(None);
        }
        let (day, since, day_ends_at) = crate::notify::daily::local_day(Timestamp::now());
        for (scope, name, configured_usd) in caps {
            let known = self.store.cost_cap(scope, &name, &day).await?;
            let cap_usd = match known {
                Some(k) if k.state == "raised" => k.cap_usd.max(configured_usd),
                _ => configured_usd,
            };
            let spent_usd = self.store.cost_today(scope, &name, since).await?;
            if spent_usd >= cap_usd {
                let day = day.clone();
                return Ok(Some(CapReached {
                    scope,
                    name,
                    day,
                    day_ends_at,
                    configured_usd,
                    cap_usd,
                    spent_usd,
                }));
            }
        }
        Ok(None)
    }

    /// The daily cost cap of the project `repo` names: its checkout's configuration's (the
    /// global one's when no checkout of it is registered, or its file does not load: the start
    /// then fails on the worktree, saying why).
    async fn project_cost_cap(&self, repo: &str) -> Result<Option<f64>> {
        let contexts = self.store.contexts().await?;
        let checkout = contexts
            .into_iter()
            .find(|c| c.repo_url.as_deref() == Some(repo) || c.path == *repo)
            .map(|c| PathBuf::from(c.path));
        let Some(checkout) = checkout else { return Ok(self.config().daily_cost_cap_usd) };
        Ok(crate::config::load_checked(&self.store, self.home.root(), &checkout)
            .await
            .map_or(self.config().daily_cost_cap_usd, |c| c.daily_cost_cap_usd))
    }

    /// The directory the task's agents work in: its git worktree when it has a repository,
    /// else a scratch directory. A worktree made now comes with its record for
    /// `tasks.worktree`, which the caller saves (with the attempt's beginning, for a worker).
    pub(super) async fn workspace(
        &self,
        task: &Task,
    ) -> Result<(PathBuf, Option<SavedWorktree>), Workspace> {
        let internal = |e: &dyn std::fmt::Display| Workspace::Retry(e.to_string());
        let Some(repo) = &task.repo else {
            let dir = self.home.root().join("scratch").join(task.short_id());
            tokio::fs::create_dir_all(&dir).await.map_err(|e| internal(&e))?;
            return Ok((dir, None));
        };
        if let Some(saved) = self.store.worktree(task.id).await.map_err(|e| internal(&e))? {
            if saved.worktree.path.is_dir() {
                return Ok((saved.worktree.path, None));
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
        // A stacked task starts from its base's branch until the base landed (its branch is
        // then gone, and the target has its work).
        let stack = self.store.stack_of(task.id).await.map_err(|e| internal(&e))?;
        let stacked_on = stack.filter(|s| !s.base_landed()).map(|s| s.base_branch());
        let stacked_branch = stacked_on.clone();
        let short = task.short_id();
        let home = self.home.root().to_owned();
        let runtime = self.clone();
        let repo_for_job = repo_path.clone();
        // Files and git only, all blocking: on a blocking thread, so the preparations of
        // several tasks overlap and none holds up the runtime's other work.
        let span = tracing::Span::current();
        let prepared = tokio::task::spawn_blocking(move || {
            let _job = span.enter();
            let root = home.join("worktrees");
            let spec = |base_branch| worktree::Spec {
                repo: &repo_for_job,
                base_branch,
                short_id: &short,
                root: &root,
                copy_files: &settings.copy_files,
                setup: settings.setup.as_deref(),
            };
            let prepared = match stacked_on.as_deref().map(|b| worktree::prepare(&spec(b))) {
                // The base landed meanwhile and its branch went: the target has its work.
                Some(Err(worktree::WorktreeError::UnknownBaseBranch { .. })) | None => {
                    worktree::prepare(&spec(&base))?
                }
                Some(prepared) => prepared?,
            };
            // Local hook settings are not committed, so the worktree gets ccm's hooks of its own,
            // kept out of the agent's commits whatever git command it runs.
            let hook = crate::hooks::hook_program();
            let options = runtime.hook_options(&prepared.path, &hook);
            // A handoff's summary (`runtime::context`) is not the agent's work either.
            let handoff = prepared.path.join(super::context::HANDOFF_FILE);
            match crate::hooks::install::install_all(&options) {
                Ok(reports) => {
                    let files: Vec<&Path> = reports
                        .iter()
                        .filter(|r| {
                            use crate::hooks::install::Action;
                            matches!(r.action, Action::Added | Action::AlreadyPresent)
                        })
                        .map(|r| r.file.as_path())
                        .chain([handoff.as_path()])
                        .collect();
                    if let Err(e) =
                        worktree::keep_out_of_commits(&repo_for_job, &prepared.path, &files)
                    {
                        warn!(error = %e, "cannot keep ccm's hooks out of the worktree's commits; the agent runs without them");
                        if let Err(e) = crate::hooks::install::uninstall_all(&options) {
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
        // Where a stacked task's branch forked from its base's: the lander rebases only the
        // commits after it.
        if stacked_branch.as_ref() == Some(&prepared.base_branch) {
            if let Err(error) = self.store.record_fork(task.id, &prepared.base_commit).await {
                warn!(%error, "cannot record where the stacked task's branch forked");
            }
        }
        let path = prepared.path.clone();
        Ok((path, Some(SavedWorktree { repo: repo_path, worktree: prepared })))
    }

    pub(super) fn hook_options<'a>(
        &self,
        worktree: &'a Path,
        hook: &'a [String],
    ) -> crate::hooks::install::Options<'a> {
        crate::hooks::install::Options {
            repo: worktree,
            hook,
            shared: false,
            gate_timeout_secs: self.gate_timeout_secs(),
            mcp_program: None,
        }
    }

    /// How long an agent CLI waits for a gate hook: the approval timeout, plus a margin so
    /// ccm answers (deny) before the CLI gives up on the hook.
    pub(super) fn gate_timeout_secs(&self) -> u64 {
        self.config().approvals.timeout_secs + 30
    }

    pub(super) async fn new_agent(
        &self,
        kind: AgentKind,
        profile: &str,
        cwd: &Path,
        prompt: &str,
    ) -> Result<NewAgent> {
        let id = Uuid::new_v4();
        let account = self
            .profile(profile)
            .map_or_else(|| profile.to_string(), |p| p.account(profile).to_string());
        let dir = self.home.root().join("agents").join(id.to_string());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join("prompt.md"), prompt).await?;
        Ok(NewAgent {
            id,
            kind,
            profile: profile.to_string(),
            account,
            dir: dir.to_string_lossy().into_owned(),
            cwd: cwd.to_string_lossy().into_owned(),
            token: crate::store::new_agent_token()?,
            context_window: self.profile(profile).and_then(|p| p.context_window()),
        })
    }

    /// Opens the agent's tmux window; its output goes to `output.log` and its exit status to
    /// `exit` in the agent's directory. `token` is the agent's credential for its hook events.
    /// The window runs the agent's launcher (`launch.sh` in its directory, see
    /// `agents::launcher`), so tmux's command line stays short whatever the prompt. A start
    /// that fails for ccm's own reasons ends the attempt here, saying so (see
    /// [`Runtime::launch_failed`]).
    pub(super) async fn launch(
        &self,
        task: &Task,
        agent: &Agent,
        token: &str,
        profile: &Profile,
        prompt: &str,
    ) -> Result<()> {
        let dir = PathBuf::from(&agent.dir);
        let session_id = Uuid::new_v4().to_string();
        let prompt_file = dir.join("prompt.md").to_string_lossy().into_owned();
        let allowed_tools = match self.allowed_tools(task, &agent.profile, profile).await? {
            Ok(tools) => tools.join(","),
            Err(problem) => {
                self.store.agent_ended(agent.id, AgentStatus::Lost, None).await?;
                return Err(RuntimeError::Other(format!(
                    "cannot start the agent without knowing its allowed tools: {problem}"
                )));
            }
        };
        let mut codex_hooks = crate::hooks::install::codex_overrides(
            &crate::hooks::hook_program(),
            self.gate_timeout_secs(),
        );
        // ccm's MCP server: on Codex's command line (it reads no untrusted project's config),
        // and in a file for `{mcp_config}`.
        let mcp_program = crate::hooks::install::mcp_program(false);
        codex_hooks.extend(crate::hooks::install::codex_mcp_overrides(&mcp_program));
        let mcp_config = dir.join("mcp.json");
        let mcp_json = crate::hooks::install::mcp_config_file(&mcp_program).to_string();
        tokio::fs::write(&mcp_config, mcp_json).await?;
        let mcp_config = mcp_config.to_string_lossy().into_owned();
        let argv = profile.argv(&Placeholders {
            codex_hooks: &codex_hooks,
            prompt,
            prompt_file: &prompt_file,
            session_id: &session_id,
            cwd: &agent.cwd,
            allowed_tools: &allowed_tools,
            mcp_config: &mcp_config,
        });
        if profile.mode == Mode::External {
            return Err(RuntimeError::Other(format!(
                "profile `{}` is external: ccm runs no agent for it",
                agent.profile
            )));
        }
        // Every variable is given to the agent: it would otherwise get the environment of
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
        if let Err(reason) = check_command(&agent.profile, &argv, &env) {
            let reason = format!("{reason} (the prompt is {} bytes)", prompt.len());
            return self.launch_failed(task, agent, FailureClass::Fatal, &reason).await;
        }
        let about = format!(
            "ccm's launcher of agent {} (task {}), run by its tmux window",
            agent.id, task.id
        );
        let script = launcher::script(&Launch {
            argv: &argv,
            env: &env,
            mode: profile.mode,
            stdin: profile.stdin,
            dir: &agent.dir,
            prompt_file: &prompt_file,
            about: &about,
        });
        let launcher = dir.join(launcher::FILE);
        if let Err(error) = write_private(&launcher, script.as_bytes()).await {
            let reason =
                format!("ccm could not write the agent's launcher {}: {error}", launcher.display());
            return self.launch_failed(task, agent, FailureClass::Crash, &reason).await;
        }
        let window_argv = ["sh".to_string(), launcher.to_string_lossy().into_owned()];
        let spec =
            WindowSpec { name: &agent.short_id(), cwd: Path::new(&agent.cwd), argv: &window_argv };
        match self.tmux.spawn(&spec).await {
            Ok(window) => {
                if profile.mode == Mode::Interactive {
                    self.tmux.pipe_to(&window.id, &dir.join("output.log")).await?;
                }
                self.store.agent_running(agent.id, &window.id, window.pane_pid).await?;
                let prompt = crate::text::preview(prompt);
                info!(agent = %agent.short_id(), window = %window.id, kind = ?agent.kind, %prompt, "agent started");
                Ok(())
            }
            Err(error) => {
                let class =
                    if error.is_lasting() { FailureClass::Fatal } else { FailureClass::Crash };
                let reason = format!("ccm could not open the agent's tmux window: {error}");
                self.launch_failed(task, agent, class, &reason).await
            }
        }
    }

    /// The agent never ran, for a reason of ccm's (its command, its launcher, tmux): the agent
    /// is recorded as lost and its attempt (a worker's) or the review (a supervisor's) fails now
    /// with `reason`, instead of passing later for an agent that vanished. A `Fatal` class
    /// spends no more attempts.
    async fn launch_failed(
        &self,
        task: &Task,
        agent: &Agent,
        class: FailureClass,
        reason: &str,
    ) -> Result<()> {
        warn!(agent = %agent.short_id(), reason, "agent could not be started");
        self.store.agent_ended(agent.id, AgentStatus::Lost, None).await?;
        let event = TaskEvent::Failed { class };
        let reason = format!("{reason}; the agent never ran");
        match agent.kind {
            AgentKind::Worker => {
                let end =
                    AttemptEnd { outcome: "start_failed", verify_output: None, last_message: None };
                self.store.end_attempt(task.id, &end, event, &reason, self.policy()).await?;
            }
            AgentKind::Supervisory => {
                self.store.runtime_event(task.id, event, &reason, self.policy()).await?;
            }
        }
        self.scheduler_wake.notify_one();
        Ok(())
    }

    /// The tools the profile's agents may use without asking, as the task's project
    /// configures them (`allowed_tools` in its `.ccm/config.yaml`), else as the profile says.
    /// A project file that no longer loads gives way to the last good one this process loaded
    /// (with an alert), never to the profile's own list; with none, the problem (`Err`).
    pub(super) async fn allowed_tools(
        &self,
        task: &Task,
        name: &str,
        profile: &Profile,
    ) -> Result<Result<Vec<String>, String>> {
        let Some(saved) = self.store.worktree(task.id).await? else {
            return Ok(Ok(profile.allowed_tools.clone()));
        };
        Ok(crate::config::load_checked(&self.store, self.home.root(), &saved.repo).await.map(
            |config| {
                config
                    .profiles
                    .get(name)
                    .map_or_else(|| profile.allowed_tools.clone(), |p| p.allowed_tools.clone())
            },
        ))
    }
}

/// Writes `bytes` to a new file at `path` readable by its owner alone (0600 whatever the umask).
/// What a worker's prompt says about change requests: those forwarded to its task (to apply)
/// and those its task made (their outcome); empty when there are none.
fn change_requests_section(
    carried: &[crate::store::ChangeRequest],
    asked: &[crate::store::ChangeRequest],
) -> String {
    let mut text = String::new();
    if !carried.is_empty() {
        text.push_str("\n\n---\nApproved change requests to apply in this attempt (other tasks asked for them; the files are yours):\n");
        for c in carried {
            text.push_str(&format!(
                "- change request {} of task {}: `{}`: {}{}\n",
                &c.id[..8],
                &c.requester_task[..8],
                c.path,
                c.what.as_deref().map_or_else(
                    || format!(
                        "the write it tried ({}) was refused",
                        c.tool.as_deref().unwrap_or("a write")
                    ),
                    |w| crate::text::head(w, 4000)
                ),
                c.why
                    .as_deref()
                    .map(|w| format!(" (why: {})", crate::text::head(w, 2000)))
                    .unwrap_or_default(),
            ));
        }
    }
    if !asked.is_empty() {
        text.push_str("\n\n---\nChange requests this task made:\n");
        for c in asked {
            text.push_str(&format!(
                "- change request {} of `{}`: {}{}\n",
                &c.id[..8],
                c.path,
                c.state,
                c.resolution
                    .as_deref()
                    .map(|r| format!(" ({})", crate::text::head(r, 2000)))
                    .unwrap_or_default(),
            ));
        }
    }
    text
}

async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.write_all(bytes).await?;
    file.flush().await
}

/// Why a task has no directory to work in.
pub(super) enum Workspace {
    /// Nothing a retry can fix (no checkout of its repository here).
    Fatal(String),
    /// Perhaps a retry fixes it (setup failed, git hiccup).
    Retry(String),
}

/// Replaces `{name}` placeholders in one pass (substituted text is not scanned again).
pub(super) fn render(template: &str, values: &[(&str, &str)]) -> String {
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
}
