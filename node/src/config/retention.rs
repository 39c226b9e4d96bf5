//! The `retention:` and `backup:` sections: how long each kind of record is
//! kept, the daily backup, and when the janitor removes what ended tasks left in repositories.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How long a kind of record is kept: a duration (`14d`, `12h`, `90min`) or `never` (kept
/// forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep(pub Option<Duration>);

impl Keep {
    pub const fn days(days: u64) -> Keep {
        Keep(Some(Duration::from_secs(days * 24 * 3600)))
    }

    /// The newest time (milliseconds since the epoch) a record may have to be removed at `now`;
    /// `None` when the kind is kept forever.
    pub fn cutoff(&self, now_ms: i64) -> Option<i64> {
        self.0.map(|d| now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("never"),
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
}

impl Serialize for Keep {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Keep, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Keep;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as `14d` or `12h`, or `never`")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Keep, E> {
                let text = text.trim();
                if text == "never" {
                    return Ok(Keep(None));
                }
                match humantime::parse_duration(text) {
                    Ok(d) if d.is_zero() => Err(E::custom(format!(
                        "`{text}` is no time at all; write a duration such as `14d`, or `never`"
                    ))),
                    Ok(d) => Ok(Keep(Some(d))),
                    Err(e) => Err(E::custom(format!(
                        "`{text}` is not a duration such as `14d` or `12h`, nor `never` ({e})"
                    ))),
                }
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Keep, E> {
                Err(E::custom(format!(
                    "`{n}` has no unit; write a duration such as `{n}d` or `{n}h`, or `never`"
                )))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Keep, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How long each kind of record is kept (issue 28). Aggregates are never removed: a task, its
/// attempts, reports, cost and tokens stay whatever these say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Hook events, except those of a task that has not ended.
    pub hook_events: Keep,
    /// Agents' output logs (`agents/<id>/output.log`) once their task ended.
    pub agent_output: Keep,
    /// The rest of an ended task's agent directories (prompt, launcher, exit file).
    pub task_logs: Keep,
    /// Outbox rows and batches the central acknowledged, after this grace.
    pub outbox_acked: Keep,
    /// Notifications and their sends, once sent (or given up), except those of an open alert
    /// or a pending decision.
    pub notifications: Keep,
    /// Resolved alerts.
    pub alerts_resolved: Keep,
    /// Answered decisions.
    pub decisions_answered: Keep,
    /// How often the daemon runs a pass (`0s` is refused; `never`: no background pass).
    pub every: Keep,
    /// Rows deleted per transaction: the write lock is held for one batch at a time.
    pub batch_rows: u32,
    /// Pause between two batches, in milliseconds, so other writes go first (at least; the
    /// pass also pauses four times as long as a batch held the writer).
    pub pause_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            hook_events: Keep::days(14),
            agent_output: Keep::days(30),
            task_logs: Keep::days(90),
            outbox_acked: Keep(Some(Duration::from_secs(3600))),
            notifications: Keep::days(30),
            alerts_resolved: Keep::days(90),
            decisions_answered: Keep::days(90),
            every: Keep(Some(Duration::from_secs(3600))),
            batch_rows: 100,
            pause_ms: 5,
        }
    }
}

impl RetentionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.batch_rows == 0 || self.batch_rows > 10_000 {
            return Err(ConfigError::Invalid {
                key: "retention.batch_rows",
                message: "must be between 1 and 10000 (a batch holds the write lock)".into(),
            });
        }
        if self.every.0.is_some_and(|d| d < Duration::from_secs(1)) {
            return Err(ConfigError::Invalid {
                key: "retention.every",
                message: "must be at least 1s, or `never`".into(),
            });
        }
        Ok(())
    }
}

/// The daemon's daily backup (off until `dir` is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// Directory the copies go to (`ccm-<time>.db`); none: no scheduled backup.
    pub dir: Option<PathBuf>,
    /// Copies kept in `dir`, newest first; older ones are removed after each backup.
    pub keep: usize,
    /// Time between two backups.
    pub every: Keep,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { dir: None, keep: 7, every: Keep::days(1) }
    }
}

impl BackupConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.keep == 0 {
            return Err(ConfigError::Invalid {
                key: "backup.keep",
                message: "must be at least 1".into(),
            });
        }
        if self.dir.as_ref().is_some_and(|d| !d.is_absolute()) {
            return Err(ConfigError::Invalid {
                key: "backup.dir",
                message: "must be an absolute path".into(),
            });
        }
        if self.every.0.is_some_and(|d| d < Duration::from_secs(60)) {
            return Err(ConfigError::Invalid {
                key: "backup.every",
                message: "must be at least 1m, or `never`".into(),
            });
        }
        Ok(())
    }
}
