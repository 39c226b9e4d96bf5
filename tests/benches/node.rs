//! Figures of the node daemon, each printed next to a baseline measured in the same run on the
//! same machine, so a number can be read against what the machine itself allows.
//!
//! Run with `cargo bench -p ccm-tests --bench node`. Nothing here asserts on time: the bench
//! prints a table and fails only when ccm misbehaves (no answer, a refused request).
//!
//! - Start: spawn of `ccm up` to its first `200` on `GET /healthz`, against the spawn-to-exit
//!   time of `ccm --version` (process start alone) and of `sqlite3 :memory: 'select 1'`.
//! - Memory: the daemon's resident set after it sat idle, against an idle `sleep` and an idle
//!   `sqlite3` shell with a database open.
//! - Idle CPU: the daemon's CPU time (user and system) while it sits idle for a minute
//!   (`CCM_BENCH_IDLE_CPU_SECS` to shorten it), as a share of one core, against `sleep`'s.
//! - Task creation: tasks per second through `POST /api/tasks` with concurrent clients, against
//!   durable single-row transactions on a plain SQLite table in the same directory.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_tests::bench::{cpu_time, durable_db, machine, mb, ms, print_table, Memory, Row, Stats};
use ccm_tests::{ccm_bin, Daemon, TestHome, HOLDER_PROFILE};
use serde_json::{json, Value};
use sqlx::Connection;

/// Daemon starts measured; the first one runs in a fresh home (creates the database).
const START_RUNS: usize = 20;
/// Pause between two `/healthz` probes while the daemon starts.
const PROBE_INTERVAL: Duration = Duration::from_micros(500);
/// How long a starting daemon may take before the bench gives up on it.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long the processes whose memory is measured sit idle first.
const IDLE: Duration = Duration::from_secs(2);
/// Tasks created through the API, and rows committed by the baseline.
const TASKS: usize = 5_000;
/// Concurrent API clients (tokio tasks sharing one HTTP client).
const CLIENTS: usize = 8;
/// Tasks created before timing starts, to open the clients' connections.
const WARMUP_TASKS: usize = 200;

const START_TARGET: &str = "≤ 100 ms";
const RSS_TARGET: &str = "≤ 15 MB";
const IDLE_CPU_TARGET: &str = "≤ 1 % of a core";
/// How long the idle CPU time is measured, in seconds, unless `CCM_BENCH_IDLE_CPU_SECS` says.
const IDLE_CPU_SECS: u64 = 60;
const TASKS_PER_SEC_TARGET: &str = "≥ 2,000 tasks/s";

fn main() {
    let ccm = ccm_bin();
    let machine = machine();
    let mut rows = Vec::new();
    rows.extend(start_rows(ccm));
    rows.extend(memory_rows());
    rows.extend(task_creation_rows());
    println!("\n{machine}");
    print_table(&rows);
}

// ---- start -------------------------------------------------------------------------------

/// Daemon start: from just before `spawn` of `ccm up` to the first `200` answered on
/// `GET /healthz`, probed over fresh connections every [`PROBE_INTERVAL`]. This covers process
/// start, configuration, locking the home, opening and checking the database, binding and
/// serving. The daemon is stopped with SIGTERM and reaped between runs.
///
/// Baselines: spawn to exit of `ccm --version` (the same binary, doing nothing) and of
/// `sqlite3 :memory: 'select 1'` (a C program opening SQLite), over as many runs.
fn start_rows(ccm: &Path) -> Vec<Row> {
    let home = TestHome::new("bench-start");
    let starts: Vec<Duration> = (0..START_RUNS).map(|_| time_daemon_start(&home)).collect();
    let fresh = starts[0];
    let starts = Stats::new(starts);

    let version = Stats::new((0..START_RUNS).map(|_| time_to_exit(ccm, &["--version"])).collect());
    let sqlite = (0..START_RUNS)
        .map(|_| try_time_to_exit(Path::new("sqlite3"), &[":memory:", "select 1"]))
        .collect::<Option<Vec<_>>>()
        .map(Stats::new);
    let sqlite_p50 = sqlite.map_or("n/a".into(), |s| ms(s.p50));

    vec![
        Row::new(
            "daemon start → first answer, p50",
            ms(starts.p50),
            format!(
                "{} (ccm --version); {sqlite_p50} (sqlite3 :memory: 'select 1')",
                ms(version.p50)
            ),
            START_TARGET,
        ),
        Row::new(
            "daemon start → first answer, max",
            ms(starts.max),
            format!("{} (ccm --version, max)", ms(version.max)),
            START_TARGET,
        ),
        Row::new("daemon start, fresh home (run 1)", ms(fresh), "—".into(), START_TARGET),
    ]
}

/// Starts `ccm up` in `home` on a port picked beforehand, times it to its first answer, then
/// stops it.
fn time_daemon_start(home: &TestHome) -> Duration {
    let port = free_port();
    let mut command = home.ccm();
    command
        .arg("up")
        .env("CCM_DAEMON__PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut daemon = command.spawn().expect("ccm up starts");
    while !healthz_ok(port) {
        assert!(started.elapsed() < START_DEADLINE, "ccm up did not answer on port {port}");
        if let Some(status) = daemon.try_wait().expect("daemon status") {
            panic!("ccm up exited with {status} before answering");
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
    let elapsed = started.elapsed();
    terminate(&mut daemon);
    elapsed
}

/// A port that was free a moment ago: bound on 127.0.0.1:0 and released.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("bound address").port()
}

/// One `GET /healthz` over a fresh connection; whether the daemon answered `200`.
fn healthz_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut status_line = [0; 12];
    stream.set_read_timeout(Some(START_DEADLINE)).expect("read timeout");
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut status_line).is_ok()
        && status_line == *b"HTTP/1.1 200"
}

/// SIGTERM, then wait for the exit.
fn terminate(child: &mut Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(status.success(), "kill -TERM {pid} failed");
    child.wait().expect("process exits");
}

fn time_to_exit(program: &Path, args: &[&str]) -> Duration {
    try_time_to_exit(program, args)
        .unwrap_or_else(|| panic!("{} {args:?} did not run", program.display()))
}

/// Spawn to exit of `program ARGS`, or `None` when it cannot run or fails.
fn try_time_to_exit(program: &Path, args: &[&str]) -> Option<Duration> {
    let started = Instant::now();
    let status = Command::new(program).args(args).stdout(Stdio::null()).status().ok()?;
    status.success().then(|| started.elapsed())
}

// ---- memory ------------------------------------------------------------------------------

/// Idle memory: `VmRSS` (resident now) and `VmHWM` (peak resident) from `/proc/PID/status`
/// after the daemon started and sat idle for [`IDLE`], answering no request. Then idle CPU: the
/// daemon's user and system time over the next [`idle_cpu_window`], as a share of one core.
///
/// Baselines, idle for the same time: `sleep` (the floor of any process) and the `sqlite3`
/// shell with a database open (stdin a pipe kept open, after one query).
fn memory_rows() -> Vec<Row> {
    let home = TestHome::new("bench-memory");
    let mut daemon = home.start();
    let window = idle_cpu_window();
    let sleep_secs = (IDLE + window).as_secs() + 30;
    let mut sleep = Command::new("sleep")
        .arg(sleep_secs.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("sleep starts");
    let mut sqlite = idle_sqlite(&home.dir.path().join("baseline.db"));
    std::thread::sleep(IDLE);

    let ccm = Memory::of(daemon.child.id());
    let sleep_memory = Memory::of(sleep.id());
    let sqlite_memory = sqlite.as_ref().map(|s| Memory::of(s.id()));
    let (ccm_cpu, sleep_cpu) = (cpu_time(daemon.child.id()), cpu_time(sleep.id()));
    std::thread::sleep(window);
    let ccm_cpu = cpu_time(daemon.child.id()) - ccm_cpu;
    let sleep_cpu = cpu_time(sleep.id()) - sleep_cpu;
    daemon.terminate();
    for child in std::iter::once(&mut sleep).chain(sqlite.as_mut()) {
        terminate(child);
    }

    let baseline = |value: fn(&Memory) -> f64| {
        let sqlite = sqlite_memory.as_ref().map_or("n/a".into(), |m| mb(value(m)));
        format!("{} (sleep); {sqlite} (sqlite3 shell, db open)", mb(value(&sleep_memory)))
    };
    let share =
        |cpu: Duration| format!("{:.2} %", cpu.as_secs_f64() / window.as_secs_f64() * 100.0);
    vec![
        Row::new("daemon idle RSS (VmRSS)", mb(ccm.rss_mb), baseline(|m| m.rss_mb), RSS_TARGET),
        Row::new("daemon idle peak RSS (VmHWM)", mb(ccm.hwm_mb), baseline(|m| m.hwm_mb), "—"),
        Row::new(
            &format!("daemon idle CPU over {} s (of a core)", window.as_secs()),
            share(ccm_cpu),
            format!("{} (sleep)", share(sleep_cpu)),
            IDLE_CPU_TARGET,
        ),
    ]
}

/// How long idle CPU is measured: `CCM_BENCH_IDLE_CPU_SECS` seconds, [`IDLE_CPU_SECS`] unless set.
fn idle_cpu_window() -> Duration {
    let secs = match std::env::var("CCM_BENCH_IDLE_CPU_SECS") {
        Ok(value) => value.trim().parse::<u64>().ok().filter(|s| *s > 0).unwrap_or_else(|| {
            panic!(
                "CCM_BENCH_IDLE_CPU_SECS={value}: expected a whole number of seconds, at least 1"
            )
        }),
        Err(_) => IDLE_CPU_SECS,
    };
    Duration::from_secs(secs)
}

/// The `sqlite3` shell on `db` after one query, waiting on its open stdin; `None` when there
/// is no `sqlite3`.
fn idle_sqlite(db: &Path) -> Option<Child> {
    let mut child =
        Command::new("sqlite3").arg(db).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().ok()?;
    let stdin = child.stdin.as_mut().expect("piped stdin");
    stdin.write_all(b"create table t(x); select count(*) from t;\n").expect("sqlite3 reads");
    Some(child)
}

// ---- task creation -----------------------------------------------------------------------

/// Task creation: [`TASKS`] `POST /api/tasks` from [`CLIENTS`] concurrent clients (tokio tasks
/// on one thread, sharing one HTTP client with keep-alive), after [`WARMUP_TASKS`] untimed
/// ones. Each 201 means the task was committed (WAL, `synchronous=FULL`). Throughput is tasks
/// over wall time; latency is per request, as the client sees it. The scheduler runs at its
/// defaults (woken by every creation) and so does the agent runtime (woken too), with one slot,
/// held by an agent of the [`HOLDER_PROFILE`]: the tasks, of that profile, wait in `created`
/// for it, as tasks beyond the free slots do, and the figure is their creation. Then as many
/// again of the `manual` profile, which the scheduler admits at once (no runtime runs them, so
/// they hold no slot): that figure adds their admission.
///
/// Baseline: as many rows inserted into a plain SQLite table in the same directory, WAL and
/// `synchronous=FULL`, one transaction per row on a single connection: the durable-commit
/// ceiling of the disk.
fn task_creation_rows() -> Vec<Row> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let home = TestHome::new("bench-tasks");
    home.write_config(&format!("scheduler:\n  slots: 1\n{HOLDER_PROFILE}"));
    let daemon = Arc::new(home.start());
    let pid = daemon.child.id();
    // One agent holds the only slot: the tasks of its profile wait for it.
    let (status, body) = runtime
        .block_on(daemon.post("/api/tasks", json!({ "title": "holder", "profile": "holder" })));
    assert_eq!(status, 201, "task creation refused: {body}");
    let waiting = json!("holder");
    runtime.block_on(create_tasks(&daemon, WARMUP_TASKS, &waiting));
    let (daemon_cpu, client_cpu) = (cpu_time(pid), cpu_time(std::process::id()));
    let ccm = runtime.block_on(create_tasks(&daemon, TASKS, &waiting));
    let daemon_cpu = cpu_time(pid) - daemon_cpu;
    let client_cpu = cpu_time(std::process::id()) - client_cpu;
    let rss_after = Memory::of(pid).rss_mb;
    let admitted_cpu = cpu_time(pid);
    let admitted = runtime.block_on(create_tasks(&daemon, TASKS, &json!("manual")));
    let admitted_cpu = cpu_time(pid) - admitted_cpu;
    Arc::into_inner(daemon).expect("the clients are done").terminate();
    let sqlite = runtime.block_on(durable_commits(&home.dir.path().join("baseline.db"), TASKS));

    let baseline = "(plain table, WAL + FULL, 1 txn/row)";
    vec![
        Row::new(
            "task creation through the API",
            format!("{:.0} tasks/s", ccm.per_second),
            format!("{:.0} rows/s {baseline}", sqlite.per_second),
            TASKS_PER_SEC_TARGET,
        )
        .ratio(ccm.per_second, sqlite.per_second, "≥ 1× one txn per row"),
        Row::new(
            "task creation latency, p50",
            ms(ccm.latency.p50),
            format!("{} per commit", ms(sqlite.latency.p50)),
            "—",
        ),
        Row::new(
            "task creation latency, p99",
            ms(ccm.latency.p99),
            format!("{} per commit", ms(sqlite.latency.p99)),
            "—",
        ),
        Row::new(
            "daemon CPU time per task",
            us(daemon_cpu / TASKS as u32),
            format!("{} (bench client, per request)", us(client_cpu / TASKS as u32)),
            "—",
        ),
        Row::new(
            &format!("daemon RSS after {} tasks", TASKS + WARMUP_TASKS),
            mb(rss_after),
            "—".into(),
            "—",
        ),
        Row::new(
            "creation with admission (manual profile)",
            format!("{:.0} tasks/s", admitted.per_second),
            format!("{:.0} rows/s {baseline}", sqlite.per_second),
            "—",
        )
        .ratio(admitted.per_second, sqlite.per_second, "—"),
        Row::new(
            "  its latency p50 / p99",
            format!("{} / {}", ms(admitted.latency.p50), ms(admitted.latency.p99)),
            format!("{} / {} per commit", ms(sqlite.latency.p50), ms(sqlite.latency.p99)),
            "—",
        ),
        Row::new(
            "  its daemon CPU time per task",
            us(admitted_cpu / TASKS as u32),
            "—".into(),
            "—",
        ),
    ]
}

/// Throughput and latency of a batch of writes.
struct Throughput {
    per_second: f64,
    latency: Stats,
}

impl Throughput {
    fn new(elapsed: Duration, latencies: Vec<Duration>) -> Throughput {
        Throughput {
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            latency: Stats::new(latencies),
        }
    }
}

/// Creates `count` tasks through the API from [`CLIENTS`] concurrent clients.
async fn create_tasks(daemon: &Arc<Daemon>, count: usize, profile: &Value) -> Throughput {
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let daemon = Arc::clone(daemon);
            let share = count / CLIENTS + usize::from(client < count % CLIENTS);
            let profile = profile.clone();
            tokio::spawn(
                async move { create_tasks_one_client(&daemon, client, share, &profile).await },
            )
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for client in clients {
        latencies.extend(client.await.expect("client task"));
    }
    Throughput::new(started.elapsed(), latencies)
}

/// Creates `count` tasks one after another; returns each request's latency.
async fn create_tasks_one_client(
    daemon: &Daemon,
    client: usize,
    count: usize,
    profile: &Value,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let started = Instant::now();
        let task = json!({ "title": format!("bench task {client}-{n}"), "profile": profile });
        let (status, body) = daemon.post("/api/tasks", task).await;
        assert_eq!(status, 201, "task creation refused: {body}");
        latencies.push(started.elapsed());
    }
    latencies
}

/// Inserts `count` rows into a new database at `path`, one committed transaction each.
async fn durable_commits(path: &Path, count: usize) -> Throughput {
    let mut db = durable_db(path).await;
    sqlx::query("CREATE TABLE rows (id INTEGER PRIMARY KEY, title TEXT NOT NULL)")
        .execute(&mut db)
        .await
        .expect("baseline table");
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let row_started = Instant::now();
        let mut transaction = db.begin().await.expect("begin");
        sqlx::query("INSERT INTO rows (title) VALUES (?)")
            .bind(format!("baseline row {n}"))
            .execute(&mut *transaction)
            .await
            .expect("insert");
        transaction.commit().await.expect("commit");
        latencies.push(row_started.elapsed());
    }
    Throughput::new(started.elapsed(), latencies)
}

// ---- numbers -----------------------------------------------------------------------------

fn us(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}
