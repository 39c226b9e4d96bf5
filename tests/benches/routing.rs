//! Figures of routing across systems (issue 13; targets T12, T14, T17 and T18 of
//! `sync-routing.md` 4.3), each printed next to a baseline measured in the same run, against a
//! real central: PostgreSQL 15 with `supabase/` and postrust in front (`ccm_tests::central`).
//!
//! Run with `cargo bench -p ccm-tests --bench routing`. Nothing here asserts on time: the bench
//! prints one table and fails only when ccm misbehaves (a refused call, a task claimed twice, a
//! task that never runs). Sizes come from the environment:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `CCM_BENCH_ROUTING_ONLY` | all | the parts to run, e.g. `t12,t18` |
//! | `CCM_BENCH_ROUTING_TASKS` | 100 | T12: tasks created on A, and local tasks of the baseline |
//! | `CCM_BENCH_ROUTING_GAP_MS` | 1500 | T12: mean pause before each creation (0 to twice) |
//! | `CCM_BENCH_ROUTING_CLAIMS` | 5000 | T14: tasks in the queue, claimed one per call |
//! | `CCM_BENCH_ROUTING_CLAIMERS` | 20 | T14: concurrent claimers (enrolled systems) |
//! | `CCM_BENCH_ROUTING_WINDOW_S` | 60 | T17: how long the requests are counted |
//! | `CCM_BENCH_ROUTING_PLACEMENT` | 1000 | T18: tasks placed on the 5 systems |
//! | `CCM_BENCH_ROUTING_HOLD_MS` | 2000 | T18: mean time a task is held (0 to twice) |
//! | `CCM_BENCH_ROUTING_RATE` | 5 | T18: tasks submitted per second in the second scenario |
//!
//! - T12: a task created on A (no checkout of its repository) until its agent runs on B (a
//!   checkout, free slots), both nodes real daemons at the default routing settings (central
//!   and node), agents the quick `commit` mode of `tests/fixtures/fake-claude.sh`. Start: the
//!   wall clock just before `POST /api/routed` on A; end: the `executing` entry of B's task log
//!   (milliseconds). One task at a time, each after the previous one finished and a random
//!   pause (a finished task makes B claim at once; the pause puts the next creation at any
//!   phase of B's 2 s claim poll). Baseline: the same, for tasks created on B itself
//!   (`POST /api/tasks`).
//! - T14: claims per second of 20 systems calling `api.claim` with `p_max` 1 through postrust
//!   until the queue is empty (offer window 0, so any system may claim any task; lease and
//!   staleness an hour, so the run's length changes nothing). Baseline: the same claims as
//!   direct SQL, `select api.claim(1)` from 20 `psql` connections, each with the system's JWT
//!   claims in `request.jwt.claims` and role `authenticated` (as postrust sets them).
//! - T17: the requests each node sends the central, counted at its fault proxy by function,
//!   over a window at the default settings: a node running 5 routed tasks (pinned to it, slow
//!   agents, all its slots; the window opens once their starts were reported), an idle node
//!   with a checkout (it polls `api.claim`) and the origin following its 5 routed tasks.
//!   Heartbeats per interval = heartbeats in the window over window / 15 s (the default
//!   `sync.heartbeat_secs`); the baseline is the idle node's.
//! - T18: 1,000 tasks submitted by an origin through `api.submit_task`, at the default
//!   settings, to 5 equal systems (4 slots each, as the node's default) that heartbeat every
//!   15 s, claim like the node (up to their free slots every 2 s ± 20 %, at once after
//!   finishing a task, taking all they asked for, or a heartbeat that offers work) and
//!   complete each task after a random time. Two scenarios: all tasks queued before the
//!   systems start (a backlog), and tasks submitted at a steady rate while they run (5/s: half
//!   the fleet's capacity with a 2 s hold). Figure: most tasks done by one system over the
//!   mean. Baseline: the same count placed uniformly at random. A hold much shorter than the
//!   claim poll (2 s) concentrates the work on the freshest system (see BENCHMARKS.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccm_tests::bench::{machine, ms, print_table, runs_part, Row, Stats};
use ccm_tests::central::{supabase_claims, Central};
use ccm_tests::faultproxy::Seen;
use ccm_tests::fleet::{wait_for, Clocks, Fleet, Node, NodeOptions, OWNER};
use serde_json::{json, Value};

/// The repository of the RPC-only systems of T14 and T18.
const REPO: &str = "https://github.com/org/app";
/// The node's default `sync.heartbeat_secs` and the central's default `heartbeat_s`.
const HEARTBEAT_S: u64 = 15;
/// The node's default `sync.claim_ms`.
const CLAIM_MS: u64 = 2000;
/// The node's default `scheduler.slots`.
const NODE_SLOTS: usize = 4;
/// Systems of T18.
const PLACEMENT_SYSTEMS: usize = 5;
/// Routed tasks running on the busy node of T17.
const BUSY_TASKS: usize = 5;
/// How long a task may take to reach `executing` before the bench gives up.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

fn main() {
    let run = |part: &str| runs_part("CCM_BENCH_ROUTING_ONLY", part);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let machine = machine();
    let mut rows = Vec::new();
    if run("t12") {
        rows.extend(runtime.block_on(t12()));
    }
    if run("t14") {
        rows.extend(t14(&runtime));
    }
    if run("t17") {
        rows.extend(runtime.block_on(t17()));
    }
    if run("t18") {
        rows.extend(runtime.block_on(t18()));
    }
    println!("\n{machine}");
    print_table(&rows);
}

/// The value of the environment variable `name`, else `default`.
fn env<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text} is not a valid number")),
        Err(_) => default,
    }
}

fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

// ---- T12: created on A → running on B ----------------------------------------------------

async fn t12() -> Vec<Row> {
    let tasks: usize = env("CCM_BENCH_ROUTING_TASKS", 100);
    let gap = Duration::from_millis(env("CCM_BENCH_ROUTING_GAP_MS", 1500));
    let fleet = Fleet::with_clocks(Clocks::Default);
    let quick = NodeOptions { mode: "commit", slots: 8, sleep_s: 0, delay_s: 0 };
    let alpha = fleet.node_with(1, "alpha", false, &quick).up();
    let beta = fleet.node_with(2, "beta", true, &quick).up();
    wait_for("beta's checkout at the central", RUN_DEADLINE, async || {
        fleet.has_context("beta").then_some(())
    })
    .await;

    // Baseline first: tasks created on beta itself.
    let mut rng = fastrand::Rng::with_seed(12);
    let local = one_by_one(&beta, tasks, gap, &mut rng, async |n| {
        let body =
            json!({ "title": format!("local {n}"), "repo": fleet.remote, "profile": "fake" });
        let (status, task) = beta.daemon().post("/api/tasks", body).await;
        assert_eq!(status, 201, "beta refused a local task: {task}");
        task["id"].as_str().expect("a task id").to_string()
    })
    .await;
    let routed = one_by_one(&beta, tasks, gap, &mut rng, async |n| {
        alpha.route(&format!("routed {n}"), &fleet.remote, None).await
    })
    .await;
    let local_latency = local.iter().map(|t| t.2).collect();
    let routed_latency = routed.iter().map(|t| t.2).collect();
    let stages = stages(&fleet, &beta, &routed).await;
    let (ccm, baseline) = (Stats::new(routed_latency), Stats::new(local_latency));
    let what = "(created on B itself)";
    vec![
        Row::new(
            &format!("T12 created on A → running on B, p50 ({tasks} tasks)"),
            secs(ccm.p50),
            format!("{} {what}", secs(baseline.p50)),
            "≤ 1.5 s",
        ),
        Row::new(
            "T12 created on A → running on B, p99",
            secs(ccm.p99),
            format!("{} {what}", secs(baseline.p99)),
            "≤ 3 s",
        ),
        Row::new(
            "T12 created on A → running on B, max",
            secs(ccm.max),
            format!("{} {what}", secs(baseline.max)),
            "—",
        ),
        Row::new("T12 stages, p50", stages, "—".into(), "—"),
    ]
}

/// Creates `tasks` tasks one at a time with `create`, each after the previous one left its
/// slot on `runner` and a uniform random pause of 0 to twice `gap` (so creations fall at every
/// phase of the runner's claim poll, which a finished task restarts); each task's id, creation
/// time, and time until `runner`'s task log says `executing`.
async fn one_by_one(
    runner: &Node,
    tasks: usize,
    gap: Duration,
    rng: &mut fastrand::Rng,
    mut create: impl AsyncFnMut(usize) -> String,
) -> Vec<(String, SystemTime, Duration)> {
    let mut created = Vec::with_capacity(tasks);
    for n in 0..tasks {
        tokio::time::sleep(gap.mul_f64(2.0 * rng.f64())).await;
        let started = SystemTime::now();
        let id = create(n).await;
        let at = wait_for(&format!("task {id} to run"), RUN_DEADLINE, async || {
            executing_at(&runner.local(&id).await?)
        })
        .await;
        settle(runner, &id).await;
        created.push((id, started, at.duration_since(started).unwrap_or_default()));
    }
    created
}

/// When the task's log first says `executing`.
fn executing_at(task: &Value) -> Option<SystemTime> {
    let entry = task["log"].as_array()?.iter().find(|e| e["to_state"] == "executing")?;
    humantime::parse_rfc3339(entry["at"].as_str()?).ok()
}

/// Waits (at most a minute) until the task left its slot.
async fn settle(node: &Node, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = ["complete", "failed", "alert", "cancelled", "blocked"];
    while Instant::now() < deadline {
        let state = node.local(id).await.map(|t| t["state"].clone()).unwrap_or_default();
        if done.iter().any(|s| state == *s) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The p50 of each stage of a routed task: creation on A → submitted (the central's
/// `created_at`), → claimed by B (`claimed_at` of the attempt), → running on B.
async fn stages(fleet: &Fleet, beta: &Node, routed: &[(String, SystemTime, Duration)]) -> String {
    let central = fleet.central.pg.rows(
        "select t.task_id, extract(epoch from t.created_at)::float8 as submitted, \
         extract(epoch from a.claimed_at)::float8 as claimed \
         from private.routed_tasks t join private.task_attempts a using (task_id) \
         where a.attempt = 1",
    );
    let epoch = |at: f64| UNIX_EPOCH + Duration::from_secs_f64(at);
    let (mut submit, mut claim, mut start) = (Vec::new(), Vec::new(), Vec::new());
    for (id, created, _) in routed {
        let Some(row) = central.as_array().into_iter().flatten().find(|r| r["task_id"] == *id)
        else {
            continue;
        };
        let (Some(submitted), Some(claimed)) = (row["submitted"].as_f64(), row["claimed"].as_f64())
        else {
            continue;
        };
        let Some(running) = beta.local(id).await.as_ref().and_then(executing_at) else {
            continue;
        };
        let (submitted, claimed) = (epoch(submitted), epoch(claimed));
        submit.push(submitted.duration_since(*created).unwrap_or_default());
        claim.push(claimed.duration_since(submitted).unwrap_or_default());
        start.push(running.duration_since(claimed).unwrap_or_default());
    }
    if submit.is_empty() {
        return "n/a".into();
    }
    format!(
        "submit {}, wait for B's claim {}, claim → running {}",
        ms(Stats::new(submit).p50),
        ms(Stats::new(claim).p50),
        ms(Stats::new(start).p50)
    )
}

// ---- T14: claims per second -------------------------------------------------------------

/// A system calling the central's API with its own token.
struct System {
    sub: String,
    token: String,
}

impl System {
    /// Enrolls system `n` of the fleet's operator with `slots`, holding `repos`, and sends a
    /// heartbeat.
    async fn enroll(central: &Central, n: usize, slots: usize, repos: &[&str]) -> System {
        let sub = format!("00000000-0000-4000-8000-{:012}", 100 + n);
        let system = System { token: central.system_token(&sub, OWNER), sub };
        let name = format!("s{n:02}");
        system
            .call(
                central,
                "enroll",
                json!({ "p_name": name, "p_slots": slots, "p_version": "bench" }),
            )
            .await;
        let contexts: Vec<Value> = repos
            .iter()
            .map(|r| json!({ "repo_url": r, "path": format!("/src/{name}") }))
            .collect();
        let body = json!({ "p_generation": 1, "p_contexts": contexts });
        system.call(central, "register_contexts", body).await;
        system.call(central, "heartbeat", json!({ "p_status": {} })).await;
        system
    }

    /// `function` with `body`, which must answer 200; its JSON answer.
    async fn call(&self, central: &Central, function: &str, body: Value) -> Value {
        let (status, answer) = central.rpc(Some(&self.token), function, body.clone()).await;
        assert_eq!(status, 200, "{function}({body}): {answer}");
        answer
    }
}

/// A central whose queue holds `tasks` tasks of [`REPO`], and `claimers` systems holding it
/// with room for every task.
async fn claim_queue(tasks: usize, claimers: usize) -> (Central, Vec<System>) {
    let central = Central::start();
    central.pg.query(
        "update private.routing_settings set offer_s = 0, lease_s = 3600, stale_after_s = 3600",
    );
    let mut systems = Vec::with_capacity(claimers);
    for n in 0..claimers {
        systems.push(System::enroll(&central, n, tasks, &[REPO]).await);
    }
    central.pg.query(&format!(
        "insert into private.routed_tasks (origin_system, owner, idempotency_key, repo_url, title, \
                                         max_attempts) \
         select s.system_id, s.owner, 'bench:' || g.i, '{REPO}', 'task ' || g.i, 3 \
           from private.systems s, generate_series(1, {tasks}) g(i) where s.name = 's00'"
    ));
    (central, systems)
}

fn t14(runtime: &tokio::runtime::Runtime) -> Vec<Row> {
    let tasks: usize = env("CCM_BENCH_ROUTING_CLAIMS", 5000);
    let claimers: usize = env("CCM_BENCH_ROUTING_CLAIMERS", 20);
    let (rest, latency) = runtime.block_on(claims_through_rest(tasks, claimers));
    let (central, systems) = runtime.block_on(claim_queue(tasks, claimers));
    let sql = claims_through_sql(&central, &systems, tasks);
    vec![
        Row::new(
            &format!("T14 claims/s, {claimers} claimers, p_max 1 ({tasks} tasks)"),
            format!("{rest:.0} claims/s"),
            format!("{sql:.0} claims/s (select api.claim(1), {claimers} psql connections)"),
            "≥ 1,000 claims/s",
        ),
        Row::new(
            "T14 claim call latency through postrust, p50 / p99",
            format!("{} / {}", ms(latency.p50), ms(latency.p99)),
            "—".into(),
            "—",
        ),
    ]
}

/// Every task claimed by `claimers` concurrent systems through postrust; claims per second and
/// the latency of each call.
async fn claims_through_rest(tasks: usize, claimers: usize) -> (f64, Stats) {
    let (central, systems) = claim_queue(tasks, claimers).await;
    let central = Arc::new(central);
    let started = Instant::now();
    let handles: Vec<_> = systems
        .into_iter()
        .map(|system| {
            let central = Arc::clone(&central);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let call = Instant::now();
                    let answer = system.call(&central, "claim", json!({ "p_max": 1 })).await;
                    latencies.push(call.elapsed());
                    let claimed = answer["claimed"].as_array().map_or(0, Vec::len);
                    if claimed == 0 {
                        assert!(answer["reason"].is_null(), "a claimer was refused: {answer}");
                        return latencies;
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.expect("claimer"));
    }
    let elapsed = started.elapsed();
    check_all_leased_once(&central, tasks);
    (tasks as f64 / elapsed.as_secs_f64(), Stats::new(latencies))
}

/// Every task is leased, each by one attempt.
fn check_all_leased_once(central: &Central, tasks: usize) {
    let leased = central.pg.query(
        "select count(*) filter (where state = 'leased') || ' ' || \
         (select count(*) from private.task_attempts) from private.routed_tasks",
    );
    assert_eq!(leased, format!("{tasks} {tasks}"), "leased tasks and attempts");
}

/// Every task claimed by `select api.claim(1)` on one `psql` connection per system, until the
/// queue is empty; claims per second from the first statement to the last (the database's
/// clock).
fn claims_through_sql(central: &Central, systems: &[System], tasks: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let children: Vec<_> = systems
        .iter()
        .enumerate()
        .map(|(n, system)| {
            let script = dir.path().join(format!("claimer-{n}.sql"));
            std::fs::write(&script, claim_script(system, tasks)).expect("psql script");
            Command::new(psql())
                .args(["-h", "127.0.0.1", "-p", &central.pg.port().to_string()])
                .args(["-U", "postgres", "-d", &central.pg.database])
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
                .arg(&script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("psql starts")
        })
        .collect();
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    for child in children {
        let out = child.wait_with_output().expect("psql runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "psql: {text}{}", String::from_utf8_lossy(&out.stderr));
        let at = |mark: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(mark))
                .and_then(|at| at.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("psql printed no {mark:?}: {text}"))
        };
        first = first.min(at("start "));
        last = last.max(at("end "));
    }
    check_all_leased_once(central, tasks);
    tasks as f64 / (last - first)
}

/// A psql script that claims one task per statement as `system` until nothing is left (at most
/// `tasks + 1` statements), printing the database's clock first and last.
fn claim_script(system: &System, tasks: usize) -> String {
    let claims = supabase_claims(&system.sub, json!({ "role": "system", "owner": OWNER }));
    let mut script = format!(
        "set request.jwt.claims = '{claims}';\nset role authenticated;\n\
         select 'start ' || extract(epoch from clock_timestamp());\n"
    );
    for _ in 0..=tasks {
        script.push_str(
            "select jsonb_array_length(api.claim(1) -> 'claimed') = 0 as done \\gset\n\
             \\if :done\nselect 'end ' || extract(epoch from clock_timestamp());\n\\quit\n\\endif\n",
        );
    }
    script
}

/// `psql` of the PostgreSQL the central runs on (as `ccm_tests::central` finds it).
fn psql() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir).join("psql");
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin/psql");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("psql")
    }
}

// ---- T17: requests per system -----------------------------------------------------------

async fn t17() -> Vec<Row> {
    let window = Duration::from_secs(env("CCM_BENCH_ROUTING_WINDOW_S", 60));
    let fleet = Fleet::with_clocks(Clocks::Default);
    let alpha = fleet.node_with(1, "alpha", false, &NodeOptions::new("commit")).up();
    let slow = NodeOptions { mode: "slow", slots: BUSY_TASKS as u32, sleep_s: 3600, delay_s: 0 };
    let beta = fleet.node_with(2, "beta", true, &slow).up();
    let quick = NodeOptions { slots: NODE_SLOTS as u32, ..NodeOptions::new("commit") };
    let charlie = fleet.node_with(3, "charlie", true, &quick).up();
    wait_for("the checkouts at the central", RUN_DEADLINE, async || {
        (fleet.has_context("beta") && fleet.has_context("charlie")).then_some(())
    })
    .await;
    let mut ids = Vec::with_capacity(BUSY_TASKS);
    for n in 0..BUSY_TASKS {
        ids.push(alpha.route(&format!("slow {n}"), &fleet.remote, Some("beta")).await);
    }
    for id in &ids {
        wait_for(&format!("task {id} to run on beta"), RUN_DEADLINE, async || {
            executing_at(&beta.local(id).await?)
        })
        .await;
    }
    // Their starts reached the central: from here on nothing about them changes.
    wait_for("beta to report its tasks' start", RUN_DEADLINE, async || {
        let started = beta.proxy.seen().iter().filter(|s| function(s) == "report_progress").count();
        (started >= BUSY_TASKS).then_some(())
    })
    .await;

    let from = Instant::now();
    tokio::time::sleep(window).await;
    let in_window = |node: &Node| -> Vec<Seen> {
        let seen = node.proxy.seen().into_iter();
        seen.filter(|s| s.at >= from && s.at < from + window).collect()
    };
    let (busy, idle, origin) = (in_window(&beta), in_window(&charlie), in_window(&alpha));
    let leases: Vec<usize> = busy
        .iter()
        .filter(|s| function(s) == "heartbeat")
        .map(|s| s.json()["p_status"]["leases"].as_array().map_or(0, Vec::len))
        .collect();
    let leases = match (leases.iter().min(), leases.iter().max()) {
        (Some(min), Some(max)) if min == max => format!("{min} leases in each"),
        (Some(min), Some(max)) => format!("{min} to {max} leases each"),
        _ => "no heartbeat".into(),
    };
    let window_s = window.as_secs();
    let beats = |seen: &[Seen]| {
        let n = seen.iter().filter(|s| function(s) == "heartbeat").count();
        let per_interval = n as f64 / (window.as_secs_f64() / HEARTBEAT_S as f64);
        format!("{per_interval:.2} ({n} in {window_s} s")
    };
    let per_minute = |seen: &[Seen]| {
        let mut calls = BTreeMap::<&str, usize>::new();
        for s in seen {
            *calls.entry(function(s)).or_default() += 1;
        }
        let scale = 60.0 / window.as_secs_f64();
        let each: Vec<String> =
            calls.iter().map(|(f, n)| format!("{f} {:.1}", *n as f64 * scale)).collect();
        format!("{:.1}/min ({})", seen.len() as f64 * scale, each.join(", "))
    };
    vec![
        Row::new(
            &format!(
                "T17 heartbeats per {HEARTBEAT_S} s interval, node running {BUSY_TASKS} routed tasks"
            ),
            format!("{}; {leases})", beats(&busy)),
            format!("{}, idle node)", beats(&idle)),
            "1, whatever the number of tasks",
        ),
        Row::new(
            "T17 requests/min, idle node with a checkout",
            per_minute(&idle),
            format!("node running {BUSY_TASKS} tasks: {}", per_minute(&busy)),
            "stated",
        ),
        Row::new(
            &format!("T17 requests/min, origin following {BUSY_TASKS} routed tasks"),
            per_minute(&origin),
            "—".into(),
            "stated",
        ),
    ]
}

/// The function a request called (the path after `rpc/`), or its path.
fn function(seen: &Seen) -> &str {
    let path = seen.path.split('?').next().unwrap_or(&seen.path);
    path.rsplit_once("rpc/").map_or(path, |(_, function)| function)
}

// ---- T18: placement ----------------------------------------------------------------------

async fn t18() -> Vec<Row> {
    let tasks: usize = env("CCM_BENCH_ROUTING_PLACEMENT", 1000);
    let hold = Duration::from_millis(env("CCM_BENCH_ROUTING_HOLD_MS", 2000));
    let rate: f64 = env("CCM_BENCH_ROUTING_RATE", 5.0);
    let mean = tasks as f64 / PLACEMENT_SYSTEMS as f64;
    let mut rng = fastrand::Rng::with_seed(18);
    let mut random = [0u64; PLACEMENT_SYSTEMS];
    for _ in 0..tasks {
        random[rng.usize(..PLACEMENT_SYSTEMS)] += 1;
    }
    let random = random.iter().max().copied().unwrap_or(0) as f64 / mean;
    let mut rows = Vec::new();
    let paced = format!("submitted at {rate:.0}/s");
    for (what, rate) in [("all queued first", None), (paced.as_str(), Some(rate))] {
        let (counts, elapsed) = placement(tasks, hold, rate).await;
        let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let each: Vec<String> = counts.iter().map(|(name, n)| format!("{name} {n}")).collect();
        rows.push(Row::new(
            &format!(
                "T18 max/mean tasks per system, {what} ({tasks} tasks, {PLACEMENT_SYSTEMS} systems)"
            ),
            format!("{:.2} ({}; {})", max as f64 / mean, each.join(", "), secs(elapsed)),
            format!("{random:.2} (uniform random placement)"),
            "≤ 1.2",
        ));
    }
    rows
}

/// `tasks` tasks placed on [`PLACEMENT_SYSTEMS`] equal systems at the default settings: all
/// queued before the systems start, or submitted at `rate` per second while they run. Tasks
/// done per system, and the time until all were done.
async fn placement(
    tasks: usize,
    hold: Duration,
    rate: Option<f64>,
) -> (Vec<(String, u64)>, Duration) {
    let central = Arc::new(Central::start());
    let origin = System::enroll(&central, 0, 0, &[]).await;
    let submit = async |n: usize| {
        let task = json!({ "idempotency_key": format!("t18:{n}"), "title": format!("task {n}"),
                           "repo_url": REPO });
        origin.call(&central, "submit_task", json!({ "p_task": task })).await;
    };
    let mut systems = Vec::with_capacity(PLACEMENT_SYSTEMS);
    for n in 1..=PLACEMENT_SYSTEMS {
        systems.push(System::enroll(&central, n, NODE_SLOTS, &[REPO]).await);
    }
    if rate.is_none() {
        for n in 0..tasks {
            submit(n).await;
        }
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let claimers: Vec<_> = systems
        .into_iter()
        .enumerate()
        .map(|(n, system)| {
            let claimer = Claimer {
                central: Arc::clone(&central),
                system,
                held: Vec::new(),
                hold,
                rng: fastrand::Rng::with_seed(n as u64),
            };
            tokio::spawn(claimer.run(Arc::clone(&stop)))
        })
        .collect();
    if let Some(rate) = rate {
        for n in 0..tasks {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            submit(n).await;
        }
    }
    let deadline = Duration::from_secs(60) + hold.mul_f64(tasks as f64 / 2.0);
    wait_for("every placed task to be done", deadline, async || {
        assert!(!claimers.iter().any(|c| c.is_finished()), "a claimer ended early");
        let done =
            central.pg.query("select count(*) from private.routed_tasks where state = 'done'");
        (done == tasks.to_string()).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for claimer in claimers {
        claimer.await.expect("claimer");
    }
    let rows = central.pg.rows(
        "select s.name, count(*) as n from private.task_attempts a join private.systems s \
         using (system_id) where a.outcome = 'done' group by s.name order by s.name",
    );
    let counts = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["name"].as_str().unwrap_or("?").to_string(), r["n"].as_u64().unwrap_or(0)))
        .collect();
    (counts, elapsed)
}

/// One system of T18, claiming and running like a node with the default settings.
struct Claimer {
    central: Arc<Central>,
    system: System,
    /// Held leases: (task id, fencing token, done at).
    held: Vec<(Value, Value, Instant)>,
    /// Mean time a task is held.
    hold: Duration,
    rng: fastrand::Rng,
}

impl Claimer {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut beat = Instant::now();
        let mut next_claim = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if beat.elapsed() >= Duration::from_secs(HEARTBEAT_S) {
                let status = json!({ "p_status": { "running": self.held.len() } });
                let answer = self.system.call(&self.central, "heartbeat", status).await;
                beat = Instant::now();
                // Work is offered: the node asks for it at once.
                if answer["offers"].as_i64().unwrap_or(0) > 0 {
                    next_claim = beat;
                }
            }
            // A finished task frees a slot: the node asks for work at once.
            if self.complete_due().await > 0 {
                next_claim = Instant::now();
            }
            let free = NODE_SLOTS - self.held.len();
            if free > 0 && Instant::now() >= next_claim {
                let claimed = self.claim(free).await;
                next_claim = if claimed == free {
                    Instant::now()
                } else {
                    let wait = Duration::from_millis(CLAIM_MS).mul_f64(0.8 + 0.4 * self.rng.f64());
                    Instant::now() + wait
                };
            }
            let due = self.held.iter().map(|h| h.2).min();
            let wake = due.map_or(next_claim, |due| due.min(next_claim));
            let nap = wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(50));
            tokio::time::sleep(nap.max(Duration::from_millis(1))).await;
        }
    }

    /// Claims up to `free` tasks; how many it got.
    async fn claim(&mut self, free: usize) -> usize {
        let answer = self.system.call(&self.central, "claim", json!({ "p_max": free })).await;
        let claimed = answer["claimed"].as_array().cloned().unwrap_or_default();
        for task in &claimed {
            let done_at = Instant::now() + self.hold.mul_f64(2.0 * self.rng.f64());
            self.held.push((task["task_id"].clone(), task["fencing_token"].clone(), done_at));
        }
        claimed.len()
    }

    /// Completes the held tasks whose time came; how many.
    async fn complete_due(&mut self) -> usize {
        let now = Instant::now();
        let (due, running): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.2 <= now);
        self.held = running;
        for (task_id, token, _) in &due {
            let body = json!({ "p_task_id": task_id, "p_fencing_token": token,
                               "p_result": { "status": "done" } });
            let answer = self.system.call(&self.central, "complete", body).await;
            assert_eq!(answer["status"], "applied", "{answer}");
        }
        due.len()
    }
}
