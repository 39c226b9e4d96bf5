//! Numbers shared by the benchmarks (`tests/benches/*.rs`): order statistics, memory and CPU
//! time read from `/proc`, and the units the tables print.

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
