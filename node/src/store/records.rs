//! Alerts, decisions, counts for status and metrics, backup and integrity checks.

use std::collections::BTreeMap;
use std::path::Path;

use ccm_schema::{Alert, Decision, DecisionKind, TaskEvent, TaskState};
use serde::{Deserialize, Serialize};

use super::tasks::apply_in_tx;
use super::{outbox, Result, RetryPolicy, Store, StoreError};

/// The columns of a [`Decision`], in its field order.
pub(super) const DECISION_COLUMNS: &str =
    "id, task_id, kind, question, options, answer, answered_by, created_at, answered_at";
/// The columns of an [`Alert`], in its field order.
pub(super) const ALERT_COLUMNS: &str =
    "id, task_id, severity, reason, message, details, created_at, resolved_at";

/// Number of tasks in each state (states with no task are absent).
pub type StateCounts = BTreeMap<TaskState, i64>;

/// Outbox rows by status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct OutboxCounts {
    pub pending: i64,
    pub delivered: i64,
    pub rejected: i64,
}

impl Store {
    /// Tasks per state, from the counts the task table's triggers keep.
    pub async fn state_counts(&self) -> Result<StateCounts> {
        let rows: Vec<(TaskState, i64)> =
            sqlx::query_as("SELECT state, n FROM task_state_counts WHERE n > 0")
                .fetch_all(&self.readers)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Outbox rows not yet delivered (`pending` or `sealed`), counted over the index that
    /// leads with the state (acknowledged rows are not read).
    pub async fn outbox_pending(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM outbox INDEXED BY outbox_by_lane WHERE state IN ('pending', 'sealed')",
        )
        .fetch_one(&self.readers)
        .await?)
    }

    pub async fn outbox_counts(&self) -> Result<OutboxCounts> {
        Ok(sqlx::query_as(
            r#"
            SELECT coalesce(sum(state IN ('pending', 'sealed')), 0) AS pending,
                   coalesce(sum(state = 'acked'), 0) AS delivered,
                   coalesce(sum(state = 'rejected'), 0) AS rejected
            FROM outbox
            "#,
        )
        .fetch_one(&self.readers)
        .await?)
    }

    /// Every alert (`all`) or the open ones, newest first.
    pub async fn alerts(&self, all: bool) -> Result<Vec<Alert>> {
        if !all {
            return self.open_alerts().await;
        }
        Ok(sqlx::query_as(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// Alerts not yet resolved, newest first.
    pub async fn open_alerts(&self) -> Result<Vec<Alert>> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {ALERT_COLUMNS}
            FROM alerts WHERE resolved_at IS NULL ORDER BY created_at DESC, id DESC
            "#
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// Decisions, pending ones first, newest first.
    pub async fn decisions(&self) -> Result<Vec<Decision>> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {DECISION_COLUMNS}
            FROM decisions ORDER BY answered_at IS NOT NULL, created_at DESC, id DESC
            "#
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// Answers a pending decision. For a blocked task, `retry` runs it again and `cancel`
    /// cancels it, in the same transaction.
    pub async fn answer_decision(
        &self,
        key: &str,
        answer: &str,
        actor: &str,
        policy: RetryPolicy,
    ) -> Result<Decision> {
        self.answer_decision_with(key, answer, actor, policy, None).await
    }

    /// [`Store::answer_decision`] with the answerer's words: a change request's rejection
    /// tells its requester `note` as the reason.
    pub async fn answer_decision_with(
        &self,
        key: &str,
        answer: &str,
        actor: &str,
        policy: RetryPolicy,
        note: Option<&str>,
    ) -> Result<Decision> {
        if let Some(note) = note {
            super::tasks::check_event_reason(note)?;
        }
        let invalid = |message: String| StoreError::Invalid { field: "decision", message };
        let key = key.trim().to_ascii_lowercase();
        let mut tx = self.write().await?;
        let found: Vec<Decision> = sqlx::query_as(&format!(
            r#"
            SELECT {DECISION_COLUMNS}
            FROM decisions WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 2
            "#
        ))
        .bind(&key)
        .fetch_all(&mut *tx)
        .await?;
        let decision = match <[Decision; 1]>::try_from(found) {
            Ok([decision]) if !key.is_empty() => decision,
            Err(found) if found.len() > 1 => {
                return Err(invalid(format!("decision id `{key}` is ambiguous")))
            }
            _ if key.is_empty() => return Err(StoreError::DecisionNotFound(key)),
            // A task id (or prefix) names the one decision its task waits for.
            _ => {
                let pending: Vec<Decision> = sqlx::query_as(&format!(
                    r#"
                    SELECT {DECISION_COLUMNS}
                    FROM decisions
                    WHERE task_id >= ?1 AND task_id < ?1 || 'g' AND answered_at IS NULL
                    ORDER BY created_at, id LIMIT 11
                    "#
                ))
                .bind(&key)
                .fetch_all(&mut *tx)
                .await?;
                match <[Decision; 1]>::try_from(pending) {
                    Ok([decision]) => decision,
                    Err(pending) if pending.is_empty() => {
                        return Err(StoreError::DecisionNotFound(key))
                    }
                    Err(pending) => {
                        let ids: Vec<String> =
                            pending.iter().map(|d| ccm_schema::types::short_id(&d.id)).collect();
                        return Err(invalid(format!(
                            "`{key}` has {} pending decisions; answer one by its id: {}",
                            pending.len(),
                            ids.join(", ")
                        )));
                    }
                }
            }
        };
        if let Some(given) = &decision.answer {
            return Err(invalid(format!(
                "decision {key} was already answered `{given}` by {}",
                decision.answered_by.as_deref().unwrap_or("someone")
            )));
        }
        if !decision.options.0.iter().any(|o| o == answer) {
            return Err(StoreError::Invalid {
                field: "answer",
                message: format!(
                    "`{answer}` is not an option; answer one of: {}",
                    decision.options.0.join(", ")
                ),
            });
        }
        let now = ccm_schema::Timestamp::now();
        let task = decision.task_id.as_deref().map(super::tasks::parse_id).transpose()?;
        match (decision.kind, task) {
            (DecisionKind::RetryOrCancel, Some(task)) => {
                // Leaving `blocked` answers the task's pending retry-or-cancel decisions.
                let event = if answer == "retry" { TaskEvent::Retry } else { TaskEvent::Cancel };
                let reason = format!("decision answered `{answer}` by {actor}");
                apply_in_tx(&mut tx, task, event, &reason, actor, policy).await?;
            }
            (kind, _) => {
                sqlx::query("UPDATE decisions SET answer = ?, answered_by = ?, answered_at = ? WHERE id = ?")
                    .bind(answer)
                    .bind(actor)
                    .bind(now)
                    .bind(decision.id.hyphenated())
                    .execute(&mut *tx)
                    .await?;
                super::tasks::resolve_decision_alerts(&mut tx, decision.id, now).await?;
                if kind == DecisionKind::ChangeRequest {
                    super::claims::decided(&mut tx, decision.id, answer, actor, note, now).await?;
                }
                if kind == DecisionKind::CostCap {
                    super::cost_caps::decided(&mut tx, decision.id, answer, actor, now).await?;
                }
            }
        }
        let answered: Decision =
            sqlx::query_as(&format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?"))
                .bind(decision.id.hyphenated())
                .fetch_one(&mut *tx)
                .await?;
        let row = ccm_sync::outbox::DecisionRowV1::from(&answered);
        outbox(&mut tx, &answered.id.to_string(), &row, false).await?;
        tx.commit().await?;
        Ok(answered)
    }

    /// `PRAGMA integrity_check`: `ok`, or the problems SQLite found. The check reads every page
    /// once; the reader gives back the page cache it filled (up to its cap, kept otherwise for as
    /// long as the daemon runs).
    pub async fn integrity_check(&self) -> Result<String> {
        let mut reader = self.readers.acquire().await?;
        let rows: Vec<(String,)> =
            sqlx::query_as("PRAGMA integrity_check").fetch_all(&mut *reader).await?;
        sqlx::query("PRAGMA shrink_memory").execute(&mut *reader).await?;
        super::release_freed_memory();
        Ok(rows.into_iter().map(|(line,)| line).collect::<Vec<_>>().join("\n"))
    }

    /// Writes a consistent copy of the database to `dest` (`VACUUM INTO`: a read transaction,
    /// so writers go on meanwhile). Refuses to overwrite an existing file.
    pub async fn backup(&self, dest: &Path) -> Result<()> {
        let error = |message: String| StoreError::Backup { path: dest.to_path_buf(), message };
        if dest.exists() {
            return Err(error("the file already exists; choose a new name".into()));
        }
        let dest_str = dest.to_str().ok_or_else(|| error("the path is not valid UTF-8".into()))?;
        let mut conn = self.writer_free_connection().await?;
        sqlx::query("VACUUM INTO ?")
            .bind(dest_str)
            .execute(&mut conn)
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(())
    }

    /// A connection of its own, read-write, apart from the readers and the writer (`VACUUM INTO`
    /// needs one that is not read-only, and must not hold up this process's writer).
    async fn writer_free_connection(&self) -> Result<sqlx::SqliteConnection> {
        use sqlx::ConnectOptions;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&self.path)
            .busy_timeout(super::BUSY_TIMEOUT);
        Ok(options.connect().await?)
    }
}
