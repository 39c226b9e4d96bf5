//! `ccm-hook`: the command the agent CLIs' hooks run (see `ccm_node::hooks::fast`).
//!
//! Without Rust's `main` wrapper (`no_main`): the C `main` below is all there is. The wrapper's
//! set-up costs this short-lived program about 0.1 ms of its start (reading `/proc/self/maps`
//! for the main thread's stack guard among it; BENCHMARKS.md, hook pipeline), and what it
//! does that matters here is done below: SIGPIPE ignored (a reader that went away is an error
//! on write, not the end of the process), and a panic ends in exit code 0 like everything else.

#![no_main]

use std::ffi::{c_char, c_int};

#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    // SAFETY: sets the disposition of one signal before anything else runs; no other thread
    // exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // A panic has printed its message on stderr by now; the agent goes on either way.
    let _ = std::panic::catch_unwind(ccm_node::hooks::fast::main);
    0
}
