//! The Telegram Bot API (`/work/shared/reference/agent-interfaces.md` section 4): messages
//! with inline buttons for decisions, and button presses by long polling `getUpdates`.
//!
//! The token is part of every request URL, so it never appears in a log line or an error:
//! errors are built from the answer's `description` or from reqwest's error without its URL.
//! Answers are read leniently (a JSON value, fields looked up one by one).
//!
//! Only one process may poll a bot at a time (Telegram answers a second poller 409): pollers
//! of one token on this machine take turns with a lock file, systems that sync to one central
//! take turns with a central lease (`api.acquire_lease`, renewed before each long poll), and a
//! 409 (a poller elsewhere) makes this one back off. The update offset is stored after each update is handled and before
//! it is answered, in the database and in a file next to the lock (so the next poller of this
//! machine starts where the last one stopped): a restart or a hand-over neither replays a
//! handled press nor loses one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;
use serde_json::{json, Value};
use sha2::Digest as _;
use tracing::{info, warn};

use ccm_schema::Decision;

use super::{Context, Message, Notifier, SendError};
use crate::store::{RetryPolicy, Store, StoreError, Subject};

/// Telegram's limit on a message's text.
const MAX_TEXT: usize = 4096;
/// About one message per second per chat (the Bot FAQ).
const PACE: Duration = Duration::from_secs(1);

/// A bot, with the chats it talks to.
#[derive(Clone)]
pub struct Telegram {
    name: String,
    http: reqwest::Client,
    /// `<api_url>/bot<token>`: never logged.
    base: Arc<str>,
    /// The token, cut out of every error.
    token: Arc<str>,
    /// A short hash of the token, naming its offset and its lock file.
    token_id: String,
    chats: Arc<Vec<i64>>,
    poll_secs: u64,
    lease_dir: PathBuf,
    dashboard_url: Option<String>,
    /// When each chat was last sent a message.
    pace: Arc<tokio::sync::Mutex<HashMap<i64, Instant>>>,
}

impl Telegram {
    pub fn new(
        name: &str,
        notifier: &Notifier,
        auth_token: Option<&str>,
    ) -> Result<Telegram, SendError> {
        let Notifier::Telegram { token, chat_ids, api_url, poll_secs, lease_dir, dashboard_url } =
            notifier
        else {
            return Err(SendError::transient("not a telegram notifier"));
        };
        let token = token.as_deref().or(auth_token).filter(|t| !t.trim().is_empty()).ok_or_else(|| {
            SendError {
                message: format!(
                    "notifier `{name}`: no bot token; set `token` in its config or `telegram_token` in auth.json"
                ),
                retry_after: None,
                permanent: true,
                status: None,
            }
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| SendError::request(e, &[]))?;
        let hash = sha2::Sha256::digest(token.as_bytes());
        Ok(Telegram {
            name: name.to_string(),
            http,
            base: format!("{}/bot{}", api_url.trim_end_matches('/'), token.trim()).into(),
            token: token.trim().into(),
            token_id: hash.iter().take(8).map(|b| format!("{b:02x}")).collect(),
            chats: Arc::new(chat_ids.clone()),
            poll_secs: *poll_secs,
            lease_dir: lease_dir.clone().unwrap_or_else(std::env::temp_dir),
            dashboard_url: dashboard_url.clone(),
            pace: Arc::default(),
        })
    }

    /// Calls a Bot API method; the `result` of an `ok` answer, else the error it describes.
    async fn call(
        &self,
        method: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, SendError> {
        let response = self
            .http
            .post(format!("{}/{method}", self.base))
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.request_failed(method, e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| self.request_failed(method, e))?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if answer["ok"] == true {
            return Ok(answer["result"].clone());
        }
        let code =
            answer["error_code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(status);
        let description = answer["description"].as_str().unwrap_or(&text);
        let retry_after = answer["parameters"]["retry_after"].as_u64().map(Duration::from_secs);
        if code < 400 {
            return Err(SendError::transient(format!(
                "{method}: an answer that is not ok: {}",
                description.chars().take(200).collect::<String>()
            )));
        }
        let mut error = SendError::status(code, description, retry_after);
        error.message = format!("{method}: {}", error.message);
        Err(error)
    }

    /// A call that got no answer: `<method>: <the causes>`, without the token.
    fn request_failed(&self, method: &str, error: reqwest::Error) -> SendError {
        let mut error = SendError::request(error, &[&self.token]);
        error.message = format!("{method}: {}", error.message);
        error
    }

    /// Waits until `chat` may be sent another message.
    async fn pace(&self, chat: i64) {
        let mut pace = self.pace.lock().await;
        if let Some(last) = pace.get(&chat) {
            let next = *last + PACE;
            tokio::time::sleep_until(next.into()).await;
        }
        pace.insert(chat, Instant::now());
    }

    /// Sends `message` to every configured chat not in `refs` yet (`[[chat_id, message_id]]`).
    pub async fn send(&self, message: &Message, refs: &mut Value) -> Result<String, SendError> {
        let mut done: Vec<(i64, i64)> = serde_json::from_value(refs.clone()).unwrap_or_default();
        let mut text = format!("<b>{}</b>\n{}", escape(&message.title), escape(&message.text));
        if let (Some(url), Some(_)) = (&self.dashboard_url, &message.decision) {
            text.push_str(&format!("\n{}", escape(url)));
        }
        let mut body = json!({ "text": truncate(&text), "parse_mode": "HTML" });
        if let Some((id, options)) = &message.decision {
            let buttons: Vec<Value> = options
                .iter()
                .map(|o| json!({ "text": label(o), "callback_data": format!("{}:{o}", id.simple()) }))
                .filter(|b| b["callback_data"].as_str().is_some_and(|d| d.len() <= 64))
                .collect();
            body["reply_markup"] = json!({ "inline_keyboard": [buttons] });
        }
        for &chat in self.chats.iter() {
            if done.iter().any(|(c, _)| *c == chat) {
                continue;
            }
            self.pace(chat).await;
            body["chat_id"] = json!(chat);
            let sent = self.call("sendMessage", &body, Duration::from_secs(20)).await;
            match sent {
                Ok(sent) => {
                    done.push((chat, sent["message_id"].as_i64().unwrap_or_default()));
                    *refs = json!(done);
                }
                Err(error) => {
                    *refs = json!(done);
                    return Err(error);
                }
            }
        }
        Ok(format!("sent to {} chat(s): {done:?}", done.len()))
    }

    /// Edits the messages of decisions answered since they were sent (anywhere: the CLI, the
    /// API, another notifier, a timeout, the task's end) to say how, without their buttons.
    /// Returns how long to leave the bot alone after a failure.
    pub async fn close_answered(
        &self,
        store: &Store,
        system: &str,
    ) -> crate::store::Result<Option<Duration>> {
        for (notification, refs, decision) in store.answered_with_buttons(&self.name).await? {
            let sent: Vec<(i64, i64)> = serde_json::from_value(refs).unwrap_or_default();
            let original = Message::of(&Subject::Decision(decision.clone()), system);
            let text = truncate(&format!(
                "<b>{}</b>\n{}\n\n<b>{}</b>",
                escape(&original.title),
                escape(&original.text),
                escape(&how_answered(&decision))
            ));
            for (chat, message_id) in sent {
                self.pace(chat).await;
                let edit = json!({ "chat_id": chat, "message_id": message_id, "text": text, "parse_mode": "HTML" });
                match self.call("editMessageText", &edit, Duration::from_secs(10)).await {
                    Ok(_) => {}
                    // Edited already (by the press), deleted, or too old to edit: nothing to
                    // take away any more.
                    Err(error) if error.permanent => {
                        info!(notifier = %self.name, decision = %decision.id, %error, "buttons not edited");
                    }
                    Err(error) => {
                        warn!(notifier = %self.name, decision = %decision.id, %error, "cannot take the buttons of an answered decision away; retrying");
                        if let Err(error) = store.notifier_failed(&self.name, &error.message).await
                        {
                            warn!(notifier = %self.name, %error, "cannot record why the notifier failed");
                        }
                        return Ok(Some(error.retry_after.unwrap_or(Duration::from_secs(5))));
                    }
                }
            }
            info!(notifier = %self.name, decision = %decision.id, "buttons of an answered decision taken away");
            store.set_live_buttons(&self.name, notification, false).await?;
        }
        Ok(None)
    }

    /// A press of message `message_id` of `chat` is about to answer `decision`, and the
    /// press's edit will take the buttons away: when that message is the decision's only one,
    /// its buttons are recorded as gone first, so `close_answered` does not edit it too.
    /// Returns the send to mark live again if the answer fails.
    async fn pressing(
        &self,
        context: &Context,
        decision: uuid::Uuid,
        chat: i64,
        message_id: i64,
    ) -> Option<i64> {
        let taken = match context.store.decision_buttons(&self.name, decision).await {
            Ok(Some((notification, refs))) => {
                let sent: Vec<(i64, i64)> = serde_json::from_value(refs).unwrap_or_default();
                if sent != [(chat, message_id)] {
                    return None;
                }
                context
                    .store
                    .set_live_buttons(&self.name, notification, false)
                    .await
                    .map(|()| notification)
            }
            Ok(None) => return None,
            Err(error) => Err(error),
        };
        taken
            .inspect_err(
                |error| warn!(notifier = %self.name, %error, "cannot record the buttons as gone"),
            )
            .ok()
    }

    /// The lock that makes this process the only poller of the token on this machine: `None`
    /// while another process holds it. A lock file that cannot be opened (another user's) does
    /// not stop polling: Telegram's 409 still keeps pollers apart.
    fn lease(&self) -> Option<Option<std::fs::File>> {
        match crate::home::private_file(&self.lease_path("lock")) {
            Ok(file) => file.try_lock().is_ok().then_some(Some(file)),
            Err(error) => {
                warn!(notifier = %self.name, %error, "cannot open the poll lock; polling without it");
                Some(None)
            }
        }
    }

    fn lease_path(&self, extension: &str) -> PathBuf {
        self.lease_dir.join(format!("ccm-telegram-{}.{extension}", self.token_id))
    }

    /// With sync configured and enrolled, whether this system holds (or just took or renewed)
    /// the central lease on polling this bot, shared by every system of the owner. Without
    /// sync, or when the central cannot answer, it polls: Telegram's 409 still keeps pollers
    /// apart.
    async fn central_lease(&self, context: &Context) -> bool {
        let Some(central) = context.central.as_ref().filter(|c| c.has_token()) else {
            return true;
        };
        let name = format!("telegram:{}", self.token_id);
        // Longer than a long poll and the answers after it, so a live holder keeps it.
        let ttl = self.poll_secs + 30;
        // The lease carries the next update offset from one holder to the next.
        let offset = self.offset(context).await;
        let params =
            json!({ "p_name": name, "p_ttl_s": ttl, "p_value": offset.map(|o| o.to_string()) });
        match central.call::<Value>("acquire_lease", &params).await {
            Ok(answer) => {
                let held = answer["held"].as_bool().unwrap_or(true);
                let handed = answer["value"].as_str().and_then(|v| v.parse::<i64>().ok());
                if let Some(handed) = handed.filter(|h| held && offset.is_none_or(|o| *h > o)) {
                    self.set_offset(context, handed).await;
                }
                held
            }
            Err(failure) => {
                warn!(notifier = %self.name, error = %failure.message, "cannot ask the central for the poll lease; polling");
                true
            }
        }
    }

    /// The key of the stored update offset.
    fn offset_key(&self) -> String {
        format!("telegram:{}:offset", self.token_id)
    }

    /// The next update to ask for: the later of this database's offset and the one the last
    /// poller of this machine left next to the lock.
    async fn offset(&self, context: &Context) -> Option<i64> {
        let stored = context.store.notify_value(&self.offset_key()).await.ok().flatten();
        let shared = std::fs::read_to_string(self.lease_path("offset")).ok();
        [stored, shared].into_iter().flatten().filter_map(|o| o.trim().parse::<i64>().ok()).max()
    }

    async fn set_offset(&self, context: &Context, offset: i64) {
        let offset = offset.to_string();
        if let Err(error) = context.store.set_notify_value(&self.offset_key(), &offset).await {
            warn!(notifier = %self.name, %error, "cannot store the update offset");
        }
        let path = self.lease_path("offset");
        let written = crate::fs::write_atomic(&path, offset.as_bytes(), crate::fs::Mode::Private);
        if let Err(error) = written {
            warn!(notifier = %self.name, %error, "cannot share the update offset");
        }
    }
}

/// Polls `getUpdates` until shutdown, handling button presses.
pub async fn poll(bot: Telegram, context: Context) {
    let shutdown = context.shutdown.clone();
    let sleep = |wait: Duration| {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => false,
                () = tokio::time::sleep(wait) => true,
            }
        }
    };
    let mut failures = 0u32;
    loop {
        let Some(_lease) = bot.lease() else {
            // Another daemon of this machine polls this bot; take over when it stops.
            if !sleep(Duration::from_secs(1)).await {
                return;
            }
            continue;
        };
        if !bot.central_lease(&context).await {
            // Another system polls this bot; take over when its lease runs out.
            if !sleep(Duration::from_secs(bot.poll_secs.clamp(1, 5))).await {
                return;
            }
            continue;
        }
        info!(notifier = %bot.name, "polling telegram for button presses");
        loop {
            if !bot.central_lease(&context).await {
                info!(notifier = %bot.name, "another system holds the poll lease now");
                break;
            }
            let mut body =
                json!({ "timeout": bot.poll_secs, "allowed_updates": ["callback_query"] });
            if let Some(offset) = bot.offset(&context).await {
                body["offset"] = json!(offset);
            }
            let wait = Duration::from_secs(bot.poll_secs + 10);
            let answer = tokio::select! {
                () = shutdown.cancelled() => return,
                answer = bot.call("getUpdates", &body, wait) => answer,
            };
            match answer {
                Ok(updates) => {
                    failures = 0;
                    for update in updates.as_array().into_iter().flatten() {
                        let reply = handle(&bot, &context, update).await;
                        if let Some(id) = update["update_id"].as_i64() {
                            bot.set_offset(&context, id + 1).await;
                            // The next holder of the central lease starts after it too.
                            bot.central_lease(&context).await;
                        }
                        if let Some(reply) = reply {
                            reply.send(&bot).await;
                        }
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let wait = error.retry_after.unwrap_or_else(|| poll_backoff(failures));
                    if error.status == Some(409) {
                        warn!(notifier = %bot.name, %error, ?wait, "another poller of this bot is polling (Telegram answered 409); backing off");
                    } else {
                        warn!(notifier = %bot.name, %error, ?wait, "getUpdates failed; backing off");
                    }
                    if let Err(error) =
                        context.store.notifier_failed(&bot.name, &error.message).await
                    {
                        warn!(notifier = %bot.name, %error, "cannot record why polling failed");
                    }
                    if !sleep(wait).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Exponential from 1 s to 60 s, with jitter, so two pollers that collided drift apart.
fn poll_backoff(failures: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(failures.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(60))
}

/// What a handled press is answered with: a toast, and the message edited to show who decided
/// what.
struct Reply {
    answer: Value,
    edit: Option<Value>,
}

impl Reply {
    async fn send(self, bot: &Telegram) {
        if let Err(error) =
            bot.call("answerCallbackQuery", &self.answer, Duration::from_secs(10)).await
        {
            warn!(notifier = %bot.name, %error, "answerCallbackQuery failed");
        }
        if let Some(edit) = self.edit {
            if let Err(error) = bot.call("editMessageText", &edit, Duration::from_secs(10)).await {
                warn!(notifier = %bot.name, %error, "editMessageText failed");
            }
        }
    }
}

/// A button press: answers the decision it names (only from a configured chat) and says how to
/// reply to the press.
async fn handle(bot: &Telegram, context: &Context, update: &Value) -> Option<Reply> {
    let query = update.get("callback_query")?;
    let message = &query["message"];
    let chat = message["chat"]["id"].as_i64().or_else(|| query["from"]["id"].as_i64());
    let from = &query["from"];
    let who = from["username"]
        .as_str()
        .map(|u| format!("@{u}"))
        .or_else(|| from["first_name"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("user {}", from["id"]));
    if !chat.is_some_and(|c| bot.chats.contains(&c)) {
        warn!(notifier = %bot.name, chat = ?chat, from = %who, "ignored a button press from a chat not in chat_ids");
        return None;
    }
    let data = query["data"].as_str().unwrap_or_default();
    let parsed = data
        .split_once(':')
        .and_then(|(id, answer)| Some((uuid::Uuid::parse_str(id).ok()?, answer)));
    let (toast, footer) = match parsed {
        None => ("this button is not ccm's".to_string(), None),
        Some((id, answer)) => {
            let actor = format!("telegram:{who}");
            let policy = RetryPolicy::from(&*context.config);
            let taken = match (chat, message["message_id"].as_i64()) {
                (Some(chat), Some(message_id)) => bot.pressing(context, id, chat, message_id).await,
                _ => None,
            };
            let answered = context
                .store
                .answer_decision(&id.hyphenated().to_string(), answer, &actor, policy)
                .await;
            if let (Err(_), Some(notification)) = (&answered, taken) {
                // Not answered by this press: whatever settles it edits the message.
                if let Err(error) =
                    context.store.set_live_buttons(&bot.name, notification, true).await
                {
                    warn!(notifier = %bot.name, %error, "cannot record the buttons as live again");
                }
            }
            match answered {
                Ok(decision) => {
                    (context.answered)();
                    info!(notifier = %bot.name, decision = %id, answer, by = %who, "decision answered from telegram");
                    (format!("{answer}: done"), Some(how_answered(&decision)))
                }
                // Another system's decision (a bot shared by several): its message is not ours
                // to edit.
                Err(error @ StoreError::DecisionNotFound(_)) => {
                    (format!("{error}: answer it on its system with `ccm decide`"), None)
                }
                // Answered already, not an option, or the store failed: only the presser is
                // told. The message keeps its buttons while its decision is pending (a settled
                // decision loses them through `close_answered`).
                Err(error) => (error.to_string(), None),
            }
        }
    };
    let answer = json!({ "callback_query_id": query["id"], "text": toast.chars().take(200).collect::<String>() });
    let edit = match (footer, message["message_id"].as_i64(), chat) {
        (Some(footer), Some(message_id), Some(chat)) => {
            let original = message["text"].as_str().unwrap_or_default();
            let text = truncate(&format!("{}\n\n<b>{}</b>", escape(original), escape(&footer)));
            Some(
                json!({ "chat_id": chat, "message_id": message_id, "text": text, "parse_mode": "HTML" }),
            )
        }
        _ => None,
    };
    Some(Reply { answer, edit })
}

/// How a decision was answered, under its message: `✔ retry — decided by @ann`, or
/// `⏱ deny: nobody answered in time`.
fn how_answered(decision: &Decision) -> String {
    let answer = decision.answer.as_deref().unwrap_or("answered");
    match decision.answered_by.as_deref() {
        Some("timeout") => format!("⏱ {answer}: nobody answered in time"),
        Some(by) => {
            format!("✔ {answer} — decided by {}", by.strip_prefix("telegram:").unwrap_or(by))
        }
        None => format!("✔ {answer}"),
    }
}

fn label(option: &str) -> String {
    match option {
        "retry" => "🔁 Retry".into(),
        "cancel" => "✖ Cancel".into(),
        "allow" => "✅ Allow".into(),
        "approve" => "✅ Approve".into(),
        "deny" => "❌ Deny".into(),
        "reject" => "❌ Reject".into(),
        other => other.to_string(),
    }
}

/// Escapes text for `parse_mode: HTML`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        return text.to_string();
    }
    text.chars().take(MAX_TEXT - 1).chain(std::iter::once('…')).collect()
}
