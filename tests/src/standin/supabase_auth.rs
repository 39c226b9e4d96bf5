//! A stand-in of Supabase Auth (GoTrue) for the endpoints a node calls, answering in GoTrue's
//! documented JSON: `POST /auth/v1/token?grant_type=password|refresh_token`, `POST
//! /auth/v1/signup` (anonymous when no email is given), `GET /auth/v1/user`.
//!
//! Sessions follow GoTrue's `internal/api/token_refresh.go`: each refresh spends the refresh
//! token and issues a child (rotation); a spent token that is the parent of the session's
//! active one is answered with the active one (a client that lost the answer); another spent
//! token is refused `refresh_token_already_used` after the reuse interval, and the whole
//! session is revoked with it. Access tokens are HS256 JWTs signed with
//! [`crate::central::JWT_SECRET`], the secret postrust verifies, and expire after
//! [`SupabaseAuth::set_expires_in`] seconds (short in the tests, so they see refreshes).
//! Errors come in both of GoTrue's forms: the OAuth one for a refused password, the `error_code`
//! one for refresh tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{Request, Server};

/// GoTrue's default `GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL`.
const REUSE_INTERVAL: Duration = Duration::from_secs(10);

/// A running stand-in; stops when dropped.
pub struct SupabaseAuth {
    server: Server,
    state: Arc<Shared>,
}

struct Shared {
    apikey: String,
    issuer: Mutex<String>,
    expires_in: AtomicI64,
    /// After rotating, a refresh answer waits this long (a client killed meanwhile loses it).
    hold_refresh: Mutex<Option<Duration>>,
    /// Refresh answers waiting now.
    held: AtomicU64,
    db: Mutex<Db>,
    requests: Mutex<Vec<Request>>,
}

#[derive(Default)]
struct Db {
    users: Vec<User>,
    tokens: HashMap<String, Token>,
    /// Session id → its active refresh token.
    sessions: HashMap<String, String>,
    next: u64,
}

#[derive(Clone)]
struct User {
    id: String,
    email: Option<String>,
    password: Option<String>,
    app_metadata: Value,
}

struct Token {
    session: String,
    user: String,
    revoked: bool,
    parent: Option<String>,
    updated_at: Instant,
    /// When the access token issued with this refresh token was signed.
    issued_at: Instant,
}

/// A refresh, as the stand-in answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refresh {
    /// The refresh token sent.
    pub sent: String,
    /// The HTTP status of the answer.
    pub status: u16,
    /// How old the access token issued with the sent refresh token was, in milliseconds
    /// (`None`: the token was unknown).
    pub age_ms: Option<u64>,
}

impl SupabaseAuth {
    /// Serves on a free loopback port; `apikey` is the key every request must carry.
    pub fn start(apikey: &str) -> SupabaseAuth {
        let state = Arc::new(Shared {
            apikey: apikey.to_string(),
            issuer: Mutex::new(String::new()),
            expires_in: AtomicI64::new(3600),
            hold_refresh: Mutex::new(None),
            held: AtomicU64::new(0),
            db: Mutex::default(),
            requests: Mutex::default(),
        });
        let router = Router::new()
            .route("/auth/v1/token", post(token))
            .route("/auth/v1/signup", post(signup))
            .route("/auth/v1/user", get(user))
            .with_state(Arc::clone(&state));
        let server = Server::start(router);
        *state.issuer.lock().expect("lock") = format!("{}/auth/v1", server.url());
        SupabaseAuth { server, state }
    }

    /// The auth URL a node is configured with (`sync.auth_url`).
    pub fn url(&self) -> String {
        format!("{}/auth/v1", self.server.url())
    }

    /// The key every request must carry as `apikey` (the project's publishable key).
    pub fn apikey(&self) -> String {
        self.state.apikey.clone()
    }

    /// Access tokens issued from now on expire after `seconds`.
    pub fn set_expires_in(&self, seconds: i64) {
        self.state.expires_in.store(seconds, Ordering::Relaxed);
    }

    /// Refresh answers wait `hold` after the rotation was committed (`None`: answer at once).
    pub fn hold_refreshes(&self, hold: Option<Duration>) {
        *self.state.hold_refresh.lock().expect("lock") = hold;
    }

    /// Refresh answers waiting now.
    pub fn held(&self) -> u64 {
        self.state.held.load(Ordering::Relaxed)
    }

    /// A password user (the operator's "Add user" with auto-confirm) with `app_metadata`
    /// (what only the secret key or SQL can write); its id.
    pub fn add_user(&self, email: &str, password: &str, app_metadata: Value) -> String {
        let mut db = self.state.db.lock().expect("lock");
        let id = format!("00000000-0000-4000-a000-{:012}", db.users.len() + 1);
        db.users.push(User {
            id: id.clone(),
            email: Some(email.to_string()),
            password: Some(password.to_string()),
            app_metadata,
        });
        id
    }

    /// Signs every session of `user_id` out (GoTrue's `logout?scope=global`, or deleting the
    /// user's sessions): their refresh tokens are then not found.
    pub fn revoke_sessions(&self, user_id: &str) {
        let mut db = self.state.db.lock().expect("lock");
        let sessions: Vec<String> =
            db.tokens.values().filter(|t| t.user == user_id).map(|t| t.session.clone()).collect();
        db.tokens.retain(|_, t| t.user != user_id);
        for session in sessions {
            db.sessions.remove(&session);
        }
    }

    /// The refresh token a session of `user_id` would be refreshed with now (its active one).
    pub fn active_refresh_tokens(&self, user_id: &str) -> Vec<String> {
        let db = self.state.db.lock().expect("lock");
        db.sessions
            .values()
            .filter(|t| db.tokens.get(*t).is_some_and(|t| t.user == user_id))
            .cloned()
            .collect()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The refresh requests and the status each got.
    pub fn refreshes(&self) -> Vec<Refresh> {
        self.requests()
            .iter()
            .filter(|r| r.path.contains("grant_type=refresh_token"))
            .map(|r| Refresh {
                sent: r.body["refresh_token"].as_str().unwrap_or_default().to_string(),
                status: r.body["_status"].as_u64().unwrap_or(0) as u16,
                age_ms: r.body["_age_ms"].as_u64(),
            })
            .collect()
    }
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// An error answer: its status and JSON body.
struct Refusal(StatusCode, Value);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

/// GoTrue's OAuth error form.
fn oauth_error(description: &str) -> Refusal {
    let body = json!({ "error": "invalid_grant", "error_description": description });
    Refusal(StatusCode::BAD_REQUEST, body)
}

/// GoTrue's `error_code` form.
fn coded_error(status: StatusCode, code: &str, msg: &str) -> Refusal {
    let body = json!({ "code": status.as_u16(), "error_code": code, "msg": msg });
    Refusal(status, body)
}

impl Shared {
    fn record(&self, path: String, body: Value, status: u16) {
        let mut body = body;
        if let Value::Object(map) = &mut body {
            map.insert("_status".into(), json!(status));
        }
        self.requests.lock().expect("lock").push(Request { path, body });
    }

    fn key_ok(&self, headers: &HeaderMap) -> bool {
        headers.get("apikey").and_then(|v| v.to_str().ok()) == Some(self.apikey.as_str())
    }

    /// A new refresh token in `session` for `user`, child of `parent`; made the active one.
    fn issue(db: &mut Db, session: &str, user: &str, parent: Option<String>) -> String {
        db.next += 1;
        let token = format!("rt{:06}{}", db.next, fastrand::u64(..));
        db.tokens.insert(
            token.clone(),
            Token {
                session: session.to_string(),
                user: user.to_string(),
                revoked: false,
                parent,
                updated_at: Instant::now(),
                issued_at: Instant::now(),
            },
        );
        db.sessions.insert(session.to_string(), token.clone());
        token
    }

    /// GoTrue's `AccessTokenResponse` for `user` in `session` with `refresh_token`.
    fn answer(&self, user: &User, session: &str, refresh_token: &str) -> Value {
        let expires_in = self.expires_in.load(Ordering::Relaxed);
        let now = now_s();
        let anonymous = user.email.is_none();
        let claims = json!({
            "iss": *self.issuer.lock().expect("lock"),
            "sub": user.id,
            "aud": "authenticated",
            "role": "authenticated",
            "iat": now,
            "exp": now + expires_in,
            "email": user.email.clone().unwrap_or_default(),
            "phone": "",
            "app_metadata": user.app_metadata,
            "user_metadata": {},
            "aal": "aal1",
            "amr": [{ "method": if anonymous { "anonymous" } else { "password" }, "timestamp": now }],
            "session_id": session,
            "is_anonymous": anonymous
        });
        json!({
            "access_token": crate::central::sign(&claims),
            "token_type": "bearer",
            "expires_in": expires_in,
            "expires_at": now + expires_in,
            "refresh_token": refresh_token,
            "user": user_json(user),
        })
    }
}

fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": user.email.clone().unwrap_or_default(),
        "phone": "",
        "app_metadata": user.app_metadata,
        "user_metadata": {},
        "identities": [],
        "is_anonymous": user.email.is_none(),
        "created_at": "2026-12-01T00:00:00Z",
        "updated_at": "2026-12-01T00:00:00Z"
    })
}

async fn token(
    State(state): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let grant = query.get("grant_type").cloned().unwrap_or_default();
    let path = format!("/auth/v1/token?grant_type={grant}");
    let mut body = body;
    if let Some(token) = body["refresh_token"].as_str() {
        let age = state.db.lock().expect("lock").tokens.get(token).map(|t| t.issued_at.elapsed());
        if let (Some(age), Value::Object(map)) = (age, &mut body) {
            map.insert("_age_ms".into(), json!(age.as_millis() as u64));
        }
    }
    if !state.key_ok(&headers) {
        state.record(path, body, 401);
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Invalid API key" })))
            .into_response();
    }
    let (answer, hold) = match grant.as_str() {
        "password" => (password_grant(&state, &body), None),
        "refresh_token" => {
            (refresh_grant(&state, &body), *state.hold_refresh.lock().expect("lock"))
        }
        _ => (
            Err(coded_error(
                StatusCode::BAD_REQUEST,
                "validation_failed",
                "unsupported grant_type",
            )),
            None,
        ),
    };
    let status = answer.as_ref().map_or_else(|r| r.0.as_u16(), |_| 200);
    let hold = hold.filter(|_| answer.is_ok());
    state.record(path, body, status);
    if let Some(hold) = hold {
        state.held.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(hold).await;
        state.held.fetch_sub(1, Ordering::Relaxed);
    }
    match answer {
        Ok(answer) => Json(answer).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn password_grant(state: &Shared, body: &Value) -> Result<Value, Refusal> {
    let email = body["email"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default();
    let mut db = state.db.lock().expect("lock");
    let Some(user) = db
        .users
        .iter()
        .find(|u| u.email.as_deref() == Some(email) && u.password.as_deref() == Some(password))
        .cloned()
    else {
        return Err(oauth_error("Invalid login credentials"));
    };
    db.next += 1;
    let session = format!("00000000-0000-4000-b000-{:012}", db.next);
    let refresh = Shared::issue(&mut db, &session, &user.id, None);
    Ok(state.answer(&user, &session, &refresh))
}

fn refresh_grant(state: &Shared, body: &Value) -> Result<Value, Refusal> {
    let sent = body["refresh_token"].as_str().unwrap_or_default().to_string();
    let mut db = state.db.lock().expect("lock");
    let not_found = || {
        coded_error(
            StatusCode::BAD_REQUEST,
            "refresh_token_not_found",
            "Invalid Refresh Token: Refresh Token Not Found",
        )
    };
    let Some(token) = db.tokens.get(&sent) else { return Err(not_found()) };
    let (session, user_id, revoked, updated_at) =
        (token.session.clone(), token.user.clone(), token.revoked, token.updated_at);
    let Some(user) = db.users.iter().find(|u| u.id == user_id).cloned() else {
        return Err(not_found());
    };
    let active = db.sessions.get(&session).cloned();
    let issued = if revoked {
        let parent_of_active =
            active.as_ref().and_then(|a| db.tokens.get(a)).and_then(|a| a.parent.as_ref())
                == Some(&sent);
        if parent_of_active {
            // The client lost the answer of its last refresh: the active token again.
            let active = active.clone().expect("an active token");
            if let Some(token) = db.tokens.get_mut(&active) {
                token.issued_at = Instant::now();
            }
            active
        } else if updated_at.elapsed() <= REUSE_INTERVAL {
            Shared::issue(&mut db, &session, &user_id, Some(sent.clone()))
        } else {
            db.tokens.retain(|_, t| t.session != session);
            db.sessions.remove(&session);
            return Err(coded_error(
                StatusCode::BAD_REQUEST,
                "refresh_token_already_used",
                "Invalid Refresh Token: Already Used",
            ));
        }
    } else {
        if let Some(token) = db.tokens.get_mut(&sent) {
            token.revoked = true;
            token.updated_at = Instant::now();
        }
        Shared::issue(&mut db, &session, &user_id, Some(sent.clone()))
    };
    Ok(state.answer(&user, &session, &issued))
}

/// `POST /auth/v1/signup`: without an email, an anonymous sign-in.
async fn signup(
    State(state): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let path = "/auth/v1/signup".to_string();
    if !state.key_ok(&headers) {
        state.record(path, body, 401);
        return (StatusCode::UNAUTHORIZED, Json(json!({ "message": "Invalid API key" })))
            .into_response();
    }
    if body.get("email").is_some_and(|e| !e.is_null()) {
        state.record(path, body, 422);
        return coded_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "signup_disabled",
            "Signups not allowed for this instance",
        )
        .into_response();
    }
    let answer = {
        let mut db = state.db.lock().expect("lock");
        let id = format!("00000000-0000-4000-c000-{:012}", db.users.len() + 1);
        let user = User {
            id: id.clone(),
            email: None,
            password: None,
            app_metadata: json!({ "provider": "anonymous", "providers": ["anonymous"] }),
        };
        db.users.push(user.clone());
        db.next += 1;
        let session = format!("00000000-0000-4000-b000-{:012}", db.next);
        let refresh = Shared::issue(&mut db, &session, &id, None);
        state.answer(&user, &session, &refresh)
    };
    state.record(path, body, 200);
    Json(answer).into_response()
}

/// `GET /auth/v1/user`: the user of the bearer access token.
async fn user(State(state): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let key = jsonwebtoken::DecodingKey::from_secret(crate::central::JWT_SECRET.as_bytes());
    let mut validation = jsonwebtoken::Validation::default();
    validation.set_audience(&["authenticated"]);
    let claims = match jsonwebtoken::decode::<Value>(bearer, &key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return coded_error(StatusCode::FORBIDDEN, "bad_jwt", &format!("invalid JWT: {e}"))
                .into_response()
        }
    };
    let db = state.db.lock().expect("lock");
    match db.users.iter().find(|u| claims["sub"] == u.id.as_str()) {
        Some(user) => Json(user_json(user)).into_response(),
        None => coded_error(
            StatusCode::FORBIDDEN,
            "user_not_found",
            "User from sub claim in JWT does not exist",
        )
        .into_response(),
    }
}
