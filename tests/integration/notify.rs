//! Notifiers through the real daemon: Telegram (a local stand-in of the Bot API), ntfy, Slack
//! and webhooks (a recording server), durable delivery across `kill -9`, health alerts, and
//! `ccm service`.

use std::path::Path;
use std::time::Duration;

use ccm_tests::standin::telegram::Telegram;
use ccm_tests::standin::Recorder;
use ccm_tests::{git_repo, open_db, wait_until, Daemon, TestHome, HOLDER_PROFILE};
use hmac::Mac as _;
use serde_json::{json, Value};

const TOKEN: &str = "123456:ABC-test-token";
const CHAT: i64 = 4242;

/// A home whose notifier `phone` is a bot served by `bot`; `extra` is appended under `notify:`.
fn telegram_home(name: &str, bot: &Telegram, lease: &Path, extra: &str) -> TestHome {
    let home = TestHome::new(name);
    home.write_config(&telegram_config(bot, lease, extra));
    home
}

fn telegram_config(bot: &Telegram, lease: &Path, extra: &str) -> String {
    format!(
        "notify:\n  digest_secs: 3\n  notifiers:\n    phone:\n      kind: telegram\n      token: \"{TOKEN}\"\n      chat_ids: [{CHAT}]\n      api_url: {}\n      poll_secs: 1\n      lease_dir: {}\n{extra}",
        bot.url(),
        lease.display()
    )
}

async fn task_state(daemon: &Daemon, id: &str) -> String {
    let (_, task) = daemon.get(&format!("/api/tasks/{id}")).await;
    task["state"].as_str().unwrap_or_default().to_string()
}

/// A task of the manual profile driven to `blocked` (one attempt, crashed): an alert and a
/// retry-or-cancel decision.
async fn blocked_task(daemon: &Daemon, title: &str) -> String {
    let (status, task) =
        daemon.post("/api/tasks", json!({ "title": title, "max_attempts": 1 })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(10), || async { task_state(daemon, &id).await == "queued" })
            .await
    );
    daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "start" })).await;
    let (_, task) = daemon
        .post(&format!("/api/tasks/{id}/events"), json!({ "event": "failed", "class": "crash" }))
        .await;
    assert_eq!(task["state"], "blocked");
    id
}

/// The messages sent with buttons, as `(message_id, [callback_data])`, whose text names `title`.
fn decision_messages(bot: &Telegram, title: &str) -> Vec<(i64, Vec<String>)> {
    bot.sent()
        .iter()
        .filter(|m| m["text"].as_str().is_some_and(|t| t.contains(title)))
        .filter_map(|m| {
            let buttons = m["reply_markup"]["inline_keyboard"][0].as_array()?;
            let data = buttons.iter().map(|b| b["callback_data"].as_str().unwrap().to_string());
            Some((m["message_id"].as_i64()?, data.collect()))
        })
        .collect()
}

async fn wait_for<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Acceptance 1: the decision of a blocked task reaches Telegram with buttons; pressing retry
/// runs the task again and the message is edited to say who decided; a press from a chat
/// that is not configured does nothing.
#[tokio::test]
async fn blocked_task_decision_reaches_telegram_and_a_retry_press_runs_it_again() {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let home = telegram_home("notify-telegram", &bot, lease.path(), "");
    let daemon = home.start();
    let id = blocked_task(&daemon, "flaky build").await;

    let (message_id, buttons) = wait_for("the decision message", || {
        decision_messages(&bot, "flaky build").into_iter().next()
    })
    .await;
    assert_eq!(buttons.len(), 2, "{buttons:?}");
    assert!(buttons[0].ends_with(":retry") && buttons[1].ends_with(":cancel"), "{buttons:?}");
    let sent = bot.ok_calls("sendMessage");
    assert!(sent.iter().all(|c| c.params["chat_id"] == CHAT), "only the configured chat");

    // A stranger presses retry: ignored (the update is consumed, nothing is answered).
    bot.press(999, (999, "Mallory"), message_id, &buttons[0]);
    assert!(
        wait_until(Duration::from_secs(10), || async { bot.unconfirmed() == 0 }).await
            || bot.ok_calls("getUpdates").len() > 1
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(task_state(&daemon, &id).await, "blocked");
    assert!(bot.ok_calls("answerCallbackQuery").is_empty());
    assert!(daemon.log_text().contains("ignored a button press from a chat not in chat_ids"));

    // The operator presses retry.
    let query = bot.press(CHAT, (CHAT, "Ann"), message_id, &buttons[0]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            task_state(&daemon, &id).await != "blocked"
        })
        .await,
        "the press retried the task"
    );
    let answered =
        wait_for("answerCallbackQuery", || bot.ok_calls("answerCallbackQuery").into_iter().next())
            .await;
    assert_eq!(answered.params["callback_query_id"], query.as_str());
    wait_for("the edit", || bot.ok_calls("editMessageText").into_iter().next()).await;
    let text = bot.text_of(CHAT, message_id).unwrap();
    assert!(text.contains("retry") && text.contains("decided by @ann"), "{text}");
    assert!(bot.markup_of(CHAT, message_id).is_none(), "the buttons are gone");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(bot.ok_calls("editMessageText").len(), 1, "edited once");
    let (_, decisions) = daemon.get("/api/decisions").await;
    let decision = &decisions.as_array().unwrap()[0];
    assert_eq!(decision["answer"], "retry");
    assert_eq!(decision["answered_by"], "telegram:@ann");
    assert!(!daemon.log_text().contains(TOKEN), "the token is never logged");
}

/// Acceptance 2: 100 identical alerts make one message and one digest line; a 429 is waited
/// out (retry_after) and nothing is lost.
#[tokio::test]
async fn a_burst_of_100_identical_alerts_is_one_message_and_one_digest_line() {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let routes =
        "  routes:\n    - notifier: phone\n      kinds: [write_denied]\n      immediate: true\n";
    let home = TestHome::new("notify-burst");
    home.write_config(&format!("{}{HOLDER_PROFILE}", telegram_config(&bot, lease.path(), routes)));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    bot.fail_next("sendMessage", 1, 429, Some(2));
    let daemon = home.start();
    let add = |title: &str| {
        home.run_json(&["task", "add", title, "--profile", "holder", "--repo", &repo])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (owner, other) = (add("owner"), add("other"));
    let owner_token = daemon.agent_token(&owner).await;
    let other_token = daemon.agent_token(&other).await;
    let write = json!({"session_id": "s", "cwd": repo, "hook_event_name": "PreToolUse", "tool_name": "Write",
                       "tool_input": {"file_path": format!("{repo}/src/lib.rs"), "content": "x"}});
    let post = |token: &str, lines: usize| {
        let body: String = (0..lines).map(|_| format!("{write}\n")).collect();
        daemon
            .http
            .post(daemon.url("/api/hooks?system=claude"))
            .bearer_auth(&daemon.token)
            .header("x-ccm-agent-token", token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    assert!(post(&owner_token, 1).await.unwrap().status().is_success());
    assert!(post(&other_token, 100).await.unwrap().status().is_success());
    let mut db = open_db(&home.db_file()).await;
    let alerts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM alerts WHERE reason = 'write_denied'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(alerts, 100);

    let texts = || -> Vec<String> {
        bot.sent().iter().map(|m| m["text"].as_str().unwrap_or_default().to_string()).collect()
    };
    // One message at once; the other 99 in the digest (a burst that outlasts the digest window
    // on a loaded machine may reach a second digest), each digest one line for the key.
    let digested = |texts: &[String]| -> u64 {
        texts
            .iter()
            .flat_map(|t| t.lines())
            .filter_map(|l| l.split_once("× [warning] write refused"))
            .map(|(count, _)| count.parse::<u64>().unwrap_or(0))
            .sum()
    };
    let burst = wait_for("the alert and the digest of the rest", || {
        let burst: Vec<String> =
            texts().into_iter().filter(|t| t.contains("write refused")).collect();
        (digested(&burst) >= 99).then_some(burst)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<String> = texts().into_iter().filter(|t| t.contains("write refused")).collect();
    assert_eq!(after, burst, "nothing more after the burst was accounted for");
    assert!(burst.len() <= 3, "one message and the digest, not one each: {burst:#?}");
    assert!(burst[0].contains("write refused: the file belongs to another task"), "{}", burst[0]);
    assert_eq!(digested(&burst), 99, "{burst:#?}");
    for digest in &burst[1..] {
        let lines = digest.lines().filter(|l| l.contains("write refused")).count();
        assert_eq!(lines, 1, "{digest}");
    }

    // The 429 was waited out: the retry came at least retry_after later.
    let calls: Vec<_> = bot.calls().into_iter().filter(|c| c.method == "sendMessage").collect();
    let limited = calls.iter().position(|c| c.status == 429).expect("a 429 was answered");
    assert!(calls[limited + 1].at - calls[limited].at >= Duration::from_secs(2));
    // About one message per second per chat.
    let ok: Vec<_> = calls.iter().filter(|c| c.status == 200).collect();
    for pair in ok.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(950), "paced");
    }
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM notification_sends WHERE dedupe_key LIKE 'alert:write_denied:%' GROUP BY state",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(states, [("digested".to_string(), 99), ("sent".to_string(), 1)], "nothing lost");
}

/// Acceptance 3: the daemon is killed (-9) after raising a decision and before sending it (the
/// bot API was down); after the restart it is sent exactly once, and a further restart sends
/// nothing again.
#[tokio::test]
async fn a_decision_raised_before_kill_9_is_sent_exactly_once_after_restart() {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let home = telegram_home("notify-kill9", &bot, lease.path(), "");
    bot.fail_next("sendMessage", 1000, 502, None);
    let mut daemon = home.start();
    blocked_task(&daemon, "doomed daemon").await;
    wait_for("a failed send", || {
        bot.calls().iter().any(|c| c.method == "sendMessage" && c.status == 502).then_some(())
    })
    .await;
    daemon.kill9();
    assert!(decision_messages(&bot, "doomed daemon").is_empty());

    bot.heal("sendMessage");
    let daemon = home.start();
    wait_for("the decision message", || decision_messages(&bot, "doomed daemon").pop()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(decision_messages(&bot, "doomed daemon").len(), 1);
    drop(daemon);
    let _daemon = home.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(decision_messages(&bot, "doomed daemon").len(), 1, "sent exactly once");
    // The crash itself was reported, at once (critical).
    assert!(bot
        .sent()
        .iter()
        .any(|m| m["text"].as_str().unwrap().contains("daemon restarted after a crash")));
}

/// Acceptance 4: two daemons with one bot token: only one polls at a time (a poller elsewhere
/// gets 409 and backs off), and a press is handled once, also after the poller changes.
#[tokio::test]
async fn two_daemons_with_one_bot_token_poll_one_at_a_time_and_a_press_is_handled_once() {
    let bot = std::sync::Arc::new(Telegram::start(TOKEN));
    let lease = tempfile::tempdir().unwrap();
    // A poller on another machine (long polls of 2 s; the daemons' are 1 s) polls until a daemon
    // got 409 from Telegram and backed off.
    let daemon_refused = {
        let bot = bot.clone();
        move || {
            bot.calls()
                .iter()
                .any(|c| c.method == "getUpdates" && c.status == 409 && c.params["timeout"] == 1)
        }
    };
    let foreign = tokio::spawn({
        let url = format!("{}/bot{TOKEN}/getUpdates", bot.url());
        let daemon_refused = daemon_refused.clone();
        async move {
            let started = std::time::Instant::now();
            while !daemon_refused() && started.elapsed() < Duration::from_secs(60) {
                let poll = reqwest::Client::new().post(&url).json(&json!({ "timeout": 2 }));
                poll.send().await.unwrap();
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let first = telegram_home("notify-poll-a", &bot, lease.path(), "");
    let second = telegram_home("notify-poll-b", &bot, lease.path(), "");
    let mut a = first.start();
    let b = second.start();
    let id = blocked_task(&a, "shared bot").await;
    let (message_id, buttons) =
        wait_for("the decision message", || decision_messages(&bot, "shared bot").pop()).await;
    foreign.await.unwrap();
    assert!(daemon_refused(), "a daemon polled while another machine did, and got 409");
    wait_for("a daemon polling", || (bot.ok_calls("getUpdates").len() > 2).then_some(())).await;

    // The poller dies while the edit's answer is on its way: the press is handled but the poller
    // never asked for the next update, so Telegram still holds the press.
    bot.stall("editMessageText", Duration::from_secs(5));
    bot.press(CHAT, (CHAT, "Ann"), message_id, &buttons[0]);
    assert!(
        wait_until(Duration::from_secs(10), || async { task_state(&a, &id).await != "blocked" })
            .await
    );
    wait_for("the edit", || bot.ok_calls("editMessageText").pop()).await;
    assert_eq!(bot.unconfirmed(), 1, "the press is not confirmed to Telegram yet");

    // The poller stops; the other daemon takes over without handling the press again.
    a.kill9();
    let polls = bot.ok_calls("getUpdates").len();
    let took_over = wait_until(Duration::from_secs(20), || async {
        bot.ok_calls("getUpdates").len() > polls + 2
    })
    .await;
    assert!(took_over, "the other daemon polls: {}", b.log_text());
    assert_eq!(bot.ok_calls("answerCallbackQuery").len(), 1, "handled once");
    assert_eq!(bot.ok_calls("editMessageText").len(), 1, "edited once");
    assert_eq!(bot.most_polling(), 1, "never two pollers at once");
    drop(b);
}

/// Acceptance 4 across machines: two systems that sync to one central share a bot (each with
/// its own lock directory, as on two machines): the central lease lets one poll at a time, so
/// Telegram never answers 409, and when the poller dies the other takes over where it stopped.
#[tokio::test]
async fn two_systems_sharing_a_bot_through_the_central_poll_one_at_a_time_and_hand_over() {
    let central = ccm_tests::central::Central::start();
    let bot = Telegram::start(TOKEN);
    let sync = format!(
        "sync:\n  rest_url: {}\n  publishable_key: {}\n  heartbeat_secs: 1\n",
        central.rest_url(),
        central.anon_key()
    );
    let homes: Vec<(TestHome, tempfile::TempDir)> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(n, name)| {
            let lease = tempfile::tempdir().unwrap();
            let extra = format!("{sync}node:\n  name: system-{name}\n");
            let home = telegram_home(&format!("notify-central-{name}"), &bot, lease.path(), &extra);
            let sub = format!("00000000-0000-4000-8000-00000000c0{n:02}");
            let jwt = central.system_token(&sub, "00000000-0000-4000-8000-00000000c0ff");
            home.run_ok(&["sync", "enroll", "--jwt", &jwt]);
            (home, lease)
        })
        .collect();
    let mut daemons: Vec<Daemon> = homes.iter().map(|(home, _)| home.start()).collect();
    wait_for("a daemon polling", || (bot.ok_calls("getUpdates").len() > 3).then_some(())).await;
    let holder = || {
        central.pg.query(
            "select s.name from private.named_leases l join private.systems s on s.system_id = l.holder \
             where l.expires_at > now()",
        )
    };
    let name =
        |n: usize| homes[n].0.run_json(&["status"])["system"]["name"].as_str().unwrap().to_string();
    let first =
        (0..2).find(|n| name(*n) == holder().trim()).expect("one of the two holds the lease");

    // A press for the holder's decision is handled once.
    let id = blocked_task(&daemons[first], "shared through the central").await;
    let (message_id, buttons) = wait_for("the decision message", || {
        decision_messages(&bot, "shared through the central").pop()
    })
    .await;
    bot.press(CHAT, (CHAT, "Ann"), message_id, &buttons[0]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            task_state(&daemons[first], &id).await != "blocked"
        })
        .await
    );

    // The holder dies once it answered the press (the offset is stored before the answer);
    // the other takes over once the lease runs out, from the offset it left.
    wait_for("the first press's answer", || bot.ok_calls("answerCallbackQuery").pop()).await;
    daemons[first].kill9();
    let other = 1 - first;
    let other_name = name(other);
    let took_over = wait_until(Duration::from_secs(40), || async {
        holder().trim() == other_name && bot.unconfirmed() == 0
    })
    .await;
    assert!(took_over, "the other system polls: {}", daemons[other].log_text());
    let id = blocked_task(&daemons[other], "after the hand-over").await;
    let (message_id, buttons) =
        wait_for("the second decision", || decision_messages(&bot, "after the hand-over").pop())
            .await;
    bot.press(CHAT, (CHAT, "Ann"), message_id, &buttons[0]);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            task_state(&daemons[other], &id).await != "blocked"
        })
        .await
    );
    wait_for("the second press's answer", || {
        (bot.ok_calls("answerCallbackQuery").len() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each press decided once. A press the dead holder handled may come again to the next
    // holder when the offset had not reached the central yet; it is answered as not its
    // decision and changes nothing.
    let answers: Vec<String> = bot
        .ok_calls("answerCallbackQuery")
        .iter()
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(answers.iter().filter(|t| t.ends_with(": done")).count(), 2, "{answers:?}");
    assert!(
        answers.iter().all(|t| t.ends_with(": done") || t.contains("no decision matches")),
        "{answers:?}"
    );
    let refused = bot.calls().iter().filter(|c| c.status == 409).count();
    assert_eq!(refused, 0, "the pollers never met at Telegram");
    assert_eq!(bot.most_polling(), 1, "never two pollers at once");
}

/// Acceptance 6: a disk-space threshold crossed raises a health alert that is pushed (here to
/// a signed webhook), titled in words, naming the system and how much space is free; once the
/// condition clears the alert is resolved, so the next time it comes it is pushed again.
#[tokio::test]
async fn a_disk_threshold_crossed_raises_a_health_alert_that_is_pushed_and_resolved_when_it_clears()
{
    let hook = Recorder::start(200, "ok");
    let home = TestHome::new("notify-disk");
    home.write_config(&format!(
        "node:\n  name: disk-box\nnotify:\n  dedupe_secs: 1\n  health:\n    check_secs: 1\n  notifiers:\n    ops:\n      kind: webhook\n      url: {}/ccm\n      secret: s3cret\n",
        hook.url()
    ));
    let disk_alerts = || -> Vec<Value> {
        hook.received()
            .into_iter()
            .map(|r| r.json())
            .filter(|body| body["subject"]["reason"] == "disk_low")
            .collect()
    };
    // Every disk is below a threshold of 100 % free.
    let mut daemon = home.start_with(|c| {
        c.env("CCM_NOTIFY__HEALTH__DISK_MIN_FREE_PERCENT", "100");
    });
    let received = wait_for("the disk alert", || {
        hook.received().into_iter().find(|r| r.json()["subject"]["reason"] == "disk_low")
    })
    .await;
    let body = received.json();
    assert_eq!(body["event"], "alert");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["system"], "disk-box");
    assert_eq!(body["title"], "disk-box: disk space low", "in words, with the system");
    let message = body["subject"]["message"].as_str().unwrap();
    assert!(
        message.contains("disk space low for the home") && message.contains("du -sh"),
        "{message}"
    );
    assert!(message.contains(" free of ") && message.contains("iB"), "how much is free: {message}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&received.body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(received.headers["x-ccm-signature"], format!("sha256={expected}").as_str());
    // Raised once while open, whatever the number of checks.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(disk_alerts().len(), 1);
    daemon.terminate();

    // The condition clears (thresholds every disk meets): the alert is resolved.
    let mut daemon = home.start_with(|c| {
        c.env("CCM_NOTIFY__HEALTH__DISK_MIN_FREE_PERCENT", "0")
            .env("CCM_NOTIFY__HEALTH__DISK_MIN_FREE_MB", "0");
    });
    let open_disk_alerts = || {
        home.run_json(&["alerts"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["reason"] == "disk_low")
            .count()
    };
    let resolved = wait_until(Duration::from_secs(10), || async { open_disk_alerts() == 0 }).await;
    assert!(resolved, "the disk alert is resolved once space is free");
    daemon.terminate();

    // It comes again: a new alert, pushed again (alone: the dedupe window is over).
    let _daemon = home.start_with(|c| {
        c.env("CCM_NOTIFY__HEALTH__DISK_MIN_FREE_PERCENT", "100");
    });
    wait_for("the second disk alert", || (disk_alerts().len() == 2).then_some(())).await;
    assert_eq!(open_disk_alerts(), 1);
}

/// A notifier that cannot be reached says why (connection refused, a TLS handshake that fails,
/// with the failing call),
/// per notifier in `ccm notify status` (text and JSON), in the daemon's log and in `ccm notify
/// test`, never with the bot token or the secret part of a URL; `getUpdates` failures are
/// logged with their cause, not as another poller.
#[tokio::test]
async fn a_failing_notifier_says_why_in_notify_status_without_its_secrets() {
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // A server that speaks plain HTTP where TLS is expected: the TLS handshake fails.
    let plain = Recorder::start(200, "ok");
    let tls = plain.url().replace("http://", "https://");
    let home = TestHome::new("notify-why");
    home.write_config(&format!(
        "notify:\n  notifiers:\n    phone:\n      kind: telegram\n      token: \"{TOKEN}\"\n      chat_ids: [{CHAT}]\n      api_url: http://{closed}\n      poll_secs: 1\n    team:\n      kind: slack\n      url: http://{closed}/services/T0SECRET/B0SECRET/XSECRETXSECRET\n    ops:\n      kind: webhook\n      url: {tls}/SECRETPATH\n"
    ));
    let daemon = home.start();
    blocked_task(&daemon, "unreachable").await;
    let status = wait_for("both notifiers' errors", || {
        let status = home.run_json(&["notify", "status"]);
        let all = status.as_array().unwrap().clone();
        let failed = all.iter().filter(|n| n["last_error"].is_object()).count();
        (failed == 3 && all.iter().any(|n| n["sends"]["pending"].as_i64() >= Some(1)))
            .then_some(all)
    })
    .await;
    let text = serde_json::to_string(&status).unwrap();
    assert!(!text.contains("ABC-test-token") && !text.contains("SECRET"), "{text}");
    for notifier in &status {
        let error = notifier["last_error"]["message"].as_str().unwrap();
        let cause = if notifier["notifier"] == "ops" {
            "received corrupt message" // the TLS handshake's cause
        } else {
            "Connection refused"
        };
        assert!(error.contains(cause), "the cause: {error}");
        assert!(notifier["last_error"]["at"].is_string(), "{notifier}");
    }
    let phone = status.iter().find(|n| n["notifier"] == "phone").unwrap();
    let error = phone["last_error"]["message"].as_str().unwrap();
    assert!(
        error.starts_with("send: sendMessage: ") || error.starts_with("getUpdates: "),
        "{error}"
    );

    let out = home.run_ok(&["notify", "status"]);
    assert!(out.contains("phone (telegram)") && out.contains("team (slack)"), "{out}");
    assert!(out.contains("last error: ") && out.contains("Connection refused"), "{out}");
    assert!(!out.contains("ABC-test-token") && !out.contains("SECRET"), "{out}");

    let log = daemon.log_text();
    assert!(log.contains("getUpdates failed; backing off"), "{log}");
    assert!(!log.contains("another poller"), "no 409 was answered: {log}");
    assert!(log.contains("Connection refused"), "{log}");
    assert!(!log.contains("ABC-test-token") && !log.contains("SECRET"), "{log}");

    let out = home.run(&["notify", "test", "team"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("team: failed: ") && stdout.contains("Connection refused"), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");
}

/// A `getUpdates` that fails for another reason than a second poller is logged with its cause;
/// only a real 409 says another poller.
#[tokio::test]
async fn a_get_updates_failure_is_logged_with_its_cause_and_only_409_blames_another_poller() {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let home = telegram_home("notify-poll-why", &bot, lease.path(), "");
    bot.fail_next("getUpdates", 1, 502, None);
    bot.fail_next("getUpdates", 1, 409, None);
    let daemon = home.start();
    wait_for("both failures", || {
        let log = daemon.log_text();
        (log.contains("getUpdates failed") && log.contains("another poller")).then_some(())
    })
    .await;
    let log = daemon.log_text();
    let bad_gateway = log.lines().find(|l| l.contains("Bad Gateway")).unwrap();
    assert!(bad_gateway.contains("getUpdates failed; backing off"), "{bad_gateway}");
    assert!(!bad_gateway.contains("another poller"), "{bad_gateway}");
    let conflict = log.lines().find(|l| l.contains("HTTP 409")).unwrap();
    assert!(conflict.contains("another poller of this bot"), "{conflict}");
}

/// A blocked task is one message: its decision, carrying what the `attempts_exhausted` alert
/// says, naming the system (several share a bot); a notifier that gets the alert but not
/// decisions still gets the alert.
#[tokio::test]
async fn a_blocked_task_is_one_message_naming_its_system_and_its_failure() {
    let bot = Telegram::start(TOKEN);
    let hook = Recorder::start(200, "ok");
    let lease = tempfile::tempdir().unwrap();
    let extra = format!(
        "    ops:\n      kind: webhook\n      url: {}/ccm\n  routes:\n    - notifier: phone\n    - notifier: ops\n      kinds: [attempts_exhausted]\nnode:\n  name: box-7\n",
        hook.url()
    );
    let home = telegram_home("notify-one", &bot, lease.path(), &extra);
    let daemon = home.start();
    blocked_task(&daemon, "single buzz").await;
    let (message_id, _) =
        wait_for("the decision", || decision_messages(&bot, "single buzz").pop()).await;
    wait_for("the alert at ops", || {
        hook.received().into_iter().find(|r| r.json()["subject"]["reason"] == "attempts_exhausted")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let about: Vec<String> = bot
        .sent()
        .iter()
        .filter_map(|m| m["text"].as_str().filter(|t| t.contains("single buzz")).map(String::from))
        .collect();
    assert_eq!(about.len(), 1, "one message for a blocked task: {about:#?}");
    let text = bot.text_of(CHAT, message_id).unwrap();
    assert!(text.starts_with("box-7: task blocked"), "the system and what happened: {text}");
    assert!(text.contains("all 1 attempts failed; last: crash"), "the alert's cause: {text}");
    assert!(!text.contains("attempts_exhausted"), "no internal codes: {text}");
    let alert =
        hook.received().into_iter().map(|r| r.json()).find(|b| b["event"] == "alert").unwrap();
    assert_eq!(alert["title"], "box-7: task blocked: every attempt failed");
}

/// Slack reads `<!channel>` as a mention of the whole channel: a task title is escaped (`&`,
/// `<`, `>`) in what ccm sends.
#[tokio::test]
async fn slack_text_is_escaped_so_a_title_cannot_ping_the_channel() {
    let slack = Recorder::start(200, "ok");
    let home = TestHome::new("notify-slack-escape");
    home.write_config(&format!(
        "notify:\n  notifiers:\n    team:\n      kind: slack\n      url: {}/services/T/B/X\n",
        slack.url()
    ));
    let daemon = home.start();
    blocked_task(&daemon, "<!channel> & <@U123|everyone>").await;
    let text = wait_for("the slack message", || {
        let texts =
            slack.received().into_iter().map(|r| r.json()["text"].as_str().unwrap().to_string());
        texts.into_iter().find(|t| t.contains("everyone"))
    })
    .await;
    assert!(text.contains("&lt;!channel&gt; &amp; &lt;@U123|everyone&gt;"), "{text}");
    assert!(!text.contains("<!channel>") && !text.contains("<@U123"), "{text}");
}

/// Telegram buttons live only while their decision waits: a decision answered elsewhere (the
/// CLI) or by its timeout has its message edited to say how, without buttons; an invalid
/// press (an answer that is not an option, a press of an answered decision) is told so and
/// leaves a pending decision's buttons alone; an approval states its deadline.
#[tokio::test]
async fn telegram_buttons_go_when_a_decision_is_answered_elsewhere_or_times_out() {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let extra = format!(
        "approvals:\n  timeout_secs: 3\n  default: deny\n  rules:\n    - tools: [Bash]\n      command: '^git push'\n{HOLDER_PROFILE}"
    );
    let home = telegram_home("notify-buttons", &bot, lease.path(), &extra);
    let daemon = home.start();

    // Answered with the CLI.
    let elsewhere = blocked_task(&daemon, "answered elsewhere").await;
    let (message_id, buttons) =
        wait_for("the decision", || decision_messages(&bot, "answered elsewhere").pop()).await;
    assert!(bot.markup_of(CHAT, message_id).is_some());
    home.run_ok(&["decide", &elsewhere, "cancel"]);
    wait_for("the buttons to go", || bot.markup_of(CHAT, message_id).is_none().then_some(())).await;
    let text = bot.text_of(CHAT, message_id).unwrap();
    assert!(
        text.contains("answered elsewhere") && text.contains("✔ cancel — decided by cli"),
        "{text}"
    );

    // A press of the answered decision is answered, and changes nothing.
    let edits = bot.ok_calls("editMessageText").len();
    bot.press(CHAT, (CHAT, "Ann"), message_id, &buttons[0]);
    let toast = wait_for("the toast", || bot.ok_calls("answerCallbackQuery").pop()).await;
    assert!(
        toast.params["text"].as_str().unwrap().contains("already answered"),
        "{:?}",
        toast.params
    );
    assert_eq!(task_state(&daemon, &elsewhere).await, "cancelled");

    // An answer that is not an option, on a pending decision: its buttons stay.
    let pending = blocked_task(&daemon, "still pending").await;
    let (pending_id, pending_buttons) =
        wait_for("the decision", || decision_messages(&bot, "still pending").pop()).await;
    let decision = pending_buttons[0].split_once(':').unwrap().0.to_string();
    bot.press(CHAT, (CHAT, "Ann"), pending_id, &format!("{decision}:bogus"));
    wait_for("the second toast", || {
        let toasts = bot.ok_calls("answerCallbackQuery");
        (toasts.len() == 2).then(|| toasts[1].clone())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(bot.markup_of(CHAT, pending_id).is_some(), "a pending decision keeps its buttons");
    assert_eq!(task_state(&daemon, &pending).await, "blocked");
    assert_eq!(bot.ok_calls("editMessageText").len(), edits, "no message was edited");

    // An approval states its deadline, and loses its buttons when it times out.
    let task = home.run_json(&["task", "add", "pushes", "--profile", "holder"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let token = daemon.agent_token(&task).await;
    let push = json!({"session_id": "s", "cwd": "/tmp", "hook_event_name": "PreToolUse", "tool_name": "Bash",
                      "tool_input": {"command": "git push origin main"}});
    let hook = daemon
        .http
        .post(daemon.url("/api/hooks?system=claude"))
        .bearer_auth(&daemon.token)
        .header("x-ccm-agent-token", token)
        .json(&push)
        .send();
    let waiting = tokio::spawn(hook);
    let (approval_id, _) =
        wait_for("the approval", || decision_messages(&bot, "git push origin main").pop()).await;
    let text = bot.text_of(CHAT, approval_id).unwrap();
    assert!(
        text.contains("Unanswered by ") && text.contains("(in 3s), it is answered deny"),
        "{text}"
    );
    waiting.await.unwrap().unwrap();
    wait_for("the approval's buttons to go", || {
        bot.markup_of(CHAT, approval_id).is_none().then_some(())
    })
    .await;
    let text = bot.text_of(CHAT, approval_id).unwrap();
    assert!(text.contains("⏱ deny: nobody answered in time"), "{text}");
}

/// `ccm notify test` sends through each notifier in its format and prints what it answered;
/// a failing one makes the command fail and says why.
#[test]
fn notify_test_sends_through_each_notifier_and_prints_the_answer() {
    let ntfy = Recorder::start(200, r#"{"id":"hwQ2YpKdmg","event":"message","topic":"alerts"}"#);
    let slack = Recorder::start(200, "ok");
    let hook = Recorder::start(202, "");
    let home = TestHome::new("notify-test");
    home.write_config(&format!(
        "node:\n  name: box-1\nnotify:\n  notifiers:\n    push:\n      kind: ntfy\n      url: {}/alerts\n      token: tk_abc\n      click: https://example.com/ccm\n    team:\n      kind: slack\n      url: {}/services/T/B/X\n    hook:\n      kind: webhook\n      url: {}/in\n",
        ntfy.url(),
        slack.url(),
        hook.url()
    ));
    let out = home.run_ok(&["notify", "test"]);
    assert!(out.contains("push: ok: HTTP 200") && out.contains("hwQ2YpKdmg"), "{out}");
    assert!(out.contains("team: ok: HTTP 200: ok"), "{out}");
    assert!(out.contains("hook: ok: HTTP 202"), "{out}");

    let published = &ntfy.received()[0];
    assert_eq!(published.path, "/", "JSON publishing goes to the root URL");
    assert_eq!(published.headers["authorization"], "Bearer tk_abc");
    let body = published.json();
    assert_eq!(body["topic"], "alerts");
    assert_eq!(body["title"], "box-1: ccm test message", "the system it comes from");
    assert_eq!(body["priority"], 3);
    assert_eq!(body["click"], "https://example.com/ccm");
    assert_eq!(body["actions"][0]["action"], "view");
    let text = slack.received()[0].json()["text"].as_str().unwrap().to_string();
    assert!(text.starts_with("*box-1: ccm test message*"), "{text}");
    let webhook = &hook.received()[0];
    assert_eq!(webhook.json()["event"], "test");
    assert!(webhook.headers.get("x-ccm-signature").is_none(), "unsigned without a secret");

    // One notifier by name; a failure is printed and fails the command.
    slack.script(&[(404, "channel_not_found")]);
    let out = home.run(&["notify", "test", "team"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("team: failed: HTTP 404: channel_not_found"), "{stdout}");
    assert_eq!(ntfy.received().len(), 1, "only the named notifier");
    let out = home.run(&["notify", "test", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no notifier named `nope`"));
}

/// A notifier config with a mistake is refused with the key and the reason.
#[test]
fn bad_notify_config_is_refused_naming_the_key() {
    let home = TestHome::new("notify-config");
    for (yaml, expected) in [
        (
            "notify:\n  notifiers:\n    t:\n      kind: telegram\n      chat_ids: []\n",
            "chat_ids must name at least one chat",
        ),
        (
            "notify:\n  notifiers:\n    s:\n      kind: slack\n      url: ftp://x\n",
            "is not an http(s) URL",
        ),
        ("notify:\n  routes:\n    - notifier: ghost\n", "names unknown notifier `ghost`"),
        ("notify:\n  notifiers:\n    s:\n      kind: pager\n      url: http://x\n", "pager"),
    ] {
        home.write_config(yaml);
        let out = home.run(&["status"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{yaml}: {stderr}");
    }
}

/// Acceptance 5: `ccm service install` writes a unit that `systemd-analyze verify` accepts;
/// `uninstall` removes exactly it, and refuses a file ccm did not write.
#[test]
fn service_install_writes_a_unit_systemd_verifies_and_uninstall_removes_exactly_it() {
    let home = TestHome::new("notify-service");
    let dir = home.dir.path().join("units");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("other.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    let run = |args: &[&str]| {
        let mut command = home.ccm();
        command.env("CCM_SERVICE_DIR", &dir).args(args);
        command.output().unwrap()
    };
    let out = run(&["service", "install", "--no-start", "--profile", "minimal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = dir.join("ccm.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("Restart=on-failure") && text.contains("KillMode=process"), "{text}");
    assert!(text.contains("CCM_DAEMON__PROFILE=minimal"), "{text}");
    assert!(text.contains(&format!("CCM_HOME={}", home.home().display())), "{text}");
    let verify =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && !said.contains("ccm.service:"), "systemd-analyze: {said}");
    let status: Value =
        serde_json::from_slice(&run(&["service", "status", "--json"]).stdout).unwrap();
    assert_eq!(status["installed"], true);
    assert!(text.contains("Environment=\"PATH="), "the installing shell's PATH: {text}");

    let out = run(&["service", "uninstall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["other.service"], "only the unit ccm wrote is removed");

    std::fs::write(&unit, "[Service]\nExecStart=/bin/true\n").unwrap();
    let out = run(&["service", "install", "--no-start"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not written by ccm"));
    let out = run(&["service", "uninstall"]);
    assert!(!out.status.success());
    assert!(unit.exists(), "a unit ccm did not write is left alone");
}

/// The unit carries the installing shell's PATH, so an agent program found there (a `claude`
/// in `~/.local/bin`) is found under systemd too; `ccm service status` runs `ccm doctor` as the
/// service would (the unit's PATH and home, none of the shell's `CCM_*`), and says when the
/// unit sets no PATH.
#[test]
fn service_unit_carries_the_shell_path_and_status_runs_doctor_as_the_service_would() {
    let home = TestHome::new("notify-service-path");
    home.write_config(
        "tasks:\n  profile: local\nprofiles:\n  local:\n    command: [my-agent-cli, run]\n",
    );
    let dir = home.dir.path().join("units");
    let bin = home.dir.path().join("local bin");
    std::fs::create_dir_all(&bin).unwrap();
    let agent = bin.join("my-agent-cli");
    std::fs::write(&agent, "#!/bin/sh\necho 1.0\n").unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&agent, executable).unwrap();
    let run = |path: &str, args: &[&str]| {
        let mut command = home.ccm();
        command.env("CCM_SERVICE_DIR", &dir).env("PATH", path).args(args);
        command.output().unwrap()
    };
    let shell_path = format!("{}:/usr/bin:/bin", bin.display());
    let out = run(&shell_path, &["service", "install", "--no-start"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = dir.join("ccm.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let expected = format!("Environment=\"PATH={}:/usr/bin:/bin:", bin.display());
    assert!(text.contains(&expected), "{text}");
    let verify =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && !said.contains("ccm.service:"), "systemd-analyze: {said}");

    // Status from a shell whose PATH lacks the agent's folder: doctor runs with the unit's.
    let out = run("/usr/bin:/bin", &["service", "status", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let doctor = &status["doctor"];
    assert_eq!(doctor["path_from_unit"], true, "{status}");
    let output = doctor["output"].as_str().unwrap();
    assert!(output.contains(&agent.display().to_string()), "found on the unit's PATH: {output}");
    assert!(!output.contains("`my-agent-cli` (profile local) is not on PATH"), "{output}");

    // A unit without PATH (an older ccm wrote it): doctor runs with systemd's default PATH and
    // finds no agent; the text says what to do.
    let old: String =
        text.lines().filter(|l| !l.contains("PATH=")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&unit, old).unwrap();
    let out = run(&shell_path, &["service", "status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("systemd's default PATH"), "{stdout}");
    assert!(stdout.contains("run `ccm service install` again"), "{stdout}");
    assert!(stdout.contains("`my-agent-cli` (profile local) is not on PATH"), "{stdout}");
}

/// The optional summary goes out every `notify.summary_secs`: tasks per state, today's cost
/// and the open alerts.
#[tokio::test]
async fn the_summary_names_tasks_per_state_and_the_open_alerts() {
    let hook = Recorder::start(200, "ok");
    let home = TestHome::new("notify-summary");
    home.write_config(&format!(
        "notify:\n  summary_secs: 1\n  notifiers:\n    ops:\n      kind: webhook\n      url: {}/ccm\n",
        hook.url()
    ));
    let daemon = home.start();
    blocked_task(&daemon, "summarized").await;
    let summary = wait_for("a summary naming the blocked task", || {
        hook.received().into_iter().map(|r| r.json()).find(|body| {
            body["event"] == "summary" && body["text"].as_str().unwrap().contains("blocked 1")
        })
    })
    .await;
    let text = summary["text"].as_str().unwrap();
    assert!(text.contains("cost today: $0.00"), "{text}");
    assert!(text.contains("attempts_exhausted"), "{text}");
}

/// A task of the manual profile driven to `complete` through the API.
async fn completed_task(daemon: &Daemon, title: &str) {
    let (status, task) = daemon.post("/api/tasks", json!({ "title": title })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(10), || async { task_state(daemon, &id).await == "queued" })
            .await
    );
    for event in [
        json!({ "event": "start" }),
        json!({ "event": "worker_finished" }),
        json!({ "event": "verify_passed" }),
        json!({ "event": "report_ready", "supervised": false }),
    ] {
        let (status, body) = daemon.post(&format!("/api/tasks/{id}/events"), event).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(task_state(daemon, &id).await, "complete");
}

/// The local date, as the daemon reads it.
fn local_date() -> String {
    let out = std::process::Command::new("date").arg("+%F").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Issue 25, acceptance 6: the daily summary (`notify.daily_summary`) goes out once a day from
/// its time on; for a day with two completions, a failure and a pending decision it is one
/// Telegram message under 1,000 characters with those counts, naming the failure and the
/// decision (`ccm notify daily` prints it, `--now` sends it).
#[tokio::test]
async fn the_daily_summary_is_one_short_message_with_the_days_counts() {
    let bot = Telegram::start(TOKEN);
    let lease = tempfile::tempdir().unwrap();
    let extra = "  daily_summary:\n    at: \"00:00\"\n";
    let home = telegram_home("notify-daily", &bot, lease.path(), extra);
    let day = local_date();
    let daemon = home.start();
    let daily = |bot: &Telegram| -> Vec<String> {
        bot.sent()
            .iter()
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .filter(|t| t.contains("daily summary"))
            .collect()
    };
    // Its time (00:00) has come today: the daemon sends today's at once.
    let scheduled = wait_for("the scheduled summary", || daily(&bot).into_iter().next()).await;
    assert!(scheduled.contains("0 completed, 0 failed, 0 waiting for a decision"), "{scheduled}");

    completed_task(&daemon, "ship the parser").await;
    completed_task(&daemon, "fix the docs").await;
    blocked_task(&daemon, "flaky integration build").await;

    let printed = home.run_ok(&["notify", "daily"]);
    assert!(printed.contains("2 completed, 1 failed, 1 waiting for a decision"), "{printed}");
    assert_eq!(daily(&bot).len(), 1, "printing sends nothing");
    let out = home.run_ok(&["notify", "daily", "--now"]);
    assert!(out.contains("phone: ok"), "{out}");

    let sent = daily(&bot);
    assert_eq!(sent.len(), 2, "one message per send: {sent:?}");
    let text = &sent[1];
    assert!(text.chars().count() < 1_000, "{} characters: {text}", text.chars().count());
    assert!(text.contains(": daily summary"), "the system it comes from: {text}");
    assert!(text.contains("2 completed, 1 failed, 1 waiting for a decision"), "{text}");
    assert!(text.contains("blocked: flaky integration build"), "{text}");
    assert!(text.contains("decide: ") && text.contains("ccm decide "), "{text}");
    assert!(text.contains("cost $0.00"), "{text}");
    if local_date() == day {
        assert_eq!(
            daily(&bot).iter().filter(|t| t.contains("0 completed")).count(),
            1,
            "the scheduled summary goes out once a day"
        );
    }

    // A time of day that is not HH:MM is refused naming the key.
    home.write_config(&telegram_config(&bot, lease.path(), "  daily_summary:\n    at: 6pm\n"));
    let out = home.run(&["notify", "daily"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("notify.daily_summary.at"), "{stderr}");
}
