//! `ccm up [--detach]` and `ccm stop`: the daemon's life from the command line.

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::client::{lock_held, Client};
use crate::config::Config;
use crate::home::Home;

/// How long `up --detach` waits for the new daemon to answer, and `stop` for it to exit.
const WAIT: Duration = Duration::from_secs(60);

/// `ccm up`: the daemon in the foreground, or (`detach`) in the background with its log in
/// `logs/daemon.log`, returning once it answers.
pub async fn up(
    home: Home,
    config: Config,
    project: Option<&std::path::Path>,
    detach: bool,
) -> anyhow::Result<()> {
    if !detach {
        let live = crate::config::LiveConfig::new(home.root(), project, config);
        return Ok(crate::daemon::run(home, live).await?);
    }
    if let Some(client) = Client::connect(&home).await? {
        let status: Option<crate::config::ConfigStatus> = client.get(&["config"]).await.ok();
        let restart = status.filter(|s| !s.restart_needed.is_empty()).map(|s| {
            format!(
                "; it still uses the old {} from before the configuration changed: `ccm stop`, \
                 then `ccm up` applies them",
                s.restart_needed.join(", ")
            )
        });
        anyhow::bail!(
            "the daemon is already running (pid {}, {}); `ccm stop` stops it{}",
            client.daemon.pid,
            client.daemon.addr,
            restart.unwrap_or_default()
        );
    }
    home.ensure()?;
    let dir = home.root().join("logs");
    crate::home::private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe().context("cannot find the ccm binary that runs")?;
    let mut command = std::process::Command::new(exe);
    command.arg("up").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: `setsid` is async-signal-safe; the daemon gets its own session, so closing this
    // terminal (SIGHUP) or Ctrl-C in it does not reach it.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("cannot start the daemon")?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the daemon exited at start ({status}); the end of {}:\n{}",
                log_path.display(),
                log_tail(&log_path)
            );
        }
        if let Ok(Some(client)) = Client::connect(&home).await {
            if client.daemon.pid == child.id() {
                println!(
                    "daemon started (pid {}, {}); log in {}; `ccm stop` stops it",
                    client.daemon.pid,
                    client.daemon.addr,
                    log_path.display()
                );
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon (pid {}) did not answer within {}s; see {}",
            child.id(),
            WAIT.as_secs(),
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last lines of a log file.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// `ccm stop`: asks the daemon to shut down (SIGTERM: it drains requests and closes the store)
/// and waits until it has exited, up to `timeout`, saying what it waits for after a second;
/// then, with `force`, kills it (SIGKILL). Agents run in tmux and keep running.
pub async fn stop(home: &Home, timeout: Duration, force: bool) -> anyhow::Result<()> {
    let running = home.read_daemon_info().filter(|_| lock_held(home));
    let Some(daemon) = running else {
        println!("no daemon is running for {}", home.root().display());
        return Ok(());
    };
    let pid = libc::pid_t::try_from(daemon.pid).context("the port file holds a bad pid")?;
    signal(pid, libc::SIGTERM)?;
    let started = Instant::now();
    let mut told = false;
    while lock_held(home) {
        let waited = started.elapsed();
        if !told && waited >= Duration::from_secs(1) {
            told = true;
            let then = if force { "then kills it" } else { "then gives up" };
            eprintln!(
                "waiting for the daemon (pid {pid}) to exit: it finishes the requests in flight, \
                 stops its tasks and closes the database; waits up to {}s, {then}{}",
                timeout.as_secs(),
                suspended(pid)
            );
        }
        if waited >= timeout {
            anyhow::ensure!(
                force,
                "the daemon (pid {pid}) did not exit within {}s{}; it may be hung. \
                 `ccm stop --force` kills it (nothing it acknowledged is lost; agents keep running)",
                timeout.as_secs(),
                suspended(pid)
            );
            signal(pid, libc::SIGKILL)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while lock_held(home) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the daemon (pid {pid}) was killed but still holds {}",
                    home.lock_file().display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!(
                "daemon killed (pid {pid}) after {}s without exiting; nothing it acknowledged is \
                 lost; agents keep running (`ccm agent list`)",
                timeout.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("daemon stopped (pid {pid}); agents keep running (`ccm agent list`)");
    Ok(())
}

/// Sends `signal` to the daemon `pid`.
fn signal(pid: libc::pid_t, signal: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid read from the home's own port file, whose daemon holds the
    // home's lock (checked by the caller).
    if unsafe { libc::kill(pid, signal) } != 0 {
        let error = std::io::Error::last_os_error();
        anyhow::bail!("cannot signal the daemon (pid {pid}): {error}");
    }
    Ok(())
}

/// "; it is suspended ..." when the process `pid` is stopped (SIGSTOP, a debugger), which is
/// why it cannot exit; empty otherwise (or where `/proc` does not say).
fn suspended(pid: libc::pid_t) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
    match state {
        Some('T' | 't') => {
            format!("; it is suspended (SIGSTOP or a debugger): `kill -CONT {pid}` lets it exit")
        }
        _ => String::new(),
    }
}
