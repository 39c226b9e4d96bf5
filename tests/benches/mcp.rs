//! An MCP tool call from the CLI's side: a `tools/call` over stdio through `ccm mcp` to the
//! daemon's agent API and back, against a `GET /healthz` round trip from the same process to
//! the same daemon, measured in alternating rounds in the same run.
//!
//! Run with `cargo bench -p ccm-tests --bench mcp`. Nothing here asserts on time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use ccm_tests::bench::{machine, print_table, Row, Stats};
use ccm_tests::{git_repo, TestHome, HOLDER_PROFILE};
use serde_json::{json, Value};

const CALLS: usize = 2000;

/// Microseconds: the parts of a call are fractions of a millisecond in release.
fn ms(d: std::time::Duration) -> String {
    format!("{} µs", d.as_micros())
}
const ROUNDS: usize = 10;

#[tokio::main]
async fn main() {
    let machine = machine();
    let home = TestHome::new("bench-mcp");
    home.write_config(&format!("runtime:\n  poll_ms: 50\n{HOLDER_PROFILE}"));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let daemon = home.start();
    let task = home.run_json(&["task", "add", "hold", "--repo", &repo, "--profile", "holder"])
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;

    let mut server = Command::new(ccm_tests::ccm_bin())
        .arg("mcp")
        .env("CCM_HOME", home.home())
        .env("CCM_API", format!("http://{}", daemon.addr))
        .env("CCM_AGENT_TOKEN", &token)
        .env("CCM_TASK_ID", &task)
        .env("CCM_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut send = |message: Value| {
        writeln!(stdin, "{message}").unwrap();
        stdin.flush().unwrap();
    };
    send(json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "bench", "version": "1" } } }));
    lines.next().unwrap().unwrap();
    send(json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }));

    let http = reqwest::Client::new();
    let healthz = format!("http://{}/healthz", daemon.addr);
    let agent = |path: &str| {
        http.get(format!("http://{}{path}", daemon.addr))
            .header("x-ccm-agent-token", &token)
            .header("x-ccm-task-id", &task)
    };
    // Where the time goes: the stdio layer alone (`tools/list`, answered by `ccm mcp` without
    // the daemon), the agent API from this process (credential check alone: `whoami`; the
    // tool's route: `GET /api/agent/subtasks`), the whole call, and the floor.
    let (mut tool, mut health, mut list, mut whoami, mut direct) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut id = 1;
    for _ in 0..ROUNDS {
        for _ in 0..CALLS / ROUNDS {
            id += 1;
            let start = Instant::now();
            send(json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
                         "params": { "name": "list_subtasks", "arguments": {} } }));
            let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            tool.push(start.elapsed());
            assert_ne!(answer["result"]["isError"], true, "{answer}");
        }
        for _ in 0..CALLS / ROUNDS {
            let start = Instant::now();
            let status = http.get(&healthz).send().await.unwrap().status();
            health.push(start.elapsed());
            assert!(status.is_success());
        }
        for _ in 0..CALLS / ROUNDS {
            id += 1;
            let start = Instant::now();
            send(json!({ "jsonrpc": "2.0", "id": id, "method": "tools/list" }));
            let answer: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            list.push(start.elapsed());
            assert!(answer["result"]["tools"].is_array(), "{answer}");
        }
        for (path, samples) in
            [("/api/agent/whoami", &mut whoami), ("/api/agent/subtasks", &mut direct)]
        {
            for _ in 0..CALLS / ROUNDS {
                let start = Instant::now();
                let response = agent(path).send().await.unwrap();
                let status = response.status();
                let _ = response.bytes().await.unwrap();
                samples.push(start.elapsed());
                assert!(status.is_success(), "{path}: {status}");
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let (tool, health) = (Stats::new(tool), Stats::new(health));
    let part = |figure: &str, samples: Vec<std::time::Duration>, what: &str| {
        let stats = Stats::new(samples);
        Row::new(
            figure,
            format!("{} / {}", ms(stats.p50), ms(stats.p99)),
            format!("{} / {} (GET /healthz, same process)", ms(health.p50), ms(health.p99)),
            what,
        )
        .ratio(stats.p50.as_secs_f64(), health.p50.as_secs_f64(), "part")
    };
    let rows = vec![
        Row::new(
            "MCP tools/call list_subtasks (stdio → ccm mcp → agent API), p50 / p99",
            format!("{} / {}", ms(tool.p50), ms(tool.p99)),
            format!("{} / {} (GET /healthz, same process)", ms(health.p50), ms(health.p99)),
            "p50 ≤ 3× GET /healthz",
        )
        .ratio(tool.p50.as_secs_f64(), health.p50.as_secs_f64(), "≤ 3"),
        part("  of which: MCP tools/list (stdio → ccm mcp, no daemon)", list, "breakdown"),
        part("  of which: GET /api/agent/whoami (credential check)", whoami, "breakdown"),
        part("  of which: GET /api/agent/subtasks (the tool's route)", direct, "breakdown"),
    ];
    println!("\n{machine}");
    print_table(&rows);
}
