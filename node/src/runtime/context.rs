//! Context windows (issue 25): how full a live worker's context is, and what its profile's
//! `context:` policy says to do once it passes the threshold.
//!
//! - `warn`: a `context_high` alert ([`crate::store::CONTEXT_ALERT`]).
//! - `handoff`: the agent is asked, through its hooks ([`hook_answer`]: the answer to its next
//!   `PostToolUse` or `Stop`, while [`HANDOFF_FILE`] is missing), to write a summary for the
//!   agent that continues the task into [`HANDOFF_FILE`] in its worktree and end its turn.
//!   When it has ended, [`Runtime::take_handoff`] ends the attempt with the summary
//!   (`handed_off`, not a failure) and the next attempt's prompt carries it
//!   (`runtime/start.rs`). The file is kept out of the worktree's commits and removed once
//!   read. An agent that never writes it ends as it would have without the request.
//!
//! Each is done at most once per agent (`agents.context_action`).

use std::path::Path;

use ccm_schema::{Agent, AgentKind, Task};
use serde_json::{json, Value};
use tracing::info;

use super::{Result, Runtime};
use crate::agents::profile::ContextAction;
use crate::hooks::event::{HookEvent, Kind, System};

/// The file, in the agent's working directory, a worker that hands off writes its summary to.
pub const HANDOFF_FILE: &str = ".ccm-handoff.md";

/// The most bytes of a summary carried into the next attempt's prompt (its beginning is kept).
const HANDOFF_MAX_BYTES: usize = 32 * 1024;

/// `62% (124000 of 200000 tokens)`.
fn fullness(agent: &Agent) -> String {
    let share = agent.context_share().unwrap_or(0.0);
    let window = agent.context_window.unwrap_or(0);
    format!("{:.0}% ({} of {window} tokens)", share * 100.0, agent.context_tokens)
}

/// What ccm tells an agent that is to hand off.
pub fn handoff_request(agent: &Agent) -> String {
    let path = Path::new(&agent.cwd).join(HANDOFF_FILE);
    format!(
        "ccm: your context window is {} full. Hand this task over now: write a summary for the \
         agent that continues it to the file {} (what the task is, what you did so far, what is \
         left, and what the next agent must know: files, commands, pitfalls). Then end your turn \
         without further work.",
        fullness(agent),
        path.display()
    )
}

/// The answer to a hook event of `agent` that carries the handoff request, when it is due:
/// the agent is to hand off, has not written its summary yet, and the event is one whose
/// answer the agent reads (Claude Code's and Codex's `PostToolUse` and `Stop`, as a `block`
/// with the request as its reason).
pub fn hook_answer(agent: &Agent, event: &HookEvent) -> Option<Value> {
    let due = agent.kind == AgentKind::Worker
        && agent.context_action.as_deref() == Some(ContextAction::Handoff.as_str())
        && matches!(event.system, System::Claude | System::Codex)
        && matches!(event.kind, Kind::PostTool | Kind::Stop)
        && !Path::new(&agent.cwd).join(HANDOFF_FILE).exists();
    due.then(|| json!({ "decision": "block", "reason": handoff_request(agent) }))
}

impl Runtime {
    /// Acts on a live worker's context once it passes its profile's threshold (see the module
    /// documentation); `agent` carries the tokens just read from its output.
    pub(super) async fn check_context(&self, agent: &Agent) -> Result<()> {
        if agent.kind != AgentKind::Worker || agent.context_action.is_some() {
            return Ok(());
        }
        let Some(policy) = self.profile(&agent.profile).and_then(|p| p.context) else {
            return Ok(());
        };
        let Some(share) = agent.context_share() else { return Ok(()) };
        if share < policy.threshold {
            return Ok(());
        }
        let threshold = format!("{:.0}%", policy.threshold * 100.0);
        let said = match policy.action {
            ContextAction::Warn => format!(
                "agent {}'s context is {}, past its profile's threshold of {threshold}",
                agent.short_id(),
                fullness(agent)
            ),
            ContextAction::Handoff => format!(
                "context of agent {} at {}, past the threshold of {threshold}: asked it to hand \
                 off with a summary in {HANDOFF_FILE}",
                agent.short_id(),
                fullness(agent)
            ),
        };
        if self.store.context_passed(agent, policy.action, &said).await? {
            info!(agent = %agent.short_id(), action = policy.action.as_str(), "context past its threshold");
        }
        Ok(())
    }

    /// The summary of a worker that was asked to hand off and wrote one; the file is removed
    /// (it is not the task's work). `None` when it was not asked or wrote nothing.
    pub(super) async fn take_handoff(&self, agent: &Agent) -> Result<Option<String>> {
        if agent.context_action.as_deref() != Some(ContextAction::Handoff.as_str()) {
            return Ok(None);
        }
        let path = Path::new(&agent.cwd).join(HANDOFF_FILE);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        tokio::fs::remove_file(&path).await?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| crate::text::head(text, HANDOFF_MAX_BYTES)))
    }

    /// Ends `task`'s attempt with `summary`: the task is queued again at once.
    pub(super) async fn finish_handoff(
        &self,
        task: &Task,
        agent: &Agent,
        summary: &str,
        last_message: Option<&str>,
    ) -> Result<()> {
        let reason = format!(
            "agent {} handed off with a summary ({} bytes) at {} of its context; the next \
             attempt continues from it (not a failure)",
            agent.short_id(),
            summary.len(),
            fullness(agent)
        );
        self.store.hand_off(task.id, summary, last_message, &reason, self.policy()).await?;
        self.scheduler_wake.notify_one();
        Ok(())
    }
}
