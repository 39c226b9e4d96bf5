//! Strict file ownership: a task claims the files it writes; a write to a file another active
//! task (or a pre-assigned owner) holds is refused and recorded as a change request, resolved
//! when the owner finishes.

use ccm_schema::types::short_id;
use ccm_schema::{Severity, Task, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tasks::raise_alert;
use super::{Result, Store, Writing};

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

impl Store {
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
                // Visible, not only as the agent's tool error: the task may still end well.
                let message = format!(
                    "task {} ({}): {} of {path} denied: {reason}",
                    task.short_id(),
                    task.title,
                    tool.unwrap_or("a write")
                );
                let details = serde_json::json!({ "path": path, "owner": owner, "tool": tool });
                raise_alert(
                    &mut tx,
                    Some(task.id),
                    Severity::Warning,
                    "write_denied",
                    &message,
                    Some(details),
                    now,
                )
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

    /// The change requests a task's refused writes left, oldest first.
    pub async fn change_requests_of(&self, task: Uuid) -> Result<Vec<ChangeRequest>> {
        Ok(sqlx::query_as(
            r#"
            SELECT id, repo, path, owner, requester_task, tool, created_at, resolved_at, resolution
            FROM change_requests WHERE requester_task = ? ORDER BY created_at
            "#,
        )
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }
}

/// Releases a finished task's claims and resolves the change requests that waited for it.
pub(super) async fn release_claims(
    tx: &mut Writing,
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
