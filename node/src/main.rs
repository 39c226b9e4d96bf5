use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc: the daemon allocates and frees a buffer or two per request across threads, where
/// it costs a fraction of glibc's malloc (BENCHMARKS.md, hook pipeline). Built without
/// transparent huge pages (`no_thp`): the first touch of a huge page zeroes 2 MB, which a
/// short-lived command such as `ccm hook` paid at every start.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = ccm_node::cli::Cli::parse();
    let runtime = if cli.is_hook() {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_env("CCM_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
            )
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ccm_node::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
