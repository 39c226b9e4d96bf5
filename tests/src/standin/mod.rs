//! Local stand-ins of the model APIs the agent CLIs call, scripted per test, so the real CLIs
//! run offline. Each serves an axum router on `127.0.0.1:0` from a thread of its own (the
//! tests block their own runtime on `ccm` commands), and stops when dropped.
//!
//! - [`anthropic`]: the Anthropic Messages API, for Claude Code.

pub mod anthropic;

use std::net::SocketAddr;

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
