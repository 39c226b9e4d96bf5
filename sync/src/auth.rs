//! Supabase Auth (GoTrue): signing a system in and keeping its session alive.
//!
//! The calls, each `POST {auth_url}/<path>` with the project's publishable key as `apikey`:
//! - `token?grant_type=password` (`{"email", "password"}`): `ccm sync enroll --email`.
//! - `token?grant_type=refresh_token` (`{"refresh_token"}`): a new access token, and (with
//!   refresh-token rotation, Supabase's default) a new refresh token; the old one is spent.
//! - `signup` with no email (`{}`): an anonymous sign-in, the session an invited system starts
//!   with (`ccm sync enroll --code`).
//!
//! A session answer is GoTrue's `AccessTokenResponse`: `access_token`, `token_type` (`bearer`),
//! `expires_in` (seconds), `expires_at` (Unix seconds), `refresh_token`, `user`. Errors come in
//! the OAuth form `{"error": "invalid_grant", "error_description": "..."}` or GoTrue's own
//! `{"code": 400, "error_code": "refresh_token_not_found", "msg": "..."}`.
//!
//! [`Keeper`] holds a session for the [`Client`](crate::Client): before a call it refreshes an
//! access token that is about to expire ([`Session::due`]), under the [`SessionStore`]'s
//! lock and after re-reading it (another process of the same home may have refreshed it), and
//! saves the new session before it uses the new access token. A daemon killed between GoTrue's
//! rotation and that save still holds the spent refresh token, the parent of the active one,
//! which GoTrue answers with the active session (`internal/api/token_refresh.go`), so a restart
//! carries on. A refused refresh (the session was revoked, the user banned or deleted) is
//! final: every call then fails [`Class::Unauthorized`] naming the cause, and the driver
//! pauses sync with that reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::client::{error_chain, Class, ClientError, Endpoint, Failure, REQUEST_TIMEOUT};

/// The longest a token is refreshed ahead of its expiry (a fifth of its lifetime when shorter).
const MAX_MARGIN_SECS: i64 = 300;

/// A Supabase Auth session, as the node keeps it in `auth.json`. `Debug` shows no token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The JWT sent as `Authorization: Bearer`.
    pub access_token: String,
    /// Spent by the next refresh (rotation); never logged.
    pub refresh_token: String,
    /// When the access token expires, Unix seconds by this machine's clock (the time the answer
    /// arrived plus `expires_in`, so a server clock that differs does not matter).
    pub expires_at: i64,
    /// The access token's lifetime in seconds, as the answer gave it.
    pub expires_in: i64,
    /// The Auth user's id (`user.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_at", &self.expires_at)
            .field("expires_in", &self.expires_in)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Whether the access token should be refreshed at `now` (Unix seconds): within a fifth of
    /// its lifetime (at most 5 minutes, at least 1 second) of its expiry, or past it.
    pub fn due(&self, now: i64) -> bool {
        let margin = (self.expires_in / 5).clamp(1, MAX_MARGIN_SECS);
        now + margin >= self.expires_at
    }
}

/// GoTrue's session answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    expires_in: i64,
    refresh_token: String,
    #[serde(default)]
    user: Option<UserAnswer>,
}

#[derive(Deserialize)]
struct UserAnswer {
    id: String,
}

/// GoTrue's error body, in either of its forms.
#[derive(Debug, Default, Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
    error_description: Option<String>,
    error_code: Option<String>,
    msg: Option<String>,
    message: Option<String>,
}

/// Why a call to Supabase Auth did not give a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// Auth refused the credentials or the refresh token (`invalid_grant`, a 4xx with an
    /// `error_code`): the session is revoked or the password wrong. Asking again will not help.
    #[error("{0}")]
    Refused(String),
    /// No answer, a 5xx, a 429, or an answer that does not parse: try again later.
    #[error("{0}")]
    Transient(String),
    /// A 404 or a refused `apikey`: the auth URL or the key is wrong.
    #[error("{0}")]
    Misconfigured(String),
}

impl AuthFailure {
    fn into_failure(self, context: &str) -> Failure {
        let class = match &self {
            AuthFailure::Refused(_) => Class::Unauthorized,
            AuthFailure::Transient(_) => Class::Transient { retry_after: None },
            AuthFailure::Misconfigured(_) => Class::Misconfigured,
        };
        Failure { class, code: None, message: format!("{context}: {self}") }
    }
}

/// Client of the project's Supabase Auth.
#[derive(Debug, Clone)]
pub struct AuthClient {
    http: reqwest::Client,
    auth_url: Url,
}

impl AuthClient {
    /// The Auth API of `endpoint`; `None` when the endpoint has no auth URL.
    pub fn new(endpoint: &Endpoint) -> Result<Option<AuthClient>, ClientError> {
        let Some(auth_url) = endpoint.auth_url.clone() else { return Ok(None) };
        let mut headers = HeaderMap::new();
        let key =
            HeaderValue::from_str(&endpoint.publishable_key).map_err(|_| ClientError::BadKey)?;
        headers.insert("apikey", key);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Some(AuthClient { http, auth_url }))
    }

    /// Signs in with an email and a password.
    pub async fn password(&self, email: &str, password: &str) -> Result<Session, AuthFailure> {
        let body = serde_json::json!({ "email": email, "password": password });
        self.token("token?grant_type=password", &body).await
    }

    /// A new session from `refresh_token` (spent by the call when rotation is on).
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, AuthFailure> {
        let body = serde_json::json!({ "refresh_token": refresh_token });
        self.token("token?grant_type=refresh_token", &body).await
    }

    /// An anonymous sign-in: a new Auth user with no email (the project must allow anonymous
    /// sign-ins).
    pub async fn anonymous(&self) -> Result<Session, AuthFailure> {
        self.token("signup", &serde_json::json!({})).await
    }

    async fn token(&self, path: &str, body: &serde_json::Value) -> Result<Session, AuthFailure> {
        let url = self
            .auth_url
            .join(path)
            .map_err(|e| AuthFailure::Misconfigured(format!("bad auth url: {e}")))?;
        let response =
            self.http.post(url).json(body).send().await.map_err(|e| {
                AuthFailure::Transient(format!("request failed: {}", error_chain(&e)))
            })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| {
            AuthFailure::Transient(format!("reading the answer failed: {}", error_chain(&e)))
        })?;
        if (200..300).contains(&status) {
            return session_of(&bytes, now_secs());
        }
        Err(refusal(status, &bytes))
    }
}

/// The session in a 2xx answer received at `now`.
fn session_of(bytes: &[u8], now: i64) -> Result<Session, AuthFailure> {
    let answer: TokenAnswer = serde_json::from_slice(bytes)
        .map_err(|e| AuthFailure::Transient(format!("the session answer does not parse: {e}")))?;
    if answer.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
        return Err(AuthFailure::Transient(format!(
            "the session answer has token_type `{}`, not bearer",
            answer.token_type.unwrap_or_default()
        )));
    }
    if answer.access_token.is_empty() || answer.refresh_token.is_empty() || answer.expires_in < 1 {
        return Err(AuthFailure::Transient(
            "the session answer lacks a token or a positive expires_in".into(),
        ));
    }
    Ok(Session {
        access_token: answer.access_token,
        refresh_token: answer.refresh_token,
        expires_at: now + answer.expires_in,
        expires_in: answer.expires_in,
        user_id: answer.user.map(|u| u.id),
    })
}

/// What a non-2xx answer of Supabase Auth means.
fn refusal(status: u16, bytes: &[u8]) -> AuthFailure {
    let error: ErrorAnswer = serde_json::from_slice(bytes).unwrap_or_default();
    let code = error.error_code.clone().or(error.error.clone());
    let text =
        error.error_description.or(error.msg).or(error.message).unwrap_or_else(|| {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
        });
    let described = match &code {
        Some(code) => format!("HTTP {status} {code}: {text}"),
        None => format!("HTTP {status}: {text}"),
    };
    match status {
        404 => AuthFailure::Misconfigured(described),
        // A refused apikey comes from the gateway without an Auth error code.
        401 if code.is_none() => AuthFailure::Misconfigured(described),
        408 | 429 => AuthFailure::Transient(described),
        400..=499 => AuthFailure::Refused(described),
        _ => AuthFailure::Transient(described),
    }
}

/// Where a session is kept between processes (the node's `auth.json`), and the lock that
/// serializes refreshes of it across processes. Blocking calls; errors are messages.
pub trait SessionStore: Send + Sync + 'static {
    /// Waits for the cross-process refresh lock; released when the guard is dropped.
    fn lock(&self) -> Result<Box<dyn Send>, String>;
    /// The session stored now (`None`: there is none).
    fn load(&self) -> Result<Option<Session>, String>;
    /// Replaces the stored session in one durable step.
    fn save(&self, session: &Session) -> Result<(), String>;
}

/// Told once, with the reason, when Auth refuses the session (the daemon pauses sync with it,
/// whether or not a lane has something to send).
pub type OnRefused = Box<dyn Fn(String) + Send + Sync>;

/// A session kept fresh for the client (see the module doc).
pub struct Keeper {
    auth: AuthClient,
    store: Arc<dyn SessionStore>,
    state: tokio::sync::Mutex<KeeperState>,
    on_refused: Option<OnRefused>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").field("auth_url", &self.auth.auth_url.as_str()).finish()
    }
}

struct KeeperState {
    session: Session,
    /// Set once Auth refused the refresh token: why, so no further refresh is tried.
    refused: Option<String>,
}

impl Keeper {
    pub fn new(auth: AuthClient, store: Arc<dyn SessionStore>, session: Session) -> Keeper {
        let state = tokio::sync::Mutex::new(KeeperState { session, refused: None });
        Keeper { auth, store, state, on_refused: None }
    }

    /// Calls `f` with the reason when Auth refuses the session.
    pub fn on_refused(mut self, f: OnRefused) -> Keeper {
        self.on_refused = Some(f);
        self
    }

    /// An access token that does not expire within its margin, refreshing it first when needed.
    pub async fn access_token(&self) -> Result<String, Failure> {
        self.fresh(None).await
    }

    /// The server refused `stale` (expired by its clock): a token other than it, refreshing now
    /// unless another call already did.
    pub async fn replace(&self, stale: &str) -> Result<String, Failure> {
        self.fresh(Some(stale)).await
    }

    async fn fresh(&self, stale: Option<&str>) -> Result<String, Failure> {
        let mut state = self.state.lock().await;
        if let Some(reason) = &state.refused {
            return Err(Failure {
                class: Class::Unauthorized,
                code: None,
                message: reason.clone(),
            });
        }
        let needed = |s: &Session| s.due(now_secs()) || stale == Some(s.access_token.as_str());
        if !needed(&state.session) {
            return Ok(state.session.access_token.clone());
        }
        let store = Arc::clone(&self.store);
        let local = |message: String| Failure {
            code: None,
            class: Class::Transient { retry_after: None },
            message: format!("the session store: {message}"),
        };
        let _guard = tokio::task::spawn_blocking(move || store.lock())
            .await
            .map_err(|e| local(e.to_string()))?
            .map_err(local)?;
        // Another process of this home may have refreshed (and so spent our refresh token).
        if let Some(stored) = self.store.load().map_err(local)? {
            if stored.refresh_token != state.session.refresh_token {
                state.session = stored;
                if !needed(&state.session) {
                    return Ok(state.session.access_token.clone());
                }
            }
        }
        match self.auth.refresh(&state.session.refresh_token).await {
            Ok(session) => {
                // Saved before use: the old refresh token is spent now.
                self.store.save(&session).map_err(local)?;
                tracing::info!(expires_in = session.expires_in, "sync session refreshed");
                state.session = session;
                Ok(state.session.access_token.clone())
            }
            Err(AuthFailure::Refused(cause)) => {
                let reason = format!(
                    "the Supabase Auth session was revoked or expired ({cause}); enrol this \
                     system again with `ccm sync enroll`"
                );
                state.refused = Some(reason.clone());
                if let Some(tell) = &self.on_refused {
                    tell(reason.clone());
                }
                Err(Failure { class: Class::Unauthorized, code: None, message: reason })
            }
            Err(other) => Err(other.into_failure("refreshing the sync session failed")),
        }
    }
}

/// Seconds since the Unix epoch by this machine's clock.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(expires_at: i64, expires_in: i64) -> Session {
        Session {
            access_token: "a".into(),
            refresh_token: "r".into(),
            expires_at,
            expires_in,
            user_id: None,
        }
    }

    #[test]
    fn a_token_is_due_a_fifth_of_its_lifetime_before_expiry_at_most_five_minutes() {
        let hour = session(10_000, 3600);
        assert!(!hour.due(10_000 - 301));
        assert!(hour.due(10_000 - 300));
        let short = session(100, 10);
        assert!(!short.due(97));
        assert!(short.due(98));
        assert!(short.due(500), "past expiry");
        let tiny = session(100, 2);
        assert!(!tiny.due(98));
        assert!(tiny.due(99), "at least a second ahead");
    }

    #[test]
    fn a_session_answer_is_read_with_its_expiry_on_the_local_clock() {
        let body = br#"{"access_token":"eyJ.x.y","token_type":"bearer","expires_in":3600,
            "expires_at":99,"refresh_token":"v1r","user":{"id":"u-1","aud":"authenticated"}}"#;
        let s = session_of(body, 1_000).unwrap();
        assert_eq!(s.expires_at, 4_600, "receipt time plus expires_in, not the server's");
        assert_eq!(s.refresh_token, "v1r");
        assert_eq!(s.user_id.as_deref(), Some("u-1"));
        assert!(!format!("{s:?}").contains("v1r"), "Debug shows no token");
        assert!(matches!(session_of(b"{}", 0), Err(AuthFailure::Transient(_))));
        let no_expiry =
            br#"{"access_token":"a","token_type":"bearer","expires_in":0,"refresh_token":"r"}"#;
        assert!(matches!(session_of(no_expiry, 0), Err(AuthFailure::Transient(_))));
    }

    /// A loopback HTTP server answering each request with the next `(status, body)`, and the
    /// request bodies it saw.
    async fn scripted(
        answers: Vec<(u16, &'static str)>,
    ) -> (Endpoint, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answers = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(answers)));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (answers, log) = (Arc::clone(&answers), Arc::clone(&log));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = conn.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else { continue };
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + length {
                            continue;
                        }
                        log.lock().unwrap().push(text[end + 4..end + 4 + length].to_string());
                        buf.drain(..end + 4 + length);
                        let (status, body) =
                            answers.lock().unwrap().pop_front().unwrap_or((500, "{}"));
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        conn.write_all(reply.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        let endpoint = Endpoint::new(Some(&format!("http://{addr}")), None, "key").unwrap();
        (endpoint, seen)
    }

    /// A store in memory that counts its saves.
    #[derive(Default)]
    struct Memory {
        session: std::sync::Mutex<Option<Session>>,
        saves: std::sync::atomic::AtomicUsize,
    }

    impl SessionStore for Arc<Memory> {
        fn lock(&self) -> Result<Box<dyn Send>, String> {
            Ok(Box::new(()))
        }
        fn load(&self) -> Result<Option<Session>, String> {
            Ok(self.session.lock().unwrap().clone())
        }
        fn save(&self, session: &Session) -> Result<(), String> {
            self.saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *self.session.lock().unwrap() = Some(session.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_keeper_saves_a_rotated_session_adopts_a_newer_stored_one_and_stops_once_refused() {
        let (endpoint, seen) = scripted(vec![
            (200, r#"{"access_token":"a2","token_type":"bearer","expires_in":3600,"expires_at":1,"refresh_token":"r2","user":{"id":"u"}}"#),
            (400, r#"{"code":400,"error_code":"refresh_token_not_found","msg":"Invalid Refresh Token: Refresh Token Not Found"}"#),
        ])
        .await;
        let auth = AuthClient::new(&endpoint).unwrap().unwrap();
        let expired = Session { expires_at: now_secs() - 1, ..session(0, 3600) };
        let memory = Arc::new(Memory::default());
        *memory.session.lock().unwrap() = Some(expired.clone());
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tell = Arc::clone(&told);
        let keeper = Keeper::new(auth, Arc::new(Arc::clone(&memory)), expired)
            .on_refused(Box::new(move |reason| tell.lock().unwrap().push(reason)));

        assert_eq!(keeper.access_token().await.unwrap(), "a2", "an expired token is refreshed");
        assert_eq!(seen.lock().unwrap().as_slice(), [r#"{"refresh_token":"r"}"#]);
        assert_eq!(memory.load().unwrap().unwrap().refresh_token, "r2", "saved before use");
        assert_eq!(keeper.access_token().await.unwrap(), "a2", "a fresh token is kept");

        // Another process of the home refreshed meanwhile: its session is taken, no request.
        let newer = Session {
            access_token: "a3".into(),
            refresh_token: "r3".into(),
            expires_at: now_secs() + 3600,
            expires_in: 3600,
            user_id: None,
        };
        *memory.session.lock().unwrap() = Some(newer);
        assert_eq!(keeper.replace("a2").await.unwrap(), "a3");
        assert_eq!(seen.lock().unwrap().len(), 1);

        let refused = keeper.replace("a3").await.unwrap_err();
        assert_eq!(refused.class, Class::Unauthorized);
        assert!(refused.message.contains("refresh_token_not_found"), "{}", refused.message);
        assert!(keeper.access_token().await.is_err(), "refused for good");
        assert_eq!(seen.lock().unwrap().len(), 2, "no refresh after a refusal");
        assert_eq!(told.lock().unwrap().len(), 1, "the hook is told once");
        assert_eq!(memory.saves.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn refusals_in_both_error_forms_are_final_and_outages_are_not() {
        let oauth = br#"{"error":"invalid_grant","error_description":"Invalid Refresh Token: Already Used"}"#;
        assert_eq!(
            refusal(400, oauth),
            AuthFailure::Refused(
                "HTTP 400 invalid_grant: Invalid Refresh Token: Already Used".into()
            )
        );
        let gotrue = br#"{"code":400,"error_code":"refresh_token_not_found","msg":"Invalid Refresh Token: Refresh Token Not Found"}"#;
        let refused = refusal(400, gotrue);
        assert!(
            matches!(&refused, AuthFailure::Refused(m) if m.contains("refresh_token_not_found")),
            "{refused:?}"
        );
        let expired = br#"{"code":401,"error_code":"session_expired","msg":"Session Expired"}"#;
        assert!(matches!(refusal(401, expired), AuthFailure::Refused(_)));
        assert!(matches!(refusal(503, b"upstream down"), AuthFailure::Transient(_)));
        assert!(matches!(
            refusal(429, br#"{"code":429,"error_code":"over_request_rate_limit","msg":"x"}"#),
            AuthFailure::Transient(_)
        ));
        assert!(matches!(refusal(404, b"{}"), AuthFailure::Misconfigured(_)));
        let no_key = br#"{"message":"No API key found in request"}"#;
        assert!(matches!(refusal(401, no_key), AuthFailure::Misconfigured(_)));
    }
}
