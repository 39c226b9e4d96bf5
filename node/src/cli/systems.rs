//! `ccm systems [drain NAME]`, and the fleet's names for `ccm task add|pin`: asked of the
//! central directly (no daemon needed).

use std::time::Duration;

use anyhow::Context as _;
use ccm_schema::Timestamp;
use clap::Subcommand;
use serde_json::{json, Value};

use super::output::print;
use crate::config::Config;
use crate::home::Home;

#[derive(Debug, Subcommand)]
pub enum SystemsCommand {
    /// Finish running work on a system and take no new work there (`--off` to undo).
    Drain {
        /// The system's name or id.
        name: String,
        #[arg(long)]
        off: bool,
    },
}

/// `ccm systems`: asks the central directly (no daemon needed).
pub async fn systems(
    home: &Home,
    config: &Config,
    command: Option<SystemsCommand>,
    json: bool,
) -> anyhow::Result<()> {
    let endpoint = config.sync.endpoint()?.context(
        "sync is not configured: set sync.url (or sync.rest_url) and sync.publishable_key",
    )?;
    let credential = crate::sync::credential(home, &endpoint, None);
    anyhow::ensure!(
        !matches!(credential, ccm_sync::Credential::None),
        "this system is not enrolled: run `ccm sync enroll` first"
    );
    let client = ccm_sync::Client::new(endpoint, credential)?;
    let call = |function: &'static str, params: Value| {
        let client = client.clone();
        async move {
            client
                .call::<Value>(function, &params)
                .await
                .map_err(|f| anyhow::anyhow!("the central `{function}` call failed: {}", f.message))
        }
    };
    match command {
        None => {
            let systems = call("list_systems", json!({})).await?;
            print(json, &systems, show_systems)
        }
        Some(SystemsCommand::Drain { name, off }) => {
            let answer = call("drain", json!({ "p_on": !off, "p_system": name })).await?;
            let state = if answer["draining"] == true {
                "draining: it finishes its running work and takes no new work"
            } else {
                "taking work"
            };
            println!("{} is {state}", answer["name"].as_str().unwrap_or(&name));
            Ok(())
        }
    }
}

/// The `(name, id)` of each system of this system's owner, when the central answers within
/// `wait`; `None` when sync is not set up or the central cannot be asked now.
pub async fn known_systems(
    home: &Home,
    config: &Config,
    wait: Duration,
) -> Option<Vec<(String, String)>> {
    let endpoint = config.sync.endpoint().ok()??;
    let credential = crate::sync::credential(home, &endpoint, None);
    if matches!(credential, ccm_sync::Credential::None) {
        return None; // not enrolled
    }
    let client = ccm_sync::Client::new(endpoint, credential).ok()?;
    let params = json!({});
    let call = client.call::<Value>("list_systems", &params);
    let systems = tokio::time::timeout(wait, call).await.ok()?.ok()?;
    let text = |s: &Value, key: &str| s[key].as_str().unwrap_or_default().to_string();
    Some(systems.as_array()?.iter().map(|s| (text(s, "name"), text(s, "system_id"))).collect())
}

fn show_systems(systems: &Value) {
    let rows = systems.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        println!("no systems enrolled");
        return;
    }
    println!(
        "{:<16} {:<8} {:<16} {:>5} {:>8} {:<20} repos",
        "name", "presence", "reason", "slots", "today", "last heartbeat"
    );
    for s in rows {
        let text = |key: &str| s[key].as_str().unwrap_or("-").to_string();
        let repos: Vec<&str> =
            s["repos"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<16} {:<8} {:<16} {:>5} {:>8} {:<20} {}",
            text("name"),
            text("presence"),
            text("reason"),
            format!(
                "{}/{}",
                s["slots_used"].as_i64().unwrap_or(0),
                s["slots"].as_i64().unwrap_or(0)
            ),
            format!("${:.2}", s["cost_today"].as_f64().unwrap_or(0.0)),
            heartbeat_age(s["last_heartbeat_at"].as_str(), Timestamp::now()),
            if repos.is_empty() { "-".to_string() } else { repos.join(", ") },
        );
    }
}

/// A central `timestamptz` (UTC) as its age, e.g. `12s ago`; `-` for none, the text as it came
/// when it does not parse.
fn heartbeat_age(at: Option<&str>, now: Timestamp) -> String {
    let Some(at) = at else { return "-".into() };
    match at.get(..19).map(humantime::parse_rfc3339_weak) {
        Some(Ok(time)) => Timestamp::from(time).ago(now),
        _ => at.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_central_heartbeat_time_reads_as_its_age() {
        let now = Timestamp::from(humantime::parse_rfc3339("2026-11-30T21:14:00Z").unwrap());
        assert_eq!(heartbeat_age(Some("2026-11-30T21:13:29.549281+00:00"), now), "31s ago");
        assert_eq!(heartbeat_age(Some("2026-11-30T19:13:29+00:00"), now), "2h ago");
        assert_eq!(heartbeat_age(None, now), "-");
        assert_eq!(heartbeat_age(Some("yesterday"), now), "yesterday");
    }
}
