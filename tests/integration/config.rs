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

/// Open alerts of the daemon with `reason`.
async fn open_alerts(daemon: &ccm_tests::Daemon, reason: &str) -> Vec<serde_json::Value> {
    let (_, alerts) = daemon.get("/api/alerts").await;
    alerts.as_array().unwrap().iter().filter(|a| a["reason"] == reason).cloned().collect()
}

fn add_with_profile(home: &TestHome, profile: &str) -> std::process::Output {
    home.run(&["task", "add", "uses a new profile", "--no-repo", "--profile", profile])
}

const LATER: &str = "profiles:\n  later:\n    command: [later-agent]\n    mode: external\n";

#[test]
fn global_config_edit_applies_to_the_running_daemon_without_a_restart() {
    let home = TestHome::new("config-reload");
    let _daemon = home.start();
    let before = add_with_profile(&home, "later");
    assert!(!before.status.success(), "no such profile yet");
    home.write_config(LATER);
    let after = add_with_profile(&home, "later");
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stderr));
    let doctor = String::from_utf8_lossy(&home.run(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("uses the configuration as the files say"), "{doctor}");
}

#[tokio::test]
async fn broken_global_config_edit_keeps_the_last_good_one_and_raises_an_alert() {
    let home = TestHome::new("config-broken-edit");
    home.write_config(LATER);
    let daemon = home.start();
    let file = home.home().join("config.yaml");
    std::fs::write(&file, format!("{LATER}  other:\n    command: [x]\n    mode: sideways\n"))
        .unwrap();
    // The CLI refuses to work with the broken file (it names the key); the daemon goes on with
    // its last good configuration.
    let cli = String::from_utf8_lossy(&add_with_profile(&home, "later").stderr).into_owned();
    assert!(cli.contains("profiles.other.mode"), "{cli}");
    let add = |profile: &str| {
        daemon.post("/api/tasks", serde_json::json!({ "title": "edit", "profile": profile }))
    };
    assert_eq!(add("later").await.0, 201, "the last good configuration still knows `later`");
    let (status, refused) = add("other").await;
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("unknown profile `other`"), "{message}");
    assert!(message.contains("the configuration does not load"), "{message}");
    assert!(message.contains("profiles.other.mode"), "{message}");

    let raised = ccm_tests::wait_until(std::time::Duration::from_secs(10), || async {
        !open_alerts(&daemon, "config_invalid").await.is_empty()
    })
    .await;
    assert!(raised, "{}", daemon.log_text());
    let alert = &open_alerts(&daemon, "config_invalid").await[0];
    let text = alert["message"].as_str().unwrap();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("keeps using the last good configuration"), "{text}");
    let doctor = String::from_utf8_lossy(&home.run(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("keeps its last good configuration"), "{doctor}");

    std::fs::write(&file, format!("{LATER}  other:\n    command: [x]\n    mode: external\n"))
        .unwrap();
    assert!(add_with_profile(&home, "other").status.success());
    let resolved = ccm_tests::wait_until(std::time::Duration::from_secs(10), || async {
        open_alerts(&daemon, "config_invalid").await.is_empty()
    })
    .await;
    assert!(resolved, "the alert goes once the file loads again");
}

#[tokio::test]
async fn changed_setting_that_needs_a_restart_is_named_by_doctor_and_an_alert() {
    let home = TestHome::new("config-restart");
    let daemon = home.start();
    home.write_config("daemon:\n  max_connections: 100\nscheduler:\n  slots: 2\n");
    let doctor = String::from_utf8_lossy(&home.run(&["doctor"]).stdout).into_owned();
    assert!(
        doctor.contains("still uses the old daemon.max_connections: a restart is needed"),
        "{doctor}"
    );
    assert!(!doctor.contains("scheduler.slots"), "slots apply at once: {doctor}");
    let raised = ccm_tests::wait_until(std::time::Duration::from_secs(10), || async {
        !open_alerts(&daemon, "config_restart_needed").await.is_empty()
    })
    .await;
    assert!(raised, "{}", daemon.log_text());
    let again = home.run(&["up", "--detach"]);
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("already running") && message.contains("max_connections"),
        "{message}"
    );
}

#[test]
fn wrong_type_in_config_is_reported_as_a_wrong_type_naming_key_and_expected_type() {
    let home = TestHome::new("config-wrong-type");
    home.write_config("profiles: 5\n");
    let status = home.run(&["status"]);
    let message = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success());
    assert!(
        message.contains("key `profiles`: wrong type: `5` is a number, expected a map of keys"),
        "{message}"
    );
    assert!(!message.contains("out of range"), "{message}");
    home.write_config("worktree:\n  copy_files: 5\n");
    let message = String::from_utf8_lossy(&home.run(&["status"]).stderr).into_owned();
    assert!(message.contains("key `worktree.copy_files`: wrong type"), "{message}");
    assert!(message.contains("expected a list"), "{message}");
    // A fraction or a boolean where a whole number belongs is not quietly rounded.
    home.write_config("scheduler:\n  slots: 1.5\n");
    let message = String::from_utf8_lossy(&home.run(&["status"]).stderr).into_owned();
    assert!(
        message.contains("key `scheduler.slots`: wrong type: `1.5` is not a whole number"),
        "{message}"
    );
}

#[test]
fn a_daily_cost_cap_that_is_not_a_positive_amount_or_names_no_account_is_refused_naming_the_key() {
    let home = TestHome::new("config-cost-cap");
    let global = home.home().join("config.yaml");
    let refused = |yaml: &str| {
        home.write_config(yaml);
        let output = home.run(&["status"]);
        assert!(!output.status.success(), "`{yaml}` was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let message = refused("accounts:\n  claude:\n    daily_cost_cap_usd: -5\n");
    for text in [
        global.display().to_string().as_str(),
        "key `accounts`",
        "`claude.daily_cost_cap_usd` must be a positive amount of US dollars",
        "it is `-5`",
    ] {
        assert!(message.contains(text), "`{message}` should contain `{text}`");
    }
    let message = refused("accounts:\n  claude:\n    daily_cost_cap_usd: twenty\n");
    assert!(
        message.contains("key `accounts.claude.daily_cost_cap_usd`: wrong type: `twenty`"),
        "{message}"
    );
    let message = refused("accounts:\n  claude:\n    daily_cap_usd: 20\n");
    assert!(message.contains("key `accounts.claude.daily_cap_usd`"), "{message}");
    let message = refused("accounts:\n  teem:\n    daily_cost_cap_usd: 20\n");
    assert!(message.contains("`teem` is the account of no profile"), "{message}");
    // A profile's `account` names one; a whole number is an amount too.
    home.write_config(
        "profiles:\n  claude:\n    account: team\naccounts:\n  team:\n    daily_cost_cap_usd: 20\n",
    );
    let status = home.run(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    // A project's cap, in its `.ccm/config.yaml`, names its file and key.
    let home = TestHome::new("config-cost-cap-project");
    let project = home.work().join(".ccm");
    std::fs::create_dir_all(&project).unwrap();
    let file = project.join("config.yaml");
    std::fs::write(&file, "daily_cost_cap_usd: 0\n").unwrap();
    assert_up_refused(
        &home,
        |_| {},
        &[
            &file.display().to_string(),
            "key `daily_cost_cap_usd`",
            "must be a positive amount of US dollars",
            "it is `0`",
        ],
    );
}
