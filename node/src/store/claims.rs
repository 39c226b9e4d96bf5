//! Strict file ownership and the change requests it leaves: a task claims the files it writes;
//! a write to a file another active task (or a pre-assigned owner) holds is refused and
//! recorded as a change request, as is an agent's explicit `request_change`.
//!
//! A change request goes somewhere (issue 24): it is asked as a decision (kind
//! `change_request`, `approve` or `reject`); an approved one is forwarded by
//! [`Store::forward_change_requests`] (the runtime's pass) to the owner's next attempt, re-opening
//! a complete owner that has not landed, or to a new task owning the file; the attempt whose
//! prompt carried it ([`Store::begin_attempt`]) completing makes it `applied`. Every step is a
//! line in the requester's task log (and the owner's).

use ccm_schema::types::short_id;
use ccm_schema::{DecisionKind, LandState, Severity, Task, TaskEvent, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tasks::{ask_decision, log_note, raise_alert};
use super::{Result, RetryPolicy, Store, StoreError, Writing};
use crate::config::Config;

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

/// Where a change request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum ChangeState {
    /// Its decision waits.
    Pending,
    /// Approved: forwarded to the owner's next attempt or a new task (`forwarded_to`).
    Approved,
    /// The attempt that carried it completed.
    Applied,
    /// Refused; the resolution says why.
    Rejected,
    /// Ended without a decision: its owner or its requester ended (the file is free).
    Withdrawn,
}

impl ChangeState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Approved => "approved",
            ChangeState::Applied => "applied",
            ChangeState::Rejected => "rejected",
            ChangeState::Withdrawn => "withdrawn",
        }
    }

    /// Nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, ChangeState::Applied | ChangeState::Rejected | ChangeState::Withdrawn)
    }
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change asked of a file another task owns.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct ChangeRequest {
    pub id: String,
    pub repo: String,
    pub path: String,
    /// The owning task's id, or the workflow or task a glob pre-assigns the file to.
    pub owner: String,
    pub requester_task: String,
    /// The refused tool (`Write`, ...), or `request_change`.
    pub tool: Option<String>,
    pub created_at: Timestamp,
    /// When it reached a final state.
    pub resolved_at: Option<Timestamp>,
    /// What the requester is told: why it was rejected, withdrawn, or how it was applied.
    pub resolution: Option<String>,
    pub state: ChangeState,
    pub what: Option<String>,
    pub why: Option<String>,
    /// Its decision (kind `change_request`).
    pub decision_id: Option<String>,
    pub decided_by: Option<String>,
    /// The task it was forwarded to: the owner, or a new task owning the file.
    pub forwarded_to: Option<String>,
    /// The attempt of `forwarded_to` whose prompt carried it.
    pub delivered_attempt: Option<i64>,
    pub updated_at: Option<Timestamp>,
}

const CHANGE_COLUMNS: &str = "id, repo, path, owner, requester_task, tool, created_at, \
     resolved_at, resolution, state, what, why, decision_id, decided_by, forwarded_to, \
     delivered_attempt, updated_at";

/// Longest `what` or `why` of a change request, in bytes.
pub const CHANGE_TEXT_MAX_BYTES: usize = 16 * 1024;

/// Who owns a file a task wants to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nobody else: the write may go ahead (the file is now claimed by the task).
    Free,
    /// Another active task, or a pre-assigned owner; the reason names it and the change
    /// request it left.
    Taken { reason: String },
}

/// What an agent asks of a file it does not own (`request_change`).
#[derive(Debug, Clone)]
pub struct ChangeAsk<'a> {
    pub repo: &'a str,
    pub path: &'a str,
    pub preassigned: Option<&'a str>,
    pub what: &'a str,
    pub why: &'a str,
}

impl Store {
    /// Whether `task` may write `path` (relative to the repository `repo`); claims it when
    /// free. `preassigned` is the owner a glob of the project's config gives the path, if any.
    /// A refusal records a change request (one per requester and file while it is pending)
    /// with its decision.
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
        let ownership = match owner_of(&mut tx, task, repo, path, preassigned).await? {
            Some((owner, described)) => {
                let request = match open_request_of(&mut tx, task.id, repo, path).await? {
                    Some(open) => open,
                    None => {
                        let ask = NewRequest {
                            repo,
                            path,
                            owner: &owner,
                            tool,
                            what: None,
                            why: None,
                            actor: "hook",
                        };
                        insert_request(&mut tx, task, &ask, &described, now).await?
                    }
                };
                let reason = format!(
                    "{path} is {described}; change request {} was recorded ({}): the owner gets it once approved; the ccm tool wait_change with this id tells you its outcome",
                    request.id, request.state
                );
                // Visible, not only as the agent's tool error: the task may still end well.
                let message = format!(
                    "task {} ({}): {} of {path} denied: {reason}",
                    task.short_id(),
                    task.title,
                    tool.unwrap_or("a write")
                );
                let details = serde_json::json!({
                    "path": path, "owner": owner, "tool": tool,
                    "change_request": request.id, "decision": request.decision_id,
                });
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

    /// An agent's explicit change request of a file another task owns (or a glob
    /// pre-assigns): recorded with its decision. A file nobody else owns is refused: the
    /// agent may write it itself.
    pub async fn request_change(&self, task: &Task, ask: &ChangeAsk<'_>) -> Result<ChangeRequest> {
        for (field, text) in [("what", ask.what), ("why", ask.why)] {
            if text.trim().is_empty() {
                return Err(StoreError::Invalid { field, message: "must not be empty".into() });
            }
            if text.len() > CHANGE_TEXT_MAX_BYTES || text.contains('\0') {
                return Err(StoreError::Invalid {
                    field,
                    message: format!(
                        "must be text of at most {CHANGE_TEXT_MAX_BYTES} bytes without NUL"
                    ),
                });
            }
        }
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let Some((owner, described)) =
            owner_of(&mut tx, task, ask.repo, ask.path, ask.preassigned).await?
        else {
            return Err(StoreError::Invalid {
                field: "file",
                message: format!(
                    "no other active task owns {} (nor does a glob of .ccm/config.yaml pre-assign it): write it yourself; it becomes yours",
                    ask.path
                ),
            });
        };
        let new = NewRequest {
            repo: ask.repo,
            path: ask.path,
            owner: &owner,
            tool: Some("request_change"),
            what: Some(ask.what),
            why: Some(ask.why),
            actor: "agent",
        };
        let request = insert_request(&mut tx, task, &new, &described, now).await?;
        tx.commit().await?;
        Ok(request)
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
        Ok(sqlx::query_as(&format!(
            "SELECT {CHANGE_COLUMNS} FROM change_requests \
             ORDER BY resolved_at IS NOT NULL, created_at DESC"
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// One change request, by id or unique prefix.
    pub async fn change_request(&self, key: &str) -> Result<ChangeRequest> {
        let key = key.trim().to_ascii_lowercase();
        let found: Vec<ChangeRequest> = sqlx::query_as(&format!(
            "SELECT {CHANGE_COLUMNS} FROM change_requests \
             WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 2"
        ))
        .bind(&key)
        .fetch_all(&self.readers)
        .await?;
        match <[ChangeRequest; 1]>::try_from(found) {
            Ok([one]) if !key.is_empty() => Ok(one),
            Err(found) if found.len() > 1 => Err(StoreError::Invalid {
                field: "id",
                message: format!("change request id `{key}` is ambiguous"),
            }),
            _ => Err(StoreError::Invalid {
                field: "id",
                message: format!("no change request `{key}` (ccm claims lists them)"),
            }),
        }
    }

    /// The change requests a task made, oldest first.
    pub async fn change_requests_of(&self, task: Uuid) -> Result<Vec<ChangeRequest>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {CHANGE_COLUMNS} FROM change_requests WHERE requester_task = ? ORDER BY created_at"
        ))
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }

    /// The approved change requests forwarded to a task and not applied yet, oldest first:
    /// what its next attempt's prompt carries.
    pub async fn change_requests_for(&self, task: Uuid) -> Result<Vec<ChangeRequest>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {CHANGE_COLUMNS} FROM change_requests \
             WHERE forwarded_to = ? AND state = 'approved' ORDER BY created_at"
        ))
        .bind(task.hyphenated())
        .fetch_all(&self.readers)
        .await?)
    }

    /// The pending change requests the reviewer has not looked at yet (no supervisor run named
    /// `prefix` + their id), oldest first.
    pub async fn change_requests_to_review(&self, prefix: &str) -> Result<Vec<ChangeRequest>> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {CHANGE_COLUMNS} FROM change_requests c
            WHERE state = 'pending' AND NOT EXISTS (
                SELECT 1 FROM supervisor_runs r WHERE r.supervisor = ?1 || c.id)
            ORDER BY created_at LIMIT 10
            "#
        ))
        .bind(prefix)
        .fetch_all(&self.readers)
        .await?)
    }

    /// Forwards each approved change request that has nowhere to go yet: to its owner while the
    /// owner is active, or complete and not landing or landed (a complete owner re-opens with a
    /// new attempt); else to a new task owning the file, in the requester's repository. One
    /// transaction per request. Returns how many were forwarded.
    pub async fn forward_change_requests(
        &self,
        config: &Config,
        policy: RetryPolicy,
    ) -> Result<usize> {
        let waiting: Vec<ChangeRequest> = sqlx::query_as(&format!(
            "SELECT {CHANGE_COLUMNS} FROM change_requests \
             WHERE state = 'approved' AND forwarded_to IS NULL ORDER BY created_at"
        ))
        .fetch_all(&self.readers)
        .await?;
        let mut forwarded = 0;
        for request in waiting {
            let mut tx = self.write().await?;
            match forward(&mut tx, &request, config, policy).await {
                Ok(done) => {
                    tx.commit().await?;
                    forwarded += usize::from(done);
                }
                // It cannot go anywhere (the owner's profile is gone, its task cannot re-open):
                // rejected with why, so it is not tried on every pass.
                Err(
                    error @ (StoreError::Invalid { .. }
                    | StoreError::Transition(_)
                    | StoreError::TaskNotFound(_)),
                ) => {
                    drop(tx);
                    let mut tx = self.write().await?;
                    let why = format!("approved, but it cannot be forwarded: {error}");
                    set_state(
                        &mut tx,
                        &request.id,
                        ChangeState::Rejected,
                        Some(&why),
                        Timestamp::now(),
                    )
                    .await?;
                    let requester = super::tasks::parse_id(&request.requester_task)?;
                    let line = format!("change request {} rejected: {why}", &request.id[..8]);
                    log_note(&mut tx, requester, &line, "runtime").await?;
                    tx.commit().await?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(forwarded)
    }
}

/// The owner of `path` that refuses `task` a write, and how to describe it; `None` when the
/// file is free for it.
async fn owner_of(
    tx: &mut Writing,
    task: &Task,
    repo: &str,
    path: &str,
    preassigned: Option<&str>,
) -> Result<Option<(String, String)>> {
    let owner: Option<(String, String)> = sqlx::query_as(
        r#"
        SELECT c.task_id, t.title FROM file_claims c JOIN tasks t ON t.id = c.task_id
        WHERE c.repo = ? AND c.path = ? AND t.state NOT IN ('complete', 'failed', 'cancelled')
        "#,
    )
    .bind(repo)
    .bind(path)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match (owner, preassigned) {
        (Some((owner, title)), _) if owner != task.id.to_string() => {
            let described = format!("owned by task {} ({title})", &owner[..8.min(owner.len())]);
            Some((owner, described))
        }
        (None, Some(assigned)) => Some((
            assigned.to_string(),
            format!("pre-assigned to `{assigned}` in .ccm/config.yaml"),
        )),
        _ => None,
    })
}

/// The requester's pending request about a file, if any (a write refused again is the same
/// request).
async fn open_request_of(
    tx: &mut Writing,
    requester: Uuid,
    repo: &str,
    path: &str,
) -> Result<Option<ChangeRequest>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CHANGE_COLUMNS} FROM change_requests \
         WHERE requester_task = ? AND repo = ? AND path = ? AND state = 'pending' \
         ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(requester.hyphenated())
    .bind(repo)
    .bind(path)
    .fetch_optional(&mut **tx)
    .await?)
}

struct NewRequest<'a> {
    repo: &'a str,
    path: &'a str,
    owner: &'a str,
    tool: Option<&'a str>,
    what: Option<&'a str>,
    why: Option<&'a str>,
    /// Who asked, for the task log: `hook` (a refused write) or `agent` (`request_change`).
    actor: &'a str,
}

/// Records a change request with its decision and the requester's (and owner's) log lines.
async fn insert_request(
    tx: &mut Writing,
    requester: &Task,
    new: &NewRequest<'_>,
    described: &str,
    now: Timestamp,
) -> Result<ChangeRequest> {
    let id = Uuid::new_v4();
    let what = new.what.map_or_else(
        || format!("{} of {}", new.tool.unwrap_or("a write"), new.path),
        |w| crate::text::head(w, 300),
    );
    let question = format!(
        "task {} ({}) asks to change {} ({described}): {what}{}. Approve (forward it to the owner) or reject?",
        requester.short_id(),
        requester.title,
        new.path,
        new.why.map(|w| format!(" (why: {})", crate::text::head(w, 300))).unwrap_or_default(),
    );
    let decision =
        ask_decision(tx, requester.id, DecisionKind::ChangeRequest, &question, now).await?;
    let request: ChangeRequest = sqlx::query_as(&format!(
        r#"
        INSERT INTO change_requests
            (id, repo, path, owner, requester_task, tool, created_at, state, what, why, decision_id, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)
        RETURNING {CHANGE_COLUMNS}
        "#
    ))
    .bind(id.hyphenated())
    .bind(new.repo)
    .bind(new.path)
    .bind(new.owner)
    .bind(requester.id.hyphenated())
    .bind(new.tool)
    .bind(now)
    .bind(new.what)
    .bind(new.why)
    .bind(decision.id.hyphenated())
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    let line = format!(
        "change request {} of {} ({described}) waits for decision {}",
        short_id(&id),
        new.path,
        short_id(&decision.id)
    );
    log_note(tx, requester.id, &line, new.actor).await?;
    if let Ok(owner) = Uuid::parse_str(new.owner) {
        let line = format!(
            "task {} asks to change {} (change request {})",
            requester.short_id(),
            new.path,
            short_id(&id)
        );
        log_note(tx, owner, &line, new.actor).await?;
    }
    Ok(request)
}

/// Sets a change request's state (and, for a final one, its resolution and end).
async fn set_state(
    tx: &mut Writing,
    id: &str,
    state: ChangeState,
    resolution: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    sqlx::query(
        r#"
        UPDATE change_requests SET state = ?1, updated_at = ?3,
            resolution = coalesce(?2, resolution),
            resolved_at = CASE WHEN ?1 IN ('applied', 'rejected', 'withdrawn') THEN ?3 END
        WHERE id = ?4
        "#,
    )
    .bind(state)
    .bind(resolution)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The operator's (or the reviewer's) answer to a change request's decision, in the answer's
/// transaction: `approve` waits for [`Store::forward_change_requests`], `reject` ends it with
/// `note` (or who rejected it) as the reason.
pub(super) async fn decided(
    tx: &mut Writing,
    decision: Uuid,
    answer: &str,
    actor: &str,
    note: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    let request: Option<ChangeRequest> = sqlx::query_as(&format!(
        "SELECT {CHANGE_COLUMNS} FROM change_requests WHERE decision_id = ?"
    ))
    .bind(decision.hyphenated())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(request) = request else { return Ok(()) };
    if request.state != ChangeState::Pending {
        return Ok(());
    }
    sqlx::query("UPDATE change_requests SET decided_by = ? WHERE id = ?")
        .bind(actor)
        .bind(&request.id)
        .execute(&mut **tx)
        .await?;
    let requester = super::tasks::parse_id(&request.requester_task)?;
    let line = if answer == "approve" {
        let note = note.map(|n| format!(": {n}")).unwrap_or_default();
        set_state(tx, &request.id, ChangeState::Approved, None, now).await?;
        format!("change request {} approved by {actor}{note}", &request.id[..8])
    } else {
        let reason = note.map_or_else(|| format!("rejected by {actor}"), str::to_string);
        set_state(tx, &request.id, ChangeState::Rejected, Some(&reason), now).await?;
        format!("change request {} rejected by {actor}: {reason}", &request.id[..8])
    };
    log_note(tx, requester, &line, actor).await?;
    Ok(())
}

/// Forwards one approved request (see [`Store::forward_change_requests`]); false when it was
/// no longer waiting.
async fn forward(
    tx: &mut Writing,
    request: &ChangeRequest,
    config: &Config,
    policy: RetryPolicy,
) -> Result<bool> {
    let current: Option<(ChangeState, Option<String>)> =
        sqlx::query_as("SELECT state, forwarded_to FROM change_requests WHERE id = ?")
            .bind(&request.id)
            .fetch_optional(&mut **tx)
            .await?;
    if !matches!(current, Some((ChangeState::Approved, None))) {
        return Ok(false);
    }
    let now = Timestamp::now();
    let requester = super::tasks::parse_id(&request.requester_task)?;
    let owner = match Uuid::parse_str(&request.owner) {
        Ok(id) => super::tasks::load_task(tx, id).await.ok(),
        Err(_) => None,
    };
    let landing: Option<LandState> = match &owner {
        Some(owner) => {
            sqlx::query_scalar("SELECT state FROM landings WHERE task_id = ?")
                .bind(owner.id.hyphenated())
                .fetch_optional(&mut **tx)
                .await?
        }
        None => None,
    };
    let to_owner = owner.as_ref().filter(|o| match o.state {
        TaskState::Failed | TaskState::Cancelled => false,
        TaskState::Complete => matches!(landing, None | Some(LandState::LandQueued)),
        _ => true,
    });
    let (target, line) = if let Some(owner) = to_owner {
        if owner.state == TaskState::Complete {
            // Not landed: the owner re-opens; its next attempt applies the request.
            sqlx::query("DELETE FROM landings WHERE task_id = ? AND state = 'land_queued'")
                .bind(owner.id.hyphenated())
                .execute(&mut **tx)
                .await?;
            let reason = format!(
                "change request {} of task {} approved: a new attempt applies it",
                &request.id[..8],
                short_id(&requester)
            );
            super::tasks::apply_in_tx(tx, owner.id, TaskEvent::Reopen, &reason, "runtime", policy)
                .await?;
        } else {
            let line = format!(
                "change request {} of task {} approved: the next attempt applies it",
                &request.id[..8],
                short_id(&requester)
            );
            log_note(tx, owner.id, &line, "runtime").await?;
        }
        (owner.id, format!("forwarded to its owner, task {}", owner.short_id()))
    } else {
        let requester_task = super::tasks::load_task(tx, requester).await?;
        let why = match &owner {
            Some(o) => match landing {
                Some(state) if o.state == TaskState::Complete => {
                    format!("its owner {} is {}", o.short_id(), state.label())
                }
                _ => format!("its owner {} is {}", o.short_id(), o.state),
            },
            None => format!("{} is pre-assigned to `{}`", request.path, request.owner),
        };
        let new = crate::store::NewTask {
            title: format!(
                "Change request {}: {}",
                &request.id[..8],
                crate::text::head(&request.path, 200)
            ),
            prompt: Some(format!(
                "Apply this change to `{}` (a change request of task {}, approved; {why}).",
                request.path,
                short_id(&requester)
            )),
            repo: requester_task.repo.clone(),
            profile: Some(
                owner.as_ref().map_or(requester_task.profile.clone(), |o| o.profile.clone()),
            ),
            workflow: None,
            verify: owner.as_ref().and_then(|o| o.verify.clone()),
            max_attempts: None,
            priority: requester_task.priority,
            depends_on: Vec::new(),
            stack: false,
        };
        let task = super::tasks::create_in_tx(tx, Uuid::new_v4(), new, config, "runtime").await?;
        sqlx::query(
            r#"
            INSERT INTO file_claims (repo, path, task_id, claimed_at) VALUES (?, ?, ?, ?)
            ON CONFLICT (repo, path) DO UPDATE SET task_id = excluded.task_id, claimed_at = excluded.claimed_at
            "#,
        )
        .bind(&request.repo)
        .bind(&request.path)
        .bind(task.id.hyphenated())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        (task.id, format!("forwarded to a new task {} owning the file ({why})", task.short_id()))
    };
    sqlx::query("UPDATE change_requests SET forwarded_to = ?, updated_at = ? WHERE id = ?")
        .bind(target.hyphenated())
        .bind(now)
        .bind(&request.id)
        .execute(&mut **tx)
        .await?;
    log_note(tx, requester, &format!("change request {} {line}", &request.id[..8]), "runtime")
        .await?;
    Ok(true)
}

/// Marks the requests a new attempt's prompt carries as delivered to that attempt (in the
/// attempt's transaction).
pub(super) async fn delivered(
    tx: &mut Writing,
    task: Uuid,
    attempt: u32,
    ids: &[String],
) -> Result<()> {
    for id in ids {
        sqlx::query(
            "UPDATE change_requests SET delivered_attempt = ? WHERE id = ? AND forwarded_to = ? AND state = 'approved'",
        )
        .bind(attempt)
        .bind(id)
        .bind(task.hyphenated())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A task just completed (in the transition's transaction): the requests its attempts carried
/// are applied. Returns the reason to re-open it when requests forwarded to it were approved
/// after its last attempt began.
pub(super) async fn completed(
    tx: &mut Writing,
    task: Uuid,
    now: Timestamp,
) -> Result<Option<String>> {
    let forwarded: Vec<ChangeRequest> = sqlx::query_as(&format!(
        "SELECT {CHANGE_COLUMNS} FROM change_requests WHERE forwarded_to = ? AND state = 'approved'"
    ))
    .bind(task.hyphenated())
    .fetch_all(&mut **tx)
    .await?;
    let mut waiting = Vec::new();
    for request in forwarded {
        let Some(attempt) = request.delivered_attempt else {
            waiting.push(request.id[..8].to_string());
            continue;
        };
        let how = format!("applied by task {} (attempt {attempt})", short_id(&task));
        set_state(tx, &request.id, ChangeState::Applied, Some(&how), now).await?;
        let requester = super::tasks::parse_id(&request.requester_task)?;
        log_note(tx, requester, &format!("change request {} {how}", &request.id[..8]), "runtime")
            .await?;
    }
    Ok((!waiting.is_empty()).then(|| {
        format!("approved change request(s) {} came after its last attempt began: a new attempt applies them", waiting.join(", "))
    }))
}

/// Releases a finished task's claims. A task that failed or was cancelled withdraws the
/// pending requests to its files (the file is free), gives back the approved ones it owned and
/// did not apply (forwarded again, to a new task) and withdraws those a task made to apply
/// them did not; a cancelled requester withdraws its own pending ones.
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
    if state == TaskState::Complete {
        return Ok(());
    }
    let id = task.hyphenated().to_string();
    let withdrawn: Vec<ChangeRequest> = sqlx::query_as(&format!(
        r#"
        SELECT {CHANGE_COLUMNS} FROM change_requests
        WHERE state = 'pending' AND (owner = ?1 OR (requester_task = ?1 AND ?2 = 'cancelled'))
        "#
    ))
    .bind(&id)
    .bind(state)
    .fetch_all(&mut **tx)
    .await?;
    for request in withdrawn {
        let resolution = if request.owner == id {
            format!("owner {} is {state}; the file is free", short_id(&task))
        } else {
            format!("the requesting task {} is {state}", short_id(&task))
        };
        set_state(tx, &request.id, ChangeState::Withdrawn, Some(&resolution), now).await?;
        if let Some(decision) = &request.decision_id {
            let answered: Option<ccm_schema::Decision> = sqlx::query_as(&format!(
                r#"
                UPDATE decisions SET answer = 'withdrawn', answered_by = 'runtime', answered_at = ?
                WHERE id = ? AND answered_at IS NULL RETURNING {}
                "#,
                super::records::DECISION_COLUMNS
            ))
            .bind(now)
            .bind(decision)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(answered) = answered {
                let row = ccm_sync::outbox::DecisionRowV1::from(&answered);
                super::outbox(tx, &answered.id.to_string(), &row, false).await?;
                super::tasks::resolve_decision_alerts(tx, answered.id, now).await?;
            }
        }
        let requester = super::tasks::parse_id(&request.requester_task)?;
        if requester != task {
            let line = format!("change request {} withdrawn: {resolution}", &request.id[..8]);
            log_note(tx, requester, &line, "runtime").await?;
        }
    }
    // Approved but not applied by an owner that ended: forwarded again (to a new task); a
    // task made to apply it that ended so is the end of it.
    sqlx::query(
        "UPDATE change_requests SET forwarded_to = NULL, delivered_attempt = NULL, updated_at = ? \
         WHERE forwarded_to = ?2 AND owner = ?2 AND state = 'approved'",
    )
    .bind(now)
    .bind(&id)
    .execute(&mut **tx)
    .await?;
    let dropped: Vec<ChangeRequest> = sqlx::query_as(&format!(
        "SELECT {CHANGE_COLUMNS} FROM change_requests WHERE forwarded_to = ? AND state = 'approved'"
    ))
    .bind(&id)
    .fetch_all(&mut **tx)
    .await?;
    for request in dropped {
        let resolution = format!("task {} that was to apply it is {state}", short_id(&task));
        set_state(tx, &request.id, ChangeState::Withdrawn, Some(&resolution), now).await?;
        let requester = super::tasks::parse_id(&request.requester_task)?;
        let line = format!("change request {} withdrawn: {resolution}", &request.id[..8]);
        log_note(tx, requester, &line, "runtime").await?;
    }
    Ok(())
}
