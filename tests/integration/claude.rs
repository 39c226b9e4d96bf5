//! The built-in `claude` profile with the real Claude Code (the version `tests/agent-clis`
//! pins), pointed at a scripted stand-in of the Anthropic Messages API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ccm_tests::standin::anthropic::{Anthropic, Turn};
use ccm_tests::{agent_cli, git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

// Generous: Claude Code takes a few seconds to start on a loaded machine.
const SLOW: Duration = Duration::from_secs(90);

/// A home with instant retries, `extra` YAML and a registered git repository.
pub(crate) fn setup(name: &str, extra: &str) -> (TestHome, String) {
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
pub(crate) fn start(home: &TestHome, api: &Anthropic) -> Daemon {
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

pub(crate) fn add_task(home: &TestHome, args: &[&str]) -> String {
    let mut all = vec!["task", "add"];
    all.extend(args);
    all.extend(["--profile", "claude"]);
    home.run_json(&all)["id"].as_str().unwrap().to_string()
}

pub(crate) async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let task = || async { daemon.get(&format!("/api/tasks/{id}")).await.1 };
    let reached = wait_until(SLOW, || async { task().await["state"] == state }).await;
    let detail = task().await;
    let outputs = agent_outputs(daemon).await;
    assert!(reached, "task never reached {state}: {detail:#}\n{outputs}\n{}", daemon.log_text());
    detail
}

/// Every agent's output log, for failure messages.
pub(crate) async fn agent_outputs(daemon: &Daemon) -> String {
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
    let shown = home.run_json(&["task", "show", &id]);
    assert!(shown["cost_usd"].as_f64().unwrap() > 0.0, "{shown:#}");
    assert_eq!(shown["tokens"], report["tokens"], "{shown:#}");
    let events = timeline(&daemon, &id).await;
    for expected in
        ["SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop", "SessionEnd"]
    {
        assert!(events.iter().any(|e| e == expected), "no {expected} in {events:?}");
    }
}

/// Open alerts of `reason`, as another process reads the database.
pub(crate) async fn alerts(home: &TestHome, reason: &str) -> Vec<String> {
    let mut db = ccm_tests::open_db(&home.db_file()).await;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT message FROM alerts WHERE reason = ? AND resolved_at IS NULL")
            .bind(reason)
            .fetch_all(&mut db)
            .await
            .unwrap();
    rows.into_iter().map(|(message,)| message).collect()
}

#[tokio::test]
async fn claude_write_to_a_file_another_owns_is_denied_and_reported() {
    let (home, repo) = setup("claude-owned", "ownership:\n  other-team: [owned.txt]\n");
    let api = Anthropic::start(vec![
        Turn::write("owned.txt", "mine now\n"),
        Turn::write("hello.txt", "hello\n"),
        Turn::bash(COMMIT),
        Turn::text("Wrote hello.txt; owned.txt was refused."),
    ]);
    let daemon = start(&home, &api);
    let id =
        add_task(&home, &["add hello", "--repo", &repo, "--verify", "grep -q hello hello.txt"]);
    let detail = wait_state(&daemon, &id, "complete").await;

    assert_eq!(detail["runs"][0]["outcome"], "success_with_denials", "{detail:#}");
    let report = &detail["reports"][0]["summary"];
    let denials = report["permission_denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "{report:#}");
    assert!(denials[0].as_str().unwrap().starts_with("Write `"), "{denials:?}");
    assert!(denials[0].as_str().unwrap().ends_with("owned.txt`"), "{denials:?}");
    let raised = alerts(&home, "permission_denied").await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert!(raised[0].contains("owned.txt"), "{raised:?}");
    let short = &id.replace('-', "")[..8];
    let files = git(&repo, &["show", "--name-only", "--format=", &format!("ccm/{short}")]);
    assert_eq!(files.trim(), "hello.txt");
}

#[tokio::test]
async fn claude_prompt_that_begins_with_a_dash_runs_as_a_prompt() {
    let (home, repo) = setup("claude-dash", "");
    let api = Anthropic::start(vec![Turn::text("Nothing to do.")]);
    let daemon = start(&home, &api);
    let id = add_task(&home, &["dash", "--repo", &repo, "--prompt", "-x --help is not an option"]);
    let detail = wait_state(&daemon, &id, "complete").await;

    assert_eq!(detail["prompt"], "-x --help is not an option");
    assert_eq!(detail["runs"][0]["last_message"], "Nothing to do.", "{detail:#}");
    let asked = api
        .requests()
        .iter()
        .any(|r| r["messages"].to_string().contains("-x --help is not an option"));
    assert!(asked, "the model never saw the prompt: {:?}", api.requests());
}

/// A prompt of a megabyte (far over what one argument or tmux's command line can hold) reaches
/// the model whole: Claude Code reads it on stdin.
#[tokio::test]
async fn claude_reads_a_megabyte_prompt_on_stdin_and_the_task_completes() {
    let (home, repo) = setup("claude-megabyte", "");
    let api = Anthropic::start(vec![Turn::text("Read it all.")]);
    let prompt = crate::prompts::megabyte_prompt();
    let file = home.work().join("prompt.md");
    std::fs::write(&file, &prompt).unwrap();
    let daemon = start(&home, &api);
    let id = add_task(&home, &["big", "--repo", &repo, "--prompt-file", &file.to_string_lossy()]);
    let detail = wait_state(&daemon, &id, "complete").await;

    assert_eq!(
        detail["runs"].as_array().unwrap().len(),
        1,
        "{}",
        crate::prompts::without(&detail, &prompt)
    );
    assert_eq!(detail["runs"][0]["last_message"], "Read it all.");
    let asked = api.requests().iter().any(|r| r["messages"].to_string().contains(&prompt));
    assert!(asked, "the model never got the whole prompt (its tail: PROMPT-TAIL)");
    assert!(
        !crate::prompts::holds_part_of(&daemon.log_text(), &prompt),
        "the daemon's log holds the prompt"
    );
}

#[tokio::test]
async fn claude_429_waits_for_quota_until_the_reset_the_answer_gives() {
    let (home, repo) = setup("claude-429", "");
    let reset = std::time::SystemTime::now() + Duration::from_secs(7200);
    let api = Anthropic::start(vec![Turn::RateLimited {
        retry_after_secs: 7200,
        reset: humantime::format_rfc3339_seconds(reset).to_string(),
    }]);
    let daemon = start(&home, &api);
    let id = add_task(&home, &["limited", "--repo", &repo]);
    wait_state(&daemon, &id, "waiting_quota").await;

    // The reset time arrives with the agent's exit, just after the StopFailure hook.
    let reset_ms = reset.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let task = || async { daemon.get(&format!("/api/tasks/{id}")).await.1 };
    let waits_until_reset = wait_until(SLOW, || async {
        let wake_at = task().await["wake_at"].as_str().map(humantime::parse_rfc3339_weak);
        wake_at.and_then(Result::ok).is_some_and(|at| {
            let at = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            (at - reset_ms).abs() <= 1000
        })
    })
    .await;
    let detail = task().await;
    let agents = daemon.get("/api/agents").await.1;
    assert!(
        waits_until_reset,
        "wake_at is not the reset ({reset_ms}): {detail:#}\n{agents:#}\n{}",
        daemon.log_text()
    );
    assert_eq!(detail["state"], "waiting_quota");
    assert_eq!(agents[0]["status"], "exited", "{agents:#}");
}

#[tokio::test]
async fn a_new_agent_sees_the_environment_of_the_restarted_daemon() {
    let (home, repo) = setup("claude-env", "");
    let first = Anthropic::start(vec![Turn::text("first")]);
    let mut daemon = start(&home, &first);
    let id = add_task(&home, &["one", "--repo", &repo]);
    wait_state(&daemon, &id, "complete").await;
    daemon.terminate();

    // ccm's tmux server, started by the first daemon, is still running.
    let second = Anthropic::start(vec![Turn::text("second")]);
    let daemon = start(&home, &second);
    let id = add_task(&home, &["two", "--repo", &repo]);
    let detail = wait_state(&daemon, &id, "complete").await;
    assert_eq!(detail["runs"][0]["last_message"], "second", "{detail:#}");
    assert_eq!(first.requests().len(), 1, "the second agent called the first stand-in");
}

/// The task's decisions, as the API lists them.
async fn decisions(daemon: &Daemon, id: &str) -> Vec<Value> {
    let all = daemon.get("/api/decisions").await.1;
    all.as_array().unwrap().iter().filter(|d| d["task_id"] == id).cloned().collect()
}

#[tokio::test]
async fn claude_permission_request_without_an_approval_rule_is_recorded_not_asked() {
    // No tool may run without asking: the commit asks, and nobody can answer in `-p` mode.
    let (home, repo) = setup("claude-permreq", "allowed_tools:\n  claude: []\n");
    let api = Anthropic::start(vec![Turn::bash(COMMIT), Turn::text("Could not commit.")]);
    let daemon = start(&home, &api);
    let id = add_task(&home, &["commit", "--repo", &repo]);
    let detail = wait_state(&daemon, &id, "complete").await;

    assert!(timeline(&daemon, &id).await.iter().any(|e| e == "PermissionRequest"));
    assert_eq!(decisions(&daemon, &id).await, Vec::<Value>::new(), "nobody is asked");
    assert_eq!(detail["runs"][0]["outcome"], "success_with_denials", "{detail:#}");
    let denials = &detail["reports"][0]["summary"]["permission_denials"];
    assert!(denials[0].as_str().unwrap().starts_with("Bash `git add"), "{denials}");
    assert_eq!(alerts(&home, "permission_denied").await.len(), 1);
}

const APPROVE_GIT_ADD: &str =
    "approvals:\n  timeout_secs: 60\n  rules:\n    - tools: [Bash]\n      command: '^git add'\n";

/// Waits for the task's pending decision and returns its id.
async fn pending_decision(daemon: &Daemon, id: &str) -> String {
    let asked = wait_until(SLOW, || async {
        decisions(daemon, id).await.iter().any(|d| d["answer"].is_null())
    })
    .await;
    assert!(asked, "no decision was asked: {}", agent_outputs(daemon).await);
    let pending = decisions(daemon, id).await;
    pending.iter().find(|d| d["answer"].is_null()).unwrap()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn claude_tool_call_under_an_approval_rule_waits_for_the_answer_and_its_alert_resolves() {
    let (home, repo) = setup("claude-approve", APPROVE_GIT_ADD);
    let api = Anthropic::start(vec![
        Turn::write("hello.txt", "hello\n"),
        Turn::bash(COMMIT),
        Turn::text("Committed."),
    ]);
    let daemon = start(&home, &api);
    let id = add_task(&home, &["approve", "--repo", &repo]);
    let decision = pending_decision(&daemon, &id).await;
    assert_eq!(alerts(&home, "approval_needed").await.len(), 1);

    let (status, _) = daemon
        .post(&format!("/api/decisions/{decision}"), serde_json::json!({"answer": "allow"}))
        .await;
    assert_eq!(status, 200);
    let detail = wait_state(&daemon, &id, "complete").await;
    assert_eq!(detail["runs"][0]["outcome"], "success", "{detail:#}");
    assert_eq!(alerts(&home, "approval_needed").await, Vec::<String>::new(), "the alert resolved");
    let short = &id.replace('-', "")[..8];
    assert!(git(&repo, &["log", "--format=%s", &format!("ccm/{short}")]).starts_with(short));
}

#[tokio::test]
async fn cancelling_a_task_answers_its_pending_approval() {
    let (home, repo) = setup("claude-approve-cancel", APPROVE_GIT_ADD);
    let api = Anthropic::start(vec![Turn::bash(COMMIT), Turn::text("Stopped.")]);
    let daemon = start(&home, &api);
    let id = add_task(&home, &["approve", "--repo", &repo]);
    let decision = pending_decision(&daemon, &id).await;

    home.run_ok(&["task", "cancel", &id]);
    let closed = decisions(&daemon, &id).await;
    assert_eq!(closed[0]["answer"], "cancel", "{closed:?}");
    assert_eq!(alerts(&home, "approval_needed").await, Vec::<String>::new());
    let (status, body) = daemon
        .post(&format!("/api/decisions/{decision}"), serde_json::json!({"answer": "allow"}))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[test]
fn doctor_names_each_agent_clis_version_and_whether_the_tests_cover_it() {
    let home = TestHome::new("doctor-clis");
    let real = agent_cli("claude").parent().unwrap().to_path_buf();
    let path = std::env::var("PATH").unwrap_or_default();
    let doctor = |path: String| {
        let out = home.ccm().arg("doctor").env("PATH", path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = doctor(format!("{}:{path}", real.display()));
    for (cli, version) in [("claude", "2.1.332"), ("gemini", "0.61.0"), ("codex", "0.171.0")] {
        let line = format!("{cli:<9} {version} (a version the tests cover)");
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(&line)),
            "{line} in {stdout}"
        );
    }

    // Another claude first on the PATH.
    let other = home.dir.path().join("other-bin");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("claude"), "#!/bin/sh\necho '9.9.9 (Claude Code)'\n").unwrap();
    Command::new("chmod").arg("755").arg(other.join("claude")).status().unwrap();
    let stdout = doctor(format!("{}:{}:{path}", other.display(), real.display()));
    assert!(
        stdout.contains("warn  claude    9.9.9 is not a version the tests cover (2.1.332)"),
        "{stdout}"
    );
}
