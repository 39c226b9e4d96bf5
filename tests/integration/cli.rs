//! The CLI as a new user meets it: where tasks run, what `task show`, `task logs`, `alerts`,
//! `decide` and `status` say, `up --detach` and `stop`, and output into a closed pipe.

use std::process::Stdio;
use std::time::Duration;

use ccm_tests::{wait_until, TestHome, HOLDER_PROFILE};
use serde_json::Value;

/// Stops a daemon started with `ccm up --detach` when the test ends, however it ends.
struct Detached<'a>(&'a TestHome);

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["stop"]);
    }
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits until the task's state is `state`; returns the task.
async fn task_in(home: &TestHome, id: &str, state: &str) -> Value {
    let reached = wait_until(Duration::from_secs(20), || async {
        home.run_json(&["task", "show", id])["state"] == state
    })
    .await;
    let task = home.run_json(&["task", "show", id]);
    assert!(reached, "task {id} never reached {state}: {task}");
    task
}

#[tokio::test]
async fn decide_accepts_the_id_of_a_task_with_one_pending_decision() {
    let home = TestHome::new("decide-task");
    let _daemon = home.start();
    let id = home.run_json(&["task", "add", "flaky", "--max-attempts", "1"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    task_in(&home, &id, "queued").await;
    home.run_ok(&["task", "event", &id, r#"{"event": "start"}"#]);
    home.run_ok(&["task", "event", &id, r#"{"event": "failed", "class": "crash"}"#]);
    task_in(&home, &id, "blocked").await;

    let answered = home.run_ok(&["decide", &id[..8], "cancel"]);
    assert!(answered.contains("answered `cancel`"), "{answered}");
    task_in(&home, &id, "cancelled").await;
    let again = home.run(&["decide", &id[..8], "cancel"]);
    assert!(stderr(&again).contains(&format!("no decision matches `{}`", &id[..8])), "{again:?}");
}

#[test]
fn task_list_into_a_closed_pipe_ends_without_a_panic() {
    let home = TestHome::new("pipe");
    for title in ["one", "two", "three"] {
        home.run_ok(&["task", "add", title]);
    }
    let mut child = home
        .ccm()
        .args(["task", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before ccm writes
    let output = child.wait_with_output().unwrap();
    let stderr = stderr(&output);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn status_says_sync_is_not_configured_instead_of_an_outbox_count() {
    let home = TestHome::new("status-sync");
    home.run_ok(&["task", "add", "fills the outbox"]);
    let status = home.run_ok(&["status"]);
    assert!(status.contains("sync    not configured"), "{status}");
    assert!(!status.contains("outbox"), "{status}");
}

#[tokio::test]
async fn agent_attach_says_the_agent_exited() {
    let home = TestHome::new("attach-exited");
    home.write_config("profiles:\n  quick:\n    command: [sh, -c, 'exit 0']\n");
    let _daemon = home.start();
    home.run_ok(&["task", "add", "quick", "--profile", "quick"]);
    let exited = wait_until(Duration::from_secs(20), || async {
        home.run_json(&["agent", "list"])[0]["status"] == "exited"
    })
    .await;
    assert!(exited, "{}", home.run_ok(&["agent", "list"]));
    let agent = home.run_json(&["agent", "list"])[0]["id"].as_str().unwrap().to_string();
    let attach = home.run(&["agent", "attach", &agent]);
    assert!(!attach.status.success());
    assert!(
        stderr(&attach).contains(&format!("agent {} is exited", &agent[..8])),
        "{}",
        stderr(&attach)
    );
}

#[tokio::test]
async fn agent_list_shows_every_live_agent_and_only_the_most_recently_started_others() {
    let home = TestHome::new("agent-list");
    let task =
        home.run_json(&["task", "add", "listed", "--no-repo"])["id"].as_str().unwrap().to_string();
    {
        // Two live agents started long ago, then 60 ended ones, each started a minute later.
        let mut conn = ccm_tests::open_db(&home.db_file()).await;
        for n in 0..62_i64 {
            let status = if n < 2 { "running" } else { "exited" };
            sqlx::query(
                "INSERT INTO agents (id, task_id, attempt, kind, profile, status, dir, cwd, \
                 started_at, last_heartbeat, ended_at) \
                 VALUES (?, ?, 1, 'worker', 'manual', ?, '/tmp', '/tmp', ?, ?, ?)",
            )
            .bind(format!("0190e6b0-0000-7000-8000-{n:012}"))
            .bind(&task)
            .bind(status)
            .bind(1_700_000_000_000 + n * 60_000)
            .bind(1_700_000_000_000 + n * 60_000)
            .bind((n >= 2).then_some(1_700_000_000_000 + n * 60_000 + 1000))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let numbers = |agents: &Value| -> Vec<i64> {
        agents
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap()[24..].parse().unwrap())
            .collect()
    };
    // The live ones first (the newest first), then the 50 most recently started of the others.
    let listed = numbers(&home.run_json(&["agent", "list"]));
    let expected: Vec<i64> = [1, 0].into_iter().chain((12..62).rev()).collect();
    assert_eq!(listed, expected);
    assert_eq!(numbers(&home.run_json(&["agent", "list", "--limit", "3"])), [1, 0, 61, 60, 59]);
    assert_eq!(numbers(&home.run_json(&["agent", "list", "--all"])).len(), 62);
    let table = home.run_ok(&["agent", "list"]);
    assert!(table.contains("older agents are not listed"), "{table}");
    let table = home.run_ok(&["agent", "list", "--limit", "60"]);
    assert!(!table.contains("older agents are not listed"), "{table}");
    let refused = home.run(&["agent", "list", "--limit", "3", "--all"]);
    assert!(!refused.status.success(), "--limit with --all was accepted");
}

#[tokio::test]
async fn up_detach_returns_once_the_daemon_answers_and_stop_waits_for_it_to_exit() {
    let home = TestHome::new("detach");
    home.write_config(HOLDER_PROFILE);
    let started = home.run_ok(&["up", "--detach"]);
    let _guard = Detached(&home);
    assert!(started.contains("daemon started"), "{started}");
    assert!(home.home().join("logs/daemon.log").exists());
    let status = home.run_json(&["status"]);
    let pid = status["daemon"]["pid"].as_u64().expect("the daemon answers at once");
    let again = home.run(&["up", "-d"]);
    assert!(stderr(&again).contains("already running"), "{}", stderr(&again));

    let id = home.run_json(&["task", "add", "holds", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    task_in(&home, &id, "executing").await;
    let stopped = home.run_ok(&["stop"]);
    assert!(stopped.contains("daemon stopped"), "{stopped}");
    // Gone, or a zombie its new parent has not reaped yet.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "the daemon has exited: {stat}");
    assert!(home.run_ok(&["status"]).contains("daemon  not running"));
    assert_eq!(home.agent_windows().len(), 1, "the agent keeps running");
    assert!(home.run_ok(&["stop"]).contains("no daemon is running"));
}

/// A profile whose agent writes `out.txt` and commits it, as a worker would.
const WRITER_PROFILE: &str = "profiles:\n  writer:\n    command: [sh, -c, 'echo done > out.txt && git add out.txt && git commit -qm \"write out.txt ($CCM_TASK_ID)\"']\n    output: plain\n";

/// A repository with a committed `check.sh` (passes once `out.txt` says `done`), set up with
/// `ccm init`.
fn initialized_repo(home: &TestHome) -> std::path::PathBuf {
    let repo = home.work().join("app");
    ccm_tests::git_repo(&repo, Some("git@github.com:org/app.git"));
    std::fs::write(repo.join("check.sh"), "test \"$(cat out.txt)\" = done\n").unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(&repo).args(args).output();
        assert!(out.unwrap().status.success(), "git {args:?}");
    };
    git(&["add", "check.sh"]);
    git(&["commit", "-qm", "check"]);
    let init = home.ccm().arg("init").current_dir(&repo).output().unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    std::fs::canonicalize(repo).unwrap()
}

fn add_in(home: &TestHome, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    home.ccm().args(["task", "add"]).args(args).current_dir(dir).output().unwrap()
}

#[tokio::test]
async fn a_task_added_inside_a_registered_checkout_works_in_its_repository() {
    let home = TestHome::new("task-here");
    home.write_config(WRITER_PROFILE);
    let repo = initialized_repo(&home);
    let _daemon = home.start();
    let added = add_in(
        &home,
        &repo.join(".ccm"),
        &["write out", "--profile", "writer", "--verify", "sh check.sh"],
    );
    let line = String::from_utf8_lossy(&added.stdout).into_owned();
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(
        line.contains("repository https://github.com/org/app: the checkout around you"),
        "{line}"
    );
    assert!(line.contains(repo.to_str().unwrap()), "{line}");
    let id = line.split_whitespace().nth(2).unwrap().to_string();
    task_in(&home, &id, "complete").await;

    // What `task show` says of a finished task: the attempt, the report, where the work is.
    let show = home.run_ok(&["task", "show", &id]);
    for expected in [
        "repo      https://github.com/org/app",
        "attempts:\n  1  success",
        "report (attempt 1):",
        "1 file changed, 1 insertion(+)",
        "write out.txt",
        &format!("branch    ccm/{id}"),
        "hook events: ",
        &format!("ccm task logs {id}"),
    ] {
        assert!(show.contains(expected), "`{expected}` missing from:\n{show}");
    }

    let dot = add_in(&home, &repo, &["here too", "--repo", ".", "--profile", "writer"]);
    let dot_line = String::from_utf8_lossy(&dot.stdout).into_owned();
    assert!(dot_line.contains(&format!("(checkout {})", repo.display())), "{dot_line}");
    let scratch = add_in(&home, &repo, &["scratch", "--no-repo", "--json"]);
    let scratch: Value = serde_json::from_slice(&scratch.stdout).unwrap();
    assert_eq!(scratch["repo"], Value::Null);
}

#[test]
fn a_repository_that_is_no_registered_checkout_is_refused_at_creation_naming_it() {
    let home = TestHome::new("repo-dot");
    let outside = add_in(&home, &home.work(), &["nowhere", "--repo", "."]);
    assert!(!outside.status.success());
    let message = stderr(&outside);
    assert!(message.contains("--repo `.`"), "{message}");
    assert!(message.contains("is not in a registered checkout"), "{message}");
    let plain = add_in(&home, &home.work(), &["nowhere"]);
    assert!(String::from_utf8_lossy(&plain.stdout)
        .contains("no repository: the agent works in a scratch directory"));
    assert_eq!(
        home.run_json(&["task", "list"]).as_array().unwrap().len(),
        1,
        "only the second task exists"
    );
}

#[tokio::test]
async fn every_alert_carries_its_cause_and_alerts_are_listed_acknowledged_and_resolved() {
    let home = TestHome::new("alerts");
    home.write_config(WRITER_PROFILE);
    let _daemon = home.start();
    let url = "https://example.com/org/elsewhere";
    let added = home.run_ok(&["task", "add", "elsewhere", "--repo", url, "--profile", "writer"]);
    assert!(added.contains("no checkout of it is registered on this system"), "{added}");
    let id = added.split_whitespace().nth(2).unwrap().to_string();
    task_in(&home, &id, "failed").await;

    let alerts = home.run_json(&["alerts"]);
    let message = alerts[0]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains(&format!("no checkout of {url} is registered")), "{alerts}");
    let listed = home.run_ok(&["alerts"]);
    assert!(listed.contains("fatal_error"), "{listed}");

    // Retrying the task settles its alert; the next failure raises a new one, acknowledged here.
    home.run_ok(&["task", "retry", &id]);
    task_in(&home, &id, "failed").await;
    let open = home.run_json(&["alerts"]);
    assert_eq!(open.as_array().unwrap().len(), 1, "the retry resolved the first alert: {open}");
    let alert = open[0]["id"].as_str().unwrap().to_string();
    let acked = home.run_ok(&["alerts", "ack", &alert[..8]]);
    assert!(acked.contains("acknowledged"), "{acked}");
    assert!(home.run_ok(&["alerts"]).contains("no open alerts"));
    let all = home.run_json(&["alerts", "--all"]);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert!(all.as_array().unwrap().iter().all(|a| !a["resolved_at"].is_null()), "{all}");
}

#[test]
fn doctor_checks_the_agent_programs_and_creates_nothing() {
    let home = TestHome::new("doctor-programs");
    let doctor = home
        .ccm()
        .arg("doctor")
        .env("CCM_TASKS__PROFILE", "claude")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert!(!doctor.status.success(), "{stdout}");
    assert!(stdout.contains("FAIL  claude"), "{stdout}");
    assert!(stdout.contains("`claude` (profile claude) is not on PATH"), "{stdout}");
    assert!(stdout.contains("set tasks.profile"), "{stdout}");
    assert!(stdout.contains("no config file: the defaults are in use"), "{stdout}");
    assert!(!stdout.contains("config    valid"), "{stdout}");
    assert!(stdout.contains("not created yet"), "{stdout}");
    assert!(!home.db_file().exists(), "doctor created {}", home.db_file().display());
}

#[tokio::test]
async fn a_worker_whose_program_is_missing_fails_at_once_naming_it() {
    let home = TestHome::new("missing-program");
    home.write_config("profiles:\n  missing:\n    command: [ccm-no-such-agent, '{prompt}']\n");
    let _daemon = home.start();
    let id = home.run_json(&["task", "add", "never starts", "--profile", "missing"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let task = task_in(&home, &id, "failed").await;
    assert_eq!(task["attempts"], 1, "not retried: {task}");
    let show = home.run_ok(&["task", "show", &id]);
    assert!(show.contains("its program was not found: `ccm-no-such-agent`"), "{show}");
    let alerts = home.run_json(&["alerts"]);
    assert!(alerts[0]["message"].as_str().unwrap().contains("ccm-no-such-agent"), "{alerts}");
}

#[test]
fn init_says_what_it_created_and_its_hooks_run_ccm_from_path_for_a_cargo_build() {
    let home = TestHome::new("init-says");
    let repo = home.work().join("app");
    ccm_tests::git_repo(&repo, None);
    // A `ccm` on PATH, as `cargo install` leaves it; the binary under test is a cargo build.
    let bin = home.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(ccm_tests::ccm_bin(), bin.join("ccm")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let init = home.ccm().arg("init").env("PATH", &path).current_dir(&repo).output().unwrap();
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(stdout.contains("created .ccm/config.yaml"), "{stdout}");
    assert!(stdout.contains("commit: .ccm/"), "{stdout}");
    assert!(stdout.contains("ignore: .claude/settings.local.json"), "{stdout}");
    let settings = std::fs::read_to_string(repo.join(".claude/settings.local.json")).unwrap();
    assert!(settings.contains("\"ccm hook --agent claude\""), "{settings}");

    // Without a `ccm` on PATH the hooks name the build, and init says how to repoint them.
    let other = home.work().join("other");
    ccm_tests::git_repo(&other, None);
    let init =
        home.ccm().arg("init").env("PATH", "/usr/bin:/bin").current_dir(&other).output().unwrap();
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(stdout.contains("run `ccm hooks install` again"), "{stdout}");
    let settings = std::fs::read_to_string(other.join(".claude/settings.local.json")).unwrap();
    assert!(settings.contains(&ccm_tests::ccm_bin().display().to_string()), "{settings}");
}

#[tokio::test]
async fn task_logs_renders_stream_json_readably_and_raw_keeps_the_json() {
    let home = TestHome::new("logs-render");
    let fake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh");
    home.write_config(&format!(
        "profiles:\n  fake:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n",
        fake.display()
    ));
    let repo = home.work().join("app");
    ccm_tests::git_repo(&repo, None);
    home.run_ok(&["context", "add", repo.to_str().unwrap()]);
    let _daemon = home.start();
    let added = add_in(&home, &repo, &["work", "--profile", "fake"]);
    let id = String::from_utf8_lossy(&added.stdout).split_whitespace().nth(2).unwrap().to_string();
    task_in(&home, &id, "complete").await;

    let logs = home.run_ok(&["task", "logs", &id]);
    for expected in [
        "session 0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0 (claude-test)",
        "assistant: Working on it",
        "→ Bash git commit",
        "cost $0.0123",
        "Done: wrote work.txt",
    ] {
        assert!(logs.contains(expected), "`{expected}` missing from:\n{logs}");
    }
    assert!(!logs.contains("{\"type\""), "{logs}");
    let raw = home.run_ok(&["task", "logs", &id, "--raw"]);
    assert!(raw.lines().any(|l| l.starts_with("{\"type\":\"assistant\"")), "{raw}");
    let followed = home.run_ok(&["task", "logs", &id, "--follow"]);
    assert_eq!(followed, logs, "--follow on an ended agent prints the same and returns");
}

#[test]
fn task_add_warns_when_the_profiles_program_is_missing() {
    let home = TestHome::new("add-missing-program");
    home.write_config(
        "profiles:\n  missing:\n    command: [ccm-no-such-agent, '{prompt}']\n  present:\n    command: [sh, -c, 'true']\n",
    );
    let added = home.run(&["task", "add", "later", "--no-repo", "--profile", "missing"]);
    assert!(added.status.success(), "the task is created: {}", stderr(&added));
    let warning = stderr(&added);
    assert!(warning.contains("warning: `ccm-no-such-agent`"), "{warning}");
    assert!(warning.contains("profile missing) is not on PATH"), "{warning}");
    let fine = home.run(&["task", "add", "fine", "--no-repo", "--profile", "present"]);
    assert!(fine.status.success() && stderr(&fine).is_empty(), "{}", stderr(&fine));
}

#[test]
fn hook_help_is_written_for_users_with_ccm_hook_usage() {
    let home = TestHome::new("hook-help");
    let help = home.run(&["hook", "--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: ccm hook [OPTIONS] [PAYLOAD]..."), "{text}");
    assert!(text.starts_with("Hook entry point for the agent CLIs"), "{text}");
    assert!(text.contains("always exits 0"), "{text}");
    assert!(!text.contains("main.rs") && !text.contains("command tree"), "{text}");
}

#[test]
fn stop_says_what_it_waits_for_and_force_kills_a_frozen_daemon() {
    let home = TestHome::new("stop-frozen");
    let daemon = home.start();
    let pid = daemon.child.id().to_string();
    let signal = |name: &str| {
        assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success())
    };
    signal("-STOP");
    let waited = home.run(&["stop", "--timeout", "2"]);
    assert!(!waited.status.success(), "a frozen daemon does not stop");
    let message = stderr(&waited);
    assert!(message.contains(&format!("waiting for the daemon (pid {pid}) to exit")), "{message}");
    assert!(message.contains("it is suspended"), "{message}");
    assert!(message.contains("did not exit within 2s"), "{message}");
    assert!(message.contains("`ccm stop --force` kills it"), "{message}");

    let forced = home.run(&["stop", "--timeout", "1", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let said = String::from_utf8_lossy(&forced.stdout);
    assert!(said.contains(&format!("daemon killed (pid {pid})")), "{said}");
    assert!(home.run_ok(&["stop"]).contains("no daemon is running"));
    drop(daemon);
}

#[test]
fn doctor_says_a_missing_home_will_be_created_and_counts_every_line() {
    let home = TestHome::new("doctor-count");
    let fresh = home.run(&["doctor"]);
    let stdout = String::from_utf8_lossy(&fresh.stdout);
    assert!(
        stdout.contains("does not exist yet; the first command that needs it creates it"),
        "{stdout}"
    );
    assert!(!stdout.contains("(private)"), "{stdout}");
    assert!(!home.home().exists(), "doctor creates nothing");

    home.write_config("tasks:\n  max_attempts: -1\n");
    let broken = home.run(&["doctor"]);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    let shown = stdout
        .lines()
        .filter(|l| ["ok ", "FAIL ", "warn "].iter().any(|p| l.starts_with(p)))
        .count();
    let message = stderr(&broken);
    assert!(message.contains(&format!("1 of {shown} checks failed")), "{message}\n{stdout}");
}
