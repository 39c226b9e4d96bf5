//! Figures of the agent runtime, each printed next to a baseline measured in the same run on the
//! same machine, so a number can be read against what the machine itself allows.
//!
//! Run with `cargo bench -p ccm-tests --bench runtime`. Nothing here asserts on time: the bench
//! prints a table and fails only when ccm misbehaves (a task that does not run once and
//! complete, an agent that does not start, a refused request).
//!
//! - Dispatch: from a task entering `queued` to its agent process running, worktree included,
//!   against a bare `tmux new-window` and a bare `git worktree add` of the same repository.
//! - Memory: the daemon's resident set with 20 agents running, against the same daemon idle.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccm_tests::bench::{machine, mb, ms, print_table, Memory, Row, Stats, CLOCK_TICKS_PER_SEC};
use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

/// Tasks dispatched for the latency figure, and runs of each baseline.
const DISPATCHES: usize = 100;
/// Agent slots while the dispatch tasks run: this many tasks are in flight at once.
const DISPATCH_SLOTS: usize = 4;
/// Agents running while the daemon's memory is measured.
const AGENTS: usize = 20;
/// How long each of those agents sleeps (it is cancelled long before).
const AGENT_SLEEP_SECS: u32 = 20;
/// Tasks of the second dispatch run, with one agent slot.
const SERIAL_DISPATCHES: usize = 20;
/// How long the measured processes run before their memory is read: the daemon idle, and the
/// daemon with [`AGENTS`] agents running (which it observes every pass meanwhile).
const HOLD: Duration = Duration::from_secs(2);
/// How long a batch of tasks may take to start, complete or be cancelled before the bench
/// gives up.
const DEADLINE: Duration = Duration::from_secs(60);

const DISPATCH_P50_TARGET: &str = "p50 ≤ 100 ms";
const DISPATCH_P99_TARGET: &str = "p99 ≤ 300 ms";
const RSS_TARGET: &str = "≤ 30 MB";

fn main() {
    let machine = machine();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let (mut rows, notes) = runtime.block_on(dispatch_rows());
    rows.extend(runtime.block_on(memory_rows()));
    println!("\n{machine}");
    print_table(&rows);
    for note in notes {
        println!("{note}");
    }
}

// ---- setup -------------------------------------------------------------------------------

/// A home whose config has one agent profile `bench` running `command` (a YAML flow sequence)
/// with `env` (a YAML flow mapping, where `{dir}` stands for the home's temporary directory),
/// and a small git repository registered as a context; returns the home and the repository's
/// path, which tasks name as their `repo`.
fn setup(name: &str, command: &str, env: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    let env = env.replace("{dir}", &home.dir.path().to_string_lossy());
    home.write_config(&format!("profiles:\n  bench:\n    command: {command}\n    env: {env}\n"));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).expect("repo path").to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

/// Creates `count` tasks of the `bench` profile in `repo` through the API; returns their ids.
async fn create_tasks(daemon: &Daemon, repo: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let body = json!({ "title": format!("bench task {n}"), "profile": "bench", "repo": repo });
        let (status, task) = daemon.post("/api/tasks", body).await;
        assert_eq!(status, 201, "task creation refused: {task}");
        ids.push(task["id"].as_str().expect("task id").to_string());
    }
    ids
}

/// The tail of the daemon's log, for failure messages.
fn log_tail(daemon: &Daemon) -> String {
    let log = daemon.log_text();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---- dispatch ----------------------------------------------------------------------------

/// Dispatch latency: [`DISPATCHES`] tasks, all created at once through the API, each with the
/// repository registered as a context (so each gets a new git worktree on its own branch) and
/// a profile whose agent writes the time it started (`date +%s%N`, nanoseconds since the
/// epoch) into a file named after `$CCM_TASK_ID`, then exits 0. The scheduler runs with
/// [`DISPATCH_SLOTS`] slots, so that many tasks are in flight while the others wait in
/// `created`; each completes (no verify command, no review) and frees its slot for the next.
/// The runtime polls at its default (`runtime.poll_ms` 100); nothing is tuned for the bench.
/// A second, smaller run ([`SERIAL_DISPATCHES`] tasks, one slot) shows the same path with one
/// task in flight at a time.
///
/// A task's latency is its agent's start time minus the `at` of the `queued` entry of its log
/// (`GET /api/tasks/{id}`; RFC 3339, milliseconds, truncated, so the figure may read up to
/// 1 ms high). It covers the runtime picking the task up, the worktree (`git for-each-ref`,
/// `worktree add`, which checks the files out and runs `post-checkout`), ccm's hook settings
/// in it, the agent's directory and record, the tmux window and the wrapper shell that records
/// the exit status.
/// The log's `executing` entry (written once the worktree exists and the attempt is recorded,
/// before the window opens) splits the figure in two.
///
/// Baselines, [`DISPATCHES`] runs each, one after the other: a bare `tmux new-window -d` on a
/// private server running `sh -c 'date +%s%N > FILE'`, from just before the `tmux` command to
/// the time written; `git worktree add -b BRANCH PATH COMMIT` of the same repository (the
/// command alone, files checked out); and the two git commands ccm's worktree preparation
/// runs for a new task, in sequence (`for-each-ref` of the task and base branches, then that
/// `worktree add -b` of the commit it printed). Each worktree and branch is removed again,
/// untimed, before the next.
async fn dispatch_rows() -> (Vec<Row>, Vec<String>) {
    let (run, _home, repo) = dispatch_run("bench-dispatch", DISPATCH_SLOTS, DISPATCHES).await;
    let (serial, ..) = dispatch_run("bench-dispatch-serial", 1, SERIAL_DISPATCHES).await;
    let tmux = Stats::new(tmux_spawns(DISPATCHES));
    let baseline_root = tempfile::Builder::new().prefix("ccm-bench-wt-").tempdir().expect("dir");
    let (add, prepare) = worktree_adds(&repo, baseline_root.path(), DISPATCHES);
    let (add, prepare) = (Stats::new(add), Stats::new(prepare));

    let what = |pick: fn(&Stats) -> Duration| {
        format!(
            "{} (tmux new-window → sh → date); {} (git worktree add)",
            ms(pick(&tmux)),
            ms(pick(&add))
        )
    };
    let failed = |run: &DispatchRun| {
        format!("{} of {}", run.failed_starts.len(), run.count + run.failed_starts.len())
    };
    let notes = run
        .failed_starts
        .iter()
        .chain(&serial.failed_starts)
        .map(|reason| format!("failed start: {reason}"))
        .collect();
    let rows = vec![
        Row::new(
            &format!("dispatch, {DISPATCH_SLOTS} slots: queued → agent running, p50"),
            ms(run.total.p50),
            what(|s| s.p50),
            DISPATCH_P50_TARGET,
        ),
        Row::new(
            &format!("dispatch, {DISPATCH_SLOTS} slots: queued → agent running, p99"),
            ms(run.total.p99),
            what(|s| s.p99),
            DISPATCH_P99_TARGET,
        ),
        Row::new(
            &format!("dispatch, {DISPATCH_SLOTS} slots: queued → agent running, max"),
            ms(run.total.max),
            what(|s| s.max),
            "—",
        ),
        Row::new(
            "  of which queued → executing, p50 / p99",
            format!("{} / {}", ms(run.to_executing.p50), ms(run.to_executing.p99)),
            format!(
                "{} / {} (git: the 2 commands of worktree preparation)",
                ms(prepare.p50),
                ms(prepare.p99)
            ),
            "—",
        ),
        Row::new(
            "  of which executing → agent running, p50 / p99",
            format!("{} / {}", ms(run.to_agent.p50), ms(run.to_agent.p99)),
            format!("{} / {} (tmux new-window → sh → date)", ms(tmux.p50), ms(tmux.p99)),
            "—",
        ),
        Row::new(
            "  dispatches that failed before the agent ran",
            failed(&run),
            "(each retried after tasks.retry_base_secs; reasons below)".into(),
            "—",
        ),
        Row::new(
            "  CPU time per task: daemon / its child processes",
            format!("{} / {}", ms(run.cpu.0 / run.count as u32), ms(run.cpu.1 / run.count as u32)),
            "(children: git, tmux clients, verify; not the agents)".into(),
            "—",
        ),
        Row::new(
            &format!("{DISPATCHES} tasks, {DISPATCH_SLOTS} slots: created → all complete"),
            format!("{:.1} s", run.wall.as_secs_f64()),
            "—".into(),
            "—",
        ),
        Row::new(
            &format!("  daemon RSS after the {DISPATCHES} tasks"),
            mb(run.rss_after_mb),
            "—".into(),
            "—",
        ),
        Row::new(
            &format!("dispatch, 1 slot ({SERIAL_DISPATCHES} tasks): p50 / max"),
            format!("{} / {}", ms(serial.total.p50), ms(serial.total.max)),
            format!(
                "(queued → executing {} / {}; failed starts {})",
                ms(serial.to_executing.p50),
                ms(serial.to_executing.max),
                failed(&serial)
            ),
            "—",
        ),
    ];
    (rows, notes)
}

/// What one dispatch run measured.
struct DispatchRun {
    count: usize,
    total: Stats,
    to_executing: Stats,
    to_agent: Stats,
    failed_starts: Vec<String>,
    wall: Duration,
    /// CPU time of the daemon and of its reaped child processes while the tasks ran.
    cpu: (Duration, Duration),
    rss_after_mb: f64,
}

/// Runs `count` tasks with `slots` agent slots in a fresh home (see [`dispatch_rows`]); returns
/// what was measured, the home and the repository's path (for the baselines).
async fn dispatch_run(name: &str, slots: usize, count: usize) -> (DispatchRun, TestHome, PathBuf) {
    let (home, repo) = setup(
        name,
        r#"[sh, -c, 'date +%s%N > "$BENCH_STARTS/$CCM_TASK_ID"', sh]"#,
        "{BENCH_STARTS: '{dir}/starts'}",
    );
    let starts_dir = home.dir.path().join("starts");
    std::fs::create_dir(&starts_dir).expect("starts dir");
    let mut daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", slots.to_string());
    });
    let pid = daemon.child.id();
    let cpu_before = cpu_times(pid);
    let wall = Instant::now();
    let ids = create_tasks(&daemon, &repo, count).await;

    let all_started = wait_until(DEADLINE, || async {
        std::fs::read_dir(&starts_dir).map_or(0, Iterator::count) == count
    })
    .await;
    assert!(all_started, "not every agent started:\n{}", log_tail(&daemon));
    let all_complete = wait_until(DEADLINE, || async {
        let (_, done) = daemon.get("/api/tasks?state=complete").await;
        done.as_array().map_or(0, Vec::len) == count
    })
    .await;
    assert!(all_complete, "not every task completed:\n{}", log_tail(&daemon));
    let wall = wall.elapsed();
    let cpu_after = cpu_times(pid);
    let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let rss_after_mb = Memory::of(pid).rss_mb;

    let mut total = Vec::with_capacity(count);
    let mut to_executing = Vec::with_capacity(count);
    let mut to_agent = Vec::with_capacity(count);
    let mut failed_starts = Vec::new();
    for id in &ids {
        let (_, detail) = daemon.get(&format!("/api/tasks/{id}")).await;
        let runs = detail["runs"].as_array().map_or(0, Vec::len);
        assert_eq!(runs, 1, "task {id} ran more than once: {detail:#}");
        let dispatch = Dispatch::of(&detail);
        let started = started_ns(&starts_dir.join(id));
        total.push(since(dispatch.queued * 1_000_000, started));
        to_executing.push(since(dispatch.queued * 1_000_000, dispatch.executing * 1_000_000));
        to_agent.push(since(dispatch.executing * 1_000_000, started));
        failed_starts.extend(dispatch.failed_starts);
    }
    daemon.terminate();
    let run = DispatchRun {
        count,
        total: Stats::new(total),
        to_executing: Stats::new(to_executing),
        to_agent: Stats::new(to_agent),
        failed_starts,
        wall,
        cpu,
        rss_after_mb,
    };
    (run, home, PathBuf::from(repo))
}

/// The dispatch that started a task's (only) run, read from its log: the `queued` entry right
/// before its first `executing` entry, that entry, and the reasons of the starts that failed
/// before it (each sent the task to `error` and `retry`, and back to `queued` after the retry
/// backoff, `tasks.retry_base_secs`).
struct Dispatch {
    /// Milliseconds since the epoch.
    queued: i64,
    executing: i64,
    failed_starts: Vec<String>,
}

impl Dispatch {
    fn of(detail: &Value) -> Dispatch {
        let log = detail["log"].as_array().map(Vec::as_slice).unwrap_or_default();
        let state = |entry: &Value| entry["to_state"].as_str().unwrap_or_default().to_string();
        let at = |entry: &Value| {
            let at = entry["at"].as_str().expect("log entry time");
            rfc3339_millis(at).unwrap_or_else(|| panic!("log time `{at}` is not RFC 3339"))
        };
        let executing = log
            .iter()
            .position(|e| state(e) == "executing")
            .unwrap_or_else(|| panic!("the task never ran: {detail:#}"));
        let before = &log[..executing];
        let queued = before
            .iter()
            .rfind(|e| state(e) == "queued")
            .unwrap_or_else(|| panic!("the task ran without being queued: {detail:#}"));
        let failed_starts = before
            .iter()
            .filter(|e| state(e) == "error")
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect();
        Dispatch { queued: at(queued), executing: at(&log[executing]), failed_starts }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` as milliseconds since the epoch.
fn rfc3339_millis(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (time, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut time = time.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().ok()?;
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000 + millis)
}

/// Days since 1970-01-01 of a date of the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The nanoseconds since the epoch an agent wrote into `file` (waiting for the write to land).
fn started_ns(file: &Path) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if let Ok(ns) = text.trim().parse() {
            return ns;
        }
        assert!(Instant::now() < deadline, "{} holds no time: `{text}`", file.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `to - from`, both in nanoseconds since the epoch; a negative span is a bench bug.
fn since(from_ns: i64, to_ns: i64) -> Duration {
    let span = u64::try_from(to_ns - from_ns)
        .unwrap_or_else(|_| panic!("time runs backwards: {from_ns} → {to_ns}"));
    Duration::from_nanos(span)
}

fn now_ns() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(since_epoch.as_nanos()).expect("nanoseconds fit")
}

/// `count` processes started one after the other, each in a new detached window of a private
/// tmux server (started beforehand, untimed): from just before `tmux new-window` to the time
/// `date +%s%N` wrote.
fn tmux_spawns(count: usize) -> Vec<Duration> {
    let home = TestHome::new("bench-tmux"); // its drop kills the server
    let socket = home.tmux_socket();
    let tmux = |args: &[&str]| {
        let status = Command::new("tmux").arg("-L").arg(&socket).args(args).status();
        assert!(status.expect("tmux runs").success(), "tmux {args:?} failed");
    };
    tmux(&["new-session", "-d", "-s", "bench", "-n", "keeper"]);
    (0..count)
        .map(|n| {
            let file = home.dir.path().join(format!("started-{n}"));
            let before = now_ns();
            let file_arg = file.to_string_lossy();
            let argv = ["sh", "-c", "date +%s%N > \"$0\"", &file_arg];
            tmux(&[&["new-window", "-d", "-t", "bench:", "--"][..], &argv].concat());
            since(before, started_ns(&file))
        })
        .collect()
}

/// `count` runs of the git commands ccm's worktree preparation runs for a new task in `repo`,
/// one after the other, each worktree under `root`: returns the time of a bare
/// `git worktree add` (files checked out) and of ccm's sequence, per run. Each worktree and
/// branch is removed (untimed) before the next, as ccm's cleanup does.
fn worktree_adds(repo: &Path, root: &Path, count: usize) -> (Vec<Duration>, Vec<Duration>) {
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let remove = |path: &str, branch: &str| {
        git(repo, &["worktree", "remove", "--force", path]);
        git(repo, &["branch", "-q", "-D", branch]);
    };
    let format = "--format=%(refname)%00%(objecttype)%00%(objectname)%00%(worktreepath)\
                  %00%(upstream:remotename)%00%(upstream:remoteref)";
    let mut add = Vec::with_capacity(count);
    let mut sequence = Vec::with_capacity(count);
    for n in 0..count {
        let path = root.join(format!("app-{n:08}"));
        let path_arg = path.to_string_lossy();
        let branch = format!("ccm/{n:08}");
        let base = git(repo, &["rev-parse", "--verify", "--quiet", "refs/heads/main^{commit}"]);

        let started = Instant::now();
        git(repo, &["worktree", "add", "--quiet", "-b", &branch, &path_arg, &base]);
        add.push(started.elapsed());
        remove(&path_arg, &branch);

        let started = Instant::now();
        let refs = git(
            repo,
            &["for-each-ref", format, &format!("refs/heads/{branch}"), "refs/heads/main"],
        );
        let base = refs.split('\0').nth(2).expect("the base branch is listed").to_string();
        git(repo, &["worktree", "add", "--quiet", "-b", &branch, &path_arg, &base]);
        sequence.push(started.elapsed());
        remove(&path_arg, &branch);
    }
    (add, sequence)
}

/// CPU time (user and system) a process has used so far, and that of its children it has
/// waited for, from `/proc/PID/stat` (fields 14 and 15, 16 and 17, in clock ticks).
fn cpu_times(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which ends with the last `)`: state (field 3) first.
    let (_, fields) = stat.rsplit_once(')').expect("command name in proc stat");
    let ticks: Vec<u64> = fields
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|field| field.parse().expect("CPU times are numbers"))
        .collect();
    let time = |ticks: u64| Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS_PER_SEC);
    (time(ticks[0] + ticks[1]), time(ticks[2] + ticks[3]))
}

// ---- memory ------------------------------------------------------------------------------

/// Memory with agents running: [`AGENTS`] tasks (each with its worktree) whose agent sleeps
/// [`AGENT_SLEEP_SECS`] s, with as many slots. Once `GET /api/agents` lists all of them
/// `running`, the daemon keeps observing them for [`HOLD`]; then `VmRSS` (resident now) and
/// `VmHWM` (peak resident, which covers starting them) are read from `/proc/PID/status`. The
/// tasks are then cancelled through the API and the bench checks their windows close.
///
/// Baseline: the same daemon (same binary and configuration, a fresh home) idle for [`HOLD`]
/// after it started, answering no request.
async fn memory_rows() -> Vec<Row> {
    let idle = {
        let home = TestHome::new("bench-idle");
        let mut daemon = home.start();
        tokio::time::sleep(HOLD).await;
        let memory = Memory::of(daemon.child.id());
        daemon.terminate();
        memory
    };

    let (home, repo) = setup("bench-agents", &format!("[sleep, '{AGENT_SLEEP_SECS}']"), "{}");
    let mut daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", AGENTS.to_string());
    });
    let ids = create_tasks(&daemon, &repo, AGENTS).await;
    let running = wait_until(DEADLINE, || async {
        let (_, agents) = daemon.get("/api/agents").await;
        let agents = agents.as_array().cloned().unwrap_or_default();
        agents.iter().filter(|a| a["status"] == "running").count() == AGENTS
    })
    .await;
    assert!(running, "{AGENTS} agents never ran at once:\n{}", log_tail(&daemon));
    tokio::time::sleep(HOLD).await;
    let busy = Memory::of(daemon.child.id());
    let (_, agents) = daemon.get("/api/agents").await;
    let still =
        agents.as_array().map_or(0, |a| a.iter().filter(|a| a["status"] == "running").count());
    assert_eq!(still, AGENTS, "agents ended before their memory was read");

    for id in &ids {
        let (status, body) =
            daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "cancel" })).await;
        assert_eq!(status, 200, "cancel refused: {body}");
    }
    let gone = wait_until(DEADLINE, || async { home.agent_windows().is_empty() }).await;
    assert!(gone, "cancelled agents still run: {:?}", home.agent_windows());
    daemon.terminate();

    vec![
        Row::new(
            &format!("daemon RSS with {AGENTS} agents running (VmRSS)"),
            mb(busy.rss_mb),
            format!("{} (the daemon idle)", mb(idle.rss_mb)),
            RSS_TARGET,
        ),
        Row::new(
            &format!("daemon peak RSS, {AGENTS} agents started (VmHWM)"),
            mb(busy.hwm_mb),
            format!("{} (the daemon idle)", mb(idle.hwm_mb)),
            "—",
        ),
    ]
}

// ---- numbers -----------------------------------------------------------------------------
