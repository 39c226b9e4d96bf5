//! `ccm dashboard`: the web dashboard, signed in by a one-time link.

use anyhow::Context as _;
use serde_json::json;

use crate::client::Client;
use crate::config::Config;
use crate::home::Home;

/// `ccm dashboard`: a one-time sign-in link from the daemon, opened in the browser (or printed);
/// `--revoke` ends every sign-in, through the daemon or, when none runs, in the sessions file.
pub async fn run(home: &Home, config: &Config, print: bool, revoke: bool) -> anyhow::Result<()> {
    let client = Client::connect(home).await?;
    if revoke {
        match client {
            Some(client) => {
                let answer: serde_json::Value =
                    client.post(&["dashboard", "revoke"], json!({})).await?;
                println!("signed out {} browser session(s)", answer["revoked"]);
            }
            None => {
                let file = home.root().join(crate::dashboard::SESSIONS_FILE);
                crate::dashboard::revoke_offline(&file)
                    .with_context(|| format!("cannot remove {}", file.display()))?;
                println!("signed out every browser session");
            }
        }
        return Ok(());
    }
    if config.daemon.profile != crate::config::Profile::Full {
        anyhow::bail!("the dashboard is served only under daemon.profile `full`");
    }
    let client = client.context("the daemon is not running: start it with `ccm up`")?;
    let answer: serde_json::Value = match client.post(&["dashboard", "codes"], json!({})).await {
        Ok(answer) => answer,
        // A daemon started under another profile (`CCM_DAEMON__PROFILE=minimal`, say) has no
        // dashboard routes.
        Err(crate::client::ClientError::Refused { status, .. })
            if status == reqwest::StatusCode::NOT_FOUND =>
        {
            anyhow::bail!(
                "the dashboard is off: the running daemon serves the API only (its \
                 daemon.profile is not `full`); restart it under daemon.profile `full`"
            )
        }
        Err(e) => return Err(e.into()),
    };
    let url = answer["url"].as_str().context("the daemon sent no sign-in link")?;
    if print {
        println!("{url}");
        return Ok(());
    }
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let opened = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if opened {
        println!("opened the dashboard in your browser (the link works once)");
    } else {
        println!(
            "open this link in a browser on this machine (it works once, for {} seconds):\n{url}",
            answer["expires_in_secs"]
        );
    }
    Ok(())
}
