//! Agent CLIs: how to start one and how to read what it prints.
//!
//! - [`profile`]: agent profiles (an argv template with placeholders, the mode, the output
//!   format, extra environment) and the built-in `claude`, `gemini` and `codex` profiles.
//! - [`parse`]: parsers of an agent's stdout (Claude and Gemini `stream-json`, Codex `--json`,
//!   plain text), folded line by line into an [`parse::OutputSummary`].
//! - [`gemini_state`]: forgetting what Gemini CLI keeps under `~/.gemini` about a worktree.
//! - [`versions`]: the CLI versions the tests cover.

pub mod gemini_state;
pub mod parse;
pub mod profile;
pub mod versions;
