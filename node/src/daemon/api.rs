//! Routes of the local HTTP API and their handlers.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness, no token |
//! | `GET /metrics` | Prometheus text format, no token |
//! | `GET /api/status` | [`Status`] |
//! | `GET /api/tasks?state=` | tasks, oldest first |
//! | `POST /api/tasks` | create a task ([`NewTask`]), 201 |
//! | `GET /api/tasks/{id}` | one task (id or unique prefix) with its log |
//! | `POST /api/tasks/{id}/events` | apply a [`TaskEvent`]: `{"event": "cancel", "reason": "..."}` |
//! | `POST /api/tasks/{id}/dependencies` | `{"depends_on": [ids]}`; a cycle answers 409 |
//! | `GET /api/contexts`, `POST /api/contexts` `{"path"}`, `DELETE /api/contexts/{key}` | contexts |
//! | `GET /api/agents` | agents, live first |
//! | `GET /api/decisions`, `POST /api/decisions/{id}` `{"answer"}` | questions for the human |
//!
//! Every `/api` route needs the bearer token; every route checks `Host` and `Origin`. The
//! `X-Ccm-Actor` header names who acts (the CLI sends `cli`); it defaults to `api`.

use std::path::PathBuf;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ccm_schema::{Context, Task, TaskEvent};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::{security, AppState};
use crate::status::Status;
use crate::store::{ContextProbe, NewTask, RetryPolicy, TaskDetail, TaskFilter};

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/tasks", get(list_tasks).post(create_task))
        .route("/tasks/{id}", get(show_task))
        .route("/tasks/{id}/events", post(task_event))
        .route("/tasks/{id}/dependencies", post(add_dependencies))
        .route("/contexts", get(list_contexts).post(add_context))
        .route("/contexts/{key}", axum::routing::delete(remove_context))
        .route("/agents", get(list_agents))
        .route("/decisions", get(list_decisions))
        .route("/decisions/{id}", post(answer_decision))
        .route_layer(middleware::from_fn_with_state(state.clone(), security::require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), super::metrics::count_request))
        .layer(middleware::from_fn_with_state(state.clone(), security::check_host_and_origin))
        .with_state(state)
}

/// `Json` whose rejection is an [`ApiError::BadRequest`] naming the field that was wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::BadRequest(rejection_message(&rejection))),
        }
    }
}

fn rejection_message(rejection: &JsonRejection) -> String {
    let text = rejection.body_text();
    text.strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .map(|detail| format!("invalid body: {detail}"))
        .unwrap_or(text)
}

fn actor(headers: &HeaderMap) -> String {
    headers
        .get("x-ccm-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("api")
        .chars()
        .take(64)
        .collect()
}

async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "pid": state.daemon.pid, "version": env!("CARGO_PKG_VERSION") }))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = state.metrics.render(&state.store).await?;
    Ok(([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

async fn status(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    Ok(Json(Status::gather(&state.store, Some(state.daemon.clone())).await?))
}

async fn list_tasks(
    State(state): State<AppState>,
    query: Result<Query<TaskFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let Query(filter) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(Json(state.store.tasks(&filter).await?))
}

async fn create_task(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewTask>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let task = state.store.create_task(new, &state.config.tasks, &actor(&headers)).await?;
    state.metrics.tasks_created.inc();
    state.wake();
    Ok((StatusCode::CREATED, Json(task)))
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
    let policy = RetryPolicy::from(&*state.config);
    let (task, _runtime_effects) =
        state.store.apply_event(&id, event, &reason, &actor(&headers), policy).await?;
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
    let task = state.store.add_dependencies(&id, &body.depends_on, &actor(&headers)).await?;
    state.wake();
    Ok(Json(task))
}

async fn list_agents(
    State(state): State<AppState>,
) -> Result<Json<Vec<ccm_schema::Agent>>, ApiError> {
    Ok(Json(state.store.agents().await?))
}

async fn list_decisions(
    State(state): State<AppState>,
) -> Result<Json<Vec<ccm_schema::Decision>>, ApiError> {
    Ok(Json(state.store.decisions().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    answer: String,
}

async fn answer_decision(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Answer>,
) -> Result<Json<ccm_schema::Decision>, ApiError> {
    let policy = RetryPolicy::from(&*state.config);
    let decision = state.store.answer_decision(&id, &body.answer, &actor(&headers), policy).await?;
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
