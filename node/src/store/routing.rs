//! Routing across systems (migration `20261130000600_routing.sql`): tasks this system sent to
//! the fleet, leases on tasks it claimed from the fleet, and the calls to the central that wait
//! to be made.
//!
//! Every change that must reach the central (a submission, a claimed task's start and its end,
//! the origin's cancel, retry or new pin: `..._route_control.sql`) queues a `route_calls` row
//! in the transaction of the change, so a crash never loses one and a retry sends the same
//! idempotency key or fencing token again. A row holds a typed call of the sync crate
//! ([`CallV1`]: its function and its parameters as JSON), converted by hand from the node's
//! types; the sync driver's calls lane sends it ([`ccm_sync::Outbox::next_call`]).

use ccm_schema::{Task, TaskEvent, TaskState, Timestamp};
use ccm_sync::wire::{
    CallV1, CompleteV1, HeartbeatAnswerV1, LeaseV1, PinRoutedV1, ProgressV1, ReportProgressV1,
    ResultV1, RoutedControlV1, RoutedTaskV1, SubmitTaskV1, SubmittedTaskV1,
};
use ccm_sync::{CallOutcome, QueuedCall};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::tasks::{apply_in_tx, create_in_tx, load_task, task_cost, Tokens};
use super::{Result, Store, StoreError, Writing};
use crate::config::Config;
use crate::store::{NewTask, RetryPolicy};

/// The actor of the changes routing makes to local tasks.
pub const ACTOR: &str = "routing";

/// A task this system routed to the fleet, with what the central last said of it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct RoutedTask {
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub title: String,
    pub prompt: String,
    pub repo: Option<String>,
    pub pin: Option<String>,
    pub profile: Option<String>,
    pub verify: Option<String>,
    pub priority: i64,
    pub max_attempts: i64,
    pub created_at: Timestamp,
    /// When the central took it; `None` while it waits here (sync down or not enrolled).
    pub submitted_at: Option<Timestamp>,
    /// The central's latest view: state, executing system, attempts, result.
    #[sqlx(json(nullable))]
    pub central: Option<RoutedTaskV1>,
    /// A cancel, retry or new pin sent from here that the central has not answered yet.
    #[sqlx(default)]
    #[serde(default)]
    pub requested: Option<RoutedControl>,
    /// Each change of its state, system or waiting reason this system observed, oldest first
    /// (`routed_log`).
    #[sqlx(skip)]
    #[serde(default)]
    pub log: Vec<RoutedLogEntry>,
}

/// One change of a routed task as its origin observed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct RoutedLogEntry {
    /// When this system saw the change (not when it happened centrally).
    pub at: Timestamp,
    /// The state before (`None` for the first entry), as [`RoutedTask::state`] names it.
    pub from: Option<String>,
    pub to: String,
    /// Where it runs or ran, per the central.
    pub system: Option<String>,
    /// The central's waiting reason (`no_context`, ...) or its last error.
    pub reason: Option<String>,
}

/// A task run here for the fleet whose lease was lost: what it shows here is not the task's
/// outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleTask {
    pub id: Uuid,
    /// Why (`result discarded: lease lost to beta`, `self-fenced: ...`).
    pub reason: String,
}

/// What the origin asks the central to do with one of its routed tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum RoutedControl {
    /// `api.cancel_routed`: stop it wherever it runs.
    Cancel,
    /// `api.retry_routed`: queue a failed, blocked, flagged or cancelled task again.
    Retry,
    /// `api.pin_routed`: run it on another system (or on any).
    Pin,
}

impl RoutedControl {
    /// The central function.
    pub fn function(self) -> &'static str {
        match self {
            RoutedControl::Cancel => "cancel_routed",
            RoutedControl::Retry => "retry_routed",
            RoutedControl::Pin => "pin_routed",
        }
    }
}

impl std::fmt::Display for RoutedControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoutedControl::Cancel => "cancel",
            RoutedControl::Retry => "retry",
            RoutedControl::Pin => "pin",
        })
    }
}

impl RoutedTask {
    /// The state to show: the central's, in the local vocabulary where one exists.
    pub fn state(&self) -> String {
        let Some(central) = &self.central else {
            return if self.submitted_at.is_some() { "queued" } else { "waiting_sync" }.into();
        };
        match central.state.as_str() {
            "done" => {
                let verdict = central.result.as_ref().and_then(|r| r["verdict"].as_str());
                if verdict == Some("issue") { "alert" } else { "complete" }.into()
            }
            "running" => "executing".into(),
            other => other.into(),
        }
    }

    /// Whether the central's last word is final: done, failed, blocked, cancelled (or
    /// refused).
    pub fn ended(&self) -> bool {
        self.central.as_ref().is_some_and(|c| {
            ["done", "failed", "blocked", "cancelled", "refused"].contains(&c.state.as_str())
        })
    }

    /// Where it runs or ran.
    pub fn system(&self) -> Option<&str> {
        self.central.as_ref().and_then(|c| c.executing_name.as_deref())
    }

    /// Why it waits (the central's reason), else why it was last queued again, failed,
    /// cancelled or moved.
    pub fn reason(&self) -> Option<&str> {
        let central = self.central.as_ref()?;
        central.reason.as_deref().or(central.last_error.as_deref())
    }

    /// The text of the origin's `unroutable` alert while no system has its repository.
    fn unroutable_message(&self) -> String {
        format!(
            "routed task {} ({}) cannot be placed: no system of the fleet has a checkout of {}",
            ccm_schema::types::short_id(&self.id),
            self.title,
            self.repo.as_deref().unwrap_or("its repository")
        )
    }
}

/// The central reason of a task no system has the repository of.
const NO_CONTEXT: &str = "no_context";

const ROUTED_COLUMNS: &str = "id, title, prompt, repo, pin, profile, verify, priority, \
     max_attempts, created_at, submitted_at, central, \
     (SELECT CASE c.function WHEN 'cancel_routed' THEN 'cancel' WHEN 'retry_routed' THEN 'retry' \
             ELSE 'pin' END \
        FROM route_calls c WHERE c.task_id = routed_tasks.id \
         AND c.function IN ('cancel_routed', 'retry_routed', 'pin_routed') \
       ORDER BY c.seq DESC LIMIT 1) AS requested";

const LOG_COLUMNS: &str = "at, from_state AS \"from\", to_state AS \"to\", system, reason";

impl Store {
    /// Sends a task to the fleet: a routed task and its submission, in one transaction. It is
    /// checked like a local task first (title, profile, priority, attempts), so a bad one is
    /// refused here, not by the central later.
    pub async fn route_task(
        &self,
        new: NewTask,
        pin: Option<&str>,
        config: &Config,
    ) -> Result<RoutedTask> {
        if new.stack {
            return Err(StoreError::Invalid {
                field: "stack",
                message:
                    "a stacked task runs on the system of its base's branch; it cannot be routed"
                        .into(),
            });
        }
        let mut tx = self.write().await?;
        // Validate through the local path, then take the row back out: one set of rules.
        let id = Uuid::new_v4();
        sqlx::query("SAVEPOINT check_task").execute(&mut *tx).await?;
        let checked = create_in_tx(&mut tx, id, new, config, ACTOR).await;
        sqlx::query("ROLLBACK TO check_task").execute(&mut *tx).await?;
        sqlx::query("RELEASE check_task").execute(&mut *tx).await?;
        let task = checked?;
        let now = Timestamp::now();
        sqlx::query(
            r#"
            INSERT INTO routed_tasks (id, title, prompt, repo, pin, profile, verify, priority,
                                      max_attempts, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            "#,
        )
        .bind(id.hyphenated())
        .bind(&task.title)
        .bind(&task.prompt)
        .bind(&task.repo)
        .bind(pin)
        .bind(&task.profile)
        .bind(&task.verify)
        .bind(task.priority)
        .bind(task.max_attempts)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let call = CallV1::SubmitTask(SubmitTaskV1 {
            p_task: SubmittedTaskV1 {
                idempotency_key: id.hyphenated().to_string(),
                task_id: id,
                title: task.title,
                prompt: task.prompt,
                repo_url: task.repo.filter(|r| r.contains("://")),
                pin: pin.map(str::to_string),
                profile: Some(task.profile),
                verify: task.verify,
                priority: task.priority,
                max_attempts: i64::from(task.max_attempts),
            },
        });
        // The central knows no dependencies: a task that waits for tasks of this system is
        // sent once they are complete.
        hold_or_queue(&mut tx, id, &task.depends_on, &call).await?;
        let routed = observed(&mut tx, None, id).await?;
        tx.commit().await?;
        Ok(routed)
    }

    /// Asks the central to cancel, retry or re-pin (`pin`: a system's name or id, `None` for
    /// any system) a task this system routed: the call waits in `route_calls`, after the
    /// task's submission, until sync sends it. `None` when no routed task matches `key`.
    /// Refused here when what the central last said makes it pointless: a cancel of a task
    /// that ended, a retry of one that has not failed, been blocked, flagged or cancelled.
    pub async fn control_routed(
        &self,
        key: &str,
        control: RoutedControl,
        reason: &str,
        pin: Option<&str>,
    ) -> Result<Option<RoutedTask>> {
        let Some(task) = self.routed_task(key).await? else { return Ok(None) };
        let short = ccm_schema::types::short_id(&task.id);
        let state = task.state();
        // A request still on its way may change the state: the central judges then.
        if task.requested.is_none() {
            match control {
                RoutedControl::Cancel
                    if ["complete", "alert", "failed", "cancelled", "refused"]
                        .contains(&state.as_str()) =>
                {
                    let on = task.system().map(|s| format!(" on {s}")).unwrap_or_default();
                    return Err(StoreError::Routed(format!(
                        "routed task {short} has ended ({state}{on}): nothing to cancel"
                    )));
                }
                RoutedControl::Retry
                    if !["alert", "failed", "blocked", "cancelled"].contains(&state.as_str()) =>
                {
                    return Err(StoreError::Routed(format!(
                        "routed task {short} is {state}: only a failed, blocked, flagged or cancelled task can be retried"
                    )));
                }
                _ => {}
            }
        }
        let reason = RoutedControlV1 { p_task_id: task.id, p_reason: Some(reason.to_string()) };
        let call = match control {
            RoutedControl::Cancel => CallV1::CancelRouted(reason),
            RoutedControl::Retry => CallV1::RetryRouted(reason),
            RoutedControl::Pin => CallV1::PinRouted(PinRoutedV1 {
                p_task_id: task.id,
                p_system: pin.map(str::to_string),
            }),
        };
        let mut tx = self.write().await?;
        queue_call(&mut tx, &call).await?;
        if control == RoutedControl::Pin {
            sqlx::query("UPDATE routed_tasks SET pin = ?, updated_at = ? WHERE id = ?")
                .bind(pin)
                .bind(Timestamp::now())
                .bind(task.id.hyphenated())
                .execute(&mut *tx)
                .await?;
        }
        let routed = load_routed(&mut tx, task.id).await?;
        tx.commit().await?;
        Ok(Some(routed))
    }

    /// Tasks this system routed, oldest first.
    pub async fn routed_tasks(&self) -> Result<Vec<RoutedTask>> {
        let mut tasks: Vec<RoutedTask> = sqlx::query_as(&format!(
            "SELECT {ROUTED_COLUMNS} FROM routed_tasks ORDER BY created_at, id"
        ))
        .fetch_all(&self.readers)
        .await?;
        #[derive(sqlx::FromRow)]
        struct Row {
            task_id: String,
            #[sqlx(flatten)]
            entry: RoutedLogEntry,
        }
        let rows: Vec<Row> =
            sqlx::query_as(&format!("SELECT task_id, {LOG_COLUMNS} FROM routed_log ORDER BY seq"))
                .fetch_all(&self.readers)
                .await?;
        let mut logs: std::collections::HashMap<String, Vec<RoutedLogEntry>> = Default::default();
        for row in rows {
            logs.entry(row.task_id).or_default().push(row.entry);
        }
        for task in &mut tasks {
            task.log = logs.remove(&task.id.hyphenated().to_string()).unwrap_or_default();
        }
        Ok(tasks)
    }

    /// The routed task whose id starts with `key`, if exactly one does.
    pub async fn routed_task(&self, key: &str) -> Result<Option<RoutedTask>> {
        let key = key.trim().to_ascii_lowercase();
        let rows: Vec<RoutedTask> = sqlx::query_as(&format!(
            "SELECT {ROUTED_COLUMNS} FROM routed_tasks WHERE id LIKE ? || '%' ESCAPE '\\' LIMIT 2"
        ))
        .bind(key.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
        .fetch_all(&self.readers)
        .await?;
        match rows.len() {
            1 => {
                let Some(mut task) = rows.into_iter().next() else { return Ok(None) };
                task.log = sqlx::query_as(&format!(
                    "SELECT {LOG_COLUMNS} FROM routed_log WHERE task_id = ? ORDER BY seq"
                ))
                .bind(task.id.hyphenated())
                .fetch_all(&self.readers)
                .await?;
                Ok(Some(task))
            }
            0 => Ok(None),
            _ => Err(StoreError::Ambiguous { prefix: key, matches: "several routed tasks".into() }),
        }
    }

    /// Whether a routed task still waits for its end (the origin keeps asking the central).
    pub async fn routed_unfinished(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            r#"
            SELECT EXISTS (SELECT 1 FROM routed_tasks
                           WHERE central IS NULL
                              OR json_extract(central, '$.state')
                                 NOT IN ('done', 'failed', 'blocked', 'cancelled', 'refused'))
            "#,
        )
        .fetch_one(&self.readers)
        .await?)
    }

    /// Stores what the central says of the routed tasks (`api.routed_status`); tasks of other
    /// origins are ignored. A change of state, system or reason goes to the task's log; the
    /// central's `no_context` raises the `unroutable` alert here too, resolved once it is
    /// placed.
    pub async fn routed_seen(&self, tasks: &[RoutedTaskV1]) -> Result<usize> {
        let mut tx = self.write().await?;
        let now = Timestamp::now();
        let mut changed = 0;
        for task in tasks {
            let id = task.task_id.hyphenated().to_string();
            let Some(before) = load_routed_opt(&mut tx, &id).await? else { continue };
            let central = serde_json::to_string(task)
                .map_err(|e| StoreError::Invalid { field: "central", message: e.to_string() })?;
            let updated = sqlx::query(
                r#"
                UPDATE routed_tasks SET central = ?, submitted_at = coalesce(submitted_at, ?),
                                        updated_at = ?
                WHERE id = ? AND central IS NOT ?
                "#,
            )
            .bind(&central)
            .bind(now)
            .bind(now)
            .bind(task.task_id.hyphenated())
            .bind(&central)
            .execute(&mut *tx)
            .await?
            .rows_affected() as usize;
            if updated > 0 {
                observed(&mut tx, Some(&before), task.task_id).await?;
            }
            changed += updated;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// The oldest call to the central still to make. A row that does not parse (written by
    /// a build that knew another call) leaves the queue with a warning: it would hold every
    /// call behind it.
    pub async fn next_route_call(&self) -> Result<Option<QueuedCall>> {
        loop {
            let row: Option<(i64, String, String, i64)> = sqlx::query_as(
                "SELECT seq, function, params, attempts FROM route_calls ORDER BY seq LIMIT 1",
            )
            .fetch_optional(&self.readers)
            .await?;
            let Some((seq, function, params, attempts)) = row else { return Ok(None) };
            match CallV1::parse(&function, &params) {
                Ok(call) => return Ok(Some(QueuedCall { seq, call, attempts })),
                Err(error) => {
                    tracing::warn!(seq, %error, "a queued routing call cannot be sent: dropped");
                    sqlx::query("DELETE FROM route_calls WHERE seq = ?")
                        .bind(seq)
                        .execute(&mut self.writer().await?.conn)
                        .await?;
                }
            }
        }
    }

    /// A call has its answer: it leaves the queue. A submission the central took marks the
    /// routed task submitted; `stale` (the central said `stale_lease`) ends the local lease.
    /// The answer to a cancel, retry or pin is the task as the origin sees it: kept as the
    /// central's view, so the origin shows it at once.
    pub async fn route_call_answered(
        &self,
        queued: &QueuedCall,
        outcome: &CallOutcome,
    ) -> Result<()> {
        let call = &queued.call;
        let task_id = call.task_id();
        let answer = match outcome {
            CallOutcome::Answered { answer, task } => {
                if let (true, Some(task)) = (call.is_control(), task) {
                    self.routed_seen(std::slice::from_ref(&**task)).await?;
                }
                Some(answer)
            }
            CallOutcome::Refused { reason } => {
                if let CallV1::SubmitTask(_) = call {
                    let refused = RoutedTaskV1 {
                        task_id,
                        state: "refused".into(),
                        reason: Some(reason.clone()),
                        ..RoutedTaskV1::default()
                    };
                    self.routed_seen(&[refused]).await?;
                }
                None
            }
        };
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM route_calls WHERE seq = ?")
            .bind(queued.seq)
            .execute(&mut *tx)
            .await?;
        let id = task_id.hyphenated();
        if let CallV1::SubmitTask(_) = call {
            let before = load_routed_opt(&mut tx, &id.to_string()).await?;
            sqlx::query(
                "UPDATE routed_tasks SET submitted_at = coalesce(submitted_at, ?), updated_at = ? WHERE id = ?",
            )
            .bind(Timestamp::now())
            .bind(Timestamp::now())
            .bind(id)
            .execute(&mut *tx)
            .await?;
            if before.is_some() {
                observed(&mut tx, before.as_ref(), task_id).await?;
            }
        }
        tx.commit().await?;
        let Some(answer) = answer else { return Ok(()) };
        if answer.status == "stale_lease" {
            let holder = answer.holder.as_deref().unwrap_or("another system");
            let reason = format!("the central answered stale_lease: {holder} holds the task now");
            if !self.lease_lost(task_id, &reason).await? {
                // Finished here already: the result this system reported is not the task's.
                let token = call.fencing_token();
                let reason = match &answer.holder {
                    Some(holder) => format!("result discarded: lease lost to {holder}"),
                    None => "result discarded: lease lost".to_string(),
                };
                sqlx::query(
                    "UPDATE routed_leases SET state = 'lost', reason = ? \
                     WHERE task_id = ? AND state = 'finished' AND fencing_token IS ?",
                )
                .bind(reason)
                .bind(task_id.hyphenated())
                .bind(token)
                .execute(&mut self.writer().await?.conn)
                .await?;
            }
        }
        Ok(())
    }

    /// Why this system's copy of a routed task it executed is stale, if it is: the central
    /// took the lease back (self-fenced, revoked, or its late result refused as
    /// `stale_lease`), so what it shows here is not the task's outcome.
    pub async fn routed_stale(&self, id: Uuid) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce(reason, 'lease lost') FROM routed_leases \
             WHERE task_id = ? AND state = 'lost'",
        )
        .bind(id.hyphenated())
        .fetch_optional(&self.readers)
        .await?)
    }

    /// [`Store::routed_stale`] of every task that is stale here.
    pub async fn routed_stale_all(&self) -> Result<Vec<StaleTask>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT task_id, coalesce(reason, 'lease lost') FROM routed_leases WHERE state = 'lost'",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, reason)| Some(StaleTask { id: Uuid::parse_str(&id).ok()?, reason }))
            .collect())
    }

    /// A call failed: counted, with its error, and tried again later.
    pub async fn route_call_failed(&self, call: &QueuedCall, error: &str) -> Result<()> {
        sqlx::query("UPDATE route_calls SET attempts = attempts + 1, last_error = ? WHERE seq = ?")
            .bind(error)
            .bind(call.seq)
            .execute(&mut self.writer().await?.conn)
            .await?;
        Ok(())
    }

    /// A routed task that waits here (not submitted yet) whose repository now has a checkout
    /// here becomes a local task, with the same id.
    pub async fn localize_routed(&self, config: &Config) -> Result<Vec<Uuid>> {
        let waiting: Vec<(String,)> = sqlx::query_as(
            r#"
            SELECT r.id FROM routed_tasks r
            WHERE r.submitted_at IS NULL AND r.pin IS NULL AND r.repo IS NOT NULL
              AND EXISTS (SELECT 1 FROM contexts c WHERE c.repo_url = r.repo OR c.path = r.repo)
              AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = r.id)
              AND NOT EXISTS (SELECT 1 FROM route_calls c
                              WHERE c.task_id = r.id AND c.function = 'cancel_routed')
            "#,
        )
        .fetch_all(&self.readers)
        .await?;
        let mut localized = Vec::new();
        for (id,) in waiting {
            let mut tx = self.write().await?;
            let Some(task) = load_routed_opt(&mut tx, &id).await? else { continue };
            if task.submitted_at.is_some() {
                continue;
            }
            let new = NewTask {
                title: task.title,
                prompt: Some(task.prompt),
                repo: task.repo,
                profile: task.profile,
                verify: task.verify,
                max_attempts: u32::try_from(task.max_attempts).ok(),
                priority: task.priority,
                ..NewTask::default()
            };
            create_in_tx(&mut tx, task.id, new, config, ACTOR).await?;
            for table in [
                "DELETE FROM route_calls WHERE task_id = ?",
                "DELETE FROM routed_log WHERE task_id = ?",
                "DELETE FROM routed_tasks WHERE id = ?",
            ] {
                sqlx::query(table).bind(&id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            localized.push(task.id);
        }
        Ok(localized)
    }

    /// Takes tasks the central leased to this system: each becomes a local task with the
    /// central's id and a held lease. A task seen before (claimed again after a lost lease)
    /// starts over with the new token.
    pub async fn claimed(
        &self,
        tasks: &[RoutedTaskV1],
        lease_s: i64,
        config: &Config,
    ) -> Result<Vec<Uuid>> {
        let mut tx = self.write().await?;
        let now = Timestamp::now();
        let mut taken = Vec::new();
        for claimed in tasks {
            let Some(token) = claimed.fencing_token else { continue };
            let id = claimed.task_id;
            let origin = claimed.origin_name.as_deref().unwrap_or("another system");
            let exists: Option<(TaskState,)> =
                sqlx::query_as("SELECT state FROM tasks WHERE id = ?")
                    .bind(id.hyphenated())
                    .fetch_optional(&mut *tx)
                    .await?;
            match exists {
                None => {
                    let new = NewTask {
                        title: claimed.title.clone(),
                        prompt: claimed.prompt.clone(),
                        repo: claimed.repo_url.clone(),
                        profile: claimed
                            .profile
                            .clone()
                            .filter(|p| config.profiles.contains_key(p)),
                        verify: claimed.verify.clone(),
                        max_attempts: u32::try_from(claimed.max_attempts).ok().filter(|m| *m >= 1),
                        priority: claimed.priority.clamp(-1000, 1000),
                        ..NewTask::default()
                    };
                    let actor = format!("{ACTOR}:{origin}");
                    create_in_tx(&mut tx, id, new, config, &actor).await?;
                    insert_lease(&mut tx, id, token, origin, lease_s, now).await?;
                }
                Some((state,)) => {
                    insert_lease(&mut tx, id, token, origin, lease_s, now).await?;
                    let reason = format!("claimed again from the fleet (fencing token {token})");
                    if matches!(
                        state,
                        TaskState::Blocked
                            | TaskState::Failed
                            | TaskState::Alert
                            | TaskState::Cancelled
                    ) {
                        apply_in_tx(
                            &mut tx,
                            id,
                            TaskEvent::Retry,
                            &reason,
                            ACTOR,
                            RetryPolicy::from(config),
                        )
                        .await?;
                    } else if state == TaskState::Complete {
                        // Done here already: report the result under the new token.
                        let task = load_task(&mut tx, id).await?;
                        transitioned(&mut tx, &task, ACTOR).await?;
                    }
                }
            }
            taken.push(id);
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// The lease on a routed task is gone (revoked, stale, or not renewed in time): the local
    /// task is cancelled, which stops its agent, and nothing more is reported for it.
    pub async fn lease_lost(&self, task: Uuid, reason: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let changed = sqlx::query(
            "UPDATE routed_leases SET state = 'lost', reason = ? WHERE task_id = ? AND state = 'held'",
        )
        .bind(reason)
        .bind(task.hyphenated())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let state: Option<(TaskState,)> = sqlx::query_as("SELECT state FROM tasks WHERE id = ?")
            .bind(task.hyphenated())
            .fetch_optional(&mut *tx)
            .await?;
        if changed > 0 && state.is_some_and(|(s,)| !s.is_terminal()) {
            // Cancelling times nothing: the policy is not read.
            let policy = RetryPolicy::default();
            apply_in_tx(&mut tx, task, TaskEvent::Cancel, reason, ACTOR, policy).await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Held leases the central has not confirmed for `lease - margin`: their agents must stop
    /// before another system could be given the task.
    pub async fn leases_to_fence(&self, margin_ms: i64) -> Result<Vec<(Uuid, i64)>> {
        let now = Timestamp::now().millis();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            r#"
            SELECT task_id, ? - renewed_at FROM routed_leases
            WHERE state = 'held' AND renewed_at + max(lease_ms - ?, lease_ms / 2) <= ?
            "#,
        )
        .bind(now)
        .bind(margin_ms)
        .bind(now)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, age)| Some((Uuid::parse_str(&id).ok()?, age)))
            .collect())
    }

    /// Agent slots free for work from the fleet: slots minus tasks holding or waiting for one.
    pub async fn free_for_claims(&self, slots: u32) -> Result<i64> {
        let (busy,): (i64,) = sqlx::query_as(
            r#"
            SELECT count(*) FROM tasks
            WHERE state IN ('created', 'queued', 'executing', 'report_generation', 'supervisory',
                            'error', 'retry')
            "#,
        )
        .fetch_one(&self.readers)
        .await?;
        Ok(i64::from(slots) - busy)
    }

    /// On start: each held lease is confirmed with the central by a progress report, so a
    /// lease lost while the daemon was down is learnt at once (answered `stale_lease`).
    pub async fn confirm_leases(&self) -> Result<()> {
        let held: Vec<(String, i64)> =
            sqlx::query_as("SELECT task_id, fencing_token FROM routed_leases WHERE state = 'held'")
                .fetch_all(&self.readers)
                .await?;
        if held.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for (task, token) in held {
            let Ok(id) = Uuid::parse_str(&task) else { continue };
            let call = CallV1::ReportProgress(ReportProgressV1 {
                p_task_id: id,
                p_fencing_token: token,
                p_progress: ProgressV1 { phase: "restarted".into(), state: None, attempt: None },
            });
            queue_call(&mut tx, &call).await?;
        }
        tx.commit().await
    }
}

impl Store {
    pub(super) async fn held_leases(&self) -> Result<Vec<LeaseV1>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT task_id, fencing_token FROM routed_leases WHERE state = 'held' ORDER BY task_id",
        )
        .fetch_all(&self.readers)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, token)| {
                Some(LeaseV1 { task_id: Uuid::parse_str(&id).ok()?, fencing_token: token })
            })
            .collect())
    }

    /// A heartbeat's answer: renewed leases restart their clock; revoked ones are lost.
    pub(super) async fn leases_answered(&self, answer: &HeartbeatAnswerV1) -> Result<()> {
        if !answer.leases.is_empty() {
            let mut tx = self.write().await?;
            let now = Timestamp::now();
            for lease in &answer.leases {
                sqlx::query(
                    r#"
                    UPDATE routed_leases SET renewed_at = ?, lease_ms = coalesce(?, lease_ms)
                    WHERE task_id = ? AND fencing_token = ? AND state = 'held'
                    "#,
                )
                .bind(now)
                .bind(answer.lease_s.map(|s| s * 1000))
                .bind(lease.task_id.hyphenated())
                .bind(lease.fencing_token)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        for revoked in &answer.revoked {
            let why = revoked.message.as_deref().unwrap_or("no reason given");
            let reason = match revoked.reason.as_str() {
                "finished" => "the central holds this task's result already".to_string(),
                "cancelled" => format!("the origin cancelled the routed task ({why})"),
                "repinned" => format!("the routed task was moved to another system ({why})"),
                other => format!("the central took the lease back ({other})"),
            };
            let token: Option<i64> = sqlx::query_scalar(
                "SELECT fencing_token FROM routed_leases WHERE task_id = ? AND state = 'held'",
            )
            .bind(revoked.task_id.hyphenated())
            .fetch_optional(&self.readers)
            .await?;
            if token == Some(revoked.fencing_token) {
                self.lease_lost(revoked.task_id, &reason).await?;
            }
        }
        Ok(())
    }
}

/// After each change of a local task: a task held on a lease tells the central when its agent
/// starts and how it ended, in the transaction of the change.
pub(super) async fn transitioned(tx: &mut Writing, task: &Task, actor: &str) -> Result<()> {
    let reported = task.state == TaskState::Executing
        || task.state.is_terminal()
        || matches!(task.state, TaskState::Blocked | TaskState::Alert);
    if !reported {
        return Ok(()); // no lease is looked up for a state the central is not told about
    }
    let lease: Option<(i64,)> = sqlx::query_as(
        "SELECT fencing_token FROM routed_leases WHERE task_id = ? AND state = 'held'",
    )
    .bind(task.id.hyphenated())
    .fetch_optional(&mut **tx)
    .await?;
    let Some((token,)) = lease else { return Ok(()) };
    let id = task.id;
    match task.state {
        TaskState::Executing => {
            let call = CallV1::ReportProgress(ReportProgressV1 {
                p_task_id: id,
                p_fencing_token: token,
                p_progress: ProgressV1 {
                    phase: "agent".into(),
                    state: Some(task.state.to_string()),
                    attempt: Some(task.attempts),
                },
            });
            queue_call(tx, &call).await
        }
        // Blocked (attempts exhausted) and alert (the review found an issue) end the routed
        // attempt too: the origin decides what comes next.
        state if state.is_terminal() || matches!(state, TaskState::Blocked | TaskState::Alert) => {
            if state == TaskState::Cancelled && actor == ACTOR {
                return Ok(()); // the lease was lost: nothing to report
            }
            let result = result(tx, task).await?;
            sqlx::query(
                "UPDATE routed_leases SET state = 'finished', reason = ? WHERE task_id = ?",
            )
            .bind(format!("{state}"))
            .bind(id.hyphenated())
            .execute(&mut **tx)
            .await?;
            let call = CallV1::Complete(CompleteV1 {
                p_task_id: id,
                p_fencing_token: token,
                p_result: result,
            });
            queue_call(tx, &call).await
        }
        _ => Ok(()),
    }
}

/// What the origin shows of a finished routed task: the outcome, the latest report, the cost.
async fn result(tx: &mut Writing, task: &Task) -> Result<ResultV1> {
    let report: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT summary, verdict FROM reports WHERE task_id = ? ORDER BY attempt DESC LIMIT 1",
    )
    .bind(task.id.hyphenated())
    .fetch_optional(&mut **tx)
    .await?;
    let (cost, Tokens { input, output }) = task_cost(tx, task.id).await?;
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM task_log WHERE task_id = ? ORDER BY rowid DESC LIMIT 1",
    )
    .bind(task.id.hyphenated())
    .fetch_optional(&mut **tx)
    .await?;
    let done = matches!(task.state, TaskState::Complete | TaskState::Alert);
    let (summary, verdict) = report.unzip();
    Ok(ResultV1 {
        status: if done { "done" } else { "failed" }.into(),
        state: task.state.to_string(),
        summary: reason,
        verdict: verdict.flatten(),
        attempts: task.attempts,
        cost_usd: Some(cost),
        input_tokens: Some(input),
        output_tokens: Some(output),
        report: summary.and_then(|s| serde_json::from_str::<Value>(&s).ok()),
    })
}

/// Queues `call` in the transaction of the change that made it; the sync driver is woken after
/// the commit.
/// Queues the submission `call` of the routed task `id` at once, or, while a task of
/// `depends_on` is not complete, holds it (`routed_waits`, `held_submissions`) until
/// [`dependency_ended`] releases it.
async fn hold_or_queue(
    tx: &mut Writing,
    id: Uuid,
    depends_on: &[Uuid],
    call: &CallV1,
) -> Result<()> {
    let mut waiting = false;
    for dep in depends_on {
        sqlx::query("INSERT OR IGNORE INTO routed_waits (task_id, depends_on) VALUES (?, ?)")
            .bind(id.hyphenated())
            .bind(dep.hyphenated())
            .execute(&mut **tx)
            .await?;
        let (state,): (TaskState,) = sqlx::query_as("SELECT state FROM tasks WHERE id = ?")
            .bind(dep.hyphenated())
            .fetch_one(&mut **tx)
            .await?;
        waiting |= state != TaskState::Complete;
    }
    if !waiting {
        return queue_call(tx, call).await;
    }
    let params = call
        .params()
        .map_err(|e| StoreError::Invalid { field: "params", message: e.to_string() })?;
    sqlx::query("INSERT INTO held_submissions (task_id, params) VALUES (?, ?)")
        .bind(id.hyphenated())
        .bind(params.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The task `dep` ended in `state` (in the transaction of its move): each held submission
/// waiting for it is sent once all its dependencies are complete, or, `dep` failed or
/// cancelled, never (`blocked`, with the reason).
pub(super) async fn dependency_ended(tx: &mut Writing, dep: Uuid, state: TaskState) -> Result<()> {
    let held: Vec<(String, String)> = sqlx::query_as(
        r#"
        SELECT h.task_id, h.params FROM routed_waits w
        JOIN held_submissions h ON h.task_id = w.task_id AND h.state = 'held'
        WHERE w.depends_on = ?
        "#,
    )
    .bind(dep.hyphenated())
    .fetch_all(&mut **tx)
    .await?;
    for (task, params) in held {
        if state != TaskState::Complete {
            let reason = format!("dependency {} is {state}", ccm_schema::types::short_id(&dep));
            sqlx::query(
                "UPDATE held_submissions SET state = 'blocked', reason = ? WHERE task_id = ?",
            )
            .bind(reason)
            .bind(&task)
            .execute(&mut **tx)
            .await?;
            continue;
        }
        let (open,): (bool,) = sqlx::query_as(
            r#"
            SELECT EXISTS (SELECT 1 FROM routed_waits w JOIN tasks t ON t.id = w.depends_on
                           WHERE w.task_id = ? AND t.state <> 'complete')
            "#,
        )
        .bind(&task)
        .fetch_one(&mut **tx)
        .await?;
        if open {
            continue;
        }
        let call = CallV1::parse("submit_task", &params)
            .map_err(|message| StoreError::Invalid { field: "params", message })?;
        queue_call(tx, &call).await?;
        sqlx::query("DELETE FROM held_submissions WHERE task_id = ?")
            .bind(&task)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub(super) async fn queue_call(tx: &mut Writing, call: &CallV1) -> Result<()> {
    let params = call
        .params()
        .map_err(|e| StoreError::Invalid { field: "params", message: e.to_string() })?;
    sqlx::query(
        "INSERT INTO route_calls (function, task_id, params, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(call.function())
    .bind(call.task_id().hyphenated())
    .bind(params.to_string())
    .bind(Timestamp::now())
    .execute(&mut **tx)
    .await?;
    tx.route_call = true;
    Ok(())
}

async fn insert_lease(
    tx: &mut Writing,
    id: Uuid,
    token: i64,
    origin: &str,
    lease_s: i64,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        r#"
        INSERT INTO routed_leases (task_id, fencing_token, origin_name, lease_ms, renewed_at, state)
        VALUES (?1, ?2, ?3, ?4, ?5, 'held')
        ON CONFLICT (task_id) DO UPDATE
        SET fencing_token = ?2, origin_name = ?3, lease_ms = ?4, renewed_at = ?5,
            state = 'held', reason = NULL
        "#,
    )
    .bind(id.hyphenated())
    .bind(token)
    .bind(origin)
    .bind(lease_s * 1000)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// After a change of routed task `id` (`before`: as it was, `None` when it is new): logs what
/// the operator sees change (state, system, reason) and raises or resolves the origin's
/// `unroutable` alert as the central's `no_context` comes or goes. The task as it is now.
async fn observed(tx: &mut Writing, before: Option<&RoutedTask>, id: Uuid) -> Result<RoutedTask> {
    let after = load_routed(tx, id).await?;
    let seen = |t: &RoutedTask| {
        (t.state(), t.system().map(str::to_string), t.reason().map(str::to_string))
    };
    let now = seen(&after);
    if before.map(seen).as_ref() != Some(&now) {
        let (to, system, reason) = now;
        let reason = match before {
            None => Some(reason.unwrap_or_else(|| "routed to the fleet from this system".into())),
            Some(_) => reason,
        };
        sqlx::query(
            "INSERT INTO routed_log (task_id, at, from_state, to_state, system, reason) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(id.hyphenated())
        .bind(Timestamp::now())
        .bind(before.map(RoutedTask::state))
        .bind(&to)
        .bind(system)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    }
    let unroutable = |t: &RoutedTask| {
        t.central
            .as_ref()
            .is_some_and(|c| c.state == "queued" && c.reason.as_deref() == Some(NO_CONTEXT))
    };
    let message = after.unroutable_message();
    match (before.is_some_and(unroutable), unroutable(&after)) {
        (false, true) => {
            let (open,): (bool,) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM alerts WHERE resolved_at IS NULL \
                 AND reason = 'unroutable' AND message = ?)",
            )
            .bind(&message)
            .fetch_one(&mut **tx)
            .await?;
            if !open {
                super::tasks::raise_alert(
                    tx,
                    None,
                    ccm_schema::Severity::Warning,
                    "unroutable",
                    &message,
                    Some(json!({ "routed_task": id, "reason": NO_CONTEXT, "repo": after.repo })),
                    Timestamp::now(),
                )
                .await?;
            }
        }
        (true, false) => {
            let resolved: Vec<ccm_schema::Alert> = sqlx::query_as(&format!(
                "UPDATE alerts SET resolved_at = ? WHERE resolved_at IS NULL AND task_id IS NULL \
                 AND reason = 'unroutable' AND message = ? RETURNING {}",
                super::records::ALERT_COLUMNS
            ))
            .bind(Timestamp::now())
            .bind(&message)
            .fetch_all(&mut **tx)
            .await?;
            for alert in resolved {
                super::outbox_alert(tx, &alert, false).await?;
            }
        }
        _ => {}
    }
    Ok(after)
}

async fn load_routed(tx: &mut Writing, id: Uuid) -> Result<RoutedTask> {
    load_routed_opt(tx, &id.hyphenated().to_string())
        .await?
        .ok_or_else(|| StoreError::TaskNotFound(id.to_string()))
}

async fn load_routed_opt(tx: &mut Writing, id: &str) -> Result<Option<RoutedTask>> {
    Ok(sqlx::query_as(&format!("SELECT {ROUTED_COLUMNS} FROM routed_tasks WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tasks whose `submit_task` call is queued for the central, in order.
    async fn submitted(store: &Store) -> Vec<String> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT task_id FROM route_calls WHERE function = 'submit_task' ORDER BY seq",
        )
        .fetch_all(&store.readers)
        .await
        .unwrap();
        rows.into_iter().map(|(t,)| t).collect()
    }

    #[tokio::test]
    async fn a_routed_task_waiting_for_local_ones_is_sent_once_they_complete_and_never_after_a_cancel(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ccm.db"), "node").await.unwrap();
        let config = Config::load(dir.path(), None).unwrap();
        let policy = RetryPolicy::default();
        let local = |title: &str| NewTask { title: title.into(), ..NewTask::default() };
        let a = store.create_task(local("a"), &config, "test").await.unwrap();
        let b = store.create_task(local("b"), &config, "test").await.unwrap();
        let after = |title: &str, dep: Uuid| NewTask {
            title: title.into(),
            depends_on: vec![dep.to_string()],
            ..NewTask::default()
        };
        let after_a = store.route_task(after("after a", a.id), None, &config).await.unwrap();
        let after_b = store.route_task(after("after b", b.id), None, &config).await.unwrap();
        assert!(submitted(&store).await.is_empty(), "held while a and b are open");

        store
            .apply_event(&b.id.to_string(), TaskEvent::Cancel, "operator", "test", policy)
            .await
            .unwrap();
        for event in [
            TaskEvent::Admit,
            TaskEvent::Start,
            TaskEvent::WorkerFinished,
            TaskEvent::VerifyPassed,
            TaskEvent::ReportReady { supervised: false },
        ] {
            store.apply_event(&a.id.to_string(), event, "test", "test", policy).await.unwrap();
        }
        assert_eq!(store.task(&a.id.to_string()).await.unwrap().task.state, TaskState::Complete);
        assert_eq!(submitted(&store).await, [after_a.id.hyphenated().to_string()]);
        let held: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT task_id, state, reason FROM held_submissions")
                .fetch_all(&store.readers)
                .await
                .unwrap();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].0, after_b.id.hyphenated().to_string());
        assert_eq!(held[0].1, "blocked");
        assert_eq!(
            held[0].2.as_deref(),
            Some(format!("dependency {} is cancelled", &b.id.to_string()[..8]).as_str())
        );
    }
}
