//! Coordination between agents (issue 24): who an agent credential belongs to, sub-tasks and
//! their tree, named locks of this node (lease and fencing token) and allocators of named
//! sequences per repository. Migration `20261208070000_coordination.sql`.

use ccm_schema::types::short_id;
use ccm_schema::{Severity, TaskEvent, TaskState, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tasks::{create_in_tx, raise_alert};
use super::{Result, RetryPolicy, Store, StoreError};
use crate::config::Config;
use crate::store::NewTask;

/// The live agent a credential (`CCM_AGENT_TOKEN`) belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent_id: Uuid,
    pub task_id: Uuid,
    /// The agent's working directory (its task's worktree).
    pub cwd: Option<String>,
}

/// A sub-task as its parent sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subtask {
    pub id: String,
    pub title: String,
    pub state: TaskState,
    pub depth: i64,
    pub created_by: String,
    /// Ids of the siblings it waits for.
    pub depends_on: Vec<String>,
    /// The last message of its latest report (what its agent said it did), when it has one.
    pub result: Option<String>,
    /// Its own sub-tasks.
    #[serde(default)]
    pub subtasks: Vec<Subtask>,
    /// A sub-task routed to the fleet: the system that runs (or ran) it, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Routed to the fleet (its state is the central's, in the local vocabulary).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routed: bool,
}

/// A named lock granted: the fencing token grows with every acquisition of the name (of a
/// `fleet` lock: the central's token, growing across the systems).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockGrant {
    pub name: String,
    pub fence: i64,
    pub expires_at: Timestamp,
    #[serde(default)]
    pub scope: LockScope,
}

/// Where a named lock is exclusive: among the agents of this node (the store), or of the whole
/// fleet (a central named lease as well, `api.acquire_lock`, when sync is on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockScope {
    #[default]
    Node,
    Fleet,
}

impl LockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::Node => "node",
            LockScope::Fleet => "fleet",
        }
    }
}

/// A lock taken in the store: the grant, and (for a `fleet` lock taken by a new holder) whether
/// this system may still hold the central lease of the previous one, to give back first so
/// that the new holder gets a new fencing token.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub grant: LockGrant,
    pub hand_over_central: bool,
}

/// Who holds or asks for a named lock.
#[derive(Debug, Clone)]
pub struct LockHolder {
    /// `agent:<id>` or `cli:<pid>`: who may release it.
    pub holder: String,
    pub task_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
}

/// A named lock's row, as an acquisition reads it.
#[derive(sqlx::FromRow)]
struct LockRow {
    holder: Option<String>,
    fence: i64,
    expires_at: Option<Timestamp>,
    central_held: bool,
    scope: String,
}

/// A named lock as `ccm claims` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct LockView {
    pub name: String,
    /// `node` or `fleet`.
    pub scope: String,
    /// A `fleet` lock this node waits for: the system that held it when last asked.
    pub fleet_holder: Option<String>,
    pub holder: Option<String>,
    pub task_id: Option<String>,
    pub fence: i64,
    pub acquired_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// Who waits for it, comma-separated.
    pub waiters: Option<String>,
}

/// A value of a named sequence handed to a task.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, PartialEq, Eq)]
pub struct Allocation {
    pub repo: String,
    pub sequence: String,
    pub value: i64,
    pub formatted: String,
    pub task_id: Option<String>,
    pub state: String,
    pub allocated_at: Timestamp,
    pub released_at: Option<Timestamp>,
}

/// Limits on the sub-tasks of one parent.
#[derive(Debug, Clone, Copy)]
pub struct SubtaskLimits {
    pub max_depth: u32,
    pub max_per_parent: u32,
}

const TERMINAL: &str = "('complete', 'failed', 'cancelled')";

impl Store {
    /// The live agent `token` is the credential of; `None` when no live agent has it (it never
    /// was one, or its agent ended and it was revoked).
    pub async fn agent_by_token(&self, token: &str) -> Result<Option<AgentIdentity>> {
        let hash = super::agents::agent_token_hash(token);
        let generation = match self.credentials.get(&hash) {
            Ok(agent) => return Ok(Some(agent)),
            Err(generation) => generation,
        };
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            r#"
            SELECT id, task_id, cwd FROM agents
            WHERE token_hash = ? AND status IN ('starting', 'running')
            "#,
        )
        .bind(&hash)
        .fetch_optional(&self.readers)
        .await?;
        let Some((agent, task, cwd)) = row else { return Ok(None) };
        let agent = AgentIdentity {
            agent_id: super::tasks::parse_id(&agent)?,
            task_id: super::tasks::parse_id(&task)?,
            cwd,
        };
        self.credentials.remember(hash, &agent, generation);
        Ok(Some(agent))
    }

    /// The task row alone (no log, attempts or reports): what the agent API needs per call.
    pub async fn task_row(&self, id: Uuid) -> Result<ccm_schema::Task> {
        let mut conn = self.readers.acquire().await?;
        super::tasks::load_task(&mut conn, id).await
    }

    /// Checks that `parent` may get one more sub-task under `limits`, and gives its depth.
    /// At the limit, raises one `subtask_limit` alert about the parent and refuses.
    pub async fn check_subtask_limits(&self, parent: Uuid, limits: SubtaskLimits) -> Result<i64> {
        let mut tx = self.write().await?;
        let depth: i64 =
            sqlx::query_as::<_, (i64,)>("SELECT depth FROM subtasks WHERE task_id = ?")
                .bind(parent.hyphenated())
                .fetch_optional(&mut *tx)
                .await?
                .map_or(0, |(d,)| d)
                + 1;
        let (count,): (i64,) = sqlx::query_as(
            r#"
            SELECT (SELECT count(*) FROM subtasks WHERE parent_id = ?1)
                + (SELECT count(*) FROM routed_subtasks WHERE parent_id = ?1)
            "#,
        )
        .bind(parent.hyphenated())
        .fetch_one(&mut *tx)
        .await?;
        let refusal = if depth > i64::from(limits.max_depth) {
            Some(format!(
                "task {} is at depth {}: sub-tasks may nest {} deep at most (coordination.max_subtask_depth)",
                short_id(&parent),
                depth - 1,
                limits.max_depth
            ))
        } else if count >= i64::from(limits.max_per_parent) {
            Some(format!(
                "task {} already has {count} sub-tasks, the limit (coordination.max_subtasks_per_parent)",
                short_id(&parent)
            ))
        } else {
            None
        };
        let Some(message) = refusal else {
            return Ok(depth);
        };
        let (open,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM alerts WHERE resolved_at IS NULL AND reason = 'subtask_limit' AND task_id = ?)",
        )
        .bind(parent.hyphenated())
        .fetch_one(&mut *tx)
        .await?;
        if !open {
            let now = Timestamp::now();
            raise_alert(
                &mut tx,
                Some(parent),
                Severity::Warning,
                "subtask_limit",
                &message,
                None,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Err(StoreError::Refused(message))
    }

    /// Records `child` as a sub-task of `parent`.
    pub async fn record_subtask(
        &self,
        child: Uuid,
        parent: Uuid,
        depth: i64,
        created_by: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        insert_subtask(&mut tx, child, parent, depth, created_by).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `task` is a sub-task of `parent`.
    pub async fn is_subtask_of(&self, task: Uuid, parent: Uuid) -> Result<bool> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM subtasks WHERE task_id = ? AND parent_id = ?)",
        )
        .bind(task.hyphenated())
        .bind(parent.hyphenated())
        .fetch_one(&self.readers)
        .await?;
        Ok(found)
    }

    /// The parent of `task`, when it is a sub-task.
    pub async fn parent_of(&self, task: Uuid) -> Result<Option<String>> {
        Ok(sqlx::query_as::<_, (String,)>("SELECT parent_id FROM subtasks WHERE task_id = ?")
            .bind(task.hyphenated())
            .fetch_optional(&self.readers)
            .await?
            .map(|(p,)| p))
    }

    /// The sub-tasks of `parent`, oldest first (its local ones, then its routed ones), each
    /// with its own (the whole tree below it), read in one statement.
    pub async fn subtasks(&self, parent: Uuid) -> Result<Vec<Subtask>> {
        let rows: Vec<SubtaskRow> = sqlx::query_as(
            r#"
            WITH RECURSIVE tree (id, parent_id, depth, created_by, created_at, routed, level) AS (
                SELECT task_id, parent_id, depth, created_by, created_at, 0, 1
                FROM subtasks WHERE parent_id = ?1
                UNION ALL
                SELECT task_id, parent_id, depth, created_by, created_at, 1, 1
                FROM routed_subtasks WHERE parent_id = ?1
                UNION ALL
                SELECT s.task_id, s.parent_id, s.depth, s.created_by, s.created_at, 0, tree.level + 1
                FROM subtasks s JOIN tree ON s.parent_id = tree.id
                WHERE tree.routed = 0 AND tree.level < 64
                UNION ALL
                SELECT s.task_id, s.parent_id, s.depth, s.created_by, s.created_at, 1, tree.level + 1
                FROM routed_subtasks s JOIN tree ON s.parent_id = tree.id
                WHERE tree.routed = 0 AND tree.level < 64
            )
            SELECT tree.id AS id, tree.parent_id AS parent_id, tree.depth AS depth,
                   tree.created_by AS created_by, tree.routed AS routed,
                   CASE WHEN tree.routed THEN coalesce(r.title, t.title, '') ELSE t.title END
                       AS title,
                   t.state AS state,
                   CASE WHEN tree.routed
                        THEN (SELECT json_group_array(w.depends_on) FROM routed_waits w
                              WHERE w.task_id = tree.id)
                        ELSE (SELECT json_group_array(d.depends_on) FROM task_deps d
                              WHERE d.task_id = tree.id) END AS deps,
                   CASE WHEN tree.routed THEN NULL
                        ELSE (SELECT json_extract(summary, '$.last_message') FROM reports
                              WHERE task_id = tree.id ORDER BY created_at DESC LIMIT 1) END
                       AS result,
                   r.central AS central, h.state AS held
            FROM tree
            LEFT JOIN tasks t ON t.id = tree.id
            LEFT JOIN routed_tasks r ON r.id = tree.id
            LEFT JOIN held_submissions h ON h.task_id = tree.id
            WHERE tree.routed = 1 OR t.id IS NOT NULL
            ORDER BY tree.level, tree.routed, tree.created_at, t.rowid, tree.id
            "#,
        )
        .bind(parent.hyphenated())
        .fetch_all(&self.readers)
        .await?;
        let mut children: std::collections::HashMap<String, Vec<Subtask>> =
            std::collections::HashMap::new();
        for row in rows {
            let SubtaskRow {
                id,
                parent_id,
                depth,
                created_by,
                routed,
                title,
                state,
                deps,
                result,
                central,
                held,
            } = row;
            let subtask = if routed {
                super::fleet::routed_subtask(
                    id,
                    title.unwrap_or_default(),
                    depth,
                    created_by,
                    central.as_deref(),
                    held.as_deref(),
                    deps.as_deref(),
                )
            } else {
                let mut depends_on: Vec<String> =
                    deps.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or_default();
                depends_on.sort();
                Subtask {
                    id,
                    title: title.unwrap_or_default(),
                    state: state.unwrap_or(TaskState::Created),
                    depth,
                    created_by,
                    depends_on,
                    result,
                    subtasks: Vec::new(),
                    system: None,
                    routed: false,
                }
            };
            children.entry(parent_id).or_default().push(subtask);
        }
        Ok(assemble(&mut children, &parent.hyphenated().to_string(), 0))
    }

    /// Creates a task split into `parts`, in one transaction: the parts first (each part's
    /// `depends_on` holds indexes of earlier parts, as strings), then the parent, which depends
    /// on every part (so it runs last and sees their work), each part recorded as its sub-task.
    pub async fn create_split(
        &self,
        parent: NewTask,
        parts: Vec<(NewTask, Vec<usize>)>,
        config: &Config,
        actor: &str,
    ) -> Result<(ccm_schema::Task, Vec<ccm_schema::Task>)> {
        let mut tx = self.write().await?;
        let mut created: Vec<ccm_schema::Task> = Vec::with_capacity(parts.len());
        for (mut part, after) in parts {
            part.depends_on = after
                .iter()
                .filter_map(|&i| created.get(i).map(|t| t.id.hyphenated().to_string()))
                .collect();
            created.push(create_in_tx(&mut tx, Uuid::new_v4(), part, config, actor).await?);
        }
        let mut parent = parent;
        parent.depends_on.extend(created.iter().map(|t| t.id.hyphenated().to_string()));
        let parent = create_in_tx(&mut tx, Uuid::new_v4(), parent, config, actor).await?;
        for part in &created {
            insert_subtask(&mut tx, part.id, parent.id, 1, "split").await?;
        }
        tx.commit().await?;
        Ok((parent, created))
    }

    /// Takes the named lock for `holder` when it is free (or held past its lease, or already
    /// `holder`'s, which renews it); `None` when someone else holds it. Every grant gets a
    /// fencing token one above the previous one of the name.
    pub async fn acquire_lock(
        &self,
        name: &str,
        holder: &LockHolder,
        ttl_secs: u64,
        scope: LockScope,
    ) -> Result<Option<Acquired>> {
        let now = Timestamp::now();
        let expires =
            Timestamp(now.0 + i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2));
        let mut tx = self.write().await?;
        let current: Option<LockRow> = sqlx::query_as(
            "SELECT holder, fence, expires_at, central_held, scope FROM named_locks WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let current = current.map(|r| (r.holder, r.fence, r.expires_at, r.central_held, r.scope));
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        let grant = match current {
            Some((Some(h), fence, _, _, held_scope)) if h == holder.holder => {
                sqlx::query("UPDATE named_locks SET expires_at = ?, ttl_secs = ? WHERE name = ?")
                    .bind(expires)
                    .bind(ttl)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                let scope = if held_scope == "fleet" { LockScope::Fleet } else { LockScope::Node };
                Some(Acquired {
                    grant: LockGrant { name: name.to_string(), fence, expires_at: expires, scope },
                    hand_over_central: false,
                })
            }
            Some((Some(_), _, Some(until), _, _)) if until > now => None,
            current => {
                let central_held = current.as_ref().is_some_and(|c| c.3);
                let fence = current.map_or(0, |(_, f, ..)| f) + 1;
                sqlx::query(
                    r#"
                    INSERT INTO named_locks (name, task_id, agent_id, holder, fence, acquired_at,
                        expires_at, scope, ttl_secs)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (name) DO UPDATE SET task_id = excluded.task_id,
                        agent_id = excluded.agent_id, holder = excluded.holder, fence = excluded.fence,
                        acquired_at = excluded.acquired_at, expires_at = excluded.expires_at,
                        scope = excluded.scope, ttl_secs = excluded.ttl_secs
                    "#,
                )
                .bind(name)
                .bind(holder.task_id.map(|t| t.hyphenated().to_string()))
                .bind(holder.agent_id.map(|a| a.hyphenated().to_string()))
                .bind(&holder.holder)
                .bind(fence)
                .bind(now)
                .bind(expires)
                .bind(scope.as_str())
                .bind(ttl)
                .execute(&mut *tx)
                .await?;
                // A `fleet` holder still waits for the central lease: it stays listed as a
                // waiter until granted (the agent API forgets it then).
                if scope == LockScope::Node {
                    sqlx::query("DELETE FROM lock_waiters WHERE name = ? AND waiter = ?")
                        .bind(name)
                        .bind(&holder.holder)
                        .execute(&mut *tx)
                        .await?;
                }
                Some(Acquired {
                    grant: LockGrant { name: name.to_string(), fence, expires_at: expires, scope },
                    hand_over_central: central_held,
                })
            }
        };
        tx.commit().await?;
        Ok(grant)
    }

    /// Records (or forgets, `waiting = false`) that `holder` waits for the named lock.
    pub async fn lock_waiter(&self, name: &str, holder: &LockHolder, waiting: bool) -> Result<()> {
        let mut tx = self.write().await?;
        if waiting {
            sqlx::query(
                "INSERT OR IGNORE INTO lock_waiters (name, waiter, task_id, since) VALUES (?, ?, ?, ?)",
            )
            .bind(name)
            .bind(&holder.holder)
            .bind(holder.task_id.map(|t| t.hyphenated().to_string()))
            .bind(Timestamp::now())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM lock_waiters WHERE name = ? AND waiter = ?")
                .bind(name)
                .bind(&holder.holder)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases the named lock when `holder` holds it; says whether it did.
    pub async fn release_lock(&self, name: &str, holder: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            r#"
            UPDATE named_locks SET task_id = NULL, agent_id = NULL, holder = NULL,
                acquired_at = NULL, expires_at = NULL
            WHERE name = ? AND holder = ?
            "#,
        )
        .bind(name)
        .bind(holder)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Named locks ever taken, with their holder (while held) and waiters.
    pub async fn locks(&self) -> Result<Vec<LockView>> {
        Ok(sqlx::query_as(
            r#"
            SELECT l.name, l.scope, l.fleet_holder, l.holder, l.task_id, l.fence, l.acquired_at,
                l.expires_at,
                (SELECT group_concat(w.waiter, ', ') FROM lock_waiters w WHERE w.name = l.name) AS waiters
            FROM named_locks l
            UNION ALL
            SELECT w.name, 'node', NULL, NULL, NULL, 0, NULL, NULL, group_concat(w.waiter, ', ')
            FROM lock_waiters w WHERE w.name NOT IN (SELECT name FROM named_locks)
            GROUP BY w.name
            ORDER BY 1
            "#,
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// The next value of `sequence` in `repo` for `task`: the lowest released one, else one
    /// above the highest ever handed out, else `start`; exactly once while held (one
    /// transaction on the one writer).
    pub async fn allocate(
        &self,
        repo: &str,
        sequence: &str,
        task: Option<Uuid>,
        start: i64,
        format: impl Fn(i64) -> String,
    ) -> Result<Allocation> {
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let reused: Option<(i64,)> = sqlx::query_as(
            r#"
            SELECT value FROM allocations
            WHERE repo = ? AND sequence = ? AND state = 'released' AND value >= ?
            ORDER BY value LIMIT 1
            "#,
        )
        .bind(repo)
        .bind(sequence)
        .bind(start)
        .fetch_optional(&mut *tx)
        .await?;
        let value = match reused {
            Some((value,)) => value,
            None => {
                let (max,): (Option<i64>,) = sqlx::query_as(
                    "SELECT max(value) FROM allocations WHERE repo = ? AND sequence = ?",
                )
                .bind(repo)
                .bind(sequence)
                .fetch_one(&mut *tx)
                .await?;
                max.map_or(start, |m| (m + 1).max(start))
            }
        };
        let formatted = format(value);
        sqlx::query(
            r#"
            INSERT INTO allocations (repo, sequence, value, formatted, task_id, state, allocated_at)
            VALUES (?, ?, ?, ?, ?, 'held', ?)
            ON CONFLICT (repo, sequence, value) DO UPDATE SET formatted = excluded.formatted,
                task_id = excluded.task_id, state = 'held', allocated_at = excluded.allocated_at,
                released_at = NULL
            "#,
        )
        .bind(repo)
        .bind(sequence)
        .bind(value)
        .bind(&formatted)
        .bind(task.map(|t| t.hyphenated().to_string()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Allocation {
            repo: repo.to_string(),
            sequence: sequence.to_string(),
            value,
            formatted,
            task_id: task.map(|t| t.hyphenated().to_string()),
            state: "held".into(),
            allocated_at: now,
            released_at: None,
        })
    }

    /// Releases a held value (by its number or its formatted text) of `sequence` in `repo`;
    /// only `task`'s own when a task is given. The released value is the next one handed out.
    pub async fn release_allocation(
        &self,
        repo: &str,
        sequence: &str,
        value: &str,
        task: Option<Uuid>,
    ) -> Result<Allocation> {
        let mut tx = self.write().await?;
        let row: Option<Allocation> = sqlx::query_as(
            r#"
            SELECT repo, sequence, value, formatted, task_id, state, allocated_at, released_at
            FROM allocations
            WHERE repo = ? AND sequence = ? AND state = 'held'
                AND (formatted = ? OR CAST(value AS TEXT) = ?)
            "#,
        )
        .bind(repo)
        .bind(sequence)
        .bind(value)
        .bind(value)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(mut row) = row else {
            return Err(StoreError::Invalid {
                field: "value",
                message: format!("`{value}` of sequence `{sequence}` is not held in {repo}"),
            });
        };
        if let Some(task) =
            task.filter(|t| row.task_id.as_deref() != Some(&*t.hyphenated().to_string()))
        {
            return Err(StoreError::Refused(format!(
                "`{value}` of sequence `{sequence}` was allocated to another task, not {}",
                short_id(&task)
            )));
        }
        let now = Timestamp::now();
        sqlx::query(
            r#"
            UPDATE allocations SET state = 'released', released_at = ?
            WHERE repo = ? AND sequence = ? AND value = ?
            "#,
        )
        .bind(now)
        .bind(repo)
        .bind(sequence)
        .bind(row.value)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        row.state = "released".into();
        row.released_at = Some(now);
        Ok(row)
    }

    /// Allocations, held ones first.
    pub async fn allocations(&self) -> Result<Vec<Allocation>> {
        Ok(sqlx::query_as(
            r#"
            SELECT repo, sequence, value, formatted, task_id, state, allocated_at, released_at
            FROM allocations ORDER BY state, repo, sequence, value
            "#,
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// Ends `task`'s attempt, whose worker exited while sub-tasks it created on this node are
    /// open (`coordination.resume_parent`): the task depends on each of them and waits in
    /// `created` (a failed one blocks it, as any dependency does); its next attempt, not counted
    /// against the budget, starts once they are complete, with their results in its prompt.
    /// The number of open sub-tasks, or `None` (nothing written) when none is open.
    pub async fn await_subtasks(
        &self,
        task: Uuid,
        last_message: Option<&str>,
        policy: RetryPolicy,
    ) -> Result<Option<usize>> {
        let mut tx = self.write().await?;
        let open: Vec<String> = sqlx::query_scalar(
            r#"
            SELECT s.task_id FROM subtasks s JOIN tasks t ON t.id = s.task_id
            WHERE s.parent_id = ? AND t.state NOT IN ('complete', 'failed', 'cancelled')
            ORDER BY s.created_at, s.task_id
            "#,
        )
        .bind(task.hyphenated())
        .fetch_all(&mut *tx)
        .await?;
        if open.is_empty() {
            return Ok(None);
        }
        for child in &open {
            sqlx::query("INSERT OR IGNORE INTO task_deps (task_id, depends_on) VALUES (?, ?)")
                .bind(task.hyphenated())
                .bind(child)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            r#"
            UPDATE attempts SET ended_at = ?, outcome = 'subtasks',
                last_message = coalesce(?, last_message)
            WHERE task_id = ? AND ended_at IS NULL
            "#,
        )
        .bind(Timestamp::now())
        .bind(last_message)
        .bind(task.hyphenated())
        .execute(&mut *tx)
        .await?;
        let reason = format!(
            "the agent ended with {} open sub-task(s); the next attempt starts when they are \
             complete (not a failure)",
            open.len()
        );
        super::tasks::apply_in_tx(
            &mut tx,
            task,
            TaskEvent::AwaitSubtasks,
            &reason,
            "runtime",
            policy,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(open.len()))
    }
}

/// The live agents' credentials [`Store::agent_by_token`] found (by the credential's hash).
/// An agent's entry is dropped when it ends (`Store::agent_ended`, after its commit revoked the
/// credential); a lookup that read the database before that commit and remembers after it is
/// ignored, since every end moves `generation` on.
#[derive(Debug, Default)]
pub(super) struct Credentials {
    inner: std::sync::Mutex<(u64, std::collections::HashMap<String, AgentIdentity>)>,
}

impl Credentials {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (u64, std::collections::HashMap<String, AgentIdentity>)> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent of `hash`, or the generation to remember a lookup under.
    fn get(&self, hash: &str) -> std::result::Result<AgentIdentity, u64> {
        let inner = self.lock();
        inner.1.get(hash).cloned().ok_or(inner.0)
    }

    fn remember(&self, hash: String, agent: &AgentIdentity, generation: u64) {
        let mut inner = self.lock();
        if inner.0 == generation {
            inner.1.insert(hash, agent.clone());
        }
    }

    pub(super) fn revoke(&self, agent: Uuid) {
        let mut inner = self.lock();
        inner.0 += 1;
        inner.1.retain(|_, a| a.agent_id != agent);
    }
}

/// One row of [`Store::subtasks`]'s statement.
#[derive(sqlx::FromRow)]
struct SubtaskRow {
    id: String,
    parent_id: String,
    depth: i64,
    created_by: String,
    routed: bool,
    title: Option<String>,
    state: Option<TaskState>,
    /// JSON array of the ids it waits for.
    deps: Option<String>,
    result: Option<String>,
    central: Option<String>,
    held: Option<String>,
}

/// The sub-tasks of `parent` from `children` (each parent's, in order), with theirs below them.
fn assemble(
    children: &mut std::collections::HashMap<String, Vec<Subtask>>,
    parent: &str,
    level: usize,
) -> Vec<Subtask> {
    let mut own = children.remove(parent).unwrap_or_default();
    if level < 64 {
        for subtask in &mut own {
            subtask.subtasks = assemble(children, &subtask.id, level + 1);
        }
    }
    own
}

async fn insert_subtask(
    tx: &mut super::Writing,
    child: Uuid,
    parent: Uuid,
    depth: i64,
    created_by: &str,
) -> Result<()> {
    sqlx::query(
        r#"
        INSERT INTO subtasks (task_id, parent_id, depth, created_by, created_at)
        VALUES (?, ?, ?, ?, ?)
        "#,
    )
    .bind(child.hyphenated())
    .bind(parent.hyphenated())
    .bind(depth)
    .bind(created_by)
    .bind(Timestamp::now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Cancels the open sub-tasks of a task just cancelled (and theirs), and releases the named
/// locks its agents held, in the transaction of the cancel.
pub(super) async fn task_ended(
    tx: &mut super::Writing,
    task: Uuid,
    state: TaskState,
    actor: &str,
    policy: super::RetryPolicy,
) -> Result<()> {
    sqlx::query(
        r#"
        UPDATE named_locks SET task_id = NULL, agent_id = NULL, holder = NULL,
            acquired_at = NULL, expires_at = NULL
        WHERE task_id = ?
        "#,
    )
    .bind(task.hyphenated())
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM lock_waiters WHERE task_id = ?")
        .bind(task.hyphenated())
        .execute(&mut **tx)
        .await?;
    super::routing::dependency_ended(tx, task, state).await?;
    if state != TaskState::Cancelled {
        return Ok(());
    }
    super::fleet::cancel_routed_subtasks(tx, task).await?;
    let children: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT t.id FROM subtasks s JOIN tasks t ON t.id = s.task_id \
         WHERE s.parent_id = ? AND t.state NOT IN {TERMINAL}"
    ))
    .bind(task.hyphenated())
    .fetch_all(&mut **tx)
    .await?;
    for (child,) in children {
        let child = super::tasks::parse_id(&child)?;
        let reason = format!("parent {} cancelled", short_id(&task));
        Box::pin(super::tasks::apply_in_tx(
            tx,
            child,
            ccm_schema::TaskEvent::Cancel,
            &reason,
            actor,
            policy,
        ))
        .await?;
    }
    Ok(())
}
