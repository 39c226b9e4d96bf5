//! Scheduled supervisors (issue 25) with the real Claude Code against the Anthropic stand-in.

use std::time::Duration;

use ccm_tests::standin::anthropic::{Anthropic, Turn};
use ccm_tests::standin::Recorder;
use ccm_tests::{agent_cli, git_repo, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

const SLOW: Duration = Duration::from_secs(120);

/// A manual task of `repo` driven to `complete` through the API.
async fn completed_task(daemon: &Daemon, title: &str, repo: &str) -> Value {
    let (status, task) = daemon.post("/api/tasks", json!({ "title": title, "repo": repo })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let state = || async { daemon.get(&format!("/api/tasks/{id}")).await.1["state"].clone() };
    assert!(wait_until(Duration::from_secs(20), || async { state().await == "queued" }).await);
    for event in [
        json!({ "event": "start" }),
        json!({ "event": "worker_finished" }),
        json!({ "event": "verify_passed" }),
        json!({ "event": "report_ready", "supervised": false }),
    ] {
        let (status, body) = daemon.post(&format!("/api/tasks/{id}/events"), event).await;
        assert_eq!(status, 200, "{body}");
    }
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

/// A dashboard page, signed in through the one-time link `ccm dashboard --print` gives.
async fn dashboard_page(home: &TestHome, daemon: &Daemon, path: &str) -> String {
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = http.get(&link).send().await.unwrap();
    let cookies: Vec<String> = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok()?.split(';').next().map(str::to_string))
        .collect();
    assert!(!cookies.is_empty(), "no session cookie from {link}: {}", signed_in.status());
    let page =
        http.get(daemon.url(path)).header("cookie", cookies.join("; ")).send().await.unwrap();
    assert_eq!(page.status(), 200, "{path}");
    page.text().await.unwrap()
}

/// Acceptance 1: a project supervisor scheduled every 2 completions runs after the second one
/// (not before), as the real Claude Code in its own tmux window; its prompt carries the digest
/// of the project (seen in the model stand-in's request log); its report is stored and shown by
/// `ccm supervisors` and `ccm report ID`; the `ALERT:` line of its answer reaches a notifier.
#[tokio::test]
async fn a_project_supervisor_runs_after_n_completions_with_the_digest_and_its_alert_is_pushed() {
    let home = TestHome::new("supervisor");
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let hook = Recorder::start(200, "ok");
    home.write_config(&format!(
        "runtime:\n  poll_ms: 50\nnotify:\n  notifiers:\n    ops:\n      kind: webhook\n      url: {}/ccm\n  routes:\n    - notifier: ops\n      kinds: [supervisor_alert]\n      immediate: true\nsupervisors:\n  review:\n    scope: project\n    repo: {repo}\n    every: {{completions: 2}}\n    profile: claude\n    prompt: |\n      You supervise the project's agents. Since your last run:\n      {{digest}}\n      Answer with a short report; one ALERT: line per problem.\n",
        hook.url()
    ));
    let api = Anthropic::start(vec![Turn::text(
        "Two tasks completed cleanly.\nALERT: the parser tasks have no tests",
    )]);
    let bin = agent_cli("claude");
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let user_home = home.dir.path().join("user");
    std::fs::create_dir_all(&user_home).unwrap();
    let daemon = home.start_with(|command| {
        command.env("PATH", path).env("HOME", &user_home);
        for (name, value) in api.env() {
            command.env(name, value);
        }
    });

    let first = completed_task(&daemon, "parse the headers", &repo).await;
    assert_eq!(first["state"], "complete", "{first}");
    completed_task(&daemon, "parse the body", &repo).await;

    let runs = || home.run_json(&["supervisors"])["runs"].as_array().cloned().unwrap_or_default();
    let done = wait_until(SLOW, || async { runs().iter().any(|r| r["status"] != "running") }).await;
    let listed = runs();
    assert!(done, "no finished run: {listed:?}\n{}", daemon.log_text());
    assert_eq!(listed.len(), 1, "one run, after the second completion: {listed:?}");
    let run = &listed[0];
    assert_eq!(run["reason"], "2 completions", "{run}");
    assert_eq!(run["status"], "done", "{run}\n{}", daemon.log_text());
    assert_eq!(run["alerts"], 1, "{run}");

    // The prompt Claude Code sent the model carried the digest of the project.
    let sent: Vec<String> = api.requests().iter().map(Value::to_string).collect();
    let prompt = sent.iter().find(|r| r.contains("You supervise the project's agents"));
    let prompt = prompt.unwrap_or_else(|| panic!("no request with the prompt: {sent:?}"));
    for part in ["task moves by state:", "complete 2", "retries: 0", "previous report: none"] {
        assert!(prompt.contains(part), "`{part}` not in the prompt: {prompt}");
    }

    // The report, stored and shown.
    let id = run["id"].as_str().unwrap();
    let shown = home.run_ok(&["report", &id[..8]]);
    assert!(shown.contains("Two tasks completed cleanly."), "{shown}");
    assert!(shown.contains("== digest") && shown.contains("complete 2"), "{shown}");
    let list = home.run_ok(&["supervisors"]);
    assert!(list.contains("review: scope project") && list.contains(&id[..8]), "{list}");

    // The dashboard lists the run with its report.
    let page = dashboard_page(&home, &daemon, "/supervisors").await;
    assert!(page.contains("Two tasks completed cleanly.") && page.contains(&id[..8]), "{page}");

    // The next run's digest starts after this run and carries its report.
    let next = home.run_ok(&["supervisors", "--digest", "review"]);
    assert!(next.contains("previous report:\nTwo tasks completed cleanly."), "{next}");
    assert!(!next.contains("complete 2"), "only what happened since: {next}");
    let (status, built) = daemon.get("/api/supervisors/review/digest").await;
    assert_eq!((status, built["digest"].as_str()), (200, Some(next.as_str())), "{built}");
    let out = home.run(&["supervisors", "--digest", "nope"]);
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(refused.contains("no supervisor named `nope`; configured: review"), "{refused}");
    let (status, _) = daemon.get("/api/supervisors/nope/digest").await;
    assert_eq!(status, 404);

    // Its alert reaches the notifier.
    let pushed = wait_until(Duration::from_secs(30), || async {
        hook.received()
            .iter()
            .any(|r| r.json().to_string().contains("the parser tasks have no tests"))
    })
    .await;
    let bodies: Vec<Value> = hook.received().iter().map(|r| r.json()).collect();
    assert!(pushed, "the supervisor's alert was not pushed: {bodies:?}");
    let (_, alerts) = daemon.get("/api/alerts").await;
    let alert = alerts.as_array().unwrap().iter().find(|a| a["reason"] == "supervisor_alert");
    let alert = alert.unwrap_or_else(|| panic!("no supervisor_alert: {alerts}"));
    assert!(alert["message"].as_str().unwrap().contains(&format!("ccm report {}", &id[..8])));
}

/// A system supervisor on an interval runs again and again, one run at a time (its own slot),
/// and each run's digest carries the previous run's report; a plain-output profile's last line
/// is its report.
#[tokio::test]
async fn an_interval_supervisor_runs_again_with_the_previous_report_in_its_digest() {
    let home = TestHome::new("supervisor-interval");
    home.write_config(
        "profiles:\n  counter:\n    command: [sh, -c, 'sleep 0.3; echo \"first run: $(grep -c \"previous report: none\" \"$CCM_AGENT_DIR/prompt.md\")\"']\nsupervisors:\n  pulse:\n    scope: system\n    every: {interval: 1s}\n    profile: counter\n    prompt: \"{digest}\"\n",
    );
    let daemon = home.start();
    let runs = || home.run_json(&["supervisors"])["runs"].as_array().cloned().unwrap_or_default();
    let mut most_running = 0;
    let two = wait_until(Duration::from_secs(60), || {
        let listed = runs();
        most_running = most_running.max(listed.iter().filter(|r| r["status"] == "running").count());
        std::future::ready(listed.iter().filter(|r| r["status"] == "done").count() >= 2)
    })
    .await;
    let listed = runs();
    assert!(two, "fewer than two finished runs: {listed:?}\n{}", daemon.log_text());
    assert!(most_running <= 1, "one run at a time (slots 1): {listed:?}");
    // Newest first: the oldest run was the first; the next one's digest carried its report.
    let oldest = listed.last().unwrap();
    assert_eq!(oldest["report"], "first run: 1", "{oldest}");
    assert_eq!(oldest["reason"], "interval 1s", "{oldest}");
    let second = &listed[listed.len() - 2];
    assert_eq!(second["report"], "first run: 0", "{second}");
    assert!(
        second["digest"].as_str().unwrap().contains("previous report:\nfirst run: 1"),
        "{second}"
    );
    assert_eq!(home.run_json(&["status"])["tasks"], serde_json::json!({}), "no task was made");
}

/// Part of a digest: from the line starting with `from` to the next top-level line.
fn section<'a>(digest: &'a str, from: &str) -> &'a str {
    let start = digest.find(from).unwrap_or(digest.len());
    let rest = &digest[start..];
    let end = rest[1..].find("\n- ").map_or(rest.len(), |at| at + 1);
    &rest[..end]
}

/// A fleet manager runs on one of two systems (the holder of its central lease), its digest is
/// the central's view of both, and when its system stops the other takes over within the lease.
#[tokio::test]
async fn a_fleet_manager_runs_on_one_system_at_a_time_and_moves_when_that_system_stops() {
    use ccm_tests::fleet::{wait_for, Fleet, Node};
    const LEASE: Duration = Duration::from_secs(4);
    let fleet = Fleet::start();
    let manager = "  watcher:\n    command: [sh, -c, 'echo all systems looked at']\n";
    let supervisor =
        "supervisors:\n  fleet-watch:\n    scope: fleet\n    every: {interval: 2s}\n    \
                      lease: 4s\n    profile: watcher\n    prompt: \"{digest}\"\n";
    let mut nodes: Vec<Node> = [(1, "alpha"), (2, "beta")]
        .into_iter()
        .map(|(n, name)| {
            let node = fleet.node(n, name, false, "slow");
            let config = std::fs::read_to_string(node.home.home().join("config.yaml")).unwrap();
            let config = config.replacen("profiles:\n", &format!("profiles:\n{manager}"), 1);
            node.home.write_config(&format!("{config}{supervisor}"));
            node.up()
        })
        .collect();
    // A task of each system, so that the central has rows of both.
    nodes[0].add(&["alpha's task"]);
    nodes[1].add(&["beta's task"]);
    let runs = |node: &Node| {
        node.home.run_json(&["supervisors"])["runs"].as_array().cloned().unwrap_or_default()
    };
    let both = |digest: &str| {
        let tasks = section(digest, "- tasks by state");
        tasks.contains("alpha:") && tasks.contains("beta:")
    };

    let found = wait_until(SLOW, || async {
        (0..2).any(|i| runs(&nodes[i]).iter().any(|r| r["digest"].as_str().is_some_and(both)))
    })
    .await;
    assert!(
        found,
        "no fleet digest with the tasks of both systems; runs: {:#?} {:#?}\n{}\n{}",
        runs(&nodes[0]),
        runs(&nodes[1]),
        nodes[0].log(),
        nodes[1].log()
    );
    let holder = (0..2)
        .find(|&i| runs(&nodes[i]).iter().any(|r| r["digest"].as_str().is_some_and(both)))
        .unwrap();
    let other = 1 - holder;
    let digest = runs(&nodes[holder])[0]["digest"].as_str().unwrap().to_string();
    let systems = section(&digest, "- systems");
    assert!(systems.contains("alpha: online") && systems.contains("beta: online"), "{digest}");
    assert!(runs(&nodes[other]).is_empty(), "the manager ran on both systems at once");
    let lease_holder = |name: &str| {
        fleet.central.pg.query(&format!(
            "select s.name from private.named_leases l join private.systems s \
             on s.system_id = l.holder where l.name = 'supervisor:{name}'"
        ))
    };
    let names = ["alpha", "beta"];
    assert_eq!(lease_holder("fleet-watch"), names[holder]);

    // Its system stops without a word (SIGKILL): the lease runs out and the other takes over.
    nodes[holder].crash();
    let stopped = std::time::Instant::now();
    let taken = wait_for("the other system's first fleet run", SLOW, async || {
        runs(&nodes[other]).first().cloned()
    })
    .await;
    let moved_after = stopped.elapsed();
    assert!(
        moved_after < LEASE + Duration::from_secs(8),
        "the manager moved {moved_after:?} after its system stopped (lease {LEASE:?})"
    );
    assert_eq!(lease_holder("fleet-watch"), names[other]);
    let digest = taken["digest"].as_str().unwrap();
    assert!(both(digest), "the new holder's digest carries both systems' tasks: {digest}");
}
