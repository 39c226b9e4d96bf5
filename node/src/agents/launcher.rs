//! The launcher: the shell script an agent's tmux window runs (`sh <agent dir>/launch.sh`).
//!
//! tmux carries a command line from its client to its server in one message of at most 16 KiB,
//! so nothing that grows with a task may go there: not the prompt, not the agent's argv (a
//! custom profile's `{prompt}`), not the environment. The runtime writes all of it into this
//! script in the agent's directory, and the window's command line is only `sh` and the
//! script's path. The script
//!
//! 1. exports the agent's environment (the daemon's, so the window does not get that of
//!    whichever process started ccm's tmux server, plus the profile's and ccm's variables);
//! 2. runs the agent: headless, with its stdin from the prompt file (`stdin: prompt`) or
//!    `/dev/null`, its output and errors appended to `output.log`; interactive, on the window's
//!    terminal;
//! 3. writes the agent's exit status to `exit` (through `exit.tmp` and a rename, so a reader
//!    never sees half of it), so that output and status survive the daemon.

use std::collections::BTreeMap;

use crate::agents::profile::{Mode, Stdin};

/// The launcher's file name in the agent's directory.
pub const FILE: &str = "launch.sh";

/// Variables the shell owns (read-only ones in bash, and those it keeps up to date itself),
/// never exported by the script: the shell would stop at a read-only one, and the daemon's
/// `PWD` is not the agent's.
const SHELL_OWNED: [&str; 10] = [
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    "PPID",
    "UID",
    "EUID",
    "SHELLOPTS",
    "BASHOPTS",
    "BASH_VERSINFO",
];

/// What a launcher runs.
pub struct Launch<'a> {
    /// The agent's argv, placeholders expanded.
    pub argv: &'a [String],
    /// Its whole environment.
    pub env: &'a BTreeMap<String, String>,
    pub mode: Mode,
    pub stdin: Stdin,
    /// The agent's directory: `output.log` and `exit` go there.
    pub dir: &'a str,
    /// The file `stdin: prompt` reads.
    pub prompt_file: &'a str,
    /// A comment line: whose launcher this is.
    pub about: &'a str,
}

/// Whether `name` is a variable a POSIX shell can export, and not one the shell owns.
fn exportable(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !SHELL_OWNED.contains(&name)
        && !name.starts_with("TMUX")
}

/// `text` as one shell word: single-quoted, each `'` written as `'\''`.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The launcher's text. Variables whose names a shell cannot export (or that the shell owns,
/// or tmux's own `TMUX*`) are left out.
pub fn script(launch: &Launch) -> String {
    let mut script = format!("# {}\n", launch.about.replace('\n', " "));
    for (name, value) in launch.env.iter().filter(|(name, _)| exportable(name)) {
        script.push_str(&format!("export {name}={}\n", quote(value)));
    }
    let command: Vec<String> = launch.argv.iter().map(|arg| quote(arg)).collect();
    let command = command.join(" ");
    let stdin = match launch.stdin {
        Stdin::Prompt => quote(launch.prompt_file),
        Stdin::None => "/dev/null".to_string(),
    };
    script.push_str(&format!("D={}\n", quote(launch.dir)));
    match launch.mode {
        Mode::Interactive => script.push_str(&format!(
            "{command}\necho $? >\"$D/exit.tmp\"; mv \"$D/exit.tmp\" \"$D/exit\"\n"
        )),
        Mode::Headless | Mode::External => script.push_str(&format!(
            "{{ {command} <{stdin}; echo $? >\"$D/exit.tmp\"; }} 2>&1 | tee -a \"$D/output.log\"; mv \"$D/exit.tmp\" \"$D/exit\"\n"
        )),
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch<'a>(
        argv: &'a [String],
        env: &'a BTreeMap<String, String>,
        mode: Mode,
        stdin: Stdin,
    ) -> Launch<'a> {
        Launch {
            argv,
            env,
            mode,
            stdin,
            dir: "/h/agents/a1",
            prompt_file: "/h/agents/a1/prompt.md",
            about: "agent a1",
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn a_headless_launcher_feeds_the_prompt_file_and_keeps_output_and_status() {
        let env = BTreeMap::from([
            ("CCM_AGENT_DIR".to_string(), "/h/agents/a1".to_string()),
            ("PATH".to_string(), "/bin:/usr/bin".to_string()),
        ]);
        let argv = strings(&["claude", "-p"]);
        assert_eq!(
            script(&launch(&argv, &env, Mode::Headless, Stdin::Prompt)),
            "# agent a1\n\
             export CCM_AGENT_DIR='/h/agents/a1'\n\
             export PATH='/bin:/usr/bin'\n\
             D='/h/agents/a1'\n\
             { 'claude' '-p' <'/h/agents/a1/prompt.md'; echo $? >\"$D/exit.tmp\"; } 2>&1 | tee -a \"$D/output.log\"; mv \"$D/exit.tmp\" \"$D/exit\"\n"
        );
        let text = script(&launch(&argv, &env, Mode::Headless, Stdin::None));
        assert!(text.contains("'claude' '-p' </dev/null;"), "{text}");
        let text = script(&launch(&argv, &env, Mode::Interactive, Stdin::None));
        assert!(
            text.ends_with(
                "'claude' '-p'\necho $? >\"$D/exit.tmp\"; mv \"$D/exit.tmp\" \"$D/exit\"\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn variables_a_shell_cannot_export_or_owns_are_left_out() {
        let env: BTreeMap<String, String> = [
            "GOOD_1",
            "_private",
            "1BAD",
            "a-b",
            "BASH_FUNC_f%%",
            "BASH_ENV",
            "PWD",
            "SHELLOPTS",
            "TMUX",
            "TMUX_PANE",
            "",
            "UID",
        ]
        .iter()
        .map(|name| (name.to_string(), "v".to_string()))
        .collect();
        let text = script(&launch(&[], &env, Mode::Headless, Stdin::None));
        let exported: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("export ")?.split('=').next()).collect();
        assert_eq!(exported, ["BASH_ENV", "GOOD_1", "_private"]);
    }

    /// The script, run by a real `sh`, hands every argument and variable over byte for byte.
    #[test]
    fn arguments_and_values_reach_the_agent_as_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let agent_dir = dir.path().to_string_lossy().into_owned();
        let prompt_file = dir.path().join("prompt.md");
        let tricky = "it's \"quoted\" $HOME `date` \\ {cwd}\nsecond line; exit 3 &&";
        std::fs::write(&prompt_file, tricky).expect("prompt written");
        let env = BTreeMap::from([
            ("CCM_AGENT_DIR".to_string(), agent_dir.clone()),
            ("TRICKY".to_string(), tricky.to_string()),
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_default()),
        ]);
        let argv =
            strings(&["sh", "-c", r#"printf '%s|' "$1" "$TRICKY"; cat; exit 7"#, "sh", tricky]);
        let prompt_file = prompt_file.to_string_lossy().into_owned();
        let launch = Launch {
            dir: &agent_dir,
            prompt_file: &prompt_file,
            ..launch(&argv, &env, Mode::Headless, Stdin::Prompt)
        };
        let path = dir.path().join(FILE);
        std::fs::write(&path, script(&launch)).expect("launcher written");
        let status = std::process::Command::new("/bin/sh")
            .arg(&path)
            .env_clear()
            .stdout(std::process::Stdio::null())
            .status()
            .expect("sh runs");
        assert!(status.success());
        let output = std::fs::read_to_string(dir.path().join("output.log")).expect("output");
        assert_eq!(output, format!("{tricky}|{tricky}|{tricky}"));
        let exit = std::fs::read_to_string(dir.path().join("exit")).expect("exit status");
        assert_eq!(exit, "7\n");
    }
}
