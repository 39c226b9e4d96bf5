//! A month on one machine in compressed time (issue 28): builds a home that looks like a busy
//! node's 30 days, a day at a time (rows written with that day's timestamps: tasks with their
//! log, agent, attempt, report, alerts and notifications, acknowledged outbox rows, hook
//! events), runs the production retention pass (`ccm gc --db`) with its clock at the end of
//! each day, and copies the home aside as day 1, day 14 and the last day left it. The copies
//! are measured at the end side by side, a daemon up on each and every figure's requests sent
//! to one day's daemon after another (so that what the machine does meanwhile weighs on every
//! day alike): hook ingest p50/p99 (`POST /api/hooks`), task creation rate (`POST /api/tasks`,
//! the median of rounds of 200, each started with no unfinished task) and the daemon's CPU time
//! per created task, the board's server time (`GET /tasks`), `ccm task list`, the daemon's RSS
//! (idle, and after the load) and the database size. The tasks a round creates are cancelled
//! through the API before the next round and after the last, so that every round creates, lists
//! and schedules against the same backlog. Then the hook latency while the daemon's own pass
//! deletes 100,000 old rows, against the same load outside the pass (1,000 requests a second
//! for 35 s, the pass starting 10 s in).
//!
//! Run with `cargo bench -p ccm-tests --bench soak`. Sizes from the environment:
//! `CCM_SOAK_DAYS` (30), `CCM_SOAK_HOOKS_PER_DAY` (20,000), `CCM_SOAK_TASKS_PER_DAY` (200),
//! `CCM_SOAK_SAMPLES` (hook requests per daemon start, 3,000), `CCM_SOAK_PASS_ROWS` (old hook
//! events the measured pass deletes, 100,000), `CCM_SOAK_CREATE_ROUNDS` (rounds of 200 task
//! creations, 5), `CCM_SOAK_STARTS` (daemon starts per measured day, whose samples the day's
//! figures pool, 3); `CCM_SOAK_KEEP` keeps the home and prints where.
//! Syncing to a central is not part of it: the acknowledged outbox rows are written as a synced
//! node's would be.
//! Nothing here asserts on time.

use std::path::Path;
use std::time::{Duration, Instant};

use ccm_tests::bench::{
    cpu_time, hook_latencies, machine, mb, ms, resident_by_mapping, Memory, Stats,
};
use ccm_tests::{ccm_bin, open_db, Daemon, TestHome};
use serde_json::{json, Value};
use sqlx::{Connection, SqliteConnection};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn uuid(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

struct Sizes {
    days: usize,
    hooks: usize,
    tasks: usize,
    samples: usize,
    pass_rows: usize,
    rounds: usize,
    starts: usize,
}

/// Tasks created per round of the creation figure.
const CREATIONS: usize = 200;

/// Cancels `tasks` through the API, 20 at a time (the harness's own tasks, which no agent runs:
/// left queued, each measured day would list and schedule the earlier days' as well).
async fn cancel(daemon: &Daemon, tasks: Vec<String>) {
    for chunk in tasks.chunks(20) {
        let mut set = tokio::task::JoinSet::new();
        for id in chunk {
            let request = daemon
                .http
                .post(daemon.url(&format!("/api/tasks/{id}/events")))
                .bearer_auth(&daemon.token)
                .json(&json!({"event": "cancel", "reason": "soak: measured"}));
            set.spawn(async move { request.send().await.expect("cancelled").status() });
        }
        while let Some(status) = set.join_next().await {
            assert!(status.unwrap().is_success(), "cancel refused");
        }
    }
}

/// Writes day `day`'s rows (timestamps within `[start, start + 1 day)`), as a busy node's.
async fn fill_day(conn: &mut SqliteConnection, home: &Path, day: usize, start: i64, sizes: &Sizes) {
    let mut tx = conn.begin().await.expect("begin");
    let payload = json!({
        "session_id": "s", "hook_event_name": "PreToolUse", "tool_name": "Edit",
        "tool_input": { "file_path": "/src/lib.rs", "old_string": "a".repeat(200), "new_string": "b".repeat(200) },
        "cwd": "/work/repo"
    })
    .to_string();
    let step = DAY_MS / sizes.tasks.max(1) as i64;
    let mut tasks = Vec::with_capacity(sizes.tasks);
    for t in 0..sizes.tasks {
        let n = (day * 100_000 + t) as u64;
        let id = uuid(1, n);
        let agent = uuid(2, n);
        let at = start + t as i64 * step;
        sqlx::query(
            "INSERT INTO tasks (id, title, prompt, profile, max_attempts, attempts, state, created_at, updated_at, version) \
             VALUES (?, ?, 'soak prompt: change the parser', 'manual', 3, 1, 'complete', ?, ?, 4)",
        )
        .bind(&id).bind(format!("day {day} task {t}")).bind(at).bind(at + 600_000)
        .execute(&mut *tx).await.expect("task");
        for (from, to, dt) in [
            (None, "created", 0),
            (Some("created"), "queued", 1000),
            (Some("queued"), "executing", 2000),
            (Some("executing"), "complete", 600_000),
        ] {
            sqlx::query("INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor) VALUES (?, ?, ?, ?, 'soak', 'soak')")
                .bind(&id).bind(at + dt).bind(from).bind(to).execute(&mut *tx).await.expect("log");
        }
        let dir = home.join("agents").join(&agent);
        sqlx::query(
            "INSERT INTO agents (id, task_id, attempt, kind, profile, status, dir, cwd, cost_usd, input_tokens, \
             output_tokens, started_at, last_heartbeat, ended_at) VALUES (?, ?, 1, 'worker', 'claude', 'exited', ?, '/work', 0.12, 5000, 800, ?, ?, ?)",
        )
        .bind(&agent).bind(&id).bind(dir.display().to_string()).bind(at).bind(at + 500_000).bind(at + 500_000)
        .execute(&mut *tx).await.expect("agent");
        sqlx::query("INSERT INTO attempts (task_id, number, agent_id, prompt, started_at, ended_at, outcome, last_message) VALUES (?, 1, ?, 'soak prompt', ?, ?, 'success', 'done')")
            .bind(&id).bind(&agent).bind(at).bind(at + 500_000).execute(&mut *tx).await.expect("attempt");
        sqlx::query("INSERT INTO reports (task_id, attempt, summary, created_at) VALUES (?, 1, '{\"cost_usd\":0.12,\"tokens\":{\"input\":5000,\"output\":800}}', ?)")
            .bind(&id).bind(at + 550_000).execute(&mut *tx).await.expect("report");
        if t % 10 == 0 {
            sqlx::query("INSERT INTO alerts (id, task_id, severity, reason, message, created_at, resolved_at) VALUES (?, ?, 'warning', 'stalled', 'no output for 10 min', ?, ?)")
                .bind(uuid(3, n)).bind(&id).bind(at + 100_000).bind(at + 400_000).execute(&mut *tx).await.expect("alert");
        }
        for version in [1, 4] {
            sqlx::query("INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at, state) VALUES ('task_summary', ?, ?, 'normal', '{\"state\":\"complete\"}', ?, 'acked')")
                .bind(&id).bind(version).bind(at + version * 1000).execute(&mut *tx).await.expect("outbox");
        }
        tasks.push(id);
    }
    sqlx::query("UPDATE notifications SET routed_at = created_at WHERE routed_at IS NULL")
        .execute(&mut *tx)
        .await
        .expect("routed");
    let hook_step = DAY_MS / sizes.hooks.max(1) as i64;
    for h in 0..sizes.hooks {
        let task = (h % 4 == 0).then(|| tasks[h % tasks.len().max(1)].clone());
        sqlx::query("INSERT INTO hook_events (key, at, system, task_id, session_id, event, kind, tool, via, payload) VALUES (?, ?, 'claude', ?, 's', 'PreToolUse', 'pre_tool', 'Edit', 'api', ?)")
            .bind(format!("d{day}-{h}")).bind(start + h as i64 * hook_step).bind(task).bind(&payload)
            .execute(&mut *tx).await.expect("hook event");
    }
    tx.commit().await.expect("commit");
}

/// `ccm gc --db` with its clock at `as_of`: the rows it removed per kind.
fn pass(home: &TestHome, as_of: i64) -> Value {
    let out = home.run_ok(&["gc", "--db", "--as-of", &as_of.to_string(), "--json"]);
    let removed = serde_json::from_str::<Value>(&out).expect("pass JSON")["removed"].clone();
    let kept: serde_json::Map<String, Value> = removed
        .as_object()
        .expect("removed per kind")
        .iter()
        .filter(|(_, n)| n.as_u64() != Some(0))
        .map(|(k, n)| (k.clone(), n.clone()))
        .collect();
    Value::Object(kept)
}

/// Writes the harness's own dirty pages (a day's fill, a pass, the rows a measurement added) to
/// disk before a measurement: the kernel would otherwise flush them during it, and each commit's
/// `fsync` would wait behind them. On a real node those rows arrived over a day, not a second.
fn settle_disk() {
    let status = std::process::Command::new("sync").status().expect("sync runs");
    assert!(status.success(), "sync: {status}");
}

fn db_bytes(home: &TestHome) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    size(&home.db_file()) + size(&home.home().join("ccm.db-wal"))
}

async fn cookie(home: &TestHome) -> String {
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let response = http.get(&link).send().await.expect("sign-in answers");
    let set = response.headers().get(reqwest::header::SET_COOKIE).expect("a cookie");
    set.to_str().unwrap().split(';').next().unwrap().to_string()
}

struct Day {
    day: usize,
    hook: Stats,
    create_per_s: f64,
    create_cpu: Duration,
    board: Stats,
    list: Stats,
    list_api: Stats,
    idle_rss: f64,
    rss: f64,
    db: u64,
    rows: i64,
}

/// A measured day's home, copied aside as that day left it.
struct Snapshot {
    day: usize,
    home: TestHome,
    db: u64,
    rows: i64,
}

/// Copies `home` (its database checkpointed into the main file first) into a home of its own.
async fn snapshot(home: &TestHome, conn: &mut SqliteConnection, day: usize) -> Snapshot {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *conn).await.unwrap();
    let db = db_bytes(home);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM hook_events").fetch_one(&mut *conn).await.unwrap();
    let copy = TestHome::new(&format!("soak-day{day}"));
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(home.home())
        .arg(copy.dir.path())
        .status()
        .expect("cp runs");
    assert!(status.success(), "copying day {day}'s home: {status}");
    Snapshot { day, home: copy, db, rows }
}

/// Measures the snapshots' days side by side: each start brings up a daemon on every day's
/// copy, and each figure's requests go to one day's daemon after another (day 1, day 14, the
/// last day, then again), so that what the machine does meanwhile weighs on every day alike.
/// The day's figures pool the samples of its `sizes.starts` starts.
async fn measure(snapshots: &[Snapshot], sizes: &Sizes) -> Vec<Day> {
    let mut pooled: Vec<Samples> = snapshots.iter().map(|_| Samples::default()).collect();
    for _ in 0..sizes.starts {
        measure_one_start(snapshots, sizes, &mut pooled).await;
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    snapshots
        .iter()
        .zip(pooled)
        .map(|(snapshot, pooled)| Day {
            day: snapshot.day,
            hook: Stats::new(pooled.hook),
            create_per_s: median(pooled.rates),
            create_cpu: pooled.cpu / (CREATIONS * sizes.rounds * sizes.starts) as u32,
            board: Stats::new(pooled.board),
            list: Stats::new(pooled.list),
            list_api: Stats::new(pooled.list_api),
            idle_rss: median(pooled.idle_rss),
            rss: median(pooled.rss),
            db: snapshot.db,
            rows: snapshot.rows,
        })
        .collect()
}

/// The samples of a measured day's daemon starts.
#[derive(Default)]
struct Samples {
    hook: Vec<Duration>,
    rates: Vec<f64>,
    cpu: Duration,
    board: Vec<Duration>,
    list: Vec<Duration>,
    list_api: Vec<Duration>,
    idle_rss: Vec<f64>,
    rss: Vec<f64>,
}

/// Stops `daemon` as a service stop does (SIGTERM). Killed instead, each next start would find a
/// crashed daemon and raise its `daemon_crashed` alert: a start path an idle node does not run.
fn stop(mut daemon: Daemon) {
    let status = daemon.terminate();
    assert!(status.success(), "the daemon stopped cleanly: {status}");
}

/// Hook requests sent to one day's daemon before the next day's get theirs.
const HOOK_CHUNK: usize = 100;

/// Times `request(day)` `n` times for each day in turn (`pooled` holds one `Samples` a day); the
/// first `warm_up` samples of each day are dropped (its connections' set-up).
async fn alternate<F, Fut>(
    n: usize,
    warm_up: usize,
    samples: impl Fn(&mut Samples) -> &mut Vec<Duration>,
    pooled: &mut [Samples],
    request: F,
) where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut taken: Vec<Vec<Duration>> = pooled.iter().map(|_| Vec::new()).collect();
    for _ in 0..n {
        for (day, taken) in taken.iter_mut().enumerate() {
            let started = Instant::now();
            request(day).await;
            taken.push(started.elapsed());
        }
    }
    for (taken, pooled) in taken.iter_mut().zip(pooled) {
        samples(pooled).extend(taken.split_off(warm_up));
    }
}

/// Sends `request` and reads its whole answer, which must be a success.
async fn fetched(request: reqwest::RequestBuilder, what: &str) {
    let response = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(response.status().is_success(), "{what}: {}", response.status());
    response.bytes().await.unwrap();
}

/// Starts a daemon on each day's copy, adds their samples to `pooled` and stops them.
async fn measure_one_start(snapshots: &[Snapshot], sizes: &Sizes, pooled: &mut [Samples]) {
    settle_disk();
    let daemons: Vec<Daemon> = snapshots.iter().map(|s| s.home.start()).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for ((daemon, snapshot), samples) in daemons.iter().zip(snapshots).zip(pooled.iter_mut()) {
        samples.idle_rss.push(Memory::of(daemon.child.id()).rss_mb);
        if std::env::var_os("CCM_SOAK_SMAPS").is_some() {
            let by_mapping = resident_by_mapping(daemon.child.id());
            let text: Vec<String> =
                by_mapping.iter().map(|(n, kb)| format!("{n} {kb} kB")).collect();
            println!("day {}: idle resident memory by mapping: {}", snapshot.day, text.join(", "));
        }
    }
    // Hook ingest, `HOOK_CHUNK` requests 2 ms apart to each day's daemon in turn (the first of
    // each chunk opens its connection and is dropped).
    let mut left = sizes.samples;
    while left > 0 {
        let n = left.min(HOOK_CHUNK);
        for (daemon, samples) in daemons.iter().zip(pooled.iter_mut()) {
            let taken = hook_latencies(daemon, n + 1, Duration::from_millis(2)).await;
            samples.hook.extend(taken.into_iter().skip(1).map(|(_, d)| d));
        }
        left -= n;
    }
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // Rounds of `CREATIONS` tasks, 20 at a time, a round on each day's daemon in turn; each
    // round starts with no unfinished task (the previous round's are cancelled, untimed), so
    // every day creates against the same backlog.
    let mut created: Vec<Vec<String>> = daemons.iter().map(|_| Vec::new()).collect();
    for round in 0..sizes.rounds {
        for ((daemon, snapshot), (samples, created)) in
            daemons.iter().zip(snapshots).zip(pooled.iter_mut().zip(&mut created))
        {
            cancel(daemon, std::mem::take(created)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cpu_before = cpu_time(daemon.child.id());
            let started = Instant::now();
            for wave in (0..CREATIONS).step_by(20) {
                let mut set = tokio::task::JoinSet::new();
                for n in wave..wave + 20 {
                    let request = http.post(daemon.url("/api/tasks")).bearer_auth(&daemon.token).json(
                        &json!({"title": format!("soak day {} round {round} new {n}", snapshot.day)}),
                    );
                    set.spawn(async move { request.send().await.expect("created") });
                }
                while let Some(response) = set.join_next().await {
                    let response = response.unwrap();
                    assert!(response.status().is_success());
                    let task: Value = response.json().await.expect("the created task");
                    created.push(task["id"].as_str().expect("its id").to_string());
                }
            }
            samples.rates.push(CREATIONS as f64 / started.elapsed().as_secs_f64());
            samples.cpu += cpu_time(daemon.child.id()) - cpu_before;
        }
    }
    // The board and the list see the last round's tasks unfinished and the older ones finished.
    let mut cookies = Vec::new();
    for snapshot in snapshots {
        cookies.push(cookie(&snapshot.home).await);
    }
    alternate(
        33,
        3,
        |s| &mut s.board,
        pooled,
        |day| {
            fetched(http.get(daemons[day].url("/tasks")).header("cookie", &cookies[day]), "board")
        },
    )
    .await;
    // The request `ccm task list` makes, from here: the daemon's part of the list's time.
    alternate(
        25,
        5,
        |s| &mut s.list_api,
        pooled,
        |day| {
            let daemon = &daemons[day];
            let request = http.get(daemon.url("/api/tasks?finished=51")).bearer_auth(&daemon.token);
            fetched(request, "task list")
        },
    )
    .await;
    alternate(
        25,
        5,
        |s| &mut s.list,
        pooled,
        |day| {
            let out = snapshots[day].home.ccm().args(["task", "list"]).output().expect("task list");
            assert!(out.status.success());
            async {}
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (daemon, samples) in daemons.iter().zip(pooled.iter_mut()) {
        samples.rss.push(Memory::of(daemon.child.id()).rss_mb);
    }
    // The next start finds, as this one did, every task finished.
    for (daemon, created) in daemons.into_iter().zip(created) {
        cancel(&daemon, created).await;
        stop(daemon);
    }
}

/// Hook latency while the daemon's own pass deletes `rows` old events, against the same load
/// outside the pass (samples sorted by whether they were sent during a recorded pass).
async fn during_pass(home: &TestHome, sizes: &Sizes) {
    {
        let mut conn = open_db(&home.db_file()).await;
        let old = now_ms() - 40 * DAY_MS;
        let mut tx = conn.begin().await.unwrap();
        for i in 0..sizes.pass_rows {
            sqlx::query("INSERT INTO hook_events (key, at, system, event, kind, via, payload) VALUES (?, ?, 'claude', 'PreToolUse', 'pre_tool', 'api', '{\"tool_name\":\"Read\"}')")
                .bind(format!("old-{i}")).bind(old + i as i64).execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
        sqlx::query("DELETE FROM retention_passes").execute(&mut conn).await.unwrap();
    }
    settle_disk();
    let daemon = home.start_with(|c| {
        c.env("CCM_RETENTION__EVERY", "10s");
    });
    // 1,000 requests/s for 35 s: about 10 s before the first pass (which starts 10 s after the
    // daemon) and the rest during it (it takes about 30 s under this load).
    let samples = hook_latencies(&daemon, 35_000, Duration::from_millis(1)).await;
    // A pass that outlasts the load is recorded when it ends.
    ccm_tests::wait_until(Duration::from_secs(600), || async {
        let mut conn = open_db(&home.db_file()).await;
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM retention_passes WHERE json_extract(removed, '$.hook_events') > 0",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
            > 0
    })
    .await;
    stop(daemon);
    let mut conn = open_db(&home.db_file()).await;
    let passes: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT started_at, finished_at, removed FROM retention_passes \
         WHERE json_extract(removed, '$.hook_events') > 0",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let during = |at: i64| passes.iter().any(|(s, f, _)| at >= *s && at <= *f);
    let first = passes.first().map_or(0, |(s, _, _)| *s);
    // Outside: the samples before the pass that deleted them (later passes find little).
    let (inside, outside): (Vec<_>, Vec<_>) = samples
        .into_iter()
        .filter(|(at, _)| during(*at) || *at < first)
        .partition(|(at, _)| during(*at));
    // Later passes remove the odd event that crossed the 14-day line meanwhile.
    match passes.first() {
        Some((s, f, r)) => println!(
            "\nhook latency during the daemon's retention pass ({} old rows; the pass took {} ms and removed {r}; {} passes in all)",
            sizes.pass_rows,
            f - s,
            passes.len()
        ),
        None => println!("\nno retention pass removed hook events during the measurement"),
    }
    let show = |what: &str, samples: Vec<(i64, Duration)>| {
        if samples.is_empty() {
            println!("  {what}: no samples");
            return None;
        }
        let n = samples.len();
        let stats = Stats::new(samples.into_iter().map(|(_, d)| d).collect());
        println!(
            "  {what:<22} n={n:<6} p50 {}  p99 {}  max {}",
            ms(stats.p50),
            ms(stats.p99),
            ms(stats.max)
        );
        Some(stats)
    };
    let idle = show("outside a pass (idle)", outside);
    let busy = show("during the pass", inside);
    if let (Some(idle), Some(busy)) = (idle, busy) {
        println!(
            "  p99 during / idle: {:.2}× (goal ≤ 1.20×)",
            busy.p99.as_secs_f64() / idle.p99.as_secs_f64()
        );
    }
}

fn main() {
    let sizes = Sizes {
        days: env("CCM_SOAK_DAYS", 30).max(2),
        hooks: env("CCM_SOAK_HOOKS_PER_DAY", 20_000),
        tasks: env("CCM_SOAK_TASKS_PER_DAY", 200).max(1),
        samples: env("CCM_SOAK_SAMPLES", 3000).max(10),
        pass_rows: env("CCM_SOAK_PASS_ROWS", 100_000),
        rounds: env("CCM_SOAK_CREATE_ROUNDS", 5).max(1),
        starts: env("CCM_SOAK_STARTS", 3).max(1),
    };
    assert!(ccm_bin().exists(), "build ccm first");
    println!(
        "soak: {} days, {} hook events and {} tasks a day; {}",
        sizes.days,
        sizes.hooks,
        sizes.tasks,
        machine()
    );
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let home = TestHome::new("soak");
        home.write_config("retention:\n  every: never\n");
        home.run_ok(&["status"]);
        let start = now_ms() - sizes.days as i64 * DAY_MS;
        let middle = 14.min(sizes.days - 1);
        let mut snapshots = Vec::new();
        let mut conn = open_db(&home.db_file()).await;
        for day in 1..=sizes.days {
            let day_start = start + (day as i64 - 1) * DAY_MS;
            let filled = Instant::now();
            fill_day(&mut conn, &home.home(), day, day_start, &sizes).await;
            let fill = filled.elapsed();
            let passed = Instant::now();
            let removed = pass(&home, day_start + DAY_MS);
            println!(
                "day {day:>2}: filled in {}, pass in {} removed {removed}, db {}",
                ms(fill),
                ms(passed.elapsed()),
                mb(db_bytes(&home) as f64 / 1e6)
            );
            if day == 1 || day == middle || day == sizes.days {
                snapshots.push(snapshot(&home, &mut conn, day).await);
            }
        }
        drop(conn);
        let measured = measure(&snapshots, &sizes).await;
        println!(
            "\n{:<34} {}",
            "figure",
            measured
                .iter()
                .map(|d| format!("{:>14}", format!("day {}", d.day)))
                .collect::<String>()
                + "   last/first"
        );
        let row = |name: &str, f: &dyn Fn(&Day) -> f64, unit: &dyn Fn(f64) -> String| {
            let values: Vec<f64> = measured.iter().map(f).collect();
            let ratio = values.last().unwrap() / values.first().unwrap();
            println!(
                "{name:<34} {}   {ratio:.2}×",
                values.iter().map(|v| format!("{:>14}", unit(*v))).collect::<String>()
            );
        };
        let msf = |v: f64| format!("{v:.2} ms");
        row("hook ingest p50", &|d| d.hook.p50.as_secs_f64() * 1e3, &msf);
        row("hook ingest p99", &|d| d.hook.p99.as_secs_f64() * 1e3, &msf);
        row("task creation (tasks/s)", &|d| d.create_per_s, &|v| format!("{v:.0}"));
        row("daemon CPU per created task", &|d| d.create_cpu.as_secs_f64() * 1e3, &msf);
        row("board GET /tasks p50", &|d| d.board.p50.as_secs_f64() * 1e3, &msf);
        row("ccm task list p50", &|d| d.list.p50.as_secs_f64() * 1e3, &msf);
        row("  its GET /api/tasks p50", &|d| d.list_api.p50.as_secs_f64() * 1e3, &msf);
        row("daemon RSS idle (MB)", &|d| d.idle_rss, &|v| format!("{v:.1}"));
        row("daemon RSS after load (MB)", &|d| d.rss, &|v| format!("{v:.1}"));
        row("database + WAL (MB)", &|d| d.db as f64 / 1e6, &|v| format!("{v:.1}"));
        row("hook_events rows", &|d| d.rows as f64, &|v| format!("{v:.0}"));
        during_pass(&home, &sizes).await;
        if std::env::var_os("CCM_SOAK_KEEP").is_some() {
            println!("\nhome kept: {}", home.dir.path().display());
            std::mem::forget(home);
        }
    });
}
