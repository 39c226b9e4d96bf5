//! The global home `~/.ccm-global/` (`CCM_HOME` overrides) and the files in it.
//!
//! The home holds the API token and everything agents did, so it is private whatever the
//! umask: the directory is 0700 and every file ccm creates in it 0600 ([`private_dir`],
//! [`private_file`]). A home or port file that other users may write is refused: whoever can
//! write `daemon.json` chooses where the CLI sends the token.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What went wrong with the home or one of its files; each names the path and, where there is
/// one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("cannot find the ccm home: neither CCM_HOME nor HOME is set")]
    NotFound,
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{problem}; fix: {fix}")]
    Insecure { problem: String, fix: String },
    #[error("{} is not valid: expected {{\"token\": \"...\"}}", path.display())]
    BadAuth {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: the token must be at least {TOKEN_CHARS} printable characters without spaces (it has {length}); fix: delete the file and run `ccm up`, which writes a new random token", path.display())]
    ShortToken { path: PathBuf, length: usize },
    #[error("cannot get random bytes for the API token: {0}")]
    Random(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl HomeError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HomeError {
        let path = path.to_path_buf();
        move |source| HomeError::Io { what, path, source }
    }
}

/// Opens (creating when missing) the home's database, as the CLI and `ccm doctor` do: the
/// system's name is `node.name`, else the hostname.
pub async fn open_store(
    home: &Home,
    config: &crate::config::Config,
) -> Result<crate::store::Store, HomeError> {
    home.ensure()?;
    let name = config
        .node
        .name
        .clone()
        .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
    Ok(crate::store::Store::open(&home.db_file(), &name).await?)
}

/// Paths of the node's global files.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `CCM_HOME` if set, else `~/.ccm-global`.
    pub fn locate() -> Result<Home, HomeError> {
        let root = match std::env::var_os("CCM_HOME") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home = std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .ok_or(HomeError::NotFound)?;
                PathBuf::from(home).join(".ccm-global")
            }
        };
        Ok(Home { root })
    }

    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// Creates the home directory (0700) when missing, makes an existing one private (0700),
    /// and refuses a home or port file that other users may write ([`Home::check`]).
    pub fn ensure(&self) -> Result<(), HomeError> {
        private_dir(&self.root).map_err(HomeError::io("cannot create ccm home", &self.root))?;
        self.check()?;
        let private = || HomeError::io("cannot make private (mode 700) ccm home", &self.root);
        let mode = std::fs::metadata(&self.root).map_err(private())?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                .map_err(private())?;
        }
        Ok(())
    }

    /// Refuses a home directory or port file (`daemon.json`) that another user owns or may
    /// write, naming the fix. Missing ones are fine.
    pub fn check(&self) -> Result<(), HomeError> {
        match self.insecure() {
            Some((problem, fix)) => Err(HomeError::Insecure { problem, fix }),
            None => Ok(()),
        }
    }

    /// What makes the home unsafe to use, and its fix.
    pub fn insecure(&self) -> Option<(String, String)> {
        let root = self.root.display();
        if let Some(problem) = foreign_or_writable(&self.root) {
            return Some((
                format!("ccm home {root} {problem}: others could change its files"),
                format!("`chmod 700 {root}` as its owner"),
            ));
        }
        let port_file = self.daemon_file();
        let problem = foreign_or_writable(&port_file)?;
        Some((
            format!("{} {problem}: it could send the API token elsewhere", port_file.display()),
            format!("stop the daemon and `rm {}`", port_file.display()),
        ))
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

    /// The running daemon's Unix socket: its API, for the hooks (see [`DaemonInfo::socket`]).
    /// The loop that stalled, written by the daemon's watchdog for the next daemon.
    pub fn watchdog_file(&self) -> PathBuf {
        self.root.join("watchdog.json")
    }

    pub fn socket_file(&self) -> PathBuf {
        self.root.join("daemon.sock")
    }

    /// Held (flock) by whoever refreshes the sync session, so two processes of this home never
    /// spend one refresh token twice.
    pub fn auth_lock_file(&self) -> PathBuf {
        self.root.join("auth.lock")
    }

    /// Held (flock) by the running daemon, so two daemons never share one home.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// Reads the local API token, creating `auth.json` (mode 0600) with a fresh random token
    /// when it does not exist.
    pub fn ensure_auth(&self) -> Result<Auth, HomeError> {
        let path = self.auth_file();
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut file) => {
                let auth = Auth {
                    token: random_token()?,
                    sync: None,
                    operator: None,
                    telegram_token: None,
                    github_token: None,
                };
                file.write_all(&auth.to_json())
                    .and_then(|()| file.sync_all())
                    .map_err(HomeError::io("cannot write", &path))?;
                Ok(auth)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.read_auth(),
            Err(e) => Err(HomeError::io("cannot create", &path)(e)),
        }
    }

    /// Reads the token; refuses one shorter than a generated token (an empty or short token
    /// would make the API guessable), saying how to get a new one.
    pub fn read_auth(&self) -> Result<Auth, HomeError> {
        let path = self.auth_file();
        let text = std::fs::read_to_string(&path).map_err(HomeError::io("cannot read", &path))?;
        let auth: Auth = match serde_json::from_str(&text) {
            Ok(auth) => auth,
            Err(source) => return Err(HomeError::BadAuth { path, source }),
        };
        let length = auth.token.chars().count();
        if length < TOKEN_CHARS || !auth.token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(HomeError::ShortToken { path, length });
        }
        Ok(auth)
    }

    /// Replaces `auth.json` in one durable step, so a crash leaves the old file or the new one.
    pub fn write_auth(&self, auth: &Auth) -> Result<(), HomeError> {
        replace_private(&self.auth_file(), &auth.to_json())
    }

    /// The running daemon's port file; `None` when missing, unreadable, or writable by others
    /// (never trusted then: [`Home::check`] says why).
    pub fn read_daemon_info(&self) -> Option<DaemonInfo> {
        let path = self.daemon_file();
        if foreign_or_writable(&path).is_some() || foreign_or_writable(&self.root).is_some() {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the port file (mode 0600) atomically (temporary file, then rename).
    pub fn write_daemon_info(&self, info: &DaemonInfo) -> Result<(), HomeError> {
        let json = serde_json::to_vec_pretty(info).expect("a port file serializes");
        replace_private(&self.daemon_file(), &json)
    }
}

/// Replaces `path` with `bytes` in one durable step: a 0600 temporary file, synced, renamed over
/// it, then the directory synced.
fn replace_private(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    crate::fs::write_atomic(path, bytes, crate::fs::Mode::Private)
        .map_err(HomeError::io("cannot write", path))
}

/// Contents of `auth.json` (`Debug` shows no secret).
#[derive(Clone, Serialize, Deserialize)]
pub struct Auth {
    /// Bearer token of the local API.
    pub token: String,
    /// This system's identity at the central project, once enrolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncIdentity>,
    /// An operator's session on this node (`ccm sync operator`), kept apart from the system's:
    /// only the dashboard's fleet view reads with it (every task of the operator's systems);
    /// sync never sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<SyncIdentity>,
    /// The Telegram bot token, for notifiers of kind `telegram` whose config gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram_token: Option<String>,
    /// The GitHub token of `land.mode: pr` (else `GITHUB_TOKEN` in the daemon's environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_token: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("sync", &self.sync)
            .field("telegram_token", &self.telegram_token.as_ref().map(|_| "<redacted>"))
            .field("github_token", &self.github_token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The file's contents (serializing strings and options cannot fail).
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("auth serializes")
    }
}

/// The system's own session at the central project (never the service role key).
#[derive(Clone, Serialize, Deserialize)]
pub struct SyncIdentity {
    /// The JWT sent as `Authorization: Bearer`.
    pub access_token: String,
    /// Supabase Auth's refresh token, when the session came from a sign-in (rotated by every
    /// refresh; never logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires (Unix seconds, this machine's clock), for a session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The access token's lifetime in seconds, as Supabase Auth gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<i64>,
    /// The Supabase Auth user of this system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The id the central side gave this system at enrolment.
    pub system_id: Option<uuid::Uuid>,
}

impl std::fmt::Debug for SyncIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncIdentity")
            .field("expires_at", &self.expires_at)
            .field("user_id", &self.user_id)
            .field("system_id", &self.system_id)
            .finish_non_exhaustive()
    }
}

/// Contents of the port file `daemon.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    /// `host:port` the API listens on.
    pub addr: String,
    /// A Unix socket serving the same API, which the hooks connect to (no TCP handshake);
    /// absent when the daemon could not create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    pub started_at: ccm_schema::Timestamp,
    /// How long a tool call may wait for this daemon's answer, in seconds, when it has approval
    /// rules (a rule's timeout plus a margin); absent when it has none, and then every hook
    /// event waits the short timeout. The hooks read it here rather than from the configuration
    /// file, because the daemon holds a call by the rules it loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_wait_secs: Option<u64>,
}

/// Length of a generated token (32 random bytes in hex), and the least one `auth.json` may hold.
const TOKEN_CHARS: usize = 64;

/// Creates `dir` and its missing parents with mode 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` for appending, creating it with mode 0600 (whatever the umask) when missing.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).create(true).mode(0o600).open(path)
}

/// Makes an SQLite database and its `-wal` and `-shm` files 0600. SQLite creates the database
/// with the umask, but gives its `-wal` and `-shm` files the database's mode, so this is needed
/// once, right after the database is opened.
pub fn private_database(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::metadata(&name) {
            Ok(meta) if meta.permissions().mode() & 0o777 != 0o600 => {
                std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why `path` may not be trusted: owned by another user, or writable by group or others.
/// `None` when it is fine or does not exist.
fn foreign_or_writable(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        Some(format!("belongs to another user (uid {})", meta.uid()))
    } else if mode & 0o022 != 0 {
        Some(format!("is writable by other users (mode {mode:o})"))
    } else {
        None
    }
}

fn random_token() -> Result<String, HomeError> {
    let mut bytes = [0u8; TOKEN_CHARS / 2];
    getrandom::fill(&mut bytes).map_err(|e| HomeError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
