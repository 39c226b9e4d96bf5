//! `report_generation`: the attempt's report.

use ccm_schema::{AgentKind, Task, Timestamp};
use serde_json::json;

use super::{Result, Runtime};
use crate::agents::parse::OutputSummary;
use crate::config::Role;
use crate::worktree;

impl Runtime {
    /// `report_generation`: diff stat, commits, verification, cost, tokens, tool calls,
    /// duration and the last message, stored with the attempt.
    pub(super) async fn report(&self, task: &Task) -> Result<()> {
        let agents = self.store.task_agents(task.id).await?;
        let attempts = self.store.attempts(task.id).await?;
        let attempt = attempts.last();
        let worker =
            agents.iter().rev().find(|a| a.kind == AgentKind::Worker && a.attempt == task.attempts);
        let summary = match worker {
            Some(agent) => self.summary(agent).await,
            None => OutputSummary::default(),
        };
        let work = match self.store.worktree(task.id).await? {
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
                .map(|r| json!({ "path": r.path, "owner": r.owner, "tool": r.tool, "change_request": r.id, "state": r.state }))
                .collect::<Vec<_>>(),
            "duration_ms": duration_ms,
            "last_message": summary.last_message,
        });
        let supervised = task
            .workflow
            .as_deref()
            .and_then(|w| self.config().workflows.get(w).cloned())
            .is_some_and(|w| w.step(Role::Supervisor).is_some());
        self.store.save_report(task.id, &report, supervised, self.policy()).await?;
        Ok(())
    }
}
