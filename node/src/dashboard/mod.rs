//! The web dashboard (daemon profile `full`): server-rendered pages, a little JavaScript for live
//! updates, all embedded in the binary.
//!
//! - `auth`: one-time codes, session cookies, CSRF tokens.
//! - `live`: the hub that turns committed changes into server-sent events.
//! - `pages`: the pages and their forms; `charts`: small inline SVG charts.
//! - `renders`: one render of a page shared by the open pages that refresh at the same version.
//! - `fleet`: with sync, the fleet from the central, kept current by a background refresher.
//! - `review`: the task page's diff with line comments, "request changes", "land", "discard".
//!
//! The browser side (`assets/app.js`) keeps one event stream per browser (a leader among the
//! tabs, elected with a Web Lock, passes events on over a BroadcastChannel) and morphs each
//! refresh into the DOM with the vendored idiomorph (`assets/idiomorph.min.js`, 0BSD, licence in
//! `assets/idiomorph.LICENSE`).
//!
//! | route | what |
//! |---|---|
//! | `GET /signin?code=` | spends a code from `ccm dashboard`, sets the session cookie |
//! | `GET /`, `/tasks`, `/tasks/new`, `/tasks/{id}`, `/decisions`, `/agents`, `/alerts`, `/systems` | pages |
//! | `GET /routed/{id}` | a task routed from here, as the central last said (state, system, attempts, report, cost) |
//! | `POST /tasks`, `/tasks/{id}/events`, `/tasks/{id}/review`, `/decisions/{id}`, `/alerts/{id}/ack`, `/signout` | forms |
//! | `GET /events` | server-sent events (`hello`, `change`, `activity`) |
//! | `GET /assets/{app.css,app.js,idiomorph.js,icon.svg}` | embedded assets |
//! | `POST /api/dashboard/codes`, `POST /api/dashboard/revoke` | for the CLI, with the API token |
//!
//! Pages and the event stream answer 401 without a live session; every form needs the
//! session's CSRF token and an `Origin` header (which the daemon's `Origin` check has already
//! matched against its own origins). Responses forbid framing and inline scripts.

mod auth;
mod charts;
mod fleet;
mod live;
mod pages;
mod renders;
mod review;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use tracing::Instrument as _;

pub use auth::revoke_offline;
use auth::{Auth, Session};
use live::Hub;

use crate::daemon::{security, AppState};

/// The file that keeps the dashboard's sessions across restarts of the daemon.
pub const SESSIONS_FILE: &str = "dashboard-sessions.json";

/// What the dashboard keeps besides the daemon's state.
pub struct Dashboard {
    auth: Auth,
    hub: Arc<Hub>,
    renders: renders::Renders,
    /// The fleet from the central, with sync configured.
    fleet: Option<Arc<fleet::FleetView>>,
}

/// The dashboard's routes; merged into the daemon's router under profile `full`.
pub fn router(state: &AppState) -> Router<AppState> {
    let port = state.daemon.addr.rsplit(':').next().unwrap_or_default();
    let hub = Hub::start(state.store.clone(), state.shutdown.clone());
    let fleet = state.sync.clone().map(|client| {
        let view = Arc::new(fleet::FleetView::default());
        let refresher = fleet::Refresher {
            view: view.clone(),
            client,
            home: crate::home::Home::at(state.home.clone()),
            store: state.store.clone(),
            hub: hub.clone(),
            shutdown: state.shutdown.clone(),
        };
        tokio::spawn(refresher.run().instrument(tracing::info_span!("dashboard_fleet")));
        view
    });
    let dashboard = Arc::new(Dashboard {
        auth: Auth::load(
            state.home.join(SESSIONS_FILE),
            Duration::from_secs(state.config.current().daemon.dashboard_session_secs),
            port,
        ),
        hub,
        renders: renders::Renders::default(),
        fleet,
    });
    let cli = Router::new()
        .route("/api/dashboard/codes", post(new_code))
        .route("/api/dashboard/revoke", post(revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), security::require_token));
    Router::new()
        .route("/", get(pages::overview))
        .route("/tasks", get(pages::board).post(pages::create_task))
        .route("/tasks/new", get(pages::new_task))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/events", post(pages::task_event))
        .route("/tasks/{id}/review", post(review::act))
        .route("/decisions", get(pages::decisions))
        .route("/decisions/{id}", post(pages::answer_decision))
        .route("/agents", get(pages::agents))
        .route("/alerts", get(pages::alerts))
        .route("/alerts/{id}/ack", post(pages::acknowledge_alert))
        .route("/systems", get(pages::systems))
        .route("/routed/{id}", get(pages::routed))
        .route("/supervisors", get(pages::supervisors))
        .route("/events", get(events))
        .route("/signin", get(sign_in))
        .route("/signout", post(sign_out))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .route("/assets/idiomorph.js", get(idiomorph))
        .route("/assets/icon.svg", get(icon))
        .layer(middleware::from_fn(renders::shared))
        .layer(middleware::map_response(secure_headers))
        .merge(cli)
        .layer(Extension(dashboard))
}

/// A request from a signed-in browser.
pub struct SignedIn {
    session: Session,
    dashboard: Arc<Dashboard>,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Response> {
        let dashboard = parts
            .extensions
            .get::<Arc<Dashboard>>()
            .cloned()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        match dashboard.auth.session(&parts.headers) {
            Some(session) => Ok(SignedIn { session, dashboard }),
            None => Err(pages::message(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "Run `ccm dashboard` on this machine to open a signed-in page.",
            )),
        }
    }
}

impl SignedIn {
    /// Refuses a form without this session's CSRF token or without an `Origin` header.
    // The refusal is the page to answer with, built once here; its size does not matter on this path.
    #[allow(clippy::result_large_err)]
    pub fn check_form(&self, headers: &HeaderMap, csrf: &str) -> Result<(), Response> {
        if !headers.contains_key(header::ORIGIN) {
            return Err(pages::message(
                StatusCode::FORBIDDEN,
                "Refused",
                "the form was sent without an Origin header",
            ));
        }
        if !auth::same(csrf, &self.session.csrf) {
            return Err(pages::message(
                StatusCode::FORBIDDEN,
                "Refused",
                "the form's CSRF token is missing or stale: reload the page and try again",
            ));
        }
        Ok(())
    }
}

async fn new_code(
    Extension(dashboard): Extension<Arc<Dashboard>>,
    State(state): State<AppState>,
) -> Response {
    match dashboard.auth.new_code() {
        Ok(code) => Json(json!({
            "code": code,
            "url": format!("http://{}/signin?code={code}", state.daemon.addr),
            "expires_in_secs": auth::CODE_TTL.as_secs(),
        }))
        .into_response(),
        Err(e) => crate::daemon::ApiError::Internal(e.to_string()).into_response(),
    }
}

async fn revoke(Extension(dashboard): Extension<Arc<Dashboard>>) -> Response {
    match dashboard.auth.revoke_all() {
        Ok(ended) => Json(json!({ "revoked": ended })).into_response(),
        Err(e) => crate::daemon::ApiError::Internal(e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct SignInQuery {
    #[serde(default)]
    code: String,
}

/// Spends the code and answers with the cookie and a page that moves on to `/` (a same-site
/// navigation, so the `SameSite=Strict` cookie goes with it even when the link came from
/// another site).
async fn sign_in(
    Extension(dashboard): Extension<Arc<Dashboard>>,
    axum::extract::Query(query): axum::extract::Query<SignInQuery>,
) -> Response {
    match dashboard.auth.sign_in(&query.code) {
        Ok(Some(session)) => {
            let mut response = pages::redirect_page("/");
            if let Ok(cookie) = HeaderValue::from_str(&dashboard.auth.cookie_for(&session)) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Ok(None) => pages::message(
            StatusCode::UNAUTHORIZED,
            "Sign-in link not valid",
            "This sign-in link was used already or has expired. Run `ccm dashboard` for a new one.",
        ),
        Err(e) => {
            pages::message(StatusCode::INTERNAL_SERVER_ERROR, "Cannot sign in", &e.to_string())
        }
    }
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    signed_in: SignedIn,
    headers: HeaderMap,
    axum::Form(form): axum::Form<CsrfForm>,
) -> Response {
    if let Err(refused) = signed_in.check_form(&headers, &form.csrf) {
        return refused;
    }
    let _ = signed_in.dashboard.auth.revoke_all();
    pages::message(StatusCode::OK, "Signed out", "Run `ccm dashboard` to sign in again.")
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    last: Option<i64>,
}

async fn events(
    signed_in: SignedIn,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<EventsQuery>,
) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(query.last);
    signed_in.dashboard.hub.stream(last).into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

async fn idiomorph() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/idiomorph.min.js"))
}

async fn icon() -> Response {
    asset("image/svg+xml", include_str!("assets/icon.svg"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// No framing, no inline script, no referrer to other sites (`no-referrer` would make Chrome send
/// `Origin: null` with forms), no sniffing; pages are not cached.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}
