//! A stand-in of the Anthropic Messages API (`POST /v1/messages`), for Claude Code.
//!
//! Each request that offers tools (the agent's main loop) takes the next [`Turn`] of the script:
//! tool calls, a final text, or a 429 (its reset time fixed, or a while after the answer). Other
//! requests (titles, summaries) get a short text and take nothing; neither does Claude Code's
//! compaction of its context (a request for a summary of the conversation), answered with one.
//! When the script is used up, the answer is a final text `done`. With
//! `"stream": true` the answer is the documented server-sent event stream (`message_start`,
//! `content_block_start` / `content_block_delta` / `content_block_stop` per block,
//! `message_delta` with the stop reason and usage, `message_stop`); without it, one message
//! object. A 429 carries `retry-after` and `anthropic-ratelimit-*-reset` headers and the
//! documented error body. `HEAD /` answers 200 (Claude Code checks that the API is reachable).
//!
//! String values of a tool call's input may contain `{cwd}`: it becomes the agent's working
//! directory, read from the "Primary working directory:" line Claude Code puts in its system
//! prompt, so a script can name files inside a worktree it does not know in advance.
//! `{last:id}` becomes the `id` field of the JSON text of the latest tool result in the
//! request (e.g. the task an MCP tool just created), so a script can use an id it is given;
//! `{last:uuid}` becomes the first UUID in the text of that tool result (e.g. the change
//! request a refused write names in its error).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{head, post};
use axum::Json;
use serde_json::{json, Value};

use super::Server;

/// Input and output tokens each answer reports.
pub const INPUT_TOKENS: u64 = 100;
pub const OUTPUT_TOKENS: u64 = 20;

/// One answer of the model.
#[derive(Debug, Clone)]
pub enum Turn {
    /// Tool calls (`stop_reason: tool_use`), each a tool name and its input.
    Tools(Vec<(String, Value)>),
    /// A final text (`stop_reason: end_turn`).
    Text(String),
    /// `429 Too Many Requests`, with `retry-after: retry_after_secs` and the rate limits reset
    /// at `reset` (RFC 3339).
    RateLimited { retry_after_secs: u64, reset: String },
    /// `turn`, its usage saying the request's context held `tokens` tokens (split over
    /// `input_tokens`, `cache_read_input_tokens` and `cache_creation_input_tokens`).
    Context { tokens: u64, turn: Box<Turn> },
    /// As [`Turn::RateLimited`], the limits resetting `reset_in_secs` after the answer (whole
    /// seconds, as the headers give them).
    RateLimitedFor { retry_after_secs: u64, reset_in_secs: u64 },
}

impl Turn {
    /// One tool call.
    pub fn tool(name: &str, input: Value) -> Turn {
        Turn::Tools(vec![(name.to_string(), input)])
    }

    /// A `Write` of `content` to `path` (relative to the agent's working directory).
    pub fn write(path: &str, content: &str) -> Turn {
        Turn::tool("Write", json!({ "file_path": format!("{{cwd}}/{path}"), "content": content }))
    }

    /// A `Bash` command.
    pub fn bash(command: &str) -> Turn {
        Turn::tool("Bash", json!({ "command": command, "description": "run a command" }))
    }

    pub fn text(text: &str) -> Turn {
        Turn::Text(text.to_string())
    }

    /// This turn, reporting a context of `tokens` tokens.
    pub fn with_context(self, tokens: u64) -> Turn {
        Turn::Context { tokens, turn: Box::new(self) }
    }
}

#[derive(Default)]
struct Script {
    turns: VecDeque<Turn>,
    requests: Vec<Value>,
    next_id: u64,
}

/// A running stand-in; stops when dropped.
pub struct Anthropic {
    server: Server,
    script: Arc<Mutex<Script>>,
}

impl Anthropic {
    /// Serves `turns`, in order, to the agent's main-loop requests.
    pub fn start(turns: Vec<Turn>) -> Anthropic {
        let script = Arc::new(Mutex::new(Script { turns: turns.into(), ..Script::default() }));
        let shared = Arc::clone(&script);
        let router = axum::Router::new().route("/", head(|| async { StatusCode::OK })).route(
            "/v1/messages",
            post(move |body: Json<Value>| {
                let script = Arc::clone(&shared);
                async move { answer(&script, body.0) }
            }),
        );
        Anthropic { server: Server::start(router), script }
    }

    /// The base URL to give Claude Code as `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The bodies of the requests received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.script.lock().expect("script lock").requests.clone()
    }

    /// The environment that points Claude Code at this stand-in and keeps it quiet and offline.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ANTHROPIC_BASE_URL", self.url()),
            ("ANTHROPIC_API_KEY", "sk-ant-standin".to_string()),
            ("DISABLE_TELEMETRY", "1".to_string()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
            ("DISABLE_AUTOUPDATER", "1".to_string()),
            ("DISABLE_ERROR_REPORTING", "1".to_string()),
            ("IS_SANDBOX", "1".to_string()),
        ]
    }
}

impl Anthropic {
    /// Sets up `command` (a `ccm up` of `home`) so that its agents find the real `claude` of
    /// `tests/agent-clis` first on their PATH, with a user home of their own inside `home`,
    /// talking to this stand-in.
    pub fn claude_env(&self, home: &crate::TestHome, command: &mut std::process::Command) {
        let bin = crate::agent_cli("claude");
        let path = format!(
            "{}:{}",
            bin.parent().expect("the CLI's directory").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let user_home = home.dir.path().join("user");
        std::fs::create_dir_all(&user_home).expect("the agents' user home");
        command.env("PATH", path).env("HOME", &user_home);
        for (name, value) in self.env() {
            command.env(name, value);
        }
    }
}

fn answer(script: &Mutex<Script>, body: Value) -> Response {
    let mut script = script.lock().expect("script lock");
    let main_loop = body["tools"].as_array().is_some_and(|tools| !tools.is_empty());
    let turn = if compaction(&body) {
        // Claude Code compacting its context (it offers tools, but asks for text only).
        Some(Turn::text(
            "<analysis>the work so far</analysis>\n<summary>the conversation so far</summary>",
        ))
    } else if main_loop {
        script.turns.pop_front()
    } else {
        Some(Turn::text("ok"))
    };
    let turn = turn.unwrap_or_else(|| Turn::text("done"));
    let cwd = working_directory(&body).unwrap_or_default();
    let last_id = last_result_field(&body, "id").unwrap_or_default();
    let last_uuid = last_result_text(&body).as_deref().and_then(first_uuid).unwrap_or_default();
    let model = body["model"].as_str().unwrap_or("claude-standin").to_string();
    let stream = body["stream"].as_bool() == Some(true);
    script.requests.push(body);
    let (mut turn, mut input) = (turn, json!({ "input_tokens": INPUT_TOKENS }));
    while let Turn::Context { tokens, turn: inner } = turn {
        let cached = tokens.saturating_sub(INPUT_TOKENS);
        let written = cached.min(500);
        input = json!({
            "input_tokens": tokens - cached,
            "cache_read_input_tokens": cached - written,
            "cache_creation_input_tokens": written,
        });
        turn = *inner;
    }
    let usage = |output_tokens: u64| {
        let mut usage = input.clone();
        usage["output_tokens"] = json!(output_tokens);
        usage
    };
    let (blocks, stop_reason) = match turn {
        // Unwrapped above.
        Turn::Context { .. } => (vec![json!({ "type": "text", "text": "done" })], "end_turn"),
        Turn::RateLimited { retry_after_secs, reset } => {
            return rate_limited(retry_after_secs, &reset)
        }
        Turn::RateLimitedFor { retry_after_secs, reset_in_secs } => {
            let reset = std::time::SystemTime::now() + Duration::from_secs(reset_in_secs);
            let reset = humantime::format_rfc3339_seconds(reset).to_string();
            return rate_limited(retry_after_secs, &reset);
        }
        Turn::Text(text) => (vec![json!({ "type": "text", "text": text })], "end_turn"),
        Turn::Tools(calls) => {
            let blocks = calls
                .into_iter()
                .map(|(name, input)| {
                    script.next_id += 1;
                    json!({
                        "type": "tool_use",
                        "id": format!("toolu_standin_{}", script.next_id),
                        "name": name,
                        "input": fill_cwd(
                            fill(fill(input, "{last:id}", &last_id), "{last:uuid}", &last_uuid),
                            &cwd,
                        ),
                    })
                })
                .collect();
            (blocks, "tool_use")
        }
    };
    script.next_id += 1;
    let id = format!("msg_standin_{}", script.next_id);
    if !stream {
        let message = json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": usage(OUTPUT_TOKENS),
        });
        return Json(message).into_response();
    }
    let mut events = vec![(
        "message_start",
        json!({ "type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(1),
        }}),
    )];
    for (index, block) in blocks.iter().enumerate() {
        let (start, delta) = match block["type"].as_str() {
            Some("text") => (
                json!({ "type": "text", "text": "" }),
                json!({ "type": "text_delta", "text": block["text"] }),
            ),
            _ => (
                json!({ "type": "tool_use", "id": block["id"], "name": block["name"], "input": {} }),
                json!({ "type": "input_json_delta", "partial_json": block["input"].to_string() }),
            ),
        };
        events.push((
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": start }),
        ));
        events.push((
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": index, "delta": delta }),
        ));
        events
            .push(("content_block_stop", json!({ "type": "content_block_stop", "index": index })));
    }
    events.push((
        "message_delta",
        json!({ "type": "message_delta",
                "delta": { "stop_reason": stop_reason, "stop_sequence": null },
                "usage": { "output_tokens": OUTPUT_TOKENS } }),
    ));
    events.push(("message_stop", json!({ "type": "message_stop" })));
    let text: String =
        events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect();
    ([("content-type", "text/event-stream"), ("cache-control", "no-cache")], text).into_response()
}

/// The documented 429: `rate_limit_error` with its reset headers.
fn rate_limited(retry_after_secs: u64, reset: &str) -> Response {
    let mut headers = HeaderMap::new();
    let value = |v: &str| HeaderValue::from_str(v).expect("header value");
    headers.insert("retry-after", value(&retry_after_secs.to_string()));
    for limit in ["requests", "tokens", "input-tokens", "output-tokens"] {
        headers.insert(
            axum::http::HeaderName::from_bytes(
                format!("anthropic-ratelimit-{limit}-reset").as_bytes(),
            )
            .expect("header name"),
            value(reset),
        );
    }
    let body = json!({ "type": "error", "error": {
        "type": "rate_limit_error",
        "message": "Number of request tokens has exceeded your per-minute rate limit",
    }});
    (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
}

/// Whether the request is Claude Code's compaction of its context: its last message asks for
/// a summary of the conversation.
fn compaction(body: &Value) -> bool {
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else { return false };
    let text = match &last["content"] {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => {
            blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n")
        }
        _ => return false,
    };
    text.contains("summary of the conversation so far")
}

/// The agent's working directory, from the system prompt's "Primary working directory:" line.
fn working_directory(body: &Value) -> Option<String> {
    const MARKER: &str = "Primary working directory: ";
    fn find(value: &Value) -> Option<String> {
        match value {
            Value::String(text) => text.find(MARKER).map(|at| {
                text[at + MARKER.len()..].lines().next().unwrap_or_default().trim().to_string()
            }),
            Value::Array(items) => items.iter().find_map(find),
            Value::Object(map) => map.values().find_map(find),
            _ => None,
        }
    }
    find(&body["system"]).or_else(|| find(&body["messages"]))
}

/// The field `name` of the JSON text of the latest `tool_result` block in the request.
fn last_result_field(body: &Value, name: &str) -> Option<String> {
    let value: Value = serde_json::from_str(&last_result_text(body)?).ok()?;
    value[name].as_str().map(str::to_string)
}

/// The text of the latest `tool_result` block in the request.
fn last_result_text(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    messages.iter().rev().find_map(|message| {
        let blocks = message["content"].as_array()?;
        blocks.iter().rev().find(|b| b["type"] == "tool_result").and_then(|block| {
            match &block["content"] {
                Value::String(text) => Some(text.clone()),
                Value::Array(parts) => Some(
                    parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
                ),
                _ => None,
            }
        })
    })
}

/// The first hyphenated UUID in `text`.
fn first_uuid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35)).find_map(|at| {
        let candidate = text.get(at..at + 36)?;
        let shaped = candidate.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
        shaped.then(|| candidate.to_string())
    })
}

/// `input` with `from` replaced by `to` in every string.
fn fill(input: Value, from: &str, to: &str) -> Value {
    match input {
        Value::String(text) => Value::String(text.replace(from, to)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| fill(v, from, to)).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, fill(v, from, to))).collect())
        }
        other => other,
    }
}

/// `input` with `{cwd}` replaced in every string.
fn fill_cwd(input: Value, cwd: &str) -> Value {
    match input {
        Value::String(text) => Value::String(text.replace("{cwd}", cwd)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| fill_cwd(v, cwd)).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, fill_cwd(v, cwd))).collect())
        }
        other => other,
    }
}
