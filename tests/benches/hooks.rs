//! Figures of the hook pipeline, each printed next to a baseline measured in the same run on the
//! same machine, so a number can be read against what the machine itself allows.
//!
//! Run with `cargo bench -p ccm-tests --bench hooks`. Nothing here asserts on time: the bench
//! prints a table and fails only when ccm misbehaves (a refused request, an event acknowledged
//! but not stored).
//!
//! - API latency: `POST /api/hooks` at a fixed 1,000 requests/s (open loop), against
//!   `GET /healthz` at the same rate and a single durable SQLite commit on the same disk.
//! - The hook command (`ccm-hook`, what installed hooks run): spawn to exit of the release
//!   binary with a payload on stdin, daemon up and daemon down, against `true` and a Python 3
//!   script doing the same insert into the same database.
//! - Sustained ingestion: closed-loop clients posting events back to back, against the same
//!   clients on `GET /healthz` and batched SQLite inserts.
//!
//! Every client here speaks HTTP/1.1 over raw keep-alive TCP connections (one request in flight
//! per connection, requests preformatted), so the client costs as little of the shared cores as
//! possible.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccm_tests::bench::{cpu_time, durable_db, machine, print_table, Row, Stats};
use ccm_tests::{ccm_bin, open_db, Daemon, TestHome};
use serde_json::{json, Value};
use sqlx::{Connection, SqliteConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// Requests per second of the open-loop latency measurement.
const RATE: f64 = 1_000.0;
/// How long the open-loop measurement sends.
const RATE_DURATION: Duration = Duration::from_secs(5);
/// Untimed open-loop sending before the measured one (opens connections, warms the caches).
const RATE_WARMUP: Duration = Duration::from_millis(500);
/// Keep-alive connections opened before the open-loop measurement; more open when all are busy.
const POOL: usize = 4;
/// Single-row durable commits of the latency baseline.
const COMMITS: usize = 1_000;

/// Timed hook runs with the daemon up, and with it down (direct SQLite).
const HOOK_RUNS: usize = 500;
const DIRECT_RUNS: usize = 200;
/// Timed runs of the Python baseline.
const PYTHON_RUNS: usize = 200;
/// Untimed runs before each series (page cache of the binaries, the database warm).
const PROCESS_WARMUP: usize = 10;
/// Timed hook runs per bad input.
const BAD_RUNS: usize = 30;

/// Concurrent closed-loop clients (one keep-alive connection each) of the sustained runs; the
/// single client shows the cost of an event that shares its transaction with no other.
const CLIENTS: [usize; 3] = [1, 64, 256];
/// The batched sustained runs: clients, and events per request (an NDJSON body, as a relay or
/// a busy sender posts them; 50 is the hook-event threshold at which sync ships a batch).
const BATCHED: [(usize, usize); 2] = [(16, 50), (64, 50)];
/// Sending before the measured window of a sustained run.
const SUSTAINED_WARMUP: Duration = Duration::from_secs(1);
/// The measured window of a sustained run.
const SUSTAINED: Duration = Duration::from_secs(5);
/// Rows per transaction, and how long, for the batched-insert baseline (the daemon's group
/// commit writes at most 512 events per transaction too).
const BATCH_ROWS: usize = 512;
const BATCH_DURATION: Duration = Duration::from_secs(2);
/// Rows per `INSERT` statement of the second batched baseline (SQLite without a statement per
/// row).
const ROWS_PER_STATEMENT: usize = 64;

/// Worker threads of the bench client's runtime: the machine's cores are shared with the daemon.
const CLIENT_THREADS: usize = 2;

const API_P50_TARGET: &str = "≤ 0.5 ms";
const API_P99_TARGET: &str = "≤ 2 ms";
const HOOK_P50_TARGET: &str = "≤ 3 ms";
const HOOK_P99_TARGET: &str = "≤ 10 ms";
const RATIO_TARGET: &str = "≥ 20×";
const BAD_TARGET: &str = "< 50 ms, exit 0";
const SUSTAINED_TARGET: &str = "≥ 50,000 events/s (2 cores)";

fn main() {
    let _ = ccm_bin(); // built (or found up to date) before anything is timed
    let machine = machine();
    let payload = post_tool_use().to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // `cargo bench --bench hooks -- NAME...` runs only the named parts (api, process, sustained).
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let mut rows = Vec::new();
    if wanted("api") {
        rows.extend(api_latency_rows(&runtime, &payload));
    }
    if wanted("process") {
        rows.extend(hook_process_rows(&runtime, &payload));
    }
    if wanted("sustained") {
        rows.extend(sustained_rows(&runtime, &payload));
    }
    println!("\n{machine}; at end: {}", load_average());
    println!("payload: a Claude Code PostToolUse event (Edit), {} bytes", payload.len());
    print_table(&rows);
}

fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// A typical Claude Code `PostToolUse` payload: an `Edit` with its structured patch, ~1 KB.
fn post_tool_use() -> Value {
    let file = "/home/dev/src/shop/src/cart/total.rs";
    let old = "    subtotal";
    let new = "    let discount = coupon.map_or(0, |c| c.apply(subtotal));\n    \
               subtotal.saturating_sub(discount)";
    json!({
        "session_id": "8c35adc1-5e0a-4f1b-9a63-2d7c1f0e9b44",
        "transcript_path":
            "/home/dev/.claude/projects/-home-dev-src-shop/8c35adc1-5e0a-4f1b-9a63-2d7c1f0e9b44.jsonl",
        "cwd": "/home/dev/src/shop",
        "permission_mode": "acceptEdits",
        "hook_event_name": "PostToolUse",
        "tool_name": "Edit",
        "tool_input": { "file_path": file, "old_string": old, "new_string": new, "replace_all": false },
        "tool_response": {
            "filePath": file,
            "oldString": old,
            "newString": new,
            "structuredPatch": [{
                "oldStart": 42, "oldLines": 1, "newStart": 42, "newLines": 2,
                "lines": [
                    "-    subtotal",
                    "+    let discount = coupon.map_or(0, |c| c.apply(subtotal));",
                    "+    subtotal.saturating_sub(discount)"
                ]
            }],
            "userModified": false,
            "replaceAll": false
        },
        "tool_use_id": "toolu_01Hq7XkR3mVb9TzL2sWcN4pE"
    })
}

// ---- raw HTTP/1.1 client -------------------------------------------------------------------

/// What a request must be answered with; anything else fails the bench.
#[derive(Clone, Copy)]
enum Expect {
    /// `200` with the body `{}`: the event was stored and nothing was decided.
    Stored,
    /// `200`, whatever the body.
    Ok,
    /// `200` with one `{}` line per event of a batch.
    Batch(usize),
}

/// A preformatted request and the answer it must get.
#[derive(Clone)]
struct Request {
    bytes: Arc<[u8]>,
    expect: Expect,
    /// Events the request carries.
    events: usize,
}

impl Request {
    /// `POST /api/hooks?system=claude` with the token and `payload` as the body (what Claude
    /// Code's `http` hook sends).
    fn hook(daemon: &Daemon, payload: &str) -> Request {
        let head = format!(
            "POST /api/hooks?system=claude HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            daemon.addr,
            daemon.token,
            payload.len()
        );
        Request {
            bytes: [head.as_bytes(), payload.as_bytes()].concat().into(),
            expect: Expect::Stored,
            events: 1,
        }
    }

    /// `POST /api/hooks?system=claude` with `events` copies of `payload` as an NDJSON batch.
    fn hook_batch(daemon: &Daemon, payload: &str, events: usize) -> Request {
        let body = format!("{payload}\n").repeat(events);
        let head = format!(
            "POST /api/hooks?system=claude HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            daemon.addr,
            daemon.token,
            body.len()
        );
        Request {
            bytes: [head.as_bytes(), body.as_bytes()].concat().into(),
            expect: Expect::Batch(events),
            events,
        }
    }

    /// `GET /healthz`: the same HTTP stack and middleware, no token, no storage.
    fn healthz(daemon: &Daemon) -> Request {
        let head = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr);
        Request { bytes: head.into_bytes().into(), expect: Expect::Ok, events: 1 }
    }
}

/// One keep-alive connection, one request in flight at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect to the daemon");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Conn { stream, buf: Vec::with_capacity(4096) }
    }

    /// Sends the request and reads the whole answer; panics unless it is the expected one.
    async fn exchange(&mut self, request: &Request) {
        self.stream.write_all(&request.bytes).await.expect("request sent");
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (head_end, body_len) = loop {
            let n = self.stream.read(&mut chunk).await.expect("answer read");
            assert!(n > 0, "the daemon closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break (end + 4, content_length(&self.buf[..end]));
            }
        };
        while self.buf.len() < head_end + body_len {
            let n = self.stream.read(&mut chunk).await.expect("answer read");
            assert!(n > 0, "the daemon closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = &self.buf[head_end..head_end + body_len];
        let ok = self.buf.starts_with(b"HTTP/1.1 200 ")
            && match request.expect {
                Expect::Stored => body == b"{}",
                Expect::Ok => true,
                Expect::Batch(events) => body == "{}\n".repeat(events).as_bytes(),
            };
        assert!(ok, "unexpected answer: {}", String::from_utf8_lossy(&self.buf));
    }
}

/// The `Content-Length` of a response head (0 when absent).
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Idle keep-alive connections; a request takes one, or opens one when none is idle.
struct Pool {
    addr: String,
    idle: Mutex<Vec<Conn>>,
    opened: AtomicUsize,
}

impl Pool {
    async fn new(addr: &str, size: usize) -> Pool {
        let pool =
            Pool { addr: addr.into(), idle: Mutex::new(Vec::new()), opened: AtomicUsize::new(0) };
        for _ in 0..size {
            let conn = pool.open().await;
            pool.idle.lock().expect("pool lock").push(conn);
        }
        pool
    }

    async fn open(&self) -> Conn {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Conn::open(&self.addr).await
    }

    async fn send(&self, request: &Request) {
        let idle = self.idle.lock().expect("pool lock").pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.open().await,
        };
        conn.exchange(request).await;
        self.idle.lock().expect("pool lock").push(conn);
    }
}

// ---- API latency at a fixed rate -----------------------------------------------------------

/// `POST /api/hooks` latency at [`RATE`] requests/s for [`RATE_DURATION`], open loop: a pacing
/// thread releases request `i` at `start + i / RATE` (sleeping to that instant) and spawns it
/// on the client runtime, so a slow answer never delays the next send. Requests share a pool of
/// keep-alive connections ([`POOL`] opened beforehand, more when all are busy). Latency runs
/// from the release of the request by the pacer to the end of its answer; the answer of
/// `/api/hooks` comes after the event's group commit (WAL, `synchronous=FULL`). Rate is the
/// number of requests over the time from the first release to the last answer. The hook runs
/// after an untimed [`RATE_WARMUP`] at the same rate; the rows in `hook_events` are counted to
/// confirm every acknowledged event is stored.
///
/// Baselines: `GET /healthz` of the same daemon at the same rate, same client (HTTP, axum and
/// the daemon's middleware without storage), and [`COMMITS`] single-row transactions into a
/// `hook_events`-shaped table with the same payload in a new database in the same directory
/// (WAL, `synchronous=FULL`, one connection): the durable-commit latency of the disk.
fn api_latency_rows(runtime: &Runtime, payload: &str) -> Vec<Row> {
    let home = TestHome::new("bench-hook-api");
    let mut daemon = home.start();
    let hook = Request::hook(&daemon, payload);
    let healthz = Request::healthz(&daemon);

    let health = open_loop(runtime, &daemon.addr, &healthz, RATE_DURATION);
    let warmup = open_loop(runtime, &daemon.addr, &hook, RATE_WARMUP);
    let hooks = open_loop(runtime, &daemon.addr, &hook, RATE_DURATION);
    let stored = runtime.block_on(count_hook_events(&home.db_file()));
    assert_eq!(stored, warmup.sent + hooks.sent, "acknowledged events missing from hook_events");
    daemon.terminate();
    let commits = runtime.block_on(durable_commits(&home.dir.path().join("baseline.db"), payload));

    let line = |stats: fn(&Stats) -> Duration| {
        format!(
            "{} (GET /healthz, same rate); {} (1-row commit, WAL+FULL)",
            ms2(stats(&health.latency)),
            ms2(stats(&commits))
        )
    };
    vec![
        Row::new(
            "POST /api/hooks at 1,000/s: achieved rate",
            format!("{:.0}/s ({} conns)", hooks.per_second, hooks.connections),
            format!("{:.0}/s (GET /healthz, {} conns)", health.per_second, health.connections),
            "1,000/s",
        ),
        Row::new(
            "POST /api/hooks at 1,000/s: p50",
            ms2(hooks.latency.p50),
            line(|s| s.p50),
            API_P50_TARGET,
        )
        .ratio(secs(hooks.latency.p50), secs(commits.p50), "≤ 1.5× the 1-row commit"),
        Row::new(
            "POST /api/hooks at 1,000/s: p99",
            ms2(hooks.latency.p99),
            line(|s| s.p99),
            API_P99_TARGET,
        )
        .ratio(secs(hooks.latency.p99), secs(commits.p99), "≤ 2× the 1-row commit"),
        Row::new("POST /api/hooks at 1,000/s: max", ms2(hooks.latency.max), line(|s| s.max), "—"),
        Row::new(
            "  pacer lag behind schedule, max",
            ms2(hooks.max_lag),
            format!("{} (GET /healthz run)", ms2(health.max_lag)),
            "—",
        ),
    ]
}

/// The result of an open-loop run.
struct OpenLoop {
    sent: usize,
    per_second: f64,
    latency: Stats,
    connections: usize,
    /// How late the pacer released a request at worst (sleep overshoot).
    max_lag: Duration,
}

fn open_loop(runtime: &Runtime, addr: &str, request: &Request, duration: Duration) -> OpenLoop {
    let pool = Arc::new(runtime.block_on(Pool::new(addr, POOL)));
    let count = (RATE * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / RATE);
    let mut answers = Vec::with_capacity(count);
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    for i in 0..count {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let released = Instant::now();
        max_lag = max_lag.max(released - due);
        let (pool, request) = (Arc::clone(&pool), request.clone());
        answers.push(runtime.spawn(async move {
            pool.send(&request).await;
            (released.elapsed(), Instant::now())
        }));
    }
    let answers: Vec<(Duration, Instant)> = runtime.block_on(async {
        let mut done = Vec::with_capacity(answers.len());
        for answer in answers {
            done.push(answer.await.expect("request task"));
        }
        done
    });
    let last = answers.iter().map(|(_, at)| *at).max().expect("requests were sent");
    OpenLoop {
        sent: count,
        per_second: count as f64 / (last - start).as_secs_f64(),
        latency: Stats::new(answers.into_iter().map(|(latency, _)| latency).collect()),
        connections: pool.opened.load(Ordering::Relaxed),
        max_lag,
    }
}

async fn count_hook_events(db: &Path) -> usize {
    let mut db = open_db(db).await;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM hook_events")
        .fetch_one(&mut db)
        .await
        .expect("count hook_events");
    count as usize
}

/// A new database at `path` with a table shaped like `hook_events` (same columns and indexes).
async fn baseline_db(path: &Path) -> SqliteConnection {
    let mut db = durable_db(path).await;
    for statement in [
        "CREATE TABLE events (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, at INTEGER NOT NULL, \
         system TEXT NOT NULL, agent_id TEXT, task_id TEXT, session_id TEXT, event TEXT NOT NULL, \
         kind TEXT NOT NULL, tool TEXT, cwd TEXT, via TEXT NOT NULL, problem TEXT, \
         payload TEXT NOT NULL)",
        "CREATE INDEX events_by_task ON events (task_id, id) WHERE task_id IS NOT NULL",
    ] {
        sqlx::query(statement).execute(&mut db).await.expect("baseline schema");
    }
    db
}

/// Inserts rows `first..first + count` with one statement.
async fn insert_events(db: &mut SqliteConnection, first: usize, count: usize, payload: &str) {
    let row = "(?, ?, 'claude', '8c35adc1', 'PostToolUse', 'post_tool', 'Edit', \
               '/home/dev/src/shop', 'api', ?)";
    let sql = format!(
        "INSERT INTO events (key, at, system, session_id, event, kind, tool, cwd, via, payload) \
         VALUES {}",
        vec![row; count].join(", ")
    );
    let mut query = sqlx::query(&sql);
    for n in first..first + count {
        query = query.bind(format!("baseline-{n}")).bind(n as i64).bind(payload);
    }
    query.execute(db).await.expect("insert");
}

/// [`COMMITS`] single-row transactions; the latency of each.
async fn durable_commits(path: &Path, payload: &str) -> Stats {
    let mut db = baseline_db(path).await;
    let mut latencies = Vec::with_capacity(COMMITS);
    for n in 0..COMMITS {
        let started = Instant::now();
        let mut transaction = db.begin().await.expect("begin");
        insert_events(&mut transaction, n, 1, payload).await;
        transaction.commit().await.expect("commit");
        latencies.push(started.elapsed());
    }
    Stats::new(latencies)
}

// ---- `ccm hook`, process start to exit -----------------------------------------------------

/// `ccm-hook --agent claude` (the command `ccm hooks install` writes) from just before `spawn`
/// to its exit, the payload written to its stdin (then closed), stdout and stderr to
/// /dev/null; runs are sequential, each after [`PROCESS_WARMUP`] untimed ones. With the daemon
/// up ([`HOOK_RUNS`] runs) the hook posts the event and exits after the daemon's answer, which
/// follows the commit; `ccm hook --agent claude`, which it hands events to otherwise, is timed
/// the same way for comparison. With the daemon stopped (SIGTERM, port file gone;
/// [`DIRECT_RUNS`] runs) `ccm-hook` hands the event to `ccm hook`, which opens `ccm.db` and
/// inserts it itself (WAL, `synchronous=FULL`), then logs that the daemon was unreachable.
///
/// Baseline: the same timing of a Python 3 script (the interpreter run directly, not through a
/// version-manager shim) that reads stdin, parses it with `json`, opens the same `ccm.db` with
/// the stdlib `sqlite3` (WAL, `synchronous=FULL`), inserts one row into `hook_events` (key =
/// uuid4, at, system, event, kind, tool, cwd, via = 'direct', payload), commits and exits;
/// [`PYTHON_RUNS`] runs with the daemon stopped, after the direct runs. Twice: as `python3
/// hook.py` (the interpreter's `site` as installed here, `.pth` hooks included) and as
/// `python3 -S hook.py` (no `site`: the script needs only the standard library), since a
/// `.pth` hook in site-packages can cost more than the whole script. Floors of process start,
/// timed the same way: `ccm --version` (the same binary doing nothing) and `true`.
fn hook_process_rows(runtime: &Runtime, payload: &str) -> Vec<Row> {
    let home = TestHome::new("bench-hook-process");
    let mut daemon = home.start();
    let hook = || {
        let mut command = home.ccm_hook();
        command.args(["--agent", "claude"]);
        command
    };
    let up = time_runs(hook, payload.as_bytes(), HOOK_RUNS);
    let ccm_hook = || {
        let mut command = home.ccm();
        command.args(["hook", "--agent", "claude"]);
        command
    };
    let command_up = time_runs(ccm_hook, payload.as_bytes(), HOOK_RUNS);
    let bad: Vec<(&str, Stats)> = bad_payloads()
        .into_iter()
        .map(|(name, bytes)| (name, time_runs(hook, &bytes, BAD_RUNS)))
        .collect();
    daemon.terminate();
    assert!(!home.home().join("daemon.json").exists(), "the port file outlived the daemon");
    let direct = time_runs(hook, payload.as_bytes(), DIRECT_RUNS);
    let python = python_interpreter().map(|python| {
        let script = home.dir.path().join("hook.py");
        std::fs::write(&script, PYTHON_HOOK).expect("python script written");
        let db = home.db_file();
        let series = |flags: &'static [&'static str]| {
            time_runs(
                || {
                    let mut command = Command::new(&python);
                    command.args(flags).arg(&script).arg(&db);
                    command
                },
                payload.as_bytes(),
                PYTHON_RUNS,
            )
        };
        (series(&[]), series(&["-S"]))
    });
    let expected = 2 * HOOK_RUNS
        + DIRECT_RUNS
        + 3 * PROCESS_WARMUP
        + bad.len() * (BAD_RUNS + PROCESS_WARMUP)
        + python.as_ref().map_or(0, |_| 2 * (PYTHON_RUNS + PROCESS_WARMUP));
    let stored = runtime.block_on(count_hook_events(&home.db_file()));
    assert_eq!(stored, expected, "hook runs that exited without storing their event");
    let version = time_runs(
        || {
            let mut command = home.ccm();
            command.arg("--version");
            command
        },
        b"",
        PYTHON_RUNS,
    );
    let true_ = time_runs(|| Command::new("true"), b"", PYTHON_RUNS);

    let baseline = |stat: fn(&Stats) -> Duration| {
        python.as_ref().map_or("n/a (no python3)".into(), |(site, no_site)| {
            format!(
                "{} (python3 hook.py); {} (python3 -S hook.py)",
                ms1(stat(site)),
                ms1(stat(no_site))
            )
        })
    };
    let ratio = |ccm: &Stats| {
        python.as_ref().map_or("n/a".into(), |(site, no_site)| {
            let ratio = |p: &Stats| p.p50.as_secs_f64() / ccm.p50.as_secs_f64();
            format!("{:.1}× / {:.1}×", ratio(site), ratio(no_site))
        })
    };
    let mut rows = vec![
        Row::new(
            "ccm-hook, daemon up: start→exit p50",
            ms1(up.p50),
            baseline(|s| s.p50),
            HOOK_P50_TARGET,
        )
        .ratio(secs(up.p50), secs(true_.p50), "≤ 2× `true`"),
        Row::new(
            "ccm-hook, daemon up: start→exit p99",
            ms1(up.p99),
            baseline(|s| s.p99),
            HOOK_P99_TARGET,
        ),
        Row::new(
            "  ccm hook, daemon up: start→exit p50 / p99",
            format!("{} / {}", ms1(command_up.p50), ms1(command_up.p99)),
            format!("{} (true)", ms1(true_.p50)),
            "—",
        )
        .ratio(secs(command_up.p50), secs(true_.p50), "—"),
        Row::new("ccm-hook, daemon down (direct): p50", ms1(direct.p50), baseline(|s| s.p50), "—"),
        Row::new("ccm-hook, daemon down (direct): p99", ms1(direct.p99), baseline(|s| s.p99), "—"),
        Row::new(
            "python p50 / ccm-hook p50",
            format!("{} (daemon up)", ratio(&up)),
            format!("{} (daemon down, direct): python3 / python3 -S", ratio(&direct)),
            RATIO_TARGET,
        ),
        Row::new(
            "  process floor: spawn→exit p50",
            format!("{} (ccm --version)", ms1(version.p50)),
            format!("{} (true)", ms1(true_.p50)),
            "—",
        ),
    ];
    for (name, stats) in bad {
        rows.push(Row::new(
            &format!("ccm-hook, bad input: {name}, p50 / max"),
            format!("{} / {}", ms1(stats.p50), ms1(stats.max)),
            format!("{} / {} (the 1 KB event)", ms1(up.p50), ms1(up.max)),
            BAD_TARGET,
        ));
    }
    rows
}

/// The bad inputs of issue 4's acceptance list, each of which must exit 0 (and be stored as
/// far as possible) within [`BAD_TARGET`].
fn bad_payloads() -> Vec<(&'static str, Vec<u8>)> {
    let mut huge = br#"{"session_id": "s1", "hook_event_name": "PreToolUse", "tool_name": "Write", "tool_input": {"file_path": "/p/big.txt", "content": ""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    huge.extend(br#""}}"#);
    vec![
        ("malformed JSON", br#"{"hook_event_name": "PreToolUse", "tool_name": "#.to_vec()),
        ("invalid UTF-8", b"{\"hook_event_name\": \"Stop\", \"x\": \"\xff\xfe\"}".to_vec()),
        ("empty stdin", Vec::new()),
        ("10 MB payload", huge),
    ]
}

/// Spawn-to-exit times of `runs` sequential runs of `command()` with `payload` on stdin, after
/// [`PROCESS_WARMUP`] untimed runs.
fn time_runs(command: impl Fn() -> Command, payload: &[u8], runs: usize) -> Stats {
    let run = || {
        let mut command = command();
        command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        let started = Instant::now();
        let mut child = command.spawn().expect("hook process starts");
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A process that does not read stdin may exit first; a hook that did not read its
        // payload shows in the row count.
        let _ = stdin.write_all(payload);
        drop(stdin);
        let status = child.wait().expect("hook process exits");
        let elapsed = started.elapsed();
        assert!(status.success(), "hook process exited with {status}");
        elapsed
    };
    for _ in 0..PROCESS_WARMUP {
        run();
    }
    Stats::new((0..runs).map(|_| run()).collect())
}

/// The real interpreter behind `python3` (skipping a pyenv-style shim), if there is one.
fn python_interpreter() -> Option<PathBuf> {
    let out =
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| path.into())
}

/// What a peer's Python hook does: one durable insert of the event as received.
const PYTHON_HOOK: &str = r#"import json, sqlite3, sys, time, uuid

KINDS = {
    "PreToolUse": "pre_tool", "PermissionRequest": "permission_request",
    "PostToolUse": "post_tool", "PostToolUseFailure": "post_tool_failure",
    "Notification": "notification", "UserPromptSubmit": "prompt_submit", "Stop": "stop",
    "StopFailure": "stop_failure", "PreCompact": "pre_compact",
    "SessionStart": "session_start", "SessionEnd": "session_end",
}

raw = sys.stdin.read()
event = json.loads(raw)
name = event.get("hook_event_name", "")
db = sqlite3.connect(sys.argv[1], timeout=5)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
with db:
    db.execute(
        "INSERT INTO hook_events (key, at, system, event, kind, tool, cwd, via, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (str(uuid.uuid4()), int(time.time() * 1000), "claude", name, KINDS.get(name, "other"),
         event.get("tool_name"), event.get("cwd"), "direct", raw),
    )
db.close()
"#;

// ---- sustained ingestion -------------------------------------------------------------------

/// Closed loop: for each count in [`CLIENTS`], that many client tasks on the bench's 2-thread
/// runtime, each with its own keep-alive connection, send requests back to back (the next as
/// soon as the previous is answered) for [`SUSTAINED_WARMUP`], then for the measured
/// [`SUSTAINED`] window, then finish the request in flight. Throughput is the answers completed
/// inside the window over its length; latency is per request (send to end of answer) for those
/// answers; CPU time is the daemon's (user + system, all threads, `/proc/PID/stat`) over the
/// window, divided by the answers in it. After each run every acknowledged event (warm-up
/// included) is counted in `hook_events`. One daemon serves all runs (fresh home); the hook runs
/// come first, then the `/healthz` runs.
///
/// Baselines: the same clients on `GET /healthz` (the HTTP ceiling of this machine with this
/// client), and rows shaped like `hook_events` with the same payload inserted into a new
/// database in the same directory, [`BATCH_ROWS`] per transaction (WAL, `synchronous=FULL`,
/// one sqlx connection) for [`BATCH_DURATION`]: once with one `INSERT` per row as the daemon
/// does, once with [`ROWS_PER_STATEMENT`] rows per `INSERT` (what SQLite and the disk allow
/// without a round trip to sqlx's worker thread per row).
fn sustained_rows(runtime: &Runtime, payload: &str) -> Vec<Row> {
    let home = TestHome::new("bench-hook-sustained");
    let mut daemon = home.start();
    let hook = Request::hook(&daemon, payload);
    let healthz = Request::healthz(&daemon);
    let mut hooks = Vec::new();
    let mut stored_before = 0;
    for clients in CLIENTS {
        let run = closed_loop(runtime, &daemon, &hook, clients);
        let stored = runtime.block_on(count_hook_events(&home.db_file()));
        assert_eq!(stored - stored_before, run.acked, "acknowledged events missing");
        stored_before = stored;
        hooks.push(run);
    }
    let mut batched = Vec::new();
    for (clients, events) in BATCHED {
        let run =
            closed_loop(runtime, &daemon, &Request::hook_batch(&daemon, payload, events), clients);
        let stored = runtime.block_on(count_hook_events(&home.db_file()));
        assert_eq!(stored - stored_before, run.acked, "acknowledged events missing");
        stored_before = stored;
        batched.push(run);
    }
    let health: Vec<Sustained> =
        CLIENTS.iter().map(|&clients| closed_loop(runtime, &daemon, &healthz, clients)).collect();
    daemon.terminate();
    let dir = home.dir.path();
    let per_row = runtime.block_on(batched_inserts(&dir.join("baseline-1.db"), payload, 1));
    let multi =
        runtime.block_on(batched_inserts(&dir.join("baseline-n.db"), payload, ROWS_PER_STATEMENT));

    let mut rows = Vec::new();
    for ((clients, hook), health) in CLIENTS.iter().zip(&hooks).zip(&health) {
        let tag = format!("sustained, {clients} clients");
        rows.push(
            Row::new(
                &format!("{tag}: events/s"),
                format!("{:.0}/s", hook.per_second),
                format!("{:.0}/s (GET /healthz, same clients)", health.per_second),
                SUSTAINED_TARGET,
            )
            .ratio(hook.per_second, health.per_second, "≥ 0.5× GET /healthz"),
        );
        rows.push(Row::new(
            &format!("{tag}: latency p50 / p99"),
            format!("{} / {}", ms2(hook.latency.p50), ms2(hook.latency.p99)),
            format!("{} / {} (GET /healthz)", ms2(health.latency.p50), ms2(health.latency.p99)),
            "—",
        ));
        rows.push(Row::new(
            &format!("{tag}: daemon CPU per event"),
            us(hook.daemon_cpu),
            format!(
                "{} (GET /healthz); client: {} per hook, {} per healthz",
                us(health.daemon_cpu),
                us(hook.client_cpu),
                us(health.client_cpu)
            ),
            "—",
        ));
        rows.push(Row::new(
            &format!("{tag}: stored = acknowledged"),
            format!("{} rows", hook.acked),
            "—".into(),
            "equal",
        ));
    }
    for ((clients, events), run) in BATCHED.iter().zip(&batched) {
        let tag = format!("batched, {clients} clients × {events} events/request");
        rows.push(
            Row::new(
                &format!("{tag}: events/s"),
                format!("{:.0}/s", run.per_second),
                format!("{multi:.0} rows/s (raw SQLite, {ROWS_PER_STATEMENT} rows/INSERT)"),
                SUSTAINED_TARGET,
            )
            .ratio(run.per_second, multi, "≥ 0.9× raw SQLite"),
        );
        rows.push(Row::new(
            &format!("{tag}: request p50 / p99"),
            format!("{} / {}", ms2(run.latency.p50), ms2(run.latency.p99)),
            "—".into(),
            "—",
        ));
        rows.push(Row::new(
            &format!("{tag}: daemon CPU per event"),
            us(run.daemon_cpu),
            format!("client: {} per event", us(run.client_cpu)),
            "—",
        ));
        rows.push(Row::new(
            &format!("{tag}: stored = acknowledged"),
            format!("{} rows", run.acked),
            "—".into(),
            "equal",
        ));
    }
    rows.push(Row::new(
        &format!("raw SQLite, {BATCH_ROWS} rows/txn (WAL+FULL)"),
        "—".into(),
        format!(
            "{per_row:.0} rows/s (1 INSERT/row); {multi:.0} rows/s ({ROWS_PER_STATEMENT} rows/INSERT)"
        ),
        SUSTAINED_TARGET,
    ));
    rows
}

/// The result of a closed-loop run.
struct Sustained {
    /// Events acknowledged, warm-up included.
    acked: usize,
    per_second: f64,
    latency: Stats,
    /// CPU time per event in the window: the daemon's and the bench process's.
    daemon_cpu: Duration,
    client_cpu: Duration,
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPING: u8 = 2;

fn closed_loop(runtime: &Runtime, daemon: &Daemon, request: &Request, clients: usize) -> Sustained {
    let phase = Arc::new(AtomicU8::new(WARMING));
    let conns: Vec<Conn> = runtime.block_on(async {
        let mut conns = Vec::with_capacity(clients);
        for _ in 0..clients {
            conns.push(Conn::open(&daemon.addr).await);
        }
        conns
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (phase, request) = (Arc::clone(&phase), request.clone());
            runtime.spawn(async move {
                let (mut acked, mut latencies) = (0, Vec::new());
                while phase.load(Ordering::Relaxed) != STOPPING {
                    let started = Instant::now();
                    conn.exchange(&request).await;
                    acked += request.events;
                    if phase.load(Ordering::Relaxed) == MEASURING {
                        latencies.push(started.elapsed());
                    }
                }
                (acked, latencies)
            })
        })
        .collect();
    let (pid, me) = (daemon.child.id(), std::process::id());
    std::thread::sleep(SUSTAINED_WARMUP);
    let (daemon_cpu, client_cpu) = (cpu_time(pid), cpu_time(me));
    let started = Instant::now();
    phase.store(MEASURING, Ordering::Relaxed);
    std::thread::sleep(SUSTAINED);
    phase.store(STOPPING, Ordering::Relaxed);
    let window = started.elapsed();
    let (daemon_cpu, client_cpu) = (cpu_time(pid) - daemon_cpu, cpu_time(me) - client_cpu);
    let (acked, latencies) = runtime.block_on(async {
        let (mut acked, mut latencies) = (0, Vec::new());
        for task in tasks {
            let (n, l) = task.await.expect("client task");
            acked += n;
            latencies.extend(l);
        }
        (acked, latencies)
    });
    let answered = latencies.len();
    Sustained {
        acked,
        per_second: (answered * request.events) as f64 / window.as_secs_f64(),
        latency: Stats::new(latencies),
        daemon_cpu: daemon_cpu / (answered * request.events) as u32,
        client_cpu: client_cpu / (answered * request.events) as u32,
    }
}

/// Rows per second of [`BATCH_ROWS`]-row durable transactions for [`BATCH_DURATION`], written
/// `per_statement` rows per `INSERT`.
async fn batched_inserts(path: &Path, payload: &str, per_statement: usize) -> f64 {
    let mut db = baseline_db(path).await;
    let started = Instant::now();
    let mut rows = 0;
    while started.elapsed() < BATCH_DURATION {
        let mut transaction = db.begin().await.expect("begin");
        for _ in 0..BATCH_ROWS / per_statement {
            insert_events(&mut transaction, rows, per_statement, payload).await;
            rows += per_statement;
        }
        transaction.commit().await.expect("commit");
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

// ---- numbers -----------------------------------------------------------------------------

fn ms1(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn ms2(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

fn us(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

/// A duration in seconds, for ratios.
fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
