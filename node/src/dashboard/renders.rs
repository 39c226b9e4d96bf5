//! Renders shared between open pages: when a change reaches ten open pages, those showing the
//! same address get one render between them.
//!
//! Only a page's live refresh (`X-Ccm-Live: 1`, sent by `app.js` after an event) is served from
//! here; loading a page always renders it. A render is kept under its address and the hub's
//! version ([`Hub::version`](super::live::Hub::version)) at the time the request came in: a page
//! rendered then looks the same until the next notice, which moves the version on. The session's
//! CSRF token is swapped for a placeholder in the kept copy and back in each answer, so pages of
//! different sessions share renders too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Dashboard;

/// What stands for the session's CSRF token in a kept render.
const PLACEHOLDER: &str = "\u{1}csrf\u{1}";
/// Renders kept at most (all of one version).
const KEEP: usize = 64;
/// The largest page kept.
const LARGEST: usize = 16 << 20;

/// The hub's version a render was made at.
type Version = (i64, u64, u64);

/// The kept renders of the current version.
#[derive(Default)]
pub struct Renders {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    version: Option<Version>,
    pages: HashMap<String, Arc<str>>,
}

impl Renders {
    fn get(&self, version: Version, address: &str) -> Option<Arc<str>> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        (kept.version == Some(version)).then(|| kept.pages.get(address).cloned()).flatten()
    }

    fn put(&self, version: Version, address: String, page: Arc<str>) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match kept.version {
            Some(current) if current > version => return,
            Some(current) if current == version => {}
            _ => *kept = Kept { version: Some(version), pages: HashMap::new() },
        }
        if kept.pages.len() < KEEP {
            kept.pages.insert(address, page);
        }
    }
}

/// Middleware: answers a live refresh from a kept render of the same version, or renders and
/// keeps it.
pub async fn shared(request: Request, next: Next) -> Response {
    let live = request.method() == Method::GET && request.headers().contains_key("x-ccm-live");
    let dashboard = request.extensions().get::<Arc<Dashboard>>().cloned();
    let (Some(dashboard), true) = (dashboard, live) else {
        return next.run(request).await;
    };
    let Some(session) = dashboard.auth.session(request.headers()) else {
        return next.run(request).await;
    };
    let address = request.uri().to_string();
    let version = dashboard.hub.version();
    if let Some(page) = dashboard.renders.get(version, &address) {
        return html(page.replace(PLACEHOLDER, &session.csrf));
    }
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, LARGEST).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    if let Ok(text) = std::str::from_utf8(&bytes) {
        dashboard.renders.put(version, address, text.replace(&session.csrf, PLACEHOLDER).into());
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn html(page: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}
