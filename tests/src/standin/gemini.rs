//! The Gemini API as Gemini CLI calls it: `POST /v1beta/models/<model>:generateContent` and
//! `:streamGenerateContent?alt=sse` (a `GenerateContentResponse` per SSE `data:` line), with
//! `functionCall` parts for tool calls and `usageMetadata` on every answer. A rate limit is
//! HTTP 429 with the `google.rpc.Status` error body (`RESOURCE_EXHAUSTED`, a `QuotaFailure`
//! and a `RetryInfo` whose `retryDelay` says when to come back).
//!
//! Gemini CLI's tools: `write_file` (`file_path`, `content`) and `run_shell_command`
//! (`command`).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};

use super::{script, sse, Script, Standin, Turn};

/// Prompt tokens the stand-in reports per answer.
pub const PROMPT_TOKENS: u64 = 100;
/// Output tokens the stand-in reports per answer.
pub const OUTPUT_TOKENS: u64 = 10;

/// Starts a Gemini API stand-in answering with `turns`, in order.
pub fn start(turns: Vec<Turn>) -> Standin {
    let script = script(turns);
    let router = axum::Router::new()
        .route("/v1beta/models/{*call}", post(generate))
        .with_state(script.clone());
    Standin::serve(script, router)
}

async fn generate(
    State(script): State<Arc<Script>>,
    Path(call): Path<String>,
    RawQuery(query): RawQuery,
    Json(body): Json<Value>,
) -> Response {
    let path = match &query {
        Some(query) => format!("/v1beta/models/{call}?{query}"),
        None => format!("/v1beta/models/{call}"),
    };
    let (model, method) = call.split_once(':').unwrap_or((&call, ""));
    let model = model.to_string();
    let offers_tools =
        body.get("tools").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    script.record(path, body);
    let turn = if offers_tools { script.next_turn() } else { Turn::Say("ok".into()) };
    let part = match turn {
        Turn::Write { path, content } => json!({
            "functionCall": { "name": "write_file", "args": { "file_path": path, "content": content } }
        }),
        Turn::Shell(command) => json!({
            "functionCall": { "name": "run_shell_command", "args": { "command": command } }
        }),
        Turn::Tool { name, args } => json!({ "functionCall": { "name": name, "args": args } }),
        Turn::Say(text) => json!({ "text": text }),
        Turn::RateLimited { retry_after_secs } => return rate_limited(&model, retry_after_secs),
    };
    let answer = json!({
        "candidates": [{
            "content": { "role": "model", "parts": [part] },
            "finishReason": "STOP",
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": PROMPT_TOKENS,
            "candidatesTokenCount": OUTPUT_TOKENS,
            "totalTokenCount": PROMPT_TOKENS + OUTPUT_TOKENS
        },
        "modelVersion": model,
        "responseId": "standin"
    });
    if method == "streamGenerateContent" {
        sse(&[(None, answer)])
    } else {
        Json(answer).into_response()
    }
}

/// 429 `RESOURCE_EXHAUSTED` as the Gemini API sends it.
fn rate_limited(model: &str, retry_after_secs: u64) -> Response {
    let body = json!({
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": { "location": "global", "model": model },
                        "quotaValue": "10"
                    }]
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits"
                    }]
                },
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": format!("{retry_after_secs}s")
                }
            ]
        }
    });
    (axum::http::StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}
