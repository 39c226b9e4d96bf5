//! `ccm service install|uninstall|status`: run the daemon under the user's service manager,
//! a systemd user unit on Linux or a launchd agent on macOS, restarted when it crashes.
//!
//! Agents live in ccm's tmux server, which the daemon starts: the unit stops only the daemon's
//! own process (`KillMode=process`), so a restart, a stop or a logout (with lingering on) kills
//! no agent; launchd's `AbandonProcessGroup` does the same. The file starts with a marker line,
//! so `uninstall` removes exactly a file `install` wrote and nothing else.
//!
//! The directory is `CCM_SERVICE_DIR` when set (the tests use it), else
//! `$XDG_CONFIG_HOME/systemd/user` (`~/.config/systemd/user`) or `~/Library/LaunchAgents`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::config::Profile;
use crate::home::Home;

/// The first line of every file ccm writes.
const MARKER: &str = "written by `ccm service install`; `ccm service uninstall` removes it";
const UNIT: &str = "ccm.service";
const LABEL: &str = "dev.ccm.daemon";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    pub fn here() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }

    fn file_name(self) -> String {
        match self {
            Manager::Systemd => UNIT.into(),
            Manager::Launchd => format!("{LABEL}.plist"),
        }
    }
}

/// Where the service file goes.
pub fn service_dir(manager: Manager) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CCM_SERVICE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
    Ok(match manager {
        Manager::Systemd => std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"))
            .join("systemd/user"),
        Manager::Launchd => home.join("Library/LaunchAgents"),
    })
}

/// The systemd user unit that runs `ccm up` for `home`.
pub fn systemd_unit(exe: &Path, home: &Home, profile: Profile) -> String {
    let profile = match profile {
        Profile::Full => "full",
        Profile::Minimal => "minimal",
    };
    format!(
        "# {MARKER}\n\
         [Unit]\n\
         Description=ccm daemon: runs AI coding agents (home {home})\n\
         Documentation=https://github.com/ccm\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exe} up\n\
         Environment=\"CCM_HOME={home}\"\n\
         Environment=CCM_DAEMON__PROFILE={profile}\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         # Stop only the daemon: agents run in ccm's tmux server, which outlives it.\n\
         KillMode=process\n\
         TimeoutStopSec=30s\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe = systemd_quote(&exe.display().to_string()),
        home = home.root().display(),
    )
}

/// Quotes a path for `ExecStart=` when it holds spaces.
fn systemd_quote(path: &str) -> String {
    if path.contains([' ', '"', '\\']) {
        format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        path.to_string()
    }
}

/// The launchd agent that runs `ccm up` for `home`.
pub fn launchd_plist(exe: &Path, home: &Home, profile: Profile) -> String {
    let xml = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let profile = if profile == Profile::Minimal { "minimal" } else { "full" };
    let root = home.root().display().to_string();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- {MARKER} -->
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{LABEL}</string>
  <key>ProgramArguments</key>
  <array><string>{exe}</string><string>up</string></array>
  <key>EnvironmentVariables</key>
  <dict>
    <key>CCM_HOME</key><string>{home}</string>
    <key>CCM_DAEMON__PROFILE</key><string>{profile}</string>
  </dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>AbandonProcessGroup</key><true/>
  <key>StandardErrorPath</key><string>{log}</string>
</dict>
</plist>
"#,
        exe = xml(&exe.display().to_string()),
        home = xml(&root),
        log = xml(&format!("{root}/logs/daemon.log")),
    )
}

/// Runs a service manager command; its output, or why it failed.
fn manage(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err(format!(
            "`{program} {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// Writes the service file and, unless `no_start`, enables and starts it.
pub fn install(home: &Home, profile: Profile, no_start: bool) -> anyhow::Result<()> {
    let manager = Manager::here();
    let dir = service_dir(manager)?;
    let path = dir.join(manager.file_name());
    if path.exists() && !written_by_ccm(&path) {
        anyhow::bail!("{} exists and was not written by ccm; move it away first", path.display());
    }
    let exe = std::env::current_exe().context("cannot find the ccm binary's path")?;
    let text = match manager {
        Manager::Systemd => systemd_unit(&exe, home, profile),
        Manager::Launchd => launchd_plist(&exe, home, profile),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    if no_start {
        return Ok(());
    }
    let steps: Vec<(&str, Vec<String>)> = match manager {
        Manager::Systemd => vec![
            ("systemctl", vec!["--user".into(), "daemon-reload".into()]),
            ("systemctl", vec!["--user".into(), "enable".into(), "--now".into(), UNIT.into()]),
        ],
        Manager::Launchd => {
            vec![("launchctl", vec!["load".into(), "-w".into(), path.display().to_string()])]
        }
    };
    for (program, args) in steps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        manage(program, &args)
            .map_err(|e| anyhow::anyhow!("{e}; the file is written, start it by hand"))?;
    }
    println!("enabled and started");
    if manager == Manager::Systemd {
        linger_advice();
    }
    Ok(())
}

/// Says how to keep the service (and agents) running after logout when lingering is off.
fn linger_advice() {
    let user = std::env::var("USER").unwrap_or_default();
    if let Ok(out) = manage("loginctl", &["show-user", &user, "--property=Linger"]) {
        if out.trim() == "Linger=no" {
            println!(
                "lingering is off: the service stops when you log out and starts at your next login; \
                 to run it from boot, run `loginctl enable-linger {user}`"
            );
        }
    }
}

fn written_by_ccm(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.lines().take(2).any(|l| l.contains(MARKER)))
}

/// Stops and disables the service and removes the file `install` wrote.
pub fn uninstall() -> anyhow::Result<()> {
    let manager = Manager::here();
    let path = service_dir(manager)?.join(manager.file_name());
    if !path.exists() {
        println!("not installed ({} does not exist)", path.display());
        return Ok(());
    }
    anyhow::ensure!(
        written_by_ccm(&path),
        "{} was not written by ccm; it is left in place",
        path.display()
    );
    // Best effort: a unit that was written but never enabled (--no-start) has nothing to stop.
    let stopped = match manager {
        Manager::Systemd => manage("systemctl", &["--user", "disable", "--now", UNIT]),
        Manager::Launchd => manage("launchctl", &["unload", "-w", &path.display().to_string()]),
    };
    if let Err(e) = stopped {
        println!("note: {e}");
    }
    std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    if manager == Manager::Systemd {
        let _ = manage("systemctl", &["--user", "daemon-reload"]);
    }
    println!("removed {}", path.display());
    Ok(())
}

/// Whether the service is installed, enabled and running.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub file: PathBuf,
    pub installed: bool,
    pub enabled: Option<bool>,
    pub running: Option<bool>,
}

pub fn status() -> anyhow::Result<Status> {
    let manager = Manager::here();
    let file = service_dir(manager)?.join(manager.file_name());
    let installed = file.exists();
    let (enabled, running) = match manager {
        Manager::Systemd => (
            manage("systemctl", &["--user", "is-enabled", UNIT])
                .ok()
                .map(|s| s == "enabled")
                .or(installed.then_some(false)),
            manage("systemctl", &["--user", "is-active", UNIT])
                .ok()
                .map(|s| s == "active")
                .or(installed.then_some(false)),
        ),
        Manager::Launchd => {
            let listed = manage("launchctl", &["list", LABEL]).is_ok();
            (Some(listed), Some(listed))
        }
    };
    Ok(Status { file, installed, enabled, running })
}
