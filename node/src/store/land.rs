//! Landings (issue 23): the land queue of each repository and target, and the durable steps of
//! a landing in progress, so that a restart knows whether the target already moved.
//!
//! Every change of a landing's state goes through [`ccm_schema::land_transition`]. The local
//! lease of a queue is the unique index `landings_one_in_progress`: at most one row of a
//! repository and target is `landing`, `merged` or `moved`. A landing that fails moves its task
//! (`land_failed`, then the attempt budget) in the same transaction.

use ccm_schema::{
    land_transition, FailureClass, LandEvent, LandState, Task, TaskEvent, TaskState, Timestamp,
};
use serde::{Deserialize, Serialize};
use sqlx::types::uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::tasks::{apply_in_tx, load_task, resolve_task};
use super::{Result, RetryPolicy, Store, StoreError, Writing};

/// Who moves tasks because of a landing, in their log.
const ACTOR: &str = "land";

/// One task's landing, as `ccm land status`, `ccm task show` and the API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Landing {
    #[sqlx(try_from = "Hyphenated")]
    pub task_id: Uuid,
    /// The registered checkout the task's work lands in.
    pub repo: String,
    /// The target branch.
    pub target: String,
    pub state: LandState,
    /// When it was (last) put in its queue: its place in the queue.
    pub queued_at: Timestamp,
    /// The task's attempt whose branch this landing carries.
    pub attempt: u32,
    /// The target's head the landing started from.
    pub old_head: Option<String>,
    /// The merged result.
    pub new_head: Option<String>,
    /// Why it waits, or why it failed.
    pub reason: Option<String>,
    /// The files of a conflict (a JSON list).
    pub conflicts: Option<String>,
    /// The verify's output on the merged result.
    pub verify_output: Option<String>,
    /// How often it started again because the target moved meanwhile.
    pub restarts: u32,
    pub started_at: Option<Timestamp>,
    pub landed_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// `land.mode: pr`: the pull request's number and address on the forge, once opened.
    pub pr_number: Option<i64>,
    pub pr_url: Option<String>,
}

const LANDING_COLUMNS: &str = "task_id, repo, target, state, queued_at, attempt, old_head, \
     new_head, reason, conflicts, verify_output, restarts, started_at, landed_at, updated_at, \
     pr_number, pr_url";

/// What a step of a landing records with its move.
#[derive(Debug, Clone, Default)]
pub struct LandStep<'a> {
    pub old_head: Option<&'a str>,
    pub new_head: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub verify_output: Option<&'a str>,
}

/// Why a landing failed, for the task's next attempt.
#[derive(Debug, Clone)]
pub struct LandFailure {
    pub class: FailureClass,
    /// One line: "conflict in a.txt, b.txt with main at 1a2b3c4".
    pub reason: String,
    pub conflicts: Vec<String>,
    /// The verify's output on the merged result (or the conflict's markers).
    pub output: Option<String>,
    /// The target's newest head.
    pub target_head: String,
    /// Put the failure to the operator at once rather than spend an attempt on it
    /// (`land.on_checks_failed: decide`).
    pub decide: bool,
}

impl Store {
    /// Puts a `complete` task in the land queue of `repo` and `target` (again, after a failed
    /// landing and a new attempt). A task already queued keeps its place; one landing or landed
    /// is refused.
    pub async fn enqueue_landing(&self, task: &str, repo: &str, target: &str) -> Result<Landing> {
        let mut tx = self.write().await?;
        let id = resolve_task(&mut tx, task).await?;
        let loaded = load_task(&mut tx, id).await?;
        if loaded.state != TaskState::Complete {
            return Err(StoreError::Invalid {
                field: "task",
                message: format!(
                    "task {} is {}, not complete: only a complete task lands",
                    loaded.short_id(),
                    loaded.state
                ),
            });
        }
        if discarded_in(&mut tx, id).await?.is_some() {
            return Err(StoreError::Invalid {
                field: "task",
                message: format!(
                    "task {} was discarded: its work does not land",
                    loaded.short_id()
                ),
            });
        }
        let current = landing_in(&mut tx, id).await?;
        let from = current.as_ref().map(|l| l.state);
        if from == Some(LandState::LandQueued) {
            return current.ok_or_else(|| StoreError::TaskNotFound(id.to_string()));
        }
        let to = land_transition(from, LandEvent::Enqueue)?;
        let now = Timestamp::now();
        sqlx::query(
            r#"
            INSERT INTO landings (task_id, repo, target, state, queued_at, attempt, updated_at)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)
            ON CONFLICT (task_id) DO UPDATE SET repo = ?2, target = ?3, state = ?4, queued_at = ?5,
                attempt = ?6, old_head = NULL, new_head = NULL, reason = NULL, updated_at = ?5
            "#,
        )
        .bind(id.hyphenated())
        .bind(repo)
        .bind(target)
        .bind(to)
        .bind(now)
        .bind(loaded.attempts)
        .execute(&mut *tx)
        .await?;
        touch_task(&mut tx, id).await?;
        let landing = landing_in(&mut tx, id).await?;
        tx.commit().await?;
        landing.ok_or_else(|| StoreError::TaskNotFound(id.to_string()))
    }

    /// Drops a finished task's work (`ccm task discard`): the task keeps its state and history,
    /// leaves its land queue and the conflict prediction, and the janitor may remove its branch
    /// and worktree whatever they hold. Refused for a task that has not ended, and for one
    /// whose landing is in progress or done.
    pub async fn discard_task(&self, task: &str, reason: &str) -> Result<Discarded> {
        let mut tx = self.write().await?;
        let id = resolve_task(&mut tx, task).await?;
        let loaded = load_task(&mut tx, id).await?;
        let refuse = |message: String| StoreError::Invalid { field: "task", message };
        if !loaded.state.is_terminal() && loaded.state != TaskState::Blocked {
            return Err(refuse(format!(
                "task {} is {}: only a finished task's work is discarded (cancel it first)",
                loaded.short_id(),
                loaded.state
            )));
        }
        if let Some(landing) = landing_in(&mut tx, id).await? {
            if landing.state == LandState::Landed || landing.state.in_progress() {
                return Err(refuse(format!(
                    "task {} is {}: its work is on the target, or about to be",
                    loaded.short_id(),
                    landing.state.label()
                )));
            }
            sqlx::query("DELETE FROM landings WHERE task_id = ?")
                .bind(id.hyphenated())
                .execute(&mut *tx)
                .await?;
        }
        let now = Timestamp::now();
        sqlx::query(
            r#"
            INSERT INTO discarded_tasks (task_id, reason, discarded_at) VALUES (?, ?, ?)
            ON CONFLICT (task_id) DO NOTHING
            "#,
        )
        .bind(id.hyphenated())
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        touch_task(&mut tx, id).await?;
        let discarded = discarded_in(&mut tx, id).await?;
        tx.commit().await?;
        discarded.ok_or_else(|| StoreError::TaskNotFound(id.to_string()))
    }

    /// Whether (and why, when) the operator discarded the task's work.
    pub async fn discarded(&self, task: Uuid) -> Result<Option<Discarded>> {
        let mut conn = self.readers.acquire().await?;
        discarded_in(&mut conn, task).await
    }

    /// Takes the lease of the task's queue and starts its landing from `old_head`. `false` when
    /// another landing of the same repository and target is in progress.
    pub async fn begin_landing(&self, task: Uuid, old_head: &str) -> Result<bool> {
        let step = LandStep { old_head: Some(old_head), ..LandStep::default() };
        match self.land_step(task, LandEvent::Begin, &step).await {
            Ok(_) => Ok(true),
            Err(StoreError::Database(error)) if is_unique_violation(&error) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Records a step of a landing in progress (its move checked by `land_transition`).
    pub async fn land_step(
        &self,
        task: Uuid,
        event: LandEvent,
        step: &LandStep<'_>,
    ) -> Result<Landing> {
        let mut tx = self.write().await?;
        let current = landing_in(&mut tx, task).await?;
        let to = land_transition(current.as_ref().map(|l| l.state), event)?;
        let now = Timestamp::now();
        sqlx::query(
            r#"
            UPDATE landings SET state = ?2,
                old_head = coalesce(?3, old_head),
                new_head = CASE WHEN ?2 = 'landing' THEN NULL ELSE coalesce(?4, new_head) END,
                reason = ?5,
                verify_output = coalesce(?6, verify_output),
                restarts = restarts + (?7 = 'target_moved'),
                started_at = CASE WHEN ?7 = 'begin' THEN ?8 ELSE started_at END,
                landed_at = CASE WHEN ?2 = 'landed' THEN ?8 ELSE landed_at END,
                updated_at = ?8
            WHERE task_id = ?1
            "#,
        )
        .bind(task.hyphenated())
        .bind(to)
        .bind(step.old_head)
        .bind(step.new_head)
        .bind(step.reason)
        .bind(step.verify_output)
        .bind(event.name())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        touch_task(&mut tx, task).await?;
        let landing = landing_in(&mut tx, task).await?;
        tx.commit().await?;
        landing.ok_or_else(|| StoreError::TaskNotFound(task.to_string()))
    }

    /// Ends a landing as failed and gives its task a new attempt (or a decision, when its
    /// attempts are spent), in one transaction.
    pub async fn fail_landing(
        &self,
        task: Uuid,
        failure: &LandFailure,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        let current = landing_in(&mut tx, task).await?;
        let to = land_transition(current.as_ref().map(|l| l.state), LandEvent::Failed)?;
        let now = Timestamp::now();
        let conflicts = serde_json::to_string(&failure.conflicts)
            .map_err(|e| StoreError::Invalid { field: "conflicts", message: e.to_string() })?;
        sqlx::query(
            r#"
            UPDATE landings SET state = ?2, reason = ?3, conflicts = ?4, verify_output = ?5,
                new_head = NULL, old_head = ?6, updated_at = ?7
            WHERE task_id = ?1
            "#,
        )
        .bind(task.hyphenated())
        .bind(to)
        .bind(&failure.reason)
        .bind(conflicts)
        .bind(failure.output.as_deref())
        .bind(&failure.target_head)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let event = TaskEvent::LandFailed { class: failure.class, decide: failure.decide };
        apply_in_tx(&mut tx, task, event, &failure.reason, ACTOR, policy).await?;
        let loaded = load_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(loaded)
    }

    /// Records the pull request a landing opened (or found open) for the task's branch.
    pub async fn set_landing_pr(&self, task: Uuid, number: i64, url: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE landings SET pr_number = ?, pr_url = ?, updated_at = ? WHERE task_id = ?",
        )
        .bind(number)
        .bind(url)
        .bind(Timestamp::now())
        .bind(task.hyphenated())
        .execute(&mut *tx)
        .await?;
        touch_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records why a landing waits (the operator's tree is dirty), without a move.
    pub async fn note_landing(&self, task: Uuid, reason: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE landings SET reason = ?, updated_at = ? WHERE task_id = ?")
            .bind(reason)
            .bind(Timestamp::now())
            .bind(task.hyphenated())
            .execute(&mut *tx)
            .await?;
        touch_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes a queued task that no longer lands (it is not complete any more) out of its queue.
    pub async fn drop_landing(&self, task: Uuid, reason: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM landings WHERE task_id = ? AND state = 'land_queued'")
            .bind(task.hyphenated())
            .execute(&mut *tx)
            .await?;
        tracing::info!(task = %task, reason, "taken out of its land queue");
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the set of repositories with a landing policy (`repo` → target, auto), when it
    /// changed; `true` when it did.
    pub async fn set_land_policies(&self, policies: &[(String, String, bool)]) -> Result<bool> {
        let current: Vec<(String, String, bool)> =
            sqlx::query_as("SELECT repo, target, auto FROM land_policies ORDER BY repo")
                .fetch_all(&self.readers)
                .await?;
        let mut wanted = policies.to_vec();
        wanted.sort();
        if current == wanted {
            return Ok(false);
        }
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM land_policies").execute(&mut *tx).await?;
        let now = Timestamp::now();
        for (repo, target, auto) in &wanted {
            sqlx::query(
                "INSERT INTO land_policies (repo, target, auto, updated_at) VALUES (?, ?, ?, ?)",
            )
            .bind(repo)
            .bind(target)
            .bind(auto)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The task's landing, if it ever entered a land queue.
    pub async fn landing(&self, task: Uuid) -> Result<Option<Landing>> {
        let mut conn = self.readers.acquire().await?;
        landing_in(&mut conn, task).await
    }

    /// Every landing not yet landed (queued, in progress, failed), each queue in its order:
    /// in progress first, then by the time it was queued.
    pub async fn landings(&self) -> Result<Vec<Landing>> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {LANDING_COLUMNS} FROM landings
            WHERE state <> 'landed'
            ORDER BY repo, target, state NOT IN ('landing', 'merged', 'moved'), queued_at, task_id
            "#
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// What the task's next attempt is told about its last landing, when that failed after the
    /// attempt it carried (so that later attempts do not see an old failure again), or when the
    /// operator's retry gave the task a fresh budget (`attempts` 0) after it.
    pub async fn land_feedback(&self, task: Uuid, attempts: u32) -> Result<Option<Landing>> {
        Ok(self.landing(task).await?.filter(|l| {
            l.state == LandState::LandFailed && (l.attempt == attempts || attempts == 0)
        }))
    }

    /// Complete tasks with a repository that are in no land queue, oldest first, each with its
    /// repository and whether an earlier landing of it failed (such a task lands again once its
    /// new attempt is complete, whatever `auto` says). One query; no task is loaded.
    pub async fn unqueued_complete(&self) -> Result<Vec<(Uuid, String, bool)>> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            r#"
            SELECT t.id, t.repo, EXISTS (SELECT 1 FROM landings l WHERE l.task_id = t.id)
            FROM tasks t
            WHERE t.state = 'complete' AND t.repo IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM discarded_tasks d WHERE d.task_id = t.id)
              AND NOT EXISTS (SELECT 1 FROM landings l WHERE l.task_id = t.id
                              AND (l.state <> 'land_failed' OR l.attempt = t.attempts))
            ORDER BY t.updated_at, t.id
            "#,
        )
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|(id, repo, failed)| Ok((super::tasks::parse_id(&id)?, repo, failed)))
            .collect()
    }
}

/// A task whose work the operator dropped (`ccm task discard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Discarded {
    #[sqlx(try_from = "Hyphenated")]
    pub task_id: Uuid,
    pub reason: String,
    pub discarded_at: Timestamp,
}

pub(super) async fn discarded_in(
    conn: &mut sqlx::SqliteConnection,
    task: Uuid,
) -> Result<Option<Discarded>> {
    Ok(sqlx::query_as(
        "SELECT task_id, reason, discarded_at FROM discarded_tasks WHERE task_id = ?",
    )
    .bind(task.hyphenated())
    .fetch_optional(&mut *conn)
    .await?)
}

pub(super) async fn landing_in(
    conn: &mut sqlx::SqliteConnection,
    task: Uuid,
) -> Result<Option<Landing>> {
    Ok(sqlx::query_as(&format!("SELECT {LANDING_COLUMNS} FROM landings WHERE task_id = ?"))
        .bind(task.hyphenated())
        .fetch_optional(&mut *conn)
        .await?)
}

/// A landing's change is a change of its task for the dashboard and the central: a new version
/// of the task's summary (which carries its `land_state`), without a move of `tasks.state`.
async fn touch_task(tx: &mut Writing, task: Uuid) -> Result<()> {
    let now = Timestamp::now();
    sqlx::query("UPDATE tasks SET updated_at = ?, version = version + 1 WHERE id = ?")
        .bind(now)
        .bind(task.hyphenated())
        .execute(&mut **tx)
        .await?;
    let loaded = load_task(tx, task).await?;
    super::outbox_task(tx, &loaded, false).await
}

/// SQLite's `SQLITE_CONSTRAINT_UNIQUE` (2067): another landing holds the queue's lease.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    super::extended_code(error) == Some(2067)
}
