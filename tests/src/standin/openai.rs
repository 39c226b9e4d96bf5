//! The OpenAI Responses API as Codex calls it: `POST /v1/responses` with `stream: true`,
//! answered with the SSE events `response.created`, `response.output_item.added`,
//! `response.output_item.done` (a `function_call` or `message` item) and `response.completed`
//! (with `usage`). A rate limit is HTTP 429 with the documented error body
//! (`rate_limit_exceeded`) and the `retry-after` and `x-ratelimit-*` headers.
//!
//! Codex's tool is `exec_command` (`cmd`); a file is written the way Codex writes files, by
//! running `apply_patch` with an `*** Add File:` patch, which Codex applies itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::{json, Value};

use super::{script, sse, Script, Standin, Turn};

/// Input tokens the stand-in reports per response.
pub const INPUT_TOKENS: u64 = 100;
/// Output tokens the stand-in reports per response.
pub const OUTPUT_TOKENS: u64 = 10;

/// Starts an OpenAI Responses stand-in answering with `turns`, in order.
pub fn start(turns: Vec<Turn>) -> Standin {
    let script = script(turns);
    let router =
        axum::Router::new().route("/v1/responses", post(respond)).with_state(script.clone());
    Standin::serve(script, router)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

async fn respond(State(script): State<Arc<Script>>, Json(body): Json<Value>) -> Response {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("gpt-5").to_string();
    script.record("/v1/responses".into(), body);
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let call = |cmd: String| {
        json!({
            "type": "function_call",
            "id": format!("fc_{n}"),
            "call_id": format!("call_{n}"),
            "name": "exec_command",
            "arguments": json!({ "cmd": cmd }).to_string(),
            "status": "completed"
        })
    };
    let item = match script.next_turn() {
        Turn::Write { path, content } => {
            let lines: String = content.lines().map(|line| format!("+{line}\n")).collect();
            call(format!(
                "apply_patch <<'PATCH'\n*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\nPATCH"
            ))
        }
        Turn::Shell(command) => call(command),
        // An MCP tool is a namespace tool: `mcp__<server>` and the tool's own name.
        Turn::Tool { name, args } => {
            let (namespace, tool) = match name.rsplit_once("__") {
                Some((namespace, tool)) if name.starts_with("mcp__") => {
                    (Some(namespace.to_string()), tool.to_string())
                }
                _ => (None, name.clone()),
            };
            let mut item = json!({
                "type": "function_call",
                "id": format!("fc_{n}"),
                "call_id": format!("call_{n}"),
                "name": tool,
                "arguments": args.to_string(),
                "status": "completed"
            });
            if let Some(namespace) = namespace {
                item["namespace"] = json!(namespace);
            }
            item
        }
        Turn::Say(text) => json!({
            "type": "message",
            "id": format!("msg_{n}"),
            "status": "completed",
            "role": "assistant",
            "content": [{ "type": "output_text", "text": text, "annotations": [] }]
        }),
        Turn::RateLimited { retry_after_secs } => return rate_limited(&model, retry_after_secs),
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": format!("resp_{n}"),
            "object": "response",
            "created_at": 1_767_225_600,
            "status": status,
            "model": model,
            "output": output,
            "usage": usage
        })
    };
    let usage = json!({
        "input_tokens": INPUT_TOKENS,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": OUTPUT_TOKENS,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS
    });
    let event = |name: &'static str, sequence: u64, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(sequence);
        (Some(name), data)
    };
    sse(&[
        event(
            "response.created",
            0,
            json!({ "response": response("in_progress", json!([]), Value::Null) }),
        ),
        event("response.output_item.added", 1, json!({ "output_index": 0, "item": item })),
        event("response.output_item.done", 2, json!({ "output_index": 0, "item": item })),
        event(
            "response.completed",
            3,
            json!({ "response": response("completed", json!([item]), usage) }),
        ),
    ])
}

/// 429 `rate_limit_exceeded` as the OpenAI API sends it, with its headers.
fn rate_limited(model: &str, retry_after_secs: u64) -> Response {
    let wait = format!("{}m{}s", retry_after_secs / 60, retry_after_secs % 60);
    let body = json!({
        "error": {
            "message": format!(
                "Rate limit reached for {model} in organization org-standin on requests per min (RPM): \
                 Limit 3, Used 3, Requested 1. Please try again in {wait}. \
                 Visit https://platform.openai.com/account/rate-limits to learn more."
            ),
            "type": "requests",
            "param": null,
            "code": "rate_limit_exceeded"
        }
    });
    let headers = [
        ("retry-after", retry_after_secs.to_string()),
        ("x-ratelimit-limit-requests", "3".to_string()),
        ("x-ratelimit-remaining-requests", "0".to_string()),
        ("x-ratelimit-reset-requests", wait),
    ];
    (axum::http::StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
}
