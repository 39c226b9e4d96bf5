//! Figures of the dashboard, each printed next to a baseline measured in the same run on the
//! same machine.
//!
//! Run with `cargo bench -p ccm-tests --bench dashboard` (needs `chromium` and
//! `chromium-driver`). Nothing here asserts on time: the bench prints a table and fails only when
//! ccm misbehaves (a refused request, a page that never shows what it should).
//!
//! - Board: the server time of `GET /tasks` and of the overview `GET /` with 10,000 tasks in
//!   the database, against
//!   `GET /healthz` and the static `GET /assets/app.css` of the same daemon; then the page
//!   complete in Chromium (navigation start to the load event) against the static asset.
//! - Live: a task created through the API to its card on the open board, against the API's own
//!   answer time.
//! - Tabs: the same with twenty tabs of one browser open on the board (the visible one is the
//!   last; the first holds the event stream and passes the events on to the other nineteen).
//! - Creation: tasks created per second through the API with ten dashboard pages open (ten
//!   browsers, each showing one page that refreshes on the changes it shows), against the same
//!   daemon with no page open (before and after, averaged); and the CPU time the daemon and the
//!   browsers' processes used meanwhile (from `/proc/PID/stat`), against the daemon's with no
//!   page open.
//! - Memory: the daemon's resident set with 20 agents running and 10 dashboard pages open, against
//!   the same daemon before the pages were opened.
//!
//! `CCM_BENCH_DASHBOARD_ONLY` (for example `live,memory`) runs only the parts it names;
//! `CCM_BENCH_DASHBOARD_PAGES` (for example `/tasks,/agents`) the pages the creation part opens
//! in turn (by default the overview, the board, agents, alerts, decisions and systems).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ccm_tests::bench::{cpu_time, machine, mb, ms, print_table, runs_part, Memory, Row, Stats};
use ccm_tests::browser::Browser;
use ccm_tests::{wait_until, Daemon, TestHome, HOLDER_PROFILE};
use serde_json::{json, Value};

/// Tasks on the board.
const BOARD_TASKS: usize = 10_000;
/// Server-time samples per page.
const SERVER_RUNS: usize = 50;
/// Page loads in Chromium.
const BROWSER_RUNS: usize = 15;
/// Tasks created per measured wave of the creation part.
const CREATION_TASKS: usize = 2_000;
/// Tasks created while the board is open.
const LIVE_RUNS: usize = 30;
/// Tabs of one browser open on the board.
const TABS: usize = 20;
/// Agents running while the pages are open.
const AGENTS: usize = 20;
/// Dashboard pages open at once.
const PAGES: usize = 10;
/// How long the daemon sits with the pages open before its memory is read.
const SETTLE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() {
    let machine = machine();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-bench");
    println!("\n{machine}");
    let runs = |part: &str| runs_part("CCM_BENCH_DASHBOARD_ONLY", part);
    // Each part's rows as soon as they are measured: a later part that fails loses nothing.
    let mut rows = Vec::new();
    if runs("board") {
        rows.extend(board_rows(&shots).await);
        print_table(&rows);
    }
    if runs("live") {
        rows.extend(live_rows(&shots).await);
        print_table(&rows);
    }
    if runs("tabs") {
        rows.extend(tabs_rows(&shots).await);
        print_table(&rows);
    }
    if runs("creation") {
        rows.extend(creation_rows(&shots).await);
        print_table(&rows);
    }
    if runs("memory") {
        rows.extend(memory_rows(&shots).await);
        print_table(&rows);
    }
}

/// A daemon with the [`HOLDER_PROFILE`] (whose agents hold their task) and `slots` slots.
fn start(name: &str, slots: usize) -> (TestHome, Daemon) {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "scheduler:\n  slots: {slots}\n  tick_ms: 100\nruntime:\n  poll_ms: 100\n{HOLDER_PROFILE}"
    ));
    let daemon = home.start();
    (home, daemon)
}

/// The dashboard's sign-in cookie (`name=value`), from a one-time link.
async fn cookie(home: &TestHome) -> String {
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("http client");
    let response = http.get(&link).send().await.expect("sign-in answers");
    let set = response
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .unwrap_or_else(|| panic!("sign-in sets a cookie ({})", response.status()));
    set.to_str().expect("ascii cookie").split(';').next().expect("name=value").to_string()
}

/// Creates `count` tasks through `POST /api/tasks`, 64 requests at a time (the daemon's group
/// commit writes each wave in a few transactions).
async fn create_many(daemon: &Daemon, count: usize) {
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    for start in (0..count).step_by(64) {
        let mut wave = tokio::task::JoinSet::new();
        for n in start..count.min(start + 64) {
            let request = http
                .post(daemon.url("/api/tasks"))
                .bearer_auth(&daemon.token)
                .json(&json!({ "title": format!("board task {n}"), "profile": "holder" }));
            wave.spawn(
                async move { request.send().await.expect("task creation answers").status() },
            );
        }
        while let Some(status) = wave.join_next().await {
            let status = status.expect("the request task ends");
            assert!(status.is_success(), "task refused: {status}");
        }
    }
}

/// Server time of `GET path`: request sent to the last byte of the body read.
async fn server_time(daemon: &Daemon, cookie: &str, path: &str) -> Stats {
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let mut samples = Vec::with_capacity(SERVER_RUNS);
    for _ in 0..SERVER_RUNS + 3 {
        let started = Instant::now();
        let response =
            http.get(daemon.url(path)).header("cookie", cookie).send().await.expect("page answers");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.bytes().await.expect("page body");
        samples.push(started.elapsed());
    }
    Stats::new(samples.split_off(3))
}

/// Navigation start to the load event of `url` in `browser`, over [`BROWSER_RUNS`] loads.
async fn page_complete(browser: &Browser, url: &str) -> Stats {
    let mut samples = Vec::with_capacity(BROWSER_RUNS);
    for _ in 0..BROWSER_RUNS + 2 {
        browser.goto(url).await;
        let script = "var n = performance.getEntriesByType('navigation')[0]; \
                      return n && n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : null";
        let mut took = Value::Null;
        for _ in 0..200 {
            took = browser.eval(script).await;
            if !took.is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = took.as_f64().unwrap_or_else(|| panic!("{url} never finished loading"));
        samples.push(Duration::from_secs_f64(took / 1e3));
    }
    Stats::new(samples.split_off(2))
}

async fn board_rows(shots: &Path) -> Vec<Row> {
    let (home, mut daemon) = start("bench-board", 4);
    create_many(&daemon, BOARD_TASKS).await;
    let cookie = cookie(&home).await;
    let board = server_time(&daemon, &cookie, "/tasks").await;
    let overview = server_time(&daemon, &cookie, "/").await;
    let health = server_time(&daemon, &cookie, "/healthz").await;
    let css = server_time(&daemon, &cookie, "/assets/app.css").await;

    let browser = Browser::start(shots, 1280, 900).await;
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    browser.goto(&link).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
    let page = page_complete(&browser, &daemon.url("/tasks")).await;
    let asset = page_complete(&browser, &daemon.url("/assets/app.css")).await;
    browser.screenshot("board-10k").await;
    daemon.terminate();
    let tasks = format!("{}k tasks", BOARD_TASKS / 1000);
    vec![
        Row::new(
            &format!("board, server time, p50 ({tasks})"),
            ms(board.p50),
            format!("/healthz {}, app.css {}", ms(health.p50), ms(css.p50)),
            "≤ 20 ms, ≤ 30× /healthz",
        )
        .ratio(board.p50.as_secs_f64(), health.p50.as_secs_f64(), "≤ 30× /healthz"),
        Row::new(
            &format!("board, server time, p99 ({tasks})"),
            ms(board.p99),
            format!("/healthz {}, app.css {}", ms(health.p99), ms(css.p99)),
            "—",
        ),
        Row::new(
            &format!("overview, server time, p50 ({tasks})"),
            ms(overview.p50),
            format!("/healthz {}, app.css {}", ms(health.p50), ms(css.p50)),
            "≤ 20 ms, ≤ 30× /healthz",
        )
        .ratio(overview.p50.as_secs_f64(), health.p50.as_secs_f64(), "≤ 30× /healthz"),
        Row::new(
            &format!("overview, server time, p99 ({tasks})"),
            ms(overview.p99),
            format!("/healthz {}, app.css {}", ms(health.p99), ms(css.p99)),
            "—",
        ),
        Row::new(
            &format!("board, page complete in Chromium, p50 ({tasks})"),
            ms(page.p50),
            format!("app.css {} (static)", ms(asset.p50)),
            "≤ 300 ms",
        ),
    ]
}

/// Milliseconds since the Unix epoch, as the page's clock counts them.
fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs_f64() * 1e3
}

async fn live_rows(shots: &Path) -> Vec<Row> {
    let (home, mut daemon) = start("bench-live", 4);
    let browser = Browser::start(shots, 1280, 900).await;
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    browser.goto(&link).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
    browser.goto(&daemon.url("/tasks")).await;
    let (to_dom, api) = card_latency(&browser, &daemon, "live").await;
    daemon.terminate();
    vec![
        Row::new(
            "task created → its card on the open board, p50",
            ms(to_dom.p50),
            format!("API answer {}", ms(api.p50)),
            "≤ 200 ms",
        ),
        Row::new(
            "task created → its card on the open board, p99",
            ms(to_dom.p99),
            format!("API answer {}", ms(api.p99)),
            "—",
        ),
    ]
}

/// Creates [`LIVE_RUNS`] tasks one after another through the API while `browser`'s current tab
/// shows the board; returns the times from each request sent to its card in that tab's DOM, and
/// the API's answer times.
async fn card_latency(browser: &Browser, daemon: &Daemon, title: &str) -> (Stats, Stats) {
    browser.wait_live(Duration::from_secs(20)).await;
    // Each refresh of the page notes when each task card first appeared.
    browser
        .eval(
            "window.__seen = {}; window.__heard = []; \
             document.addEventListener('ccm:change', function () { \
               window.__heard.push(performance.timeOrigin + performance.now()); }); \
             document.addEventListener('ccm:refreshed', function () { \
               var now = performance.timeOrigin + performance.now(); \
               document.querySelectorAll('[data-task]').forEach(function (c) { \
                 var id = c.getAttribute('data-task'); if (!(id in window.__seen)) window.__seen[id] = now; }); \
             }); return true",
        )
        .await;
    let mut to_dom = Vec::with_capacity(LIVE_RUNS);
    let mut api = Vec::with_capacity(LIVE_RUNS);
    for n in 0..LIVE_RUNS {
        let sent = epoch_ms();
        let started = Instant::now();
        let (status, task) = daemon
            .post("/api/tasks", json!({ "title": format!("{title} {n}"), "profile": "holder" }))
            .await;
        api.push(started.elapsed());
        assert_eq!(status, 201, "task refused: {task}");
        let id = task["id"].as_str().expect("task id").to_string();
        let script = format!("return window.__seen['{id}'] || null");
        let deadline = Instant::now() + Duration::from_secs(10);
        let seen = loop {
            let seen = browser.eval(&script).await;
            if !seen.is_null() {
                break seen;
            }
            assert!(Instant::now() < deadline, "task {id} never appeared on the open board");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let at = seen.as_f64().expect("a time");
        if std::env::var_os("CCM_BENCH_DASHBOARD_TRACE").is_some() {
            let heard = browser.eval("return window.__heard.splice(0)").await;
            let heard: Vec<String> = heard
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_f64())
                .map(|h| format!("{:.0}", h - sent))
                .collect();
            println!("{title} {n}: change heard at {heard:?} ms, card at {:.0} ms", at - sent);
        }
        to_dom.push(Duration::from_secs_f64(((at - sent) / 1e3).max(0.0)));
        // The next change starts from a quiet page.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (Stats::new(to_dom), Stats::new(api))
}

async fn tabs_rows(shots: &Path) -> Vec<Row> {
    let (home, mut daemon) = start("bench-tabs", 4);
    let browser = Browser::start(shots, 1280, 900).await;
    let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
    browser.goto(&link).await;
    browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
    let board = daemon.url("/tasks");
    let live = "var s = document.getElementById('live-status'); return s !== null && s.textContent === 'live'";
    for n in 0..TABS {
        if n == 0 {
            browser.goto(&board).await;
        } else {
            browser.new_tab(&board).await;
        }
        browser.wait_for(&format!("tab {n} to be live"), Duration::from_secs(20), live).await;
    }
    // The last tab is the visible one; the first holds the stream.
    let (to_dom, api) = card_latency(&browser, &daemon, "tabs").await;
    browser.screenshot("tabs-board").await;
    let _ = browser.client.close().await;
    daemon.terminate();
    vec![
        Row::new(
            &format!("state change → updated DOM, {TABS} tabs open, p50"),
            ms(to_dom.p50),
            format!("API answer {}", ms(api.p50)),
            "≤ 200 ms",
        ),
        Row::new(
            &format!("state change → updated DOM, {TABS} tabs open, p99"),
            ms(to_dom.p99),
            format!("API answer {}", ms(api.p99)),
            "—",
        ),
    ]
}

async fn memory_rows(shots: &Path) -> Vec<Row> {
    let (home, mut daemon) = start("bench-memory", AGENTS);
    create_many(&daemon, AGENTS).await;
    let running = wait_until(Duration::from_secs(60), || async {
        let agents = daemon.get("/api/agents").await.1;
        agents.as_array().is_some_and(|a| {
            a.iter().filter(|agent| agent["status"] == "running").count() >= AGENTS
        })
    })
    .await;
    assert!(running, "{AGENTS} agents never ran: {}", daemon.log_text());
    tokio::time::sleep(SETTLE).await;
    let pid = daemon.child.id();
    let before = Memory::of(pid);

    let mut browsers = Vec::with_capacity(PAGES);
    let pages = std::env::var("CCM_BENCH_DASHBOARD_PAGES")
        .unwrap_or_else(|_| "/,/tasks,/agents,/alerts,/decisions,/systems".into());
    let pages: Vec<&str> = pages.split(',').collect();
    for n in 0..PAGES {
        let browser = Browser::start(shots, 1280, 900).await;
        let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
        browser.goto(&link).await;
        browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
        browser.goto(&daemon.url(pages[n % pages.len()])).await;
        browsers.push(browser);
    }
    // Changes while the pages are open: each page refreshes on each.
    create_many(&daemon, 50).await;
    tokio::time::sleep(SETTLE).await;
    let after = Memory::of(pid);
    for browser in browsers {
        let _ = browser.client.close().await;
    }
    daemon.terminate();
    vec![
        Row::new(
            &format!("daemon RSS, {AGENTS} agents, {PAGES} pages open"),
            mb(after.rss_mb),
            format!("{} with no page open", mb(before.rss_mb)),
            "≤ 40 MB",
        ),
        Row::new(
            "daemon RSS high-water mark",
            mb(after.hwm_mb),
            format!("{} with no page open", mb(before.hwm_mb)),
            "—",
        ),
    ]
}

/// Tasks per second of [`create_many`] for `count` tasks.
async fn creation_rate(daemon: &Daemon, count: usize) -> f64 {
    let started = Instant::now();
    create_many(daemon, count).await;
    count as f64 / started.elapsed().as_secs_f64()
}

async fn creation_rows(shots: &Path) -> Vec<Row> {
    let (home, mut daemon) = start("bench-creation", 4);
    // A first wave warms the daemon up (its caches, the database's first pages).
    create_many(&daemon, 200).await;
    let pid = daemon.child.id();
    let idle_cpu = cpu_time(pid);
    let before = creation_rate(&daemon, CREATION_TASKS).await;
    let idle_cpu = cpu_time(pid) - idle_cpu;
    let pages = std::env::var("CCM_BENCH_DASHBOARD_PAGES")
        .unwrap_or_else(|_| "/,/tasks,/agents,/alerts,/decisions,/systems".into());
    let pages: Vec<&str> = pages.split(',').collect();
    let mut browsers = Vec::with_capacity(PAGES);
    for n in 0..PAGES {
        let browser = Browser::start(shots, 1280, 900).await;
        let link = home.run_ok(&["dashboard", "--print"]).trim().to_string();
        browser.goto(&link).await;
        browser.wait_for_text("Tasks per state", Duration::from_secs(10)).await;
        browser.goto(&daemon.url(pages[n % pages.len()])).await;
        browser.wait_live(Duration::from_secs(20)).await;
        browser
            .eval(
                "window.__refreshes = 0; window.__spent = { fetch: 0, parse: 0, morph: 0 }; \
                 document.addEventListener('ccm:refreshed', function (e) { \
                   window.__refreshes++; \
                   for (var k in window.__spent) window.__spent[k] += (e.detail || {})[k] || 0; \
                 }); return true",
            )
            .await;
        browsers.push(browser);
    }
    // The browsers' own floor: the same pages open, nothing changing.
    let quiet = process_times();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let browsers_idle = browsers_time(&quiet, &process_times()).as_secs_f64() / 2.0;
    let (daemon_cpu, processes) = (cpu_time(pid), process_times());
    let wave = Instant::now();
    let open = creation_rate(&daemon, CREATION_TASKS).await;
    let wave = wave.elapsed();
    let daemon_cpu = cpu_time(pid) - daemon_cpu;
    let browsers_cpu = browsers_time(&processes, &process_times());
    // How often each page refreshed during the wave, and the time its script spent on the
    // refreshes (fetch to answer, parse, morph), in ms.
    let mut refreshes: Vec<(&str, u64)> = Vec::new();
    let mut spent: Vec<(&str, Value)> = Vec::new();
    for (n, browser) in browsers.iter().enumerate() {
        let count = browser.eval("return window.__refreshes").await.as_u64().unwrap_or(0);
        let page = pages[n % pages.len()];
        spent.push((page, browser.eval("return window.__spent").await));
        match refreshes.iter_mut().find(|(p, _)| *p == page) {
            Some((_, total)) => *total += count,
            None => refreshes.push((page, count)),
        }
        if page == "/tasks" {
            browser.screenshot("creation-board").await;
        }
    }
    for browser in browsers {
        let _ = browser.client.close().await;
    }
    let after = creation_rate(&daemon, CREATION_TASKS).await;
    daemon.terminate();
    let board = refreshes.iter().find(|(p, _)| *p == "/tasks");
    assert!(board.is_none_or(|(_, n)| *n > 0), "the open board never refreshed: {refreshes:?}");
    let none = (before + after) / 2.0;
    for (page, spent) in &spent {
        let ms = |k: &str| spent[k].as_f64().unwrap_or(0.0);
        println!(
            "page {page}: refreshes' fetch {:.0} ms, parse {:.0} ms, morph {:.0} ms",
            ms("fetch"),
            ms("parse"),
            ms("morph")
        );
    }
    let per_1000 =
        |cpu: Duration| format!("{:.2} s", cpu.as_secs_f64() * 1000.0 / CREATION_TASKS as f64);
    vec![
        Row::new(
            &format!("tasks created per second, {PAGES} pages open"),
            format!("{open:.0}/s ({:.0} %)", 100.0 * open / none),
            format!("{none:.0}/s with no page open ({before:.0}, {after:.0})"),
            "≥ 90 %",
        ),
        Row::new(
            &format!("CPU per 1000 tasks, {PAGES} pages open: daemon"),
            per_1000(daemon_cpu),
            format!("daemon {} with no page open", per_1000(idle_cpu)),
            "—",
        ),
        Row::new(
            &format!("CPU per 1000 tasks, {PAGES} pages open: browsers"),
            per_1000(browsers_cpu),
            format!(
                "idle {:.2} s per 1000 tasks' time; refreshes {}",
                browsers_idle * wave.as_secs_f64() * 1000.0 / CREATION_TASKS as f64,
                refreshes.iter().map(|(p, n)| format!("{p} {n}")).collect::<Vec<_>>().join(", ")
            ),
            "—",
        ),
    ]
}

/// Every process's command name, parent and CPU time so far (user and system), by process id.
fn process_times() -> HashMap<u32, (String, u32, Duration)> {
    let mut processes = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return processes };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some((head, fields)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let number = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        // After the name: the parent is field 4, utime and stime fields 14 and 15 (USER_HZ 100).
        let ticks = number(11) + number(12);
        let cpu = Duration::from_millis(ticks * 10);
        processes.insert(pid, (head[open + 1..].to_string(), number(1) as u32, cpu));
    }
    processes
}

/// The CPU time the Chromium processes started by this process (through chromedriver) used
/// between the snapshots `before` and `after` (a process that ended in between is not counted).
fn browsers_time(
    before: &HashMap<u32, (String, u32, Duration)>,
    after: &HashMap<u32, (String, u32, Duration)>,
) -> Duration {
    let me = std::process::id();
    let ours = |mut pid: u32| {
        for _ in 0..32 {
            match after.get(&pid) {
                Some((_, parent, _)) if *parent == me => return true,
                Some((_, parent, _)) => pid = *parent,
                None => return false,
            }
        }
        false
    };
    after
        .iter()
        .filter(|(pid, (name, ..))| {
            name.starts_with("chrom") && name != "chromedriver" && ours(**pid)
        })
        .map(|(pid, (_, _, cpu))| {
            cpu.saturating_sub(before.get(pid).map_or(Duration::ZERO, |(_, _, cpu)| *cpu))
        })
        .sum()
}
