//! Reaching the operator away from the terminal.
//!
//! - `config`: the `notify:` section (notifiers, routing rules, digest, health checks).
//! - `telegram`: the Bot API: messages with decision buttons, `getUpdates` long polling.
//! - `ntfy`, `slack`, `webhook`: the one-way notifiers.
//! - `health`: alerts the node raises about itself (disk space, orphan windows, a crash).
//! - `service`: `ccm service install|uninstall|status` (systemd user unit, launchd agent).
//! - `cli`: `ccm notify test` and `ccm service`.
//!
//! Delivery is durable: a trigger queues a notification in the transaction that inserts an
//! alert or a decision; [`start`] runs one router (queue → one send per notifier the routing
//! rules name, deduplicated by key) and one worker per notifier (due sends one by one, with
//! retries and backoff; the digest when its oldest item has waited `digest_secs`). A send is
//! marked sent right after the notifier accepted it, so a restart sends what was pending and
//! never what was sent (a crash between the two, a window of milliseconds, repeats one).

pub mod cli;
pub mod config;
pub mod daily;
pub mod health;
pub mod ntfy;
pub mod service;
pub mod slack;
pub mod telegram;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder as _;
use ccm_schema::{DecisionKind, Severity, Timestamp};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{HealthConfig, Notifier, NotifyConfig, Route};

use crate::store::{Outgoing, Store, Subject};

/// A message for a notifier, whatever its format.
#[derive(Debug, Clone)]
pub struct Message {
    /// `<system>: <what happened, in words>`: several systems may share one bot or channel.
    pub title: String,
    pub text: String,
    pub severity: Severity,
    /// The system it comes from (`node.name`, else the hostname).
    pub system: String,
    /// A decision the operator may answer with a button: its id and options.
    pub decision: Option<(uuid::Uuid, Vec<String>)>,
    /// `alert`, `decision`, `digest` or `test` (the webhook's `event`).
    pub event: &'static str,
    /// The alert or decision as JSON (the webhook's body carries it).
    pub subject: serde_json::Value,
}

impl Message {
    /// The message of an alert or a decision of `system`.
    pub fn of(subject: &Subject, system: &str) -> Message {
        match subject {
            Subject::Alert(alert) => Message {
                title: format!("{system}: {}", title(&alert.reason)),
                text: alert.message.clone(),
                severity: alert.severity,
                system: system.to_string(),
                decision: None,
                event: "alert",
                subject: serde_json::to_value(alert).unwrap_or_default(),
            },
            Subject::Decision(decision) => {
                // A blocked task's decision carries its `attempts_exhausted` alert (which is
                // not sent alone where the decision goes): as urgent as the alert.
                let (what, severity) = match decision.kind {
                    DecisionKind::RetryOrCancel => {
                        ("task blocked: retry or cancel?", Severity::Critical)
                    }
                    DecisionKind::ApproveTool => ("approval needed", Severity::Warning),
                    DecisionKind::ChangeRequest => {
                        ("change request: approve or reject?", Severity::Warning)
                    }
                    DecisionKind::CostCap => {
                        ("daily cost cap reached: raise it?", Severity::Warning)
                    }
                };
                Message {
                    title: format!("{system}: {what}"),
                    text: format!(
                        "{}\n(or: ccm decide {} {})",
                        decision.question,
                        ccm_schema::types::short_id(&decision.id),
                        decision.options.0.join("|")
                    ),
                    severity,
                    system: system.to_string(),
                    decision: Some((decision.id, decision.options.0.clone())),
                    event: "decision",
                    subject: serde_json::to_value(decision).unwrap_or_default(),
                }
            }
        }
    }

    /// One message for many waiting items: a line per dedupe key, with its count.
    pub fn digest(items: &[Outgoing], system: &str) -> Message {
        let mut groups: BTreeMap<&str, (usize, &Subject)> = BTreeMap::new();
        for item in items {
            groups.entry(item.dedupe_key.as_str()).or_insert((0, &item.subject)).0 += 1;
        }
        let mut lines: Vec<(usize, &Subject)> = groups.into_values().collect();
        lines.sort_by_key(|(_, s)| std::cmp::Reverse(s.severity()));
        let text = lines
            .iter()
            .map(|(count, subject)| {
                let what = match subject {
                    Subject::Alert(alert) => title(&alert.reason),
                    Subject::Decision(_) => "decision needed".to_string(),
                };
                let m = Message::of(subject, system);
                format!("{count}× [{}] {what}: {}", m.severity, first_line(&m.text))
            })
            .collect::<Vec<_>>()
            .join("\n");
        Message {
            title: format!("{system}: digest of {} item(s)", items.len()),
            text,
            severity: lines.first().map_or(Severity::Info, |(_, s)| s.severity()),
            system: system.to_string(),
            decision: None,
            event: "digest",
            subject: serde_json::Value::Null,
        }
    }

    /// The periodic summary: tasks per state, today's cost, the open alerts (worst first).
    pub async fn summary(store: &Store, system: &str) -> crate::store::Result<Message> {
        let states = store.state_counts().await?;
        let now = Timestamp::now();
        let today = Timestamp(now.millis() - now.millis() % 86_400_000);
        let cost = store.cost_per_day(today).await?.iter().fold(0.0, |sum, d| sum + d.cost_usd);
        let mut alerts = store.open_alerts().await?;
        alerts.sort_by_key(|a| std::cmp::Reverse(a.severity));
        let tasks = if states.is_empty() {
            "none".to_string()
        } else {
            states.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ")
        };
        let mut text =
            format!("tasks: {tasks}\ncost today: ${cost:.2}\nopen alerts: {}", alerts.len());
        for alert in alerts.iter().take(5) {
            text.push_str(&format!(
                "\n- [{}] {} ({}): {}",
                alert.severity,
                title(&alert.reason),
                alert.reason,
                first_line(&alert.message)
            ));
        }
        Ok(Message {
            title: format!("{system}: summary"),
            text,
            severity: Severity::Info,
            system: system.to_string(),
            decision: None,
            event: "summary",
            subject: serde_json::Value::Null,
        })
    }

    pub fn test(name: &str, system: &str) -> Message {
        Message {
            title: format!("{system}: ccm test message"),
            text: format!("notifier `{name}` of {system} works"),
            severity: Severity::Info,
            system: system.to_string(),
            decision: None,
            event: "test",
            subject: serde_json::Value::Null,
        }
    }
}

/// What an alert's reason means, in words (the reason itself is for routing rules and
/// `ccm alerts`).
pub fn title(reason: &str) -> String {
    let known = match reason {
        "attempts_exhausted" => "task blocked: every attempt failed",
        "fatal_error" => "task failed: fatal error",
        "dependency_failed" => "task cannot start: a dependency failed",
        "supervisory_issue" => "task needs a look: the supervisor flagged it",
        "permission_denied" => "tool calls refused",
        "permission_needed" => "permission needed",
        "approval_needed" => "approval needed",
        "write_denied" => "write refused: the file belongs to another task",
        "stalled" => "agent silent",
        "work_kept" => "work kept on a branch",
        "config_invalid" => "configuration invalid",
        "disk_low" => "disk space low",
        "orphan_window" => "tmux window without an agent",
        "daemon_crashed" => "daemon restarted after a crash",
        "sync_paused" => "sync paused",
        "unroutable" => "routed task cannot be placed",
        other => return other.replace('_', " "),
    };
    known.to_string()
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// This system's name, as the store records it: `node.name`, else the hostname.
pub fn system_name(config: &crate::config::Config) -> String {
    config
        .node
        .name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
}

/// Why a send failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// The notifier asked to wait this long before anything else is sent (HTTP 429).
    pub retry_after: Option<Duration>,
    /// Sending it again cannot succeed (a 4xx other than 408, 409 and 429).
    pub permanent: bool,
    /// The HTTP status (or Telegram's `error_code`) of an answer that is not a success;
    /// `None` when no answer came.
    pub status: Option<u16>,
}

impl SendError {
    pub fn transient(message: impl Into<String>) -> SendError {
        SendError { message: message.into(), retry_after: None, permanent: false, status: None }
    }

    /// Classifies an HTTP answer that is not a success.
    pub fn status(status: u16, body: &str, retry_after: Option<Duration>) -> SendError {
        let body: String = body.chars().take(300).collect();
        SendError {
            message: format!("HTTP {status}: {}", body.trim()),
            retry_after: retry_after.filter(|_| status == 429),
            permanent: (400..500).contains(&status) && !matches!(status, 408 | 409 | 429),
            status: Some(status),
        }
    }

    /// A request that got no answer, with its causes (`error sending request: client error
    /// (Connect): tcp connect error: Connection refused`), never its URL (a Telegram URL holds
    /// the token, a Slack one is the secret); `secrets` are cut out of the causes too.
    pub fn request(error: reqwest::Error, secrets: &[&str]) -> SendError {
        SendError::transient(redact(&ccm_sync::error_chain(&error.without_url()), secrets))
    }
}

/// `text` with each non-empty secret replaced by `…`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text.to_string(), |text, secret| text.replace(secret, "…"))
}

/// Sends `request` and reads the answer: the body on a 2xx, else a [`SendError`] with the
/// status, the body and `Retry-After`. `secrets` (parts of the URL that are credentials) never appear in an
/// error.
async fn answer(request: reqwest::RequestBuilder, secrets: &[&str]) -> Result<String, SendError> {
    let response = request.send().await.map_err(|e| SendError::request(e, secrets))?;
    let status = response.status().as_u16();
    let retry_after = retry_after(response.headers());
    let text = response.text().await.map_err(|e| SendError::request(e, secrets))?;
    if !(200..300).contains(&status) {
        return Err(SendError::status(status, &text, retry_after));
    }
    Ok(format!("HTTP {status}: {}", text.trim()))
}

/// `Retry-After` in seconds, as Slack and ntfy send it.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// A configured notifier, ready to send.
pub enum Sender {
    Telegram(telegram::Telegram),
    Ntfy(ntfy::Ntfy),
    Slack(slack::Slack),
    Webhook(webhook::Webhook),
}

impl Sender {
    /// Builds notifier `name`; the Telegram token comes from the config or `auth.json`.
    pub fn new(
        name: &str,
        notifier: &Notifier,
        auth_token: Option<&str>,
    ) -> Result<Sender, SendError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| SendError::request(e, &[]))?;
        Ok(match notifier {
            Notifier::Telegram { .. } => {
                Sender::Telegram(telegram::Telegram::new(name, notifier, auth_token)?)
            }
            Notifier::Ntfy { url, token, priority, click } => Sender::Ntfy(ntfy::Ntfy {
                http,
                url: url.clone(),
                token: token.clone(),
                priority: *priority,
                click: click.clone(),
            }),
            Notifier::Slack { url } => Sender::Slack(slack::Slack { http, url: url.clone() }),
            Notifier::Webhook { url, secret } => {
                Sender::Webhook(webhook::Webhook { http, url: url.clone(), secret: secret.clone() })
            }
        })
    }

    /// Sends `message`. `refs` holds what earlier attempts delivered and gains what this one
    /// does (Telegram: the chats and message ids), so a retry repeats nothing. Returns a line
    /// saying what the notifier answered.
    pub async fn send(
        &self,
        message: &Message,
        refs: &mut serde_json::Value,
    ) -> Result<String, SendError> {
        match self {
            Sender::Telegram(t) => t.send(message, refs).await,
            Sender::Ntfy(n) => n.send(message).await,
            Sender::Slack(s) => s.send(message).await,
            Sender::Webhook(w) => w.send(message).await,
        }
    }
}

/// What the daemon lends the notifiers: the store, and what to wake after a decision was
/// answered from a notifier.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub config: Arc<crate::config::Config>,
    pub home: crate::home::Home,
    /// Called after a decision was answered (wakes the scheduler, the runtime and the hooks
    /// waiting for it).
    pub answered: Arc<dyn Fn() + Send + Sync>,
    /// The central, when sync is configured: a Telegram bot shared by several systems is
    /// polled by the holder of its central lease.
    pub central: Option<ccm_sync::Client>,
    pub shutdown: CancellationToken,
}

/// Starts the router, one worker per notifier, the Telegram pollers and the health checks; the
/// router (`notify`) and each worker (`notify:<name>`) mark their steps on a beat in `loops`.
pub fn start(context: Context, loops: &crate::watchdog::Loops) -> Vec<tokio::task::JoinHandle<()>> {
    let notify = &context.config.notify;
    let auth = context.home.read_auth().ok();
    let telegram_token = auth.as_ref().and_then(|a| a.telegram_token.as_deref());
    let system = system_name(&context.config);
    let mut tasks = Vec::new();
    let mut wakes = Vec::new();
    for (name, notifier) in &notify.notifiers {
        let sender = match Sender::new(name, notifier, telegram_token) {
            Ok(sender) => Arc::new(sender),
            Err(error) => {
                warn!(notifier = %name, %error, "notifier not started");
                let (store, name) = (context.store.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    let problem = format!("not started: {error}");
                    if let Err(error) = store.notifier_failed(&name, &problem).await {
                        warn!(notifier = %name, %error, "cannot record why the notifier failed");
                    }
                }));
                continue;
            }
        };
        if let Sender::Telegram(bot) = &*sender {
            tasks.push(tokio::spawn(telegram::poll(bot.clone(), context.clone())));
        }
        let wake = Arc::new(Notify::new());
        wakes.push(wake.clone());
        let worker = Worker {
            name: name.clone(),
            sender,
            system: system.clone(),
            wake,
            beat: loops.add(format!("notify:{name}")),
            context: context.clone(),
        };
        tasks.push(tokio::spawn(worker.run()));
    }
    tasks.push(tokio::spawn(router(context.clone(), wakes, loops.add("notify"))));
    tasks.push(tokio::spawn(health::run(context)));
    tasks
}

/// Routes new notifications into sends, after every commit of this process and every second
/// (for writes of other processes: the CLI, `ccm hook`).
async fn router(context: Context, wakes: Vec<Arc<Notify>>, beat: Arc<ccm_sync::Beat>) {
    let notify = context.config.notify.clone();
    let mut changes = context.store.changes();
    loop {
        let step = beat.step().await;
        match context
            .store
            .route_notifications(
                |subject| notify.route(subject.kind(), subject.severity()),
                Duration::from_secs(notify.dedupe_secs),
            )
            .await
        {
            Ok(0) => {}
            Ok(_) => wakes.iter().for_each(|w| w.notify_one()),
            Err(error) => warn!(%error, "cannot route notifications; retrying"),
        }
        drop(step);
        // At most 50 passes a second, however many commits there are (hook events).
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::select! {
            () = context.shutdown.cancelled() => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Delay before attempt `attempts + 1` of a failed send: exponential from 1 s, at most 5 min.
fn backoff(attempts: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts as usize)
        .unwrap_or(Duration::from_secs(300))
}

/// Sends give up after this many attempts (about a day with the backoff's ceiling).
const MAX_ATTEMPTS: u32 = 300;

/// One notifier's delivery: its due sends one by one, its digest and summary when due, and
/// (Telegram) the buttons of decisions answered elsewhere taken away.
struct Worker {
    /// The notifier's name in the config: the key of its sends.
    name: String,
    sender: Arc<Sender>,
    /// This system's name, in every message.
    system: String,
    /// Woken by the router when it queued sends.
    wake: Arc<Notify>,
    /// The worker's liveness, for the watchdog.
    beat: Arc<ccm_sync::Beat>,
    context: Context,
}

impl Worker {
    async fn run(self) {
        let context = &self.context;
        let digest_wait = Duration::from_secs(context.config.notify.digest_secs);
        let summary = context.config.notify.summary_secs.map(Duration::from_secs);
        loop {
            let step = self.beat.step().await;
            let mut round = self.deliver(digest_wait).await;
            if let (Ok(None), Some(every)) = (&round, summary) {
                round = self.summarize(every).await;
            }
            if let (Ok(None), Some(daily)) = (&round, &context.config.notify.daily_summary) {
                round = self.daily(daily).await;
            }
            if let (Ok(None), Sender::Telegram(bot)) = (&round, &*self.sender) {
                round = bot.close_answered(&context.store, &self.system).await;
            }
            drop(step);
            match round {
                // The notifier asked for quiet (a 429): nothing goes to it meanwhile, wake-ups
                // included.
                Ok(Some(quiet)) => {
                    tokio::select! {
                        () = context.shutdown.cancelled() => return,
                        () = tokio::time::sleep(quiet) => continue,
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(notifier = %self.name, %error, "cannot read or record sends; retrying")
                }
            }
            tokio::select! {
                () = context.shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Records why a send failed, for `ccm notify status` (a store that cannot record it is
    /// only logged: the send's own bookkeeping goes on).
    async fn failed(&self, what: &str, error: &SendError) {
        let message = format!("{what}: {error}");
        if let Err(error) = self.context.store.notifier_failed(&self.name, &message).await {
            warn!(notifier = %self.name, %error, "cannot record why the notifier failed");
        }
    }

    /// Sends the daily summary when its time of day has come and none went out today (local
    /// dates); returns how long to wait after a failure.
    async fn daily(&self, daily: &daily::DailySummary) -> crate::store::Result<Option<Duration>> {
        let (name, store) = (self.name.as_str(), &self.context.store);
        let Ok(at) = daily.minute() else { return Ok(None) }; // validated with the config
        let key = format!("daily:{name}");
        let now = Timestamp::now();
        let (today, minute) = daily::local_day_and_minute(now);
        let last = store.notify_value(&key).await?;
        if !daily::due(at, &today, minute, last.as_deref()) {
            return Ok(None);
        }
        let message = daily::message(store, &self.system, now).await?;
        match self.sender.send(&message, &mut serde_json::Value::Null).await {
            Ok(_) => {
                store.set_notify_value(&key, &today).await?;
                Ok(None)
            }
            Err(error) => {
                warn!(notifier = name, %error, "daily summary failed; retrying");
                self.failed("daily summary", &error).await;
                Ok(Some(error.retry_after.unwrap_or(Duration::from_secs(30))))
            }
        }
    }

    /// Sends the summary when the last one is `every` old (the first one `every` after the
    /// notifier was first started); returns how long to wait after a failure.
    async fn summarize(&self, every: Duration) -> crate::store::Result<Option<Duration>> {
        let (name, store) = (self.name.as_str(), &self.context.store);
        let key = format!("summary:{name}");
        let now = Timestamp::now();
        let Some(last) = store.notify_value(&key).await?.and_then(|v| v.parse::<i64>().ok()) else {
            store.set_notify_value(&key, &now.millis().to_string()).await?;
            return Ok(None);
        };
        if now.millis() - last < i64::try_from(every.as_millis()).unwrap_or(i64::MAX) {
            return Ok(None);
        }
        let summary = Message::summary(store, &self.system).await?;
        match self.sender.send(&summary, &mut serde_json::Value::Null).await {
            Ok(_) => {
                store.set_notify_value(&key, &now.millis().to_string()).await?;
                Ok(None)
            }
            Err(error) => {
                warn!(notifier = name, %error, "summary failed; retrying");
                self.failed("summary", &error).await;
                Ok(Some(error.retry_after.unwrap_or(Duration::from_secs(30))))
            }
        }
    }

    /// One round of sends; returns how long the notifier asked to be left alone, if it did.
    async fn deliver(&self, digest_wait: Duration) -> crate::store::Result<Option<Duration>> {
        let (name, store) = (self.name.as_str(), &self.context.store);
        for mut out in store.due_sends(name, 50).await? {
            let message = Message::of(&out.subject, &self.system);
            // Telegram's buttons stay until the decision is answered (then `close_answered`
            // takes them away).
            let buttons =
                message.decision.is_some() && matches!(&*self.sender, Sender::Telegram(_));
            match self.sender.send(&message, &mut out.refs).await {
                Ok(answer) => {
                    info!(notifier = name, notification = out.notification, %answer, "sent");
                    store
                        .finish_sends(name, &[out.notification], "sent", Some(&out.refs), buttons)
                        .await?;
                }
                Err(error) if error.permanent || out.attempts + 1 >= MAX_ATTEMPTS => {
                    warn!(notifier = name, notification = out.notification, %error, "giving up");
                    store
                        .finish_sends(name, &[out.notification], "failed", Some(&out.refs), false)
                        .await?;
                    self.failed("send", &error).await;
                }
                Err(error) => {
                    let wait = error.retry_after.unwrap_or_else(|| backoff(out.attempts));
                    warn!(notifier = name, notification = out.notification, %error, ?wait, "send failed; retrying");
                    let next = Timestamp::now().after(wait);
                    store
                        .retry_send(name, out.notification, next, &error.message, &out.refs)
                        .await?;
                    self.failed("send", &error).await;
                    // A 429 holds every message to this notifier, not only this one.
                    return Ok(Some(wait));
                }
            }
        }
        let digest = store.digest_due(name, digest_wait).await?;
        if !digest.is_empty() {
            let ids: Vec<i64> = digest.iter().map(|o| o.notification).collect();
            let message = Message::digest(&digest, &self.system);
            match self.sender.send(&message, &mut serde_json::Value::Null).await {
                Ok(_) => store.finish_sends(name, &ids, "digested", None, false).await?,
                Err(error) => {
                    let wait = error.retry_after.unwrap_or(Duration::from_secs(30));
                    warn!(notifier = name, %error, ?wait, "digest failed; retrying");
                    self.failed("digest", &error).await;
                    return Ok(Some(wait));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_alert_reason_reads_as_words_known_or_not() {
        assert_eq!(super::title("disk_low"), "disk space low");
        assert_eq!(super::title("some_new_reason"), "some new reason");
    }

    #[test]
    fn redact_cuts_every_secret_out_of_a_cause_chain() {
        let chain = "sendMessage: error for /bot123:ABC/x: 123:ABC refused";
        assert_eq!(
            super::redact(chain, &["123:ABC", ""]),
            "sendMessage: error for /bot…/x: … refused"
        );
    }
}
