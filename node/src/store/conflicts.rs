//! The rows of conflict prediction (`node/src/conflicts/`): the active tasks and what their
//! agents wrote, the files each task touched (shipped in its summary), and each repository's
//! newest prediction with its alerts (`conflict_predicted`, one per pair, resolved when the
//! pair no longer conflicts).

use ccm_schema::{Severity, TaskState, Timestamp};
use uuid::Uuid;

use super::records::ALERT_COLUMNS;
use super::{Result, Store, StoreError};
use crate::conflicts::PredictedConflict;

/// The reason of a predicted conflict's alert.
pub const CONFLICT_ALERT: &str = "conflict_predicted";

/// An active task of a repository, with what its agents wrote and where they worked.
#[derive(Debug, Clone)]
pub struct ActiveRow {
    pub id: Uuid,
    pub title: String,
    pub state: TaskState,
    pub repo: String,
    /// Paths the hook events of its agents wrote, as the events named them.
    pub written: Vec<String>,
    /// The working directories of its agents (its worktree), to make those paths relative.
    pub cwds: Vec<String>,
}

impl Store {
    /// The tasks with a repository that are active (see `conflicts::Phase::of`), with the
    /// files their agents wrote and the directories they worked in.
    pub async fn active_tasks(&self) -> Result<Vec<ActiveRow>> {
        // A landed task is on its target, a discarded one's work is dropped: neither conflicts.
        const ACTIVE: &str =
            "repo IS NOT NULL AND state NOT IN ('created', 'failed', 'cancelled') \
            AND id NOT IN (SELECT task_id FROM landings WHERE state = 'landed') \
            AND id NOT IN (SELECT task_id FROM discarded_tasks)";
        let mut conn = self.readers.acquire().await?;
        let rows: Vec<(String, String, TaskState, String)> = sqlx::query_as(&format!(
            r#"
            SELECT id, title, state, repo FROM tasks WHERE {ACTIVE} ORDER BY created_at, id
            "#
        ))
        .fetch_all(&mut *conn)
        .await?;
        let written: Vec<(String, String)> = sqlx::query_as(&format!(
            r#"
            SELECT f.task_id, f.path FROM task_files f
            WHERE f.task_id IN (SELECT id FROM tasks WHERE {ACTIVE}) ORDER BY f.task_id, f.path
            "#
        ))
        .fetch_all(&mut *conn)
        .await?;
        let cwds: Vec<(String, String)> = sqlx::query_as(&format!(
            r#"
            SELECT DISTINCT a.task_id, a.cwd FROM agents a
            WHERE a.task_id IN (SELECT id FROM tasks WHERE {ACTIVE})
            "#
        ))
        .fetch_all(&mut *conn)
        .await?;
        drop(conn);
        let mut by_task: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
            std::collections::HashMap::new();
        for (task, path) in written {
            by_task.entry(task).or_default().0.push(path);
        }
        for (task, cwd) in cwds {
            by_task.entry(task).or_default().1.push(cwd);
        }
        let mut out = Vec::with_capacity(rows.len());
        for (id, title, state, repo) in rows {
            if crate::conflicts::Phase::of(state).is_none() {
                continue;
            }
            let (written, cwds) = by_task.remove(&id).unwrap_or_default();
            let id = super::tasks::parse_id(&id)?;
            out.push(ActiveRow { id, title, state, repo, written, cwds });
        }
        Ok(out)
    }

    /// Records the files tasks touched (`(task, repo, files)`, files sorted); a task whose
    /// set changed gets a new summary version, so the central (and the other systems'
    /// predictions) learn it. Returns how many changed.
    pub async fn save_touched(&self, touched: &[(Uuid, String, Vec<String>)]) -> Result<usize> {
        let mut changed = Vec::new();
        for (task, repo, files) in touched {
            let files = json(files)?;
            let stored: Option<String> =
                sqlx::query_scalar("SELECT files FROM task_touched WHERE task_id = ?")
                    .bind(task.hyphenated())
                    .fetch_optional(&self.readers)
                    .await?;
            if stored.as_deref() != Some(files.as_str()) {
                changed.push((*task, repo, files));
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        for (task, repo, files) in &changed {
            sqlx::query(
                r#"
                INSERT INTO task_touched (task_id, repo, files, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (task_id) DO UPDATE
                SET repo = excluded.repo, files = excluded.files, updated_at = excluded.updated_at
                "#,
            )
            .bind(task.hyphenated())
            .bind(repo)
            .bind(files)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            super::tasks::touch(&mut tx, *task, now).await?;
            let task = super::tasks::load_task(&mut tx, *task).await?;
            super::outbox_task(&mut tx, &task, false).await?;
        }
        tx.commit().await?;
        Ok(changed.len())
    }

    /// Records a repository's prediction, when it changed: raises one `conflict_predicted`
    /// alert per pair not alerted yet, and resolves those of pairs that no longer conflict.
    pub async fn record_conflicts(
        &self,
        repo: &str,
        conflicts: &[PredictedConflict],
    ) -> Result<bool> {
        let text = json(conflicts)?;
        let stored: Option<String> =
            sqlx::query_scalar("SELECT conflicts FROM conflict_predictions WHERE repo = ?")
                .bind(repo)
                .fetch_optional(&self.readers)
                .await?;
        if stored.as_deref() == Some(text.as_str()) || (stored.is_none() && conflicts.is_empty()) {
            return Ok(false);
        }
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            INSERT INTO conflict_predictions (repo, conflicts, predicted_at) VALUES (?, ?, ?)
            ON CONFLICT (repo) DO UPDATE SET conflicts = excluded.conflicts, predicted_at = excluded.predicted_at
            "#,
        )
        .bind(repo)
        .bind(&text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let keys: Vec<String> = conflicts.iter().map(PredictedConflict::pair_key).collect();
        let resolved: Vec<ccm_schema::Alert> = sqlx::query_as(&format!(
            r#"
            UPDATE alerts SET resolved_at = ?
            WHERE resolved_at IS NULL AND reason = ? AND json_extract(details, '$.repo') = ?
              AND coalesce(json_extract(details, '$.conflict'), '') NOT IN (SELECT value FROM json_each(?))
            RETURNING {ALERT_COLUMNS}
            "#
        ))
        .bind(now)
        .bind(CONFLICT_ALERT)
        .bind(repo)
        .bind(json(&keys)?)
        .fetch_all(&mut *tx)
        .await?;
        for alert in &resolved {
            super::outbox_alert(&mut tx, alert, false).await?;
        }
        for (conflict, key) in conflicts.iter().zip(&keys) {
            let (open,): (bool,) = sqlx::query_as(
                r#"
                SELECT EXISTS (SELECT 1 FROM alerts WHERE resolved_at IS NULL AND reason = ?
                    AND json_extract(details, '$.conflict') = ?)
                "#,
            )
            .bind(CONFLICT_ALERT)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
            if open {
                continue;
            }
            // About this system's task: a running one first.
            let ours = [Some(&conflict.task), conflict.other.as_ref()];
            let ours = ours.iter().flatten().filter(|t| t.system.is_none());
            let subject = ours
                .clone()
                .find(|t| running(&t.state))
                .or_else(|| ours.clone().next())
                .copied()
                .unwrap_or(&conflict.task);
            let task = super::tasks::parse_id(&subject.task_id)?;
            let message = format!(
                "task {} ({}) {}",
                subject.short_id,
                subject.title,
                conflict.describe_from(&subject.task_id)
            );
            let details = serde_json::json!({
                "conflict": key, "repo": repo, "kind": conflict.kind, "files": conflict.files,
                "tasks": [&conflict.task.task_id, conflict.other.as_ref().map(|o| &o.task_id)],
            });
            super::tasks::raise_alert(
                &mut tx,
                Some(task),
                Severity::Warning,
                CONFLICT_ALERT,
                &message,
                Some(details),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The newest recorded prediction of a repository (empty when there is none).
    pub async fn conflicts_of_repo(&self, repo: &str) -> Result<Vec<PredictedConflict>> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT conflicts FROM conflict_predictions WHERE repo = ?")
                .bind(repo)
                .fetch_optional(&self.readers)
                .await?;
        stored.map_or(Ok(Vec::new()), |text| parse(&text))
    }

    /// Every repository's newest recorded prediction.
    pub async fn all_conflicts(&self) -> Result<Vec<(String, Vec<PredictedConflict>)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT repo, conflicts FROM conflict_predictions ORDER BY repo")
                .fetch_all(&self.readers)
                .await?;
        rows.into_iter().map(|(repo, text)| Ok((repo, parse(&text)?))).collect()
    }

    /// The recorded conflicts that involve the task `id`.
    pub async fn conflicts_of_task(
        &self,
        id: Uuid,
        repo: Option<&str>,
    ) -> Result<Vec<PredictedConflict>> {
        let Some(repo) = repo else { return Ok(Vec::new()) };
        let id = id.to_string();
        Ok(self.conflicts_of_repo(repo).await?.into_iter().filter(|c| c.involves(&id)).collect())
    }

    /// The files the task touched, as last recorded (for its summary).
    pub async fn touched_files(&self, id: Uuid) -> Result<Vec<String>> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT files FROM task_touched WHERE task_id = ?")
                .bind(id.hyphenated())
                .fetch_optional(&self.readers)
                .await?;
        stored.map_or(Ok(Vec::new()), |text| parse(&text))
    }
}

/// Whether a task in the state named `state` runs (an agent may still change its work).
fn running(state: &str) -> bool {
    state.parse::<TaskState>().ok().and_then(crate::conflicts::Phase::of)
        == Some(crate::conflicts::Phase::Running)
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Invalid { field: "conflicts", message: e.to_string() })
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid { field: "conflicts", message: e.to_string() })
}
