//! The `notify:` section of the configuration: notifiers, routing rules, digests and the
//! node's own health checks.

use std::collections::BTreeMap;

use ccm_schema::Severity;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Where alerts and decisions are pushed, and which go where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Notifiers by name.
    pub notifiers: BTreeMap<String, Notifier>,
    /// Which items go to which notifier. Without rules every notifier gets decisions and
    /// alerts of severity `warning` and above.
    pub routes: Vec<Route>,
    /// Repeats of one alert (same reason and message) within this many seconds go to the
    /// digest instead of alone.
    pub dedupe_secs: u64,
    /// Items that wait for the digest go out together once the oldest waited this long.
    pub digest_secs: u64,
    /// Send every notifier a summary (tasks per state, today's cost, open alerts) this often,
    /// in seconds (86400: daily); off when unset.
    pub summary_secs: Option<u64>,
    /// Once a day at this local time (`{at: "18:00"}`), every notifier gets the day's summary:
    /// completed, failed, waiting for a decision, cost; off when unset.
    pub daily_summary: Option<super::daily::DailySummary>,
    /// The node's own health checks.
    pub health: HealthConfig,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            notifiers: BTreeMap::new(),
            routes: Vec::new(),
            dedupe_secs: 600,
            digest_secs: 3600,
            summary_secs: None,
            daily_summary: None,
            health: HealthConfig::default(),
        }
    }
}

/// One notifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notifier {
    /// A Telegram bot: pushes, and receives button presses by long polling.
    Telegram {
        /// The bot token; else `telegram_token` in `auth.json`.
        #[serde(default)]
        token: Option<String>,
        /// The chats to send to; only presses from these are obeyed.
        chat_ids: Vec<i64>,
        /// Bot API base URL.
        #[serde(default = "telegram_api")]
        api_url: String,
        /// `getUpdates` long-polling timeout, in seconds.
        #[serde(default = "poll_secs")]
        poll_secs: u64,
        /// Where pollers of one token on this machine take turns (a lock file per token);
        /// the temporary directory when unset.
        #[serde(default)]
        lease_dir: Option<std::path::PathBuf>,
        /// A link shown under decisions that cannot be answered with a button.
        #[serde(default)]
        dashboard_url: Option<String>,
    },
    /// An ntfy topic (`https://ntfy.sh/<topic>` or a self-hosted server).
    Ntfy {
        url: String,
        /// `Authorization: Bearer` token of a protected topic.
        #[serde(default)]
        token: Option<String>,
        /// Priority 1..5 for every message; else from the severity.
        #[serde(default)]
        priority: Option<u8>,
        /// Click-through URL.
        #[serde(default)]
        click: Option<String>,
    },
    /// A Slack incoming webhook.
    Slack { url: String },
    /// Any URL: a JSON body signed with HMAC-SHA256 (`X-Ccm-Signature: sha256=<hex>`).
    Webhook {
        url: String,
        /// The HMAC key; unsigned without one.
        #[serde(default)]
        secret: Option<String>,
    },
}

impl Notifier {
    /// `telegram`, `ntfy`, `slack` or `webhook`: its `kind` in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Notifier::Telegram { .. } => "telegram",
            Notifier::Ntfy { .. } => "ntfy",
            Notifier::Slack { .. } => "slack",
            Notifier::Webhook { .. } => "webhook",
        }
    }
}

fn telegram_api() -> String {
    "https://api.telegram.org".into()
}

fn poll_secs() -> u64 {
    25
}

/// A routing rule: items it matches go to `notifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub notifier: String,
    /// Alert reasons (`attempts_exhausted`, `disk_low`, ...) and `decision`; all when empty.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Lowest alert severity that matches.
    #[serde(default = "warning")]
    pub min_severity: Severity,
    /// Send alone at once (else only decisions and critical alerts do; the rest waits for
    /// the digest).
    #[serde(default)]
    pub immediate: bool,
}

fn warning() -> Severity {
    Severity::Warning
}

/// The node's own health checks (each raises an alert with a suggested command).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// How often the checks run, in seconds.
    pub check_secs: u64,
    /// Least free space on the filesystems of the home and the worktrees, in MiB.
    pub disk_min_free_mb: u64,
    /// Least free space, in percent of the filesystem.
    pub disk_min_free_percent: u8,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { check_secs: 60, disk_min_free_mb: 1024, disk_min_free_percent: 5 }
    }
}

impl NotifyConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.digest_secs == 0 {
            return invalid("notify.digest_secs", "must be at least 1".into());
        }
        if self.summary_secs == Some(0) {
            return invalid(
                "notify.summary_secs",
                "must be at least 1 (or unset: no summary)".into(),
            );
        }
        if let Some(daily) = &self.daily_summary {
            daily.minute().map_err(|message| ConfigError::Invalid {
                key: "notify.daily_summary.at",
                message,
            })?;
        }
        if self.health.check_secs == 0 {
            return invalid("notify.health.check_secs", "must be at least 1".into());
        }
        if self.health.disk_min_free_percent > 100 {
            return invalid("notify.health.disk_min_free_percent", "must be at most 100".into());
        }
        for (name, notifier) in &self.notifiers {
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return invalid(
                    "notify.notifiers",
                    format!("`{name}`: a name is letters, digits, `-` and `_`"),
                );
            }
            let url = match notifier {
                Notifier::Telegram { chat_ids, api_url, poll_secs, .. } => {
                    if chat_ids.is_empty() {
                        return invalid(
                            "notify.notifiers",
                            format!("`{name}`: chat_ids must name at least one chat"),
                        );
                    }
                    if *poll_secs == 0 || *poll_secs > 50 {
                        return invalid(
                            "notify.notifiers",
                            format!("`{name}`: poll_secs must be 1 to 50"),
                        );
                    }
                    api_url
                }
                Notifier::Ntfy { url, priority, .. } => {
                    if priority.is_some_and(|p| !(1..=5).contains(&p)) {
                        return invalid(
                            "notify.notifiers",
                            format!("`{name}`: priority must be 1 (min) to 5 (urgent)"),
                        );
                    }
                    url
                }
                Notifier::Slack { url } | Notifier::Webhook { url, .. } => url,
            };
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return invalid(
                        "notify.notifiers",
                        format!("`{name}`: `{url}` is not an http(s) URL"),
                    )
                }
            }
        }
        for route in &self.routes {
            if !self.notifiers.contains_key(&route.notifier) {
                return invalid(
                    "notify.routes",
                    format!("names unknown notifier `{}`", route.notifier),
                );
            }
        }
        Ok(())
    }

    /// Where an item goes: `(notifier, immediate)` for each notifier whose rules match.
    /// `kind` is the alert's reason, or `decision`.
    pub fn route(&self, kind: &str, severity: Severity) -> Vec<(String, bool)> {
        let urgent = kind == "decision" || severity == Severity::Critical;
        let matches = |route: &Route| {
            (route.kinds.is_empty() || route.kinds.iter().any(|k| k == kind))
                && (kind == "decision" || severity >= route.min_severity)
        };
        let mut out: Vec<(String, bool)> = Vec::new();
        if self.routes.is_empty() {
            if kind == "decision" || severity >= Severity::Warning {
                out = self.notifiers.keys().map(|name| (name.clone(), urgent)).collect();
            }
        } else {
            for route in self.routes.iter().filter(|r| matches(r)) {
                let immediate = urgent || route.immediate;
                match out.iter_mut().find(|(name, _)| *name == route.notifier) {
                    Some(found) => found.1 |= immediate,
                    None => out.push((route.notifier.clone(), immediate)),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Slack notifiers, `a` and `b`, without routes.
    fn config() -> NotifyConfig {
        let mut config = NotifyConfig::default();
        for (name, url) in [("a", "http://x"), ("b", "http://y")] {
            config.notifiers.insert(name.into(), Notifier::Slack { url: url.into() });
        }
        config
    }

    #[test]
    fn without_routes_every_notifier_gets_decisions_and_warnings_critical_ones_at_once() {
        let config = config();
        let at_once = |kind, severity| config.route(kind, severity);
        assert_eq!(at_once("decision", Severity::Info), [("a".into(), true), ("b".into(), true)]);
        assert_eq!(at_once("disk_low", Severity::Critical)[0], ("a".into(), true));
        assert_eq!(at_once("stalled", Severity::Warning)[0], ("a".into(), false));
        assert!(at_once("kept_branch", Severity::Info).is_empty());
    }

    #[test]
    fn routes_pick_notifiers_by_kind_and_severity() {
        let mut config = config();
        config.routes = vec![
            Route {
                notifier: "a".into(),
                kinds: vec!["write_denied".into()],
                min_severity: Severity::Warning,
                immediate: true,
            },
            Route {
                notifier: "b".into(),
                kinds: vec![],
                min_severity: Severity::Critical,
                immediate: false,
            },
        ];
        assert_eq!(config.route("write_denied", Severity::Warning), [("a".to_string(), true)]);
        assert_eq!(config.route("disk_low", Severity::Critical), [("b".to_string(), true)]);
        assert!(config.route("stalled", Severity::Warning).is_empty());
        // A decision is no alert: `b`'s least severity does not keep it out, `a`'s kinds do.
        assert_eq!(config.route("decision", Severity::Warning), [("b".to_string(), true)]);
    }
}
