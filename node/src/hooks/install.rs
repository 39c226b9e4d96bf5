//! Installing ccm's hooks into the agent CLIs' project settings, and taking them out again.
//!
//! One file per CLI, inside the repository:
//!
//! - Claude Code, `.claude/settings.local.json` (`.claude/settings.json` with
//!   [`Options::shared`]): one matcher group per event in [`CLAUDE_EVENTS`], timeouts in seconds.
//! - Gemini CLI, `.gemini/settings.json`: one matcher group per event in [`GEMINI_EVENTS`],
//!   timeouts in milliseconds.
//! - Codex, `.codex/config.toml`: top-level `notify = ["<ccm-hook>", "--agent", "codex"]`.
//!   Codex ignores `notify` there and reads a project's hooks only once the project is trusted,
//!   so the runtime gives each `codex exec` ccm's notify and lifecycle hooks on its command line
//!   instead ([`codex_overrides`]).
//!
//! **Invariant**: the user's content is never removed, changed or reordered. ccm's groups are
//! appended after the user's; a ccm handler is recognised by its command ([`is_ccm_hook`]:
//! `ccm-hook --agent <cli>` or the older `ccm hook --agent <cli>`, from any directory), so
//! installing twice adds nothing, installing again points ccm's handlers at the current program
//! in place, and uninstalling removes only ccm's handlers (and what they leave empty: their
//! group, the event key, the `hooks` object, the file). Nothing is recorded on disk about what
//! ccm added.
//!
//! **Invariant**: a file that does not parse, or whose shape ccm cannot merge into, is reported
//! and never written. Every write is atomic (a temporary file in the same directory, then a
//! rename), so a crash never leaves a half-written settings file.
//!
//! Boundary: this module only edits files. It knows nothing of what `ccm hook` does with the
//! events, and it does not ask any CLI whether it accepted the settings.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Map, Value};

/// Claude Code events ccm listens to, and whether each takes a matcher (see the matcher table
/// in the hooks reference: `UserPromptSubmit` and `Stop` always fire and take none).
pub const CLAUDE_EVENTS: [(&str, bool); 12] = [
    ("SessionStart", true),
    ("UserPromptSubmit", false),
    ("PreToolUse", true),
    ("PermissionRequest", true),
    ("PostToolUse", true),
    ("PostToolUseFailure", true),
    ("Notification", true),
    ("Stop", false),
    ("StopFailure", true),
    ("SubagentStop", true),
    ("PreCompact", true),
    ("SessionEnd", true),
];

/// Claude Code events that may wait for a human, and so get [`Options::gate_timeout_secs`].
const CLAUDE_GATES: [&str; 2] = ["PreToolUse", "PermissionRequest"];

/// Gemini CLI events ccm listens to; all take a matcher. Not `PreCompress`: Gemini CLI 0.61
/// sends it (trigger `auto`) before every model call whether or not anything is compressed, so
/// it says nothing and would cost a hook process per model call.
pub const GEMINI_EVENTS: [&str; 7] = [
    "SessionStart",
    "SessionEnd",
    "BeforeAgent",
    "AfterAgent",
    "BeforeTool",
    "AfterTool",
    "Notification",
];

/// Gemini CLI events that may wait for a human.
const GEMINI_GATES: [&str; 1] = ["BeforeTool"];

/// Timeout of the hooks that never wait for a human, in seconds.
pub const SHORT_TIMEOUT_SECS: u64 = 10;

/// The `name` of ccm's Gemini handlers (Gemini shows it, and `hooksConfig.disabled` lists names).
const GEMINI_HANDLER_NAME: &str = "ccm";

/// What to install, and where.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// Repository root.
    pub repo: &'a Path,
    /// The program the hooks run, before `--agent <cli>`: `["/usr/local/bin/ccm-hook"]`, or
    /// `["ccm", "hook"]` where `ccm-hook` may not be installed ([`super::hook_program`]).
    pub hook: &'a [String],
    /// Claude Code: write `.claude/settings.json` (shared, committed) instead of
    /// `.claude/settings.local.json`.
    pub shared: bool,
    /// Timeout (seconds) for the gates that may wait for a human (Claude PreToolUse and
    /// PermissionRequest, Gemini BeforeTool), so a slow human does not silently fail open.
    /// Other events get a short timeout ([`SHORT_TIMEOUT_SECS`]).
    pub gate_timeout_secs: u64,
    /// The program of ccm's MCP server (`<it> mcp`); [`mcp_program`] when `None`.
    pub mcp_program: Option<&'a str>,
}

/// One file the installer looked at, and what it did or found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileReport {
    pub file: PathBuf,
    /// `"claude"`, `"gemini"` or `"codex"`.
    pub agent: &'static str,
    pub action: Action,
    /// One line for a human: which events, what was there.
    pub detail: String,
}

/// What happened to one file (or, for [`status`], what is there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `install` wrote ccm's hooks (or corrected their commands or timeouts).
    Added,
    /// ccm's hooks are all there, as `install` would write them; nothing was changed.
    AlreadyPresent,
    /// `uninstall` took ccm's hooks out.
    Removed,
    /// ccm's hooks are not there, or not all of them (the detail says which).
    NotPresent,
    /// Left alone because the user's own setting is in the way (Codex runs one `notify` program).
    Skipped,
}

/// Why a settings file could not be read, merged or written. Files are never written after any
/// of these.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid JSON.
    #[error("{} is not valid JSON ({source}); left it untouched", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    /// The file is not valid TOML.
    #[error("{} is not valid TOML ({}); left it untouched", path.display(), one_line(source))]
    Toml { path: PathBuf, source: toml_edit::TomlError },
    /// A value ccm must merge into has another type than the CLI expects.
    #[error("{}: {} is not {expected}; left the file untouched", path.display(), describe_key(key))]
    Shape {
        path: PathBuf,
        /// Dotted path of the value, e.g. `hooks` or `hooks.PreToolUse`; empty for the top level.
        key: String,
        /// What it should be, e.g. "an object".
        expected: &'static str,
    },
    /// A directory for the file could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// The file (or its temporary sibling) could not be written or renamed into place.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    /// A file that held only ccm's hooks could not be deleted.
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: std::io::Error },
}

fn describe_key(key: &str) -> String {
    if key.is_empty() {
        "the top level".to_owned()
    } else {
        format!("`{key}`")
    }
}

/// toml_edit's errors span several lines (position, snippet, caret, message); keep the position
/// and the message, on one line.
fn one_line(error: &toml_edit::TomlError) -> String {
    let text = error.to_string();
    let position = text.lines().next().unwrap_or_default().trim_start_matches("TOML parse error ");
    let message = error.message().split_whitespace().collect::<Vec<_>>().join(" ");
    format!("{position}: {message}")
}

/// Adds ccm's hooks to each CLI's project settings, keeping everything already there.
///
/// All three files are read and checked before any is written, so a bad file means no change.
pub fn install(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    let (claude, gemini, codex) = targets(options);
    claude.status()?;
    gemini.status()?;
    codex.status()?;
    Ok(vec![claude.install()?, gemini.install()?, codex.install()?])
}

/// Removes exactly the hooks [`install`] adds, and what their removal leaves empty.
///
/// All three files are read and checked before any is written, so a bad file means no change.
pub fn uninstall(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    let (claude, gemini, codex) = targets(options);
    claude.check_uninstall()?;
    gemini.check_uninstall()?;
    read_toml(&codex.file)?;
    Ok(vec![claude.uninstall()?, gemini.uninstall()?, codex.uninstall()?])
}

/// What is installed, without changing anything.
///
/// A file is [`Action::AlreadyPresent`] when `install` would leave it as it is, and
/// [`Action::NotPresent`] otherwise (the detail names missing events and wrong timeouts). Codex
/// is [`Action::Skipped`] when the user's own `notify` is in the way.
pub fn status(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    let (claude, gemini, codex) = targets(options);
    Ok(vec![claude.status()?, gemini.status()?, codex.status()?])
}

fn targets(options: &Options) -> (JsonTarget, JsonTarget, CodexTarget) {
    let claude_file = if options.shared { "settings.json" } else { "settings.local.json" };
    let command =
        |agent: &str| shell_command(&[options.hook, &["--agent".into(), agent.into()]].concat());
    let claude_command = command("claude");
    let claude = JsonTarget {
        agent: "claude",
        file: options.repo.join(".claude").join(claude_file),
        groups: CLAUDE_EVENTS
            .iter()
            .map(|&(event, takes_matcher)| {
                let timeout = if CLAUDE_GATES.contains(&event) {
                    options.gate_timeout_secs
                } else {
                    SHORT_TIMEOUT_SECS
                };
                let handler =
                    json!({ "type": "command", "command": claude_command, "timeout": timeout });
                let group = if takes_matcher {
                    json!({ "matcher": "*", "hooks": [handler] })
                } else {
                    json!({ "hooks": [handler] })
                };
                (event, group)
            })
            .collect(),
    };

    let gemini_command = command("gemini");
    let gemini = JsonTarget {
        agent: "gemini",
        file: options.repo.join(".gemini").join("settings.json"),
        groups: GEMINI_EVENTS
            .iter()
            .map(|&event| {
                let secs = if GEMINI_GATES.contains(&event) {
                    options.gate_timeout_secs
                } else {
                    SHORT_TIMEOUT_SECS
                };
                let handler = json!({
                    "name": GEMINI_HANDLER_NAME,
                    "type": "command",
                    "command": gemini_command,
                    "timeout": secs.saturating_mul(1000),
                });
                (event, json!({ "matcher": "*", "hooks": [handler] }))
            })
            .collect(),
    };

    let codex = CodexTarget {
        file: options.repo.join(".codex").join("config.toml"),
        argv: [options.hook, &["--agent".into(), "codex".into()]].concat(),
    };
    (claude, gemini, codex)
}

/// Codex lifecycle events ccm listens to, and whether each takes a matcher (tool events do).
pub const CODEX_EVENTS: [(&str, bool); 6] = [
    ("SessionStart", false),
    ("UserPromptSubmit", false),
    ("PreToolUse", true),
    ("PostToolUse", true),
    ("Stop", false),
    ("SessionEnd", false),
];

/// The `-c key=value` overrides that give one `codex exec` ccm's `notify` program and lifecycle
/// hooks (Claude's format, timeouts in seconds; `PreToolUse` gets `gate_timeout_secs`), for the
/// command line. Codex reads neither from a project's `.codex/` unless the project is trusted
/// (and `notify` not even then), so they go on the command line of each run; the hooks run only
/// with `--dangerously-bypass-hook-trust`.
pub fn codex_overrides(hook: &[String], gate_timeout_secs: u64) -> Vec<String> {
    let quoted = |s: &str| toml_edit::Value::from(s).to_string();
    let argv = [hook, &["--agent".into(), "codex".into()]].concat();
    let notify: Vec<String> = argv.iter().map(|w| quoted(w)).collect();
    let command = quoted(&shell_command(&argv));
    let mut overrides = vec!["-c".to_string(), format!("notify=[{}]", notify.join(","))];
    for (event, takes_matcher) in CODEX_EVENTS {
        let timeout = if event == "PreToolUse" { gate_timeout_secs } else { SHORT_TIMEOUT_SECS };
        let handler = format!("{{type=\"command\",command={command},timeout={timeout}}}");
        let matcher = if takes_matcher { "matcher=\"*\"," } else { "" };
        overrides.push("-c".to_string());
        overrides.push(format!("hooks.{event}=[{{{matcher}hooks=[{handler}]}}]"));
    }
    overrides
}

/// Whether `argv` runs ccm's hook for `agent`: `<dir>/ccm-hook --agent <agent>`, or the older
/// `<dir>/ccm hook --agent <agent>`, from any directory or from PATH.
fn is_ccm_hook(argv: &[String], agent: &str) -> bool {
    let named = |word: &str, name: &str| Path::new(word).file_name().is_some_and(|n| n == name);
    let for_agent = |flag: &str, value: &str| flag == "--agent" && value == agent;
    match argv {
        [program, flag, value] => named(program, "ccm-hook") && for_agent(flag, value),
        [program, sub, flag, value] => {
            named(program, "ccm") && sub == "hook" && for_agent(flag, value)
        }
        _ => false,
    }
}

/// `argv` as one command line for a POSIX shell.
fn shell_command(argv: &[String]) -> String {
    argv.iter().map(|word| shell_quote(word)).collect::<Vec<_>>().join(" ")
}

/// Quotes `word` for a POSIX shell when it needs it (Claude Code and Gemini CLI run hook
/// commands through a shell; Codex's `notify` is an argv and is never quoted).
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A JSON settings file with Claude Code's hook layout: `hooks` → event → array of matcher
/// groups → `hooks` array of handlers.
struct JsonTarget {
    agent: &'static str,
    file: PathBuf,
    /// The group ccm appends to each event.
    groups: Vec<(&'static str, Value)>,
}

/// One change [`JsonTarget::merge`] made.
enum Edit {
    Added(&'static str),
    /// Another command (an older form, another path) or timeout was corrected.
    Updated(&'static str),
}

impl JsonTarget {
    fn install(&self) -> Result<FileReport, InstallError> {
        let mut root = read_json(&self.file)?.unwrap_or_default();
        let edits = self.merge(&mut root)?;
        if edits.is_empty() {
            return Ok(self.report(Action::AlreadyPresent, self.all_present()));
        }
        write_atomically(&self.file, &json_text(&root))?;
        Ok(self.report(Action::Added, self.describe_edits(&edits, "added ccm's hook to")))
    }

    fn uninstall(&self) -> Result<FileReport, InstallError> {
        let Some(mut root) = read_json(&self.file)? else {
            return Ok(self.report(Action::NotPresent, "the file does not exist".to_owned()));
        };
        let events = self.remove(&mut root)?;
        if events.is_empty() {
            return Ok(self.report(Action::NotPresent, "no ccm hooks in the file".to_owned()));
        }
        let mut detail = if events.len() == self.groups.len() {
            format!("removed ccm's hooks from all {} events", events.len())
        } else {
            format!("removed ccm's hooks from {}", list(&events))
        };
        if root.is_empty() {
            remove_file_and_empty_parent(&self.file)?;
            detail.push_str("; deleted the file, which held nothing else");
        } else {
            write_atomically(&self.file, &json_text(&root))?;
        }
        Ok(self.report(Action::Removed, detail))
    }

    /// Fails as [`JsonTarget::uninstall`] would, without writing.
    fn check_uninstall(&self) -> Result<(), InstallError> {
        if let Some(mut root) = read_json(&self.file)? {
            self.remove(&mut root)?;
        }
        Ok(())
    }

    fn status(&self) -> Result<FileReport, InstallError> {
        let Some(mut root) = read_json(&self.file)? else {
            return Ok(self.report(Action::NotPresent, "the file does not exist".to_owned()));
        };
        let edits = self.merge(&mut root)?;
        if edits.is_empty() {
            return Ok(self.report(Action::AlreadyPresent, self.all_present()));
        }
        let missing: Vec<_> = edits
            .iter()
            .filter_map(|e| if let Edit::Added(ev) = e { Some(*ev) } else { None })
            .collect();
        let mut parts = Vec::new();
        if missing.len() == self.groups.len() {
            parts.push("no ccm hooks in the file".to_owned());
        } else if !missing.is_empty() {
            parts.push(format!("missing for {}", list(&missing)));
        }
        let updated: Vec<_> = edits
            .iter()
            .filter_map(|e| if let Edit::Updated(ev) = e { Some(*ev) } else { None })
            .collect();
        if !updated.is_empty() {
            parts.push(format!("another command or timeout on {}", list(&updated)));
        }
        Ok(self.report(Action::NotPresent, parts.join("; ")))
    }

    /// Appends ccm's group to each event that lacks a ccm handler, and corrects the command and
    /// timeout of a ccm handler that has others. Returns what it changed.
    fn merge(&self, root: &mut Map<String, Value>) -> Result<Vec<Edit>, InstallError> {
        let hooks = root.entry("hooks").or_insert_with(|| Value::Object(Map::new()));
        let hooks = hooks.as_object_mut().ok_or_else(|| self.shape("hooks", "an object"))?;
        let mut edits = Vec::new();
        for (event, group) in &self.groups {
            let (command, timeout) = (&group["hooks"][0]["command"], &group["hooks"][0]["timeout"]);
            let groups = hooks.entry(*event).or_insert_with(|| Value::Array(Vec::new()));
            let groups = groups
                .as_array_mut()
                .ok_or_else(|| self.shape(&format!("hooks.{event}"), "an array"))?;
            let ours = groups
                .iter_mut()
                .filter_map(|g| g.get_mut("hooks").and_then(Value::as_array_mut))
                .flatten()
                .find(|h| self.is_ours(h));
            match ours {
                Some(handler) => {
                    if handler.get("command") != Some(command)
                        || handler.get("timeout") != Some(timeout)
                    {
                        handler["command"] = command.clone();
                        handler["timeout"] = timeout.clone();
                        edits.push(Edit::Updated(event));
                    }
                }
                None => {
                    groups.push(group.clone());
                    edits.push(Edit::Added(event));
                }
            }
        }
        Ok(edits)
    }

    /// Removes every ccm handler, then the groups and event keys that removal left empty, then
    /// `hooks` if it is left empty. Returns the events it touched. Values of shapes ccm never
    /// writes are left alone.
    fn remove(&self, root: &mut Map<String, Value>) -> Result<Vec<String>, InstallError> {
        let Some(hooks) = root.get_mut("hooks") else { return Ok(Vec::new()) };
        let hooks = hooks.as_object_mut().ok_or_else(|| self.shape("hooks", "an object"))?;
        let mut touched = Vec::new();
        let mut emptied = Vec::new();
        for (event, groups) in hooks.iter_mut() {
            let Some(groups) = groups.as_array_mut() else { continue };
            let mut removed_any = false;
            groups.retain_mut(|group| {
                let Some(handlers) = group.get_mut("hooks").and_then(Value::as_array_mut) else {
                    return true;
                };
                let before = handlers.len();
                handlers.retain(|h| !self.is_ours(h));
                if handlers.len() == before {
                    return true;
                }
                removed_any = true;
                !handlers.is_empty()
            });
            if removed_any {
                touched.push(event.clone());
                if groups.is_empty() {
                    emptied.push(event.clone());
                }
            }
        }
        for event in &emptied {
            hooks.shift_remove(event);
        }
        if !touched.is_empty() && hooks.is_empty() {
            root.shift_remove("hooks");
        }
        Ok(touched)
    }

    fn is_ours(&self, handler: &Value) -> bool {
        let words = handler.get("command").and_then(Value::as_str).and_then(shlex::split);
        words.is_some_and(|words| is_ccm_hook(&words, self.agent))
    }

    fn shape(&self, key: &str, expected: &'static str) -> InstallError {
        InstallError::Shape { path: self.file.clone(), key: key.to_owned(), expected }
    }

    fn all_present(&self) -> String {
        format!("ccm's hooks are installed for all {} events", self.groups.len())
    }

    fn describe_edits(&self, edits: &[Edit], verb: &str) -> String {
        let added: Vec<_> = edits
            .iter()
            .filter_map(|e| if let Edit::Added(ev) = e { Some(*ev) } else { None })
            .collect();
        let updated: Vec<_> = edits
            .iter()
            .filter_map(|e| if let Edit::Updated(ev) = e { Some(*ev) } else { None })
            .collect();
        let mut parts = Vec::new();
        if added.len() == self.groups.len() {
            parts.push(format!("{verb} all {} events", added.len()));
        } else if !added.is_empty() {
            parts.push(format!("{verb} {}", list(&added)));
        }
        if !updated.is_empty() {
            parts.push(format!("corrected the command or timeout on {}", list(&updated)));
        }
        parts.join("; ")
    }

    fn report(&self, action: Action, detail: String) -> FileReport {
        FileReport { file: self.file.clone(), agent: self.agent, action, detail }
    }
}

/// Codex's `config.toml`: one top-level `notify` argv.
struct CodexTarget {
    file: PathBuf,
    argv: Vec<String>,
}

impl CodexTarget {
    fn install(&self) -> Result<FileReport, InstallError> {
        let mut doc = read_toml(&self.file)?.unwrap_or_default();
        match doc.get("notify") {
            None => {
                let argv: toml_edit::Array = self.argv.iter().map(String::as_str).collect();
                doc.insert("notify", toml_edit::value(argv));
                write_atomically(&self.file, doc.to_string().as_bytes())?;
                Ok(self.report(Action::Added, format!("set notify = {}", self.ours())))
            }
            Some(item) if self.is_current(item) => {
                Ok(self.report(Action::AlreadyPresent, format!("notify = {}", self.ours())))
            }
            Some(item) if self.is_ours(item) => {
                let before = inline(item);
                doc["notify"] = toml_edit::value(
                    self.argv.iter().map(String::as_str).collect::<toml_edit::Array>(),
                );
                write_atomically(&self.file, doc.to_string().as_bytes())?;
                Ok(self
                    .report(Action::Added, format!("set notify = {} (was {before})", self.ours())))
            }
            Some(item) => Ok(self.report(Action::Skipped, self.in_the_way(item))),
        }
    }

    fn uninstall(&self) -> Result<FileReport, InstallError> {
        let Some(mut doc) = read_toml(&self.file)? else {
            return Ok(self.report(Action::NotPresent, "the file does not exist".to_owned()));
        };
        match doc.get("notify") {
            Some(item) if self.is_ours(item) => {}
            Some(item) => {
                let detail = format!("notify is the user's ({}); left it alone", inline(item));
                return Ok(self.report(Action::NotPresent, detail));
            }
            None => return Ok(self.report(Action::NotPresent, "notify is not set".to_owned())),
        }
        doc.remove("notify");
        let text = doc.to_string();
        let mut detail = format!("removed notify = {}", self.ours());
        if text.trim().is_empty() {
            remove_file_and_empty_parent(&self.file)?;
            detail.push_str("; deleted the file, which held nothing else");
        } else {
            write_atomically(&self.file, text.as_bytes())?;
        }
        Ok(self.report(Action::Removed, detail))
    }

    fn status(&self) -> Result<FileReport, InstallError> {
        let Some(doc) = read_toml(&self.file)? else {
            return Ok(self.report(Action::NotPresent, "the file does not exist".to_owned()));
        };
        Ok(match doc.get("notify") {
            None => self.report(Action::NotPresent, "notify is not set".to_owned()),
            Some(item) if self.is_current(item) => {
                self.report(Action::AlreadyPresent, format!("notify = {}", self.ours()))
            }
            Some(item) if self.is_ours(item) => {
                let detail =
                    format!("notify = {}, another program than {}", inline(item), self.ours());
                self.report(Action::NotPresent, detail)
            }
            Some(item) => self.report(Action::Skipped, self.in_the_way(item)),
        })
    }

    /// Whether `item` is a ccm hook's argv, in any form.
    fn is_ours(&self, item: &toml_edit::Item) -> bool {
        words(item).is_some_and(|argv| is_ccm_hook(&argv, "codex"))
    }

    /// Whether `item` is exactly the argv `install` writes.
    fn is_current(&self, item: &toml_edit::Item) -> bool {
        words(item).is_some_and(|argv| argv == self.argv)
    }

    fn ours(&self) -> String {
        let argv: toml_edit::Array = self.argv.iter().map(String::as_str).collect();
        argv.to_string().trim().to_owned()
    }

    fn in_the_way(&self, item: &toml_edit::Item) -> String {
        format!(
            "notify is already set to {}, and Codex runs a single notify program, so ccm's ({}) \
             was not added",
            inline(item),
            self.ours()
        )
    }

    fn report(&self, action: Action, detail: String) -> FileReport {
        FileReport { file: self.file.clone(), agent: "codex", action, detail }
    }
}

/// A TOML array of strings, as words.
fn words(item: &toml_edit::Item) -> Option<Vec<String>> {
    item.as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}

/// A TOML item on one line, without its comments and surrounding whitespace.
fn inline(item: &toml_edit::Item) -> String {
    let mut item = item.clone();
    if let Some(value) = item.as_value_mut() {
        value.decor_mut().clear();
    }
    item.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// "A, B and C".
fn list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => {
            let init: Vec<_> = init.iter().map(AsRef::as_ref).collect();
            format!("{} and {}", init.join(", "), last.as_ref())
        }
    }
}

/// Reads a file, `None` when it does not exist.
fn read_text(path: &Path) -> Result<Option<String>, InstallError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read { path: path.to_owned(), source }),
    }
}

/// Reads a JSON settings file whose top level must be an object; `None` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, InstallError> {
    let Some(text) = read_text(path)? else { return Ok(None) };
    let value: Value = serde_json::from_str(&text)
        .map_err(|source| InstallError::Json { path: path.to_owned(), source })?;
    match value {
        Value::Object(map) => Ok(Some(map)),
        _ => Err(InstallError::Shape {
            path: path.to_owned(),
            key: String::new(),
            expected: "an object",
        }),
    }
}

fn read_toml(path: &Path) -> Result<Option<toml_edit::DocumentMut>, InstallError> {
    let Some(text) = read_text(path)? else { return Ok(None) };
    let doc = text
        .parse::<toml_edit::DocumentMut>()
        .map_err(|source| InstallError::Toml { path: path.to_owned(), source })?;
    Ok(Some(doc))
}

/// Two-space pretty JSON with a trailing newline, keys in their original order.
fn json_text(root: &Map<String, Value>) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(root)
        .expect("a serde_json::Map with string keys always serializes");
    text.push(b'\n');
    text
}

/// Replaces `path` with `contents` atomically: writes a temporary file in the same directory,
/// syncs it, renames it over the target. Creates missing directories, keeps the permissions of
/// the file it replaces, and writes through a symlink to its target rather than replacing it.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), InstallError> {
    let target = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
        }
        _ => path.to_owned(),
    };
    let write_error = |source| InstallError::Write { path: target.clone(), source };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)
        .map_err(|source| InstallError::CreateDir { path: dir.clone(), source })?;

    crate::fs::write_atomic(&target, contents, crate::fs::Mode::Keep).map_err(write_error)
}

/// Deletes a settings file that held only ccm's hooks, and its directory (`.claude`, `.gemini`,
/// `.codex`) when that is left empty.
fn remove_file_and_empty_parent(path: &Path) -> Result<(), InstallError> {
    fs::remove_file(path)
        .map_err(|source| InstallError::Remove { path: path.to_owned(), source })?;
    if let Some(dir) = path.parent() {
        // Fails, harmlessly, when the directory holds anything else.
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}

/// The variables `ccm mcp` needs from the agent's environment: Gemini CLI drops those that look
/// secret (`*_TOKEN`) unless its entry's `env` names them, and Codex passes none unless its
/// entry's `env_vars` lists them (reference §8).
pub const MCP_ENV: [&str; 4] = ["CCM_AGENT_TOKEN", "CCM_TASK_ID", "CCM_API", "CCM_HOME"];

/// The program `ccm mcp` runs as: this very binary (by its absolute path), or `ccm` from PATH
/// for committed settings.
pub fn mcp_program(shared: bool) -> String {
    match std::env::current_exe() {
        Ok(exe) if !shared && exe.file_name().is_some_and(|n| n == "ccm") => {
            exe.to_string_lossy().into_owned()
        }
        _ => "ccm".into(),
    }
}

/// ccm's entry in a CLI's `mcpServers` (Claude Code and Gemini CLI's shape).
pub fn mcp_entry(program: &str, gemini: bool) -> Value {
    if gemini {
        let env: Map<String, Value> =
            MCP_ENV.iter().map(|name| ((*name).to_string(), json!(format!("${name}")))).collect();
        json!({ "command": program, "args": ["mcp"], "env": env, "trust": true })
    } else {
        json!({ "command": program, "args": ["mcp"] })
    }
}

/// A `--mcp-config` file's content (Claude Code's format) for `{mcp_config}`.
pub fn mcp_config_file(program: &str) -> Value {
    json!({ "mcpServers": { crate::mcp::SERVER_NAME: mcp_entry(program, false) } })
}

/// The `-c` overrides that give one `codex exec` ccm's MCP server: Codex reads a project's
/// `.codex/config.toml` only once the project is trusted, and passes the server no `CCM_*`
/// variable unless `env_vars` names it; `required` makes it wait for the server's handshake
/// (it waits about a second otherwise).
pub fn codex_mcp_overrides(program: &str) -> Vec<String> {
    let quoted = |s: &str| toml_edit::Value::from(s).to_string();
    let key = format!("mcp_servers.{}", crate::mcp::SERVER_NAME);
    let vars: Vec<String> = MCP_ENV.iter().map(|v| quoted(v)).collect();
    [
        format!("{key}.command={}", quoted(program)),
        format!("{key}.args=[\"mcp\"]"),
        format!("{key}.env_vars=[{}]", vars.join(",")),
        format!("{key}.required=true"),
    ]
    .into_iter()
    .flat_map(|o| ["-c".to_string(), o])
    .collect()
}

/// The MCP settings files: Claude Code's `.mcp.json` and Gemini CLI's `.gemini/settings.json`.
fn mcp_targets(options: &Options) -> [(&'static str, PathBuf, Value); 2] {
    let program = options.mcp_program.map_or_else(|| mcp_program(options.shared), str::to_string);
    [
        ("claude", options.repo.join(".mcp.json"), mcp_entry(&program, false)),
        ("gemini", options.repo.join(".gemini").join("settings.json"), mcp_entry(&program, true)),
    ]
}

/// The `mcpServers` object of a settings file, checked for its shape.
fn mcp_servers<'a>(
    root: &'a mut Map<String, Value>,
    path: &Path,
) -> Result<&'a mut Map<String, Value>, InstallError> {
    root.entry("mcpServers").or_insert_with(|| json!({})).as_object_mut().ok_or_else(|| {
        InstallError::Shape {
            path: path.to_owned(),
            key: "mcpServers".into(),
            expected: "an object",
        }
    })
}

/// [`install`] and [`mcp_install`]: everything ccm puts into a checkout's agent settings.
pub fn install_all(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    mcp_status(options)?;
    let mut reports = install(options)?;
    reports.extend(mcp_install(options)?);
    Ok(reports)
}

/// [`mcp_uninstall`], then [`uninstall`].
pub fn uninstall_all(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    let mcp = mcp_uninstall(options)?;
    let mut reports = uninstall(options)?;
    reports.extend(mcp);
    Ok(reports)
}

/// [`status`] and [`mcp_status`].
pub fn status_all(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    let mut reports = status(options)?;
    reports.extend(mcp_status(options)?);
    Ok(reports)
}

/// Adds ccm's MCP server to Claude Code's `.mcp.json` and Gemini CLI's `.gemini/settings.json`
/// (Codex gets it on its command line: [`codex_mcp_overrides`]), keeping everything there.
pub fn mcp_install(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    mcp_status(options)?;
    let mut reports = Vec::new();
    let mut writes = Vec::new();
    for (agent, file, entry) in mcp_targets(options) {
        let mut root = read_json(&file)?.unwrap_or_default();
        let servers = mcp_servers(&mut root, &file)?;
        let action = if servers.get(crate::mcp::SERVER_NAME) == Some(&entry) {
            Action::AlreadyPresent
        } else {
            servers.insert(crate::mcp::SERVER_NAME.into(), entry);
            writes.push((file.clone(), json_text(&root)));
            Action::Added
        };
        let detail = format!("MCP server `{}` (ccm mcp)", crate::mcp::SERVER_NAME);
        reports.push(FileReport { file, agent, action, detail });
    }
    for (file, text) in writes {
        write_atomically(&file, &text)?;
    }
    Ok(reports)
}

/// Removes exactly the entries [`mcp_install`] adds, and what their removal leaves empty. Run
/// before [`uninstall`]: the Gemini CLI file is deleted only once nothing of ccm is left in it.
pub fn mcp_uninstall(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    mcp_status(options)?;
    let mut reports = Vec::new();
    for (agent, file, _) in mcp_targets(options) {
        let Some(mut root) = read_json(&file)? else {
            let detail = "no ccm MCP server in the file".into();
            reports.push(FileReport { file, agent, action: Action::NotPresent, detail });
            continue;
        };
        let servers = mcp_servers(&mut root, &file)?;
        if servers.remove(crate::mcp::SERVER_NAME).is_none() {
            if servers.is_empty() {
                root.remove("mcpServers");
            }
            let detail = "no ccm MCP server in the file".into();
            reports.push(FileReport { file, agent, action: Action::NotPresent, detail });
            continue;
        }
        if servers.is_empty() {
            root.remove("mcpServers");
        }
        if root.is_empty() {
            remove_file_and_empty_parent(&file)?;
        } else {
            write_atomically(&file, &json_text(&root))?;
        }
        let detail = format!("MCP server `{}` removed", crate::mcp::SERVER_NAME);
        reports.push(FileReport { file, agent, action: Action::Removed, detail });
    }
    Ok(reports)
}

/// Whether ccm's MCP server is in each file, without changing anything.
pub fn mcp_status(options: &Options) -> Result<Vec<FileReport>, InstallError> {
    let mut reports = Vec::new();
    for (agent, file, entry) in mcp_targets(options) {
        let mut root = read_json(&file)?.unwrap_or_default();
        let servers = mcp_servers(&mut root, &file)?;
        let (action, detail) = match servers.get(crate::mcp::SERVER_NAME) {
            Some(found) if *found == entry => (Action::AlreadyPresent, "MCP server `ccm`".into()),
            Some(_) => (Action::NotPresent, "MCP server `ccm` points elsewhere".into()),
            None => (Action::NotPresent, "no ccm MCP server in the file".into()),
        };
        reports.push(FileReport { file, agent, action, detail });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    /// The program the tests install.
    static HOOK: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| program(&["/opt/ccm/bin/ccm-hook"]));

    fn options(repo: &Path) -> Options<'_> {
        Options { repo, hook: &HOOK, shared: false, gate_timeout_secs: 900, mcp_program: None }
    }

    fn claude_file(repo: &Path) -> PathBuf {
        repo.join(".claude/settings.local.json")
    }

    fn gemini_file(repo: &Path) -> PathBuf {
        repo.join(".gemini/settings.json")
    }

    fn codex_file(repo: &Path) -> PathBuf {
        repo.join(".codex/config.toml")
    }

    fn read(path: &Path) -> Value {
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn actions(reports: &[FileReport]) -> Vec<(&'static str, Action)> {
        reports.iter().map(|r| (r.agent, r.action)).collect()
    }

    /// Every handler in `settings` whose command is `command`, as (event, group, handler).
    fn handlers<'a>(settings: &'a Value, command: &str) -> Vec<(&'a str, &'a Value, &'a Value)> {
        let mut found = Vec::new();
        for (event, groups) in settings["hooks"].as_object().unwrap() {
            for group in groups.as_array().unwrap() {
                for handler in group["hooks"].as_array().unwrap() {
                    if handler["command"] == command {
                        found.push((event.as_str(), group, handler));
                    }
                }
            }
        }
        found
    }

    const USER_CLAUDE: &str = r#"{
  "permissions": { "allow": ["Bash(cargo test:*)"] },
  "hooks": {
    "Stop": [ { "hooks": [ { "type": "command", "command": "say done", "async": true } ] } ],
    "PreToolUse": [
      { "matcher": "Bash",
        "hooks": [ { "type": "command", "command": "./guard.sh", "timeout": 5 } ] },
      { "matcher": "Edit|Write", "hooks": [ { "type": "command", "command": "./fmt.sh" } ] }
    ]
  },
  "model": "opus"
}
"#;

    const USER_GEMINI: &str = r#"{
  "theme": "GitHub",
  "hooks": {
    "BeforeTool": [ { "matcher": "write_file",
      "hooks": [ { "name": "lint", "type": "command", "command": "./lint.sh" } ] } ]
  }
}
"#;

    const USER_CODEX: &str =
        "# my codex settings\nmodel = \"o3\"  # fast enough\n\n[tui]\nnotifications = true\n";

    #[test]
    fn install_adds_ccm_hooks_for_every_cli() {
        let repo = tempfile::tempdir().unwrap();
        let reports = install(&options(repo.path())).unwrap();
        assert_eq!(
            actions(&reports),
            [("claude", Action::Added), ("gemini", Action::Added), ("codex", Action::Added)]
        );
        assert_eq!(reports[0].file, claude_file(repo.path()));

        let claude = read(&claude_file(repo.path()));
        let events: Vec<_> = claude["hooks"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(events, CLAUDE_EVENTS.map(|(e, _)| e.to_owned()));
        assert_eq!(
            claude["hooks"]["SessionStart"],
            json!([{ "matcher": "*", "hooks": [{
                "type": "command", "command": "/opt/ccm/bin/ccm-hook --agent claude", "timeout": 10
            }] }])
        );
        for event in ["UserPromptSubmit", "Stop"] {
            assert_eq!(claude["hooks"][event][0].get("matcher"), None, "{event} takes no matcher");
        }
        assert_eq!(claude["hooks"]["PreCompact"][0]["matcher"], "*");

        let gemini = read(&gemini_file(repo.path()));
        let events: Vec<_> = gemini["hooks"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(events, GEMINI_EVENTS);
        assert_eq!(
            gemini["hooks"]["AfterAgent"],
            json!([{ "matcher": "*", "hooks": [{
                "name": "ccm", "type": "command",
                "command": "/opt/ccm/bin/ccm-hook --agent gemini", "timeout": 10000
            }] }])
        );

        let codex = fs::read_to_string(codex_file(repo.path())).unwrap();
        assert_eq!(codex, "notify = [\"/opt/ccm/bin/ccm-hook\", \"--agent\", \"codex\"]\n");

        let text = fs::read_to_string(claude_file(repo.path())).unwrap();
        assert!(text.starts_with("{\n  \"hooks\": {\n    \"SessionStart\""), "{text}");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn install_keeps_user_hooks_and_their_order() {
        let repo = tempfile::tempdir().unwrap();
        write(&claude_file(repo.path()), USER_CLAUDE);
        write(&gemini_file(repo.path()), USER_GEMINI);
        write(&codex_file(repo.path()), USER_CODEX);
        install(&options(repo.path())).unwrap();

        let claude = read(&claude_file(repo.path()));
        let user: Value = serde_json::from_str(USER_CLAUDE).unwrap();
        let keys: Vec<_> = claude.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["permissions", "hooks", "model"]);
        assert_eq!(claude["permissions"], user["permissions"]);
        let events: Vec<_> = claude["hooks"].as_object().unwrap().keys().take(2).collect();
        assert_eq!(events, ["Stop", "PreToolUse"], "the user's events keep their order");
        let pre = claude["hooks"]["PreToolUse"].as_array().unwrap();
        assert_eq!(pre.len(), 3);
        assert_eq!(pre[..2], user["hooks"]["PreToolUse"].as_array().unwrap()[..]);
        assert_eq!(pre[2]["hooks"][0]["command"], "/opt/ccm/bin/ccm-hook --agent claude");
        let stop = claude["hooks"]["Stop"].as_array().unwrap();
        assert_eq!(stop[0], user["hooks"]["Stop"][0]);
        assert_eq!(stop[1]["hooks"][0]["command"], "/opt/ccm/bin/ccm-hook --agent claude");

        let gemini = read(&gemini_file(repo.path()));
        assert_eq!(gemini["theme"], "GitHub");
        let before_tool = gemini["hooks"]["BeforeTool"].as_array().unwrap();
        assert_eq!(before_tool[0]["hooks"][0]["name"], "lint");
        assert_eq!(before_tool[1]["hooks"][0]["name"], "ccm");

        let codex = fs::read_to_string(codex_file(repo.path())).unwrap();
        assert_eq!(
            codex,
            "# my codex settings\nmodel = \"o3\"  # fast enough\n\
             notify = [\"/opt/ccm/bin/ccm-hook\", \"--agent\", \"codex\"]\n\
             \n[tui]\nnotifications = true\n",
            "notify is a top-level key, before the first table; comments stay"
        );
    }

    #[test]
    fn install_twice_adds_nothing() {
        let repo = tempfile::tempdir().unwrap();
        write(&claude_file(repo.path()), USER_CLAUDE);
        install(&options(repo.path())).unwrap();
        let first = [claude_file(repo.path()), gemini_file(repo.path()), codex_file(repo.path())]
            .map(|f| fs::read_to_string(f).unwrap());

        let reports = install(&options(repo.path())).unwrap();
        assert_eq!(
            actions(&reports),
            [
                ("claude", Action::AlreadyPresent),
                ("gemini", Action::AlreadyPresent),
                ("codex", Action::AlreadyPresent)
            ]
        );
        let second = [claude_file(repo.path()), gemini_file(repo.path()), codex_file(repo.path())]
            .map(|f| fs::read_to_string(f).unwrap());
        assert_eq!(first, second);
        let claude = read(&claude_file(repo.path()));
        assert_eq!(handlers(&claude, "/opt/ccm/bin/ccm-hook --agent claude").len(), 12);

        // A different gate timeout updates only ccm's gate handlers, in place.
        let reports = install(&Options { gate_timeout_secs: 60, ..options(repo.path()) }).unwrap();
        assert_eq!(reports[0].action, Action::Added);
        assert!(reports[0].detail.contains("PreToolUse and PermissionRequest"), "{reports:?}");
        let updated = read(&claude_file(repo.path()));
        let ours = handlers(&updated, "/opt/ccm/bin/ccm-hook --agent claude");
        assert_eq!(ours.len(), 12);
        for (event, _, handler) in ours {
            let expected = if CLAUDE_GATES.contains(&event) { 60 } else { 10 };
            assert_eq!(handler["timeout"], expected, "{event}");
        }
        assert_eq!(updated["hooks"]["PreToolUse"][0], claude["hooks"]["PreToolUse"][0]);
    }

    #[test]
    fn uninstall_restores_the_original_hooks_exactly() {
        let repo = tempfile::tempdir().unwrap();
        write(&claude_file(repo.path()), USER_CLAUDE);
        write(&gemini_file(repo.path()), USER_GEMINI);
        write(&codex_file(repo.path()), USER_CODEX);
        install(&options(repo.path())).unwrap();

        let reports = uninstall(&options(repo.path())).unwrap();
        assert_eq!(
            actions(&reports),
            [("claude", Action::Removed), ("gemini", Action::Removed), ("codex", Action::Removed)]
        );
        let claude = read(&claude_file(repo.path()));
        let original: Value = serde_json::from_str(USER_CLAUDE).unwrap();
        assert_eq!(claude, original);
        // preserve_order: Value equality ignores order, so compare the key order too.
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&claude), keys(&original));
        assert_eq!(keys(&claude["hooks"]), keys(&original["hooks"]));
        assert_eq!(
            read(&gemini_file(repo.path())),
            serde_json::from_str::<Value>(USER_GEMINI).unwrap()
        );
        assert_eq!(fs::read_to_string(codex_file(repo.path())).unwrap(), USER_CODEX);

        // A file without `hooks` gets none back, and a second uninstall finds nothing.
        write(&gemini_file(repo.path()), "{\"theme\": \"GitHub\"}");
        install(&options(repo.path())).unwrap();
        uninstall(&options(repo.path())).unwrap();
        assert_eq!(read(&gemini_file(repo.path())), json!({ "theme": "GitHub" }));
        let reports = uninstall(&options(repo.path())).unwrap();
        assert_eq!(reports[1].action, Action::NotPresent);
    }

    #[test]
    fn uninstall_of_a_file_ccm_created_removes_it() {
        let repo = tempfile::tempdir().unwrap();
        install(&options(repo.path())).unwrap();
        let reports = uninstall(&options(repo.path())).unwrap();
        assert!(reports.iter().all(|r| r.action == Action::Removed), "{reports:?}");
        for file in [claude_file(repo.path()), gemini_file(repo.path()), codex_file(repo.path())] {
            assert!(!file.exists(), "{} is left", file.display());
            assert!(!file.parent().unwrap().exists(), "the empty directory is removed too");
        }

        // A directory holding other files stays.
        write(&repo.path().join(".claude/commands/review.md"), "review");
        install(&options(repo.path())).unwrap();
        uninstall(&options(repo.path())).unwrap();
        assert!(!claude_file(repo.path()).exists());
        assert!(repo.path().join(".claude/commands/review.md").exists());
    }

    #[test]
    fn gates_get_explicit_timeouts_in_each_clis_unit() {
        let repo = tempfile::tempdir().unwrap();
        install(&Options { gate_timeout_secs: 1800, ..options(repo.path()) }).unwrap();

        let claude = read(&claude_file(repo.path()));
        for (event, _, handler) in handlers(&claude, "/opt/ccm/bin/ccm-hook --agent claude") {
            let seconds =
                if ["PreToolUse", "PermissionRequest"].contains(&event) { 1800 } else { 10 };
            assert_eq!(handler["timeout"], seconds, "claude {event} (seconds)");
        }
        let gemini = read(&gemini_file(repo.path()));
        let ours = handlers(&gemini, "/opt/ccm/bin/ccm-hook --agent gemini");
        assert_eq!(ours.len(), GEMINI_EVENTS.len());
        for (event, _, handler) in ours {
            let millis = if event == "BeforeTool" { 1_800_000 } else { 10_000 };
            assert_eq!(handler["timeout"], millis, "gemini {event} (milliseconds)");
        }
    }

    #[test]
    fn shared_option_writes_the_committed_claude_settings() {
        let repo = tempfile::tempdir().unwrap();
        let shared = Options { shared: true, ..options(repo.path()) };
        let reports = install(&shared).unwrap();
        let committed = repo.path().join(".claude/settings.json");
        assert_eq!(reports[0].file, committed);
        assert_eq!(handlers(&read(&committed), "/opt/ccm/bin/ccm-hook --agent claude").len(), 12);
        assert!(!claude_file(repo.path()).exists());

        assert_eq!(status(&shared).unwrap()[0].action, Action::AlreadyPresent);
        assert_eq!(status(&options(repo.path())).unwrap()[0].action, Action::NotPresent);
        uninstall(&shared).unwrap();
        assert!(!committed.exists());
    }

    #[test]
    fn codex_overrides_are_toml_with_every_event_and_the_gate_timeout() {
        let overrides = codex_overrides(&program(&["/opt/my ccm/ccm", "hook"]), 630);
        assert_eq!(overrides.len(), 2 * (1 + CODEX_EVENTS.len()));
        assert!(overrides.iter().step_by(2).all(|flag| flag == "-c"));
        assert_eq!(overrides[1], r#"notify=["/opt/my ccm/ccm","hook","--agent","codex"]"#);
        assert_eq!(
            overrides[7],
            r#"hooks.PreToolUse=[{matcher="*",hooks=[{type="command",command="'/opt/my ccm/ccm' hook --agent codex",timeout=630}]}]"#
        );
        for value in overrides.iter().skip(1).step_by(2) {
            let parsed: toml_edit::DocumentMut = value.parse().expect("each override is TOML");
            assert_eq!(parsed.len(), 1, "{value}");
        }
    }

    #[test]
    fn codex_notify_of_the_user_is_left_alone() {
        let repo = tempfile::tempdir().unwrap();
        let user = "notify = [\"notify-send\", \"codex\"] # desktop\nmodel = \"o3\"\n";
        write(&codex_file(repo.path()), user);

        let reports = install(&options(repo.path())).unwrap();
        assert_eq!(reports[2].action, Action::Skipped);
        assert!(reports[2].detail.contains(r#"["notify-send", "codex"]"#), "{}", reports[2].detail);
        assert!(reports[2].detail.contains("single notify program"), "{}", reports[2].detail);
        assert_eq!(fs::read_to_string(codex_file(repo.path())).unwrap(), user);

        assert_eq!(status(&options(repo.path())).unwrap()[2].action, Action::Skipped);
        assert_eq!(uninstall(&options(repo.path())).unwrap()[2].action, Action::NotPresent);
        assert_eq!(fs::read_to_string(codex_file(repo.path())).unwrap(), user);
    }

    #[test]
    fn invalid_settings_file_is_reported_and_left_untouched() {
        let cases = [
            (".claude/settings.local.json", "{ \"hooks\": { ", "is not valid JSON"),
            (".gemini/settings.json", "// comment\n{}", "is not valid JSON"),
            (".claude/settings.local.json", "[1, 2]", "the top level is not an object"),
            (".claude/settings.local.json", "{\"hooks\": []}", "`hooks` is not an object"),
            (
                ".gemini/settings.json",
                "{\"hooks\": {\"BeforeTool\": {}}}",
                "`hooks.BeforeTool` is not an array",
            ),
            (".codex/config.toml", "notify = [\"x\"\nmodel = ", "is not valid TOML"),
        ];
        for (file, text, message) in cases {
            let repo = tempfile::tempdir().unwrap();
            let path = repo.path().join(file);
            write(&path, text);
            for run in [install, uninstall, status] {
                let result = run(&options(repo.path()));
                // uninstall never needs to look inside an event, so it may succeed there.
                if message.contains("hooks.BeforeTool") && result.is_ok() {
                    continue;
                }
                let error = result.expect_err(file).to_string();
                assert!(error.contains(&path.display().to_string()), "{error}");
                assert!(error.contains(message), "{error}");
                assert!(!error.contains('\n'), "one line: {error}");
                assert_eq!(fs::read_to_string(&path).unwrap(), text, "{file} was changed");
            }
            let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
            assert_eq!(leftovers.len(), 1, "no temporary files are left");
            let written: Vec<_> = fs::read_dir(repo.path()).unwrap().collect();
            assert_eq!(written.len(), 1, "no other CLI's file was written either");
        }
    }

    #[test]
    fn status_reports_without_changing_anything() {
        let repo = tempfile::tempdir().unwrap();
        let reports = status(&options(repo.path())).unwrap();
        assert!(reports.iter().all(|r| r.action == Action::NotPresent), "{reports:?}");
        assert_eq!(fs::read_dir(repo.path()).unwrap().count(), 0, "status creates nothing");

        write(&claude_file(repo.path()), USER_CLAUDE);
        let reports = status(&options(repo.path())).unwrap();
        assert_eq!(reports[0].action, Action::NotPresent);
        assert_eq!(reports[0].detail, "no ccm hooks in the file");
        assert_eq!(fs::read_to_string(claude_file(repo.path())).unwrap(), USER_CLAUDE);

        install(&options(repo.path())).unwrap();
        let installed = fs::read_to_string(claude_file(repo.path())).unwrap();
        let reports = status(&options(repo.path())).unwrap();
        assert_eq!(
            actions(&reports),
            [
                ("claude", Action::AlreadyPresent),
                ("gemini", Action::AlreadyPresent),
                ("codex", Action::AlreadyPresent)
            ]
        );

        // A partial or outdated installation is reported, and still not changed.
        let mut settings = read(&claude_file(repo.path()));
        settings["hooks"].as_object_mut().unwrap().shift_remove("SessionEnd");
        write(&claude_file(repo.path()), &serde_json::to_string(&settings).unwrap());
        let changed = fs::read_to_string(claude_file(repo.path())).unwrap();
        let reports = status(&Options { gate_timeout_secs: 30, ..options(repo.path()) }).unwrap();
        assert_eq!(reports[0].action, Action::NotPresent);
        assert_eq!(
            reports[0].detail,
            "missing for SessionEnd; another command or timeout on PreToolUse and PermissionRequest"
        );
        assert_eq!(fs::read_to_string(claude_file(repo.path())).unwrap(), changed);
        assert_ne!(changed, installed);
    }

    #[test]
    fn ccm_path_with_spaces_is_quoted_for_the_shell_but_not_in_codex_argv() {
        let repo = tempfile::tempdir().unwrap();
        let hook = program(&["/home/Jo Doe/bin/ccm-hook"]);
        install(&Options { hook: &hook, ..options(repo.path()) }).unwrap();
        let claude = read(&claude_file(repo.path()));
        assert_eq!(handlers(&claude, "'/home/Jo Doe/bin/ccm-hook' --agent claude").len(), 12);
        let codex = fs::read_to_string(codex_file(repo.path())).unwrap();
        assert!(codex.contains(r#"["/home/Jo Doe/bin/ccm-hook", "--agent""#), "{codex}");
    }

    #[test]
    fn install_points_hooks_of_an_older_ccm_at_the_current_program_in_place() {
        let repo = tempfile::tempdir().unwrap();
        let old = program(&["/usr/local/bin/ccm", "hook"]);
        install(&Options { hook: &old, ..options(repo.path()) }).unwrap();
        let before = read(&claude_file(repo.path()));
        assert_eq!(handlers(&before, "/usr/local/bin/ccm hook --agent claude").len(), 12);
        assert_eq!(status(&options(repo.path())).unwrap()[0].action, Action::NotPresent);

        let reports = install(&options(repo.path())).unwrap();
        assert_eq!(
            actions(&reports),
            [("claude", Action::Added), ("gemini", Action::Added), ("codex", Action::Added)]
        );
        assert!(
            reports[0].detail.starts_with("corrected the command or timeout on"),
            "{reports:?}"
        );
        let after = read(&claude_file(repo.path()));
        assert_eq!(handlers(&after, "/opt/ccm/bin/ccm-hook --agent claude").len(), 12);
        assert!(handlers(&after, "/usr/local/bin/ccm hook --agent claude").is_empty());
        let codex = fs::read_to_string(codex_file(repo.path())).unwrap();
        assert_eq!(codex, "notify = [\"/opt/ccm/bin/ccm-hook\", \"--agent\", \"codex\"]\n");
        assert!(status(&options(repo.path()))
            .unwrap()
            .iter()
            .all(|r| r.action == Action::AlreadyPresent));

        // A user's hook that merely mentions ccm is not ccm's.
        let mut settings = after;
        settings["hooks"]["Stop"][0]["hooks"][0]["command"] =
            "ccm hook --agent claude | tee log".into();
        write(&claude_file(repo.path()), &settings.to_string());
        uninstall(&options(repo.path())).unwrap();
        let left = read(&claude_file(repo.path()));
        assert_eq!(
            left["hooks"]["Stop"][0]["hooks"][0]["command"],
            "ccm hook --agent claude | tee log"
        );
    }
}
