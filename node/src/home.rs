//! The global home `~/.ccm-global/` (`CCM_HOME` overrides) and the files in it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Paths of the node's global files.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `CCM_HOME` if set, else `~/.ccm-global`.
    pub fn locate() -> anyhow::Result<Home> {
        let root = match std::env::var_os("CCM_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .context("cannot find the ccm home: neither CCM_HOME nor HOME is set")?;
                PathBuf::from(home).join(".ccm-global")
            }
        };
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// Creates the home directory when missing.
    pub fn ensure(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create ccm home {}", self.root.display()))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    pub fn db_file(&self) -> PathBuf {
        self.root.join("ccm.db")
    }

    pub fn auth_file(&self) -> PathBuf {
        self.root.join("auth.json")
    }

    /// The port file: where the running daemon listens, and its pid.
    pub fn daemon_file(&self) -> PathBuf {
        self.root.join("daemon.json")
    }

    /// Held (flock) by the running daemon, so two daemons never share one home.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// Reads the local API token, creating `auth.json` (mode 0600) with a fresh random token
    /// when it does not exist.
    pub fn ensure_auth(&self) -> anyhow::Result<Auth> {
        let path = self.auth_file();
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut file) => {
                let auth = Auth { token: random_token()?, sync: None };
                let json = serde_json::to_string_pretty(&auth)?;
                file.write_all(json.as_bytes())
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(auth)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.read_auth(),
            Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }

    pub fn read_auth(&self) -> anyhow::Result<Auth> {
        let path = self.auth_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!("{} is not valid: expected {{\"token\": \"...\"}}", path.display())
        })
    }

    /// Replaces `auth.json` in one durable step (a 0600 temporary file, synced, renamed), so a
    /// crash leaves the old file or the new one, never a torn one.
    pub fn write_auth(&self, auth: &Auth) -> anyhow::Result<()> {
        let path = self.auth_file();
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(serde_json::to_string_pretty(auth)?.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        if let Some(dir) = path.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    pub fn read_daemon_info(&self) -> Option<DaemonInfo> {
        let text = std::fs::read_to_string(self.daemon_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the port file atomically (temporary file, then rename).
    pub fn write_daemon_info(&self, info: &DaemonInfo) -> anyhow::Result<()> {
        let path = self.daemon_file();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Contents of `auth.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Auth {
    /// Bearer token of the local API.
    pub token: String,
    /// This system's identity at the central project, once enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncIdentity>,
}

/// The system's own session at the central project (never the service role key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncIdentity {
    /// The JWT sent as `Authorization: Bearer`.
    pub access_token: String,
    /// Supabase Auth's refresh token, when the session came from a sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The id the central side gave this system at enrolment.
    pub system_id: Option<uuid::Uuid>,
}

/// Contents of the port file `daemon.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    /// `host:port` the API listens on.
    pub addr: String,
    pub started_at: ccm_schema::Timestamp,
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes for the API token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
