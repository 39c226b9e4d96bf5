//! The janitor (issue 23): what ended tasks left in the registered repositories, their
//! `ccm/<short id>` branches and worktrees, removed when that loses no work.
//!
//! [`plan`] looks at every task branch of every registered checkout and gives each a
//! [`Verdict`] with its reason; [`apply`] removes what the plan says. A branch is removed only
//! when its task ended, at least `min_age` ago (or the node is over its disk budget), and either
//! all of its commits are on the target (the checkout's default branch) and its worktree holds
//! no uncommitted change, or its task was discarded. Which ended states allow what is decided
//! by one function, [`disposal`]. `ccm gc` runs it now (`min_age` 0); the daemon runs it with
//! `land.keep_days` and `land.disk_budget_mb`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ccm_schema::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, TaskEnd};
use crate::worktree::{self, TaskWork, WorktreeError};

#[derive(Debug, thiserror::Error)]
pub enum JanitorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot look at repository {repo}: {source}")]
    Git { repo: PathBuf, source: WorktreeError },
    #[error("the janitor's git work stopped: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What a task's state allows the janitor to do with its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// The task has not ended: its work is in use.
    Active,
    /// Ended: removable once nothing would be lost (every commit on the target, no
    /// uncommitted change).
    IfOnTarget,
    /// The operator dropped the work: removable whatever it holds.
    Discarded,
}

/// The one place that maps a task state to what may happen to its work (`landed` and
/// `discarded` as `Store::task_ends` reads them from the land queue and `ccm task discard`).
pub fn disposal(state: &str) -> Disposal {
    match state {
        "discarded" => Disposal::Discarded,
        "complete" | "failed" | "cancelled" | "landed" => Disposal::IfOnTarget,
        _ => Disposal::Active,
    }
}

/// What happens to one task branch, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "why")]
pub enum Verdict {
    Remove(String),
    Keep(String),
}

/// One task branch the janitor looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub repo: PathBuf,
    #[serde(flatten)]
    pub work: TaskWork,
    /// The task's full id and state, when a task of this node has the short id.
    pub task: Option<String>,
    pub state: Option<String>,
    /// Bytes its worktree takes.
    pub bytes: u64,
    pub verdict: Verdict,
}

/// What a janitor run did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub dry_run: bool,
    pub items: Vec<Item>,
    /// Removals that failed, with git's words.
    pub errors: Vec<String>,
}

impl Report {
    pub fn removed(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| matches!(i.verdict, Verdict::Remove(_)))
    }
}

/// When work may go.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long ago a task must have ended for its work to go.
    pub min_age: Duration,
    /// Bytes the worktrees of ended tasks may take; past it, removable work younger than
    /// `min_age` goes too, oldest first. 0: no budget.
    pub disk_budget: u64,
}

/// Looks at every `ccm/*` branch of every registered checkout.
pub async fn plan(store: &Store, options: Options) -> Result<Report, JanitorError> {
    let tasks: HashMap<String, TaskEnd> =
        store.task_ends().await?.into_iter().map(|t| (t.id.chars().take(8).collect(), t)).collect();
    let contexts = store.contexts().await?;
    let now = Timestamp::now().millis();
    let min_age = i64::try_from(options.min_age.as_millis()).unwrap_or(i64::MAX);
    let items = tokio::task::spawn_blocking(move || {
        let mut items = Vec::new();
        // Young removable work, for the disk budget: (index, ended at).
        let mut young = Vec::new();
        let mut ended_bytes = 0u64;
        for context in contexts {
            let repo = PathBuf::from(&context.path);
            if !repo.is_dir() {
                continue;
            }
            let git = |source| JanitorError::Git { repo: repo.clone(), source };
            let target = match context.default_branch.clone() {
                Some(branch) => branch,
                None => continue,
            };
            for work in worktree::task_work(&repo).map_err(git)? {
                let task = tasks.get(&work.short_id);
                let bytes = work.worktree.as_deref().map_or(0, worktree::disk_usage);
                let verdict = match task.map(|t| (t, disposal(&t.state))) {
                    None => Verdict::Keep(format!(
                        "no task of this node has id {} (made elsewhere or by hand)",
                        work.short_id
                    )),
                    Some((t, Disposal::Active)) => {
                        Verdict::Keep(format!("its task is {}", t.state))
                    }
                    Some((t, disposal)) => {
                        ended_bytes += bytes;
                        let reason = match disposal {
                            Disposal::Discarded => None,
                            _ => worktree::work_keep_reason(&repo, &work, &target).map_err(git)?,
                        };
                        let age = now - t.updated_at.millis();
                        match reason {
                            Some(reason) => Verdict::Keep(reason),
                            None if age < min_age => {
                                young.push((items.len(), t.updated_at.millis(), bytes));
                                Verdict::Keep(format!(
                                    "its task ended {} ago; kept {} (land.keep_days)",
                                    ago(age),
                                    ago(min_age)
                                ))
                            }
                            None if disposal == Disposal::Discarded => {
                                Verdict::Remove("its task was discarded".into())
                            }
                            None => Verdict::Remove(format!(
                                "its task is {}; every commit is on {target}",
                                t.state
                            )),
                        }
                    }
                };
                items.push(Item {
                    repo: repo.clone(),
                    task: task.map(|t| t.id.clone()),
                    state: task.map(|t| t.state.clone()),
                    work,
                    bytes,
                    verdict,
                });
            }
        }
        if options.disk_budget > 0 {
            let mut used = ended_bytes.saturating_sub(
                items
                    .iter()
                    .filter(|i| matches!(i.verdict, Verdict::Remove(_)))
                    .map(|i| i.bytes)
                    .sum::<u64>(),
            );
            young.sort_by_key(|&(_, ended, _)| ended);
            for (index, _, bytes) in young {
                if used <= options.disk_budget {
                    break;
                }
                items[index].verdict = Verdict::Remove(format!(
                    "the worktrees of ended tasks take {} MiB, over the disk budget of {} MiB",
                    used / (1024 * 1024),
                    options.disk_budget / (1024 * 1024)
                ));
                used -= bytes;
            }
        }
        Ok::<_, JanitorError>(items)
    })
    .await??;
    Ok(Report { dry_run: true, items, errors: Vec::new() })
}

/// Removes what `report` (a plan) says, and forgets the task's worktree; a removal that fails
/// turns into a kept item, with git's words in `errors`. Logs each removal and each kept item.
pub async fn apply(store: &Store, mut report: Report) -> Result<Report, JanitorError> {
    report.dry_run = false;
    for item in &mut report.items {
        let Verdict::Remove(why) = &item.verdict else {
            let Verdict::Keep(why) = &item.verdict else { continue };
            tracing::info!(branch = %item.work.branch, repo = %item.repo.display(), %why, "janitor kept");
            continue;
        };
        let (repo, work) = (item.repo.clone(), item.work.clone());
        match tokio::task::spawn_blocking(move || worktree::remove_work(&repo, &work)).await? {
            Ok(()) => {
                tracing::info!(branch = %item.work.branch, repo = %item.repo.display(), %why, "janitor removed");
                if let Some(id) = item.task.as_deref().and_then(|id| id.parse().ok()) {
                    if store.worktree(id).await?.is_some() {
                        store.set_worktree(id, None).await?;
                    }
                }
            }
            Err(e) => {
                let error = format!("{} in {}: {e}", item.work.branch, item.repo.display());
                tracing::warn!(%error, "janitor could not remove a task's work");
                item.verdict = Verdict::Keep(format!("removal failed: {e}"));
                report.errors.push(error);
            }
        }
    }
    Ok(report)
}

/// A duration in words, to the hour (or minute under an hour).
fn ago(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    match minutes {
        m if m < 60 => format!("{m} min"),
        m if m < 48 * 60 => format!("{} h", m / 60),
        m => format!("{} days", m / (24 * 60)),
    }
}
