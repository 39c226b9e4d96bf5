//! A fault-injecting HTTP/1.1 proxy on loopback, between a node and postrust: the faults of the
//! sync engine's tests come from here, never from a scripted server.
//!
//! Each request whose path contains the proxy's `target` (e.g. `rpc/ingest_batch`) takes the
//! next queued [`Fault`], else (with the programmed probability) the random one, else a 413 when
//! its body is over the programmed limit, else it is forwarded untouched. Every request is
//! recorded ([`Seen`]): its path, its exact body and what the proxy did with it.
//!
//! It reads requests with a `Content-Length` body (what reqwest sends), forwards them with a
//! reqwest client and answers with a `Content-Length` body; the upstream being down is a reset,
//! as the node would see it without the proxy. It runs on a thread and runtime of its own, so it
//! answers whatever the test's runtime does, and stops when dropped.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards it after this delay.
    Delay(Duration),
    /// Resets the connection before anything reaches the server.
    Reset,
    /// Forwards it, lets the server answer (and commit), then closes the client's connection
    /// without answering: the ambiguous outcome.
    DropResponse,
    /// Answers this status itself (`{"message": ...}`), with `Retry-After: <s>` when given.
    Answer { status: u16, retry_after: Option<u64> },
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub body: Vec<u8>,
    /// The fault it met (`None`: forwarded untouched).
    pub fault: Option<Fault>,
    pub at: Instant,
}

impl Seen {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug)]
struct Plan {
    target: String,
    queue: VecDeque<Fault>,
    random: Option<(f64, Fault)>,
    max_body: Option<usize>,
    rng: u64,
    seen: Vec<Seen>,
}

impl Plan {
    /// The fault for a request to `path` with a body of `len` bytes.
    fn choose(&mut self, path: &str, len: usize) -> Option<Fault> {
        if !path.contains(&self.target) {
            return None;
        }
        if let Some(fault) = self.queue.pop_front() {
            return Some(fault);
        }
        if let Some((probability, fault)) = self.random {
            // xorshift64*: a seeded, reproducible draw
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let draw =
                (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            if draw < probability {
                return Some(fault);
            }
        }
        match self.max_body {
            Some(max) if len > max => Some(Fault::Answer { status: 413, retry_after: None }),
            _ => None,
        }
    }
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    plan: Arc<Mutex<Plan>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FaultProxy {
    /// A proxy on a free port of 127.0.0.1 forwarding to `upstream` (`http://host:port`),
    /// faulting requests whose path contains `target`.
    pub fn start(upstream: &str, target: &str) -> FaultProxy {
        let plan = Arc::new(Mutex::new(Plan {
            target: target.to_string(),
            queue: VecDeque::new(),
            random: None,
            max_body: None,
            rng: 0x9e37_79b9_7f4a_7c15,
            seen: Vec::new(),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let upstream = upstream.trim_end_matches('/').to_string();
        let shared = Arc::clone(&plan);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("tokio listener");
                let http = reqwest::Client::builder().no_proxy().build().expect("proxy client");
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let (plan, http, upstream) =
                            (Arc::clone(&shared), http.clone(), upstream.clone());
                        tokio::spawn(serve(stream, plan, http, upstream));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        FaultProxy { addr, plan, stop: Some(stop) }
    }

    /// The URL a node is configured with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults from now on the requests whose path contains `target` (instead of the one given
    /// at start).
    pub fn set_target(&self, target: &str) {
        self.plan().target = target.to_string();
    }

    /// Queues `fault` for the next targeted request (after those already queued).
    pub fn push(&self, fault: Fault) {
        self.plan().queue.push_back(fault);
    }

    /// Each targeted request that takes no queued fault meets `fault` with `probability`
    /// (draws seeded by `seed`); `None` stops it.
    pub fn set_random(&self, random: Option<(f64, Fault)>, seed: u64) {
        let mut plan = self.plan();
        plan.random = random;
        plan.rng = seed | 1;
    }

    /// Targeted requests with a body over `max` bytes are answered 413.
    pub fn set_max_body(&self, max: Option<usize>) {
        self.plan().max_body = max;
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.plan().seen.clone()
    }

    /// The requests so far whose path contains `target`.
    pub fn targeted(&self) -> Vec<Seen> {
        let plan = self.plan();
        plan.seen.iter().filter(|s| s.path.contains(&plan.target)).cloned().collect()
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A request as read off the wire.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one request; `None` at the end of the connection or on anything it cannot read.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_string());
        if name == "content-length" {
            length = value.parse().ok()?;
        }
        headers.push((name, value));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some(Request { method, path, headers, body })
}

/// Serves one client connection, a request at a time (keep-alive).
async fn serve(stream: TcpStream, plan: Arc<Mutex<Plan>>, http: reqwest::Client, upstream: String) {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader).await {
        let fault = {
            let mut plan = plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let fault = plan.choose(&request.path, request.body.len());
            plan.seen.push(Seen {
                path: request.path.clone(),
                body: request.body.clone(),
                fault,
                at: Instant::now(),
            });
            fault
        };
        let answer = match fault {
            Some(Fault::Reset) => return reset(reader.into_inner()),
            Some(Fault::Answer { status, retry_after }) => {
                let mut headers = vec![("content-type".to_string(), "application/json".into())];
                if let Some(seconds) = retry_after {
                    headers.push(("retry-after".into(), seconds.to_string()));
                }
                let body = format!("{{\"message\":\"injected by the fault proxy: {status}\"}}");
                (status, headers, body.into_bytes())
            }
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                match forward(&http, &upstream, request).await {
                    Some(answer) => answer,
                    None => return reset(reader.into_inner()),
                }
            }
            Some(Fault::DropResponse) => {
                let _ = forward(&http, &upstream, request).await;
                return;
            }
            None => match forward(&http, &upstream, request).await {
                Some(answer) => answer,
                None => return reset(reader.into_inner()),
            },
        };
        if write_answer(reader.get_mut(), answer).await.is_err() {
            return;
        }
    }
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// Sends `request` upstream; `None` when the upstream does not answer.
async fn forward(http: &reqwest::Client, upstream: &str, request: Request) -> Option<Answer> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).ok()?;
    let mut builder = http.request(method, format!("{upstream}{}", request.path));
    for (name, value) in &request.headers {
        if !matches!(name.as_str(), "host" | "connection" | "content-length" | "transfer-encoding")
        {
            builder = builder.header(name, value);
        }
    }
    let response = builder.body(request.body).send().await.ok()?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "connection" | "content-length" | "transfer-encoding" | "keep-alive"
            )
        })
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let body = response.bytes().await.ok()?.to_vec();
    Some((status, headers, body))
}

async fn write_answer(
    stream: &mut TcpStream,
    (status, headers, body): Answer,
) -> std::io::Result<()> {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Status");
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await
}

/// Closes with a TCP reset (linger 0), as a crashed or unreachable peer does.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
