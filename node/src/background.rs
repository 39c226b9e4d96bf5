//! Background work runs at a lower CPU priority, so on a busy machine the daemon's hooks and
//! requests go first: conflict prediction's git processes and supervisors' digests.

/// The niceness of background work (0 is normal, 19 the lowest priority).
pub const NICE: libc::c_int = 10;

/// Lowers the calling thread, and every thread and process it starts afterwards, to [`NICE`].
/// On Linux niceness belongs to a thread, so the rest of the process keeps its priority;
/// elsewhere this does nothing (it would lower the whole process).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` and `setpriority` only read and set the calling thread's attributes.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE);
    }
}
