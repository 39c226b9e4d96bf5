//! The task page's review (issue 23): a finished task's branch against its target, file by
//! file and hunk by hunk, with a comment form on every line the diff shows of the branch's
//! version, and the "request changes", "land" and "discard" buttons. Everything it does goes
//! through the same functions as the CLI and the API (`crate::review::review`,
//! `crate::land::enqueue`, `Store::discard_task`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use ccm_schema::{LandState, TaskState};
use serde::Deserialize;

use super::{pages, SignedIn};
use crate::conflicts::DiffFile;
use crate::daemon::AppState;
use crate::review::ReviewRequest;
use crate::store::{NewComment, RetryPolicy, ReviewComment, TaskDetail};

/// Who the dashboard acts as in task logs and review comments.
const ACTOR: &str = "dashboard";

/// The review part of a task's page.
pub struct ReviewSection {
    /// Whether the diff is shown with its forms (the task is finished, not landing or landed,
    /// not discarded).
    pub open: bool,
    pub branch: String,
    pub target: String,
    /// Why the diff cannot be shown (no branch here, git failed), when it cannot.
    pub problem: String,
    pub files: Vec<FileView>,
    pub truncated: bool,
    /// Comments waiting for "request changes".
    pub pending: usize,
    /// The land state, when the task is in a land queue (`land_queued`, `land_failed`).
    pub land_state: String,
    /// Every comment, oldest first (those sent to an attempt say which).
    pub comments: Vec<CommentView>,
}

pub struct FileView {
    pub index: usize,
    pub path: String,
    pub status: String,
    pub binary: bool,
    pub hunks: Vec<HunkView>,
}

pub struct HunkView {
    pub header: String,
    pub lines: Vec<LineView>,
}

/// One line of a hunk.
pub struct LineView {
    /// `add`, `del`, `ctx` or `note` (git's `\ No newline at end of file`).
    pub kind: &'static str,
    /// Its numbers in the target's and in the branch's version (empty where it has none).
    pub old: String,
    pub new: String,
    pub text: String,
    /// The branch's line a comment on it is about; 0 for a removed line (no comment form).
    pub line: u32,
    pub comments: Vec<CommentView>,
}

pub struct CommentView {
    pub file: String,
    pub line: u32,
    pub text: String,
    pub by: String,
    pub at: String,
    /// "pending", or "sent to attempt N".
    pub status: String,
}

impl From<&ReviewComment> for CommentView {
    fn from(c: &ReviewComment) -> Self {
        CommentView {
            file: c.file.clone(),
            line: c.line,
            text: c.text.clone(),
            by: c.created_by.clone(),
            at: c.created_at.to_string(),
            status: match c.for_attempt {
                Some(n) if c.requested_at.is_some() => format!("sent to attempt {n}"),
                _ => "pending".into(),
            },
        }
    }
}

/// The review part of the page of `detail`'s task: `None` for a task without a repository or
/// one that neither can be reviewed nor ever was.
pub async fn section(state: &AppState, detail: &TaskDetail) -> Option<ReviewSection> {
    let task = &detail.task;
    task.repo.as_ref()?;
    let land_state = detail.landing.as_ref().map(|l| l.state);
    let open = matches!(task.state, TaskState::Complete | TaskState::Alert)
        && detail.discarded.is_none()
        && land_state.is_none_or(|s| matches!(s, LandState::LandQueued | LandState::LandFailed));
    if !open && detail.review.is_empty() {
        return None;
    }
    let comments: Vec<CommentView> = detail.review.iter().map(CommentView::from).collect();
    let mut section = ReviewSection {
        open,
        branch: format!("ccm/{}", task.short_id()),
        target: String::new(),
        problem: String::new(),
        files: Vec::new(),
        truncated: false,
        pending: detail.review.iter().filter(|c| c.requested_at.is_none()).count(),
        land_state: land_state.map(|s| s.label().to_string()).unwrap_or_default(),
        comments,
    };
    if !open {
        return Some(section);
    }
    match crate::conflicts::diff(&state.store, &task.id.to_string()).await {
        Ok(diff) => {
            section.target = diff.target.clone();
            section.truncated = diff.truncated;
            section.files = diff
                .files
                .iter()
                .enumerate()
                .map(|(index, file)| file_view(index, file, &detail.review))
                .collect();
        }
        Err(e) => section.problem = e.to_string(),
    }
    Some(section)
}

fn file_view(index: usize, file: &DiffFile, comments: &[ReviewComment]) -> FileView {
    let pending = |line: u32| -> Vec<CommentView> {
        comments
            .iter()
            .filter(|c| c.requested_at.is_none() && c.file == file.path && c.line == line)
            .map(CommentView::from)
            .collect()
    };
    let hunks = file
        .hunks
        .iter()
        .map(|hunk| {
            let (mut old, mut new) = (hunk.old_start, hunk.new_start);
            let lines = hunk
                .lines
                .iter()
                .map(|text| {
                    let (kind, o, n) = match text.chars().next() {
                        Some('+') => ("add", None, Some(new)),
                        Some('-') => ("del", Some(old), None),
                        Some('\\') => ("note", None, None),
                        _ => ("ctx", Some(old), Some(new)),
                    };
                    old += u32::from(o.is_some());
                    new += u32::from(n.is_some());
                    let line = n.unwrap_or(0);
                    LineView {
                        kind,
                        old: o.map(|n| n.to_string()).unwrap_or_default(),
                        new: n.map(|n| n.to_string()).unwrap_or_default(),
                        text: text.clone(),
                        line,
                        comments: if line > 0 { pending(line) } else { Vec::new() },
                    }
                })
                .collect();
            HunkView { header: hunk.header.clone(), lines }
        })
        .collect();
    FileView {
        index,
        path: file.path.clone(),
        status: file.status.clone(),
        binary: file.binary,
        hunks,
    }
}

#[derive(Deserialize)]
pub struct ReviewForm {
    #[serde(default)]
    csrf: String,
    /// `comment`, `request_changes`, `land` or `discard`.
    #[serde(default)]
    action: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    line: String,
    #[serde(default)]
    text: String,
}

/// `POST /tasks/{id}/review`: the review section's forms.
pub async fn act(
    signed_in: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ReviewForm>,
) -> Response {
    if let Err(refused) = signed_in.check_form(&headers, &form.csrf) {
        return refused;
    }
    let policy = RetryPolicy::from(&*state.config.current());
    let back = |task: &str, anchor: &str| {
        (StatusCode::SEE_OTHER, [(header::LOCATION, format!("/tasks/{task}#{anchor}"))])
            .into_response()
    };
    match form.action.as_str() {
        "comment" => {
            let Ok(line) = form.line.trim().parse::<u32>() else {
                return refused(format!("line: `{}` is not a line number", form.line));
            };
            let request = ReviewRequest {
                comments: vec![NewComment { file: form.file, line, text: form.text }],
                request_changes: false,
            };
            match crate::review::review(&state.store, &id, &request, ACTOR, policy).await {
                Ok(reviewed) => back(&reviewed.task.id.to_string(), "review"),
                Err(e) => pages::failure(e),
            }
        }
        "request_changes" => {
            let request = ReviewRequest { comments: Vec::new(), request_changes: true };
            match crate::review::review(&state.store, &id, &request, ACTOR, policy).await {
                Ok(reviewed) => {
                    state.metrics.count_event(ccm_schema::TaskEvent::ChangesRequested.name());
                    state.wake_scheduler();
                    back(&reviewed.task.id.to_string(), "main")
                }
                Err(e) => pages::failure(e),
            }
        }
        "land" => match crate::land::enqueue(&state.store, &state.home, &id).await {
            Ok(landing) => {
                state.land_wake.notify_one();
                back(&landing.task_id.to_string(), "main")
            }
            Err(e) => pages::failure(e),
        },
        "discard" => match state.store.discard_task(&id, "discarded from the dashboard").await {
            Ok(discarded) => {
                state.wake();
                back(&discarded.task_id.to_string(), "main")
            }
            Err(e) => pages::failure(e),
        },
        other => refused(format!(
            "action: must be comment, request_changes, land or discard, got `{other}`"
        )),
    }
}

fn refused(text: String) -> Response {
    pages::message(StatusCode::BAD_REQUEST, "Refused", &text)
}
