//! `ccm decide`: the decisions waiting for the operator, and answering one.

use ccm_schema::types::short_id;

use super::backend::Backend;
use super::open_store;
use super::output::print;
use crate::config::Config;
use crate::home::Home;

pub async fn run(
    home: &Home,
    config: &Config,
    id: Option<String>,
    answer: Option<String>,
    reason: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    match (id, answer) {
        (Some(id), Some(answer)) => {
            let backend = Backend::connect(home, config).await?;
            let decision = backend.answer(&id, &answer, reason.as_deref()).await?;
            println!("decision {} answered `{answer}`", short_id(&decision.id));
            Ok(())
        }
        (Some(_), None) => anyhow::bail!("give the answer too: `ccm decide ID ANSWER`"),
        _ => {
            let store = open_store(home, config).await?;
            let pending: Vec<_> =
                store.decisions().await?.into_iter().filter(|d| d.answer.is_none()).collect();
            print(json, &pending, |pending| {
                if pending.is_empty() {
                    println!("no decisions pending");
                }
                for d in pending {
                    println!("{}  {}  [{}]", short_id(&d.id), d.question, d.options.0.join(" | "));
                }
            })
        }
    }
}
