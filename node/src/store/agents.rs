//! Agents, attempts and reports: what the agent runtime records. Every step that moves a task
//! is written together with the rows it depends on, in one transaction, so a crash between
//! the two is impossible and the runtime can always rebuild its work from the database.

use ccm_schema::{
    Agent, AgentKind, AgentStatus, Attempt, Report, Severity, Task, TaskEvent, Timestamp,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tasks::{apply_in_tx, load_task, raise_alert};
use super::{outbox, outbox_alert, Result, RetryPolicy, Store, StoreError, Writing};
use crate::worktree::SavedWorktree;

pub(super) const AGENT_COLUMNS: &str = "id, task_id, attempt, kind, profile, status, window_id, pane_pid, dir, cwd, \
     session_id, exit_code, cost_usd, input_tokens, output_tokens, tool_calls, started_at, last_heartbeat, ended_at, \
     context_tokens, context_window, context_action, compactions";

/// An agent about to start.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: Uuid,
    pub kind: AgentKind,
    pub profile: String,
    /// The account whose usage limit it shares (its profile's `account`).
    pub account: String,
    pub dir: String,
    pub cwd: String,
    /// The agent's own credential for its hook events (`CCM_AGENT_TOKEN`); only its hash is
    /// stored.
    pub token: String,
    /// Its context window (`Profile::context_window`), when known.
    pub context_window: Option<u64>,
}

/// A fresh agent credential: 32 random bytes, hex.
pub fn new_agent_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex(&bytes))
}

/// How an agent credential is stored: its SHA-256, hex.
pub fn agent_token_hash(token: &str) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an agent's output said, as recorded with each heartbeat.
#[derive(Debug, Clone, Default)]
pub struct AgentProgress {
    pub session_id: Option<String>,
    /// `None` when the CLI reports no cost.
    pub cost_usd: Option<f64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub tool_calls: i64,
    /// Tokens in its context after its latest model call.
    pub context_tokens: i64,
    /// Its model's context window as its CLI reported it (`None`: keep the one it has).
    pub context_window: Option<i64>,
    /// The whole summary as JSON.
    pub summary: serde_json::Value,
}

/// Cost and tokens summed over agents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CostTotals {
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub agents: i64,
}

/// The end of an attempt: how it went and what the next attempt should know.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    pub outcome: &'static str,
    pub verify_output: Option<String>,
    pub last_message: Option<String>,
}

const ACTOR: &str = "runtime";

impl Store {
    /// Starts the next attempt of a queued task: applies `start`, records the worker agent and
    /// the attempt with its prompt, and `worktree` (`tasks.worktree`) when one was made for it.
    pub async fn begin_attempt(
        &self,
        task: Uuid,
        agent: &NewAgent,
        prompt: &str,
        worktree: Option<&SavedWorktree>,
        policy: RetryPolicy,
    ) -> Result<(Task, Agent)> {
        self.begin_attempt_carrying(task, agent, prompt, worktree, policy, &[]).await
    }

    /// [`Store::begin_attempt`] whose prompt carries the approved change requests `changes`
    /// (their ids): they are delivered to this attempt, in its transaction.
    pub async fn begin_attempt_carrying(
        &self,
        task: Uuid,
        agent: &NewAgent,
        prompt: &str,
        worktree: Option<&SavedWorktree>,
        policy: RetryPolicy,
        changes: &[String],
    ) -> Result<(Task, Agent)> {
        let mut tx = self.write().await?;
        let account = if agent.account == agent.profile {
            String::new()
        } else {
            format!(", account {}", agent.account)
        };
        let reason = format!(
            "worker {} started ({}{account})",
            ccm_schema::types::short_id(&agent.id),
            agent.profile
        );
        apply_in_tx(&mut tx, task, TaskEvent::Start, &reason, ACTOR, policy).await?;
        let current = load_task(&mut tx, task).await?;
        let now = Timestamp::now();
        let recorded = insert_agent(&mut tx, task, current.attempts, agent, now).await?;
        sqlx::query("INSERT INTO attempts (task_id, number, agent_id, prompt, started_at) VALUES (?, ?, ?, ?, ?)")
            .bind(task.hyphenated())
            .bind(current.attempts)
            .bind(agent.id.hyphenated())
            .bind(prompt)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if worktree.is_some() {
            write_worktree(&mut tx, task, worktree).await?;
        }
        super::claims::delivered(&mut tx, task, current.attempts, changes).await?;
        tx.commit().await?;
        Ok((current, recorded))
    }

    /// Records a supervisory agent for the task's current attempt.
    pub async fn begin_review(&self, task: Uuid, agent: &NewAgent) -> Result<Agent> {
        let mut tx = self.write().await?;
        let current = load_task(&mut tx, task).await?;
        let recorded =
            insert_agent(&mut tx, task, current.attempts, agent, Timestamp::now()).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// The agent's tmux window exists and its process runs.
    pub async fn agent_running(&self, agent: Uuid, window_id: &str, pane_pid: i64) -> Result<()> {
        sqlx::query("UPDATE agents SET status = 'running', window_id = ?, pane_pid = ?, last_heartbeat = ? WHERE id = ?")
            .bind(window_id)
            .bind(pane_pid)
            .bind(Timestamp::now())
            .bind(agent.hyphenated())
            .execute(&mut self.writer().await?.conn)
            .await?;
        Ok(())
    }

    /// A sign of life, with what the output said so far.
    pub async fn agent_progress(&self, agent: Uuid, progress: &AgentProgress) -> Result<()> {
        sqlx::query(
            r#"
            UPDATE agents SET last_heartbeat = ?, session_id = coalesce(?, session_id), cost_usd = ?,
                input_tokens = ?, output_tokens = ?, tool_calls = ?, summary = ?, stall_alerted = 0,
                context_tokens = ?, context_window = coalesce(?, context_window)
            WHERE id = ?
            "#,
        )
        .bind(Timestamp::now())
        .bind(&progress.session_id)
        .bind(progress.cost_usd)
        .bind(progress.input_tokens)
        .bind(progress.output_tokens)
        .bind(progress.tool_calls)
        .bind(sqlx::types::Json(&progress.summary))
        .bind(progress.context_tokens)
        .bind(progress.context_window)
        .bind(agent.hyphenated())
        .execute(&mut self.writer().await?.conn)
        .await?;
        Ok(())
    }

    /// The agent's process is gone: exited with `exit_code`, lost, or killed by the node. Its
    /// credential is revoked: events sent with it are no longer the agent's.
    ///
    /// A task's summary carries the cost of its agents as of its last transition. The move
    /// that ends the agent's step (`executing` for a worker, `supervisory` for a reviewer) comes
    /// after this and carries the agent's final cost; when the task has already left that state
    /// (cancelled, moved by a hook) and the agent reported a cost or tokens, a new summary (a
    /// new version of the task) carries it.
    pub async fn agent_ended(
        &self,
        agent: Uuid,
        status: AgentStatus,
        exit_code: Option<i64>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let now = Timestamp::now();
        let ended: Option<(String, AgentKind, Option<f64>, i64, i64)> = sqlx::query_as(
            r#"
            UPDATE agents SET status = ?, exit_code = ?, ended_at = ?, token_hash = NULL
            WHERE id = ? AND status IN ('starting', 'running')
            RETURNING task_id, kind, cost_usd, input_tokens, output_tokens
            "#,
        )
        .bind(status)
        .bind(exit_code)
        .bind(now)
        .bind(agent.hyphenated())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((task, kind, cost, input, output)) = ended {
            if cost.is_some() || input > 0 || output > 0 {
                let task = load_task(&mut tx, super::tasks::parse_id(&task)?).await?;
                let step = match kind {
                    AgentKind::Worker => ccm_schema::TaskState::Executing,
                    AgentKind::Supervisory => ccm_schema::TaskState::Supervisory,
                };
                if task.state != step {
                    super::tasks::touch(&mut tx, task.id, now).await?;
                    let task = load_task(&mut tx, task.id).await?;
                    super::outbox_task(&mut tx, &task, false).await?;
                }
            }
        }
        tx.commit().await?;
        self.credentials.revoke(agent);
        Ok(())
    }

    /// Ends the task's current attempt and applies `event` (the attempt's verdict) in one
    /// transaction.
    pub async fn end_attempt(
        &self,
        task: Uuid,
        end: &AttemptEnd,
        event: TaskEvent,
        reason: &str,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            UPDATE attempts SET ended_at = ?, outcome = ?, verify_output = coalesce(?, verify_output),
                last_message = coalesce(?, last_message)
            WHERE task_id = ? AND ended_at IS NULL
            "#,
        )
        .bind(Timestamp::now())
        .bind(end.outcome)
        .bind(&end.verify_output)
        .bind(&end.last_message)
        .bind(task.hyphenated())
        .execute(&mut *tx)
        .await?;
        apply_in_tx(&mut tx, task, event, reason, ACTOR, policy).await?;
        let task = load_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Applies a runtime event that needs no other row (worker finished, timeouts).
    pub async fn runtime_event(
        &self,
        task: Uuid,
        event: TaskEvent,
        reason: &str,
        policy: RetryPolicy,
    ) -> Result<Task> {
        self.apply_event(&task.to_string(), event, reason, ACTOR, policy).await
    }

    /// Stores the report of the current attempt and moves the task on (`report_ready`).
    pub async fn save_report(
        &self,
        task: Uuid,
        summary: &serde_json::Value,
        supervised: bool,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        let current = load_task(&mut tx, task).await?;
        let report: Report = sqlx::query_as(
            r#"
            INSERT INTO reports (task_id, attempt, summary, created_at) VALUES (?, ?, ?, ?)
            ON CONFLICT (task_id, attempt) DO UPDATE SET summary = excluded.summary, verdict = NULL, review = NULL
            RETURNING attempt, summary, verdict, review, created_at
            "#,
        )
        .bind(task.hyphenated())
        .bind(current.attempts)
        .bind(sqlx::types::Json(summary))
        .bind(Timestamp::now())
        .fetch_one(&mut *tx)
        .await?;
        outbox(
            &mut tx,
            &format!("{task}/{}", report.attempt),
            &ccm_sync::outbox::ReportRowV1::from(&report),
            false,
        )
        .await?;
        let reason = if supervised {
            "report gathered; supervisory review next"
        } else {
            "report gathered; no supervisor step"
        };
        apply_in_tx(&mut tx, task, TaskEvent::ReportReady { supervised }, reason, ACTOR, policy)
            .await?;
        let task = load_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Records the supervisory verdict on the current report and applies it.
    pub async fn save_verdict(
        &self,
        task: Uuid,
        ok: bool,
        review: &str,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        let current = load_task(&mut tx, task).await?;
        let verdict = if ok { "ok" } else { "issue" };
        let report: Report = sqlx::query_as(
            r#"
            UPDATE reports SET verdict = ?, review = ? WHERE task_id = ? AND attempt = ?
            RETURNING attempt, summary, verdict, review, created_at
            "#,
        )
        .bind(verdict)
        .bind(review)
        .bind(task.hyphenated())
        .bind(current.attempts)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Invalid {
            field: "report",
            message: format!("task {task} has no report to review"),
        })?;
        outbox(
            &mut tx,
            &format!("{task}/{}", report.attempt),
            &ccm_sync::outbox::ReportRowV1::from(&report),
            !ok,
        )
        .await?;
        let reason = format!("supervisory verdict: {verdict}");
        apply_in_tx(&mut tx, task, TaskEvent::Verdict { ok }, &reason, ACTOR, policy).await?;
        let task = load_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Raises the `stalled` alert for an agent once per silence.
    pub async fn alert_stalled(&self, agent: &Agent, silent_secs: u64) -> Result<()> {
        let mut tx = self.write().await?;
        let flagged =
            sqlx::query("UPDATE agents SET stall_alerted = 1 WHERE id = ? AND stall_alerted = 0")
                .bind(agent.id.hyphenated())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if flagged == 1 {
            let message = format!(
                "agent {} of task {} has shown no output and no hook event for {silent_secs}s",
                agent.short_id(),
                ccm_schema::types::short_id(&agent.task_id)
            );
            raise_alert(
                &mut tx,
                Some(agent.task_id),
                Severity::Warning,
                "stalled",
                &message,
                None,
                Timestamp::now(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Raises an alert about a task outside any transition (for example a kept branch).
    pub async fn alert(
        &self,
        task: Option<Uuid>,
        severity: Severity,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        raise_alert(&mut tx, task, severity, reason, message, None, Timestamp::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Raises an alert unless an open alert says the same (`reason` and `message`) already.
    pub async fn alert_once(
        &self,
        task: Option<Uuid>,
        severity: Severity,
        reason: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let (open,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM alerts WHERE resolved_at IS NULL AND reason = ? AND message = ?)",
        )
        .bind(reason)
        .bind(message)
        .fetch_one(&mut *tx)
        .await?;
        if !open {
            raise_alert(&mut tx, task, severity, reason, message, None, Timestamp::now()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Resolves the open alerts of no task that say `message` for `reason` (raised by
    /// [`Store::alert_once`] for a condition that has now cleared).
    pub async fn resolve_alert(&self, reason: &str, message: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let resolved: Vec<ccm_schema::Alert> = sqlx::query_as(&format!(
            r#"
            UPDATE alerts SET resolved_at = ?
            WHERE resolved_at IS NULL AND task_id IS NULL AND reason = ? AND message = ?
            RETURNING {}
            "#,
            super::records::ALERT_COLUMNS
        ))
        .bind(Timestamp::now())
        .bind(reason)
        .bind(message)
        .fetch_all(&mut *tx)
        .await?;
        for alert in resolved {
            outbox_alert(&mut tx, &alert, false).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The reset time of the usage limit a task waits for, learnt after it began waiting (a
    /// `StopFailure` hook moves the task before its agent's output says when the limit resets):
    /// the task, if it still waits after attempt `attempt` (which the wait uncounted), waits
    /// until `until` instead.
    pub async fn set_quota_reset(&self, task: Uuid, attempt: u32, until: Timestamp) -> Result<()> {
        let mut tx = self.write().await?;
        let changed = sqlx::query(
            "UPDATE tasks SET wake_at = ?, updated_at = ?, version = version + 1 \
             WHERE id = ? AND state = 'waiting_quota' AND attempts + 1 = ?",
        )
        .bind(until)
        .bind(Timestamp::now())
        .bind(task.hyphenated())
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() > 0 {
            super::accounts::agent_limit_reset(&mut tx, task, until).await?;
            let task = load_task(&mut tx, task).await?;
            super::outbox_task(&mut tx, &task, false).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Remembers (or forgets, with `None`) the task's worktree.
    pub async fn set_worktree(&self, task: Uuid, worktree: Option<&SavedWorktree>) -> Result<()> {
        write_worktree(&mut self.writer().await?.conn, task, worktree).await
    }

    /// The task's worktree, while it exists. A record that does not read as one (written by
    /// another version) counts as none, with a warning: the worktree stays on disk.
    pub async fn worktree(&self, task: Uuid) -> Result<Option<SavedWorktree>> {
        let row: Option<(Option<sqlx::types::Json<serde_json::Value>>,)> =
            sqlx::query_as("SELECT worktree FROM tasks WHERE id = ?")
                .bind(task.hyphenated())
                .fetch_optional(&self.readers)
                .await?;
        let Some(value) = row.and_then(|(w,)| w.map(|w| w.0)) else { return Ok(None) };
        match serde_json::from_value(value) {
            Ok(saved) => Ok(Some(saved)),
            Err(error) => {
                tracing::warn!(task = %task, %error, "the task's worktree record is unreadable; ignoring it");
                Ok(None)
            }
        }
    }

    /// Tasks the runtime has work for: those holding a slot, except those of the `external`
    /// profiles (which no runtime runs: thousands of them may wait in `queued`), and finished
    /// ones whose worktree still exists.
    pub async fn runtime_tasks(&self, external: &[String]) -> Result<Vec<Task>> {
        use ccm_schema::TaskState::{Executing, Queued, ReportGeneration, Supervisory};
        // The other profiles' tasks only, through `held` (see `held_profiles`).
        let ids: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
            r#"
            {}
            SELECT t.id, t.priority, t.created_at FROM held CROSS JOIN tasks t
                ON t.state = held.state AND t.profile = held.profile
            WHERE held.profile NOT IN (SELECT value FROM json_each(?1))
            UNION ALL
            SELECT id, priority, created_at FROM tasks
            WHERE worktree IS NOT NULL AND state IN ('complete', 'failed', 'cancelled')
            ORDER BY 2 DESC, 3
            "#,
            super::tasks::held_profiles(
                [Queued, Executing, ReportGeneration, Supervisory].into_iter()
            )
        ))
        .bind(serde_json::to_string(external).unwrap_or_default())
        .fetch_all(&self.readers)
        .await?;
        let mut conn = self.readers.acquire().await?;
        let mut tasks = Vec::with_capacity(ids.len());
        for (id, _, _) in ids {
            tasks.push(load_task(&mut conn, super::tasks::parse_id(&id)?).await?);
        }
        Ok(tasks)
    }

    /// Agents whose process may be running.
    pub async fn live_agents(&self) -> Result<Vec<Agent>> {
        Ok(sqlx::query_as(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE status IN ('starting', 'running') ORDER BY started_at")).fetch_all(&self.readers).await?)
    }

    /// The latest agent of `kind` for the task's attempt `attempt`.
    pub async fn current_agent(
        &self,
        task: Uuid,
        attempt: u32,
        kind: AgentKind,
    ) -> Result<Option<Agent>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE task_id = ? AND attempt = ? AND kind = ? ORDER BY started_at DESC LIMIT 1"
        ))
        .bind(task.hyphenated())
        .bind(attempt)
        .bind(kind)
        .fetch_optional(&self.readers)
        .await?)
    }

    /// The live agents, then at most `ended` of the others (`None`: every one), each part most
    /// recently started first. Two index ranges (`agents_by_status`, `agents_by_started`), read
    /// in one snapshot: a node keeps every agent it ever ran.
    pub async fn agents(&self, ended: Option<i64>) -> Result<Vec<Agent>> {
        let mut snapshot = self.readers.begin().await?;
        let mut agents: Vec<Agent> = sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE status IN ('starting', 'running') \
             ORDER BY started_at DESC"
        ))
        .fetch_all(&mut *snapshot)
        .await?;
        let others: Vec<Agent> = sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE status NOT IN ('starting', 'running') \
             ORDER BY started_at DESC LIMIT ?"
        ))
        .bind(ended.unwrap_or(-1))
        .fetch_all(&mut *snapshot)
        .await?;
        agents.extend(others);
        Ok(agents)
    }

    /// The agents of a task, oldest first.
    pub async fn task_agents(&self, task: Uuid) -> Result<Vec<Agent>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE task_id = ? ORDER BY started_at"
        ))
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }

    /// The agent whose id is `key` or starts with `key`.
    pub async fn agent(&self, key: &str) -> Result<Agent> {
        let key = key.trim().to_ascii_lowercase();
        let found: Vec<Agent> = sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 2"
        ))
        .bind(&key)
        .fetch_all(&self.readers)
        .await?;
        match <[Agent; 1]>::try_from(found) {
            Ok([agent]) => Ok(agent),
            Err(found) if found.is_empty() || key.is_empty() => Err(StoreError::Invalid {
                field: "agent",
                message: format!("no agent matches `{key}`"),
            }),
            Err(_) => Err(StoreError::Invalid {
                field: "agent",
                message: format!("agent id `{key}` is ambiguous"),
            }),
        }
    }

    pub async fn attempts(&self, task: Uuid) -> Result<Vec<Attempt>> {
        Ok(sqlx::query_as(
            r#"
            SELECT number, agent_id, prompt, started_at, ended_at, outcome, verify_output, last_message,
                handoff
            FROM attempts WHERE task_id = ? ORDER BY id
            "#,
        )
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }

    pub async fn reports(&self, task: Uuid) -> Result<Vec<Report>> {
        Ok(sqlx::query_as("SELECT attempt, summary, verdict, review, created_at FROM reports WHERE task_id = ? ORDER BY attempt")
            .bind(task.hyphenated())
            .fetch_all(&self.readers)
            .await?)
    }

    /// Cost and tokens of the agents started since `since`.
    pub async fn cost_since(&self, since: Timestamp) -> Result<CostTotals> {
        Ok(sqlx::query_as(
            r#"
            SELECT coalesce(sum(cost_usd), 0.0) AS cost_usd, coalesce(sum(input_tokens), 0) AS input_tokens,
                   coalesce(sum(output_tokens), 0) AS output_tokens, count(*) AS agents
            FROM agents WHERE started_at >= ?
            "#,
        )
        .bind(since)
        .fetch_one(&self.readers)
        .await?)
    }
}

/// Sets the task's worktree column (JSON, or NULL for `None`).
async fn write_worktree(
    db: &mut sqlx::SqliteConnection,
    task: Uuid,
    worktree: Option<&SavedWorktree>,
) -> Result<()> {
    sqlx::query("UPDATE tasks SET worktree = ? WHERE id = ?")
        .bind(worktree.map(sqlx::types::Json))
        .bind(task.hyphenated())
        .execute(db)
        .await?;
    Ok(())
}

async fn insert_agent(
    tx: &mut Writing,
    task: Uuid,
    attempt: u32,
    agent: &NewAgent,
    now: Timestamp,
) -> Result<Agent> {
    Ok(sqlx::query_as(&format!(
        r#"
        INSERT INTO agents (id, task_id, attempt, kind, profile, account, status, dir, cwd, started_at, last_heartbeat, token_hash,
                            context_window)
        VALUES (?, ?, ?, ?, ?, ?, 'starting', ?, ?, ?, ?, ?, ?)
        RETURNING {AGENT_COLUMNS}
        "#
    ))
    .bind(agent.id.hyphenated())
    .bind(task.hyphenated())
    .bind(attempt)
    .bind(agent.kind)
    .bind(&agent.profile)
    .bind(&agent.account)
    .bind(&agent.dir)
    .bind(&agent.cwd)
    .bind(now)
    .bind(now)
    .bind(agent_token_hash(&agent.token))
    .bind(agent.context_window.map(|w| i64::try_from(w).unwrap_or(i64::MAX)))
    .fetch_one(&mut **tx)
    .await?)
}
