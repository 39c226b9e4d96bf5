//! One hook event, parsed from whatever bytes a CLI sent, and the answer to give it.
//!
//! The three CLIs speak different dialects (`agent-interfaces.md` §1.4, §2.1, §3.2, §3.3):
//!
//! | CLI | Delivery | Event name | Keys |
//! |---|---|---|---|
//! | Claude Code | JSON on stdin | `hook_event_name` (`PreToolUse`, `Stop`, ...) | snake_case |
//! | Gemini CLI | JSON on stdin | `hook_event_name` (`BeforeTool`, `AfterAgent`, ...) | snake_case |
//! | Codex `notify` | JSON as the last argument | `type` (`agent-turn-complete`) | kebab-case |
//! | Codex lifecycle hooks | JSON on stdin | `hook_event_name`, Claude's names | snake_case |
//!
//! [`HookEvent::parse`] folds them into one [`HookEvent`] whose [`Kind`] is the shared meaning
//! (Claude `PreToolUse` and Gemini `BeforeTool` are both [`Kind::PreTool`]).
//!
//! **Invariant:** parsing never fails and never panics. The CLIs change between versions, so the
//! payload is read as a loose [`serde_json::Value`]: unknown event names become [`Kind::Other`],
//! unknown fields are ignored, and a field of an unexpected type counts as absent. Bytes that are
//! not a JSON object still make an event, of kind [`Kind::Invalid`], with the text kept in
//! [`HookEvent::raw`] and the reason in [`HookEvent::problem`], so that nothing an agent sent is
//! lost and the agent is never blocked by ccm's parser.
//!
//! The payload is read once: it is decoded (lossily) as UTF-8, parsed into a `Value`, and the
//! fields ccm needs are moved out of it. [`HookEvent::raw`] keeps at most [`MAX_STORED_BYTES`] of
//! the text.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use bounded::Keep;

/// The most bytes of a payload kept in [`HookEvent::raw`]; the rest is cut off and
/// [`TRUNCATION_MARKER`] appended.
pub const MAX_STORED_BYTES: usize = 256 * 1024;

/// Appended to [`HookEvent::raw`] when the payload was longer than [`MAX_STORED_BYTES`].
pub const TRUNCATION_MARKER: &str = "…[truncated by ccm]";

/// Which agent CLI sent a hook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// Claude Code.
    Claude,
    /// Gemini CLI.
    Gemini,
    /// OpenAI Codex (`notify` or lifecycle hooks).
    Codex,
    /// Not said by the hook's installation and not recognizable from the payload.
    Unknown,
}

impl System {
    /// Every system, in the order messages list them.
    pub const ALL: [System; 4] = [System::Claude, System::Gemini, System::Codex, System::Unknown];

    /// The one spelling used in SQLite, JSON, messages and `ccm hook --agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            System::Claude => "claude",
            System::Gemini => "gemini",
            System::Codex => "codex",
            System::Unknown => "unknown",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the [`System`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown agent system `{value}`, expected one of: claude, gemini, codex, unknown")]
pub struct ParseSystemError {
    /// The name as given.
    pub value: String,
}

impl FromStr for System {
    type Err = ParseSystemError;

    /// Reads a system's name, ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        System::ALL
            .into_iter()
            .find(|system| system.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| ParseSystemError { value: s.to_string() })
    }
}

/// The normalized meaning of an event, shared by the three CLIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A session began or resumed (Claude and Gemini `SessionStart`).
    SessionStart,
    /// A session ended (Claude and Gemini `SessionEnd`).
    SessionEnd,
    /// A prompt was submitted (Claude `UserPromptSubmit`, Gemini `BeforeAgent`).
    PromptSubmit,
    /// A tool is about to run (Claude `PreToolUse`, Gemini `BeforeTool`).
    PreTool,
    /// A tool ran (Claude `PostToolUse`, Gemini `AfterTool`).
    PostTool,
    /// A tool failed (Claude `PostToolUseFailure`, Gemini `AfterTool` with an error).
    PostToolFailure,
    /// A permission dialog would be shown (Claude `PermissionRequest`).
    PermissionRequest,
    /// Auto mode denied a tool call (Claude `PermissionDenied`).
    PermissionDenied,
    /// The CLI sent a notification (see [`HookEvent::permission_prompt`]).
    Notification,
    /// The agent finished its turn (Claude `Stop`, Gemini `AfterAgent`, Codex
    /// `agent-turn-complete`).
    Stop,
    /// The turn ended on an API error (Claude `StopFailure`; see [`HookEvent::error`]).
    StopFailure,
    /// A subagent was spawned (Claude `SubagentStart`).
    SubagentStart,
    /// A subagent finished (Claude `SubagentStop`).
    SubagentStop,
    /// Context is about to be compacted (Claude `PreCompact`, Gemini `PreCompress`).
    PreCompact,
    /// Context was compacted (Claude `PostCompact`).
    PostCompact,
    /// A JSON object whose event ccm does not interpret (unknown or unnamed).
    Other,
    /// Not a usable JSON object (see [`HookEvent::problem`]).
    Invalid,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 17] = [
        Kind::SessionStart,
        Kind::SessionEnd,
        Kind::PromptSubmit,
        Kind::PreTool,
        Kind::PostTool,
        Kind::PostToolFailure,
        Kind::PermissionRequest,
        Kind::PermissionDenied,
        Kind::Notification,
        Kind::Stop,
        Kind::StopFailure,
        Kind::SubagentStart,
        Kind::SubagentStop,
        Kind::PreCompact,
        Kind::PostCompact,
        Kind::Other,
        Kind::Invalid,
    ];

    /// The one spelling used in SQLite, JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionStart => "session_start",
            Kind::SessionEnd => "session_end",
            Kind::PromptSubmit => "prompt_submit",
            Kind::PreTool => "pre_tool",
            Kind::PostTool => "post_tool",
            Kind::PostToolFailure => "post_tool_failure",
            Kind::PermissionRequest => "permission_request",
            Kind::PermissionDenied => "permission_denied",
            Kind::Notification => "notification",
            Kind::Stop => "stop",
            Kind::StopFailure => "stop_failure",
            Kind::SubagentStart => "subagent_start",
            Kind::SubagentStop => "subagent_stop",
            Kind::PreCompact => "pre_compact",
            Kind::PostCompact => "post_compact",
            Kind::Other => "other",
            Kind::Invalid => "invalid",
        }
    }

    /// A tool call an approval rule may hold: the kinds whose answer can wait for a human.
    pub fn is_gate(self) -> bool {
        matches!(self, Kind::PreTool | Kind::PermissionRequest)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One hook event as ccm understands it. Built from any bytes; never fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookEvent {
    pub system: System,
    /// The event's own name as sent (`PreToolUse`, `BeforeTool`, `agent-turn-complete`, ...);
    /// empty when the payload names none.
    pub name: String,
    pub kind: Kind,
    /// `session_id`, or Codex notify's `thread-id`.
    pub session_id: Option<String>,
    pub cwd: Option<String>,
    /// Tool name as sent (`Write`, `write_file`, `mcp__x__y`, ...): `tool_name`, or the
    /// `details.toolName` (or `tool_name`) of a Gemini notification.
    pub tool: Option<String>,
    /// Whether the tool writes files (Claude Write, Edit, MultiEdit, NotebookEdit; Gemini
    /// write_file, replace; a Codex `apply_patch` command).
    pub writes: bool,
    /// Files the tool writes or is about to write (tool_input.file_path / notebook_path;
    /// MultiEdit's file_path; Gemini `file_path` or `path`, or a notification's
    /// `details.filePath`; the files of a Codex `apply_patch`), as sent (absolute for Claude).
    pub paths: Vec<String>,
    /// Shell command of a shell tool (Claude `Bash`, Gemini `run_shell_command`):
    /// tool_input.command; or a Gemini notification's `details.rootCommand`.
    pub command: Option<String>,
    pub notification_type: Option<String>,
    /// A notification that the agent is waiting for a human's permission (Claude
    /// `permission_prompt`, Gemini `ToolPermission`).
    pub permission_prompt: bool,
    /// Why the turn or the tool failed: StopFailure's `error` (`rate_limit`, ...),
    /// PostToolUseFailure's `error`, or a Gemini AfterTool's `tool_response.error`.
    /// None on other kinds.
    pub error: Option<String>,
    /// Stop's / AfterAgent's / Codex's last assistant message (`last_assistant_message`,
    /// `prompt_response`, `last-assistant-message`).
    pub last_message: Option<String>,
    /// The payload to store: the JSON text as received (lossy UTF-8), cut at
    /// [`MAX_STORED_BYTES`] with [`TRUNCATION_MARKER`] appended.
    pub raw: String,
    /// What was wrong with the payload when it is not a usable JSON object: empty, invalid UTF-8
    /// (replaced), malformed JSON (with serde_json's message), not an object, oversized
    /// (truncated). Several problems are joined with `; `. None when fine.
    pub problem: Option<String>,
}

impl HookEvent {
    /// Parses one payload.
    ///
    /// `system` is the CLI the hook was installed for (`ccm hook --agent X`), or None to detect it
    /// from the payload (Gemini event names → gemini; a `type` of `agent-turn-complete` or any
    /// kebab-case Codex notify shape → codex; a `hook_event_name` → claude; else unknown).
    ///
    /// Invalid UTF-8 is replaced and the result still parsed; an oversized payload is parsed
    /// whole and only its stored copy is cut. Both are reported in [`HookEvent::problem`].
    pub fn parse(system: Option<System>, bytes: &[u8]) -> HookEvent {
        // `from_utf8` checks valid text several times faster than `from_utf8_lossy`, which
        // is left for the rare payload that needs it.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        };
        let lossy = matches!(text, Cow::Owned(_));
        let json = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let parsed = if json.trim_start().is_empty() {
            Err("empty payload".to_string())
        } else {
            match bounded::parse(json, EVENT_FIELDS) {
                Ok(Value::Object(map)) => Ok(map),
                Ok(other) => Err(format!("not a JSON object but {}", describe(&other))),
                Err(e) => Err(format!("malformed JSON: {e}")),
            }
        };

        let mut problems = Vec::new();
        if let Err(problem) = &parsed {
            problems.push(problem.clone());
        }
        if lossy {
            problems.push("invalid UTF-8, replaced with U+FFFD".to_string());
        }
        let received = text.len();
        let raw = stored(text);
        if received > MAX_STORED_BYTES {
            let kept = raw.len() - TRUNCATION_MARKER.len();
            problems.push(format!("oversized payload: {received} bytes, stored the first {kept}"));
        }
        let problem = if problems.is_empty() { None } else { Some(problems.join("; ")) };

        match parsed {
            Ok(map) => from_object(system, map, raw, problem),
            Err(_) => HookEvent {
                system: system.unwrap_or(System::Unknown),
                name: String::new(),
                kind: Kind::Invalid,
                session_id: None,
                cwd: None,
                tool: None,
                writes: false,
                paths: Vec::new(),
                command: None,
                notification_type: None,
                permission_prompt: false,
                error: None,
                last_message: None,
                raw,
                problem,
            },
        }
    }

    /// The answer to give the CLI for this event: allow or deny, in that CLI's JSON output
    /// format, with `reason`.
    ///
    /// - Claude PreToolUse → `{"hookSpecificOutput": {"hookEventName": "PreToolUse",
    ///   "permissionDecision": "allow"|"deny", "permissionDecisionReason": reason}}`;
    /// - Claude PermissionRequest → `{"hookSpecificOutput": {"hookEventName":
    ///   "PermissionRequest", "decision": {"behavior": "allow"}}}` or `{"behavior": "deny",
    ///   "message": reason}`;
    /// - Gemini BeforeTool → `{"decision": "allow"|"deny", "reason": reason}`;
    /// - Codex PreToolUse → as Claude's;
    /// - other events, Codex notify and unknown systems → `None` (nothing to decide).
    ///
    /// The value is to be printed alone on stdout with exit status 0.
    pub fn decision_output(&self, allow: bool, reason: &str) -> Option<Value> {
        let verdict = if allow { "allow" } else { "deny" };
        match (self.system, self.kind) {
            // Codex lifecycle hooks answer in Claude's format.
            (System::Claude | System::Codex, Kind::PreTool) => Some(json!({
                "hookSpecificOutput": {
                    "hookEventName": "PreToolUse",
                    "permissionDecision": verdict,
                    "permissionDecisionReason": reason,
                }
            })),
            (System::Claude, Kind::PermissionRequest) => {
                let decision = if allow {
                    json!({ "behavior": "allow" })
                } else {
                    json!({ "behavior": "deny", "message": reason })
                };
                Some(json!({
                    "hookSpecificOutput": {
                        "hookEventName": "PermissionRequest",
                        "decision": decision,
                    }
                }))
            }
            (System::Gemini, Kind::PreTool) => {
                Some(json!({ "decision": verdict, "reason": reason }))
            }
            _ => None,
        }
    }
}

/// Claude's tools that write files, then Gemini's.
const WRITE_TOOLS: [&str; 6] =
    ["Write", "Edit", "MultiEdit", "NotebookEdit", "write_file", "replace"];

/// Claude's shell tool, then Gemini's.
const SHELL_TOOLS: [&str; 2] = ["Bash", "run_shell_command"];

/// Event names only Gemini sends.
const GEMINI_ONLY_EVENTS: [&str; 8] = [
    "BeforeAgent",
    "AfterAgent",
    "BeforeModel",
    "AfterModel",
    "BeforeToolSelection",
    "BeforeTool",
    "AfterTool",
    "PreCompress",
];

/// Keys only a Codex notify payload has.
const CODEX_NOTIFY_KEYS: [&str; 4] =
    ["thread-id", "turn-id", "last-assistant-message", "input-messages"];

/// Codex notify's only documented `type`.
const CODEX_TURN_COMPLETE: &str = "agent-turn-complete";

/// What parsing keeps of a payload: every field [`from_object`] and [`detect`] read, and of
/// those only the parts they read. The rest (file contents, patches, tool output) is skipped
/// without being copied; the payload itself is stored as text.
const EVENT_FIELDS: Keep = Keep::Only(&[
    ("hook_event_name", Keep::All),
    ("type", Keep::All),
    ("session_id", Keep::All),
    ("thread-id", Keep::All),
    ("turn-id", Keep::Presence),
    ("input-messages", Keep::Presence),
    ("cwd", Keep::All),
    ("tool_name", Keep::All),
    (
        "details",
        Keep::Only(&[
            ("tool_name", Keep::All),
            ("toolName", Keep::All),
            ("filePath", Keep::All),
            ("rootCommand", Keep::All),
        ]),
    ),
    (
        "tool_input",
        Keep::Only(&[
            ("file_path", Keep::All),
            ("notebook_path", Keep::All),
            ("path", Keep::All),
            ("command", Keep::All),
        ]),
    ),
    ("tool_response", Keep::Only(&[("error", Keep::All)])),
    ("notification_type", Keep::All),
    ("error", Keep::All),
    ("last_assistant_message", Keep::All),
    ("prompt_response", Keep::All),
    ("last-assistant-message", Keep::All),
]);

/// Builds the event from a parsed JSON object, moving the fields it keeps out of `map`.
fn from_object(
    hint: Option<System>,
    mut map: Map<String, Value>,
    raw: String,
    problem: Option<String>,
) -> HookEvent {
    let system = hint.unwrap_or_else(|| detect(&map));
    let tool_error = match map.get("tool_response").and_then(|r| r.get("error")) {
        None | Some(Value::Null) => None,
        Some(error) => error_text(error),
    };

    let (name, kind) = match take_string(&mut map, "hook_event_name") {
        Some(name) => {
            let kind = lifecycle_kind(system, &name, tool_error.is_some());
            (name, kind)
        }
        None => match (system, take_string(&mut map, "type")) {
            (System::Codex, Some(kind)) if kind == CODEX_TURN_COMPLETE => (kind, Kind::Stop),
            (System::Codex, Some(kind)) => (kind, Kind::Other),
            _ => (String::new(), Kind::Other),
        },
    };

    // A Gemini notification names its tool in `details`, in camelCase (`toolName`, `filePath`,
    // `rootCommand`); `tool_name` is read too.
    let mut details = match map.remove("details") {
        Some(Value::Object(details)) => details,
        _ => Map::new(),
    };
    let tool = take_string(&mut map, "tool_name")
        .or_else(|| take_string(&mut details, "toolName"))
        .or_else(|| take_string(&mut details, "tool_name"));
    let mut writes = tool.as_deref().is_some_and(|tool| WRITE_TOOLS.contains(&tool));
    let shell = tool.as_deref().is_some_and(|tool| SHELL_TOOLS.contains(&tool));
    let mut paths: Vec<String> = take_string(&mut details, "filePath").into_iter().collect();
    let mut command = take_string(&mut details, "rootCommand");
    if let Some(Value::Object(mut input)) = map.remove("tool_input") {
        if writes {
            let path = take_string(&mut input, "file_path")
                .or_else(|| take_string(&mut input, "notebook_path"))
                .or_else(|| take_string(&mut input, "path"));
            paths.extend(path);
        }
        if shell {
            command = take_string(&mut input, "command");
        }
    }
    // Codex writes files by running `apply_patch` (its PreToolUse says `Bash`), so the files
    // its patch adds, updates, deletes or moves to are what it writes.
    if let Some(patched) = command.as_deref().and_then(apply_patch_paths) {
        writes = true;
        paths.extend(patched);
    }

    let notification_type = take_string(&mut map, "notification_type");
    let permission_prompt =
        matches!(notification_type.as_deref(), Some("permission_prompt" | "ToolPermission"));
    let error = match kind {
        Kind::StopFailure | Kind::PostToolFailure => {
            map.get("error").and_then(error_text).or(tool_error)
        }
        _ => None,
    };
    let last_message = take_string(&mut map, "last_assistant_message")
        .or_else(|| take_string(&mut map, "prompt_response"))
        .or_else(|| take_string(&mut map, "last-assistant-message"));

    HookEvent {
        system,
        name,
        kind,
        session_id: take_string(&mut map, "session_id")
            .or_else(|| take_string(&mut map, "thread-id")),
        cwd: take_string(&mut map, "cwd"),
        tool,
        writes,
        paths,
        command,
        notification_type,
        permission_prompt,
        error,
        last_message,
        raw,
        problem,
    }
}

/// The files an `apply_patch` command (Codex's way of editing) writes: the paths of its
/// `*** Add File:`, `*** Update File:`, `*** Delete File:` and `*** Move to:` lines. `None`
/// when the command is not `apply_patch`.
fn apply_patch_paths(command: &str) -> Option<Vec<String>> {
    let command = command.trim_start();
    let program = command.split_whitespace().next()?;
    if !matches!(program, "apply_patch" | "applypatch") {
        return None;
    }
    const MARKS: [&str; 4] =
        ["*** Add File:", "*** Update File:", "*** Delete File:", "*** Move to:"];
    Some(
        command
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                MARKS.iter().find_map(|mark| line.strip_prefix(mark)).map(|p| p.trim().to_string())
            })
            .filter(|path| !path.is_empty())
            .collect(),
    )
}

/// Which CLI sent a payload that came without a hint.
fn detect(map: &Map<String, Value>) -> System {
    if let Some(Value::String(name)) = map.get("hook_event_name") {
        let gemini_permission =
            matches!(map.get("notification_type"), Some(Value::String(t)) if t == "ToolPermission");
        return if GEMINI_ONLY_EVENTS.contains(&name.as_str()) || gemini_permission {
            System::Gemini
        } else {
            System::Claude
        };
    }
    if let Some(Value::String(kind)) = map.get("type") {
        if kind == CODEX_TURN_COMPLETE || CODEX_NOTIFY_KEYS.iter().any(|key| map.contains_key(*key))
        {
            return System::Codex;
        }
    }
    System::Unknown
}

/// The kind of a named lifecycle event, read with the sending CLI's table.
fn lifecycle_kind(system: System, name: &str, tool_failed: bool) -> Kind {
    let kind = match system {
        System::Claude | System::Codex => claude_kind(name),
        System::Gemini => gemini_kind(name, tool_failed),
        System::Unknown => claude_kind(name).or_else(|| gemini_kind(name, tool_failed)),
    };
    kind.unwrap_or(Kind::Other)
}

/// Claude Code's (and Codex lifecycle hooks') event names.
fn claude_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "SessionStart" => Kind::SessionStart,
        "SessionEnd" => Kind::SessionEnd,
        "UserPromptSubmit" => Kind::PromptSubmit,
        "PreToolUse" => Kind::PreTool,
        "PostToolUse" => Kind::PostTool,
        "PostToolUseFailure" => Kind::PostToolFailure,
        "PermissionRequest" => Kind::PermissionRequest,
        "PermissionDenied" => Kind::PermissionDenied,
        "Notification" => Kind::Notification,
        "Stop" => Kind::Stop,
        "StopFailure" => Kind::StopFailure,
        "SubagentStart" => Kind::SubagentStart,
        "SubagentStop" => Kind::SubagentStop,
        "PreCompact" => Kind::PreCompact,
        "PostCompact" => Kind::PostCompact,
        _ => return None,
    })
}

/// Gemini CLI's event names; `AfterTool` is a failure when its `tool_response.error` is set.
fn gemini_kind(name: &str, tool_failed: bool) -> Option<Kind> {
    Some(match name {
        "SessionStart" => Kind::SessionStart,
        "SessionEnd" => Kind::SessionEnd,
        "BeforeAgent" => Kind::PromptSubmit,
        "AfterAgent" => Kind::Stop,
        "BeforeTool" => Kind::PreTool,
        "AfterTool" if tool_failed => Kind::PostToolFailure,
        "AfterTool" => Kind::PostTool,
        "PreCompress" => Kind::PreCompact,
        "Notification" => Kind::Notification,
        _ => return None,
    })
}

/// Moves a string field out of `map`; a field of another type counts as absent.
fn take_string(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(value)) => Some(value),
        _ => None,
    }
}

/// An error as text: a string as is, an object's `message`, anything else as JSON.
fn error_text(error: &Value) -> Option<String> {
    match error {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Object(fields) => match fields.get("message") {
            Some(Value::String(message)) => Some(message.clone()),
            _ => Some(error.to_string()),
        },
        other => Some(other.to_string()),
    }
}

/// What a JSON value is, for [`HookEvent::problem`].
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text to store: all of it, or its first [`MAX_STORED_BYTES`] (cut on a character
/// boundary) followed by [`TRUNCATION_MARKER`].
fn stored(text: Cow<'_, str>) -> String {
    if text.len() <= MAX_STORED_BYTES {
        return text.into_owned();
    }
    let kept = crate::text::prefix(&text, MAX_STORED_BYTES);
    let mut raw = String::with_capacity(kept.len() + TRUNCATION_MARKER.len());
    raw.push_str(kept);
    raw.push_str(TRUNCATION_MARKER);
    raw
}

/// Parsing that keeps only what is asked for ([`Keep`]): fields nobody reads are skipped
/// without being copied, and strings longer than [`MAX_STORED_BYTES`] (a file's content in a
/// `Write`, a long tool output) are replaced by [`TRUNCATION_MARKER`], so a 10 MB payload costs
/// one pass over its bytes and little memory.
mod bounded {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    use super::{MAX_STORED_BYTES, TRUNCATION_MARKER};

    /// What to keep of a JSON value.
    #[derive(Debug, Clone, Copy)]
    pub enum Keep {
        /// All of it.
        All,
        /// Only that it is there (`null`).
        Presence,
        /// Of an object, the listed fields, each with what to keep of it; any other value whole.
        Only(&'static [(&'static str, Keep)]),
    }

    pub fn parse(json: &str, keep: Keep) -> serde_json::Result<Value> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let value = keep.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(value)
    }

    impl<'de> DeserializeSeed<'de> for Keep {
        type Value = Value;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
            if let Keep::Presence = self {
                serde::Deserialize::deserialize(deserializer).map(|IgnoredAny| ())?;
                return Ok(Value::Null);
            }
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Keep {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }

        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }

        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }

        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }

        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(if v.len() > MAX_STORED_BYTES {
                TRUNCATION_MARKER.to_string()
            } else {
                v.to_string()
            }))
        }

        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut values = Vec::new();
            while let Some(value) = seq.next_element_seed(Keep::All)? {
                values.push(value);
            }
            Ok(Value::Array(values))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut object = Map::new();
            while let Some(field) = map.next_key_seed(Field(self))? {
                match field {
                    Some((key, keep)) => {
                        let value = map.next_value_seed(keep)?;
                        object.insert(key, value);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(Value::Object(object))
        }
    }

    /// An object's key, and what to keep of its value; `None` for a field to skip.
    struct Field(Keep);

    impl<'de> DeserializeSeed<'de> for Field {
        type Value = Option<(String, Keep)>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Field {
        type Value = Option<(String, Keep)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object key")
        }

        fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
            Ok(match self.0 {
                Keep::Only(fields) => fields
                    .iter()
                    .find(|(name, _)| *name == key)
                    .map(|&(_, keep)| (key.to_string(), keep)),
                Keep::All | Keep::Presence => Some((key.to_string(), Keep::All)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::time::{Duration, Instant};

    use super::*;

    /// Common fields of the Claude examples in `agent-interfaces.md` §1.4.
    const COMMON: &str = r#""session_id": "8c35adc1-0000-4000-8000-000000000000",
        "transcript_path": "/home/u/.claude/projects/-home-u-proj/8c35adc1-0000-4000-8000-000000000000.jsonl",
        "cwd": "/home/u/proj", "permission_mode": "default""#;

    /// The session of [`COMMON`].
    const SESSION: &str = "8c35adc1-0000-4000-8000-000000000000";

    /// An example object with [`COMMON`]'s fields added in front of its own.
    fn with_common(object: &str) -> String {
        let rest = object.trim_start().strip_prefix('{').expect("examples are JSON objects");
        format!("{{{COMMON}, {rest}")
    }

    /// The fields of an event that parsing derives, one line, empty ones left out.
    fn summary(event: &HookEvent) -> String {
        let mut out = format!("{} {:?} {}", event.system, event.name, event.kind);
        let optional = [
            ("session", &event.session_id),
            ("cwd", &event.cwd),
            ("tool", &event.tool),
            ("command", &event.command),
            ("notification", &event.notification_type),
            ("error", &event.error),
            ("last", &event.last_message),
            ("problem", &event.problem),
        ];
        for (label, value) in optional {
            if let Some(value) = value {
                let _ = write!(out, " {label}={value:?}");
            }
        }
        if event.writes {
            out.push_str(" writes");
        }
        if !event.paths.is_empty() {
            let _ = write!(out, " paths={:?}", event.paths);
        }
        if event.permission_prompt {
            out.push_str(" permission_prompt");
        }
        out
    }

    /// Parses `payload` with `hint`, and checks the summary and that the payload is stored whole.
    fn check(hint: Option<System>, payload: &str, expected: &str) {
        let event = HookEvent::parse(hint, payload.as_bytes());
        assert_eq!(summary(&event), expected, "payload: {payload}");
        assert_eq!(event.raw, payload);
    }

    /// Bytes an event keeps on the heap.
    fn retained_bytes(event: &HookEvent) -> usize {
        let optional = [
            &event.session_id,
            &event.cwd,
            &event.tool,
            &event.command,
            &event.notification_type,
            &event.error,
            &event.last_message,
            &event.problem,
        ];
        event.name.capacity()
            + event.raw.capacity()
            + optional.iter().filter_map(|v| v.as_ref()).map(String::capacity).sum::<usize>()
            + event.paths.iter().map(String::capacity).sum::<usize>()
    }

    #[test]
    fn claude_examples_parse_to_their_kind_and_fields() {
        let s = SESSION;
        let cwd = "/home/u/proj";
        let cases = [
            (
                r#"{"hook_event_name": "PreToolUse", "tool_name": "Bash",
                    "tool_input": { "command": "npm test", "description": "Run tests", "timeout": 120000, "run_in_background": false },
                    "tool_use_id": "toolu_01ABC"}"#,
                format!(
                    r#"claude "PreToolUse" pre_tool session="{s}" cwd="{cwd}" tool="Bash" command="npm test""#
                ),
            ),
            (
                r#"{"hook_event_name": "PermissionRequest", "tool_name": "Bash",
                    "tool_input": { "command": "rm -rf node_modules", "description": "Remove node_modules" },
                    "permission_suggestions": [ { "type": "addRules", "rules": [ { "toolName": "Bash", "ruleContent": "rm -rf node_modules" } ],
                                                  "behavior": "allow", "destination": "localSettings" } ]}"#,
                format!(
                    r#"claude "PermissionRequest" permission_request session="{s}" cwd="{cwd}" tool="Bash" command="rm -rf node_modules""#
                ),
            ),
            (
                r#"{"hook_event_name": "PostToolUse", "tool_name": "Write",
                    "tool_input": { "file_path": "/abs/file.txt", "content": "x" },
                    "tool_response": { "filePath": "/abs/file.txt", "success": true },
                    "tool_use_id": "toolu_01ABC", "duration_ms": 12}"#,
                format!(
                    r#"claude "PostToolUse" post_tool session="{s}" cwd="{cwd}" tool="Write" writes paths=["/abs/file.txt"]"#
                ),
            ),
            (
                r#"{"hook_event_name": "PostToolUseFailure", "tool_name": "Bash",
                    "tool_input": { "command": "npm test" }, "tool_use_id": "toolu_01ABC",
                    "error": "Exit code 1\n...", "is_interrupt": false, "duration_ms": 4187}"#,
                format!(
                    r#"claude "PostToolUseFailure" post_tool_failure session="{s}" cwd="{cwd}" tool="Bash" command="npm test" error="Exit code 1\n...""#
                ),
            ),
            (
                r#"{"hook_event_name": "UserPromptSubmit", "prompt": "Write a factorial function"}"#,
                format!(r#"claude "UserPromptSubmit" prompt_submit session="{s}" cwd="{cwd}""#),
            ),
            (
                r#"{"hook_event_name": "Stop", "stop_hook_active": false,
                    "last_assistant_message": "Done. Summary: ...", "background_tasks": [], "session_crons": []}"#,
                format!(
                    r#"claude "Stop" stop session="{s}" cwd="{cwd}" last="Done. Summary: ...""#
                ),
            ),
            (
                r#"{"hook_event_name": "StopFailure", "error": "rate_limit",
                    "error_details": "429 Too Many Requests", "last_assistant_message": "API Error: Rate limit reached"}"#,
                format!(
                    r#"claude "StopFailure" stop_failure session="{s}" cwd="{cwd}" error="rate_limit" last="API Error: Rate limit reached""#
                ),
            ),
            (
                r#"{"hook_event_name": "PreCompact", "trigger": "manual", "custom_instructions": ""}"#,
                format!(r#"claude "PreCompact" pre_compact session="{s}" cwd="{cwd}""#),
            ),
            (
                r#"{"hook_event_name": "SessionStart", "source": "startup", "model": "claude-sonnet-…"}"#,
                format!(r#"claude "SessionStart" session_start session="{s}" cwd="{cwd}""#),
            ),
            (
                r#"{"hook_event_name": "SessionEnd", "reason": "prompt_input_exit"}"#,
                format!(r#"claude "SessionEnd" session_end session="{s}" cwd="{cwd}""#),
            ),
        ];
        for (example, expected) in cases {
            check(Some(System::Claude), &with_common(example), &expected);
        }
        // The Notification example has no permission_mode.
        check(
            Some(System::Claude),
            r#"{ "session_id": "s1", "transcript_path": "/t.jsonl", "cwd": "/p", "hook_event_name": "Notification",
                 "message": "Claude needs your permission to use Bash", "title": "Permission needed",
                 "notification_type": "permission_prompt" }"#,
            r#"claude "Notification" notification session="s1" cwd="/p" notification="permission_prompt" permission_prompt"#,
        );
    }

    #[test]
    fn claude_event_names_map_to_kinds() {
        let cases = [
            ("SessionStart", Kind::SessionStart),
            ("SessionEnd", Kind::SessionEnd),
            ("UserPromptSubmit", Kind::PromptSubmit),
            ("PreToolUse", Kind::PreTool),
            ("PostToolUse", Kind::PostTool),
            ("PostToolUseFailure", Kind::PostToolFailure),
            ("PermissionRequest", Kind::PermissionRequest),
            ("PermissionDenied", Kind::PermissionDenied),
            ("Notification", Kind::Notification),
            ("Stop", Kind::Stop),
            ("StopFailure", Kind::StopFailure),
            ("SubagentStart", Kind::SubagentStart),
            ("SubagentStop", Kind::SubagentStop),
            ("PreCompact", Kind::PreCompact),
            ("PostCompact", Kind::PostCompact),
            ("PostToolBatch", Kind::Other),
            ("BeforeTool", Kind::Other),
        ];
        for (name, kind) in cases {
            let payload = format!(r#"{{"hook_event_name": "{name}"}}"#);
            let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
            assert_eq!((event.name.as_str(), event.kind), (name, kind));
        }
    }

    #[test]
    fn gemini_event_names_map_to_kinds() {
        let cases = [
            ("SessionStart", Kind::SessionStart),
            ("SessionEnd", Kind::SessionEnd),
            ("BeforeAgent", Kind::PromptSubmit),
            ("AfterAgent", Kind::Stop),
            ("BeforeTool", Kind::PreTool),
            ("AfterTool", Kind::PostTool),
            ("PreCompress", Kind::PreCompact),
            ("Notification", Kind::Notification),
            ("BeforeModel", Kind::Other),
            ("AfterModel", Kind::Other),
            ("BeforeToolSelection", Kind::Other),
            ("PreToolUse", Kind::Other),
        ];
        for (name, kind) in cases {
            let payload = format!(r#"{{"hook_event_name": "{name}"}}"#);
            let event = HookEvent::parse(Some(System::Gemini), payload.as_bytes());
            assert_eq!((event.name.as_str(), event.kind), (name, kind));
        }
    }

    #[test]
    fn claude_write_tools_report_the_file_they_write() {
        let cases = [
            (
                r#"{"tool_name": "Write", "tool_input": {"file_path": "/p/a.rs", "content": "x"}}"#,
                Some("/p/a.rs"),
            ),
            (
                r#"{"tool_name": "Edit", "tool_input": {"file_path": "/p/b.rs", "old_string": "a", "new_string": "b", "replace_all": false}}"#,
                Some("/p/b.rs"),
            ),
            (
                r#"{"tool_name": "MultiEdit", "tool_input": {"file_path": "/p/c.rs", "edits": [{"old_string": "a", "new_string": "b"}]}}"#,
                Some("/p/c.rs"),
            ),
            (
                r#"{"tool_name": "NotebookEdit", "tool_input": {"notebook_path": "/p/d.ipynb", "new_source": "x"}}"#,
                Some("/p/d.ipynb"),
            ),
            (r#"{"tool_name": "Read", "tool_input": {"file_path": "/p/e.rs"}}"#, None),
            (r#"{"tool_name": "Write", "tool_input": "not an object"}"#, None),
        ];
        for (fields, path) in cases {
            let rest = fields.strip_prefix('{').expect("cases are objects");
            let payload = format!(r#"{{"hook_event_name": "PreToolUse", {rest}"#);
            let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
            let tool = event.tool.as_deref().unwrap_or_default();
            assert_eq!(event.writes, tool != "Read", "{payload}");
            assert_eq!(event.paths, path.map(str::to_string).into_iter().collect::<Vec<_>>());
            assert_eq!(event.command, None);
        }
    }

    #[test]
    fn gemini_tool_events_report_written_files_and_shell_commands() {
        let base = r#""session_id": "g1", "transcript_path": "/t", "cwd": "/proj", "timestamp": "2026-01-22T10:00:00Z""#;
        check(
            Some(System::Gemini),
            &format!(
                r#"{{{base}, "hook_event_name": "BeforeTool", "tool_name": "write_file",
                    "tool_input": {{"file_path": "src/main.rs", "content": "fn main() {{}}"}},
                    "mcp_context": null, "original_request_name": "write_file"}}"#
            ),
            r#"gemini "BeforeTool" pre_tool session="g1" cwd="/proj" tool="write_file" writes paths=["src/main.rs"]"#,
        );
        check(
            Some(System::Gemini),
            &format!(
                r#"{{{base}, "hook_event_name": "AfterTool", "tool_name": "write_file",
                    "tool_input": {{"file_path": "src/main.rs", "content": "fn main() {{}}"}},
                    "tool_response": {{"llmContent": "ok", "returnDisplay": "ok"}}}}"#
            ),
            r#"gemini "AfterTool" post_tool session="g1" cwd="/proj" tool="write_file" writes paths=["src/main.rs"]"#,
        );
        check(
            Some(System::Gemini),
            &format!(
                r#"{{{base}, "hook_event_name": "BeforeTool", "tool_name": "run_shell_command",
                    "tool_input": {{"command": "cargo test", "description": "run the tests"}}}}"#
            ),
            r#"gemini "BeforeTool" pre_tool session="g1" cwd="/proj" tool="run_shell_command" command="cargo test""#,
        );
        check(
            Some(System::Gemini),
            &format!(
                r#"{{{base}, "hook_event_name": "AfterTool", "tool_name": "run_shell_command",
                    "tool_input": {{"command": "cargo test"}},
                    "tool_response": {{"llmContent": "", "returnDisplay": "", "error": null}}}}"#
            ),
            r#"gemini "AfterTool" post_tool session="g1" cwd="/proj" tool="run_shell_command" command="cargo test""#,
        );
        check(
            Some(System::Gemini),
            r#"{"hook_event_name": "BeforeTool", "tool_name": "replace", "tool_input": {"path": "/proj/a.txt"}}"#,
            r#"gemini "BeforeTool" pre_tool tool="replace" writes paths=["/proj/a.txt"]"#,
        );
    }

    #[test]
    fn gemini_after_tool_with_an_error_is_a_tool_failure() {
        check(
            Some(System::Gemini),
            r#"{"hook_event_name": "AfterTool", "tool_name": "run_shell_command", "tool_input": {"command": "false"},
                "tool_response": {"llmContent": "", "returnDisplay": "", "error": {"message": "exit code 1", "type": "EXECUTION_FAILED"}}}"#,
            r#"gemini "AfterTool" post_tool_failure tool="run_shell_command" command="false" error="exit code 1""#,
        );
        check(
            Some(System::Gemini),
            r#"{"hook_event_name": "AfterTool", "tool_name": "read_file", "tool_response": {"error": "no such file"}}"#,
            r#"gemini "AfterTool" post_tool_failure tool="read_file" error="no such file""#,
        );
    }

    #[test]
    fn gemini_tool_permission_notification_is_a_permission_prompt() {
        check(
            Some(System::Gemini),
            r#"{ "session_id": "g1", "transcript_path": "/t", "cwd": "/proj", "hook_event_name": "Notification",
                 "timestamp": "2026-01-22T10:00:00Z", "notification_type": "ToolPermission",
                 "message": "Approve run_shell_command?", "details": { "tool_name": "run_shell_command" } }"#,
            r#"gemini "Notification" notification session="g1" cwd="/proj" tool="run_shell_command" notification="ToolPermission" permission_prompt"#,
        );
    }

    #[test]
    fn gemini_notification_details_are_read_in_camel_case() {
        // As Gemini CLI 0.61 sends them: `toolName`, `filePath`, `rootCommand`.
        check(
            Some(System::Gemini),
            r#"{"session_id": "g1", "cwd": "/proj", "hook_event_name": "Notification", "notification_type": "ToolPermission",
                "message": "Approve?", "details": {"type": "exec", "toolName": "run_shell_command", "rootCommand": "git", "command": "git push"}}"#,
            r#"gemini "Notification" notification session="g1" cwd="/proj" tool="run_shell_command" command="git" notification="ToolPermission" permission_prompt"#,
        );
        check(
            Some(System::Gemini),
            r#"{"session_id": "g1", "cwd": "/proj", "hook_event_name": "Notification", "notification_type": "ToolPermission",
                "message": "Approve?", "details": {"type": "edit", "toolName": "write_file", "filePath": "/proj/a.txt", "fileDiff": "+x"}}"#,
            r#"gemini "Notification" notification session="g1" cwd="/proj" tool="write_file" notification="ToolPermission" writes paths=["/proj/a.txt"] permission_prompt"#,
        );
    }

    #[test]
    fn gemini_after_agent_is_a_stop_with_the_response() {
        check(
            Some(System::Gemini),
            r#"{"session_id": "g1", "cwd": "/proj", "hook_event_name": "AfterAgent", "prompt": "hi",
                "prompt_response": "Hello!", "stop_hook_active": false}"#,
            r#"gemini "AfterAgent" stop session="g1" cwd="/proj" last="Hello!""#,
        );
    }

    #[test]
    fn codex_notify_is_a_stop_of_its_thread() {
        check(
            Some(System::Codex),
            r#"{ "type": "agent-turn-complete",
                 "thread-id": "b5f6c1c2-1111-2222-3333-444455556666",
                 "turn-id": "12345",
                 "cwd": "/Users/example/project",
                 "client": "codex-tui",
                 "input-messages": ["Rename `foo` to `bar` and update the callsites."],
                 "last-assistant-message": "Rename complete and verified `cargo build` succeeds." }"#,
            r#"codex "agent-turn-complete" stop session="b5f6c1c2-1111-2222-3333-444455556666" cwd="/Users/example/project" last="Rename complete and verified `cargo build` succeeds.""#,
        );
    }

    #[test]
    fn codex_notify_without_thread_id_and_cwd_is_still_a_stop() {
        check(
            Some(System::Codex),
            r#"{"type": "agent-turn-complete", "turn-id": "7", "input-messages": ["go"], "last-assistant-message": "done"}"#,
            r#"codex "agent-turn-complete" stop last="done""#,
        );
        check(
            Some(System::Codex),
            r#"{"type": "agent-turn-complete", "turn-id": "7", "input-messages": [], "last-assistant-message": null}"#,
            r#"codex "agent-turn-complete" stop"#,
        );
    }

    #[test]
    fn codex_notify_of_another_type_is_other_named_after_the_type() {
        check(
            Some(System::Codex),
            r#"{"type": "approval-requested", "thread-id": "t1", "command": ["rm", "-rf", "x"]}"#,
            r#"codex "approval-requested" other session="t1""#,
        );
    }

    #[test]
    fn codex_apply_patch_writes_the_files_of_its_patch() {
        // Codex 0.171 sends its file edits as a `Bash` PreToolUse running `apply_patch`.
        check(
            Some(System::Codex),
            r#"{"session_id": "c1", "cwd": "/w", "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_use_id": "call_1",
                "tool_input": {"command": "apply_patch <<'PATCH'\n*** Begin Patch\n*** Add File: a.txt\n+hi\n*** Update File: src/b.rs\n*** Move to: src/c.rs\n@@\n-x\n+y\n*** Delete File: d.txt\n*** End Patch\nPATCH"}}"#,
            r#"codex "PreToolUse" pre_tool session="c1" cwd="/w" tool="Bash" command="apply_patch <<'PATCH'\n*** Begin Patch\n*** Add File: a.txt\n+hi\n*** Update File: src/b.rs\n*** Move to: src/c.rs\n@@\n-x\n+y\n*** Delete File: d.txt\n*** End Patch\nPATCH" writes paths=["a.txt", "src/b.rs", "src/c.rs", "d.txt"]"#,
        );
        // Another command mentioning it writes nothing.
        check(
            Some(System::Codex),
            r#"{"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "echo '*** Add File: a.txt'"}}"#,
            r#"codex "PreToolUse" pre_tool tool="Bash" command="echo '*** Add File: a.txt'""#,
        );
    }

    #[test]
    fn codex_pre_tool_use_decision_is_claudes() {
        let event = HookEvent::parse(
            Some(System::Codex),
            br#"{"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "ls"}}"#,
        );
        assert_eq!(
            event.decision_output(false, "owned by another task"),
            Some(json!({"hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": "owned by another task"}}))
        );
    }

    #[test]
    fn codex_lifecycle_hooks_parse_like_claude_with_system_codex() {
        check(
            Some(System::Codex),
            r#"{"session_id": "c1", "turn_id": "t1", "transcript_path": null, "cwd": "/w", "hook_event_name": "Stop",
                "model": "gpt-5", "permission_mode": "default", "stop_hook_active": false, "last_assistant_message": "ok"}"#,
            r#"codex "Stop" stop session="c1" cwd="/w" last="ok""#,
        );
        check(
            Some(System::Codex),
            r#"{"session_id": "c1", "cwd": "/w", "hook_event_name": "PreToolUse", "tool_name": "Bash",
                "tool_input": {"command": "ls"}, "tool_use_id": "call_1"}"#,
            r#"codex "PreToolUse" pre_tool session="c1" cwd="/w" tool="Bash" command="ls""#,
        );
    }

    #[test]
    fn unknown_event_name_is_kept_as_sent_with_kind_other() {
        check(
            Some(System::Claude),
            r#"{"session_id": "s1", "hook_event_name": "TeammateIdle", "teammate": "x"}"#,
            r#"claude "TeammateIdle" other session="s1""#,
        );
        check(None, r#"{"hook_event_name": "FutureThing"}"#, r#"claude "FutureThing" other"#);
    }

    #[test]
    fn object_without_an_event_name_is_other() {
        check(Some(System::Claude), r#"{"session_id": "s1"}"#, r#"claude "" other session="s1""#);
        check(None, r#"{}"#, r#"unknown "" other"#);
        check(None, r#"{"hook_event_name": 7, "type": 8}"#, r#"unknown "" other"#);
    }

    #[test]
    fn unknown_fields_and_fields_of_unexpected_types_are_ignored() {
        check(
            Some(System::Claude),
            r#"{"hook_event_name": "PreToolUse", "session_id": 42, "cwd": null, "tool_name": "Bash",
                "tool_input": {"command": ["not", "a", "string"]}, "brand_new": {"nested": [1, 2, 3]},
                "effort": {"level": "xhigh"}, "prompt_id": "p1"}"#,
            r#"claude "PreToolUse" pre_tool tool="Bash""#,
        );
    }

    #[test]
    fn system_is_detected_from_the_payload_without_a_hint() {
        let cases = [
            (r#"{"hook_event_name": "PreToolUse", "tool_name": "Bash"}"#, System::Claude),
            (r#"{"hook_event_name": "SessionStart", "source": "startup"}"#, System::Claude),
            (r#"{"hook_event_name": "BeforeTool", "tool_name": "write_file"}"#, System::Gemini),
            (r#"{"hook_event_name": "AfterAgent"}"#, System::Gemini),
            (r#"{"hook_event_name": "PreCompress", "trigger": "auto"}"#, System::Gemini),
            (
                r#"{"hook_event_name": "Notification", "notification_type": "ToolPermission"}"#,
                System::Gemini,
            ),
            (r#"{"type": "agent-turn-complete"}"#, System::Codex),
            (r#"{"type": "approval-requested", "thread-id": "t1"}"#, System::Codex),
            (r#"{"type": "something", "turn-id": "1"}"#, System::Codex),
            (r#"{"type": "something"}"#, System::Unknown),
            (r#"{"session_id": "s1"}"#, System::Unknown),
            ("not json", System::Unknown),
        ];
        for (payload, system) in cases {
            let event = HookEvent::parse(None, payload.as_bytes());
            assert_eq!(event.system, system, "{payload}");
        }
        let detected =
            HookEvent::parse(None, br#"{"type": "agent-turn-complete", "thread-id": "t"}"#);
        assert_eq!((detected.kind, detected.session_id.as_deref()), (Kind::Stop, Some("t")));
    }

    #[test]
    fn hint_wins_over_detection() {
        let event = HookEvent::parse(Some(System::Claude), br#"{"hook_event_name": "BeforeTool"}"#);
        assert_eq!((event.system, event.kind), (System::Claude, Kind::Other));
        let event = HookEvent::parse(Some(System::Codex), b"");
        assert_eq!((event.system, event.kind), (System::Codex, Kind::Invalid));
        let event =
            HookEvent::parse(Some(System::Unknown), br#"{"hook_event_name": "BeforeTool"}"#);
        assert_eq!((event.system, event.kind), (System::Unknown, Kind::PreTool));
    }

    #[test]
    fn malformed_json_is_invalid_and_keeps_the_text() {
        let payload = r#"{"hook_event_name": "Stop", "#;
        let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
        assert_eq!(
            (event.system, event.name.as_str(), event.kind),
            (System::Claude, "", Kind::Invalid)
        );
        assert_eq!(event.raw, payload);
        let problem = event.problem.unwrap_or_default();
        assert!(problem.starts_with("malformed JSON: EOF while parsing"), "{problem}");
    }

    #[test]
    fn json_that_is_not_an_object_is_invalid() {
        let cases = [
            ("[1, 2]", "not a JSON object but an array"),
            (r#""Stop""#, "not a JSON object but a string"),
            ("12", "not a JSON object but a number"),
            ("true", "not a JSON object but a boolean"),
            ("null", "not a JSON object but null"),
        ];
        for (payload, problem) in cases {
            let event = HookEvent::parse(None, payload.as_bytes());
            assert_eq!(event.kind, Kind::Invalid);
            assert_eq!(event.problem.as_deref(), Some(problem));
            assert_eq!(event.raw, payload);
        }
    }

    #[test]
    fn empty_input_is_invalid() {
        for payload in ["", " \n\t"] {
            let event = HookEvent::parse(Some(System::Gemini), payload.as_bytes());
            assert_eq!((event.system, event.kind), (System::Gemini, Kind::Invalid));
            assert_eq!(event.problem.as_deref(), Some("empty payload"));
            assert_eq!(event.raw, payload);
        }
    }

    #[test]
    fn invalid_utf8_is_replaced_and_the_event_still_parsed() {
        let mut payload = br#"{"hook_event_name": "Stop", "last_assistant_message": "caf"#.to_vec();
        payload.extend_from_slice(b"\xe9\"}");
        let event = HookEvent::parse(Some(System::Claude), &payload);
        assert_eq!(event.kind, Kind::Stop);
        assert_eq!(event.last_message.as_deref(), Some("caf\u{fffd}"));
        assert_eq!(event.problem.as_deref(), Some("invalid UTF-8, replaced with U+FFFD"));
        assert!(event.raw.ends_with("caf\u{fffd}\"}"));

        let event = HookEvent::parse(None, b"\xff\xfe{\x00");
        assert_eq!(event.kind, Kind::Invalid);
        let problem = event.problem.unwrap_or_default();
        assert!(problem.starts_with("malformed JSON: "), "{problem}");
        assert!(problem.ends_with("; invalid UTF-8, replaced with U+FFFD"), "{problem}");
    }

    #[test]
    fn leading_byte_order_mark_is_tolerated() {
        let event = HookEvent::parse(None, "\u{feff}{\"hook_event_name\": \"Stop\"}".as_bytes());
        assert_eq!((event.kind, event.problem), (Kind::Stop, None));
    }

    #[test]
    fn ten_megabyte_garbage_is_invalid_truncated_and_fast() {
        let started = Instant::now();
        let payload = "x".repeat(10 * 1024 * 1024);
        let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
        assert_eq!(event.kind, Kind::Invalid);
        assert_eq!(event.raw.len(), MAX_STORED_BYTES + TRUNCATION_MARKER.len());
        assert!(event.raw.ends_with(TRUNCATION_MARKER));
        let problem = event.problem.unwrap_or_default();
        assert!(problem.starts_with("malformed JSON: "), "{problem}");
        assert!(
            problem.ends_with("; oversized payload: 10485760 bytes, stored the first 262144"),
            "{problem}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    #[test]
    fn ten_megabyte_write_is_parsed_and_only_its_stored_copy_cut() {
        let started = Instant::now();
        let content = "é".repeat(5 * 1024 * 1024);
        let payload = format!(
            r#"{{"session_id": "s1", "hook_event_name": "PreToolUse", "tool_name": "Write",
                "tool_input": {{"file_path": "/p/big.txt", "content": "{content}"}}}}"#
        );
        let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
        assert_eq!(event.kind, Kind::PreTool);
        assert_eq!(event.paths, ["/p/big.txt"]);
        assert!(event.raw.len() <= MAX_STORED_BYTES + TRUNCATION_MARKER.len());
        assert!(event.raw.ends_with(TRUNCATION_MARKER));
        let problem = event.problem.clone().unwrap_or_default();
        assert!(problem.starts_with("oversized payload: "), "{problem}");
        assert!(retained_bytes(&event) < MAX_STORED_BYTES + 1024, "the content is not kept");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    #[test]
    fn oversized_payload_keeps_every_short_value_as_the_full_parse_does() {
        let small = json!({
            "session_id": "s1", "hook_event_name": "PostToolUse", "tool_name": "Bash",
            "tool_input": {"command": "ls -l", "timeout": 120000, "ratio": 0.5, "flags": [true, null, -3]},
            "tool_response": {"stdout": "a\"quoted\"\nline", "interrupted": false},
        });
        let padded =
            format!(r#"{{"padding": "{}", "event": {small}}}"#, "x".repeat(MAX_STORED_BYTES + 1));
        let bounded = bounded::parse(&padded, Keep::All).unwrap();
        assert_eq!(bounded["event"], small);
        assert_eq!(bounded["padding"], TRUNCATION_MARKER);
        let trailing = bounded::parse(r#"{"a": 1} trailing"#, Keep::All);
        assert!(trailing.is_err(), "trailing bytes are refused");
    }

    #[test]
    fn truncation_never_splits_a_character() {
        for prefix in 0..4 {
            let payload =
                format!("{}{}", "a".repeat(prefix), "€".repeat(MAX_STORED_BYTES / 3 + 10));
            let event = HookEvent::parse(None, payload.as_bytes());
            let kept = event.raw.strip_suffix(TRUNCATION_MARKER).expect("the payload is oversized");
            assert!(kept.len() <= MAX_STORED_BYTES && kept.len() > MAX_STORED_BYTES - 4);
            assert!(payload.starts_with(kept));
        }
    }

    #[test]
    fn deeply_nested_json_is_invalid_without_overflowing_the_stack() {
        // In a field ccm reads, and in one it skips.
        for field in ["error", "x"] {
            let payload =
                format!(r#"{{"hook_event_name": "Stop", "{field}": {}}}"#, "[".repeat(1_000_000));
            let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
            assert_eq!(event.kind, Kind::Invalid);
            let problem = event.problem.unwrap_or_default();
            assert!(problem.starts_with("malformed JSON: "), "{problem}");
        }
        let payload = format!(r#"{{"hook_event_name": "Stop", "error": {}}}"#, "[".repeat(200));
        let problem = HookEvent::parse(Some(System::Claude), payload.as_bytes()).problem;
        assert!(problem.unwrap_or_default().contains("recursion limit exceeded"));
    }

    #[test]
    fn typical_pre_tool_use_keeps_little_more_than_its_text() {
        let payload = with_common(&format!(
            r#"{{"hook_event_name": "PreToolUse", "tool_name": "Write",
                "tool_input": {{"file_path": "/home/u/proj/src/lib.rs", "content": "{}"}},
                "tool_use_id": "toolu_01ABC", "effort": {{"level": "high"}}, "prompt_id": "p1"}}"#,
            "fn f() {} ".repeat(60)
        ));
        assert!((900..1400).contains(&payload.len()), "about 1 KB: {}", payload.len());
        let event = HookEvent::parse(Some(System::Claude), payload.as_bytes());
        assert_eq!(event.kind, Kind::PreTool);
        assert_eq!(event.raw.capacity(), payload.len(), "the text is copied once, exactly");
        assert!(retained_bytes(&event) < payload.len() + 256, "{}", retained_bytes(&event));
    }

    #[test]
    fn claude_pre_tool_use_decision_matches_the_documented_json() {
        let event = HookEvent::parse(
            Some(System::Claude),
            br#"{"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "ls"}}"#,
        );
        assert_eq!(
            event.decision_output(false, "Blocked from phone"),
            Some(json!({"hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": "Blocked from phone"}}))
        );
        assert_eq!(
            event.decision_output(true, "approved"),
            Some(json!({"hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "allow",
                "permissionDecisionReason": "approved"}}))
        );
    }

    #[test]
    fn claude_permission_request_decision_matches_the_documented_json() {
        let event = HookEvent::parse(
            Some(System::Claude),
            br#"{"hook_event_name": "PermissionRequest", "tool_name": "Bash"}"#,
        );
        assert_eq!(
            event.decision_output(true, "approved"),
            Some(json!({"hookSpecificOutput": {
                "hookEventName": "PermissionRequest",
                "decision": {"behavior": "allow"}}}))
        );
        assert_eq!(
            event.decision_output(false, "denied from phone"),
            Some(json!({"hookSpecificOutput": {
                "hookEventName": "PermissionRequest",
                "decision": {"behavior": "deny", "message": "denied from phone"}}}))
        );
    }

    #[test]
    fn gemini_before_tool_decision_matches_the_documented_json() {
        let event = HookEvent::parse(
            Some(System::Gemini),
            br#"{"hook_event_name": "BeforeTool", "tool_name": "run_shell_command"}"#,
        );
        assert_eq!(
            event.decision_output(true, "ok"),
            Some(json!({"decision": "allow", "reason": "ok"}))
        );
        assert_eq!(
            event.decision_output(false, "no"),
            Some(json!({"decision": "deny", "reason": "no"}))
        );
    }

    #[test]
    fn events_with_nothing_to_decide_have_no_decision_output() {
        let cases: [(Option<System>, &[u8]); 7] = [
            (Some(System::Claude), br#"{"hook_event_name": "PostToolUse"}"#),
            (Some(System::Claude), br#"{"hook_event_name": "Notification"}"#),
            (Some(System::Gemini), br#"{"hook_event_name": "AfterTool"}"#),
            (Some(System::Codex), br#"{"hook_event_name": "PostToolUse"}"#),
            (Some(System::Codex), br#"{"type": "agent-turn-complete"}"#),
            (Some(System::Unknown), br#"{"hook_event_name": "PreToolUse"}"#),
            (Some(System::Claude), b"garbage"),
        ];
        for (hint, payload) in cases {
            let event = HookEvent::parse(hint, payload);
            assert_eq!(event.decision_output(true, "r"), None, "{event:?}");
            assert_eq!(event.decision_output(false, "r"), None, "{event:?}");
        }
    }

    #[test]
    fn system_names_round_trip_and_unknown_names_are_refused() {
        for system in System::ALL {
            assert_eq!(system.to_string().parse::<System>(), Ok(system));
            assert_eq!(serde_json::to_value(system).ok(), Some(json!(system.as_str())));
        }
        assert_eq!(" Gemini ".parse::<System>(), Ok(System::Gemini));
        let error = "cursor".parse::<System>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown agent system `cursor`, expected one of: claude, gemini, codex, unknown"
        );
    }

    #[test]
    fn kind_spelling_is_the_same_in_json_and_as_str() {
        for kind in Kind::ALL {
            assert_eq!(serde_json::to_value(kind).ok(), Some(json!(kind.as_str())));
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }

    #[test]
    fn event_round_trips_through_json() {
        let event = HookEvent::parse(
            Some(System::Claude),
            with_common(r#"{"hook_event_name": "PostToolUse", "tool_name": "Edit", "tool_input": {"file_path": "/a"}}"#)
                .as_bytes(),
        );
        let text = serde_json::to_string(&event).expect("an event serializes");
        let back: HookEvent = serde_json::from_str(&text).expect("an event deserializes");
        assert_eq!(back, event);
    }
}
