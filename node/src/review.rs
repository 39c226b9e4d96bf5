//! Review with line comments (issue 23): the one way the CLI (`ccm task review`), the API
//! (`POST /api/tasks/{id}/review`) and the dashboard's task page comment on lines of a finished
//! task's diff against its target and request changes.
//!
//! A comment is on a line of the branch's version of a file that the diff shows (an added or a
//! context line: [`new_lines`]); a line outside the diff is refused with the ranges it does
//! show. "Request changes" (`Store::request_changes`) sends the pending comments to the task's
//! next attempt, whose prompt lists them ([`prompt`]); that attempt is granted, not counted as
//! a failure.

use ccm_schema::Task;
use serde::{Deserialize, Serialize};

use crate::conflicts::{ConflictError, DiffFile, TaskDiff};
use crate::store::{NewComment, RetryPolicy, ReviewComment, Store, StoreError};

/// Why a review was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The store refused it (the task is not finished, no pending comment, ...) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task's diff could not be read (no branch here, git failed).
    #[error(transparent)]
    Diff(#[from] ConflictError),
    /// A comment's file or line is not in the diff.
    #[error("{0}")]
    OutsideDiff(String),
}

/// A review: comments to add and whether to request changes (the API's body).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    #[serde(default)]
    pub comments: Vec<NewComment>,
    #[serde(default)]
    pub request_changes: bool,
}

/// What a review did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reviewed {
    /// The task after the review (`created` again when changes were requested).
    pub task: Task,
    /// The comments added by this review.
    pub added: Vec<ReviewComment>,
    /// The comments sent to the next attempt, when changes were requested.
    pub sent: Vec<ReviewComment>,
}

/// Parses `FILE:LINE` (the CLI's `--comment`), naming what is wrong.
pub fn parse_location(text: &str) -> Result<(String, u32), String> {
    let Some((file, line)) = text.rsplit_once(':') else {
        return Err(format!(
            "`{text}` has no line number: write FILE:LINE, such as src/main.rs:12"
        ));
    };
    if file.is_empty() {
        return Err(format!(
            "`{text}` has no file before the `:`: write FILE:LINE, such as src/main.rs:12"
        ));
    }
    match line.parse::<u32>() {
        Ok(0) => Err(format!("`{text}`: lines are counted from 1")),
        Ok(n) => Ok((file.to_string(), n)),
        Err(_) => Err(format!("`{text}`: `{line}` is not a line number (a whole number from 1)")),
    }
}

/// The lines of the branch's version of `file` its hunks show (added and context lines), in
/// order, each with its hunk's index.
pub fn new_lines(file: &DiffFile) -> Vec<(usize, u32)> {
    let mut lines = Vec::new();
    for (index, hunk) in file.hunks.iter().enumerate() {
        let mut number = hunk.new_start;
        for line in &hunk.lines {
            if line.starts_with('+') || line.starts_with(' ') || line.is_empty() {
                lines.push((index, number));
                number += 1;
            }
        }
    }
    lines
}

/// Checks that each comment is on a line the diff shows, or says why not.
pub fn check_lines(diff: &TaskDiff, comments: &[NewComment]) -> Result<(), ReviewError> {
    for comment in comments {
        let Some(file) = diff.files.iter().find(|f| f.path == comment.file) else {
            let files: Vec<&str> = diff.files.iter().map(|f| f.path.as_str()).collect();
            return Err(ReviewError::OutsideDiff(format!(
                "{}:{} is outside the diff: {} does not change {} against {} (it changes {})",
                comment.file,
                comment.line,
                diff.branch,
                comment.file,
                diff.target,
                if files.is_empty() { "nothing".to_string() } else { files.join(", ") }
            )));
        };
        let lines = new_lines(file);
        if lines.iter().any(|&(_, n)| n == comment.line) {
            continue;
        }
        let why = if lines.is_empty() {
            format!("the diff shows no line of the branch's {} (deleted or binary)", file.path)
        } else {
            let ranges: Vec<String> = file
                .hunks
                .iter()
                .enumerate()
                .filter_map(|(index, _)| {
                    let shown: Vec<u32> =
                        lines.iter().filter(|(i, _)| *i == index).map(|&(_, n)| n).collect();
                    let (first, last) = (shown.first()?, shown.last()?);
                    Some(if first == last { first.to_string() } else { format!("{first}-{last}") })
                })
                .collect();
            format!("the diff shows lines {} of {}", ranges.join(", "), file.path)
        };
        return Err(ReviewError::OutsideDiff(format!(
            "{}:{} is outside the diff: {why}",
            comment.file, comment.line
        )));
    }
    Ok(())
}

/// Adds the request's comments (each checked against the task's diff) and, when asked,
/// requests changes. `by` is who reviews (`cli`, `api`, `dashboard`).
pub async fn review(
    store: &Store,
    task: &str,
    request: &ReviewRequest,
    by: &str,
    policy: RetryPolicy,
) -> Result<Reviewed, ReviewError> {
    if request.comments.is_empty() && !request.request_changes {
        return Err(ReviewError::Store(StoreError::Invalid {
            field: "comments",
            message: "a review needs a comment (FILE:LINE and its text) or request_changes".into(),
        }));
    }
    // A task that cannot be reviewed is refused for that, not for its missing branch.
    store.reviewable(task).await?;
    let mut added = Vec::new();
    if !request.comments.is_empty() {
        let diff = crate::conflicts::diff(store, task).await?;
        check_lines(&diff, &request.comments)?;
        added = store.add_review_comments(task, &request.comments, by).await?;
    }
    if request.request_changes {
        let (task, sent) = store.request_changes(task, by, policy).await?;
        return Ok(Reviewed { task, added, sent });
    }
    let task = store.task(task).await?.task;
    Ok(Reviewed { task, added, sent: Vec::new() })
}

/// What an attempt that answers a review is told: each comment with its file and line.
pub fn prompt(comments: &[ReviewComment]) -> String {
    let mut text = String::from(
        "\n\n---\nThe operator reviewed your branch's diff and requested changes. Address each review comment (file:line of your branch's version, then the comment), commit the result, and keep the rest of the work:\n",
    );
    for comment in comments {
        text.push_str(&format!("- {}:{}: {}\n", comment.file, comment.line, comment.text));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conflicts::DiffHunk;

    #[test]
    fn locations_parse_or_name_what_is_wrong() {
        assert_eq!(parse_location("src/a.rs:12"), Ok(("src/a.rs".into(), 12)));
        assert_eq!(parse_location("c:/odd:3"), Ok(("c:/odd".into(), 3)));
        let check = |text: &str, needle: &str| {
            let error = parse_location(text).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        };
        check("src/a.rs", "has no line number");
        check(":4", "has no file");
        check("a.rs:x", "`x` is not a line number");
        check("a.rs:-2", "`-2` is not a line number");
        check("a.rs:0", "counted from 1");
    }

    fn diff() -> TaskDiff {
        TaskDiff {
            branch: "ccm/1a2b3c4d".into(),
            target: "main".into(),
            files: vec![DiffFile {
                path: "work.txt".into(),
                status: "modified".into(),
                binary: false,
                hunks: vec![DiffHunk {
                    header: "@@ -1,3 +1,4 @@".into(),
                    old_start: 1,
                    new_start: 1,
                    lines: vec![
                        " one".into(),
                        "-two".into(),
                        "+2".into(),
                        " three".into(),
                        "+four".into(),
                    ],
                }],
            }],
            ..TaskDiff::default()
        }
    }

    #[test]
    fn a_comment_must_be_on_a_line_the_diff_shows() {
        let diff = diff();
        assert_eq!(new_lines(&diff.files[0]), [(0, 1), (0, 2), (0, 3), (0, 4)]);
        let comment = |file: &str, line| NewComment { file: file.into(), line, text: "x".into() };
        assert!(check_lines(&diff, &[comment("work.txt", 1), comment("work.txt", 4)]).is_ok());
        let error = check_lines(&diff, &[comment("work.txt", 9)]).unwrap_err().to_string();
        assert_eq!(error, "work.txt:9 is outside the diff: the diff shows lines 1-4 of work.txt");
        let error = check_lines(&diff, &[comment("other.txt", 1)]).unwrap_err().to_string();
        assert!(
            error.contains("does not change other.txt against main (it changes work.txt)"),
            "{error}"
        );
    }
}
