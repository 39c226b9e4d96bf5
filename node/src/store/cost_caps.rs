//! Daily cost caps (issue 25; migration `20261210050000_cost_caps.sql`).
//!
//! An account (`accounts.NAME.daily_cost_cap_usd`) or a project (`daily_cost_cap_usd` in its
//! `.ccm/config.yaml`; a project is the tasks' `repo`) has a cap on what its agents cost in a
//! local day (the day of the daily summary, `notify::daily::local_day`). The runtime asks
//! [`Store::cost_today`] before it starts a worker; when the day's cost reached the cap in
//! force ([`Store::cost_cap`]: the configured one, or the raise approved that day), the task
//! waits in `waiting_quota` until the day ends ([`Store::wait_for_cost_cap`]), and the first
//! task so parked raises one `cost_cap` decision for the day (raised again only once an
//! approved raise is reached too). Approving it ([`decided`]) raises the day's cap by the
//! configured amount and wakes the waiting tasks, which the scheduler queues each once;
//! rejecting it keeps them waiting until the next day. Running agents are never stopped.

use ccm_schema::{Decision, DecisionKind, Task, TaskEvent, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tasks::{apply_in_tx, load_task};
use super::{Result, RetryPolicy, Store, Writing};

/// What a cap is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum CapScope {
    /// An account's agents (`agents.account`, by default the profile's name).
    Account,
    /// The agents of a repository's tasks (`tasks.repo`).
    Project,
}

impl std::fmt::Display for CapScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CapScope::Account => "account",
            CapScope::Project => "project",
        })
    }
}

/// A day's cap once it was reached, as `ccm status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CostCap {
    pub scope: CapScope,
    pub name: String,
    /// The local date.
    pub day: String,
    /// The cap in force for the day.
    pub cap_usd: f64,
    /// The configured cap.
    pub configured_usd: f64,
    /// What the day had cost when the cap was last reached.
    pub spent_usd: f64,
    /// `reached` (its decision waits), `raised` (approved) or `kept` (rejected).
    pub state: String,
    pub decision_id: String,
    /// The cap approving the decision gives.
    pub raise_to_usd: f64,
    /// Raises approved that day.
    pub raises: i64,
    pub answered_by: Option<String>,
    pub answered_at: Option<Timestamp>,
    pub reached_at: Timestamp,
    /// When the day ends: its waiting tasks start again then.
    pub day_ends_at: Timestamp,
    /// Tasks waiting in `waiting_quota` for it.
    pub waiting: i64,
}

/// A cap a start found reached: what the task waits for.
#[derive(Debug, Clone)]
pub struct CapReached {
    pub scope: CapScope,
    pub name: String,
    pub day: String,
    pub day_ends_at: Timestamp,
    /// The configured cap, and the one in force (raised that day, or the configured one).
    pub configured_usd: f64,
    pub cap_usd: f64,
    pub spent_usd: f64,
}

const CAP_COLUMNS: &str = "c.scope, c.name, c.day, c.cap_usd, c.configured_usd, c.spent_usd, \
     c.state, c.decision_id, c.raise_to_usd, c.raises, c.answered_by, c.answered_at, \
     c.reached_at, c.day_ends_at, (SELECT count(*) FROM cost_waits w JOIN tasks t ON \
     t.id = w.task_id WHERE w.scope = c.scope AND w.name = c.name AND w.day = c.day \
     AND t.state = 'waiting_quota') AS waiting";

impl Store {
    /// What the agents of `name` (an account, or a project's `repo`) started since `since`
    /// cost, as their CLIs reported it (an agent still running has reported nothing yet).
    pub async fn cost_today(&self, scope: CapScope, name: &str, since: Timestamp) -> Result<f64> {
        let sql = match scope {
            CapScope::Account => {
                "SELECT coalesce(sum(cost_usd), 0.0) FROM agents \
                 WHERE started_at >= ?1 AND coalesce(account, profile) = ?2"
            }
            CapScope::Project => {
                // CROSS JOIN: today's agents first (`agents_by_started`), not every task
                // the project ever had (`tasks_by_repo`).
                "SELECT coalesce(sum(a.cost_usd), 0.0) FROM agents a \
                 CROSS JOIN tasks t ON t.id = a.task_id WHERE a.started_at >= ?1 AND t.repo = ?2"
            }
        };
        let (cost,): (f64,) =
            sqlx::query_as(sql).bind(since).bind(name).fetch_one(&self.readers).await?;
        Ok(cost)
    }

    /// The day's cap of `name`, once it was reached that day.
    pub async fn cost_cap(
        &self,
        scope: CapScope,
        name: &str,
        day: &str,
    ) -> Result<Option<CostCap>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {CAP_COLUMNS} FROM cost_caps c WHERE c.scope = ? AND c.name = ? AND c.day = ?"
        ))
        .bind(scope)
        .bind(name)
        .bind(day)
        .fetch_optional(&self.readers)
        .await?)
    }

    /// The caps reached on `day`, or still holding tasks from an earlier day.
    pub async fn cost_caps(&self, day: &str) -> Result<Vec<CostCap>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {CAP_COLUMNS} FROM cost_caps c WHERE c.day = ?1 OR c.day_ends_at > ?2 \
             ORDER BY c.reached_at, c.scope, c.name"
        ))
        .bind(day)
        .bind(Timestamp::now())
        .fetch_all(&self.readers)
        .await?)
    }

    /// Parks a queued task whose account or project reached its daily cost cap: `waiting_quota`
    /// until the day ends (no agent started, no attempt counted). The first task parked for a
    /// cap that day, or for a raise of it, raises the `cost_cap` decision; the others only wait.
    pub async fn wait_for_cost_cap(
        &self,
        task: Uuid,
        reached: &CapReached,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let known: Option<(String, f64, String)> = sqlx::query_as(
            "SELECT state, cap_usd, decision_id FROM cost_caps WHERE scope = ? AND name = ? AND day = ?",
        )
        .bind(reached.scope)
        .bind(&reached.name)
        .bind(&reached.day)
        .fetch_optional(&mut *tx)
        .await?;
        let decision = match &known {
            // A cap reached again after its raise: a new decision, for one more raise.
            Some((state, cap, _)) if state == "raised" && reached.spent_usd >= *cap => {
                Some(*cap + reached.configured_usd)
            }
            Some(_) => None,
            None => Some(reached.cap_usd + reached.configured_usd),
        };
        let decision_id = match decision {
            Some(raise_to) => {
                let decision = ask(&mut tx, reached, raise_to, now).await?;
                sqlx::query(
                    r#"
                    INSERT INTO cost_caps (scope, name, day, cap_usd, configured_usd, spent_usd,
                        state, decision_id, raise_to_usd, reached_at, day_ends_at)
                    VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'reached', ?7, ?8, ?9, ?10)
                    ON CONFLICT (scope, name, day) DO UPDATE SET
                        spent_usd = excluded.spent_usd, state = 'reached',
                        decision_id = excluded.decision_id, raise_to_usd = excluded.raise_to_usd,
                        reached_at = excluded.reached_at
                    "#,
                )
                .bind(reached.scope)
                .bind(&reached.name)
                .bind(&reached.day)
                .bind(reached.cap_usd)
                .bind(reached.configured_usd)
                .bind(reached.spent_usd)
                .bind(decision.id.hyphenated().to_string())
                .bind(raise_to)
                .bind(now)
                .bind(reached.day_ends_at)
                .execute(&mut *tx)
                .await?;
                decision.id.hyphenated().to_string()
            }
            None => known.map(|(_, _, id)| id).unwrap_or_default(),
        };
        let reason = format!(
            "daily cost cap of ${:.2} reached for {} `{}` (${:.2} today): no agent of it starts \
             before {} unless the cap is raised (ccm decide {} approve)",
            reached.cap_usd,
            reached.scope,
            reached.name,
            reached.spent_usd,
            reached.day_ends_at,
            &decision_id[..decision_id.len().min(8)],
        );
        let until = Some(reached.day_ends_at);
        apply_in_tx(&mut tx, task, TaskEvent::QuotaExhausted { until }, &reason, "runtime", policy)
            .await?;
        sqlx::query(
            "INSERT INTO cost_waits (task_id, scope, name, day) VALUES (?, ?, ?, ?) \
             ON CONFLICT (task_id) DO UPDATE SET scope = excluded.scope, name = excluded.name, \
             day = excluded.day",
        )
        .bind(task.hyphenated())
        .bind(reached.scope)
        .bind(&reached.name)
        .bind(&reached.day)
        .execute(&mut *tx)
        .await?;
        let task = load_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(task)
    }
}

/// The `cost_cap` decision of a cap reached: raise it to `raise_to` for the day?
async fn ask(
    tx: &mut Writing,
    reached: &CapReached,
    raise_to: f64,
    now: Timestamp,
) -> Result<Decision> {
    let question = format!(
        "daily cost cap of ${:.2} reached for {} `{}` (${:.2} spent on {}): raise it to ${raise_to:.2} \
         for today? Rejecting keeps its tasks waiting until tomorrow.",
        reached.cap_usd, reached.scope, reached.name, reached.spent_usd, reached.day,
    );
    super::tasks::ask_decision(tx, None, DecisionKind::CostCap, &question, now).await
}

/// The `cost_cap` decision `decision` was answered: `approve` raises the day's cap to the
/// decision's and wakes the tasks waiting for it (the scheduler queues each once); `reject`
/// keeps them waiting until the day ends.
pub(super) async fn decided(
    tx: &mut Writing,
    decision: Uuid,
    answer: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    let approved = answer == "approve";
    let cap: Option<(CapScope, String, String)> = sqlx::query_as(
        r#"
        UPDATE cost_caps SET
            state = CASE WHEN ?1 THEN 'raised' ELSE 'kept' END,
            cap_usd = CASE WHEN ?1 THEN raise_to_usd ELSE cap_usd END,
            raises = raises + ?1, answered_by = ?2, answered_at = ?3
        WHERE decision_id = ?4 AND state = 'reached'
        RETURNING scope, name, day
        "#,
    )
    .bind(approved)
    .bind(actor)
    .bind(now)
    .bind(decision.hyphenated().to_string())
    .fetch_optional(&mut **tx)
    .await?;
    if let (true, Some((scope, name, day))) = (approved, cap) {
        sqlx::query(
            r#"
            UPDATE tasks SET wake_at = ?4
            WHERE state = 'waiting_quota' AND id IN (
                SELECT task_id FROM cost_waits WHERE scope = ?1 AND name = ?2 AND day = ?3)
            "#,
        )
        .bind(scope)
        .bind(name)
        .bind(day)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The task left `waiting_quota`: it waits for no cap any more.
pub(super) async fn stop_waiting(tx: &mut Writing, task: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM cost_waits WHERE task_id = ?")
        .bind(task.hyphenated())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether the task waits for a daily cost cap (the scheduler's words when it wakes).
pub(super) async fn waits_for_cap(tx: &mut Writing, task: Uuid) -> Result<bool> {
    let (waits,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM cost_waits WHERE task_id = ?)")
            .bind(task.hyphenated())
            .fetch_one(&mut **tx)
            .await?;
    Ok(waits)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ccm_schema::TaskState;

    use super::*;
    use crate::store::NewTask;

    #[tokio::test]
    async fn at_the_days_end_each_waiting_task_is_queued_once_after_one_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ccm.db"), "node").await.unwrap();
        let config = crate::config::Config::load(dir.path(), None).unwrap();
        let policy = RetryPolicy::default();
        let mut ids = Vec::new();
        for title in ["one", "two"] {
            let new = NewTask { title: title.into(), ..NewTask::default() };
            ids.push(store.create_task(new, &config, "test").await.unwrap().id);
        }
        store.schedule(2, &[], policy).await.unwrap();
        let day_ends_at = Timestamp::now().after(Duration::from_millis(300));
        let reached = CapReached {
            scope: CapScope::Project,
            name: "/src/app".into(),
            day: "2026-12-07".into(),
            day_ends_at,
            configured_usd: 5.0,
            cap_usd: 5.0,
            spent_usd: 6.0,
        };
        for id in &ids {
            let parked = store.wait_for_cost_cap(*id, &reached, policy).await.unwrap();
            assert_eq!(
                (parked.state, parked.wake_at),
                (TaskState::WaitingQuota, Some(day_ends_at))
            );
        }
        let asked: Vec<_> = store
            .decisions()
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.kind == DecisionKind::CostCap)
            .collect();
        assert_eq!(asked.len(), 1, "one decision for the day's cap");
        assert_eq!(asked[0].task_id, None);
        let caps = store.cost_caps("2026-12-07").await.unwrap();
        assert_eq!((caps.len(), caps[0].waiting, caps[0].raise_to_usd), (1, 2, 10.0));

        assert_eq!(store.schedule(2, &[], policy).await.unwrap(), 0, "not before the day ends");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(store.schedule(2, &[], policy).await.unwrap(), 2, "each queued once");
        assert_eq!(store.schedule(2, &[], policy).await.unwrap(), 0);
        for id in &ids {
            let detail = store.task(&id.to_string()).await.unwrap();
            assert_eq!(detail.task.state, TaskState::Queued);
            let woke = detail.log.iter().filter(|e| e.reason.contains("a new day began")).count();
            assert_eq!(woke, 1, "{:?}", detail.log);
        }
        assert_eq!(store.cost_caps("2026-12-07").await.unwrap()[0].waiting, 0);
    }
}
