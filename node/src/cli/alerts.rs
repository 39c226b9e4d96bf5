//! `ccm alerts`: what needs the operator's attention, and acknowledging it.

use ccm_schema::types::short_id;
use clap::{Args, Subcommand};

use super::backend::Backend;
use super::not_empty;
use super::output::{print, table};

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(subcommand)]
    command: Option<AlertsCommand>,
    /// Resolved alerts too.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// Acknowledge (resolve) an alert by its id or a unique id prefix.
    Ack {
        #[arg(value_parser = not_empty)]
        id: String,
    },
}

pub async fn run(backend: Backend, args: AlertsArgs) -> anyhow::Result<()> {
    if let Some(AlertsCommand::Ack { id }) = args.command {
        let alert = backend.acknowledge_alert(&id).await?;
        println!("alert {} acknowledged: {}", short_id(&alert.id), alert.message);
        return Ok(());
    }
    let alerts = backend.alerts(args.all).await?;
    print(args.json, &alerts, |alerts| {
        if alerts.is_empty() {
            println!("{}", if args.all { "no alerts" } else { "no open alerts" });
            return;
        }
        table(
            &["ID", "WHEN", "SEVERITY", "REASON", "TASK", "STATE", "MESSAGE"],
            alerts.iter().map(|a| {
                vec![
                    short_id(&a.id),
                    a.created_at.to_string(),
                    a.severity.to_string(),
                    a.reason.clone(),
                    a.task_id.as_deref().map_or("-", |t| &t[..8.min(t.len())]).to_string(),
                    if a.resolved_at.is_some() { "resolved" } else { "open" }.to_string(),
                    a.message.clone(),
                ]
            }),
        );
        if !args.all {
            println!("\n`ccm alerts ack ID` acknowledges one; `ccm task show TASK` shows its task");
        }
    })
}
