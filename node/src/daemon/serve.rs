//! The accept loop of the API, on its TCP listener and its Unix socket (which the hooks use):
//! hyper's HTTP/1.1 connections with a header-read timeout (which also closes idle keep-alive
//! connections), at most `daemon.max_connections` at once (more wait in the listen backlog),
//! and accept errors such as running out of file descriptors answered with a back-off instead
//! of a busy loop. On shutdown it stops accepting, lets each connection finish its request, and
//! returns when all are closed, or after [`GRACE`] (a hook held by an approval rule may wait
//! minutes; it takes its direct path when the daemon has gone).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::DaemonConfig;

/// How long shutdown waits for requests in flight.
const GRACE: Duration = Duration::from_secs(5);

/// First and longest wait after a failed accept.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

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
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut backoff = BACKOFF.0;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            () = shutdown.cancelled() => break,
        };
        let unix = async {
            match &socket {
                Some(socket) => socket.accept().await.map(|(stream, _)| Either::Right(stream)),
                None => std::future::pending().await,
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => accepted.map(|(stream, _)| Either::Left(stream)),
            accepted = unix => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, retry_in = ?backoff, "cannot accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        backoff = BACKOFF.0;
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors are the client's (it went away, or sent its headers too slowly).
            let _ = connection.await;
            drop(slot);
        });
    }
    drop((listener, socket));
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        warn!(grace = ?GRACE, "requests still open at shutdown are dropped");
    }
}
