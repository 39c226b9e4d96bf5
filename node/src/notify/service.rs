//! `ccm service install|uninstall|status`: run the daemon under the user's service manager,
//! a systemd user unit on Linux or a launchd agent on macOS, restarted when it crashes.
//!
//! Agents live in ccm's tmux server, which the daemon starts: the unit stops only the daemon's
//! own process (`KillMode=process`), so a restart, a stop or a logout (with lingering on) kills
//! no agent; launchd's `AbandonProcessGroup` does the same. The file starts with a marker line,
//! so `uninstall` removes exactly a file `install` wrote and nothing else.
//!
//! A stalled loop of the daemon restarts it: systemd's watchdog (`Type=notify`,
//! `WatchdogSec=`; the daemon feeds it while every loop makes progress), and under launchd
//! `KeepAlive` with the daemon exiting by itself (`daemon.watchdog_exit`).
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

/// The PATH the service runs with: the installing shell's (its absolute entries, each once),
/// then the directory of this ccm, so the agents' programs (a `claude` in `~/.local/bin`) and
/// ccm itself are found as they are in that shell. Without one, systemd's default.
pub fn service_path(exe: &Path) -> String {
    let shell = std::env::var_os("PATH").unwrap_or_else(|| SYSTEMD_DEFAULT_PATH.into());
    let mut dirs: Vec<PathBuf> = Vec::new();
    let ours = exe.parent().map(Path::to_path_buf);
    for dir in std::env::split_paths(&shell).chain(ours) {
        if dir.is_absolute() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    std::env::join_paths(dirs)
        .map_or_else(|_| SYSTEMD_DEFAULT_PATH.to_string(), |p| p.to_string_lossy().into_owned())
}

/// The PATH a systemd user service gets when its unit sets none.
const SYSTEMD_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The unit's `WatchdogSec=`: a stalled loop (one step longer than `daemon.stall_secs`) stops
/// the feed, and systemd restarts the daemon this long after the last `WATCHDOG=1`.
const WATCHDOG_SECS: u64 = 60;

/// The systemd user unit that runs `ccm up` for `home` with `path` as its PATH.
pub fn systemd_unit(exe: &Path, home: &Home, profile: Profile, path: &str) -> String {
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
         # The daemon says READY=1 once it serves, and WATCHDOG=1 while every loop of it makes\n\
         # progress: a stalled loop stops the feed and systemd restarts it.\n\
         Type=notify\n\
         NotifyAccess=main\n\
         WatchdogSec={WATCHDOG_SECS}s\n\
         ExecStart={exe} up\n\
         Environment={ccm_home}\n\
         Environment=CCM_DAEMON__PROFILE={profile}\n\
         # The PATH of the shell that ran `ccm service install`: agents' programs are found as there.\n\
         Environment={path}\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         # Stop only the daemon: agents run in ccm's tmux server, which outlives it.\n\
         KillMode=process\n\
         TimeoutStopSec=30s\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        exe = systemd_quote(&exe.display().to_string()),
        home = home.root().display().to_string().replace('%', "%%"),
        ccm_home = systemd_assignment("CCM_HOME", &home.root().display().to_string()),
        path = systemd_assignment("PATH", path),
    )
}

/// Quotes a path for `ExecStart=` when it holds spaces (`%` is doubled: a specifier).
fn systemd_quote(path: &str) -> String {
    let path = path.replace('%', "%%");
    if path.contains([' ', '"', '\\']) {
        format!("\"{}\"", path.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        path
    }
}

/// `"KEY=value"` for `Environment=`, quoted and escaped (`%` is a specifier in unit files).
fn systemd_assignment(key: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('%', "%%");
    format!("\"{key}={value}\"")
}

/// The PATH a unit written by `install` sets, unescaped.
fn unit_path(text: &str) -> Option<String> {
    let line = text.lines().find_map(|l| l.trim().strip_prefix("Environment=\"PATH="))?;
    let value = line.strip_suffix('"')?;
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '%' => {
                out.push('%');
                chars.next(); // `%%`
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// The launchd agent that runs `ccm up` for `home`.
pub fn launchd_plist(exe: &Path, home: &Home, profile: Profile, path: &str) -> String {
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
    <key>CCM_DAEMON__WATCHDOG_EXIT</key><string>true</string>
    <key>PATH</key><string>{path}</string>
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
        path = xml(path),
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
    let path_var = service_path(&exe);
    let text = match manager {
        Manager::Systemd => systemd_unit(&exe, home, profile, &path_var),
        Manager::Launchd => launchd_plist(&exe, home, profile, &path_var),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!("PATH for the service (this shell's): {path_var}");
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

/// Whether the service is installed, enabled and running, and what `ccm doctor` says when run
/// as the service runs it.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub file: PathBuf,
    pub installed: bool,
    pub enabled: Option<bool>,
    pub running: Option<bool>,
    /// `ccm doctor` with the service's PATH and home, when the service is installed.
    pub doctor: Option<Doctor>,
}

/// `ccm doctor` run as the service would run it.
#[derive(Debug, serde::Serialize)]
pub struct Doctor {
    /// The PATH it ran with: the unit's, or systemd's default when the unit sets none.
    pub path: String,
    /// Whether the unit sets a PATH (a unit written before ccm did has none).
    pub path_from_unit: bool,
    /// Whether every check passed.
    pub ok: bool,
    /// What it printed.
    pub output: String,
}

pub fn status(home: &Home) -> anyhow::Result<Status> {
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
    let doctor = if installed { Some(doctor_as_service(&file, manager, home)?) } else { None };
    Ok(Status { file, installed, enabled, running, doctor })
}

/// Runs `ccm doctor` with the environment the service file gives the daemon: its PATH and home.
fn doctor_as_service(file: &Path, manager: Manager, home: &Home) -> anyhow::Result<Doctor> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let from_unit = match manager {
        Manager::Systemd => unit_path(&text),
        Manager::Launchd => text
            .split_once("<key>PATH</key><string>")
            .and_then(|(_, rest)| rest.split_once("</string>"))
            .map(|(path, _)| path.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")),
    };
    let path_from_unit = from_unit.is_some();
    let path = from_unit.unwrap_or_else(|| SYSTEMD_DEFAULT_PATH.to_string());
    let ccm_home = match manager {
        Manager::Systemd => text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Environment=\"CCM_HOME="))
            .and_then(|v| v.strip_suffix('"'))
            .map(|v| v.replace("%%", "%")),
        Manager::Launchd => None,
    }
    .unwrap_or_else(|| home.root().display().to_string());
    let exe = std::env::current_exe().context("cannot find the ccm binary's path")?;
    let mut command = Command::new(&exe);
    // The service has none of this shell's `CCM_*` settings, only the file's.
    for (name, _) in std::env::vars_os().filter(|(n, _)| n.to_string_lossy().starts_with("CCM_")) {
        command.env_remove(name);
    }
    let profile = ["full", "minimal"].into_iter().find(|p| {
        text.contains(&format!(
            "CCM_DAEMON__PROFILE{}{p}",
            if manager == Manager::Systemd { "=" } else { "</key><string>" }
        ))
    });
    if let Some(profile) = profile {
        command.env("CCM_DAEMON__PROFILE", profile);
    }
    let out = command
        .arg("doctor")
        .env("PATH", &path)
        .env("CCM_HOME", &ccm_home)
        .output()
        .with_context(|| format!("cannot run {} doctor", exe.display()))?;
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok(Doctor { path, path_from_unit, ok: out.status.success(), output })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_quotes_and_percent_survives_the_unit_file() {
        let path = r#"/opt/100%/bin:/home/a "b"/bin:/x\y"#;
        let unit = systemd_unit(Path::new("/usr/bin/ccm"), &Home::at("/h"), Profile::Full, path);
        assert!(
            unit.contains(r#"Environment="PATH=/opt/100%%/bin:/home/a \"b\"/bin:/x\\y""#),
            "{unit}"
        );
        assert_eq!(unit_path(&unit).as_deref(), Some(path));
    }

    #[test]
    fn the_launchd_agent_keeps_the_daemon_alive_and_has_it_exit_on_a_stalled_loop() {
        let plist =
            launchd_plist(Path::new("/usr/bin/ccm"), &Home::at("/h"), Profile::Full, "/usr/bin");
        assert!(plist.contains("<key>KeepAlive</key><dict><key>SuccessfulExit</key><false/>"));
        assert!(
            plist.contains("<key>CCM_DAEMON__WATCHDOG_EXIT</key><string>true</string>"),
            "{plist}"
        );
    }
}
