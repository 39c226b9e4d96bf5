//! `supervisory`: the supervisor's review of the report, and its verdict.

use ccm_schema::{Agent, AgentKind, AgentStatus, FailureClass, Task, TaskEvent};

use super::start::{render, Allowed};
use super::{Result, Runtime};
use crate::config::Role;

impl Runtime {
    /// `supervisory`: a headless supervisory agent over the report.
    pub(super) async fn start_review(&self, task: &Task) -> Result<()> {
        let step = task
            .workflow
            .as_deref()
            .and_then(|w| self.config().workflows.get(w).cloned())
            .and_then(|w| w.step(Role::Supervisor).cloned());
        let Some(step) = step else {
            // The workflow lost its supervisor step (config changed): nothing to review with.
            self.store
                .save_verdict(task.id, true, "no supervisor step in the workflow", self.policy())
                .await?;
            return Ok(());
        };
        let profile_name = step.profile.clone().unwrap_or_else(|| task.profile.clone());
        let Some(profile) = self.profile(&profile_name) else {
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
        // No agent of an account at its usage limit starts: a fallback reviews, or the review
        // waits (the task stays in `supervisory`; every pass asks again) for the reset.
        let (profile_name, profile) = match self.account_allows(&profile_name, profile, &[]).await?
        {
            Allowed::Under(name, profile) => (name, profile),
            Allowed::Wait(_) => return Ok(()),
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
    pub(super) async fn judge(&self, task: &Task, agent: &Agent) -> Result<()> {
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
}

/// The verdict in a review: its last `VERDICT: ok|issue` line.
pub(super) fn verdict(review: &str) -> Option<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_is_read_from_the_last_verdict_line() {
        assert_eq!(verdict("looks fine\nVERDICT: ok"), Some(true));
        assert_eq!(verdict("**Verdict: issue**\n"), Some(false));
        assert_eq!(verdict("VERDICT: ok\nlater: VERDICT: issue"), Some(true));
        assert_eq!(verdict("VERDICT: issue\nverdict: ok"), Some(true));
        assert_eq!(verdict("no verdict here"), None);
    }
}
