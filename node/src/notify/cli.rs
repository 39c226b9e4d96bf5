//! `ccm notify ...` and `ccm service ...`.

use clap::Subcommand;

use super::{Message, Sender};
use crate::config::{Config, Profile};
use crate::home::Home;

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send a test message through notifier NAME (every notifier without one) and print what
    /// each answered.
    Test { name: Option<String> },
    /// The daily summary (notify.daily_summary): printed, or with --now sent through notifier
    /// NAME (every notifier without one).
    Daily {
        name: Option<String>,
        /// Send it now instead of printing it.
        #[arg(long)]
        now: bool,
    },
    /// Per notifier: sends per state (pending, sent, digest, digested, failed, skipped), when
    /// it last sent, and its last error with the cause.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write a systemd user unit (Linux) or launchd agent (macOS) that runs `ccm up`, then
    /// enable and start it.
    Install {
        /// `full` (API and dashboard) or `minimal` (API only); daemon.profile when omitted.
        #[arg(long, value_parser = ["full", "minimal"])]
        profile: Option<String>,
        /// Only write the file.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and disable the service and remove exactly the file `install` wrote.
    Uninstall,
    /// Whether the service is installed, enabled and running.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn notify(home: &Home, config: &Config, command: NotifyCommand) -> anyhow::Result<()> {
    match command {
        NotifyCommand::Test { name } => {
            let system = super::system_name(config);
            send_each(home, config, name.as_deref(), |each| Message::test(each, &system)).await
        }
        NotifyCommand::Daily { name, now } => daily(home, config, name, now).await,
        NotifyCommand::Status { json } => {
            let store = crate::store::Store::open_existing(
                &home.db_file(),
                std::time::Duration::from_secs(10),
            )
            .await?;
            let mut statuses = store.notifier_status().await?;
            store.close().await;
            // Configured notifiers that have sent nothing yet are listed too.
            for name in config.notify.notifiers.keys() {
                if !statuses.iter().any(|s| &s.notifier == name) {
                    statuses.push(crate::store::NotifierStatus {
                        notifier: name.clone(),
                        ..Default::default()
                    });
                }
            }
            statuses.sort_by(|a, b| a.notifier.cmp(&b.notifier));
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
                return Ok(());
            }
            if statuses.is_empty() {
                println!("no notifiers configured (notify.notifiers) and nothing sent");
            }
            let now = ccm_schema::Timestamp::now();
            for status in statuses {
                let configured = config.notify.notifiers.get(&status.notifier);
                let kind = configured.map_or("not configured any more", |n| n.kind());
                println!("{} ({kind})", status.notifier);
                let sends: Vec<String> =
                    status.sends.iter().map(|(state, n)| format!("{state} {n}")).collect();
                let sends = if sends.is_empty() { "none".into() } else { sends.join(", ") };
                println!("  sends:      {sends}");
                let last = status.last_sent_at.map_or("never".into(), |at| ago(at, now));
                println!("  last sent:  {last}");
                match status.last_error {
                    Some(error) => {
                        println!("  last error: {} ({})", error.message, ago(error.at, now))
                    }
                    None => println!("  last error: none"),
                }
            }
            Ok(())
        }
    }
}

/// `ccm notify daily [NAME] [--now]`.
async fn daily(
    home: &Home,
    config: &Config,
    name: Option<String>,
    now: bool,
) -> anyhow::Result<()> {
    let store =
        crate::store::Store::open_existing(&home.db_file(), std::time::Duration::from_secs(10))
            .await?;
    let system = super::system_name(config);
    let message = super::daily::message(&store, &system, ccm_schema::Timestamp::now()).await;
    store.close().await;
    let message = message?;
    if !now {
        println!(
            "{}
{}",
            message.title, message.text
        );
        return Ok(());
    }
    send_each(home, config, name.as_deref(), |_| message.clone()).await
}

/// Sends `message(name)` through notifier `only` (every notifier without one), printing what
/// each answered; fails when one failed.
async fn send_each(
    home: &Home,
    config: &Config,
    only: Option<&str>,
    message: impl Fn(&str) -> Message,
) -> anyhow::Result<()> {
    let notifiers = &config.notify.notifiers;
    anyhow::ensure!(!notifiers.is_empty(), "no notifiers configured (notify.notifiers)");
    if let Some(name) = only {
        anyhow::ensure!(
            notifiers.contains_key(name),
            "no notifier named `{name}`; configured: {}",
            notifiers.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let auth = home.read_auth().ok();
    let token = auth.as_ref().and_then(|a| a.telegram_token.as_deref());
    let mut failed = 0;
    for (each, notifier) in notifiers.iter().filter(|(n, _)| only.is_none_or(|m| m == *n)) {
        let sent = match Sender::new(each, notifier, token) {
            Ok(sender) => sender.send(&message(each), &mut serde_json::Value::Null).await,
            Err(error) => Err(error),
        };
        match sent {
            Ok(answer) => println!("{each}: ok: {answer}"),
            Err(error) => {
                failed += 1;
                println!("{each}: failed: {error}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} notifier(s) failed");
    Ok(())
}

/// How long ago `at` was, with the time: `3m ago, 2026-12-07T05:02:11.000Z`.
fn ago(at: ccm_schema::Timestamp, now: ccm_schema::Timestamp) -> String {
    let secs = u64::try_from((now.millis() - at.millis()).max(0) / 1000).unwrap_or_default();
    let age = humantime::format_duration(std::time::Duration::from_secs(secs));
    format!("{age} ago, {at}")
}

pub fn service(home: &Home, config: &Config, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Install { profile, no_start } => {
            let profile = match profile.as_deref() {
                Some("minimal") => Profile::Minimal,
                Some(_) => Profile::Full,
                None => config.daemon.profile,
            };
            super::service::install(home, profile, no_start)
        }
        ServiceCommand::Uninstall => super::service::uninstall(),
        ServiceCommand::Status { json } => {
            let status = super::service::status(home)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let yes = |v: Option<bool>| match v {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "unknown",
                };
                println!("file:      {}", status.file.display());
                println!("installed: {}", if status.installed { "yes" } else { "no" });
                println!("enabled:   {}", yes(status.enabled));
                println!("running:   {}", yes(status.running));
                if let Some(doctor) = &status.doctor {
                    let from = if doctor.path_from_unit {
                        "the unit's PATH"
                    } else {
                        "systemd's default PATH: the unit sets none; run `ccm service install` again to give it this shell's"
                    };
                    println!("PATH:      {} ({from})", doctor.path);
                    let verdict = if doctor.ok { "all checks pass" } else { "some checks fail" };
                    println!("ccm doctor as the service runs it: {verdict}");
                    for line in doctor.output.lines() {
                        println!("  {line}");
                    }
                }
            }
            Ok(())
        }
    }
}
