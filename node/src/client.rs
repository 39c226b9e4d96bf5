//! The CLI's client of a running daemon's API.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::home::{DaemonInfo, Home};

pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    pub daemon: DaemonInfo,
}

impl Client {
    /// Connects to the daemon of `home` when one answers; `None` when none runs (no port file,
    /// or a stale one left by a daemon that was killed).
    pub async fn connect(home: &Home) -> Option<Client> {
        let daemon = home.read_daemon_info()?;
        let token = home.read_auth().ok()?.token;
        let http =
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().ok()?;
        let base = format!("http://{}", daemon.addr);
        let health: Value = http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_millis(1000))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (health["pid"].as_u64() == Some(u64::from(daemon.pid))).then_some(Client {
            base,
            token,
            http,
            daemon,
        })
    }

    /// `GET /api/<path...>`; each path segment is percent-encoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &[&str]) -> anyhow::Result<T> {
        self.call(Method::GET, path, &[], None).await
    }

    pub async fn get_query<T: DeserializeOwned>(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &[&str], body: Value) -> anyhow::Result<T> {
        self.call(Method::POST, path, &[], Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &[&str]) -> anyhow::Result<T> {
        self.call(Method::DELETE, path, &[], None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let mut url =
            reqwest::Url::parse(&self.base).context("the port file holds a bad address")?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the port file holds a bad address"))?
            .push("api")
            .extend(path);
        let mut request = self
            .http
            .request(method, url.clone())
            .query(query)
            .bearer_auth(&self.token)
            .header("x-ccm-actor", "cli");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach the daemon at {url}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the daemon sent a response that is not JSON ({status})"))?;
        if status.is_success() {
            serde_json::from_value(body).context("the daemon's answer has an unexpected shape")
        } else {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!("{message}")
        }
    }
}
