//! Change requests that go somewhere (issue 24, acceptance 3): a write refused by ownership
//! (or an agent's `request_change`) is a change request with a decision; approved on the
//! (stand-in) Telegram, the owner's next attempt applies it; rejected from the CLI, the
//! requester is told why. The requester is the real Claude Code, which loads `ccm mcp` from the
//! worktree's `.mcp.json` and calls `mcp__ccm__wait_change` / `mcp__ccm__request_change` when
//! the model stand-in's scripted turns say so.

use std::time::Duration;

use ccm_tests::standin::anthropic::{Anthropic, Turn};
use ccm_tests::standin::telegram::Telegram;
use ccm_tests::{wait_until, Daemon, TestHome, HOLDER_PROFILE};
use reqwest::Method;
use serde_json::{json, Value};

use crate::claude::setup;
use crate::coordination::{agent_outputs, tool_results};

const SLOW: Duration = Duration::from_secs(120);
const TOKEN: &str = "123456:ABC-change-token";
const CHAT: i64 = 4343;

/// The owner's agent: its first attempt writes `src/api.txt` (claiming it through ccm's hook,
/// as an agent CLI's `PreToolUse` would), commits, and waits for `RELEASE` in the test's
/// directory; an attempt whose prompt carries an approved change request applies it.
const OWNER_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
*"Approved change requests"*)
  echo "hello (the change request applied)" >> src/api.txt
  git add -A && git commit -qm "apply the change request ($CCM_TASK_ID)"
  echo "applied the change request"
  ;;
*)
  mkdir -p src && echo "greet v1" > src/api.txt
  printf '{"session_id":"owner-%s","cwd":"%s","hook_event_name":"PreToolUse","tool_name":"Write","tool_input":{"file_path":"%s/src/api.txt","content":"greet v1"}}' "$CCM_TASK_ID" "$PWD" "$PWD" | "$CHANGE_TEST_CCM" hook --agent claude
  git add -A && git commit -qm "first version ($CCM_TASK_ID)"
  while [ ! -e "$CHANGE_TEST_RELEASE" ]; do sleep 0.1; done
  echo "first version written"
  ;;
esac
"#;

/// `ccm up` whose agents find the real `claude` first on their PATH and talk to `api`.
fn start_claude(home: &TestHome, api: &Anthropic, env: &[(&str, String)]) -> Daemon {
    home.start_with(|command| {
        api.claude_env(home, command);
        for (name, value) in env {
            command.env(name, value);
        }
    })
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let reached = wait_until(SLOW, || async { task(daemon, id).await["state"] == state }).await;
    let detail = task(daemon, id).await;
    assert!(
        reached,
        "task never reached {state}: {detail:#}\n{}\n{}",
        agent_outputs(daemon).await,
        daemon.log_text()
    );
    detail
}

/// The one change request ccm holds, once there is one.
async fn the_change_request(daemon: &Daemon) -> Value {
    let found = wait_until(SLOW, || async {
        daemon.get("/api/changes").await.1.as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert!(found, "no change request: {}\n{}", agent_outputs(daemon).await, daemon.log_text());
    daemon.get("/api/changes").await.1[0].clone()
}

/// The live agent of `task` (a holder) writes `path`: its `PreToolUse` through `ccm hook`
/// claims the file.
async fn claim_as_agent(home: &TestHome, daemon: &Daemon, task: &str, repo: &str, path: &str) {
    use std::io::Write as _;
    let token = daemon.agent_token(task).await;
    let payload = json!({
        "session_id": format!("holder-{task}"), "cwd": repo, "hook_event_name": "PreToolUse",
        "tool_name": "Write", "tool_input": { "file_path": format!("{repo}/{path}"), "content": "x" },
    });
    let mut hook = home
        .ccm()
        .args(["hook", "--agent", "claude"])
        .env("CCM_AGENT_TOKEN", &token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hook.stdin.take().unwrap().write_all(payload.to_string().as_bytes()).unwrap();
    let out = hook.wait_with_output().unwrap();
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    let claims = daemon.get("/api/claims").await.1;
    let claimed = claims["claims"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == path && c["task_id"] == task);
    assert!(claimed, "{claims:#}");
}

/// The log lines (reasons) of a task.
fn log_lines(detail: &Value) -> Vec<String> {
    detail["log"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_refused_write_becomes_a_change_request_approved_on_telegram_applied_by_the_owner_and_wait_change_returns_applied(
) {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let script = lease.path().join("owner.sh");
    std::fs::write(&script, OWNER_SCRIPT).unwrap();
    let release = lease.path().join("RELEASE");
    let (home, repo) = setup(
        "change-approved",
        &format!(
            "profiles:\n  owner:\n    command: [sh, {}, '{{prompt}}']\n    output: plain\nnotify:\n  notifiers:\n    phone:\n      kind: telegram\n      token: \"{TOKEN}\"\n      chat_ids: [{CHAT}]\n      api_url: {}\n      poll_secs: 1\n      lease_dir: {}\n",
            script.display(),
            bot.url(),
            lease.path().display()
        ),
    );
    let api = Anthropic::start(vec![
        Turn::write("src/api.txt", "hello v2, written by the requester"),
        Turn::tool("mcp__ccm__wait_change", json!({ "id": "{last:uuid}", "timeout_secs": 100 })),
        Turn::text("The change was applied by its owner."),
    ]);
    let env = [
        ("CHANGE_TEST_CCM", ccm_tests::ccm_bin().to_string_lossy().into_owned()),
        ("CHANGE_TEST_RELEASE", release.to_string_lossy().into_owned()),
    ];
    let daemon = start_claude(&home, &api, &env);

    // The owner writes and claims src/api.txt, then works on.
    let owner =
        home.run_json(&["task", "add", "write the api", "--repo", &repo, "--profile", "owner"])
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    let claimed = wait_until(SLOW, || async {
        let claims = daemon.get("/api/claims").await.1;
        claims["claims"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["path"] == "src/api.txt" && c["task_id"] == owner.as_str())
    })
    .await;
    assert!(claimed, "the owner never claimed src/api.txt: {}", agent_outputs(&daemon).await);

    // The requester (the real Claude Code) writes the same file: refused, a change request.
    let requester =
        home.run_json(&["task", "add", "use the api", "--repo", &repo, "--profile", "claude"])
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    let request = the_change_request(&daemon).await;
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["state"], "pending", "{request:#}");
    assert_eq!(request["path"], "src/api.txt");
    assert_eq!(request["owner"], owner.as_str());
    assert_eq!(request["requester_task"], requester.as_str());
    assert_eq!(request["tool"], "Write");

    // The decision reaches Telegram with its buttons; the operator approves it there.
    let (message_id, approve) = {
        let deadline = std::time::Instant::now() + SLOW;
        loop {
            let found = bot.sent().iter().find_map(|m| {
                let text = m["text"].as_str()?;
                if !text.contains("src/api.txt") {
                    return None;
                }
                let buttons = m["reply_markup"]["inline_keyboard"][0].as_array()?;
                let approve = buttons
                    .iter()
                    .filter_map(|b| b["callback_data"].as_str())
                    .find(|d| d.ends_with(":approve"))?
                    .to_string();
                Some((m["message_id"].as_i64()?, approve))
            });
            if let Some(found) = found {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no decision on Telegram: {:#?}",
                bot.sent()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    bot.press(CHAT, (CHAT, "Ann"), message_id, &approve);

    // Approved, forwarded to the owner, which is still at work on its first attempt.
    let forwarded = wait_until(SLOW, || async {
        let r = daemon.get(&format!("/api/changes/{id}")).await.1;
        r["state"] == "approved" && r["forwarded_to"] == owner.as_str()
    })
    .await;
    let shown = daemon.get(&format!("/api/changes/{id}")).await.1;
    assert!(forwarded, "not forwarded to the owner: {shown:#}\n{}", daemon.log_text());
    assert_eq!(shown["decided_by"], "telegram:@ann", "{shown:#}");

    // The owner's attempt ends; it re-opens, and its next attempt applies the request.
    std::fs::write(&release, "go").unwrap();
    let owner_done = wait_until(SLOW, || async {
        let t = task(&daemon, &owner).await;
        t["state"] == "complete" && t["attempts"] == 2
    })
    .await;
    let owner_detail = task(&daemon, &owner).await;
    assert!(
        owner_done,
        "the owner did not apply it: {owner_detail:#}\n{}",
        agent_outputs(&daemon).await
    );
    let reopened = owner_detail["log"].as_array().unwrap().iter().any(|e| {
        e["from_state"] == "complete"
            && e["to_state"] == "created"
            && e["reason"].as_str().unwrap_or_default().contains(&id[..8])
    });
    assert!(reopened, "the owner re-opened for the request: {owner_detail:#}");

    // The requester's wait_change returned `applied`; it ended well.
    let detail = wait_state(&daemon, &requester, "complete").await;
    let results = tool_results(&api);
    let refused = results
        .iter()
        .find(|r| r.contains(&id))
        .unwrap_or_else(|| panic!("the refusal names the change request {id}: {results:#?}"));
    assert!(refused.contains("owned by task"), "{refused}");
    let waited: Value = results
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("no wait_change result among {results:#?}"));
    assert_eq!(waited["state"], "applied", "{waited:#}");
    assert!(
        waited["reason"].as_str().unwrap().contains(&format!("task {}", &owner[..8])),
        "{waited:#}"
    );

    // The owner's branch carries the change; the calls went through the CLI's MCP tool name.
    let branch = format!("ccm/{}", &owner[..8]);
    let file = std::process::Command::new("git")
        .args(["-C", &repo, "show", &format!("{branch}:src/api.txt")])
        .output()
        .unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("the change request applied"), "{file}");
    let (tools, events) = daemon.tool_calls(&requester).await;
    assert_eq!(tools, ["Write", "mcp__ccm__wait_change"], "{events:#}");

    // Everything is in the requester's log, and `ccm claims` shows the state.
    let lines = log_lines(&detail).join("\n");
    for said in [
        "waits for decision",
        "approved by telegram:@ann",
        "forwarded to its owner",
        "applied by task",
    ] {
        assert!(lines.contains(said), "`{said}` in the requester's log:\n{lines}");
    }
    let claims = home.run_ok(&["claims"]);
    let line = claims.lines().find(|l| l.contains(&id[..8])).unwrap_or_default();
    assert!(line.contains("applied") && line.contains("src/api.txt"), "{claims}");

    // The Telegram message says how it was decided, without its buttons.
    let edited = wait_until(Duration::from_secs(20), || async {
        bot.text_of(CHAT, message_id).is_some_and(|t| t.contains("approve"))
            && bot.markup_of(CHAT, message_id).is_none()
    })
    .await;
    assert!(edited, "{:?}", bot.text_of(CHAT, message_id));
}

#[tokio::test]
async fn a_rejected_change_request_tells_the_requester_rejected_with_the_reason() {
    let mark = tempfile::tempdir().unwrap();
    let mark = mark.path().join("first-verify");
    let (home, repo) = setup("change-rejected", HOLDER_PROFILE);
    let api = Anthropic::start(vec![
        Turn::tool(
            "mcp__ccm__request_change",
            json!({ "file": "src/api.txt", "what": "rename greet to hello",
                    "why": "the client calls hello" }),
        ),
        Turn::tool("mcp__ccm__wait_change", json!({ "id": "{last:id}", "timeout_secs": 100 })),
        Turn::text("The change was refused; I will do without it."),
        // The second attempt (the first one's verify failed).
        Turn::text("Second attempt: done without the change."),
    ]);
    let daemon = start_claude(&home, &api, &[]);

    // The owner holds src/api.txt (its agent's write claimed it).
    let owner =
        home.run_json(&["task", "add", "own the api", "--repo", &repo, "--profile", "holder"])
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    claim_as_agent(&home, &daemon, &owner, &repo, "src/api.txt").await;

    // The requester asks for a change with request_change, then waits for it.
    let verify = format!("test -e {0} || {{ touch {0}; exit 1; }}", mark.display());
    let requester = home.run_json(&[
        "task",
        "add",
        "call hello",
        "--repo",
        &repo,
        "--profile",
        "claude",
        "--verify",
        &verify,
        "--max-attempts",
        "2",
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let request = the_change_request(&daemon).await;
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["tool"], "request_change", "{request:#}");
    assert_eq!(request["what"], "rename greet to hello");
    assert_eq!(request["owner"], owner.as_str());

    // The operator rejects it from the CLI, saying why.
    let decision = request["decision_id"].as_str().unwrap();
    let reason = "the api is frozen until the release";
    home.run_ok(&["decide", &decision[..8], "reject", "--reason", reason]);

    // wait_change answered `rejected` with the reason; the next attempt's prompt says it too.
    let detail = wait_state(&daemon, &requester, "complete").await;
    assert_eq!(detail["attempts"], 2, "{detail:#}");
    let results = tool_results(&api);
    let waited: Value = results
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(r).ok())
        .find(|r| r["id"] == id.as_str() && r["final"] == true)
        .unwrap_or_else(|| panic!("no wait_change result among {results:#?}"));
    assert_eq!(waited["state"], "rejected", "{waited:#}");
    assert_eq!(waited["reason"], reason, "{waited:#}");
    let told = api.requests().iter().any(|r| {
        r.to_string()
            .contains(&format!("change request {} of `src/api.txt`: rejected ({reason})", &id[..8]))
    });
    assert!(told, "the second attempt's prompt names the outcome");

    // The owner was not disturbed; the log and `ccm claims` show the rejection.
    assert_eq!(task(&daemon, &owner).await["attempts"], 1);
    let lines = log_lines(&detail).join("\n");
    assert!(lines.contains(&format!("rejected by cli: {reason}")), "{lines}");
    let claims = home.run_ok(&["claims"]);
    let line = claims.lines().find(|l| l.contains(&id[..8])).unwrap_or_default();
    assert!(line.contains("rejected") && line.contains(reason), "{claims}");
    home.run_ok(&["task", "cancel", &owner]);
}

#[tokio::test]
async fn a_configured_reviewer_agent_decides_a_change_request_with_its_verdict_and_reason() {
    let reviewer = "  rev:\n    command: [sh, -c, 'grep -q \"File: .src/api.txt.\" \"$CCM_AGENT_DIR/prompt.md\" && grep -q \"make greet async\" \"$CCM_AGENT_DIR/prompt.md\" && echo \"VERDICT: reject — the owner is mid-refactor\"']\n    output: plain\nchange_requests:\n  reviewer: rev\n";
    let (home, repo) = setup("change-reviewer", &format!("{HOLDER_PROFILE}{reviewer}"));
    let daemon = home.start();
    let add = |title: &str| {
        home.run_json(&["task", "add", title, "--repo", &repo, "--profile", "holder"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (owner, requester) = (add("own the api"), add("call the api"));
    claim_as_agent(&home, &daemon, &owner, &repo, "src/api.txt").await;

    // The requester's agent asks through the agent API (what `ccm mcp` calls) with its credential.
    let token = daemon.agent_token(&requester).await;
    let body =
        json!({ "file": "src/api.txt", "what": "make greet async", "why": "the caller awaits it" });
    let (status, request) = daemon.as_agent(Method::POST, &token, "/api/agent/changes", body).await;
    assert_eq!(status, 201);
    let id = request["id"].as_str().unwrap().to_string();
    assert_eq!(request["state"], "pending", "{request:#}");

    // The reviewer's run reads the request and rejects it; the decision is answered with its reason.
    let decided = wait_until(SLOW, || async {
        daemon.get(&format!("/api/changes/{id}")).await.1["state"] == "rejected"
    })
    .await;
    let shown = daemon.get(&format!("/api/changes/{id}")).await.1;
    assert!(decided, "not decided by the reviewer: {shown:#}\n{}", daemon.log_text());
    assert_eq!(shown["reason"], "the owner is mid-refactor", "{shown:#}");
    assert_eq!(shown["decided_by"], "reviewer:rev", "{shown:#}");
    let decisions = daemon.get("/api/decisions").await.1;
    let decision = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == shown["decision_id"])
        .unwrap()
        .clone();
    assert_eq!(decision["answer"], "reject", "{decision:#}");
    assert_eq!(decision["answered_by"], "reviewer:rev", "{decision:#}");

    // The requester's wait answers at once; the run is listed with the supervisors' runs.
    let wait = format!("/api/agent/changes/{id}/wait");
    let (_, waited) =
        daemon.as_agent(Method::POST, &token, &wait, json!({ "timeout_secs": 5 })).await;
    assert_eq!(waited["state"], "rejected", "{waited:#}");
    assert_eq!(waited["final"], true);
    let runs = home.run_ok(&["supervisors"]);
    assert!(runs.contains(&format!("change_request:{id}")), "{runs}");
    for task in [&owner, &requester] {
        home.run_ok(&["task", "cancel", task]);
    }
}

#[tokio::test]
async fn an_approved_change_request_whose_owner_ends_goes_to_a_new_task_owning_the_file() {
    let (home, repo) = setup("change-new-task", HOLDER_PROFILE);
    let daemon = home.start();
    let add = |title: &str| {
        home.run_json(&["task", "add", title, "--repo", &repo, "--profile", "holder"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (owner, requester) = (add("own the api"), add("call the api"));
    claim_as_agent(&home, &daemon, &owner, &repo, "src/api.txt").await;
    let token = daemon.agent_token(&requester).await;
    let ask = |file: &'static str| {
        let body =
            json!({ "file": file, "what": "add a hello function", "why": "the caller needs it" });
        daemon.as_agent(Method::POST, &token, "/api/agent/changes", body)
    };
    // A file nobody else owns is the requester's to write: refused, saying so.
    let (status, free) = ask("src/free.txt").await;
    assert_eq!(status, 400);
    assert!(free["error"]["message"].as_str().unwrap().contains("write it yourself"), "{free:#}");

    let (_, request) = ask("src/api.txt").await;
    let id = request["id"].as_str().unwrap().to_string();
    let decision = request["decision_id"].as_str().unwrap();
    let (status, _) =
        daemon.post(&format!("/api/decisions/{decision}"), json!({ "answer": "approve" })).await;
    assert_eq!(status, 200);
    let forwarded = wait_until(SLOW, || async {
        daemon.get(&format!("/api/changes/{id}")).await.1["forwarded_to"] == owner.as_str()
    })
    .await;
    assert!(forwarded, "{:#}", daemon.get(&format!("/api/changes/{id}")).await.1);

    // The owner ends before applying it: the request goes to a new task that owns the file.
    home.run_ok(&["task", "cancel", &owner]);
    let moved = wait_until(SLOW, || async {
        let r = daemon.get(&format!("/api/changes/{id}")).await.1;
        r["state"] == "approved"
            && r["forwarded_to"].is_string()
            && r["forwarded_to"] != owner.as_str()
    })
    .await;
    let shown = daemon.get(&format!("/api/changes/{id}")).await.1;
    assert!(moved, "{shown:#}\n{}", daemon.log_text());
    let new = shown["forwarded_to"].as_str().unwrap().to_string();
    let detail = task(&daemon, &new).await;
    assert_eq!(detail["title"], format!("Change request {}: src/api.txt", &id[..8]), "{detail:#}");
    assert_eq!(detail["repo"], repo.as_str());
    assert_eq!(detail["profile"], "holder");
    let claims = daemon.get("/api/claims").await.1;
    let owned = claims["claims"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == "src/api.txt" && c["task_id"] == new.as_str());
    assert!(owned, "{claims:#}");
    let lines = log_lines(&task(&daemon, &requester).await).join("\n");
    assert!(lines.contains("forwarded to a new task") && lines.contains("is cancelled"), "{lines}");

    // Its first attempt's prompt carries the request.
    let carried = wait_until(SLOW, || async {
        let attempts = task(&daemon, &new).await["attempts"].as_u64().unwrap_or(0);
        attempts >= 1
    })
    .await;
    assert!(carried);
    let mut db = ccm_tests::open_db(&home.db_file()).await;
    let prompt: String = sqlx::query_scalar("SELECT prompt FROM attempts WHERE task_id = ?")
        .bind(&new)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(
        prompt.contains("add a hello function") && prompt.contains("the caller needs it"),
        "{prompt}"
    );
    let delivered: Option<i64> =
        sqlx::query_scalar("SELECT delivered_attempt FROM change_requests WHERE id = ?")
            .bind(&id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(delivered, Some(1));

    // The task made to apply it is cancelled: the request ends there, withdrawn, saying why.
    home.run_ok(&["task", "cancel", &new]);
    let shown = daemon.get(&format!("/api/changes/{id}")).await.1;
    assert_eq!(shown["state"], "withdrawn", "{shown:#}");
    assert_eq!(shown["final"], true);
    let reason = shown["reason"].as_str().unwrap();
    assert!(reason.contains(&new[..8]) && reason.contains("cancelled"), "{shown:#}");

    // The requester's dashboard page shows the request with its state.
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    let signed = http.get(&link).send().await.unwrap();
    let cookie =
        signed.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = http
        .get(daemon.url(&format!("/tasks/{requester}")))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = page.split("id=\"change-requests\"").nth(1).unwrap_or_default();
    let shown = shown.split("</dd>").next().unwrap_or_default();
    assert!(shown.contains("withdrawn") && shown.contains(&id[..8]), "{shown}\n{page}");
    home.run_ok(&["task", "cancel", &requester]);
}
