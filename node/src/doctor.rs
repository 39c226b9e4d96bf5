//! `ccm doctor`: checks what the node needs and says how to fix what is wrong.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::agents::profile::Mode;
use crate::agents::versions;
use crate::client::Client;
use crate::config::Config;
use crate::home::Home;
use crate::store::StoreError;

/// One check's outcome: a finding, and a fix when it failed.
struct Check {
    name: String,
    result: Result<String, (String, String)>,
}

/// A finding that is not a failure but deserves attention (an agent CLI the tests do not
/// cover, or one that is not installed).
struct Warning {
    name: String,
    finding: String,
}

pub async fn run(home: &Home, project: Option<&Path>) -> anyhow::Result<()> {
    let mut checks = vec![
        tool(
            "tmux",
            &["-V"],
            "install tmux (Debian: apt-get install tmux; macOS: brew install tmux)",
        ),
        tool(
            "git",
            &["--version"],
            "install git (Debian: apt-get install git; macOS: xcode-select --install)",
        ),
    ];
    let config = Config::load(home.root(), project);
    let file = home.config_file();
    let project_file = project.map(|p| p.join(".ccm/config.yaml")).filter(|f| f.exists());
    let files: Vec<String> = [Some(file.clone()).filter(|f| f.exists()), project_file]
        .into_iter()
        .flatten()
        .map(|f| f.display().to_string())
        .collect();
    checks.push(Check {
        name: "config".into(),
        result: match &config {
            Ok(_) if files.is_empty() => Ok(format!(
                "no config file: the defaults are in use ({} would hold yours)",
                file.display()
            )),
            Ok(_) => Ok(format!("valid ({})", files.join(", "))),
            Err(e) => Err((
                e.to_string(),
                "correct the key named above; `ccm init` writes a commented template".into(),
            )),
        },
    });
    let config = config.unwrap_or_default();
    checks.push(Check {
        name: "home".into(),
        result: match home.insecure() {
            None if !home.root().exists() => Ok(format!(
                "{} does not exist yet; the first command that needs it creates it (private: mode 700)",
                home.root().display()
            )),
            None => Ok(format!("{} (private)", home.root().display())),
            Some(problem) => Err(problem),
        },
    });
    checks.push(database(home, &config).await);
    checks.push(auth(home));
    let (check, daemon) = port(home, &config).await;
    checks.push(check);
    let (programs, mut found, mut warnings) = agent_clis(&config);
    if let Some(daemon) = daemon {
        match daemon_config(&daemon).await {
            Some(Ok(finding)) => found.push(("daemon".into(), finding)),
            Some(Err(finding)) => warnings.push(Warning { name: "daemon".into(), finding }),
            None => {}
        }
    }
    checks.extend(programs);
    match crate::hooks::hook_program().as_slice() {
        [hook] => found.push(("hooks".into(), format!("installed hooks run {hook}"))),
        program => warnings.push(Warning {
            name: "hooks".into(),
            finding: format!(
                "no ccm-hook beside this ccm: installed hooks run `{}`, which starts slower \
                 (`cargo build --release -p ccm-node` or `cargo install --path node` builds both)",
                program.join(" ")
            ),
        }),
    }
    let mut failed = 0;
    for check in &checks {
        match &check.result {
            Ok(finding) => println!("ok    {:<9} {finding}", check.name),
            Err((problem, fix)) => {
                failed += 1;
                println!("FAIL  {:<9} {problem}\n      {:<9} fix: {fix}", check.name, "");
            }
        }
    }
    for (name, finding) in &found {
        println!("ok    {name:<9} {finding}");
    }
    for warning in &warnings {
        println!("warn  {:<9} {}", warning.name, warning.finding);
    }
    let total = checks.len() + found.len() + warnings.len();
    anyhow::ensure!(failed == 0, "{failed} of {total} checks failed");
    Ok(())
}

/// Whether the running daemon uses what the configuration files say: it reads them again when
/// they change, except for the keys it set up at start (`RESTART_ONLY`) and a file that does
/// not load (it keeps its last good configuration). `None` when the daemon does not say.
async fn daemon_config(daemon: &Client) -> Option<Result<String, String>> {
    let status: crate::config::ConfigStatus = daemon.get(&["config"]).await.ok()?;
    let pid = daemon.daemon.pid;
    let mut problems = Vec::new();
    if let Some(error) = status.invalid {
        problems.push(format!(
            "the running daemon (pid {pid}) keeps its last good configuration: the files do not load ({error})"
        ));
    }
    if !status.restart_needed.is_empty() {
        problems.push(format!(
            "the running daemon (pid {pid}) still uses the old {}: a restart is needed for them to take effect (`ccm stop`, then `ccm up`)",
            status.restart_needed.join(", ")
        ));
    }
    Some(if problems.is_empty() {
        Ok(format!(
            "the running daemon (pid {pid}) uses the configuration as the files say (it reads them again when they change)"
        ))
    } else {
        Err(problems.join("; "))
    })
}

/// Each configured profile's program: whether it is on PATH (a failure for the default
/// profile, which every task without `--profile` uses; a warning for the others), and the
/// version of the agent CLIs the tests cover.
fn agent_clis(config: &Config) -> (Vec<Check>, Vec<(String, String)>, Vec<Warning>) {
    let mut programs: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, profile) in &config.profiles {
        let Some(program) = profile.command.first().filter(|_| profile.mode != Mode::External)
        else {
            continue;
        };
        match programs.iter_mut().find(|(p, _)| p == program) {
            Some((_, profiles)) => profiles.push(name),
            None => programs.push((program, vec![name])),
        }
    }
    let default = config.tasks.profile.as_str();
    let (mut checks, mut found, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    for (program, profiles) in programs {
        let name = Path::new(program).file_name().map_or(program.into(), |n| n.to_string_lossy());
        let used_by = format!("profile {}", profiles.join(", "));
        let Some(path) = crate::agents::on_path(program) else {
            let finding = format!("`{program}` ({used_by}) is not on PATH");
            if profiles.contains(&default) {
                checks.push(Check {
                    name: name.into_owned(),
                    result: Err((
                        format!("{finding}; tasks use profile {default} unless they name another"),
                        format!(
                            "install {program}, or set tasks.profile (config.yaml or CCM_TASKS__PROFILE) to a profile whose program is installed"
                        ),
                    )),
                });
            } else {
                warnings.push(Warning { name: name.into_owned(), finding });
            }
            continue;
        };
        let Some(covered) = versions::covered(&name) else {
            found.push((name.into_owned(), format!("{} ({used_by})", path.display())));
            continue;
        };
        let output = Command::new(&path).arg("--version").output();
        let text = output.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let installed = text.as_deref().ok().and_then(versions::parse_version).map(str::to_string);
        let name = name.into_owned();
        match installed {
            Some(version) if version == covered => {
                found.push((name, format!("{version} (a version the tests cover) at {}", path.display())));
            }
            Some(version) => warnings.push(Warning {
                name,
                finding: format!(
                    "{version} is not a version the tests cover ({covered}); it may behave differently (at {})",
                    path.display()
                ),
            }),
            None => warnings.push(Warning {
                name,
                finding: format!(
                    "`{} --version` gave no version (the tests cover {covered})",
                    path.display()
                ),
            }),
        }
    }
    (checks, found, warnings)
}

fn tool(name: &'static str, args: &[&str], fix: &str) -> Check {
    let result = match Command::new(name).args(args).output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => Err((
            format!("`{name}` failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
            fix.to_string(),
        )),
        Err(e) => Err((format!("`{name}` not found: {e}"), fix.to_string())),
    };
    Check { name: name.into(), result }
}

async fn database(home: &Home, config: &Config) -> Check {
    let path = home.db_file();
    if !path.exists() {
        let finding = format!(
            "{} not created yet (the first command that needs it creates it)",
            path.display()
        );
        return Check { name: "database".into(), result: Ok(finding) };
    }
    let result = match crate::home::open_store(home, config).await {
        Ok(store) => {
            let check = store.integrity_check().await;
            store.close().await;
            match check {
                Ok(ok) if ok == "ok" => {
                    Ok(format!("{} (integrity ok, migrations applied)", path.display()))
                }
                Ok(problems) => Err((
                    format!("{} failed its integrity check: {problems}", path.display()),
                    "restore the newest `ccm backup` copy over it while the daemon is stopped"
                        .into(),
                )),
                Err(e) => Err((
                    e.to_string(),
                    "check the file's permissions and the free disk space".into(),
                )),
            }
        }
        Err(crate::home::HomeError::Store(StoreError::NotADatabase { path, detail })) => Err((
            format!("{} is not a database ({detail})", path.display()),
            format!(
                "stop the daemon and restore the newest `ccm backup` copy over it (cp BACKUP {}), or move it away to start with an empty database",
                path.display()
            ),
        )),
        Err(e) => Err((
            format!("{:#}", anyhow::Error::from(e)),
            format!("check that {} is writable and the disk has space", home.root().display()),
        )),
    };
    Check { name: "database".into(), result }
}

fn auth(home: &Home) -> Check {
    let path = home.auth_file();
    let result = match std::fs::metadata(&path) {
        Err(_) => Ok(format!("{} not created yet (the first `ccm up` creates it)", path.display())),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Err((
            format!(
                "{} is readable by other users (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
            format!("chmod 600 {}", path.display()),
        )),
        Ok(_) => match home.read_auth() {
            Ok(_) => Ok(format!("{} (mode 600)", path.display())),
            Err(e) => Err((
                format!("{e:#}"),
                format!("delete {} and restart the daemon to make a new token", path.display()),
            )),
        },
    };
    Check { name: "auth".into(), result }
}

/// The daemon's address, or whether the configured one is free; the daemon when it answers.
async fn port(home: &Home, config: &Config) -> (Check, Option<Client>) {
    let addr = format!("{}:{}", config.daemon.host, config.daemon.port);
    let result = match Client::connect(home).await {
        Ok(Some(client)) => {
            let finding =
                format!("daemon running at {} (pid {})", client.daemon.addr, client.daemon.pid);
            return (Check { name: "port".into(), result: Ok(finding) }, Some(client));
        }
        Err(silent) => Err((silent.to_string(), silent.fix())),
        Ok(None) => match std::net::TcpListener::bind(&addr) {
            Ok(_) => Ok(format!("{addr} is free; the daemon is not running (`ccm up` starts it)")),
            Err(e) => Err((
                format!("cannot listen on {addr}: {e}"),
                format!("stop the program using the port, or set daemon.port in {} (or CCM_DAEMON__PORT)", home.config_file().display()),
            )),
        },
    };
    (Check { name: "port".into(), result }, None)
}
