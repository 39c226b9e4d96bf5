//! The accept loops of the API, on its TCP listener and its Unix socket (which the hooks and the
//! CLI use): hyper's HTTP/1.1 connections with a header-read timeout (which also closes idle
//! keep-alive connections), at most `daemon.max_connections` at once on each listener (more
//! wait in the listen backlog), and accept errors such as running out of file descriptors
//! answered with a back-off instead of a busy loop.
//!
//! The socket (0600, this user only) never waits behind the TCP listener's cap, which any local
//! user can fill. When the TCP cap is reached, the oldest connection that has not sent a complete
//! request within [`IDLE_GRACE`] is closed to make room, instead of every new client waiting
//! out the header timeout.
//!
//! On shutdown the loops stop accepting, let each connection finish its request, and return
//! when all are closed, or after [`GRACE`] (a hook held by an approval rule may wait minutes; it
//! takes its direct path when the daemon has gone).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::config::DaemonConfig;

/// How long shutdown waits for requests in flight.
const GRACE: Duration = Duration::from_secs(5);

/// First and longest wait after a failed accept.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// How long a TCP connection may stay without a complete request before it may be closed to
/// make room, once every connection slot is taken.
pub const IDLE_GRACE: Duration = Duration::from_millis(250);

/// Serves `router` on `listener` and `socket` until `shutdown` is cancelled and every
/// connection closed (or [`GRACE`] passed).
pub async fn serve(
    listener: TcpListener,
    socket: Option<UnixListener>,
    router: Router,
    config: DaemonConfig,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_timeout_ms));
    let server = Server { http, router, graceful: GracefulShutdown::new(), shutdown };
    let tcp = server.accept_loop(
        || async { listener.accept().await.map(|(stream, _)| stream) },
        config.max_connections,
        true,
    );
    let unix = async {
        if let Some(socket) = &socket {
            let accept = || async { socket.accept().await.map(|(stream, _)| stream) };
            server.accept_loop(accept, config.max_connections, false).await;
        }
    };
    tokio::join!(tcp, unix);
    drop((listener, socket));
    if tokio::time::timeout(GRACE, server.graceful.shutdown()).await.is_err() {
        warn!(grace = ?GRACE, "requests still open at shutdown are dropped");
    }
}

/// What both accept loops share.
struct Server {
    http: hyper::server::conn::http1::Builder,
    router: Router,
    graceful: GracefulShutdown,
    shutdown: CancellationToken,
}

impl Server {
    /// Accepts connections from `accept` and serves each, at most `cap` at once; with `evict`,
    /// a full cap closes the oldest connection that has sent no complete request for
    /// [`IDLE_GRACE`].
    async fn accept_loop<S, F, Fut>(&self, accept: F, cap: usize, evict: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Fn() -> Fut,
        Fut: Future<Output = std::io::Result<S>>,
    {
        let slots = Arc::new(Semaphore::new(cap));
        let open = Arc::new(Connections::default());
        let mut backoff = BACKOFF.0;
        loop {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    let wait = if evict { open.close_idle(IDLE_GRACE) } else { None };
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break, // never closed
                        },
                        () = sleep_or_pending(wait) => continue,
                        () = self.shutdown.cancelled() => break,
                    }
                }
            };
            let stream = tokio::select! {
                accepted = accept() => accepted,
                () = self.shutdown.cancelled() => break,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    warn!(%error, retry_in = ?backoff, "cannot accept a connection");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.shutdown.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF.1);
                    continue;
                }
            };
            backoff = BACKOFF.0;
            let (id, requested, close) = open.add();
            let router = self.router.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                requested.store(true, Ordering::Relaxed);
                router.clone().oneshot(request)
            });
            let connection =
                self.graceful.watch(self.http.serve_connection(TokioIo::new(stream), service));
            let open = open.clone();
            tokio::spawn(async move {
                // Errors are the client's (it went away, or sent its headers too slowly).
                tokio::select! {
                    _ = connection => {}
                    () = close.cancelled() => {}
                }
                open.remove(id);
                drop(slot);
            });
        }
    }
}

/// Sleeps for `wait`, or forever without one.
async fn sleep_or_pending(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// The open connections of one listener, oldest first.
#[derive(Default)]
struct Connections {
    next: std::sync::atomic::AtomicU64,
    open: Mutex<BTreeMap<u64, Connection>>,
}

struct Connection {
    accepted: Instant,
    /// Set once a complete request has arrived on it.
    requested: Arc<AtomicBool>,
    /// Cancelled to close it.
    close: CancellationToken,
}

impl Connections {
    fn add(&self) -> (u64, Arc<AtomicBool>, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let requested = Arc::new(AtomicBool::new(false));
        let close = CancellationToken::new();
        let connection = Connection {
            accepted: Instant::now(),
            requested: requested.clone(),
            close: close.clone(),
        };
        self.lock().insert(id, connection);
        (id, requested, close)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the oldest connection that has sent no complete request for `grace`, or says how
    /// long until the oldest such one will have; `None` when one was closed (its slot is about to
    /// be freed) or there is none to close.
    fn close_idle(&self, grace: Duration) -> Option<Duration> {
        let mut open = self.lock();
        let (&id, oldest) = open.iter().find(|(_, c)| !c.requested.load(Ordering::Relaxed))?;
        let age = oldest.accepted.elapsed();
        if age < grace {
            return Some(grace - age);
        }
        info!(idle_for = ?age, "every connection slot is taken: closing an idle connection");
        oldest.close.cancel();
        open.remove(&id);
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Connection>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
