//! The store's side of fleet-scoped coordination (issue 24): the central lease behind a
//! `fleet` named lock (`named_locks.central_held`, migration `20261209050000_fleet_locks.sql`)
//! and the values of the central's allocators recorded with the task that got them. The calls
//! to the central are `crate::fleet`'s.

use ccm_schema::{TaskState, Timestamp};
use ccm_sync::wire::RoutedTaskV1;
use uuid::Uuid;

use super::{Allocation, Result, Store, Subtask};

/// A `fleet` lock whose central lease this system holds (or may still hold).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FleetLease {
    pub name: String,
    /// The local holder, while one holds it.
    pub holder: Option<String>,
    /// When the local grant runs out.
    pub expires_at: Option<Timestamp>,
    pub ttl_secs: Option<i64>,
    /// The holder is an agent that still runs (a `cli:` holder renews its grant itself).
    pub agent_live: bool,
    pub agent_held: bool,
}

impl Store {
    /// The central granted `holder` the lease of `name` with token `fence`: the local grant
    /// carries it. `false` when `holder` no longer holds the local grant (its task ended
    /// meanwhile): the lease is given back by the fleet-lock loop.
    pub async fn fleet_lock_granted(&self, name: &str, holder: &str, fence: i64) -> Result<bool> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE named_locks SET central_held = 1, fleet_holder = NULL WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let ours = sqlx::query("UPDATE named_locks SET fence = ? WHERE name = ? AND holder = ?")
            .bind(fence)
            .bind(name)
            .bind(holder)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(ours > 0)
    }

    /// The central refused the lease of `name` (system `by` holds it): `holder` gives the local
    /// grant back and waits.
    pub async fn fleet_lock_refused(
        &self,
        name: &str,
        holder: &str,
        by: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            UPDATE named_locks SET task_id = NULL, agent_id = NULL, holder = NULL,
                acquired_at = NULL, expires_at = NULL, central_held = 0, fleet_holder = ?
            WHERE name = ? AND holder = ?
            "#,
        )
        .bind(by)
        .bind(name)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The `fleet` locks whose central lease this system holds or may still hold.
    pub async fn fleet_leases(&self) -> Result<Vec<FleetLease>> {
        Ok(sqlx::query_as(
            r#"
            SELECT l.name, l.holder, l.expires_at, l.ttl_secs,
                EXISTS (SELECT 1 FROM agents a WHERE a.id = l.agent_id
                        AND a.status IN ('starting', 'running')) AS agent_live,
                l.agent_id IS NOT NULL AS agent_held
            FROM named_locks l
            WHERE l.scope = 'fleet' AND l.central_held = 1
            ORDER BY l.name
            "#,
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// The local grant of `name` ends (its agent ended, or it ran out) unless another holder
    /// took it since; the central lease is to be given back.
    pub async fn fleet_lock_drop(&self, name: &str, holder: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            UPDATE named_locks SET task_id = NULL, agent_id = NULL, holder = NULL,
                acquired_at = NULL, expires_at = NULL
            WHERE name = ? AND holder = ?
            "#,
        )
        .bind(name)
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM lock_waiters WHERE name = ? AND waiter = ?")
            .bind(name)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The central lease of `name` was given back (or lost): no longer held by this system.
    pub async fn fleet_lease_gone(&self, name: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE named_locks SET central_held = 0 WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The central renewed the lease of `name` for `holder`: the local grant lasts as long.
    pub async fn fleet_lock_renewed(&self, name: &str, holder: &str, ttl_secs: u64) -> Result<()> {
        let expires = Timestamp(
            Timestamp::now().0 + i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(0),
        );
        let mut tx = self.write().await?;
        sqlx::query("UPDATE named_locks SET expires_at = ? WHERE name = ? AND holder = ?")
            .bind(expires)
            .bind(name)
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a value the central's allocator handed to `task` (or, `state = "released"`,
    /// that it was given back), so `ccm claims` and the task show it on this node.
    pub async fn record_allocation(
        &self,
        repo: &str,
        sequence: &str,
        value: i64,
        formatted: &str,
        task: Option<Uuid>,
        state: &str,
    ) -> Result<Allocation> {
        let now = Timestamp::now();
        let released = (state == "released").then_some(now);
        let mut tx = self.write().await?;
        let row: Allocation = sqlx::query_as(
            r#"
            INSERT INTO allocations (repo, sequence, value, formatted, task_id, state,
                allocated_at, released_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (repo, sequence, value) DO UPDATE SET formatted = excluded.formatted,
                task_id = coalesce(excluded.task_id, allocations.task_id), state = excluded.state,
                allocated_at = CASE WHEN excluded.state = 'held' THEN excluded.allocated_at
                                    ELSE allocations.allocated_at END,
                released_at = excluded.released_at
            RETURNING repo, sequence, value, formatted, task_id, state, allocated_at, released_at
            "#,
        )
        .bind(repo)
        .bind(sequence)
        .bind(value)
        .bind(formatted)
        .bind(task.map(|t| t.hyphenated().to_string()))
        .bind(state)
        .bind(now)
        .bind(released)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }
}

impl Store {
    /// Records the routed task `child` as a sub-task of `parent`.
    pub async fn record_routed_subtask(
        &self,
        child: Uuid,
        parent: Uuid,
        depth: i64,
        created_by: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            INSERT INTO routed_subtasks (task_id, parent_id, depth, created_by, created_at)
            VALUES (?, ?, ?, ?, ?)
            "#,
        )
        .bind(child.hyphenated())
        .bind(parent.hyphenated())
        .bind(depth)
        .bind(created_by)
        .bind(Timestamp::now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A routed sub-task as its parent sees it: held here (waiting for its siblings, or never to
/// be sent: `held`, the `held_submissions` state), else the central's latest word (`central`);
/// `waits`: the JSON array of the siblings it waits for.
pub(super) fn routed_subtask(
    id: String,
    title: String,
    depth: i64,
    created_by: String,
    central: Option<&str>,
    held: Option<&str>,
    waits: Option<&str>,
) -> Subtask {
    let central: Option<RoutedTaskV1> = central.and_then(|c| serde_json::from_str(c).ok());
    let mut depends_on: Vec<String> =
        waits.and_then(|w| serde_json::from_str(w).ok()).unwrap_or_default();
    depends_on.sort();
    let state = match (held, central.as_ref().map(|c| c.state.as_str())) {
        (Some("held"), _) => TaskState::Created,
        (Some("blocked"), _) => TaskState::Blocked,
        (Some(_), _) => TaskState::Cancelled,
        (None, Some("done")) => TaskState::Complete,
        (None, Some("failed" | "refused")) => TaskState::Failed,
        (None, Some("cancelled")) => TaskState::Cancelled,
        (None, Some("blocked")) => TaskState::Blocked,
        (None, Some("running")) => TaskState::Executing,
        _ => TaskState::Queued,
    };
    let result = central
        .as_ref()
        .and_then(|c| c.result.as_ref())
        .and_then(|r| r["report"]["last_message"].as_str().or(r["summary"].as_str()))
        .map(str::to_string);
    Subtask {
        id,
        title,
        state,
        depth,
        created_by,
        depends_on,
        result,
        subtasks: Vec::new(),
        system: central.and_then(|c| c.executing_name),
        routed: true,
    }
}

/// Asks the central to cancel the routed sub-tasks of `parent` that have not ended (the calls
/// lane sends it after their submission), in the transaction of the parent's cancel.
pub(super) async fn cancel_routed_subtasks(tx: &mut super::Writing, parent: Uuid) -> Result<()> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        r#"
        SELECT s.task_id, r.central FROM routed_subtasks s
        JOIN routed_tasks r ON r.id = s.task_id
        WHERE s.parent_id = ?
        "#,
    )
    .bind(parent.hyphenated())
    .fetch_all(&mut **tx)
    .await?;
    let reason = format!("parent {} cancelled", ccm_schema::types::short_id(&parent));
    for (id, central) in rows {
        // One still waiting here for its siblings was never sent: it ends here.
        let held = sqlx::query(
            "UPDATE held_submissions SET state = 'cancelled', reason = ? WHERE task_id = ? AND state = 'held'",
        )
        .bind(&reason)
        .bind(&id)
        .execute(&mut **tx)
        .await?;
        let never_sent: (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM held_submissions WHERE task_id = ?)")
                .bind(&id)
                .fetch_one(&mut **tx)
                .await?;
        if held.rows_affected() > 0 || never_sent.0 {
            continue;
        }
        let state = central
            .and_then(|c| serde_json::from_str::<RoutedTaskV1>(&c).ok())
            .map(|c| c.state)
            .unwrap_or_default();
        if ["done", "failed", "blocked", "cancelled", "refused"].contains(&state.as_str()) {
            continue;
        }
        let call = ccm_sync::wire::CallV1::CancelRouted(ccm_sync::wire::RoutedControlV1 {
            p_task_id: super::tasks::parse_id(&id)?,
            p_reason: Some(reason.clone()),
        });
        super::routing::queue_call(tx, &call).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LockHolder, LockScope};

    fn holder(name: &str) -> LockHolder {
        LockHolder { holder: name.into(), task_id: None, agent_id: None }
    }

    #[tokio::test]
    async fn a_new_local_holder_of_a_fleet_lock_hands_the_central_lease_over_first_and_stays_listed_as_waiting(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ccm.db"), "node").await.unwrap();
        let (a, b) = (holder("cli:a"), holder("cli:b"));
        let first = store.acquire_lock("build", &a, 60, LockScope::Fleet).await.unwrap().unwrap();
        assert!(!first.hand_over_central);
        assert!(store.fleet_lock_granted("build", "cli:a", 7).await.unwrap());
        assert_eq!(store.fleet_leases().await.unwrap().len(), 1);

        // b waits while a holds it, and stays listed while it asks the central.
        store.lock_waiter("build", &b, true).await.unwrap();
        assert!(store.acquire_lock("build", &b, 60, LockScope::Fleet).await.unwrap().is_none());
        assert!(store.release_lock("build", "cli:a").await.unwrap());
        let second = store.acquire_lock("build", &b, 60, LockScope::Fleet).await.unwrap().unwrap();
        assert!(second.hand_over_central, "a's lease may still be this system's: given back first");
        let view = store.locks().await.unwrap();
        assert_eq!(view[0].waiters.as_deref(), Some("cli:b"));
        assert_eq!(view[0].scope, "fleet");

        // The central says another system holds it: b's local grant goes, the holder is noted.
        store.fleet_lock_refused("build", "cli:b", Some("beta")).await.unwrap();
        let view = store.locks().await.unwrap();
        assert_eq!(view[0].holder, None);
        assert_eq!(view[0].fleet_holder.as_deref(), Some("beta"));
        assert!(store.fleet_leases().await.unwrap().is_empty());
    }
}
