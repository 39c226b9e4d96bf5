//! Figures of the notifiers, each printed next to a baseline measured in the same run on the
//! same machine.
//!
//! Run with `cargo bench -p ccm-tests --bench notify`. Nothing here asserts on time: the bench
//! prints a table and fails only when ccm misbehaves (a refused request, a message never sent).
//!
//! - Alert → Telegram: a critical alert committed (the `failed` event's answer) to its message
//!   handed to the Telegram stand-in (`sendMessage` received), against the same client's own
//!   `sendMessage` round trip to the stand-in and the API's answer to the event.
//! - Hook path: `POST /api/hooks` latency of a daemon with a Telegram notifier configured
//!   against one without, run in alternating rounds in the same process.

use std::time::{Duration, Instant};

use ccm_tests::bench::{machine, ms, print_table, Row, Stats};
use ccm_tests::standin::telegram::Telegram;
use ccm_tests::{wait_until, Daemon, TestHome};
use serde_json::json;

const TOKEN: &str = "123456:bench-token";
const CHAT: i64 = 4242;
/// Critical alerts timed; one every [`ALERT_GAP`] (Telegram's pace is one message a second
/// per chat, so closer alerts would measure the pacing).
const ALERTS: usize = 30;
const ALERT_GAP: Duration = Duration::from_millis(1100);
/// Hook requests per daemon, in [`ROUNDS`] alternating rounds.
const HOOKS: usize = 4000;
const ROUNDS: usize = 8;

#[tokio::main]
async fn main() {
    let machine = machine();
    let bot = Telegram::start(TOKEN);
    let mut rows = alert_rows(&bot).await;
    rows.extend(hook_rows(&bot).await);
    println!("\n{machine}");
    print_table(&rows);
}

fn notifier(bot: &Telegram) -> String {
    format!(
        "notify:\n  notifiers:\n    phone:\n      kind: telegram\n      token: \"{TOKEN}\"\n      chat_ids: [{CHAT}]\n      api_url: {}\n      poll_secs: 25\n",
        bot.url()
    )
}

async fn alert_rows(bot: &Telegram) -> Vec<Row> {
    let home = TestHome::new("bench-notify-alerts");
    home.write_config(&notifier(bot));
    let daemon = home.start();
    let mut to_telegram = Vec::with_capacity(ALERTS);
    let mut api = Vec::with_capacity(ALERTS);
    for n in 0..ALERTS {
        let title = format!("bench alert {n}");
        let id = queued_task(&daemon, &title).await;
        let (status, _) =
            daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "start" })).await;
        assert_eq!(status, 200);
        let asked = Instant::now();
        let (status, task) = daemon
            .post(
                &format!("/api/tasks/{id}/events"),
                json!({ "event": "failed", "class": "fatal" }),
            )
            .await;
        let committed = Instant::now();
        assert_eq!(status, 200, "{task}");
        api.push(committed - asked);
        let sent = wait_until(Duration::from_secs(10), || async {
            bot.calls().iter().any(|c| c.method == "sendMessage" && mentions(c, &id))
        })
        .await;
        assert!(sent, "the alert of {title} never reached Telegram:\n{}", daemon.log_text());
        let at = bot.calls().into_iter().find(|c| c.method == "sendMessage" && mentions(c, &id));
        to_telegram.push(at.expect("the call").at.saturating_duration_since(committed));
        tokio::time::sleep(ALERT_GAP).await;
    }
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let mut direct = Vec::with_capacity(ALERTS);
    for n in 0..ALERTS {
        let started = Instant::now();
        let answer = http
            .post(format!("{}/bot{TOKEN}/sendMessage", bot.url()))
            .json(&json!({ "chat_id": CHAT, "text": format!("direct {n}") }))
            .send()
            .await
            .expect("the stand-in answers");
        assert!(answer.status().is_success());
        direct.push(started.elapsed());
    }
    let (to_telegram, api, direct) = (Stats::new(to_telegram), Stats::new(api), Stats::new(direct));
    vec![
        Row::new(
            "critical alert → sendMessage, p50",
            ms(to_telegram.p50),
            format!(
                "{} (sendMessage round trip); {} (the event's API answer)",
                ms(direct.p50),
                ms(api.p50)
            ),
            "≤ 100 ms",
        ),
        Row::new(
            "critical alert → sendMessage, p99",
            ms(to_telegram.p99),
            format!(
                "{} (sendMessage round trip); {} (the event's API answer)",
                ms(direct.p99),
                ms(api.p99)
            ),
            "—",
        ),
    ]
}

/// Whether a `sendMessage` call's text names the task.
fn mentions(call: &ccm_tests::standin::telegram::Call, id: &str) -> bool {
    call.params["text"].as_str().is_some_and(|t| t.contains(&id[..8]))
}

/// A task of the manual profile, queued (so `start` and `failed` apply).
async fn queued_task(daemon: &Daemon, title: &str) -> String {
    let (status, task) =
        daemon.post("/api/tasks", json!({ "title": title, "max_attempts": 1 })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().expect("id").to_string();
    let queued = wait_until(Duration::from_secs(10), || async {
        daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "queued"
    })
    .await;
    assert!(queued, "task {id} was not queued");
    id
}

async fn hook_rows(bot: &Telegram) -> Vec<Row> {
    let plain = TestHome::new("bench-notify-plain");
    plain.write_config("");
    let with = TestHome::new("bench-notify-telegram");
    with.write_config(&notifier(bot));
    let daemons = [plain.start(), with.start()];
    let mut samples = [Vec::with_capacity(HOOKS), Vec::with_capacity(HOOKS)];
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let payload = json!({
        "session_id": "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0",
        "cwd": "/tmp",
        "hook_event_name": "PostToolUse",
        "tool_name": "Edit",
        "tool_input": { "file_path": "/tmp/src/main.rs", "old_string": "a", "new_string": "b" },
        "tool_response": { "filePath": "/tmp/src/main.rs", "success": true }
    })
    .to_string();
    for _ in 0..ROUNDS {
        for (daemon, samples) in daemons.iter().zip(samples.iter_mut()) {
            for _ in 0..HOOKS / ROUNDS {
                let started = Instant::now();
                let answer = http
                    .post(daemon.url("/api/hooks?system=claude"))
                    .bearer_auth(&daemon.token)
                    .header("content-type", "application/json")
                    .body(payload.clone())
                    .send()
                    .await
                    .expect("the daemon answers");
                assert!(answer.status().is_success(), "hook refused: {}", answer.status());
                answer.bytes().await.expect("the body");
                samples.push(started.elapsed());
            }
        }
    }
    let [plain, with] = samples.map(Stats::new);
    vec![
        Row::new(
            "POST /api/hooks with a notifier, p50",
            ms(with.p50),
            format!("{} (no notifier)", ms(plain.p50)),
            "no measurable cost",
        ),
        Row::new(
            "POST /api/hooks with a notifier, p99",
            ms(with.p99),
            format!("{} (no notifier)", ms(plain.p99)),
            "no measurable cost",
        ),
    ]
}
