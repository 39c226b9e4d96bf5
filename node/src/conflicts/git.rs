//! The git the prediction and a task's diff need, in one place: each command a spawned
//! process (`tokio::process`), with `-C <checkout>`, no terminal prompt, no optional locks
//! (an agent may be working in a worktree of the same repository) and none of the `GIT_DIR`-like
//! variables of the daemon's environment. Nothing here writes to the repository:
//! `merge-tree --write-tree` writes only objects, never a ref, an index or a worktree.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::ConflictError;

/// The most diff text kept for one task (`ccm task diff`, the review page): 4 MiB.
pub const DIFF_LIMIT: usize = 4 << 20;

/// Runs git in `dir`; its exit code and stdout. An exit code in `ok` is an answer, any other
/// is an error carrying git's words.
async fn run(dir: &Path, args: &[&str], ok: &[i32]) -> Result<(i32, Vec<u8>), ConflictError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .arg("--no-optional-locks")
        .args(["-c", "color.ui=false", "-c", "core.quotePath=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in crate::worktree::INHERITED_GIT_ENV {
        cmd.env_remove(var);
    }
    // SAFETY: `setpriority` is async-signal-safe. Prediction is background work: its git runs
    // at a lower priority, so on a busy machine the daemon's hooks and requests go first.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, crate::background::NICE);
            Ok(())
        });
    }
    let out = cmd
        .output()
        .await
        .map_err(|source| ConflictError::Spawn { dir: dir.display().to_string(), source })?;
    match out.status.code() {
        Some(code) if ok.contains(&code) => Ok((code, out.stdout)),
        _ => Err(ConflictError::Git {
            args: args.join(" "),
            dir: dir.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
    }
}

/// NUL-separated names (`-z` output), without empty ones.
fn names(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// The heads of the local branches of the checkout: `name → commit` (for `main` and every
/// `ccm/...` branch alike), in one command.
pub async fn heads(checkout: &Path) -> Result<HashMap<String, String>, ConflictError> {
    let (_, out) = run(
        checkout,
        &["for-each-ref", "--format=%(refname:strip=2) %(objectname)", "refs/heads/"],
        &[0],
    )
    .await?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(name, head)| (name.to_string(), head.to_string()))
        .collect())
}

/// The files `head` changed since it left `target` (`git diff --name-only target...head`,
/// renames as a deletion and an addition, so both names count).
pub async fn changed_files(
    checkout: &Path,
    target: &str,
    head: &str,
) -> Result<Vec<String>, ConflictError> {
    let range = format!("{target}...{head}");
    let (_, out) =
        run(checkout, &["diff", "--name-only", "--no-renames", "-z", &range], &[0]).await?;
    Ok(names(&out))
}

/// The files in conflict when `theirs` is merged into `ours` (`git merge-tree --write-tree`,
/// no worktree, no index); empty when they merge cleanly.
pub async fn merge_conflicts(
    checkout: &Path,
    ours: &str,
    theirs: &str,
) -> Result<Vec<String>, ConflictError> {
    let args = ["merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", ours, theirs];
    let (code, out) = run(checkout, &args, &[0, 1]).await?;
    if code == 0 {
        return Ok(Vec::new());
    }
    // The merged tree's id, then the conflicted files.
    let mut files = names(&out).split_off(1);
    files.sort();
    files.dedup();
    Ok(files)
}

/// A task's branch against its target, file by file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskDiff {
    pub task_id: String,
    pub branch: String,
    pub target: String,
    /// The commit the branch left the target at (their merge base).
    pub base: String,
    pub head: String,
    pub files: Vec<DiffFile>,
    /// Whether the diff was cut at [`DIFF_LIMIT`] bytes (the files after the cut are missing).
    pub truncated: bool,
    /// The diff as git prints it (what `ccm task diff` shows).
    #[serde(skip)]
    pub text: String,
}

/// One file of a diff.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffFile {
    /// Its path after the change (before it, for a deleted file).
    pub path: String,
    /// `added`, `deleted` or `modified`.
    pub status: String,
    pub binary: bool,
    pub hunks: Vec<DiffHunk>,
}

/// One hunk: its header and its lines, each with its marker (` `, `+`, `-`, `\`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffHunk {
    /// The `@@ -a,b +c,d @@ context` line.
    pub header: String,
    pub old_start: u32,
    pub new_start: u32,
    pub lines: Vec<String>,
}

/// `git diff target...branch` in the checkout, parsed.
pub async fn diff(checkout: &Path, target: &str, branch: &str) -> Result<TaskDiff, ConflictError> {
    let (_, base) = run(checkout, &["merge-base", target, branch], &[0]).await?;
    let (_, head) = run(checkout, &["rev-parse", "--verify", branch], &[0]).await?;
    let range = format!("{target}...{branch}");
    let (_, out) = run(checkout, &["diff", "--no-ext-diff", "--no-renames", &range], &[0]).await?;
    let truncated = out.len() > DIFF_LIMIT;
    let mut text = String::from_utf8_lossy(&out[..out.len().min(DIFF_LIMIT)]).into_owned();
    if truncated {
        // Whole lines only.
        let end = text.rfind('\n').map_or(0, |i| i + 1);
        text.truncate(end);
    }
    Ok(TaskDiff {
        task_id: String::new(),
        branch: branch.to_string(),
        target: target.to_string(),
        base: String::from_utf8_lossy(&base).trim().to_string(),
        head: String::from_utf8_lossy(&head).trim().to_string(),
        files: parse_diff(&text),
        truncated,
        text,
    })
}

/// Parses a unified diff as `git diff` prints it (without colours, renames off).
pub fn parse_diff(text: &str) -> Vec<DiffFile> {
    let mut files: Vec<DiffFile> = Vec::new();
    let path_of = |line: &str, prefix: &str| {
        let rest = line.trim_end_matches('\t');
        let rest = rest.strip_prefix(prefix).unwrap_or(rest);
        rest.trim_matches('"').to_string()
    };
    for line in text.lines() {
        if line.starts_with("diff --git ") {
            let path = line.rsplit_once(" b/").map(|(_, p)| p.to_string()).unwrap_or_default();
            files.push(DiffFile { path, status: "modified".into(), ..DiffFile::default() });
            continue;
        }
        let Some(file) = files.last_mut() else { continue };
        if let Some(hunk) = file.hunks.last_mut() {
            if line.starts_with([' ', '+', '-', '\\']) || line.is_empty() {
                hunk.lines.push(line.to_string());
                continue;
            }
        }
        if line.starts_with("new file mode") {
            file.status = "added".into();
        } else if line.starts_with("deleted file mode") {
            file.status = "deleted".into();
        } else if line.starts_with("Binary files ") {
            file.binary = true;
        } else if line.starts_with("+++ ") {
            if line != "+++ /dev/null" {
                file.path = path_of(line, "+++ b/");
            }
        } else if line.starts_with("--- ") {
            if line != "--- /dev/null" {
                file.path = path_of(line, "--- a/");
            }
        } else if let Some(header) = line.strip_prefix("@@ ") {
            let mut numbers = header.split(' ').take(2).map(|range| {
                range[1..].split(',').next().and_then(|n| n.parse().ok()).unwrap_or(0)
            });
            let (old_start, new_start) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
            file.hunks.push(DiffHunk {
                header: line.to_string(),
                old_start,
                new_start,
                lines: Vec::new(),
            });
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_reads_as_files_with_their_hunks() {
        let text = "\
diff --git a/src/a.rs b/src/a.rs
index 1111111..2222222 100644
--- a/src/a.rs
+++ b/src/a.rs
@@ -1,3 +1,3 @@ fn main()
 one
-two
+deux
 three
@@ -10 +10,2 @@
 ten
+eleven
\\ No newline at end of file
diff --git a/new.txt b/new.txt
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/new.txt
@@ -0,0 +1 @@
+hello
diff --git a/gone.txt b/gone.txt
deleted file mode 100644
index 4444444..0000000
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
diff --git a/img.png b/img.png
new file mode 100644
index 0000000..5555555
Binary files /dev/null and b/img.png differ
";
        let files = parse_diff(text);
        let summary: Vec<_> = files
            .iter()
            .map(|f| (f.path.as_str(), f.status.as_str(), f.binary, f.hunks.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("src/a.rs", "modified", false, 2),
                ("new.txt", "added", false, 1),
                ("gone.txt", "deleted", false, 1),
                ("img.png", "added", true, 0),
            ]
        );
        let hunk = &files[0].hunks[0];
        assert_eq!((hunk.old_start, hunk.new_start), (1, 1));
        assert_eq!(hunk.lines, [" one", "-two", "+deux", " three"]);
        assert_eq!(files[0].hunks[1].new_start, 10);
        assert_eq!(files[0].hunks[1].lines.last().unwrap(), "\\ No newline at end of file");
    }
}
