//! `ccm supervisors` (the configured supervisors and their runs) and `ccm report ID` (one run:
//! why it ran, its digest and its report).

use anyhow::Context as _;

use crate::config::Config;
use crate::home::Home;
use crate::store::SupervisorRun;

use super::output::print;

/// `ccm supervisors [--json]`.
pub async fn list(home: &Home, config: &Config, json: bool) -> anyhow::Result<()> {
    let store = crate::home::open_store(home, config).await?;
    let runs = store.supervisor_runs(None).await;
    store.close().await;
    let runs = runs?;
    if json {
        let configured: Vec<serde_json::Value> = config
            .supervisors
            .iter()
            .map(|(name, s)| serde_json::json!({ "name": name, "config": s }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "supervisors": configured, "runs": runs })
            )?
        );
        return Ok(());
    }
    if config.supervisors.is_empty() {
        println!("no supervisors configured (supervisors: in the configuration)");
    }
    for (name, s) in &config.supervisors {
        let every = match &s.every {
            crate::supervisors::Every::Completions(n) => format!("every {n} completions"),
            crate::supervisors::Every::Failures(n) => format!("every {n} failures"),
            crate::supervisors::Every::Interval(i) => format!("every {i}"),
        };
        let repo = s.repo.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        println!(
            "{name}: scope {}{repo}, {every}, profile {}, slots {}",
            s.scope, s.profile, s.slots
        );
    }
    if !runs.is_empty() {
        println!();
    }
    for run in &runs {
        println!("{}", line(run));
    }
    Ok(())
}

fn line(run: &SupervisorRun) -> String {
    let first = run.report.as_deref().and_then(|r| r.lines().next()).unwrap_or("");
    format!(
        "{}  {}  {}  {}  ({})  alerts {}  ${:.4}  {}",
        &run.id[..8],
        run.started_at,
        run.supervisor,
        run.status,
        run.reason,
        run.alerts,
        run.cost_usd,
        crate::text::head(first, 80)
    )
}

/// `ccm supervisors --digest NAME`: the digest NAME's next run would carry, built by the running
/// daemon (as its runs are) or else from the database file.
pub async fn digest(home: &Home, config: &Config, name: &str) -> anyhow::Result<()> {
    if let Some(client) = crate::client::Client::connect(home)
        .await
        .map_err(|silent| anyhow::anyhow!("{silent}; {}", silent.fix()))?
    {
        let answer: crate::daemon::DigestAnswer =
            client.get(&["supervisors", name, "digest"]).await?;
        print!("{}", answer.digest);
        return Ok(());
    }
    let supervisor = crate::supervisors::configured(&config.supervisors, name)?;
    // A fleet manager's is the central's view, asked directly, as `ccm systems` does.
    let central = if supervisor.is_fleet() {
        let endpoint = config.sync.endpoint()?.context(
            "scope fleet reads the central: set sync.url (or sync.rest_url) and sync.publishable_key",
        )?;
        let credential = crate::sync::credential(home, &endpoint, None);
        Some(ccm_sync::Client::new(endpoint, credential)?)
    } else {
        None
    };
    let store = crate::home::open_store(home, config).await?;
    let text = async {
        let runs = store.supervisor_runs(Some(name)).await?;
        crate::supervisors::digest(&store, central.as_ref(), name, supervisor, &runs).await
    }
    .await;
    store.close().await;
    print!("{}", text?);
    Ok(())
}

/// `ccm report ID [--json]`.
pub async fn report(home: &Home, config: &Config, id: &str, json: bool) -> anyhow::Result<()> {
    let store = crate::home::open_store(home, config).await?;
    let run = store.supervisor_run(id).await;
    store.close().await;
    let run = run?;
    print(json, &run, |run| {
        println!("{}", line(run));
        println!("scope {}, profile {}, directory {}", run.scope, run.profile, run.dir);
        println!("\n== report\n{}", run.report.as_deref().unwrap_or("(still running)"));
        println!("\n== digest\n{}", run.digest);
    })
}
