//! Renders shared between open pages: when a change reaches ten open pages, those showing the
//! same address get one render between them.
//!
//! Only a page's live refresh (`X-Ccm-Live: 1`, sent by `app.js` after an event) is served from
//! here; loading a page always renders it. A render is kept under its address and the hub's
//! version ([`Hub::version`](super::live::Hub::version)) at the time the request came in: a page
//! rendered then looks the same until the next notice, which moves the version on. The session's
//! CSRF token is swapped for a placeholder in the kept copy and back in each answer, so pages of
//! different sessions share renders too.
//!
//! Each live answer carries an `ETag` (a hash of the kept render and of the session's token); a
//! refresh that sends it back (`If-None-Match`) for a page that did not change gets `304` with
//! no body, and the page skips its parse and morph.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
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
    pages: HashMap<String, Kept1>,
}

/// One kept render and its hash.
type Kept1 = (Arc<str>, u64);

fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// The `ETag` of a render (by its hash) for the session whose token is `csrf`.
fn etag(hash: u64, csrf: &str) -> String {
    format!("\"{hash:016x}-{:08x}\"", hash_of(csrf) as u32)
}

impl Renders {
    fn get(&self, version: Version, address: &str) -> Option<Kept1> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        (kept.version == Some(version)).then(|| kept.pages.get(address).cloned()).flatten()
    }

    fn put(&self, version: Version, address: String, page: Kept1) {
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
    let known = request.headers().get(header::IF_NONE_MATCH).cloned();
    let tag = |hash: u64| etag(hash, &session.csrf);
    let unchanged =
        |tag: &str| known.as_ref().is_some_and(|known| known.as_bytes() == tag.as_bytes());
    if let Some((page, hash)) = dashboard.renders.get(version, &address) {
        let tag = tag(hash);
        if unchanged(&tag) {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
        }
        let page = page.replace(PLACEHOLDER, &session.csrf);
        return (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()), (header::ETAG, tag)],
            page,
        )
            .into_response();
    }
    let response = next.run(request).await;
    if response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, LARGEST).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let kept: Arc<str> = text.replace(&session.csrf, PLACEHOLDER).into();
    let hash = hash_of(&kept);
    dashboard.renders.put(version, address, (kept, hash));
    let tag = tag(hash);
    if unchanged(&tag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    if let Ok(value) = tag.parse() {
        parts.headers.insert(header::ETAG, value);
    }
    Response::from_parts(parts, Body::from(bytes))
}
