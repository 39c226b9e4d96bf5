//! What the user is told when something is wrong: each message names what was wrong and how to
//! fix it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ccm_tests::{Api, Daemon, TestHome};
use serde_json::{json, Value};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_empty_or_foreign_database_file_is_refused_and_doctor_names_the_backup() {
    let home = TestHome::new("not-a-db");
    std::fs::create_dir_all(home.home()).unwrap();
    for contents in ["", "these are not the pages of a database\n"] {
        std::fs::write(home.db_file(), contents).unwrap();
        let out = home.run(&["task", "list"]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains("is not a database"), "{}", stderr(&out));
        assert_eq!(std::fs::read_to_string(home.db_file()).unwrap(), contents, "left as it was");

        let doctor = String::from_utf8_lossy(&home.run(&["doctor"]).stdout).into_owned();
        let line = doctor.lines().position(|l| l.contains("database")).unwrap();
        let lines: Vec<&str> = doctor.lines().collect();
        assert!(lines[line].contains("is not a database"), "{doctor}");
        assert!(lines[line + 1].contains("`ccm backup`"), "{doctor}");
    }
}

#[tokio::test]
async fn a_stopped_daemon_is_said_not_to_answer() {
    let home = TestHome::new("stopped");
    let daemon = home.start();
    let pid = daemon.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let status = home.run(&["status"]);
    let doctor = home.run(&["doctor"]);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());

    assert!(!status.status.success());
    assert!(stderr(&status).contains("does not answer"), "{}", stderr(&status));
    assert!(stderr(&status).contains(&format!("kill -CONT {pid}")), "{}", stderr(&status));
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    let port = doctor.lines().find(|l| l.contains("port")).unwrap();
    assert!(port.contains("FAIL") && port.contains("does not answer"), "{doctor}");
    // Running again, it answers.
    assert!(home.run_ok(&["status"]).contains(&format!("pid {pid}")));
}

#[tokio::test]
async fn empty_ids_unknown_decisions_and_files_as_contexts_are_named() {
    let home = TestHome::new("named");
    let daemon = home.start();
    let out = home.run(&["task", "show", ""]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the id is empty"), "{}", stderr(&out));

    let (status, body) = daemon.post("/api/decisions/0123abcd", json!({ "answer": "retry" })).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("0123abcd"), "{body}");

    let out = home.run(&["context", "add", "/etc/passwd"]);
    assert!(stderr(&out).contains("/etc/passwd is not a directory"), "{}", stderr(&out));
}

/// Starts `ccm up` with a file size limit of `blocks` (as `ulimit -f` counts them) and SIGXFSZ
/// ignored: a write that crosses the limit is cut short, as on a full disk.
fn start_with_file_size_limit(home: &TestHome, blocks: u32) -> Daemon {
    let ccm = home.ccm();
    let mut up = Command::new("sh");
    up.arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" up"))
        .arg(ccm.get_program())
        .current_dir(home.work())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(home.dir.path().join("daemon.log")).unwrap());
    for (name, value) in ccm.get_envs() {
        match value {
            Some(value) => up.env(name, value),
            None => up.env_remove(name),
        };
    }
    let child = up.spawn().expect("sh starts");
    let pid = u64::from(child.id());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut daemon = Daemon {
        child,
        log: home.dir.path().join("daemon.log"),
        api: Api { addr: String::new(), token: String::new(), http },
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info: Option<Value> = std::fs::read_to_string(home.home().join("daemon.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(info) = info.filter(|i| i["pid"].as_u64() == Some(pid)) {
            daemon.api.addr = info["addr"].as_str().unwrap().to_string();
            let auth = std::fs::read_to_string(home.home().join("auth.json")).unwrap();
            let auth: Value = serde_json::from_str(&auth).unwrap();
            daemon.api.token = auth["token"].as_str().unwrap().to_string();
            return daemon;
        }
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_full_disk_reaches_the_client_as_disk_full_with_the_path() {
    let home = TestHome::new("disk-full");
    home.run_ok(&["task", "add", "before"]);
    let daemon = start_with_file_size_limit(&home, 96);
    let mut answer = None;
    for n in 0..300 {
        let (status, body) =
            daemon.post("/api/tasks", json!({ "title": format!("task {n}") })).await;
        if status != 201 {
            answer = Some((status, body));
            break;
        }
    }
    let (status, body) = answer.expect("the writes reached the limit");
    assert_eq!(status, 507, "{body}\n{}", daemon.log_text());
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("disk full"), "{message}");
    assert!(message.contains(&home.db_file().display().to_string()), "{message}");

    let out = home.run(&["task", "add", "no room either"]);
    assert!(stderr(&out).contains("disk full"), "{}", stderr(&out));
}

#[test]
fn config_value_errors_name_the_file_or_variable_and_the_value_as_written() {
    let home = TestHome::new("config-values");
    home.write_config("scheduler:\n  slots: 0\n");
    let out = home.run(&["task", "list"]);
    let file = home.home().join("config.yaml").display().to_string();
    assert!(stderr(&out).contains(&file), "{}", stderr(&out));
    assert!(stderr(&out).contains("scheduler.slots"), "{}", stderr(&out));
    assert!(stderr(&out).contains("`0`"), "{}", stderr(&out));

    home.write_config("scheduler:\n  slots: 99999999999999999999\n");
    let out = home.run(&["task", "list"]);
    assert!(stderr(&out).contains("`99999999999999999999` is out of range"), "{}", stderr(&out));

    home.write_config("");
    let out = home
        .ccm()
        .args(["task", "list"])
        .env("CCM_SCHEDULER__SLOTS", "99999999999999999999")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("CCM_SCHEDULER__SLOTS"), "{}", stderr(&out));
    assert!(stderr(&out).contains("`99999999999999999999` is out of range"), "{}", stderr(&out));
}
