//! Writing a file atomically: the one helper for every file ccm replaces whole (`auth.json`,
//! the port file, dashboard sessions, spooled hook events, Telegram's shared offset, the agent
//! CLIs' settings and Gemini's state), and opening a lock file (`ccm.db.lock`, `auth.lock`).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Who may read the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0600: ccm's own files (tokens, sessions, the port file, the spool).
    Private,
    /// The permissions of the file it replaces, else the umask's: files of the user's (an agent
    /// CLI's settings).
    Keep,
}

/// Opens (creating it 0600 when missing) the lock file at `path`, to take an flock on; the
/// error names the file.
pub fn open_lock_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// Replaces `path` with `bytes` in one step a crash cannot split: a temporary file beside it
/// (named for this process and call, so concurrent writers never share one), written and
/// synced, renamed over `path`, then the directory synced. The temporary file is removed when
/// a step fails (a full disk). A symlink at `path` is replaced, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Mode) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.ccm-{}-{unique}.tmp", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if mode == Mode::Private {
            options.mode(0o600);
        }
        let mut file = options.open(&temp)?;
        if mode == Mode::Keep {
            if let Ok(meta) = std::fs::metadata(path) {
                file.set_permissions(meta.permissions())?;
            }
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_private_file_is_0600_and_replaces_the_old_one_leaving_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic(&path, b"new", Mode::Private).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode_of(&path), 0o600);
        write_atomic(&dir.path().join("fresh.json"), b"{}", Mode::Private).unwrap();
        assert_eq!(mode_of(&dir.path().join("fresh.json")), 0o600);
        assert_eq!(entries(dir.path()), ["auth.json", "fresh.json"]);
    }

    #[test]
    fn a_users_file_keeps_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"{\"hooks\": {}}", Mode::Keep).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"hooks\": {}}");
        assert_eq!(mode_of(&path), 0o640);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The rename cannot replace a directory: the last step fails.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), "kept").unwrap();
        assert!(write_atomic(&path, b"new", Mode::Private).is_err());
        assert_eq!(entries(dir.path()), ["taken"]);
        assert_eq!(std::fs::read_to_string(path.join("inside")).unwrap(), "kept");
    }
}
