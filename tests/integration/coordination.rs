//! Agents that coordinate through ccm's MCP server (issue 24): the real Claude Code loads
//! `ccm mcp` from the `.mcp.json` ccm installs in the task's worktree and calls its tools
//! (`mcp__ccm__<tool>`) when the model stand-in's scripted turns say so; sub-tasks, named
//! locks and sequences through the agent API (agent credentials) and the CLI.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ccm_tests::standin::anthropic::{Anthropic, Turn};
use ccm_tests::{agent_cli, wait_until, Daemon, TestHome, HOLDER_PROFILE};
use serde_json::{json, Value};

use crate::claude::setup;

const SLOW: Duration = Duration::from_secs(120);

/// A sub-task's agent: writes a file named after its task, commits it, and says what it did.
const WRITER: &str = "  writer:\n    command: [sh, -c, 'echo \"$0\" > \"out-$CCM_TASK_ID.txt\" && git add -A && git commit -qm \"part ($CCM_TASK_ID)\" && echo \"result of $0\"', '{prompt}']\n    output: plain\n";

/// `ccm up` whose agents find the real `claude` first on their PATH and talk to `api`.
fn start_claude(home: &TestHome, api: &Anthropic) -> Daemon {
    home.start_with(|command| api.claude_env(home, command))
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

/// The text of every `tool_result` block in the requests Claude Code sent the stand-in.
pub(crate) fn tool_results(api: &Anthropic) -> Vec<String> {
    let mut out = Vec::new();
    for request in api.requests() {
        for message in request["messages"].as_array().into_iter().flatten() {
            for block in message["content"].as_array().into_iter().flatten() {
                if block["type"] == "tool_result" {
                    let text = match &block["content"] {
                        Value::String(text) => text.clone(),
                        Value::Array(parts) => {
                            parts.iter().filter_map(|p| p["text"].as_str()).collect()
                        }
                        other => other.to_string(),
                    };
                    if !out.contains(&text) {
                        out.push(text);
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn claude_agent_creates_dependent_subtasks_through_mcp_and_sees_their_results() {
    let (home, repo) = setup("mcp-subtasks", &format!("profiles:\n{WRITER}"));
    let api = Anthropic::start(vec![
        Turn::tool(
            "mcp__ccm__create_subtask",
            json!({ "title": "first part", "prompt": "alpha", "profile": "writer" }),
        ),
        Turn::tool(
            "mcp__ccm__create_subtask",
            json!({ "title": "second part", "prompt": "beta", "profile": "writer",
                    "depends_on": ["{last:id}"] }),
        ),
        Turn::tool("mcp__ccm__wait_subtasks", json!({ "timeout_secs": 100 })),
        Turn::text("Both parts are done."),
    ]);
    let daemon = start_claude(&home, &api);
    let parent =
        home.run_json(&["task", "add", "split the work", "--repo", &repo, "--profile", "claude"])
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
    let detail = wait_state(&daemon, &parent, "complete").await;

    // Both sub-tasks ran and completed, the second after the first.
    let subtasks = detail["subtasks"].as_array().expect("sub-tasks in task show").clone();
    assert_eq!(subtasks.len(), 2, "{detail:#}");
    let (first, second) = (&subtasks[0], &subtasks[1]);
    assert_eq!(first["title"], "first part");
    assert_eq!(second["title"], "second part");
    assert_eq!(second["depends_on"], json!([first["id"]]), "{detail:#}");
    for sub in [first, second] {
        assert_eq!(sub["state"], "complete", "{detail:#}");
        let shown = home.run_json(&["task", "show", sub["id"].as_str().unwrap()]);
        assert_eq!(shown["parent"], json!(parent), "{shown:#}");
        assert_eq!(shown["repo"], json!(repo), "{shown:#}");
    }
    let first_done = home.run_json(&["task", "show", first["id"].as_str().unwrap()]);
    let second_shown = home.run_json(&["task", "show", second["id"].as_str().unwrap()]);
    let at = |t: &Value, state: &str| {
        let entry = t["log"].as_array().unwrap().iter().find(|e| e["to_state"] == state).cloned();
        let at = entry.unwrap_or_else(|| panic!("no {state} in {t:#}"))["at"].clone();
        humantime::parse_rfc3339(at.as_str().unwrap()).unwrap()
    };
    let done_at = |t: &Value| at(t, "complete");
    let queued_at = |t: &Value| at(t, "queued");
    assert!(queued_at(&second_shown) >= done_at(&first_done), "{second_shown:#}");

    // The parent's agent got their results from wait_subtasks.
    let results = tool_results(&api);
    let waited = results
        .iter()
        .find(|r| r.contains("\"done\":true"))
        .unwrap_or_else(|| panic!("no wait_subtasks result among {results:#?}"));
    assert!(waited.contains("result of alpha"), "{waited}");
    assert!(waited.contains("result of beta"), "{waited}");

    // The calls went through the CLI's MCP tool names (its hooks saw them).
    let (tools, events) = daemon.tool_calls(&parent).await;
    assert_eq!(
        tools,
        ["mcp__ccm__create_subtask", "mcp__ccm__create_subtask", "mcp__ccm__wait_subtasks"],
        "{events:#}"
    );

    // The tree, as the operator reads it.
    let text = home.run_ok(&["task", "show", &parent]);
    let first_line = text.lines().find(|l| l.contains("first part")).unwrap_or_default();
    let second_line = text.lines().find(|l| l.contains("second part")).unwrap_or_default();
    assert!(text.contains("sub-tasks:"), "{text}");
    assert!(first_line.contains(&first["id"].as_str().unwrap()[..8]), "{text}");
    assert!(first_line.contains("complete"), "{text}");
    assert!(
        second_line.contains(&format!("(after {})", &first["id"].as_str().unwrap()[..8])),
        "{text}"
    );
}

/// Starts `ccm mcp` with `env`, sends the handshake and calls each tool once; the results.
fn call_every_tool(home: &TestHome, env: &[(&str, &str)]) -> Vec<(String, Value)> {
    let mut command = Command::new(ccm_tests::ccm_bin());
    command
        .arg("mcp")
        .env("CCM_HOME", home.home())
        .env_remove("CCM_AGENT_TOKEN")
        .env_remove("CCM_TASK_ID")
        .env_remove("CCM_API")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |message: Value| {
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    };
    send(json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "test", "version": "1" } } }));
    let init: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(init["result"]["serverInfo"]["name"], "ccm", "{init}");
    send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    send(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }));
    let list: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let names: Vec<String> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    let arguments = |name: &str| match name {
        "create_subtask" => json!({ "title": "bomb", "profile": "manual" }),
        "lock" | "unlock" => json!({ "name": "build" }),
        "allocate" => json!({ "sequence": "migrations" }),
        "release_allocation" => json!({ "sequence": "migrations", "value": "0001" }),
        "wait_subtasks" => json!({ "timeout_secs": 0 }),
        _ => json!({}),
    };
    let mut results = Vec::new();
    for (i, name) in names.iter().enumerate() {
        send(json!({ "jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                     "params": { "name": name, "arguments": arguments(name) } }));
        let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        results.push((name.clone(), answer["result"].clone()));
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    results
}

fn assert_all_refused(results: &[(String, Value)], words: &str) {
    assert!(results.len() >= 7, "{results:#?}");
    for (name, result) in results {
        assert_eq!(result["isError"], true, "{name}: {result}");
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        assert!(text.starts_with("refused: "), "{name}: {text}");
        assert!(text.contains(words), "{name}: {text}");
    }
}

/// A holder task (its agent sleeps) with the token of its live agent.
async fn holder(home: &TestHome, daemon: &Daemon, repo: &str) -> (String, String) {
    let id = home.run_json(&["task", "add", "hold", "--repo", repo, "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&id).await;
    (id, token)
}

fn sequences() -> &'static str {
    "sequences:\n  migrations:\n    start: 1\n    format: \"{:04}\"\n"
}

#[tokio::test]
async fn every_tool_is_refused_without_a_live_token_or_with_another_tasks() {
    let (home, repo) = setup(
        "mcp-refused",
        &format!("{HOLDER_PROFILE}coordination:\n  max_subtasks_per_parent: 3\n"),
    );
    std::fs::create_dir_all(Path::new(&repo).join(".ccm")).unwrap();
    std::fs::write(Path::new(&repo).join(".ccm/config.yaml"), sequences()).unwrap();
    let daemon = home.start();
    let api = format!("http://{}", daemon.addr);

    assert_all_refused(&call_every_tool(&home, &[("CCM_API", &api)]), "CCM_AGENT_TOKEN is not set");
    assert_all_refused(
        &call_every_tool(&home, &[("CCM_API", &api), ("CCM_AGENT_TOKEN", "made-up")]),
        "not a live agent's",
    );

    let (a, token_a) = holder(&home, &daemon, &repo).await;
    let (b, _) = holder(&home, &daemon, &repo).await;
    assert_all_refused(
        &call_every_tool(
            &home,
            &[("CCM_API", &api), ("CCM_AGENT_TOKEN", &token_a), ("CCM_TASK_ID", &b)],
        ),
        &format!("belongs to task {}", &a.replace('-', "")[..8]),
    );

    // Its own task's token works (through the home's port file, without CCM_API)...
    let own = call_every_tool(&home, &[("CCM_AGENT_TOKEN", &token_a), ("CCM_TASK_ID", &a)]);
    let by_name = |name: &str| own.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let allocated = by_name("allocate");
    assert_ne!(allocated["isError"], true, "{allocated}");
    let allocation: Value =
        serde_json::from_str(allocated["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(allocation["formatted"], "0001", "{allocation}");
    assert_ne!(by_name("create_subtask")["isError"], true, "{own:#?}");

    // ...until its agent ends: the credential is revoked with it.
    home.run_ok(&["task", "cancel", &a]);
    assert!(
        wait_until(SLOW, || async {
            let agents = daemon.get("/api/agents").await.1;
            agents
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["task_id"] == a && x["status"] != "running" && x["status"] != "starting")
        })
        .await
    );
    assert_all_refused(
        &call_every_tool(&home, &[("CCM_API", &api), ("CCM_AGENT_TOKEN", &token_a)]),
        "not a live agent's",
    );
    // Cancelling the parent cancelled its open sub-task.
    let shown = home.run_json(&["task", "show", &a]);
    assert_eq!(shown["subtasks"][0]["state"], "cancelled", "{shown:#}");
}

#[tokio::test]
async fn a_subtask_bomb_stops_at_the_configured_limit_with_one_alert() {
    let (home, repo) = setup(
        "mcp-bomb",
        &format!("{HOLDER_PROFILE}coordination:\n  max_subtasks_per_parent: 5\n"),
    );
    let daemon = home.start();
    let (parent, token) = holder(&home, &daemon, &repo).await;
    let mut created = 0;
    let mut refusals = Vec::new();
    for i in 0..12 {
        let body = json!({ "title": format!("bomb {i}"), "profile": "manual" });
        let (status, answer) =
            daemon.as_agent(reqwest::Method::POST, &token, "/api/agent/subtasks", body).await;
        match status {
            201 => created += 1,
            403 => refusals.push(answer["error"]["message"].as_str().unwrap().to_string()),
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert_eq!(created, 5);
    assert_eq!(refusals.len(), 7);
    assert!(refusals[0].contains("already has 5 sub-tasks"), "{refusals:?}");
    assert!(refusals[0].contains("coordination.max_subtasks_per_parent"), "{refusals:?}");
    let alerts = daemon.get("/api/alerts").await.1;
    let limit: Vec<&Value> =
        alerts.as_array().unwrap().iter().filter(|a| a["reason"] == "subtask_limit").collect();
    assert_eq!(limit.len(), 1, "{alerts:#}");
    assert_eq!(limit[0]["task_id"], json!(parent), "{alerts:#}");
    let shown = home.run_json(&["task", "show", &parent]);
    assert_eq!(shown["subtasks"].as_array().unwrap().len(), 5, "{shown:#}");
}

#[tokio::test]
async fn twenty_concurrent_allocations_are_distinct_and_gap_free() {
    let (home, repo) = setup("alloc", "");
    std::fs::create_dir_all(Path::new(&repo).join(".ccm")).unwrap();
    std::fs::write(Path::new(&repo).join(".ccm/config.yaml"), sequences()).unwrap();
    let daemon = home.start();
    let calls = (0..20).map(|_| {
        let api = daemon.api.clone();
        let repo = repo.clone();
        tokio::spawn(async move {
            api.post("/api/allocations", json!({ "repo": repo, "sequence": "migrations" })).await
        })
    });
    let mut values = Vec::new();
    for call in calls {
        let (status, answer) = call.await.unwrap();
        assert_eq!(status, 201, "{answer}");
        values.push(answer["formatted"].as_str().unwrap().to_string());
    }
    values.sort();
    let expected: Vec<String> = (1..=20).map(|n| format!("{n:04}")).collect();
    assert_eq!(values, expected);

    // A value held is visible, and handed out again only once released.
    let claims = home.run_json(&["claims"]);
    assert_eq!(claims["allocations"].as_array().unwrap().len(), 20, "{claims:#}");
    let next =
        daemon.post("/api/allocations", json!({ "repo": repo, "sequence": "migrations" })).await;
    assert_eq!(next.1["formatted"], "0021", "{next:?}");
    let released = daemon
        .post(
            "/api/allocations/release",
            json!({ "repo": repo, "sequence": "migrations", "value": "0007" }),
        )
        .await;
    assert_eq!(released.0, 200, "{released:?}");
    let again =
        daemon.post("/api/allocations", json!({ "repo": repo, "sequence": "migrations" })).await;
    assert_eq!(again.1["formatted"], "0007", "{again:?}");
    let unknown =
        daemon.post("/api/allocations", json!({ "repo": repo, "sequence": "nope" })).await;
    assert_eq!(unknown.0, 400, "{unknown:?}");
    assert!(
        unknown.1["error"]["message"].as_str().unwrap().contains("`nope` is not declared"),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_named_lock_has_one_holder_at_a_time_with_growing_fencing_tokens() {
    let (home, repo) = setup("locks", HOLDER_PROFILE);
    let daemon = home.start();
    let (a, token_a) = holder(&home, &daemon, &repo).await;
    let (_b, token_b) = holder(&home, &daemon, &repo).await;
    let (status, first) = daemon
        .as_agent(
            reqwest::Method::POST,
            &token_a,
            "/api/agent/locks/build",
            json!({ "ttl_secs": 60 }),
        )
        .await;
    assert_eq!(status, 200, "{first}");
    let (status, busy) = daemon
        .as_agent(
            reqwest::Method::POST,
            &token_b,
            "/api/agent/locks/build",
            json!({ "ttl_secs": 60 }),
        )
        .await;
    assert_eq!(status, 409, "{busy}");
    assert_eq!(busy["error"]["code"], "lock_held", "{busy}");

    // B waits (visible in `ccm claims`) until A's task ends, which releases A's locks.
    let waiter = {
        let api = daemon.api.clone();
        let token = token_b.clone();
        tokio::spawn(async move {
            api.as_agent(
                reqwest::Method::POST,
                &token,
                "/api/agent/locks/build",
                json!({ "ttl_secs": 60, "wait_secs": 60 }),
            )
            .await
        })
    };
    assert!(
        wait_until(SLOW, || async {
            home.run_json(&["claims"])["locks"][0]["waiters"].as_str().is_some()
        })
        .await
    );
    home.run_ok(&["task", "cancel", &a]);
    let (status, second) = waiter.await.unwrap();
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["fence"].as_i64(), Some(first["fence"].as_i64().unwrap() + 1), "{second}");

    // `ccm lock NAME -- COMMAND` holds it while the command runs: three at once never overlap.
    let log = home.work().join("lock.log");
    let script = format!(
        "echo \"start $CCM_LOCK_FENCE\" >> {0}; sleep 0.3; echo \"end $CCM_LOCK_FENCE\" >> {0}",
        log.display()
    );
    let runs: Vec<_> = (0..3)
        .map(|_| home.ccm().args(["lock", "cli-build", "--", "sh", "-c", &script]).spawn().unwrap())
        .collect();
    for mut run in runs {
        assert!(run.wait().unwrap().success());
    }
    let lines: Vec<String> =
        std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for pair in lines.chunks(2) {
        let fence = pair[0].strip_prefix("start ").expect("a start line");
        assert_eq!(pair[1], format!("end {fence}"), "{lines:?}");
    }
}

/// Expected parts: titles and the indexes of the parts each waits for.
type Parts = Vec<(&'static str, Vec<usize>)>;

#[tokio::test]
async fn task_add_split_creates_the_parts_the_heuristic_finds() {
    let (home, repo) = setup("split", "profiles:\n  quick:\n    command: [sh, -c, 'exit 0']\n");
    let pad = "x".repeat(820);
    let seed = format!(
        "Implement the parser module {pad}, create the storage layer {pad}, build the web interface {pad}"
    );
    assert!(seed.chars().count() >= 2_500);
    let cases: [(&str, &str, Parts); 3] = [
        (
            "seed",
            &seed,
            vec![
                ("Implement the parser module", vec![]),
                ("Create the storage layer", vec![]),
                ("Build the web interface", vec![]),
            ],
        ),
        ("ordered", "Do A, then B after A", vec![("Do A", vec![]), ("B after A", vec![0])]),
        ("short", "Fix the typo in the README", vec![]),
    ];
    for (name, prompt, expected) in &cases {
        let plan = |_: ()| {
            home.run_json(&[
                "task",
                "add",
                name,
                "--prompt",
                prompt,
                "--repo",
                &repo,
                "--split",
                "--dry-run",
            ])
        };
        let first = plan(());
        for _ in 0..3 {
            assert_eq!(plan(()), first, "{name}: the same text gives the same plan");
        }
        let parts: Vec<(String, Vec<usize>)> = first
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let title = p["title"].as_str().unwrap();
                let title = title.split(" xxx").next().unwrap().to_string();
                let deps = p["depends_on"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect();
                (title, deps)
            })
            .collect();
        let expected: Vec<(String, Vec<usize>)> =
            expected.iter().map(|(t, d)| (t.to_string(), d.clone())).collect();
        assert_eq!(parts, expected, "{name}: {first:#}");
    }
    // Nothing was created by the dry runs.
    assert_eq!(home.run_json(&["task", "list"]).as_array().unwrap().len(), 0);

    // Created for real (no daemon: straight into the database): the parts are sub-tasks of
    // the task, which depends on all of them; ordered parts depend on the one before.
    for (name, prompt, expected) in &cases {
        let created = home.run_json(&[
            "task",
            "add",
            name,
            "--prompt",
            prompt,
            "--repo",
            &repo,
            "--split",
            "--profile",
            "quick",
        ]);
        let id = created["parent"]["id"]
            .as_str()
            .or(created["id"].as_str())
            .unwrap_or_else(|| panic!("{created:#}"))
            .to_string();
        let shown = home.run_json(&["task", "show", &id]);
        let subtasks = shown["subtasks"].as_array().cloned().unwrap_or_default();
        assert_eq!(subtasks.len(), expected.len(), "{name}: {shown:#}");
        let ids: Vec<&str> = subtasks.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(
            shown["depends_on"].as_array().map(Vec::len).unwrap_or(0),
            expected.len(),
            "{name}: {shown:#}"
        );
        for (sub, (_, deps)) in subtasks.iter().zip(expected) {
            let want: Vec<&str> = deps.iter().map(|&d| ids[d]).collect();
            assert_eq!(sub["depends_on"], json!(want), "{name}: {shown:#}");
        }
    }
}

/// Gemini CLI and Codex load `ccm mcp` as ccm installs it (Gemini: the worktree's
/// `.gemini/settings.json` with the credential passed in `env`; Codex: `-c mcp_servers.ccm.*`
/// with `env_vars`) and call `allocate` as their agent: the value is the task's.
async fn allocate_through(cli: &str, tool: &str) {
    use ccm_tests::standin::{self, Turn as CliTurn};
    let (home, repo) = setup(&format!("mcp-{cli}"), "");
    std::fs::create_dir_all(Path::new(&repo).join(".ccm")).unwrap();
    std::fs::write(Path::new(&repo).join(".ccm/config.yaml"), sequences()).unwrap();
    let turns = vec![
        CliTurn::Tool { name: tool.into(), args: json!({ "sequence": "migrations" }) },
        CliTurn::Say("allocated".into()),
    ];
    let api =
        if cli == "gemini" { standin::gemini::start(turns) } else { standin::openai::start(turns) };
    let agent_home = home.dir.path().join("agent-home");
    let settings = agent_home.join(".gemini/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    std::fs::write(
        &settings,
        r#"{"security": {"auth": {"selectedType": "gemini-api-key"}}, "model": {"name": "gemini-2.5-flash"}}"#,
    )
    .unwrap();
    let codex_home = agent_home.join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "model = \"gpt-5\"\nmodel_provider = \"standin\"\n\n[model_providers.standin]\n\
             name = \"stand-in\"\nbase_url = \"{}/v1\"\nenv_key = \"STANDIN_API_KEY\"\n\
             wire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n",
            api.url()
        ),
    )
    .unwrap();
    let bin = agent_cli(cli);
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let daemon = home.start_with(|command| {
        command
            .env("HOME", &agent_home)
            .env("PATH", &path)
            .env("GOOGLE_GEMINI_BASE_URL", api.url())
            .env("GEMINI_API_KEY", "standin")
            .env("CODEX_HOME", &codex_home)
            .env("STANDIN_API_KEY", "standin");
    });
    let id = home.run_json(&["task", "add", "allocate", "--repo", &repo, "--profile", cli])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_state(&daemon, &id, "complete").await;
    let claims = home.run_json(&["claims"]);
    let allocations = claims["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 1, "{claims:#}");
    assert_eq!(allocations[0]["formatted"], "0001", "{claims:#}");
    assert_eq!(allocations[0]["task_id"], json!(id), "{claims:#}");
    // The model got the tool's answer.
    let answered = api.requests().iter().any(|r| r.body.to_string().contains("0001"));
    assert!(
        answered,
        "{:#?}",
        api.requests().iter().map(|r| r.body.to_string()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn gemini_agent_calls_ccm_mcp_as_installed() {
    allocate_through("gemini", "mcp_ccm_allocate").await;
}

#[tokio::test]
async fn codex_agent_calls_ccm_mcp_as_installed() {
    allocate_through("codex", "mcp__ccm__allocate").await;
}

#[tokio::test]
async fn a_split_task_runs_after_its_parts_and_its_prompt_has_their_results() {
    let (home, repo) = setup("split-run", &format!("profiles:\n{WRITER}"));
    let daemon = home.start();
    let created = home.run_json(&[
        "task",
        "add",
        "two steps",
        "--prompt",
        "Write alpha, then write beta",
        "--repo",
        &repo,
        "--split",
        "--profile",
        "writer",
    ]);
    let parent = created["parent"]["id"].as_str().unwrap_or_else(|| panic!("{created:#}"));
    let detail = wait_state(&daemon, parent, "complete").await;
    let prompt = detail["runs"][0]["prompt"].as_str().unwrap();
    assert!(prompt.contains("Sub-tasks of this task:"), "{prompt}");
    // The writer's last line echoes the last line of its own prompt: each part's result.
    assert!(prompt.contains("`Write alpha`: complete; its last message: (Part 1 of 2"), "{prompt}");
    assert!(prompt.contains("`Write beta`: complete; its last message: (Part 2 of 2"), "{prompt}");
    for sub in detail["subtasks"].as_array().unwrap() {
        assert_eq!(sub["state"], "complete", "{detail:#}");
    }
}

/// A parent's agent: its first run writes its credential and waits for a `release` file in
/// its agent directory (`exit` is the wrapper's); a run whose prompt carries its sub-tasks' results ends at once.
const STEPPER: &str = "  stepper:\n    command: [sh, -c, 'if grep -q \"Sub-tasks of this task\" \"$0\"; then echo resumed; exit 0; fi; printf %s \"$CCM_AGENT_TOKEN\" > \"$CCM_AGENT_DIR/token.tmp\" && mv \"$CCM_AGENT_DIR/token.tmp\" \"$CCM_AGENT_DIR/token\"; while [ ! -e \"$CCM_AGENT_DIR/release\" ]; do sleep 0.05; done', '{prompt_file}']\n    output: plain\n";

#[tokio::test]
async fn a_parent_that_ends_with_an_open_subtask_resumes_with_its_result_once_it_is_complete() {
    // One slot: the sub-task cannot start before the parent's first run ends.
    let (home, repo) = setup(
        "resume-parent",
        &format!(
            "scheduler:\n  slots: 1\ncoordination:\n  resume_parent: true\nprofiles:\n{WRITER}{STEPPER}"
        ),
    );
    let daemon = home.start();
    let added = home.run_json(&[
        "task",
        "add",
        "parent",
        "--prompt",
        "Plan it",
        "--repo",
        &repo,
        "--profile",
        "stepper",
    ]);
    let parent = added["id"].as_str().unwrap().to_string();
    let token = daemon.agent_token(&parent).await;
    let body = json!({ "title": "the part", "prompt": "Write the part", "profile": "writer" });
    let (status, sub) =
        daemon.as_agent(reqwest::Method::POST, &token, "/api/agent/subtasks", body).await;
    assert_eq!(status, 201, "{sub}");

    // The parent's agent ends while its sub-task waits for the slot.
    let agents = daemon.get("/api/agents").await.1;
    let dir = agents.as_array().unwrap().iter().find(|a| a["task_id"] == parent.as_str());
    let dir = dir.and_then(|a| a["dir"].as_str()).unwrap_or_else(|| panic!("{agents:#}"));
    std::fs::write(Path::new(dir).join("release"), "").unwrap();

    let detail = wait_state(&daemon, &parent, "complete").await;
    let runs = detail["runs"].as_array().unwrap();
    let outcomes: Vec<&str> = runs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["subtasks", "success"], "{detail:#}");
    let prompt = runs[1]["prompt"].as_str().unwrap();
    assert!(prompt.contains("Sub-tasks of this task:"), "{prompt}");
    assert!(prompt.contains("`the part`: complete; its last message: result of"), "{prompt}");
    assert_eq!(detail["subtasks"][0]["state"], "complete", "{detail:#}");
    // The wait is in the log, and nothing failed.
    let log = detail["log"].as_array().unwrap();
    let waited = log.iter().any(|e| {
        e["to_state"] == "created" && e["reason"].as_str().unwrap().contains("1 open sub-task")
    });
    assert!(waited, "{detail:#}");
    let states: Vec<&str> = log.iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert!(
        !states.iter().any(|s| ["error", "retry", "failed", "blocked"].contains(s)),
        "{states:?}"
    );
}
