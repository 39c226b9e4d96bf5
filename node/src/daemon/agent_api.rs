//! The API an agent calls as itself (through `ccm mcp`, or any HTTP client), authenticated by
//! its own credential (`CCM_AGENT_TOKEN` in `X-Ccm-Agent-Token`, or as the bearer token), not
//! by the operator's API token. Everything acts within the calling agent's task: its
//! sub-tasks, its locks, its allocations.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/agent/whoami` | `{"task", "agent", "title"}` |
//! | `POST /api/agent/subtasks` `{"title", "prompt", "verify", "owns", "depends_on", "profile"}` | a sub-task of the caller's task, in its repository, placed like any task; 201 |
//! | `GET /api/agent/subtasks` | the caller's sub-tasks (a tree) |
//! | `POST /api/agent/subtasks/wait` `{"ids", "timeout_secs"}` | waits until those (or all) sub-tasks ended, or the timeout: `{"done", "subtasks"}` |
//! | `POST /api/agent/locks/{name}` `{"ttl_secs", "wait_secs", "scope"}` | takes (or renews) a named lock of this node (`scope: "node"`, the default) or of the fleet (`"fleet"`, through the central when sync is on): `{"name", "fence", "expires_at", "scope"}`; 409 `lock_held` after `wait_secs` |
//! | `DELETE /api/agent/locks/{name}` | releases it |
//! | `POST /api/agent/allocations` `{"sequence"}` | the next value of a sequence of the task's repository |
//! | `POST /api/agent/allocations/release` `{"sequence", "value"}` | gives a value back |
//! | `POST /api/agent/changes` `{"file", "what", "why"}` | a change request of a file another task owns, with its decision; 201 with the request |
//! | `GET /api/agent/changes` | the change requests the caller's task made |
//! | `POST /api/agent/changes/{id}/wait` `{"timeout_secs"}` | waits until one of them is `applied`, `rejected` or `withdrawn`, or the timeout: `{"id", "state", "reason", "final", ...}` |
//!
//! A request without a credential, with one no live agent holds (ended agents' credentials are
//! revoked), or with `X-Ccm-Task-Id` naming another task than the credential's, is refused
//! (401 or 403) with a message saying which.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ccm_schema::types::short_id;
use ccm_schema::{Task, TaskState};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::ApiJson;
use super::error::ApiError;
use super::AppState;
use crate::placement::Added;
use crate::store::{
    AgentIdentity, ChangeAsk, ChangeRequest, LockHolder, LockScope, NewTask, Subtask, SubtaskLimits,
};

/// The header carrying the agent's credential (as with hook events).
pub const AGENT_TOKEN_HEADER: &str = "x-ccm-agent-token";
/// The header naming the task the caller believes it works for (`CCM_TASK_ID`).
pub const TASK_HEADER: &str = "x-ccm-task-id";
/// Longest lease of a named lock.
const MAX_TTL_SECS: u64 = 24 * 3600;
/// How often a waiting call looks again, at most (a commit wakes it sooner).
const POLL: Duration = Duration::from_millis(250);

/// Serializes sub-task creation, so that a parent's count and its limit are read and acted on
/// by one request at a time.
static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/agent/whoami", get(whoami))
        .route("/api/agent/subtasks", get(list_subtasks).post(create_subtask))
        .route("/api/agent/subtasks/wait", post(wait_subtasks))
        .route("/api/agent/locks/{name}", post(lock).delete(unlock))
        .route("/api/agent/allocations", post(allocate))
        .route("/api/agent/allocations/release", post(release_allocation))
        .route("/api/agent/changes", get(list_changes).post(request_change))
        .route("/api/agent/changes/{id}/wait", post(wait_change))
}

/// The calling agent, from its credential; refuses any other caller.
struct Caller {
    agent: AgentIdentity,
    task: Task,
}

/// The calling agent and its task's row.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let agent = identity(state, headers).await?;
    let task = state.store.task_row(agent.task_id).await?;
    Ok(Caller { agent, task })
}

/// The calling agent, from its credential (one read); refuses any other caller.
async fn identity(state: &AppState, headers: &HeaderMap) -> Result<AgentIdentity, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let token = header(AGENT_TOKEN_HEADER)
        .filter(|t| !t.is_empty())
        .or_else(|| header("authorization").and_then(|h| h.strip_prefix("Bearer ")))
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ApiError::Unauthenticated(
            "no agent credential: ccm's agent tools work only for an agent ccm started (CCM_AGENT_TOKEN is not set)".into(),
        ));
    };
    let Some(agent) = state.store.agent_by_token(token).await? else {
        return Err(ApiError::Unauthenticated(
            "the agent credential is not a live agent's (its agent ended, or it was never issued): ccm's agent tools are refused".into(),
        ));
    };
    if let Some(claimed) = header(TASK_HEADER).filter(|t| !t.is_empty()) {
        let own = agent.task_id.hyphenated().to_string();
        if !own.starts_with(claimed) && claimed != agent.task_id.simple().to_string() {
            return Err(ApiError::Forbidden(format!(
                "the agent credential belongs to task {}, not to task {claimed} (CCM_TASK_ID): refused",
                short_id(&agent.task_id)
            )));
        }
    }
    Ok(agent)
}

async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&state, &headers).await?;
    Ok(Json(json!({
        "task": caller.task.id,
        "agent": caller.agent.agent_id,
        "title": caller.task.title,
        "parent": state.store.parent_of(caller.task.id).await?,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubtask {
    title: String,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    verify: Option<String>,
    /// Files (relative to the repository) the sub-task will own: claimed for it at once.
    #[serde(default)]
    owns: Vec<String>,
    /// Ids (or unique prefixes) of sibling sub-tasks it waits for.
    #[serde(default)]
    depends_on: Vec<String>,
    /// The agent profile; the parent's when omitted.
    #[serde(default)]
    profile: Option<String>,
}

async fn create_subtask(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewSubtask>,
) -> Result<Response, ApiError> {
    let caller = caller(&state, &headers).await?;
    let parent = caller.task.id;
    let mut depends_on = Vec::with_capacity(body.depends_on.len());
    for dep in &body.depends_on {
        let sibling = state
            .store
            .task(dep)
            .await
            .map_err(|e| ApiError::BadRequest(format!("depends_on: {e}")))?;
        if !state.store.is_subtask_of(sibling.task.id, parent).await? {
            return Err(ApiError::Forbidden(format!(
                "depends_on: task {} is not a sub-task of task {}: a sub-task may wait only for its siblings",
                sibling.task.short_id(),
                short_id(&parent)
            )));
        }
        depends_on.push(sibling.task.id.hyphenated().to_string());
    }
    let config = state.config.current();
    let limits = SubtaskLimits {
        max_depth: config.coordination.max_subtask_depth,
        max_per_parent: config.coordination.max_subtasks_per_parent,
    };
    let _one_at_a_time = CREATING.lock().await;
    let depth = state.store.check_subtask_limits(parent, limits).await?;
    let new = NewTask {
        title: body.title,
        prompt: body.prompt,
        repo: caller.task.repo.clone(),
        profile: Some(body.profile.unwrap_or_else(|| caller.task.profile.clone())),
        workflow: None,
        verify: body.verify,
        max_attempts: None,
        priority: caller.task.priority,
        depends_on,
        stack: false,
    };
    let actor = format!("agent:{}", short_id(&caller.agent.agent_id));
    // Placed like any task: here, or routed to a system that holds the repository.
    let (id, answer, status) = match state.add_task(new, None, actor.clone()).await? {
        Added::Here(task) => {
            state.store.record_subtask(task.id, parent, depth, &actor).await?;
            (task.id, serde_json::to_value(&task).unwrap_or_default(), StatusCode::CREATED)
        }
        Added::Routed(routed) => {
            let id = routed.task.id;
            state.store.record_routed_subtask(id, parent, depth, &actor).await?;
            (id, serde_json::to_value(&routed).unwrap_or_default(), StatusCode::ACCEPTED)
        }
    };
    drop(_one_at_a_time);
    if !body.owns.is_empty() && status == StatusCode::CREATED {
        let child = state.store.task(&id.hyphenated().to_string()).await?.task;
        let repo = child.repo.clone().unwrap_or_default();
        for path in &body.owns {
            if let crate::store::Ownership::Taken { reason } =
                state.store.claim(&child, &repo, path, None, Some("create_subtask")).await?
            {
                tracing::info!(%reason, "a sub-task's file is owned by another task");
            }
        }
    }
    let mut answer = answer;
    if let Some(object) = answer.as_object_mut() {
        object.insert("parent".into(), json!(parent));
        object.insert("depth".into(), json!(depth));
    }
    Ok((status, Json(answer)).into_response())
}

async fn list_subtasks(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<Subtask>>, ApiError> {
    let agent = identity(&state, &headers).await?;
    Ok(Json(state.store.subtasks(agent.task_id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wait {
    /// Sub-tasks to wait for; all of the caller's when empty.
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn ended(subtask: &Subtask) -> bool {
    matches!(subtask.state, TaskState::Complete | TaskState::Failed | TaskState::Cancelled)
}

async fn wait_subtasks(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Wait>,
) -> Result<Json<Value>, ApiError> {
    let agent = identity(&state, &headers).await?;
    let config = state.config.current();
    let limit = config.coordination.max_wait_secs;
    let timeout = Duration::from_secs(body.timeout_secs.unwrap_or(limit).min(limit));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = state.store.changes();
    loop {
        let all = state.store.subtasks(agent.task_id).await?;
        let chosen: Vec<Subtask> = if body.ids.is_empty() {
            all
        } else {
            let mut chosen = Vec::new();
            for id in &body.ids {
                match all.iter().find(|s| {
                    s.id.starts_with(id.as_str()) || s.id.replace('-', "").starts_with(id.as_str())
                }) {
                    Some(s) => chosen.push(s.clone()),
                    None => {
                        return Err(ApiError::Forbidden(format!(
                            "ids: `{id}` is not a sub-task of task {}",
                            short_id(&agent.task_id)
                        )))
                    }
                }
            }
            chosen
        };
        let done = chosen.iter().all(ended);
        if done || tokio::time::Instant::now() >= deadline {
            let failed: Vec<&str> = chosen
                .iter()
                .filter(|s| s.state != TaskState::Complete && ended(s))
                .map(|s| s.id.as_str())
                .collect();
            return Ok(Json(json!({ "done": done, "failed": failed, "subtasks": chosen })));
        }
        // Woken by the next commit, or after a while at most.
        let _ = tokio::time::timeout(POLL.max(Duration::from_millis(50)), changes.changed()).await;
        if state.shutdown.is_cancelled() {
            return Err(ApiError::Busy("the daemon is stopping; call again".into()));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChange {
    /// The file, relative to the repository (or absolute inside the caller's worktree).
    file: String,
    what: String,
    why: String,
}

/// A change request as its requester reads it: the row, and `reason` (what it is told).
fn change_answer(request: &ChangeRequest) -> Value {
    let mut value = serde_json::to_value(request).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("reason".into(), json!(request.resolution));
        object.insert("final".into(), json!(request.state.is_final()));
    }
    value
}

async fn request_change(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewChange>,
) -> Result<Response, ApiError> {
    let caller = caller(&state, &headers).await?;
    if body.file.trim().is_empty() {
        return Err(ApiError::BadRequest("file: must not be empty".into()));
    }
    let (repo, path, preassigned) =
        crate::hooks::gate::locate(&state.store, &state.home, &caller.task, body.file.trim())
            .await?
            .map_err(ApiError::BadRequest)?;
    let ask = ChangeAsk {
        repo: &repo,
        path: &path,
        preassigned: preassigned.as_deref(),
        what: &body.what,
        why: &body.why,
    };
    let request = state.store.request_change(&caller.task, &ask).await?;
    state.wake();
    Ok((StatusCode::CREATED, Json(change_answer(&request))).into_response())
}

async fn list_changes(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<ChangeRequest>>, ApiError> {
    let caller = caller(&state, &headers).await?;
    Ok(Json(state.store.change_requests_of(caller.task.id).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WaitChange {
    #[serde(default)]
    timeout_secs: Option<u64>,
}

async fn wait_change(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&state, &headers).await?;
    let body: WaitChange = if body.iter().all(u8::is_ascii_whitespace) {
        WaitChange::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    let first = state.store.change_request(&id).await?;
    if first.requester_task != caller.task.id.hyphenated().to_string() {
        return Err(ApiError::Forbidden(format!(
            "change request {} was made by task {}, not by task {}: refused",
            &first.id[..8],
            &first.requester_task[..8],
            caller.task.short_id()
        )));
    }
    let limit = state.config.current().coordination.max_wait_secs;
    let timeout = Duration::from_secs(body.timeout_secs.unwrap_or(limit).min(limit));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = state.store.changes();
    loop {
        let request = state.store.change_request(&first.id).await?;
        if request.state.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(change_answer(&request)));
        }
        let _ = tokio::time::timeout(POLL, changes.changed()).await;
        if state.shutdown.is_cancelled() {
            return Err(ApiError::Busy("the daemon is stopping; call again".into()));
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// `node` (the default) or `fleet`: one holder among all the systems (with sync).
    #[serde(default)]
    scope: Option<LockScope>,
    /// How long to wait for a held lock; 0 (the default) answers at once.
    #[serde(default)]
    wait_secs: Option<u64>,
}

fn check_lock_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 200
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
    {
        return Err(ApiError::BadRequest(format!(
            "name: `{name}` must be 1 to 200 letters, digits or `-_./:`"
        )));
    }
    Ok(())
}

/// The central's client when sync is on and this system is enrolled: `fleet` locks and
/// sequences go through it then.
fn central(state: &AppState) -> Option<&ccm_sync::Client> {
    state.sync.as_ref().filter(|c| c.has_token() && state.config.current().sync.enabled())
}

fn fleet_error(error: crate::fleet::FleetError) -> ApiError {
    match error {
        crate::fleet::FleetError::Store(e) => e.into(),
        crate::fleet::FleetError::Central(message) => {
            ApiError::Busy(format!("the central cannot be asked now: {message}"))
        }
        crate::fleet::FleetError::Refused(message) => {
            ApiError::Conflict { code: "central_refused", message }
        }
    }
}

/// Takes a named lock, waiting up to `wait_secs` (visible as a waiter meanwhile). A `fleet`
/// lock asks the central too (`crate::fleet::try_lock`) when sync is on; without sync this
/// node is the whole fleet.
pub(super) async fn take_lock(
    state: &AppState,
    name: &str,
    holder: &LockHolder,
    ttl_secs: u64,
    wait_secs: u64,
    scope: LockScope,
) -> Result<Response, ApiError> {
    check_lock_name(name)?;
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(ApiError::BadRequest(format!(
            "ttl_secs: must be between 1 and {MAX_TTL_SECS}, got {ttl_secs}"
        )));
    }
    let limit = state.config.current().coordination.max_wait_secs;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs.min(limit));
    let mut changes = state.store.changes();
    let mut waiting = false;
    let central = central(state).filter(|_| scope == LockScope::Fleet);
    let mut failure = None;
    loop {
        let grant = match central {
            Some(client) => {
                match crate::fleet::try_lock(&state.store, client, name, holder, ttl_secs).await {
                    Ok(grant) => grant,
                    Err(crate::fleet::FleetError::Central(message)) => {
                        failure = Some(message);
                        None
                    }
                    Err(error) => return Err(fleet_error(error)),
                }
            }
            None => state
                .store
                .acquire_lock(name, holder, ttl_secs, LockScope::Node)
                .await?
                .map(|a| a.grant),
        };
        if let Some(grant) = grant {
            if waiting {
                state.store.lock_waiter(name, holder, false).await?;
            }
            return Ok(Json(grant).into_response());
        }
        if tokio::time::Instant::now() >= deadline || state.shutdown.is_cancelled() {
            if waiting {
                state.store.lock_waiter(name, holder, false).await?;
            }
            if let Some(message) = failure {
                return Err(fleet_error(crate::fleet::FleetError::Central(message)));
            }
            // A `fleet` lock held elsewhere: which system holds it.
            let system = match central {
                Some(_) => state.store.locks().await?.into_iter().find(|l| l.name == name),
                None => None,
            }
            .and_then(|l| l.fleet_holder.filter(|_| l.holder.is_none()))
            .map(|s| format!(" (system {s})"))
            .unwrap_or_default();
            return Err(ApiError::Conflict {
                code: "lock_held",
                message: format!(
                    "lock `{name}` is held by another holder{system}; try again later"
                ),
            });
        }
        if !waiting {
            state.store.lock_waiter(name, holder, true).await?;
            waiting = true;
        }
        let _ = tokio::time::timeout(POLL, changes.changed()).await;
    }
}

fn agent_holder(caller: &Caller) -> LockHolder {
    LockHolder {
        holder: format!("agent:{}", caller.agent.agent_id.hyphenated()),
        task_id: Some(caller.task.id),
        agent_id: Some(caller.agent.agent_id),
    }
}

async fn lock(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&state, &headers).await?;
    let body: LockRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LockRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?
    };
    let holder = agent_holder(&caller);
    let (ttl, wait) = (body.ttl_secs.unwrap_or(60), body.wait_secs.unwrap_or(0));
    take_lock(&state, &name, &holder, ttl, wait, body.scope.unwrap_or_default()).await
}

/// Releases a lock `holder` holds (and a `fleet` lock's central lease with it).
async fn release(state: &AppState, name: &str, holder: &str) -> Result<bool, ApiError> {
    match central(state) {
        Some(client) => {
            crate::fleet::unlock(&state.store, client, name, holder).await.map_err(fleet_error)
        }
        None => Ok(state.store.release_lock(name, holder).await?),
    }
}

async fn unlock(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = caller(&state, &headers).await?;
    check_lock_name(&name)?;
    let holder = agent_holder(&caller);
    if !release(&state, &name, &holder.holder).await? {
        return Err(ApiError::Conflict {
            code: "lock_not_held",
            message: format!("lock `{name}` is not held by this agent"),
        });
    }
    Ok(Json(json!({ "name": name, "released": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocateRequest {
    sequence: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    sequence: String,
    value: Value,
}

/// The repository key of a task (its repo, else its checkout) and its sequences' settings.
async fn sequence_of(
    state: &AppState,
    task: &Task,
    sequence: &str,
) -> Result<(String, crate::config::SequenceConfig), ApiError> {
    let roots = crate::hooks::gate::roots(&state.store, task).await?;
    // The key the operator's routes use too: the checkout's remote URL, else its path.
    let checkout = roots.last().map(|r| r.to_string_lossy().into_owned());
    let context = match &checkout {
        Some(path) => state.store.contexts().await?.into_iter().find(|c| c.path == *path),
        None => None,
    };
    let repo = context
        .and_then(|c| c.repo_url.or(Some(c.path)))
        .or_else(|| task.repo.clone())
        .or(checkout)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "task {} has no repository, so it has no sequences",
                task.short_id()
            ))
        })?;
    let config = match roots.last() {
        Some(checkout) => crate::config::load_checked(&state.store, &state.home, checkout)
            .await
            .map_err(ApiError::BadRequest)?,
        None => (*state.config.current()).clone(),
    };
    let Some(settings) = config.sequences.get(sequence) else {
        let known: Vec<&str> = config.sequences.keys().map(String::as_str).collect();
        return Err(ApiError::BadRequest(format!(
            "sequence: `{sequence}` is not declared in .ccm/config.yaml `sequences:` (declared: {})",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    };
    Ok((repo, settings.clone()))
}

pub(super) async fn allocate_for(
    state: &AppState,
    task: &Task,
    sequence: &str,
) -> Result<crate::store::Allocation, ApiError> {
    let (repo, settings) = sequence_of(state, task, sequence).await?;
    allocate_in(state, &repo, sequence, Some(task.id), &settings).await
}

/// The next value of a sequence: from the central's allocator when sync is on and the
/// repository has a remote (fleet-wide), else from this node's store.
async fn allocate_in(
    state: &AppState,
    repo: &str,
    sequence: &str,
    task: Option<uuid::Uuid>,
    settings: &crate::config::SequenceConfig,
) -> Result<crate::store::Allocation, ApiError> {
    let render = |v| settings.render(v);
    match central(state).filter(|_| !repo.starts_with('/')) {
        Some(client) => crate::fleet::allocate(
            &state.store,
            client,
            repo,
            sequence,
            task,
            settings.start,
            render,
        )
        .await
        .map_err(fleet_error),
        None => Ok(state.store.allocate(repo, sequence, task, settings.start, render).await?),
    }
}

/// Gives a value back (by its number or its rendering): to the central's allocator when it
/// handed it out, else to this node's store.
async fn release_in(
    state: &AppState,
    repo: &str,
    sequence: &str,
    value: &str,
    task: Option<uuid::Uuid>,
    settings: &crate::config::SequenceConfig,
) -> Result<crate::store::Allocation, ApiError> {
    let Some(client) = central(state).filter(|_| !repo.starts_with('/')) else {
        return Ok(state.store.release_allocation(repo, sequence, value, task).await?);
    };
    // The number: a value recorded here by its rendering, else the text's digits.
    let known = state.store.allocations().await?.into_iter().find(|a| {
        a.repo == repo
            && a.sequence == sequence
            && (a.formatted == value || a.value.to_string() == value)
    });
    let number = match known {
        Some(a) => a.value,
        None => value
            .trim()
            .parse::<i64>()
            .ok()
            .or_else(|| value.chars().filter(char::is_ascii_digit).collect::<String>().parse().ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "value: `{value}` is not a value of sequence `{sequence}`"
                ))
            })?,
    };
    crate::fleet::release_allocation(&state.store, client, repo, sequence, number, task, |v| {
        settings.render(v)
    })
    .await
    .map_err(fleet_error)
}

async fn allocate(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AllocateRequest>,
) -> Result<Response, ApiError> {
    let caller = caller(&state, &headers).await?;
    let allocation = allocate_for(&state, &caller.task, &body.sequence).await?;
    Ok((StatusCode::CREATED, Json(allocation)).into_response())
}

async fn release_allocation(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ReleaseRequest>,
) -> Result<Json<crate::store::Allocation>, ApiError> {
    let caller = caller(&state, &headers).await?;
    let (repo, settings) = sequence_of(&state, &caller.task, &body.sequence).await?;
    let value = match &body.value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(ApiError::BadRequest("value: must be a string or a number".into())),
    };
    let task = Some(caller.task.id);
    Ok(Json(release_in(&state, &repo, &body.sequence, &value, task, &settings).await?))
}

/// The operator's side of the same operations (bearer token): `ccm lock`, scripts.
///
/// | route | what |
/// |---|---|
/// | `POST /api/locks/{name}` `{"holder", "ttl_secs", "wait_secs", "scope"}` | takes or renews a named lock for `holder` (e.g. `cli:<pid>`) |
/// | `DELETE /api/locks/{name}?holder=` | releases it |
/// | `POST /api/allocations` `{"repo", "sequence"}` | the next value of a sequence of a registered checkout's repository |
/// | `POST /api/allocations/release` `{"repo", "sequence", "value"}` | gives a value back |
/// | `GET /api/tasks/{id}/subtasks` | a task's sub-task tree |
/// | `POST /api/tasks/split` `{"task", "parts": [{"task", "after"}]}` | a task split into sub-tasks (`ccm task add --split`), in one transaction; 201 `{"parent", "parts"}` |
/// | `GET /api/changes` | change requests (state, decision, where they were forwarded), open ones first |
/// | `GET /api/changes/{id}` | one, with `reason` (what its requester is told); answered through `POST /api/decisions/{decision_id}` `{"answer": "approve"\|"reject", "reason"}` |
pub fn operator_routes() -> Router<AppState> {
    Router::new()
        .route("/locks/{name}", post(operator_lock).delete(operator_unlock))
        .route("/allocations", post(operator_allocate))
        .route("/allocations/release", post(operator_release))
        .route("/tasks/{id}/subtasks", get(task_subtasks))
        .route("/tasks/split", post(split_task))
        .route("/changes", get(operator_changes))
        .route("/changes/{id}", get(operator_change))
}

/// Every change request, open ones first (`GET /api/changes`).
async fn operator_changes(
    State(state): State<AppState>,
) -> Result<Json<Vec<ChangeRequest>>, ApiError> {
    Ok(Json(state.store.change_requests().await?))
}

/// One change request by id or unique prefix (`GET /api/changes/{id}`).
async fn operator_change(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(change_answer(&state.store.change_request(&id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorLock {
    holder: String,
    #[serde(default)]
    scope: Option<LockScope>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    wait_secs: Option<u64>,
}

fn check_holder(holder: &str) -> Result<(), ApiError> {
    if holder.is_empty() || holder.starts_with("agent:") || holder.len() > 200 {
        return Err(ApiError::BadRequest(format!(
            "holder: `{holder}` must be 1 to 200 characters and not an agent's (`agent:`)"
        )));
    }
    Ok(())
}

async fn operator_lock(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<OperatorLock>,
) -> Result<Response, ApiError> {
    check_holder(&body.holder)?;
    let holder = LockHolder { holder: body.holder, task_id: None, agent_id: None };
    let (ttl, wait) = (body.ttl_secs.unwrap_or(60), body.wait_secs.unwrap_or(0));
    take_lock(&state, &name, &holder, ttl, wait, body.scope.unwrap_or_default()).await
}

#[derive(Deserialize)]
struct HolderQuery {
    holder: String,
}

async fn operator_unlock(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<HolderQuery>,
) -> Result<Json<Value>, ApiError> {
    check_lock_name(&name)?;
    if !release(&state, &name, &query.holder).await? {
        return Err(ApiError::Conflict {
            code: "lock_not_held",
            message: format!("lock `{name}` is not held by `{}`", query.holder),
        });
    }
    Ok(Json(json!({ "name": name, "released": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorAllocate {
    /// A registered checkout (its path, id or repository URL).
    repo: String,
    sequence: String,
    #[serde(default)]
    value: Option<Value>,
}

/// The repository key and checkout of a registered context named by path, id or URL.
async fn context_of(
    state: &AppState,
    repo: &str,
) -> Result<(String, std::path::PathBuf), ApiError> {
    let normalized = ccm_schema::repo_url::normalize(repo);
    let context = state
        .store
        .contexts()
        .await?
        .into_iter()
        .find(|c| {
            c.path == repo
                || c.id.to_string() == repo
                || c.repo_url.as_deref() == Some(&*normalized)
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "repo: no registered checkout matches `{repo}` (ccm context add)"
            ))
        })?;
    let key = context.repo_url.clone().unwrap_or_else(|| context.path.clone());
    Ok((key, std::path::PathBuf::from(context.path)))
}

async fn operator_sequence(
    state: &AppState,
    body: &OperatorAllocate,
) -> Result<(String, crate::config::SequenceConfig), ApiError> {
    let (key, checkout) = context_of(state, &body.repo).await?;
    let config = crate::config::load_checked(&state.store, &state.home, &checkout)
        .await
        .map_err(ApiError::BadRequest)?;
    let settings = config.sequences.get(&body.sequence).cloned().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "sequence: `{}` is not declared in {}/.ccm/config.yaml `sequences:`",
            body.sequence,
            checkout.display()
        ))
    })?;
    Ok((key, settings))
}

async fn operator_allocate(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OperatorAllocate>,
) -> Result<Response, ApiError> {
    let (repo, settings) = operator_sequence(&state, &body).await?;
    let allocation = allocate_in(&state, &repo, &body.sequence, None, &settings).await?;
    Ok((StatusCode::CREATED, Json(allocation)).into_response())
}

async fn operator_release(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OperatorAllocate>,
) -> Result<Json<crate::store::Allocation>, ApiError> {
    let (repo, settings) = operator_sequence(&state, &body).await?;
    let value = match &body.value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(ApiError::BadRequest("value: required, a string or a number".into())),
    };
    Ok(Json(release_in(&state, &repo, &body.sequence, &value, None, &settings).await?))
}

async fn task_subtasks(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<Subtask>>, ApiError> {
    let task = state.store.task(&id).await?.task;
    Ok(Json(state.store.subtasks(task.id).await?))
}

/// Body of `POST /api/tasks/split`: a task and the parts it is split into.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    pub task: NewTask,
    pub parts: Vec<SplitPart>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitPart {
    pub task: NewTask,
    /// Indexes of earlier parts it waits for.
    #[serde(default)]
    pub after: Vec<usize>,
}

/// Answer of `POST /api/tasks/split`: the parent and its parts.
#[derive(Deserialize, serde::Serialize)]
pub struct SplitAnswer {
    pub parent: Task,
    pub parts: Vec<Task>,
}

async fn split_task(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SplitRequest>,
) -> Result<Response, ApiError> {
    let config = state.config.current();
    let parts = body.parts.into_iter().map(|p| (p.task, p.after)).collect();
    let (parent, parts) = state.store.create_split(body.task, parts, &config, "cli").await?;
    state.wake_scheduler();
    Ok((StatusCode::CREATED, Json(SplitAnswer { parent, parts })).into_response())
}
