use std::io::IsTerminal;
use std::process::ExitCode;

use ccm_node::cli::{self, Cli, HookCli};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc: the daemon allocates and frees a buffer or two per request across threads, where
/// it costs a fraction of glibc's malloc (BENCHMARKS.md, hook pipeline). Built without
/// transparent huge pages (`no_thp`): the first touch of a huge page zeroes 2 MB, which a
/// short-lived command such as `ccm hook` paid at every start.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `ccm hook` runs on every agent's path, once per event: it parses only its own arguments
    // (building clap's whole command tree costs more than the rest of its start), runs on one
    // thread and has no log subscriber (its problems go to `hook.log`). Arguments it does not
    // understand are reported and ignored: a hook never fails the agent.
    if std::env::args_os().nth(1).is_some_and(|a| a == "hook") {
        let args = match HookCli::try_parse_from(std::env::args_os().skip(1)) {
            Ok(cli) => cli.args,
            Err(e) if !e.use_stderr() => e.exit(), // --help, --version
            Err(e) => {
                eprintln!("ccm hook: ignoring its arguments: {e}");
                cli::HookArgs::default()
            }
        };
        // Whatever happens, the exit code is 0: a hook never fails the agent. A panic has
        // printed its message on stderr by then (`ccm-hook` becomes this process, so its own
        // guard does not hold here).
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => {
                let run = std::panic::AssertUnwindSafe(|| runtime.block_on(cli::hook(args)));
                let _ = std::panic::catch_unwind(run);
            }
            Err(e) => {
                eprintln!("ccm hook: cannot start the async runtime ({e}); the event is not stored")
            }
        }
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    if cli.runs_daemon() {
        tune_allocators();
    }
    if !cli.runs_daemon() {
        // A command whose reader went away (`ccm task list | head`) ends quietly, as `ls` and
        // `git log` do, instead of panicking in `println!`. The daemon keeps ignoring SIGPIPE:
        // a client that hangs up must not stop it.
        // SAFETY: sets the disposition of one signal before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("CCM_LOG").unwrap_or_else(|_| {
            EnvFilter::new(if cli.runs_mcp_server() { "warn" } else { "info" })
        }))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // `ccm mcp` serves one agent's calls in turn: one thread, no hand-off between threads on
    // the way from its stdin to the daemon and back (BENCHMARKS.md, MCP tool calls).
    let runtime = if cli.runs_mcp_server() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    finish(runtime, cli::run(cli))
}

/// Keeps the daemon's memory from growing with what it once held, for a long drain of the sync
/// backlog above all (BENCHMARKS.md, T11):
/// - SQLite allocates with the C library's malloc, which gives each thread that allocates its
///   own arena: every SQLite worker thread (the writer and the readers) kept the peak of its
///   own, about 13 MB together. Two arenas for the process keep that peak shared, and a fixed
///   mmap threshold keeps each large block (a batch body SQLite copies, about 1 MiB) in a
///   mapping of its own, returned when freed (by default the threshold grows with the blocks
///   freed and they stay in the arenas).
/// - mimalloc gives freed memory back to the OS after a delay (10 ms, and ten times that for
///   its arenas); the batches of a drain, a few MB each and freed by another thread than the
///   one that allocated them, kept about 7 MB that way. The daemon gives it back at once.
fn tune_allocators() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc tunables, set before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    /// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h`.
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    // SAFETY: sets one of mimalloc's options (linked as the global allocator above); options
    // may change at any time and are read when memory is freed.
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// Runs the command on the runtime and turns the outcome into the exit code.
fn finish(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
