//! Shared by the benchmarks (`tests/benches/*.rs`): order statistics, memory and CPU time read
//! from `/proc`, the units and the table they print.

use std::time::Duration;

/// `sysconf(_SC_CLK_TCK)` on Linux: the unit of the CPU times in `/proc/PID/stat`.
pub const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Order statistics of a set of durations (nearest rank).
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Stats {
    pub fn new(mut samples: Vec<Duration>) -> Stats {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let rank = |p: f64| samples[((p * samples.len() as f64).ceil() as usize).max(1) - 1];
        Stats { p50: rank(0.50), p99: rank(0.99), max: samples[samples.len() - 1] }
    }
}

/// Resident memory of a process, in MB (10^6 bytes).
pub struct Memory {
    pub rss_mb: f64,
    pub hwm_mb: f64,
}

impl Memory {
    pub fn of(pid: u32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let field = |name: &str| {
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
            kib * 1024.0 / 1e6
        };
        Memory { rss_mb: field("VmRSS:"), hwm_mb: field("VmHWM:") }
    }
}

/// Where a process's resident memory is, from `/proc/PID/smaps`: kB per mapping (the `ccm`
/// binary by permissions (code, read-only data, data), each library, `[heap]`, anonymous ones
/// together as ``), largest first, for what is over 100 kB.
pub fn resident_by_mapping(pid: u32) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_name: Vec<(String, u64)> = Vec::new();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let perms = fields.next().unwrap_or_default();
            name = fields.nth(3).unwrap_or_default().to_string();
            if name.ends_with("/ccm") {
                name = format!("{name} ({perms})");
            }
        } else if first == "Rss:" {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match by_name.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += kb,
                None => by_name.push((name.clone(), kb)),
            }
        }
    }
    by_name.retain(|(_, kb)| *kb > 100);
    by_name.sort_by_key(|(_, kb)| std::cmp::Reverse(*kb));
    by_name
}

/// CPU time (user and system, all threads) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which ends with the last `)`: state (field 3) first, then
    // utime and stime as fields 14 and 15.
    let (_, fields) = stat.rsplit_once(')').expect("command name in proc stat");
    let ticks: u64 = fields
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|field| field.parse::<u64>().expect("utime and stime are numbers"))
        .sum();
    Duration::from_secs_f64(ticks as f64 / CLOCK_TICKS_PER_SEC)
}

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

pub fn mb(megabytes: f64) -> String {
    format!("{megabytes:.1} MB")
}

/// Whether the bench runs `part`: every part when the environment variable `var` is unset or
/// empty, else those it names, comma-separated (`CCM_BENCH_ROUTING_ONLY=t12,t18`).
pub fn runs_part(var: &str, part: &str) -> bool {
    let only = std::env::var(var).unwrap_or_default();
    only.trim().is_empty() || only.split(',').any(|p| p.trim() == part)
}

/// Cores and load average when the bench starts: other work on the machine skews every figure.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores; load average at start: {}", load.join(" "))
}

/// One line of a printed table: a figure, ccm's value, the baseline and the target.
pub struct Row {
    pub figure: String,
    pub ccm: String,
    pub baseline: String,
    /// The figure as a ratio to the floor measured in the same run, with its goal.
    pub ratio: String,
    pub target: String,
}

impl Row {
    pub fn new(figure: &str, ccm: String, baseline: String, target: impl Into<String>) -> Row {
        Row { figure: figure.into(), ccm, baseline, ratio: "—".into(), target: target.into() }
    }

    /// Adds the ratio of the figure to its floor, `figure / floor`, and the ratio's goal.
    pub fn ratio(mut self, figure: f64, floor: f64, goal: &str) -> Row {
        self.ratio =
            if floor > 0.0 { format!("{:.2}× ({goal})", figure / floor) } else { "n/a".into() };
        self
    }
}

/// Prints the rows under a header, each column as wide as its widest cell.
pub fn print_table(rows: &[Row]) {
    let mut header = Row::new("figure", "ccm".into(), "baseline (what)".into(), "target");
    header.ratio = "ratio to floor (goal)".into();
    let width = |cell: fn(&Row) -> &str| {
        std::iter::once(&header).chain(rows).map(|r| cell(r).chars().count()).max().unwrap_or(0)
    };
    let (figure, ccm, baseline, ratio) = (
        width(|r| r.figure.as_str()),
        width(|r| r.ccm.as_str()),
        width(|r| r.baseline.as_str()),
        width(|r| r.ratio.as_str()),
    );
    for row in std::iter::once(&header).chain(rows) {
        println!(
            "{:<figure$}  {:<ccm$}  {:<baseline$}  {:<ratio$}  {}",
            row.figure, row.ccm, row.baseline, row.ratio, row.target
        );
    }
}

/// A new SQLite database at `path` for a baseline, durable as ccm's own: WAL and
/// `synchronous=FULL`.
pub async fn durable_db(path: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use sqlx::ConnectOptions;
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .connect()
        .await
        .expect("baseline database opens")
}

/// `POST /api/hooks` one after another, `pace` apart (as the soak bench posts them: a
/// `PreToolUse` of a session no task owns): each one's latency, and when it was sent
/// (milliseconds since the epoch).
pub async fn hook_latencies(
    daemon: &crate::Daemon,
    n: usize,
    pace: Duration,
) -> Vec<(i64, Duration)> {
    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let mut samples = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(pace);
    for i in 0..n {
        tick.tick().await;
        let body = serde_json::json!({"session_id": format!("bench-{i}"),
            "hook_event_name": "PreToolUse", "tool_name": "Read",
            "tool_input": {"file_path": "/src/main.rs"}, "cwd": "/work/repo"});
        let sent = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let started = std::time::Instant::now();
        let status = http
            .post(daemon.url("/api/hooks?system=claude"))
            .bearer_auth(&daemon.token)
            .json(&body)
            .send()
            .await
            .expect("hook answers")
            .status();
        assert!(status.is_success(), "hook refused: {status}");
        samples.push((sent, started.elapsed()));
    }
    samples
}
