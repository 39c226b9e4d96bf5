//! The dashboard's fleet view (issue 26, "One fleet") in a real headless Chromium, on node
//! alpha of a fleet of real nodes (`ccm_tests::fleet`: homes, daemons, tmux servers, git
//! checkouts cloned from one bare remote) against a real PostgreSQL 15 behind postrust. The
//! agents are the scripted Claude Code of `tests/fixtures/fake-claude.sh`. Each test keeps a
//! screenshot of each page it checks under `target/tmp/dashboard-screenshots/<test>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::browser::Browser;
use ccm_tests::fleet::{wait_for, Fleet, Node, NodeOptions, OWNER};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(60);

fn shots(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots").join(test)
}

/// Signs the browser in on `node`'s dashboard and waits for the overview.
async fn sign_in(node: &Node, browser: &Browser) {
    let link = node.home.run_ok(&["dashboard", "--print"]).trim().to_string();
    browser.goto(&link).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
}

/// Marks the page; [`still_same_page`] then tells whether it was reloaded since.
async fn mark_page(browser: &Browser) {
    browser.eval("window.__ccmMark = 'kept'; return true").await;
}

async fn still_same_page(browser: &Browser) -> bool {
    browser.eval("return window.__ccmMark === 'kept'").await == Value::Bool(true)
}

/// `(column, system the card says it runs on)` of task `id` on the board, if it is there.
async fn card(browser: &Browser, id: &str) -> Option<(String, String)> {
    let script = format!(
        "var c = document.querySelector('[data-task=\"{id}\"]'); \
         return c ? [c.closest('[data-state]').getAttribute('data-state'), \
                     c.getAttribute('data-system') || ''] : null"
    );
    let found = browser.eval(&script).await;
    let pair = found.as_array()?;
    Some((pair[0].as_str()?.to_string(), pair[1].as_str()?.to_string()))
}

/// The presence the overview's fleet table shows for each system, by name.
async fn presences(browser: &Browser) -> Vec<(String, String)> {
    let script = "return Array.from(document.querySelectorAll('#fleet tr[data-system]')).map(\
                  r => [r.getAttribute('data-system'), \
                        r.querySelector('[data-presence]').getAttribute('data-presence')])";
    browser
        .eval(script)
        .await
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (p[0].as_str().unwrap_or_default().into(), p[1].as_str().unwrap_or_default().into())
        })
        .collect()
}

/// Whether the central holds the summary of task `id` (its system's sync sent it).
fn central_has_task(fleet: &Fleet, id: &str) -> bool {
    let count = fleet
        .central
        .pg
        .query(&format!("select count(*) from private.task_summaries where task_id = '{id}'"));
    count != "0"
}

/// Acceptance 1: with three nodes enrolled, the overview on alpha shows all three with their
/// presence; the board shows a task routed from alpha running on beta and moving to
/// `complete` without a reload; a task of charlie (not routed from alpha) is not there until
/// an operator signs in on alpha (`ccm sync operator`), then it appears, live too.
#[tokio::test]
async fn the_overview_shows_every_enrolled_system_and_the_board_shows_a_routed_task_move_to_complete_live(
) {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta_options = NodeOptions { delay_s: 3, ..NodeOptions::new("commit") };
    let beta = fleet.node_with(2, "beta", true, &beta_options).up();
    let charlie = fleet.node(3, "charlie", false, "commit").up();
    let shots = shots("fleet-board");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&alpha, &browser).await;

    // The overview: every enrolled system, each online.
    let online = "return Array.from(document.querySelectorAll('#fleet tr[data-system]'))\
                  .filter(r => r.querySelector('[data-presence=\"online\"]')).length === 3";
    browser.wait_for("three systems online on the overview", SLOW, online).await;
    let shown = presences(&browser).await;
    let names: Vec<&str> = shown.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "charlie"], "{shown:?}");
    assert!(
        browser.text().await.contains("Fleet: live from the central"),
        "{}",
        browser.text().await
    );
    browser.screenshot("overview").await;

    // The board follows a task routed from alpha to beta, live.
    browser.goto(&alpha.daemon().url("/tasks")).await;
    mark_page(&browser).await;
    let id = alpha.add(&["fix the bug", "--repo", &fleet.remote]);
    let seen = wait_for("the board to show the task on beta", SLOW, async || {
        card(&browser, &id).await.filter(|(_, system)| system == "beta")
    })
    .await;
    browser.screenshot("routed-on-beta").await;
    assert_ne!(seen.0, "complete", "seen on beta before it ended: {seen:?}");
    wait_for("the routed task's card to reach complete", SLOW, async || {
        card(&browser, &id).await.filter(|(column, _)| column == "complete")
    })
    .await;
    assert!(still_same_page(&browser).await, "the board changed without a reload");
    browser.screenshot("routed-complete").await;
    let on_beta = beta.local(&id).await.expect("beta ran it");
    assert_eq!(on_beta["state"], "complete", "{}", beta.log());

    // A task of charlie's own reaches the central, but alpha's identity reads only its rows.
    let theirs = charlie.add(&["charlie's own work"]);
    wait_for("charlie's task at the central", SLOW, async || {
        central_has_task(&fleet, &theirs).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(card(&browser, &theirs).await, None, "without an operator, only alpha's view");

    // An operator signs in on alpha: every task of the fleet, without a reload.
    let out =
        alpha.home.run_ok(&["sync", "operator", "--jwt", &fleet.central.operator_token(OWNER)]);
    assert!(out.contains("operator signed in"), "{out}");
    let (_, system) =
        wait_for("charlie's task on alpha's board", SLOW, async || card(&browser, &theirs).await)
            .await;
    assert_eq!(system, "charlie");
    assert!(still_same_page(&browser).await, "it appeared without a reload");
    let auth: Value = serde_json::from_slice(
        &std::fs::read(alpha.home.home().join("auth.json")).expect("auth.json"),
    )
    .expect("auth.json is JSON");
    assert_ne!(
        auth["operator"]["access_token"], auth["sync"]["access_token"],
        "the operator's session is kept apart from the system's"
    );
    browser.screenshot("operator-view").await;
}

/// Acceptance 2: on alpha (no checkout), the form offers the fleet's repositories; a task for
/// the repository only beta holds says it will run on beta, and it does: its page follows it
/// there to `complete`.
#[tokio::test]
async fn creating_a_task_for_a_repository_only_node_b_holds_says_it_runs_on_b_and_it_does() {
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", false, "commit").up();
    let beta = fleet.node(2, "beta", true, "commit").up();
    let _charlie = fleet.node(3, "charlie", false, "commit").up();
    let shots = shots("fleet-form");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&alpha, &browser).await;

    // The form lists the repository of beta's checkout, with where it is.
    let option = "return Array.from(document.querySelectorAll('select[name=repo] option'))\
                  .some(o => o.textContent.includes('(on beta)'))";
    wait_for("the form to offer beta's repository", SLOW, async || {
        browser.goto(&alpha.daemon().url("/tasks/new")).await;
        (browser.eval(option).await == Value::Bool(true)).then_some(())
    })
    .await;
    browser.screenshot("new-task").await;
    let form = browser.client.form(fantoccini::Locator::Css("form.stack")).await.unwrap();
    form.set_by_name("title", "Greet from beta").await.unwrap();
    browser
        .eval(
            "var r = document.querySelector('select[name=repo]'); \
             r.value = Array.from(r.options).find(o => o.textContent.includes('(on beta)')).value; \
             document.querySelector('select[name=profile]').value = 'fake'; return true",
        )
        .await;
    form.submit().await.unwrap();
    browser.wait_for_text("Greet from beta", Duration::from_secs(10)).await;
    let placement = browser.text().await;
    assert!(placement.contains("it will run on beta"), "{placement}");
    assert!(placement.contains("no checkout of"), "the answer says why: {placement}");
    browser.screenshot("routed-answer").await;
    let url = browser.client.current_url().await.unwrap();
    let id = url.path().trim_start_matches("/routed/").to_string();
    mark_page(&browser).await;

    // And it does: the page follows it to complete on beta.
    browser
        .wait_for(
            "the routed task complete on beta",
            SLOW,
            "return document.getElementById('task-state').textContent === 'complete' && \
             document.getElementById('task-system').textContent.trim() === 'beta'",
        )
        .await;
    assert!(still_same_page(&browser).await, "followed without a reload");
    browser.screenshot("routed-complete").await;
    let on_beta = beta.local(&id).await.expect("beta ran it");
    assert_eq!(on_beta["state"], "complete", "{}", beta.log());
    assert_eq!(on_beta["title"], "Greet from beta");
    assert!(alpha.local(&id).await.is_none(), "alpha only routed it");
    let cost = browser.eval("return document.getElementById('task-cost').textContent").await;
    assert!(cost.as_str().is_some_and(|c| c.starts_with('$')), "the cost travels back: {cost}");
}

/// Acceptance 5: with postrust stopped, alpha's systems page says the central is unreachable
/// and still shows the last known systems with the state's age; once it runs again the page
/// is live again, without a reload. Before that, it shows each system's presence, slots,
/// heartbeat, repositories and health (disk, load, backlog) from the central.
#[tokio::test]
async fn with_the_central_stopped_the_systems_page_says_unreachable_with_the_last_state_and_its_age_and_recovers_without_reload(
) {
    let mut fleet = Fleet::start();
    // Health snapshots every second, so the systems page has disk, load and backlog to show.
    let with_health = |node: Node| {
        let file = node.home.home().join("config.yaml");
        let config = std::fs::read_to_string(&file).expect("the node's config");
        node.home.write_config(&config.replace("sync:\n", "sync:\n  health_secs: 1\n"));
        node.up()
    };
    let alpha = with_health(fleet.node(1, "alpha", false, "commit"));
    let _beta = with_health(fleet.node(2, "beta", true, "commit"));
    let shots = shots("fleet-unreachable");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&alpha, &browser).await;
    browser.goto(&alpha.daemon().url("/systems")).await;
    let both = "return document.querySelectorAll('article[data-system]').length === 2 && \
                document.getElementById('sync-status').textContent.includes('live from the central')";
    browser.wait_for("both systems, live", SLOW, both).await;
    let health = "return Array.from(document.querySelectorAll('article[data-system]')).every(a => \
                  !a.textContent.includes('no health snapshot yet'))";
    browser.wait_for("each system's health", SLOW, health).await;
    let text = browser.text().await;
    assert!(text.contains("Last heartbeat") && text.contains("Load"), "{text}");
    browser.screenshot("live").await;
    mark_page(&browser).await;
    fleet.central.stop_rest();
    browser
        .wait_for(
            "the page to say the central is unreachable",
            SLOW,
            "return document.getElementById('sync-status').textContent.includes('unreachable')",
        )
        .await;
    let status = browser
        .eval("return document.getElementById('sync-status').textContent")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(status.contains("showing the last known fleet state, from"), "{status}");
    assert!(status.contains("s ago"), "its age: {status}");
    let systems = browser
        .eval("return Array.from(document.querySelectorAll('article[data-system]')).map(a => a.getAttribute('data-system'))")
        .await;
    assert_eq!(systems, serde_json::json!(["alpha", "beta"]), "the last known state stays");
    browser.screenshot("unreachable").await;

    fleet.central.start_rest();
    browser
        .wait_for(
            "the page to be live again",
            SLOW,
            "return document.getElementById('sync-status').textContent.includes('live from the central')",
        )
        .await;
    assert!(still_same_page(&browser).await, "it came back without a reload");
    browser.screenshot("recovered").await;
}
