//! The agent runtime end to end: real tmux on a private socket, real git repositories, and
//! scripted agents (`tests/fixtures/fake-claude.sh`) that print Claude Code's stream-json,
//! edit files, commit and exit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

const SLOW: Duration = Duration::from_secs(60);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh")
}

/// A home whose config has fake agent profiles (one per `(name, FAKE_MODE, extra env)`),
/// instant retries, a `reviewed` workflow when a `reviewer` profile is among them, plus
/// `extra` YAML; and a git repository registered as a context.
fn setup(name: &str, profiles: &[(&str, &str, &str)], extra: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    let mut yaml = String::from(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\n",
    );
    if profiles.iter().any(|(name, ..)| *name == "reviewer") {
        yaml.push_str(
            "workflows:\n  reviewed:\n    steps:\n      - role: worker\n        prompt: '{prompt}'\n\
             \x20     - role: supervisor\n        profile: reviewer\n        prompt: 'Review {title}: {report}'\n",
        );
    }
    yaml.push_str("profiles:\n");
    for (profile, mode, env) in profiles {
        yaml.push_str(&format!(
            "  {profile}:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: {mode}{env}}}\n",
            fixture().display()
        ));
    }
    yaml.push_str(extra);
    home.write_config(&yaml);
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

fn add_task(home: &TestHome, args: &[&str]) -> String {
    let mut all = vec!["task", "add"];
    all.extend(args);
    home.run_json(&all)["id"].as_str().unwrap().to_string()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

/// Waits until the task is in `state`, failing with the task's detail and the daemon's log.
async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let reached = wait_until(SLOW, || async { task(daemon, id).await["state"] == state }).await;
    let detail = task(daemon, id).await;
    assert!(reached, "task never reached {state}: {detail:#}\n{}", daemon.log_text());
    detail
}

fn states(detail: &Value) -> Vec<&str> {
    detail["log"].as_array().unwrap().iter().map(|e| e["to_state"].as_str().unwrap()).collect()
}

fn git(repo: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn task_runs_in_its_own_window_and_worktree_through_review_to_complete() {
    let (home, repo) =
        setup("lifecycle", &[("fake", "commit", ""), ("reviewer", "review", "")], "");
    let daemon = home.start();
    let id = add_task(
        &home,
        &[
            "write work.txt",
            "--profile",
            "fake",
            "--repo",
            &repo,
            "--verify",
            "test -f work.txt",
            "--workflow",
            "reviewed",
        ],
    );
    let short = &id[..8];
    let detail = wait_state(&daemon, &id, "complete").await;

    assert_eq!(
        states(&detail),
        [
            "created",
            "queued",
            "executing",
            "executing",
            "report_generation",
            "supervisory",
            "complete"
        ]
    );
    assert_eq!(detail["runs"][0]["outcome"], "success");
    let report = &detail["reports"][0];
    assert_eq!(report["verdict"], "ok");
    assert!(report["review"].as_str().unwrap().ends_with("VERDICT: ok"));
    let work = &report["summary"]["work"];
    assert_eq!(work["commits"][0]["subject"], format!("[{short}] attempt 1"));
    assert_eq!(work["commits_missing_id"], json!([]));
    assert_eq!(report["summary"]["cost_usd"], 0.0123);
    assert_eq!(report["summary"]["last_message"], "Done: wrote work.txt");

    // Both agents ran in the task's worktree, each in its own tmux window, and are gone now.
    let (_, agents) = daemon.get("/api/agents").await;
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 2);
    for agent in agents {
        assert_eq!(agent["status"], "exited");
        assert!(
            agent["cwd"].as_str().unwrap().contains(&format!("worktrees/app-{short}")),
            "{agent}"
        );
        assert!(agent["window_id"].as_str().unwrap().starts_with('@'));
    }
    assert_eq!(agents.iter().map(|a| a["cost_usd"].as_f64().unwrap()).sum::<f64>(), 0.0143);
    let status = home.run_json(&["status"]);
    assert_eq!(status["today"]["cost_usd"], 0.0143);

    // Cleanup removed the clean worktree but kept the branch with the unmerged commit, and said so.
    let kept = wait_until(SLOW, || async {
        let dump = home.run_json(&["dump-state"]);
        dump["alerts"].as_array().unwrap().iter().any(|a| a["reason"] == "work_kept")
    })
    .await;
    assert!(kept, "{}", daemon.log_text());
    let dump = home.run_json(&["dump-state"]);
    let note =
        dump["alerts"].as_array().unwrap().iter().find(|a| a["reason"] == "work_kept").unwrap();
    assert!(
        note["message"].as_str().unwrap().contains(&format!("branch ccm/{short} kept")),
        "{note}"
    );
    assert_eq!(
        git(&repo, &["log", "--format=%s", &format!("ccm/{short}")]).lines().next().unwrap(),
        format!("[{short}] attempt 1")
    );
    assert!(!home.home().join(format!("worktrees/app-{short}")).exists());
    assert!(home.agent_windows().is_empty(), "{:?}", home.agent_windows());
    let logs = home.run_ok(&["task", "logs", short]);
    assert!(logs.contains("VERDICT: ok"), "{logs}");
}

#[tokio::test]
async fn verify_command_not_found_fails_at_once_naming_it() {
    let (home, repo) = setup("verify-missing", &[("fake", "commit", "")], "");
    let daemon = home.start();
    let id = add_task(
        &home,
        &[
            "checked by a missing tool",
            "--profile",
            "fake",
            "--repo",
            &repo,
            "--verify",
            "ccm-no-such-checker --all",
            "--max-attempts",
            "3",
        ],
    );
    let detail = wait_state(&daemon, &id, "failed").await;
    assert_eq!(detail["attempts"], 1, "no attempt can install the checker: {detail:#}");
    let last = detail["log"].as_array().unwrap().last().unwrap()["reason"].as_str().unwrap();
    assert!(last.contains("verify `ccm-no-such-checker --all` could not run"), "{last}");
    assert!(last.contains("ccm-no-such-checker: not found"), "{last}");
    let alerts = home.run_json(&["alerts"]);
    let named = alerts.as_array().unwrap().iter().any(|a| {
        a["task_id"] == id.as_str()
            && a["message"].as_str().is_some_and(|m| m.contains("ccm-no-such-checker"))
    });
    assert!(named, "{alerts}");
}

#[tokio::test]
async fn verify_failing_twice_then_passing_completes_after_three_attempts_with_feedback() {
    let (home, repo) = setup("verify-retry", &[("fake", "commit", "")], "");
    let daemon = home.start();
    let verify = r#"n=$(wc -l < work.txt); [ "$n" -ge 3 ] || { echo "verify: only $n of 3 lines"; exit 1; }"#;
    let id = add_task(
        &home,
        &[
            "three lines",
            "--profile",
            "fake",
            "--repo",
            &repo,
            "--verify",
            verify,
            "--max-attempts",
            "3",
        ],
    );
    let detail = wait_state(&daemon, &id, "complete").await;

    let runs = detail["runs"].as_array().unwrap();
    let outcomes: Vec<&str> = runs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["verify_failed", "verify_failed", "success"]);
    assert_eq!(detail["attempts"], 3);
    assert!(!runs[0]["prompt"].as_str().unwrap().contains("verify:"));
    assert!(
        runs[1]["prompt"].as_str().unwrap().contains("verify: only 1 of 3 lines"),
        "{}",
        runs[1]["prompt"]
    );
    assert!(
        runs[2]["prompt"].as_str().unwrap().contains("verify: only 2 of 3 lines"),
        "{}",
        runs[2]["prompt"]
    );
    assert!(
        runs[2]["prompt"].as_str().unwrap().contains("Done: wrote work.txt"),
        "last message fed back"
    );
}

#[tokio::test]
async fn crashing_worker_ends_blocked_with_alert_and_decision_and_retry_runs_it_again() {
    let (home, repo) = setup("crash", &[("fake", "crash", "")], "");
    let daemon = home.start();
    let id = add_task(
        &home,
        &["always crashes", "--profile", "fake", "--repo", &repo, "--max-attempts", "3"],
    );
    let detail = wait_state(&daemon, &id, "blocked").await;
    assert_eq!(detail["runs"].as_array().unwrap().len(), 3);
    assert!(detail["runs"].as_array().unwrap().iter().all(|r| r["outcome"] == "crash"));

    let dump = home.run_json(&["dump-state"]);
    assert!(dump["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["reason"] == "attempts_exhausted" && a["severity"] == "critical"));
    let pending = home.run_json(&["decide"]);
    let decision = &pending.as_array().unwrap()[0];
    assert_eq!(decision["options"], json!(["retry", "cancel"]));

    let decision_id = decision["id"].as_str().unwrap();
    let wrong = home.run(&["decide", decision_id, "maybe"]);
    assert!(String::from_utf8_lossy(&wrong.stderr)
        .contains("`maybe` is not an option; answer one of: retry, cancel"));
    home.run_ok(&["decide", decision_id, "retry"]);
    let ran_again = wait_until(SLOW, || async {
        task(&daemon, &id).await["runs"].as_array().unwrap().len() > 3
    })
    .await;
    assert!(ran_again, "{}", daemon.log_text());
    assert_eq!(home.run_json(&["decide"]), json!([]), "the decision is answered");
}

#[tokio::test]
async fn supervisory_issue_ends_in_alert_with_the_report_attached() {
    let (home, repo) = setup(
        "review-issue",
        &[("fake", "commit", ""), ("reviewer", "review", ", FAKE_VERDICT: issue")],
        "",
    );
    let daemon = home.start();
    let id = add_task(
        &home,
        &["flagged work", "--profile", "fake", "--repo", &repo, "--workflow", "reviewed"],
    );
    let detail = wait_state(&daemon, &id, "alert").await;
    assert_eq!(detail["reports"][0]["verdict"], "issue");

    let dump = home.run_json(&["dump-state"]);
    let alert = dump["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["reason"] == "supervisory_issue")
        .expect("an alert");
    assert_eq!(alert["details"]["title"], "flagged work");
    assert_eq!(
        alert["details"]["work"]["commits"][0]["subject"],
        format!("[{}] attempt 1", &id[..8])
    );
}

#[tokio::test]
async fn agents_running_when_the_daemon_is_killed_are_adopted_and_finish_once() {
    let (home, repo) = setup("adopt", &[("fake", "slow", ", FAKE_SLEEP: 3")], "");
    let mut daemon = home.start();
    let ids: Vec<String> = (0..3)
        .map(|i| add_task(&home, &[&format!("slow {i}"), "--profile", "fake", "--repo", &repo]))
        .collect();
    let running = wait_until(SLOW, || async {
        let (_, agents) = daemon.get("/api/agents").await;
        agents.as_array().unwrap().iter().filter(|a| a["status"] == "running").count() == 3
    })
    .await;
    assert!(running, "{}", daemon.log_text());
    daemon.kill9();
    assert_eq!(
        home.agent_windows().len(),
        3,
        "agents outlive the daemon: {:?}\n{}",
        home.agent_windows(),
        daemon.log_text()
    );

    let daemon = home.start();
    for id in &ids {
        wait_state(&daemon, id, "complete").await;
    }
    for id in &ids {
        let branch = format!("ccm/{}", &id[..8]);
        assert_eq!(
            git(&repo, &["show", &format!("{branch}:side-effect.txt")]),
            "ran once\n",
            "{branch}: {:#}\n{}",
            task(&daemon, id).await,
            daemon.log_text()
        );
        assert_eq!(
            git(&repo, &["log", "--format=%s", &format!("main..{branch}")]).lines().count(),
            1
        );
        assert_eq!(task(&daemon, id).await["runs"].as_array().unwrap().len(), 1);
    }
    let left = wait_until(SLOW, || async { home.agent_windows().is_empty() }).await;
    assert!(left, "windows left: {:?}", home.agent_windows());
}

#[tokio::test]
async fn usage_limit_waits_in_waiting_quota_then_resumes() {
    let (home, repo) = setup("quota", &[("fake", "rate-limit", "")], "");
    let daemon = home.start();
    let id = add_task(&home, &["limited", "--profile", "fake", "--repo", &repo]);
    let detail = wait_state(&daemon, &id, "complete").await;
    let states = states(&detail);
    let waited =
        states.iter().position(|s| *s == "waiting_quota").expect("went through waiting_quota");
    assert_eq!(states[waited + 1], "queued");
    let log_entry = &detail["log"][waited];
    assert!(log_entry["reason"].as_str().unwrap().starts_with("usage limit: "), "{log_entry}");
    assert_eq!(detail["attempts"], 1, "the interrupted attempt does not count");
}

#[tokio::test]
async fn silent_worker_raises_a_stalled_alert() {
    let (home, repo) = setup("stall", &[("fake", "silent", ", FAKE_SLEEP: 20")], "  \n");
    let daemon = home.start_with(|c| {
        c.env("CCM_RUNTIME__STALL_SECS", "1");
    });
    let id = add_task(&home, &["says nothing", "--profile", "fake", "--repo", &repo]);
    let stalled = wait_until(SLOW, || async {
        let dump = home.run_json(&["dump-state"]);
        dump["alerts"].as_array().unwrap().iter().any(|a| a["reason"] == "stalled")
    })
    .await;
    assert!(stalled, "{}", daemon.log_text());
    home.run_ok(&["task", "cancel", &id]);
    let gone = wait_until(SLOW, || async { home.agent_windows().is_empty() }).await;
    assert!(gone, "cancelling stops the agent: {:?}", home.agent_windows());
}

#[tokio::test]
async fn worker_killed_from_outside_is_detected_and_retried() {
    let (home, repo) = setup("killed", &[("fake", "hang-once", "")], "");
    let daemon = home.start();
    let id = add_task(&home, &["hangs first", "--profile", "fake", "--repo", &repo]);
    // Running with its window recorded (a hook event may mark it running a moment before).
    let started = std::time::Instant::now();
    let window = loop {
        let (_, agents) = daemon.get("/api/agents").await;
        let found =
            agents.as_array().unwrap().iter().find_map(|a| {
                (a["status"] == "running").then(|| a["window_id"].as_str()).flatten()
            });
        if let Some(window) = found {
            break window.to_string();
        }
        assert!(started.elapsed() < SLOW, "no agent runs in a window: {}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let killed = std::process::Command::new("tmux")
        .args(["-L", &home.tmux_socket(), "kill-window", "-t", &window])
        .status()
        .unwrap();
    assert!(killed.success());

    let detail = wait_state(&daemon, &id, "complete").await;
    let outcomes: Vec<&str> =
        detail["runs"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["crash", "success"]);
    let reasons: Vec<&str> =
        detail["log"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("vanished without an exit status")), "{reasons:?}");
}

#[tokio::test]
async fn silent_worker_past_its_lease_is_reclaimed_and_retried() {
    let (home, repo) = setup("lease", &[("fake", "hang-once", "")], "");
    let daemon = home.start_with(|c| {
        c.env("CCM_RUNTIME__LEASE_SECS", "1");
    });
    let id = add_task(&home, &["hangs silently first", "--profile", "fake", "--repo", &repo]);
    let detail = wait_state(&daemon, &id, "complete").await;
    let outcomes: Vec<&str> =
        detail["runs"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["timeout", "success"]);
    let reasons: Vec<&str> =
        detail["log"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.contains("lease expired")), "{reasons:?}");
    let gone = wait_until(SLOW, || async { home.agent_windows().is_empty() }).await;
    assert!(gone, "the reclaimed agent's window is closed: {:?}", home.agent_windows());
}

#[tokio::test]
async fn agent_list_shows_live_agents_and_agent_kill_stops_one() {
    let (home, repo) = setup("agent-cli", &[("fake", "hang-once", "")], "");
    let daemon = home.start();
    let id = add_task(&home, &["hangs first", "--profile", "fake", "--repo", &repo]);
    let running = wait_until(SLOW, || async {
        home.run_json(&["agent", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["status"] == "running")
    })
    .await;
    assert!(running);
    let table = home.run_ok(&["agent", "list"]);
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.contains(&id[..8])
            && row.contains("worker")
            && row.contains("running")
            && row.contains("fake"),
        "{table}"
    );

    let agent = home.run_json(&["agent", "list"])[0]["id"].as_str().unwrap().to_string();
    let out = home.run_ok(&["agent", "kill", &agent[..8]]);
    assert!(out.contains("killed"), "{out}");
    let detail = wait_state(&daemon, &id, "complete").await;
    assert_eq!(detail["runs"][0]["outcome"], "crash");
    let again = home.run(&["agent", "kill", &agent[..8]]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not running"));
}

#[tokio::test]
async fn agent_hooks_feed_the_task_timeline_and_the_agent_record() {
    let (home, repo) = setup("agent-hooks", &[("fake", "commit", "")], "");
    let daemon = home.start();
    let id = add_task(&home, &["hooked", "--profile", "fake", "--repo", &repo]);
    wait_state(&daemon, &id, "complete").await;
    let (_, events) = daemon.get(&format!("/api/tasks/{id}/events")).await;
    let kinds: Vec<&str> =
        events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["session_start", "post_tool", "stop"], "{events:#}");
    let (_, agents) = daemon.get("/api/agents").await;
    let agent = &agents[0];
    assert!(
        events.as_array().unwrap().iter().all(|e| e["agent_id"] == agent["id"]),
        "attached by the agent's credential"
    );
    assert_eq!(agent["session_id"], "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0");
    // The worktree's hook settings were ccm's, not the agent's work: cleanup removed them.
    let kept = wait_until(SLOW, || async {
        home.run_json(&["dump-state"])["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["reason"] == "work_kept")
    })
    .await;
    assert!(kept);
    assert!(
        !home.home().join(format!("worktrees/app-{}", &id[..8])).exists(),
        "the worktree was clean and removed"
    );
}
