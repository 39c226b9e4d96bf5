//! The PostgREST RPC client, and what its answers mean.
//!
//! Every call is `POST {rest_url}/rpc/<function>` with the publishable key (`apikey`), the
//! system's JWT (`Authorization: Bearer`) and `Content-Profile`/`Accept-Profile: api`; a
//! view is read with `GET {rest_url}/<view>?<query>` (`Client::select`, the operator's fleet
//! view on the dashboard).
//!
//! Deciding *whether* to retry ([`classify`]) is kept apart from deciding *when* (the driver's
//! backoff). The classification looks at PostgREST's JSON `code` first, the HTTP status second
//! (sync-routing.md S-9):
//!
//! | answer                                                          | class            | the driver                           |
//! |-----------------------------------------------------------------|------------------|--------------------------------------|
//! | 2xx echoing the batch id, status `applied` or `duplicate`       | (acknowledged)   | acks, rejected items keep their reason |
//! | 2xx that does not parse or echoes another id                    | `Transient`      | resends the same bytes later         |
//! | network error, timeout, 408, 429, 5xx, `PGRST003`, `08*`, `53*`, `57P*`, `40001`, `40P01` | `Transient` | backoff with full jitter, `Retry-After` honoured |
//! | 413, `57014` (statement timeout)                                | `TooLarge`       | splits the batch in halves           |
//! | 401, `PGRST301`, `PGRST303`, postrust's `PGRST504`              | `Unauthorized`   | pauses both lanes, alert, keeps queueing |
//! | 403, `42501`                                                    | `Forbidden`      | pauses both lanes, alert, keeps queueing |
//! | 404, `PGRST1xx`, `PGRST2xx` (bad URL, schema or function)       | `Misconfigured`  | pauses both lanes, alert, keeps queueing |
//! | other 4xx, `22*`, `23*`, `P0001`                                | `BadRequest`     | bisects; a lone item is rejected     |
//!
//! Codes win over statuses: postrust answers an RLS refusal with 401 `PGRST504` where PostgREST
//! answers 403 `42501`, and a statement timeout comes as a 500 with `57014`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::auth::Keeper;

/// Longer than the central role's statement timeout (8 s) plus margin (S-7), so a request still
/// running is not given up on.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A `Retry-After` longer than this is taken as this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// What a failed call means for the batch it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Unknown outcome or back-pressure: send the same batch again later.
    Transient { retry_after: Option<Duration> },
    /// Too big for the server's budget: split it.
    TooLarge,
    /// The access token is expired or invalid.
    Unauthorized,
    /// The identity is not enrolled, revoked, or refused by policy.
    Forbidden,
    /// The URL, schema or function is wrong: nothing will work until the config is fixed.
    Misconfigured,
    /// Something in the batch is bad.
    BadRequest,
}

impl Class {
    /// Whether this failure pauses sync until an operator acts.
    pub fn pauses(&self) -> bool {
        matches!(self, Class::Unauthorized | Class::Forbidden | Class::Misconfigured)
    }

    /// The pause reason's prefix shown by `ccm sync status`.
    pub fn reason(&self) -> &'static str {
        match self {
            Class::Transient { .. } => "transient",
            Class::TooLarge => "too_large",
            Class::Unauthorized => "unauthorized",
            Class::Forbidden => "forbidden",
            Class::Misconfigured => "misconfigured",
            Class::BadRequest => "bad_request",
        }
    }
}

/// Classifies a non-2xx answer by PostgREST's `code` first, then by HTTP status.
pub fn classify(status: u16, code: Option<&str>, retry_after: Option<Duration>) -> Class {
    let transient = Class::Transient { retry_after };
    if let Some(code) = code {
        let by_code = match code {
            "57014" => Some(Class::TooLarge),
            "42501" => Some(Class::Forbidden),
            "PGRST301" | "PGRST302" | "PGRST303" | "PGRST504" => Some(Class::Unauthorized),
            "PGRST003" | "40001" | "40P01" => Some(transient.clone()),
            c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
                Some(transient.clone())
            }
            c if c.starts_with("PGRST1") || c.starts_with("PGRST2") => Some(Class::Misconfigured),
            c if c.starts_with("22") || c.starts_with("23") || c == "P0001" => {
                Some(Class::BadRequest)
            }
            _ => None,
        };
        if let Some(class) = by_code {
            return class;
        }
    }
    match status {
        401 => Class::Unauthorized,
        403 => Class::Forbidden,
        404 => Class::Misconfigured,
        413 => Class::TooLarge,
        408 | 429 => transient,
        400..=499 => Class::BadRequest,
        _ => transient,
    }
}

/// A call that did not succeed: its class and a message naming what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub class: Class,
    /// The error code the server gave (PostgREST's or PostgreSQL's `code`), if any.
    pub code: Option<String>,
    pub message: String,
}

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured URL cannot be a REST base URL.
    #[error("sync url `{0}` is not a valid http(s) URL")]
    BadUrl(String),
    /// The publishable key cannot go in a header.
    #[error("sync publishable key is not a valid header value")]
    BadKey,
    /// reqwest could not build its client.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Where the central REST API is and the key that opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The PostgREST base URL (`<supabase url>/rest/v1`, or a self-hosted REST URL).
    pub rest_url: Url,
    /// Supabase Auth's base URL (`<supabase url>/auth/v1/`, or `sync.auth_url`); `None` when
    /// only a REST URL is configured.
    pub auth_url: Option<Url>,
    pub publishable_key: String,
}

impl Endpoint {
    /// A Supabase project URL (REST at `/rest/v1`) or, when `rest_url` is given, that URL.
    pub fn new(
        supabase_url: Option<&str>,
        rest_url: Option<&str>,
        publishable_key: &str,
    ) -> Result<Endpoint, ClientError> {
        let text = match (rest_url, supabase_url) {
            (Some(rest), _) => rest.trim_end_matches('/').to_string(),
            (None, Some(project)) => format!("{}/rest/v1", project.trim_end_matches('/')),
            (None, None) => return Err(ClientError::BadUrl(String::new())),
        };
        let rest_url = base_url(&text)?;
        let auth_url = match supabase_url {
            Some(project) => Some(base_url(&format!("{}/auth/v1", project.trim_end_matches('/')))?),
            None => None,
        };
        Ok(Endpoint { rest_url, auth_url, publishable_key: publishable_key.to_string() })
    }

    /// With Supabase Auth at `auth_url` (self-hosted, or another gateway) instead of the
    /// project URL's `/auth/v1`.
    pub fn with_auth_url(mut self, auth_url: &str) -> Result<Endpoint, ClientError> {
        self.auth_url = Some(base_url(auth_url.trim_end_matches('/'))?);
        Ok(self)
    }
}

/// `text` as an http(s) base URL ending in `/`, so relative paths join below it.
fn base_url(text: &str) -> Result<Url, ClientError> {
    Url::parse(&format!("{text}/"))
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| ClientError::BadUrl(text.to_string()))
}

/// What the client sends as `Authorization: Bearer`. `Debug` shows no token.
#[derive(Clone, Default)]
pub enum Credential {
    /// Not enrolled: calls fail `Unauthorized` without a request.
    #[default]
    None,
    /// A JWT the operator minted (`ccm sync enroll --jwt`), used until it expires.
    Jwt(String),
    /// A Supabase Auth session, refreshed before its access token expires.
    Session(Arc<Keeper>),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::None => f.write_str("None"),
            Credential::Jwt(_) => f.write_str("Jwt(..)"),
            Credential::Session(keeper) => f.debug_tuple("Session").field(keeper).finish(),
        }
    }
}

/// The PostgREST client; cheap to clone, the credential is shared and replaced on enrolment.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: Endpoint,
    credential: Arc<RwLock<Credential>>,
}

/// PostgREST's error body.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

impl Client {
    pub fn new(endpoint: Endpoint, credential: Credential) -> Result<Client, ClientError> {
        let mut headers = HeaderMap::new();
        let key =
            HeaderValue::from_str(&endpoint.publishable_key).map_err(|_| ClientError::BadKey)?;
        headers.insert("apikey", key);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("content-profile", HeaderValue::from_static("api"));
        headers.insert("accept-profile", HeaderValue::from_static("api"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Client { http, endpoint, credential: Arc::new(RwLock::new(credential)) })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Replaces the credential (after `ccm sync enroll`).
    pub fn set_credential(&self, credential: Credential) {
        if let Ok(mut current) = self.credential.write() {
            *current = credential;
        }
    }

    pub fn has_token(&self) -> bool {
        self.credential.read().map(|c| !matches!(*c, Credential::None)).unwrap_or(false)
    }

    /// The bearer token for the next call, refreshing a session's first when it is due (or,
    /// with `stale`, when the server refused that one as expired).
    async fn bearer(&self, stale: Option<&str>) -> Result<String, Failure> {
        let credential = self.credential.read().map(|c| c.clone()).unwrap_or_default();
        match credential {
            Credential::None => Err(Failure {
                code: None,
                class: Class::Unauthorized,
                message: "not enrolled: no access token (run `ccm sync enroll`)".into(),
            }),
            Credential::Jwt(token) => Ok(token),
            Credential::Session(keeper) => match stale {
                Some(stale) => keeper.replace(stale).await,
                None => keeper.access_token().await,
            },
        }
    }

    fn has_session(&self) -> bool {
        self.credential.read().map(|c| matches!(*c, Credential::Session(_))).unwrap_or(false)
    }

    /// Calls `api.<function>` with `body` (a JSON object of its parameters); the 2xx body.
    ///
    /// With a session, a 401 that says the JWT expired (`PGRST301`/`PGRST303`, or no code: the
    /// server's clock runs ahead of ours) refreshes the session and sends the call once more:
    /// a call refused for its token was not applied.
    pub async fn rpc(&self, function: &str, body: bytes::Bytes) -> Result<Vec<u8>, Failure> {
        self.send(&format!("rpc/{function}"), &[], Some(body)).await
    }

    /// Reads the view `api.<view>` (`GET {rest_url}/<view>?<query>`, row-level security applies
    /// to the caller) and parses its rows; a session is refreshed as for [`Client::rpc`].
    pub async fn select<T: serde::de::DeserializeOwned>(
        &self,
        view: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, Failure> {
        let answer = self.send(view, query, None).await?;
        serde_json::from_slice(&answer).map_err(|e| Failure {
            class: Class::Transient { retry_after: None },
            code: None,
            message: format!("rows of {view} do not parse: {e}"),
        })
    }

    /// POSTs `body` to `path?query` under the REST URL, or GETs it without one.
    async fn send(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Option<bytes::Bytes>,
    ) -> Result<Vec<u8>, Failure> {
        let token = self.bearer(None).await?;
        match self.send_as(&token, path, query, body.clone()).await {
            Err(failure) if failure.expired_token && self.has_session() => {
                let token = self.bearer(Some(&token)).await?;
                self.send_as(&token, path, query, body).await.map_err(|f| f.failure)
            }
            other => other.map_err(|f| f.failure),
        }
    }

    async fn send_as(
        &self,
        token: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<bytes::Bytes>,
    ) -> Result<Vec<u8>, Refused> {
        let mut url = self.endpoint.rest_url.join(path).map_err(|e| Failure {
            class: Class::Misconfigured,
            code: None,
            message: format!("bad url `{path}`: {e}"),
        })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let request = match body {
            Some(body) => self.http.post(url).body(body),
            None => self.http.get(url),
        };
        let response =
            request.header(AUTHORIZATION, format!("Bearer {token}")).send().await.map_err(|e| {
                Failure {
                    class: Class::Transient { retry_after: None },
                    code: None,
                    message: format!("request failed: {}", error_chain(&e)),
                }
            })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = response.bytes().await.map_err(|e| Failure {
            class: Class::Transient { retry_after },
            code: None,
            message: format!("reading the answer failed: {}", error_chain(&e)),
        })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let error: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = error.as_ref().and_then(|e| e.code.clone());
        let message = error.and_then(|e| e.message).unwrap_or_else(|| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
        });
        let expired_token = status == StatusCode::UNAUTHORIZED
            && matches!(code.as_deref(), None | Some("PGRST301" | "PGRST303"));
        Err(Refused {
            failure: Failure {
                class: classify(status.as_u16(), code.as_deref(), retry_after),
                message: describe(status, code.as_deref(), &message),
                code,
            },
            expired_token,
        })
    }

    /// Calls `api.<function>` with a serializable parameter object and parses the answer.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        function: &str,
        params: &(impl serde::Serialize + ?Sized),
    ) -> Result<T, Failure> {
        let body = serde_json::to_vec(params).map_err(|e| Failure {
            class: Class::BadRequest,
            code: None,
            message: format!("cannot encode the parameters: {e}"),
        })?;
        let answer = self.rpc(function, body.into()).await?;
        serde_json::from_slice(&answer).map_err(|e| Failure {
            class: Class::Transient { retry_after: None },
            code: None,
            message: format!("answer of {function} does not parse: {e}"),
        })
    }
}

/// A failed call, and whether the server refused its token as expired or invalid.
struct Refused {
    failure: Failure,
    expired_token: bool,
}

impl From<Failure> for Refused {
    fn from(failure: Failure) -> Refused {
        Refused { failure, expired_token: false }
    }
}

fn describe(status: StatusCode, code: Option<&str>, message: &str) -> String {
    match code {
        Some(code) => format!("HTTP {} {code}: {message}", status.as_u16()),
        None => format!("HTTP {}: {message}", status.as_u16()),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and left to the backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_CAP))
}

/// An error and its sources, joined with `: ` (a source that repeats its parent is left out):
/// "error sending request" alone does not say whether it was DNS, TLS or a refused connection.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !line.is_empty() && !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(retry_after: Option<Duration>) -> Class {
        Class::Transient { retry_after }
    }

    #[test]
    fn classification_follows_the_table_code_first() {
        let wait = Some(Duration::from_secs(7));
        let table: &[(u16, Option<&str>, Class)] = &[
            (503, None, transient(None)),
            (502, None, transient(None)),
            (504, None, transient(None)),
            (500, None, transient(None)),
            (408, None, transient(None)),
            (429, None, transient(None)),
            (503, Some("PGRST003"), transient(None)),
            (500, Some("08006"), transient(None)),
            (500, Some("53300"), transient(None)),
            (500, Some("57P01"), transient(None)),
            (409, Some("40001"), transient(None)),
            (409, Some("40P01"), transient(None)),
            (413, None, Class::TooLarge),
            (500, Some("57014"), Class::TooLarge),
            (401, Some("PGRST301"), Class::Unauthorized),
            (401, Some("PGRST303"), Class::Unauthorized),
            (401, Some("PGRST504"), Class::Unauthorized),
            (401, None, Class::Unauthorized),
            (403, Some("42501"), Class::Forbidden),
            (401, Some("42501"), Class::Forbidden),
            (403, None, Class::Forbidden),
            (404, Some("PGRST202"), Class::Misconfigured),
            (406, Some("PGRST106"), Class::Misconfigured),
            (404, None, Class::Misconfigured),
            (400, Some("22P02"), Class::BadRequest),
            (409, Some("23505"), Class::BadRequest),
            (400, Some("P0001"), Class::BadRequest),
            (400, Some("22023"), Class::BadRequest),
            (400, None, Class::BadRequest),
            (422, Some("XX999"), Class::BadRequest),
        ];
        for (status, code, expected) in table {
            assert_eq!(&classify(*status, *code, None), expected, "{status} {code:?}");
        }
        assert_eq!(classify(429, None, wait), transient(wait));
        assert_eq!(classify(503, Some("PGRST003"), wait), transient(wait));
    }

    #[test]
    fn pausing_classes_are_the_identity_and_config_ones() {
        assert!(Class::Unauthorized.pauses());
        assert!(Class::Forbidden.pauses());
        assert!(Class::Misconfigured.pauses());
        assert!(!Class::BadRequest.pauses());
        assert!(!Class::TooLarge.pauses());
        assert!(!transient(None).pauses());
    }

    #[test]
    fn endpoint_of_a_supabase_project_is_its_rest_v1() {
        let e = Endpoint::new(Some("https://abc.supabase.co/"), None, "k").unwrap();
        assert_eq!(e.rest_url.as_str(), "https://abc.supabase.co/rest/v1/");
        let auth = e.auth_url.as_ref().unwrap().join("token?grant_type=password").unwrap();
        assert_eq!(auth.as_str(), "https://abc.supabase.co/auth/v1/token?grant_type=password");
        let own = e.with_auth_url("http://127.0.0.1:9999/auth/v1/").unwrap();
        assert_eq!(own.auth_url.unwrap().as_str(), "http://127.0.0.1:9999/auth/v1/");
        let rest_only = Endpoint::new(None, Some("http://127.0.0.1:3000"), "k").unwrap();
        assert_eq!(rest_only.auth_url, None);
        let e = Endpoint::new(Some("https://x"), Some("http://127.0.0.1:3000"), "k").unwrap();
        assert_eq!(
            e.rest_url.join("rpc/enroll").unwrap().as_str(),
            "http://127.0.0.1:3000/rpc/enroll"
        );
        assert!(matches!(Endpoint::new(None, Some("ftp://x"), "k"), Err(ClientError::BadUrl(_))));
        assert!(matches!(Endpoint::new(None, Some("not a url"), "k"), Err(ClientError::BadUrl(_))));
    }

    #[test]
    fn retry_after_in_seconds_is_read_and_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&headers), Some(RETRY_AFTER_CAP));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), None);
    }
}
