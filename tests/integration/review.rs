//! Review with line comments (issue 23, acceptance 7): comments on lines of a finished task's
//! diff, "request changes" (the next attempt's prompt carries them), then "land", from the
//! dashboard in a real headless Chromium and from the CLI; real git, the real daemon and the
//! scripted agent (`tests/fixtures/fake-claude.sh`, mode `commit`: each attempt appends
//! "attempt N" to `work.txt` and commits).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::browser::Browser;
use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(90);
/// The third line of `work.txt`: one word far wider than a phone, which the diff must wrap.
const LONG: &str = "three-0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";

/// A home with the scripted `commit` agent as profile `fake`, and a registered checkout whose
/// `work.txt` has three lines on `main` and whose project configuration has `land:` (manual).
fn setup(name: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh");
    home.write_config(&format!(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\n\
         profiles:\n  fake:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: commit}}\n",
        fake.display()
    ));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    std::fs::write(repo.join("work.txt"), format!("one\ntwo\n{LONG}\n")).unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    git(&repo, &["add", "work.txt"]);
    git(&repo, &["commit", "-q", "-m", "three lines"]);
    std::fs::create_dir_all(Path::new(&repo).join(".ccm")).unwrap();
    std::fs::write(Path::new(&repo).join(".ccm/config.yaml"), "land:\n  auto: false\n").unwrap();
    // The project's configuration is the operator's, not part of the history under test.
    std::fs::write(Path::new(&repo).join(".git/info/exclude"), ".ccm/\n").unwrap();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

fn git(repo: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn add_task(home: &TestHome, repo: &str) -> String {
    let args = ["task", "add", "Extend work.txt", "--profile", "fake", "--repo", repo];
    home.run_json(&args)["id"].as_str().unwrap().to_string()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

/// Waits until `check` holds for the task's detail, failing with it and the daemon's log.
async fn wait_task(daemon: &Daemon, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let reached = wait_until(SLOW, || async { check(&task(daemon, id).await) }).await;
    let detail = task(daemon, id).await;
    assert!(reached, "task never reached {what}: {detail:#}\n{}", daemon.log_text());
    detail
}

/// Waits for the second attempt to have begun and returns its prompt.
async fn second_prompt(daemon: &Daemon, id: &str) -> String {
    let detail = wait_task(daemon, id, "a second attempt", |d| {
        d["runs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    detail["runs"][1]["prompt"].as_str().unwrap().to_string()
}

fn shots(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots").join(test)
}

/// Comments on line `line` of `work.txt` through the line's own form.
async fn comment(browser: &Browser, line: u32, text: &str) {
    let at = format!("[data-file=\"work.txt\"][data-line=\"{line}\"]");
    browser.click(&format!("{at} summary")).await;
    browser.type_into(&format!("{at} textarea"), text).await;
    browser.click(&format!("{at} button[type=submit]")).await;
    browser.wait_for_text(text, Duration::from_secs(10)).await;
}

/// Acceptance 7: on a phone-sized page, comments on two lines of the diff (a context line and
/// an added one) and "request changes" start an attempt whose prompt has both comments (file,
/// line, text), which is not counted as a failure; then "land" moves the target.
#[tokio::test]
async fn review_comments_on_two_lines_and_request_changes_start_an_attempt_with_both_comments_then_land_lands_it(
) {
    let (home, repo) = setup("review-dashboard");
    let daemon = home.start();
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();
    let id = add_task(&home, &repo);
    let first = wait_task(&daemon, &id, "complete", |d| d["state"] == "complete").await;
    let budget = first["max_attempts"].as_u64().unwrap();

    let browser = Browser::start(&shots("review"), 390, 844).await;
    browser.goto(home.run_ok(&["dashboard", "--print"]).trim()).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    browser.wait_for_text("Request changes", Duration::from_secs(10)).await;
    // The diff: work.txt's hunk with the three lines and the agent's added fourth.
    let shown = browser
        .eval("return Array.from(document.querySelectorAll('.dl')).map(e => e.getAttribute('data-line') + ' ' + e.querySelector('code').textContent)")
        .await;
    let third = format!("3  {LONG}");
    assert_eq!(shown, serde_json::json!(["1  one", "2  two", third, "4 +attempt 1"]));
    // Its long line wraps inside the page.
    assert!(!browser.overflows().await, "the review page is wider than a phone");
    browser.screenshot("diff").await;

    comment(&browser, 2, "Say why two stays").await;
    comment(&browser, 4, "Number the attempt in words").await;
    assert!(!browser.overflows().await, "the page with comments is wider than a phone");
    browser.screenshot("two-comments").await;
    // Readable in both schemes: every text of the page (the diff's coloured lines included)
    // has a contrast of at least 4.5:1.
    for scheme in ["dark", "light"] {
        browser.color_scheme(scheme).await;
        let low = browser.low_contrast(4.5).await;
        assert!(low.is_empty(), "{scheme} scheme: texts below 4.5:1: {low:#?}");
    }
    // They are stored: a reload still shows them, pending.
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    browser.wait_for_text("Number the attempt in words", Duration::from_secs(10)).await;
    let detail = task(&daemon, &id).await;
    let review = detail["review"].as_array().unwrap();
    assert_eq!(review.len(), 2, "{detail:#}");
    assert!(review.iter().all(|c| c["created_by"] == "dashboard" && c["requested_at"].is_null()));

    browser.click("#request-changes").await;
    let prompt = second_prompt(&daemon, &id).await;
    assert!(prompt.contains("- work.txt:2: Say why two stays"), "{prompt}");
    assert!(prompt.contains("- work.txt:4: Number the attempt in words"), "{prompt}");
    let done = wait_task(&daemon, &id, "complete again", |d| {
        d["state"] == "complete" && d["runs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    // Not counted as a failure: the budget grew by the attempt the review asked for, and the
    // log says who asked and for what.
    assert_eq!(done["max_attempts"].as_u64(), Some(budget + 1), "{done:#}");
    let asked = done["log"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["to_state"] == "created" && e["from_state"] == "complete");
    let asked = asked.unwrap_or_else(|| panic!("no review move in the log: {done:#}"));
    assert_eq!(asked["actor"], "dashboard");
    let reason = asked["reason"].as_str().unwrap();
    assert!(
        reason.contains(r#"2 comments: work.txt:2 "Say why two stays"; work.txt:4 "Number the attempt in words""#),
        "{asked}"
    );

    // The page shows the new diff; "land" lands it.
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    browser.wait_for_text("+attempt 2", Duration::from_secs(10)).await;
    browser.screenshot("after-changes").await;
    browser.click("#land").await;
    wait_task(&daemon, &id, "landed", |d| d["land_state"] == "landed").await;
    let head = git(&repo, &["rev-parse", "main"]).trim().to_string();
    assert_ne!(head, base, "the target moved");
    let landed = git(&repo, &["show", "main:work.txt"]);
    assert_eq!(landed, format!("one\ntwo\n{LONG}\nattempt 1\nattempt 2\n"));
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    browser.wait_for_text("landed", Duration::from_secs(10)).await;
    browser.screenshot("landed").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.client.close().await.unwrap();
}

/// `ccm task review`: a comment waits (across a restart of the daemon) until a later review
/// requests changes with another, here with no daemon running (the CLI writes the database
/// itself); both go to the next attempt's prompt once the daemon runs again.
#[tokio::test]
async fn task_review_from_the_cli_requests_changes_with_comments() {
    let (home, repo) = setup("review-cli");
    let mut daemon = home.start();
    let id = add_task(&home, &repo);
    wait_task(&daemon, &id, "complete", |d| d["state"] == "complete").await;
    let short = &id[..8];

    let out = home.run_ok(&["task", "review", short, "--comment", "work.txt:1", "Keep one first"]);
    assert!(out.contains(&format!("on work.txt:1 added to task {short}")), "{out}");
    let shown = home.run_ok(&["task", "show", short]);
    assert!(shown.contains("review    work.txt:1 (cli, pending): Keep one first"), "{shown}");

    daemon.terminate();
    let out = home.run_ok(&[
        "task",
        "review",
        short,
        "--comment",
        "work.txt:4",
        "-- dashes are text too",
        "--request-changes",
    ]);
    assert!(out.contains("changes requested: 2 comment(s) go to attempt 2"), "{out}");
    assert!(out.contains("it is created"), "{out}");
    let daemon = home.start();
    let prompt = second_prompt(&daemon, &id).await;
    assert!(prompt.contains("- work.txt:1: Keep one first"), "{prompt}");
    assert!(prompt.contains("- work.txt:4: -- dashes are text too"), "{prompt}");
    let done = wait_task(&daemon, &id, "complete again", |d| {
        d["state"] == "complete" && d["runs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert_eq!(done["runs"][1]["outcome"], "success", "{done:#}");
    let shown = home.run_ok(&["task", "show", short]);
    assert!(shown.contains("review    work.txt:4 (cli, sent to attempt 2)"), "{shown}");
}

/// A bad FILE:LINE is refused naming what is wrong, a line the diff does not show with the
/// lines it does, and "request changes" without a pending comment with what to do; nothing is
/// stored and the task stays complete.
#[tokio::test]
async fn task_review_refuses_a_bad_file_line_and_a_line_outside_the_diff() {
    let (home, repo) = setup("review-bad");
    let daemon = home.start();
    let id = add_task(&home, &repo);
    wait_task(&daemon, &id, "complete", |d| d["state"] == "complete").await;
    let short = &id[..8];
    let refused = |args: &[&str], needle: &str| {
        let mut all = vec!["task", "review", short];
        all.extend(args);
        let out = home.run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{all:?} was accepted");
        assert!(stderr.contains(needle), "{all:?}: {stderr}");
    };
    refused(&["--comment", "work.txt", "x"], "`work.txt` has no line number: write FILE:LINE");
    refused(&["--comment", "work.txt:two", "x"], "`two` is not a line number");
    refused(&["--comment", ":2", "x"], "has no file before the `:`");
    refused(&["--comment", "work.txt:0", "x"], "lines are counted from 1");
    refused(
        &["--comment", "work.txt:40", "x"],
        "work.txt:40 is outside the diff: the diff shows lines 1-4 of work.txt",
    );
    refused(&["--comment", "README.md:1", "x"], "README.md:1 is outside the diff: ccm/");
    refused(&["--request-changes"], "has no pending review comment");
    refused(&[], "nothing to do");
    let detail = task(&daemon, &id).await;
    assert_eq!(detail["state"], "complete");
    assert!(detail.get("review").is_none(), "{detail:#}");
    // The API answers the same refusal as a 400 naming it.
    let (status, body) = daemon
        .post(
            &format!("/api/tasks/{id}/review"),
            serde_json::json!({"comments": [{"file": "work.txt", "line": 9, "text": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("work.txt:9 is outside the diff"),
        "{body}"
    );
}

/// The review's "discard" button drops the finished task's work, as `ccm task discard` does:
/// the review closes (no more buttons) and the task no longer lands.
#[tokio::test]
async fn discard_button_of_the_review_drops_the_work_and_closes_the_review() {
    let (home, repo) = setup("review-discard");
    let daemon = home.start();
    let id = add_task(&home, &repo);
    wait_task(&daemon, &id, "complete", |d| d["state"] == "complete").await;

    let browser = Browser::start(&shots("review-discard"), 390, 844).await;
    browser.goto(home.run_ok(&["dashboard", "--print"]).trim()).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    browser.wait_for_text("Request changes", Duration::from_secs(10)).await;
    browser.click("#discard").await;
    let detail =
        wait_task(&daemon, &id, "discarded", |d| d["discarded"]["reason"].is_string()).await;
    assert_eq!(detail["discarded"]["reason"], "discarded from the dashboard");
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    browser.wait_for_text("Extend work.txt", Duration::from_secs(10)).await;
    let buttons = browser.eval("return document.querySelectorAll('#review button').length").await;
    assert_eq!(buttons, 0, "{}", browser.text().await);
    browser.screenshot("discarded").await;
    let out = home.run(&["land", &id[..8]]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was discarded"), "{stderr}");
    // Nor is it reviewed any more.
    let out = home.run(&["task", "review", &id[..8], "--comment", "work.txt:4", "late"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a comment on discarded work was taken");
    assert!(stderr.contains("was discarded: its work is not reviewed"), "{stderr}");
    browser.client.close().await.unwrap();
}
