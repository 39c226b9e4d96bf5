//! Conflict prediction between the active tasks of one repository (issue 23).
//!
//! A task is *active* while it runs (from `queued` to its end, retries and waits included) and
//! once it is finished (`complete`, or `alert` with its branch) until its work is on the target:
//! a finished branch whose commits are all on the target touches nothing, so it drops out of
//! the prediction by itself.
//!
//! - `mod.rs` (here): the vocabulary ([`ActiveTask`], [`PredictedConflict`]) and the pure
//!   decisions: [`predict_pairs`] (which pairs overlap, and which of those git must judge),
//!   [`judge`] (the prediction, from the overlaps and git's answers) and [`land_order`] (an
//!   order that puts overlapping tasks one after the other). No IO: table-tested below.
//! - `git.rs`: the only place that runs git for the prediction: the target's and the branches'
//!   heads, the files a branch changed, `git merge-tree --write-tree` of two commits.
//! - `engine.rs`: [`Predictor`], the daemon's long-lived task that keeps each repository's
//!   prediction current (git in spawned processes, at most [`engine::GIT_CONCURRENCY`] at a
//!   time, off the store's writer), records it with its alerts, and [`predict`], the one-shot
//!   form for the CLI (`ccm land --plan`).
//!
//! **Invariant**: the prediction is computed from its inputs alone; git's answers are cached by
//! the commits they were asked about, so an unchanged repository costs two git commands a round.

mod engine;
mod git;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

pub use engine::{diff, predict, predict_with, recorded, Predictor, GIT_CONCURRENCY};
pub use git::{DiffFile, DiffHunk, TaskDiff, DIFF_LIMIT};

/// The most paths of one task a task summary carries to the central (and so to other systems).
pub const SHIPPED_FILES: usize = 200;

/// Errors of the prediction and of a task's diff.
#[derive(Debug, thiserror::Error)]
pub enum ConflictError {
    /// A git command failed (its arguments, the directory and what git said).
    #[error("git {args} in {dir} failed: {stderr}")]
    Git { args: String, dir: String, stderr: String },
    /// git could not be started.
    #[error("cannot run git in {dir}: {source}")]
    Spawn {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The task has no branch to show (no repository checkout here, or no branch yet).
    #[error("task {task} has no branch here: {why}")]
    NoBranch { task: String, why: String },
}

/// Where a task stands, as far as the prediction cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// An agent may still change the branch (queued, executing, waiting, retrying, in review).
    Running,
    /// The branch is done and waits to land (`complete`, or `alert` after its review).
    Finished,
}

impl Phase {
    /// The phase of a task in `state`; `None` when it is not active (not started, or ended
    /// without work to land).
    pub fn of(state: ccm_schema::TaskState) -> Option<Phase> {
        use ccm_schema::TaskState as S;
        match state {
            S::Complete | S::Alert => Some(Phase::Finished),
            S::Queued
            | S::Executing
            | S::ReportGeneration
            | S::Supervisory
            | S::Error
            | S::Retry
            | S::Blocked
            | S::WaitingQuota => Some(Phase::Running),
            S::Created | S::Failed | S::Cancelled => None,
        }
    }
}

/// A task of the repository, as the prediction sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    pub task_id: String,
    pub short_id: String,
    pub title: String,
    pub state: String,
    /// The system it runs on, when not this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

/// One active task: what it touched and, when its branch is here, the branch's head.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveTask {
    pub task: TaskRef,
    pub phase: Phase,
    /// Paths relative to the repository (hook events' writes and the branch's diff).
    pub files: BTreeSet<String>,
    /// The head commit of its branch, when the branch is in this system's checkout.
    pub head: Option<String>,
}

/// How sure a prediction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Both touched these files and git cannot judge yet (a task still runs, or runs on
    /// another system): they are likely to conflict.
    Overlap,
    /// `git merge-tree` says merging the two (or the branch into the target) conflicts in
    /// these files.
    Merge,
}

/// A predicted conflict between two active tasks, or between a finished branch and the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictedConflict {
    pub kind: ConflictKind,
    pub task: TaskRef,
    /// The other task; `None` when the conflict is with the target branch itself.
    pub other: Option<TaskRef>,
    /// The target branch, named when `other` is `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The files in conflict (for an overlap, the files both touched), sorted.
    pub files: Vec<String>,
    /// Whether one of the two still runs (an agent may still change it).
    pub running: bool,
}

impl PredictedConflict {
    /// A key for the pair, the same whichever task is first: one alert per pair.
    pub fn pair_key(&self) -> String {
        match &self.other {
            Some(other) => {
                let (a, b) = ordered(&self.task.task_id, &other.task_id);
                format!("{a}+{b}")
            }
            None => format!("{}+target", self.task.task_id),
        }
    }

    /// Whether the conflict involves the task `id`.
    pub fn involves(&self, id: &str) -> bool {
        self.task.task_id == id || self.other.as_ref().is_some_and(|o| o.task_id == id)
    }

    /// One line for people: `overlap with 1a2b3c4d (title): src/a.rs, src/b.rs`, seen from
    /// the task `from`.
    pub fn describe_from(&self, from: &str) -> String {
        let other = match (&self.other, self.task.task_id == from) {
            (Some(other), true) => describe_task(other),
            (Some(_), false) => describe_task(&self.task),
            (None, _) => format!("the target {}", self.target.as_deref().unwrap_or("branch")),
        };
        let what = match self.kind {
            ConflictKind::Overlap => "touches the same files as",
            ConflictKind::Merge => "conflicts with",
        };
        format!("{what} {other}: {}", self.files.join(", "))
    }
}

fn describe_task(task: &TaskRef) -> String {
    match &task.system {
        Some(system) => format!("{} ({}) on {system}", task.short_id, task.title),
        None => format!("{} ({})", task.short_id, task.title),
    }
}

fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Whether two repository paths collide: the same path, or one is a directory holding the
/// other (git reports a directory/file conflict there).
pub fn paths_collide(a: &str, b: &str) -> bool {
    let inside = |long: &str, short: &str| {
        long.len() > short.len() && long.starts_with(short) && long.as_bytes()[short.len()] == b'/'
    };
    a == b || inside(a, b) || inside(b, a)
}

/// The files of `a` that collide with a file of `b` (both sorted), with those of `b` they
/// collide with, sorted and without repeats.
pub fn overlap(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    let mut both = BTreeSet::new();
    for x in a {
        // Equal paths and the paths inside `x` (as a directory) sort among those starting with `x`.
        for y in b.range::<str, _>((Bound::Included(x.as_str()), Bound::Unbounded)) {
            if !y.starts_with(x.as_str()) {
                break;
            }
            if paths_collide(x, y) {
                both.insert(x.clone());
                both.insert(y.clone());
            }
        }
        // `x` inside a directory `y` of `b`: each proper prefix of `x` at a `/`.
        for (i, _) in x.match_indices('/') {
            if let Some(y) = b.get(&x[..i]) {
                both.insert(x.clone());
                both.insert(y.clone());
            }
        }
    }
    both.into_iter().collect()
}

/// A pair of tasks that git must judge: both finished with their branches here, and their
/// files overlap (disjoint files cannot conflict, so git is not asked about them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MergeQuestion {
    pub ours: String,
    pub theirs: String,
}

/// What the prediction asks of git, and the overlaps it found on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    /// Pairs `(i, j)` (indices into the tasks, `i < j`) whose files overlap, with the files.
    pub overlaps: Vec<(usize, usize, Vec<String>)>,
    /// Merges git must judge: the overlapping pairs of finished branches, and each finished
    /// branch with the target (`theirs` is then the target's head).
    pub merges: BTreeSet<MergeQuestion>,
}

/// Which pairs of `tasks` overlap, and which merges git must try (`target`: the target's head,
/// when known).
pub fn predict_pairs(tasks: &[ActiveTask], target: Option<&str>) -> Pairs {
    let mut pairs = Pairs::default();
    for (i, a) in tasks.iter().enumerate() {
        if let (Phase::Finished, Some(head), Some(target)) = (a.phase, &a.head, target) {
            if !a.files.is_empty() {
                pairs.merges.insert(MergeQuestion { ours: target.into(), theirs: head.clone() });
            }
        }
        for (j, b) in tasks.iter().enumerate().skip(i + 1) {
            let files = overlap(&a.files, &b.files);
            if files.is_empty() {
                continue;
            }
            if let (Phase::Finished, Phase::Finished, Some(x), Some(y)) =
                (a.phase, b.phase, &a.head, &b.head)
            {
                let (ours, theirs) = ordered(x, y);
                pairs.merges.insert(MergeQuestion { ours: ours.into(), theirs: theirs.into() });
            }
            pairs.overlaps.push((i, j, files));
        }
    }
    pairs
}

/// git's answers: for each merge asked, the conflicted files (empty: it merges cleanly). A
/// merge git could not be asked about is absent.
pub type MergeAnswers = HashMap<MergeQuestion, Vec<String>>;

/// The prediction: every overlapping pair that git did not find to merge cleanly, and every
/// finished branch that conflicts with the target. Sorted: merges first, then by task.
pub fn judge(
    tasks: &[ActiveTask],
    pairs: &Pairs,
    answers: &MergeAnswers,
    target: Option<(&str, &str)>,
) -> Vec<PredictedConflict> {
    let mut out = Vec::new();
    for (i, j, files) in &pairs.overlaps {
        let (a, b) = (&tasks[*i], &tasks[*j]);
        let running = a.phase == Phase::Running || b.phase == Phase::Running;
        let answer = match (&a.head, &b.head, running) {
            (Some(x), Some(y), false) => {
                let (ours, theirs) = ordered(x, y);
                answers.get(&MergeQuestion { ours: ours.into(), theirs: theirs.into() })
            }
            _ => None,
        };
        let (kind, files) = match answer {
            Some(conflicted) if conflicted.is_empty() => continue, // git merges them cleanly
            Some(conflicted) => (ConflictKind::Merge, conflicted.clone()),
            None => (ConflictKind::Overlap, files.clone()),
        };
        out.push(PredictedConflict {
            kind,
            task: a.task.clone(),
            other: Some(b.task.clone()),
            target: None,
            files,
            running,
        });
    }
    if let Some((name, head)) = target {
        for task in tasks.iter().filter(|t| t.phase == Phase::Finished) {
            let Some(theirs) = &task.head else { continue };
            let question = MergeQuestion { ours: head.into(), theirs: theirs.clone() };
            if let Some(conflicted) = answers.get(&question).filter(|c| !c.is_empty()) {
                out.push(PredictedConflict {
                    kind: ConflictKind::Merge,
                    task: task.task.clone(),
                    other: None,
                    target: Some(name.to_string()),
                    files: conflicted.clone(),
                    running: false,
                });
            }
        }
    }
    out.sort_by(|x, y| {
        (std::cmp::Reverse(x.kind), &x.task.task_id, x.other.as_ref().map(|o| &o.task_id)).cmp(&(
            std::cmp::Reverse(y.kind),
            &y.task.task_id,
            y.other.as_ref().map(|o| &o.task_id),
        ))
    });
    out
}

/// An order to land `tasks` (ids, in the order the caller would land them) in which tasks
/// linked by a predicted conflict come one after the other: each task is followed at once by
/// the not yet placed tasks it conflicts with (transitively, breadth first), so the second of
/// an overlapping pair is rebased onto the first right after it landed. Tasks in no conflict
/// keep their place; ids in `conflicts` but not in `tasks` are ignored.
pub fn land_order(tasks: &[String], conflicts: &[PredictedConflict]) -> Vec<String> {
    let wanted: BTreeSet<&str> = tasks.iter().map(String::as_str).collect();
    let mut linked: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        let Some(other) = &c.other else { continue };
        let (a, b) = (c.task.task_id.as_str(), other.task_id.as_str());
        if wanted.contains(a) && wanted.contains(b) {
            linked.entry(a).or_default().push(b);
            linked.entry(b).or_default().push(a);
        }
    }
    let position: HashMap<&str, usize> =
        tasks.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    for neighbours in linked.values_mut() {
        neighbours.sort_by_key(|t| position[t]);
        neighbours.dedup();
    }
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(tasks.len());
    for start in tasks {
        if !placed.insert(start) {
            continue;
        }
        let mut queue = std::collections::VecDeque::from([start.as_str()]);
        while let Some(task) = queue.pop_front() {
            order.push(task.to_string());
            for next in linked.get(task).into_iter().flatten() {
                if placed.insert(next) {
                    queue.push_back(next);
                }
            }
        }
    }
    order
}

/// At most [`SHIPPED_FILES`] of `files`, for the task summary.
pub fn shipped(files: &BTreeSet<String>) -> Vec<String> {
    files.iter().take(SHIPPED_FILES).cloned().collect()
}

#[cfg(test)]
mod tests;
