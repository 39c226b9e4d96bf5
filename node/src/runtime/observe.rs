//! Observing live agents: their output, their windows, their leases.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ccm_schema::{
    Agent, AgentKind, AgentStatus, FailureClass, Task, TaskEvent, TaskState, Timestamp,
};
use tracing::{info, warn};

use super::outcome::quota_until;
use super::{Passes, Result, Runtime};
use crate::agents::parse::{OutputFormat, OutputSummary};
use crate::store::{AgentProgress, AttemptEnd};

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

/// What the runtime has read of one live agent's output.
pub(super) struct Observed {
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

impl Runtime {
    /// Reads the agent's new output, and ends it when it exited, vanished, or is not wanted.
    pub(super) async fn observe(
        &self,
        agent: &Agent,
        task: Option<&Task>,
        passes: &mut Passes,
    ) -> Result<()> {
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
            if let Some(until) =
                observed.summary.quota.as_ref().and_then(|q| quota_until(q, Timestamp::now()))
            {
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
        if agent.kind == AgentKind::Worker {
            let context_tokens = observed.summary.context_tokens;
            let current = Agent {
                context_tokens: i64::try_from(context_tokens).unwrap_or(i64::MAX),
                ..agent.clone()
            };
            self.check_context(&current).await?;
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
        let config = self.config();
        let runtime = &config.runtime;
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
    pub(super) async fn exiting_by_itself(
        &self,
        agent: &Agent,
        task: Option<&Task>,
    ) -> Result<bool> {
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
    pub(super) async fn settle_start(&self, agent: &Agent) -> Result<()> {
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
    pub(super) async fn save_progress(
        &self,
        agent: &Agent,
        observed: &mut Observed,
        last: bool,
    ) -> Result<()> {
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
            context_tokens: i64::try_from(s.context_tokens).unwrap_or(i64::MAX),
            // A window the profile sets wins over the one the CLI reports.
            context_window: s
                .context_window
                .filter(|_| self.profile(&agent.profile).and_then(|p| p.context?.window).is_none())
                .map(|w| i64::try_from(w).unwrap_or(i64::MAX)),
            summary: serde_json::to_value(s)?,
        };
        self.store.agent_progress(agent.id, &progress).await?;
        observed.saved = Some(Instant::now());
        observed.dirty = false;
        Ok(())
    }

    /// Whether the window exists. A window list at most `WINDOWS_EVERY` old answers yes; a
    /// no is checked against a fresh list (the window may be newer than the list).
    pub(super) async fn window_exists(
        &self,
        window: &str,
        windows: &mut Option<(Instant, HashSet<String>)>,
    ) -> Result<bool> {
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
    pub(super) async fn stop(&self, agent: &Agent, status: AgentStatus) -> Result<()> {
        if let Some(window) = &agent.window_id {
            self.tmux.kill(window).await?;
        }
        self.store.agent_ended(agent.id, status, None).await?;
        Ok(())
    }
}

/// Appends the new complete lines of the agent's output log to its summary.
pub(super) async fn read_output(log: &Path, observed: &mut Observed) -> Result<()> {
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

/// The exit status the agent's wrapper wrote, once it has.
pub(super) async fn read_exit(dir: &Path) -> Option<i64> {
    let text = tokio::fs::read_to_string(dir.join("exit")).await.ok()?;
    Some(text.trim().parse().unwrap_or(-1))
}
