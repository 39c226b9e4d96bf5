//! Sign-in to the dashboard without showing the API token to web pages.
//!
//! `ccm dashboard` asks the daemon (with the token) for a one-time code; the browser opens
//! `/signin?code=...`, the daemon spends the code and answers with an `HttpOnly`,
//! `SameSite=Strict` session cookie. Sessions expire after `daemon.dashboard_session_secs`, are
//! kept in `dashboard-sessions.json` (mode 0600) so that a restart of the daemon keeps them,
//! and `ccm dashboard --revoke` ends them all. Each session has a CSRF token that every form
//! sends back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use ccm_schema::Timestamp;
use serde::{Deserialize, Serialize};

/// How long a one-time code may wait to be used.
pub const CODE_TTL: Duration = Duration::from_secs(120);

/// A signed-in browser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    /// Sent back by every form.
    pub csrf: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot write {path}: {message}")]
    Persist { path: PathBuf, message: String },
    #[error("cannot draw random bytes: {0}")]
    Random(String),
}

/// Codes waiting to be spent and live sessions.
pub struct Auth {
    file: PathBuf,
    ttl: Duration,
    /// The cookie's name: one per port, since browsers keep cookies per host, not per port.
    pub cookie: String,
    codes: Mutex<HashMap<String, Timestamp>>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn random_hex(bytes: usize) -> Result<String, AuthError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn later(by: Duration) -> Timestamp {
    Timestamp(Timestamp::now().0 + i64::try_from(by.as_millis()).unwrap_or(i64::MAX))
}

impl Auth {
    /// Loads the sessions kept in `file` (none when it is missing or unreadable).
    pub fn load(file: PathBuf, ttl: Duration, port: &str) -> Auth {
        let now = Timestamp::now();
        let sessions: Vec<Session> = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let sessions = sessions
            .into_iter()
            .filter(|s| s.expires_at > now)
            .map(|s| (s.id.clone(), s))
            .collect();
        Auth {
            file,
            ttl,
            cookie: format!("ccm_session_{port}"),
            codes: Mutex::new(HashMap::new()),
            sessions: Mutex::new(sessions),
        }
    }

    /// A fresh one-time code, valid for [`CODE_TTL`].
    pub fn new_code(&self) -> Result<String, AuthError> {
        let code = random_hex(16)?;
        let now = Timestamp::now();
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, expires| *expires > now);
        codes.insert(code.clone(), later(CODE_TTL));
        Ok(code)
    }

    /// Spends `code` (once) for a new session; `None` when the code is unknown, used or expired.
    pub fn sign_in(&self, code: &str) -> Result<Option<Session>, AuthError> {
        let spent = self.codes.lock().unwrap_or_else(|e| e.into_inner()).remove(code);
        if spent.is_none_or(|expires| expires <= Timestamp::now()) {
            return Ok(None);
        }
        let session =
            Session { id: random_hex(32)?, csrf: random_hex(32)?, expires_at: later(self.ttl) };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // Expired sessions go here (and from the file, which keeps live ones only): memory and
        // file hold at most the sessions signed in within one session lifetime.
        let now = Timestamp::now();
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(session.id.clone(), session.clone());
        self.persist(&sessions)?;
        Ok(Some(session))
    }

    /// The live session whose cookie the request carries.
    pub fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let prefix = format!("{}=", self.cookie);
        let id = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| pair.trim().strip_prefix(&prefix))?;
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(id).filter(|s| s.expires_at > Timestamp::now()).cloned()
    }

    /// Ends every session and forgets every code; returns how many sessions ended.
    pub fn revoke_all(&self) -> Result<usize, AuthError> {
        self.codes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let ended = sessions.len();
        sessions.clear();
        self.persist(&sessions)?;
        Ok(ended)
    }

    /// The `Set-Cookie` value of `session`.
    pub fn cookie_for(&self, session: &Session) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.cookie,
            session.id,
            self.ttl.as_secs()
        )
    }

    fn persist(&self, sessions: &HashMap<String, Session>) -> Result<(), AuthError> {
        let error = |e: std::io::Error| AuthError::Persist {
            path: self.file.clone(),
            message: e.to_string(),
        };
        let now = Timestamp::now();
        let live: Vec<&Session> = sessions.values().filter(|s| s.expires_at > now).collect();
        let json = serde_json::to_vec(&live)
            .map_err(|e| AuthError::Persist { path: self.file.clone(), message: e.to_string() })?;
        crate::fs::write_atomic(&self.file, &json, crate::fs::Mode::Private).map_err(error)
    }
}

/// Ends every session without a daemon: removes the file the next daemon would load them from.
pub fn revoke_offline(file: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
