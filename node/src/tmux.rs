//! ccm's own tmux server (`tmux -L <socket>`): one session `ccm`, one window per agent.
//!
//! tmux is for isolation and observation, not supervision: the runtime decides liveness from
//! the agent's exit file and the window list. The server daemonizes into its own session, so
//! stopping the daemon stops no agent.

use std::path::Path;

use tokio::process::Command;

/// The session holding every agent window; its first window `ccm` keeps the server alive.
pub const SESSION: &str = "ccm";

#[derive(Debug, thiserror::Error)]
pub enum TmuxError {
    /// The `tmux` program could not be run (not installed, not on `PATH`, no process left).
    #[error("cannot run tmux: {0} (is tmux installed? `ccm doctor` checks)")]
    Spawn(std::io::Error),
    /// tmux ran and refused the command (its arguments and error cut to 1 KiB each).
    #[error("tmux {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    /// tmux answered something ccm cannot read.
    #[error("tmux {args} printed `{output}`, expected {expected}")]
    Unexpected { args: String, output: String, expected: &'static str },
}

impl TmuxError {
    /// Whether running the same command again cannot help: tmux is missing, or refused the
    /// command itself (too long), as opposed to a server that went away or a busy system.
    pub fn is_lasting(&self) -> bool {
        match self {
            TmuxError::Spawn(error) => matches!(
                error.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ArgumentListTooLong
            ),
            TmuxError::Failed { stderr, .. } => stderr.contains("too long"),
            TmuxError::Unexpected { .. } => false,
        }
    }
}

/// A window as tmux lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// `@N`, stable for the server's life.
    pub id: String,
    pub name: String,
    pub pane_pid: i64,
}

/// What to run in a new window.
pub struct WindowSpec<'a> {
    pub name: &'a str,
    pub cwd: &'a Path,
    /// argv, run without a shell. tmux refuses a command line over about 16 KiB (its message
    /// size), so this is short: the agent's launcher (`agents::launcher`) holds the rest.
    pub argv: &'a [String],
}

/// The most of a tmux command line or error kept in a [`TmuxError`].
const ERROR_TEXT_BYTES: usize = 1024;

/// Whether tmux's error says there is no server or no `ccm` session to talk to.
fn no_session(stderr: &str) -> bool {
    ["no server running", "can't find session", "error connecting", "No such file or directory"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// Handle to ccm's tmux server.
#[derive(Debug, Clone)]
pub struct Tmux {
    socket: String,
}

impl Tmux {
    pub fn new(socket: impl Into<String>) -> Tmux {
        Tmux { socket: socket.into() }
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    async fn run(&self, args: &[&str]) -> Result<String, TmuxError> {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            // The service manager's socket is the daemon's: the tmux server it may start, and
            // the agents in it, must not speak for the daemon.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(TmuxError::Spawn)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(TmuxError::Failed {
                args: crate::text::head(&args.join(" "), ERROR_TEXT_BYTES),
                stderr: crate::text::head(
                    String::from_utf8_lossy(&output.stderr).trim(),
                    ERROR_TEXT_BYTES,
                ),
            })
        }
    }

    /// Starts the server and its session when they are not running.
    pub async fn ensure_session(&self) -> Result<(), TmuxError> {
        if self.run(&["has-session", "-t", &format!("={SESSION}")]).await.is_ok() {
            return Ok(());
        }
        match self.run(&["new-session", "-d", "-s", SESSION, "-n", SESSION]).await {
            Ok(_) => Ok(()),
            // Another caller created it between the two commands.
            Err(TmuxError::Failed { stderr, .. }) if stderr.contains("duplicate session") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Opens a detached window running `spec.argv` and returns it, starting the server and
    /// its session first when they are not running.
    pub async fn spawn(&self, spec: &WindowSpec<'_>) -> Result<Window, TmuxError> {
        match self.new_window(spec).await {
            Err(TmuxError::Failed { stderr, .. }) if no_session(&stderr) => {
                self.ensure_session().await?;
                self.new_window(spec).await
            }
            other => other,
        }
    }

    async fn new_window(&self, spec: &WindowSpec<'_>) -> Result<Window, TmuxError> {
        let target = format!("={SESSION}:");
        let cwd = spec.cwd.to_string_lossy();
        let mut args: Vec<&str> = vec![
            "new-window",
            "-d",
            "-t",
            &target,
            "-n",
            spec.name,
            "-c",
            &cwd,
            "-P",
            "-F",
            "#{window_id} #{pane_pid}",
        ];
        args.push("--");
        args.extend(spec.argv.iter().map(String::as_str));
        let output = self.run(&args).await?;
        let unexpected = || TmuxError::Unexpected {
            args: "new-window".into(),
            output: output.clone(),
            expected: "`@<id> <pid>`",
        };
        let (id, pid) = output.split_once(' ').ok_or_else(unexpected)?;
        let pane_pid = pid.parse().map_err(|_| unexpected())?;
        Ok(Window { id: id.to_string(), name: spec.name.to_string(), pane_pid })
    }

    /// The agent windows (not the session's keeper window); empty when no server runs.
    pub async fn windows(&self) -> Result<Vec<Window>, TmuxError> {
        let listed = match self
            .run(&[
                "list-windows",
                "-t",
                &format!("={SESSION}"),
                "-F",
                "#{window_id} #{pane_pid} #{window_name}",
            ])
            .await
        {
            Ok(listed) => listed,
            Err(TmuxError::Failed { stderr, .. }) if no_session(&stderr) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(listed
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let id = parts.next()?.to_string();
                let pane_pid = parts.next()?.parse().ok()?;
                let name = parts.next().unwrap_or_default().to_string();
                Some(Window { id, name, pane_pid })
            })
            .filter(|w| w.name != SESSION)
            .collect())
    }

    /// Closes a window, ending its process; a window already gone is not an error.
    pub async fn kill(&self, window_id: &str) -> Result<(), TmuxError> {
        match self.run(&["kill-window", "-t", window_id]).await {
            Err(TmuxError::Failed { stderr, .. })
                if stderr.contains("can't find") || stderr.contains("no server") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Copies the window's output into `log` (for interactive agents, whose output is a
    /// terminal rather than a pipe).
    pub async fn pipe_to(&self, window_id: &str, log: &Path) -> Result<(), TmuxError> {
        let command = format!("cat >> '{}'", log.to_string_lossy().replace('\'', r"'\''"));
        self.run(&["pipe-pane", "-o", "-t", window_id, &command]).await.map(drop)
    }

    /// The argv that attaches a terminal to `window_id`.
    pub fn attach_argv(&self, window_id: &str) -> Vec<String> {
        ["tmux", "-L", &self.socket, "attach-session", "-t", window_id]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_tmux_or_a_refused_command_is_lasting() {
        let spawn = |kind| TmuxError::Spawn(std::io::Error::from(kind));
        let failed =
            |stderr: &str| TmuxError::Failed { args: "new-window".into(), stderr: stderr.into() };
        assert!(spawn(std::io::ErrorKind::NotFound).is_lasting());
        assert!(spawn(std::io::ErrorKind::ArgumentListTooLong).is_lasting());
        assert!(!spawn(std::io::ErrorKind::WouldBlock).is_lasting());
        assert!(failed("command too long").is_lasting());
        assert!(!failed("server exited unexpectedly").is_lasting());
        let unexpected =
            TmuxError::Unexpected { args: "new-window".into(), output: "".into(), expected: "x" };
        assert!(!unexpected.is_lasting());
    }
}
