//! The git steps of one landing, all blocking (run on a blocking thread): the target's head,
//! the merged result in a fresh worktree, the compare-and-swap move of the target, and the
//! removal of what the task leaves behind.
//!
//! **Invariant:** the target only ever moves by a compare-and-swap from the head the landing
//! started from: `git update-ref refs/heads/T NEW OLD`, a `git merge --ff-only` in the
//! operator's clean tree after checking that `T` is still `OLD`, or a push the remote rejects
//! when it moved. Never a force.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::LandMode;
use crate::worktree::{self, WorktreeError};

/// The most of a conflict's diff (or a verify's output) kept for the next attempt's prompt.
pub const FEEDBACK_LIMIT: usize = 16 * 1024;

/// The ref that keeps a merged result reachable between its verify and the move (so that no
/// `git gc` can take it, and a restart finds it).
fn result_ref(short_id: &str) -> String {
    format!("refs/ccm/land/{short_id}")
}

/// Where a queue's target lives.
#[derive(Debug, Clone)]
pub struct Target {
    /// The registered checkout (the operator's working tree).
    pub repo: PathBuf,
    /// The branch, e.g. `main`.
    pub branch: String,
    /// Push to (and fetch from) this remote.
    pub push: Option<String>,
}

impl Target {
    fn full_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn tracking_ref(&self, remote: &str) -> String {
        format!("refs/remotes/{remote}/{}", self.branch)
    }

    /// The target's newest head: the remote's (fetched now) when landing pushes, else the
    /// local branch's.
    pub fn head(&self) -> Result<String, WorktreeError> {
        match &self.push {
            Some(remote) => {
                let spec = format!("+{}:{}", self.full_ref(), self.tracking_ref(remote));
                git_remote(&self.repo, &["fetch", "--quiet", remote, &spec])?;
                rev_parse(&self.repo, &self.tracking_ref(remote))
            }
            None => rev_parse(&self.repo, &self.full_ref()),
        }
    }

    /// Moves the target from `old` to `new`, only if it is still at `old`.
    pub fn move_to(&self, old: &str, new: &str) -> Result<Moved, WorktreeError> {
        let Some(remote) = &self.push else { return self.move_local(old, new) };
        let spec = format!("{new}:{}", self.full_ref());
        match git_remote(&self.repo, &["push", "--quiet", "--porcelain", remote, &spec]) {
            Ok(()) => {}
            Err(WorktreeError::Git { stderr, .. })
                if stderr.contains("rejected")
                    || stderr.contains("non-fast-forward")
                    || stderr.contains("fetch first") =>
            {
                return Ok(Moved::TargetMoved { now: self.head()? });
            }
            Err(error) => return Err(error),
        }
        git(&self.repo, &["update-ref", &self.tracking_ref(remote), new])?;
        // The local branch follows when it can do so by a fast-forward; it never blocks the
        // landing, which happened on the remote.
        let local = rev_parse(&self.repo, &self.full_ref()).ok();
        if let Some(local) = local.filter(|l| is_ancestor(&self.repo, l, new)) {
            match self.move_local(&local, new)? {
                Moved::Moved => {}
                other => tracing::info!(?other, "the local target did not follow the remote"),
            }
        }
        Ok(Moved::Moved)
    }

    fn move_local(&self, old: &str, new: &str) -> Result<Moved, WorktreeError> {
        let full = self.full_ref();
        let current = rev_parse(&self.repo, &full)?;
        if current == new {
            return Ok(Moved::Moved);
        }
        if current != old {
            return Ok(Moved::TargetMoved { now: current });
        }
        let repo = worktree::canonical(&self.repo)?;
        let checked_out = worktree::list_worktrees(&repo)?
            .into_iter()
            .find(|w| w.branch.as_deref() == Some(full.as_str()));
        let Some(tree) = checked_out else {
            // Checked out nowhere: a compare-and-swap of the ref itself.
            return match git(&self.repo, &["update-ref", &full, new, old]) {
                Ok(_) => Ok(Moved::Moved),
                Err(WorktreeError::Git { .. }) => {
                    Ok(Moved::TargetMoved { now: rev_parse(&self.repo, &full)? })
                }
                Err(error) => Err(error),
            };
        };
        // Checked out in a working tree: only git's own fast-forward there, while it is clean.
        let dirty = git(&tree.path, &["status", "--porcelain", "--untracked-files=no"])?;
        if !dirty.trim().is_empty() {
            let files: Vec<&str> = dirty.lines().map(|l| l.get(3..).unwrap_or(l)).take(5).collect();
            return Ok(Moved::Wait {
                reason: format!(
                    "{} is checked out in {}, which has uncommitted changes ({}); commit or stash them and the landing goes on",
                    self.branch,
                    tree.path.display(),
                    files.join(", ")
                ),
            });
        }
        match git(&tree.path, &["merge", "--ff-only", "--quiet", new]) {
            Ok(_) => Ok(Moved::Moved),
            Err(WorktreeError::Git { stderr, .. }) => {
                let now = rev_parse(&self.repo, &full)?;
                if now != old {
                    Ok(Moved::TargetMoved { now })
                } else {
                    Ok(Moved::Wait {
                        reason: format!(
                            "git cannot fast-forward {} in {}: {}",
                            self.branch,
                            tree.path.display(),
                            crate::text::head(&stderr, 400)
                        ),
                    })
                }
            }
            Err(error) => Err(error),
        }
    }

    /// `land.mode: pr`: once the forge merged, the remote's target (fetched now) contains
    /// `merged`; then the local branch follows by a fast-forward when it can (never blocking:
    /// the landing happened on the remote). `None` while the remote does not show it yet.
    pub fn follow_remote(&self, merged: &str) -> Result<Option<String>, WorktreeError> {
        let head = self.head()?;
        if !is_ancestor(&self.repo, merged, &head) {
            return Ok(None);
        }
        let local = rev_parse(&self.repo, &self.full_ref()).ok();
        if let Some(local) = local.filter(|l| is_ancestor(&self.repo, l, &head) && *l != head) {
            match self.move_local(&local, &head)? {
                Moved::Moved => {}
                other => tracing::info!(?other, "the local target did not follow the remote"),
            }
        }
        Ok(Some(head))
    }

    /// Where the target is now, for a restart: `old`, `new` or elsewhere.
    pub fn current(&self) -> Result<String, WorktreeError> {
        match &self.push {
            Some(_) => self.head(),
            None => rev_parse(&self.repo, &self.full_ref()),
        }
    }
}

/// What [`Target::move_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    Moved,
    /// The target is no longer where the landing started: start again from `now`.
    TargetMoved {
        now: String,
    },
    /// The target cannot move now (the operator's tree is dirty), with the reason shown.
    Wait {
        reason: String,
    },
}

/// One landing's merge of the task's branch with the target's head.
#[derive(Debug, Clone)]
pub struct Build<'a> {
    pub repo: &'a Path,
    /// Where worktrees are made (`<home>/worktrees`).
    pub root: &'a Path,
    pub short_id: &'a str,
    pub title: &'a str,
    /// The task's branch, `ccm/<short id>`.
    pub branch: &'a str,
    pub old_head: &'a str,
    pub mode: LandMode,
    /// For a stacked task, the commit of its base's branch its branch started from: the
    /// commits after it are the task's own.
    pub fork: Option<&'a str>,
}

/// What [`build`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Built {
    /// The merged result, checked out at `path` for the verify.
    Merged { path: PathBuf, new_head: String },
    /// The branch has nothing the target lacks.
    NothingToLand,
    /// The branch conflicts with the target's head.
    Conflict { files: Vec<String>, diff: String },
}

impl Build<'_> {
    /// `<root>/land-<repo dir>-<short id>`.
    pub fn path(&self) -> Result<PathBuf, WorktreeError> {
        worktree::worktree_path(self.repo, self.root, &format!("land-{}", self.short_id))
    }
}

/// The commit below a stacked task's own commits, when they must be taken alone: its branch
/// still holds the base's commits it started from (`fork`), and the target does not (the base
/// landed rewritten, by a rebase or a squash, or in a newer version after a new attempt).
/// `None` when the branch lands as it is: not stacked, rebased by its agent since, or the
/// base's commits are on the target as they are.
pub fn stacked_upstream<'a>(
    repo: &Path,
    fork: Option<&'a str>,
    tip: &str,
    target_head: &str,
) -> Option<&'a str> {
    fork.filter(|fork| is_ancestor(repo, fork, tip) && !is_ancestor(repo, fork, target_head))
}

/// Merges (rebases, squashes) the task's branch onto `old_head` in a fresh detached worktree.
/// A conflict is aborted and its worktree removed; a merged result keeps its worktree (for the
/// verify) and a ref (`refs/ccm/land/<short id>`) that keeps it reachable.
///
/// A stacked task whose base's commits reached the target rewritten ([`stacked_upstream`])
/// has its own commits rebased onto `old_head` first (`git rebase --onto`), so only they land
/// (in rebase mode as they are; merged or squashed from there in the other modes).
pub fn build(spec: &Build) -> Result<Built, WorktreeError> {
    let repo = worktree::canonical(spec.repo)?;
    let tip = rev_parse(&repo, &format!("refs/heads/{}", spec.branch))?;
    if is_ancestor(&repo, &tip, spec.old_head) {
        return Ok(Built::NothingToLand);
    }
    let own_since = stacked_upstream(&repo, spec.fork, &tip, spec.old_head);
    let path = spec.path()?;
    remove_worktree(&repo, &path)?;
    let start = match (spec.mode, own_since) {
        (LandMode::Rebase, _) | (_, Some(_)) => tip.as_str(),
        (LandMode::Merge | LandMode::Squash | LandMode::Pr, None) => spec.old_head,
    };
    {
        let lock = worktree::repository_lock(&repo);
        let _git = lock.shared();
        let args = [
            OsStr::new("worktree"),
            "add".as_ref(),
            "--detach".as_ref(),
            "--quiet".as_ref(),
            path.as_os_str(),
            start.as_ref(),
        ];
        worktree::git(&repo, &args)?;
    }
    let subject = format!("[{}] {}", spec.short_id, spec.title);
    let identity = ["-c", "user.name=ccm", "-c", "user.email=ccm@localhost"];
    // Every landed commit's subject carries the task id: a commit of the agent's without it
    // gets it in front, as the commit is replayed.
    let tag = format!("[{}]", spec.short_id);
    let exec = format!(
        "msg=$(git log -1 --format=%B); case \"$msg\" in *'{tag}'*) ;; *) git commit --quiet --amend --no-verify -m \"{tag} $msg\" ;; esac"
    );
    let step = match (spec.mode, own_since) {
        (LandMode::Rebase, None) => {
            let rebase = ["rebase", "--quiet", "--exec", &exec, spec.old_head];
            run(&path, &[&identity[..], &rebase[..]].concat())
        }
        (LandMode::Rebase, Some(upstream)) => {
            let rebase = ["rebase", "--quiet", "--exec", &exec, "--onto", spec.old_head, upstream];
            run(&path, &[&identity[..], &rebase[..]].concat())
        }
        (_, Some(upstream)) => {
            let rebase = ["rebase", "--quiet", "--onto", spec.old_head, upstream];
            run(&path, &[&identity[..], &rebase[..]].concat())
        }
        (LandMode::Merge | LandMode::Pr, None) => run(
            &path,
            &[
                &identity[..],
                &[
                    "merge",
                    "--no-ff",
                    "--quiet",
                    "-m",
                    &format!("{subject} (merge {})", spec.branch),
                    spec.branch,
                ],
            ]
            .concat(),
        ),
        (LandMode::Squash, None) => {
            run(&path, &[&identity[..], &["merge", "--squash", "--quiet", spec.branch]].concat())
        }
    }?;
    if !step.success {
        let files = git(&path, &["diff", "--name-only", "--diff-filter=U"])?;
        let files: Vec<String> = files.lines().map(str::to_owned).collect();
        if files.is_empty() {
            remove_worktree(&repo, &path)?;
            return Err(WorktreeError::Git {
                args: format!("{} onto {}", spec.mode.as_str(), spec.old_head),
                dir: path,
                stderr: step.output,
            });
        }
        let diff = git(&path, &["diff"]).unwrap_or_default();
        let diff = crate::text::head(&diff, FEEDBACK_LIMIT).to_string();
        let abort = match (spec.mode, own_since) {
            (LandMode::Rebase, _) | (_, Some(_)) => "rebase",
            _ => "merge",
        };
        let _ = run(&path, &[abort, "--abort"]);
        remove_worktree(&repo, &path)?;
        return Ok(Built::Conflict { files, diff });
    }
    if own_since.is_some() {
        // The task's own commits, now on the target's head.
        let own = rev_parse(&path, "HEAD")?;
        if own == spec.old_head {
            remove_worktree(&repo, &path)?;
            return Ok(Built::NothingToLand);
        }
        match spec.mode {
            LandMode::Rebase => {}
            LandMode::Merge | LandMode::Pr => {
                git(&path, &["checkout", "--quiet", "--detach", spec.old_head])?;
                let message = format!("{subject} (merge {})", spec.branch);
                let merge = ["merge", "--no-ff", "--quiet", "-m", &message, &own];
                git(&path, &[&identity[..], &merge[..]].concat())?;
            }
            LandMode::Squash => {
                git(&path, &["reset", "--quiet", "--soft", spec.old_head])?;
            }
        }
    }
    if spec.mode == LandMode::Squash {
        git(
            &path,
            &[&identity[..], &["commit", "--quiet", "--no-verify", "-m", &subject]].concat(),
        )?;
    }
    let new_head = rev_parse(&path, "HEAD")?;
    git(&repo, &["update-ref", &result_ref(spec.short_id), &new_head])?;
    Ok(Built::Merged { path, new_head })
}

/// What [`push_branch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The remote's branch is the local branch's tip, `sha`.
    Pushed { sha: String },
    /// The remote's branch has commits the local one lacks (git's words).
    Rejected { stderr: String },
}

/// `land.mode: pr`: pushes the task's branch to the same name on `remote`, never forced.
pub fn push_branch(repo: &Path, remote: &str, branch: &str) -> Result<Pushed, WorktreeError> {
    let full = format!("refs/heads/{branch}");
    let sha = rev_parse(repo, &full)?;
    let spec = format!("{full}:{full}");
    match git_remote(repo, &["push", "--quiet", "--porcelain", remote, &spec]) {
        Ok(()) => Ok(Pushed::Pushed { sha }),
        Err(WorktreeError::Git { stderr, .. })
            if stderr.contains("rejected")
                || stderr.contains("non-fast-forward")
                || stderr.contains("fetch first") =>
        {
            Ok(Pushed::Rejected { stderr: crate::text::head(&stderr, 600) })
        }
        Err(error) => Err(error),
    }
}

/// The commit the task's branch `branch` is at.
pub fn branch_tip(repo: &Path, branch: &str) -> Result<String, WorktreeError> {
    rev_parse(repo, &format!("refs/heads/{branch}"))
}

/// The URL of `remote` (for the forge's `owner/name`).
pub fn remote_url(repo: &Path, remote: &str) -> Result<String, WorktreeError> {
    Ok(git(repo, &["remote", "get-url", remote])?.trim().to_string())
}

/// `land.mode: pr`: deletes the landed branch on the remote; one already gone (the forge
/// deletes merged branches when the repository says so) is no error.
pub fn delete_remote_branch(repo: &Path, remote: &str, branch: &str) -> Result<(), WorktreeError> {
    let refspec = format!(":refs/heads/{branch}");
    match git_remote(repo, &["push", "--quiet", remote, &refspec]) {
        Ok(()) => Ok(()),
        Err(WorktreeError::Git { stderr, .. })
            if stderr.contains("remote ref does not exist")
                || stderr.contains("unable to delete") =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Removes a landing's worktree (when there) and its result ref.
pub fn discard_result(repo: &Path, path: &Path, short_id: &str) -> Result<(), WorktreeError> {
    let repo = worktree::canonical(repo)?;
    remove_worktree(&repo, path)?;
    git(&repo, &["update-ref", "-d", &result_ref(short_id)])?;
    Ok(())
}

/// Deletes the task's branch once it landed (a worktree still on it is the caller's to remove
/// first).
pub fn delete_branch(repo: &Path, branch: &str) -> Result<(), WorktreeError> {
    let repo = worktree::canonical(repo)?;
    if rev_parse(&repo, &format!("refs/heads/{branch}")).is_err() {
        return Ok(());
    }
    let lock = worktree::repository_lock(&repo);
    let _git = lock.exclusive();
    git(&repo, &["branch", "-D", "--quiet", branch])?;
    Ok(())
}

fn remove_worktree(repo: &Path, path: &Path) -> Result<(), WorktreeError> {
    let registered = worktree::list_worktrees(repo)?.iter().any(|w| w.path == path);
    if !registered && !path.exists() {
        return Ok(());
    }
    let lock = worktree::repository_lock(repo);
    let _git = lock.exclusive();
    if registered {
        let args =
            [OsStr::new("worktree"), "remove".as_ref(), "--force".as_ref(), path.as_os_str()];
        if worktree::git(repo, &args).is_ok() {
            return Ok(());
        }
    }
    if path.exists() {
        std::fs::remove_dir_all(path)
            .map_err(|source| WorktreeError::Io { path: path.to_owned(), source })?;
    }
    worktree::git(repo, &[OsStr::new("worktree"), "prune".as_ref()])?;
    Ok(())
}

/// Whether `ancestor` is an ancestor of (or equal to) `of`.
pub fn is_ancestor(repo: &Path, ancestor: &str, of: &str) -> bool {
    run(repo, &["merge-base", "--is-ancestor", ancestor, of]).is_ok_and(|r| r.success)
}

fn rev_parse(dir: &Path, rev: &str) -> Result<String, WorktreeError> {
    Ok(git(dir, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])?
        .trim()
        .to_owned())
}

fn os<'a>(args: &[&'a str]) -> Vec<&'a OsStr> {
    args.iter().map(|a| OsStr::new(*a)).collect()
}

fn git(dir: &Path, args: &[&str]) -> Result<String, WorktreeError> {
    worktree::git(dir, &os(args))
}

fn git_remote(dir: &Path, args: &[&str]) -> Result<(), WorktreeError> {
    worktree::git_remote(dir, &os(args))
}

/// A git command whose failure is an answer (a conflict), not an error.
struct Ran {
    success: bool,
    output: String,
}

fn run(dir: &Path, args: &[&str]) -> Result<Ran, WorktreeError> {
    let out = worktree::run_git(dir, &os(args))?;
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Ran { success: out.status.success(), output })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn commit(dir: &Path, file: &str, text: &str, message: &str) -> String {
        std::fs::write(dir.join(file), text).unwrap();
        sh(dir, &["add", file]);
        sh(dir, &["commit", "-q", "-m", message]);
        sh(dir, &["rev-parse", "HEAD"])
    }

    /// A checkout where task a's branch (`ccm/aaaaaaaa`: a.txt) landed on `main` rewritten and
    /// in a newer version (a.txt changed again), after task b stacked on its first version
    /// (`ccm/bbbbbbbb`: a.txt, then b.txt). Returns the repository and where b forked.
    fn stacked_repo(dir: &Path) -> (PathBuf, String) {
        let repo = dir.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        sh(&repo, &["init", "-q", "-b", "main"]);
        sh(&repo, &["config", "user.name", "t"]);
        sh(&repo, &["config", "user.email", "t@ccm.invalid"]);
        sh(&repo, &["config", "commit.gpgsign", "false"]);
        commit(&repo, "README.md", "hello\n", "initial");
        sh(&repo, &["checkout", "-q", "-b", "ccm/aaaaaaaa"]);
        let fork = commit(&repo, "a.txt", "a, first\n", "[aaaaaaaa] a");
        sh(&repo, &["checkout", "-q", "-b", "ccm/bbbbbbbb"]);
        commit(&repo, "b.txt", "b\n", "[bbbbbbbb] b");
        // a's new attempt: the same file in another version, landed as a new commit on main.
        sh(&repo, &["checkout", "-q", "main"]);
        commit(&repo, "a.txt", "a, second\n", "[aaaaaaaa] a");
        (repo, fork)
    }

    fn land(
        repo: &Path,
        root: &Path,
        mode: LandMode,
        fork: Option<&str>,
    ) -> Result<Built, WorktreeError> {
        let head = sh(repo, &["rev-parse", "main"]);
        build(&Build {
            repo,
            root,
            short_id: "bbbbbbbb",
            title: "b",
            branch: "ccm/bbbbbbbb",
            old_head: &head,
            mode,
            fork,
        })
    }

    #[test]
    fn a_stacked_branch_lands_only_its_own_commits_onto_its_rewritten_base() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, fork) = stacked_repo(tmp.path());
        let root = tmp.path().join("worktrees");
        let main = sh(&repo, &["rev-parse", "main"]);

        // Rebase: b's one commit on main, linear; a.txt stays a's landed version.
        let Built::Merged { path, new_head } =
            land(&repo, &root, LandMode::Rebase, Some(&fork)).unwrap()
        else {
            panic!("not merged")
        };
        assert_eq!(sh(&repo, &["rev-list", &format!("{main}..{new_head}")]).lines().count(), 1);
        assert_eq!(sh(&repo, &["rev-parse", &format!("{new_head}^")]), main);
        assert_eq!(sh(&repo, &["show", &format!("{new_head}:a.txt")]), "a, second");
        assert_eq!(sh(&repo, &["show", &format!("{new_head}:b.txt")]), "b");
        discard_result(&repo, &path, "bbbbbbbb").unwrap();

        // Merge: a merge commit whose second parent is b's own commit on main.
        let Built::Merged { path, new_head } =
            land(&repo, &root, LandMode::Merge, Some(&fork)).unwrap()
        else {
            panic!("not merged")
        };
        assert_eq!(sh(&repo, &["rev-parse", &format!("{new_head}^1")]), main);
        assert_eq!(sh(&repo, &["rev-parse", &format!("{new_head}^2^")]), main);
        discard_result(&repo, &path, "bbbbbbbb").unwrap();

        // Squash: one commit with b's change alone.
        let Built::Merged { path, new_head } =
            land(&repo, &root, LandMode::Squash, Some(&fork)).unwrap()
        else {
            panic!("not merged")
        };
        assert_eq!(sh(&repo, &["rev-parse", &format!("{new_head}^")]), main);
        assert_eq!(sh(&repo, &["diff", "--name-only", &main, &new_head]), "b.txt");
        discard_result(&repo, &path, "bbbbbbbb").unwrap();

        // Without its fork the branch carries a's first version along, which conflicts.
        assert!(matches!(
            land(&repo, &root, LandMode::Rebase, None).unwrap(),
            Built::Conflict { files, .. } if files == ["a.txt"]
        ));
    }

    #[test]
    fn a_fork_already_on_the_target_or_left_behind_lands_the_branch_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let (repo, fork) = stacked_repo(tmp.path());
        let tip = sh(&repo, &["rev-parse", "ccm/bbbbbbbb"]);
        let main = sh(&repo, &["rev-parse", "main"]);
        assert_eq!(stacked_upstream(&repo, Some(&fork), &tip, &main), Some(fork.as_str()));
        assert_eq!(stacked_upstream(&repo, None, &tip, &main), None);
        // The base's commits on the target as they are (a fast-forward or a merge).
        assert_eq!(stacked_upstream(&repo, Some(&fork), &tip, &fork), None);
        // The agent rebased its branch onto the target since: the fork is not below it.
        assert_eq!(stacked_upstream(&repo, Some(&fork), &main, &main), None);
    }
}
