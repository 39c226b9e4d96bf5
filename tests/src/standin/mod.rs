//! Local stand-ins of the model APIs behind the agent CLIs, so the real CLIs run offline in the
//! tests. Each stand-in answers the CLI's requests from a script: a queue of [`Turn`]s, one per
//! model call (tool calls such as writing a file or running a command, a final message, or a
//! rate limit). Requests that offer the model no tools (a CLI's own utility calls) are answered
//! with a short text and take no turn.
//!
//! A stand-in serves on loopback from a thread of its own (so a test may block its runtime)
//! and stops when dropped.
//!
//! - [`anthropic`]: the Anthropic Messages API (Claude Code), served by a plain [`Server`] with
//!   its own script.
//! - [`gemini`]: Gemini API `generateContent` / `streamGenerateContent` (Gemini CLI).
//! - [`openai`]: OpenAI Responses API, streamed (Codex).
//! - [`telegram`]: the Telegram Bot API methods ccm's notifier uses.
//! - [`github`]: GitHub's REST API for pull requests, check runs, reviews and merges
//!   (`land.mode: pr`), backed by a real bare git repository.
//! - [`supabase_auth`]: Supabase Auth (GoTrue) for sync's sign-in, refresh and anonymous
//!   sign-up, with rotating refresh tokens and access tokens postrust accepts.
//! - [`Recorder`]: a recording HTTP server for ntfy, Slack and webhooks.

pub mod anthropic;
pub mod gemini;
pub mod github;
pub mod openai;
pub mod supabase_auth;
pub mod telegram;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// One scripted answer of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// A tool call that writes `content` to `path` (relative to the agent's directory).
    Write { path: String, content: String },
    /// A tool call that runs `command` in a shell.
    Shell(String),
    /// A call of the tool `name` (as the CLI names it, e.g. Gemini CLI's `mcp_ccm_allocate`;
    /// for Codex `mcp__<server>__<tool>` is sent in its namespace form) with `args`.
    Tool { name: String, args: Value },
    /// A final message to the human; the agent's turn ends.
    Say(String),
    /// HTTP 429, in the API's documented shape, saying the limit resets in `retry_after_secs`.
    RateLimited { retry_after_secs: u64 },
}

/// A request the stand-in received: its path (with query) and JSON body (`Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub body: Value,
}

/// What a stand-in's handlers share: the turns left and the requests seen.
#[derive(Debug, Default)]
pub struct Script {
    turns: Mutex<VecDeque<Turn>>,
    requests: Mutex<Vec<Request>>,
}

impl Script {
    /// Records a request.
    pub fn record(&self, path: String, body: Value) {
        self.requests.lock().expect("script lock").push(Request { path, body });
    }

    /// The next turn; a final message once the script is used up.
    pub fn next_turn(&self) -> Turn {
        self.turns
            .lock()
            .expect("script lock")
            .pop_front()
            .unwrap_or_else(|| Turn::Say("(the stand-in's script is used up)".into()))
    }
}

/// A running stand-in; stops when dropped.
pub struct Standin {
    pub addr: SocketAddr,
    script: Arc<Script>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Standin {
    /// Serves `router` (whose state is `script`) on a free loopback port.
    fn serve(script: Arc<Script>, router: axum::Router) -> Standin {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("stand-in runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("stand-in binds");
                bound.send(listener.local_addr().expect("bound address")).expect("test waits");
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("stand-in serves");
            });
        });
        let addr = addr.recv().expect("stand-in started");
        Standin { addr, script, stop: Some(stop), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.script.requests.lock().expect("script lock").clone()
    }

    /// Turns not answered yet.
    pub fn turns_left(&self) -> usize {
        self.script.turns.lock().expect("script lock").len()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn script(turns: Vec<Turn>) -> Arc<Script> {
    Arc::new(Script { turns: Mutex::new(turns.into()), requests: Mutex::default() })
}

/// An SSE body of `(event name or none, data)` pairs.
fn sse(events: &[(Option<&str>, Value)]) -> axum::response::Response {
    let mut body = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            body.push_str(&format!("event: {name}\n"));
        }
        body.push_str(&format!("data: {data}\n\n"));
    }
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(axum::body::Body::from(body))
        .expect("valid response")
}

/// An HTTP server on loopback, on its own thread and runtime; shut down when dropped (without
/// waiting for the connections an agent keeps open).
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Serves `router` on a free port of `127.0.0.1`.
    pub fn start(router: axum::Router) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("stand-in runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("stand-in serves");
            });
        });
        Server { addr, stop: Some(stop) }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One request a [`Recorder`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: axum::http::HeaderMap,
    pub body: axum::body::Bytes,
}

impl Recorded {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A recording HTTP server (ntfy, a Slack incoming webhook, a generic webhook): every request
/// is kept, and answered with the scripted answers first, then with `default`.
pub struct Recorder {
    server: Server,
    received: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<(u16, String)>>>,
}

impl Recorder {
    /// Answers every request with `status` and `body` unless scripted otherwise.
    pub fn start(status: u16, body: &str) -> Recorder {
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let default = (status, body.to_string());
        let (r, s) = (received.clone(), script.clone());
        let router = axum::Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let (received, script, default) = (r.clone(), s.clone(), default.clone());
                async move {
                    received.lock().expect("recorder lock").push(Recorded {
                        method: method.to_string(),
                        path: uri.to_string(),
                        headers,
                        body,
                    });
                    let (status, body) =
                        script.lock().expect("recorder lock").pop_front().unwrap_or(default);
                    (axum::http::StatusCode::from_u16(status).expect("status"), body)
                }
            },
        );
        Recorder { server: Server::start(router), received, script }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The next requests get these answers, in order.
    pub fn script(&self, answers: &[(u16, &str)]) {
        let mut script = self.script.lock().expect("recorder lock");
        script.extend(answers.iter().map(|(s, b)| (*s, b.to_string())));
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.received.lock().expect("recorder lock").clone()
    }
}
