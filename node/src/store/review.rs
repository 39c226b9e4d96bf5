//! Review with line comments (issue 23): the operator's comments on lines of a finished task's
//! diff, and "request changes", which sends the pending ones to the task's next attempt
//! (migration `20261209030000_review_comments.sql`).
//!
//! Whether a line is in the diff is checked by the caller (`crate::review`, which runs git);
//! the store checks that the task may be reviewed: it is `complete` or `alert`, its work was
//! not discarded, and it is not landing or landed.

use ccm_schema::{LandState, Task, TaskEvent, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::types::uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::land::{discarded_in, landing_in};
use super::tasks::{apply_in_tx, load_task, resolve_task};
use super::{Result, RetryPolicy, Store, StoreError};

/// The longest comment kept (bytes): it goes into an agent's prompt.
pub const COMMENT_MAX_BYTES: usize = 8 * 1024;

/// A comment to add: a line of the branch's version of `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewComment {
    pub file: String,
    pub line: u32,
    pub text: String,
}

/// A stored comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ReviewComment {
    pub id: i64,
    #[sqlx(try_from = "Hyphenated")]
    pub task_id: Uuid,
    pub file: String,
    pub line: u32,
    pub text: String,
    pub created_at: Timestamp,
    /// `cli`, `api` or `dashboard`.
    pub created_by: String,
    /// When "request changes" sent it to an attempt; `None` while it waits.
    pub requested_at: Option<Timestamp>,
    /// The attempt that answers it.
    pub for_attempt: Option<u32>,
}

const COMMENT_COLUMNS: &str =
    "id, task_id, file, line, text, created_at, created_by, requested_at, for_attempt";

impl Store {
    /// Adds comments on the task's diff (their lines already checked against it).
    pub async fn add_review_comments(
        &self,
        task: &str,
        comments: &[NewComment],
        by: &str,
    ) -> Result<Vec<ReviewComment>> {
        let mut tx = self.write().await?;
        let id = resolve_task(&mut tx, task).await?;
        reviewable(&mut tx, id).await?;
        let now = Timestamp::now();
        let mut added = Vec::with_capacity(comments.len());
        for comment in comments {
            check_comment(comment)?;
            let row: ReviewComment = sqlx::query_as(&format!(
                r#"
                INSERT INTO review_comments (task_id, file, line, text, created_at, created_by)
                VALUES (?, ?, ?, ?, ?, ?)
                RETURNING {COMMENT_COLUMNS}
                "#
            ))
            .bind(id.hyphenated())
            .bind(&comment.file)
            .bind(comment.line)
            .bind(comment.text.trim())
            .bind(now)
            .bind(by)
            .fetch_one(&mut *tx)
            .await?;
            added.push(row);
        }
        tx.commit().await?;
        Ok(added)
    }

    /// "Request changes": the task's pending comments go to its next attempt, which starts
    /// (`changes_requested`: back to `created`, one attempt more, so it is not counted as a
    /// failure); a queued or failed landing leaves its queue. Refused without a pending
    /// comment. One transaction; the move's log line names the comments.
    pub async fn request_changes(
        &self,
        task: &str,
        by: &str,
        policy: RetryPolicy,
    ) -> Result<(Task, Vec<ReviewComment>)> {
        let mut tx = self.write().await?;
        let id = resolve_task(&mut tx, task).await?;
        let loaded = reviewable(&mut tx, id).await?;
        let now = Timestamp::now();
        let sent: Vec<ReviewComment> = sqlx::query_as(&format!(
            r#"
            UPDATE review_comments SET requested_at = ?, for_attempt = ?
            WHERE task_id = ? AND requested_at IS NULL
            RETURNING {COMMENT_COLUMNS}
            "#
        ))
        .bind(now)
        .bind(loaded.attempts + 1)
        .bind(id.hyphenated())
        .fetch_all(&mut *tx)
        .await?;
        if sent.is_empty() {
            return Err(StoreError::Invalid {
                field: "comments",
                message: format!(
                    "task {} has no pending review comment: add one (FILE:LINE and its text) before requesting changes",
                    loaded.short_id()
                ),
            });
        }
        sqlx::query("DELETE FROM landings WHERE task_id = ?")
            .bind(id.hyphenated())
            .execute(&mut *tx)
            .await?;
        let mut sent = sent;
        sent.sort_by_key(|c| c.id);
        // The log line is the review's record: each comment's place and (the start of) its text.
        let comments: Vec<String> = sent
            .iter()
            .map(|c| format!("{}:{} \"{}\"", c.file, c.line, crate::text::head(&c.text, 200)))
            .collect();
        let reason = format!(
            "changes requested in review ({} comment{}: {}); attempt {} answers them and does not count against the budget",
            sent.len(),
            if sent.len() == 1 { "" } else { "s" },
            comments.join("; "),
            loaded.attempts + 1,
        );
        apply_in_tx(&mut tx, id, TaskEvent::ChangesRequested, &reason, by, policy).await?;
        let task = load_task(&mut tx, id).await?;
        tx.commit().await?;
        Ok((task, sent))
    }

    /// The task, when its diff may be reviewed (else why not), read before its diff is.
    pub async fn reviewable(&self, task: &str) -> Result<Task> {
        let mut conn = self.readers.acquire().await?;
        let id = resolve_task(&mut conn, task).await?;
        reviewable(&mut conn, id).await
    }

    /// Every review comment of the task, oldest first (pending ones and those sent).
    pub async fn review_comments(&self, task: Uuid) -> Result<Vec<ReviewComment>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COMMENT_COLUMNS} FROM review_comments WHERE task_id = ? ORDER BY id"
        ))
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }

    /// The comments an attempt starting now answers: those of the task's latest "request
    /// changes", until the task completes again (so a retry after a failed attempt sees them
    /// too).
    pub async fn review_feedback(&self, task: Uuid) -> Result<Vec<ReviewComment>> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {COMMENT_COLUMNS} FROM review_comments c
            WHERE c.task_id = ?1
              AND c.requested_at = (SELECT max(requested_at) FROM review_comments WHERE task_id = ?1)
              AND NOT EXISTS (SELECT 1 FROM task_log l
                              WHERE l.task_id = ?1 AND l.to_state = 'complete'
                                AND l.at > c.requested_at)
            ORDER BY c.file, c.line, c.id
            "#
        ))
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }
}

/// The task, when its diff may be reviewed: finished (`complete`, or `alert` after its
/// supervisory review), its work not discarded, not landing or landed.
async fn reviewable(conn: &mut sqlx::SqliteConnection, id: Uuid) -> Result<Task> {
    let task = load_task(conn, id).await?;
    let refuse = |message: String| StoreError::Invalid { field: "task", message };
    if !matches!(task.state, TaskState::Complete | TaskState::Alert) {
        return Err(refuse(format!(
            "task {} is {}: only a finished task's diff is reviewed (complete, or alert after its supervisory review)",
            task.short_id(),
            task.state
        )));
    }
    if discarded_in(conn, id).await?.is_some() {
        return Err(refuse(format!(
            "task {} was discarded: its work is not reviewed",
            task.short_id()
        )));
    }
    if let Some(landing) = landing_in(conn, id).await? {
        if landing.state == LandState::Landed || landing.state.in_progress() {
            return Err(refuse(format!(
                "task {} is {}: its work is on the target, or about to be",
                task.short_id(),
                landing.state.label()
            )));
        }
    }
    Ok(task)
}

fn check_comment(comment: &NewComment) -> Result<()> {
    let invalid = |field: &'static str, message: String| StoreError::Invalid { field, message };
    if comment.file.trim().is_empty() {
        return Err(invalid("file", "a comment needs the file it is about".into()));
    }
    if comment.line == 0 {
        return Err(invalid("line", format!("{}: lines are counted from 1", comment.file)));
    }
    if comment.text.trim().is_empty() {
        return Err(invalid(
            "text",
            format!("the comment on {}:{} is empty", comment.file, comment.line),
        ));
    }
    if comment.text.len() > COMMENT_MAX_BYTES || comment.text.contains('\0') {
        return Err(invalid(
            "text",
            format!(
                "the comment on {}:{} must be text of at most {COMMENT_MAX_BYTES} bytes without NUL",
                comment.file, comment.line
            ),
        ));
    }
    Ok(())
}
