//! Gathering the prediction's inputs (the store, git, the central) and keeping it current.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccm_schema::types::short_id;
use ccm_schema::{Context, TaskState};
use futures_util::future::join_all;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::git::{self, TaskDiff};
use super::{
    judge, predict_pairs, ActiveTask, ConflictError, MergeAnswers, MergeQuestion, Phase,
    PredictedConflict, TaskRef,
};
use crate::store::{ActiveRow, Store};

/// git commands of the prediction that run at once, at most (the daemon's other work keeps
/// the rest of the machine).
pub const GIT_CONCURRENCY: usize = 2;
/// A round runs at least this often, and after a change of the store once it has been quiet
/// for [`QUIET`].
const ROUND_EVERY: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(500);
/// Other systems' active tasks are asked of the central at most this often.
const CENTRAL_EVERY: Duration = Duration::from_secs(10);

/// The daemon's conflict predictor: after changes of the store (and every [`ROUND_EVERY`]),
/// computes each repository's prediction from its active tasks here and on other systems,
/// records it (with its alerts) and the files each task touched (with a new task summary when
/// they changed).
#[derive(Clone)]
pub struct Predictor {
    /// Where the active tasks are read and the prediction is recorded.
    pub store: Store,
    /// The central, for other systems' active tasks of the same repositories (with sync).
    pub central: Option<ccm_sync::Client>,
    /// Ends the loop.
    pub shutdown: CancellationToken,
}

/// What git answered, by the commits it was asked about, so an unchanged repository is not
/// asked again.
#[derive(Default)]
struct Cache {
    /// `(target head, branch head)` → files the branch changed.
    changed: HashMap<(String, String), Vec<String>>,
    merges: MergeAnswers,
    /// Other systems' active tasks by repository, and when they were asked.
    remote: HashMap<String, Vec<ActiveTask>>,
    remote_at: Option<Instant>,
}

impl Predictor {
    #[tracing::instrument(name = "conflicts", skip_all)]
    pub async fn run(self) {
        let mut changes = self.store.changes();
        let mut cache = Cache::default();
        loop {
            if let Err(error) = self.round(&mut cache).await {
                warn!(%error, "conflict prediction failed; trying again later");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = changes.changed() => {}
                () = tokio::time::sleep(ROUND_EVERY) => {}
            }
            // Let a burst of writes (hook events) settle, then predict once for all of them.
            loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(QUIET) => break,
                }
            }
        }
    }

    /// One round: every repository with an active task here.
    async fn round(&self, cache: &mut Cache) -> Result<(), ConflictError> {
        let rows = self.store.active_tasks().await?;
        let contexts = self.store.contexts().await?;
        let mut repos: Vec<String> = rows.iter().map(|r| r.repo.clone()).collect();
        repos.sort();
        repos.dedup();
        repos.retain(|repo| context_of(&contexts, repo).is_some());
        self.refresh_remote(cache, &repos).await;
        let semaphore = Arc::new(Semaphore::new(GIT_CONCURRENCY));
        let mut asked_changed = BTreeSet::new();
        let mut asked_merges = BTreeSet::new();
        for repo in &repos {
            let Some(context) = context_of(&contexts, repo) else { continue };
            let remote = cache.remote.get(repo).cloned().unwrap_or_default();
            let local: Vec<&ActiveRow> = rows.iter().filter(|r| &r.repo == repo).collect();
            let found = gather(context, &local, &remote, None, cache, &semaphore).await;
            let (conflicts, tasks, questions) = match found {
                Ok(found) => found,
                Err(error) => {
                    warn!(%repo, %error, "cannot predict the conflicts of a repository");
                    continue;
                }
            };
            asked_changed.extend(questions.0);
            asked_merges.extend(questions.1);
            let touched: Vec<_> = tasks
                .iter()
                .filter(|t| t.task.system.is_none())
                .filter_map(|t| {
                    Some((
                        t.task.task_id.parse().ok()?,
                        repo.clone(),
                        t.files.iter().cloned().collect(),
                    ))
                })
                .collect();
            // What each task touched is recorded before the prediction made from it.
            self.store.save_touched(&touched).await?;
            if self.store.record_conflicts(repo, &conflicts).await? {
                debug!(%repo, conflicts = conflicts.len(), "prediction changed");
            }
        }
        // Repositories without active tasks any more: nothing conflicts there now.
        for (repo, _) in self.store.all_conflicts().await? {
            if !repos.contains(&repo) {
                self.store.record_conflicts(&repo, &[]).await?;
            }
        }
        cache.changed.retain(|key, _| asked_changed.contains(key));
        cache.merges.retain(|key, _| asked_merges.contains(key));
        Ok(())
    }

    /// Other systems' active tasks of `repos`, from the central, at most every
    /// [`CENTRAL_EVERY`]; the last answer is kept while the central cannot be asked.
    async fn refresh_remote(&self, cache: &mut Cache, repos: &[String]) {
        let Some(central) = &self.central else { return };
        if repos.is_empty() {
            cache.remote.clear();
            return;
        }
        if cache.remote_at.is_some_and(|at| at.elapsed() < CENTRAL_EVERY) {
            return;
        }
        cache.remote_at = Some(Instant::now());
        let params = serde_json::json!({ "p_repo_urls": repos });
        match central.call::<Vec<RemoteTask>>("fleet_task_files", &params).await {
            Ok(tasks) => {
                cache.remote.clear();
                for task in tasks {
                    let repo = task.repo_url.clone();
                    if let Some(active) = task.active() {
                        cache.remote.entry(repo).or_default().push(active);
                    }
                }
            }
            Err(failure) => {
                debug!(error = %failure.message, "cannot ask the central for other systems' tasks");
            }
        }
    }
}

/// One task of another system, as `api.fleet_task_files` answers it.
#[derive(Debug, Deserialize)]
struct RemoteTask {
    task_id: String,
    system_name: String,
    state: String,
    title: String,
    repo_url: String,
    #[serde(default)]
    touched_files: Option<Vec<String>>,
}

impl RemoteTask {
    fn active(self) -> Option<ActiveTask> {
        // A state this version does not know (a newer node's) counts as running.
        let phase = self.state.parse::<TaskState>().map_or(Some(Phase::Running), Phase::of)?;
        let short = self.task_id.parse().map_or_else(|_| self.task_id.clone(), |id| short_id(&id));
        Some(ActiveTask {
            task: TaskRef {
                task_id: self.task_id,
                short_id: short,
                title: self.title,
                state: self.state,
                system: Some(self.system_name),
            },
            phase,
            files: self.touched_files.unwrap_or_default().into_iter().collect(),
            head: None,
        })
    }
}

/// The checkout of `repo` (a task's `repo`: a normalized URL, or a checkout's path).
fn context_of<'a>(contexts: &'a [Context], repo: &str) -> Option<&'a Context> {
    contexts
        .iter()
        .find(|c| c.repo_url.as_deref() == Some(repo))
        .or_else(|| contexts.iter().find(|c| c.path == repo))
}

/// The questions a round asked git (kept in the cache), by kind.
type Asked = (Vec<(String, String)>, Vec<MergeQuestion>);

/// The prediction of one repository: its active tasks (`local` rows and `remote` tasks), their
/// files, git's answers; with the tasks as seen and the questions asked.
async fn gather(
    context: &Context,
    local: &[&ActiveRow],
    remote: &[ActiveTask],
    target: Option<&str>,
    cache: &mut Cache,
    semaphore: &Arc<Semaphore>,
) -> Result<(Vec<PredictedConflict>, Vec<ActiveTask>, Asked), ConflictError> {
    let checkout = PathBuf::from(&context.path);
    let target = target.or(context.default_branch.as_deref()).unwrap_or("main").to_string();
    let heads = git::heads(&checkout).await?;
    let target_head = heads.get(&target).cloned();
    let mut tasks: Vec<ActiveTask> = local
        .iter()
        .filter_map(|row| {
            let phase = Phase::of(row.state)?;
            let short = short_id(&row.id);
            Some(ActiveTask {
                task: TaskRef {
                    task_id: row.id.to_string(),
                    short_id: short.clone(),
                    title: row.title.clone(),
                    state: row.state.to_string(),
                    system: None,
                },
                phase,
                // While it runs, what its agents wrote counts too (committed or not); once
                // finished, only what its branch changed.
                files: if phase == Phase::Running {
                    relative(&row.written, &row.cwds, &checkout)
                } else {
                    BTreeSet::new()
                },
                head: heads.get(&format!("ccm/{short}")).cloned(),
            })
        })
        .collect();

    // The files each branch changed since it left the target.
    let mut asked_changed = Vec::new();
    if let Some(target_head) = &target_head {
        let wanted: Vec<(usize, (String, String))> = tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, (target_head.clone(), t.head.clone()?))))
            .collect();
        let missing: Vec<&(String, String)> =
            wanted.iter().map(|(_, key)| key).filter(|k| !cache.changed.contains_key(*k)).collect();
        let answers = join_all(missing.iter().map(|(target, head)| {
            let (checkout, semaphore) = (&checkout, Arc::clone(semaphore));
            async move {
                let _permit = semaphore.acquire_owned().await;
                git::changed_files(checkout, target, head).await
            }
        }))
        .await;
        for (key, answer) in missing.into_iter().zip(answers) {
            cache.changed.insert(key.clone(), answer?);
        }
        for (i, key) in wanted {
            if let Some(files) = cache.changed.get(&key) {
                tasks[i].files.extend(files.iter().cloned());
            }
            asked_changed.push(key);
        }
    }
    tasks.extend(remote.iter().cloned());

    // git judges the overlapping finished branches, and each against the target.
    let pairs = predict_pairs(&tasks, target_head.as_deref());
    let missing: Vec<&MergeQuestion> =
        pairs.merges.iter().filter(|q| !cache.merges.contains_key(*q)).collect();
    let answers = join_all(missing.iter().map(|q| {
        let (checkout, semaphore) = (&checkout, Arc::clone(semaphore));
        async move {
            let _permit = semaphore.acquire_owned().await;
            git::merge_conflicts(checkout, &q.ours, &q.theirs).await
        }
    }))
    .await;
    for (question, answer) in missing.into_iter().zip(answers) {
        match answer {
            Ok(files) => {
                cache.merges.insert(question.clone(), files);
            }
            // Left unjudged: the pair stays an overlap.
            Err(error) => warn!(%error, "git merge-tree failed"),
        }
    }
    let conflicts = judge(
        &tasks,
        &pairs,
        &cache.merges,
        target_head.as_deref().map(|head| (target.as_str(), head)),
    );
    let asked = (asked_changed, pairs.merges.into_iter().collect());
    Ok((conflicts, tasks, asked))
}

/// Paths the hook events named, relative to the repository: made relative to the first of the
/// task's working directories (or the checkout) that holds them; relative ones are kept, and
/// absolute ones outside all of them dropped.
fn relative(written: &[String], cwds: &[String], checkout: &Path) -> BTreeSet<String> {
    let roots: Vec<&Path> = cwds.iter().map(Path::new).chain([checkout]).collect();
    written
        .iter()
        .filter_map(|path| {
            let path = Path::new(path);
            if path.is_relative() {
                return Some(path.to_string_lossy().into_owned());
            }
            roots
                .iter()
                .find_map(|root| path.strip_prefix(root).ok())
                .map(|p| p.to_string_lossy().into_owned())
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// A fresh prediction of the repository `repo` (a task's `repo`) against its checkout's
/// default branch, from this system's active tasks: what `ccm land --plan` and the land
/// queue's ordering ([`super::land_order`]) start from. Runs git (no daemon needed).
pub async fn predict(store: &Store, repo: &str) -> Result<Vec<PredictedConflict>, ConflictError> {
    predict_with(store, repo, None, &[]).await
}

/// [`predict`] against the branch `target` (default: the checkout's default branch), with
/// other systems' active tasks `remote` (their files; see `api.fleet_task_files`).
pub async fn predict_with(
    store: &Store,
    repo: &str,
    target: Option<&str>,
    remote: &[ActiveTask],
) -> Result<Vec<PredictedConflict>, ConflictError> {
    let contexts = store.contexts().await?;
    let Some(context) = context_of(&contexts, repo) else { return Ok(Vec::new()) };
    let rows = store.active_tasks().await?;
    let local: Vec<&ActiveRow> = rows.iter().filter(|r| r.repo == repo).collect();
    let semaphore = Arc::new(Semaphore::new(GIT_CONCURRENCY));
    let mut cache = Cache::default();
    let (conflicts, ..) = gather(context, &local, remote, target, &mut cache, &semaphore).await?;
    Ok(conflicts)
}

/// The prediction the daemon recorded last for `repo` (with other systems' tasks when sync is
/// on); empty when none was recorded.
pub async fn recorded(store: &Store, repo: &str) -> Result<Vec<PredictedConflict>, ConflictError> {
    Ok(store.conflicts_of_repo(repo).await?)
}

/// The task's branch against its target (the checkout's default branch), file by file:
/// `ccm task diff` and `GET /api/tasks/{id}/diff`.
pub async fn diff(store: &Store, task: &str) -> Result<TaskDiff, ConflictError> {
    let detail = store.task(task).await?;
    let task = detail.task;
    let short = task.short_id();
    let no_branch = |why: &str| ConflictError::NoBranch { task: short.clone(), why: why.into() };
    let contexts = store.contexts().await?;
    let (checkout, target) = match (&detail.worktree, &task.repo) {
        (Some(saved), _) => (saved.repo.clone(), saved.worktree.base_branch.clone()),
        (None, Some(repo)) => {
            let context = context_of(&contexts, repo)
                .ok_or_else(|| no_branch(&format!("no checkout of {repo} is registered here")))?;
            let target = context.default_branch.clone().unwrap_or_else(|| "main".into());
            (PathBuf::from(&context.path), target)
        }
        (None, None) => return Err(no_branch("it has no repository")),
    };
    let branch = format!("ccm/{short}");
    if !git::heads(&checkout).await?.contains_key(&branch) {
        return Err(no_branch(&format!(
            "branch {branch} does not exist in {}",
            checkout.display()
        )));
    }
    let mut diff = git::diff(&checkout, &target, &branch).await?;
    diff.task_id = task.id.to_string();
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_paths_are_made_relative_to_the_worktree_or_the_checkout() {
        let written = [
            "/w/app-1/src/a.rs".to_string(),
            "/repo/b.rs".to_string(),
            "rel/c.rs".to_string(),
            "/elsewhere/d.rs".to_string(),
            "/w/app-1".to_string(),
        ];
        let got = relative(&written, &["/w/app-1".to_string()], Path::new("/repo"));
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["b.rs", "rel/c.rs", "src/a.rs"]);
    }
}
