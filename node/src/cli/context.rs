//! `ccm context ...`: repository checkouts registered on this system.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ccm_schema::types::short_id;
use clap::Subcommand;

use super::backend::Backend;
use super::not_empty;
use super::output::{print, table};

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Register the checkout at PATH (default: the current directory).
    Add { path: Option<PathBuf> },
    /// Unregister a context by id, id prefix or path.
    Remove {
        #[arg(value_parser = not_empty)]
        key: String,
    },
}

pub async fn run(backend: Backend, command: ContextCommand, cwd: &Path) -> anyhow::Result<()> {
    match command {
        ContextCommand::List { json } => print(json, &backend.contexts().await?, |contexts| {
            table(
                &["ID", "PATH", "REPO", "BRANCH"],
                contexts.iter().map(|c| {
                    vec![
                        short_id(&c.id),
                        c.path.clone(),
                        c.repo_url.clone().unwrap_or_default(),
                        c.default_branch.clone().unwrap_or_default(),
                    ]
                }),
            )
        }),
        ContextCommand::Add { path } => {
            let path = path.unwrap_or_else(|| cwd.to_path_buf());
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("cannot use {} as a context", path.display()))?;
            let context = backend.add_context(&path).await?;
            println!("context {} registered: {}", short_id(&context.id), context.path);
            Ok(())
        }
        ContextCommand::Remove { key } => {
            let context = backend.remove_context(&key).await?;
            println!("context {} removed: {}", short_id(&context.id), context.path);
            Ok(())
        }
    }
}
