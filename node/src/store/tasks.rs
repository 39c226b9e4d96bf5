//! Tasks, their dependency DAG, the append-only task log, and every state change.
//!
//! All state changes go through [`Store::apply_event`] (or the scheduler's pass), which asks
//! [`ccm_schema::transition`] for the next state, carries out the effects that belong to the
//! store (attempt counting, retry timers, alerts, decisions), appends one log row per
//! transition and one outbox row per changed task, all in one transaction.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use ccm_schema::types::short_id;
use ccm_schema::{
    backoff, transition, DecisionKind, Effect, Severity, Task, TaskEvent, TaskLogEntry, TaskState,
    Timestamp,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::records::{ALERT_COLUMNS, DECISION_COLUMNS};
use super::{outbox, outbox_alert, Result, Store, StoreError, Writing};
use crate::config::Config;

/// A task to create, as the API and the CLI give it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub title: String,
    /// What the agent is asked to do; the title when omitted.
    #[serde(default)]
    pub prompt: Option<String>,
    /// Repository URL (normalized on the way in).
    #[serde(default)]
    pub repo: Option<String>,
    /// Agent profile; the configured default when omitted.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub workflow: Option<String>,
    /// Command of the verification gate.
    #[serde(default)]
    pub verify: Option<String>,
    /// The configured default when omitted.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Higher runs first; between [`PRIORITY_MIN`] and [`PRIORITY_MAX`].
    #[serde(default)]
    pub priority: i64,
    /// Ids (or unique id prefixes) of tasks that must complete first (`after` in a request
    /// body, as on the command line).
    #[serde(default, alias = "after")]
    pub depends_on: Vec<String>,
    /// Stacked on its one dependency (`--after A --stack`): starts from A's branch as soon as
    /// A is complete, and lands after A with only its own commits (`store/stacks.rs`).
    #[serde(default)]
    pub stack: bool,
}

/// Which tasks to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    /// At most this many finished tasks (complete, failed, cancelled), the most recently
    /// changed; every one when absent. Unfinished tasks are always listed.
    #[serde(default)]
    pub finished: Option<i64>,
}

/// A task with its whole log, its attempts and its reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    pub log: Vec<TaskLogEntry>,
    /// The task's attempts: each run of a worker agent and how it ended.
    pub runs: Vec<ccm_schema::Attempt>,
    pub reports: Vec<ccm_schema::Report>,
    /// What all the task's agents cost, in USD (as their CLIs report it).
    #[serde(default)]
    pub cost_usd: f64,
    /// Tokens all the task's agents used.
    #[serde(default)]
    pub tokens: Tokens,
    /// The task's worktree (`path`, `branch`, ...) while it exists.
    #[serde(default)]
    pub worktree: Option<crate::worktree::SavedWorktree>,
    /// Hook events of the task's agents (`ccm task show ID --events` lists them).
    #[serde(default)]
    pub hook_events: i64,
    /// A task run here for the fleet whose lease was lost: why what it shows here is not the
    /// task's outcome (`result discarded: lease lost to beta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// Conflicts predicted between this task and other active tasks of its repository (or
    /// its target), as the daemon's predictor last recorded them (`conflicts`).
    #[serde(default)]
    pub conflicts: Vec<crate::conflicts::PredictedConflict>,
    /// The files the task touched, as the predictor last saw them (relative to its repository).
    #[serde(default)]
    pub touched_files: Vec<String>,
    /// The task's landing on its target branch, once it entered a land queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub landing: Option<super::Landing>,
    /// Why and when the operator dropped the task's work (`ccm task discard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded: Option<super::Discarded>,
    /// The task it is stacked on (`--after A --stack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<super::Stack>,
    /// The task this one is a sub-task of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Its sub-tasks, each with its own (the tree below it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<super::Subtask>,
    /// Review comments on its diff, oldest first: pending ones and those sent to an attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub review: Vec<super::ReviewComment>,
}

/// Input and output tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: i64,
    pub output: i64,
}

/// Timing of retries and quota waits; the default waits for nothing (for events that time
/// nothing, such as a cancel).
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Wait after a usage limit whose reset time is unknown.
    pub quota_wait: Duration,
}

impl From<&Config> for RetryPolicy {
    fn from(config: &Config) -> Self {
        RetryPolicy {
            base: Duration::from_secs(config.tasks.retry_base_secs),
            cap: Duration::from_secs(config.tasks.retry_cap_secs),
            quota_wait: Duration::from_secs(config.runtime.quota_wait_secs),
        }
    }
}

const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// SQL: the dependencies of the task `t` are all complete.
/// A dependency of a repository with a landing policy (`land_policies`) counts once it landed,
/// unless it is the task's stack base (`task_stacks`): that one counts once complete.
const DEPENDENCIES_COMPLETE: &str = "NOT EXISTS (
    SELECT 1 FROM task_deps d JOIN tasks dep ON dep.id = d.depends_on
    WHERE d.task_id = t.id AND (dep.state <> 'complete'
        OR (EXISTS (SELECT 1 FROM land_policies p WHERE p.repo = dep.repo)
            AND NOT EXISTS (SELECT 1 FROM landings l
                            WHERE l.task_id = dep.id AND l.state = 'landed')
            AND NOT EXISTS (SELECT 1 FROM task_stacks s
                            WHERE s.task_id = t.id AND s.base_task = dep.id))))";
/// Tasks written by one statement at most (12 bound values each; SQLite takes 32,766).
const INSERT_CHUNK: usize = 512;
/// Tasks of an external profile admitted by one scheduler pass at most.
const EXTERNAL_PER_PASS: i64 = 500;
/// Longest title, in characters.
pub const TITLE_MAX_CHARS: usize = 500;
/// The longest prompt a profile that passes it on the command line (`{prompt}`) is given at
/// creation: one argument's limit less 32 KiB for what a retry adds to it (the previous
/// attempt's verify output and last message).
pub const PROMPT_ARG_MAX_BYTES: usize = crate::agents::profile::MAX_ARG_BYTES + 1 - 32 * 1024;
/// Longest reason an operator or a program may give with an event, in bytes.
pub const REASON_MAX_BYTES: usize = 4096;
/// Range of a task's priority.
pub const PRIORITY_MIN: i64 = -1000;
pub const PRIORITY_MAX: i64 = 1000;
pub(super) const TASK_COLUMNS: &str =
    "id, title, prompt, repo, profile, workflow, verify, max_attempts, attempts, \
     priority, state, wake_at, created_at, updated_at, version";

impl Store {
    /// Creates a task in `created`, with its dependencies, its first log entry and an outbox row.
    pub async fn create_task(&self, new: NewTask, config: &Config, actor: &str) -> Result<Task> {
        let mut tx = self.write().await?;
        let task = create_in_tx(&mut tx, Uuid::new_v4(), new, config, actor).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Creates many tasks, each with the actor who asked, in one transaction (group commit).
    /// All or nothing: on an error the caller may create them one by one.
    pub async fn create_tasks(
        &self,
        batch: Vec<(NewTask, String)>,
        config: &Config,
    ) -> Result<Vec<Task>> {
        let mut tx = self.write().await?;
        let mut created = Vec::with_capacity(batch.len());
        let mut actors = Vec::with_capacity(batch.len());
        let mut stacks = Vec::new();
        for (new, actor) in batch {
            let (task, stack) = prepare_task(&mut tx, Uuid::new_v4(), new, config).await?;
            stacks.extend(stack.map(|base| (task.id, base)));
            created.push(task);
            actors.push(actor);
        }
        insert_tasks(&mut tx, &created, &actors).await?;
        super::stacks::insert_stacks(&mut tx, &stacks).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Adds dependencies to a task that is still waiting in `created`; refuses one that would
    /// close a cycle, naming the cycle.
    pub async fn add_dependencies(
        &self,
        task: &str,
        depends_on: &[String],
        actor: &str,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        let id = resolve_task(&mut tx, task).await?;
        let current = load_task(&mut tx, id).await?;
        if current.state != TaskState::Created {
            return Err(invalid(
                "depends_on",
                format!(
                    "task {} is {}; dependencies can only be added while it is created",
                    current.short_id(),
                    current.state
                ),
            ));
        }
        let mut added = Vec::new();
        for dep in depends_on {
            let dep_id = resolve_task(&mut tx, dep).await.map_err(|e| match e {
                StoreError::TaskNotFound(_) | StoreError::Ambiguous { .. } => {
                    invalid("depends_on", e.to_string())
                }
                e => e,
            })?;
            if let Some(cycle) = find_path(&mut tx, dep_id, id).await? {
                let mut names = Vec::with_capacity(cycle.len() + 1);
                for node in std::iter::once(id).chain(cycle) {
                    names.push(describe(&mut tx, node).await?);
                }
                return Err(StoreError::Cycle(names.join(" → ")));
            }
            insert_dependency(&mut tx, id, dep_id).await?;
            added.push(short_id(&dep_id));
        }
        if !added.is_empty() {
            let now = Timestamp::now();
            let reason = format!("now depends on {}", added.join(", "));
            append_log(
                &mut tx,
                id,
                now,
                Some(TaskState::Created),
                TaskState::Created,
                &reason,
                actor,
            )
            .await?;
            touch(&mut tx, id, now).await?;
        }
        let task = load_task(&mut tx, id).await?;
        super::outbox_task(&mut tx, &task, false).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Applies `event` to a task and returns the task after it. What the runtime does next
    /// (start, verify, report, review, stop) it derives from the new state.
    pub async fn apply_event(
        &self,
        task: &str,
        event: TaskEvent,
        reason: &str,
        actor: &str,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        let id = resolve_task(&mut tx, task).await?;
        apply_in_tx(&mut tx, id, event, reason, actor, policy).await?;
        let task = load_task(&mut tx, id).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// One pass of the scheduler: blocks tasks whose dependencies failed, wakes tasks whose
    /// retry or quota wait is over, and admits waiting tasks by priority while agent slots are
    /// free. Tasks of the `external` profiles (no runtime runs them) hold no slot. Returns how
    /// many tasks changed state.
    pub async fn schedule(
        &self,
        slots: u32,
        external: &[String],
        policy: RetryPolicy,
    ) -> Result<usize> {
        const ACTOR: &str = "scheduler";
        let now = Timestamp::now();
        let external = serde_json::to_string(external).unwrap_or_default();
        if !self.schedule_needed(slots, &external, now).await? {
            return Ok(0); // the common case under load: nothing can move, so no write lock
        }
        let mut tx = self.write().await?;
        let mut changed = 0;

        let failed_deps: Vec<(String, String, TaskState)> = sqlx::query_as(
            r#"
            SELECT d.task_id, d.depends_on, dep.state
            FROM waiting_deps d
            CROSS JOIN tasks dep ON dep.id = d.depends_on
            CROSS JOIN tasks t ON t.id = d.task_id
            WHERE dep.state IN ('failed', 'cancelled') AND t.state = 'created'
            "#,
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut blocked = HashSet::new();
        for (task, dep, dep_state) in failed_deps {
            if blocked.insert(task.clone()) {
                let reason = format!("dependency {} is {dep_state}", &dep[..8]);
                apply_in_tx(
                    &mut tx,
                    parse_id(&task)?,
                    TaskEvent::DependencyFailed,
                    &reason,
                    ACTOR,
                    policy,
                )
                .await?;
                changed += 1;
            }
        }

        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM tasks WHERE state = 'retry' AND wake_at <= ? ORDER BY wake_at",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (task,) in due {
            apply_in_tx(
                &mut tx,
                parse_id(&task)?,
                TaskEvent::RetryDue,
                "retry backoff elapsed",
                ACTOR,
                policy,
            )
            .await?;
            changed += 1;
        }

        let (busy,): (i64,) = sqlx::query_as(&format!(
            "{}{}",
            held_profiles(slot_holding_states()),
            busy_slots("?1")
        ))
        .bind(&external)
        .fetch_one(&mut *tx)
        .await?;
        let mut free = i64::from(slots).saturating_sub(busy);

        if free > 0 {
            let quota: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM tasks WHERE state = 'waiting_quota' AND wake_at <= ? ORDER BY priority DESC, wake_at LIMIT ?",
            )
            .bind(now)
            .bind(free)
            .fetch_all(&mut *tx)
            .await?;
            for (task,) in quota {
                let task = parse_id(&task)?;
                let reason = if super::cost_caps::waits_for_cap(&mut tx, task).await? {
                    "daily cost cap raised, or a new day began"
                } else {
                    "usage limit reset"
                };
                apply_in_tx(&mut tx, task, TaskEvent::QuotaReset, reason, ACTOR, policy).await?;
                free -= 1;
                changed += 1;
            }
        }

        // Tasks of an external profile hold no slot once queued, so the slots do not ration
        // their admission (a pass admits at most EXTERNAL_PER_PASS of them, to keep it short).
        // The two differ in where they start: the external tasks are found from their profiles
        // (`tasks_by_state_profile`), since walking every waiting task in priority order to find
        // the few of an external profile took a millisecond a pass with 5,000 waiting; the others
        // are walked in priority order, the first `free` of them.
        let ready_sql = |tasks: &str, filter: &str| {
            format!(
                r#"
                SELECT t.id FROM {tasks}
                WHERE t.state = 'created' AND {filter} AND {DEPENDENCIES_COMPLETE}
                ORDER BY t.priority DESC, t.created_at, t.id
                LIMIT ?2
                "#
            )
        };
        let external_ready: Vec<(String,)> = sqlx::query_as(&ready_sql(
            "json_each(?1) p CROSS JOIN tasks t ON t.profile = p.value",
            "true",
        ))
        .bind(&external)
        .bind(EXTERNAL_PER_PASS)
        .fetch_all(&mut *tx)
        .await?;
        const NO_SLOT: &str = "dependencies complete; its profile holds no agent slot";
        let mut ready: Vec<(String, &str)> =
            external_ready.into_iter().map(|(id,)| (id, NO_SLOT)).collect();
        if free > 0 {
            let slotted: Vec<(String,)> = sqlx::query_as(&ready_sql(
                "tasks t",
                "t.profile NOT IN (SELECT value FROM json_each(?1))",
            ))
            .bind(&external)
            .bind(free)
            .fetch_all(&mut *tx)
            .await?;
            let reason = "dependencies complete and an agent slot is free";
            ready.extend(slotted.into_iter().map(|(id,)| (id, reason)));
        }
        changed += admit(&mut tx, &ready, ACTOR, policy).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Whether a scheduler pass would change anything, asked of a reader.
    async fn schedule_needed(&self, slots: u32, external: &str, now: Timestamp) -> Result<bool> {
        let (needed,): (bool,) = sqlx::query_as(&format!(
            r#"
            {held}
            SELECT EXISTS (
                       -- The edges of waiting tasks (`waiting_deps`), not every task that ever
                       -- failed, nor every waiting one.
                       SELECT 1 FROM waiting_deps d
                       CROSS JOIN tasks dep ON dep.id = d.depends_on
                       CROSS JOIN tasks t ON t.id = d.task_id
                       WHERE dep.state IN ('failed', 'cancelled') AND t.state = 'created')
                OR EXISTS (SELECT 1 FROM tasks WHERE state = 'retry' AND wake_at <= ?1)
                OR EXISTS (
                       SELECT 1 FROM json_each(?3) p
                       CROSS JOIN tasks t ON t.state = 'created' AND t.profile = p.value
                       WHERE {DEPENDENCIES_COMPLETE})
                OR (({busy}) < ?2
                    AND (EXISTS (SELECT 1 FROM tasks WHERE state = 'waiting_quota' AND wake_at <= ?1)
                         OR EXISTS (
                             SELECT 1 FROM tasks t
                             WHERE t.state = 'created' AND {DEPENDENCIES_COMPLETE})))
            "#,
            held = held_profiles(slot_holding_states()),
            busy = busy_slots("?3"),
        ))
        .bind(now)
        .bind(slots)
        .bind(external)
        .fetch_one(&self.readers)
        .await?;
        Ok(needed)
    }

    /// Tasks, oldest first, each with its dependencies and landing. With `filter.finished`, the
    /// finished ones are the newest that many (one index range per finished state), so the list
    /// does not grow with the months of finished tasks a node keeps.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        // One read transaction: every query sees the same snapshot, so a task that moves from
        // one state to another meanwhile is listed once.
        let mut snapshot = self.readers.begin().await?;
        let mut tasks: Vec<Task> = match filter.finished {
            None => {
                sqlx::query_as(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR state = ?1) \
                     ORDER BY created_at, id"
                ))
                .bind(filter.state)
                .fetch_all(&mut *snapshot)
                .await?
            }
            Some(finished) => {
                let states =
                    TaskState::ALL.iter().filter(|s| filter.state.is_none_or(|f| f == **s));
                let mut tasks: Vec<Task> = Vec::new();
                let mut ended: Vec<Task> = Vec::new();
                for state in states {
                    let rows: Vec<Task> = sqlx::query_as(&format!(
                        "SELECT {TASK_COLUMNS} FROM tasks INDEXED BY tasks_board WHERE state = ?1 \
                         ORDER BY updated_at DESC, id LIMIT ?2"
                    ))
                    .bind(state)
                    .bind(if state.is_terminal() { finished.max(0) } else { -1 })
                    .fetch_all(&mut *snapshot)
                    .await?;
                    if state.is_terminal() {
                        ended.extend(rows)
                    } else {
                        tasks.extend(rows)
                    }
                }
                ended.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(a.id.cmp(&b.id)));
                ended.truncate(usize::try_from(finished).unwrap_or(0));
                tasks.extend(ended);
                tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
                tasks
            }
        };
        let ids =
            serde_json::Value::from(tasks.iter().map(|t| t.id.to_string()).collect::<Vec<_>>())
                .to_string();
        let edges: Vec<(String, String)> = sqlx::query_as(
            "SELECT task_id, depends_on FROM task_deps \
             WHERE task_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .fetch_all(&mut *snapshot)
        .await?;
        let mut deps: HashMap<String, Vec<Uuid>> = HashMap::new();
        for (task, dep) in edges {
            deps.entry(task).or_default().push(parse_id(&dep)?);
        }
        let landings: Vec<(String, ccm_schema::LandState)> = sqlx::query_as(
            "SELECT task_id, state FROM landings WHERE task_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .fetch_all(&mut *snapshot)
        .await?;
        let mut landings: HashMap<String, ccm_schema::LandState> = landings.into_iter().collect();
        for task in &mut tasks {
            let id = task.id.to_string();
            if let Some(d) = deps.remove(&id) {
                task.depends_on = d;
            }
            task.land_state = landings.remove(&id);
        }
        snapshot.commit().await?;
        Ok(tasks)
    }

    /// One task (by id or unique id prefix) with its whole log.
    pub async fn task(&self, task: &str) -> Result<TaskDetail> {
        let mut conn = self.readers.acquire().await?;
        let id = resolve_task(&mut conn, task).await?;
        let task = load_task(&mut conn, id).await?;
        let log = sqlx::query_as(
            "SELECT at, from_state, to_state, reason, actor FROM task_log WHERE task_id = ? ORDER BY id",
        )
        .bind(id.hyphenated())
        .fetch_all(&mut *conn)
        .await?;
        let (cost_usd, Tokens { input, output }) = task_cost(&mut conn, id).await?;
        let (hook_events,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM hook_events WHERE task_id = ?")
                .bind(id.hyphenated())
                .fetch_one(&mut *conn)
                .await?;
        drop(conn);
        let repo = task.repo.clone();
        Ok(TaskDetail {
            log,
            runs: self.attempts(id).await?,
            reports: self.reports(id).await?,
            worktree: self.worktree(id).await?,
            task,
            cost_usd,
            tokens: Tokens { input, output },
            hook_events,
            stale: self.routed_stale(id).await?,
            conflicts: self.conflicts_of_task(id, repo.as_deref()).await?,
            touched_files: self.touched_files(id).await?,
            landing: self.landing(id).await?,
            discarded: self.discarded(id).await?,
            stack: self.stack_of(id).await?,
            parent: self.parent_of(id).await?,
            subtasks: self.subtasks(id).await?,
            review: self.review_comments(id).await?,
        })
    }
}

/// Validates and inserts one new task inside `tx`.
/// Creates a task with `id` (new, or a routed task's central id) in `created`.
pub(super) async fn create_in_tx(
    tx: &mut Writing,
    id: Uuid,
    new: NewTask,
    config: &Config,
    actor: &str,
) -> Result<Task> {
    let (task, stack) = prepare_task(tx, id, new, config).await?;
    insert_tasks(tx, std::slice::from_ref(&task), &[actor]).await?;
    if let Some(base) = stack {
        super::stacks::insert_stacks(tx, &[(task.id, base)]).await?;
    }
    Ok(task)
}

/// Checks the reason given with an event from outside (the API, `ccm task event`): it ends up
/// in the task's log, an alert and the central, so it is text of bounded length without NUL.
pub fn check_event_reason(reason: &str) -> Result<()> {
    if reason.contains('\0') {
        return Err(invalid("reason", "must not contain NUL bytes"));
    }
    if reason.len() > REASON_MAX_BYTES {
        return Err(invalid(
            "reason",
            format!("must be at most {REASON_MAX_BYTES} bytes, got {}", reason.len()),
        ));
    }
    Ok(())
}

/// Checks a new task against the configuration and resolves its dependencies: the task as it
/// will be stored, and its stack base when it is stacked; nothing written yet.
async fn prepare_task(
    tx: &mut Writing,
    id: Uuid,
    new: NewTask,
    config: &Config,
) -> Result<(Task, Option<Uuid>)> {
    let defaults = &config.tasks;
    let title = new.title.trim().to_string();
    if title.is_empty() {
        return Err(invalid("title", "must not be empty"));
    }
    let length = title.chars().count();
    if length > TITLE_MAX_CHARS {
        return Err(invalid(
            "title",
            format!("must be at most {TITLE_MAX_CHARS} characters, got {length}"),
        ));
    }
    if let Some(c) = title.chars().find(|c| c.is_control()) {
        return Err(invalid(
            "title",
            format!("must be one line of text without control characters, got {c:?}"),
        ));
    }
    for (field, text) in [
        ("prompt", &new.prompt),
        ("repo", &new.repo),
        ("verify", &new.verify),
        ("profile", &new.profile),
        ("workflow", &new.workflow),
    ] {
        if text.as_deref().is_some_and(|t| t.contains('\0')) {
            return Err(invalid(field, "must not contain NUL characters"));
        }
    }
    let max_attempts = new.max_attempts.unwrap_or(defaults.max_attempts);
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
        return Err(invalid(
            "max_attempts",
            format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {max_attempts}"),
        ));
    }
    if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&new.priority) {
        return Err(invalid(
            "priority",
            format!("must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {}", new.priority),
        ));
    }
    let profile = new.profile.unwrap_or_else(|| defaults.profile.clone());
    if !config.profiles.contains_key(&profile) {
        return Err(invalid("profile", unknown("profile", &profile, config.profiles.keys())));
    }
    if let Some(workflow) = new.workflow.as_deref().filter(|w| !config.workflows.contains_key(*w)) {
        return Err(invalid("workflow", unknown("workflow", workflow, config.workflows.keys())));
    }
    let prompt = new.prompt.filter(|p| !p.trim().is_empty()).unwrap_or_else(|| title.clone());
    if prompt.len() > PROMPT_ARG_MAX_BYTES {
        // The worker's profile: the workflow's worker step may name another one.
        let worker = new
            .workflow
            .as_deref()
            .and_then(|w| config.workflows.get(w))
            .and_then(|w| w.step(crate::config::Role::Worker))
            .and_then(|step| step.profile.as_deref())
            .unwrap_or(&profile);
        if config.profiles.get(worker).is_some_and(|p| p.prompt_in_argv()) {
            return Err(invalid(
                "prompt",
                format!(
                    "is {} bytes, and profile `{worker}` passes it on the command line \
                     ({{prompt}}), which takes at most {PROMPT_ARG_MAX_BYTES}: use a profile \
                     that reads it from stdin or a file (the built-in ones do), or give \
                     `{worker}` `stdin: prompt` or {{prompt_file}}",
                    prompt.len()
                ),
            ));
        }
    }
    let repo =
        new.repo.filter(|r| !r.trim().is_empty()).map(|r| ccm_schema::repo_url::normalize(&r));
    if let Some(repo) = repo.as_deref().filter(|r| !r.contains("://") && !r.starts_with('/')) {
        // A relative path means nothing to the runtime, which runs elsewhere.
        return Err(invalid(
            "repo",
            format!("must be a repository URL or the absolute path of a checkout, got `{repo}`"),
        ));
    }
    let now = Timestamp::now();

    let mut depends_on = Vec::with_capacity(new.depends_on.len());
    for dep in &new.depends_on {
        let dep_id = resolve_task(tx, dep).await.map_err(|e| match e {
            StoreError::TaskNotFound(_) | StoreError::Ambiguous { .. } => {
                invalid("depends_on", e.to_string())
            }
            e => e,
        })?;
        if !depends_on.contains(&dep_id) {
            depends_on.push(dep_id);
        }
    }
    let (repo, stack) = if new.stack {
        let (base, repo) = super::stacks::check_stack(tx, &depends_on, repo).await?;
        (Some(repo), Some(base))
    } else {
        (repo, None)
    };
    let task = Task {
        id,
        title,
        prompt,
        repo,
        profile,
        workflow: new.workflow,
        verify: new.verify,
        max_attempts,
        attempts: 0,
        priority: new.priority,
        state: TaskState::Created,
        wake_at: None,
        created_at: now,
        updated_at: now,
        version: 1,
        depends_on,
        land_state: None,
    };
    Ok((task, stack))
}

/// Writes prepared tasks in `created`, each with its dependencies, its first log entry (by the
/// actor at the same index) and an outbox row: one statement for each kind of row, whatever the
/// number of tasks, since every statement is a round trip to SQLite's thread (BENCHMARKS.md,
/// task creation).
async fn insert_tasks<A: AsRef<str>>(tx: &mut Writing, tasks: &[Task], actors: &[A]) -> Result<()> {
    // 32,766 bound values at most per statement; 12 a task.
    for (tasks, actors) in tasks.chunks(INSERT_CHUNK).zip(actors.chunks(INSERT_CHUNK)) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO tasks (id, title, prompt, repo, profile, workflow, verify, max_attempts, \
             priority, state, created_at, updated_at) ",
        );
        insert.push_values(tasks, |mut row, task| {
            row.push_bind(task.id.hyphenated())
                .push_bind(&task.title)
                .push_bind(&task.prompt)
                .push_bind(&task.repo)
                .push_bind(&task.profile)
                .push_bind(&task.workflow)
                .push_bind(&task.verify)
                .push_bind(task.max_attempts)
                .push_bind(task.priority)
                .push_bind(TaskState::Created)
                .push_bind(task.created_at)
                .push_bind(task.updated_at);
        });
        insert.build().execute(&mut **tx).await?;
        for task in tasks {
            for dep in &task.depends_on {
                insert_dependency(tx, task.id, *dep).await?;
            }
        }
        let mut log = sqlx::QueryBuilder::new(
            "INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor) ",
        );
        log.push_values(tasks.iter().zip(actors), |mut row, (task, actor)| {
            row.push_bind(task.id.hyphenated())
                .push_bind(task.created_at)
                .push_bind(None::<TaskState>)
                .push_bind(TaskState::Created)
                .push_bind("created")
                .push_bind(actor.as_ref());
        });
        log.build().execute(&mut **tx).await?;
        outbox_tasks(tx, tasks).await?;
    }
    Ok(())
}

/// The outbox rows of `tasks` (normal lane), in one statement: created tasks and their
/// admission, which no agent has worked on yet, so they carry no cost (see
/// `outbox_task`).
async fn outbox_tasks(tx: &mut Writing, tasks: &[Task]) -> Result<()> {
    let rows: Vec<_> = tasks
        .iter()
        .map(|task| (task.id.to_string(), ccm_sync::outbox::TaskSummaryRowV1::of(task)))
        .collect();
    super::outbox_rows(tx, &rows, false).await
}

/// Admits waiting tasks (id, reason), as [`apply_in_tx`] would one by one, with one statement
/// per kind of row for all of them: admission has no effects (the state machine says so, and if
/// it ever has, each task goes through [`apply_in_tx`]), so it is the state, the log entry and
/// the outbox row. A scheduler pass may admit hundreds of external-profile tasks.
async fn admit(
    tx: &mut Writing,
    ready: &[(String, &str)],
    actor: &str,
    policy: RetryPolicy,
) -> Result<usize> {
    if ready.is_empty() {
        return Ok(0);
    }
    let step = transition(TaskState::Created, TaskEvent::Admit)?;
    if !step.effects.is_empty() {
        for (id, reason) in ready {
            apply_in_tx(tx, parse_id(id)?, TaskEvent::Admit, reason, actor, policy).await?;
        }
        return Ok(ready.len());
    }
    let now = Timestamp::now();
    let ids = serde_json::to_string(&ready.iter().map(|(id, _)| id).collect::<Vec<_>>())
        .map_err(|e| StoreError::Invalid { field: "ids", message: e.to_string() })?;
    let mut tasks: Vec<Task> = sqlx::query_as(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks WHERE id IN (SELECT value FROM json_each(?)) AND state = 'created'"
    ))
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    if tasks.len() != ready.len() {
        return Err(StoreError::Invalid {
            field: "state",
            message: format!(
                "{} of {} tasks to admit are not waiting",
                ready.len() - tasks.len(),
                ready.len()
            ),
        });
    }
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT task_id, depends_on FROM task_deps WHERE task_id IN (SELECT value FROM json_each(?)) ORDER BY depends_on",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for (task, dep) in edges {
        let task = parse_id(&task)?;
        if let Some(t) = tasks.iter_mut().find(|t| t.id == task) {
            t.depends_on.push(parse_id(&dep)?);
        }
    }
    sqlx::query(
        "UPDATE tasks SET state = ?, wake_at = NULL, updated_at = ?, version = version + 1 \
         WHERE id IN (SELECT value FROM json_each(?))",
    )
    .bind(step.to)
    .bind(now)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    let mut log = sqlx::QueryBuilder::new(
        "INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor) ",
    );
    log.push_values(ready, |mut row, (id, reason)| {
        row.push_bind(id.as_str())
            .push_bind(now)
            .push_bind(TaskState::Created)
            .push_bind(step.to)
            .push_bind(*reason)
            .push_bind(actor);
    });
    log.build().execute(&mut **tx).await?;
    for task in &mut tasks {
        task.state = step.to;
        task.wake_at = None;
        task.updated_at = now;
        task.version += 1;
    }
    outbox_tasks(tx, &tasks).await?;
    for task in &tasks {
        super::routing::transitioned(tx, task, actor).await?;
    }
    Ok(tasks.len())
}

/// Applies one event (and the follow-ups it implies) inside `tx`, with every effect.
pub(super) async fn apply_in_tx(
    tx: &mut Writing,
    id: Uuid,
    event: TaskEvent,
    reason: &str,
    actor: &str,
    policy: RetryPolicy,
) -> Result<()> {
    let mut task = load_task(tx, id).await?;
    let now = Timestamp::now();
    let mut urgent = false;
    let mut pending = VecDeque::from([(event, reason.to_string())]);
    while let Some((event, reason)) = pending.pop_front() {
        let event = match event {
            // The store, not the caller, knows how many attempts were made.
            TaskEvent::Resolve { class, .. } => TaskEvent::Resolve {
                class,
                attempt: task.attempts,
                max_attempts: task.max_attempts,
            },
            event => event,
        };
        let step = transition(task.state, event)?;
        let cause = reason.clone();
        let mut reason = reason;
        if let TaskEvent::Resolve { class, attempt, max_attempts } = event {
            // What the failure said travels with the verdict, into the log and the alert.
            let class =
                if cause.is_empty() { class.to_string() } else { format!("{class}: {cause}") };
            reason = match step.to {
                TaskState::Retry => format!(
                    "attempt {attempt} of {max_attempts} failed ({class}); retrying in {}",
                    humantime::format_duration(backoff(policy.base, policy.cap, attempt))
                ),
                TaskState::Blocked => format!("all {max_attempts} attempts failed; last: {class}"),
                _ => format!("fatal error ({class})"),
            };
        }
        task.wake_at = None;
        for effect in step.effects {
            match effect {
                Effect::BeginAttempt => task.attempts += 1,
                Effect::ResetAttempts => task.attempts = 0,
                Effect::GrantAttempt => task.max_attempts += 1,
                // Its number is used again by the next attempt, as after a usage limit.
                Effect::UncountAttempt => task.attempts = task.attempts.saturating_sub(1),
                Effect::ScheduleRetry { attempt } => {
                    task.wake_at = Some(now.after(backoff(policy.base, policy.cap, attempt)));
                }
                Effect::WaitForQuota { until } => {
                    let mut wake = until.unwrap_or_else(|| now.after(policy.quota_wait));
                    if task.state == TaskState::Executing {
                        // Its agent hit the limit: the account is limited, for every agent.
                        wake = super::accounts::agent_hit_limit(
                            tx,
                            &task,
                            task.attempts,
                            wake,
                            &reason,
                        )
                        .await?;
                        // The interrupted attempt is not the task's fault: it does not count.
                        task.attempts = task.attempts.saturating_sub(1);
                    }
                    task.wake_at = Some(wake);
                }
                Effect::Assess { class } => pending.push_back((
                    TaskEvent::Resolve {
                        class,
                        attempt: task.attempts,
                        max_attempts: task.max_attempts,
                    },
                    reason.clone(),
                )),
                Effect::RaiseAlert { severity, reason: why } => {
                    urgent |= severity == Severity::Critical;
                    let message = format!("task {} ({}): {reason}", task.short_id(), task.title);
                    let report: Option<(sqlx::types::Json<serde_json::Value>,)> = sqlx::query_as(
                        "SELECT summary FROM reports WHERE task_id = ? AND attempt = ?",
                    )
                    .bind(id.hyphenated())
                    .bind(task.attempts)
                    .fetch_optional(&mut **tx)
                    .await?;
                    let details = report.map(|(summary,)| summary.0);
                    raise_alert(tx, Some(id), severity, why, &message, details, now).await?;
                }
                Effect::AskDecision { kind } => {
                    let question = format!(
                        "task {} ({}) is blocked: {reason}. Retry or cancel?",
                        task.short_id(),
                        task.title
                    );
                    ask_decision(tx, id, kind, &question, now).await?;
                }
                Effect::ReleaseClaims => {
                    super::claims::release_claims(tx, id, step.to, now).await?
                }
            }
        }
        if step.to == TaskState::Complete {
            // What its attempts carried is applied; a request approved since re-opens it.
            if let Some(why) = super::claims::completed(tx, id, now).await? {
                pending.push_back((TaskEvent::Reopen, why));
            }
        }
        if task.state == TaskState::Blocked && step.to != TaskState::Blocked {
            close_decisions(tx, id, Some(DecisionKind::RetryOrCancel), event.name(), actor, now)
                .await?;
        }
        if step.to.is_terminal() {
            // Nothing waits for an answer about a finished task any more.
            close_decisions(tx, id, None, event.name(), actor, now).await?;
        }
        if matches!(event, TaskEvent::Retry | TaskEvent::Cancel | TaskEvent::ChangesRequested) {
            // The operator acted on the task: what its alerts asked for is settled.
            resolve_task_alerts(tx, id, now).await?;
        }
        if task.state == TaskState::Executing && step.to != TaskState::Executing {
            end_open_attempt(tx, id, &event, now).await?;
        }
        if task.state == TaskState::WaitingQuota && step.to != TaskState::WaitingQuota {
            super::accounts::stop_waiting(tx, id).await?;
            super::cost_caps::stop_waiting(tx, id).await?;
        }
        append_log(tx, id, now, Some(task.state), step.to, &reason, actor).await?;
        task.state = step.to;
    }
    sqlx::query(
        r#"
        UPDATE tasks SET state = ?, attempts = ?, max_attempts = ?, wake_at = ?, updated_at = ?,
            version = version + 1
        WHERE id = ?
        "#,
    )
    .bind(task.state)
    .bind(task.attempts)
    .bind(task.max_attempts)
    .bind(task.wake_at)
    .bind(now)
    .bind(id.hyphenated())
    .execute(&mut **tx)
    .await?;
    // The row is now what was read at the start of this transaction with the columns just set:
    // not read back (two statements less in every transition).
    task.updated_at = now;
    task.version += 1;
    super::outbox_task(tx, &task, urgent).await?;
    super::routing::transitioned(tx, &task, actor).await?;
    if task.state.is_terminal() {
        super::coordination::task_ended(tx, id, task.state, actor, policy).await?;
    }
    Ok(())
}

pub(super) async fn raise_alert(
    tx: &mut Writing,
    task: Option<Uuid>,
    severity: Severity,
    reason: &str,
    message: &str,
    details: Option<serde_json::Value>,
    now: Timestamp,
) -> Result<()> {
    let id = Uuid::new_v4();
    let alert: ccm_schema::Alert = sqlx::query_as(&format!(
        r#"
        INSERT INTO alerts (id, task_id, severity, reason, message, details, created_at)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        RETURNING {ALERT_COLUMNS}
        "#
    ))
    .bind(id.hyphenated())
    .bind(task.map(|t| t.hyphenated().to_string()))
    .bind(severity)
    .bind(reason)
    .bind(message)
    .bind(details.map(sqlx::types::Json))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    outbox_alert(tx, &alert, severity == Severity::Critical).await
}

/// Asks the operator `question` (a decision of `kind`, about `task` when it has one), in `tx`.
pub(super) async fn ask_decision(
    tx: &mut Writing,
    task: impl Into<Option<Uuid>>,
    kind: DecisionKind,
    question: &str,
    now: Timestamp,
) -> Result<ccm_schema::Decision> {
    let id = Uuid::new_v4();
    let decision: ccm_schema::Decision = sqlx::query_as(&format!(
        r#"
        INSERT INTO decisions (id, task_id, kind, question, options, created_at)
        VALUES (?, ?, ?, ?, ?, ?)
        RETURNING {DECISION_COLUMNS}
        "#
    ))
    .bind(id.hyphenated())
    .bind(task.into().map(|t| t.hyphenated().to_string()))
    .bind(kind)
    .bind(question)
    .bind(sqlx::types::Json(kind.options()))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    // The dashboard's change notice only: decisions are not shipped.
    let row = ccm_sync::outbox::DecisionRowV1::from(&decision);
    outbox(tx, &id.to_string(), &row, false).await?;
    Ok(decision)
}

/// Ends the task's open attempt, if one is still open, with the outcome `event` gives it: every
/// move out of `executing` ends the attempt in its transaction. (The runtime's
/// [`Store::end_attempt`] ends it first, with what it learned of the run.)
async fn end_open_attempt(
    tx: &mut Writing,
    task: Uuid,
    event: &TaskEvent,
    now: Timestamp,
) -> Result<()> {
    let outcome = match event {
        TaskEvent::VerifyPassed => "success".to_string(),
        TaskEvent::Failed { class } => class.to_string(),
        TaskEvent::QuotaExhausted { .. } => "quota".to_string(),
        TaskEvent::Cancel => "cancelled".to_string(),
        other => other.name().to_string(),
    };
    sqlx::query(
        "UPDATE attempts SET ended_at = ?, outcome = ? WHERE task_id = ? AND ended_at IS NULL",
    )
    .bind(now)
    .bind(outcome)
    .bind(task.hyphenated())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Answers the task's pending decisions (of `kind`, or all) with what happened instead, and
/// resolves their alerts.
async fn close_decisions(
    tx: &mut Writing,
    task: Uuid,
    kind: Option<DecisionKind>,
    answer: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    let closed: Vec<ccm_schema::Decision> = sqlx::query_as(&format!(
        r#"
        UPDATE decisions SET answer = ?, answered_by = ?, answered_at = ?
        WHERE task_id = ? AND (?5 IS NULL OR kind = ?5) AND answered_at IS NULL
            AND kind <> 'change_request'
        RETURNING {DECISION_COLUMNS}
        "#
    ))
    .bind(answer)
    .bind(actor)
    .bind(now)
    .bind(task.hyphenated().to_string())
    .bind(kind)
    .fetch_all(&mut **tx)
    .await?;
    for decision in closed {
        let row = ccm_sync::outbox::DecisionRowV1::from(&decision);
        outbox(tx, &decision.id.to_string(), &row, false).await?;
        resolve_decision_alerts(tx, decision.id, now).await?;
    }
    Ok(())
}

/// Resolves the open alerts that ask for the decision `decision` (their details name it).
/// Resolves the task's open alerts.
async fn resolve_task_alerts(tx: &mut Writing, task: Uuid, now: Timestamp) -> Result<()> {
    let resolved: Vec<ccm_schema::Alert> = sqlx::query_as(&format!(
        "UPDATE alerts SET resolved_at = ? WHERE resolved_at IS NULL AND task_id = ? RETURNING {ALERT_COLUMNS}"
    ))
    .bind(now)
    .bind(task.hyphenated().to_string())
    .fetch_all(&mut **tx)
    .await?;
    for alert in resolved {
        outbox_alert(tx, &alert, false).await?;
    }
    Ok(())
}

pub(super) async fn resolve_decision_alerts(
    tx: &mut Writing,
    decision: Uuid,
    now: Timestamp,
) -> Result<()> {
    let resolved: Vec<ccm_schema::Alert> = sqlx::query_as(&format!(
        r#"
        UPDATE alerts SET resolved_at = ?
        WHERE resolved_at IS NULL AND json_extract(details, '$.decision') = ?
        RETURNING {ALERT_COLUMNS}
        "#
    ))
    .bind(now)
    .bind(decision.hyphenated().to_string())
    .fetch_all(&mut **tx)
    .await?;
    for alert in resolved {
        outbox_alert(tx, &alert, false).await?;
    }
    Ok(())
}

/// A line in a task's log that is no move: from and to its current state (a change request
/// asked, decided, forwarded or applied).
pub(super) async fn log_note(tx: &mut Writing, id: Uuid, reason: &str, actor: &str) -> Result<()> {
    sqlx::query(
        r#"
        INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor)
        SELECT id, ?, state, state, ?, ? FROM tasks WHERE id = ?
        "#,
    )
    .bind(Timestamp::now())
    .bind(reason)
    .bind(actor)
    .bind(id.hyphenated())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn append_log(
    tx: &mut Writing,
    id: Uuid,
    at: Timestamp,
    from: Option<TaskState>,
    to: TaskState,
    reason: &str,
    actor: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO task_log (task_id, at, from_state, to_state, reason, actor) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(id.hyphenated())
        .bind(at)
        .bind(from)
        .bind(to)
        .bind(reason)
        .bind(actor)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn touch(tx: &mut Writing, id: Uuid, now: Timestamp) -> Result<()> {
    sqlx::query("UPDATE tasks SET updated_at = ?, version = version + 1 WHERE id = ?")
        .bind(now)
        .bind(id.hyphenated())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn insert_dependency(tx: &mut Writing, task: Uuid, dep: Uuid) -> Result<()> {
    if task == dep {
        return Err(StoreError::Cycle(format!("task {} cannot depend on itself", short_id(&task))));
    }
    sqlx::query("INSERT OR IGNORE INTO task_deps (task_id, depends_on) VALUES (?, ?)")
        .bind(task.hyphenated())
        .bind(dep.hyphenated())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The dependency path from `from` to `to` (both included), if `from` depends on `to`
/// directly or transitively.
async fn find_path(tx: &mut Writing, from: Uuid, to: Uuid) -> Result<Option<Vec<Uuid>>> {
    if from == to {
        return Ok(Some(vec![from]));
    }
    let edges: Vec<(String, String)> = sqlx::query_as(
        r#"
        WITH RECURSIVE reach(id) AS (
            SELECT ?1
            UNION
            SELECT d.depends_on FROM task_deps d JOIN reach r ON d.task_id = r.id
        )
        SELECT d.task_id, d.depends_on FROM task_deps d JOIN reach r ON d.task_id = r.id
        "#,
    )
    .bind(from.hyphenated())
    .fetch_all(&mut **tx)
    .await?;
    let mut next: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (task, dep) in edges {
        next.entry(parse_id(&task)?).or_default().push(parse_id(&dep)?);
    }
    let mut parent: HashMap<Uuid, Uuid> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        for &dep in next.get(&node).into_iter().flatten() {
            if dep == from || parent.contains_key(&dep) {
                continue;
            }
            parent.insert(dep, node);
            if dep == to {
                let mut path = vec![to];
                let mut at = to;
                while let Some(&p) = parent.get(&at) {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                return Ok(Some(path));
            }
            queue.push_back(dep);
        }
    }
    Ok(None)
}

/// `3f2a9c41 (title)` for messages.
async fn describe(tx: &mut Writing, id: Uuid) -> Result<String> {
    let (title,): (String,) = sqlx::query_as("SELECT title FROM tasks WHERE id = ?")
        .bind(id.hyphenated())
        .fetch_one(&mut **tx)
        .await?;
    Ok(format!("{} ({title})", short_id(&id)))
}

/// The states that hold an agent slot.
fn slot_holding_states() -> impl Iterator<Item = TaskState> {
    TaskState::ALL.iter().copied().filter(|s| s.holds_slot())
}

/// SQL: a `WITH RECURSIVE` clause naming `held(state, profile)`, the distinct profiles of the
/// tasks in `states`, found by one seek of `tasks_by_state_profile` each (a loose index scan:
/// the smallest profile of a state, then the next one above it, ...). A query that joins
/// `tasks` to it and leaves out the external profiles reads only the other profiles' tasks:
/// thousands of tasks of an external profile may wait in `queued`, and a scheduler or runtime
/// pass that walked them all grew with them (`NOT IN` tested every one: 3 ms and 8.5 ms a pass
/// with 5,000 waiting, BENCHMARKS.md, the soak).
pub(super) fn held_profiles(states: impl Iterator<Item = TaskState>) -> String {
    let states: Vec<String> = states.map(|s| format!("('{s}')")).collect();
    format!(
        r#"WITH RECURSIVE held_states(state) AS (VALUES {}),
        held(state, profile) AS (
            SELECT state, (SELECT min(profile) FROM tasks WHERE tasks.state = h.state)
            FROM held_states h
            UNION ALL
            SELECT state, (SELECT min(profile) FROM tasks
                           WHERE tasks.state = held.state AND tasks.profile > held.profile)
            FROM held WHERE held.profile IS NOT NULL)
        "#,
        states.join(", ")
    )
}

/// SQL: how many tasks hold a slot, leaving out those of the profiles in the JSON array bound
/// at `param` (`?1`, ...); needs [`held_profiles`] of [`slot_holding_states`].
fn busy_slots(param: &str) -> String {
    format!(
        "SELECT count(*) FROM held CROSS JOIN tasks t \
         ON t.state = held.state AND t.profile = held.profile \
         WHERE held.profile NOT IN (SELECT value FROM json_each({param}))"
    )
}

/// Finds the task whose id is `key` or starts with `key`.
pub(super) async fn resolve_task(conn: &mut sqlx::SqliteConnection, key: &str) -> Result<Uuid> {
    let key = key.trim().to_ascii_lowercase();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(StoreError::TaskNotFound(key));
    }
    let matches: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM tasks WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 3",
    )
    .bind(&key)
    .fetch_all(&mut *conn)
    .await?;
    match matches.as_slice() {
        [(id,)] => parse_id(id),
        [] => Err(StoreError::TaskNotFound(key)),
        many => Err(StoreError::Ambiguous {
            prefix: key,
            matches: many.iter().map(|(id,)| id.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}

pub(super) async fn load_task(conn: &mut sqlx::SqliteConnection, id: Uuid) -> Result<Task> {
    let mut task: Task = sqlx::query_as(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"))
        .bind(id.hyphenated())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::TaskNotFound(id.to_string()))?;
    let deps: Vec<(String,)> =
        sqlx::query_as("SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on")
            .bind(id.hyphenated())
            .fetch_all(&mut *conn)
            .await?;
    task.depends_on = deps.iter().map(|(d,)| parse_id(d)).collect::<Result<_>>()?;
    let land: Option<(ccm_schema::LandState,)> =
        sqlx::query_as("SELECT state FROM landings WHERE task_id = ?")
            .bind(id.hyphenated())
            .fetch_optional(&mut *conn)
            .await?;
    task.land_state = land.map(|(state,)| state);
    Ok(task)
}

pub(super) fn parse_id(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))
}

/// "unknown profile `x`; configured: a, b".
fn unknown<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&str> = known.map(String::as_str).collect();
    format!("unknown {what} `{name}`; configured: {}", known.join(", "))
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid { field, message: message.into() }
}

/// What all the task's agents cost, in USD, and the tokens they used.
pub(super) async fn task_cost(
    conn: &mut sqlx::SqliteConnection,
    id: Uuid,
) -> Result<(f64, Tokens)> {
    let (cost, input, output): (f64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(cost_usd), 0.0), COALESCE(SUM(input_tokens), 0), \
         COALESCE(SUM(output_tokens), 0) FROM agents WHERE task_id = ?",
    )
    .bind(id.hyphenated())
    .fetch_one(conn)
    .await?;
    Ok((cost, Tokens { input, output }))
}
