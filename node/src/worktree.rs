//! Isolation: one git worktree per task, on the branch `ccm/<short-id>` (SPEC section 5).
//!
//! - [`prepare`] creates a task's worktree from its base branch, after a fast-forward of the
//!   base from its upstream when it has one, then copies the project's listed files (such as
//!   `.env`) in and runs its setup command. A retry of the task gets the same worktree back.
//! - [`summarize`] says what the task did: diff stat, commits, commits whose subject lacks the
//!   short id, uncommitted changes.
//! - [`cleanup`] removes the worktree and the branch when that loses nothing, and says what it
//!   kept and why.
//!
//! Everything here is synchronous and runs `git` (and `sh` for the setup command) as child
//! processes; the caller runs it in `spawn_blocking`. Every git command runs with `-C <dir>`,
//! without a terminal prompt and without the `GIT_DIR`-like variables of the environment, so
//! the daemon behaves the same wherever it was started from. It needs git 2.36 or later
//! (`%(worktreepath)` of `for-each-ref`); overlapping adds were tested with git 2.47
//! (`preparations_and_cleanups_in_one_repository_overlap_safely`).
//!
//! **Invariant**: ccm works offline. Updating the base branch from its remote is best effort:
//! a failure (no network, a diverged base, a remote that is gone) or a remote that does not
//! answer within [`REMOTE_UPDATE_TIMEOUT`] is logged and the local base is used.
//!
//! **Invariant**: within the process, a command that removes worktree bookkeeping from a
//! repository (`worktree prune`, `worktree remove`, `branch -D`) never overlaps another that
//! changes it: a prune deletes an entry of `.git/worktrees` that an add is still writing, and
//! the last remove deletes `.git/worktrees` itself under an add. Adds of distinct worktrees on
//! distinct branches (`worktree add`, with the branch it creates) may overlap one another: git
//! keeps them apart (each takes its own directory with `mkdir`, its own ref lock). A per-
//! repository read-write lock says which is which: [`prepare`] holds it shared for its look-up
//! and `worktree add`, [`cleanup`] holds it exclusive for each removal only; copying files in
//! and the setup command run outside it.
//!
//! **Invariant**: git writes a new worktree's administrative files in place, so a command that
//! reads every worktree's (`for-each-ref` of `%(worktreepath)`, `worktree add`, `branch -D`)
//! can die while another worktree is being added (`fatal: failed to read
//! .git/worktrees/<name>/commondir`). Such a failure changed nothing, except that `worktree add
//! -b` may have created its branch: [`git`] runs the command again, and [`prepare`] looks again
//! before another add.
//!
//! **Invariant**: cleanup never deletes work. A worktree with uncommitted changes and a branch
//! with commits that are not in the base branch are kept, with a note saying why; history is
//! never rewritten.
//!
//! **Boundary**: nothing here knows tasks, the store or tmux; callers pass paths and names.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Builds a `&[&OsStr]` from strings, paths and owned values alike.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        [$(AsRef::<OsStr>::as_ref(&$arg)),*]
    };
}

/// How long a `git pull` or `git fetch` of the base branch may take before it is abandoned.
pub const REMOTE_UPDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most of a failed setup command's output kept in [`WorktreeError::Setup`] (its tail).
const SETUP_OUTPUT_LIMIT: usize = 16 * 1024;

/// Name of the setup command's log, in the worktree's administrative git directory (so it is
/// never an untracked file of the worktree, and goes away with it).
const SETUP_LOG: &str = "ccm-setup.log";

/// Variables that would point git somewhere other than `-C <dir>` when the daemon was started
/// from inside a git hook.
pub(crate) const INHERITED_GIT_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
];

/// Name of a worktree's own excludes file, in its administrative git directory (see
/// [`keep_out_of_commits`]).
pub const EXCLUDE_FILE: &str = "ccm-exclude";

/// How many paths a "kept: uncommitted changes" note names before it stops.
const NOTE_PATHS: usize = 5;

/// Errors of worktree preparation, inspection and cleanup.
#[derive(Debug, thiserror::Error)]
pub enum WorktreeError {
    /// A git command exited unsuccessfully.
    #[error("git {args} in {} failed: {stderr}", dir.display())]
    Git { args: String, dir: PathBuf, stderr: String },
    /// A command (git or the setup shell) could not be started.
    #[error("cannot run {command} in {}: {source}", dir.display())]
    Spawn {
        command: String,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A git command that talks to a remote did not finish in time.
    #[error("git {args} in {} timed out after {}s", dir.display(), after.as_secs())]
    TimedOut { args: String, dir: PathBuf, after: Duration },
    /// The setup command exited unsuccessfully; `output` is its stdout and stderr, interleaved
    /// (the tail when it is long).
    #[error("setup command `{command}` failed ({}): {output}", describe_exit(*.status))]
    Setup { command: String, status: Option<i32>, output: String },
    /// A file or directory could not be read, created or resolved.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file listed in `copy_files` could not be copied into the worktree.
    #[error("cannot copy `{file}` into {}: {source}", dest.display())]
    Copy {
        file: String,
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The task's short id cannot be used in a branch name and a directory name.
    #[error("task short id `{short_id}` is not usable in a branch name: use letters, digits, `-` and `_`")]
    InvalidShortId { short_id: String },
    /// An entry of `copy_files` is absolute, leaves the repository or names `.git`.
    #[error("copy file `{file}` is not a relative path inside the repository")]
    InvalidCopyPath { file: String },
    /// The base branch does not exist as a local branch.
    #[error("base branch `{branch}` does not exist in {}", repo.display())]
    UnknownBaseBranch { repo: PathBuf, branch: String },
    /// The worktree's path is taken by something that is not the task's worktree.
    #[error("{} already exists and is not the worktree of branch {branch}", path.display())]
    PathOccupied { path: PathBuf, branch: String },
    /// The worktree to summarize does not exist.
    #[error("worktree {} does not exist", path.display())]
    Missing { path: PathBuf },
}

/// What to prepare.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// The registered checkout (repository top level).
    pub repo: &'a Path,
    /// Branch the task starts from, e.g. "main".
    pub base_branch: &'a str,
    /// The task's short id (8 hex chars): the branch is `ccm/<short_id>`.
    pub short_id: &'a str,
    /// Directory under which worktrees are created (`<root>/<repo-dir-name>-<short_id>`).
    pub root: &'a Path,
    /// Files (paths relative to the repository root, e.g. ".env") copied into a new worktree
    /// when they exist; missing ones are skipped. A directory is copied with its contents.
    pub copy_files: &'a [String],
    /// Shell command run with `sh -c` in a new worktree after the copy; a non-zero exit is an
    /// error carrying its output.
    pub setup: Option<&'a str>,
}

/// A task's worktree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worktree {
    /// Absolute path of the worktree.
    pub path: PathBuf,
    /// The task's branch, `ccm/<short_id>`.
    pub branch: String,
    /// Commit the branch started from.
    pub base_commit: String,
    /// The branch the task started from.
    pub base_branch: String,
}

/// What `tasks.worktree` holds while a task's worktree exists: the worktree and the checkout it
/// was made from. Read leniently (`Store::worktree`): fields it does not know are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWorktree {
    /// The checkout of the task's repository (a registered context).
    pub repo: PathBuf,
    pub worktree: Worktree,
}

/// Creates the task's worktree, or returns the existing one (idempotent: retries of a task
/// reuse it, setup does not run again).
///
/// Before creating: when the base branch has an upstream remote, brings it up to date with a
/// fast-forward only (`git pull --ff-only` when the base is checked out in the main checkout,
/// else `git fetch <remote> <base>:<base>`); a failure to update (offline, diverged) is
/// logged with `tracing::warn` and the local base is used — never fatal, ccm works offline.
///
/// When the branch survives but its worktree is gone (a cleanup kept the branch), a new
/// worktree is created on the branch; being new, it gets the copy and the setup.
///
/// A failed checkout, copy or setup removes the new worktree again (and the branch, when it
/// was created by this call), so a retry starts clean.
///
/// For a new task that is two git commands under the repository's lock, held shared
/// (`for-each-ref`, then `worktree add`, which checks the files out and runs the
/// `post-checkout` hook); `worktree prune` runs, exclusive, only when a registration whose
/// directory is gone is in the way.
pub fn prepare(spec: &Spec) -> Result<Worktree, WorktreeError> {
    check_short_id(spec.short_id)?;
    let copy_files = checked_copy_paths(spec.copy_files)?;
    let repo = canonical(spec.repo)?;
    let branch = format!("ccm/{}", spec.short_id);
    let path = worktree_path(&repo, spec.root, spec.short_id)?;

    let lock = repository_lock(&repo);
    let (worktree, branch_is_new) = match register(&lock, &repo, spec, &branch, &path)? {
        Registered::Existing(worktree) => {
            tracing::debug!(path = %worktree.path.display(), %branch, "reusing the task's worktree");
            return Ok(worktree);
        }
        Registered::New { worktree, branch_is_new } => (worktree, branch_is_new),
    };
    tracing::info!(
        path = %path.display(),
        %branch,
        base_commit = %worktree.base_commit,
        new_branch = branch_is_new,
        "created the task's worktree"
    );

    // Outside the lock: only this worktree's directory changes from here on, as when the agent
    // works in it.
    if let Err(error) = populate(&repo, &path, &copy_files, spec.copy_files, spec.setup) {
        let _git = lock.exclusive();
        remove_failed(&repo, &path, &branch, branch_is_new);
        return Err(error);
    }
    Ok(worktree)
}

/// Keeps `files` (ccm's own, inside the worktree at `worktree` of the checkout `repo`) out of
/// whatever git command runs in that worktree (`git add -A` included), and so out of its
/// branch, its diff and its status, without changing what git sees in the main checkout or in
/// other worktrees.
///
/// Untracked files are ignored by an exclude file of this worktree alone, [`EXCLUDE_FILE`] in
/// its administrative directory, named by `core.excludesFile` in the worktree's own config
/// (`config.worktree`; this needs `extensions.worktreeConfig` in the repository's config, set
/// once). That setting takes the place of the user's global excludes file, so the file starts
/// with a copy of it. Tracked files get the skip-worktree bit in the worktree's own index.
/// Idempotent.
pub fn keep_out_of_commits(
    repo: &Path,
    worktree: &Path,
    files: &[&Path],
) -> Result<(), WorktreeError> {
    let relative: Vec<&Path> = files.iter().filter_map(|f| f.strip_prefix(worktree).ok()).collect();
    if relative.is_empty() {
        return Ok(());
    }
    let mut ls_files = args!["ls-files", "-z", "--"].to_vec();
    ls_files.extend(relative.iter().map(|p| p.as_os_str()));
    let tracked_list = git(worktree, &ls_files)?;
    let tracked: Vec<&str> = tracked_list.split('\0').filter(|p| !p.is_empty()).collect();
    if !tracked.is_empty() {
        let mut skip = args!["update-index", "--skip-worktree", "--"].to_vec();
        skip.extend(tracked.iter().map(OsStr::new));
        git(worktree, &skip)?;
    }

    let git_dir = PathBuf::from(git(worktree, &args!["rev-parse", "--absolute-git-dir"])?.trim());
    let exclude = git_dir.join(EXCLUDE_FILE);
    let mut text = String::from("# the user's global excludes, copied by ccm\n");
    if let Some(global) = global_excludes_file(repo)? {
        // Missing or unreadable: git would ignore it too.
        text.push_str(&fs::read_to_string(global).unwrap_or_default());
        text.push('\n');
    }
    text.push_str("# ccm's hook settings: not the agent's work\n");
    for path in relative.iter().filter(|p| !tracked.iter().any(|t| Path::new(t) == **p)) {
        text.push('/');
        for c in path.to_string_lossy().chars() {
            if matches!(c, '*' | '?' | '[' | '\\' | '!' | '#' | ' ') {
                text.push('\\');
            }
            text.push(c);
        }
        text.push('\n');
    }
    fs::write(&exclude, text)
        .map_err(|source| WorktreeError::Io { path: exclude.clone(), source })?;

    let enabled =
        git_maybe(repo, &args!["config", "--local", "--bool", "extensions.worktreeConfig"])?;
    if enabled.as_deref().map(str::trim) != Some("true") {
        // Written once per repository; the lock keeps this process's writers of its config apart.
        let lock = repository_lock(&canonical(repo)?);
        let _git = lock.exclusive();
        git(repo, &args!["config", "--local", "extensions.worktreeConfig", "true"])?;
    }
    git(worktree, &args!["config", "--worktree", "core.excludesFile", &exclude])?;
    Ok(())
}

/// The excludes file git reads for `repo` apart from a worktree's own setting:
/// `core.excludesFile` of the repository, user or system config, else git's default
/// (`$XDG_CONFIG_HOME/git/ignore`, `~/.config/git/ignore`).
fn global_excludes_file(repo: &Path) -> Result<Option<PathBuf>, WorktreeError> {
    for scope in ["--local", "--global", "--system"] {
        if let Some(path) =
            git_maybe(repo, &args!["config", scope, "--path", "--get", "core.excludesFile"])?
        {
            return Ok(Some(PathBuf::from(path.trim())));
        }
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    Ok(config.map(|c| c.join("git/ignore")))
}

/// One commit of a task's branch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Full commit id.
    pub sha: String,
    /// First line of the commit message.
    pub subject: String,
}

/// What a task did in its worktree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkSummary {
    /// `git diff --stat` of the branch against its base commit, plus uncommitted changes.
    pub diff_stat: String,
    /// Files changed since the base commit (committed or not; untracked files are not counted).
    pub files_changed: u32,
    /// Lines added since the base commit.
    pub insertions: u32,
    /// Lines removed since the base commit.
    pub deletions: u32,
    /// Commits on the branch since the base commit, oldest first.
    pub commits: Vec<Commit>,
    /// Commits whose subject does not contain the task's short id (reported, history is never
    /// rewritten).
    pub commits_missing_id: Vec<Commit>,
    /// Uncommitted changes (`git status --porcelain` lines).
    pub uncommitted: Vec<String>,
}

/// Summarizes the work in a task's worktree: the diff against the base commit (committed and
/// uncommitted), the branch's commits, and which of them do not name the short id (compared
/// without regard to case).
pub fn summarize(worktree: &Worktree, short_id: &str) -> Result<WorkSummary, WorktreeError> {
    let dir = worktree.path.as_path();
    if !dir.is_dir() {
        return Err(WorktreeError::Missing { path: worktree.path.clone() });
    }
    let base = worktree.base_commit.as_str();
    let range = format!("{base}..refs/heads/{}", worktree.branch);

    let log = git(dir, &args!["log", "--reverse", "--format=%H%x00%s", &range, "--"])?;
    let commits: Vec<Commit> = log
        .lines()
        .filter_map(|line| line.split_once('\0'))
        .map(|(sha, subject)| Commit { sha: sha.to_owned(), subject: subject.to_owned() })
        .collect();
    let id = short_id.to_lowercase();
    let commits_missing_id =
        commits.iter().filter(|c| !c.subject.to_lowercase().contains(&id)).cloned().collect();

    // Without `--cached`, `git diff <commit>` compares the working tree with the commit: the
    // branch's commits and the uncommitted changes to tracked files together.
    let diff_stat = git(dir, &args!["diff", "--no-ext-diff", "--no-color", "--stat", base, "--"])?;
    let numstat = git(dir, &args!["diff", "--no-ext-diff", "--numstat", base, "--"])?;
    let (mut files_changed, mut insertions, mut deletions) = (0u32, 0u32, 0u32);
    for line in numstat.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.split('\t');
        // Binary files show `-` for both counts; they count as a changed file only.
        let added = fields.next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
        let removed = fields.next().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
        files_changed = files_changed.saturating_add(1);
        insertions = insertions.saturating_add(added);
        deletions = deletions.saturating_add(removed);
    }

    let uncommitted = status(dir)?.iter().map(StatusEntry::line).collect();
    Ok(WorkSummary {
        diff_stat: diff_stat.trim_end().to_owned(),
        files_changed,
        insertions,
        deletions,
        commits,
        commits_missing_id,
        uncommitted,
    })
}

/// What [`cleanup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleanup {
    /// The worktree is gone (removed now, or already gone).
    pub worktree_removed: bool,
    /// The branch is gone (deleted now, or already gone).
    pub branch_deleted: bool,
    /// Human-readable reasons for what was kept, e.g.
    /// "branch ccm/3f2a9c41 kept: 2 commits not merged into main".
    pub notes: Vec<String>,
}

/// Removes the worktree and its branch when that loses nothing: a worktree with uncommitted
/// changes (tracked or untracked, ignoring files listed in `copy_files`) is kept; a branch
/// with commits not merged into the base branch is kept. Says what it kept and why.
///
/// Only untracked copies of the listed files are ignored: a listed file that git tracks and
/// that differs from the commit may hold the agent's edits, so it counts as a change. A
/// locked worktree, or one whose HEAD has left the task's branch, is kept too. A commit counts
/// as merged when the local base branch contains it or an equivalent patch (`git cherry`), so
/// rebase merges count; a merge done only on the remote is not seen until the base is pulled.
pub fn cleanup(
    repo: &Path,
    worktree: &Worktree,
    copy_files: &[String],
) -> Result<Cleanup, WorktreeError> {
    let copy_files = checked_copy_paths(copy_files)?;
    let repo = canonical(repo)?;
    let lock = repository_lock(&repo);
    let mut result = Cleanup::default();
    let branch = worktree.branch.as_str();
    let branch_ref = format!("refs/heads/{branch}");
    let base_ref = format!("refs/heads/{}", worktree.base_branch);

    // Look-ups run without the lock: only this task's worktree and branch matter here, and
    // nothing else changes them.
    let wanted = comparable(&worktree.path);
    let mut listed = list_worktrees(&repo)?;
    let stale = |entry: &ListedWorktree| {
        (comparable(&entry.path) == wanted || entry.branch.as_deref() == Some(&branch_ref))
            && !entry.path.join(".git").exists()
    };
    if listed.iter().any(stale) {
        // Deleted by hand: forget it, so the branch counts as checked out nowhere.
        let _git = lock.exclusive();
        git(&repo, &args!["worktree", "prune"])?;
        listed = list_worktrees(&repo)?;
    }
    match listed.iter().find(|entry| comparable(&entry.path) == wanted) {
        Some(entry) => match worktree_keep_reason(entry, &branch_ref, &copy_files)? {
            Some(reason) => {
                result.notes.push(format!("worktree {} kept: {reason}", entry.path.display()));
            }
            None => {
                let _git = lock.exclusive();
                git(&repo, &args!["worktree", "remove", "--force", &entry.path])?;
                tracing::info!(path = %entry.path.display(), "removed the task's worktree");
                result.worktree_removed = true;
            }
        },
        None if fs::symlink_metadata(&worktree.path).is_ok() => result.notes.push(format!(
            "worktree {} kept: it is not a worktree of {}",
            worktree.path.display(),
            repo.display()
        )),
        None => result.worktree_removed = true,
    }

    let refs = branches(&repo, &[&branch_ref, &base_ref])?;
    let Some(task) = refs.iter().find(|b| b.full_ref == branch_ref) else {
        result.branch_deleted = true;
        return Ok(result);
    };
    let reason = match &task.worktree {
        Some(path) => Some(format!("it is checked out in {}", path.display())),
        None if !refs.iter().any(|b| b.full_ref == base_ref) => {
            Some(format!("base branch {} does not exist", worktree.base_branch))
        }
        None => unmerged_reason(&repo, branch, &worktree.base_branch)?,
    };
    match reason {
        Some(reason) => result.notes.push(format!("branch {branch} kept: {reason}")),
        None => {
            // `-D`: merged-ness was checked against the base branch just above; `-d` would
            // check it against HEAD or the upstream instead.
            let _git = lock.exclusive();
            git(&repo, &args!["branch", "-D", "--quiet", branch])?;
            tracing::info!(%branch, "deleted the task's branch");
            result.branch_deleted = true;
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// The janitor's view: every task branch of a repository

/// A task's branch (`ccm/<short id>`) left in a repository, and its worktree if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskWork {
    /// The task's short id, from the branch name.
    pub short_id: String,
    /// `ccm/<short id>`.
    pub branch: String,
    /// The worktree the branch is checked out in (never the main checkout's).
    pub worktree: Option<PathBuf>,
}

/// The `ccm/*` branches of `repo`, with their worktrees (a worktree whose directory is gone is
/// forgotten first, so it counts as none).
pub fn task_work(repo: &Path) -> Result<Vec<TaskWork>, WorktreeError> {
    let repo = canonical(repo)?;
    if list_worktrees(&repo)?.iter().any(|e| !e.path.join(".git").exists() && e.path != repo) {
        prune(&repository_lock(&repo), &repo)?;
    }
    let out = git(
        &repo,
        &args!["for-each-ref", "--format=%(refname)%00%(worktreepath)", "refs/heads/ccm/"],
    )?;
    let main = comparable(&repo);
    Ok(out
        .lines()
        .filter_map(|line| {
            let (full_ref, path) = line.split_once('\0')?;
            let branch = full_ref.strip_prefix("refs/heads/")?.to_owned();
            let short_id = branch.strip_prefix("ccm/")?.to_owned();
            let worktree = (!path.is_empty()).then(|| PathBuf::from(path));
            Some(TaskWork { short_id, branch, worktree })
        })
        // A task branch checked out in the main checkout is the operator's to move.
        .filter(|work| work.worktree.as_deref().is_none_or(|p| comparable(p) != main))
        .collect())
}

/// Why removing `work` would lose something: commits on its branch that `target` lacks (by
/// ancestry, `git rev-list --count`, or by patch, `git cherry`), or uncommitted changes in its
/// worktree; `None` when it loses nothing. A missing target keeps the branch.
pub fn work_keep_reason(
    repo: &Path,
    work: &TaskWork,
    target: &str,
) -> Result<Option<String>, WorktreeError> {
    let repo = canonical(repo)?;
    if let Some(path) = &work.worktree {
        let branch_ref = format!("refs/heads/{}", work.branch);
        if let Some(entry) =
            list_worktrees(&repo)?.into_iter().find(|e| comparable(&e.path) == comparable(path))
        {
            if let Some(reason) = worktree_keep_reason(&entry, &branch_ref, &[])? {
                return Ok(Some(format!("worktree {} has {reason}", path.display())));
            }
        }
    }
    let target_ref = format!("refs/heads/{target}");
    if branches(&repo, &[&target_ref])?.is_empty() {
        return Ok(Some(format!("target branch {target} does not exist")));
    }
    let ahead = git(
        &repo,
        &args!["rev-list", "--count", format!("{target_ref}..refs/heads/{}", work.branch)],
    )?;
    if ahead.trim() == "0" {
        return Ok(None);
    }
    unmerged_reason(&repo, &work.branch, target)
}

/// Removes `work`'s worktree (with whatever it holds) and its branch, under the repository's
/// lock: the caller decided that nothing of value is lost.
pub fn remove_work(repo: &Path, work: &TaskWork) -> Result<(), WorktreeError> {
    let repo = canonical(repo)?;
    let lock = repository_lock(&repo);
    let _git = lock.exclusive();
    if let Some(path) = &work.worktree {
        if path.exists() {
            git(&repo, &args!["worktree", "remove", "--force", "--force", path])?;
        } else {
            git(&repo, &args!["worktree", "prune"])?;
        }
    }
    git(&repo, &args!["branch", "-D", "--quiet", &work.branch])?;
    Ok(())
}

/// Bytes a directory tree takes (files only; symbolic links are not followed).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Preparation

/// Accepts short ids that are safe in a branch name, a directory name and a git argument.
fn check_short_id(short_id: &str) -> Result<(), WorktreeError> {
    let usable = !short_id.is_empty()
        && short_id.len() <= 64
        && !short_id.starts_with('-')
        && short_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if usable {
        Ok(())
    } else {
        Err(WorktreeError::InvalidShortId { short_id: short_id.to_owned() })
    }
}

/// Normalizes the `copy_files` entries to relative paths that stay inside the repository.
fn checked_copy_paths(files: &[String]) -> Result<Vec<PathBuf>, WorktreeError> {
    files
        .iter()
        .map(|file| {
            let invalid = || WorktreeError::InvalidCopyPath { file: file.clone() };
            let mut clean = PathBuf::new();
            for component in Path::new(file).components() {
                match component {
                    Component::Normal(part) => clean.push(part),
                    Component::CurDir => {}
                    Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                        return Err(invalid())
                    }
                }
            }
            // Copying over the worktree's `.git` file would cut it off from the repository.
            if clean.as_os_str().is_empty() || clean.starts_with(".git") {
                return Err(invalid());
            }
            Ok(clean)
        })
        .collect()
}

/// One lock per repository (canonical path) for the whole process (see [`RepositoryLock`]).
static REPOSITORY_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<RepositoryLock>>>> =
    LazyLock::new(Mutex::default);

/// The repository's lock (see [`REPOSITORY_LOCKS`]); `repo` is canonical.
pub(crate) fn repository_lock(repo: &Path) -> Arc<RepositoryLock> {
    let mut locks = REPOSITORY_LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    locks.entry(repo.to_owned()).or_default().clone()
}

/// A read-write lock over one repository's worktree bookkeeping: `worktree add` (with the
/// branch it creates) holds it shared, so adds overlap; `worktree prune`, `worktree remove` and
/// `branch -D` hold it exclusive, since one overlapping an add corrupts `.git/worktrees/*`
/// (see the module's invariants).
///
/// Adds go first: an exclusive holder waits while any add holds the lock or waits for it, so
/// a task's preparation never waits behind a queue of cleanups, only behind the one removal
/// in progress. Cleanups wait while tasks are queued anyway (the runtime), so they are not
/// starved for long.
///
/// It guards no data, so a panic while it was held left nothing to repair (poisoning is
/// ignored).
#[derive(Default)]
pub(crate) struct RepositoryLock {
    state: Mutex<LockState>,
    changed: Condvar,
}

#[derive(Default)]
struct LockState {
    /// Adds holding the lock.
    shared: usize,
    /// Adds waiting for it.
    shared_waiting: usize,
    /// Whether a removal holds it.
    exclusive: bool,
}

impl RepositoryLock {
    fn state(&self) -> MutexGuard<'_, LockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, state: MutexGuard<'a, LockState>) -> MutexGuard<'a, LockState> {
        self.changed.wait(state).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the lock, shared: to add a worktree.
    pub(crate) fn shared(&self) -> Held<'_> {
        let mut state = self.state();
        state.shared_waiting += 1;
        while state.exclusive {
            state = self.wait(state);
        }
        state.shared_waiting -= 1;
        state.shared += 1;
        Held { lock: self, exclusive: false }
    }

    /// Waits for the lock, exclusive: to prune, remove a worktree or delete a branch.
    pub(crate) fn exclusive(&self) -> Held<'_> {
        let mut state = self.state();
        while state.exclusive || state.shared > 0 || state.shared_waiting > 0 {
            state = self.wait(state);
        }
        state.exclusive = true;
        Held { lock: self, exclusive: true }
    }
}

/// A hold of a [`RepositoryLock`], released when dropped.
pub(crate) struct Held<'a> {
    lock: &'a RepositoryLock,
    exclusive: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut state = self.lock.state();
        if self.exclusive {
            state.exclusive = false;
        } else {
            state.shared -= 1;
        }
        drop(state);
        self.lock.changed.notify_all();
    }
}

pub(crate) fn canonical(path: &Path) -> Result<PathBuf, WorktreeError> {
    fs::canonicalize(path).map_err(|source| WorktreeError::Io { path: path.to_owned(), source })
}

/// `<root>/<repo-dir-name>-<short_id>`, absolute; creates the root when missing.
pub(crate) fn worktree_path(
    repo: &Path,
    root: &Path,
    short_id: &str,
) -> Result<PathBuf, WorktreeError> {
    fs::create_dir_all(root)
        .map_err(|source| WorktreeError::Io { path: root.to_owned(), source })?;
    let root = canonical(root)?;
    let repo_name = repo.file_name().map(|n| n.to_string_lossy().into_owned());
    let repo_name = repo_name.unwrap_or_else(|| "repo".to_owned());
    Ok(root.join(format!("{repo_name}-{short_id}")))
}

/// What [`register`] found or made.
enum Registered {
    /// The task's branch is checked out in a worktree already (a retry of the task).
    Existing(Worktree),
    /// A worktree was added (its files checked out) on the task's branch; `branch_is_new` when
    /// the branch was created with it.
    New { worktree: Worktree, branch_is_new: bool },
}

/// How often a git command that died reading another worktree's administrative files while
/// that worktree was being added is run again (see the module's invariants).
const TRANSIENT_RETRIES: usize = 5;

/// How long to wait before running such a command again.
const TRANSIENT_PAUSE: Duration = Duration::from_millis(4);

/// The part of [`prepare`] that changes the repository's worktree bookkeeping: finds the
/// task's worktree, or adds one on the task's branch, creating the branch from the (updated)
/// base when it does not exist. The look-up and the add hold the repository's lock shared;
/// a prune holds it exclusive.
///
/// One `git for-each-ref` answers what used to take five commands (is the branch there, where
/// is it checked out, the base's commit and upstream, is the base checked out here).
/// `git worktree prune` runs only when that answer or `worktree add` shows a registration
/// whose directory is gone; the look-up and the add are then tried once more. An add that
/// died while another worktree was being added is tried again after a new look-up, since it
/// may have created the branch before it died.
///
/// When it fails after creating the branch, the branch is deleted again, so a retry starts
/// clean.
fn register(
    lock: &RepositoryLock,
    repo: &Path,
    spec: &Spec,
    branch: &str,
    path: &Path,
) -> Result<Registered, WorktreeError> {
    // Decided by the first look: an add that failed after creating the branch must not make
    // the next look think the branch was there before.
    let mut branch_is_new = None;
    let registered = look_up_or_add(lock, repo, spec, branch, path, &mut branch_is_new);
    if registered.is_err() && branch_is_new == Some(true) {
        let _git = lock.exclusive();
        // Fails, harmlessly, when no add got as far as creating it.
        if git(repo, &args!["branch", "-D", "--quiet", branch]).is_ok() {
            tracing::debug!(%branch, "deleted the branch of a worktree that could not be added");
        }
    }
    registered
}

fn look_up_or_add(
    lock: &RepositoryLock,
    repo: &Path,
    spec: &Spec,
    branch: &str,
    path: &Path,
    branch_is_new: &mut Option<bool>,
) -> Result<Registered, WorktreeError> {
    let branch_ref = format!("refs/heads/{branch}");
    let base_ref = format!("refs/heads/{}", spec.base_branch);
    let base_branch = spec.base_branch.to_owned();
    let mut pruned = false;
    let mut transient = 0;
    loop {
        let git_lock = lock.shared();
        let mut refs = branches(repo, &[&branch_ref, &base_ref])?;
        let base = refs.iter().position(|b| b.full_ref == base_ref).map(|i| refs.swap_remove(i));
        let task = refs.into_iter().find(|b| b.full_ref == branch_ref);
        let new = *branch_is_new.get_or_insert(task.is_none());

        if let Some(checked_out) = task.as_ref().and_then(|t| t.worktree.clone()) {
            // A registration whose directory was deleted by hand is forgotten first, so the
            // branch can get a new worktree.
            if pruned || checked_out.join(".git").exists() {
                let base_commit = recorded_base(repo, branch, spec.base_branch)?;
                let worktree = Worktree {
                    path: checked_out,
                    branch: branch.to_owned(),
                    base_commit,
                    base_branch,
                };
                return Ok(Registered::Existing(worktree));
            }
            drop(git_lock);
            prune(lock, repo)?;
            pruned = true;
            continue;
        }

        if fs::symlink_metadata(path).is_ok() {
            return Err(WorktreeError::PathOccupied {
                path: path.to_owned(),
                branch: branch.to_owned(),
            });
        }
        let added = match &task {
            None => new_base(repo, spec.base_branch, base.as_ref()).and_then(|commit| {
                git_once(repo, &args!["worktree", "add", "--quiet", "-b", branch, path, commit])
                    .map(|_| commit)
            }),
            Some(_) => recorded_base(repo, branch, spec.base_branch).and_then(|base_commit| {
                git_once(repo, &args!["worktree", "add", "--quiet", path, branch])
                    .map(|_| base_commit)
            }),
        };
        drop(git_lock);
        match added {
            Ok(base_commit) => {
                let worktree = Worktree {
                    path: path.to_owned(),
                    branch: branch.to_owned(),
                    base_commit,
                    base_branch,
                };
                return Ok(Registered::New { worktree, branch_is_new: new });
            }
            Err(error) if is_transient(&error) && transient < TRANSIENT_RETRIES => {
                transient += 1;
                tracing::debug!(%error, "another worktree was being added; looking again");
                thread::sleep(TRANSIENT_PAUSE);
            }
            // Perhaps a registration whose directory is gone holds the path or the branch.
            Err(error @ WorktreeError::Git { .. }) if !pruned => {
                tracing::debug!(%error, "cannot add the worktree; pruning and trying again");
                prune(lock, repo)?;
                pruned = true;
            }
            Err(error) => return Err(error),
        }
    }
}

/// `git worktree prune`, holding the repository's lock exclusive.
fn prune(lock: &RepositoryLock, repo: &Path) -> Result<(), WorktreeError> {
    let _git = lock.exclusive();
    git(repo, &args!["worktree", "prune"]).map(drop)
}

/// A local branch, as `git for-each-ref` describes it.
#[derive(Debug)]
struct Branch {
    /// `refs/heads/<name>`.
    full_ref: String,
    /// The commit it points to (`None` when it points to something else, such as a tag).
    commit: Option<String>,
    /// The worktree it is checked out in (the main one included), if any.
    worktree: Option<PathBuf>,
    /// `(remote, ref on the remote)` when it has an upstream that git can fetch, as
    /// `git status` sees it.
    upstream: Option<(String, String)>,
}

/// The listed local branches (full refs) that exist, in one `git for-each-ref`.
fn branches(repo: &Path, full_refs: &[&str]) -> Result<Vec<Branch>, WorktreeError> {
    let format = "--format=%(refname)%00%(objecttype)%00%(objectname)%00%(worktreepath)\
                  %00%(upstream:remotename)%00%(upstream:remoteref)";
    let mut command = vec![OsStr::new("for-each-ref"), OsStr::new(format)];
    command.extend(full_refs.iter().map(OsStr::new));
    let out = git(repo, &command)?;
    let non_empty = |field: &str| (!field.is_empty()).then(|| field.to_owned());
    Ok(out
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\0').collect();
            let [full_ref, kind, sha, worktree, remote, merge] = fields[..] else { return None };
            // Patterns also match refs below them (`refs/heads/main/x`): keep exact matches.
            full_refs.contains(&full_ref).then(|| Branch {
                full_ref: full_ref.to_owned(),
                commit: (kind == "commit").then(|| sha.to_owned()),
                worktree: non_empty(worktree).map(PathBuf::from),
                upstream: non_empty(remote).zip(non_empty(merge)),
            })
        })
        .collect())
}

/// The commit a new task branch starts from: the base branch, after a fast-forward from its
/// upstream when it has one.
fn new_base(repo: &Path, base: &str, found: Option<&Branch>) -> Result<String, WorktreeError> {
    let Some(found) = found else {
        return Err(WorktreeError::UnknownBaseBranch {
            repo: repo.to_owned(),
            branch: base.to_owned(),
        });
    };
    let checked_out_here =
        found.worktree.as_deref().is_some_and(|at| comparable(at) == comparable(repo));
    let updated = match &found.upstream {
        // A local upstream (`.`) has nothing to fetch.
        Some((remote, merge)) if remote != "." => {
            update_base(repo, base, remote, merge, checked_out_here);
            true
        }
        _ => false,
    };
    match &found.commit {
        Some(commit) if !updated => Ok(commit.clone()),
        _ => resolve_branch(repo, base),
    }
}

/// Brings the base branch up to date with its upstream, fast-forward only. Never fails: ccm
/// works offline, so every problem is a warning and the local branch is used as it is.
fn update_base(repo: &Path, base: &str, remote: &str, merge: &str, checked_out_here: bool) {
    let base_ref = format!("refs/heads/{base}");
    let result = if checked_out_here {
        // Only updates what the main checkout already shows: a dirty tree that the update
        // would touch makes git refuse, which is a warning like any other.
        git_remote(repo, &args!["pull", "--quiet", "--ff-only", "--no-rebase", remote, merge])
    } else {
        // A refspec without `+` only ever fast-forwards the local branch.
        git_remote(repo, &args!["fetch", "--quiet", remote, format!("{merge}:{base_ref}")])
    };
    match result {
        Ok(()) => tracing::debug!(repo = %repo.display(), base_branch = base, %remote,
            "base branch is up to date with its upstream"),
        Err(error) => tracing::warn!(repo = %repo.display(), base_branch = base, %remote, %error,
            "cannot fast-forward the base branch from its upstream; using the local branch"),
    }
}

/// The commit a local branch points to.
fn resolve_branch(repo: &Path, branch: &str) -> Result<String, WorktreeError> {
    let spec = format!("refs/heads/{branch}^{{commit}}");
    match git_maybe(repo, &args!["rev-parse", "--verify", "--quiet", &spec])? {
        Some(sha) => Ok(sha.trim().to_owned()),
        None => Err(WorktreeError::UnknownBaseBranch {
            repo: repo.to_owned(),
            branch: branch.to_owned(),
        }),
    }
}

/// The commit an existing task branch started from: the creation entry of its reflog, or,
/// when the reflog does not reach back that far, where it forked from the base branch.
fn recorded_base(repo: &Path, branch: &str, base: &str) -> Result<String, WorktreeError> {
    let branch_ref = format!("refs/heads/{branch}");
    let reflog = git(repo, &args!["reflog", "show", "--format=%H%x00%gs", &branch_ref, "--"]);
    if let Ok(reflog) = reflog {
        let created = reflog.lines().last().and_then(|line| line.split_once('\0'));
        if let Some((sha, message)) = created {
            if message.starts_with("branch: Created from") {
                return Ok(sha.to_owned());
            }
        }
    }
    let base_commit = resolve_branch(repo, base)?;
    let fork = git(repo, &args!["merge-base", &base_commit, &branch_ref])?;
    Ok(fork.trim().to_owned())
}

/// Copies the listed files into a new worktree, then runs the setup command there.
fn populate(
    repo: &Path,
    worktree: &Path,
    copy_paths: &[PathBuf],
    copy_files: &[String],
    setup: Option<&str>,
) -> Result<(), WorktreeError> {
    for (relative, file) in copy_paths.iter().zip(copy_files) {
        let from = repo.join(relative);
        let dest = worktree.join(relative);
        let copy_error =
            |source| WorktreeError::Copy { file: file.clone(), dest: dest.clone(), source };
        match fs::metadata(&from) {
            Ok(meta) if meta.is_dir() => copy_dir(&from, &dest).map_err(copy_error)?,
            Ok(_) => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(copy_error)?;
                }
                fs::copy(&from, &dest).map_err(copy_error)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(%file, "file to copy does not exist; skipped");
                continue;
            }
            Err(source) => return Err(WorktreeError::Io { path: from, source }),
        }
        tracing::debug!(%file, dest = %dest.display(), "copied into the worktree");
    }
    match setup {
        Some(command) if !command.trim().is_empty() => run_setup(worktree, command),
        _ => Ok(()),
    }
}

/// Copies a directory's contents; symbolic links inside it are recreated, not followed.
fn copy_dir(source: &Path, dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for entry in fs::read_dir(source)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dest.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(entry.path())?;
            if fs::symlink_metadata(&to).is_ok() {
                fs::remove_file(&to)?;
            }
            std::os::unix::fs::symlink(target, &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// Runs the setup command with `sh -c` in the worktree. Its stdout and stderr go, interleaved,
/// to a log in the worktree's administrative git directory; the log is read back on failure.
/// The command's exit is awaited, not the end of its output, so a background process it
/// leaves running does not hold preparation up.
fn run_setup(worktree: &Path, command: &str) -> Result<(), WorktreeError> {
    let git_dir = git(worktree, &args!["rev-parse", "--absolute-git-dir"])?;
    let log_path = PathBuf::from(git_dir.trim()).join(SETUP_LOG);
    let io_error = |source| WorktreeError::Io { path: log_path.clone(), source };
    let log = fs::File::create(&log_path).map_err(io_error)?;
    let log_for_stderr = log.try_clone().map_err(io_error)?;

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(worktree)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);
    for var in INHERITED_GIT_ENV {
        cmd.env_remove(var);
    }
    tracing::info!(dir = %worktree.display(), %command, "running the setup command");
    let status = cmd.status().map_err(|source| WorktreeError::Spawn {
        command: format!("setup command `{command}`"),
        dir: worktree.to_owned(),
        source,
    })?;
    drop(cmd); // closes this process's copies of the log file
    if status.success() {
        return Ok(());
    }
    let output = fs::read(&log_path).map_err(io_error)?;
    Err(WorktreeError::Setup {
        command: command.to_owned(),
        status: status.code(),
        output: crate::text::tail(String::from_utf8_lossy(&output).trim(), SETUP_OUTPUT_LIMIT),
    })
}

fn describe_exit(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_owned(),
    }
}

/// Undoes a worktree creation whose copy or setup failed. Problems are logged: the error the
/// caller returns is the one that matters.
fn remove_failed(repo: &Path, path: &Path, branch: &str, delete_branch: bool) {
    if let Err(error) = git(repo, &args!["worktree", "remove", "--force", path]) {
        tracing::warn!(path = %path.display(), %error, "cannot remove a half-prepared worktree");
        if let Err(error) = fs::remove_dir_all(path) {
            tracing::warn!(path = %path.display(), %error, "cannot delete a half-prepared worktree");
        }
        let _ = git(repo, &args!["worktree", "prune"]);
    }
    if delete_branch {
        if let Err(error) = git(repo, &args!["branch", "-D", "--quiet", branch]) {
            tracing::warn!(%branch, %error, "cannot delete the branch of a half-prepared worktree");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inspection

/// One entry of `git worktree list --porcelain`.
#[derive(Debug)]
pub(crate) struct ListedWorktree {
    pub(crate) path: PathBuf,
    /// Full ref (`refs/heads/...`); `None` when detached or bare.
    pub(crate) branch: Option<String>,
    /// `Some` (maybe with an empty reason) when locked.
    locked: Option<String>,
}

pub(crate) fn list_worktrees(repo: &Path) -> Result<Vec<ListedWorktree>, WorktreeError> {
    let out = git(repo, &args!["worktree", "list", "--porcelain"])?;
    let mut entries = Vec::new();
    for block in out.split("\n\n") {
        let mut entry: Option<ListedWorktree> = None;
        for line in block.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match (key, entry.as_mut()) {
                ("worktree", _) => {
                    entry = Some(ListedWorktree {
                        path: PathBuf::from(value),
                        branch: None,
                        locked: None,
                    });
                }
                ("branch", Some(e)) => e.branch = Some(value.to_owned()),
                ("locked", Some(e)) => e.locked = Some(value.to_owned()),
                _ => {}
            }
        }
        entries.extend(entry);
    }
    Ok(entries)
}

/// One line of `git status --porcelain`.
#[derive(Debug)]
struct StatusEntry {
    /// The two status letters, e.g. ` M` or `??`.
    code: String,
    path: String,
    /// The original path of a rename or copy.
    from: Option<String>,
}

impl StatusEntry {
    fn line(&self) -> String {
        match &self.from {
            Some(from) => format!("{} {from} -> {}", self.code, self.path),
            None => format!("{} {}", self.code, self.path),
        }
    }

    fn untracked(&self) -> bool {
        self.code == "??"
    }
}

/// The worktree's uncommitted changes, every untracked file listed on its own.
fn status(dir: &Path) -> Result<Vec<StatusEntry>, WorktreeError> {
    let out = git(
        dir,
        &args![
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=none"
        ],
    )?;
    let mut fields = out.split('\0').filter(|f| !f.is_empty());
    let mut entries = Vec::new();
    while let Some(field) = fields.next() {
        let (Some(code), Some(path)) = (field.get(..2), field.get(3..)) else {
            continue;
        };
        // With `-z` a rename or copy is followed by a field holding its original path.
        let from = if code.contains(['R', 'C']) { fields.next().map(str::to_owned) } else { None };
        entries.push(StatusEntry { code: code.to_owned(), path: path.to_owned(), from });
    }
    Ok(entries)
}

/// Why a worktree must be kept, or `None` when removing it loses nothing.
fn worktree_keep_reason(
    entry: &ListedWorktree,
    branch_ref: &str,
    copy_paths: &[PathBuf],
) -> Result<Option<String>, WorktreeError> {
    if let Some(reason) = &entry.locked {
        return Ok(Some(if reason.is_empty() {
            "it is locked".to_owned()
        } else {
            format!("it is locked ({reason})")
        }));
    }
    match entry.branch.as_deref() {
        Some(branch) if branch == branch_ref => {}
        Some(other) => {
            let other = other.strip_prefix("refs/heads/").unwrap_or(other);
            let ours = branch_ref.strip_prefix("refs/heads/").unwrap_or(branch_ref);
            return Ok(Some(format!("its HEAD is on branch {other}, not {ours}")));
        }
        None => return Ok(Some("its HEAD is detached".to_owned())),
    }
    let changes: Vec<StatusEntry> = status(&entry.path)?
        .into_iter()
        .filter(|change| {
            !(change.untracked()
                && copy_paths.iter().any(|c| Path::new(&change.path).starts_with(c)))
        })
        .collect();
    if changes.is_empty() {
        return Ok(None);
    }
    let mut names: Vec<&str> = changes.iter().take(NOTE_PATHS).map(|c| c.path.as_str()).collect();
    if changes.len() > NOTE_PATHS {
        names.push("…");
    }
    Ok(Some(format!(
        "{} ({})",
        count(changes.len(), "uncommitted change", "uncommitted changes"),
        names.join(", ")
    )))
}

/// Why a branch must be kept, or `None` when every commit is in the base branch (which
/// exists).
fn unmerged_reason(repo: &Path, branch: &str, base: &str) -> Result<Option<String>, WorktreeError> {
    let base_ref = format!("refs/heads/{base}");
    // `+` marks a commit whose change the base branch does not have, by ancestry or by patch.
    let cherry = git(repo, &args!["cherry", &base_ref, format!("refs/heads/{branch}")])?;
    let unmerged = cherry.lines().filter(|line| line.starts_with('+')).count();
    Ok((unmerged > 0)
        .then(|| format!("{} not merged into {base}", count(unmerged, "commit", "commits"))))
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A path in the form worktree listings use, for comparison.
fn comparable(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

// ---------------------------------------------------------------------------------------
// Running git

fn git_command(dir: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        // Read-only commands (status, diff) must not take the index lock under a working agent.
        .arg("--no-optional-locks")
        .args(["-c", "advice.detachedHead=false", "-c", "color.ui=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null());
    for var in INHERITED_GIT_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn args_text(args: &[&OsStr]) -> String {
    args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

pub(crate) fn run_git(dir: &Path, args: &[&OsStr]) -> Result<Output, WorktreeError> {
    git_command(dir, args).output().map_err(|source| WorktreeError::Spawn {
        command: format!("git {}", args_text(args)),
        dir: dir.to_owned(),
        source,
    })
}

fn git_failure(dir: &Path, args: &[&OsStr], stdout: &[u8], stderr: &[u8]) -> WorktreeError {
    let stderr = String::from_utf8_lossy(stderr).trim().to_owned();
    let stderr =
        if stderr.is_empty() { String::from_utf8_lossy(stdout).trim().to_owned() } else { stderr };
    WorktreeError::Git { args: args_text(args), dir: dir.to_owned(), stderr }
}

/// Runs git; its stdout on success. A run that died reading another worktree's
/// administrative files while that worktree was being added changed nothing (see the module's
/// invariants) and is run again, up to [`TRANSIENT_RETRIES`] times.
pub(crate) fn git(dir: &Path, args: &[&OsStr]) -> Result<String, WorktreeError> {
    use backon::{BlockingRetryable, ConstantBuilder};
    let backoff =
        ConstantBuilder::default().with_delay(TRANSIENT_PAUSE).with_max_times(TRANSIENT_RETRIES);
    (|| git_once(dir, args))
        .retry(backoff)
        .sleep(thread::sleep)
        .when(is_transient)
        .notify(|error, _| {
            tracing::debug!(%error, "another worktree was being added; running git again");
        })
        .call()
}

/// Whether git died reading another worktree's administrative files, which `worktree add`
/// writes in place (`fatal: failed to read .git/worktrees/<name>/commondir`).
fn is_transient(error: &WorktreeError) -> bool {
    matches!(error, WorktreeError::Git { stderr, .. }
        if stderr.contains("failed to read") && stderr.contains("worktrees/"))
}

/// Runs git once; its stdout on success.
fn git_once(dir: &Path, args: &[&OsStr]) -> Result<String, WorktreeError> {
    let out = run_git(dir, args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(git_failure(dir, args, &out.stdout, &out.stderr))
    }
}

/// Runs a git command whose exit status 1 means "no such thing" (`config --get`,
/// `rev-parse --verify --quiet`, `symbolic-ref --quiet`): `None` then.
pub(crate) fn git_maybe(dir: &Path, args: &[&OsStr]) -> Result<Option<String>, WorktreeError> {
    let out = run_git(dir, args)?;
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(1) => Ok(None),
        _ => Err(git_failure(dir, args, &out.stdout, &out.stderr)),
    }
}

/// Runs a git command that talks to a remote, abandoning it after [`REMOTE_UPDATE_TIMEOUT`].
/// It runs in its own process group so that its helpers (ssh, credential helpers) are stopped
/// with it.
pub(crate) fn git_remote(dir: &Path, args: &[&OsStr]) -> Result<(), WorktreeError> {
    let mut cmd = git_command(dir, args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().map_err(|source| WorktreeError::Spawn {
        command: format!("git {}", args_text(args)),
        dir: dir.to_owned(),
        source,
    })?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    match wait_until(&mut child, Instant::now() + REMOTE_UPDATE_TIMEOUT) {
        Ok(Some(status)) => {
            let stdout = stdout.join().unwrap_or_default();
            let stderr = stderr.join().unwrap_or_default();
            if status.success() {
                Ok(())
            } else {
                Err(git_failure(dir, args, &stdout, &stderr))
            }
        }
        Ok(None) => {
            kill_group(&mut child);
            // The readers finish once the group is gone; they are not waited for, in case a
            // helper escaped the group and still holds the pipes.
            Err(WorktreeError::TimedOut {
                args: args_text(args),
                dir: dir.to_owned(),
                after: REMOTE_UPDATE_TIMEOUT,
            })
        }
        Err(source) => {
            kill_group(&mut child);
            Err(WorktreeError::Spawn {
                command: format!("git {}", args_text(args)),
                dir: dir.to_owned(),
                source,
            })
        }
    }
}

/// Reads a child's pipe to the end on a thread, so a full pipe never blocks the child.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for the child until the deadline; `None` when it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills a child started with `process_group(0)` and everything in its group, then reaps it.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs git in `dir` for a test and returns its trimmed stdout; panics on failure.
    fn run(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn configure(dir: &Path) {
        run(dir, &["config", "user.name", "ccm test"]);
        run(dir, &["config", "user.email", "test@ccm.invalid"]);
        run(dir, &["config", "commit.gpgsign", "false"]);
    }

    /// A repository `<parent>/<name>` on `main` with one commit.
    fn new_repo(parent: &Path, name: &str) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir_all(&dir).expect("create repo dir");
        run(&dir, &["init", "--quiet", "-b", "main"]);
        configure(&dir);
        commit(&dir, "README.md", "hello\n", "initial");
        dir
    }

    /// Writes `file` and commits it; returns the new commit id.
    fn commit(dir: &Path, file: &str, content: &str, message: &str) -> String {
        fs::write(dir.join(file), content).expect("write file");
        run(dir, &["add", "--", file]);
        run(dir, &["commit", "--quiet", "-m", message]);
        run(dir, &["rev-parse", "HEAD"])
    }

    fn spec<'a>(repo: &'a Path, short_id: &'a str, root: &'a Path) -> Spec<'a> {
        Spec { repo, base_branch: "main", short_id, root, copy_files: &[], setup: None }
    }

    fn branch_exists(repo: &Path, branch: &str) -> bool {
        !run(repo, &["branch", "--list", branch]).is_empty()
    }

    #[test]
    fn prepare_creates_branch_and_worktree_from_base() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let main_head = run(&repo, &["rev-parse", "main"]);
        let root = tmp.path().join("worktrees");

        let wt = prepare(&spec(&repo, "3f2a9c41", &root)).unwrap();

        assert!(wt.path.is_absolute());
        assert_eq!(wt.path, root.canonicalize().unwrap().join("proj-3f2a9c41"));
        assert_eq!(wt.branch, "ccm/3f2a9c41");
        assert_eq!(wt.base_commit, main_head);
        assert_eq!(wt.base_branch, "main");
        assert_eq!(run(&wt.path, &["symbolic-ref", "--short", "HEAD"]), "ccm/3f2a9c41");
        assert_eq!(run(&wt.path, &["rev-parse", "HEAD"]), main_head);
        assert!(wt.path.join("README.md").is_file());
    }

    #[test]
    fn prepare_starts_from_a_base_branch_that_is_not_checked_out() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let main_head = run(&repo, &["rev-parse", "main"]);
        run(&repo, &["switch", "--quiet", "-c", "elsewhere"]);
        commit(&repo, "other.txt", "other\n", "work elsewhere");
        let root = tmp.path().join("worktrees");

        let wt = prepare(&spec(&repo, "0000beef", &root)).unwrap();

        assert_eq!(wt.base_commit, main_head);
        assert!(!wt.path.join("other.txt").exists());

        let missing = Spec { base_branch: "nope", ..spec(&repo, "0000bee2", &root) };
        match prepare(&missing) {
            Err(WorktreeError::UnknownBaseBranch { branch, .. }) => assert_eq!(branch, "nope"),
            other => panic!("expected UnknownBaseBranch, got {other:?}"),
        }
    }

    #[test]
    fn prepare_is_idempotent_and_does_not_rerun_setup() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        let spec =
            Spec { setup: Some("echo ran >> setup-count.txt"), ..spec(&repo, "a1b2c3d4", &root) };

        let first = prepare(&spec).unwrap();
        // The base moves on between the attempts; the retry keeps the original base.
        commit(&repo, "later.txt", "later\n", "later work on main");
        let second = prepare(&spec).unwrap();

        assert_eq!(first, second);
        let count = fs::read_to_string(first.path.join("setup-count.txt")).unwrap();
        assert_eq!(count.lines().count(), 1);
    }

    #[test]
    fn prepare_recreates_a_worktree_whose_directory_was_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        let first = prepare(&spec(&repo, "de1e7ed0", &root)).unwrap();
        commit(&first.path, "work.txt", "work\n", "work de1e7ed0");

        // Deleted by hand: git still lists the worktree until it is pruned.
        fs::remove_dir_all(&first.path).unwrap();
        let again = prepare(&spec(&repo, "de1e7ed0", &root)).unwrap();

        assert_eq!(again, first);
        assert!(again.path.join("work.txt").is_file(), "the branch's commit is checked out");
        assert_eq!(run(&again.path, &["symbolic-ref", "--short", "HEAD"]), "ccm/de1e7ed0");
        assert_eq!(run(&again.path, &["status", "--porcelain"]), "");
    }

    #[test]
    fn prepare_takes_a_path_still_registered_to_a_deleted_worktree() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        fs::create_dir_all(&root).unwrap();
        // Another branch's worktree at the task's path, deleted by hand but still registered.
        let path = root.canonicalize().unwrap().join("proj-5ca1ab1e");
        run(&repo, &["worktree", "add", "--quiet", "-b", "other", path.to_str().unwrap()]);
        fs::remove_dir_all(&path).unwrap();

        let wt = prepare(&spec(&repo, "5ca1ab1e", &root)).unwrap();

        assert_eq!(wt.path, path);
        assert_eq!(run(&wt.path, &["symbolic-ref", "--short", "HEAD"]), "ccm/5ca1ab1e");
        assert!(wt.path.join("README.md").is_file());
    }

    #[test]
    fn prepare_runs_the_post_checkout_hook_as_worktree_add_does() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let hook = repo.join(".git/hooks/post-checkout");
        fs::write(&hook, "#!/bin/sh\ntest -f README.md && echo \"$1 $2 $3\" > hook-args.txt\n")
            .unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        let root = tmp.path().join("worktrees");

        let wt = prepare(&spec(&repo, "400c0c00", &root)).unwrap();

        let null = "0".repeat(wt.base_commit.len());
        let args = fs::read_to_string(wt.path.join("hook-args.txt")).unwrap();
        assert_eq!(args.trim(), format!("{null} {} 1", wt.base_commit));
    }

    #[test]
    fn prepare_copies_listed_files_and_runs_setup() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        fs::write(repo.join(".env"), "SECRET=1\n").unwrap();
        fs::create_dir_all(repo.join("conf/local")).unwrap();
        fs::write(repo.join("conf/local/dev.toml"), "x = 1\n").unwrap();
        let root = tmp.path().join("worktrees");
        let copy = vec![".env".to_owned(), "conf/local".to_owned(), "absent.txt".to_owned()];

        let ok = Spec {
            copy_files: &copy,
            setup: Some("test -f .env && echo prepared > setup-done.txt"),
            ..spec(&repo, "c0ffee00", &root)
        };
        let wt = prepare(&ok).unwrap();
        assert_eq!(fs::read_to_string(wt.path.join(".env")).unwrap(), "SECRET=1\n");
        assert_eq!(fs::read_to_string(wt.path.join("conf/local/dev.toml")).unwrap(), "x = 1\n");
        assert!(!wt.path.join("absent.txt").exists());
        assert_eq!(fs::read_to_string(wt.path.join("setup-done.txt")).unwrap(), "prepared\n");

        let failing = Spec {
            copy_files: &copy,
            setup: Some("echo installing; echo broken dependency >&2; exit 3"),
            ..spec(&repo, "badc0de0", &root)
        };
        match prepare(&failing) {
            Err(WorktreeError::Setup { command, status, output }) => {
                assert_eq!(command, "echo installing; echo broken dependency >&2; exit 3");
                assert_eq!(status, Some(3));
                assert_eq!(output, "installing\nbroken dependency");
            }
            other => panic!("expected a setup error, got {other:?}"),
        }
        // A failed preparation leaves nothing behind, so a retry starts clean.
        assert!(!root.join("proj-badc0de0").exists());
        assert!(!branch_exists(&repo, "ccm/badc0de0"));
        let retry = Spec { setup: Some("true"), ..failing };
        assert!(prepare(&retry).unwrap().path.join(".env").is_file());

        let escaping = vec!["../outside".to_owned()];
        let bad = Spec { copy_files: &escaping, ..spec(&repo, "e5c4e000", &root) };
        assert!(matches!(prepare(&bad), Err(WorktreeError::InvalidCopyPath { .. })));
    }

    /// A bare `origin`, a `seed` clone that pushes to it, and the registered checkout `repo`
    /// cloned from it.
    fn repo_with_origin(parent: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let origin = parent.join("origin.git");
        run(parent, &["init", "--quiet", "--bare", "-b", "main", "origin.git"]);
        let seed = new_repo(parent, "seed");
        run(&seed, &["remote", "add", "origin", origin.to_str().unwrap()]);
        run(&seed, &["push", "--quiet", "origin", "main"]);
        run(parent, &["clone", "--quiet", origin.to_str().unwrap(), "repo"]);
        let repo = parent.join("repo");
        configure(&repo);
        (origin, seed, repo)
    }

    #[test]
    fn prepare_fast_forwards_base_from_its_remote() {
        let tmp = tempfile::tempdir().unwrap();
        let (_origin, seed, repo) = repo_with_origin(tmp.path());
        let root = tmp.path().join("worktrees");

        // The base is checked out in the main checkout: `git pull --ff-only`.
        let newer = commit(&seed, "b.txt", "b\n", "second");
        run(&seed, &["push", "--quiet", "origin", "main"]);
        let wt = prepare(&spec(&repo, "11111111", &root)).unwrap();
        assert_eq!(wt.base_commit, newer);
        assert_eq!(run(&repo, &["rev-parse", "main"]), newer);
        assert!(repo.join("b.txt").is_file(), "the main checkout was pulled");

        // The base is not checked out: `git fetch origin main:main`.
        run(&repo, &["switch", "--quiet", "-c", "elsewhere"]);
        let newest = commit(&seed, "c.txt", "c\n", "third");
        run(&seed, &["push", "--quiet", "origin", "main"]);
        let wt = prepare(&spec(&repo, "22222222", &root)).unwrap();
        assert_eq!(wt.base_commit, newest);
        assert_eq!(run(&repo, &["rev-parse", "main"]), newest);
        assert!(wt.path.join("c.txt").is_file());
    }

    #[test]
    fn prepare_works_offline_when_the_remote_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let (origin, _seed, repo) = repo_with_origin(tmp.path());
        let local = commit(&repo, "local.txt", "local\n", "local work");
        fs::remove_dir_all(&origin).unwrap();
        let root = tmp.path().join("worktrees");

        let wt = prepare(&spec(&repo, "0ff11ne0", &root)).unwrap();
        assert_eq!(wt.base_commit, local);

        // Also when the base is not checked out (the fetch path).
        run(&repo, &["switch", "--quiet", "-c", "elsewhere"]);
        let wt = prepare(&spec(&repo, "0ff11ne1", &root)).unwrap();
        assert_eq!(wt.base_commit, local);
    }

    #[test]
    fn summary_lists_commits_and_those_missing_the_short_id() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        let wt = prepare(&spec(&repo, "5eed1234", &root)).unwrap();

        let tagged = commit(&wt.path, "a.txt", "one\ntwo\n", "add a (5eed1234)");
        let untagged = commit(&wt.path, "b.txt", "three\n", "add b");
        fs::write(wt.path.join("README.md"), "changed\n").unwrap();
        fs::write(wt.path.join("new file.txt"), "untracked\n").unwrap();

        let summary = summarize(&wt, "5eed1234").unwrap();
        let subjects: Vec<(&str, &str)> =
            summary.commits.iter().map(|c| (c.sha.as_str(), c.subject.as_str())).collect();
        assert_eq!(subjects, [(tagged.as_str(), "add a (5eed1234)"), (untagged.as_str(), "add b")]);
        assert_eq!(
            summary.commits_missing_id,
            [Commit { sha: untagged, subject: "add b".to_owned() }]
        );
        assert_eq!(summary.uncommitted, [" M README.md", "?? new file.txt"]);
        assert_eq!((summary.files_changed, summary.insertions, summary.deletions), (3, 4, 1));
        assert!(summary.diff_stat.contains("a.txt"), "{}", summary.diff_stat);
        assert!(summary.diff_stat.contains("3 files changed"), "{}", summary.diff_stat);
    }

    #[test]
    fn cleanup_keeps_a_branch_with_unmerged_commits_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        let wt = prepare(&spec(&repo, "3f2a9c41", &root)).unwrap();
        commit(&wt.path, "a.txt", "a\n", "first 3f2a9c41");
        commit(&wt.path, "b.txt", "b\n", "second 3f2a9c41");

        let done = cleanup(&repo, &wt, &[]).unwrap();

        assert!(done.worktree_removed);
        assert!(!wt.path.exists());
        assert!(!done.branch_deleted);
        assert!(branch_exists(&repo, "ccm/3f2a9c41"));
        assert_eq!(done.notes, ["branch ccm/3f2a9c41 kept: 2 commits not merged into main"]);

        // The kept branch gets a new worktree on a retry, starting from the same base.
        let again = prepare(&spec(&repo, "3f2a9c41", &root)).unwrap();
        assert_eq!(again.base_commit, wt.base_commit);
        assert!(again.path.join("b.txt").is_file());
    }

    #[test]
    fn cleanup_forgets_a_worktree_deleted_by_hand_and_deletes_its_merged_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        let wt = prepare(&spec(&repo, "90e90e90", &root)).unwrap();
        fs::remove_dir_all(&wt.path).unwrap();

        let done = cleanup(&repo, &wt, &[]).unwrap();

        assert_eq!(
            done,
            Cleanup { worktree_removed: true, branch_deleted: true, notes: Vec::new() }
        );
        assert!(!branch_exists(&repo, "ccm/90e90e90"));
        assert!(!run(&repo, &["worktree", "list", "--porcelain"]).contains("90e90e90"));
    }

    #[test]
    fn cleanup_keeps_a_worktree_with_uncommitted_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        fs::write(repo.join(".env"), "SECRET=1\n").unwrap();
        let root = tmp.path().join("worktrees");
        let copy = vec![".env".to_owned()];
        let wt = prepare(&Spec { copy_files: &copy, ..spec(&repo, "d1d1d1d1", &root) }).unwrap();
        fs::write(wt.path.join("README.md"), "edited\n").unwrap();
        fs::write(wt.path.join("notes.txt"), "draft\n").unwrap();

        let done = cleanup(&repo, &wt, &copy).unwrap();

        assert!(!done.worktree_removed);
        assert!(!done.branch_deleted);
        assert!(wt.path.join("notes.txt").is_file());
        assert!(branch_exists(&repo, "ccm/d1d1d1d1"));
        let worktree_note = format!(
            "worktree {} kept: 2 uncommitted changes (README.md, notes.txt)",
            wt.path.display()
        );
        let branch_note =
            format!("branch ccm/d1d1d1d1 kept: it is checked out in {}", wt.path.display());
        assert_eq!(done.notes, [worktree_note, branch_note]);
    }

    #[test]
    fn cleanup_removes_a_merged_clean_worktree_and_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        fs::write(repo.join(".env"), "SECRET=1\n").unwrap();
        let root = tmp.path().join("worktrees");
        let copy = vec![".env".to_owned()];
        let wt = prepare(&Spec { copy_files: &copy, ..spec(&repo, "e0e0e0e0", &root) }).unwrap();
        commit(&wt.path, "feature.txt", "done\n", "feature e0e0e0e0");
        run(&repo, &["merge", "--quiet", "--ff-only", "ccm/e0e0e0e0"]);
        assert!(wt.path.join(".env").is_file(), "the copied, untracked .env is still there");

        let done = cleanup(&repo, &wt, &copy).unwrap();

        assert_eq!(
            done,
            Cleanup { worktree_removed: true, branch_deleted: true, notes: Vec::new() }
        );
        assert!(!wt.path.exists());
        assert!(!branch_exists(&repo, "ccm/e0e0e0e0"));
        // Cleaning up again finds nothing left to do.
        assert_eq!(cleanup(&repo, &wt, &copy).unwrap(), done);
    }

    #[test]
    fn preparations_and_cleanups_in_one_repository_overlap_safely() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = new_repo(tmp.path(), "proj");
        let root = tmp.path().join("worktrees");
        // Worktrees to clean up while the new ones are added: half merged (removed, branch
        // deleted), half with a commit of their own (removed, branch kept).
        let old: Vec<Worktree> = (0..8)
            .map(|n| {
                let wt = prepare(&spec(&repo, &format!("01d0000{n}"), &root)).unwrap();
                if n % 2 == 1 {
                    commit(&wt.path, "work.txt", "work\n", &format!("work 01d0000{n}"));
                }
                wt
            })
            .collect();

        let ids: Vec<String> = (0..16).map(|n| format!("2e{n:06x}")).collect();
        let added: Vec<Worktree> = thread::scope(|scope| {
            let cleanups: Vec<_> =
                old.iter().map(|wt| scope.spawn(|| cleanup(&repo, wt, &[]).unwrap())).collect();
            let adds: Vec<_> =
                ids.iter().map(|id| scope.spawn(|| prepare(&spec(&repo, id, &root)))).collect();
            for (n, done) in cleanups.into_iter().map(|c| c.join().unwrap()).enumerate() {
                assert!(done.worktree_removed, "{done:?}");
                assert_eq!(done.branch_deleted, n % 2 == 0, "{done:?}");
            }
            adds.into_iter().map(|a| a.join().unwrap().unwrap()).collect()
        });

        let listed = run(&repo, &["worktree", "list", "--porcelain"]);
        for (wt, id) in added.iter().zip(&ids) {
            assert_eq!(wt.branch, format!("ccm/{id}"));
            assert_eq!(run(&wt.path, &["symbolic-ref", "--short", "HEAD"]), wt.branch);
            assert_eq!(run(&wt.path, &["status", "--porcelain"]), "");
            assert!(wt.path.join("README.md").is_file());
            assert!(listed.contains(&format!("worktree {}\n", wt.path.display())), "{listed}");
        }
        assert_eq!(listed.matches("worktree ").count(), 1 + ids.len(), "{listed}");
        for wt in &old {
            assert!(!wt.path.exists());
        }
        assert_eq!(run(&repo, &["worktree", "prune", "--dry-run", "--verbose"]), "");
    }
}
