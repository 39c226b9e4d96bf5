//! Coordination across systems (issue 24): `fleet` named locks and the central's allocators,
//! with two nodes (each its own home, daemon and tmux server) against a real PostgreSQL 15 and
//! postrust (`ccm_tests::fleet`). The agents hold their tasks (`HOLDER_PROFILE`) and call the
//! agent API with their own credentials, as `ccm mcp` does for them.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_tests::fleet::{wait_for, Fleet, Node, NodeOptions};
use ccm_tests::{Api, HOLDER_PROFILE};
use serde_json::{json, Value};

const SLOW: Duration = Duration::from_secs(90);

/// A node of the fleet with a checkout, `slots` agent slots, the holder profile and
/// `sequences: {migrations: ...}` in its checkout's `.ccm/config.yaml`.
fn node(fleet: &Fleet, n: u8, name: &str, slots: u32) -> Node {
    let options = NodeOptions { slots, ..NodeOptions::new("commit") };
    let profiles = HOLDER_PROFILE.strip_prefix("profiles:\n").expect("a profiles section");
    let node = fleet.node_extra(n, name, true, &options, profiles, "");
    let checkout = node.checkout();
    std::fs::create_dir_all(checkout.join(".ccm")).unwrap();
    std::fs::write(
        checkout.join(".ccm/config.yaml"),
        "sequences:\n  migrations:\n    start: 1\n    format: \"{:04}\"\n",
    )
    .unwrap();
    node.up()
}

/// One holding of the lock, as the holder wrote it in the shared file.
#[derive(Debug, Clone)]
struct Held {
    who: String,
    fence: i64,
    start: Duration,
    end: Duration,
}

#[tokio::test]
async fn a_fleet_scoped_lock_is_held_by_one_agent_at_a_time_across_two_nodes_and_a_killed_holders_lease_expires(
) {
    let fleet = Fleet::start();
    let alpha = node(&fleet, 1, "alpha", 4);
    let beta = node(&fleet, 2, "beta", 4);
    let mut agents = Vec::new();
    for (name, node) in [("alpha", &alpha), ("beta", &beta)] {
        for i in 0..2 {
            let (_, token) = node.holder().await;
            agents.push((format!("{name}-{i}"), node.daemon().api.clone(), token));
        }
    }

    // Four agents, two per node, take `build` three times each, at once; each holder writes
    // its fencing token to a shared file when it starts and ends its work.
    let shared = fleet.dir.path().join("build.log");
    let file = Arc::new(Mutex::new(std::fs::File::create(&shared).unwrap()));
    let started = Instant::now();
    let runs = agents.iter().cloned().map(|(who, api, token)| {
        let file = file.clone();
        tokio::spawn(async move {
            let mut grants = Vec::new();
            for _ in 0..3 {
                let body = json!({ "ttl_secs": 30, "wait_secs": 60, "scope": "fleet" });
                let (status, grant) = api
                    .as_agent(reqwest::Method::POST, &token, "/api/agent/locks/build", body)
                    .await;
                assert_eq!(status, 200, "{who}: {grant}");
                assert_eq!(grant["scope"], "fleet", "{grant}");
                let fence = grant["fence"].as_i64().expect("a fencing token");
                let line = |what: &str| {
                    format!("{what} {fence} {who} {}\n", started.elapsed().as_micros())
                };
                file.lock().unwrap().write_all(line("start").as_bytes()).unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
                file.lock().unwrap().write_all(line("end").as_bytes()).unwrap();
                let (status, answer) = api
                    .as_agent(reqwest::Method::DELETE, &token, "/api/agent/locks/build", json!({}))
                    .await;
                assert_eq!(status, 200, "{who}: {answer}");
                grants.push(fence);
            }
            grants
        })
    });
    let mut fences = Vec::new();
    for run in runs {
        fences.extend(run.await.unwrap());
    }

    // Twelve holdings that never overlap, with twelve distinct fencing tokens, growing.
    let text = std::fs::read_to_string(&shared).unwrap();
    let lines: Vec<Vec<String>> =
        text.lines().map(|l| l.split(' ').map(str::to_string).collect()).collect();
    assert_eq!(lines.len(), 24, "{text}");
    let mut held = Vec::new();
    for pair in lines.chunks(2) {
        assert_eq!(pair[0][0], "start", "{text}");
        assert_eq!(pair[1][0], "end", "{text}");
        assert_eq!(pair[0][1..3], pair[1][1..3], "one holder starts and ends: {text}");
        let micros = |l: &Vec<String>| Duration::from_micros(l[3].parse().unwrap());
        held.push(Held {
            who: pair[0][2].clone(),
            fence: pair[0][1].parse().unwrap(),
            start: micros(&pair[0]),
            end: micros(&pair[1]),
        });
    }
    for w in held.windows(2) {
        assert!(w[1].fence > w[0].fence, "fencing tokens grow: {held:?}");
        assert!(w[1].start >= w[0].end, "no overlap: {held:?}");
    }
    fences.sort_unstable();
    fences.dedup();
    assert_eq!(fences.len(), 12, "{fences:?}");
    let systems: std::collections::BTreeSet<&str> =
        held.iter().map(|h| h.who.split('-').next().unwrap()).collect();
    assert_eq!(systems.len(), 2, "both systems held it: {held:?}");

    // An agent of alpha holds it with an 8 s lease; alpha is killed; beta's agent waits (seen
    // in beta's `ccm claims`, held by alpha) and holds it once the lease ran out.
    let (_, alpha_api, alpha_token) = agents[0].clone();
    let body = json!({ "ttl_secs": 8, "wait_secs": 10, "scope": "fleet" });
    let (status, last) = alpha_api
        .as_agent(reqwest::Method::POST, &alpha_token, "/api/agent/locks/build", body)
        .await;
    assert_eq!(status, 200, "{last}");
    let mut alpha = alpha;
    alpha.crash();
    let killed = Instant::now();
    let (_, beta_api, beta_token) = agents[2].clone();
    let waiter = tokio::spawn(async move {
        let body = json!({ "ttl_secs": 30, "wait_secs": 30, "scope": "fleet" });
        let answer = beta_api
            .as_agent(reqwest::Method::POST, &beta_token, "/api/agent/locks/build", body)
            .await;
        (answer, killed.elapsed())
    });
    let claims = wait_for("beta's waiter in ccm claims", SLOW, async || {
        let claims = beta.home.run_json(&["claims"]);
        let lock = claims["locks"].as_array()?.iter().find(|l| l["name"] == "build")?.clone();
        (lock["waiters"].as_str().is_some() && lock["fleet_holder"] == "alpha").then_some(lock)
    })
    .await;
    assert_eq!(claims["scope"], "fleet", "{claims:#}");
    let ((status, grant), waited) = waiter.await.unwrap();
    assert_eq!(status, 200, "{grant}");
    assert!(grant["fence"].as_i64() > last["fence"].as_i64(), "{grant} after {last}");
    assert!(waited <= Duration::from_secs(11), "released within the 8 s lease: {waited:?}");
    assert!(waited >= Duration::from_secs(2), "not before the lease ran out: {waited:?}");
    let row = fleet.central.pg.rows(
        "select l.fence, s.name from private.named_leases l join private.systems s \
         on s.system_id = l.holder where l.name = 'lock:build'",
    );
    assert_eq!(row[0]["name"], "beta", "{row}");
    assert_eq!(row[0]["fence"], grant["fence"], "{row}");

    // The same through `ccm mcp` (the tool an agent's CLI calls): refused while held, granted
    // with the next fencing token once its holder unlocked.
    let (_, api, holder_token) = agents[2].clone();
    let (_, _, token) = agents[3].clone();
    let args = json!({ "name": "build", "scope": "fleet", "ttl": 30, "wait_secs": 0 });
    let busy = mcp_call(&api, &token, "lock", args.clone());
    assert_eq!(busy["isError"], true, "{busy}");
    assert!(busy.to_string().contains("is held by another holder"), "{busy}");
    let (status, _) = api
        .as_agent(reqwest::Method::DELETE, &holder_token, "/api/agent/locks/build", json!({}))
        .await;
    assert_eq!(status, 200);
    let took = mcp_call(&api, &token, "lock", args);
    assert_ne!(took["isError"], true, "{took}");
    let text: Value =
        serde_json::from_str(took["content"][0]["text"].as_str().expect("a text block")).unwrap();
    assert_eq!(text["scope"], "fleet", "{text}");
    assert_eq!(text["fence"].as_i64(), grant["fence"].as_i64().map(|f| f + 1), "{text}");
}

/// Calls one tool of `ccm mcp` over stdio as the agent of `token`; the call's result.
fn mcp_call(api: &Api, token: &str, tool: &str, arguments: Value) -> Value {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(ccm_tests::ccm_bin())
        .arg("mcp")
        .env("CCM_API", format!("http://{}", api.addr))
        .env("CCM_AGENT_TOKEN", token)
        .env_remove("CCM_TASK_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ccm mcp starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut send = |message: Value| {
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    };
    send(json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "test", "version": "1" } } }));
    let _init = lines.next().expect("an answer").unwrap();
    send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));
    send(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                 "params": { "name": tool, "arguments": arguments } }));
    let answer: Value = serde_json::from_str(&lines.next().expect("an answer").unwrap()).unwrap();
    drop(stdin);
    let _ = child.wait();
    answer["result"].clone()
}

#[tokio::test]
async fn twenty_allocations_across_two_nodes_are_distinct_and_gap_free() {
    let fleet = Fleet::start();
    let alpha = node(&fleet, 1, "alpha", 12);
    let beta = node(&fleet, 2, "beta", 12);
    let mut agents = Vec::new();
    for node in [&alpha, &beta] {
        for _ in 0..10 {
            let (task, token) = node.holder().await;
            agents.push((task, node.daemon().api.clone(), token));
        }
    }

    // Twenty agents ask at once: twenty distinct values, 0001 to 0020.
    let calls = agents.iter().cloned().map(|(task, api, token)| {
        tokio::spawn(async move {
            let body = json!({ "sequence": "migrations" });
            let (status, answer) =
                api.as_agent(reqwest::Method::POST, &token, "/api/agent/allocations", body).await;
            assert_eq!(status, 201, "{answer}");
            assert_eq!(answer["task_id"], json!(task), "{answer}");
            (task, answer["formatted"].as_str().expect("a value").to_string())
        })
    });
    let mut got = Vec::new();
    for call in calls {
        got.push(call.await.unwrap());
    }
    let mut values: Vec<String> = got.iter().map(|(_, v)| v.clone()).collect();
    values.sort();
    let expected: Vec<String> = (1..=20).map(|n| format!("{n:04}")).collect();
    assert_eq!(values, expected);

    // Recorded with the task that got each value, here and on the central.
    let central = fleet.central.pg.rows(
        "select a.value, a.task_id, s.name from private.allocations a \
         join private.systems s using (system_id) where a.state = 'held' order by a.value",
    );
    assert_eq!(central.as_array().unwrap().len(), 20, "{central}");
    for (task, value) in &got {
        let number: i64 = value.parse().unwrap();
        let row = central.as_array().unwrap().iter().find(|r| r["value"] == number).unwrap();
        assert_eq!(row["task_id"], json!(task), "{row}");
    }
    let alpha_held: Vec<i64> = central
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "alpha")
        .map(|r| r["value"].as_i64().unwrap())
        .collect();
    assert_eq!(alpha_held.len(), 10, "{central}");
    let local = alpha.home.run_json(&["claims"]);
    assert_eq!(local["allocations"].as_array().unwrap().len(), 10, "{local:#}");

    // alpha dies holding ten values: beta sees them held by alpha, and never hands them out...
    let mut alpha = alpha;
    alpha.crash();
    let claims = beta.home.run_json(&["claims"]);
    let fleet_held: Vec<&Value> = claims["fleet_allocations"]
        .as_array()
        .expect("the central's allocations in ccm claims")
        .iter()
        .filter(|a| a["state"] == "held" && a["system"] == "alpha")
        .collect();
    assert_eq!(fleet_held.len(), 10, "{claims:#}");
    let repo = beta.checkout().to_string_lossy().into_owned();
    let api = &beta.daemon().api;
    let next =
        api.post("/api/allocations", json!({ "repo": repo, "sequence": "migrations" })).await;
    assert_eq!(next.0, 201, "{next:?}");
    assert_eq!(next.1["formatted"], "0021", "{next:?}");

    // ...until it is released (here by the operator on beta); then it is the next one given.
    let freed = format!("{:04}", alpha_held[3]);
    let released = api
        .post(
            "/api/allocations/release",
            json!({ "repo": repo, "sequence": "migrations", "value": freed }),
        )
        .await;
    assert_eq!(released.0, 200, "{released:?}");
    assert_eq!(released.1["state"], "released", "{released:?}");
    let again =
        api.post("/api/allocations", json!({ "repo": repo, "sequence": "migrations" })).await;
    assert_eq!(again.1["formatted"], json!(freed), "{again:?}");
    let twice = api
        .post(
            "/api/allocations/release",
            json!({ "repo": repo, "sequence": "migrations", "value": "0099" }),
        )
        .await;
    assert_eq!(twice.0, 409, "{twice:?}");
    assert!(twice.1["error"]["message"].as_str().unwrap().contains("is not held"), "{twice:?}");
}

#[tokio::test]
async fn a_subtask_runs_on_a_second_node_that_holds_the_repository() {
    let fleet = Fleet::start();
    // alpha's one slot is its parent's; beta holds the repository too, with free slots.
    let alpha = node(&fleet, 1, "alpha", 1);
    let beta = node(&fleet, 2, "beta", 2);
    wait_for("both systems' contexts on the central", SLOW, async || {
        (fleet.has_context("alpha") && fleet.has_context("beta")).then_some(())
    })
    .await;
    let (parent, token) = alpha.holder().await;
    let api = alpha.daemon().api.clone();
    let body = json!({ "title": "part on another machine", "prompt": "do it", "profile": "fake" });
    let (status, created) =
        api.as_agent(reqwest::Method::POST, &token, "/api/agent/subtasks", body).await;
    assert_eq!(status, 202, "routed, as any task placed with no free slot here: {created}");
    assert_eq!(created["parent"], json!(parent), "{created}");
    let id = created["id"].as_str().expect("the sub-task's id").to_string();

    // beta claims it, runs it and completes it; alpha's parent sees it complete, on beta.
    wait_for("the sub-task done on beta", SLOW, async || {
        let row = fleet.task(&id);
        (row["state"] == "done").then_some(row)
    })
    .await;
    assert!(beta.local(&id).await.is_some(), "beta ran it: {}", beta.log());
    // The parent's tree (`ccm task show`) follows the central's word on it.
    let seen = wait_for("the parent's view of its routed sub-task", SLOW, async || {
        let shown = alpha.home.run_json(&["task", "show", &parent]);
        let sub = shown["subtasks"].as_array()?.iter().find(|s| s["id"] == json!(id))?.clone();
        (sub["state"] == "complete").then_some(sub)
    })
    .await;
    assert_eq!(seen["routed"], true, "{seen}");
    assert_eq!(seen["system"], "beta", "{seen}");
    // The parent's agent sees the same through the agent API.
    let (status, subtasks) =
        api.as_agent(reqwest::Method::GET, &token, "/api/agent/subtasks", Value::Null).await;
    assert_eq!(status, 200, "{subtasks}");
    let sub = subtasks.as_array().and_then(|s| s.iter().find(|s| s["id"] == json!(id)));
    assert_eq!(sub.map(|s| s["state"].clone()), Some(json!("complete")), "{subtasks}");
    let shown = alpha.home.run_json(&["task", "show", &parent]);
    let tree = shown["subtasks"].as_array().expect("the tree in task show");
    assert_eq!(tree.len(), 1, "{shown:#}");
    assert_eq!(tree[0]["title"], "part on another machine", "{shown:#}");

    // Cancelling the parent cancels its routed sub-task still running on beta.
    let body = json!({ "title": "long part", "profile": "holder" });
    let (status, long) =
        api.as_agent(reqwest::Method::POST, &token, "/api/agent/subtasks", body).await;
    assert_eq!(status, 202, "{long}");
    let long = long["id"].as_str().unwrap().to_string();
    wait_for("the long part running on beta", SLOW, async || {
        let row = fleet.task(&long);
        (row["state"] == "running" || row["state"] == "leased").then_some(())
    })
    .await;
    alpha.home.run_ok(&["task", "cancel", &parent]);
    wait_for("the routed sub-task cancelled", SLOW, async || {
        let row = fleet.task(&long);
        (row["state"] == "cancelled").then_some(())
    })
    .await;
}

/// A sub-task's agent on either node: works a moment (so its sibling is created while it
/// runs), writes a file named after its task, commits it, and says what it did.
const SLOW_WRITER: &str = "  writer:\n    command: [sh, -c, 'sleep 2 && echo \"$0\" > \"out-$CCM_TASK_ID.txt\" && git add -A && git commit -qm \"part ($CCM_TASK_ID)\" && echo \"result of $0\"', '{prompt}']\n    output: plain\n";

/// Issue 24, acceptance 1, across two systems with the real Claude Code: the parent's agent on
/// alpha creates two sub-tasks through `ccm mcp`, the second depending on the first. The first
/// takes alpha's free slot; the second finds none and is routed, its submission held on alpha
/// until the first is complete (the central knows no dependencies), then run by beta, which
/// holds the repository. The parent's verify fails once (a marker file), so it gets a next
/// attempt, whose prompt carries both results.
#[tokio::test]
async fn claude_agent_creates_dependent_subtasks_one_runs_on_a_second_node_and_the_next_attempt_sees_their_results(
) {
    use ccm_tests::standin::anthropic::{Anthropic, Turn};
    let fleet = Fleet::start();
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
        Turn::tool("mcp__ccm__wait_subtasks", json!({ "timeout_secs": 150 })),
        Turn::text("Both parts are done."),
        Turn::text("I read both parts' results."),
    ]);
    // alpha: two slots, the parent's and one for a sub-task; beta: the same repository.
    let options = NodeOptions { slots: 2, ..NodeOptions::new("commit") };
    let alpha = fleet
        .node_extra(1, "alpha", true, &options, SLOW_WRITER, "")
        .up_with(|home, command| api.claude_env(home, command));
    let beta = fleet.node_extra(2, "beta", true, &options, SLOW_WRITER, "").up();
    wait_for("both systems' contexts on the central", SLOW, async || {
        (fleet.has_context("alpha") && fleet.has_context("beta")).then_some(())
    })
    .await;

    let marker = fleet.dir.path().join("verified-once");
    let verify = format!("test -e {0} || {{ touch {0}; exit 1; }}", marker.display());
    let repo = alpha.checkout().to_string_lossy().into_owned();
    let added = alpha.home.run_json(&[
        "task",
        "add",
        "split the work",
        "--repo",
        &repo,
        "--profile",
        "claude",
        "--verify",
        &verify,
    ]);
    let parent = added["id"].as_str().unwrap_or_else(|| panic!("{added:#}")).to_string();
    let daemon = alpha.daemon();
    let detail = || async { daemon.get(&format!("/api/tasks/{parent}")).await.1 };
    let complete = ccm_tests::wait_until(Duration::from_secs(240), || async {
        detail().await["state"] == "complete"
    })
    .await;
    let shown = detail().await;
    assert!(
        complete,
        "the parent never completed: {shown:#}\n{}\n--- alpha:\n{}\n--- beta:\n{}",
        crate::coordination::agent_outputs(daemon).await,
        alpha.log(),
        beta.log()
    );

    // Two sub-tasks: the first ran here, the second on beta after the first completed.
    let subtasks = shown["subtasks"].as_array().expect("sub-tasks in the task's detail").clone();
    assert_eq!(subtasks.len(), 2, "{shown:#}");
    let (first, second) = (&subtasks[0], &subtasks[1]);
    assert_eq!(first["title"], "first part", "{shown:#}");
    assert_eq!(second["title"], "second part", "{shown:#}");
    assert_eq!(first["routed"], Value::Null, "the first ran on alpha: {shown:#}");
    assert_eq!(second["routed"], true, "{shown:#}");
    assert_eq!(second["system"], "beta", "{shown:#}");
    assert_eq!(second["depends_on"], json!([first["id"]]), "{shown:#}");
    for sub in [first, second] {
        assert_eq!(sub["state"], "complete", "{shown:#}");
    }
    let second_id = second["id"].as_str().unwrap();
    let on_beta = beta.local(second_id).await.unwrap_or_else(|| panic!("{}", beta.log()));
    let runs: Vec<String> =
        fleet.attempts(second_id).into_iter().map(|(system, _, _)| system).collect();
    assert_eq!(runs, ["beta"], "{on_beta:#}");
    let first_done = alpha.home.run_json(&["task", "show", first["id"].as_str().unwrap()]);
    let at = |t: &Value, state: &str| {
        let entry = t["log"].as_array().unwrap().iter().find(|e| e["to_state"] == state).cloned();
        let at = entry.unwrap_or_else(|| panic!("no {state} in {t:#}"))["at"].clone();
        humantime::parse_rfc3339(at.as_str().unwrap()).unwrap()
    };
    assert!(at(&on_beta, "queued") >= at(&first_done, "complete"), "{on_beta:#}");

    // The parent's next attempt: its prompt (the first request of its agent) lists both
    // sub-tasks with what their agents said.
    let attempts = shown["runs"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(attempts, 2, "{shown:#}");
    let prompt = shown["runs"][1]["prompt"].as_str().unwrap_or_default().to_string();
    let requests: Vec<String> = api.requests().iter().map(Value::to_string).collect();
    let asked = requests
        .iter()
        .find(|r| r.contains("Sub-tasks of this task:"))
        .unwrap_or_else(|| panic!("no request with the sub-tasks: {prompt}\n{requests:#?}"));
    for (title, result) in [("first part", "result of alpha"), ("second part", "result of beta")] {
        let line = format!("`{title}`: complete; its last message: {result}");
        assert!(asked.contains(&line), "{line} not in {asked}");
    }

    // The calls went through the CLI's MCP tool names (its hooks saw them).
    let (tools, events) = daemon.tool_calls(&parent).await;
    assert_eq!(
        tools,
        ["mcp__ccm__create_subtask", "mcp__ccm__create_subtask", "mcp__ccm__wait_subtasks"],
        "{events:#}"
    );

    // The tree, as the operator reads it.
    let text = alpha.home.run_ok(&["task", "show", &parent]);
    let line = |title: &str| text.lines().find(|l| l.contains(title)).unwrap_or_default();
    let first_id = &first["id"].as_str().unwrap()[..8];
    assert!(text.contains("sub-tasks:"), "{text}");
    assert!(line("first part").contains(first_id), "{text}");
    assert!(line("first part").contains("complete"), "{text}");
    assert!(line("second part").contains(&second_id[..8]), "{text}");
    assert!(line("second part").contains(&format!("(after {first_id})")), "{text}");
    assert!(line("second part").contains("on beta"), "{text}");
}
