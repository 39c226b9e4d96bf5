//! Agent profiles: how to start one agent and how to read its output.
//!
//! A profile's `command` is an argv template. The placeholders `{prompt}`, `{prompt_file}`,
//! `{session_id}`, `{cwd}` and `{allowed_tools}` are replaced inside each argument, so
//! `--session-id={session_id}` works. A placeholder is `{` + a name made of ASCII letters, digits and `_` + `}`; other braces
//! (`{}`, `{"a": 1}`) are plain text. Replacement is single-pass: text substituted for one
//! placeholder is never scanned again, so a prompt containing `{cwd}` reaches the agent as written.
//! An argument that is exactly `{codex_hooks}` is replaced by several arguments: the `-c`
//! overrides that give Codex ccm's `notify` program and lifecycle hooks (it may not appear inside
//! a longer argument).
//!
//! A prompt reaches the agent in one of three ways: on its stdin (`stdin: prompt`, what the
//! built-in profiles do, so a prompt of any size works), as a file (`{prompt_file}`), or as
//! command-line text (`{prompt}`), which the system limits to [`MAX_ARG_BYTES`] an argument.
//!
//! The built-in profiles run each CLI headless with machine-readable output, as documented in
//! `agent-interfaces.md` (§1.8 Claude `-p --output-format stream-json --verbose`, §2.2 Gemini
//! `--output-format stream-json`, §3.1 `codex exec --json`), each reading its prompt from stdin
//! (§1.8 "piped stdin", §2.2 "headless when stdin is not a TTY", §3.1 "`-`").
//!
//! Claude's worker may use the tools of its `allowed_tools` without asking (in `-p` mode nobody
//! can be asked: `acceptEdits` alone denies `git add … && git commit …`). `ANTHROPIC_LOG=debug`
//! makes Claude Code print the headers of a failed API call (not otherwise reported): the
//! parser reads a 429's `retry-after` and `anthropic-ratelimit-*-reset` from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agents::parse::OutputFormat;

/// How an agent runs: with machine-readable output and no human (`headless`), or in a terminal a
/// human may attach to (`interactive`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Headless,
    Interactive,
    /// No agent: something outside ccm (a person, a script, another runner) drives the task
    /// through the API's task events. The runtime leaves such tasks alone.
    External,
}

/// What an agent reads on its stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stdin {
    /// Nothing (`/dev/null`; an interactive agent reads its terminal).
    #[default]
    None,
    /// The prompt (the file `{prompt_file}` names). Headless agents only.
    Prompt,
}

/// The most bytes one argument of a command may hold: Linux's `MAX_ARG_STRLEN` (32 pages of
/// 4 KiB) less the terminating NUL. A `{prompt}` longer than this cannot reach an agent.
pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;

/// The most bytes a command's arguments and environment may hold together: `ARG_MAX` on macOS,
/// half of Linux's usual 2 MiB (a quarter of the stack limit).
pub const MAX_COMMAND_BYTES: usize = 1024 * 1024;

/// An agent profile: how to start one agent and how to read its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// argv template; placeholders `{prompt}`, `{prompt_file}`, `{session_id}`, `{cwd}` are
    /// replaced inside each argument (so `--session-id={session_id}` works). A profile named
    /// like a built-in one without a command is that built-in with this profile's `context`.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    /// What the agent reads on stdin: nothing (default) or the prompt.
    #[serde(default)]
    pub stdin: Stdin,
    /// Parser of the agent's stdout. Default `plain`.
    #[serde(default)]
    pub output: OutputFormat,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Tools the agent may use without asking, in the CLI's own syntax (Claude: permission
    /// rules such as `Bash` or `Bash(git *)`); `{allowed_tools}` in the command is this list
    /// joined with commas. A project replaces it with `allowed_tools.<profile>` in its config.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// The account whose usage limit the profile's agents share (several profiles, or several
    /// systems, may name one); by default the profile's own name. See [`Profile::account`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Profiles a task of this profile may run under, in order, while this profile's account
    /// is at its usage limit (the first whose account is not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_profiles: Vec<String>,
    /// What ccm does as the agent's context fills up (`context: {threshold, action, window}`);
    /// none: it only shows how full it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<ContextPolicy>,
}

/// A profile's `context:` policy: once the context in use passes `threshold` (a share of
/// `window`), ccm warns (an alert) or has the agent hand off (a summary for the next attempt).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextPolicy {
    /// A share of the window, above 0 and at most 1. Default 0.8.
    #[serde(default = "ContextPolicy::default_threshold")]
    pub threshold: f64,
    #[serde(default)]
    pub action: ContextAction,
    /// The model's context window in tokens; default: the CLI's ([`default_window`]).
    #[serde(default)]
    pub window: Option<u64>,
}

impl ContextPolicy {
    fn default_threshold() -> f64 {
        0.8
    }
}

/// What ccm does when an agent's context passes its profile's threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextAction {
    /// A `context_high` alert.
    #[default]
    Warn,
    /// The agent is asked to write a summary; its attempt ends with it (not a failure) and
    /// the next attempt starts fresh with the summary in its prompt.
    Handoff,
}

impl ContextAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextAction::Warn => "warn",
            ContextAction::Handoff => "handoff",
        }
    }
}

/// The context window an agent of a CLI is measured against until its CLI reports its model's
/// own (Claude Code's result `modelUsage.*.contextWindow`): Claude 200,000 tokens (the
/// smallest of its models: a warning comes early rather than never), Gemini 1,048,576, Codex
/// 272,000 (its input share); none for plain output.
pub fn default_window(output: OutputFormat) -> Option<u64> {
    match output {
        OutputFormat::Claude => Some(200_000),
        OutputFormat::Gemini => Some(1_048_576),
        OutputFormat::Codex => Some(272_000),
        OutputFormat::Plain => None,
    }
}

/// The values of a profile's placeholders for one run.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `{codex_hooks}` (a whole argument): the arguments it stands for.
    pub codex_hooks: &'a [String],
    /// `{prompt}`: the prompt text itself.
    pub prompt: &'a str,
    /// `{prompt_file}`: the path of a file holding the prompt.
    pub prompt_file: &'a str,
    /// `{session_id}`: the agent session's id (a UUID).
    pub session_id: &'a str,
    /// `{cwd}`: the directory the agent works in.
    pub cwd: &'a str,
    /// `{allowed_tools}`: the profile's allowed tools, joined with commas.
    pub allowed_tools: &'a str,
    /// `{mcp_config}`: the path of a JSON file naming ccm's MCP server (`{"mcpServers":
    /// {"ccm": ...}}`, Claude Code's `--mcp-config` format), for CLIs that take one by flag.
    pub mcp_config: &'a str,
}

/// The placeholder names a profile may use.
pub const PLACEHOLDER_NAMES: [&str; 6] =
    ["prompt", "prompt_file", "session_id", "cwd", "allowed_tools", "mcp_config"];

/// The placeholder that stands for several whole arguments (see [`Placeholders::codex_hooks`]).
pub const CODEX_HOOKS: &str = "{codex_hooks}";

impl Placeholders<'_> {
    /// The value of the placeholder `name` (without braces), if it is a known one.
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "prompt" => Some(self.prompt),
            "prompt_file" => Some(self.prompt_file),
            "session_id" => Some(self.session_id),
            "cwd" => Some(self.cwd),
            "allowed_tools" => Some(self.allowed_tools),
            "mcp_config" => Some(self.mcp_config),
            _ => None,
        }
    }
}

impl Profile {
    /// The context window its agents are measured against: `context.window`, else the CLI's.
    pub fn context_window(&self) -> Option<u64> {
        self.context.and_then(|c| c.window).or_else(|| default_window(self.output))
    }

    /// The account of the profile named `name`: its `account`, else its name.
    pub fn account<'a>(&'a self, name: &'a str) -> &'a str {
        self.account.as_deref().unwrap_or(name)
    }

    /// The argv with placeholders replaced. Replacement is single-pass: text substituted for one
    /// placeholder is never re-scanned (a prompt containing "{cwd}" stays literal). Unknown
    /// placeholders are left as written ([`Profile::validate`] rejects them).
    pub fn argv(&self, values: &Placeholders) -> Vec<String> {
        self.command
            .iter()
            .flat_map(|arg| {
                if arg == CODEX_HOOKS {
                    return values.codex_hooks.to_vec();
                }
                let mut out = String::with_capacity(arg.len());
                for piece in pieces(arg) {
                    match piece {
                        Piece::Text(text) => out.push_str(text),
                        Piece::Placeholder(name) => match values.get(name) {
                            Some(value) => out.push_str(value),
                            None => {
                                out.push('{');
                                out.push_str(name);
                                out.push('}');
                            }
                        },
                    }
                }
                vec![out]
            })
            .collect()
    }

    /// Whether the command carries the prompt's text in an argument (`{prompt}`), which the
    /// system limits to [`MAX_ARG_BYTES`].
    pub fn prompt_in_argv(&self) -> bool {
        self.mode != Mode::External
            && self.command.iter().any(|arg| pieces(arg).contains(&Piece::Placeholder("prompt")))
    }

    /// Checks the profile named `name`: the command must name a program, and every placeholder
    /// must be one of `{prompt}`, `{prompt_file}`, `{session_id}`, `{cwd}`, `{allowed_tools}`,
    /// `{mcp_config}`.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.mode == Mode::External {
            return Ok(()); // nothing is run
        }
        if let Some(context) = &self.context {
            if !(context.threshold > 0.0 && context.threshold <= 1.0) {
                return Err(format!(
                    "profile `{name}`: context.threshold must be above 0 and at most 1 (a share \
                     of the window, e.g. 0.8), not {}",
                    context.threshold
                ));
            }
            if context.window == Some(0) {
                return Err(format!("profile `{name}`: context.window must be at least 1 token"));
            }
            if self.context_window().is_none() {
                return Err(format!(
                    "profile `{name}`: context needs a `window` (tokens): output `plain` reports \
                     no usage and has no default window"
                ));
            }
        }
        match self.command.first() {
            None => return Err(format!("profile `{name}`: command is empty")),
            Some(program) if program.trim().is_empty() => {
                return Err(format!("profile `{name}`: command has an empty program name"))
            }
            Some(_) => {}
        }
        if self.stdin == Stdin::Prompt && self.mode == Mode::Interactive {
            return Err(format!(
                "profile `{name}`: `stdin: prompt` needs mode headless (an interactive agent's \
                 stdin is its terminal); use {{prompt_file}} instead"
            ));
        }
        for (index, arg) in self.command.iter().enumerate() {
            if arg == CODEX_HOOKS {
                continue;
            }
            for piece in pieces(arg) {
                if let Piece::Placeholder(placeholder) = piece {
                    if placeholder == &CODEX_HOOKS[1..CODEX_HOOKS.len() - 1] {
                        return Err(format!(
                            "profile `{name}`: `{CODEX_HOOKS}` must be a whole argument (command argument {index})"
                        ));
                    }
                    if !PLACEHOLDER_NAMES.contains(&placeholder) {
                        return Err(format!(
                            "profile `{name}`: unknown placeholder `{{{placeholder}}}` in command \
                             argument {index} (known: {{prompt}}, {{prompt_file}}, {{session_id}}, {{cwd}}, \
                             {{allowed_tools}}, {{mcp_config}}, and {CODEX_HOOKS} as a whole argument)"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks that a command (its expanded `argv` and the `env` it runs with) fits what the
/// system lets a program be started with: each argument at most [`MAX_ARG_BYTES`], all of them
/// with the environment at most [`MAX_COMMAND_BYTES`]. The error names the profile, the
/// argument and its size, and what to use instead of `{prompt}`.
pub fn check_command(
    name: &str,
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), String> {
    let fix = "give the profile `stdin: prompt` or {prompt_file} instead of {prompt}";
    if let Some((index, arg)) = argv.iter().enumerate().find(|(_, arg)| arg.len() > MAX_ARG_BYTES) {
        return Err(format!(
            "the command of profile `{name}` is too long to start: its argument {index} is {} \
             bytes, and one argument may hold at most {MAX_ARG_BYTES}; {fix}",
            arg.len()
        ));
    }
    let total: usize = argv.iter().map(|arg| arg.len() + 1).sum::<usize>()
        + env.iter().map(|(key, value)| key.len() + value.len() + 2).sum::<usize>();
    if total > MAX_COMMAND_BYTES {
        return Err(format!(
            "the command of profile `{name}` is too long to start: its arguments and environment \
             are {total} bytes, at most {MAX_COMMAND_BYTES} are allowed; {fix}"
        ));
    }
    Ok(())
}

/// Built-in profiles `claude`, `gemini`, `codex` (headless agents) and `manual` (external:
/// driven through the API), keyed by name. Each headless one reads its prompt on stdin
/// (`stdin: prompt`), so no prompt is too long for it.
///
/// - `gemini`: `GEMINI_CLI_TRUST_WORKSPACE=true` trusts the worktree, so Gemini CLI runs there
///   (it exits 55 in an untrusted folder) and loads ccm's hooks from its `.gemini/settings.json`
///   (`--skip-trust` is read after the settings, so the hooks would be dropped). `yolo` is the
///   approval mode that offers `run_shell_command` headless (`auto_edit` leaves it out, so the
///   worker could not run tests or commit); the agent's directory is its worktree and ccm's
///   `BeforeTool` hook still gates writes. Its stdin is not a terminal, so it runs headless and
///   takes stdin as the prompt (at most 8 MiB; it cuts the rest).
/// - `codex`: `danger-full-access`, because `workspace-write` keeps a linked worktree's git
///   directory (`<repo>/.git/worktrees/<wt>/`) read-only even when it is added with `--add-dir`,
///   so the worker could not commit; the worktree is the agent's own and ccm's `PreToolUse`
///   hook still gates its commands. `{codex_hooks}` with `--dangerously-bypass-hook-trust`
///   gives it ccm's hooks; the prompt `-` reads the prompt from stdin.
/// - `claude`: `-p` without a prompt argument reads the prompt from stdin (at most 10 MB).
pub fn builtin() -> BTreeMap<String, Profile> {
    let headless = |command: &[&str], output| Profile {
        command: command.iter().map(|arg| arg.to_string()).collect(),
        mode: Mode::Headless,
        stdin: Stdin::Prompt,
        output,
        env: BTreeMap::new(),
        allowed_tools: Vec::new(),
        context: None,
        account: None,
        fallback_profiles: Vec::new(),
    };
    let strings =
        |items: &[&str]| -> Vec<String> { items.iter().map(|item| item.to_string()).collect() };
    BTreeMap::from([
        (
            "manual".to_string(),
            Profile {
                command: Vec::new(),
                mode: Mode::External,
                stdin: Stdin::None,
                output: OutputFormat::Plain,
                env: BTreeMap::new(),
                allowed_tools: Vec::new(),
                context: None,
                account: None,
                fallback_profiles: Vec::new(),
            },
        ),
        (
            "claude".to_string(),
            Profile {
                env: BTreeMap::from([("ANTHROPIC_LOG".to_string(), "debug".to_string())]),
                // Edit, test and commit inside the worktree; ccm's PreToolUse hook still
                // denies writes to files another task owns, and approval rules still ask.
                allowed_tools: strings(&["Bash", "Edit", "Write", "NotebookEdit", "mcp__ccm"]),
                ..headless(
                    &[
                        "claude",
                        "-p",
                        "--output-format",
                        "stream-json",
                        "--verbose",
                        "--session-id",
                        "{session_id}",
                        "--permission-mode",
                        "acceptEdits",
                        "--allowedTools={allowed_tools}",
                    ],
                    OutputFormat::Claude,
                )
            },
        ),
        (
            "gemini".to_string(),
            Profile {
                env: BTreeMap::from([(
                    "GEMINI_CLI_TRUST_WORKSPACE".to_string(),
                    "true".to_string(),
                )]),
                ..headless(
                    &["gemini", "--output-format", "stream-json", "--approval-mode", "yolo"],
                    OutputFormat::Gemini,
                )
            },
        ),
        (
            "codex".to_string(),
            headless(
                &[
                    "codex",
                    "exec",
                    "--json",
                    "--sandbox",
                    "danger-full-access",
                    "--dangerously-bypass-hook-trust",
                    CODEX_HOOKS,
                    "-",
                ],
                OutputFormat::Codex,
            ),
        ),
    ])
}

/// A piece of an argument: literal text or a `{name}` placeholder (name without braces).
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits an argument into text and placeholders, left to right.
fn pieces(arg: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let name_len =
            after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            if open > 0 {
                pieces.push(Piece::Text(&rest[..open]));
            }
            pieces.push(Piece::Placeholder(&after[..name_len]));
            rest = &after[name_len + 1..];
        } else {
            // Not a placeholder: keep the brace as text and look again after it.
            pieces.push(Piece::Text(&rest[..open + 1]));
            rest = after;
        }
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: Placeholders<'static> = Placeholders {
        codex_hooks: &[],
        prompt: "fix the bug",
        prompt_file: "/tmp/prompt.md",
        session_id: "8c35adc1-0000-4000-8000-000000000000",
        cwd: "/home/u/proj",
        allowed_tools: "Bash,Edit",
        mcp_config: "/h/agents/a1/mcp.json",
    };

    fn profile(command: &[&str]) -> Profile {
        Profile {
            command: command.iter().map(|arg| arg.to_string()).collect(),
            mode: Mode::default(),
            stdin: Stdin::default(),
            output: OutputFormat::default(),
            env: BTreeMap::new(),
            allowed_tools: Vec::new(),
            context: None,
            account: None,
            fallback_profiles: Vec::new(),
        }
    }

    /// Checks that `command` expands to `expected` with [`VALUES`].
    fn check(command: &[&str], expected: &[&str]) {
        assert_eq!(profile(command).argv(&VALUES), expected, "command {command:?}");
    }

    #[test]
    fn the_built_in_profiles_build_the_documented_argv() {
        let profiles = builtin();
        assert_eq!(profiles.keys().collect::<Vec<_>>(), ["claude", "codex", "gemini", "manual"]);
        assert_eq!(profiles["manual"].mode, Mode::External);
        let argv = |name: &str| profiles[name].argv(&VALUES);
        assert_eq!(
            argv("claude"),
            [
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--session-id",
                "8c35adc1-0000-4000-8000-000000000000",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools=Bash,Edit",
            ]
        );
        assert_eq!(
            argv("gemini"),
            ["gemini", "--output-format", "stream-json", "--approval-mode", "yolo",]
        );
        assert_eq!(profiles["gemini"].env["GEMINI_CLI_TRUST_WORKSPACE"], "true");
        let hooks = ["-c".to_string(), "notify=[\"ccm\"]".to_string()];
        assert_eq!(
            profiles["codex"].argv(&Placeholders { codex_hooks: &hooks, ..VALUES }),
            [
                "codex",
                "exec",
                "--json",
                "--sandbox",
                "danger-full-access",
                "--dangerously-bypass-hook-trust",
                "-c",
                "notify=[\"ccm\"]",
                "-",
            ]
        );
        assert_eq!(profiles["claude"].output, OutputFormat::Claude);
        assert_eq!(profiles["gemini"].output, OutputFormat::Gemini);
        assert_eq!(profiles["codex"].output, OutputFormat::Codex);
        for (name, profile) in profiles.iter().filter(|(name, _)| *name != "manual") {
            assert_eq!(profile.mode, Mode::Headless, "{name}");
            assert_eq!(profile.validate(name), Ok(()));
            // The prompt goes on stdin, never on the command line, whatever its size.
            assert_eq!(profile.stdin, Stdin::Prompt, "{name}");
            assert!(!profile.prompt_in_argv(), "{name}");
        }
    }

    #[test]
    fn placeholders_are_replaced_inside_an_argument() {
        check(
            &["agent", "--session-id={session_id}"],
            &["agent", "--session-id=8c35adc1-0000-4000-8000-000000000000"],
        );
        check(&["cat {prompt_file} | run in {cwd}"], &["cat /tmp/prompt.md | run in /home/u/proj"]);
        check(&["{prompt}{cwd}"], &["fix the bug/home/u/proj"]);
        check(&["{{prompt}}"], &["{fix the bug}"]);
    }

    #[test]
    fn braces_that_are_not_placeholders_stay_literal() {
        check(
            &["sh", "-c", "echo {} {\"a\": 1} { prompt } {"],
            &["sh", "-c", "echo {} {\"a\": 1} { prompt } {"],
        );
        check(&["{unknown}"], &["{unknown}"]);
        check(&["naïve {cwd} ✓"], &["naïve /home/u/proj ✓"]);
    }

    #[test]
    fn replacement_is_single_pass() {
        let values =
            Placeholders { prompt: "use {cwd} and {session_id}", cwd: "{prompt}", ..VALUES };
        assert_eq!(
            profile(&["run", "{prompt}", "--cwd={cwd}"]).argv(&values),
            ["run", "use {cwd} and {session_id}", "--cwd={prompt}"]
        );
    }

    #[test]
    fn validation_rejects_an_empty_command_or_an_unknown_placeholder() {
        let cases: &[(&[&str], Result<(), &str>)] = &[
            (&["claude", "-p", "{prompt}"], Ok(())),
            (&["sh", "-c", "echo {}"], Ok(())),
            (&["codex", "{codex_hooks}", "{prompt}"], Ok(())),
            (
                &["codex", "-c={codex_hooks}"],
                Err(
                    "profile `mine`: `{codex_hooks}` must be a whole argument (command argument 1)",
                ),
            ),
            (&[], Err("profile `mine`: command is empty")),
            (&[" "], Err("profile `mine`: command has an empty program name")),
            (
                &["claude", "-p", "--resume={session}"],
                Err("profile `mine`: unknown placeholder `{session}` in command argument 2 \
                     (known: {prompt}, {prompt_file}, {session_id}, {cwd}, {allowed_tools}, \
                     {mcp_config}, and {codex_hooks} as a whole argument)"),
            ),
        ];
        for (command, expected) in cases {
            assert_eq!(
                profile(command).validate("mine"),
                expected.map_err(str::to_string),
                "command {command:?}"
            );
        }
    }

    #[test]
    fn a_custom_profile_deserializes_with_defaults() {
        let json =
            r#"{ "command": ["aider", "--message", "{prompt}"], "env": { "AIDER_YES": "1" } }"#;
        let profile: Profile = serde_json::from_str(json).expect("valid profile");
        assert_eq!(
            profile,
            Profile {
                command: vec!["aider".into(), "--message".into(), "{prompt}".into()],
                mode: Mode::Headless,
                stdin: Stdin::None,
                output: OutputFormat::Plain,
                env: BTreeMap::from([("AIDER_YES".to_string(), "1".to_string())]),
                allowed_tools: Vec::new(),
                context: None,
                account: None,
                fallback_profiles: Vec::new(),
            }
        );

        let json = r#"{ "command": ["claude"], "mode": "interactive", "output": "claude" }"#;
        let profile: Profile = serde_json::from_str(json).expect("valid profile");
        assert_eq!((profile.mode, profile.output), (Mode::Interactive, OutputFormat::Claude));
    }

    #[test]
    fn a_custom_profile_with_an_unknown_field_is_rejected() {
        let json = r#"{ "command": ["aider"], "outptu": "plain" }"#;
        let error = serde_json::from_str::<Profile>(json).expect_err("unknown field");
        assert!(error.to_string().contains("unknown field `outptu`"), "{error}");

        let json = r#"{ "command": ["aider"], "mode": "detached" }"#;
        let error = serde_json::from_str::<Profile>(json).expect_err("unknown mode");
        assert!(error.to_string().contains("unknown variant `detached`"), "{error}");
    }

    #[test]
    fn a_prompt_on_stdin_needs_a_headless_agent() {
        let json = r#"{ "command": ["my-agent"], "stdin": "prompt" }"#;
        let profile: Profile = serde_json::from_str(json).expect("valid profile");
        assert_eq!((profile.stdin, profile.validate("mine")), (Stdin::Prompt, Ok(())));
        let json = r#"{ "command": ["my-agent"], "stdin": "prompt", "mode": "interactive" }"#;
        let profile: Profile = serde_json::from_str(json).expect("valid profile");
        assert_eq!(
            profile.validate("mine"),
            Err("profile `mine`: `stdin: prompt` needs mode headless (an interactive agent's \
                 stdin is its terminal); use {prompt_file} instead"
                .to_string())
        );
        let error = serde_json::from_str::<Profile>(r#"{ "command": ["a"], "stdin": "file" }"#)
            .expect_err("unknown stdin");
        assert!(error.to_string().contains("unknown variant `file`"), "{error}");
    }

    #[test]
    fn a_command_too_long_to_start_is_refused_naming_the_argument_and_the_fix() {
        assert!(profile(&["agent", "{prompt}"]).prompt_in_argv());
        assert!(profile(&["sh", "-c", "echo {prompt} > x"]).prompt_in_argv());
        assert!(!profile(&["agent", "{prompt_file}", "{{prompt_file}}"]).prompt_in_argv());
        let env = BTreeMap::from([("HOME".to_string(), "/home/u".to_string())]);
        let argv = |prompt: &str| {
            profile(&["agent", "--", "{prompt}"]).argv(&Placeholders { prompt, ..VALUES })
        };
        assert_eq!(check_command("mine", &argv(&"x".repeat(MAX_ARG_BYTES)), &env), Ok(()));
        assert_eq!(
            check_command("mine", &argv(&"x".repeat(MAX_ARG_BYTES + 1)), &env),
            Err("the command of profile `mine` is too long to start: its argument 2 is 131072 \
                 bytes, and one argument may hold at most 131071; give the profile \
                 `stdin: prompt` or {prompt_file} instead of {prompt}"
                .to_string())
        );
        let many: Vec<String> = (0..9).map(|_| "x".repeat(MAX_ARG_BYTES)).collect();
        let error = check_command("mine", &many, &env).expect_err("over the total");
        assert!(error.contains("its arguments and environment are 1179661 bytes"), "{error}");
    }

    #[test]
    fn a_profile_round_trips_through_json() {
        for (name, profile) in builtin() {
            let json = serde_json::to_string(&profile).expect("serializable");
            let back: Profile = serde_json::from_str(&json).expect("deserializable");
            assert_eq!(back, profile, "{name}");
        }
    }
}
