//! The built-in `claude` profile with the real Claude Code (the version `tests/agent-clis`
//! pins), pointed at a scripted stand-in of the Anthropic Messages API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ccm_tests::standin::anthropic::{Anthropic, Turn};
use ccm_tests::{agent_cli, git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(30);

/// A home with instant retries, `extra` YAML and a registered git repository.
fn setup(name: &str, extra: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\n{extra}"
    ));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

/// `ccm up` whose agents find the real `claude` first on their PATH, talk to `api`, and keep
/// their `~/.claude` in the test's directory.
fn start(home: &TestHome, api: &Anthropic) -> Daemon {
    start_with_env(home, api, &[])
}

fn start_with_env(home: &TestHome, api: &Anthropic, extra: &[(&str, &str)]) -> Daemon {
    let bin = agent_cli("claude");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let user_home = home.dir.path().join("user");
    std::fs::create_dir_all(&user_home).unwrap();
    home.start_with(|command| {
        command.env("PATH", path).env("HOME", &user_home);
        for (name, value) in api.env() {
            command.env(name, value);
        }
        for (name, value) in extra {
            command.env(name, value);
        }
    })
}

fn add_task(home: &TestHome, args: &[&str]) -> String {
    let mut all = vec!["task", "add"];
    all.extend(args);
    all.extend(["--profile", "claude"]);
    home.run_json(&all)["id"].as_str().unwrap().to_string()
}

async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let task = || async { daemon.get(&format!("/api/tasks/{id}")).await.1 };
    let reached = wait_until(SLOW, || async { task().await["state"] == state }).await;
    let detail = task().await;
    let outputs = agent_outputs(daemon).await;
    assert!(reached, "task never reached {state}: {detail:#}\n{outputs}\n{}", daemon.log_text());
    detail
}

/// Every agent's output log, for failure messages.
async fn agent_outputs(daemon: &Daemon) -> String {
    let agents = daemon.get("/api/agents").await.1;
    agents
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let dir = a["dir"].as_str().unwrap_or_default();
            let log =
                std::fs::read_to_string(Path::new(dir).join("output.log")).unwrap_or_default();
            format!("--- agent {dir}:\n{log}")
        })
        .collect()
}

async fn timeline(daemon: &Daemon, id: &str) -> Vec<String> {
    let events = daemon.get(&format!("/api/tasks/{id}/events")).await.1;
    events.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap().to_string()).collect()
}

fn git(repo: &str, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The commit command a worker runs: `git add` and an `&&` chain with a `${…}` expansion,
/// which `--permission-mode acceptEdits` alone denies in `-p` mode.
const COMMIT: &str = r#"git add hello.txt && git commit -q -m "${CCM_TASK_ID:0:8}: add hello" && git log --oneline -1"#;

#[tokio::test]
async fn claude_worker_edits_tests_and_commits_and_task_completes() {
    let (home, repo) = setup("claude-commit", "");
    let api = Anthropic::start(vec![
        Turn::write("hello.txt", "hello\n"),
        Turn::bash("grep -q hello hello.txt && echo tested"),
        Turn::bash(COMMIT),
        Turn::text("Added hello.txt and committed it."),
    ]);
    let daemon = start(&home, &api);
    let id =
        add_task(&home, &["add hello", "--repo", &repo, "--verify", "grep -q hello hello.txt"]);
    let detail = wait_state(&daemon, &id, "complete").await;

    let short = &id.replace('-', "")[..8];
    let branch_log = git(&repo, &["log", "--format=%s", &format!("ccm/{short}")]);
    assert!(branch_log.starts_with(&format!("{short}: add hello")), "{branch_log}");
    let run = &detail["runs"][0];
    assert_eq!(run["outcome"], "success", "{detail:#}");
    let report = &detail["reports"][0]["summary"];
    assert!(report["tokens"]["input"].as_i64().unwrap() > 0, "{report:#}");
    assert!(report["tokens"]["output"].as_i64().unwrap() > 0, "{report:#}");
    assert!(report["cost_usd"].as_f64().unwrap() > 0.0, "{report:#}");
    assert_eq!(report["work"]["commits"].as_array().map(Vec::len), Some(1), "{report:#}");
    assert_eq!(report["last_message"], "Added hello.txt and committed it.");
    let events = timeline(&daemon, &id).await;
    for expected in
        ["SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop", "SessionEnd"]
    {
        assert!(events.iter().any(|e| e == expected), "no {expected} in {events:?}");
    }
}
