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
    /// Sends per notifier and state (pending, sent, digest, digested, failed, skipped).
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
            let notifiers = &config.notify.notifiers;
            anyhow::ensure!(!notifiers.is_empty(), "no notifiers configured (notify.notifiers)");
            if let Some(name) = &name {
                anyhow::ensure!(
                    notifiers.contains_key(name),
                    "no notifier named `{name}`; configured: {}",
                    notifiers.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            let auth = home.read_auth().ok();
            let token = auth.as_ref().and_then(|a| a.telegram_token.as_deref());
            let mut failed = 0;
            for (each, notifier) in
                notifiers.iter().filter(|(n, _)| name.as_ref().is_none_or(|m| m == *n))
            {
                let sent = match Sender::new(each, notifier, token) {
                    Ok(sender) => {
                        sender.send(&Message::test(each), &mut serde_json::Value::Null).await
                    }
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
        NotifyCommand::Status { json } => {
            let store = crate::store::Store::open_existing(
                &home.db_file(),
                std::time::Duration::from_secs(10),
            )
            .await?;
            let counts = store.send_counts().await?;
            store.close().await;
            if json {
                let rows: Vec<_> = counts
                    .iter()
                    .map(|(n, s, c)| serde_json::json!({ "notifier": n, "state": s, "count": c }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if counts.is_empty() {
                println!("nothing sent yet");
            } else {
                for (notifier, state, count) in counts {
                    println!("{notifier:<16} {state:<9} {count}");
                }
            }
            Ok(())
        }
    }
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
            let status = super::service::status()?;
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
            }
            Ok(())
        }
    }
}
