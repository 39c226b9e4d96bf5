//! Configuration errors stop the daemon before it does anything, naming the file and key.

use ccm_tests::{TestHome, HOLDER_PROFILE};

/// Runs `ccm up` with `configure` and asserts it fails at start with every `expected` text in
/// its error, leaving no port file and no database behind.
fn assert_up_refused(
    home: &TestHome,
    configure: impl FnOnce(&mut std::process::Command),
    expected: &[&str],
) {
    let mut command = home.ccm();
    command.arg("up");
    configure(&mut command);
    let output = command.output().expect("ccm runs");
    assert!(!output.status.success(), "ccm up should refuse to start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for text in expected {
        assert!(stderr.contains(text), "`{stderr}` should contain `{text}`");
    }
    assert!(
        !home.home().join("daemon.json").exists(),
        "no port file for a daemon that did not start"
    );
    assert!(!home.db_file().exists(), "nothing stored by a daemon that did not start");
}

#[test]
fn wrong_type_in_global_config_stops_the_daemon_naming_file_and_key() {
    let home = TestHome::new("config-type");
    std::fs::create_dir_all(home.home()).unwrap();
    let file = home.home().join("config.yaml");
    std::fs::write(&file, "scheduler:\n  slots: many\n").unwrap();
    assert_up_refused(
        &home,
        |_| {},
        &[&file.display().to_string(), "key `scheduler.slots`", "many"],
    );
}

#[test]
fn unknown_key_in_project_config_stops_the_daemon_naming_file_and_key() {
    let home = TestHome::new("config-unknown");
    let project = home.work().join(".ccm");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("config.yaml"), "daemon:\n  port: 0\n  bind_all: true\n").unwrap();
    let file = project.join("config.yaml");
    assert_up_refused(&home, |_| {}, &[&file.display().to_string(), "key `daemon.bind_all`"]);
}

#[test]
fn bad_environment_variable_stops_the_daemon_naming_it() {
    let home = TestHome::new("config-env");
    assert_up_refused(
        &home,
        |c| {
            c.env("CCM_SCHEDULER__TICK_MS", "soon");
        },
        &["CCM_SCHEDULER__TICK_MS", "scheduler.tick_ms"],
    );
    assert_up_refused(
        &home,
        |c| {
            c.env("CCM_DAEMON__HOST", "0.0.0.0");
        },
        &["daemon.host", "loopback"],
    );
}

#[test]
fn malformed_yaml_is_reported_with_its_file() {
    let home = TestHome::new("config-yaml");
    std::fs::create_dir_all(home.home()).unwrap();
    let file = home.home().join("config.yaml");
    std::fs::write(&file, "scheduler: [unclosed\n").unwrap();
    assert_up_refused(&home, |_| {}, &[&file.display().to_string()]);
}

#[tokio::test]
async fn valid_layers_combine_with_environment_winning() {
    let home = TestHome::new("config-layers");
    std::fs::create_dir_all(home.home()).unwrap();
    std::fs::write(
        home.home().join("config.yaml"),
        format!("node:\n  name: from-global\nscheduler:\n  slots: 1\n{HOLDER_PROFILE}"),
    )
    .unwrap();
    std::fs::create_dir_all(home.work().join(".ccm")).unwrap();
    std::fs::write(home.work().join(".ccm/config.yaml"), "node:\n  name: from-project\n").unwrap();
    let daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", "3");
    });
    let (_, status) = daemon.get("/api/status").await;
    assert_eq!(status["system"]["name"], "from-project");
    // Agents that hold their task keep their slots: exactly three tasks leave `created`.
    for i in 0..5 {
        let task = serde_json::json!({ "title": format!("t{i}"), "profile": "holder" });
        daemon.post("/api/tasks", task).await;
    }
    let created =
        || async { daemon.get("/api/tasks?state=created").await.1.as_array().unwrap().len() };
    let admitted = ccm_tests::wait_until(std::time::Duration::from_secs(10), || async {
        created().await == 2
    })
    .await;
    assert!(admitted, "CCM_SCHEDULER__SLOTS=3 overrides the file's 1");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(created().await, 2, "no more than three slots");
}
