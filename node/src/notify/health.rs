//! Alerts the node raises about itself, each with its reason and a command that helps:
//! low disk space under the home or the worktrees, tmux windows no live agent owns, and a
//! daemon that did not shut down cleanly last time. (Silent agents raise `stalled` in the
//! runtime; a paused sync raises `sync_paused` in the sync engine.)

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use ccm_schema::Severity;
use tracing::warn;

use super::Context;
use crate::home::Home;

/// Why a check could not run; it runs again at the next period.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Tmux(#[from] crate::tmux::TmuxError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs the checks every `notify.health.check_secs` until shutdown.
pub async fn run(context: Context) {
    let every = Duration::from_secs(context.config.notify.health.check_secs);
    let mut suspects = HashSet::new();
    loop {
        if let Err(error) = check_disks(&context).await {
            warn!(%error, "disk space check failed");
        }
        match orphan_windows(&context, &suspects).await {
            Ok(now) => suspects = now,
            Err(error) => warn!(%error, "orphan window check failed"),
        }
        tokio::select! {
            () = context.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Free and total bytes of the filesystem holding `path`, and the filesystem's id.
pub fn disk_space(path: &Path) -> std::io::Result<(u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid C string and `stat` is room for one `statvfs`.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // The field types differ between platforms (u32 on macOS).
    #[allow(clippy::unnecessary_cast)]
    let block = stat.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Ok((stat.f_bavail as u64 * block, stat.f_blocks as u64 * block, stat.f_fsid as u64))
}

async fn check_disks(context: &Context) -> Result<(), CheckError> {
    let health = &context.config.notify.health;
    let root = context.home.root();
    let worktrees = root.join("worktrees");
    let mut seen = HashSet::new();
    let mut low = Vec::new();
    for (what, path) in [("home", root.to_path_buf()), ("worktrees", worktrees)] {
        if !path.exists() {
            continue;
        }
        let (free, total, filesystem) = disk_space(&path)?;
        if !seen.insert(filesystem) {
            continue; // one alert per filesystem
        }
        let free_mb = free / (1024 * 1024);
        let percent = free.saturating_mul(100).checked_div(total).unwrap_or(100);
        if free_mb < health.disk_min_free_mb || percent < u64::from(health.disk_min_free_percent) {
            // One alert while it lasts (keyed by the path): the figures are those of when it
            // was raised.
            let message = format!(
                "disk space low for the {what} ({}): {} free of {} ({percent}%), less than \
                 notify.health's disk_min_free_mb ({} MiB) or disk_min_free_percent ({}%); \
                 free space, for example with `ccm task list --state complete` and `git \
                 worktree prune`, or find what is big with `du -sh {}/*`",
                path.display(),
                size(free),
                size(total),
                health.disk_min_free_mb,
                health.disk_min_free_percent,
                path.display()
            );
            let key = path.display().to_string();
            context.store.raise_health(Severity::Critical, "disk_low", &key, &message).await?;
            low.push(key);
        }
    }
    // Space was freed (or the thresholds lowered): the alert goes, so the next time tells again.
    context.store.settle_health("disk_low", &low).await?;
    Ok(())
}

/// Bytes as MiB or GiB, one decimal.
fn size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// Windows of ccm's tmux server that no live agent owns, in two checks in a row (a window
/// being opened is recorded right after); returns the suspects of this check. An alert about a
/// window that is gone or owned now is resolved.
async fn orphan_windows(
    context: &Context,
    suspects: &HashSet<String>,
) -> Result<HashSet<String>, CheckError> {
    let tmux = crate::tmux::Tmux::new(context.config.runtime.tmux_socket.clone());
    let live: HashSet<String> =
        context.store.live_agents().await?.iter().map(|a| a.short_id()).collect();
    let mut now = HashSet::new();
    let mut orphans = Vec::new();
    for window in tmux.windows().await? {
        if live.contains(&window.name) || window.name.starts_with(crate::supervisors::WINDOW_PREFIX)
        {
            continue;
        }
        if suspects.contains(&window.id) {
            let message = format!(
                "tmux window {} ({}) of socket `{}` belongs to no live agent (pid {}); \
                 look with `ccm agent list`, close it with `tmux -L {} kill-window -t {}`",
                window.id,
                window.name,
                tmux.socket(),
                window.pane_pid,
                tmux.socket(),
                window.id
            );
            let key = format!("{}:{}", tmux.socket(), window.id);
            context.store.raise_health(Severity::Warning, "orphan_window", &key, &message).await?;
            orphans.push(key);
        }
        now.insert(window.id);
    }
    context.store.settle_health("orphan_window", &orphans).await?;
    Ok(now)
}

/// Raises `daemon_crashed` when the port file of a previous daemon is still there (it is
/// removed on a clean shutdown): the daemon died (killed, crashed, power lost). Called at
/// start-up, before the new port file is written.
pub async fn check_previous_run(
    home: &Home,
    store: &crate::store::Store,
) -> Result<(), crate::store::StoreError> {
    let Some(previous) = home.read_daemon_info() else { return Ok(()) };
    if previous.pid == std::process::id() {
        return Ok(());
    }
    let message = format!(
        "the daemon (pid {}, started {}) stopped without shutting down; it was restarted and \
         adopted the live agents. Look for the cause with `journalctl --user -u ccm` or \
         `ccm doctor`",
        previous.pid, previous.started_at
    );
    store.alert(None, Severity::Critical, "daemon_crashed", &message).await?;
    Ok(())
}
