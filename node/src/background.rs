//! Background work runs at a lower CPU priority, so on a busy machine the daemon's hooks and
//! requests go first: conflict prediction's git processes ([`NICE`]) and supervisors' digests
//! ([`lower_this_thread`]).

/// The niceness of background processes (0 is normal, 19 the lowest priority).
pub const NICE: libc::c_int = 10;

/// Moves the calling thread, and every thread it starts afterwards, to Linux's idle scheduling
/// class (`SCHED_IDLE`): it runs on a core nothing else wants, and gives the core up as soon as
/// any other thread wakes. Niceness alone was not enough: a thread at niceness 10 keeps its core
/// until its time slice ends, so a hook request that woke meanwhile waited for it (the hook's
/// p99 was 2.8 times idle while digests were built; BENCHMARKS.md). Only this thread moves;
/// elsewhere than Linux this does nothing (the calls there would lower the whole process).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` and `sched_setscheduler` only read and set the calling thread's
    // attributes; `param` lives across the call.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param);
    }
}
