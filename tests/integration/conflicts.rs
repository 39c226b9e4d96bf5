//! Conflict prediction between the active tasks of one repository (issue 23): real git, the
//! scripted agent (`tests/fixtures/fake-claude.sh`) editing and committing in its worktree,
//! the daemon's predictor, `ccm task show`, the API and the alerts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(60);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh")
}

/// A home with one scripted profile per `(name, extra env)` (each commits one line to a
/// file) and a git repository registered as a context.
fn setup(name: &str, profiles: &[(&str, &str)]) -> (TestHome, String) {
    let home = TestHome::new(name);
    let mut yaml = String::from(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\nprofiles:\n",
    );
    for (profile, env) in profiles {
        yaml.push_str(&format!(
            "  {profile}:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: commit, {env}}}\n",
            fixture().display()
        ));
    }
    home.write_config(&yaml);
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

fn add_task(home: &TestHome, repo: &str, title: &str, profile: &str) -> String {
    let args = ["task", "add", title, "--profile", profile, "--repo", repo];
    home.run_json(&args)["id"].as_str().unwrap().to_string()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

async fn wait_for<F, Fut>(daemon: &Daemon, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let reached = wait_until(SLOW, condition).await;
    assert!(reached, "never saw {what}\n{}", daemon.log_text());
}

async fn wait_state(daemon: &Daemon, id: &str, state: &str) {
    wait_for(daemon, &format!("{id} {state}"), || async {
        task(daemon, id).await["state"] == state
    })
    .await;
}

/// The open `conflict_predicted` alerts.
async fn conflict_alerts(daemon: &Daemon) -> Vec<Value> {
    let (_, alerts) = daemon.get("/api/alerts").await;
    alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "conflict_predicted")
        .cloned()
        .collect()
}

fn git(repo: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn two_tasks_editing_the_same_lines_are_predicted_to_conflict_before_either_lands() {
    let (home, repo) =
        setup("conflict-same-lines", &[("alpha", "FAKE_WORK: alpha"), ("beta", "FAKE_WORK: beta")]);
    let daemon = home.start();
    let alpha = add_task(&home, &repo, "write alpha", "alpha");
    let beta = add_task(&home, &repo, "write beta", "beta");
    wait_state(&daemon, &alpha, "complete").await;
    wait_state(&daemon, &beta, "complete").await;

    // Both finished: git merge-tree of the two branches conflicts in work.txt.
    wait_for(&daemon, "the predicted merge conflict", || async {
        let conflicts = &task(&daemon, &beta).await["conflicts"];
        conflicts.as_array().is_some_and(|c| c.iter().any(|c| c["kind"] == "merge"))
    })
    .await;
    let detail = task(&daemon, &beta).await;
    let conflict = &detail["conflicts"][0];
    assert_eq!(conflict["files"], serde_json::json!(["work.txt"]), "{detail:#}");
    let pair = [conflict["task"]["task_id"].as_str(), conflict["other"]["task_id"].as_str()];
    assert!(pair.contains(&Some(alpha.as_str())) && pair.contains(&Some(beta.as_str())));
    assert_eq!(detail["touched_files"], serde_json::json!(["work.txt"]));

    let shown = home.run_ok(&["task", "show", &beta[..8]]);
    assert!(shown.contains("conflicts (predicted):"), "{shown}");
    assert!(
        shown.contains(&format!("conflicts with {} (write alpha): work.txt", &alpha[..8])),
        "{shown}"
    );
    let (_, all) = daemon.get("/api/conflicts").await;
    assert_eq!(all[0]["conflicts"].as_array().unwrap().len(), 1, "{all:#}");

    // One alert for the pair, naming both tasks.
    let alerts = conflict_alerts(&daemon).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let message = alerts[0]["message"].as_str().unwrap();
    assert!(message.contains(&alpha[..8]) && message.contains(&beta[..8]), "{message}");
    assert!(message.contains("work.txt"), "{message}");

    // The dashboard's task page has a section for them.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    let signed = http.get(link).send().await.unwrap();
    let cookie =
        signed.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page =
        http.get(daemon.url(&format!("/tasks/{beta}"))).header("cookie", cookie).send().await;
    let page = page.unwrap().text().await.unwrap();
    assert!(page.contains("Predicted conflicts"), "{page}");
    assert!(
        page.contains(&format!("conflicts with {} (write alpha): work.txt", &alpha[..8])),
        "{page}"
    );

    // The branch's diff, as the terminal and the API show it.
    let diff = home.run_ok(&["task", "diff", &alpha[..8]]);
    assert!(diff.contains("+alpha"), "{diff}");
    let (status, diff) = daemon.get(&format!("/api/tasks/{alpha}/diff")).await;
    assert_eq!(status, 200, "{diff}");
    assert_eq!(diff["files"][0]["path"], "work.txt");
    assert_eq!(diff["files"][0]["hunks"][0]["lines"], serde_json::json!(["+alpha"]));

    // alpha lands (merged into main by hand): the pair no longer holds, its alert is resolved,
    // and beta now conflicts with the target.
    git(&repo, &["merge", "-q", "--no-edit", &format!("ccm/{}", &alpha[..8])]);
    wait_for(&daemon, "the pair's alert resolved", || async {
        let alerts = conflict_alerts(&daemon).await;
        alerts.len() == 1 && alerts[0]["message"].as_str().unwrap().contains("the target main")
    })
    .await;
    let detail = task(&daemon, &beta).await;
    assert_eq!(detail["conflicts"].as_array().unwrap().len(), 1, "{detail:#}");
    assert_eq!(detail["conflicts"][0]["target"], "main");
    assert_eq!(task(&daemon, &alpha).await["conflicts"], serde_json::json!([]));
}

#[tokio::test]
async fn a_running_task_touching_a_finished_tasks_files_raises_an_alert() {
    let (home, repo) = setup(
        "conflict-running",
        &[("alpha", "FAKE_WORK: alpha"), ("beta", "FAKE_WORK: beta, FAKE_LINGER: 120")],
    );
    let daemon = home.start();
    let alpha = add_task(&home, &repo, "write alpha", "alpha");
    wait_state(&daemon, &alpha, "complete").await;
    let beta = add_task(&home, &repo, "write beta", "beta");
    wait_for(&daemon, "an alert about the running task", || async {
        !conflict_alerts(&daemon).await.is_empty()
    })
    .await;
    let detail = task(&daemon, &beta).await;
    assert_eq!(detail["state"], "executing", "beta lingers after its commit: {detail:#}");
    let conflict = &detail["conflicts"][0];
    assert_eq!((&conflict["kind"], &conflict["running"]), (&"overlap".into(), &true.into()));
    let alerts = conflict_alerts(&daemon).await;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["task_id"], beta.as_str(), "the alert is about the running task");
    home.run_ok(&["task", "cancel", &beta[..8]]);
}

#[tokio::test]
async fn tasks_on_disjoint_files_are_not_predicted_to_conflict() {
    let (home, repo) =
        setup("conflict-disjoint", &[("alpha", "FAKE_FILE: a.txt"), ("beta", "FAKE_FILE: b.txt")]);
    let daemon = home.start();
    let alpha = add_task(&home, &repo, "write a", "alpha");
    let beta = add_task(&home, &repo, "write b", "beta");
    wait_state(&daemon, &alpha, "complete").await;
    wait_state(&daemon, &beta, "complete").await;
    // The predictor saw both branches (what each touched is recorded with the prediction).
    wait_for(&daemon, "both tasks' touched files", || async {
        task(&daemon, &alpha).await["touched_files"] == serde_json::json!(["a.txt"])
            && task(&daemon, &beta).await["touched_files"] == serde_json::json!(["b.txt"])
    })
    .await;
    assert_eq!(task(&daemon, &alpha).await["conflicts"], serde_json::json!([]));
    assert_eq!(task(&daemon, &beta).await["conflicts"], serde_json::json!([]));
    assert!(conflict_alerts(&daemon).await.is_empty());
    let shown = home.run_ok(&["task", "show", &beta[..8]]);
    assert!(!shown.contains("conflicts (predicted)"), "{shown}");
    assert!(shown.contains("touched: b.txt"), "{shown}");
}

/// Two systems hold the same repository (checkouts of one bare remote) and each runs a task
/// that writes work.txt: each system's summary carries the files its task touched, and each
/// predicts the conflict with the other system's task, read from the real central.
#[tokio::test]
async fn a_task_on_another_system_touching_the_same_file_is_part_of_the_prediction() {
    use ccm_tests::fleet::{wait_for as poll, Fleet};
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", true, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    let on_alpha =
        alpha.add(&["on alpha", "--repo", &alpha.home.work().join("app").to_string_lossy()]);
    let on_beta = beta.add(&["on beta", "--repo", &beta.home.work().join("app").to_string_lossy()]);

    for (node, id, other, name) in
        [(&alpha, &on_alpha, &on_beta, "beta"), (&beta, &on_beta, &on_alpha, "alpha")]
    {
        let conflict = poll(&format!("the conflict with {name}'s task"), SLOW, async || {
            let task = node.local(id).await?;
            let conflicts = task["conflicts"].as_array()?.clone();
            conflicts.into_iter().find(|c| {
                c["other"]["task_id"] == other.as_str() || c["task"]["task_id"] == other.as_str()
            })
        })
        .await;
        let theirs = if conflict["other"]["task_id"] == other.as_str() {
            &conflict["other"]
        } else {
            &conflict["task"]
        };
        assert_eq!(theirs["system"], name, "{conflict:#}");
        assert_eq!(conflict["kind"], "overlap", "{conflict:#}");
        assert_eq!(conflict["files"], serde_json::json!(["work.txt"]));
        let shown = node.home.run_ok(&["task", "show", &id[..8]]);
        assert!(shown.contains(&format!("{} (on {name}) on {name}", &other[..8])), "{shown}");
    }
    // The central holds what each task touched.
    let rows = fleet.central.pg.rows(&format!(
        "select array_to_string(touched_files, ',') as files from private.task_summaries where task_id = '{on_alpha}'"
    ));
    assert_eq!(rows[0]["files"], "work.txt", "{rows:?}");
}
