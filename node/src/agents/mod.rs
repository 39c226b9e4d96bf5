//! Agent CLIs: how to start one and how to read what it prints.
//!
//! - [`profile`]: agent profiles (an argv template with placeholders, the mode, the output
//!   format, extra environment) and the built-in `claude`, `gemini` and `codex` profiles.
//! - [`launcher`]: the script an agent's tmux window runs (its environment, argv, stdin, output
//!   log and exit status), so that tmux's command line stays short.
//! - [`parse`]: parsers of an agent's stdout (Claude and Gemini `stream-json`, Codex `--json`,
//!   plain text), folded line by line into an [`parse::OutputSummary`].
//! - [`render`]: an agent's output as readable lines (`ccm task logs`, the dashboard's task page).
//! - [`gemini_state`]: forgetting what Gemini CLI keeps under `~/.gemini` about a worktree.
//! - [`versions`]: the CLI versions the tests cover.

pub mod gemini_state;
pub mod launcher;
pub mod parse;
pub mod profile;
pub mod render;
pub mod versions;

use std::path::Path;

/// Where `program` is: itself when it names a path, else the first executable file of that
/// name in a `PATH` directory.
pub fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let executable = |path: &Path| {
        path.metadata().is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    };
    if program.contains('/') {
        let path = Path::new(program).to_path_buf();
        return executable(&path).then_some(path);
    }
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs).map(|dir| dir.join(program)).find(|path| executable(path))
}
