//! `ccm lock NAME [--scope fleet] -- COMMAND`: holds a named lock of this node (or of the
//! fleet) while a command runs, renewing its lease, for verify scripts and builds that must not
//! overlap.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use crate::client::Client;
use crate::config::Config;
use crate::home::Home;
use crate::store::LockGrant;

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The lock's name (letters, digits, `-_./:`).
    pub name: String,
    /// The lease in seconds, renewed every third of it while the command runs.
    #[arg(long, default_value_t = 60)]
    pub ttl: u64,
    /// How long to wait for the lock, in seconds.
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
    /// `node`: one holder among this system's; `fleet`: among every system's (through the
    /// central, when sync is on).
    #[arg(long, default_value = "node", value_parser = ["node", "fleet"])]
    pub scope: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Takes the lock through the daemon, runs the command, releases the lock; the command's exit
/// status becomes this process's.
pub async fn lock(home: &Home, _config: &Config, args: LockArgs) -> anyhow::Result<()> {
    let client = Client::connect(home)
        .await
        .map_err(|silent| anyhow::anyhow!("{silent}; {}", silent.fix()))?
        .context("`ccm lock` needs the daemon (the lease is renewed and released through it): start it with `ccm up`")?;
    let holder =
        format!("cli:{}:{}", std::process::id(), gethostname::gethostname().to_string_lossy());
    let body = json!({
        "holder": holder, "ttl_secs": args.ttl, "wait_secs": args.wait, "scope": args.scope,
    });
    let grant: LockGrant = client
        .post(&["locks", &args.name], body)
        .await
        .with_context(|| format!("cannot take lock `{}`", args.name))?;
    eprintln!("ccm lock: holding `{}` (fencing token {})", grant.name, grant.fence);
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("CCM_LOCK_FENCE", grant.fence.to_string())
        .spawn()
        .with_context(|| format!("cannot run `{}`", args.command[0]))?;
    let renew_every = Duration::from_secs((args.ttl / 3).max(1));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            () = tokio::time::sleep(renew_every) => {
                let body = json!({
                    "holder": holder, "ttl_secs": args.ttl, "wait_secs": 0, "scope": args.scope,
                });
                if let Err(e) = client.post::<LockGrant>(&["locks", &args.name], body).await {
                    eprintln!("ccm lock: cannot renew `{}`: {e}", args.name);
                }
            }
        }
    };
    let released: Result<serde_json::Value, _> =
        client.delete_query(&["locks", &args.name], &[("holder", &holder)]).await;
    if let Err(e) = released {
        eprintln!("ccm lock: cannot release `{}` (its lease ends it): {e}", args.name);
    }
    let status = status.with_context(|| format!("waiting for `{}`", args.command[0]))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => std::process::exit(code),
        None => std::process::exit(128),
    }
}
