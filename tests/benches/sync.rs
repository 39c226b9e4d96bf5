//! Figures of the sync engine against a real central (PostgreSQL 15 with `supabase/`, postrust
//! in front, both started here as the integration tests do), each printed next to a baseline
//! measured in the same run on the same machine.
//!
//! Run with `cargo bench -p ccm-tests --bench sync`. Nothing here asserts on time: the bench
//! prints a table and fails only when ccm misbehaves (a refused request, a backlog that does not
//! drain). The sizes come from the environment, so a quick debug run of the harness is
//! `CCM_BENCH_SYNC_ROWS=5000 CCM_BENCH_SYNC_CATCHUP_ROWS=2000 CCM_BENCH_SYNC_TASKS=200
//! CCM_BENCH_SYNC_URGENT=10 cargo test -p ccm-tests --bench sync`.
//!
//! - T1: ingest requests of the normal lane per 10,000 normal-lane rows written through the
//!   API (task creations and their admissions), the timer at 1 s; against the floor of any
//!   batching, one request per 2,000 items after coalescing.
//! - T2: requests of any kind to the central per 1,000 hook events posted to the daemon;
//!   against one request per event.
//! - T3: catch-up of a backlog of task summaries seeded into the node's outbox, rows per second
//!   until the backlog is empty; against the same rows by one `COPY` into a table shaped like
//!   `private.task_summaries`.
//! - T5: an urgent item (a critical alert of a failed task), local commit (`created_at`) to
//!   central commit (`received_at`), p50 and p99; against one `api.ingest_batch` of one alert
//!   sent straight to postrust.
//! - T6: T5 while a catch-up of the same size as T3's drains.
//! - T11: the daemon's RSS while a backlog of `CCM_BENCH_SYNC_ROWS` rows drains, above its idle
//!   RSS with sync configured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccm_tests::bench::{machine, mb, ms, print_table, Memory, Row, Stats};
use ccm_tests::central::Central;
use ccm_tests::faultproxy::FaultProxy;
use ccm_tests::{open_db, wait_until, Daemon, TestHome};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

const OWNER: &str = "00000000-0000-4000-8000-0000000000f1";
/// The system of the node whose requests the proxy counts (T1, T2).
const STEADY_SYSTEM: &str = "00000000-0000-4000-8000-0000000000a1";
/// The system of the node that talks to postrust directly (T3, T5, T6, T11).
const DIRECT_SYSTEM: &str = "00000000-0000-4000-8000-0000000000a2";

const T1_TARGET: &str = "≤ 20 requests";
const T2_TARGET: &str = "≤ 1 request";
const T3_TARGET: &str = "≥ 20,000 rows/s";
const T5_P50_TARGET: &str = "p50 ≤ 300 ms";
const T5_P99_TARGET: &str = "p99 ≤ 1 s";
const T6_TARGET: &str = "within 20 % of T5";
const T11_TARGET: &str = "≤ 20 MB above idle";

/// How long the daemon sits idle before its idle RSS is read.
const IDLE: Duration = Duration::from_secs(2);
/// Pause between two urgent items, so each travels on its own.
const URGENT_GAP: Duration = Duration::from_millis(150);
/// How long a backlog may take to drain before the bench gives up.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1800);

/// A size from the environment, else its default.
fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.replace(['_', ','], "").parse().unwrap_or_else(|e| panic!("{name}={v}: {e}")))
        .unwrap_or(default)
}

fn main() {
    let steady_tasks = size("CCM_BENCH_SYNC_TASKS", 5_000);
    let hook_events = size("CCM_BENCH_SYNC_HOOKS", 1_000);
    let catch_up_rows = size("CCM_BENCH_SYNC_CATCHUP_ROWS", 100_000);
    let drain_rows = size("CCM_BENCH_SYNC_ROWS", 1_000_000);
    let urgent = size("CCM_BENCH_SYNC_URGENT", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let machine = machine();
    let central = Central::start();
    let mut rows = Vec::new();

    let steady = Node::start(&runtime, "bench-sync-steady", &central, STEADY_SYSTEM, true);
    rows.push(t1(&runtime, &steady, steady_tasks));
    rows.push(t2(&runtime, &steady, hook_events));
    drop(steady);

    let node = Node::start(&runtime, "bench-sync-direct", &central, DIRECT_SYSTEM, false);
    let idle_rss = node.rss_after_idle();
    let template = runtime.block_on(node.template());
    let t5 = runtime.block_on(urgent_latency(&central, &node, urgent, None));
    let baseline = runtime.block_on(direct_ingest(&central, urgent));
    rows.extend(t5_rows(&t5, &baseline));
    rows.push(runtime.block_on(t3(&central, &node, &template, catch_up_rows)));
    rows.push(runtime.block_on(t6(&central, &node, &template, catch_up_rows, urgent, &t5)));
    rows.push(runtime.block_on(t11(&node, &template, drain_rows, idle_rss)));

    println!("\n{machine}");
    println!(
        "sizes: {steady_tasks} tasks (T1), {hook_events} hook events (T2), {catch_up_rows} rows \
         (T3, T6), {urgent} urgent items (T5, T6), {drain_rows} rows (T11)"
    );
    print_table(&rows);
}

// ---- the node ------------------------------------------------------------------------------

/// A daemon configured to sync to the central, enrolled as `system`, through a proxy that counts
/// the requests when `counted`, else straight to postrust (a proxy keeps every body it saw).
struct Node {
    home: TestHome,
    daemon: Daemon,
    proxy: Option<FaultProxy>,
}

impl Node {
    fn start(
        runtime: &Runtime,
        name: &str,
        central: &Central,
        system: &str,
        counted: bool,
    ) -> Node {
        let home = TestHome::new(name);
        let _guard = runtime.enter();
        let proxy = counted.then(|| FaultProxy::start(&central.rest_url(), "rpc/ingest_batch"));
        let url = proxy.as_ref().map_or_else(|| central.rest_url(), FaultProxy::url);
        // The steady node's timer is 1 s (a compressed 15 minutes); the other seals on demand.
        let interval = if counted { 1 } else { 3600 };
        home.write_config(&format!(
            "scheduler:\n  slots: 20\nsync:\n  rest_url: {url}\n  publishable_key: {}\n  \
             interval_secs: {interval}\n",
            central.anon_key()
        ));
        let daemon = home.start();
        let out = home.run_ok(&["sync", "enroll", "--jwt", &central.system_token(system, OWNER)]);
        assert!(out.contains("enrolled as"), "{out}");
        Node { home, daemon, proxy }
    }

    fn pid(&self) -> u32 {
        self.daemon.child.id()
    }

    fn rss_after_idle(&self) -> f64 {
        std::thread::sleep(IDLE);
        Memory::of(self.pid()).rss_mb
    }

    async fn backlog(&self, lane: &str) -> i64 {
        let (status, lanes) = self.daemon.get("/api/sync").await;
        assert_eq!(status, 200, "{lanes}");
        lanes[lane]["backlog"].as_i64().expect("backlog")
    }

    async fn sync_now(&self) {
        let (status, body) = self.daemon.post("/api/sync/now", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Waits until both lanes are empty, asking for a seal every second.
    async fn drained(&self) {
        let mut asked = Instant::now();
        let drained = wait_until(DRAIN_DEADLINE, || {
            let ask = asked.elapsed() > Duration::from_secs(1);
            if ask {
                asked = Instant::now();
            }
            async move {
                if ask {
                    self.sync_now().await;
                }
                self.backlog("normal").await == 0 && self.backlog("urgent").await == 0
            }
        })
        .await;
        assert!(drained, "the backlog did not drain: {}", self.daemon.log_text());
    }

    /// The payload of a real task summary row, to seed backlogs with.
    async fn template(&self) -> String {
        create(&self.daemon, "template").await;
        let mut db = open_db(&self.home.db_file()).await;
        sqlx::query_scalar("SELECT payload FROM outbox WHERE stream = 'task_summary' LIMIT 1")
            .fetch_one(&mut db)
            .await
            .expect("a task summary row")
    }

    /// Writes `rows` task summaries of new tasks into the outbox's normal lane, as the node
    /// itself would have queued them during an outage; 100,000 rows a transaction, so the
    /// daemon's own writes wait little.
    async fn seed(&self, template: &str, rows: usize, prefix: u32) {
        let mut db = open_db(&self.home.db_file()).await;
        for first in (1..=rows).step_by(100_000) {
            let last = (first + 99_999).min(rows);
            sqlx::query(
                r#"
                WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
                INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at)
                SELECT 'task_summary', id, 1, 'normal',
                       json_set(?3, '$.id', id, '$.version', 1, '$.title', 'backlog ' || i), ?4
                FROM (SELECT i, printf('%08x-0000-7000-8000-%012x', ?5, i) AS id FROM n)
                "#,
            )
            .bind(first as i64)
            .bind(last as i64)
            .bind(template)
            .bind(now_ms())
            .bind(prefix)
            .execute(&mut db)
            .await
            .expect("the backlog is seeded");
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

async fn create(daemon: &Daemon, title: &str) -> String {
    let (status, task) = daemon.post("/api/tasks", json!({ "title": title, "prompt": "p" })).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().expect("id").to_string()
}

async fn event(daemon: &Daemon, id: &str, event: Value) {
    let (status, body) = daemon.post(&format!("/api/tasks/{id}/events"), event).await;
    assert_eq!(status, 200, "{body}");
}

/// Normal-lane rows of the outbox so far.
async fn normal_rows(home: &TestHome) -> i64 {
    let mut db = open_db(&home.db_file()).await;
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE lane = 'normal'")
        .fetch_one(&mut db)
        .await
        .expect("outbox count")
}

// ---- T1, T2 --------------------------------------------------------------------------------

/// T1: `tasks` creations from 8 clients through the API (each a creation and an admission:
/// two normal-lane rows), then until the outbox is empty; ingest requests of the normal lane
/// per 10,000 rows written. Floor: one request per 2,000 items after coalescing.
fn t1(runtime: &Runtime, node: &Node, tasks: usize) -> Row {
    let proxy = node.proxy.as_ref().expect("counted node");
    runtime.block_on(async {
        node.drained().await;
        let rows_before = normal_rows(&node.home).await;
        let requests_before = normal_requests(proxy).len();
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let api = node.daemon.api.clone();
                let share = tasks / 8 + usize::from(client < tasks % 8);
                tokio::spawn(async move {
                    for i in 0..share {
                        // `manual`: no runtime runs them, so they stay queued and T2, right
                        // after, counts only what hook events cause.
                        let title = format!("steady {client}-{i}");
                        let body = json!({ "title": title, "profile": "manual" });
                        let (status, task) = api.post("/api/tasks", body).await;
                        assert_eq!(status, 201, "{task}");
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.expect("client");
        }
        node.drained().await;
        let rows = normal_rows(&node.home).await - rows_before;
        let sent = &normal_requests(proxy)[requests_before..];
        let items: usize = sent.iter().map(items).sum();
        let per = |n: f64| n * 10_000.0 / rows.max(1) as f64;
        Row::new(
            "T1 requests per 10,000 normal-lane rows",
            format!("{:.1} ({} for {rows} rows)", per(sent.len() as f64), sent.len()),
            format!(
                "{:.1} (⌈{items} items / 2,000⌉ after coalescing)",
                per(items.div_ceil(2000) as f64)
            ),
            T1_TARGET,
        )
    })
}

/// The normal-lane ingest bodies the proxy saw, in order.
fn normal_requests(proxy: &FaultProxy) -> Vec<Value> {
    proxy
        .targeted()
        .iter()
        .map(|seen| seen.json()["p_batch"].clone())
        .filter(|batch| batch["lane"] == "normal")
        .collect()
}

fn items(batch: &Value) -> usize {
    let streams = batch["streams"].as_object();
    streams.map_or(0, |s| s.values().filter_map(Value::as_array).map(Vec::len).sum())
}

/// T2: `events` hook events posted one a request to `/api/hooks`, then 2 s to settle; requests
/// of any kind (ingest, heartbeat, contexts) the node sent to the central meanwhile, per 1,000.
fn t2(runtime: &Runtime, node: &Node, events: usize) -> Row {
    let proxy = node.proxy.as_ref().expect("counted node");
    runtime.block_on(async {
        node.drained().await;
        let before = proxy.seen().len();
        let started = Instant::now();
        for i in 0..events {
            let payload = json!({
                "session_id": "8c35adc1-5e0a-4f1b-9a63-2d7c1f0e9b44",
                "hook_event_name": "PostToolUse",
                "cwd": "/tmp",
                "tool_name": "Read",
                "tool_use_id": format!("toolu_{i}"),
            });
            let (status, body) = node.daemon.post("/api/hooks?system=claude", payload).await;
            assert_eq!(status, 200, "{body}");
        }
        let posting = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seen = &proxy.seen()[before..];
        let ingest = seen.iter().filter(|s| s.path.contains("ingest_batch")).count();
        let per = seen.len() as f64 * 1_000.0 / events.max(1) as f64;
        Row::new(
            "T2 requests per 1,000 hook events",
            format!("{per:.1} ({} in {posting:.1?} + 2 s, {ingest} ingest)", seen.len()),
            "1,000 (one request per event)".into(),
            T2_TARGET,
        )
    })
}

// ---- T3 ------------------------------------------------------------------------------------

/// T3: `rows` task summaries seeded into the outbox, then `sync now`; rows per second until the
/// normal lane's backlog is empty (polled every 50 ms). Baseline: the same number of rows by
/// one `COPY ... FROM STDIN` (psql) into a table like `private.task_summaries` (its indexes).
async fn t3(central: &Central, node: &Node, template: &str, rows: usize) -> Row {
    node.seed(template, rows, 0x0193_c000).await;
    let started = Instant::now();
    node.sync_now().await;
    while node.backlog("normal").await > 0 {
        assert!(started.elapsed() < DRAIN_DEADLINE, "the catch-up did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ccm = rows as f64 / started.elapsed().as_secs_f64();
    let copy = rows as f64 / copy_baseline(central, rows).as_secs_f64();
    Row::new(
        &format!("T3 catch-up of {rows} rows through postrust"),
        format!("{ccm:.0} rows/s"),
        format!("{copy:.0} rows/s (one COPY into PostgreSQL)"),
        T3_TARGET,
    )
}

fn copy_baseline(central: &Central, rows: usize) -> Duration {
    central.pg.query("create table public.bench_copy (like private.task_summaries including all)");
    let system = central.pg.query("select system_id from private.systems limit 1");
    let mut csv = String::with_capacity(rows * 160);
    for i in 0..rows {
        csv.push_str(&format!(
            "{system},0193d000-0000-7000-8000-{i:012x},1,queued,backlog {i},,manual,0,0,3,\
             2026-11-30 10:00:00+00,2026-11-30 10:00:00+00\n"
        ));
    }
    let started = Instant::now();
    let out = central.pg.psql_input(
        &[
            "-c",
            "copy public.bench_copy (system_id, task_id, version, state, title, repo_url, \
             profile, priority, attempts, max_attempts, created_at, updated_at) \
             from stdin (format csv)",
        ],
        csv.as_bytes(),
    );
    let elapsed = started.elapsed();
    assert!(out.status.success(), "COPY failed: {}", String::from_utf8_lossy(&out.stderr));
    central.pg.query("drop table public.bench_copy");
    elapsed
}

// ---- T5, T6 --------------------------------------------------------------------------------

/// Urgent latencies, and how many samples were taken while the normal lane had a backlog.
struct Urgent {
    stats: Stats,
    during_backlog: usize,
}

/// `count` urgent items: tasks created and queued first, then one after another (every
/// [`URGENT_GAP`]) started and failed for good, which commits a critical alert. Each latency is
/// the central's `received_at` (the ingest transaction's start) minus the local alert's
/// `created_at`, both wall clock on this machine. With `catch_up`, the items start right after
/// `sync now` of a seeded backlog of that many rows.
async fn urgent_latency(
    central: &Central,
    node: &Node,
    count: usize,
    catch_up: Option<(&str, usize)>,
) -> Urgent {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        ids.push(create(&node.daemon, &format!("urgent {i}")).await);
    }
    let queued = wait_until(Duration::from_secs(120), || async {
        let (_, status) = node.daemon.get("/api/status").await;
        status["tasks"]["queued"].as_u64().unwrap_or(0) >= count as u64
    })
    .await;
    assert!(queued, "the urgent tasks were not queued");
    node.drained().await;
    let since = now_ms();
    if let Some((template, rows)) = catch_up {
        node.seed(template, rows, 0x0193_e000).await;
        node.sync_now().await;
    }
    let mut during_backlog = 0;
    for id in &ids {
        event(&node.daemon, id, json!({ "event": "start" })).await;
        event(&node.daemon, id, json!({ "event": "failed", "class": "fatal" })).await;
        if catch_up.is_some() && node.backlog("normal").await > 0 {
            during_backlog += 1;
        }
        tokio::time::sleep(URGENT_GAP).await;
    }
    node.drained().await;
    let mut db = open_db(&node.home.db_file()).await;
    let local: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, created_at FROM alerts WHERE reason = 'fatal_error' AND created_at >= ?",
    )
    .bind(since)
    .fetch_all(&mut db)
    .await
    .expect("local alerts");
    let received = central_received(central);
    let latencies: Vec<Duration> = local
        .iter()
        .map(|(id, created)| {
            let received = received.get(id);
            let received = *received.unwrap_or_else(|| panic!("alert {id} is not central"));
            Duration::from_millis((received - created).max(0) as u64)
        })
        .collect();
    assert_eq!(latencies.len(), count, "one critical alert per failed task");
    Urgent { stats: Stats::new(latencies), during_backlog }
}

/// `alert_id → received_at` (Unix ms) of the alerts the central holds from the nodes.
fn central_received(central: &Central) -> BTreeMap<String, i64> {
    central
        .pg
        .rows(
            "select alert_id, (extract(epoch from received_at) * 1000)::bigint as ms \
             from private.alerts where origin = 'node'",
        )
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["alert_id"].as_str().expect("id").to_string(), r["ms"].as_i64().expect("ms")))
        .collect()
}

/// Baseline of T5: `count` urgent batches of one alert each sent straight to postrust
/// (`api.ingest_batch`, as the same system), one after another; the time of each call.
async fn direct_ingest(central: &Central, count: usize) -> Stats {
    let token = central.system_token(DIRECT_SYSTEM, OWNER);
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let body = json!({ "p_batch": {
            "batch_id": format!("0193f000-0000-7000-8000-{i:012x}"),
            "lane": "urgent",
            "streams": { "alert": [{
                "seq": i + 1,
                "alert_id": format!("0193f000-0000-7000-9000-{i:012x}"),
                "version": 1,
                "severity": "critical",
                "kind": "bench",
                "message": "baseline",
                "task_id": null,
                "created_at": "2026-11-30T10:00:00.000Z",
                "resolved_at": null,
            }]},
            "ranges": {},
        }});
        let started = Instant::now();
        let (status, answer) = central.rpc(Some(&token), "ingest_batch", body).await;
        latencies.push(started.elapsed());
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(URGENT_GAP).await;
    }
    Stats::new(latencies)
}

fn t5_rows(t5: &Urgent, direct: &Stats) -> Vec<Row> {
    vec![
        Row::new(
            "T5 urgent item, commit → central commit, p50",
            ms(t5.stats.p50),
            format!("{} (one ingest_batch straight to postrust)", ms(direct.p50)),
            T5_P50_TARGET,
        ),
        Row::new(
            "T5 urgent item, commit → central commit, p99",
            ms(t5.stats.p99),
            format!("{} (one ingest_batch straight to postrust)", ms(direct.p99)),
            T5_P99_TARGET,
        ),
    ]
}

/// T6: T5 again, right after `sync now` of a seeded catch-up of `rows` rows.
async fn t6(
    central: &Central,
    node: &Node,
    template: &str,
    rows: usize,
    count: usize,
    t5: &Urgent,
) -> Row {
    let t6 = urgent_latency(central, node, count, Some((template, rows))).await;
    let ratio = t6.stats.p99.as_secs_f64() / t5.stats.p99.as_secs_f64().max(1e-3);
    Row::new(
        "T6 T5 during a catch-up, p50 / p99",
        format!(
            "{} / {} ({:.0} % of T5's p99; {} of {count} sent during the catch-up)",
            ms(t6.stats.p50),
            ms(t6.stats.p99),
            ratio * 100.0,
            t6.during_backlog
        ),
        format!("{} / {} (T5, idle)", ms(t5.stats.p50), ms(t5.stats.p99)),
        T6_TARGET,
    )
}

// ---- T11 -----------------------------------------------------------------------------------

/// T11: `rows` task summaries seeded, then `sync now`; the daemon's RSS sampled every 100 ms
/// until the backlog is empty, its highest value against the idle RSS read before.
async fn t11(node: &Node, template: &str, rows: usize, idle_rss: f64) -> Row {
    node.seed(template, rows, 0x0194_0000).await;
    let started = Instant::now();
    node.sync_now().await;
    let mut peak = Memory::of(node.pid()).rss_mb;
    while node.backlog("normal").await > 0 {
        assert!(started.elapsed() < DRAIN_DEADLINE, "the drain did not end");
        peak = peak.max(Memory::of(node.pid()).rss_mb);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    Row::new(
        &format!("T11 daemon RSS draining {rows} rows, above idle"),
        format!("{} (peak {}, drained in {elapsed:.0?})", mb(peak - idle_rss), mb(peak)),
        format!("{} (idle, sync configured)", mb(idle_rss)),
        T11_TARGET,
    )
}
