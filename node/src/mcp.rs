//! `ccm mcp`: ccm's MCP server over stdio (the official Rust SDK, `rmcp`), which the agent
//! CLIs start from their MCP settings (`hooks::install` writes them). Each tool is one call to
//! the daemon's agent API (`daemon::agent_api`) as the calling agent: its credential
//! (`CCM_AGENT_TOKEN`) and the task it believes it works for (`CCM_TASK_ID`) come from the
//! environment, as for the hooks. Without a credential every tool answers a clear refusal (the
//! server itself still starts, so the CLI runs on).
//!
//! The daemon's address: `CCM_API`, else the port file of the home (`CCM_HOME`); its Unix
//! socket when the home's daemon is that one. Calls go on keep-alive HTTP/1.1 connections kept
//! open between calls, and the CLI's pipes are read and written by the IO reactor: the path of
//! a call is the two hops and nothing else (BENCHMARKS.md, MCP tool calls).

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};

use crate::home::Home;

/// The server's name in the CLIs' settings: tools are `mcp__ccm__<tool>` (Claude Code,
/// Codex) or `mcp_ccm_<tool>` (Gemini CLI).
pub const SERVER_NAME: &str = "ccm";

/// Errors of `ccm mcp` itself (a tool's refusal is the tool's answer, not one of these).
#[derive(Debug, thiserror::Error)]
pub enum McpServerError {
    #[error("mcp server over stdio: {0}")]
    Serve(String),
}

/// Where and as whom the server calls the daemon.
struct Daemon {
    endpoint: Option<Endpoint>,
    /// Idle keep-alive connections to the daemon, reused by the next call (calls may run at
    /// once: a `wait_subtasks` holds its connection while another tool is called).
    idle: std::sync::Mutex<Vec<Sender>>,
    token: Option<String>,
    task: Option<String>,
}

type Sender = http1::SendRequest<Full<Bytes>>;

/// How the server reaches the daemon's API.
#[derive(Debug, Clone)]
enum Endpoint {
    /// The daemon's Unix socket (no TCP on either side), when `CCM_API` names the daemon of the
    /// home (or is unset) and the daemon has one; with the daemon's `host:port`, its `Host`.
    Socket(PathBuf, String),
    /// `host:port`.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(path, _) => write!(f, "{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "http://{addr}"),
        }
    }
}

impl Endpoint {
    /// `CCM_API` (a URL or `host:port`), or the daemon of the home; the home daemon's socket
    /// when it is the same daemon.
    fn locate(api: Option<String>) -> Option<Endpoint> {
        let api = api.map(|a| {
            let a = a.trim_end_matches('/');
            a.strip_prefix("http://").unwrap_or(a).to_string()
        });
        let info = Home::locate().ok().and_then(|home| home.read_daemon_info());
        match (api, info) {
            (Some(api), Some(info)) if info.addr == api => Some(Endpoint::of(info)),
            (Some(api), _) => Some(Endpoint::Tcp(api)),
            (None, Some(info)) => Some(Endpoint::of(info)),
            (None, None) => None,
        }
    }

    /// The daemon of a port file: its socket if it has one.
    fn of(info: crate::home::DaemonInfo) -> Endpoint {
        match info.socket.filter(|s| s.exists()) {
            Some(socket) => Endpoint::Socket(socket, info.addr),
            None => Endpoint::Tcp(info.addr),
        }
    }

    /// The `Host` of its requests: the daemon answers only to its loopback address.
    fn host(&self) -> &str {
        match self {
            Endpoint::Socket(_, addr) | Endpoint::Tcp(addr) => addr,
        }
    }

    /// A new HTTP/1.1 connection to the daemon.
    async fn connect(&self) -> Result<Sender, String> {
        async fn handshake<S>(stream: S) -> Result<Sender, String>
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            let (sender, connection) =
                http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                // Ends when the daemon or this side closes it; a failed call says why.
                let _ = connection.await;
            });
            Ok(sender)
        }
        match self {
            Endpoint::Socket(path, _) => {
                let stream =
                    tokio::net::UnixStream::connect(path).await.map_err(|e| e.to_string())?;
                handshake(stream).await
            }
            Endpoint::Tcp(addr) => {
                let stream =
                    tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                let _ = stream.set_nodelay(true);
                handshake(stream).await
            }
        }
    }
}

impl Daemon {
    fn from_env() -> Daemon {
        // A `$NAME` left as is: Gemini CLI found no such variable to expand.
        let var = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty() && !v.starts_with('$'))
        };
        Daemon {
            endpoint: Endpoint::locate(var("CCM_API")),
            idle: std::sync::Mutex::default(),
            token: var("CCM_AGENT_TOKEN"),
            task: var("CCM_TASK_ID"),
        }
    }

    /// Calls the agent API; the answer's JSON, or the refusal's message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let Some(token) = &self.token else {
            return Err("refused: no agent credential (CCM_AGENT_TOKEN is not set): ccm's tools work only for an agent ccm started".into());
        };
        let Some(endpoint) = &self.endpoint else {
            return Err("refused: no ccm daemon to ask (neither CCM_API nor a running daemon's port file in CCM_HOME)".into());
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, endpoint.host())
            .header("x-ccm-agent-token", token);
        if let Some(task) = &self.task {
            request = request.header("x-ccm-task-id", task);
        }
        let body = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).map_err(|e| format!("{path}: {e}"))?;
        let unreachable = |e: String| format!("cannot reach the ccm daemon at {endpoint}: {e}");
        let (status, bytes) = self.send(endpoint, request).await.map_err(unreachable)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]["message"].as_str().unwrap_or("no message").to_string();
        Err(if status.as_u16() == 401 || status.as_u16() == 403 {
            format!("refused: {message}")
        } else {
            format!("ccm answered {status}: {message}")
        })
    }

    /// Sends `request` on an idle connection (a new one when none is left, or when the idle
    /// one was closed before the request went out) and reads the whole answer.
    async fn send(
        &self,
        endpoint: &Endpoint,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let lock = |idle: &std::sync::Mutex<Vec<Sender>>| {
            idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
        };
        let mut pooled = lock(&self.idle);
        loop {
            let fresh = pooled.is_none();
            let mut sender = match pooled.take() {
                Some(sender) => sender,
                None => endpoint.connect().await?,
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err("the connection closed at once".into());
                }
                pooled = lock(&self.idle);
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let bytes =
                        response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
                    self.idle
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(sender);
                    return Ok((status, bytes));
                }
                // Not sent (the daemon had closed the idle connection): again, on another.
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => {
                        request = unsent;
                        pooled = lock(&self.idle);
                    }
                    _ => return Err(error.into_error().to_string()),
                },
            }
        }
    }
}

impl Daemon {
    /// The refusal of a caller who may not use ccm's tools at all, else `error` (what was wrong
    /// with the arguments): a refused agent learns that first, whatever it sent.
    async fn refusal_or(&self, error: String) -> String {
        match self.call(Method::GET, "/api/agent/whoami", None).await {
            Err(refusal) => refusal,
            Ok(_) => error,
        }
    }
}

/// ccm's MCP server.
#[derive(Clone)]
pub struct CcmServer {
    daemon: Arc<Daemon>,
}

fn schema(properties: Value, required: &[&str]) -> Arc<Map<String, Value>> {
    let value = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    Arc::new(value.as_object().cloned().unwrap_or_default())
}

/// The tools, with their input schemas.
pub fn tools() -> Vec<Tool> {
    let string = json!({ "type": "string" });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    vec![
        Tool::new(
            "create_subtask",
            "Create a sub-task of your task, in the same repository: ccm runs it with its own agent (maybe on another machine). Returns its id.",
            schema(
                json!({
                    "title": { "type": "string", "description": "one line" },
                    "prompt": { "type": "string", "description": "what its agent is asked to do" },
                    "verify": { "type": "string", "description": "a shell command that checks its work" },
                    "owns": { "type": "array", "items": string, "description": "files (relative to the repository) it will own" },
                    "depends_on": { "type": "array", "items": string, "description": "ids of sibling sub-tasks it waits for" },
                    "profile": { "type": "string", "description": "agent profile; yours when omitted" },
                }),
                &["title"],
            ),
        ),
        Tool::new(
            "list_subtasks",
            "List your task's sub-tasks with their state and result.",
            schema(json!({}), &[]),
        ),
        Tool::new(
            "wait_subtasks",
            "Wait until your sub-tasks (all, or those named) have ended, or the timeout; returns each one's state and result.",
            schema(
                json!({ "ids": strings, "timeout_secs": { "type": "integer", "minimum": 0 } }),
                &[],
            ),
        ),
        Tool::new(
            "lock",
            "Take a named lock (e.g. \"build\") with a lease of ttl seconds, waiting up to wait_secs for it; returns a fencing token. Scope \"node\" (default): among the agents of this machine; \"fleet\": among the agents of every machine. Released by unlock, when your agent ends, or when the lease runs out.",
            schema(
                json!({
                    "name": string,
                    "ttl": { "type": "integer", "minimum": 1 },
                    "wait_secs": { "type": "integer", "minimum": 0 },
                    "scope": { "type": "string", "enum": ["node", "fleet"] },
                }),
                &["name"],
            ),
        ),
        Tool::new(
            "unlock",
            "Release a named lock you hold.",
            schema(json!({ "name": string }), &["name"]),
        ),
        Tool::new(
            "allocate",
            "Get the next value of a named sequence of your repository (e.g. \"migrations\" → 0042), exactly once.",
            schema(json!({ "sequence": string }), &["sequence"]),
        ),
        Tool::new(
            "request_change",
            "Ask for a change to a file another task owns (a write to it was refused, or you know it is not yours): the operator (or a reviewer) approves or rejects it; approved, the owner's next attempt (or a new task owning the file) applies it. Returns the request with its id.",
            schema(
                json!({
                    "file": { "type": "string", "description": "the file, relative to the repository" },
                    "what": { "type": "string", "description": "the change, precisely enough for its owner to make it" },
                    "why": { "type": "string", "description": "why your task needs it" },
                }),
                &["file", "what", "why"],
            ),
        ),
        Tool::new(
            "wait_change",
            "Wait until a change request of your task is applied, rejected or withdrawn, or the timeout; returns its state (pending, approved, applied, rejected, withdrawn) and the reason.",
            schema(
                json!({
                    "id": { "type": "string", "description": "the change request's id (from request_change, or the refusal of your write)" },
                    "timeout_secs": { "type": "integer", "minimum": 0 },
                }),
                &["id"],
            ),
        ),
        Tool::new(
            "release_allocation",
            "Give back a value you allocated and will not use.",
            schema(json!({ "sequence": string, "value": string }), &["sequence", "value"]),
        ),
    ]
}

impl CcmServer {
    pub fn from_env() -> CcmServer {
        CcmServer { daemon: Arc::new(Daemon::from_env()) }
    }

    /// Runs a tool: the daemon's answer as JSON text, or the refusal's words.
    pub async fn run_tool(&self, name: &str, args: &Map<String, Value>) -> Result<Value, String> {
        let text = |key: &str| args.get(key).and_then(Value::as_str).map(str::to_string);
        let need =
            |key: &str| text(key).filter(|v| !v.is_empty()).ok_or(format!("{key}: required"));
        let d = &self.daemon;
        match name {
            "create_subtask" => {
                need("title")?;
                let body = Value::Object(args.clone());
                d.call(Method::POST, "/api/agent/subtasks", Some(body)).await
            }
            "list_subtasks" => d.call(Method::GET, "/api/agent/subtasks", None).await,
            "wait_subtasks" => {
                let mut body = Map::new();
                if let Some(ids) = args.get("ids") {
                    body.insert("ids".into(), ids.clone());
                }
                if let Some(t) = args.get("timeout_secs") {
                    body.insert("timeout_secs".into(), t.clone());
                }
                d.call(Method::POST, "/api/agent/subtasks/wait", Some(Value::Object(body))).await
            }
            "lock" => {
                let lock = need("name")?;
                let body = json!({
                    "ttl_secs": args.get("ttl").cloned().unwrap_or(json!(60)),
                    "wait_secs": args.get("wait_secs").cloned().unwrap_or(json!(0)),
                    "scope": args.get("scope").cloned().unwrap_or(json!("node")),
                });
                d.call(Method::POST, &format!("/api/agent/locks/{}", encode(&lock)), Some(body))
                    .await
            }
            "unlock" => {
                let lock = need("name")?;
                d.call(Method::DELETE, &format!("/api/agent/locks/{}", encode(&lock)), None).await
            }
            "allocate" => {
                let body = json!({ "sequence": need("sequence")? });
                d.call(Method::POST, "/api/agent/allocations", Some(body)).await
            }
            "release_allocation" => {
                let value = args.get("value").cloned().ok_or("value: required")?;
                let body = json!({ "sequence": need("sequence")?, "value": value });
                d.call(Method::POST, "/api/agent/allocations/release", Some(body)).await
            }
            "request_change" => {
                let fields = (need("file"), need("what"), need("why"));
                let (Ok(file), Ok(what), Ok(why)) = fields else {
                    let missing = [fields.0.err(), fields.1.err(), fields.2.err()];
                    let missing: Vec<String> = missing.into_iter().flatten().collect();
                    return Err(d.refusal_or(missing.join(", ")).await);
                };
                let body = json!({ "file": file, "what": what, "why": why });
                d.call(Method::POST, "/api/agent/changes", Some(body)).await
            }
            "wait_change" => {
                let id = match need("id") {
                    Ok(id) => id,
                    Err(missing) => return Err(d.refusal_or(missing).await),
                };
                if !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                    return Err(format!("id: `{id}` is not a change request id"));
                }
                let mut body = Map::new();
                if let Some(t) = args.get("timeout_secs") {
                    body.insert("timeout_secs".into(), t.clone());
                }
                let path = format!("/api/agent/changes/{id}/wait");
                d.call(Method::POST, &path, Some(Value::Object(body))).await
            }
            other => Err(format!("no tool `{other}` in ccm's MCP server")),
        }
    }
}

/// A lock's name in a URL path (names hold letters, digits and `-_./:` only; the daemon
/// checks them).
fn encode(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F").replace('?', "%3F").replace('#', "%23")
}

impl ServerHandler for CcmServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build());
        info.server_info = Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION"));
        info.instructions = Some(
            "ccm coordinates the agents working on a repository: create sub-tasks and wait for \
             them, take named locks, allocate numbers from sequences (e.g. migrations), ask \
             for changes to files other tasks own and wait for their outcome."
                .into(),
        );
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let result = match self.run_tool(&request.name, &args).await {
            Ok(value) => CallToolResult::success(vec![ContentBlock::text(value.to_string())]),
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        };
        Ok(result.into())
    }
}

/// Serves MCP on stdin and stdout until the client goes away.
pub async fn serve() -> Result<(), McpServerError> {
    let service = CcmServer::from_env()
        // The CLI's pipes driven by the IO reactor, not a blocking thread per read and write.
        .serve(rmcp::transport::stdio_pipes())
        .await
        .map_err(|e| McpServerError::Serve(e.to_string()))?;
    service.waiting().await.map_err(|e| McpServerError::Serve(e.to_string()))?;
    Ok(())
}
