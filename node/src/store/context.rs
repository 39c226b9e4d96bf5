//! Context windows (issue 25, migration `20261209070000_context_windows.sql`): what ccm did
//! when an agent's context passed its profile's threshold, the handoff that ends an attempt
//! with a summary for the next one, and the compactions its CLI reported.

use ccm_schema::{Agent, Severity, TaskEvent, TaskState, Timestamp};
use uuid::Uuid;

use super::tasks::{append_log, apply_in_tx, load_task, raise_alert};
use super::{Result, RetryPolicy, Store, Writing};
use crate::agents::profile::ContextAction;

/// The alert a `warn` policy raises.
pub const CONTEXT_ALERT: &str = "context_high";

const ACTOR: &str = "runtime";

impl Store {
    /// Records that `agent`'s context passed its threshold (with its tokens, as just read) and
    /// what ccm does about it, once per agent: `warn` raises a [`CONTEXT_ALERT`], `handoff` writes `said` in its task's log
    /// (the request itself reaches the agent through its hooks). Returns whether this call
    /// recorded it (`false`: already done).
    pub async fn context_passed(
        &self,
        agent: &Agent,
        action: ContextAction,
        said: &str,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        let marked = sqlx::query(
            r#"
            UPDATE agents SET context_action = ?, context_tokens = ?
            WHERE id = ? AND context_action IS NULL
            "#,
        )
        .bind(action.as_str())
        .bind(agent.context_tokens)
        .bind(agent.id.hyphenated())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            return Ok(false);
        }
        let now = Timestamp::now();
        match action {
            ContextAction::Warn => {
                let details = serde_json::json!({
                    "agent": agent.id,
                    "context_tokens": agent.context_tokens,
                    "context_window": agent.context_window,
                });
                raise_alert(
                    &mut tx,
                    Some(agent.task_id),
                    Severity::Warning,
                    CONTEXT_ALERT,
                    said,
                    Some(details),
                    now,
                )
                .await?;
            }
            ContextAction::Handoff => log_in_place(&mut tx, agent.task_id, now, said).await?,
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ends the task's running attempt with the summary its agent wrote (outcome `handoff`)
    /// and queues the task again (`handed_off`, not a failure: the attempt does not count).
    pub async fn hand_off(
        &self,
        task: Uuid,
        summary: &str,
        last_message: Option<&str>,
        reason: &str,
        policy: RetryPolicy,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            UPDATE attempts SET ended_at = ?, outcome = 'handoff', handoff = ?,
                last_message = coalesce(?, last_message)
            WHERE task_id = ? AND ended_at IS NULL
            "#,
        )
        .bind(Timestamp::now())
        .bind(summary)
        .bind(last_message)
        .bind(task.hyphenated())
        .execute(&mut *tx)
        .await?;
        apply_in_tx(&mut tx, task, TaskEvent::HandedOff, reason, ACTOR, policy).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Counts a compaction of `agent`'s context and writes it in its task's log, in the
/// transaction of the hook event that said so.
pub(super) async fn compacted(
    tx: &mut Writing,
    agent: &Agent,
    trigger: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    sqlx::query("UPDATE agents SET compactions = compactions + 1 WHERE id = ?")
        .bind(agent.id.hyphenated())
        .execute(&mut **tx)
        .await?;
    let trigger = trigger.map(|t| format!(" ({t})")).unwrap_or_default();
    let share = match agent.context_share() {
        Some(share) if agent.context_tokens > 0 => {
            format!(", its context {:.0}% full", share * 100.0)
        }
        _ => String::new(),
    };
    let said = format!("context compaction{trigger} of agent {}{share}", agent.short_id());
    log_in_place(tx, agent.task_id, now, &said).await
}

/// A line in the task's log that does not move it (`from_state` = `to_state`).
async fn log_in_place(tx: &mut Writing, task: Uuid, now: Timestamp, said: &str) -> Result<()> {
    let state: TaskState = load_task(tx, task).await?.state;
    append_log(tx, task, now, Some(state), state, said, ACTOR).await
}
