//! Stacked tasks (issue 23; migration `20261209010000_task_stacks.sql`): a task created with
//! `--after A --stack` starts from A's branch as soon as A is complete, and lands after A with
//! only its own commits. Its dependency on A is an ordinary `task_deps` edge; `task_stacks`
//! says that the edge is its stack base, and records where its branch forked from A's.

use ccm_schema::{LandState, TaskState};
use serde::{Deserialize, Serialize};
use sqlx::types::uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::tasks::{invalid, load_task};
use super::{Result, Store, Writing};

/// A stacked task's base, as `ccm task show`, the runtime and the lander read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Stack {
    #[sqlx(try_from = "Hyphenated")]
    pub task_id: Uuid,
    /// The task it is stacked on.
    #[sqlx(try_from = "Hyphenated")]
    pub base_task: Uuid,
    /// The commit of the base's branch the task's branch started from (none yet, or none
    /// because it started from the target after the base had landed).
    pub fork_commit: Option<String>,
    /// The base's state now.
    pub base_state: TaskState,
    /// The base's land state, once it entered a land queue.
    pub base_land_state: Option<LandState>,
    /// Whether the operator discarded the base's work (it will not land).
    pub base_discarded: bool,
}

impl Stack {
    /// The base's branch, `ccm/<short id>`, which the stacked task starts from.
    pub fn base_branch(&self) -> String {
        format!("ccm/{}", ccm_schema::types::short_id(&self.base_task))
    }

    /// Whether the base's work is on the target.
    pub fn base_landed(&self) -> bool {
        self.base_land_state == Some(LandState::Landed)
    }

    /// Why the stacked task cannot land yet: its base has not landed (and, when it never
    /// will as things are, why not). `None` once the base landed.
    pub fn waits_for(&self) -> Option<String> {
        if self.base_landed() {
            return None;
        }
        let base = ccm_schema::types::short_id(&self.base_task);
        let why = if self.base_discarded {
            " (its work was discarded: discard this task too, or cancel it)".to_string()
        } else if matches!(self.base_state, TaskState::Failed | TaskState::Cancelled) {
            format!(" (it is {}: it will not land unless it is retried)", self.base_state)
        } else if self.base_state != TaskState::Complete {
            format!(" (it is {})", self.base_state)
        } else {
            String::new()
        };
        Some(format!("task {base}, its stack base, to land{why}"))
    }
}

const STACK_SELECT: &str = r#"
    SELECT s.task_id, s.base_task, s.fork_commit, b.state AS base_state,
           l.state AS base_land_state,
           EXISTS (SELECT 1 FROM discarded_tasks d WHERE d.task_id = s.base_task) AS base_discarded
    FROM task_stacks s
    JOIN tasks b ON b.id = s.base_task
    LEFT JOIN landings l ON l.task_id = s.base_task
"#;

impl Store {
    /// The task's stack base, when it is a stacked task.
    pub async fn stack_of(&self, task: Uuid) -> Result<Option<Stack>> {
        Ok(sqlx::query_as(&format!("{STACK_SELECT} WHERE s.task_id = ?"))
            .bind(task.hyphenated())
            .fetch_optional(&self.readers)
            .await?)
    }

    /// Every stacked task whose own landing is not done (the lander orders its queues by
    /// them).
    pub async fn stacks(&self) -> Result<Vec<Stack>> {
        Ok(sqlx::query_as(&format!(
            "{STACK_SELECT} WHERE NOT EXISTS (SELECT 1 FROM landings o \
             WHERE o.task_id = s.task_id AND o.state = 'landed') ORDER BY s.task_id"
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// Records the commit of its base's branch a stacked task's branch started from; the first
    /// one stays (a later worktree on the same branch forked nowhere new).
    pub async fn record_fork(&self, task: Uuid, commit: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE task_stacks SET fork_commit = ? WHERE task_id = ? AND fork_commit IS NULL",
        )
        .bind(commit)
        .bind(task.hyphenated())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Checks that a new task stacked on `depends_on` can be: exactly one base, with a
/// repository, which is the task's own (taken from the base when the task names none).
/// Returns the base and the task's repository.
pub(super) async fn check_stack(
    tx: &mut Writing,
    depends_on: &[Uuid],
    repo: Option<String>,
) -> Result<(Uuid, String)> {
    let [base] = depends_on else {
        return Err(invalid(
            "stack",
            format!(
                "a stacked task is stacked on exactly one task (`--after A --stack`), got {}",
                depends_on.len()
            ),
        ));
    };
    let loaded = load_task(tx, *base).await?;
    let short = loaded.short_id();
    let Some(base_repo) = loaded.repo else {
        return Err(invalid(
            "stack",
            format!("task {short} has no repository, so it has no branch to stack on"),
        ));
    };
    match repo {
        Some(repo) if repo != base_repo => Err(invalid(
            "stack",
            format!(
                "task {short} works in {base_repo}; a task stacked on it works in the same repository, not {repo}"
            ),
        )),
        _ => Ok((*base, base_repo)),
    }
}

/// Writes the stack rows of new tasks (task, base).
pub(super) async fn insert_stacks(tx: &mut Writing, stacks: &[(Uuid, Uuid)]) -> Result<()> {
    for (task, base) in stacks {
        sqlx::query("INSERT INTO task_stacks (task_id, base_task) VALUES (?, ?)")
            .bind(task.hyphenated())
            .bind(base.hyphenated())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
