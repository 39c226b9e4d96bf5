//! The digest a scheduled supervisor's prompt carries, over a large store: 10,000 tasks (eight
//! moves each in `task_log`) and 1,000,000 hook events, printed next to `ccm status` on the same
//! store (process start, opening the database, a few counts) measured in the same run.
//!
//! Then, with a daemon running on that store, the hook latency (`POST /api/hooks`, one after
//! another, `HOOK_PACE` apart: `bench::hook_latencies`) while the daemon builds digests one
//! after another (`GET /api/supervisors/review/digest`, as its scheduled runs build them)
//! against the same load without them, in alternating rounds of the same run, and the ratio of
//! their p99 (goal ≤ 1.20×); and, as the floor of any background work on the machine, the same
//! load beside a busy loop in the idle scheduling class.
//!
//! Run with `cargo bench -p ccm-tests --bench supervisors`. Nothing here asserts on time.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ccm_tests::bench::{hook_latencies, machine, ms, print_table, Row, Stats};
use ccm_tests::{open_db, TestHome};

const TASKS: i64 = 10_000;
const HOOK_EVENTS: i64 = 1_000_000;
const RUNS: usize = 7;
/// Hook requests per round, and the pause between two.
const HOOKS: usize = 500;
const HOOK_PACE: Duration = Duration::from_millis(5);
/// Rounds of each load (idle, with digests), alternating.
const ROUNDS: usize = 2;

fn timed(home: &TestHome, args: &[&str]) -> Stats {
    let mut samples: Vec<Duration> = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = home.run(args);
        samples.push(started.elapsed());
        assert!(out.status.success(), "ccm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Stats::new(samples)
}

fn main() {
    let home = TestHome::new("bench-digest");
    home.write_config(
        "supervisors:\n  review:\n    scope: project\n    repo: /src/app\n    every: {interval: 30d}\n    prompt: \"{digest}\"\n",
    );
    home.run_ok(&["status"]); // creates and migrates the database
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut db = open_db(&home.db_file()).await;
        let day = 86_400_000_i64;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let now = i64::try_from(now.as_millis()).unwrap();
        sqlx::query(
            r#"
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO tasks (id, title, prompt, repo, profile, max_attempts, attempts, state, created_at, updated_at)
            SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'task ' || i, 'do it', 
                   CASE WHEN i % 2 = 0 THEN '/src/app' ELSE '/src/other' END, 'claude', 3, 1,
                   CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'complete' END, ? - (i * 60000), ?
            FROM n
            "#,
        )
        .bind(TASKS)
        .bind(now)
        .bind(now)
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::query(
            r#"
            INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor)
            SELECT t.id, t.created_at + s.k * 1000, s.prev,
                   CASE WHEN s.next = 'done' THEN t.state ELSE s.next END,
                   CASE WHEN s.next = 'done' AND t.state = 'failed' THEN 'verify failed: ' || printf('%.400c', 'x') ELSE 'moved' END, 'runtime'
            FROM tasks t JOIN (
                SELECT 0 AS k, NULL AS prev, 'created' AS next UNION ALL SELECT 1, 'created', 'queued'
                UNION ALL SELECT 2, 'queued', 'executing' UNION ALL SELECT 3, 'executing', 'error'
                UNION ALL SELECT 4, 'error', 'retry' UNION ALL SELECT 5, 'retry', 'queued'
                UNION ALL SELECT 6, 'queued', 'executing' UNION ALL SELECT 7, 'executing', 'done'
            ) s
            "#,
        )
        .execute(&mut db)
        .await
        .unwrap();
        sqlx::query(&format!(
            r#"
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
            INSERT INTO hook_events (key, at, system, task_id, event, kind, tool, via, payload)
            SELECT 'k' || i, ? - i, 'claude',
                   printf('%08x-0000-4000-8000-%012x', i % {TASKS} + 1, i % {TASKS} + 1),
                   'PostToolUse', 'post_tool_use', 'Bash', 'api', '{{}}'
            FROM n
            "#
        ))
        .bind(HOOK_EVENTS)
        .bind(now - day)
        .execute(&mut db)
        .await
        .unwrap_or_else(|e| panic!("hook events: {e}"));
    });
    let digest = timed(&home, &["supervisors", "--digest", "review"]);
    let status = timed(&home, &["status"]);
    let text = home.run_ok(&["supervisors", "--digest", "review"]);
    assert!(text.contains("complete 4000") && text.contains("failures (10)"), "{text}");
    let loads = hooks_during_digests(&home, &runtime);
    println!("{}", machine());
    println!(
        "project digest over {TASKS} tasks ({} task_log rows) and {HOOK_EVENTS} hook events, {RUNS} runs each",
        TASKS * 8
    );
    print_table(&[
        Row::new(
            "digest (`ccm supervisors --digest`) p50",
            ms(digest.p50),
            format!("{} (`ccm status`)", ms(status.p50)),
            "≤ 200 ms",
        ),
        Row::new("digest max", ms(digest.max), ms(status.max), "—"),
    ]);
    println!(
        "hook latency, {} requests {} ms apart per load in {ROUNDS} alternating rounds; \
         {} digests built meanwhile",
        HOOKS * ROUNDS,
        HOOK_PACE.as_millis(),
        loads.built
    );
    let (idle, digests, spin) = (&loads.idle, &loads.digests, &loads.spin);
    let p99 = |s: &Stats| s.p99.as_secs_f64();
    print_table(&[
        Row::new(
            "hook p99 during digests",
            ms(digests.p99),
            format!("{} (idle)", ms(idle.p99)),
            "—",
        )
        .ratio(p99(digests), p99(idle), "≤ 1.20×"),
        Row::new(
            "hook p99 beside an idle-class busy loop",
            ms(spin.p99),
            format!("{} (idle)", ms(idle.p99)),
            "—",
        )
        .ratio(p99(spin), p99(idle), "the floor"),
        Row::new(
            "hook p50 during digests",
            ms(digests.p50),
            format!("{} (idle)", ms(idle.p50)),
            "—",
        ),
        Row::new(
            "hook p50 beside an idle-class busy loop",
            ms(spin.p50),
            format!("{} (idle)", ms(idle.p50)),
            "—",
        ),
    ]);
}

/// Hook latencies on the bench's daemon under three loads, in alternating rounds.
struct Loads {
    /// No other work.
    idle: Stats,
    /// The daemon builds `review`'s digest again as soon as the last one ended.
    digests: Stats,
    /// How many digests were built.
    built: usize,
    /// A busy loop in the idle scheduling class (`chrt --idle 0`), outside the daemon: the
    /// floor of any background work on this machine, whatever ccm does.
    spin: Stats,
}

fn hooks_during_digests(home: &TestHome, runtime: &tokio::runtime::Runtime) -> Loads {
    // Its start-up checks the whole store's integrity: long in a dev build.
    let started = Instant::now();
    let daemon = home.start_within(home.ccm(), Duration::from_secs(600));
    println!("daemon up on the store in {}", ms(started.elapsed()));
    let (mut idle, mut busy, mut spin) = (Vec::new(), Vec::new(), Vec::new());
    let built = AtomicUsize::new(0);
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_secs(2)).await; // start-up settles
        hook_latencies(&daemon, 50, HOOK_PACE).await; // connections and caches warm
    });
    for _ in 0..ROUNDS {
        idle.extend(runtime.block_on(hook_latencies(&daemon, HOOKS, HOOK_PACE)));
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                runtime.unwrap().block_on(async {
                    while !stop.load(Ordering::Relaxed) {
                        let (status, body) = daemon.get("/api/supervisors/review/digest").await;
                        assert_eq!(status, 200, "{body}");
                        built.fetch_add(1, Ordering::Relaxed);
                    }
                });
            });
            // The first digest is under way before the first hook.
            std::thread::sleep(Duration::from_millis(50));
            busy.extend(runtime.block_on(hook_latencies(&daemon, HOOKS, HOOK_PACE)));
            stop.store(true, Ordering::Relaxed);
        });
        let mut spinner = std::process::Command::new("chrt")
            .args(["--idle", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("chrt (util-linux) runs a busy loop in the idle class");
        std::thread::sleep(Duration::from_millis(50));
        spin.extend(runtime.block_on(hook_latencies(&daemon, HOOKS, HOOK_PACE)));
        let _ = spinner.kill();
        let _ = spinner.wait();
    }
    let stats =
        |samples: Vec<(i64, Duration)>| Stats::new(samples.into_iter().map(|(_, d)| d).collect());
    Loads { idle: stats(idle), digests: stats(busy), built: built.into_inner(), spin: stats(spin) }
}
