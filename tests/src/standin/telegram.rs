//! A local stand-in of the Telegram Bot API (`https://api.telegram.org/bot<token>/<method>`),
//! for the methods ccm uses, with the documented JSON (agent-interfaces.md section 4):
//!
//! - `getUpdates`: long polling (`timeout` seconds) from `offset`; an update counts as
//!   confirmed, and is forgotten, once a call asks for a higher offset. A second call while
//!   one is waiting is answered 409 `Conflict: terminated by other getUpdates request`.
//! - `sendMessage` (with `reply_markup`), `editMessageText` (which keeps only the
//!   `reply_markup` it is given: without one the buttons are gone; an edit that changes
//!   nothing is refused with 400 `message is not modified`), `answerCallbackQuery`. With
//!   `parse_mode: HTML` the `text` of the returned `Message` is the text without its tags, with
//!   `&lt;`, `&gt;`, `&amp;` and `&quot;` decoded, as Telegram returns it.
//! - Scripted failures: 429 with `parameters.retry_after`, or any status, for the next calls
//!   of a method.
//!
//! Parameters are read from a JSON body, a form body or the query string.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::Server;

/// A request the bot API received, with its parameters and when it arrived.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub params: Value,
    pub at: Instant,
    /// The HTTP status it was answered with.
    pub status: u16,
}

#[derive(Default)]
struct Bot {
    token: String,
    next_update: i64,
    /// Updates not confirmed yet.
    updates: VecDeque<Value>,
    next_message: i64,
    /// Messages by (chat, message id): their current text and inline keyboard.
    messages: HashMap<(i64, i64), (String, Option<Value>)>,
    calls: Vec<Call>,
    /// The messages `sendMessage` returned, in order.
    sent: Vec<Value>,
    /// Answers for the next calls of a method, in order: (status, description, retry_after).
    failures: HashMap<String, VecDeque<(u16, String, Option<u64>)>>,
    polling: usize,
    most_polling: usize,
    /// How long answers of a method wait after the call is recorded.
    stalls: HashMap<String, Duration>,
}

/// The running stand-in.
pub struct Telegram {
    server: Server,
    bot: Arc<Mutex<Bot>>,
    arrived: Arc<tokio::sync::Notify>,
}

type Shared = (Arc<Mutex<Bot>>, Arc<tokio::sync::Notify>);

impl Telegram {
    /// Serves the bot `token` on a free loopback port.
    pub fn start(token: &str) -> Telegram {
        let bot = Arc::new(Mutex::new(Bot {
            token: token.into(),
            next_update: 840_000_001,
            next_message: 1,
            ..Bot::default()
        }));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let router = Router::new()
            .route("/{bot}/{method}", axum::routing::any(call))
            .with_state((bot.clone(), arrived.clone()));
        Telegram { server: Server::start(router), bot, arrived }
    }

    /// The API base URL (`notify.notifiers.<name>.api_url`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.bot.lock().unwrap().calls.clone()
    }

    /// The calls of `method` answered with 200.
    pub fn ok_calls(&self, method: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method && c.status == 200).collect()
    }

    /// The messages sent so far, as `sendMessage` returned them (`Message` objects).
    pub fn sent(&self) -> Vec<Value> {
        self.bot.lock().unwrap().sent.clone()
    }

    /// The current text of a message (after edits).
    pub fn text_of(&self, chat: i64, message_id: i64) -> Option<String> {
        self.bot.lock().unwrap().messages.get(&(chat, message_id)).map(|(text, _)| text.clone())
    }

    /// The current inline keyboard of a message (after edits); `None` when it has none.
    pub fn markup_of(&self, chat: i64, message_id: i64) -> Option<Value> {
        self.bot.lock().unwrap().messages.get(&(chat, message_id)).and_then(|(_, m)| m.clone())
    }

    /// Most `getUpdates` calls that were waiting at the same time.
    pub fn most_polling(&self) -> usize {
        self.bot.lock().unwrap().most_polling
    }

    /// The next `count` calls of `method` fail with `status` (429 carries `retry_after`).
    pub fn fail_next(&self, method: &str, count: usize, status: u16, retry_after: Option<u64>) {
        let description = match status {
            429 => format!("Too Many Requests: retry after {}", retry_after.unwrap_or(1)),
            502 => "Bad Gateway".to_string(),
            _ => format!("Error {status}"),
        };
        let mut bot = self.bot.lock().unwrap();
        let queue = bot.failures.entry(method.to_string()).or_default();
        queue.extend(std::iter::repeat_n((status, description, retry_after), count));
    }

    /// From now on, answers to `method` leave `delay` after the call is recorded (a slow
    /// network: the call is visible before its caller has the answer).
    pub fn stall(&self, method: &str, delay: Duration) {
        self.bot.lock().unwrap().stalls.insert(method.to_ascii_lowercase(), delay);
    }

    /// Stops the scripted failures of `method`.
    pub fn heal(&self, method: &str) {
        self.bot.lock().unwrap().failures.remove(method);
    }

    /// A user presses the button with `data` under message `message_id` of `chat`.
    /// Returns the callback query's id.
    pub fn press(&self, chat: i64, user: (i64, &str), message_id: i64, data: &str) -> String {
        let mut bot = self.bot.lock().unwrap();
        let update_id = bot.next_update;
        bot.next_update += 1;
        let query_id = format!("{update_id}-q");
        let (text, markup) = bot.messages.get(&(chat, message_id)).cloned().unwrap_or_default();
        let mut message = json!({
            "message_id": message_id,
            "from": { "id": 1, "is_bot": true, "first_name": "ccm", "username": "ccm_bot" },
            "chat": { "id": chat, "type": "private", "first_name": user.1 },
            "date": 1_735_689_600,
            "text": text
        });
        if let Some(markup) = markup {
            message["reply_markup"] = markup;
        }
        bot.updates.push_back(json!({
            "update_id": update_id,
            "callback_query": {
                "id": query_id,
                "from": { "id": user.0, "is_bot": false, "first_name": user.1, "username": user.1.to_lowercase() },
                "message": message,
                "chat_instance": "-1234567890123",
                "data": data
            }
        }));
        drop(bot);
        self.arrived.notify_waiters();
        query_id
    }

    /// Updates not confirmed by a later `getUpdates` yet.
    pub fn unconfirmed(&self) -> usize {
        self.bot.lock().unwrap().updates.len()
    }
}

/// Parameters of a call: the JSON body, else the form body, else the query string.
fn params(body: &[u8], query: Option<&str>) -> Value {
    if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(body) {
        return value;
    }
    let pairs = if body.is_empty() { query.unwrap_or_default().as_bytes() } else { body };
    let map: serde_json::Map<String, Value> = url::form_urlencoded::parse(pairs)
        .map(|(k, v)| {
            let v = serde_json::from_str(&v).unwrap_or(Value::String(v.into_owned()));
            (k.into_owned(), v)
        })
        .collect();
    Value::Object(map)
}

fn answer(status: u16, result: Result<Value, (String, Option<u64>)>) -> Response {
    let body = match result {
        Ok(result) => json!({ "ok": true, "result": result }),
        Err((description, retry_after)) => {
            let mut body = json!({ "ok": false, "error_code": status, "description": description });
            if let Some(seconds) = retry_after {
                body["parameters"] = json!({ "retry_after": seconds });
            }
            body
        }
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn call(
    State((bot, arrived)): State<Shared>,
    Path((path_bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = params(&body, query.as_deref());
    let method_key = method.to_ascii_lowercase();
    let record = |bot: &mut Bot, status: u16| {
        bot.calls.push(Call {
            method: method.clone(),
            params: params.clone(),
            at: Instant::now(),
            status,
        });
    };
    {
        let mut state = bot.lock().unwrap();
        if path_bot != format!("bot{}", state.token) {
            record(&mut state, 401);
            return answer(401, Err(("Unauthorized".into(), None)));
        }
        let failure = state
            .failures
            .iter_mut()
            .find(|(m, _)| m.to_ascii_lowercase() == method_key)
            .and_then(|(_, queue)| queue.pop_front());
        if let Some((status, description, retry_after)) = failure {
            record(&mut state, status);
            return answer(status, Err((description, retry_after)));
        }
    }
    let stall = bot.lock().unwrap().stalls.get(&method_key).copied();
    let response = match method_key.as_str() {
        "getupdates" => get_updates(bot, arrived, params.clone(), record).await,
        "sendmessage" => {
            let mut state = bot.lock().unwrap();
            let chat = params["chat_id"].as_i64().unwrap_or_default();
            let text = parsed_text(&params);
            if text.is_empty() {
                record(&mut state, 400);
                return answer(400, Err(("Bad Request: message text is empty".into(), None)));
            }
            if text.chars().count() > 4096 {
                record(&mut state, 400);
                return answer(400, Err(("Bad Request: message is too long".into(), None)));
            }
            let message_id = state.next_message;
            state.next_message += 1;
            let markup = params.get("reply_markup").cloned();
            state.messages.insert((chat, message_id), (text.clone(), markup));
            record(&mut state, 200);
            let mut message = json!({
                "message_id": message_id,
                "from": { "id": 1, "is_bot": true, "first_name": "ccm", "username": "ccm_bot" },
                "chat": { "id": chat, "type": "private" },
                "date": 1_735_689_600,
                "text": text
            });
            if let Some(markup) = params.get("reply_markup") {
                message["reply_markup"] = markup.clone();
            }
            state.sent.push(message.clone());
            answer(200, Ok(message))
        }
        "editmessagetext" => {
            let mut state = bot.lock().unwrap();
            let key = (
                params["chat_id"].as_i64().unwrap_or_default(),
                params["message_id"].as_i64().unwrap_or_default(),
            );
            let text = parsed_text(&params);
            let markup = params.get("reply_markup").cloned();
            let Some(current) = state.messages.get(&key) else {
                record(&mut state, 400);
                return answer(400, Err(("Bad Request: message to edit not found".into(), None)));
            };
            if *current == (text.clone(), markup.clone()) {
                record(&mut state, 400);
                return answer(
                    400,
                    Err(("Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message".into(), None)),
                );
            }
            state.messages.insert(key, (text.clone(), markup.clone()));
            record(&mut state, 200);
            let mut message = json!({
                "message_id": key.1,
                "from": { "id": 1, "is_bot": true, "first_name": "ccm", "username": "ccm_bot" },
                "chat": { "id": key.0, "type": "private" },
                "date": 1_735_689_600,
                "edit_date": 1_735_689_660,
                "text": text
            });
            if let Some(markup) = markup {
                message["reply_markup"] = markup;
            }
            answer(200, Ok(message))
        }
        "answercallbackquery" => {
            let mut state = bot.lock().unwrap();
            if params["callback_query_id"].as_str().is_none_or(str::is_empty) {
                record(&mut state, 400);
                return answer(400, Err(("Bad Request: query is too old and response timeout expired or query ID is invalid".into(), None)));
            }
            record(&mut state, 200);
            answer(200, Ok(json!(true)))
        }
        _ => {
            let mut state = bot.lock().unwrap();
            record(&mut state, 404);
            answer(404, Err(("Not Found: method not found".into(), None)))
        }
    };
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    response
}

/// A message's `text` as Telegram keeps it: with `parse_mode: HTML`, without its tags and
/// with the entities decoded.
fn parsed_text(params: &Value) -> String {
    let text = params["text"].as_str().unwrap_or_default();
    if params["parse_mode"] != "HTML" {
        return text.to_string();
    }
    let mut plain = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    plain.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&")
}

async fn get_updates(
    bot: Arc<Mutex<Bot>>,
    arrived: Arc<tokio::sync::Notify>,
    params: Value,
    record: impl Fn(&mut Bot, u16),
) -> Response {
    let offset = params["offset"].as_i64();
    let timeout = Duration::from_secs(params["timeout"].as_u64().unwrap_or(0).min(50));
    let limit = params["limit"].as_u64().unwrap_or(100).clamp(1, 100) as usize;
    {
        let mut state = bot.lock().unwrap();
        if state.polling > 0 {
            record(&mut state, 409);
            return answer(
                409,
                Err(("Conflict: terminated by other getUpdates request; make sure that only one bot instance is running".into(), None)),
            );
        }
        state.polling += 1;
        state.most_polling = state.most_polling.max(state.polling);
        // Updates below the offset are confirmed: forgotten.
        if let Some(offset) = offset.filter(|o| *o > 0) {
            state.updates.retain(|u| u["update_id"].as_i64().unwrap_or_default() >= offset);
        }
    }
    // A poller that hangs up stops polling (the handler is dropped mid-wait).
    struct Polling(Arc<Mutex<Bot>>);
    impl Drop for Polling {
        fn drop(&mut self) {
            if let Ok(mut state) = self.0.lock() {
                state.polling -= 1;
            }
        }
    }
    let polling = Polling(bot.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let result = loop {
        let waiting = arrived.notified();
        {
            let state = bot.lock().unwrap();
            let ready: Vec<Value> = state
                .updates
                .iter()
                .filter(|u| {
                    offset
                        .is_none_or(|o| o <= 0 || u["update_id"].as_i64().unwrap_or_default() >= o)
                })
                .take(limit)
                .cloned()
                .collect();
            if !ready.is_empty() || tokio::time::Instant::now() >= deadline {
                break ready;
            }
        }
        let _ = tokio::time::timeout_at(deadline, waiting).await;
    };
    drop(polling);
    let mut state = bot.lock().unwrap();
    record(&mut state, 200);
    answer(200, Ok(Value::Array(result)))
}
