//! The versions of the agent CLIs that ccm's tests run for real (`tests/agent-clis/package.json`
//! pins the same ones; a unit test keeps the two in step). `ccm doctor` says whether the
//! installed CLIs are among them.

/// `(program, version)` for each agent CLI the tests cover.
pub const COVERED: [(&str, &str); 3] =
    [("claude", "2.1.332"), ("gemini", "0.61.0"), ("codex", "0.171.0")];

/// The covered version of the agent CLI `program` (a name such as `claude`), if it is one.
pub fn covered(program: &str) -> Option<&'static str> {
    COVERED.iter().find(|(name, _)| *name == program).map(|(_, version)| *version)
}

/// The first `N.N.N` version in a CLI's `--version` output (`2.1.332 (Claude Code)`,
/// `codex-cli 0.171.0`, `0.61.0`).
pub fn parse_version(output: &str) -> Option<&str> {
    output
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .map(|word| word.trim_start_matches('v'))
        .find(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() >= 3
                && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_each_clis_version_output() {
        assert_eq!(parse_version("2.1.332 (Claude Code)\n"), Some("2.1.332"));
        assert_eq!(parse_version("codex-cli 0.171.0"), Some("0.171.0"));
        assert_eq!(parse_version("0.61.0\n"), Some("0.61.0"));
        assert_eq!(parse_version("v1.2.3"), Some("1.2.3"));
        assert_eq!(parse_version("no version here 1.2"), None);
    }

    #[test]
    fn covered_versions_are_the_ones_the_tests_install() {
        let pins: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/agent-clis/package.json"))
                .expect("package.json is JSON");
        let packages = [
            ("claude", "@anthropic-ai/claude-code"),
            ("gemini", "@google/gemini-cli"),
            ("codex", "@openai/codex"),
        ];
        for (program, package) in packages {
            assert_eq!(pins["dependencies"][package].as_str(), covered(program), "{program}");
        }
    }
}
