//! `ccm agent ...`: list agents, attach a terminal to one, kill one.

use ccm_schema::types::short_id;
use clap::Subcommand;

use super::not_empty;
use super::output::{print, table};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Agents, live ones first, then the most recently started of the others: status, task,
    /// heartbeat age, cost so far, how full the context is (`ctx 62%`, with the compactions).
    List {
        /// Agents that are no longer running to list, the most recently started.
        #[arg(long, default_value_t = 50, conflicts_with = "all")]
        limit: u32,
        /// Every agent, however many have ended.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Attach this terminal to the agent's tmux window (detach with the tmux prefix, then d).
    Attach {
        #[arg(value_parser = not_empty)]
        id: String,
    },
    /// Kill the agent's window; its attempt counts as a crash and is retried while attempts remain.
    Kill {
        #[arg(value_parser = not_empty)]
        id: String,
    },
}

pub async fn run(store: &Store, config: &Config, command: AgentCommand) -> anyhow::Result<()> {
    let tmux = crate::tmux::Tmux::new(config.runtime.tmux_socket.clone());
    match command {
        AgentCommand::List { limit, all, json } => {
            // One more than shown says whether older agents were left out.
            let mut agents = store.agents((!all).then_some(i64::from(limit) + 1)).await?;
            let ended = agents.iter().filter(|a| !a.status.is_live()).count();
            let older = !all && ended > limit as usize;
            if older {
                agents.pop();
            }
            let stale_after = config.runtime.stale_secs as i64;
            print(json, &agents, |agents| {
                if agents.is_empty() {
                    println!("no agents");
                    return;
                }
                let now = ccm_schema::Timestamp::now().millis();
                table(
                    &[
                        "ID",
                        "TASK",
                        "KIND",
                        "PROFILE",
                        "STATUS",
                        "HEARTBEAT",
                        "COST",
                        "TOKENS IN/OUT",
                        "CONTEXT",
                    ],
                    agents.iter().map(|a| {
                        let age = (now - a.last_heartbeat.millis()) / 1000;
                        let heartbeat = if !a.status.is_live() {
                            "-".to_string()
                        } else if age > stale_after {
                            format!("{age}s (stale)")
                        } else {
                            format!("{age}s")
                        };
                        vec![
                            a.short_id(),
                            short_id(&a.task_id),
                            a.kind.to_string(),
                            a.profile.clone(),
                            a.status.to_string(),
                            heartbeat,
                            a.cost_usd.map_or_else(|| "unknown".into(), |c| format!("${c:.4}")),
                            format!("{}/{}", a.input_tokens, a.output_tokens),
                            a.context_label(),
                        ]
                    }),
                )
            })?;
            if older && !json {
                println!("older agents are not listed (--limit N lists more, --all every one)");
            }
            Ok(())
        }
        AgentCommand::Attach { id } => {
            let agent = store.agent(&id).await?;
            let window =
                agent.window_id.as_deref().filter(|_| agent.status.is_live()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "agent {} is {}: there is no window to attach to",
                        agent.short_id(),
                        agent.status
                    )
                })?;
            let argv = tmux.attach_argv(window);
            use std::os::unix::process::CommandExt;
            let error = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
            Err(anyhow::anyhow!("cannot run tmux attach: {error}"))
        }
        AgentCommand::Kill { id } => {
            let agent = store.agent(&id).await?;
            match agent.window_id.as_deref().filter(|_| agent.status.is_live()) {
                Some(window) => {
                    tmux.kill(window).await?;
                    println!(
                        "agent {} killed; the runtime retries its task while attempts remain",
                        agent.short_id()
                    );
                    Ok(())
                }
                None => {
                    anyhow::bail!("agent {} is not running ({})", agent.short_id(), agent.status)
                }
            }
        }
    }
}
