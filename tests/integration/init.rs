//! `ccm init`, contexts, `doctor`, and the daemon's own lifecycle.

use std::os::unix::fs::PermissionsExt;

use ccm_tests::{git_repo, TestHome};

#[test]
fn init_twice_in_a_repository_is_idempotent() {
    let home = TestHome::new("init");
    let repo = home.work().join("app");
    git_repo(&repo, Some("git@github.com:org/app.git"));
    let init = |home: &TestHome| {
        let output = home.ccm().arg("init").current_dir(&repo).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let first = init(&home);
    assert!(first.contains("created"), "{first}");
    std::fs::write(repo.join(".ccm/config.yaml"), "scheduler:\n  slots: 9\n").unwrap();
    let second = init(&home);
    assert!(second.contains("kept"), "{second}");

    assert_eq!(
        std::fs::read_to_string(repo.join(".ccm/config.yaml")).unwrap(),
        "scheduler:\n  slots: 9\n"
    );
    assert!(repo.join(".ccm/prompts").is_dir() && repo.join(".ccm/skills").is_dir());
    let contexts = home.run_json(&["context", "list"]);
    let contexts = contexts.as_array().unwrap();
    assert_eq!(contexts.len(), 1, "{contexts:?}");
    assert_eq!(contexts[0]["path"], std::fs::canonicalize(&repo).unwrap().to_str().unwrap());
    assert_eq!(contexts[0]["repo_url"], "https://github.com/org/app");
    assert_eq!(contexts[0]["default_branch"], "main");
}

#[test]
fn init_outside_a_git_repository_explains_what_it_needs() {
    let home = TestHome::new("init-no-git");
    let output = home.run(&["init"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ccm init needs a git repository"), "{stderr}");
    assert!(stderr.contains("git init"), "{stderr}");
    assert!(!home.work().join(".ccm").exists(), "nothing created outside a repository");
}

#[tokio::test]
async fn contexts_are_added_and_removed_through_the_daemon() {
    let home = TestHome::new("contexts");
    let repo = home.work().join("svc");
    git_repo(&repo, Some("https://gitlab.example.com/team/svc.git"));
    let _daemon = home.start();
    home.run_ok(&["context", "add", repo.to_str().unwrap()]);
    let contexts = home.run_json(&["context", "list"]);
    assert_eq!(contexts[0]["repo_url"], "https://gitlab.example.com/team/svc");

    let not_repo = home.run(&["context", "add", home.home().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&not_repo.stderr).contains("is not inside a git repository"));

    home.run_ok(&["context", "remove", repo.to_str().unwrap()]);
    assert_eq!(home.run_json(&["context", "list"]), serde_json::json!([]));
    let missing = home.run(&["context", "remove", "nowhere"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no context matches `nowhere`"));
}

#[test]
fn first_start_creates_token_file_readable_only_by_its_owner() {
    let home = TestHome::new("auth-file");
    let _daemon = home.start();
    let mode = std::fs::metadata(home.home().join("auth.json")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn sigterm_stops_the_daemon_gracefully_and_a_second_daemon_is_refused() {
    let home = TestHome::new("lifecycle");
    let mut daemon = home.start();
    let second = home.run(&["up"]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another ccm daemon is already running"), "{stderr}");

    let status = daemon.terminate();
    assert!(status.success(), "graceful exit: {status:?}\n{}", daemon.log_text());
    assert!(daemon.log_text().contains("SIGTERM: shutting down"));
    assert!(!home.home().join("daemon.json").exists(), "port file removed at shutdown");
    let status = home.run_json(&["status"]);
    assert_eq!(status["daemon"], serde_json::Value::Null);
}

#[test]
fn doctor_reports_each_check_and_how_to_fix_failures() {
    let home = TestHome::new("doctor");
    let healthy = home.run(&["doctor"]);
    let stdout = String::from_utf8_lossy(&healthy.stdout);
    assert!(healthy.status.success(), "{stdout}");
    for name in ["tmux", "git", "config", "database", "auth", "port"] {
        assert!(
            stdout.lines().any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} in {stdout}"
        );
    }
    let hook = ccm_tests::ccm_bin().with_file_name("ccm-hook");
    let hooks = format!("ok    hooks     installed hooks run {}", hook.display());
    assert!(stdout.lines().any(|l| l == hooks), "{hooks} in {stdout}");

    home.write_config("tasks:\n  max_attempts: -1\n");
    let broken = home.run(&["doctor"]);
    assert!(!broken.status.success());
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(
        stdout.contains("FAIL  config")
            && stdout.contains("tasks.max_attempts")
            && stdout.contains("fix:"),
        "{stdout}"
    );
}

/// The README starts with the run command and the test command, and CI runs exactly the latter.
#[test]
fn readme_starts_with_the_run_and_test_commands_ci_uses() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a first sh block");
    let commands: Vec<&str> = block.lines().map(|l| l.split('#').next().unwrap().trim()).collect();
    assert_eq!(commands[0], "cargo run --release -p ccm-node --bin ccm -- up");
    let test_command = commands[1];
    // CI's own entry point, which installs what the tests need, then runs them all.
    assert_eq!(test_command, ".ci/run", "CI runs the README's test command");
    let script = std::fs::read_to_string(root.join(test_command)).unwrap();
    assert!(script.lines().any(|l| l.starts_with("cargo test --workspace")), "{script}");

    // The run command's binary starts on an empty home with nothing set up.
    let home = TestHome::new("readme-up");
    let daemon = home.start();
    assert!(home.db_file().exists() && home.home().join("auth.json").exists());
    drop(daemon);
}
