//! The sync engine end to end: the real daemon and CLI ship their outbox to a real central
//! (PostgreSQL 15 with `supabase/`, postrust in front, `ccm_tests::central`) through a fault
//! proxy on loopback (`ccm_tests::faultproxy`) that adds latency, resets connections, drops
//! answers after the server committed, and answers 429, 503 and 413 itself. Nothing is mocked:
//! identities are Supabase JWTs signed with postrust's secret, and what the central holds is read
//! from PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ccm_tests::central::{self, Central};
use ccm_tests::faultproxy::{Fault, FaultProxy};
use ccm_tests::{open_db, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

const OWNER: &str = "00000000-0000-4000-8000-0000000000f1";
const SYSTEM: &str = "00000000-0000-4000-8000-0000000000a1";
const OTHER_SYSTEM: &str = "00000000-0000-4000-8000-0000000000b1";

/// A node configured to sync to `central` through a fault proxy, enrolled with a system JWT the
/// operator minted. `sync` is extra YAML under `sync:` (timers, thresholds).
struct Node {
    home: TestHome,
    daemon: Option<Daemon>,
    proxy: FaultProxy,
}

impl Node {
    fn start(name: &str, central: &Central, sync: &str) -> Node {
        let home = TestHome::new(name);
        let proxy = FaultProxy::start(&central.rest_url(), "rpc/ingest_batch");
        home.write_config(&format!(
            "scheduler:\n  slots: 20\nsync:\n  rest_url: {}\n  publishable_key: {}\n{sync}",
            proxy.url(),
            central.anon_key()
        ));
        let daemon = home.start();
        let node = Node { home, daemon: Some(daemon), proxy };
        node.enroll(&central.system_token(SYSTEM, OWNER));
        node
    }

    fn enroll(&self, jwt: &str) {
        let out = self.home.run_ok(&["sync", "enroll", "--jwt", jwt]);
        assert!(out.contains("enrolled as"), "{out}");
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    fn lanes(&self) -> Value {
        self.home.run_json(&["sync", "status"])
    }

    /// Waits until both lanes have no backlog, asking for `ccm sync now` every second (rows
    /// written after a batch was sealed wait for the next one).
    async fn drained(&self, timeout: Duration) {
        let mut asked = Instant::now();
        let drained = wait_until(timeout, || {
            if asked.elapsed() > Duration::from_secs(1) {
                self.home.run_ok(&["sync", "now"]);
                asked = Instant::now();
            }
            async {
                let lanes = self.lanes();
                lanes["urgent"]["backlog"] == 0 && lanes["normal"]["backlog"] == 0
            }
        })
        .await;
        assert!(drained, "the outbox did not drain: {}\n{}", self.lanes(), self.log());
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log_text).unwrap_or_default()
    }

    /// The ingest requests the proxy saw, with their batch.
    fn batches(&self) -> Vec<Value> {
        self.proxy.targeted().iter().map(|s| s.json()["p_batch"].clone()).collect()
    }
}

async fn create(daemon: &Daemon, title: &str) -> String {
    let (status, task) = daemon.post("/api/tasks", json!({ "title": title, "prompt": "p" })).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().expect("id").to_string()
}

async fn event(daemon: &Daemon, id: &str, event: Value) -> Value {
    let (status, body) = daemon.post(&format!("/api/tasks/{id}/events"), event).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn wait_queued(daemon: &Daemon, id: &str) {
    let queued = wait_until(Duration::from_secs(10), || async {
        daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "queued"
    })
    .await;
    assert!(queued, "task {id} was not queued");
}

/// Drives a queued task to `complete` the way the runtime does.
async fn complete(daemon: &Daemon, id: &str) {
    for name in ["start", "worker_finished", "verify_passed"] {
        event(daemon, id, json!({ "event": name })).await;
    }
    let done = event(daemon, id, json!({ "event": "report_ready", "supervised": false })).await;
    assert_eq!(done["state"], "complete");
}

/// Fails a queued task for good: a critical `fatal_error` alert, in the urgent lane.
async fn fail(daemon: &Daemon, id: &str) {
    event(daemon, id, json!({ "event": "start" })).await;
    let failed = event(daemon, id, json!({ "event": "failed", "class": "fatal" })).await;
    assert_eq!(failed["state"], "failed");
}

/// `task_id → (version, state)` of every task the central holds.
fn central_tasks(central: &Central) -> BTreeMap<String, (i64, String)> {
    central
        .pg
        .rows("select task_id, version, state from private.task_summaries")
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let version = r["version"].as_i64().expect("version");
            (
                r["task_id"].as_str().unwrap().to_string(),
                (version, r["state"].as_str().unwrap().to_string()),
            )
        })
        .collect()
}

/// `task_id → (version, state)` of every local task, read from the node's database.
async fn local_tasks(home: &TestHome) -> BTreeMap<String, (i64, String)> {
    let mut db = open_db(&home.db_file()).await;
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT id, version, state FROM tasks").fetch_all(&mut db).await.unwrap();
    rows.into_iter().map(|(id, version, state)| (id, (version, state))).collect()
}

/// The central holds exactly the local tasks, each at its local version and state.
async fn assert_central_equals_local(central: &Central, home: &TestHome) {
    let (central, local) = (central_tasks(central), local_tasks(home).await);
    let differ: Vec<_> = local
        .iter()
        .filter(|(id, task)| central.get(*id) != Some(*task))
        .map(|(id, task)| format!("{id}: local {task:?}, central {:?}", central.get(id)))
        .chain(
            central
                .keys()
                .filter(|id| !local.contains_key(*id))
                .map(|id| format!("{id}: not local")),
        )
        .collect();
    assert!(
        differ.is_empty(),
        "{} tasks differ, first: {:?}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
}

async fn local_alerts(home: &TestHome) -> BTreeSet<String> {
    let mut db = open_db(&home.db_file()).await;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM alerts").fetch_all(&mut db).await.unwrap();
    rows.into_iter().map(|(id,)| id).collect()
}

fn central_alerts(central: &Central) -> BTreeSet<String> {
    let text = central.pg.query("select alert_id from private.alerts where origin = 'node'");
    text.lines().map(str::to_string).collect()
}

/// Each batch the node acknowledged was applied once, and the central applied no other: the
/// ledger holds exactly the acknowledged batch ids, with the same item counts; no sequence
/// gap was seen. A batch in flight (applied, its answer not yet stored) settles within the
/// wait; a batch applied and never acknowledged, or acknowledged and never applied, does not.
async fn assert_applied_exactly_once(central: &Central, home: &TestHome) {
    let read = || async {
        let mut db = open_db(&home.db_file()).await;
        let acked: Vec<(String, i64)> =
            sqlx::query_as("SELECT batch_id, items FROM outbox_batch WHERE state = 'acked'")
                .fetch_all(&mut db)
                .await
                .unwrap();
        let ledger: BTreeMap<String, i64> = central
            .pg
            .rows("select batch_id, items from private.ingest_ledger")
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["batch_id"].as_str().unwrap().to_string(), r["items"].as_i64().unwrap()))
            .collect();
        (acked.into_iter().collect::<BTreeMap<_, _>>(), ledger)
    };
    let settled = wait_until(Duration::from_secs(10), || async {
        let (acked, ledger) = read().await;
        acked == ledger
    })
    .await;
    if !settled {
        let (acked, ledger) = read().await;
        assert_eq!(acked, ledger, "acknowledged batches and the central ledger differ");
    }
    let gaps = central.pg.query("select count(*) from private.alerts where kind = 'sync_gap'");
    assert_eq!(gaps, "0", "the central saw a sequence gap");
}

/// Per task, the versions the batches of `lane` carried never go down, in send order.
fn assert_versions_in_order(batches: &[Value], lane: &str) {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for batch in batches.iter().filter(|b| b["lane"] == lane) {
        for item in batch["streams"]["task_summary"].as_array().into_iter().flatten() {
            let id = item["task_id"].as_str().unwrap().to_string();
            let version = item["version"].as_i64().unwrap();
            let before = last.insert(id.clone(), version).unwrap_or(0);
            assert!(version >= before, "task {id}: version {version} sent after {before}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_life_and_its_alerts_ship_critical_at_once_and_the_rest_on_a_threshold() {
    let central = Central::start();
    let node = Node::start("sync-life", &central, "  interval_secs: 3600\n  completions: 2\n");
    let daemon = node.daemon();

    let done = create(daemon, "finishes").await;
    wait_queued(daemon, &done).await;
    complete(daemon, &done).await;

    let doomed = create(daemon, "fails").await;
    wait_queued(daemon, &doomed).await;
    fail(daemon, &doomed).await;
    let failed_at = Instant::now();
    let alert_query = "select kind || ' ' || severity from private.alerts where origin = 'node'";
    while central.pg.query(alert_query).is_empty() {
        assert!(failed_at.elapsed() < Duration::from_secs(5), "no alert: {}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let latency = failed_at.elapsed();
    assert!(latency < Duration::from_secs(1), "the critical alert took {latency:?}");
    assert_eq!(central.pg.query(alert_query), "fatal_error critical");
    let tasks = central_tasks(&central);
    assert_eq!(tasks[&doomed].1, "failed", "the failed task travels with its alert");

    // One completion is under the threshold of two: the finished task waits in the normal lane.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!central_tasks(&central).contains_key(&done), "a normal item went before its time");
    assert!(node.batches().iter().all(|b| b["lane"] == "urgent"));
    assert!(node.lanes()["normal"]["backlog"].as_i64().unwrap() >= 1);

    let second = create(daemon, "crosses the threshold").await;
    wait_queued(daemon, &second).await;
    complete(daemon, &second).await;
    node.drained(Duration::from_secs(10)).await;
    let local = local_tasks(&node.home).await;
    let tasks = central_tasks(&central);
    for id in [&done, &doomed, &second] {
        assert_eq!(tasks[id], local[id], "task {id}: central differs from local");
    }
    assert_eq!(tasks[&done].1, "complete");
    // coalesced: one normal batch carried every version of both completed tasks
    let normal: Vec<_> = node.batches().into_iter().filter(|b| b["lane"] == "normal").collect();
    assert_eq!(normal.len(), 1, "{normal:?}");
    assert_applied_exactly_once(&central, &node.home).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_tasks_cost_and_tokens_reach_the_centrals_task_rows_and_daily_cost() {
    let central = Central::start();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh");
    let profile = |name: &str, mode: &str| {
        format!(
            "  {name}:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: {mode}}}\n",
            fixture.display()
        )
    };
    let extra = format!(
        "  interval_secs: 3600\nruntime:\n  poll_ms: 50\nworkflows:\n  reviewed:\n    steps:\n\
         \x20     - role: worker\n        prompt: '{{prompt}}'\n\
         \x20     - role: supervisor\n        profile: reviewer\n        prompt: 'Review {{title}}: {{report}}'\n\
         profiles:\n{}{}",
        profile("fake", "commit"),
        profile("reviewer", "review")
    );
    let node = Node::start("sync-cost", &central, &extra);
    let repo = node.home.work().join("app");
    ccm_tests::git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    node.home.run_ok(&["context", "add", &repo]);
    let args = ["task", "add", "write work.txt", "--profile", "fake", "--repo", &repo];
    let added = node.home.run_json(&[&args[..], &["--workflow", "reviewed"]].concat());
    let id = added["id"].as_str().expect("id").to_string();
    let daemon = node.daemon();
    let done = wait_until(Duration::from_secs(60), || async {
        daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "complete"
    })
    .await;
    assert!(done, "{}", node.log());
    node.drained(Duration::from_secs(15)).await;

    // the worker reported $0.0123 and the reviewer $0.002, each 100 tokens in and 20 out
    let rows = central.pg.rows(&format!(
        "select state, cost_usd::float8 as cost, input_tokens, output_tokens \
         from private.task_summaries where task_id = '{id}'"
    ));
    assert_eq!(
        rows,
        json!([{ "state": "complete", "cost": 0.0143, "input_tokens": 200, "output_tokens": 40 }])
    );
    let fleet = central.pg.rows(&format!(
        "select cost_usd::float8 as cost from api.fleet_tasks where task_id = '{id}'"
    ));
    assert_eq!(fleet, json!([{ "cost": 0.0143 }]));
    let daily = central
        .pg
        .rows("select cost_usd::float8 as cost, input_tokens, output_tokens from api.daily_cost");
    assert_eq!(daily, json!([{ "cost": 0.0143, "input_tokens": 200, "output_tokens": 40 }]));
    let systems = node.home.run_json(&["systems"]);
    let cost_today = systems[0]["cost_today"].as_f64();
    assert_eq!(cost_today, Some(0.0143), "`ccm systems` cost today: {systems}");
    let shown = node.home.run_ok(&["systems"]);
    assert!(shown.contains("$0.01"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_items_go_on_the_systems_timer_without_being_asked() {
    let central = Central::start();
    let node = Node::start("sync-timer", &central, "  interval_secs: 2\n");
    let id = create(node.daemon(), "on the timer").await;
    wait_queued(node.daemon(), &id).await;
    // the first period is a per-system fraction of the interval, the next ones 2 s ± 10 %
    let arrived = wait_until(Duration::from_secs(6), || async {
        central_tasks(&central).get(&id).is_some_and(|t| t.1 == "queued")
    })
    .await;
    assert!(arrived, "the timer did not send: {}", node.log());
    assert!(node.batches().iter().all(|b| b["lane"] == "normal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_resend_the_same_batch_until_it_is_applied_once() {
    let central = Central::start();
    let node = Node::start("sync-faults", &central, "  interval_secs: 3600\n");
    let daemon = node.daemon();
    for fault in [
        Fault::DropResponse,
        Fault::Reset,
        Fault::Answer { status: 503, retry_after: None },
        Fault::Answer { status: 429, retry_after: Some(1) },
        Fault::Answer { status: 503, retry_after: Some(1) },
        Fault::Delay(Duration::from_millis(300)),
    ] {
        node.proxy.push(fault);
    }
    let id = create(daemon, "doomed").await;
    wait_queued(daemon, &id).await;
    fail(daemon, &id).await;

    let delivered =
        wait_until(Duration::from_secs(30), || async { node.lanes()["urgent"]["backlog"] == 0 })
            .await;
    assert!(delivered, "{}", node.log());
    let seen = node.proxy.targeted();
    assert_eq!(seen.len(), 6, "five faults, then the delayed request that went through");
    assert!(seen.iter().all(|s| s.body == seen[0].body), "every retry sends the same bytes");
    for (i, s) in seen.iter().enumerate().skip(1) {
        if let Some(Fault::Answer { retry_after: Some(secs), .. }) = seen[i - 1].fault {
            let waited = s.at - seen[i - 1].at;
            assert!(waited >= Duration::from_secs(secs), "Retry-After not honoured: {waited:?}");
        }
    }
    // The first attempt was committed by the server: every later one was a duplicate.
    let batch_id = seen[0].json()["p_batch"]["batch_id"].as_str().unwrap().to_string();
    assert_eq!(central.pg.query("select batch_id from private.ingest_ledger"), batch_id);
    assert_eq!(central_tasks(&central)[&id].1, "failed");
    let lanes = node.lanes();
    assert_eq!(lanes["urgent"]["last_error"], Value::Null, "a success clears the error");
    assert!(lanes["urgent"]["last_ok_at"].is_string(), "{lanes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_down_while_ten_thousand_changes_happen_then_each_applies_once_in_order() {
    let mut central = Central::start();
    let node = Node::start("sync-outage", &central, "  interval_secs: 3600\n");
    central.stop_rest();

    // 10,000 changes while the central is down: 5,000 creations from 25 clients at once and
    // their 5,000 admissions by the scheduler (the `manual` profile holds no slot), with a few
    // failures whose alerts go to the urgent lane.
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..25 {
        let api = node.daemon().api.clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..200 {
                let (status, task) =
                    api.post("/api/tasks", json!({ "title": format!("t{client}-{i}") })).await;
                assert_eq!(status, 201, "the node keeps working: {task}");
                ids.push(task["id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    let admitted = wait_until(Duration::from_secs(180), || async {
        let (_, status) = node.daemon().get("/api/status").await;
        status["tasks"]["queued"] == 5000
    })
    .await;
    assert!(admitted, "{}", node.daemon().get("/api/status").await.1);
    for id in &ids[..3] {
        fail(node.daemon(), id).await;
    }
    eprintln!("10,000 local changes during the outage in {:?}", started.elapsed());
    node.home.run_ok(&["sync", "now"]);
    let failing = wait_until(Duration::from_secs(10), || async {
        let lanes = node.lanes();
        lanes["normal"]["last_error"].is_string() && lanes["urgent"]["last_error"].is_string()
    })
    .await;
    assert!(failing, "sync did not try while the central was down: {}", node.lanes());
    let lanes = node.lanes();
    assert!(lanes["normal"]["backlog"].as_i64().unwrap() >= 5_000, "{lanes}");
    let status = node.home.run_ok(&["status"]);
    assert!(status.contains("sync    normal: backlog "), "{status}");

    central.start_rest();
    let recovered = Instant::now();
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(120)).await;

    assert_central_equals_local(&central, &node.home).await;
    assert_eq!(central_alerts(&central), local_alerts(&node.home).await);
    assert_applied_exactly_once(&central, &node.home).await;
    let batches = node.batches();
    assert_versions_in_order(&batches, "normal");
    // the catch-up: 2,000 items a batch
    let after: Vec<_> = node.proxy.targeted().into_iter().filter(|s| s.at > recovered).collect();
    let normal: Vec<_> = after
        .iter()
        .map(|s| (s.json()["p_batch"].clone(), s.body.len()))
        .filter(|(b, _)| b["lane"] == "normal")
        .map(|(b, len)| (b["streams"]["task_summary"].as_array().map_or(0, Vec::len), len))
        // A health snapshot written meanwhile may travel alone on the timer.
        .filter(|(summaries, _)| *summaries > 0)
        .collect();
    // 10,000 rows are at most 5 full batches of 2,000, however few of a task's two rows fall in
    // one batch to be coalesced (the interleaving of creations and admissions decides); T1
    // allows 20 requests per 10,000 rows.
    assert!(normal.len() <= 5, "normal requests (items, bytes) for 10,000 rows: {normal:?}");
    assert!(normal.iter().all(|(items, _)| *items <= 2_000), "{normal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_answers_and_kill_9_during_sync_leave_the_central_equal_to_the_local_state() {
    let central = Central::start();
    let mut node = Node::start("sync-crash", &central, "  interval_secs: 1\n  completions: 1\n");
    node.proxy.set_random(Some((0.1, Fault::DropResponse)), 12);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for round in 0..20 {
        if node.daemon.is_none() {
            node.daemon = Some(node.home.start());
        }
        let daemon = node.daemon();
        for i in 0..4 {
            let id = create(daemon, &format!("round {round} task {i}")).await;
            wait_queued(daemon, &id).await;
            match i {
                0 => fail(daemon, &id).await,
                1 => complete(daemon, &id).await,
                2 => {
                    event(daemon, &id, json!({ "event": "start" })).await;
                }
                _ => {}
            }
        }
        daemon.post("/api/sync/now", json!({})).await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(rng % 800)).await;
        node.daemon.as_mut().unwrap().kill9();
        node.daemon = None;
        // versions never go backwards at the central
        for (id, (version, _)) in central_tasks(&central) {
            let before = seen.insert(id.clone(), version).unwrap_or(0);
            assert!(version >= before, "round {round}: task {id} went from {before} to {version}");
        }
    }
    node.daemon = Some(node.home.start());
    node.daemon().post("/api/sync/now", json!({})).await;
    node.drained(Duration::from_secs(60)).await;

    let dropped = node.proxy.targeted().iter().filter(|s| s.fault.is_some()).count();
    assert!(dropped >= 1, "no answer was dropped after its commit");
    assert_central_equals_local(&central, &node.home).await;
    assert_eq!(central_alerts(&central), local_alerts(&node.home).await);
    assert_applied_exactly_once(&central, &node.home).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_item_in_a_500_item_batch_is_rejected_with_its_reason_and_the_rest_applied() {
    let central = Central::start();
    let node = Node::start("sync-poison", &central, "  interval_secs: 3600\n");
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(create(node.daemon(), &format!("task {i}")).await);
    }
    // The central already holds one of these task ids as another system's task.
    let poison = ids[250].clone();
    let other = central.system_token(OTHER_SYSTEM, OWNER);
    let (status, answer) = central
        .rpc(Some(&other), "enroll", json!({ "p_name": "other", "p_slots": 1, "p_version": "x" }))
        .await;
    assert_eq!(status, 200, "{answer}");
    let item = json!({
        "seq": 1, "task_id": poison, "version": 1, "state": "queued", "title": "theirs",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
    });
    let batch = json!({ "p_batch": { "batch_id": "0193a000-0000-7000-8000-0000000000bb",
                                     "lane": "normal", "streams": { "task_summary": [item] } } });
    let (status, answer) = central.rpc(Some(&other), "ingest_batch", batch).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(1)), "{answer}");

    // The first answer is lost after the central committed: the resend is a duplicate, whose
    // answer must still say which item was rejected.
    node.proxy.push(Fault::DropResponse);
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(30)).await;
    let batches = node.batches();
    assert_eq!(batches[0]["streams"]["task_summary"].as_array().unwrap().len(), 500);
    assert_eq!(batches[0], batches[1], "the lost answer's batch is sent again");
    let mut db = open_db(&node.home.db_file()).await;
    let split: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_batch WHERE state <> 'acked'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(split, 0, "no bisection: the central rejects items inside a 2xx");

    let rejected: Vec<(String, String)> =
        sqlx::query_as("SELECT entity_key, error FROM outbox WHERE state = 'rejected'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, poison);
    assert!(rejected[0].1.starts_with("42501"), "the reason is kept: {}", rejected[0].1);
    let tasks = central_tasks(&central);
    let local = local_tasks(&node.home).await;
    for id in ids.iter().filter(|id| **id != poison) {
        assert_eq!(tasks.get(id), local.get(id), "task {id}");
    }
    assert_eq!(tasks[&poison], (1, "queued".to_string()), "the other system's row is untouched");

    // the queue is not blocked: the next change goes through
    let next = create(node.daemon(), "after the poison").await;
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(10)).await;
    assert!(central_tasks(&central).contains_key(&next));
    let metrics = reqwest::get(node.daemon().url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ccm_sync_items_rejected_total 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_postgres_cannot_store_is_isolated_listed_with_its_code_and_alerted_once() {
    let central = Central::start();
    let node = Node::start("sync-nul", &central, "  interval_secs: 3600\n");
    let task = create(node.daemon(), "ships beside the poison").await;
    // An alert whose message holds a NUL byte, as an older node (or a path that does not check)
    // wrote it: SQLite keeps it, PostgreSQL refuses the whole request with 22P05.
    let poison = "00000000-0000-4000-8000-00000000dead";
    let payload = json!({
        "id": poison, "task_id": null, "severity": "warning", "reason": "stalled",
        "message": "before\u{0}after", "details": null,
        "created_at": "2026-12-01T10:00:00.000Z", "resolved_at": null
    });
    let mut db = open_db(&node.home.db_file()).await;
    sqlx::query(
        "INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at) \
         VALUES ('alert', ?, (SELECT max(seq) + 1 FROM outbox), 'normal', ?, 1764583200000)",
    )
    .bind(poison)
    .bind(payload.to_string())
    .execute(&mut db)
    .await
    .unwrap();
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(20)).await;
    assert!(central_tasks(&central).contains_key(&task), "the rest of the batch went through");

    let normal = &node.lanes()["normal"];
    assert_eq!(normal["rejected_total"], 1, "{normal}");
    let item = &normal["rejected"][0];
    assert_eq!(
        (&item["stream"], &item["key"], &item["code"]),
        (&json!("alert"), &json!(poison), &json!("22P05"))
    );
    assert!(!item["message"].as_str().unwrap().is_empty(), "{item}");
    let shown = node.home.run_ok(&["sync", "status"]);
    assert!(shown.contains(&format!("alert {poison} 22P05: ")), "{shown}");
    let alerts = node.home.run_json(&["alerts"]);
    let refused: Vec<&Value> =
        alerts.as_array().unwrap().iter().filter(|a| a["reason"] == "sync_rejected").collect();
    assert_eq!(refused.len(), 1, "one alert for the batch: {alerts}");
    assert!(refused[0]["message"].as_str().unwrap().contains(poison), "{}", refused[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_heartbeats_are_answered_again_the_lanes_stop_waiting_out_their_backoff() {
    let central = Central::start();
    // Nothing urgent (no disk alert on a full test machine) shares the faults below.
    let quiet = "notify:\n  health:\n    disk_min_free_mb: 0\n    disk_min_free_percent: 0\n";
    let sync = format!("  interval_secs: 3600\n  heartbeat_secs: 1\n{quiet}");
    let node = Node::start("sync-outage", &central, &sync);
    // Nine sends in a row fail as in an outage (no Retry-After): the normal lane's backoff
    // ceiling reaches 256 s, so waiting it out would take minutes.
    for _ in 0..9 {
        node.proxy.push(Fault::Reset);
    }
    let id = create(node.daemon(), "sent after the outage").await;
    let started = Instant::now();
    node.home.run_ok(&["sync", "now"]);
    let arrived =
        wait_until(Duration::from_secs(25), || async { central_tasks(&central).contains_key(&id) })
            .await;
    assert!(arrived, "still waiting out the backoff: {}\n{}", node.lanes(), node.log());
    assert!(started.elapsed() < Duration::from_secs(25));
    let mut db = open_db(&node.home.db_file()).await;
    let attempts: i64 =
        sqlx::query_scalar("SELECT max(attempts) FROM outbox_batch WHERE lane = 'normal'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(attempts, 9, "the normal lane met every failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_servers_size_limit_is_split_until_every_item_fits() {
    let central = Central::start();
    let node = Node::start("sync-split", &central, "  interval_secs: 3600\n");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(create(node.daemon(), &format!("task {i}")).await);
    }
    node.proxy.set_max_body(Some(4_000));
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(30)).await;
    let tasks = central_tasks(&central);
    let local = local_tasks(&node.home).await;
    for id in &ids {
        assert_eq!(tasks.get(id), local.get(id), "task {id}");
    }
    let seen = node.proxy.targeted();
    assert!(seen.iter().any(|s| s.fault.is_some()), "the limit was never hit");
    assert!(seen.iter().filter(|s| s.fault.is_none()).all(|s| s.body.len() <= 4_000));
    assert_applied_exactly_once(&central, &node.home).await;
}

/// Items of all streams in an ingest request.
fn items(seen: &ccm_tests::faultproxy::Seen) -> usize {
    let streams = seen.json()["p_batch"]["streams"].clone();
    streams.as_object().map_or(0, |s| s.values().filter_map(Value::as_array).map(Vec::len).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_batch_too_large_the_lanes_next_batches_carry_at_most_half_of_it() {
    let central = Central::start();
    let node = Node::start("sync-halving", &central, "  interval_secs: 3600\n");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(create(node.daemon(), &format!("first {i}")).await);
    }
    node.proxy.set_max_body(Some(4_000));
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(30)).await;
    let seen = node.proxy.targeted();
    let refused = seen.iter().find(|s| s.fault.is_some()).expect("the limit was hit");
    assert!(items(refused) >= 20, "the first refused batch carried {} items", items(refused));

    // The limit is gone, but fewer than 10 batches were acknowledged since the last refusal:
    // 40 more tasks, queued while sending is paused, go in batches of at most half of it.
    node.proxy.set_max_body(None);
    node.home.run_ok(&["sync", "pause"]);
    let before = node.proxy.targeted().len();
    for i in 0..40 {
        ids.push(create(node.daemon(), &format!("second {i}")).await);
    }
    node.home.run_ok(&["sync", "resume"]);
    node.drained(Duration::from_secs(30)).await;
    let seen = node.proxy.targeted();
    // The rule, batch by batch of the normal lane: after a refusal, at most half of the refused
    // batch (its split halves included) until 10 batches in a row were acknowledged. On a
    // loaded machine the limit may refuse more than once; each refusal restarts the rule.
    let normal: Vec<_> = seen.iter().filter(|s| s.json()["p_batch"]["lane"] == "normal").collect();
    let sizes: Vec<(usize, bool)> = normal.iter().map(|s| (items(s), s.fault.is_some())).collect();
    let (mut cap, mut streak, mut capped_after_resume) = (None, 0, 0);
    for s in &normal {
        let n = items(s);
        if s.fault.is_some() {
            cap = Some(n.div_ceil(2));
            streak = 0;
            continue;
        }
        if let Some(c) = cap {
            assert!(n <= c, "a batch of {n} items while the cap was {c}: {sizes:?}");
            capped_after_resume += usize::from(s.at > seen[before - 1].at);
            streak += 1;
            if streak == 10 {
                cap = None;
            }
        }
    }
    assert!(capped_after_resume > 0, "the cap outlived the pause: {sizes:?}");
    let second: Vec<usize> = seen[before..].iter().map(items).collect();
    assert!(second.len() >= 4, "the 40 waiting tasks went in {second:?}");
    assert!(seen[before..].iter().all(|s| s.fault.is_none()));
    let tasks = central_tasks(&central);
    let local = local_tasks(&node.home).await;
    for id in &ids {
        assert_eq!(tasks.get(id), local.get(id), "task {id}");
    }
    assert_applied_exactly_once(&central, &node.home).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_identity_pauses_sync_with_a_reason_and_an_alert_and_reenrolling_resumes() {
    let central = Central::start();
    let node = Node::start("sync-expired", &central, "  interval_secs: 3600\n");
    let mut claims = central::supabase_claims(SYSTEM, json!({ "role": "system", "owner": OWNER }));
    claims["exp"] = json!(claims["iat"].as_u64().unwrap() + 2);
    node.enroll(&central::sign(&claims));
    std::thread::sleep(Duration::from_secs(3));

    let id = create(node.daemon(), "queued while paused").await;
    node.home.run_ok(&["sync", "now"]);
    assert_paused(&node, "unauthorized: HTTP 401").await;

    // a fresh identity: sync resumes and everything queued meanwhile arrives
    node.enroll(&central.system_token(SYSTEM, OWNER));
    node.drained(Duration::from_secs(15)).await;
    assert!(central_tasks(&central).contains_key(&id));
    let kinds = central.pg.query("select string_agg(kind, ',') from private.alerts");
    assert!(kinds.contains("sync_paused"), "the pause alert travels too: {kinds}");
    assert_eq!(node.lanes()["normal"]["paused_reason"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_system_pauses_saying_it_was_revoked_and_resuming_after_reinstatement_sends_all()
{
    let central = Central::start();
    let node = Node::start("sync-revoked", &central, "  interval_secs: 3600\n");
    central.pg.query("update private.systems set state = 'revoked'");
    let id = create(node.daemon(), "queued while revoked").await;
    node.home.run(&["sync", "now"]); // the normal lane's first batch may have paused it already
    assert_paused(&node, "revoked: HTTP ").await;
    let reason = node.lanes()["normal"]["paused_reason"].as_str().unwrap().to_string();
    assert!(reason.contains("42501: system revoked; "), "{reason}");
    assert!(!reason.contains("not enrolled") && reason.contains("`ccm sync resume`"), "{reason}");

    // asked to sync while paused, it says so, why, and what to run
    let now = node.home.run(&["sync", "now"]);
    assert!(!now.status.success());
    let said = String::from_utf8_lossy(&now.stderr);
    assert!(
        said.contains("sync is paused (revoked: ") && said.contains("`ccm sync resume`"),
        "{said}"
    );
    for shown in [node.home.run_ok(&["status"]), node.home.run_ok(&["sync", "status"])] {
        assert!(shown.contains("`ccm sync resume`"), "{shown}");
    }

    let refused = node.home.run(&["sync", "enroll", "--jwt", &central.system_token(SYSTEM, OWNER)]);
    assert!(!refused.status.success(), "a revoked system cannot enroll");
    central.pg.query("update private.systems set state = 'active'");
    node.home.run_ok(&["sync", "resume"]);
    node.drained(Duration::from_secs(15)).await;
    assert!(central_tasks(&central).contains_key(&id));
    assert_pause_alert_resolved(&node, &central).await;
}

/// The `sync_paused` alert is resolved locally, and the central learns it.
async fn assert_pause_alert_resolved(node: &Node, central: &Central) {
    let mut db = open_db(&node.home.db_file()).await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alerts WHERE reason = 'sync_paused' AND resolved_at IS NULL",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(open, 0, "the pause alert stays open after sync resumed");
    node.drained(Duration::from_secs(10)).await;
    let central_open = central.pg.query(
        "select count(*) from private.alerts where kind = 'sync_paused' and resolved_at is null",
    );
    assert_eq!(central_open, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_for_a_wrong_url_lifts_itself_when_the_daemon_restarts_with_the_right_one() {
    let central = Central::start();
    let mut node = Node::start(
        "sync-wrong-url",
        &central,
        "  interval_secs: 3600
",
    );
    let config = std::fs::read_to_string(node.home.home().join("config.yaml")).unwrap();
    let right = node.proxy.url();
    let wrong = format!("{}/nowhere/", right.trim_end_matches('/'));
    node.home.run_ok(&["stop"]);
    node.daemon = None;
    node.home.write_config(&config.replace(&right, &wrong));
    node.daemon = Some(node.home.start());
    let id = create(node.daemon(), "queued while misconfigured").await;
    node.home.run_ok(&["sync", "now"]);
    assert_paused(&node, "misconfigured: HTTP 404").await;

    // the operator's own pause survives a restart; the driver's lifts when its cause changed
    node.home.run_ok(&["stop"]);
    node.daemon = None;
    node.home.write_config(&config);
    node.daemon = Some(node.home.start());
    node.drained(Duration::from_secs(15)).await;
    assert!(central_tasks(&central).contains_key(&id));
    assert_pause_alert_resolved(&node, &central).await;

    node.home.run_ok(&["sync", "pause", "--reason", "maintenance"]);
    node.home.run_ok(&["stop"]);
    node.daemon = None;
    node.daemon = Some(node.home.start());
    let lanes = node.lanes();
    assert_eq!(lanes["normal"]["paused_reason"], "maintenance", "{lanes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_items_are_listed_by_sync_status_and_raise_one_alert_per_batch() {
    let central = Central::start();
    let node = Node::start(
        "sync-refused",
        &central,
        "  interval_secs: 3600
",
    );
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(create(node.daemon(), &format!("task {i}")).await);
    }
    // Settled (admitted), so each task ships once, in one batch.
    for id in &ids {
        wait_queued(node.daemon(), id).await;
    }
    // The central already holds two of these task ids as another system's tasks.
    let other = central.system_token(OTHER_SYSTEM, OWNER);
    let (status, answer) = central
        .rpc(Some(&other), "enroll", json!({ "p_name": "other", "p_slots": 1, "p_version": "x" }))
        .await;
    assert_eq!(status, 200, "{answer}");
    let theirs: Vec<Value> = ids[1..3]
        .iter()
        .map(|id| {
            json!({ "seq": 1, "task_id": id, "version": 1, "state": "queued", "title": "theirs",
                    "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z" })
        })
        .collect();
    let batch = json!({ "p_batch": { "batch_id": "0193a000-0000-7000-8000-0000000000cc",
                                     "lane": "normal", "streams": { "task_summary": theirs } } });
    let (status, answer) = central.rpc(Some(&other), "ingest_batch", batch).await;
    assert_eq!((status, &answer["accepted"]), (200, &json!(2)), "{answer}");

    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(15)).await;
    let lanes = node.lanes();
    let normal = &lanes["normal"];
    assert_eq!(normal["rejected_total"], 2, "{lanes}");
    let mut listed: Vec<(String, String, String)> = normal["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["message"].as_str().unwrap().len() > 3, "{r}");
            (
                r["stream"].as_str().unwrap().to_string(),
                r["key"].as_str().unwrap().to_string(),
                r["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String, String)> = ids[1..3]
        .iter()
        .map(|id| ("task_summary".to_string(), id.clone(), "42501".to_string()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    let shown = node.home.run_ok(&["sync", "status"]);
    assert!(shown.contains("2 refused items, kept locally"), "{shown}");
    for id in &ids[1..3] {
        assert!(shown.contains(&format!("task_summary {id} 42501: ")), "{shown}");
    }
    let status = node.home.run_ok(&["status"]);
    assert!(status.contains("2 rejected") && status.contains("ccm sync status"), "{status}");

    // one alert for the batch, naming both, and it reaches the central too
    let alerts = node.home.run_json(&["alerts"]);
    let refused: Vec<&Value> =
        alerts.as_array().unwrap().iter().filter(|a| a["reason"] == "sync_rejected").collect();
    assert_eq!(refused.len(), 1, "{alerts}");
    let message = refused[0]["message"].as_str().unwrap();
    assert!(message.starts_with("the central refused 2 items of a sync batch"), "{message}");
    assert!(ids[1..3].iter().all(|id| message.contains(id.as_str())), "{message}");
    node.drained(Duration::from_secs(10)).await;
    let central_kinds = central.pg.query("select string_agg(kind, ',') from private.alerts");
    assert!(central_kinds.contains("sync_rejected"), "{central_kinds}");
}

/// Both lanes end paused with a reason starting with `prefix`, an open alert says so, and the
/// rows wait.
async fn assert_paused(node: &Node, prefix: &str) {
    let paused = wait_until(Duration::from_secs(15), || async {
        let lanes = node.lanes();
        lanes["urgent"]["paused_reason"].is_string() && lanes["normal"]["paused_reason"].is_string()
    })
    .await;
    assert!(paused, "sync did not pause: {}\n{}", node.lanes(), node.log());
    let lanes = node.lanes();
    for lane in ["urgent", "normal"] {
        let reason = lanes[lane]["paused_reason"].as_str().unwrap();
        assert!(reason.starts_with(prefix), "{lane}: {reason}");
    }
    assert!(lanes["normal"]["backlog"].as_i64().unwrap() >= 1, "nothing dropped: {lanes}");
    // The alert is written right after the pause, in a transaction of its own.
    let mut db = open_db(&node.home.db_file()).await;
    let started = Instant::now();
    loop {
        let alerts: Vec<(String, String)> =
            sqlx::query_as("SELECT severity, message FROM alerts WHERE reason = 'sync_paused'")
                .fetch_all(&mut db)
                .await
                .unwrap();
        if alerts.iter().any(|a| a.0 == "critical" && a.1.contains(prefix)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{alerts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_show_backlog_last_success_and_pause_reason_per_lane() {
    let mut central = Central::start();
    let node = Node::start("sync-status", &central, "  interval_secs: 3600\n");
    let first = create(node.daemon(), "ships").await;
    wait_queued(node.daemon(), &first).await;
    node.home.run_ok(&["sync", "now"]);
    node.drained(Duration::from_secs(10)).await;
    assert!(central_tasks(&central).contains_key(&first));

    central.stop_rest();
    for i in 0..3 {
        let id = create(node.daemon(), &format!("waits {i}")).await;
        // admitted before the backlog is read, so it holds still while it is compared
        wait_queued(node.daemon(), &id).await;
    }
    node.home.run_ok(&["sync", "now"]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            node.lanes()["normal"]["last_error"].is_string()
        })
        .await
    );
    // each task waits as its creation and its admission, unless sealing coalesced them
    let backlog = node.lanes()["normal"]["backlog"].as_u64().unwrap();
    assert!((3..=6).contains(&backlog), "{backlog}");
    let shown = node.home.run_ok(&["status"]);
    let normal = shown.lines().find(|l| l.starts_with("sync    normal:")).unwrap_or_default();
    assert!(normal.contains(&format!("backlog {backlog},")), "{shown}");
    assert!(normal.contains("last success 20"), "{shown}");
    assert!(normal.contains("last error"), "{shown}");
    let metrics = reqwest::get(node.daemon().url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(&format!("ccm_sync_backlog{{lane=\"normal\"}} {backlog}\n")),
        "{metrics}"
    );
    let success = metrics
        .lines()
        .find(|l| l.starts_with("ccm_sync_last_success_seconds{lane=\"normal\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(!success.ends_with(" 0"), "{success}");
    assert!(metrics.contains("ccm_sync_paused{lane=\"normal\"} 0"), "{metrics}");

    node.home.run_ok(&["sync", "pause", "--reason", "maintenance window"]);
    let shown = node.home.run_ok(&["status"]);
    assert!(shown.contains("paused: maintenance window"), "{shown}");
    let metrics = reqwest::get(node.daemon().url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ccm_sync_paused{lane=\"urgent\"} 1"), "{metrics}");
    assert!(metrics.contains("ccm_sync_paused{lane=\"normal\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_system_online_and_its_contexts_follow_every_change() {
    let central = Central::start();
    let node =
        Node::start("sync-presence", &central, "  interval_secs: 3600\n  heartbeat_secs: 1\n");
    let operator = central.operator_token(OWNER);
    let online = wait_until(Duration::from_secs(10), || async {
        let (_, systems) = central.get(Some(&operator), "fleet_systems?select=presence").await;
        systems == json!([{ "presence": "online" }])
    })
    .await;
    assert!(online, "no heartbeat: {}", node.log());
    let slots = central.pg.query("select slots || ' ' || running from private.systems");
    assert_eq!(slots, "20 0");

    let repo = node.home.dir.path().join("app");
    ccm_tests::git_repo(&repo, Some("git@github.com:Org/App.git"));
    let (status, context) =
        node.daemon().post("/api/contexts", json!({ "path": repo.to_str().unwrap() })).await;
    assert_eq!(status, 201, "{context}");
    let expected = format!("{} {}", context["repo_url"].as_str().unwrap(), repo.display());
    assert!(expected.starts_with("https://github.com/"), "normalized: {expected}");
    let contexts = || central.pg.query("select repo_url || ' ' || path from private.contexts");
    let registered = wait_until(Duration::from_secs(10), || async { contexts() == expected }).await;
    assert!(registered, "contexts: {:?}\n{}", contexts(), node.log());
    let generation = central.pg.query("select contexts_generation from private.systems");

    let key = context["id"].as_str().unwrap();
    let (status, body) = node
        .daemon()
        .send(node.daemon().http.delete(node.daemon().url(&format!("/api/contexts/{key}"))))
        .await;
    assert_eq!(status, 200, "{body}");
    let removed = wait_until(Duration::from_secs(10), || async { contexts().is_empty() }).await;
    assert!(removed, "the removed context is still central: {}", contexts());
    let newer = central.pg.query("select contexts_generation from private.systems");
    assert!(newer.parse::<i64>().unwrap() > generation.parse::<i64>().unwrap());
    // the context rows are done with once the central holds their generation
    let mut db = open_db(&node.home.db_file()).await;
    let mut pending = -1;
    for _ in 0..100 {
        pending = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE stream = 'context' AND state = 'pending'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending, 0);
}

/// The health snapshots the central holds, oldest window first.
fn central_health(central: &Central) -> Vec<Value> {
    central
        .pg
        .rows("select window_start, window_len_s, version, metrics from private.health order by window_start")
        .as_array()
        .expect("rows")
        .clone()
}

/// Health rows of the local outbox still waiting to be sealed.
async fn pending_health(home: &TestHome) -> i64 {
    let mut db = open_db(&home.db_file()).await;
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE stream = 'health' AND state = 'pending'")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_snapshots_reach_the_central_with_the_nodes_load_memory_disk_and_backlog() {
    let central = Central::start();
    let node = Node::start("sync-health", &central, "  interval_secs: 3600\n  health_secs: 1\n");
    create(node.daemon(), "queued for the snapshot").await;
    let arrived = wait_until(Duration::from_secs(20), || {
        node.home.run_ok(&["sync", "now"]);
        async { central_health(&central).len() >= 2 }
    })
    .await;
    assert!(arrived, "no health snapshot arrived: {}\n{}", node.lanes(), node.log());
    let rows = central_health(&central);
    let last = rows.last().unwrap();
    assert_eq!(last["window_len_s"], 1);
    let m = &last["metrics"];
    let total = m["mem_total_bytes"].as_u64().unwrap();
    assert!(total > 1 << 20, "{m}");
    assert!(m["mem_used_bytes"].as_u64().unwrap() <= total, "{m}");
    assert!(m["disk_free_home_bytes"].as_u64().unwrap() > 0, "{m}");
    assert!(m["load1"].as_f64().unwrap() >= 0.0, "{m}");
    let cpu = m["cpu_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu), "{m}");
    assert_eq!(m["slots"], 20, "{m}");
    assert_eq!(m["agents_running"], 0, "{m}");
    let queued = m["queue_depth"]["queued"].as_i64().unwrap_or(0)
        + m["queue_depth"]["created"].as_i64().unwrap_or(0);
    assert_eq!(queued, 1, "{m}");
    assert!(m["lane_backlog"]["normal"].is_i64() && m["lane_backlog"]["urgent"].is_i64(), "{m}");
    assert_eq!(m["dropped_total"], 0, "{m}");
    // a later snapshot knows of the earlier successes
    assert!(rows.iter().any(|r| r["metrics"]["last_sync_at"].is_string()), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_central_down_health_backlog_stays_under_its_cap_and_its_drops_are_counted_and_shipped(
) {
    let mut central = Central::start();
    let node = Node::start(
        "sync-health-cap",
        &central,
        "  interval_secs: 3600\n  health_secs: 1\n  health_backlog: 3\n",
    );
    central.stop_rest();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(create(node.daemon(), &format!("kept {i}")).await);
    }
    for id in &ids[..2] {
        wait_queued(node.daemon(), id).await;
        fail(node.daemon(), id).await;
    }
    let most = std::sync::atomic::AtomicI64::new(0);
    let seen = |n| most.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
    let dropped = wait_until(Duration::from_secs(30), || async {
        seen(pending_health(&node.home).await);
        node.lanes()["normal"]["dropped_total"].as_i64().unwrap_or(0) >= 4
    })
    .await;
    assert!(dropped, "no health snapshot was dropped: {}\n{}", node.lanes(), node.log());
    for _ in 0..10 {
        seen(pending_health(&node.home).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let most = most.into_inner();
    assert!(most <= 3, "{most} health rows pending over a cap of 3");
    let lanes = node.lanes();
    let count = lanes["normal"]["dropped_total"].as_i64().unwrap();
    let shown = node.home.run_ok(&["sync", "status"]);
    assert!(shown.contains("dropped "), "{shown}");
    let metrics = reqwest::get(node.daemon().url("/metrics")).await.unwrap().text().await.unwrap();
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ccm_sync_dropped_total{lane=\"normal\"} "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(gauge.parse::<i64>().unwrap() >= count, "{gauge} < {count}");

    central.start_rest();
    let shipped = wait_until(Duration::from_secs(60), || {
        node.home.run_ok(&["sync", "now"]);
        async {
            central_health(&central)
                .iter()
                .any(|r| r["metrics"]["dropped_total"].as_i64().unwrap_or(0) >= count)
        }
    })
    .await;
    assert!(shipped, "the drop count did not arrive: {:?}", central_health(&central));
    // every task summary and alert arrives all the same
    let tasks = wait_until(Duration::from_secs(30), || {
        node.home.run_ok(&["sync", "now"]);
        async {
            let central = central_tasks(&central);
            let local = local_tasks(&node.home).await;
            ids.iter().all(|id| central.get(id) == local.get(id))
        }
    })
    .await;
    assert!(tasks, "tasks differ: {:?}", central_tasks(&central));
    let local = local_alerts(&node.home).await;
    assert!(local.len() >= 2, "{local:?}");
    let alerts =
        wait_until(Duration::from_secs(15), || async { central_alerts(&central) == local }).await;
    assert!(alerts, "alerts differ: {:?} vs {local:?}", central_alerts(&central));
    assert_applied_exactly_once(&central, &node.home).await;
}

/// Issue 28: a node without `sync:` keeps nothing pending in its outbox (nothing would ever
/// send it), only a bounded window of acknowledged rows (the dashboard's change feed); once sync
/// is configured, the current state of every task reaches the central, one summary per task
/// (not the history), and only once. A row stored in the old form (the schema types' serde form,
/// no `v`), as databases written before the versioned payloads hold them, is shipped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_sync_keeps_no_pending_outbox_and_ships_each_tasks_current_state_once_enabled(
) {
    let central = Central::start();
    let home = TestHome::new("sync-enabled-later");
    home.write_config("scheduler:\n  slots: 20\n");
    let mut daemon = home.start();
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(create(&daemon, &format!("made without sync {n}")).await);
    }
    wait_queued(&daemon, &ids[0]).await;
    fail(&daemon, &ids[0]).await; // a history of several versions
                                  // (pending or sealed rows, all rows, newest seq)
    let outbox = || async {
        let mut db = open_db(&home.db_file()).await;
        let counts: (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state IN ('pending', 'sealed')), count(*), \
                    coalesce(max(seq), 0) FROM outbox",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        counts
    };
    let (pending, kept, _) = outbox().await;
    assert_eq!(pending, 0, "nothing waits to be sent without sync");
    assert!(kept > 0, "the rows are still the dashboard's change feed");
    // 600 more tasks (two rows each: created, then admitted): the outbox stays bounded.
    for n in 0..600 {
        create(&daemon, &format!("more {n}")).await;
    }
    // Every task admitted (its second row written) before the daemon stops.
    let admitted = wait_until(Duration::from_secs(30), || async {
        let mut db = open_db(&home.db_file()).await;
        let created: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE state = 'created'")
            .fetch_one(&mut db)
            .await
            .unwrap();
        created == 0
    })
    .await;
    assert!(admitted, "{}", daemon.log_text());
    let (pending, kept, head) = outbox().await;
    assert_eq!(pending, 0);
    assert!(kept <= 1000 && head > 1200, "{kept} rows kept of {head}");
    // Rows written from here on (task summaries): (rows, distinct tasks).
    let summaries = || async {
        let mut db = open_db(&home.db_file()).await;
        let rows: (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT entity_key) FROM outbox \
             WHERE stream = 'task_summary' AND seq > ?",
        )
        .bind(head)
        .fetch_one(&mut db)
        .await
        .unwrap();
        rows
    };

    daemon.kill9();
    home.write_config(&format!(
        "scheduler:\n  slots: 20\nsync:\n  rest_url: {}\n  publishable_key: {}\n  interval_secs: 3600\n",
        central.rest_url(),
        central.anon_key()
    ));
    daemon = home.start();
    let out = home.run_ok(&["sync", "enroll", "--jwt", &central.system_token(SYSTEM, OWNER)]);
    assert!(out.contains("enrolled as"), "{out}");
    let local = local_tasks(&home).await;
    assert_eq!(local.len(), 604);
    let arrived = shipped(&home, || central_tasks(&central) == local).await;
    assert!(
        arrived,
        "central {:?} != local {local:?}\n{}",
        central_tasks(&central),
        daemon.log_text()
    );
    assert_eq!(local[&ids[0]].1, "failed", "the current state, not the first one");
    assert_eq!(summaries().await, (604, 604), "one summary per task, not the history");

    daemon.kill9();
    daemon = home.start();
    // A task made after the restart reaches the central: the sync task is past its start.
    let after = create(&daemon, "made after the restart").await;
    let arrived = shipped(&home, || central_tasks(&central).contains_key(&after)).await;
    assert!(arrived, "{}", daemon.log_text());
    let mut db = open_db(&home.db_file()).await;
    let again: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE stream = 'task_summary' AND seq > ? AND entity_key <> ?",
    )
    .bind(head)
    .bind(&after)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(again, 604, "queued once: a restart with sync queues nothing more");

    // A row in the old form: the serde form of the schema's Task, with its prompt, no `v`.
    let old = "00000000-0000-4000-8000-0000000000c1";
    let payload = json!({
        "id": old, "title": "stored before the versioned payloads", "prompt": "p",
        "repo": null, "profile": "claude", "workflow": null, "verify": null,
        "max_attempts": 3, "attempts": 0, "priority": 0, "state": "queued", "wake_at": null,
        "created_at": "2026-12-01T10:00:00.000Z", "updated_at": "2026-12-01T10:00:00.000Z",
        "version": 2, "depends_on": []
    });
    sqlx::query(
        "INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at) \
         VALUES ('task_summary', ?, 2, 'normal', ?, 1764583200000)",
    )
    .bind(old)
    .bind(payload.to_string())
    .execute(&mut db)
    .await
    .unwrap();
    let arrived =
        shipped(&home, || central_tasks(&central).get(old) == Some(&(2, "queued".to_string())))
            .await;
    assert!(arrived, "{:?}\n{}", central_tasks(&central), daemon.log_text());
}

/// Waits up to 30 s until `done`, asking for `ccm sync now` every second.
async fn shipped(home: &TestHome, done: impl Fn() -> bool) -> bool {
    let mut asked: Option<Instant> = None;
    wait_until(Duration::from_secs(30), || {
        if asked.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
            home.run_ok(&["sync", "now"]);
            asked = Some(Instant::now());
        }
        let held = done();
        async move { held }
    })
    .await
}
