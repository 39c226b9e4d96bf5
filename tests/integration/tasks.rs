//! Task lifecycle through the CLI and the API: dependencies, cycles, the log, illegal moves,
//! agent slots.

use std::time::Duration;

use ccm_tests::{wait_until, Daemon, TestHome, HOLDER_PROFILE};
use serde_json::{json, Value};

async fn task_state(daemon: &Daemon, id: &str) -> String {
    let (status, task) = daemon.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(status, 200, "{task}");
    task["state"].as_str().expect("state").to_string()
}

async fn create(daemon: &Daemon, body: Value) -> String {
    let (status, task) = daemon.post("/api/tasks", body).await;
    assert_eq!(status, 201, "{task}");
    task["id"].as_str().expect("id").to_string()
}

/// Drives a queued task to `complete` the way the agent runtime will: start, worker finished,
/// verification passed, report without a supervisor.
async fn complete(daemon: &Daemon, id: &str) {
    for event in ["start", "worker_finished", "verify_passed"] {
        let (status, body) =
            daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": event })).await;
        assert_eq!(status, 200, "{event}: {body}");
    }
    let (status, body) = daemon
        .post(
            &format!("/api/tasks/{id}/events"),
            json!({ "event": "report_ready", "supervised": false }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "complete");
}

#[tokio::test]
async fn dependents_stay_created_until_their_dependencies_complete() {
    let home = TestHome::new("deps");
    let daemon = home.start();
    let first =
        home.run_json(&["task", "add", "build the parser"])["id"].as_str().unwrap().to_string();
    let second = home.run_json(&["task", "add", "write the tests", "--after", &first[..8]])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let third = create(&daemon, json!({ "title": "ship it", "depends_on": [first, second] })).await;

    assert!(
        wait_until(Duration::from_secs(5), || async {
            task_state(&daemon, &first).await == "queued"
        })
        .await
    );
    // The scheduler has run at least once since; the dependents must still wait.
    assert_eq!(task_state(&daemon, &second).await, "created");
    assert_eq!(task_state(&daemon, &third).await, "created");

    complete(&daemon, &first).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            task_state(&daemon, &second).await == "queued"
        })
        .await
    );
    assert_eq!(task_state(&daemon, &third).await, "created", "third still waits for second");

    complete(&daemon, &second).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            task_state(&daemon, &third).await == "queued"
        })
        .await
    );
}

/// A waiting task whose dependency is cancelled is blocked with an alert, whether it waited
/// before the cancel or was created after it; a task waiting on a complete one is not.
#[tokio::test]
async fn a_waiting_task_is_blocked_when_its_dependency_is_cancelled() {
    let home = TestHome::new("deps-cancelled");
    let daemon = home.start();
    let first = create(&daemon, json!({ "title": "build the parser" })).await;
    let done = create(&daemon, json!({ "title": "write the grammar" })).await;
    let before =
        create(&daemon, json!({ "title": "write the tests", "depends_on": [first] })).await;
    let waits = create(&daemon, json!({ "title": "ship it", "depends_on": [done, first] })).await;
    let kept = create(&daemon, json!({ "title": "document it", "depends_on": [done] })).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            task_state(&daemon, &done).await == "queued"
        })
        .await
    );
    complete(&daemon, &done).await;
    let (status, body) = daemon
        .post(
            &format!("/api/tasks/{first}/events"),
            json!({ "event": "cancel", "reason": "not needed" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let after = create(&daemon, json!({ "title": "benchmark it", "depends_on": [first] })).await;
    for id in [&before, &waits, &after] {
        assert!(
            wait_until(Duration::from_secs(5), || async {
                task_state(&daemon, id).await == "blocked"
            })
            .await,
            "{id} blocked: {}",
            task_state(&daemon, id).await
        );
    }
    let shown = home.run_ok(&["task", "show", &before[..8]]);
    assert!(shown.contains(&format!("dependency {} is cancelled", &first[..8])), "{shown}");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            task_state(&daemon, &kept).await == "queued"
        })
        .await,
        "the task waiting on a complete one goes ahead"
    );
}

#[tokio::test]
async fn dependency_cycle_is_refused_naming_the_cycle() {
    let home = TestHome::new("cycle");
    let _daemon = home.start();
    let a = home.run_json(&["task", "add", "alpha"])["id"].as_str().unwrap().to_string();
    let b =
        home.run_json(&["task", "add", "beta", "--after", &a])["id"].as_str().unwrap().to_string();
    let c =
        home.run_json(&["task", "add", "gamma", "--after", &b])["id"].as_str().unwrap().to_string();
    // alpha is queued by now or soon; make a fresh waiting root to close a cycle on.
    let d =
        home.run_json(&["task", "add", "delta", "--after", &c])["id"].as_str().unwrap().to_string();
    let e = home.run_json(&["task", "add", "epsilon", "--after", &d])["id"]
        .as_str()
        .unwrap()
        .to_string();

    let output = home.run(&["task", "depend", &d, "--on", &e]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("dependency cycle refused"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} (delta) → {} (epsilon) → {} (delta)",
            &d[..8],
            &e[..8],
            &d[..8]
        )),
        "{stderr}"
    );

    let output = home.run(&["task", "depend", &e, "--on", &e]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "dependency cycle refused: {} (epsilon) → {} (epsilon)",
            &e[..8],
            &e[..8]
        )),
        "{stderr}"
    );

    // Nothing was stored by the refused requests.
    let delta = home.run_json(&["task", "show", &d]);
    assert_eq!(delta["depends_on"], json!([c]));
}

#[tokio::test]
async fn task_list_json_and_api_agree() {
    let home = TestHome::new("list-agree");
    let daemon = home.start();
    let a = home.run_json(&["task", "add", "one", "--priority", "5", "--verify", "cargo test"])
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    home.run_ok(&[
        "task",
        "add",
        "two",
        "--after",
        &a,
        "--repo",
        "git@github.com:org/app.git",
        "--max-attempts",
        "5",
    ]);
    create(&daemon, json!({ "title": "three", "workflow": "code-review" })).await;
    // Let the scheduler settle ("one" and "three" queued) so both reads see the same state.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            let (_, tasks) = daemon.get("/api/tasks?state=queued").await;
            tasks.as_array().unwrap().len() == 2
        })
        .await
    );

    let (status, from_api) = daemon.get("/api/tasks").await;
    assert_eq!(status, 200);
    let from_cli = home.run_json(&["task", "list"]);
    assert_eq!(from_cli, from_api);
    let tasks = from_api.as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[1]["repo"], "https://github.com/org/app");
    assert_eq!(tasks[1]["max_attempts"], 5);
    assert_eq!(tasks[2]["workflow"], "code-review");

    let (_, queued) = daemon.get("/api/tasks?state=created").await;
    assert_eq!(queued, home.run_json(&["task", "list", "--state", "created"]));
}

#[tokio::test]
async fn every_transition_is_logged_in_order_with_reason_and_actor() {
    let home = TestHome::new("log");
    let daemon = home.start();
    let id = create(&daemon, json!({ "title": "logged", "max_attempts": 2 })).await;
    assert!(
        wait_until(Duration::from_secs(5), || async { task_state(&daemon, &id).await == "queued" })
            .await
    );
    daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "start" })).await;
    let (status, _) = daemon
        .post(
            &format!("/api/tasks/{id}/events"),
            json!({ "event": "failed", "class": "verify_failed", "reason": "3 tests failed" }),
        )
        .await;
    assert_eq!(status, 200);
    home.run_ok(&["task", "cancel", &id, "--reason", "not needed any more"]);

    let detail = home.run_json(&["task", "show", &id]);
    let log: Vec<(Value, Value, Value, Value)> = detail["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from_state"].clone(),
                e["to_state"].clone(),
                e["reason"].clone(),
                e["actor"].clone(),
            )
        })
        .collect();
    assert_eq!(
        log,
        vec![
            (Value::Null, json!("created"), json!("created"), json!("api")),
            (
                json!("created"),
                json!("queued"),
                json!("dependencies complete; its profile holds no agent slot"),
                json!("scheduler")
            ),
            (json!("queued"), json!("executing"), json!("start"), json!("api")),
            (json!("executing"), json!("error"), json!("3 tests failed"), json!("api")),
            (
                json!("error"),
                json!("retry"),
                json!("attempt 1 of 2 failed (verify_failed: 3 tests failed); retrying in 10s"),
                json!("api")
            ),
            (json!("retry"), json!("cancelled"), json!("not needed any more"), json!("cli")),
        ]
    );
    let times: Vec<&str> =
        detail["log"].as_array().unwrap().iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "log times in order: {times:?}");
}

#[tokio::test]
async fn illegal_transition_is_refused_naming_both_states() {
    let home = TestHome::new("illegal");
    let daemon = home.start();
    let id = create(&daemon, json!({ "title": "finished" })).await;
    assert!(
        wait_until(Duration::from_secs(5), || async { task_state(&daemon, &id).await == "queued" })
            .await
    );
    complete(&daemon, &id).await;

    let (status, body) =
        daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "cancel" })).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "illegal_transition");
    assert_eq!(
        body["error"]["message"],
        "illegal transition from complete to cancelled: event `cancel` is not allowed in state complete"
    );

    let output = home.run(&["task", "retry", &id]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("illegal transition from complete to created"), "{stderr}");

    // The refused events left no trace.
    let detail = home.run_json(&["task", "show", &id]);
    assert_eq!(detail["state"], "complete");
    assert_eq!(detail["log"].as_array().unwrap().last().unwrap()["to_state"], "complete");
}

#[tokio::test]
async fn scheduler_admits_no_more_tasks_than_agent_slots() {
    let home = TestHome::new("slots");
    home.write_config(HOLDER_PROFILE);
    // Created while the daemon is down, so the scheduler sees all five at once.
    let ids: Vec<String> = (0..5)
        .map(|p| {
            let title = format!("task {p}");
            let task = home.run_json(&[
                "task",
                "add",
                &title,
                "--priority",
                &p.to_string(),
                "--profile",
                "holder",
            ]);
            task["id"].as_str().unwrap().to_string()
        })
        .collect();
    let daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", "2");
    });
    let admitted = || async {
        let (_, tasks) = daemon.get("/api/tasks").await;
        let mut titles: Vec<String> = tasks
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["state"] == "queued" || t["state"] == "executing")
            .map(|t| t["title"].as_str().unwrap().to_string())
            .collect();
        titles.sort();
        titles
    };
    assert!(wait_until(Duration::from_secs(5), || async { admitted().await.len() == 2 }).await);
    // Highest priority first (priorities 4 and 3; task 4 was created last).
    assert_eq!(admitted().await, ["task 3", "task 4"]);

    // Cancelling one frees a slot for the next by priority.
    home.run_ok(&["task", "cancel", &ids[4]]);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            admitted().await.contains(&"task 2".to_string())
        })
        .await
    );
    assert_eq!(admitted().await, ["task 2", "task 3"]);
}

/// Tasks of an external profile (`manual`) are run by nothing in ccm: queued, they hold no
/// agent slot, so a task an agent runs is admitted past them.
#[tokio::test]
async fn queued_tasks_of_an_external_profile_hold_no_agent_slot() {
    let home = TestHome::new("external-slots");
    home.write_config(HOLDER_PROFILE);
    for n in 0..4 {
        home.run_ok(&["task", "add", &format!("manual {n}"), "--profile", "manual"]);
    }
    let daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", "4");
    });
    let queued = wait_until(Duration::from_secs(5), || async {
        daemon.get("/api/tasks?state=queued").await.1.as_array().unwrap().len() == 4
    })
    .await;
    assert!(queued, "the manual tasks are admitted");
    let id = create(&daemon, json!({ "title": "agent work", "profile": "holder" })).await;
    let admitted = wait_until(Duration::from_secs(10), || async {
        task_state(&daemon, &id).await != "created"
    })
    .await;
    assert!(admitted, "four queued manual tasks kept the agent's task waiting");
    daemon.agent_token(&id).await; // and its agent runs
}

/// The slots do not ration the admission of tasks that will hold none: forty `manual` tasks
/// with one slot are queued by the first pass, not one a pass.
#[tokio::test]
async fn tasks_of_an_external_profile_are_admitted_together_whatever_the_slots() {
    let home = TestHome::new("external-admission");
    for n in 0..40 {
        home.run_ok(&["task", "add", &format!("manual {n}"), "--profile", "manual"]);
    }
    let daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", "1").env("CCM_SCHEDULER__TICK_MS", "2000");
    });
    let queued = wait_until(Duration::from_secs(3), || async {
        daemon.get("/api/tasks?state=queued").await.1.as_array().unwrap().len() == 40
    })
    .await;
    let left = daemon.get("/api/tasks?state=created").await.1;
    assert!(queued, "still created after 3 s: {}", left.as_array().unwrap().len());
}

/// The slots count the tasks of every profile an agent runs, in every state that holds one, and
/// the runtime starts them, however many tasks of an external profile wait in `queued` (the
/// scheduler and the runtime find the profiles first and read only the others' tasks).
#[tokio::test]
async fn agent_slots_count_every_agent_profile_past_waiting_external_tasks() {
    let home = TestHome::new("slots-profiles");
    let second = HOLDER_PROFILE.replacen("profiles:\n  holder:", "  holder2:", 1);
    home.write_config(&format!("{HOLDER_PROFILE}{second}"));
    for n in 0..30 {
        home.run_ok(&["task", "add", &format!("manual {n}"), "--profile", "manual"]);
    }
    let daemon = home.start_with(|c| {
        c.env("CCM_SCHEDULER__SLOTS", "3");
    });
    let mut ids = Vec::new();
    for (n, profile) in ["holder", "holder2", "holder2"].into_iter().enumerate() {
        let id =
            create(&daemon, json!({ "title": format!("agent {n}"), "profile": profile })).await;
        daemon.agent_token(&id).await; // admitted, and its agent runs
        ids.push(id);
    }
    let last = create(&daemon, json!({ "title": "agent 3", "profile": "holder" })).await;
    let (_, queued) = daemon.get("/api/tasks?state=queued").await;
    assert_eq!(queued.as_array().unwrap().len(), 30, "the manual tasks wait in queued");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(task_state(&daemon, &last).await, "created", "three agents hold the three slots");

    home.run_ok(&["task", "cancel", &ids[1]]);
    daemon.agent_token(&last).await;
}

#[tokio::test]
async fn cli_works_without_a_daemon_and_the_daemon_picks_up_its_tasks() {
    let home = TestHome::new("offline");
    let id = home.run_json(&["task", "add", "written offline"])["id"].as_str().unwrap().to_string();
    let status = home.run_json(&["status"]);
    assert_eq!(status["daemon"], Value::Null);
    assert_eq!(status["tasks"]["created"], 1);

    let daemon = home.start();
    assert!(
        wait_until(Duration::from_secs(5), || async { task_state(&daemon, &id).await == "queued" })
            .await
    );
    let status = home.run_json(&["status"]);
    assert_eq!(status["daemon"]["addr"], daemon.addr.as_str());
}

#[tokio::test]
async fn blocked_task_after_exhausted_attempts_raises_alert_and_decision() {
    let home = TestHome::new("blocked");
    let daemon = home.start();
    let id = create(&daemon, json!({ "title": "flaky", "max_attempts": 1 })).await;
    assert!(
        wait_until(Duration::from_secs(5), || async { task_state(&daemon, &id).await == "queued" })
            .await
    );
    daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "start" })).await;
    let (_, task) = daemon
        .post(&format!("/api/tasks/{id}/events"), json!({ "event": "failed", "class": "crash" }))
        .await;
    assert_eq!(task["state"], "blocked");

    let status = home.run_json(&["status"]);
    assert_eq!(status["open_alerts"], 1);
    assert_eq!(status["pending_decisions"], 1);
    let dump = home.run_ok(&["dump-state"]);
    assert!(dump.contains("attempts_exhausted"), "{dump}");
    assert!(
        dump.contains("is blocked: all 1 attempts failed; last: crash: failed. Retry or cancel?"),
        "{dump}"
    );

    home.run_ok(&["task", "retry", &id]);
    let status = home.run_json(&["status"]);
    assert_eq!(status["pending_decisions"], 0, "retrying answers the decision");
    assert!(
        wait_until(Duration::from_secs(5), || async { task_state(&daemon, &id).await == "queued" })
            .await
    );
    let (_, task) = daemon.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(task["attempts"], 0, "a retry starts a fresh attempt budget");
}

#[tokio::test]
async fn task_list_shows_every_unfinished_task_and_only_the_most_recently_finished_ones() {
    let home = TestHome::new("list-window");
    let mut ids = Vec::new();
    for n in 0..58 {
        ids.push(
            home.run_json(&["task", "add", &format!("task {n}")])["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The first 55 finish (cancelled), oldest first; the last three stay open.
    for id in &ids[..55] {
        home.run_ok(&["task", "cancel", id]);
    }
    let listed = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["task", "list"];
        all.extend_from_slice(args);
        home.run_json(&all)
            .as_array()
            .expect("a list")
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    // By default: the 50 most recently finished and every open one, oldest first.
    assert_eq!(listed(&[]), ids[5..].to_vec());
    assert_eq!(listed(&["--limit", "2"]), ids[53..].to_vec());
    assert_eq!(listed(&["--all"]), ids);
    assert_eq!(listed(&["--state", "created", "--limit", "0"]), ids[55..].to_vec());
    let text = home.run_ok(&["task", "list", "--limit", "2"]);
    assert!(text.contains("older finished tasks are not listed"), "{text}");
    assert!(
        text.contains("task 54") && text.contains("task 57") && !text.contains("task 52"),
        "{text}"
    );
    let text = home.run_ok(&["task", "list", "--all"]);
    assert!(!text.contains("older finished tasks"), "{text}");

    // The API takes the same window; a bad one is named.
    let daemon = home.start();
    let (status, body) = daemon.get("/api/tasks?finished=1&state=cancelled").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["id"].as_str().unwrap(), ids[54]);
    let (status, body) = daemon.get("/api/tasks?finished=many").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("finished"), "{body}");
}

#[tokio::test]
async fn status_counts_tasks_per_state_as_they_are_added_and_move() {
    let home = TestHome::new("state-counts");
    let a = home.run_json(&["task", "add", "one"])["id"].as_str().unwrap().to_string();
    home.run_json(&["task", "add", "two"]);
    home.run_ok(&["task", "cancel", &a]);
    let status = home.run_json(&["status"]);
    assert_eq!(status["tasks"], json!({ "created": 1, "cancelled": 1 }), "{status}");
}
