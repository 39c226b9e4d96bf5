//! The web dashboard in a real headless Chromium (WebDriver), against a real daemon whose tasks
//! are run by the scripted agent (`tests/fixtures/fake-claude.sh`). Each test keeps a
//! screenshot of each page it visits under `target/tmp/dashboard-screenshots/<test>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::browser::Browser;
use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(60);
const PAGES: [&str; 7] =
    ["/", "/tasks", "/tasks/new", "/decisions", "/agents", "/alerts", "/systems"];

fn shots(test: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots").join(test)
}

/// A home with fake agent profiles `(name, FAKE_MODE, extra env)`, instant retries, `extra`
/// YAML, and a git repository registered as a context (its path is returned).
fn setup(name: &str, profiles: &[(&str, &str, &str)], extra: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh");
    let mut yaml = String::from(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\nprofiles:\n",
    );
    for (profile, mode, env) in profiles {
        yaml.push_str(&format!(
            "  {profile}:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: {mode}{env}}}\n",
            fake.display()
        ));
    }
    yaml.push_str(extra);
    home.write_config(&yaml);
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

fn sign_in_link(home: &TestHome) -> String {
    home.run_ok(&["dashboard", "--print"]).trim().to_string()
}

/// Opens the one-time link and waits for the overview.
async fn sign_in(home: &TestHome, browser: &Browser) {
    browser.goto(&sign_in_link(home)).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
}

fn add_task(home: &TestHome, args: &[&str]) -> String {
    let mut all = vec!["task", "add"];
    all.extend(args);
    home.run_json(&all)["id"].as_str().unwrap().to_string()
}

async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let task = |id: String| async move { daemon.get(&format!("/api/tasks/{id}")).await.1 };
    let reached = wait_until(SLOW, || async { task(id.to_string()).await["state"] == state }).await;
    let detail = task(id.to_string()).await;
    assert!(reached, "task never reached {state}: {detail:#}\n{}", daemon.log_text());
    detail
}

/// Marks the page; [`still_same_page`] then tells whether it was reloaded since.
async fn mark_page(browser: &Browser) {
    browser.eval("window.__ccmMark = 'kept'; return true").await;
}

async fn still_same_page(browser: &Browser) -> bool {
    browser.eval("return window.__ccmMark === 'kept'").await == Value::Bool(true)
}

/// The state column the board shows task `id` in.
async fn board_column(browser: &Browser, id: &str) -> Option<String> {
    let script = format!(
        "var c = document.querySelector('[data-task=\"{id}\"]'); \
         return c ? c.closest('[data-state]').getAttribute('data-state') : null"
    );
    browser.eval(&script).await.as_str().map(str::to_string)
}

/// A web server on another origin (another port of 127.0.0.1) serving one page.
async fn serve_other_origin(page: String) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/")
}

async fn task_titles(daemon: &Daemon) -> Vec<String> {
    let tasks = daemon.get("/api/tasks").await.1;
    tasks.as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap().to_string()).collect()
}

/// Acceptance 1: the link signs in once; without the cookie every page and the event stream
/// answer 401; a page of another origin (which the browser does send the cookie from: same
/// site, other port) can neither read the dashboard nor post its forms; `--revoke` signs out.
#[tokio::test]
async fn sign_in_link_works_once_and_other_origins_can_neither_read_nor_post() {
    let home = TestHome::new("dash-signin");
    let daemon = home.start();
    let id = add_task(&home, &["existing task"]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let task_page = format!("/tasks/{id}");
    for path in PAGES.iter().copied().chain(["/events", task_page.as_str()]) {
        let status = http.get(daemon.url(path)).send().await.unwrap().status();
        assert_eq!(status, 401, "{path} without a sign-in");
    }

    let shots = shots("signin");
    let browser = Browser::start(&shots, 1280, 900).await;
    let link = sign_in_link(&home);
    browser.goto(&link).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
    let url = browser.client.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/", None), "signed in at a clean URL");
    browser.screenshot("overview").await;

    // The link is spent: another browser cannot use it.
    let other = Browser::start(&shots, 1280, 900).await;
    other.goto(&link).await;
    assert!(other.text().await.contains("used already or has expired"), "{}", other.text().await);
    other.goto(&daemon.url("/")).await;
    assert!(other.text().await.contains("Not signed in"));
    other.screenshot("link-reused").await;
    other.client.close().await.unwrap();

    // The cookie is HttpOnly and SameSite=Strict; with it, a form still needs the CSRF token
    // and an Origin.
    let cookie = browser.client.get_all_cookies().await.unwrap().remove(0);
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert!(browser.eval("return document.cookie").await == "", "scripts cannot see the cookie");
    let cookie = format!("{}={}", cookie.name(), cookie.value());
    let origin = daemon.url("");
    let post = |headers: Vec<(&'static str, String)>, csrf: &str| {
        let mut request = http.post(daemon.url("/tasks")).header("cookie", &cookie);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.form(&[("title", "forged by a script"), ("csrf", csrf)]).send()
    };
    assert_eq!(post(vec![("origin", origin.clone())], "guessed").await.unwrap().status(), 403);
    let csrf = browser
        .eval("return document.querySelector('input[name=csrf]').value")
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(post(vec![], &csrf).await.unwrap().status(), 403, "no Origin");
    let evil = "http://127.0.0.1:9".to_string();
    assert_eq!(post(vec![("origin", evil)], &csrf).await.unwrap().status(), 403, "other Origin");

    // A page of another origin tries to read the board and to post the new-task form.
    let addr = &daemon.addr;
    let attack = serve_other_origin(format!(
        r#"<!doctype html><title>attack</title><p id="read">pending</p>
        <iframe name="sink"></iframe>
        <form id="f" method="post" action="http://{addr}/tasks" target="sink">
          <input name="title" value="forged by another site"><input name="csrf" value="{csrf_guess}">
        </form>
        <script>
          fetch("http://{addr}/tasks", {{credentials: "include"}})
            .then(function (r) {{ return r.text(); }})
            .then(function (t) {{ document.getElementById("read").textContent = "read " + t.length; }},
                  function () {{ document.getElementById("read").textContent = "blocked"; }});
          fetch("http://{addr}/tasks", {{method: "POST", mode: "no-cors", credentials: "include",
                 body: new URLSearchParams({{title: "forged by fetch", csrf: "x"}})}});
          document.getElementById("f").submit();
        </script>"#,
        csrf_guess = "0".repeat(64),
    ))
    .await;
    browser.goto(&attack).await;
    browser
        .wait_for(
            "the cross-origin read to end",
            Duration::from_secs(10),
            "return document.getElementById('read').textContent !== 'pending'",
        )
        .await;
    assert_eq!(browser.eval("return document.getElementById('read').textContent").await, "blocked");
    tokio::time::sleep(Duration::from_millis(500)).await;
    browser.screenshot("other-origin").await;
    assert_eq!(task_titles(&daemon).await, ["existing task"], "no forged task");

    // The sign-in still works for the dashboard itself, until it is revoked.
    browser.goto(&daemon.url("/tasks")).await;
    browser.wait_for_text("existing task", Duration::from_secs(10)).await;
    assert!(home.run_ok(&["dashboard", "--revoke"]).contains("signed out 1"));
    browser.goto(&daemon.url("/tasks")).await;
    assert!(browser.text().await.contains("Not signed in"));
    browser.client.close().await.unwrap();
}

/// A sign-in ends after `daemon.dashboard_session_secs`; `--revoke` without a daemon signs out
/// the sessions a restarted daemon would otherwise keep.
#[tokio::test]
async fn sign_in_expires_and_revoke_works_without_the_daemon() {
    let home = TestHome::new("dash-expiry");
    // No kept connections: the daemon restarts on the same port.
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
    let sign_in = |daemon_url: String| {
        let http = http.clone();
        async move {
            let response = http.get(daemon_url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
            assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
            cookie.split(';').next().unwrap().to_string()
        }
    };
    let page = |url: String, cookie: String| {
        let http = http.clone();
        async move { http.get(url).header("cookie", cookie).send().await.unwrap().status() }
    };

    let mut daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__DASHBOARD_SESSION_SECS", "1");
    });
    let cookie = sign_in(sign_in_link(&home)).await;
    assert_eq!(page(daemon.url("/tasks"), cookie.clone()).await, 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(page(daemon.url("/tasks"), cookie).await, 401, "expired");
    daemon.terminate();

    let daemon = home.start();
    let cookie = sign_in(sign_in_link(&home)).await;
    let port = daemon.addr.rsplit(':').next().unwrap().to_string();
    let mut daemon = daemon;
    daemon.terminate();
    // The sign-in survives a restart of the daemon, unless revoked meanwhile.
    let restarted = home.start_with(|c| {
        c.env("CCM_DAEMON__PORT", &port);
    });
    assert_eq!(page(restarted.url("/"), cookie.clone()).await, 200, "kept across a restart");
    let mut restarted = restarted;
    restarted.terminate();
    assert!(home.run_ok(&["dashboard", "--revoke"]).contains("signed out"));
    let again = home.start_with(|c| {
        c.env("CCM_DAEMON__PORT", &port);
    });
    assert_eq!(page(again.url("/"), cookie).await, 401, "revoked while the daemon was down");
}

/// Profile `minimal` serves the API only.
#[tokio::test]
async fn minimal_profile_serves_no_dashboard() {
    let home = TestHome::new("dash-minimal");
    let daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__PROFILE", "minimal");
    });
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for path in ["/", "/tasks", "/events", "/assets/app.js"] {
        assert_eq!(http.get(daemon.url(path)).send().await.unwrap().status(), 404, "{path}");
    }
    let out = home
        .ccm()
        .args(["dashboard", "--print"])
        .env("CCM_DAEMON__PROFILE", "minimal")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("daemon.profile `full`"));
    // The CLI's own configuration says `full`, the running daemon serves `minimal`.
    let out = home.ccm().args(["dashboard", "--print"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the dashboard is off"), "{stderr}");
    assert!(!stderr.contains("no such route"), "{stderr}");
}

/// Acceptance 2: a task created with the form shows up on the board and moves to `complete`
/// without a reload; its page follows the output, the hook timeline and the report live.
#[tokio::test]
async fn task_created_from_the_form_runs_to_complete_live_with_output_hooks_and_report() {
    let (home, _repo) = setup("dash-form", &[("fake", "commit", ", FAKE_DELAY: 3")], "");
    let daemon = home.start();
    let shots = shots("form");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&home, &browser).await;

    browser.goto(&daemon.url("/tasks/new")).await;
    browser.screenshot("new-task").await;
    let form = browser.client.form(fantoccini::Locator::Css("form.stack")).await.unwrap();
    form.set_by_name("title", "Write the greeting").await.unwrap();
    form.set_by_name("prompt", "Append a line to work.txt").await.unwrap();
    form.set_by_name("priority", "2").await.unwrap();
    browser
        .eval(
            "var r = document.querySelector('select[name=repo]'); r.selectedIndex = 1; \
             document.querySelector('select[name=profile]').value = 'fake'; return true",
        )
        .await;
    form.submit().await.unwrap();
    browser.wait_for_text("Write the greeting", Duration::from_secs(10)).await;
    let id = browser
        .client
        .current_url()
        .await
        .unwrap()
        .path()
        .trim_start_matches("/tasks/")
        .to_string();
    let detail = daemon.get(&format!("/api/tasks/{id}")).await.1;
    assert_eq!(detail["profile"], "fake", "{detail}");
    assert_eq!(detail["priority"], 2);
    assert!(detail["repo"].is_string(), "{detail}");
    mark_page(&browser).await;
    let detail_window = browser.client.window().await.unwrap();

    // The board, in a second tab, while the agent works.
    let board_window = browser.client.new_window(true).await.unwrap().handle;
    browser.client.switch_to_window(board_window).await.unwrap();
    browser.goto(&daemon.url("/tasks")).await;
    mark_page(&browser).await;
    let first = board_column(&browser, &id).await;
    assert!(
        matches!(first.as_deref(), Some("created" | "queued" | "executing")),
        "the new task is on the board, not done yet: {first:?}"
    );
    browser.screenshot("board-running").await;
    browser
        .wait_for(
            "the card to reach complete",
            SLOW,
            &format!("var c = document.querySelector('[data-task=\"{id}\"]'); return c !== null && c.closest('[data-state]').getAttribute('data-state') === 'complete'"),
        )
        .await;
    assert!(still_same_page(&browser).await, "the board was not reloaded");
    browser.screenshot("board-complete").await;

    // The task's page, open since its creation, followed along.
    browser.client.switch_to_window(detail_window).await.unwrap();
    browser
        .wait_for(
            "the task page to show complete with its report",
            SLOW,
            "return document.getElementById('task-state').textContent === 'complete' && document.querySelector('.report') !== null",
        )
        .await;
    assert!(still_same_page(&browser).await, "the task page was not reloaded");
    let text = browser.text().await;
    for expected in [
        "Working on it",
        "SessionStart",
        "PostToolUse",
        "Stop",
        "Done: wrote work.txt",
        "attempt 1",
        "$0.01",
    ] {
        assert!(text.contains(expected), "the task page lacks `{expected}`:\n{text}");
    }
    browser.screenshot("task-complete").await;
    browser.client.close().await.unwrap();
    wait_state(&daemon, &id, "complete").await;
}

/// Acceptance 3: a tool call waiting on an approval rule is allowed from the decisions page and
/// the agent goes on; a blocked task is retried from its page.
#[tokio::test]
async fn approval_is_given_from_the_decisions_page_and_a_blocked_task_is_retried_from_its_page() {
    let (home, repo) = setup(
        "dash-decide",
        &[("asker", "ask", ""), ("crasher", "crash-once", "")],
        "approvals:\n  timeout_secs: 120\n  default: deny\n  rules:\n    - tools: [Bash]\n      command: '^git push'\n",
    );
    let daemon = home.start();
    let shots = shots("decide");
    let browser = Browser::start(&shots, 390, 844).await;
    sign_in(&home, &browser).await;
    // An older decision (retry or cancel a blocked task) waits already.
    let crasher = add_task(
        &home,
        &["crash first", "--profile", "crasher", "--repo", &repo, "--max-attempts", "1"],
    );
    wait_state(&daemon, &crasher, "blocked").await;
    browser.goto(&daemon.url("/decisions")).await;
    mark_page(&browser).await;

    let asker = add_task(&home, &["push it", "--profile", "asker", "--repo", &repo]);
    browser.wait_for_text("git push origin main", SLOW).await;
    assert!(still_same_page(&browser).await, "the question appeared without a reload");
    browser.screenshot("decision-pending").await;
    // The approval comes first, with when it is answered by default.
    let first = browser
        .eval("return document.querySelector('.decision').innerText")
        .await
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.contains("git push origin main"), "the approval is not first: {first}");
    assert!(first.contains("Deadline: answered `deny` by default at"), "{first}");
    browser.click("button[data-answer=allow]").await;
    let detail = wait_state(&daemon, &asker, "complete").await;
    assert_eq!(detail["runs"][0]["outcome"], "success", "{detail}");
    let decisions = daemon.get("/api/decisions").await.1;
    let approval = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "approve_tool")
        .unwrap_or_else(|| panic!("no approval in {decisions:#}"));
    assert_eq!(approval["answer"], "allow");
    assert_eq!(approval["answered_by"], "dashboard");
    browser.screenshot("decision-answered").await;

    browser.goto(&daemon.url(&format!("/tasks/{crasher}"))).await;
    mark_page(&browser).await;
    browser.screenshot("task-blocked").await;
    browser.click("form:has(input[value=retry]) button").await;
    let detail = wait_state(&daemon, &crasher, "complete").await;
    let retried = detail["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from_state"] == "blocked" && e["actor"] == "dashboard");
    assert!(retried, "retried by the dashboard: {detail:#}");
    browser
        .wait_for(
            "the task page to show complete",
            SLOW,
            "return document.getElementById('task-state').textContent === 'complete'",
        )
        .await;
    browser.screenshot("task-retried").await;
    browser.client.close().await.unwrap();
}

/// Acceptance 4: after `kill -9` and a restart of the daemon, an open page reconnects and shows
/// what changed while the daemon was down.
#[tokio::test]
async fn an_open_page_reconnects_after_kill_9_and_shows_what_it_missed() {
    let home = TestHome::new("dash-restart");
    let mut daemon = home.start();
    let port = daemon.addr.rsplit(':').next().unwrap().to_string();
    let shots = shots("restart");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&home, &browser).await;
    browser.goto(&daemon.url("/tasks")).await;
    browser.wait_for_text("live", Duration::from_secs(10)).await;
    mark_page(&browser).await;

    add_task(&home, &["before the crash"]);
    browser.wait_for_text("before the crash", Duration::from_secs(10)).await;

    daemon.kill9();
    browser
        .wait_for(
            "the page to notice the lost connection",
            Duration::from_secs(10),
            "return document.getElementById('live-status').textContent.indexOf('reconnecting') === 0",
        )
        .await;
    browser.screenshot("daemon-down").await;
    add_task(&home, &["while the daemon was down"]); // written to SQLite directly

    let _daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__PORT", &port);
    });
    browser.wait_for_text("while the daemon was down", Duration::from_secs(20)).await;
    assert!(still_same_page(&browser).await, "the page was not reloaded");
    browser.wait_live(Duration::from_secs(5)).await;
    browser.screenshot("reconnected").await;
    browser.client.close().await.unwrap();
}

/// A daemon told to stop while a page is open ends that page's event stream and exits at once,
/// instead of waiting for the stream (it never ends by itself) until the shutdown's grace runs
/// out; the page then waits for the next daemon.
#[tokio::test]
async fn a_daemon_stops_promptly_while_a_page_follows_its_events() {
    let home = TestHome::new("dash-stop");
    let mut daemon = home.start();
    let browser = Browser::start(&shots("stop"), 1280, 900).await;
    sign_in(&home, &browser).await;
    browser.goto(&daemon.url("/tasks")).await;
    browser.wait_for_text("live", Duration::from_secs(10)).await;

    let stopping = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        (status, daemon.log_text())
    });
    let (status, log) = tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("the daemon stopped")
        .unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(!log.contains("requests still open at shutdown"), "the stream held the stop: {log}");
    browser
        .wait_for(
            "the page to notice the daemon is gone",
            Duration::from_secs(10),
            "return document.getElementById('live-status').textContent.indexOf('reconnecting') === 0",
        )
        .await;
    browser.client.close().await.unwrap();
}

/// Acceptance 5: every page loads without a JavaScript console error and fits a 390 × 844
/// phone screen with large targets; the alerts page acknowledges an alert. The pages are
/// visited one after the other in one tab (each load bounded by `Browser::goto`): pages kept
/// for the back button once held their event streams, and the ninth page waited a minute for a
/// free connection.
#[tokio::test]
async fn pages_have_no_console_errors_and_fit_a_phone() {
    let (home, repo) = setup("dash-phone", &[("fake", "commit", ""), ("crasher", "crash", "")], "");
    let daemon = home.start();
    let done = add_task(
        &home,
        &[
            "a finished task with a rather long title that must wrap on a phone",
            "--profile",
            "fake",
            "--repo",
            &repo,
        ],
    );
    let stuck = add_task(
        &home,
        &["a blocked task", "--profile", "crasher", "--repo", &repo, "--max-attempts", "1"],
    );
    wait_state(&daemon, &done, "complete").await;
    wait_state(&daemon, &stuck, "blocked").await;

    let shots = shots("phone");
    let browser = Browser::start(&shots, 390, 844).await;
    sign_in(&home, &browser).await;
    let width = browser.eval("return window.innerWidth").await;
    assert_eq!(width, 390, "the viewport is a phone's");
    let done_page = format!("/tasks/{done}");
    for path in PAGES.iter().copied().chain([done_page.as_str()]) {
        browser.goto(&daemon.url(path)).await;
        browser
            .wait_for(
                "the live connection",
                Duration::from_secs(10),
                "var s = document.getElementById('live-status'); return s !== null && (s.textContent === 'live' || document.querySelector('main').getAttribute('data-live') === '')",
            )
            .await;
        let name = if path == "/" {
            "overview".to_string()
        } else {
            path.trim_start_matches('/').replace('/', "-")
        };
        let name = if path == done_page { "task".to_string() } else { name };
        browser.screenshot(&format!("phone-{name}")).await;
        assert_eq!(
            browser.console_errors().await,
            Vec::<String>::new(),
            "console errors on {path}"
        );
        assert!(!browser.overflows().await, "{path} scrolls sideways on a phone");
        let small = browser
            .eval(
                "return Array.from(document.querySelectorAll('main button')).filter(function (b) { \
                 var r = b.getBoundingClientRect(); return r.height < 44; }).length",
            )
            .await;
        assert_eq!(small, 0, "buttons on {path} are at least 44px high");
    }

    // Both agents have exited: no window to attach to.
    browser.goto(&daemon.url("/agents")).await;
    assert!(browser.text().await.contains("exited"), "{}", browser.text().await);
    assert!(!browser.text().await.contains("ccm agent attach"));
    browser.goto(&daemon.url("/systems")).await;
    assert!(browser.text().await.contains("sync not configured"));
    // Two alerts are open: the kept branch of the finished task (info) and the blocked task.
    browser.goto(&daemon.url("/alerts")).await;
    browser.wait_for_text("a blocked task", Duration::from_secs(5)).await;
    browser.click(".sev-critical form button").await;
    browser
        .wait_for(
            "the critical alert to go",
            Duration::from_secs(10),
            "return document.querySelector('.sev-critical') === null && document.querySelector('.alert') !== null",
        )
        .await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.screenshot("phone-alerts-acknowledged").await;
    let mut db = ccm_tests::open_db(&home.db_file()).await;
    let open: Vec<(String,)> =
        sqlx::query_as("SELECT severity FROM alerts WHERE resolved_at IS NULL")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(open, [("info".to_string(),)]);
    browser.client.close().await.unwrap();
}

/// A home whose tasks' agents only hold their task (`slots` of them at a time).
fn holder_home(name: &str, slots: usize) -> TestHome {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "scheduler:\n  slots: {slots}\n  tick_ms: 100\nruntime:\n  poll_ms: 100\n{}",
        ccm_tests::HOLDER_PROFILE
    ));
    home
}

async fn send_event(daemon: &Daemon, id: &str, event: &str) {
    let (status, body) = daemon
        .post(&format!("/api/tasks/{id}/events"), serde_json::json!({ "event": event }))
        .await;
    assert_eq!(status, 200, "{event} of {id} refused: {body}");
}

/// Issue 26, acceptance 3: typing into the board's search box while ten tasks change state
/// loses nothing: the typed text, the caret, the focus, the page's and the board's scroll
/// positions, a column the reader opened (which the server sends closed) and one the reader
/// closed (which the server sends open); the page is never reloaded.
#[tokio::test]
async fn typing_on_the_board_survives_ten_tasks_changing_state() {
    let home = holder_home("dash-morph", 1);
    let daemon = home.start();
    let ids: Vec<String> =
        (0..12).map(|n| add_task(&home, &[&format!("task {n}"), "--profile", "holder"])).collect();
    let shots = shots("morph");
    let browser = Browser::start(&shots, 900, 500).await;
    sign_in(&home, &browser).await;
    browser.goto(&daemon.url("/tasks")).await;
    browser
        .wait_for(
            "twelve cards and the live connection",
            Duration::from_secs(20),
            "return document.querySelectorAll('[data-task]').length === 12 && document.getElementById('live-status').textContent === 'live'",
        )
        .await;
    mark_page(&browser).await;
    // The reader opens the empty `failed` column and closes the `created` one (holding eleven tasks).
    browser.click("#column-failed summary").await;
    browser.click("#column-created summary").await;
    browser.click("input[name=q]").await;
    browser.type_into("input[name=q]", "needle in the haystack").await;
    let before = browser
        .eval(
            "var q = document.querySelector('input[name=q]'); q.setSelectionRange(7, 9); \
             var board = document.getElementById('board'); board.scrollLeft = 240; \
             window.scrollTo(0, 60); \
             window.__refreshes = 0; document.addEventListener('ccm:refreshed', function () { window.__refreshes++; }); \
             return [q.value, q.selectionStart, q.selectionEnd, window.scrollY, board.scrollLeft]",
        )
        .await;
    assert_eq!(before[0], "needle in the haystack");
    assert!(before[3].as_f64().unwrap() > 0.0, "the page scrolls: {before}");
    assert!(before[4].as_f64().unwrap() > 0.0, "the board scrolls sideways: {before}");
    browser.screenshot("morph-before").await;

    for id in ids.iter().take(10) {
        send_event(&daemon, id, "cancel").await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    browser
        .wait_for(
            "ten cancelled cards on the board",
            Duration::from_secs(20),
            "var c = document.getElementById('column-cancelled'); return c !== null && c.querySelectorAll('[data-task]').length === 10",
        )
        .await;
    let after = browser
        .eval(
            "var q = document.querySelector('input[name=q]'); var board = document.getElementById('board'); \
             return [q.value, q.selectionStart, q.selectionEnd, window.scrollY, board.scrollLeft, \
                     document.activeElement === q, document.getElementById('column-failed').open, \
                     document.getElementById('column-created').open, window.__refreshes]",
        )
        .await;
    browser.screenshot("morph-after").await;
    assert!(still_same_page(&browser).await, "the page was reloaded");
    assert!(after[8].as_u64().unwrap() >= 1, "the page never refreshed: {after}");
    assert_eq!(
        after.as_array().unwrap()[..5],
        before.as_array().unwrap()[..],
        "text, caret or scroll changed"
    );
    assert_eq!(after[5], true, "the search box lost the focus");
    assert_eq!(after[6], true, "the column the reader opened was closed");
    assert_eq!(after[7], false, "the column the reader closed was opened");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.client.close().await.unwrap();
}

/// Issue 26, acceptance 4: twenty tabs of one browser (more than the six connections a browser
/// opens to one host) all load, stay live and show a task's state change (a background tab,
/// hidden, when it is shown: the times are printed); closing nineteen of them, the first (which
/// held the event stream) among them, keeps the last one live.
#[tokio::test]
async fn twenty_tabs_stay_live_and_the_last_one_outlives_the_other_nineteen() {
    let home = holder_home("dash-tabs", 1);
    let daemon = home.start();
    let id = add_task(&home, &["watched by twenty tabs", "--profile", "holder"]);
    wait_state(&daemon, &id, "executing").await;
    let shots = shots("tabs");
    let browser = Browser::start(&shots, 1000, 700).await;
    sign_in(&home, &browser).await;
    let page = daemon.url(&format!("/tasks/{id}"));
    let live = "var s = document.getElementById('live-status'); return s !== null && s.textContent === 'live'";
    let mut tabs = Vec::new();
    for n in 0..20 {
        let tab = if n == 0 {
            browser.goto(&page).await;
            browser.client.window().await.unwrap()
        } else {
            browser.new_tab(&page).await
        };
        browser.wait_for(&format!("tab {n} to be live"), Duration::from_secs(20), live).await;
        // Each tab notes when it first showed the change (the page's clock is the epoch's).
        browser
            .eval(
                "window.__shown = null; document.addEventListener('ccm:refreshed', function () { \
                   var s = document.getElementById('task-state'); \
                   if (window.__shown === null && s && s.textContent === 'cancelled') \
                     window.__shown = performance.timeOrigin + performance.now(); }); return true",
            )
            .await;
        tabs.push(tab);
    }
    let epoch_ms = || {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
            * 1e3
    };
    let changed = epoch_ms();
    send_event(&daemon, &id, "cancel").await;
    let shows = "var s = document.getElementById('task-state'); return s !== null && s.textContent === 'cancelled' && window.__shown !== null";
    // A hidden tab does not render: it shows the change when it is shown.
    for (n, tab) in tabs.iter().enumerate() {
        let shown_from = epoch_ms().max(changed);
        browser.switch_to(tab).await;
        browser
            .wait_for(&format!("tab {n} to show the change"), Duration::from_secs(20), shows)
            .await;
        let shown = browser.eval("return window.__shown").await.as_f64().unwrap();
        println!(
            "tab {n}: the change shown {:.0} ms after it was made, {:.0} ms after the tab was shown",
            shown - changed,
            shown - shown_from
        );
    }
    browser.screenshot("tabs-twentieth").await;

    for tab in &tabs[..19] {
        browser.switch_to(tab).await;
        browser.client.close_window().await.unwrap();
    }
    browser.switch_to(&tabs[19]).await;
    send_event(&daemon, &id, "retry").await;
    browser
        .wait_for(
            "the last tab to show the retry",
            Duration::from_secs(20),
            "var s = document.getElementById('task-state'); return s !== null && s.textContent !== 'cancelled' && document.getElementById('live-status').textContent === 'live'",
        )
        .await;
    browser.screenshot("tabs-last").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.client.close().await.unwrap();
}

/// Issue 26, acceptance 6: the task page shows a real Claude Code run (against the stand-in of
/// the Anthropic API) as the same readable lines `ccm task logs` prints, and its raw toggle
/// shows the JSON events instead.
#[tokio::test]
async fn task_page_shows_claude_output_as_task_logs_does_and_raw_json_on_toggle() {
    use ccm_tests::standin::anthropic::{Anthropic, Turn};
    let home = TestHome::new("dash-readable");
    home.write_config("runtime:\n  poll_ms: 50\n");
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let api = Anthropic::start(vec![
        Turn::bash("echo readable-marker"),
        Turn::text("Looked around; nothing to change."),
    ]);
    let bin = ccm_tests::agent_cli("claude");
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
    let id = add_task(&home, &["look around", "--profile", "claude", "--repo", &repo]);
    let detail = wait_state(&daemon, &id, "complete").await;
    let logs = home.run_ok(&["task", "logs", &id]);
    assert!(logs.contains("→ Bash echo readable-marker"), "{logs}\n{detail:#}");
    assert!(logs.contains("assistant: Looked around; nothing to change."), "{logs}");

    let shots = shots("readable");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&home, &browser).await;
    browser.goto(&daemon.url(&format!("/tasks/{id}"))).await;
    let shown = |id: &str| {
        format!(
            "var e = document.getElementById('{id}'); \
             return e === null ? null : [e.innerText, e.getBoundingClientRect().height > 0]"
        )
    };
    let readable = browser.eval(&shown("output-tail")).await;
    browser.screenshot("readable-output").await;
    // The page shows the last lines of what `ccm task logs` prints (this Claude Code logs its
    // HTTP requests too), the tool call and the answer among them.
    let text = readable[0].as_str().unwrap().trim_end();
    assert!(logs.trim_end().ends_with(text), "the page shows:\n{text}\n`ccm task logs`:\n{logs}");
    assert!(text.contains("→ Bash echo readable-marker"), "{text}");
    assert!(text.contains("assistant: Looked around; nothing to change."), "{text}");
    assert_eq!(readable[1], true, "the readable output is shown");
    assert_eq!(browser.eval(&shown("output-raw")).await[1], false, "the raw output is hidden");

    browser.click("label[for=raw-toggle]").await;
    let raw = browser.eval(&shown("output-raw")).await;
    browser.screenshot("raw-output").await;
    assert_eq!(raw[1], true, "the raw output is shown after the toggle");
    assert_eq!(browser.eval(&shown("output-tail")).await[1], false, "the readable one is hidden");
    let raw_text = raw[0].as_str().unwrap();
    let events: Vec<Value> = raw_text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("raw lines are JSON events"))
        .collect();
    assert!(events.iter().any(|e| e["type"] == "assistant"), "{raw_text}");
    assert!(events.iter().any(|e| e["type"] == "result"), "{raw_text}");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.client.close().await.unwrap();
}

/// Issue 26, acceptance 7: at 390 × 844 no page scrolls sideways, the navigation (with the
/// pending decisions' count in view) takes at most 15 % of the first screen, and every text has
/// a contrast of at least 4.5:1 with its background in the light and the dark scheme (computed
/// from the rendered colours).
#[tokio::test]
async fn phone_navigation_is_compact_and_every_text_has_contrast_in_both_schemes() {
    let (home, repo) =
        setup("dash-contrast", &[("fake", "commit", ""), ("crasher", "crash", "")], "");
    let daemon = home.start();
    let done = add_task(&home, &["a finished task", "--profile", "fake", "--repo", &repo]);
    let stuck = add_task(
        &home,
        &["a blocked task", "--profile", "crasher", "--repo", &repo, "--max-attempts", "1"],
    );
    wait_state(&daemon, &done, "complete").await;
    wait_state(&daemon, &stuck, "blocked").await;

    let shots = shots("contrast");
    let browser = Browser::start(&shots, 390, 844).await;
    sign_in(&home, &browser).await;
    let task_page = format!("/tasks/{stuck}");
    for scheme in ["light", "dark"] {
        browser.color_scheme(scheme).await;
        for path in PAGES.iter().copied().chain([task_page.as_str()]) {
            browser.goto(&daemon.url(path)).await;
            browser
                .wait_for(
                    "the page",
                    Duration::from_secs(10),
                    "return document.querySelector('main') !== null",
                )
                .await;
            let name = path.trim_start_matches('/').replace('/', "-");
            browser
                .screenshot(&format!(
                    "{scheme}-{}",
                    if name.is_empty() { "overview" } else { &name }
                ))
                .await;
            assert!(!browser.overflows().await, "{path} scrolls sideways on a phone");
            let nav = browser
                .eval(
                    "var top = document.querySelector('header.top').getBoundingClientRect(); \
                     var badge = document.getElementById('badge-decisions').getBoundingClientRect(); \
                     return [top.bottom, badge.left, badge.right, badge.top, badge.bottom, \
                             document.getElementById('badge-decisions').textContent]",
                )
                .await;
            assert!(
                nav[0].as_f64().unwrap() <= 0.15 * 844.0,
                "{path}: the navigation ends at {nav}"
            );
            let inside = nav[1].as_f64().unwrap() >= 0.0
                && nav[2].as_f64().unwrap() <= 390.0
                && nav[4].as_f64().unwrap() <= 0.15 * 844.0;
            assert!(inside, "{path}: the decisions' count is out of view: {nav}");
            assert_eq!(nav[5], "1", "{path}: one decision (the blocked task's) is pending");
            let low = browser.low_contrast(4.5).await;
            assert!(low.is_empty(), "{path} in the {scheme} scheme: texts below 4.5:1: {low:#?}");
        }
    }
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.client.close().await.unwrap();
}

/// Issue 26 (scale): a board column shows its newest 50 tasks and pages through the rest, the
/// other filters kept.
#[tokio::test]
async fn a_board_column_pages_through_its_tasks() {
    let home = holder_home("dash-paging", 1);
    let daemon = home.start();
    let mut ids = Vec::new();
    for n in 0..55 {
        let (status, task) = daemon
            .post(
                "/api/tasks",
                serde_json::json!({ "title": format!("paged {n}"), "profile": "holder" }),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        send_event(&daemon, id, "cancel").await;
    }
    let shots = shots("paging");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&home, &browser).await;
    browser.goto(&daemon.url("/tasks?q=paged")).await;
    let cards = "return document.querySelectorAll('#column-cancelled [data-task]').length";
    assert_eq!(browser.eval(cards).await, 50, "the first page of the column");
    browser.wait_for_text("5 more", Duration::from_secs(5)).await;
    browser.screenshot("paging-first").await;
    browser.click("#column-cancelled .more a").await;
    browser.wait_for_text("newer", Duration::from_secs(10)).await;
    assert_eq!(browser.eval(cards).await, 5, "the second page of the column");
    let url = browser.client.current_url().await.unwrap().to_string();
    assert!(
        url.contains("state=cancelled") && url.contains("q=paged") && url.contains("page=1"),
        "{url}"
    );
    // The oldest five: the first tasks cancelled.
    let titles = browser
        .eval("return Array.from(document.querySelectorAll('#column-cancelled .title')).map(function (t) { return t.textContent; }).sort()")
        .await;
    assert_eq!(titles, serde_json::json!(["paged 0", "paged 1", "paged 2", "paged 3", "paged 4"]));
    browser.screenshot("paging-second").await;
    browser.client.close().await.unwrap();
}

/// Signs in through a fresh one-time link over HTTP; returns the session cookie (`name=value`).
async fn session_cookie(home: &TestHome, http: &reqwest::Client) -> String {
    let response = http.get(sign_in_link(home)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
    cookie.split(';').next().unwrap().to_string()
}

/// A live refresh (`X-Ccm-Live`) of a page: its status, `ETag` and body.
async fn live_get(
    http: &reqwest::Client,
    url: &str,
    cookie: &str,
    known: Option<&str>,
) -> (u16, String, String) {
    let mut request = http.get(url).header("cookie", cookie).header("x-ccm-live", "1");
    if let Some(known) = known {
        request = request.header("if-none-match", known);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let tag =
        response.headers().get("etag").map(|t| t.to_str().unwrap().to_string()).unwrap_or_default();
    (status, tag, response.text().await.unwrap())
}

/// Issue 26 (live pages cost little): a page's live refresh that sends back the `ETag` it got
/// is answered `304` with no body while nothing on the page changed, and with the new page (and
/// a new tag) once a task was added; another session's tag for the same page is its own (the
/// page carries the session's form token).
#[tokio::test]
async fn an_unchanged_page_answers_its_live_refresh_with_304_and_a_changed_one_with_the_new_page() {
    let home = holder_home("dash-etag", 1);
    let daemon = home.start();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let cookie = session_cookie(&home, &http).await;
    let board = daemon.url("/tasks");
    let (status, tag, body) = live_get(&http, &board, &cookie, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2, "ETag: {tag:?}");
    let (status, again, body) = live_get(&http, &board, &cookie, Some(&tag)).await;
    assert_eq!((status, again.as_str(), body.as_str()), (304, tag.as_str(), ""));

    let other = session_cookie(&home, &http).await;
    let (status, other_tag, body) = live_get(&http, &board, &other, Some(&tag)).await;
    assert_eq!(status, 200, "another session's page is not this one's: {body}");
    assert_ne!(other_tag, tag);

    add_task(&home, &["a new card", "--profile", "holder"]);
    let mut changed = None;
    for _ in 0..100 {
        let (status, new_tag, body) = live_get(&http, &board, &cookie, Some(&tag)).await;
        if status != 304 {
            changed = Some((status, new_tag, body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, new_tag, body) = changed.expect("the board never changed after a task was added");
    assert_eq!(status, 200);
    assert!(body.contains("a new card"), "the new page lacks the new card");
    assert_ne!(new_tag, tag);
    // A refresh that is not live gets the page (a reload is never answered 304).
    let response = http.get(&board).header("cookie", &cookie).header("if-none-match", &new_tag);
    assert_eq!(response.send().await.unwrap().status(), 200);
}

/// Issue 26 (live pages cost little, scale): the overview's queue chart counts the tasks waiting
/// now and in the hours before from the hourly counts the task log's trigger keeps: with one slot
/// and three tasks added this hour, two wait now and none did before this hour.
#[tokio::test]
async fn the_overview_queue_chart_counts_the_tasks_waiting_now_and_before_this_hour() {
    let home = holder_home("dash-queue", 1);
    let daemon = home.start();
    let ids: Vec<String> =
        (0..3).map(|n| add_task(&home, &[&format!("queued {n}"), "--profile", "holder"])).collect();
    wait_state(&daemon, &ids[0], "executing").await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let cookie = session_cookie(&home, &http).await;
    let page = |cookie: String| {
        let (http, url) = (http.clone(), daemon.url("/"));
        async move { http.get(url).header("cookie", cookie).send().await.unwrap().text().await.unwrap() }
    };
    let overview = page(cookie.clone()).await;
    // The clock hour may turn between the tasks' creation and the page: then "-1h" holds them.
    assert!(overview.contains("2 waiting at now"), "{overview}");
    assert!(
        overview.contains("0 waiting at -1h") || overview.contains("2 waiting at -1h"),
        "{overview}"
    );
    assert!(overview.contains("0 waiting at -2h"), "{overview}");
    // A task leaving the queue is counted too.
    send_event(&daemon, &ids[2], "cancel").await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            page(cookie.clone()).await.contains("1 waiting at now")
        })
        .await,
        "the cancelled task still counts as waiting"
    );
}

/// Issue 26 (live pages cost little): under a stream of changes an open board refreshes fewer
/// times than changes reach it (its refreshes are spaced by what they cost), still shows the
/// last of them within two seconds, and a change after a quiet period shows at once.
#[tokio::test]
async fn a_board_under_a_stream_of_changes_refreshes_less_often_than_they_come_and_stays_live() {
    let home = holder_home("dash-stream", 1);
    let daemon = home.start();
    let shots = shots("stream");
    let browser = Browser::start(&shots, 1280, 900).await;
    sign_in(&home, &browser).await;
    browser.goto(&daemon.url("/tasks")).await;
    browser.wait_live(Duration::from_secs(20)).await;
    browser
        .eval(
            "window.__changes = 0; window.__refreshes = 0; \
             document.addEventListener('ccm:change', function () { window.__changes++; }); \
             document.addEventListener('ccm:refreshed', function () { window.__refreshes++; }); \
             return true",
        )
        .await;
    let mut last = String::new();
    for n in 0..60 {
        let (status, task) = daemon
            .post(
                "/api/tasks",
                serde_json::json!({ "title": format!("stream {n}"), "profile": "holder" }),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        last = task["id"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let shown = format!("return document.querySelector('[data-task=\"{last}\"]') !== null");
    browser.wait_for("the last task's card", Duration::from_secs(2), &shown).await;
    let counts = browser.eval("return [window.__changes, window.__refreshes]").await;
    let (changes, refreshes) = (counts[0].as_u64().unwrap(), counts[1].as_u64().unwrap());
    println!("{changes} changes reached the board, which refreshed {refreshes} times");
    assert!(changes >= 5, "the stream reached the page as one change: {counts}");
    assert!(refreshes >= 1 && refreshes < changes, "refreshes against changes: {counts}");
    browser.screenshot("stream-after").await;

    // After a quiet period the next change shows at once (well under the longest spacing, 2 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = std::time::Instant::now();
    let id = add_task(&home, &["after the quiet", "--profile", "holder"]);
    let shown = format!("return document.querySelector('[data-task=\"{id}\"]') !== null");
    browser.wait_for("the card after the quiet", Duration::from_secs(2), &shown).await;
    let took = started.elapsed();
    println!("the change after the quiet showed in {took:?}");
    assert!(took < Duration::from_millis(1500), "the change after the quiet waited {took:?}");
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
    browser.client.close().await.unwrap();
}
