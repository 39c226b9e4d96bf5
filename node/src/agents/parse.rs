//! Parsers of an agent's stdout, folded one line at a time into an [`OutputSummary`].
//!
//! | Format | Produced by | Events read (all others ignored) |
//! |---|---|---|
//! | `claude` | `claude -p --output-format stream-json --verbose` | `system`/`init`, `assistant`, `result` |
//! | `gemini` | `gemini -p --output-format stream-json` | `init`, `message`, `tool_use`, `error`, `result` |
//! | `codex` | `codex exec --json` | `thread.started`, `item.completed`, `turn.completed`, `turn.failed`, `error` |
//! | `plain` | anything else | every non-empty line |
//!
//! The wire shapes are those of `agent-interfaces.md` §1.8, §1.9, §2.2 and §3.1; the fixtures
//! under `fixtures/` are written from them.
//!
//! **Invariant:** parsing never fails. Agent CLIs change their output between versions, so every
//! line is read as a loose JSON value: unknown event types, unknown fields and fields of an
//! unexpected type are ignored, and a line that is not a JSON object is only counted
//! ([`OutputSummary::unparsed_lines`]).
//!
//! Token counts are reported as each CLI reports them, and the CLIs disagree: Claude's
//! `input_tokens` excludes cache reads, while Gemini's `input_tokens` and Codex's `input_tokens`
//! include the cached part that is also reported in `cache_read_tokens`.
//!
//! A [`Quota`] is set only when the run ended on a usage or rate limit (a final error that says
//! so); a retry in progress (Claude `system`/`api_retry`, Gemini warnings) is not one. Claude
//! Code reports no reset time of a 429; with `ANTHROPIC_LOG=debug` (the built-in profile sets
//! it) its API client prints the headers of a failed call, and the parser takes `retry-after`
//! and the latest `anthropic-ratelimit-*-reset` from the 429's.
//!
//! Text lines before the first event of a JSON format are the CLI's own words (an unknown
//! option, a failed start): they become the last message, as in `plain`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most characters kept of [`OutputSummary::last_message`] (its end is kept).
pub const LAST_MESSAGE_MAX_CHARS: usize = 8_000;

/// The most characters kept of one line of plain output (its end is kept).
pub const PLAIN_LINE_MAX_CHARS: usize = 4_000;

/// The format of an agent's stdout, which selects its parser.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Claude Code `stream-json` (one JSON event per line).
    Claude,
    /// Gemini CLI `stream-json` (one JSON event per line).
    Gemini,
    /// Codex `exec --json` (one JSON event per line).
    Codex,
    /// Text: only the last non-empty line is kept.
    #[default]
    Plain,
}

/// What an agent CLI's exit status says beyond "failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitMeaning {
    /// No retry can help (bad credentials, untrusted folder, bad input); the text says why.
    Fatal(&'static str),
    /// The usage quota is exhausted.
    Quota,
}

impl OutputFormat {
    /// The meaning of the exit status `code` of the CLI that prints this format, when it has
    /// one. Gemini CLI 0.61: 41 authentication, 42 input error, 55 untrusted folder, 173 quota
    /// exhausted. Any CLI: 127 and 126, the shell's "not found" and "not executable".
    pub fn exit_meaning(self, code: i64) -> Option<ExitMeaning> {
        match (self, code) {
            (OutputFormat::Gemini, 41) => Some(ExitMeaning::Fatal("gemini cannot authenticate")),
            (OutputFormat::Gemini, 42) => Some(ExitMeaning::Fatal("gemini rejected its input")),
            (OutputFormat::Gemini, 55) => {
                Some(ExitMeaning::Fatal("gemini does not trust the folder"))
            }
            (OutputFormat::Gemini, 173) => Some(ExitMeaning::Quota),
            // The shell that runs every agent says so when it cannot start the program.
            (_, 127) => Some(ExitMeaning::Fatal("its program was not found")),
            (_, 126) => Some(ExitMeaning::Fatal("its program cannot be executed")),
            _ => None,
        }
    }
}

/// The last line of `output` that is text rather than a JSON event (a CLI's error on stderr),
/// without terminal colour codes; `None` when there is none.
pub fn last_text_line(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let line = strip_ansi(line);
        let line = line.trim();
        let event = line.starts_with('{') && serde_json::from_str::<Value>(line).is_ok();
        (!line.is_empty() && !event).then(|| keep_end(line, PLAIN_LINE_MAX_CHARS).to_string())
    })
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// How the agent's run ended, as its output says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The agent finished its turn.
    Success,
    /// The agent stopped on an error; `message` is its own wording.
    Error { message: String },
}

/// A usage or rate limit the agent hit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// The agent's wording of the limit.
    pub message: String,
    /// When the limit resets, if the output says (absolute Unix seconds).
    pub reset_at: Option<i64>,
    /// "try again in N seconds/minutes/hours" style hints, in seconds.
    pub retry_after_secs: Option<u64>,
}

/// What the node knows from an agent's output so far; fed one line at a time, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputSummary {
    pub session_id: Option<String>,
    pub model: Option<String>,
    /// The agent's last message to the human (last assistant text, or the result text when
    /// present).
    pub last_message: Option<String>,
    pub tool_calls: u32,
    /// USD cost when the CLI reports it (Claude only).
    pub cost_usd: Option<f64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    /// Tokens in the context after the latest model call: Claude's last top-level `assistant`
    /// message's `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`,
    /// Codex's last `turn.completed` `input_tokens` (cached part included), Gemini's result
    /// `input_tokens`.
    #[serde(default)]
    pub context_tokens: u64,
    /// Context compactions the output reported (Claude `system`/`compact_boundary`).
    #[serde(default)]
    pub compactions: u32,
    /// The model's context window, when the CLI reports it (Claude's result
    /// `modelUsage.*.contextWindow`, the largest).
    #[serde(default)]
    pub context_window: Option<u64>,
    /// Set by the final result event (Claude `result`, Gemini `result`, Codex
    /// `turn.completed`/`turn.failed`).
    pub outcome: Option<Outcome>,
    /// Set when the output says a usage or rate limit was hit.
    pub quota: Option<Quota>,
    /// Tool calls the CLI refused (Claude `result.permission_denials`): a permission rule, or a
    /// hook's deny (ccm's ownership gate).
    #[serde(default)]
    pub permission_denials: Vec<PermissionDenial>,
    pub lines: u64,
    /// Lines that were not JSON (for JSON formats) — counted, never fatal. A JSON value that is
    /// not an object (not an event) counts too; blank lines do not.
    pub unparsed_lines: u64,
    /// What the parser remembers between lines. Not serialized, and ignored by `==`: two
    /// summaries are equal when they say the same things.
    #[serde(skip)]
    pub state: FeedState,
}

/// A tool call the agent's CLI refused to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionDenial {
    pub tool: String,
    /// The tool's input as the model gave it (a command, a file path and content, ...).
    pub input: Value,
}

impl std::fmt::Display for PermissionDenial {
    /// `Bash \`git push\``, `Write \`/w/a.rs\``, or the tool name alone.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = ["command", "file_path", "path", "notebook_path"]
            .iter()
            .find_map(|key| str_at(&self.input, key));
        match what {
            Some(what) => write!(f, "{} `{}`", self.tool, keep_end(what, 200)),
            None => write!(f, "{}", self.tool),
        }
    }
}

/// What the parser remembers between lines; opaque. See [`OutputSummary::state`].
#[derive(Debug, Clone, Default)]
pub struct FeedState {
    /// Claude `tool_use` ids already counted (one call may be repeated over several events).
    tool_use_ids: BTreeSet<String>,
    /// Gemini: the last event was an assistant `delta` chunk, so the next chunk continues it.
    streaming: bool,
    /// The last error message seen, for a failure event that carries none.
    last_error: Option<String>,
    /// A JSON event was read: later text lines are not the CLI's error.
    events_seen: bool,
    /// Claude's API client log is showing a 429 (its headers follow).
    in_429: bool,
    /// `retry-after` and the latest `anthropic-ratelimit-*-reset` of the last 429.
    retry_after_secs: Option<u64>,
    reset_at: Option<i64>,
}

impl PartialEq for FeedState {
    /// Always equal: the state is bookkeeping, not part of what a summary says.
    fn eq(&self, _other: &FeedState) -> bool {
        true
    }
}

impl OutputSummary {
    /// Folds one line of output into the summary. Never panics; unknown event types and fields
    /// are ignored.
    pub fn feed(&mut self, format: OutputFormat, line: &str) {
        self.lines += 1;
        let line = line.trim_end_matches(['\r', '\n']);
        if format == OutputFormat::Plain {
            self.feed_plain(line);
            return;
        }
        if line.trim().is_empty() {
            return;
        }
        let event = match serde_json::from_str::<Value>(line) {
            Ok(event) if event.is_object() => event,
            _ => {
                self.unparsed_lines += 1;
                if format == OutputFormat::Claude {
                    self.claude_log_line(line);
                }
                if !self.state.events_seen {
                    self.feed_plain(line);
                }
                return;
            }
        };
        self.state.events_seen = true;
        match format {
            OutputFormat::Claude => self.feed_claude(&event),
            OutputFormat::Gemini => self.feed_gemini(&event),
            OutputFormat::Codex => self.feed_codex(&event),
            OutputFormat::Plain => {}
        }
    }

    /// Convenience: a summary of a whole output.
    pub fn of(format: OutputFormat, output: &str) -> OutputSummary {
        let mut summary = OutputSummary::default();
        for line in output.lines() {
            summary.feed(format, line);
        }
        summary
    }

    fn feed_plain(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        if let Some(quota) = claude_usage_limit(line) {
            self.quota = Some(quota);
        }
        self.last_message = Some(keep_end(line, PLAIN_LINE_MAX_CHARS).to_string());
    }

    /// Claude Code `stream-json` (§1.8).
    fn feed_claude(&mut self, event: &Value) {
        match (str_at(event, "type"), str_at(event, "subtype")) {
            (Some("system"), Some("init")) => {
                if let Some(id) = str_at(event, "session_id") {
                    self.session_id = Some(id.to_string());
                }
                if let Some(model) = str_at(event, "model") {
                    self.model = Some(model.to_string());
                }
            }
            (Some("assistant"), _) => self.claude_assistant(event),
            (Some("result"), _) => self.claude_result(event),
            (Some("system"), Some("compact_boundary")) => {
                self.compactions = self.compactions.saturating_add(1);
            }
            _ => {}
        }
        if self.session_id.is_none() {
            self.session_id = str_at(event, "session_id").map(str::to_string);
        }
    }

    fn claude_assistant(&mut self, event: &Value) {
        // Subagent messages carry the id of the tool call that started them.
        let top_level = event.get("parent_tool_use_id").is_none_or(Value::is_null);
        if let Some(usage) = event.pointer("/message/usage").filter(|_| top_level) {
            let context =
                ["input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]
                    .iter()
                    .map(|key| u64_at(usage, key).unwrap_or(0))
                    .fold(0u64, u64::saturating_add);
            if context > 0 {
                self.context_tokens = context;
            }
        }
        let Some(blocks) = event.pointer("/message/content").and_then(Value::as_array) else {
            return;
        };
        let mut texts = Vec::new();
        for block in blocks {
            match str_at(block, "type") {
                Some("tool_use") => match str_at(block, "id") {
                    Some(id) if !self.state.tool_use_ids.insert(id.to_string()) => {}
                    _ => self.tool_calls = self.tool_calls.saturating_add(1),
                },
                Some("text") if top_level => {
                    if let Some(text) = str_at(block, "text").filter(|t| !t.trim().is_empty()) {
                        texts.push(text);
                    }
                }
                _ => {}
            }
        }
        if !texts.is_empty() {
            let text = texts.join("\n\n");
            if let Some(quota) = claude_usage_limit(&text) {
                self.quota = Some(quota);
            }
            self.set_last_message(&text);
        }
    }

    fn claude_result(&mut self, event: &Value) {
        let result = str_at(event, "result").filter(|t| !t.trim().is_empty());
        if let Some(text) = result {
            self.set_last_message(text);
        }
        if let Some(cost) = event.get("total_cost_usd").and_then(Value::as_f64) {
            self.cost_usd = Some(cost);
        }
        if let Some(denials) = event.get("permission_denials").and_then(Value::as_array) {
            self.permission_denials = denials
                .iter()
                .map(|denial| PermissionDenial {
                    tool: str_at(denial, "tool_name").unwrap_or("a tool").to_string(),
                    input: denial.get("tool_input").cloned().unwrap_or(Value::Null),
                })
                .collect();
        }
        // The result's totals are cumulative: they replace, never add to, what came before.
        // `modelUsage` includes subagents, `usage` only the main loop (§1.9).
        match event.get("modelUsage").and_then(Value::as_object).filter(|m| !m.is_empty()) {
            Some(models) => {
                let window = models.values().filter_map(|m| u64_at(m, "contextWindow")).max();
                self.context_window = window.or(self.context_window);
                let sum = |key| models.values().filter_map(|m| u64_at(m, key)).sum();
                self.input_tokens = sum("inputTokens");
                self.output_tokens = sum("outputTokens");
                self.cache_read_tokens = sum("cacheReadInputTokens");
                self.cache_creation_tokens = sum("cacheCreationInputTokens");
            }
            None => {
                if let Some(usage) = event.get("usage").filter(|u| u.is_object()) {
                    self.input_tokens = u64_at(usage, "input_tokens").unwrap_or(0);
                    self.output_tokens = u64_at(usage, "output_tokens").unwrap_or(0);
                    self.cache_read_tokens = u64_at(usage, "cache_read_input_tokens").unwrap_or(0);
                    self.cache_creation_tokens =
                        u64_at(usage, "cache_creation_input_tokens").unwrap_or(0);
                }
            }
        }
        // `is_error`, not `subtype`: API failures come as subtype "success" with is_error true.
        if event.get("is_error").and_then(Value::as_bool) != Some(true) {
            self.outcome = Some(Outcome::Success);
            if let Some(quota) = result.and_then(claude_usage_limit) {
                self.quota = Some(quota);
            }
            return;
        }
        let errors = event
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| match e {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => Some(
                            str_at(other, "message")
                                .map_or_else(|| other.to_string(), str::to_string),
                        ),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|joined| !joined.trim().is_empty());
        let terminal_reason = str_at(event, "terminal_reason");
        let message = result
            .map(str::to_string)
            .or(errors)
            .or_else(|| terminal_reason.map(|reason| format!("claude stopped: {reason}")))
            .or_else(|| {
                str_at(event, "subtype").map(|subtype| format!("claude stopped: {subtype}"))
            })
            .unwrap_or_else(|| "claude reported an error".to_string());
        let status_429 = event.get("api_error_status").is_some_and(is_429);
        if let Some(quota) = claude_usage_limit(&message) {
            self.quota = Some(quota);
        } else if status_429
            || terminal_reason.is_some_and(mentions_limit)
            || mentions_limit(&message)
        {
            self.quota = Some(quota_from(&message));
        }
        self.outcome = Some(Outcome::Error { message });
        if let Some(quota) = &mut self.quota {
            quota.retry_after_secs = quota.retry_after_secs.or(self.state.retry_after_secs);
            quota.reset_at = quota.reset_at.or(self.state.reset_at);
        }
    }

    /// A line of the log Claude Code's API client prints with `ANTHROPIC_LOG=debug`: entries
    /// begin `[log_<id>]`; a 429's is followed by its headers, one `"name": "value",` a line.
    fn claude_log_line(&mut self, line: &str) {
        let line = line.trim();
        if line.starts_with("[log_") {
            // "... failed with status 429 ...", then "response error ... {" with the headers.
            self.state.in_429 = line.contains("status 429")
                || (self.state.in_429 && line.contains("response error"));
            if line.contains("status 429") {
                self.state.retry_after_secs = None;
                self.state.reset_at = None;
            }
            return;
        }
        if !self.state.in_429 {
            return;
        }
        let Some((name, value)) = line.trim_end_matches(',').split_once(':') else { return };
        let name = name.trim().trim_matches('"').to_ascii_lowercase();
        let value = value.trim().trim_matches('"');
        if name == "retry-after" {
            if let Ok(secs) = value.parse::<f64>() {
                self.state.retry_after_secs = Some(secs.max(0.0).ceil() as u64);
            }
        } else if name.starts_with("anthropic-ratelimit-") && name.ends_with("-reset") {
            if let Ok(at) = humantime::parse_rfc3339_weak(value) {
                let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let secs = i64::try_from(secs).unwrap_or(i64::MAX);
                self.state.reset_at = Some(self.state.reset_at.map_or(secs, |r| r.max(secs)));
            }
        }
    }

    /// Gemini CLI `stream-json` (§2.2).
    fn feed_gemini(&mut self, event: &Value) {
        let streaming = std::mem::take(&mut self.state.streaming);
        match str_at(event, "type") {
            Some("init") => {
                if let Some(id) = str_at(event, "session_id") {
                    self.session_id = Some(id.to_string());
                }
                if let Some(model) = str_at(event, "model") {
                    self.model = Some(model.to_string());
                }
            }
            Some("message") if str_at(event, "role") == Some("assistant") => {
                let Some(content) = str_at(event, "content") else { return };
                let delta = event.get("delta").and_then(Value::as_bool) == Some(true);
                match &mut self.last_message {
                    Some(current) if delta && streaming => {
                        current.push_str(content);
                        drop_front(current, LAST_MESSAGE_MAX_CHARS);
                    }
                    _ => self.set_last_message(content),
                }
                self.state.streaming = delta;
            }
            Some("tool_use") => self.tool_calls = self.tool_calls.saturating_add(1),
            Some("error") => {
                let severity = str_at(event, "severity");
                if matches!(severity, Some("warning" | "info")) {
                    return;
                }
                if let Some(message) = str_at(event, "message") {
                    if mentions_limit(message) || event.get("code").is_some_and(is_429) {
                        self.quota = Some(quota_from(message));
                    }
                    self.state.last_error = Some(message.to_string());
                }
            }
            Some("result") => {
                if let Some(stats) = event.get("stats").filter(|s| s.is_object()) {
                    if let Some(n) = u64_at(stats, "input_tokens") {
                        self.input_tokens = n;
                        self.context_tokens = n;
                    }
                    if let Some(n) = u64_at(stats, "output_tokens") {
                        self.output_tokens = n;
                    }
                    if let Some(n) = u64_at(stats, "cached") {
                        self.cache_read_tokens = n;
                    }
                }
                let status = str_at(event, "status");
                let error = event.get("error").filter(|e| e.is_object());
                if status.is_none_or(|s| s == "success") && error.is_none() {
                    self.outcome = Some(Outcome::Success);
                    return;
                }
                let message = error
                    .and_then(|e| str_at(e, "message"))
                    .map(str::to_string)
                    .or_else(|| self.state.last_error.clone())
                    .unwrap_or_else(|| {
                        format!("gemini ended with status {}", status.unwrap_or("error"))
                    });
                if mentions_limit(&message) || error.and_then(|e| e.get("code")).is_some_and(is_429)
                {
                    self.quota = Some(quota_from(&message));
                }
                self.outcome = Some(Outcome::Error { message });
            }
            _ => {}
        }
    }

    /// Codex `exec --json` (§3.1).
    fn feed_codex(&mut self, event: &Value) {
        match str_at(event, "type") {
            Some("thread.started") => {
                if let Some(id) = str_at(event, "thread_id") {
                    self.session_id = Some(id.to_string());
                }
            }
            Some("item.completed") => {
                let Some(item) = event.get("item") else { return };
                match str_at(item, "type") {
                    Some("agent_message") => {
                        if let Some(text) = str_at(item, "text") {
                            self.set_last_message(text);
                        }
                    }
                    Some("command_execution" | "mcp_tool_call" | "file_change" | "web_search") => {
                        self.tool_calls = self.tool_calls.saturating_add(1);
                    }
                    _ => {}
                }
            }
            Some("turn.completed") => {
                if let Some(usage) = event.get("usage") {
                    let add = |total: &mut u64, key| {
                        *total = total.saturating_add(u64_at(usage, key).unwrap_or(0));
                    };
                    add(&mut self.input_tokens, "input_tokens");
                    add(&mut self.cache_read_tokens, "cached_input_tokens");
                    add(&mut self.output_tokens, "output_tokens");
                    if let Some(n) = u64_at(usage, "input_tokens").filter(|n| *n > 0) {
                        self.context_tokens = n;
                    }
                }
                self.outcome = Some(Outcome::Success);
            }
            Some("turn.failed") => {
                let message = event
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| self.state.last_error.clone())
                    .unwrap_or_else(|| "codex turn failed".to_string());
                if mentions_limit(&message) {
                    self.quota = Some(quota_from(&message));
                }
                self.outcome = Some(Outcome::Error { message });
            }
            Some("error") => {
                if let Some(message) = str_at(event, "message") {
                    if mentions_limit(message) {
                        self.quota = Some(quota_from(message));
                    }
                    self.state.last_error = Some(message.to_string());
                }
            }
            _ => {}
        }
    }

    fn set_last_message(&mut self, text: &str) {
        self.last_message = Some(keep_end(text, LAST_MESSAGE_MAX_CHARS).to_string());
    }
}

/// `value[key]` when it is a string.
fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// `value[key]` when it is a non-negative number (a float is truncated).
fn u64_at(value: &Value, key: &str) -> Option<u64> {
    let number = value.get(key)?;
    number.as_u64().or_else(|| number.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// Whether an HTTP status field says 429 (as a number or a string).
fn is_429(status: &Value) -> bool {
    status.as_u64() == Some(429) || status.as_str().is_some_and(|s| s.trim() == "429")
}

/// The last `max` characters of `text` (all of it when shorter).
fn keep_end(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text; // no more bytes than `max`, so no more characters either
    }
    if max == 0 {
        return "";
    }
    match text.char_indices().rev().nth(max - 1) {
        Some((start, _)) => &text[start..],
        None => text,
    }
}

/// Drops characters from the front of `text` until at most `max` are left.
fn drop_front(text: &mut String, max: usize) {
    let start = text.len() - keep_end(text, max).len();
    if start > 0 {
        text.drain(..start);
    }
}

/// Whether an error text says a usage or rate limit was hit.
fn mentions_limit(text: &str) -> bool {
    let text = text.to_ascii_lowercase().replace(['_', '-'], " ");
    const WORDS: [&str; 6] = [
        "rate limit",
        "ratelimit",
        "usage limit",
        "quota",
        "resource exhausted",
        "too many requests",
    ];
    WORDS.iter().any(|word| text.contains(word)) || has_number(&text, "429")
}

/// Whether `digits` occurs in `text` as a whole number (not inside a longer one).
fn has_number(text: &str, digits: &str) -> bool {
    text.match_indices(digits).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + digits.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A quota whose message is `message`, with whatever timing hints the message holds.
fn quota_from(message: &str) -> Quota {
    Quota {
        message: keep_end(message.trim(), LAST_MESSAGE_MAX_CHARS).to_string(),
        reset_at: None,
        retry_after_secs: retry_after_secs(message),
    }
}

/// Claude's `Claude AI usage limit reached|<unix-seconds>` text, as a quota with its reset time.
fn claude_usage_limit(text: &str) -> Option<Quota> {
    const MARK: &str = "usage limit reached|";
    let at = text.to_ascii_lowercase().find(MARK)?;
    let rest = &text[at + MARK.len()..];
    let digits = &rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())];
    let mut reset_at = digits.parse::<i64>().ok()?;
    if reset_at > 100_000_000_000 {
        reset_at /= 1000; // milliseconds
    }
    Some(Quota {
        message: text[..at + MARK.len() - 1].trim().to_string(),
        reset_at: Some(reset_at),
        retry_after_secs: None,
    })
}

/// Seconds from a hint such as "try again in 2 hours 5 minutes", "retry in 37.2s" or
/// "reset after 2h52m25s" (rounded up).
fn retry_after_secs(text: &str) -> Option<u64> {
    const PHRASES: [&str; 5] =
        ["try again in", "retry in", "retry after", "reset after", "resets in"];
    let text = text.to_ascii_lowercase();
    PHRASES.iter().find_map(|phrase| {
        let at = text.find(phrase)?;
        parse_duration(&text[at + phrase.len()..])
    })
}

/// The duration at the start of `text`: one or more `<number> <unit>` pairs, summed, in whole
/// seconds rounded up; `None` if there is none.
fn parse_duration(text: &str) -> Option<u64> {
    let mut rest = text;
    let mut total = 0.0_f64;
    let mut found = false;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if found {
            if let Some(after) = rest.strip_prefix("and ") {
                rest = after.trim_start();
            }
        }
        let number_len =
            rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let Ok(number) = rest[..number_len].parse::<f64>() else { break };
        let after_number = rest[number_len..].trim_start();
        let unit_len =
            after_number.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after_number.len());
        let unit_secs = match &after_number[..unit_len] {
            "ms" | "millisecond" | "milliseconds" => 0.001,
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600.0,
            "d" | "day" | "days" => 86_400.0,
            _ => break,
        };
        total += number * unit_secs;
        found = true;
        rest = &after_number[unit_len..];
    }
    // `as` saturates, so an absurd number cannot wrap.
    found.then(|| total.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE: &str = include_str!("fixtures/claude.jsonl");
    const CLAUDE_RATE_LIMIT: &str = include_str!("fixtures/claude_rate_limit.jsonl");
    const CLAUDE_USAGE_LIMIT: &str = include_str!("fixtures/claude_usage_limit.jsonl");
    /// Claude Code 2.1.332 with `ANTHROPIC_LOG=debug` after a 429 (`retry-after: 120`, the
    /// `anthropic-ratelimit-*-reset` headers at 2030-01-01T00:00:00Z).
    const CLAUDE_429_DEBUG: &str = include_str!("fixtures/claude_429_debug.log");
    const GEMINI: &str = include_str!("fixtures/gemini.jsonl");
    const GEMINI_RATE_LIMIT: &str = include_str!("fixtures/gemini_rate_limit.jsonl");
    const CODEX: &str = include_str!("fixtures/codex.jsonl");
    const CODEX_RATE_LIMIT: &str = include_str!("fixtures/codex_rate_limit.jsonl");

    /// Checks that `output` in `format` sums up to `expected`.
    fn check(format: OutputFormat, output: &str, expected: OutputSummary) {
        assert_eq!(OutputSummary::of(format, output), expected, "{format:?} output:\n{output}");
    }

    fn error(message: &str) -> Option<Outcome> {
        Some(Outcome::Error { message: message.to_string() })
    }

    fn some(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    #[test]
    fn gemini_exit_statuses_have_their_meaning() {
        let meaning = |code| OutputFormat::Gemini.exit_meaning(code);
        assert_eq!(meaning(41), Some(ExitMeaning::Fatal("gemini cannot authenticate")));
        assert_eq!(meaning(55), Some(ExitMeaning::Fatal("gemini does not trust the folder")));
        assert_eq!(meaning(173), Some(ExitMeaning::Quota));
        assert_eq!(meaning(1), None);
        assert_eq!(OutputFormat::Codex.exit_meaning(41), None);
        assert_eq!(OutputFormat::Claude.exit_meaning(173), None);
        for format in [OutputFormat::Claude, OutputFormat::Codex, OutputFormat::Plain] {
            assert!(matches!(format.exit_meaning(127), Some(ExitMeaning::Fatal(_))));
            assert!(matches!(format.exit_meaning(126), Some(ExitMeaning::Fatal(_))));
        }
    }

    #[test]
    fn last_text_line_skips_json_events_and_colour_codes() {
        let output = "YOLO mode is enabled.\n\u{1b}[31mGemini CLI is not running in a trusted directory.\u{1b}[0m\n{\"type\":\"result\"}\n\n";
        assert_eq!(
            last_text_line(output).as_deref(),
            Some("Gemini CLI is not running in a trusted directory.")
        );
        assert_eq!(last_text_line("{\"type\":\"init\"}\n"), None);
    }

    #[test]
    fn claude_stream_gives_result_cost_and_tokens() {
        check(
            OutputFormat::Claude,
            CLAUDE,
            OutputSummary {
                session_id: some("20b9174b-7e05-4610-a44e-5190c849f2aa"),
                model: some("claude-sonnet-4-5"),
                last_message: some("Fixed add() in src/math.js; all tests pass."),
                tool_calls: 4,
                cost_usd: Some(0.0523),
                input_tokens: 412,
                output_tokens: 154,
                cache_read_tokens: 36850,
                cache_creation_tokens: 410,
                outcome: Some(Outcome::Success),
                quota: None,
                lines: 17,
                unparsed_lines: 0,
                context_tokens: 9412,
                compactions: 1,
                context_window: Some(200_000),
                ..Default::default()
            },
        );
    }

    #[test]
    fn claude_tool_use_split_over_events_counts_once() {
        let tool_use = r#"{"type":"assistant","message":{"id":"msg_1","content":[{"type":"tool_use","id":"toolu_1","name":"Bash","input":{}}]}}"#;
        let other = r#"{"type":"assistant","message":{"id":"msg_2","content":[{"type":"tool_use","id":"toolu_2","name":"Read","input":{}},{"type":"tool_use","name":"Edit"}]}}"#;
        let output = [tool_use, tool_use, other, tool_use].join("\n");
        assert_eq!(OutputSummary::of(OutputFormat::Claude, &output).tool_calls, 3);
    }

    #[test]
    fn claude_subagent_text_is_not_the_last_message() {
        let top = r#"{"type":"assistant","parent_tool_use_id":null,"message":{"content":[{"type":"text","text":"Asking a subagent."}]}}"#;
        let sub = r#"{"type":"assistant","parent_tool_use_id":"toolu_9","message":{"content":[{"type":"text","text":"Subagent chatter"}]}}"#;
        let summary = OutputSummary::of(OutputFormat::Claude, &[top, sub].join("\n"));
        assert_eq!(summary.last_message.as_deref(), Some("Asking a subagent."));
    }

    #[test]
    fn claude_429_takes_its_reset_time_from_the_logged_headers() {
        let summary = OutputSummary::of(OutputFormat::Claude, CLAUDE_429_DEBUG);
        let quota = summary.quota.expect("a 429 is a quota");
        assert_eq!(quota.retry_after_secs, Some(120));
        assert_eq!(quota.reset_at, Some(1_893_456_000));
        assert_eq!(
            summary.last_message.as_deref(),
            Some("API Error: Request rejected (429) · Number of request tokens has exceeded your per-minute rate limit")
        );
        // Headers of a response that was not a 429 are not read.
        let ok = CLAUDE_429_DEBUG
            .replace("status 429", "status 200")
            .replace("response error", "response");
        let summary = OutputSummary::of(OutputFormat::Claude, &ok);
        assert_eq!(summary.quota.map(|q| (q.retry_after_secs, q.reset_at)), Some((None, None)));
    }

    #[test]
    fn text_before_the_first_event_is_the_clis_error() {
        for format in [OutputFormat::Claude, OutputFormat::Gemini, OutputFormat::Codex] {
            let summary = OutputSummary::of(format, "error: unknown option '-x fix it'\n");
            assert_eq!(summary.last_message.as_deref(), Some("error: unknown option '-x fix it'"));
        }
        let summary = OutputSummary::of(
            OutputFormat::Claude,
            "{\"type\":\"result\",\"is_error\":false,\"result\":\"done\"}\nnoise after\n",
        );
        assert_eq!(summary.last_message.as_deref(), Some("done"));
    }

    #[test]
    fn claude_permission_denials_are_kept() {
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","permission_denials":[{"tool_name":"Bash","tool_use_id":"toolu_1","tool_input":{"command":"git add a && git commit -m x"}},{"tool_name":"Write","tool_use_id":"toolu_2","tool_input":{"file_path":"/w/a.txt","content":"x"}}]}"#;
        let summary = OutputSummary::of(OutputFormat::Claude, result);
        let denials: Vec<String> =
            summary.permission_denials.iter().map(ToString::to_string).collect();
        assert_eq!(denials, ["Bash `git add a && git commit -m x`", "Write `/w/a.txt`"]);
        assert_eq!(summary.outcome, Some(Outcome::Success));
    }

    #[test]
    fn claude_result_uses_is_error_not_subtype() {
        let cases = [
            (
                r#"{"type":"result","subtype":"success","is_error":true,"terminal_reason":"api_error","result":"API Error: 500 overloaded"}"#,
                error("API Error: 500 overloaded"),
            ),
            (
                r#"{"type":"result","subtype":"error_max_turns","is_error":true,"errors":["reached max turns (3)","stopped"]}"#,
                error("reached max turns (3); stopped"),
            ),
            (
                r#"{"type":"result","subtype":"error_during_execution","is_error":true}"#,
                error("claude stopped: error_during_execution"),
            ),
            (r#"{"type":"result","subtype":"error_odd","is_error":false}"#, Some(Outcome::Success)),
            (r#"{"type":"result","subtype":"success"}"#, Some(Outcome::Success)),
        ];
        for (line, expected) in cases {
            let summary = OutputSummary::of(OutputFormat::Claude, line);
            assert_eq!(summary.outcome, expected, "{line}");
            assert_eq!(summary.quota, None, "{line}");
        }
    }

    #[test]
    fn claude_result_without_model_usage_reads_usage() {
        let line = r#"{"type":"result","is_error":false,"result":"Hi","usage":{"input_tokens":2,"output_tokens":57,"cache_creation_input_tokens":1200,"cache_read_input_tokens":30},"modelUsage":{}}"#;
        check(
            OutputFormat::Claude,
            line,
            OutputSummary {
                last_message: some("Hi"),
                input_tokens: 2,
                output_tokens: 57,
                cache_read_tokens: 30,
                cache_creation_tokens: 1200,
                outcome: Some(Outcome::Success),
                lines: 1,
                ..Default::default()
            },
        );
    }

    #[test]
    fn claude_api_429_result_is_a_quota() {
        let summary = OutputSummary::of(OutputFormat::Claude, CLAUDE_RATE_LIMIT);
        assert_eq!(summary.session_id.as_deref(), Some("5a1e0c3d-2222-4000-8000-000000000000"));
        assert_eq!(summary.outcome, error("API Error: Rate limit reached"));
        assert_eq!(
            summary.quota,
            Some(Quota {
                message: "API Error: Rate limit reached".into(),
                reset_at: None,
                retry_after_secs: None
            })
        );
        assert_eq!(summary.cost_usd, Some(0.0));
    }

    #[test]
    fn claude_rate_limit_result_is_a_quota_with_reset_time() {
        let summary = OutputSummary::of(OutputFormat::Claude, CLAUDE_USAGE_LIMIT);
        assert_eq!(summary.outcome, error("Claude AI usage limit reached|1760018400"));
        assert_eq!(
            summary.quota,
            Some(Quota {
                message: "Claude AI usage limit reached".into(),
                reset_at: Some(1_760_018_400),
                retry_after_secs: None
            })
        );
        assert_eq!(summary.unparsed_lines, 0);
    }

    #[test]
    fn claude_limit_wording_makes_an_error_result_a_quota() {
        let quota = |line: &str| OutputSummary::of(OutputFormat::Claude, line).quota;
        let cases = [
            (
                r#"{"type":"result","is_error":true,"api_error_status":"429","result":"API Error"}"#,
                true,
            ),
            (r#"{"type":"result","is_error":true,"terminal_reason":"rate_limit"}"#, true),
            (r#"{"type":"result","is_error":true,"errors":["Usage limit exceeded"]}"#, true),
            (
                r#"{"type":"result","is_error":true,"api_error_status":500,"result":"API Error: 500"}"#,
                false,
            ),
            (r#"{"type":"result","is_error":false,"result":"I added a rate limiter."}"#, false),
        ];
        for (line, is_quota) in cases {
            assert_eq!(quota(line).is_some(), is_quota, "{line}");
        }
    }

    #[test]
    fn claude_api_retry_is_not_a_quota() {
        let retry = r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"retry_delay_ms":500,"error_status":429,"error":"rate_limit"}"#;
        let result = r#"{"type":"result","subtype":"success","is_error":false,"result":"ok"}"#;
        let summary = OutputSummary::of(OutputFormat::Claude, &[retry, result].join("\n"));
        assert_eq!((summary.quota, summary.outcome), (None, Some(Outcome::Success)));
    }

    #[test]
    fn gemini_stream_gives_result_and_tokens() {
        check(
            OutputFormat::Gemini,
            GEMINI,
            OutputSummary {
                session_id: some("c0ffee00-4444-4000-8000-000000000000"),
                model: some("gemini-2.5-pro"),
                last_message: some("There is one file: a.txt."),
                tool_calls: 1,
                cost_usd: None,
                input_tokens: 100,
                output_tokens: 20,
                cache_read_tokens: 40,
                cache_creation_tokens: 0,
                outcome: Some(Outcome::Success),
                quota: None,
                lines: 11,
                unparsed_lines: 0,
                context_tokens: 100,
                ..Default::default()
            },
        );
    }

    #[test]
    fn gemini_deltas_build_the_last_message() {
        let message = |content: &str, delta: bool| {
            format!(
                r#"{{"type":"message","role":"assistant","content":"{content}","delta":{delta}}}"#
            )
        };
        let tool =
            r#"{"type":"tool_use","tool_name":"ls","tool_id":"t1","parameters":{}}"#.to_string();
        let user = r#"{"type":"message","role":"user","content":"hi"}"#.to_string();
        let cases: Vec<(Vec<String>, &str)> = vec![
            (vec![message("Hel", true), message("lo", true)], "Hello"),
            (
                vec![
                    message("Hel", true),
                    message("lo", true),
                    tool.clone(),
                    message("Done", true),
                ],
                "Done",
            ),
            (vec![message("Hel", true), message("Whole", false)], "Whole"),
            (vec![message("Whole", false), message("Next", true), message("!", true)], "Next!"),
            (vec![message("Hel", true), user, message("lo", true)], "lo"),
            (vec![message("Done", true), tool], "Done"),
        ];
        for (lines, expected) in cases {
            let summary = OutputSummary::of(OutputFormat::Gemini, &lines.join("\n"));
            assert_eq!(summary.last_message.as_deref(), Some(expected), "{lines:#?}");
        }
    }

    #[test]
    fn gemini_quota_error_is_a_quota() {
        let message = "[API Error: 429 RESOURCE_EXHAUSTED: Quota exceeded for quota metric \
                       'Generate Content API requests per minute'. Please retry in 37.2s.]";
        check(
            OutputFormat::Gemini,
            GEMINI_RATE_LIMIT,
            OutputSummary {
                session_id: some("c0ffee00-5555-4000-8000-000000000000"),
                model: some("gemini-2.5-pro"),
                outcome: error(message),
                quota: Some(Quota {
                    message: message.into(),
                    reset_at: None,
                    retry_after_secs: Some(38),
                }),
                lines: 5,
                ..Default::default()
            },
        );
    }

    #[test]
    fn gemini_error_result_takes_its_message_from_the_last_error() {
        let lines = [
            r#"{"type":"error","severity":"warning","message":"slow"}"#,
            r#"{"type":"error","severity":"error","message":"tool registry failed"}"#,
            r#"{"type":"result","status":"error","stats":{}}"#,
        ];
        let summary = OutputSummary::of(OutputFormat::Gemini, &lines.join("\n"));
        assert_eq!((summary.outcome, summary.quota), (error("tool registry failed"), None));

        let summary =
            OutputSummary::of(OutputFormat::Gemini, r#"{"type":"result","status":"cancelled"}"#);
        assert_eq!(summary.outcome, error("gemini ended with status cancelled"));
    }

    #[test]
    fn gemini_warnings_are_not_a_quota() {
        let line =
            r#"{"type":"error","severity":"warning","message":"Rate limit hit, retrying in 1s"}"#;
        assert_eq!(OutputSummary::of(OutputFormat::Gemini, line).quota, None);
    }

    #[test]
    fn codex_stream_gives_last_message_tool_calls_and_usage() {
        check(
            OutputFormat::Codex,
            CODEX,
            OutputSummary {
                session_id: some("0199a213-81c0-7800-8aa1-bbab2a035a53"),
                model: None,
                last_message: some("Done. Fixed the typo in a.txt."),
                tool_calls: 4,
                cost_usd: None,
                input_tokens: 24763,
                output_tokens: 122,
                cache_read_tokens: 24448,
                cache_creation_tokens: 0,
                outcome: Some(Outcome::Success),
                quota: None,
                lines: 15,
                unparsed_lines: 0,
                context_tokens: 24763,
                ..Default::default()
            },
        );
    }

    #[test]
    fn codex_turns_add_up_usage() {
        let turn = |input: u64, cached: u64, output: u64| {
            format!(
                r#"{{"type":"turn.completed","usage":{{"input_tokens":{input},"cached_input_tokens":{cached},"output_tokens":{output}}}}}"#
            )
        };
        let output =
            [turn(100, 40, 10), "{\"type\":\"turn.started\"}".into(), turn(200, 150, 5)].join("\n");
        let summary = OutputSummary::of(OutputFormat::Codex, &output);
        assert_eq!(
            (summary.input_tokens, summary.cache_read_tokens, summary.output_tokens),
            (300, 190, 15)
        );
        assert_eq!(summary.outcome, Some(Outcome::Success));
    }

    #[test]
    fn codex_usage_limit_is_a_quota_with_retry_after() {
        let message = "You've hit your usage limit. Upgrade to Pro \
                       (https://openai.com/chatgpt/pricing) or try again in 2 hours 5 minutes.";
        check(
            OutputFormat::Codex,
            CODEX_RATE_LIMIT,
            OutputSummary {
                session_id: some("0199a213-81c0-7800-8aa1-ccccdddd0001"),
                outcome: error(message),
                quota: Some(Quota {
                    message: message.into(),
                    reset_at: None,
                    retry_after_secs: Some(7_500),
                }),
                lines: 6,
                ..Default::default()
            },
        );
    }

    #[test]
    fn codex_failed_turn_without_message_uses_the_last_error() {
        let lines = [
            r#"{"type":"error","message":"stream disconnected before completion"}"#,
            r#"{"type":"turn.failed","error":{}}"#,
        ];
        let summary = OutputSummary::of(OutputFormat::Codex, &lines.join("\n"));
        assert_eq!(summary.outcome, error("stream disconnected before completion"));
        assert_eq!(summary.quota, None);
        let summary = OutputSummary::of(OutputFormat::Codex, r#"{"type":"turn.failed"}"#);
        assert_eq!(summary.outcome, error("codex turn failed"));
    }

    #[test]
    fn unknown_event_types_are_ignored() {
        let unknown = [
            r#"{"type":"brand_new_event","payload":{"x":[1,2,3]}}"#,
            r#"{"type":"system","subtype":"plugin_install","name":"p"}"#,
            r#"{"no_type":true}"#,
            r#"{"type":42}"#,
            r#"{"type":"assistant","message":"not an object"}"#,
            r#"{"type":"result","is_error":"yes","modelUsage":[1],"usage":7,"total_cost_usd":"free"}"#,
            r#"{"type":"message","role":"assistant","content":["not","a","string"]}"#,
            r#"{"type":"item.completed","item":null}"#,
            r#"{"type":"thread.started","thread_id":7}"#,
            r#"{"type":"turn.completed","usage":{"input_tokens":"many"}}"#,
        ]
        .join("\n");
        for format in [OutputFormat::Claude, OutputFormat::Gemini, OutputFormat::Codex] {
            let summary = OutputSummary::of(format, &unknown);
            assert_eq!(summary.lines, 10, "{format:?}");
            assert_eq!(summary.unparsed_lines, 0, "{format:?}");
            assert_eq!((summary.input_tokens, summary.tool_calls), (0, 0), "{format:?}");
            assert_eq!(summary.last_message, None, "{format:?}");
            assert_eq!(summary.quota, None, "{format:?}");
        }
    }

    #[test]
    fn non_json_lines_are_counted_not_fatal() {
        let output = "Loading…\n\n{\"type\":\"init\",\"session_id\":\"s1\",\"model\":\"m\"}\n\
                      [1, 2]\n{\"type\":\"init\"\n\"a string\"\n   \r\n";
        for format in [OutputFormat::Claude, OutputFormat::Gemini, OutputFormat::Codex] {
            let summary = OutputSummary::of(format, output);
            assert_eq!((summary.lines, summary.unparsed_lines), (7, 4), "{format:?}");
        }
        let summary = OutputSummary::of(OutputFormat::Gemini, output);
        assert_eq!(summary.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn carriage_returns_are_trimmed() {
        let output = "{\"type\":\"thread.started\",\"thread_id\":\"t\"}\r\n\
                      {\"type\":\"item.completed\",\"item\":{\"type\":\"agent_message\",\"text\":\"ok\"}}\r\r\n";
        let summary = OutputSummary::of(OutputFormat::Codex, output);
        assert_eq!((summary.unparsed_lines, summary.last_message.as_deref()), (0, Some("ok")));
        let summary = OutputSummary::of(OutputFormat::Plain, "progress 10%\rprogress 100%\r\r\n");
        assert_eq!(summary.last_message.as_deref(), Some("progress 10%\rprogress 100%"));
    }

    #[test]
    fn plain_output_keeps_the_last_line() {
        let cases = [
            ("", None),
            ("one\ntwo\n", Some("two")),
            ("one\n  two  \n\n   \n", Some("two")),
            (
                "{\"type\":\"result\",\"is_error\":true}",
                Some("{\"type\":\"result\",\"is_error\":true}"),
            ),
        ];
        for (output, expected) in cases {
            let summary = OutputSummary::of(OutputFormat::Plain, output);
            assert_eq!(summary.last_message.as_deref(), expected, "{output:?}");
            assert_eq!((summary.outcome, summary.unparsed_lines), (None, 0));
        }
        let long = format!("start{}", "é".repeat(PLAIN_LINE_MAX_CHARS));
        let summary = OutputSummary::of(OutputFormat::Plain, &long);
        assert_eq!(summary.last_message, Some("é".repeat(PLAIN_LINE_MAX_CHARS)));
    }

    #[test]
    fn plain_output_sees_the_claude_usage_limit() {
        let summary = OutputSummary::of(
            OutputFormat::Plain,
            "working\nClaude AI usage limit reached|1760018400\n",
        );
        assert_eq!(summary.quota.and_then(|q| q.reset_at), Some(1_760_018_400));
    }

    #[test]
    fn last_message_keeps_the_end_of_long_text() {
        let text = format!("{}{}", "a".repeat(100), "✓".repeat(LAST_MESSAGE_MAX_CHARS));
        let line = serde_json::json!({"type":"item.completed","item":{"type":"agent_message","text":text}});
        let summary = OutputSummary::of(OutputFormat::Codex, &line.to_string());
        assert_eq!(summary.last_message, Some("✓".repeat(LAST_MESSAGE_MAX_CHARS)));

        let chunk =
            serde_json::json!({"type":"message","role":"assistant","content":"ab✓","delta":true});
        let output = vec![chunk.to_string(); LAST_MESSAGE_MAX_CHARS / 2].join("\n");
        let summary = OutputSummary::of(OutputFormat::Gemini, &output);
        let last = summary.last_message.unwrap_or_default();
        assert_eq!(last.chars().count(), LAST_MESSAGE_MAX_CHARS);
        assert!(last.ends_with("ab✓ab✓"), "{}", &last[last.len() - 20..]);
    }

    #[test]
    fn retry_hints_are_read_in_seconds() {
        let cases = [
            ("try again in 2 hours 5 minutes.", Some(7_500)),
            ("Please try again in 1.5s.", Some(2)),
            ("try again in 4 days 3 hours 25 minutes", Some(4 * 86_400 + 3 * 3_600 + 25 * 60)),
            ("Please retry in 37.2s", Some(38)),
            ("Your quota will reset after 2h52m25s.", Some(2 * 3_600 + 52 * 60 + 25)),
            ("try again in 30 seconds, and 500ms", Some(31)),
            ("retry after 10 minutes and 5 seconds", Some(605)),
            ("try again at 3:45 PM", None),
            ("try again later", None),
            ("try again in a while", None),
            ("rate limited", None),
        ];
        for (text, expected) in cases {
            assert_eq!(retry_after_secs(text), expected, "{text}");
        }
    }

    #[test]
    fn limit_wording_is_recognised() {
        let cases = [
            ("Rate limit reached", true),
            ("rate_limit_error", true),
            ("429 Too Many Requests", true),
            ("status: 429", true),
            ("RESOURCE_EXHAUSTED", true),
            ("Quota exceeded", true),
            ("You've hit your usage limit", true),
            ("took 4290 ms", false),
            ("connection reset", false),
        ];
        for (text, expected) in cases {
            assert_eq!(mentions_limit(text), expected, "{text}");
        }
    }

    #[test]
    fn summaries_round_trip_through_json() {
        for (format, output) in [
            (OutputFormat::Claude, CLAUDE),
            (OutputFormat::Claude, CLAUDE_USAGE_LIMIT),
            (OutputFormat::Gemini, GEMINI_RATE_LIMIT),
            (OutputFormat::Codex, CODEX),
        ] {
            let summary = OutputSummary::of(format, output);
            let json = serde_json::to_value(&summary).expect("serializable");
            assert!(json.get("state").is_none(), "{json}");
            let back: OutputSummary = serde_json::from_value(json).expect("deserializable");
            assert_eq!(back, summary);
        }
        let json =
            serde_json::to_value(Outcome::Error { message: "boom".into() }).expect("serializable");
        assert_eq!(json, serde_json::json!({"kind": "error", "message": "boom"}));
        assert_eq!(
            serde_json::to_value(Outcome::Success).expect("serializable"),
            serde_json::json!({"kind": "success"})
        );
    }
}
