//! Hook events and what they feed: heartbeats, counters, files touched, session ids, decisions
//! and alerts for permission prompts, usage limits from `StopFailure`; and strict file
//! ownership (claims and change requests).
//!
//! An event is stored with the sender's idempotency key (`INSERT OR IGNORE`), so the same event
//! arriving again by another path (the API, a direct write, the spool) is stored once and has
//! its effects once.

use std::path::Path;

use ccm_schema::types::short_id;
use ccm_schema::{
    Agent, DecisionKind, FailureClass, Severity, Task, TaskEvent, TaskState, Timestamp,
};
use serde::{Deserialize, Serialize};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use super::agents::AGENT_COLUMNS;
use super::records::DECISION_COLUMNS;
use super::tasks::{apply_in_tx, ask_decision, load_task, raise_alert};
use super::{Result, RetryPolicy, Store};
use crate::hooks::event::{HookEvent, Kind};

/// How an event reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `POST /api/hooks` (an `http` hook, or `ccm hook` through the daemon).
    Api,
    /// `ccm hook` writing SQLite itself while the daemon is down.
    Direct,
    /// A spool file `ccm hook` left while the database was busy.
    Spool,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Direct => "direct",
            Via::Spool => "spool",
        }
    }
}

/// Who sent the event, as the hook's environment says (`CCM_AGENT_ID`, `CCM_TASK_ID`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Origin {
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
}

/// How an event arrived: its idempotency key, its sender, the path and the time.
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub key: &'a str,
    pub origin: &'a Origin,
    pub via: Via,
    pub received_at: Timestamp,
}

/// One event received through the API, for a group commit.
#[derive(Debug, Clone)]
pub struct HookJob {
    pub event: HookEvent,
    pub key: String,
    pub origin: Origin,
    pub received_at: Timestamp,
    /// Record a permission prompt as a pending decision (see [`Store::ingest_hook`]).
    pub ask_human: bool,
}

impl HookJob {
    pub fn receipt(&self) -> Receipt<'_> {
        Receipt {
            key: &self.key,
            origin: &self.origin,
            via: Via::Api,
            received_at: self.received_at,
        }
    }
}

/// The stored event and what it belongs to.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// Already stored under this key: nothing was done again.
    pub duplicate: bool,
    pub agent: Option<Agent>,
    pub task: Option<Task>,
}

/// A stored hook event, as the timeline shows it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredHookEvent {
    pub id: i64,
    pub at: Timestamp,
    pub system: String,
    pub agent_id: Option<String>,
    pub task_id: Option<String>,
    pub session_id: Option<String>,
    pub event: String,
    pub kind: String,
    pub tool: Option<String>,
    pub via: String,
    pub problem: Option<String>,
    pub payload: String,
}

/// A task's ownership of a file.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct Claim {
    pub repo: String,
    pub path: String,
    pub task_id: String,
    pub title: String,
    pub state: TaskState,
    pub claimed_at: Timestamp,
}

/// A write refused because someone else owns the file.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct ChangeRequest {
    pub id: String,
    pub repo: String,
    pub path: String,
    pub owner: String,
    pub requester_task: String,
    pub tool: Option<String>,
    pub created_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub resolution: Option<String>,
}

/// Who owns a file a task wants to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nobody else: the write may go ahead (the file is now claimed by the task).
    Free,
    /// Another active task, or a pre-assigned owner; the reason names it.
    Taken { reason: String },
}

const ACTOR: &str = "hook";

impl Store {
    /// Stores one hook event and applies its effects, unless its key was stored before.
    /// `ask_human` records a permission prompt as a pending decision (false when an approval
    /// rule already asks).
    pub async fn ingest_hook(
        &self,
        event: &HookEvent,
        receipt: &Receipt<'_>,
        policy: RetryPolicy,
        ask_human: bool,
    ) -> Result<Ingested> {
        let mut tx = self.write().await?;
        let ingested = ingest_in_tx(&mut tx, event, receipt, policy, ask_human).await?;
        tx.commit().await?;
        Ok(ingested)
    }

    /// Stores many hook events in one transaction (group commit: one fsync for all of them).
    /// All or nothing: on an error the caller may retry the events one by one.
    pub async fn ingest_hooks(
        &self,
        batch: &[HookJob],
        policy: RetryPolicy,
    ) -> Result<Vec<Ingested>> {
        let mut tx = self.write().await?;
        let mut done = Vec::with_capacity(batch.len());
        for job in batch {
            done.push(
                ingest_in_tx(&mut tx, &job.event, &job.receipt(), policy, job.ask_human).await?,
            );
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Whether `task` may write `path` (relative to the repository `repo`); claims it when
    /// free. `preassigned` is the owner a glob of the project's config gives the path, if any.
    /// A refusal records a change request.
    pub async fn claim(
        &self,
        task: &Task,
        repo: &str,
        path: &str,
        preassigned: Option<&str>,
        tool: Option<&str>,
    ) -> Result<Ownership> {
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let owner: Option<(String, String)> = sqlx::query_as(
            r#"
            SELECT c.task_id, t.title FROM file_claims c JOIN tasks t ON t.id = c.task_id
            WHERE c.repo = ? AND c.path = ? AND t.state NOT IN ('complete', 'failed', 'cancelled')
            "#,
        )
        .bind(repo)
        .bind(path)
        .fetch_optional(&mut *tx)
        .await?;
        let refusal = match (owner, preassigned) {
            (Some((owner, title)), _) if owner != task.id.to_string() => {
                Some((owner.clone(), format!("{path} is owned by task {} ({title}); a change request was recorded", &owner[..8])))
            }
            (None, Some(assigned)) => Some((
                assigned.to_string(),
                format!("{path} is pre-assigned to `{assigned}` in .ccm/config.yaml; a change request was recorded"),
            )),
            _ => None,
        };
        let ownership = match refusal {
            Some((owner, reason)) => {
                sqlx::query(
                    r#"
                    INSERT INTO change_requests (id, repo, path, owner, requester_task, tool, created_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    "#,
                )
                .bind(Uuid::new_v4().hyphenated())
                .bind(repo)
                .bind(path)
                .bind(&owner)
                .bind(task.id.hyphenated())
                .bind(tool)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ownership::Taken { reason }
            }
            None => {
                sqlx::query(
                    r#"
                    INSERT INTO file_claims (repo, path, task_id, claimed_at) VALUES (?, ?, ?, ?)
                    ON CONFLICT (repo, path) DO UPDATE SET task_id = excluded.task_id, claimed_at = excluded.claimed_at
                    WHERE task_id <> excluded.task_id
                    "#,
                )
                .bind(repo)
                .bind(path)
                .bind(task.id.hyphenated())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Ownership::Free
            }
        };
        tx.commit().await?;
        Ok(ownership)
    }

    /// Asks the operator to allow or deny a tool call: a pending decision and an alert.
    pub async fn ask_approval(&self, task: Uuid, question: &str) -> Result<ccm_schema::Decision> {
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let decision =
            ask_decision(&mut tx, task, DecisionKind::ApproveTool, question, now).await?;
        raise_alert(&mut tx, Some(task), Severity::Warning, "approval_needed", question, None, now)
            .await?;
        tx.commit().await?;
        Ok(decision)
    }

    /// One decision by id.
    pub async fn decision(&self, id: Uuid) -> Result<ccm_schema::Decision> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {DECISION_COLUMNS}
            FROM decisions WHERE id = ?
            "#
        ))
        .bind(id.hyphenated())
        .fetch_one(&self.readers)
        .await?)
    }

    /// Claims of active tasks.
    pub async fn claims(&self) -> Result<Vec<Claim>> {
        Ok(sqlx::query_as(
            r#"
            SELECT c.repo, c.path, c.task_id, t.title, t.state, c.claimed_at
            FROM file_claims c JOIN tasks t ON t.id = c.task_id
            ORDER BY c.repo, c.path
            "#,
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// Change requests, open ones first, newest first.
    pub async fn change_requests(&self) -> Result<Vec<ChangeRequest>> {
        Ok(sqlx::query_as(
            r#"
            SELECT id, repo, path, owner, requester_task, tool, created_at, resolved_at, resolution
            FROM change_requests ORDER BY resolved_at IS NOT NULL, created_at DESC
            "#,
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// The hook events of a task, oldest first.
    pub async fn task_hook_events(&self, task: &str) -> Result<Vec<StoredHookEvent>> {
        let id = self.task(task).await?.task.id;
        Ok(sqlx::query_as(
            r#"
            SELECT id, at, system, agent_id, task_id, session_id, event, kind, tool, via, problem, payload
            FROM hook_events WHERE task_id = ? ORDER BY id
            "#,
        )
        .bind(id.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }
}

/// Stores one event and applies its effects inside `tx`.
async fn ingest_in_tx(
    tx: &mut Transaction<'static, Sqlite>,
    event: &HookEvent,
    receipt: &Receipt<'_>,
    policy: RetryPolicy,
    ask_human: bool,
) -> Result<Ingested> {
    let Receipt { key, origin, via, received_at } = *receipt;
    let agent = attach(tx, event, origin).await?;
    let task_id = match (&agent, origin.task_id.as_deref().and_then(|t| Uuid::parse_str(t).ok())) {
        (Some(agent), _) => Some(agent.task_id),
        (None, Some(task)) => task_exists(tx, task).await?.then_some(task),
        (None, None) => None,
    };
    let inserted = sqlx::query(
        r#"
        INSERT OR IGNORE INTO hook_events
            (key, at, system, agent_id, task_id, session_id, event, kind, tool, cwd, via, problem, payload)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        "#,
    )
    .bind(key)
    .bind(received_at)
    .bind(event.system.to_string())
    .bind(agent.as_ref().map(|a| a.id.hyphenated().to_string()))
    .bind(task_id.map(|t| t.hyphenated().to_string()))
    .bind(&event.session_id)
    .bind(&event.name)
    .bind(event.kind.as_str())
    .bind(&event.tool)
    .bind(&event.cwd)
    .bind(via.as_str())
    .bind(&event.problem)
    .bind(&event.raw)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Ingested { duplicate: true, agent, task: None });
    }
    if let Some(agent) = &agent {
        effects_on_agent(tx, agent, event, received_at).await?;
    }
    let task = match task_id {
        Some(task) => Some(effects_on_task(tx, task, event, received_at, policy, ask_human).await?),
        None => None,
    };
    Ok(Ingested { duplicate: false, agent, task })
}

/// The agent the event belongs to: by the hook's environment, else by session id, else by the
/// working directory of a live agent.
async fn attach(
    tx: &mut Transaction<'static, Sqlite>,
    event: &HookEvent,
    origin: &Origin,
) -> Result<Option<Agent>> {
    if let Some(id) = origin.agent_id.as_deref().and_then(|a| Uuid::parse_str(a).ok()) {
        let agent: Option<Agent> =
            sqlx::query_as(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ?"))
                .bind(id.hyphenated())
                .fetch_optional(&mut **tx)
                .await?;
        if agent.is_some() {
            return Ok(agent);
        }
    }
    if let Some(session) = &event.session_id {
        let agent: Option<Agent> = sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE session_id = ? ORDER BY started_at DESC LIMIT 1"
        ))
        .bind(session)
        .fetch_optional(&mut **tx)
        .await?;
        if agent.is_some() {
            return Ok(agent);
        }
    }
    if let Some(cwd) = &event.cwd {
        let live: Vec<Agent> = sqlx::query_as(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE status IN ('starting', 'running') ORDER BY length(cwd) DESC"
        ))
        .fetch_all(&mut **tx)
        .await?;
        return Ok(live.into_iter().find(|a| Path::new(cwd).starts_with(&a.cwd)));
    }
    Ok(None)
}

async fn task_exists(tx: &mut Transaction<'static, Sqlite>, task: Uuid) -> Result<bool> {
    let found: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM tasks WHERE id = ?")
        .bind(task.hyphenated())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(found.is_some())
}

/// Heartbeat, counters, session id and turn state of the agent.
async fn effects_on_agent(
    tx: &mut Transaction<'static, Sqlite>,
    agent: &Agent,
    event: &HookEvent,
    now: Timestamp,
) -> Result<()> {
    let tool_call = matches!(event.kind, Kind::PostTool | Kind::PostToolFailure);
    sqlx::query(
        r#"
        UPDATE agents SET
            last_heartbeat = max(last_heartbeat, ?1), stall_alerted = 0, hook_events = hook_events + 1,
            hook_tool_calls = hook_tool_calls + ?2,
            session_id = CASE WHEN ?3 THEN coalesce(?4, session_id) ELSE coalesce(session_id, ?4) END,
            status = CASE WHEN ?3 AND status = 'starting' THEN 'running' ELSE status END,
            turn_done_at = CASE WHEN ?5 THEN ?1 WHEN ?6 THEN NULL ELSE turn_done_at END
        WHERE id = ?7
        "#,
    )
    .bind(now)
    .bind(i64::from(tool_call))
    .bind(event.kind == Kind::SessionStart)
    .bind(&event.session_id)
    .bind(event.kind == Kind::Stop)
    .bind(event.kind == Kind::PromptSubmit)
    .bind(agent.id.hyphenated())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Files touched, permission prompts (decision and alert), usage limits and API failures.
async fn effects_on_task(
    tx: &mut Transaction<'static, Sqlite>,
    task: Uuid,
    event: &HookEvent,
    now: Timestamp,
    policy: RetryPolicy,
    ask_human: bool,
) -> Result<Task> {
    if event.writes && matches!(event.kind, Kind::PostTool) {
        for path in &event.paths {
            sqlx::query(
                r#"
                INSERT INTO task_files (task_id, path, first_at, last_at) VALUES (?1, ?2, ?3, ?3)
                ON CONFLICT (task_id, path) DO UPDATE SET last_at = excluded.last_at, writes = writes + 1
                "#,
            )
            .bind(task.hyphenated())
            .bind(path)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
    }
    let current = load_task(tx, task).await?;
    if ask_human && (event.permission_prompt || event.kind == Kind::PermissionRequest) {
        let what = event.tool.as_deref().or(event.notification_type.as_deref()).unwrap_or("a tool");
        let question = format!(
            "task {} ({}) waits for permission to use {what}",
            current.short_id(),
            current.title
        );
        ask_decision(tx, task, DecisionKind::ApproveTool, &question, now).await?;
        raise_alert(tx, Some(task), Severity::Warning, "permission_needed", &question, None, now)
            .await?;
    }
    if event.kind == Kind::StopFailure && current.state == TaskState::Executing {
        let error = event.error.as_deref().unwrap_or("unknown");
        let reason = format!("the agent's turn failed: {error}");
        let step = if error == "rate_limit" {
            TaskEvent::QuotaExhausted { until: None }
        } else {
            TaskEvent::Failed { class: FailureClass::Transient }
        };
        apply_in_tx(tx, task, step, &reason, ACTOR, policy).await?;
    }
    load_task(tx, task).await
}

/// Releases a finished task's claims and resolves the change requests that waited for it.
pub(super) async fn release_claims(
    tx: &mut Transaction<'static, Sqlite>,
    task: Uuid,
    state: TaskState,
    now: Timestamp,
) -> Result<()> {
    sqlx::query("DELETE FROM file_claims WHERE task_id = ?")
        .bind(task.hyphenated())
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE change_requests SET resolved_at = ?, resolution = ? WHERE owner = ? AND resolved_at IS NULL")
        .bind(now)
        .bind(format!("owner {} is {state}; the file is free", short_id(&task)))
        .bind(task.hyphenated().to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
