//! Routes of the local HTTP API and their handlers.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness, no token |
//! | `GET /metrics` | Prometheus text format, no token |
//! | `GET /api/status` | [`Status`] |
//! | `GET /api/config` | the configuration file, and why what it says is not in use: `invalid` (it does not load), `restart_needed` (keys) |
//! | `GET /api/tasks?state=` | tasks, oldest first |
//! | `POST /api/tasks?system=` | create a task ([`NewTask`]) where [`crate::placement::decide`] says: here, 201 with the task; routed to the fleet (pinned elsewhere, no checkout of its repository here, no free slot; with sync only), 202 with the routed task and `routed_because`; `"after": [A], "stack": true` stacks it on A (always here) |
//! | `GET /api/tasks/{id}` | one task (id or unique prefix) with its log |
//! | `POST /api/tasks/{id}/events` | apply a [`TaskEvent`]: `{"event": "cancel", "reason": "..."}` |
//! | `GET /api/tasks/{id}/events` | the task's hook events, oldest first |
//! | `POST /api/hooks?system=&key=` | a hook event (Claude Code `http` hook body, or from `ccm hook`); answers in the CLI's JSON output format |
//! | `GET /api/claims` | file claims and change requests |
//! | `GET /api/conflicts?repo=` | the predicted conflicts of every repository with active tasks (or of one: a task's `repo`), as the predictor last recorded them: `[{"repo", "conflicts"}]` |
//! | `GET /api/tasks/{id}/diff` | the task's branch against its target: `{"branch", "target", "base", "head", "files": [{"path", "status", "binary", "hunks": [{"header", "old_start", "new_start", "lines"}]}], "truncated"}` |
//! | `POST /api/tasks/{id}/dependencies` | `{"depends_on": [ids]}`; a cycle answers 409 |
//! | `POST /api/tasks/{id}/review` | `{"comments": [{"file", "line", "text"}], "request_changes"}`: comment on lines of a finished task's diff (a line the diff does not show answers 400 saying which it shows) and/or send the pending comments to its next attempt, which does not count against its budget; answers `{"task", "added", "sent"}` |
//! | `POST /api/tasks/{id}/discard` | `{"reason"}`: drop a finished task's work (it leaves the land queue; the janitor may remove its branch); a task not finished, landing or landed answers 400 |
//! | `GET /api/contexts`, `POST /api/contexts` `{"path"}`, `DELETE /api/contexts/{key}` | contexts |
//! | `GET /api/agents` | agents, live first, then the others, most recently started first (`?ended=N`: at most N of those) |
//! | `GET /api/decisions`, `POST /api/decisions/{id}` `{"answer", "reason"}` | questions for the human (`reason`: a change request's rejection, told to its requester) |
//! | `POST /api/routed` `{"task": NewTask, "pin"}` | send a task to the fleet (routing) |
//! | `GET /api/routed` | the tasks this system routed, as the central last described them |
//! | `GET /api/routed/stale` | `[{"id", "reason"}]`: tasks run here for the fleet whose lease was lost (what they show here is not the task's outcome) |
//! | `POST /api/routed/{id}/control` `{"control": "cancel"\|"retry"\|"pin", "reason", "system"}` | ask the central to cancel, retry or re-pin a routed task (409 when its state makes it pointless) |
//! | `GET /api/routing` | this system's name and free slots (what placement weighs) |
//! | `GET /api/supervisors/{name}/digest` | `{"digest"}`: what the supervisor's next run would carry, built as its runs build it (at a lower priority) |
//! | `GET /api/sync` | per sync lane: backlog, last success, last error, pause reason |
//! | `POST /api/sync/now`, `/api/sync/pause` `{"reason"}`, `/api/sync/resume` | drive sync (resume re-reads the token in `auth.json`) |
//!
//! Every `/api` route needs the bearer token; every route checks `Host` and `Origin`. The
//! `X-Ccm-Actor` header names who acts, `cli` or `api` (the default); the names the node itself
//! writes into the task log (`scheduler`, `runtime`, `hook`) cannot be claimed. A hook event is
//! an agent's only with that agent's credential in `X-Ccm-Agent-Token`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ccm_schema::{Context, Task, TaskEvent, Timestamp};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

use super::error::ApiError;
use super::{security, AppState};
use crate::config::Answer;
use crate::home::Home;
use crate::hooks::event::{HookEvent, Kind, System};
use crate::hooks::gate::{self, Verdict};
use crate::placement::{Added, PlacementError, RoutingStatus};
use crate::status::Status;
use crate::store::{
    ChangeRequest, Claim, ContextProbe, HookJob, Ingested, NewTask, Origin, RetryPolicy,
    RoutedControl, RoutedTask, StaleTask, StoreError, StoredHookEvent, TaskDetail, TaskFilter,
};
use crate::sync::SyncStatus;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/config", get(config_status))
        .route("/tasks", get(list_tasks).post(create_task))
        .route("/tasks/{id}", get(show_task))
        .route("/tasks/{id}/dependencies", post(add_dependencies))
        .route("/tasks/{id}/discard", post(discard_task))
        .route("/tasks/{id}/review", post(review_task))
        .route("/contexts", get(list_contexts).post(add_context))
        .route("/contexts/{key}", axum::routing::delete(remove_context))
        .route("/hooks", post(hook))
        .route("/tasks/{id}/events", get(task_events).post(task_event))
        .route("/claims", get(claims))
        .route("/conflicts", get(conflicts))
        .route("/tasks/{id}/diff", get(task_diff))
        .route("/agents", get(list_agents))
        .route("/decisions", get(list_decisions))
        .route("/alerts", get(list_alerts))
        .route("/alerts/{id}/ack", post(acknowledge_alert))
        .route("/decisions/{id}", post(answer_decision))
        .route("/routed", get(list_routed).post(route_task))
        .route("/routed/stale", get(stale_routed))
        .route("/routed/{id}/control", post(control_routed))
        .route("/routing", get(routing_status))
        .route("/land", get(land_status).post(land_tasks))
        .route("/land/plan", get(land_plan))
        .route("/supervisors/{name}/digest", get(supervisor_digest))
        .route("/sync", get(sync_status))
        .route("/sync/now", post(sync_now))
        .route("/sync/pause", post(sync_pause))
        .route("/sync/resume", post(sync_resume))
        .merge(super::agent_api::operator_routes());
    // The test fault switch: only in a daemon started with `CCM_TEST_FAULTS` set.
    let api = if std::env::var_os("CCM_TEST_FAULTS").is_some_and(|v| !v.is_empty()) {
        api.route("/test/stall", post(stall_for_test))
    } else {
        api
    };
    let api =
        api.route_layer(middleware::from_fn_with_state(state.clone(), security::require_token));
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(super::agent_api::routes())
        .nest("/api", api);
    if state.config.current().daemon.profile == crate::config::Profile::Full {
        router = router.merge(crate::dashboard::router(&state));
    }
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(state.config.current().daemon.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(Duration::from_millis(
            state.config.current().daemon.body_timeout_ms,
        )))
        .layer(middleware::from_fn_with_state(state.clone(), settle_store))
        .layer(middleware::from_fn_with_state(state.clone(), super::metrics::count_request))
        .layer(middleware::from_fn_with_state(state.clone(), security::check_host_and_origin))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

/// Runs the request in a `request` span naming its method and path, so that what is logged
/// while it is handled (an internal error's details among it) says which request it was.
async fn request_span(request: Request, next: middleware::Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path()
    );
    next.run(request).instrument(span).await
}

/// Answers only once a write the handler refused or failed is rolled back, so that no other
/// process waits for the daemon's write lock meanwhile; names the database when its disk is full.
async fn settle_store(
    State(state): State<AppState>,
    request: Request,
    next: middleware::Next,
) -> Response {
    let response = next.run(request).await;
    state.store.settle().await;
    if response.status() == StatusCode::INSUFFICIENT_STORAGE {
        let path = state.store.path().display();
        return ApiError::DiskFull(format!("disk full: cannot write {path}")).into_response();
    }
    response
}

/// `Json` of a JSON object (an array is refused, although serde reads a struct from one)
/// whose rejection is an [`ApiError::BadRequest`] naming the field that was wrong, or
/// [`ApiError::TooLarge`] for a body over the limit.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<Object<T>>::from_request(request, state).await {
            Ok(Json(Object(value))) => Ok(ApiJson(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(too_large(&rejection.body_text()))
            }
            Err(rejection) => Err(ApiError::BadRequest(rejection_message(&rejection))),
        }
    }
}

fn too_large(detail: &str) -> ApiError {
    ApiError::TooLarge(format!("body too large: {detail} (daemon.max_body_bytes)"))
}

/// `T` read only from a JSON object.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Visitor(std::marker::PhantomData)).map(Object)
    }
}

fn rejection_message(rejection: &JsonRejection) -> String {
    let text = rejection.body_text();
    text.strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .map(|detail| format!("invalid body: {detail}"))
        .unwrap_or(text)
}

/// The actors a client may name in `X-Ccm-Actor`.
const ACTORS: [&str; 2] = ["api", "cli"];

/// Who acts, as `X-Ccm-Actor` says: one of [`ACTORS`], `api` when absent.
fn actor(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("x-ccm-actor") else { return Ok("api".into()) };
    match value.to_str().ok().filter(|v| ACTORS.contains(v)) {
        Some(actor) => Ok(actor.to_string()),
        None => Err(ApiError::BadRequest(format!(
            "x-ccm-actor: must be one of {}, got `{}`",
            ACTORS.join(", "),
            String::from_utf8_lossy(value.as_bytes()).chars().take(64).collect::<String>()
        ))),
    }
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "pid": state.daemon.pid, "version": env!("CARGO_PKG_VERSION") }))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = state.metrics.render(&state.store, &loops(&state)).await?;
    Ok(([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

async fn status(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    let mut status = Status::gather(&state.store, Some(state.daemon.clone())).await?;
    status.loops = loops(&state);
    Ok(Json(status))
}

/// Body of `GET /api/supervisors/{name}/digest`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DigestAnswer {
    pub digest: String,
}

async fn supervisor_digest(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<DigestAnswer>, ApiError> {
    use crate::supervisors::SupervisorError;
    let config = state.config.current();
    let digest = async {
        let supervisor = crate::supervisors::configured(&config.supervisors, &name)?;
        let runs = state.store.supervisor_runs(Some(&name)).await?;
        crate::supervisors::digest(&state.store, state.sync.as_ref(), &name, supervisor, &runs)
            .await
    };
    match digest.await {
        Ok(digest) => Ok(Json(DigestAnswer { digest })),
        Err(SupervisorError::Store(e)) => Err(e.into()),
        Err(e @ SupervisorError::Unknown { .. }) => Err(ApiError::NotFound(e.to_string())),
        Err(e @ (SupervisorError::Config { .. } | SupervisorError::Central(_))) => {
            Err(ApiError::BadRequest(e.to_string()))
        }
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// Each of the daemon's loops, now.
fn loops(state: &AppState) -> Vec<crate::watchdog::LoopStatus> {
    let limit = Duration::from_secs(state.config.current().daemon.stall_secs);
    state.loops.status(limit)
}

/// Body of `POST /api/test/stall`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StallBody {
    #[serde(rename = "loop")]
    name: String,
}

/// The test fault switch (`CCM_TEST_FAULTS`): the named loop's next step never ends.
async fn stall_for_test(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<StallBody>,
) -> Result<Json<Value>, ApiError> {
    if !state.loops.stall_for_test(&body.name) {
        return Err(ApiError::NotFound(format!("no loop named `{}`", body.name)));
    }
    state.wake();
    Ok(Json(json!({ "stalling": body.name })))
}

/// Body of `POST /api/routed`: a task for the fleet, optionally pinned to a system.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    task: NewTask,
    #[serde(default)]
    pin: Option<String>,
}

async fn route_task(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RouteBody>,
) -> Result<(StatusCode, Json<RoutedTask>), ApiError> {
    let routed =
        state.store.route_task(body.task, body.pin.as_deref(), &state.config.current()).await?;
    Ok((StatusCode::CREATED, Json(routed)))
}

/// Body of `POST /api/routed/{id}/control`: what the origin asks the central to do.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    control: RoutedControl,
    #[serde(default)]
    reason: Option<String>,
    /// The new pin (`control: pin`); none for any system.
    #[serde(default)]
    system: Option<String>,
}

async fn control_routed(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ControlBody>,
) -> Result<Json<RoutedTask>, ApiError> {
    let reason = body.reason.unwrap_or_else(|| {
        match body.control {
            RoutedControl::Cancel => "cancelled by the operator",
            RoutedControl::Retry => "retried by the operator",
            RoutedControl::Pin => "moved by the operator",
        }
        .to_string()
    });
    state
        .store
        .control_routed(&id, body.control, &reason, body.system.as_deref())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no routed task matches `{id}`")))
}

async fn list_routed(State(state): State<AppState>) -> Result<Json<Vec<RoutedTask>>, ApiError> {
    Ok(Json(state.store.routed_tasks().await?))
}

async fn stale_routed(State(state): State<AppState>) -> Result<Json<Vec<StaleTask>>, ApiError> {
    Ok(Json(state.store.routed_stale_all().await?))
}

/// What `ccm task add` needs to choose between here and the fleet.
async fn routing_status(State(state): State<AppState>) -> Result<Json<RoutingStatus>, ApiError> {
    Ok(Json(RoutingStatus::gather(&state.store, &state.config.current()).await?))
}

async fn sync_status(State(state): State<AppState>) -> Result<Json<SyncStatus>, ApiError> {
    Ok(Json(state.store.sync_status().await?))
}

async fn sync_now(State(state): State<AppState>) -> Result<Json<SyncStatus>, ApiError> {
    state.store.sync_signals().sync_now();
    sync_status(State(state)).await
}

#[derive(Deserialize)]
struct PauseBody {
    reason: String,
}

async fn sync_pause(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PauseBody>,
) -> Result<Json<SyncStatus>, ApiError> {
    if body.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("reason: must not be empty".into()));
    }
    state.store.pause_sync_by_operator(&body.reason).await?;
    sync_status(State(state)).await
}

async fn sync_resume(State(state): State<AppState>) -> Result<Json<SyncStatus>, ApiError> {
    if let Some(client) = &state.sync {
        let home = Home::at(&state.home);
        client.set_credential(crate::sync::credential(
            &home,
            client.endpoint(),
            Some(&state.store),
        ));
    }
    state.store.pause_sync(None).await?;
    state.store.sync_signals().sync_now();
    sync_status(State(state)).await
}

async fn list_tasks(
    State(state): State<AppState>,
    query: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let Query(filter) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(state.store.tasks(&filter).await?))
}

/// `GET /api/config`: the global configuration file, and what in the files the daemon does not
/// use (a file that does not load, keys that need a restart).
async fn config_status(State(state): State<AppState>) -> Json<Value> {
    let status = state.config.status();
    Json(json!({
        "file": state.config.file(),
        "invalid": status.invalid,
        "restart_needed": status.restart_needed,
    }))
}

/// Query of `POST /api/tasks`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    /// Run on this system of the fleet (its name or id).
    #[serde(default)]
    system: Option<String>,
}

/// Creates the task where [`crate::placement::decide`] says: here (201, the [`Task`]), or
/// routed to the fleet (202, the [`RoutedTask`] with `routed_because`).
async fn create_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<CreateQuery>,
    ApiJson(new): ApiJson<NewTask>,
) -> Result<Response, ApiError> {
    let added = match state.add_task(new, query.system.as_deref(), actor(&headers)?).await {
        Ok(added) => added,
        // A profile or workflow added to a file that no longer loads is not known yet: say so.
        Err(PlacementError::Store(StoreError::Invalid {
            field: field @ ("profile" | "workflow"),
            message,
        })) => {
            let message = match state.config.status().invalid {
                Some(problem) => format!(
                    "{message}; the configuration does not load ({problem}), so the daemon \
                     uses its last good one until it is fixed"
                ),
                None => message,
            };
            return Err(StoreError::Invalid { field, message }.into());
        }
        Err(error) => return Err(error.into()),
    };
    Ok(match added {
        Added::Here(task) => (StatusCode::CREATED, Json(task)).into_response(),
        Added::Routed(routed) => (StatusCode::ACCEPTED, Json(routed)).into_response(),
    })
}

async fn show_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskDetail>, ApiError> {
    Ok(Json(state.store.task(&id).await?))
}

/// Body of `POST /api/tasks/{id}/events`: the event's fields plus an optional `reason`.
async fn task_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<Json<Task>, ApiError> {
    let reason = match body.remove("reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(reason)) => Some(reason),
        Some(_) => return Err(ApiError::BadRequest("reason: must be a string".into())),
    };
    let event: TaskEvent = serde_json::from_value(Value::Object(body.clone())).map_err(|e| {
        ApiError::BadRequest(format!("{}: {e}", event_field(&body, &e.to_string())))
    })?;
    let reason = reason.unwrap_or_else(|| event.name().replace('_', " "));
    crate::store::check_event_reason(&reason)?;
    let policy = RetryPolicy::from(&*state.config.current());
    let task = state.store.apply_event(&id, event, &reason, &actor(&headers)?, policy).await?;
    state.metrics.count_event(event.name());
    state.wake();
    Ok(Json(task))
}

/// The field an event's deserialization error is about. Internally tagged enums lose serde's
/// path, so it is recovered from the message: a named field, or the field holding the
/// offending value; else the `event` tag itself.
fn event_field<'a>(body: &'a serde_json::Map<String, Value>, message: &'a str) -> &'a str {
    let quoted = message.split('`').nth(1).unwrap_or_default();
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        return quoted;
    }
    body.iter().find(|(_, v)| v.as_str() == Some(quoted)).map_or("event", |(k, _)| k.as_str())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Dependencies {
    depends_on: Vec<String>,
}

async fn add_dependencies(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Dependencies>,
) -> Result<Json<Task>, ApiError> {
    let task = state.store.add_dependencies(&id, &body.depends_on, &actor(&headers)?).await?;
    state.wake_scheduler();
    Ok(Json(task))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Discard {
    #[serde(default)]
    reason: Option<String>,
}

async fn discard_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Discard>,
) -> Result<Json<crate::store::Discarded>, ApiError> {
    let reason = body.reason.unwrap_or_else(|| "discarded by the operator".into());
    let discarded = state.store.discard_task(&id, &reason).await?;
    state.wake();
    Ok(Json(discarded))
}

#[derive(Deserialize)]
struct HookQuery {
    /// `ccm`: the body is an event `ccm hook` already parsed; else it is the CLI's payload.
    format: Option<String>,
    /// `claude`, `gemini` or `codex`; detected from the payload when absent.
    system: Option<String>,
    /// The sender's idempotency key; a fresh one when absent. In a batch, line `i` (from 0) is
    /// stored under `KEY:i`.
    key: Option<String>,
}

/// Hook events of one request written in one transaction at most.
const HOOK_GROUP: usize = 256;

/// The media type of a batch: one event per line, and one answer per line back.
const NDJSON: &str = "application/x-ndjson";

/// Stores a hook event and answers it: a deny when the write touches a file another task owns,
/// the human's answer when an approval rule applies, else `{}`.
///
/// With `Content-Type: application/x-ndjson` the body is a batch: each non-empty line is one
/// event (as the CLI sends it), and the answer has one line per event, in order. The events are
/// stored together, so a relay or a busy sender pays for one request and one commit per batch.
async fn hook(
    State(state): State<AppState>,
    Query(query): Query<HookQuery>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(&rejection.body_text()),
        _ => ApiError::BadRequest(rejection.body_text()),
    })?;
    let system = match query.system.as_deref() {
        None => None,
        Some(name) => {
            Some(name.parse::<System>().map_err(|e| ApiError::BadRequest(format!("system: {e}")))?)
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let origin = Origin { agent_token: header("x-ccm-agent-token") };
    // Time-ordered, so that new keys append to the unique index instead of splitting its pages.
    let key = query.key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let batch = header("content-type").is_some_and(|t| t.starts_with(NDJSON));
    if !batch {
        let event = if query.format.as_deref() == Some("ccm") {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid parsed hook event: {e}")))?
        } else {
            let event = HookEvent::parse(system, &body);
            log_problems(&state, [(&event, key.as_str())]);
            event
        };
        let mut answers = store_and_answer(&state, vec![(event, key)], origin).await?;
        return Ok(Json(answers.remove(0)).into_response());
    }
    let lines = || body.split(|&b| b == b'\n').filter(|line| !line.trim_ascii().is_empty());
    let max = state.config.current().daemon.max_batch_events;
    if lines().nth(max).is_some() {
        return Err(ApiError::TooLarge(format!(
            "batch has {} events; at most {max} per request (daemon.max_batch_events)",
            lines().count()
        )));
    }
    let events: Vec<_> = lines()
        .enumerate()
        .map(|(i, line)| (HookEvent::parse(system, line), format!("{key}:{i}")))
        .collect();
    log_problems(&state, events.iter().map(|(event, key)| (event, key.as_str())));
    let mut text = String::new();
    for answer in store_and_answer(&state, events, origin).await? {
        text.push_str(&answer.to_string());
        text.push('\n');
    }
    Ok(([(axum::http::header::CONTENT_TYPE, NDJSON)], text).into_response())
}

/// Says in `logs/hook.log` what was wrong with payloads the daemon parsed (`ccm hook` logs what
/// it parsed itself), as `ccm hook` would have: one line per event with a problem.
fn log_problems<'a>(state: &AppState, events: impl IntoIterator<Item = (&'a HookEvent, &'a str)>) {
    let received_at = Timestamp::now();
    let lines: Vec<String> = events
        .into_iter()
        .filter_map(|(event, key)| {
            let problem = event.problem.as_deref()?;
            Some(crate::hooks::command::log_line(received_at, key, event, problem))
        })
        .collect();
    if !lines.is_empty() {
        if let Err(error) = crate::hooks::command::log(&state.home, &lines.join("\n")) {
            tracing::warn!(%error, "cannot write logs/hook.log");
        }
    }
}

/// Stores the events in one group commit (with whatever else is arriving) and works out each
/// one's answer, in order.
async fn store_and_answer(
    state: &AppState,
    events: Vec<(HookEvent, String)>,
    origin: Origin,
) -> Result<Vec<Value>, ApiError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let received_at = Timestamp::now();
    let jobs: Vec<HookJob> = events
        .into_iter()
        .map(|(event, key)| HookJob {
            event: Arc::new(event),
            key,
            origin: origin.clone(),
            received_at,
        })
        .collect();
    let asked: Vec<_> = jobs.iter().map(|job| Arc::clone(&job.event)).collect();
    // A large batch is written in groups, one after the other, so that other writers (task
    // creations, other agents' hooks) get the writer between two groups.
    let (mut group, mut ingested) = (jobs, Vec::new());
    while !group.is_empty() {
        let rest = group.split_off(group.len().min(HOOK_GROUP));
        let done = state.hooks.submit(group).await?;
        if ingested.is_empty() {
            ingested = done;
        } else {
            ingested.extend(done);
        }
        group = rest;
    }
    let mut answers = Vec::with_capacity(asked.len());
    for (event, ingested) in asked.into_iter().zip(ingested) {
        answers.push(answer(state, &event, ingested).await?);
    }
    Ok(answers)
}

/// The answer to a stored event: a deny when it writes a file another task owns, the human's
/// answer when an approval rule applies (judged by [`gate::verdict`] against the agent's own
/// worktree), else `{}`.
async fn answer(
    state: &AppState,
    event: &HookEvent,
    ingested: Ingested,
) -> Result<Value, ApiError> {
    state.metrics.count_hook(event.kind.as_str());
    if event.kind == Kind::StopFailure {
        state.wake(); // it may have moved a task
    }
    // Only an event with its live agent's credential has a task.
    let (Some(task), Some(agent)) = (ingested.task, ingested.agent) else {
        return Ok(json!({}));
    };
    let home = Home::at(state.home.clone());
    let config = state.config.current();
    let worktree = std::path::Path::new(&agent.cwd);
    let verdict = match gate::verdict(
        &state.store,
        &home,
        &task,
        event,
        &config.approvals,
        worktree,
    )
    .await?
    {
        Verdict::Ask => await_approval(state, &task, event).await?,
        verdict => verdict,
    };
    Ok(verdict
        .output(event)
        .or_else(|| crate::runtime::context::hook_answer(&agent, event))
        .unwrap_or_else(|| json!({})))
}

/// Asks the operator about a tool call and waits for the answer, or the configured default
/// when the timeout passes first.
async fn await_approval(
    state: &AppState,
    task: &Task,
    event: &HookEvent,
) -> Result<Verdict, ApiError> {
    let tool = event.tool.as_deref().unwrap_or("a tool");
    let what = event.command.clone().unwrap_or_else(|| event.paths.join(", "));
    let config = state.config.current();
    let approvals = &config.approvals;
    // The question states its deadline: whoever reads it later knows whether it still waits.
    let default = if approvals.default == Answer::Allow { "allow" } else { "deny" };
    let timeout = std::time::Duration::from_secs(approvals.timeout_secs);
    let by = humantime::format_rfc3339_seconds(std::time::SystemTime::now() + timeout);
    let question = format!(
        "task {} ({}) wants to use {tool}: {what}. Allow or deny? Unanswered by {by} (in {}), \
         it is answered {default}.",
        task.short_id(),
        task.title,
        humantime::format_duration(timeout)
    );
    let decision = state.store.ask_approval(task.id, &question).await?;
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(approvals.timeout_secs);
    loop {
        let current = state.store.decision(decision.id).await?;
        if let Some(answer) = current.answer {
            let by = current.answered_by.unwrap_or_default();
            let reason = format!("{answer} by {by} through ccm");
            let answer = if answer == "allow" { Answer::Allow } else { Answer::Deny };
            return Ok(Verdict::approved(answer, reason));
        }
        if tokio::time::Instant::now() >= deadline {
            let policy = RetryPolicy::from(&*state.config.current());
            // An answer that raced in first stands; the loop reads it on the next turn.
            if state
                .store
                .answer_decision(&decision.id.to_string(), default, "timeout", policy)
                .await
                .is_ok()
            {
                let reason = format!(
                    "nobody answered within {}s: the configured default is {default}",
                    approvals.timeout_secs
                );
                return Ok(Verdict::approved(approvals.default, reason));
            }
            continue;
        }
        tokio::select! {
            () = state.decisions.notified() => {}
            () = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + std::time::Duration::from_millis(250))) => {}
        }
    }
}

async fn task_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<StoredHookEvent>>, ApiError> {
    Ok(Json(state.store.task_hook_events(&id).await?))
}

#[derive(Serialize, Deserialize)]
pub struct ClaimsView {
    pub claims: Vec<Claim>,
    pub change_requests: Vec<ChangeRequest>,
    /// Named locks (holders and waiters).
    #[serde(default)]
    pub locks: Vec<crate::store::LockView>,
    /// Values of sequences handed out (held and released).
    #[serde(default)]
    pub allocations: Vec<crate::store::Allocation>,
    /// With sync: the central allocators' values of every system of the owner (a value a
    /// dead system still holds, too); absent when the central could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_allocations: Option<Vec<ccm_sync::wire::AllocationV1>>,
}

impl ClaimsView {
    /// The central's allocations, asked for at most `wait`.
    pub async fn with_fleet(
        mut self,
        client: Option<&ccm_sync::Client>,
        wait: std::time::Duration,
    ) -> ClaimsView {
        if let Some(client) = client {
            let asked = tokio::time::timeout(wait, crate::fleet::allocations(client, None)).await;
            self.fleet_allocations = asked.ok().and_then(Result::ok);
        }
        self
    }
}

async fn claims(State(state): State<AppState>) -> Result<Json<ClaimsView>, ApiError> {
    Ok(Json(
        ClaimsView {
            claims: state.store.claims().await?,
            change_requests: state.store.change_requests().await?,
            locks: state.store.locks().await?,
            allocations: state.store.allocations().await?,
            fleet_allocations: None,
        }
        .with_fleet(
            state.sync.as_ref().filter(|c| c.has_token() && state.config.current().sync.enabled()),
            std::time::Duration::from_secs(3),
        )
        .await,
    ))
}

/// Query of `GET /api/conflicts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConflictsQuery {
    repo: Option<String>,
}

/// One repository's recorded prediction.
#[derive(Serialize, Deserialize)]
pub struct RepoConflicts {
    pub repo: String,
    pub conflicts: Vec<crate::conflicts::PredictedConflict>,
}

async fn conflicts(
    State(state): State<AppState>,
    query: Result<Query<ConflictsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<RepoConflicts>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let all = state.store.all_conflicts().await?;
    Ok(Json(
        all.into_iter()
            .filter(|(repo, _)| query.repo.as_ref().is_none_or(|r| r == repo))
            .map(|(repo, conflicts)| RepoConflicts { repo, conflicts })
            .collect(),
    ))
}

/// `POST /api/tasks/{id}/review`: comments on the task's diff, and "request changes".
async fn review_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<crate::review::ReviewRequest>,
) -> Result<Json<crate::review::Reviewed>, ApiError> {
    let policy = RetryPolicy::from(&*state.config.current());
    let reviewed =
        crate::review::review(&state.store, &id, &body, &actor(&headers)?, policy).await?;
    if body.request_changes {
        state.metrics.count_event(ccm_schema::TaskEvent::ChangesRequested.name());
        state.wake_scheduler();
    }
    Ok(Json(reviewed))
}

async fn task_diff(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::conflicts::TaskDiff>, ApiError> {
    Ok(Json(crate::conflicts::diff(&state.store, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    ended: Option<u32>,
}

/// Live agents, then (at most `?ended=N` of) the others, the most recently started first.
async fn list_agents(
    State(state): State<AppState>,
    query: Result<Query<AgentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ccm_schema::Agent>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(state.store.agents(query.ended.map(i64::from)).await?))
}

async fn list_decisions(
    State(state): State<AppState>,
) -> Result<Json<Vec<ccm_schema::Decision>>, ApiError> {
    Ok(Json(state.store.decisions().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    #[serde(default)]
    all: bool,
}

/// Open alerts, newest first; `?all=true` includes the resolved ones.
async fn list_alerts(
    State(state): State<AppState>,
    query: Result<Query<AlertsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ccm_schema::Alert>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(state.store.alerts(query.all).await?))
}

async fn acknowledge_alert(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ccm_schema::Alert>, ApiError> {
    Ok(Json(state.store.acknowledge_alert(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    answer: String,
    /// The answerer's words (a change request's rejection: the reason its requester is told).
    #[serde(default)]
    reason: Option<String>,
}

async fn answer_decision(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AnswerBody>,
) -> Result<Json<ccm_schema::Decision>, ApiError> {
    let policy = RetryPolicy::from(&*state.config.current());
    let decision = state
        .store
        .answer_decision_with(&id, &body.answer, &actor(&headers)?, policy, body.reason.as_deref())
        .await?;
    state.decisions.notify_waiters();
    state.wake();
    Ok(Json(decision))
}

async fn list_contexts(State(state): State<AppState>) -> Result<Json<Vec<Context>>, ApiError> {
    Ok(Json(state.store.contexts().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewContext {
    path: PathBuf,
}

async fn add_context(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewContext>,
) -> Result<(StatusCode, Json<Context>), ApiError> {
    if !body.path.is_absolute() {
        return Err(ApiError::BadRequest(format!(
            "path: must be absolute, got `{}`",
            body.path.display()
        )));
    }
    let probe = tokio::task::spawn_blocking(move || ContextProbe::inspect(&body.path))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(state.store.upsert_context(&probe).await?)))
}

async fn remove_context(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Context>, ApiError> {
    Ok(Json(state.store.remove_context(&key).await?))
}

/// `POST /api/land`: queues tasks for landing; answers their landings.
async fn land_tasks(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<crate::land::LandRequest>,
) -> Result<Json<Vec<crate::store::Landing>>, ApiError> {
    let landings = crate::land::enqueue_request(&state.store, &state.home, &body).await?;
    state.land_wake.notify_one();
    Ok(Json(landings))
}

/// `GET /api/land`: every land queue with what each entry waits for.
async fn land_status(
    State(state): State<AppState>,
) -> Result<Json<Vec<crate::land::Queue>>, ApiError> {
    Ok(Json(crate::land::status(&state.store).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    #[serde(default)]
    repo: Option<PathBuf>,
}

/// `GET /api/land/plan?repo=PATH`: the finished, unlanded tasks in queue order.
async fn land_plan(
    State(state): State<AppState>,
    query: Result<Query<PlanQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<crate::land::PlannedTask>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(crate::land::plan(&state.store, &state.home, query.repo.as_deref()).await?))
}
