//! The spool: hook events `ccm hook` could not store because the database was busy, one
//! durable file each under `~/.ccm-global/spool/`, ingested by the daemon later.

use std::path::{Path, PathBuf};

use ccm_schema::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::event::HookEvent;
use crate::store::{Origin, Receipt, RetryPolicy, Store, Via};

/// One spooled event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The event's idempotency key.
    pub key: String,
    pub origin: Origin,
    pub received_at: Timestamp,
    /// The event as `ccm hook` parsed it.
    pub event: HookEvent,
}

pub fn dir(home: &Path) -> PathBuf {
    home.join("spool")
}

/// Writes the entry durably: a temporary file, fsync, then rename into place. A temporary file
/// that could not be written whole (a full disk) is removed.
pub fn write(home: &Path, entry: &Entry) -> std::io::Result<PathBuf> {
    let dir = dir(home);
    crate::home::private_dir(&dir)?;
    let path = dir.join(format!("{}.json", entry.key));
    crate::fs::write_atomic(&path, &serde_json::to_vec(entry)?, crate::fs::Mode::Private)?;
    Ok(path)
}

/// Why the spool could not be drained; what was not ingested stays for the next time.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot read the hook spool: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Stores every spooled event (once, by its key) and removes its file. Returns how many were
/// ingested. A file that cannot be read as an entry is renamed `*.bad` and logged.
pub async fn ingest(home: &Path, store: &Store, policy: RetryPolicy) -> Result<usize, SpoolError> {
    // Listed in place: the spool is polled twice a second and is almost always missing or
    // empty, one system call; tokio's `read_dir` would hand each poll to a blocking thread and
    // keep that thread alive for as long as the daemon runs.
    let Ok(entries) = std::fs::read_dir(dir(home)) else { return Ok(0) };
    let mut ingested = 0;
    for file in entries {
        let path = file?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let entry = match tokio::fs::read(&path)
            .await
            .map(|bytes| serde_json::from_slice::<Entry>(&bytes))
        {
            Ok(Ok(entry)) => entry,
            Ok(Err(e)) => {
                warn!(file = %path.display(), error = %e, "spool file is not an event; set aside as .bad");
                tokio::fs::rename(&path, path.with_extension("bad")).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let receipt = Receipt {
            key: &entry.key,
            origin: &entry.origin,
            via: Via::Spool,
            received_at: entry.received_at,
        };
        store.ingest_hook(&entry.event, &receipt, policy).await?;
        tokio::fs::remove_file(&path).await?;
        ingested += 1;
    }
    Ok(ingested)
}
