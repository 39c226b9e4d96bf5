//! Request guards of the local API: `Host` and `Origin` against DNS rebinding and cross-site
//! requests (403), then the bearer token from `auth.json` (401).

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::AppState;

/// The `Host` values and `Origin`s a local client may send for the bound port.
#[derive(Debug, Clone)]
pub struct Allowed {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl Allowed {
    /// The loopback names, and the configured `host` (such as 127.0.0.2) when it is another.
    pub fn for_host_and_port(host: std::net::IpAddr, port: u16) -> Allowed {
        let configured = match host {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let mut names = vec!["127.0.0.1".to_string(), "localhost".into(), "[::1]".into()];
        if !names.contains(&configured) {
            names.push(configured);
        }
        let hosts: Vec<String> = names.iter().map(|h| format!("{h}:{port}")).collect();
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        Allowed { hosts, origins }
    }

    fn host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// Refuses requests whose `Host` is not a loopback name for our port (exactly one `Host`, and
/// an absolute-form request line must name the same), or that carry an `Origin` of another
/// site.
pub async fn check_host_and_origin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next().and_then(|h| h.to_str().ok()).unwrap_or_default();
    if hosts.next().is_some() {
        return Err(ApiError::Forbidden("more than one `Host` header: refused".into()));
    }
    if !state.allowed.host(host) {
        return Err(ApiError::Forbidden(format!(
            "host `{host}` is not allowed: the API answers only on loopback"
        )));
    }
    if let Some(authority) = request.uri().authority() {
        if !state.allowed.host(authority.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "request target `{authority}` is not allowed: the API answers only on loopback"
            )));
        }
    }
    for origin in headers.get_all(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !state.allowed.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return Err(ApiError::Forbidden(format!(
                "origin `{origin}` is not allowed: cross-site requests are refused"
            )));
        }
    }
    Ok(next.run(request).await)
}

/// Requires `Authorization: Bearer <token>`.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
