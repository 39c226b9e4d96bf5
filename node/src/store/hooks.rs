//! Hook events and what they feed: heartbeats, counters, files touched, session ids, decisions
//! and alerts for permission prompts, usage limits from `StopFailure`. File ownership is in
//! `claims.rs`.
//!
//! An event is stored with the sender's idempotency key (`INSERT OR IGNORE`), so the same event
//! arriving again by another path (the API, a direct write, the spool) is stored once and has
//! its effects once.

use std::collections::HashSet;
use std::path::Path;

use ccm_schema::{
    Agent, AgentStatus, DecisionKind, FailureClass, Severity, Task, TaskEvent, TaskState, Timestamp,
};
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::agents::AGENT_COLUMNS;
use super::records::DECISION_COLUMNS;
use super::tasks::{apply_in_tx, ask_decision, load_task, raise_alert};
use super::{Result, RetryPolicy, Store, Writing};
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

/// Who sent the event: the credential the runtime gave the agent (`CCM_AGENT_TOKEN` in its
/// environment, `X-Ccm-Agent-Token` over HTTP). Only a live agent's credential lets an event
/// act on the agent and its task; ids a sender names are not trusted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Origin {
    pub agent_token: Option<String>,
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
    pub event: std::sync::Arc<HookEvent>,
    pub key: String,
    pub origin: Origin,
    pub received_at: Timestamp,
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

const ACTOR: &str = "hook";

impl Store {
    /// Stores one hook event and applies its effects, unless its key was stored before.
    pub async fn ingest_hook(
        &self,
        event: &HookEvent,
        receipt: &Receipt<'_>,
        policy: RetryPolicy,
    ) -> Result<Ingested> {
        let incoming = [Incoming { event, receipt: *receipt }];
        Ok(self.ingest(&incoming, policy).await?.remove(0))
    }

    /// Stores many hook events in one transaction (group commit: one fsync for all of them).
    /// All or nothing: on an error the caller may retry the events one by one.
    pub async fn ingest_hooks<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a HookJob>,
        policy: RetryPolicy,
    ) -> Result<Vec<Ingested>> {
        let incoming: Vec<Incoming> = batch
            .into_iter()
            .map(|job| Incoming { event: &job.event, receipt: job.receipt() })
            .collect();
        let ingested = self.ingest(&incoming, policy).await?;
        self.signals.hook_events(ingested.len() as u64);
        Ok(ingested)
    }

    /// Stores events in order, in one transaction, and applies the effects of those not stored
    /// before.
    ///
    /// A group that fits one `INSERT` and names no task is first offered to
    /// [`insert_unattached`]: one statement, its own transaction and one round trip to the
    /// writer, which stores the events unless an agent may claim one of them. Otherwise the
    /// agents the events belong to are looked up with one query on a reader (an agent's row
    /// exists before its process starts, so before any of its events), and the events and
    /// their effects are written in one transaction.
    async fn ingest(
        &self,
        incoming: &[Incoming<'_>],
        policy: RetryPolicy,
    ) -> Result<Vec<Ingested>> {
        if INSERT_ROWS.contains(&incoming.len())
            && incoming.iter().all(|i| i.receipt.origin.agent_token.is_none())
        {
            let mut writer = self.writer().await?;
            if let Some(mut stored) = insert_unattached(&mut writer.conn, incoming).await? {
                return Ok(incoming
                    .iter()
                    .map(|item| Ingested {
                        duplicate: !stored.remove(item.receipt.key),
                        agent: None,
                        task: None,
                    })
                    .collect());
            }
        }
        let mut agents = Attachments::load(&self.readers, incoming).await?;
        let attached: Vec<Option<Attached>> =
            incoming.iter().map(|i| agents.attach(i.event, i.receipt.origin)).collect();
        let mut tx = self.write().await?;
        let done = ingest_in_tx(&mut tx, incoming, &agents, &attached, policy).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Asks the operator to allow or deny a tool call: a pending decision and an alert.
    pub async fn ask_approval(&self, task: Uuid, question: &str) -> Result<ccm_schema::Decision> {
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let decision =
            ask_decision(&mut tx, task, DecisionKind::ApproveTool, question, now).await?;
        // The alert names its decision, so answering the decision resolves it.
        let details = serde_json::json!({ "decision": decision.id });
        raise_alert(
            &mut tx,
            Some(task),
            Severity::Warning,
            "approval_needed",
            question,
            Some(details),
            now,
        )
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

/// One event to store, with how it arrived.
struct Incoming<'a> {
    event: &'a HookEvent,
    receipt: Receipt<'a>,
}

/// The most rows one `INSERT` writes, and the smaller sizes a group's rest is cut into: a few
/// fixed statement shapes, so the prepared statements are reused.
const INSERT_ROWS: [usize; 4] = [64, 16, 4, 1];

/// Stores events in order and applies the effects of those not stored before, inside `tx`;
/// `attached[i]` says which agent of `agents` event `i` belongs to, and whether by its
/// credential. Only an event sent with its live agent's credential has effects (and is
/// answered for the agent's task); one attached otherwise is only recorded as the agent's.
async fn ingest_in_tx(
    tx: &mut Writing,
    incoming: &[Incoming<'_>],
    agents: &Attachments,
    attached: &[Option<Attached>],
    policy: RetryPolicy,
) -> Result<Vec<Ingested>> {
    let rows: Vec<Row> = incoming
        .iter()
        .zip(attached)
        .map(|(item, attached)| {
            let agent = attached.map(|a| &agents.0[a.index].agent);
            let credentialed = attached.is_some_and(|a| a.by_credential);
            Row { item, agent, task_id: agent.map(|a| a.task_id), credentialed }
        })
        .collect();
    let mut stored = insert_events(tx, &rows).await?;
    let mut done = Vec::with_capacity(rows.len());
    for Row { item, agent, credentialed, .. } in rows {
        let agent = agent.filter(|_| credentialed).cloned();
        // A key repeated within the group is stored by its first event only.
        if !stored.remove(item.receipt.key) {
            done.push(Ingested { duplicate: true, agent, task: None });
            continue;
        }
        let at = item.receipt.received_at;
        let task = match &agent {
            Some(agent) => {
                effects_on_agent(tx, agent, item.event, at).await?;
                let task = agent.task_id;
                Some(effects_on_task(tx, task, item.event, at, policy).await?)
            }
            None => None,
        };
        done.push(Ingested { duplicate: false, agent, task });
    }
    Ok(done)
}

/// An event on its way into `hook_events`, with the agent and task it belongs to.
struct Row<'a, 'b> {
    item: &'a Incoming<'b>,
    agent: Option<&'a Agent>,
    task_id: Option<Uuid>,
    /// Sent with the agent's credential.
    credentialed: bool,
}

/// The columns of `hook_events` that [`push_rows`] fills, in its order.
const INSERT_EVENTS: &str = "INSERT OR IGNORE INTO hook_events \
    (key, at, system, agent_id, task_id, session_id, event, kind, tool, cwd, via, problem, payload) ";

/// Inserts the rows (`INSERT OR IGNORE`) and returns the keys that were new.
async fn insert_events(db: &mut SqliteConnection, rows: &[Row<'_, '_>]) -> Result<HashSet<String>> {
    let mut stored = HashSet::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let size = INSERT_ROWS.into_iter().find(|&n| n <= rest.len()).unwrap_or(1);
        let (chunk, after) = rest.split_at(size);
        rest = after;
        let mut insert = QueryBuilder::<Sqlite>::new(INSERT_EVENTS);
        push_rows(&mut insert, chunk.iter().map(|row| (row.item, row.agent, row.task_id)));
        let done = insert.build().execute(&mut *db).await?;
        let keys = chunk.iter().map(|row| row.item.receipt.key);
        stored.extend(new_keys(db, keys, done).await?);
    }
    Ok(stored)
}

/// Inserts events sent without an agent's credential that belong to no agent in one statement
/// (`INSERT OR IGNORE`), which stores nothing when an agent may claim one of them: one with an
/// event's session id, or a live one whose working directory is a prefix of an event's `cwd`
/// (a superset of what [`Attachments::attach`] matches). Returns the keys that were new,
/// or `None` when nothing was stored: every key was stored before, or an agent may claim an
/// event, and the caller takes the path that finds out which.
async fn insert_unattached(
    db: &mut SqliteConnection,
    incoming: &[Incoming<'_>],
) -> Result<Option<HashSet<String>>> {
    let mut insert = QueryBuilder::<Sqlite>::new(INSERT_EVENTS);
    insert.push("SELECT * FROM (");
    push_rows(&mut insert, incoming.iter().map(|item| (item, None, None)));
    let sessions = named_sessions(incoming);
    // Clean paths (no `.`, doubled or trailing separators), so a prefix of the string is a
    // prefix of the path.
    let cwds: Vec<String> = incoming
        .iter()
        .filter_map(|i| i.event.cwd.as_deref())
        .map(|cwd| Path::new(cwd).components().collect::<std::path::PathBuf>())
        .map(|cwd| cwd.to_string_lossy().into_owned())
        .collect();
    insert
        .push(") WHERE NOT EXISTS (SELECT 1 FROM agents WHERE session_id IN (SELECT value FROM json_each(")
        .push_bind(sessions)
        .push(")) OR (status IN ('starting', 'running') AND EXISTS (SELECT 1 FROM json_each(")
        .push_bind(serde_json::to_string(&cwds).unwrap_or_default())
        .push(") c WHERE substr(c.value, 1, length(rtrim(cwd, '/'))) = rtrim(cwd, '/'))))");
    let done = insert.build().execute(&mut *db).await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let keys = incoming.iter().map(|item| item.receipt.key);
    Ok(Some(new_keys(db, keys, done).await?.into_iter().collect()))
}

/// The session ids the events carry, as a JSON array (for `json_each`).
fn named_sessions(incoming: &[Incoming<'_>]) -> String {
    let sessions: Vec<&str> =
        incoming.iter().filter_map(|i| i.event.session_id.as_deref()).collect();
    serde_json::to_string(&sessions).unwrap_or_default()
}

/// Binds the rows of a multi-row `INSERT` into `hook_events` (see [`INSERT_EVENTS`]): each
/// event with its agent and task.
fn push_rows<'q, 'a: 'q, 'b: 'a>(
    insert: &mut QueryBuilder<'q, Sqlite>,
    rows: impl IntoIterator<Item = (&'a Incoming<'b>, Option<&'a Agent>, Option<Uuid>)>,
) {
    insert.push_values(rows, |mut values, (item, agent, task_id)| {
        let Incoming { event, receipt, .. } = item;
        values
            .push_bind(receipt.key)
            .push_bind(receipt.received_at)
            .push_bind(event.system.as_str())
            .push_bind(agent.map(|a| a.id.hyphenated().to_string()))
            .push_bind(task_id.map(|t| t.hyphenated().to_string()))
            .push_bind(event.session_id.as_deref())
            .push_bind(event.name.as_str())
            .push_bind(event.kind.as_str())
            .push_bind(event.tool.as_deref())
            .push_bind(event.cwd.as_deref())
            .push_bind(receipt.via.as_str())
            .push_bind(event.problem.as_deref())
            .push_bind(event.raw.as_str());
    });
}

/// The keys an `INSERT OR IGNORE` of `keys` (in order) stored: all of them when it affected as
/// many rows; else the new rows took the highest row ids, and are read back.
async fn new_keys(
    db: &mut SqliteConnection,
    keys: impl ExactSizeIterator<Item = &str>,
    done: sqlx::sqlite::SqliteQueryResult,
) -> Result<Vec<String>> {
    let new = done.rows_affected() as usize;
    if new == keys.len() {
        return Ok(keys.map(str::to_string).collect());
    }
    if new == 0 {
        return Ok(Vec::new());
    }
    let last = done.last_insert_rowid();
    let keys: Vec<(String,)> =
        sqlx::query_as("SELECT key FROM hook_events WHERE id > ? AND id <= ?")
            .bind(last - new as i64)
            .bind(last)
            .fetch_all(&mut *db)
            .await?;
    Ok(keys.into_iter().map(|(key,)| key).collect())
}

/// The agents a group of events may belong to, loaded with one query per group and kept
/// in step with the changes the group's own events make (a `SessionStart` sets the session id
/// that later events are matched by).
struct Attachments(Vec<Candidate>);

/// An agent with the hash of its credential (`NULL` once revoked).
#[derive(sqlx::FromRow)]
struct Candidate {
    #[sqlx(flatten)]
    agent: Agent,
    token_hash: Option<String>,
}

/// The agent an event belongs to (an index into [`Attachments`]), and whether the event
/// proved it with the agent's credential.
#[derive(Debug, Clone, Copy)]
struct Attached {
    index: usize,
    by_credential: bool,
}

impl Attachments {
    /// The live agents, and any other agent with a session id an event carries; the longest
    /// working directory first, so that the deepest one matches a `cwd`.
    async fn load(readers: &SqlitePool, incoming: &[Incoming<'_>]) -> Result<Self> {
        let agents = sqlx::query_as(&format!(
            r#"
            SELECT {AGENT_COLUMNS}, token_hash FROM agents
            WHERE status IN ('starting', 'running')
               OR session_id IN (SELECT value FROM json_each(?1))
            ORDER BY length(cwd) DESC, started_at DESC
            "#
        ))
        .bind(named_sessions(incoming))
        .fetch_all(readers)
        .await?;
        Ok(Attachments(agents))
    }

    /// The agent the event belongs to: the live agent whose credential it carries; else, for
    /// the record only, the latest agent of its session id, else the live agent whose working
    /// directory holds its `cwd`.
    fn attach(&mut self, event: &HookEvent, origin: &Origin) -> Option<Attached> {
        let by_credential = origin.agent_token.as_deref().and_then(|token| {
            let hash = super::agents::agent_token_hash(token);
            self.0.iter().position(|c| {
                c.agent.status.is_live()
                    && c.token_hash.as_deref().is_some_and(|h| constant_time_eq(h, &hash))
            })
        });
        if let Some(index) = by_credential {
            // What `effects_on_agent` does to the row, for the events after this one.
            let agent = &mut self.0[index].agent;
            if event.kind == Kind::SessionStart {
                if event.session_id.is_some() {
                    agent.session_id.clone_from(&event.session_id);
                }
                if agent.status == AgentStatus::Starting {
                    agent.status = AgentStatus::Running;
                }
            } else if agent.session_id.is_none() {
                agent.session_id.clone_from(&event.session_id);
            }
            return Some(Attached { index, by_credential: true });
        }
        let by_session = || {
            let session = event.session_id.as_deref()?;
            (0..self.0.len())
                .filter(|&i| self.0[i].agent.session_id.as_deref() == Some(session))
                .max_by_key(|&i| self.0[i].agent.started_at)
        };
        let by_cwd = || {
            let cwd = Path::new(event.cwd.as_deref()?);
            self.0.iter().position(|c| c.agent.status.is_live() && cwd.starts_with(&c.agent.cwd))
        };
        let index = by_session().or_else(by_cwd)?;
        Some(Attached { index, by_credential: false })
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Heartbeat, counters, session id and turn state of the agent.
async fn effects_on_agent(
    tx: &mut Writing,
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
    if event.kind == Kind::PreCompact {
        // `trigger` (`auto`, `manual`) is not among the fields the parser keeps.
        let payload: Option<serde_json::Value> = serde_json::from_str(&event.raw).ok();
        let trigger = payload.as_ref().and_then(|p| p.get("trigger")?.as_str());
        super::context::compacted(tx, agent, trigger, now).await?;
    }
    Ok(())
}

/// Files touched, permission prompts (decision and alert), usage limits and API failures.
async fn effects_on_task(
    tx: &mut Writing,
    task: Uuid,
    event: &HookEvent,
    now: Timestamp,
    policy: RetryPolicy,
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
    // Only a notification that the agent waits for a human is asked about here. Tool calls
    // (`PreToolUse`, `PermissionRequest`) wait only when an approval rule holds them, and the
    // daemon asks about those itself (`hooks::gate`); a `PermissionRequest` no rule holds is
    // only recorded (the CLI denies the call at once, and the denial shows in the report).
    if event.permission_prompt && event.kind == Kind::Notification {
        let what = event.tool.as_deref().or(event.notification_type.as_deref()).unwrap_or("a tool");
        let question = format!(
            "task {} ({}) waits for permission to use {what}",
            current.short_id(),
            current.title
        );
        let decision = ask_decision(tx, task, DecisionKind::ApproveTool, &question, now).await?;
        let details = serde_json::json!({ "decision": decision.id });
        raise_alert(
            tx,
            Some(task),
            Severity::Warning,
            "permission_needed",
            &question,
            Some(details),
            now,
        )
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
