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
