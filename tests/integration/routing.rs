//! Routing across systems end to end: three nodes (three homes, three daemons, three tmux
//! servers, git checkouts cloned from one bare remote) against one real PostgreSQL 15 behind
//! postrust, each node behind its own fault proxy. The agents are the scripted Claude Code of
//! `tests/fixtures/fake-claude.sh`. Lease and heartbeat times are shortened in the central's
//! settings and the nodes' config (`ccm_tests::fleet`, `Clocks::Short`); the defaults are as
//! documented.

use std::time::{Duration, Instant};

use ccm_tests::faultproxy::Fault;
use ccm_tests::fleet::{git, wait_for, Fleet, Node, LEASE_S};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(60);

async fn local_state(node: &Node, id: &str) -> Option<String> {
    node.local(id).await.and_then(|t| t["state"].as_str().map(str::to_string))
}

/// Acceptance 1: created on A (no checkout), the task runs on B (a checkout, a free slot), not
/// on C (no checkout); A shows it running on B, then complete with B's report and cost.
#[tokio::test]
async fn a_task_created_where_its_repository_is_missing_runs_on_the_system_that_has_it() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    let charlie = fleet.node(3, "charlie", false, "commit").up();

    let out = alpha.home.run_ok(&[
        "task",
        "add",
        "fix the bug",
        "--profile",
        "fake",
        "--repo",
        &fleet.remote,
    ]);
    assert!(out.contains("routed task") && out.contains("no checkout of"), "{out}");
    let (status, routed) = alpha.daemon().get("/api/routed").await;
    assert_eq!(status, 200, "{routed}");
    let id = routed[0]["id"].as_str().expect("a routed task on alpha").to_string();

    let running = wait_for("alpha to see the task running on beta", SLOW, async || {
        let routed = alpha.routed(&id);
        let on_beta = routed["central"]["executing_name"] == "beta";
        (on_beta && ["leased", "running", "done"].contains(&routed["central"]["state"].as_str()?))
            .then_some(routed)
    })
    .await;
    assert_eq!(running["id"], id.as_str());
    let done = wait_for("the task to complete", SLOW, async || {
        let routed = alpha.routed(&id);
        (routed["central"]["state"] == "done").then_some(routed)
    })
    .await;
    let result = &done["central"]["result"];
    assert_eq!(result["status"], "done", "{done:#}");
    assert_eq!(result["state"], "complete");
    assert!(result["cost_usd"].as_f64().unwrap() > 0.0, "beta's cost travels: {result}");
    assert!(
        result["report"]["work"]["commits"].as_array().is_some_and(|c| !c.is_empty()),
        "beta's report travels: {result}"
    );

    // It ran on beta, as a local task with the same id, through the whole lifecycle.
    assert_eq!(local_state(&beta, &id).await.as_deref(), Some("complete"), "{}", beta.log());
    assert!(charlie.local(&id).await.is_none(), "charlie has no checkout: it never took the task");
    assert!(alpha.local(&id).await.is_none(), "alpha only routed it");
    assert_eq!(fleet.attempts(&id).len(), 1);

    let shown = alpha.home.run_ok(&["task", "show", &id[..8]]);
    assert!(shown.contains("complete on beta"), "{shown}");
    assert!(shown.contains("cost $"), "{shown}");
    let list = alpha.home.run_ok(&["task", "list"]);
    assert!(list.contains("routed to the fleet") && list.contains("beta"), "{list}");
}

/// The origin's view of the fleet: a pin naming no system is refused at creation with the
/// names the fleet has; `task list --json` lists routed tasks with where they run; `systems`
/// shows each heartbeat as an age.
#[tokio::test]
async fn the_origin_refuses_unknown_pins_and_lists_routed_tasks_with_their_system() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();

    let refused = alpha.home.run(&[
        "task",
        "add",
        "typo",
        "--profile",
        "fake",
        "--repo",
        &fleet.remote,
        "--system",
        "betta",
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("unknown system `betta`") && message.contains("alpha, beta"),
        "{message}"
    );
    assert!(alpha.daemon().get("/api/routed").await.1.as_array().unwrap().is_empty());

    let id = alpha.add(&["listed work", "--repo", &fleet.remote, "--system", "beta"]);
    wait_for("beta to take the task", SLOW, async || {
        let list = alpha.home.run_json(&["task", "list"]);
        let row = list.as_array()?.iter().find(|t| t["id"] == id.as_str())?.clone();
        (row["routed"]["system"] == "beta").then_some(row)
    })
    .await;
    let systems = alpha.home.run_ok(&["systems"]);
    assert!(systems.contains("s ago"), "{systems}");
    drop(beta);
}

/// A task sent to the fleet while the central cannot be reached says that it waits here.
#[tokio::test]
async fn a_task_routed_while_the_central_is_unreachable_says_it_waits() {
    let home = ccm_tests::TestHome::new("routed-unreachable");
    home.write_config("sync:\n  rest_url: http://127.0.0.1:9\n  publishable_key: anon\n");
    let out = home.run_ok(&["task", "add", "far away", "--repo", "https://example.com/o/far.git"]);
    assert!(out.contains("routed task"), "{out}");
    assert!(out.contains("cannot be asked now") && out.contains("waits here"), "{out}");
}

/// Placement is one decision for every entry point: a task for a repository with no checkout
/// here, created through `POST /api/tasks` or the dashboard's form on a node with sync, is
/// routed to the fleet (202 with why; the form moves on to its page), as `ccm task add` does;
/// one without a repository is created here as before (201).
#[tokio::test]
async fn the_api_and_the_dashboard_form_route_a_task_whose_repository_has_no_checkout_here() {
    let home = ccm_tests::TestHome::new("routed-api");
    home.write_config("sync:\n  rest_url: http://127.0.0.1:9\n  publishable_key: anon\n");
    let daemon = home.start();
    let far = "https://example.com/o/far.git";

    let (status, routed) =
        daemon.post("/api/tasks", serde_json::json!({ "title": "far away", "repo": far })).await;
    assert_eq!(status, 202, "{routed}");
    assert!(
        routed["routed_because"].as_str().unwrap().contains("no checkout of"),
        "says why: {routed}"
    );
    let id = routed["id"].as_str().unwrap().to_string();
    let (_, listed) = daemon.get("/api/routed").await;
    assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == id.as_str()), "{listed}");
    let (_, local) = daemon.get("/api/tasks").await;
    assert_eq!(local, serde_json::json!([]), "nothing created here");

    let (status, task) = daemon.post("/api/tasks", serde_json::json!({ "title": "here" })).await;
    assert_eq!(status, 201, "{task}");
    assert!(task["state"].is_string() && task.get("routed_because").is_none(), "{task}");

    // The dashboard's form, as a browser posts it (signed in, CSRF token, Origin).
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    let signed_in = http.get(link).send().await.unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let form = http.get(daemon.url("/tasks/new")).header("cookie", &cookie).send().await.unwrap();
    let form = form.text().await.unwrap();
    let csrf = form.split("name=\"csrf\" value=\"").nth(1).expect("a csrf field");
    let csrf = &csrf[..csrf.find('"').unwrap()];
    let answer = http
        .post(daemon.url("/tasks"))
        .header("cookie", &cookie)
        .header("origin", daemon.url(""))
        .form(&[("title", "far from the form"), ("repo", far), ("csrf", csrf)])
        .send()
        .await
        .unwrap();
    // The answer moves on to the routed task's page, which says why and follows it.
    assert_eq!(answer.status(), 200);
    assert!(answer.url().path().starts_with("/routed/"), "{}", answer.url());
    let page = answer.text().await.unwrap();
    assert!(page.contains("routed to the fleet") && page.contains("no checkout of"), "{page}");
    let (_, listed) = daemon.get("/api/routed").await;
    let titles: Vec<&str> =
        listed.as_array().unwrap().iter().filter_map(|r| r["title"].as_str()).collect();
    assert!(titles.contains(&"far from the form"), "{listed}");
    let (_, local) = daemon.get("/api/tasks").await;
    assert_eq!(local.as_array().unwrap().len(), 1, "only the task without a repository: {local}");
}

/// A change the central stamped before the origin's window (a write that waited on a lock and
/// committed late) still reaches the origin: it reads all of its routed tasks now and then.
#[tokio::test]
async fn a_central_change_stamped_before_the_origins_window_still_reaches_it() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let nowhere = alpha.add(&["lost work", "--repo", "https://git.example.com/nobody/has-it"]);
    wait_for("the central's word on it", SLOW, async || {
        alpha.routed(&nowhere)["central"]["reason"].as_str().map(str::to_string)
    })
    .await;
    // Stamped an hour ago, as a transaction that started then and committed now would leave it.
    fleet.central.pg.query(&format!(
        "update private.routed_tasks set progress = '{{\"note\": \"stamped late\"}}'::jsonb, \
         updated_at = now() - interval '1 hour' where task_id = '{nowhere}'"
    ));
    wait_for("the late change at the origin", SLOW, async || {
        let routed = alpha.routed(&nowhere);
        (routed["central"]["progress"]["note"] == "stamped late").then_some(())
    })
    .await;
}

/// Acceptance 5: a pinned task waits for its system; a task whose repository no system holds
/// shows `no_context` and raises an alert; a draining system takes no new work.
#[tokio::test]
async fn pinned_tasks_wait_for_their_system_unroutable_ones_say_why_and_draining_takes_nothing() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    let charlie = fleet.node(3, "charlie", true, "commit");

    // Pinned to charlie, whose daemon is not running: beta, which could run it, leaves it.
    let pinned = alpha.add(&["pinned work", "--repo", &fleet.remote, "--system", "charlie"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fleet.task(&pinned)["state"], "queued", "{}", fleet.task(&pinned));
    assert!(beta.local(&pinned).await.is_none(), "beta does not take a task pinned elsewhere");
    let charlie = charlie.up();
    wait_for("charlie to run its pinned task", SLOW, async || {
        (local_state(&charlie, &pinned).await? == "complete").then_some(())
    })
    .await;

    // Nobody has this repository: queued with `no_context`, and an alert.
    let nowhere = alpha.add(&["lost work", "--repo", "https://git.example.com/nobody/has-it"]);
    let reason = wait_for("the unroutable reason", SLOW, async || {
        let routed = alpha.routed(&nowhere);
        routed["central"]["reason"].as_str().map(str::to_string)
    })
    .await;
    assert_eq!(reason, "no_context");
    let shown = alpha.home.run_ok(&["task", "show", &nowhere]);
    assert!(shown.contains("waiting   no_context"), "{shown}");
    wait_for("the unroutable alert", SLOW, async || {
        let alerts = fleet.central.pg.query(&format!(
            "select count(*) from private.alerts where kind = 'unroutable' and task_id = '{nowhere}'"
        ));
        (alerts.trim() == "1").then_some(())
    })
    .await;

    // beta drains: the next task for the repository goes to charlie, never to beta.
    let out = alpha.home.run_ok(&["systems", "drain", "beta"]);
    assert!(out.contains("beta is draining"), "{out}");
    let systems = alpha.home.run_json(&["systems"]);
    let beta_row = systems.as_array().unwrap().iter().find(|s| s["name"] == "beta").unwrap();
    assert_eq!(beta_row["reason"], "draining", "{systems:#}");
    let text = alpha.home.run_ok(&["systems"]);
    assert!(text.contains("charlie") && text.contains("draining"), "{text}");
    for n in 0..3 {
        let id = alpha.add(&[&format!("after the drain {n}"), "--repo", &fleet.remote]);
        wait_for("charlie to run it", SLOW, async || {
            (local_state(&charlie, &id).await? == "complete").then_some(())
        })
        .await;
        assert!(beta.local(&id).await.is_none(), "a draining system takes no new work");
    }
    // Issue 27, item 4: a task pinned to the draining system says so, not `all_busy`.
    let pinned = alpha.add(&["pinned to a drain", "--repo", &fleet.remote, "--system", "beta"]);
    let reason = wait_for("the drain as the reason", SLOW, async || {
        let reason = alpha.routed(&pinned)["central"]["reason"].as_str().map(str::to_string);
        reason.filter(|r| r != "all_busy")
    })
    .await;
    assert_eq!(reason, "pinned_system_draining");
    let shown = alpha.home.run_ok(&["task", "show", &pinned]);
    assert!(
        shown.contains("waiting   pinned_system_draining (the system it is pinned to is draining"),
        "{shown}"
    );
}

/// Acceptance 6: with the origin cut off from the central, the task waits on the origin and is
/// routed when sync returns; one for a repository that gets a checkout on the origin meanwhile
/// runs there.
#[tokio::test]
async fn with_the_origin_offline_a_task_waits_there_and_is_routed_when_sync_returns() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    alpha.proxy.set_random(Some((1.0, Fault::Reset)), 1);

    let id = alpha.add(&["offline work", "--repo", &fleet.remote]);
    let other = fleet.remote.replace("app.git", "lib.git");
    let local = alpha.add(&["work for a checkout to come", "--repo", &other]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let shown = alpha.home.run_ok(&["task", "show", &id]);
    assert!(shown.contains("submitted not yet"), "{shown}");
    assert_eq!(fleet.task(&id), Value::Null, "nothing reached the central");

    // A checkout of the second task's repository is registered here: it runs here.
    let bare = other.trim_start_matches("file://");
    git(fleet.dir.path(), &["clone", "-q", "--bare", &fleet.remote, bare]);
    let clone = alpha.home.work().join("lib");
    git(&alpha.home.work(), &["clone", "-q", &other, clone.to_str().unwrap()]);
    git(&clone, &["config", "user.email", "test@example.com"]);
    git(&clone, &["config", "user.name", "ccm test"]);
    alpha.home.run_ok(&["context", "add", clone.to_str().unwrap()]);
    wait_for("the second task to run on alpha", SLOW, async || {
        (local_state(&alpha, &local).await? == "complete").then_some(())
    })
    .await;
    assert_eq!(fleet.task(&local), Value::Null, "it never went to the central");

    alpha.proxy.set_random(None, 1);
    wait_for("the task to run on beta", SLOW, async || {
        (local_state(&beta, &id).await? == "complete").then_some(())
    })
    .await;
    wait_for("alpha to see it done", SLOW, async || {
        (alpha.routed(&id)["central"]["state"] == "done").then_some(())
    })
    .await;
}

/// The central's summary of a task: `(system name, state)`.
fn summary(fleet: &Fleet, id: &str) -> Option<(String, String)> {
    let rows = fleet.central.pg.rows(&format!(
        "select s.name, t.state from private.task_summaries t join private.systems s \
         using (system_id) where t.task_id = '{id}'"
    ));
    let row = rows.as_array()?.first()?.clone();
    Some((row["name"].as_str()?.to_string(), row["state"].as_str()?.to_string()))
}

/// Acceptance 3: kill -9 of B's daemon and agents while it holds a routed task: the task is
/// back in the queue within the lease time plus a reaper pass and completes on another system;
/// B, when it returns, learns its lease is gone and its late report is recorded as stale.
/// Issue 27, item 1: the central then shows the task complete on the system that finished it,
/// with its report, although B shipped the task's summary first; B's late summary is kept as
/// stale and changes nothing.
#[tokio::test]
async fn a_crashed_holder_loses_its_task_to_another_system_shown_with_its_result_and_late_writes_are_stale(
) {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let mut beta = fleet.node(2, "beta", true, "slow").up();
    let charlie = fleet.node(3, "charlie", true, "commit");

    let id = alpha.add(&["survive a crash", "--repo", &fleet.remote]);
    wait_for("beta to run the task", SLOW, async || {
        (local_state(&beta, &id).await? == "executing").then_some(())
    })
    .await;
    // beta ships the task's summary first.
    wait_for("beta's summary at the central", SLOW, async || {
        (summary(&fleet, &id)?.0 == "beta").then_some(())
    })
    .await;
    let charlie = charlie.up();
    beta.crash();
    let crashed = Instant::now();

    let requeued = wait_for("the task to leave beta", SLOW, async || {
        let attempts = fleet.attempts(&id);
        (attempts.first()?.2.as_deref() == Some("lease_lost")).then(|| crashed.elapsed())
    })
    .await;
    // The lease time, plus a heartbeat or claim of any system (1 s here) to run the reaper.
    assert!(
        requeued <= Duration::from_secs(LEASE_S + 3),
        "back in the queue after {requeued:?} (lease {LEASE_S} s)"
    );
    wait_for("charlie to complete it", SLOW, async || {
        (local_state(&charlie, &id).await? == "complete").then_some(())
    })
    .await;
    // The local completion goes to the central by a queued call: its outcome follows.
    let attempts = wait_for("charlie's result at the central", SLOW, async || {
        let attempts = fleet.attempts(&id);
        attempts.get(1)?.2.is_some().then_some(attempts)
    })
    .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[1].0, "charlie");
    assert_eq!(attempts[1].2.as_deref(), Some("done"));

    // beta returns: its report under the old token is stale, and it drops the task.
    let beta_token = attempts[0].1;
    beta.daemon = Some(beta.home.start());
    let cancelled = wait_for("beta to drop the task", SLOW, async || {
        let task = beta.local(&id).await?;
        (task["state"] == "cancelled").then_some(task)
    })
    .await;
    // Whichever comes first: its own clock (the lease went unrenewed while it was down), the
    // heartbeat's revocation, or the stale answer to its report.
    let reason = cancelled["log"].as_array().unwrap().last().unwrap()["reason"].clone();
    let reason = reason.as_str().unwrap();
    assert!(
        ["self-fenced", "took the lease back", "stale_lease"].iter().any(|r| reason.contains(r)),
        "{reason}"
    );
    let stale = fleet.central.pg.query(&format!(
        "select count(*) from private.stale_attempts join private.systems s using (system_id) \
         where task_id = '{id}' and s.name = 'beta' and fencing_token = {beta_token}"
    ));
    assert_ne!(stale.trim(), "0", "beta's late report is recorded as stale");
    assert_eq!(fleet.task(&id)["state"], "done");
    assert_eq!(fleet.task(&id)["executing"], "charlie");

    // The central shows charlie's summary and report, not beta's.
    wait_for("charlie's summary of the task at the central", SLOW, async || {
        (summary(&fleet, &id)? == ("charlie".to_string(), "complete".to_string())).then_some(())
    })
    .await;
    let fleet_task = fleet.central.pg.query(&format!(
        "select system_name || ' ' || state from api.fleet_tasks where task_id = '{id}'"
    ));
    assert_eq!(fleet_task, "charlie complete");
    wait_for("charlie's report at the central", SLOW, async || {
        let reports = fleet.central.pg.query(&format!(
            "select string_agg(s.name, ',') from private.reports r join private.systems s \
             using (system_id) where r.task_id = '{id}'"
        ));
        (reports == "charlie").then_some(())
    })
    .await;
    // beta's summary of its cancelled copy arrives late: kept as stale, never applied.
    wait_for("beta's late summary, kept as stale", SLOW, async || {
        let late = fleet.central.pg.query(&format!(
            "select count(*) from private.stale_attempts a join private.systems s \
             using (system_id) where a.task_id = '{id}' and s.name = 'beta' \
             and a.call = 'summary' and a.payload ->> 'state' = 'cancelled'"
        ));
        (late != "0").then_some(())
    })
    .await;
    assert_eq!(summary(&fleet, &id), Some(("charlie".into(), "complete".into())));
}

/// Acceptance 4: B cut off from the central (a partition at its proxy) stops the routed agent
/// before its lease could be taken over, and the task completes elsewhere exactly once.
#[tokio::test]
async fn a_partitioned_holder_fences_itself_before_its_lease_can_be_taken_over() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "slow").up();
    let charlie = fleet.node(3, "charlie", true, "commit");

    let id = alpha.add(&["survive a partition", "--repo", &fleet.remote]);
    wait_for("beta to run the task", SLOW, async || {
        (local_state(&beta, &id).await? == "executing").then_some(())
    })
    .await;
    let charlie = charlie.up();
    beta.proxy.set_random(Some((1.0, Fault::Reset)), 7);

    let fenced = wait_for("beta to fence itself", SLOW, async || {
        let task = beta.local(&id).await?;
        (task["state"] == "cancelled").then_some(task)
    })
    .await;
    let last = fenced["log"].as_array().unwrap().last().unwrap().clone();
    assert!(last["reason"].as_str().unwrap().contains("self-fenced"), "{last}");
    // Issue 27, item 4: its copy is marked stale, with why.
    assert!(fenced["stale"].as_str().is_some_and(|s| s.starts_with("self-fenced")), "{fenced}");
    let listed = beta.home.run_ok(&["task", "list"]);
    assert!(listed.contains("cancelled (stale)"), "{listed}");
    wait_for("the routed agent to stop", SLOW, async || {
        beta.home.agent_windows().is_empty().then_some(())
    })
    .await;
    let fenced_at = last["at"].as_str().unwrap().to_string();

    wait_for("charlie to complete it", SLOW, async || {
        (local_state(&charlie, &id).await? == "complete").then_some(())
    })
    .await;
    // The local completion goes to the central by a queued call: its outcome follows.
    let attempts = wait_for("charlie's result at the central", SLOW, async || {
        let attempts = fleet.attempts(&id);
        attempts.get(1)?.2.is_some().then_some(attempts)
    })
    .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].2.as_deref(), Some("lease_lost"));
    assert_eq!(attempts[1].2.as_deref(), Some("done"));
    // beta stopped before the central took its lease back and gave the task to charlie.
    let order = fleet.central.pg.query(&format!(
        "select '{fenced_at}'::timestamptz < claimed_at from private.task_attempts \
         where task_id = '{id}' and attempt = 2"
    ));
    assert_eq!(order.trim(), "t", "fenced at {fenced_at}; {attempts:?}\n{}", beta.log());
    assert_eq!(
        fleet
            .central
            .pg
            .query(&format!(
            "select count(*) from private.task_attempts where task_id = '{id}' and outcome = 'done'"
        ))
            .trim(),
        "1",
        "done exactly once"
    );
}

/// Issue 27, item 2: `ccm task cancel` on the origin of a routed task reaches the system
/// running it: its agent stops and its task is cancelled there, the central and the origin
/// show it cancelled (on that system), and `ccm task retry` on the origin runs it again.
#[tokio::test]
async fn cancelling_a_routed_task_on_its_origin_stops_its_agent_on_the_executor() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "slow").up();

    let id = alpha.add(&["cancel me", "--repo", &fleet.remote]);
    wait_for("beta to run the task", SLOW, async || {
        (local_state(&beta, &id).await? == "executing").then_some(())
    })
    .await;
    wait_for("beta's agent", SLOW, async || (!beta.home.agent_windows().is_empty()).then_some(()))
        .await;

    let out = alpha.home.run_ok(&["task", "cancel", &id[..8], "--reason", "not needed"]);
    assert!(out.contains("cancel requested"), "{out}");

    let cancelled = wait_for("beta to cancel its copy", SLOW, async || {
        let task = beta.local(&id).await?;
        (task["state"] == "cancelled").then_some(task)
    })
    .await;
    let reason = cancelled["log"].as_array().unwrap().last().unwrap()["reason"].clone();
    assert!(
        reason.as_str().unwrap().contains("the origin cancelled the routed task")
            && reason.as_str().unwrap().contains("not needed"),
        "{reason}"
    );
    wait_for("beta's agent to stop", SLOW, async || {
        beta.home.agent_windows().is_empty().then_some(())
    })
    .await;

    // The central and the origin say cancelled, on beta.
    assert_eq!(fleet.task(&id)["state"], "cancelled");
    assert_eq!(fleet.attempts(&id)[0].2.as_deref(), Some("cancelled"));
    let routed = wait_for("alpha to see it cancelled", SLOW, async || {
        let routed = alpha.routed(&id);
        (routed["central"]["state"] == "cancelled").then_some(routed)
    })
    .await;
    assert_eq!(routed["central"]["executing_name"], "beta", "{routed:#}");
    let shown = alpha.home.run_ok(&["task", "show", &id[..8]]);
    assert!(shown.contains("cancelled on beta") && shown.contains("not needed"), "{shown}");
    wait_for("beta's summary of the cancelled task at the central", SLOW, async || {
        (summary(&fleet, &id)? == ("beta".to_string(), "cancelled".to_string())).then_some(())
    })
    .await;
    let again = alpha.home.run(&["task", "cancel", &id[..8]]);
    assert!(!again.status.success(), "a second cancel is refused");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has ended (cancelled on beta)"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Retried on the origin, it runs again on beta.
    let out = alpha.home.run_ok(&["task", "retry", &id[..8]]);
    assert!(out.contains("retry requested"), "{out}");
    wait_for("beta to run the task again", SLOW, async || {
        (local_state(&beta, &id).await? == "executing").then_some(())
    })
    .await;
    assert_eq!(fleet.attempts(&id).len(), 2, "{:?}", fleet.attempts(&id));
}

/// Issue 27, item 2: `ccm task pin ID SYSTEM` on the origin moves a running routed task: the
/// system running it gives it up at its next heartbeat and the new pin runs it to the end,
/// without spending an attempt of the task's budget.
#[tokio::test]
async fn pinning_a_running_routed_task_elsewhere_moves_it_to_that_system() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "slow").up();
    let charlie = fleet.node(3, "charlie", true, "commit");

    let id = alpha.add(&["move me", "--repo", &fleet.remote, "--max-attempts", "1"]);
    wait_for("beta to run the task", SLOW, async || {
        (local_state(&beta, &id).await? == "executing").then_some(())
    })
    .await;
    let charlie = charlie.up();
    let refused = alpha.home.run(&["task", "pin", &id[..8]]);
    assert!(!refused.status.success(), "pin needs a system or --any");
    let unknown = alpha.home.run(&["task", "pin", &id[..8], "nosuch"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success(), "an unknown system is refused");
    assert!(
        stderr.contains("unknown system `nosuch`")
            && ["alpha", "beta", "charlie"].iter().all(|n| stderr.contains(n)),
        "{stderr}"
    );

    let out = alpha.home.run_ok(&["task", "pin", &id[..8], "charlie"]);
    assert!(out.contains("move to charlie requested"), "{out}");
    let moved = wait_for("beta to give the task up", SLOW, async || {
        let task = beta.local(&id).await?;
        (task["state"] == "cancelled").then_some(task)
    })
    .await;
    let reason = moved["log"].as_array().unwrap().last().unwrap()["reason"].clone();
    assert!(reason.as_str().unwrap().contains("moved to another system"), "{reason}");
    wait_for("charlie to complete it", SLOW, async || {
        (local_state(&charlie, &id).await? == "complete").then_some(())
    })
    .await;
    let attempts = wait_for("charlie's result at the central", SLOW, async || {
        let attempts = fleet.attempts(&id);
        attempts.get(1)?.2.is_some().then_some(attempts)
    })
    .await;
    assert_eq!(attempts[0].2.as_deref(), Some("repinned"), "{attempts:?}");
    assert_eq!((attempts[1].0.as_str(), attempts[1].2.as_deref()), ("charlie", Some("done")));
    assert!(beta.home.agent_windows().is_empty(), "beta's agent stopped");
    wait_for("alpha to see it done", SLOW, async || {
        (alpha.routed(&id)["central"]["state"] == "done").then_some(())
    })
    .await;
    let shown = alpha.home.run_ok(&["task", "show", &id[..8]]);
    assert!(
        shown.contains("pinned    charlie") && shown.contains("complete on charlie"),
        "{shown}"
    );
}

/// The unroutable alerts of `ccm alerts --json` (open ones, or all with `all`) about routed
/// task `id`.
fn unroutable_alerts(node: &Node, id: &str, all: bool) -> Vec<Value> {
    let args: &[&str] = if all { &["alerts", "--all"] } else { &["alerts"] };
    let alerts = node.home.run_json(args);
    alerts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "unroutable" && a["details"]["routed_task"] == id)
        .cloned()
        .collect()
}

/// Issue 27, item 4: the origin shows the history of its routed task as it observed it (when,
/// from which state to which, on which system, why), and while no system has the task's
/// repository it raises the `unroutable` alert itself (so its notifiers fire), resolved once a
/// system with a checkout takes the task.
#[tokio::test]
async fn the_origin_logs_its_routed_tasks_changes_and_alerts_while_no_system_has_its_repository() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    let other = fleet.remote.replace("app.git", "lib.git");
    git(
        fleet.dir.path(),
        &["clone", "-q", "--bare", &fleet.remote, other.trim_start_matches("file://")],
    );

    let id = alpha.add(&["work on lib", "--repo", &other]);
    let alert = wait_for("the unroutable alert on the origin", SLOW, async || {
        unroutable_alerts(&alpha, &id, false).into_iter().next()
    })
    .await;
    let message = alert["message"].as_str().unwrap();
    assert!(message.contains("no system of the fleet has a checkout of"), "{alert}");
    let shown = alpha.home.run_ok(&["task", "show", &id]);
    assert!(shown.contains("waiting   no_context (no system of the fleet has"), "{shown}");

    // beta gets a checkout of lib: it takes the task, and the alert is resolved.
    let clone = beta.home.work().join("lib");
    git(&beta.home.work(), &["clone", "-q", &other, clone.to_str().unwrap()]);
    git(&clone, &["config", "user.email", "test@example.com"]);
    git(&clone, &["config", "user.name", "ccm test"]);
    beta.home.run_ok(&["context", "add", clone.to_str().unwrap()]);
    wait_for("alpha to see it done", SLOW, async || {
        (alpha.routed(&id)["central"]["state"] == "done").then_some(())
    })
    .await;
    wait_for("the origin's unroutable alert to be resolved", SLOW, async || {
        unroutable_alerts(&alpha, &id, false).is_empty().then_some(())
    })
    .await;
    assert_eq!(unroutable_alerts(&alpha, &id, true).len(), 1, "one alert, raised once");

    let log = alpha.routed(&id)["log"].as_array().cloned().unwrap_or_default();
    let first = log.first().expect("a log");
    assert_eq!((first["from"].clone(), first["to"].clone()), (Value::Null, "waiting_sync".into()));
    assert!(log.iter().any(|e| e["to"] == "queued" && e["reason"] == "no_context"), "{log:#?}");
    let last = log.last().unwrap();
    assert_eq!((last["to"].as_str(), last["system"].as_str()), (Some("complete"), Some("beta")));
    assert_ne!(last["from"], "complete", "{log:#?}");
    assert!(log.iter().all(|e| e["at"].is_string()), "{log:#?}");
    let shown = alpha.home.run_ok(&["task", "show", &id]);
    assert!(shown.contains("log (as this system saw it):"), "{shown}");
    assert!(shown.contains("-> complete on beta"), "{shown}");
    assert!(shown.contains("waiting_sync -> queued"), "{shown}");
}

/// The presence and reason `ccm systems --json` on `node` gives system `name`.
fn presence_of(node: &Node, name: &str) -> (Value, Value) {
    let systems = node.home.run_json(&["systems"]);
    let row = systems.as_array().unwrap().iter().find(|s| s["name"] == name).cloned();
    let row = row.unwrap_or_else(|| panic!("{name} listed: {systems:#}"));
    (row["presence"].clone(), row["reason"].clone())
}

/// Issue 27, item 4: while its operator pauses sync, a system goes on saying so in its
/// heartbeat: the other systems see it `sync_paused`, not `stale_heartbeat`, for as long as the
/// pause lasts, and online again once it is resumed.
#[tokio::test]
async fn a_system_paused_by_its_operator_is_seen_as_sync_paused_not_as_a_stale_heartbeat() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    wait_for("beta online", SLOW, async || {
        (presence_of(&alpha, "beta").0 == "online").then_some(())
    })
    .await;

    let out = beta.home.run_ok(&["sync", "pause"]);
    assert!(out.contains("sync paused"), "{out}");
    wait_for("beta seen as sync_paused", SLOW, async || {
        (presence_of(&alpha, "beta").1 == "sync_paused").then_some(())
    })
    .await;
    // Well past the central's stale_after_s (3 s here): still sync_paused.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(presence_of(&alpha, "beta").1, "sync_paused");

    beta.home.run_ok(&["sync", "resume"]);
    wait_for("beta online again", SLOW, async || {
        (presence_of(&alpha, "beta") == ("online".into(), Value::Null)).then_some(())
    })
    .await;
}

/// Issue 27, item 4: a system that finished a routed task but could not report it before its
/// lease ran out (its `complete` calls cut off) shows its copy as stale once the central
/// refuses the late result, naming the system the task went to: `task show` and `task list`
/// (text and `--json`) mark it, and the daemon's log says it.
#[tokio::test]
async fn a_result_reported_after_the_lease_went_elsewhere_is_shown_as_discarded_naming_the_holder()
{
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    let charlie = fleet.node(3, "charlie", true, "commit");

    let id = alpha.add(&["finish while cut off", "--repo", &fleet.remote]);
    wait_for("beta to run the task", SLOW, async || {
        (local_state(&beta, &id).await? == "executing").then_some(())
    })
    .await;
    // beta's result cannot reach the central; it takes no new work (so the task goes to
    // charlie once beta's lease runs out).
    beta.proxy.set_target("rpc/complete");
    beta.proxy.set_random(Some((1.0, Fault::Reset)), 5);
    alpha.home.run_ok(&["systems", "drain", "beta"]);
    let _charlie = charlie.up();
    wait_for("beta to finish the task", SLOW, async || {
        (local_state(&beta, &id).await? == "complete").then_some(())
    })
    .await;
    wait_for("charlie's result at the central", SLOW, async || {
        let attempts = fleet.attempts(&id);
        (attempts.get(1)?.0 == "charlie" && attempts[1].2.as_deref() == Some("done")).then_some(())
    })
    .await;

    beta.proxy.set_random(None, 5);
    let detail = wait_for("beta to mark its copy stale", SLOW, async || {
        let task = beta.local(&id).await?;
        task["stale"].is_string().then_some(task)
    })
    .await;
    assert_eq!(detail["state"], "complete", "its own outcome is kept");
    assert_eq!(detail["stale"], "result discarded: lease lost to charlie", "{detail}");
    let shown = beta.home.run_ok(&["task", "show", &id]);
    assert!(shown.contains("complete (stale)"), "{shown}");
    assert!(shown.contains("stale     result discarded: lease lost to charlie"), "{shown}");
    let listed = beta.home.run_ok(&["task", "list"]);
    assert!(listed.contains("complete (stale)"), "{listed}");
    let listed = beta.home.run_json(&["task", "list"]);
    let row = listed.as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap();
    assert_eq!(row["stale"], "result discarded: lease lost to charlie", "{listed}");
    assert!(beta.log().contains("the lease was lost to charlie"), "{}", beta.log());
    assert_eq!(fleet.task(&id)["executing"], "charlie");
}
