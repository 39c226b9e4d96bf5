//! Repository checkouts registered on this system (the contexts that routing will use).

use std::path::{Path, PathBuf};
use std::process::Command;

use ccm_schema::{Context, Timestamp};
use uuid::Uuid;

use super::{outbox, Result, Store, StoreError};

/// What git says about a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextProbe {
    /// The repository's top-level directory.
    pub path: PathBuf,
    /// Normalized URL of the `origin` remote (or the first remote), if any.
    pub repo_url: Option<String>,
    pub default_branch: Option<String>,
}

impl ContextProbe {
    /// Inspects the git repository containing `dir`; the error says what is needed when `dir`
    /// is not inside one.
    pub fn inspect(dir: &Path) -> Result<ContextProbe> {
        let not_repo = |detail: String| {
            StoreError::Invalid {
            field: "path",
            message: format!(
                "{} is not inside a git repository ({detail}); run `git init` there first, or give the path of a checkout",
                dir.display()
            ),
        }
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Invalid {
                    field: "path",
                    message: format!(
                        "{} is not a directory; give the path of a git checkout",
                        dir.display()
                    ),
                })
            }
            Err(e) => return Err(not_repo(format!("cannot read it: {e}"))),
        }
        let top = git(dir, &["rev-parse", "--show-toplevel"]).map_err(not_repo)?;
        let path = PathBuf::from(top);
        let remote = git(&path, &["remote"]).ok().and_then(|remotes| {
            let names: Vec<&str> = remotes.lines().collect();
            let name = if names.contains(&"origin") { "origin" } else { names.first()? };
            git(&path, &["remote", "get-url", name]).ok()
        });
        let default_branch = git(&path, &["symbolic-ref", "--short", "refs/remotes/origin/HEAD"])
            .ok()
            .map(|b| b.strip_prefix("origin/").unwrap_or(&b).to_string())
            .or_else(|| git(&path, &["symbolic-ref", "--short", "HEAD"]).ok());
        Ok(ContextProbe {
            path,
            repo_url: remote.map(|url| ccm_schema::repo_url::normalize(&url)),
            default_branch,
        })
    }
}

/// Runs git in `dir`, returning its trimmed stdout or a description of the failure.
fn git(dir: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

impl Store {
    /// Registers a checkout, or refreshes it when its path is already registered.
    pub async fn upsert_context(&self, probe: &ContextProbe) -> Result<Context> {
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let context: Context = sqlx::query_as(
            r#"
            INSERT INTO contexts (id, path, repo_url, default_branch, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (path) DO UPDATE
                SET repo_url = excluded.repo_url, default_branch = excluded.default_branch,
                    updated_at = excluded.updated_at
            RETURNING id, path, repo_url, default_branch, created_at, updated_at
            "#,
        )
        .bind(Uuid::new_v4().hyphenated())
        .bind(probe.path.to_string_lossy())
        .bind(&probe.repo_url)
        .bind(&probe.default_branch)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let row = ccm_sync::outbox::ContextRowV1::of(&context, false);
        outbox(&mut tx, &context.id.to_string(), &row, false).await?;
        tx.commit().await?;
        Ok(context)
    }

    pub async fn contexts(&self) -> Result<Vec<Context>> {
        Ok(sqlx::query_as(
            "SELECT id, path, repo_url, default_branch, created_at, updated_at FROM contexts ORDER BY path",
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// Unregisters the context whose id (or id prefix) or path is `key`.
    pub async fn remove_context(&self, key: &str) -> Result<Context> {
        let mut tx = self.write().await?;
        let path = std::fs::canonicalize(key)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let found: Vec<Context> = sqlx::query_as(
            r#"
            SELECT id, path, repo_url, default_branch, created_at, updated_at FROM contexts
            WHERE id = ?1 OR (length(?1) >= 4 AND id LIKE ?1 || '%') OR path = ?1 OR path = ?2
            "#,
        )
        .bind(key)
        .bind(path)
        .fetch_all(&mut *tx)
        .await?;
        let [context] = <[Context; 1]>::try_from(found).map_err(|found| {
            if found.is_empty() {
                StoreError::ContextNotFound(key.to_string())
            } else {
                StoreError::Invalid {
                    field: "context",
                    message: format!("`{key}` matches {} contexts; give the full id", found.len()),
                }
            }
        })?;
        sqlx::query("DELETE FROM contexts WHERE id = ?")
            .bind(context.id.hyphenated())
            .execute(&mut *tx)
            .await?;
        let removed = ccm_sync::outbox::ContextRowV1::of(&context, true);
        outbox(&mut tx, &context.id.to_string(), &removed, false).await?;
        tx.commit().await?;
        Ok(context)
    }
}
