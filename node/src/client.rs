//! The CLI's client of a running daemon's API.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::home::{Auth, DaemonInfo, Home};

/// A daemon holds the home's lock but its API does not answer: stopped (SIGSTOP) or hung.
#[derive(Debug, thiserror::Error)]
#[error("the daemon (pid {pid}, {addr}) does not answer: it holds the home's lock, but its API is silent (stopped or hung)")]
pub struct Silent {
    pub pid: u32,
    pub addr: String,
}

impl Silent {
    /// How to get out of it.
    pub fn fix(&self) -> String {
        format!(
            "`kill -CONT {0}` if it was stopped, else stop it (`kill {0}`) and start it again with `ccm up`",
            self.pid
        )
    }
}

/// Whether a daemon holds the home's lock (`daemon.lock`), probed without keeping it.
pub(crate) fn lock_held(home: &Home) -> bool {
    std::fs::File::open(home.lock_file())
        .is_ok_and(|f| matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// A call to the daemon's API that did not give the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the port file holds a bad address: {0}")]
    BadAddress(String),
    #[error("cannot reach the daemon at {url}")]
    Unreachable {
        url: reqwest::Url,
        #[source]
        source: reqwest::Error,
    },
    #[error("the daemon sent a response that is not JSON ({status})")]
    NotJson {
        status: StatusCode,
        #[source]
        source: reqwest::Error,
    },
    #[error("the daemon's answer has an unexpected shape")]
    Shape(#[source] serde_json::Error),
    /// The daemon refused the request; its message names what was wrong.
    #[error("{message}")]
    Refused { status: StatusCode, message: String },
}

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    pub daemon: DaemonInfo,
}

impl Client {
    /// Connects to the daemon of `home` when one answers; `None` when none runs (no port file,
    /// or a stale one left by a daemon that was killed), [`Silent`] when one holds the home's
    /// lock but does not answer.
    pub async fn connect(home: &Home) -> Result<Option<Client>, Silent> {
        let Some(daemon) = home.read_daemon_info() else { return Ok(None) };
        let Ok(Auth { token, .. }) = home.read_auth() else { return Ok(None) };
        // The daemon's Unix socket when it has one: no TCP handshake, and never behind the TCP
        // listener's connection cap (any local user can fill that one).
        let mut builder = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60));
        if let Some(socket) = &daemon.socket {
            builder = builder.unix_socket(socket.as_path());
        }
        let Ok(http) = builder.build() else {
            return Ok(None);
        };
        let base = format!("http://{}", daemon.addr);
        // A busy daemon gets a second, longer chance; a port file nobody holds the lock for is
        // stale and needs none.
        for wait in [Duration::from_secs(1), Duration::from_secs(4)] {
            let health = async {
                let response = http.get(format!("{base}/healthz")).timeout(wait).send().await;
                response.ok()?.json::<Value>().await.ok()
            };
            if let Some(health) = health.await {
                let ours = health["pid"].as_u64() == Some(u64::from(daemon.pid));
                return Ok(ours.then_some(Client { base, token, http, daemon }));
            }
            if !lock_held(home) {
                return Ok(None);
            }
        }
        Err(Silent { pid: daemon.pid, addr: daemon.addr })
    }

    /// `GET /api/<path...>`; each path segment is percent-encoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &[&str]) -> Result<T, ClientError> {
        self.call(Method::GET, path, &[], None).await
    }

    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &[&str],
        body: Value,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    pub async fn post_query<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
        body: Value,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, query, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &[&str]) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, &[], None).await
    }

    pub async fn delete_query<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, query, None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<T, ClientError> {
        let bad_address = || ClientError::BadAddress(self.base.clone());
        let mut url = reqwest::Url::parse(&self.base).map_err(|_| bad_address())?;
        url.path_segments_mut().map_err(|()| bad_address())?.push("api").extend(path);
        let mut request = self
            .http
            .request(method, url.clone())
            .query(query)
            .bearer_auth(&self.token)
            .header("x-ccm-actor", "cli");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(source) => return Err(ClientError::Unreachable { url, source }),
        };
        let status = response.status();
        let body: Value =
            response.json().await.map_err(|source| ClientError::NotJson { status, source })?;
        if status.is_success() {
            serde_json::from_value(body).map_err(ClientError::Shape)
        } else {
            let message = body["error"]["message"].as_str().unwrap_or("no message").to_string();
            Err(ClientError::Refused { status, message })
        }
    }
}
