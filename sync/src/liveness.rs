//! Liveness of a long-lived loop, for the daemon's watchdog: a [`Beat`] says whether the loop is
//! inside a step now and since when, or when it last finished one. Marking it costs two atomic
//! stores and a read of the monotonic clock, so a loop marks every step.
//!
//! A loop that waits (for a timer, a wake-up, a backoff) is idle and never stalled; a loop is
//! stalled when one step has run longer than the watchdog allows. Times are milliseconds on
//! the process's monotonic clock ([`Beat::wall_millis`] turns them into wall-clock time), so
//! a change of the system clock neither stalls nor revives a loop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The process's monotonic epoch, and the wall-clock time it was taken at (Unix milliseconds).
static EPOCH: LazyLock<(Instant, i64)> = LazyLock::new(|| {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (Instant::now(), i64::try_from(wall.as_millis()).unwrap_or(i64::MAX))
});

/// Milliseconds since the process's monotonic epoch.
pub fn now_millis() -> u64 {
    u64::try_from(EPOCH.0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One loop's liveness.
#[derive(Debug, Default)]
pub struct Beat {
    /// When the current step began (busy) or the last one ended (idle), per [`now_millis`].
    since: AtomicU64,
    busy: AtomicBool,
    /// Test fault switch: the next step never ends (set only through the daemon's test route,
    /// which exists only when the daemon was started with `CCM_TEST_FAULTS`).
    fault: AtomicBool,
}

/// What a [`Beat`] says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Inside a step.
    pub busy: bool,
    /// Since when (busy), or when the last step ended (idle); monotonic milliseconds.
    pub since: u64,
}

impl Reading {
    /// Whether one step has run longer than `limit` at monotonic time `now`.
    pub fn stalled(&self, now: u64, limit: Duration) -> bool {
        self.busy && now.saturating_sub(self.since) > u64::try_from(limit.as_millis()).unwrap_or(0)
    }
}

impl Beat {
    /// Marks the start of a step; the step ends when the returned guard drops (a panic or a
    /// cancelled future included). With the test fault set, the step never ends.
    pub async fn step(&self) -> Step<'_> {
        self.mark(true);
        if self.fault.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        Step(self)
    }

    /// Marks a step that is over at once (a loop that only waits, then acts without awaiting).
    pub fn tick(&self) {
        self.mark(false);
    }

    fn mark(&self, busy: bool) {
        self.since.store(now_millis(), Ordering::Relaxed);
        self.busy.store(busy, Ordering::Release);
    }

    pub fn read(&self) -> Reading {
        let busy = self.busy.load(Ordering::Acquire);
        Reading { busy, since: self.since.load(Ordering::Relaxed) }
    }

    /// Makes the loop's next step hang (the test fault switch).
    pub fn stall_for_test(&self) {
        self.fault.store(true, Ordering::Relaxed);
    }

    /// A monotonic time as Unix milliseconds.
    pub fn wall_millis(monotonic: u64) -> i64 {
        EPOCH.1.saturating_add(i64::try_from(monotonic).unwrap_or(i64::MAX))
    }
}

/// A step in progress; dropping it marks the loop idle.
#[must_use = "the step ends when this is dropped"]
pub struct Step<'a>(&'a Beat);

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.0.mark(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loop_is_stalled_only_inside_a_step_longer_than_the_limit() {
        let beat = Beat::default();
        let limit = Duration::from_millis(100);
        assert!(!beat.read().stalled(now_millis() + 1_000, limit), "never started: idle");
        let step = beat.step().await;
        let reading = beat.read();
        assert!(reading.busy);
        assert!(!reading.stalled(reading.since + 100, limit));
        assert!(reading.stalled(reading.since + 101, limit));
        drop(step);
        let idle = beat.read();
        assert!(!idle.busy && !idle.stalled(idle.since + 10_000, limit), "waiting is not a stall");
    }
}
