//! The hook pipeline through the real `ccm-hook` program the hooks run (and `ccm hook`, which it
//! hands events to when the daemon does not take them) and `POST /api/hooks`, with the
//! documented payloads of Claude Code, Gemini CLI and Codex.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;

use ccm_tests::{git_repo, open_db, wait_until, TestHome, HOLDER_PROFILE};
use serde_json::{json, Value};

/// Runs `ccm-hook --agent AGENT [ARG]` with `stdin` and the hook environment `env`.
fn hook(
    home: &TestHome,
    agent: &str,
    env: &[(&str, &str)],
    stdin: &[u8],
    arg: Option<&str>,
) -> Output {
    let mut command = home.ccm_hook();
    command
        .args(["--agent", agent])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.args(arg);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("ccm-hook starts");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin); // the hook may stop reading early; that is its right
    drop(input);
    child.wait_with_output().expect("ccm-hook ends")
}

/// Runs a hook that must exit 0 and returns its stdout parsed as JSON (`Null` when empty).
fn hook_json(home: &TestHome, agent: &str, env: &[(&str, &str)], payload: &Value) -> Value {
    let out = hook(home, agent, env, payload.to_string().as_bytes(), None);
    assert!(
        out.status.success(),
        "ccm hook exited {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    }
}

async fn stored(home: &TestHome) -> Vec<(String, String, String, String)> {
    let mut db = open_db(&home.db_file()).await;
    sqlx::query_as("SELECT system, event, kind, via FROM hook_events ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap()
}

fn claude(event: &str, extra: Value) -> Value {
    let mut payload = json!({
        "session_id": "8c35adc1-0000-4000-8000-000000000000",
        "transcript_path": "/home/u/.claude/projects/-home-u-proj/8c35adc1.jsonl",
        "cwd": "/home/u/proj",
        "hook_event_name": event,
    });
    payload.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    payload
}

#[tokio::test]
async fn every_documented_event_is_stored_and_normalized() {
    let home = TestHome::new("hook-events");
    let _daemon = home.start();
    let events = [
        (
            "PreToolUse",
            json!({"tool_name": "Bash", "tool_input": {"command": "npm test"}, "tool_use_id": "toolu_01ABC"}),
            "pre_tool",
        ),
        (
            "PermissionRequest",
            json!({"tool_name": "Bash", "tool_input": {"command": "rm -rf node_modules"}}),
            "permission_request",
        ),
        (
            "PostToolUse",
            json!({"tool_name": "Write", "tool_input": {"file_path": "/abs/file.txt", "content": "x"}, "tool_response": {"success": true}}),
            "post_tool",
        ),
        (
            "PostToolUseFailure",
            json!({"tool_name": "Bash", "tool_input": {"command": "npm test"}, "error": "Exit code 1"}),
            "post_tool_failure",
        ),
        (
            "Notification",
            json!({"message": "Claude needs your permission to use Bash", "notification_type": "permission_prompt"}),
            "notification",
        ),
        ("UserPromptSubmit", json!({"prompt": "Write a factorial function"}), "prompt_submit"),
        ("Stop", json!({"stop_hook_active": false, "last_assistant_message": "Done."}), "stop"),
        (
            "StopFailure",
            json!({"error": "rate_limit", "error_details": "429 Too Many Requests"}),
            "stop_failure",
        ),
        ("PreCompact", json!({"trigger": "manual", "custom_instructions": ""}), "pre_compact"),
        ("SessionStart", json!({"source": "startup", "model": "claude-sonnet"}), "session_start"),
        ("SessionEnd", json!({"reason": "prompt_input_exit"}), "session_end"),
        ("TeleportedSomewhere", json!({"brand_new_field": 1}), "other"),
    ];
    for (name, extra, _) in &events {
        assert_eq!(
            hook_json(&home, "claude", &[], &claude(name, extra.clone())),
            Value::Null,
            "{name}: nothing to decide"
        );
    }
    let gemini = [
        json!({"session_id": "g1", "cwd": "/proj", "hook_event_name": "BeforeTool", "timestamp": "2026-01-22T10:00:00Z",
               "tool_name": "write_file", "tool_input": {"file_path": "/proj/a.txt", "content": "x"}}),
        json!({"session_id": "g1", "cwd": "/proj", "hook_event_name": "AfterTool", "timestamp": "2026-01-22T10:00:01Z",
               "tool_name": "write_file", "tool_input": {"file_path": "/proj/a.txt"}, "tool_response": {"llmContent": "ok"}}),
    ];
    for payload in &gemini {
        hook_json(&home, "gemini", &[], payload);
    }
    let notify = json!({"type": "agent-turn-complete", "thread-id": "b5f6c1c2-1111-2222-3333-444455556666", "turn-id": "12345",
                        "cwd": "/Users/example/project", "input-messages": ["Rename foo"], "last-assistant-message": "Done."});
    let out = hook(&home, "codex", &[], b"", Some(&notify.to_string()));
    assert!(out.status.success() && out.stdout.is_empty());

    let rows = stored(&home).await;
    let mut expected: Vec<(String, String, String, String)> = events
        .iter()
        .map(|(name, _, kind)| ("claude".into(), name.to_string(), kind.to_string(), "api".into()))
        .collect();
    expected.push(("gemini".into(), "BeforeTool".into(), "pre_tool".into(), "api".into()));
    expected.push(("gemini".into(), "AfterTool".into(), "post_tool".into(), "api".into()));
    expected.push(("codex".into(), "agent-turn-complete".into(), "stop".into(), "api".into()));
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn hook_without_daemon_writes_sqlite_and_a_busy_database_spools() {
    let home = TestHome::new("hook-offline");
    home.write_config(HOLDER_PROFILE);
    let mut daemon = home.start();
    let task = home.run_json(&["task", "add", "offline hooks", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    daemon.terminate(); // the agent outlives the daemon
    let env = [("CCM_AGENT_TOKEN", token.as_str())];

    // Daemon down: the hook writes SQLite itself.
    assert_eq!(
        hook_json(&home, "claude", &env, &claude("SessionStart", json!({"source": "startup"}))),
        Value::Null
    );
    // Database locked by another writer: the hook spools and still exits 0.
    let mut locker = open_db(&home.db_file()).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut locker).await.unwrap();
    assert_eq!(
        hook_json(
            &home,
            "claude",
            &env,
            &claude("Stop", json!({"last_assistant_message": "done"}))
        ),
        Value::Null
    );
    let spooled: Vec<_> = std::fs::read_dir(home.home().join("spool")).unwrap().collect();
    assert_eq!(spooled.len(), 1, "one spool file");
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    let log = std::fs::read_to_string(home.home().join("logs/hook.log")).unwrap();
    assert!(log.contains("writing the database directly") && log.contains("spooling"), "{log}");

    let daemon = home.start();
    let ingested = wait_until(Duration::from_secs(10), || async {
        daemon
            .get(&format!("/api/tasks/{task}/events"))
            .await
            .1
            .as_array()
            .is_some_and(|e| e.len() == 2)
    })
    .await;
    assert!(ingested, "{}", daemon.log_text());
    let (_, events) = daemon.get(&format!("/api/tasks/{task}/events")).await;
    let seen: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["via"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("SessionStart", "direct"), ("Stop", "spool")]);
    assert_eq!(std::fs::read_dir(home.home().join("spool")).unwrap().count(), 0, "spool emptied");
    let timeline = home.run_ok(&["task", "show", &task[..8], "--events"]);
    assert!(timeline.contains("session_start") && timeline.contains("stop"), "{timeline}");
}

#[tokio::test]
async fn bad_payloads_exit_zero_are_logged_and_stored_as_far_as_possible() {
    let home = TestHome::new("hook-bad");
    let _daemon = home.start();
    let mut huge =
        br#"{"hook_event_name":"PostToolUse","tool_name":"Write","tool_input":{"content":""#
            .to_vec();
    huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    huge.extend(br#""}}"#);
    let cases: [(&str, Vec<u8>); 4] = [
        ("malformed", b"{\"hook_event_name\": \"PreToolUse\", ".to_vec()),
        ("invalid utf-8", b"{\"hook_event_name\": \"Stop\", \"x\": \"\xff\xfe\"}".to_vec()),
        ("empty", Vec::new()),
        ("10 MB", huge),
    ];
    for (name, bytes) in &cases {
        let out = hook(&home, "claude", &[], bytes, None);
        assert!(out.status.success(), "{name}: exit {:?}", out.status);
        assert!(out.stdout.is_empty(), "{name}: stdout stays clean");
    }
    let mut db = open_db(&home.db_file()).await;
    let rows: Vec<(String, String, Option<String>, i64, String)> =
        sqlx::query_as("SELECT event, kind, problem, length(payload), substr(payload, -20) FROM hook_events ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].1, "invalid");
    assert!(rows[0].2.as_deref().unwrap().contains("malformed"), "{:?}", rows[0]);
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("Stop", "stop"),
        "invalid UTF-8 is replaced, the event kept"
    );
    assert!(rows[1].2.is_some());
    assert_eq!(rows[2].1, "invalid");
    assert!(rows[2].2.as_deref().unwrap().contains("empty"));
    assert_eq!(rows[3].1, "post_tool");
    assert!(rows[3].3 < 300 * 1024, "stored truncated: {} bytes", rows[3].3);
    assert!(rows[3].4.ends_with("[truncated by ccm]"), "{:?}", rows[3].4);
    let log = std::fs::read_to_string(home.home().join("logs/hook.log")).unwrap();
    assert_eq!(log.lines().count(), 4, "one clear line per bad payload: {log}");
}

/// Arguments the hook cannot parse do not fail the agent: they are reported on stderr and
/// ignored, and the event on stdin is stored as usual.
#[tokio::test]
async fn hook_with_arguments_it_cannot_parse_still_stores_the_event_and_exits_zero() {
    let home = TestHome::new("hook-bad-args");
    let _daemon = home.start();
    let mut child = home
        .ccm_hook()
        .arg("--agent") // the flag's value is missing
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let payload = claude("Stop", json!({"stop_hook_active": false}));
    child.stdin.take().unwrap().write_all(payload.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ignoring its arguments") && stderr.contains("--agent"), "{stderr}");
    let rows = stored(&home).await;
    assert_eq!(rows, [("claude".into(), "Stop".into(), "stop".into(), "api".into())]);
}

#[tokio::test]
async fn write_to_a_file_another_task_owns_is_denied_until_the_owner_ends() {
    let (home, repo) = holder_home_with_repo("hook-claims");
    let daemon = home.start();
    let add = |title: &str| {
        home.run_json(&["task", "add", title, "--profile", "holder", "--repo", &repo])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (first, second) = (add("first"), add("second"));
    let first_agent = daemon.agent_token(&first).await;
    let second_agent = daemon.agent_token(&second).await;
    let write = claude(
        "PreToolUse",
        json!({"cwd": repo, "tool_name": "Write", "tool_input": {"file_path": format!("{repo}/src/lib.rs"), "content": "x"}}),
    );

    assert_eq!(
        hook_json(&home, "claude", &[("CCM_AGENT_TOKEN", &first_agent)], &write),
        Value::Null,
        "the first writer claims it"
    );
    let denied = hook_json(&home, "claude", &[("CCM_AGENT_TOKEN", &second_agent)], &write);
    let output = &denied["hookSpecificOutput"];
    assert_eq!(output["hookEventName"], "PreToolUse");
    assert_eq!(output["permissionDecision"], "deny");
    let reason = output["permissionDecisionReason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("src/lib.rs is owned by task {} (first)", &first[..8])),
        "{reason}"
    );

    let claims = home.run_json(&["claims"]);
    assert_eq!(claims["claims"][0]["path"], "src/lib.rs");
    assert_eq!(claims["claims"][0]["task_id"], first.as_str());
    assert_eq!(claims["change_requests"][0]["requester_task"], second.as_str());
    assert_eq!(claims["change_requests"][0]["resolution"], Value::Null);

    // Gemini's write tool is held to the same rule, in Gemini's output format.
    let gemini = json!({"session_id": "g", "cwd": repo, "hook_event_name": "BeforeTool", "tool_name": "write_file",
                        "tool_input": {"file_path": format!("{repo}/src/lib.rs"), "content": "y"}});
    let denied = hook_json(&home, "gemini", &[("CCM_AGENT_TOKEN", &second_agent)], &gemini);
    assert_eq!(denied["decision"], "deny");

    // The owner ends: its claims go, the change requests are resolved, the write is allowed.
    home.run_ok(&["task", "cancel", &first]);
    assert_eq!(
        hook_json(&home, "claude", &[("CCM_AGENT_TOKEN", &second_agent)], &write),
        Value::Null
    );
    let claims = home.run_json(&["claims"]);
    assert_eq!(claims["claims"][0]["task_id"], second.as_str());
    for request in claims["change_requests"].as_array().unwrap() {
        assert!(request["resolution"].as_str().unwrap().contains("is cancelled"), "{request}");
    }
}

/// Every move out of `executing` ends the attempt in its transaction: the usage limit a
/// `StopFailure` hook reports, and a cancel, each leave no attempt open.
#[tokio::test]
async fn stop_failure_and_cancel_end_the_running_attempt() {
    let home = TestHome::new("hook-attempt-end");
    home.write_config(&format!("runtime:\n  quota_wait_secs: 1\n{HOLDER_PROFILE}"));
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "limited", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    let limit = claude("StopFailure", json!({"error": "rate_limit"}));
    assert_eq!(hook_json(&home, "claude", &[("CCM_AGENT_TOKEN", &token)], &limit), Value::Null);
    let detail = home.run_json(&["task", "show", &task]);
    let moved = detail["log"].as_array().unwrap().iter().any(|e| e["to_state"] == "waiting_quota");
    assert!(moved, "{detail:#}");
    assert_eq!(detail["runs"][0]["outcome"], "quota", "{detail:#}");
    assert!(!detail["runs"][0]["ended_at"].is_null(), "{detail:#}");

    // The limit reset: a second attempt runs, and is cancelled.
    let second = wait_until(Duration::from_secs(20), || async {
        daemon.get(&format!("/api/tasks/{task}")).await.1["state"] == "executing"
            && home.run_json(&["task", "show", &task])["runs"].as_array().unwrap().len() == 2
    })
    .await;
    assert!(second, "{}", daemon.log_text());
    home.run_ok(&["task", "cancel", &task]);
    let runs = home.run_json(&["task", "show", &task])["runs"].clone();
    let ends: Vec<(&Value, bool)> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (&r["outcome"], !r["ended_at"].is_null()))
        .collect();
    assert_eq!(ends, [(&json!("quota"), true), (&json!("cancelled"), true)], "{runs:#}");
}

/// A hook event acts on a task only with the credential the runtime gave the task's agent:
/// task ids a sender names change nothing, nor does the credential of an agent that ended;
/// and no client can write the node's own actors into the task log.
#[tokio::test]
async fn only_a_live_agents_own_credential_acts_on_its_task() {
    let (home, repo) = holder_home_with_repo("hook-credential");
    let daemon = home.start();
    let victim = home.run_json(&["task", "add", "victim", "--profile", "holder", "--repo", &repo])
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&victim).await;
    let write = |file: &str| {
        claude(
            "PreToolUse",
            json!({"cwd": repo, "tool_name": "Write", "tool_input": {"file_path": format!("{repo}/{file}"), "content": "x"}}),
        )
    };
    let limit = claude("StopFailure", json!({"error": "rate_limit"}));
    let claims = || home.run_json(&["claims"])["claims"].as_array().unwrap().clone();

    // The victim's id, named by `ccm hook`'s environment or by the API's header.
    for event in [&limit, &write("src/main.rs")] {
        assert_eq!(hook_json(&home, "claude", &[("CCM_TASK_ID", &victim)], event), Value::Null);
        let request = daemon
            .http
            .post(daemon.url("/api/hooks?system=claude"))
            .header("x-ccm-task-id", &victim);
        assert_eq!(daemon.send(request.json(event)).await, (200, json!({})));
    }
    // A made-up credential.
    let forged = [("CCM_AGENT_TOKEN", "0".repeat(64))];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(hook_json(&home, "claude", &forged, &limit), Value::Null);
    assert_eq!(home.run_json(&["task", "show", &victim])["state"], "executing");
    assert_eq!(claims(), Vec::<Value>::new(), "nobody claimed a file for the victim");

    // The agent's own credential claims the file for its task.
    let own = [("CCM_AGENT_TOKEN", token.as_str())];
    assert_eq!(hook_json(&home, "claude", &own, &write("src/main.rs")), Value::Null);
    assert_eq!(claims()[0]["task_id"], victim.as_str());

    // Once the agent ended, its credential changes nothing.
    home.run_ok(&["task", "cancel", &victim]);
    let ended = wait_until(Duration::from_secs(20), || async {
        daemon.get("/api/agents").await.1[0]["status"] != "running"
    })
    .await;
    assert!(ended, "the cancelled task's agent was stopped");
    assert_eq!(hook_json(&home, "claude", &own, &write("src/other.rs")), Value::Null);
    assert_eq!(claims(), Vec::<Value>::new(), "a cancelled task claims nothing");
    let mut db = open_db(&home.db_file()).await;
    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM hook_events WHERE kind = 'pre_tool'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(stored, 4, "the events are kept all the same");

    // The actors the node writes itself cannot be claimed.
    let log_length = || async {
        daemon.get(&format!("/api/tasks/{victim}")).await.1["log"].as_array().unwrap().len()
    };
    let before = log_length().await;
    let request = daemon
        .http
        .post(daemon.url(&format!("/api/tasks/{victim}/events")))
        .header("x-ccm-actor", "scheduler")
        .json(&json!({"event": "retry"}));
    let (status, body) = daemon.send(request).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("x-ccm-actor"), "{body}");
    assert_eq!(log_length().await, before);
    let (_, tasks) = daemon.get("/api/tasks").await;
    assert_eq!(tasks.as_array().unwrap().len(), 1);
}

/// An approval rule written into `config.yaml` while the daemon runs holds the next matching
/// tool call: the daemon reads the file again, and the port file tells the hooks to wait.
#[tokio::test]
async fn approval_rule_added_while_the_daemon_runs_holds_the_next_tool_call() {
    let home = TestHome::new("hook-approval-reload");
    home.write_config(HOLDER_PROFILE);
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "pushes", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    home.write_config(&format!(
        "approvals:\n  timeout_secs: 30\n  rules:\n    - tools: [Bash]\n      command: '^git push'\n{HOLDER_PROFILE}"
    ));
    let port_file = home.home().join("daemon.json");
    let told = wait_until(Duration::from_secs(10), || async {
        let info: Value = serde_json::from_str(&std::fs::read_to_string(&port_file).unwrap())
            .unwrap_or(Value::Null);
        info["gate_wait_secs"].as_u64().is_some_and(|w| w >= 30)
    })
    .await;
    assert!(told, "the port file tells the hooks to wait: {}", daemon.log_text());
    let push = claude(
        "PreToolUse",
        json!({"tool_name": "Bash", "tool_input": {"command": "git push origin main"}}),
    );
    let mut command = home.ccm_hook();
    command
        .args(["--agent", "claude"])
        .env("CCM_AGENT_TOKEN", &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut waiting = command.spawn().unwrap();
    waiting.stdin.take().unwrap().write_all(push.to_string().as_bytes()).unwrap();
    let asked = wait_until(Duration::from_secs(10), || async {
        !home.run_json(&["decide"]).as_array().unwrap().is_empty()
    })
    .await;
    assert!(asked, "the new rule asked a human: {}", daemon.log_text());
    let decision = home.run_json(&["decide"])[0].clone();
    home.run_ok(&["decide", decision["id"].as_str().unwrap(), "deny"]);
    let out = waiting.wait_with_output().unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["hookSpecificOutput"]["permissionDecision"], "deny", "{answer}");
}

#[tokio::test]
async fn approval_rule_waits_for_a_decision_or_its_default() {
    let home = TestHome::new("hook-approval");
    home.write_config(
        &format!("approvals:\n  timeout_secs: 2\n  default: allow\n  rules:\n    - tools: [Bash]\n      command: '^git push'\n{HOLDER_PROFILE}"),
    );
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "pushes", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    let env = [("CCM_AGENT_TOKEN", token.as_str())];
    let push = claude(
        "PreToolUse",
        json!({"tool_name": "Bash", "tool_input": {"command": "git push origin main"}}),
    );

    // A human answers deny while the hook waits.
    let waiting = {
        let mut command = home.ccm_hook();
        command
            .args(["--agent", "claude"])
            .env("CCM_AGENT_TOKEN", &token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn().unwrap();
        child.stdin.take().unwrap().write_all(push.to_string().as_bytes()).unwrap();
        child
    };
    let asked = wait_until(Duration::from_secs(10), || async {
        !home.run_json(&["decide"]).as_array().unwrap().is_empty()
    })
    .await;
    assert!(asked, "the hook asked");
    let decision = home.run_json(&["decide"])[0].clone();
    assert!(decision["question"].as_str().unwrap().contains("git push origin main"), "{decision}");
    assert_eq!(decision["options"], json!(["allow", "deny"]));
    home.run_ok(&["decide", decision["id"].as_str().unwrap(), "deny"]);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success());
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["hookSpecificOutput"]["permissionDecision"], "deny");
    assert!(answer["hookSpecificOutput"]["permissionDecisionReason"]
        .as_str()
        .unwrap()
        .contains("deny by cli"));

    // Nobody answers: after the timeout the configured default (allow) is returned.
    let answer = hook_json(&home, "claude", &env, &push);
    assert_eq!(answer["hookSpecificOutput"]["permissionDecision"], "allow");
    assert!(answer["hookSpecificOutput"]["permissionDecisionReason"]
        .as_str()
        .unwrap()
        .contains("nobody answered within 2s"));
    // Commands no rule names go straight through.
    let status =
        claude("PreToolUse", json!({"tool_name": "Bash", "tool_input": {"command": "git status"}}));
    assert_eq!(hook_json(&home, "claude", &env, &status), Value::Null);
}

#[test]
fn init_merges_with_user_hooks_and_uninstall_restores_them() {
    let home = TestHome::new("hook-install");
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let settings = repo.join(".claude/settings.local.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let user = json!({"permissions": {"allow": ["Bash(ls)"]}, "hooks": {
        "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "my-guard", "timeout": 5}]}],
        "Stop": [{"hooks": [{"type": "command", "command": "say done"}]}]}});
    std::fs::write(&settings, serde_json::to_string_pretty(&user).unwrap()).unwrap();
    let read =
        || -> Value { serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap() };
    let in_repo = |args: &[&str]| {
        let out = home.ccm().args(args).current_dir(&repo).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    in_repo(&["init"]);
    let installed = read();
    assert_eq!(installed["permissions"], user["permissions"]);
    assert_eq!(
        installed["hooks"]["PreToolUse"][0], user["hooks"]["PreToolUse"][0],
        "the user's hook stays first"
    );
    let ours = &installed["hooks"]["PreToolUse"][1]["hooks"][0];
    let hook = ccm_tests::ccm_bin().with_file_name("ccm-hook");
    assert_eq!(
        ours["command"],
        format!("{} --agent claude", hook.display()),
        "the hooks run ccm-hook"
    );
    assert!(ours["timeout"].as_u64().unwrap() > 300, "gates wait longer than the approval timeout");
    assert!(repo.join(".gemini/settings.json").exists());
    assert!(std::fs::read_to_string(repo.join(".codex/config.toml")).unwrap().contains("hook"));
    let mcp: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["ccm"]["args"], json!(["mcp"]), "ccm's MCP server: {mcp}");

    in_repo(&["init"]);
    assert_eq!(read(), installed, "a second init adds nothing");
    let status = in_repo(&["hooks", "status"]);
    assert!(status.lines().all(|l| l.contains("already_present")), "{status}");

    in_repo(&["hooks", "uninstall"]);
    assert_eq!(read(), user, "uninstall restores the file");
    assert!(!repo.join(".gemini/settings.json").exists(), "files ccm created are removed");
    assert!(!repo.join(".mcp.json").exists(), "files ccm created are removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_10_concurrent_hook_writers_loses_and_duplicates_nothing() {
    const WRITERS: usize = 10;
    const EVENTS: usize = 1_000;
    let home = std::sync::Arc::new(TestHome::new("hook-kill9"));
    let mut daemon = home.start();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let home = home.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..EVENTS {
                    let seq = format!("w{w}-{n}");
                    let payload = claude(
                        "PostToolUse",
                        json!({"tool_name": "Bash", "tool_input": {"command": seq}}),
                    );
                    if hook(&home, "claude", &[], payload.to_string().as_bytes(), None)
                        .status
                        .success()
                    {
                        acked.push(seq);
                    }
                }
                acked
            })
        })
        .collect();
    let reached = wait_until(Duration::from_secs(120), || async {
        let mut db = open_db(&home.db_file()).await;
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM hook_events").fetch_one(&mut db).await.unwrap();
        n >= 2_000
    })
    .await;
    assert!(reached);
    daemon.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let daemon = home.start();
    let acked: Vec<String> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert_eq!(acked.len(), WRITERS * EVENTS, "every hook exited 0");

    let mut db = open_db(&home.db_file()).await;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT json_extract(payload, '$.tool_input.command'), count(*) FROM hook_events GROUP BY 1",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let counts: std::collections::HashMap<String, i64> = counts.into_iter().collect();
    let missing = acked.iter().filter(|s| !counts.contains_key(*s)).count();
    let duplicated = counts.values().filter(|n| **n != 1).count();
    assert_eq!((missing, duplicated), (0, 0), "missing and duplicated events");
    let vias: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT via FROM hook_events ORDER BY via")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(vias.len() >= 2, "both the API and the fallback were used: {vias:?}");
    drop(daemon);
}

/// Posts `body` as an NDJSON batch to `/api/hooks` and returns the status and the answer.
async fn post_ndjson(daemon: &ccm_tests::Daemon, query: &str, body: String) -> (u16, String) {
    let response = daemon
        .http
        .post(daemon.url(&format!("/api/hooks?{query}")))
        .bearer_auth(&daemon.token)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("daemon answers");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Posts `lines` as an NDJSON batch and returns the status and the answer's lines.
async fn post_batch(daemon: &ccm_tests::Daemon, query: &str, lines: &[Value]) -> (u16, Vec<Value>) {
    let body = lines.iter().map(|line| format!("{line}\n")).collect();
    let (status, text) = post_ndjson(daemon, query, body).await;
    let answers =
        text.lines().map(|l| serde_json::from_str(l).expect("an answer line is JSON")).collect();
    (status, answers)
}

async fn stored_keys(home: &TestHome) -> Vec<String> {
    let mut db = open_db(&home.db_file()).await;
    sqlx::query_scalar("SELECT key FROM hook_events ORDER BY id").fetch_all(&mut db).await.unwrap()
}

#[tokio::test]
async fn batch_of_events_is_stored_once_per_key_and_answered_line_by_line() {
    let home = TestHome::new("hook-batch");
    let daemon = home.start();
    let tool = |n: u32| {
        claude("PostToolUse", json!({"tool_name": "Read", "tool_use_id": format!("toolu_{n}")}))
    };

    // Two events first, then a batch of four under the same key: only the last two are new.
    let (status, answers) =
        post_batch(&daemon, "system=claude&key=relay-1", &[tool(0), tool(1)]).await;
    assert_eq!((status, answers), (200, vec![json!({}); 2]));
    let four = [tool(0), tool(1), tool(2), tool(3)];
    let (status, answers) = post_batch(&daemon, "system=claude&key=relay-1", &four).await;
    assert_eq!((status, answers), (200, vec![json!({}); 4]), "a retried batch is answered in full");
    assert_eq!(stored_keys(&home).await, ["relay-1:0", "relay-1:1", "relay-1:2", "relay-1:3"]);

    // The same batch again stores nothing; a single event with a known key neither.
    let (status, _) = post_batch(&daemon, "system=claude&key=relay-1", &four).await;
    assert_eq!(status, 200);
    let (status, body) = daemon.post("/api/hooks?system=claude&key=relay-1:2", tool(2)).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(stored_keys(&home).await.len(), 4, "nothing stored twice");

    // Blank lines are skipped; a line that is not JSON is stored as an invalid event.
    let body = format!("{}\n\nnot json\n", tool(5));
    let answer = post_ndjson(&daemon, "system=claude&key=relay-2", body).await;
    assert_eq!(answer, (200, "{}\n{}\n".to_string()));
    let kinds = stored(&home).await;
    let last: Vec<&str> = kinds[4..].iter().map(|(_, _, kind, _)| kind.as_str()).collect();
    assert_eq!(last, ["post_tool", "invalid"]);
}

/// Events from a hook without ccm's environment (a session ccm did not start, or one that lost
/// its environment) belong to the live agent whose working directory holds their `cwd`, else
/// to the agent with their session id; any other event is kept unattached, including one whose
/// `cwd` merely starts with the same characters as an agent's.
#[tokio::test]
async fn events_without_ccm_environment_attach_by_working_directory_or_session() {
    let home = TestHome::new("hook-attach");
    let fake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh");
    home.write_config(&format!(
        "profiles:\n  fake:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: hang-once}}\n",
        fake.display()
    ));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "hangs", "--profile", "fake", "--repo", &repo])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The agent's own SessionStart (sent with its credential) records its session id.
    let session = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    let started = wait_until(Duration::from_secs(60), || async {
        daemon.get("/api/agents").await.1[0]["session_id"] == session
    })
    .await;
    assert!(started, "the agent never started: {}", daemon.log_text());
    let agent = daemon.get("/api/agents").await.1[0].clone();
    let cwd = agent["cwd"].as_str().unwrap();

    let read = |cwd: &str, session: &str| {
        claude(
            "PostToolUse",
            json!({"cwd": cwd, "session_id": session, "tool_name": "Read", "tool_input": {"file_path": "a"}}),
        )
    };
    for payload in [
        read(&format!("{cwd}/src"), "by-cwd"),
        read("/elsewhere", session),
        read("/elsewhere", "stranger"),
        read(&format!("{cwd}-sibling"), "sibling"),
    ] {
        assert_eq!(hook_json(&home, "claude", &[], &payload), Value::Null);
    }

    let mut db = open_db(&home.db_file()).await;
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT session_id, agent_id, task_id FROM hook_events WHERE kind = 'post_tool' ORDER BY id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let agent_id = agent["id"].as_str();
    let found: Vec<(&str, Option<&str>, Option<&str>)> =
        rows.iter().map(|(s, a, t)| (s.as_str(), a.as_deref(), t.as_deref())).collect();
    assert_eq!(
        found,
        [
            ("by-cwd", agent_id, Some(task.as_str())),
            (session, agent_id, Some(task.as_str())),
            ("stranger", None, None),
            ("sibling", None, None),
        ]
    );
    home.run_ok(&["task", "cancel", &task]);
}

/// Each index of `hook_events` is one more page to sync before an event is answered: events of
/// no task are left out of the task index, and the timeline is still read through it.
#[tokio::test]
async fn task_timeline_reads_an_index_that_leaves_out_events_of_no_task() {
    let home = TestHome::new("hook-index");
    let _daemon = home.start();
    let mut db = open_db(&home.db_file()).await;
    let (index,): (String,) =
        sqlx::query_as("SELECT sql FROM sqlite_schema WHERE name = 'hook_events_by_task'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(index.ends_with("WHERE task_id IS NOT NULL"), "{index}");
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
        "EXPLAIN QUERY PLAN SELECT id, payload FROM hook_events WHERE task_id = ? ORDER BY id",
    )
    .bind("6f1a7c2e-0000-4000-8000-000000000000")
    .fetch_all(&mut db)
    .await
    .unwrap();
    let plan: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
    assert_eq!(plan, ["SEARCH hook_events USING INDEX hook_events_by_task (task_id=?)"]);
}

/// The write-ahead log stays bounded while the daemon writes: it is copied into the database
/// and started over (its header's checkpoint sequence number goes up), as another process sees
/// it without checkpointing itself. A read transaction left open, or
/// checkpoints turned off, would let it grow without end.
#[tokio::test]
async fn write_ahead_log_is_checkpointed_and_restarted_while_the_daemon_writes() {
    let home = TestHome::new("hook-checkpoint");
    let daemon = home.start();
    let wal = home.db_file().with_extension("db-wal");
    let sequence = || {
        let header = std::fs::read(&wal).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    };
    let first = sequence();
    let filler = "x".repeat(4000);
    for batch in 0..30 {
        let lines: Vec<Value> = (0..100)
            .map(|n| claude("Notification", json!({"message": format!("{batch}-{n} {filler}")})))
            .collect();
        let (status, answers) = post_batch(&daemon, &format!("key=wal-{batch}"), &lines).await;
        assert_eq!((status, answers.len()), (200, 100));
    }
    // 12 MB of events, more than SQLite's 1,000 pages: the log is copied into the database and
    // reused while they are written (by the daemon's checkpointer, after writes), so it never
    // holds them all.
    let grown = std::fs::metadata(&wal).unwrap().len() as usize;
    assert!(grown < 30 * 100 * filler.len(), "the log holds every write: {grown} bytes");
    let restarted = wait_until(Duration::from_secs(10), || async {
        let (status, _) = post_batch(&daemon, "", &[claude("Stop", json!({}))]).await;
        assert_eq!(status, 200);
        sequence() > first
    })
    .await;
    assert!(restarted, "the log was never started over");
    let notifications = stored(&home).await.into_iter().filter(|r| r.1 == "Notification");
    assert_eq!(notifications.count(), 3000);
}

/// Waits up to `limit` for the child to exit; kills it and fails the test past that.
fn wait_or_kill(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{what} still waited after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A hung daemon without approval rules holds a tool call only briefly: the hook then stores
/// the event itself (once, under the key it posted it with) and lets the agent go on.
#[tokio::test]
async fn gate_without_an_approval_rule_does_not_wait_for_a_hung_daemon() {
    let home = TestHome::new("hook-hung");
    let daemon = home.start();
    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let write = claude(
        "PreToolUse",
        json!({"tool_name": "Write", "tool_input": {"file_path": "/tmp/x/a.rs", "content": "x"}}),
    );
    let mut child = home
        .ccm_hook()
        .args(["--agent", "claude"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(write.to_string().as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let out = wait_or_kill(child, Duration::from_secs(15), "ccm-hook");
    let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
    assert!(out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
    // The daemon, going on, reads the request the hook gave up on: the event stays stored once.
    let (status, _) = daemon.get("/healthz").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored(&home).await,
        [("claude".into(), "PreToolUse".into(), "pre_tool".into(), "direct".into())]
    );
    let log = std::fs::read_to_string(home.home().join("logs/hook.log")).unwrap();
    assert!(log.contains("no answer within 2s"), "{log}");
}

/// The daemon serves its API on the Unix socket its port file names (mode 0600), with the same
/// checks as on TCP; the socket goes when the daemon stops.
#[tokio::test]
async fn daemon_serves_the_api_on_a_private_unix_socket_with_the_same_checks() {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let home = TestHome::new("hook-socket");
    let mut daemon = home.start();
    let info: Value =
        serde_json::from_str(&std::fs::read_to_string(home.home().join("daemon.json")).unwrap())
            .unwrap();
    let socket =
        std::path::PathBuf::from(info["socket"].as_str().expect("the port file names a socket"));
    assert_eq!(socket, home.home().join("daemon.sock"));
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    let exchange = |authorization: &str| {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let request = format!(
            "GET /api/status HTTP/1.1\r\nHost: {}\r\n{authorization}Connection: close\r\n\r\n",
            daemon.addr
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(exchange("").starts_with("HTTP/1.1 401"), "no token");
    let answer = exchange(&format!("Authorization: Bearer {}\r\n", daemon.token));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    daemon.terminate();
    assert!(!socket.exists(), "the socket outlived the daemon");
}

/// With no daemon (no port file), `ccm-hook` hands the event to `ccm hook` saying so, and
/// `ccm hook` writes the database at once instead of looking for the daemon again.
#[tokio::test]
async fn hook_with_the_daemon_down_is_handed_over_to_the_direct_path_at_once() {
    let home = TestHome::new("hook-down");
    home.run_ok(&["task", "add", "makes the database"]);
    let out = hook(&home, "claude", &[], claude("Stop", json!({})).to_string().as_bytes(), None);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        stored(&home).await,
        [("claude".into(), "Stop".into(), "stop".into(), "direct".into())]
    );
    let log = std::fs::read_to_string(home.home().join("logs/hook.log")).unwrap();
    assert!(
        log.contains(
            "daemon unreachable (no port file, the daemon is not running (seen by ccm-hook))"
        ),
        "{log}"
    );
}

/// An event the daemon refuses (here: `auth.json` holds another token than the daemon's) goes
/// to `ccm hook`'s direct path, which stores it and says why in `hook.log`.
#[tokio::test]
async fn hook_refused_by_the_daemon_is_stored_directly_and_the_refusal_logged() {
    let home = TestHome::new("hook-refused");
    let _daemon = home.start();
    let auth = home.home().join("auth.json");
    let other = serde_json::to_string(&json!({ "token": "f".repeat(64) })).unwrap();
    std::fs::write(&auth, other).unwrap();
    let out = hook(&home, "claude", &[], claude("Stop", json!({})).to_string().as_bytes(), None);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(
        stored(&home).await,
        [("claude".into(), "Stop".into(), "stop".into(), "direct".into())]
    );
    let log = std::fs::read_to_string(home.home().join("logs/hook.log")).unwrap();
    assert!(log.contains("daemon unreachable (the daemon answered 401)"), "{log}");
}

/// A `ccm-hook` copied away from its `ccm`, with none on PATH and no daemon, exits 0 and spools
/// the event, which the daemon stores once it runs; `hook.log` says so.
#[tokio::test]
async fn ccm_hook_without_ccm_spools_the_event_for_the_daemon() {
    let home = TestHome::new("hook-alone");
    home.run_ok(&["task", "add", "makes the home"]);
    let alone = home.dir.path().join("alone");
    std::fs::create_dir_all(&alone).unwrap();
    std::fs::copy(ccm_tests::ccm_bin().with_file_name("ccm-hook"), alone.join("ccm-hook")).unwrap();
    let mut child = std::process::Command::new(alone.join("ccm-hook"));
    child
        .args(["--agent", "claude"])
        .env("CCM_HOME", home.home())
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Another test's fork may briefly hold the copy's write descriptor (between its fork and
    // exec): the exec then fails with ETXTBSY until that child execs.
    let mut tries = 0;
    let mut child = loop {
        match child.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            spawned => break spawned.unwrap(),
        }
    };
    let payload = claude("Stop", json!({})).to_string();
    child.stdin.take().unwrap().write_all(payload.as_bytes()).unwrap();
    let out = wait_or_kill(child, Duration::from_secs(15), "ccm-hook");
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    let log = std::fs::read_to_string(home.home().join("logs/hook.log")).unwrap();
    assert!(log.contains("cannot run") && log.contains("spooled the event"), "{log}");
    let _daemon = home.start();
    let ingested =
        wait_until(Duration::from_secs(10), || async { !stored(&home).await.is_empty() }).await;
    assert!(ingested, "the spooled event was not ingested");
    assert_eq!(
        stored(&home).await,
        [("claude".into(), "Stop".into(), "stop".into(), "spool".into())]
    );
}

/// `ccm hook` exits 0 whatever happens to ccm, and says on stderr what it could not store:
/// without a home, without an async runtime (no file descriptors left), and when no file can
/// grow (a full disk), where it leaves no temporary spool file behind.
#[tokio::test]
async fn hook_exits_zero_and_says_what_it_lost_when_nothing_can_be_stored() {
    let home = TestHome::new("hook-lost");
    home.run_ok(&["task", "add", "makes the database"]);
    let payload = claude("Stop", json!({"stop_hook_active": false})).to_string();
    let run = |script: &str, configure: &dyn Fn(&mut std::process::Command)| {
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", script])
            .arg(ccm_tests::ccm_bin())
            .env("CCM_HOME", home.home())
            .env_remove("CCM_AGENT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command.spawn().unwrap();
        // A hook that cannot start its runtime exits before it reads: the pipe may be closed.
        let _ = child.stdin.take().unwrap().write_all(payload.as_bytes());
        let out = wait_or_kill(child, Duration::from_secs(30), script);
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let hook = r#"exec "$0" hook --agent claude"#;

    let (status, stderr) = run(hook, &|c| {
        c.env_remove("HOME").env_remove("CCM_HOME");
    });
    assert!(status.success(), "no home: {status:?} {stderr}");
    assert!(stderr.contains("the event is not stored"), "{stderr}");

    let (status, stderr) = run(&format!("ulimit -n 4; {hook}"), &|_| {});
    assert!(status.success(), "no runtime: {status:?} {stderr}");
    assert!(stderr.contains("cannot start the async runtime"), "{stderr}");

    let (status, stderr) = run(&format!("trap '' XFSZ; ulimit -f 0; {hook}"), &|_| {});
    assert!(status.success(), "disk full: {status:?} {stderr}");
    assert!(stderr.contains("event lost"), "{stderr}");
    let spool = home.home().join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "{:?}", left.iter().map(|e| e.file_name()).collect::<Vec<_>>());
}

/// A broken project config fails closed: the daemon keeps the last good one (pre-assigned
/// files stay refused) and an alert names the file and the key; a process with no good one
/// (the direct path, daemon down) refuses the write.
#[tokio::test]
async fn broken_project_config_keeps_the_last_good_ownership_and_raises_an_alert() {
    let home = TestHome::new("hook-broken-config");
    home.write_config(HOLDER_PROFILE);
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let config = repo.join(".ccm/config.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let good = "ownership:\n  someone-else: ['src/**']\n";
    std::fs::write(&config, good).unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let mut daemon = home.start();
    let task = home.run_json(&["task", "add", "writer", "--profile", "holder", "--repo", &repo])
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    let env = [("CCM_AGENT_TOKEN", token.as_str())];
    let decision = |file: &str| {
        let write = claude(
            "PreToolUse",
            json!({"cwd": repo, "tool_name": "Write", "tool_input": {"file_path": format!("{repo}/{file}"), "content": "x"}}),
        );
        let answer = hook_json(&home, "claude", &env, &write);
        let output = &answer["hookSpecificOutput"];
        (
            output["permissionDecision"].as_str().unwrap_or("none").to_string(),
            output["permissionDecisionReason"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (verdict, reason) = decision("src/a.rs");
    assert_eq!(verdict, "deny", "{reason}");
    assert!(reason.contains("pre-assigned to `someone-else`"), "{reason}");

    std::fs::write(&config, format!("{good}ownrship: {{}}\n")).unwrap();
    let (verdict, reason) = decision("src/b.rs");
    assert_eq!(verdict, "deny", "the last good config still pre-assigns src/: {reason}");
    assert!(reason.contains("pre-assigned to `someone-else`"), "{reason}");
    let alerts = home.run_json(&["dump-state"])["alerts"].clone();
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["reason"] == "config_invalid")
        .unwrap_or_else(|| panic!("no alert: {alerts:#}"));
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.contains("app/.ccm/config.yaml")
            && message.contains("ownrship")
            && message.contains("last good configuration is kept"),
        "{message}"
    );

    daemon.terminate(); // the hook writes the database itself, with no good config to keep
    let (verdict, reason) = decision("src/c.rs");
    assert_eq!(verdict, "deny", "{reason}");
    assert!(reason.contains("ownrship") && reason.contains("writes are refused"), "{reason}");
}

/// A home whose tasks may use [`HOLDER_PROFILE`], with a registered repository (its path).
fn holder_home_with_repo(name: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    home.write_config(HOLDER_PROFILE);
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

/// The working directory the runtime recorded for the task's live agent.
async fn agent_field(daemon: &ccm_tests::Daemon, task: &str, field: &str) -> String {
    let (_, agents) = daemon.get("/api/agents").await;
    let agent = agents.as_array().unwrap().iter().find(|a| a["task_id"] == task).cloned();
    agent
        .and_then(|a| a[field].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("{agents:#}"))
}

/// Sends the event as the agent and says whether it waited for a human: the hook's answer is
/// the default after nobody answered (`Some(answer)`), else `None` for an event let through.
fn waits_for_a_human(home: &TestHome, agent: &str, token: &str, event: &Value) -> bool {
    let answer = hook_json(home, agent, &[("CCM_AGENT_TOKEN", token)], event);
    if answer.is_null() {
        return false;
    }
    let reason = answer["hookSpecificOutput"]["permissionDecisionReason"]
        .as_str()
        .or(answer["hookSpecificOutput"]["decision"]["message"].as_str())
        .or(answer["reason"].as_str())
        .unwrap_or_default();
    assert!(reason.contains("nobody answered within 1s"), "{event}: {answer}");
    true
}

/// `writes_outside_worktree` is judged against the worktree the runtime gave the agent, with
/// paths resolved as the system would write them: the `cwd` an event claims never lets a write
/// through, a link out of the worktree is outside, a relative path (Gemini's) is inside, and a
/// shell command's obvious targets are judged too.
#[tokio::test]
async fn writes_outside_the_agents_worktree_wait_for_a_human_whatever_the_event_says() {
    let (home, repo) = holder_home_with_repo("hook-outside");
    home.write_config(&format!(
        "approvals:\n  timeout_secs: 1\n  default: deny\n  rules:\n    - writes_outside_worktree: true\n{HOLDER_PROFILE}"
    ));
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "writer", "--profile", "holder", "--repo", &repo])
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    let worktree = agent_field(&daemon, &task, "cwd").await;
    let outside = home.work().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, std::path::Path::new(&worktree).join("escape")).unwrap();
    let write = |kind: &str, cwd: &str, path: &str| {
        claude(
            kind,
            json!({"cwd": cwd, "tool_name": "Write", "tool_input": {"file_path": path, "content": "x"}}),
        )
    };
    let bash = |command: &str| {
        claude(
            "PreToolUse",
            json!({"cwd": worktree, "tool_name": "Bash", "tool_input": {"command": command}}),
        )
    };
    let decisions = || async { daemon.get("/api/decisions").await.1.as_array().unwrap().len() };
    let c1 = "/tmp/ccm-test-c1.txt";

    let held = [
        write("PreToolUse", &worktree, c1),
        write("PreToolUse", "/tmp", c1),
        write("PreToolUse", "/", c1),
        write("PermissionRequest", "/tmp", c1),
        write("PreToolUse", &worktree, &format!("{worktree}/escape/a.txt")),
        write("PreToolUse", &worktree, &format!("{worktree}/src/../../a.txt")),
        bash("echo x > /tmp/ccm-test-out"),
        bash("cd /tmp && touch x"),
    ];
    for (i, event) in held.iter().enumerate() {
        assert!(waits_for_a_human(&home, "claude", &token, event), "{event}");
        assert_eq!(decisions().await, i + 1, "a decision was asked for {event}");
    }
    let gemini = json!({"session_id": "g", "cwd": "/tmp", "hook_event_name": "BeforeTool", "tool_name": "write_file",
                        "tool_input": {"file_path": "src/main.rs", "content": "y"}});
    assert!(!waits_for_a_human(&home, "gemini", &token, &gemini), "a relative path is inside");
    let passed = [
        write("PreToolUse", "/tmp", &format!("{worktree}/src/lib.rs")),
        bash("echo x > out.txt 2>/dev/null"),
    ];
    for event in &passed {
        assert!(!waits_for_a_human(&home, "claude", &token, event), "{event}");
    }
    assert_eq!(decisions().await, held.len());
}

/// A `command:` rule holds its command however the line spells it.
#[tokio::test]
async fn command_rule_holds_every_spelling_of_the_command() {
    let home = TestHome::new("hook-push-spellings");
    home.write_config(&format!(
        "approvals:\n  timeout_secs: 1\n  default: deny\n  rules:\n    - tools: [Bash]\n      command: '^git push'\n{HOLDER_PROFILE}"
    ));
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "pushes", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    let bash = |command: &str| {
        claude("PreToolUse", json!({"tool_name": "Bash", "tool_input": {"command": command}}))
    };
    for command in [
        "  git push",
        "env git push",
        "VAR=1 git push origin main",
        "true && git push",
        "git -C /tmp/x push",
        "/usr/bin/git push",
        "echo ready\ngit push",
    ] {
        assert!(waits_for_a_human(&home, "claude", &token, &bash(command)), "{command:?}");
    }
    assert!(!waits_for_a_human(&home, "claude", &token, &bash("git status; echo git push")));
}

/// A project file that breaks after it loaded keeps its `allowed_tools` for the next agents
/// (with an alert), rather than falling back to the profile's own list.
#[tokio::test]
async fn broken_project_config_keeps_the_last_good_allowed_tools() {
    let home = TestHome::new("hook-allowed-tools");
    home.write_config(
        // Written under another name and renamed: the test reads the file as soon as it exists.
        "profiles:\n  lister:\n    allowed_tools: [Bash, Write]\n    command: [sh, -c, 'printf %s \"{allowed_tools}\" > \"$CCM_AGENT_DIR/tools.new\" && mv \"$CCM_AGENT_DIR/tools.new\" \"$CCM_AGENT_DIR/tools\"; exec sleep 600']\n",
    );
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let config = repo.join(".ccm/config.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let good = "allowed_tools:\n  lister: [Read]\n";
    std::fs::write(&config, good).unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let daemon = home.start();
    let add = |title: &str| {
        home.run_json(&["task", "add", title, "--profile", "lister", "--repo", &repo])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(agent_file(&daemon, &add("first"), "tools").await, "Read");

    std::fs::write(&config, format!("{good}alowed: 1\n")).unwrap();
    let second = add("second");
    assert_eq!(agent_file(&daemon, &second, "tools").await, "Read", "the last good list is kept");
    let alerts = home.run_json(&["dump-state"])["alerts"].clone();
    let kept = alerts.as_array().unwrap().iter().any(|a| {
        a["reason"] == "config_invalid"
            && a["message"].as_str().unwrap().contains("last good configuration is kept")
    });
    assert!(kept, "{alerts:#}");
}

/// The text of a file the task's agent wrote in its directory, once it is there.
async fn agent_file(daemon: &ccm_tests::Daemon, task: &str, name: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, agents) = daemon.get("/api/agents").await;
        let dir = agents.as_array().unwrap().iter().find(|a| a["task_id"] == task).cloned();
        let dir = dir.and_then(|a| a["dir"].as_str().map(std::path::PathBuf::from));
        if let Some(text) = dir.and_then(|d| std::fs::read_to_string(d.join(name)).ok()) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "no {name} from task {task}: {agents:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
