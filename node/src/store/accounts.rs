//! Usage limits per account (issue 25; migration `20261209060000_account_limits.sql`).
//!
//! An account is what a profile's agents share a usage limit under (`profiles.NAME.account`,
//! by default the profile's name). When an agent hits a usage limit, the move of its task to
//! `waiting_quota` records the limit of the agent's account in the same transaction
//! ([`agent_hit_limit`], called by `apply_in_tx`), so the slot it frees is never given to
//! another agent of the account. The runtime asks [`Store::account_limit`] before it starts an
//! agent, and parks a queued task of a limited account with [`Store::wait_for_account`].
//! Every waiting task is in `account_waits`, so a change of its account's reset time moves its
//! `wake_at` too; when the wake comes, the scheduler queues each waiting task once
//! (`quota_reset`).
//!
//! With sync, limits an agent of this system hit are reported to the central
//! (`api.report_account_limit`) and the limits other systems sharing an account reported come
//! back as `fleet` rows ([`Store::fleet_limits`]); `accounts::Accounts` is the daemon's loop
//! that does both.

use ccm_schema::{Task, TaskEvent, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::tasks::{apply_in_tx, load_task};
use super::{Result, RetryPolicy, Store, Writing};

/// An account's usage limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AccountLimit {
    pub account: String,
    /// When it resets.
    pub reset_at: Timestamp,
    /// `agent` (an agent of this system hit it) or `fleet` (another system reported it).
    pub source: String,
    /// The task whose agent hit it (`agent`).
    pub task_id: Option<String>,
    /// The system that reported it (`fleet`).
    pub system: Option<String>,
    pub message: String,
    pub reported_at: Timestamp,
    /// Tasks waiting in `waiting_quota` for it.
    pub waiting: i64,
}

/// A limit another system reported, as the central answers it.
#[derive(Debug, Clone)]
pub struct FleetLimit {
    pub account: String,
    pub reset_at: Timestamp,
    pub system: String,
    pub message: String,
}

const LIMIT_COLUMNS: &str = "l.account, l.reset_at, l.source, l.task_id, l.system, l.message, \
     l.reported_at, (SELECT count(*) FROM account_waits w JOIN tasks t ON t.id = w.task_id \
     WHERE w.account = l.account AND t.state = 'waiting_quota') AS waiting";

impl Store {
    /// The account's limit while it lasts (its reset still ahead).
    pub async fn account_limit(&self, account: &str) -> Result<Option<AccountLimit>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {LIMIT_COLUMNS} FROM account_limits l WHERE l.account = ? AND l.reset_at > ?"
        ))
        .bind(account)
        .bind(Timestamp::now())
        .fetch_optional(&self.readers)
        .await?)
    }

    /// Every limit that lasts, soonest reset first.
    pub async fn account_limits(&self) -> Result<Vec<AccountLimit>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {LIMIT_COLUMNS} FROM account_limits l WHERE l.reset_at > ? ORDER BY l.reset_at, l.account"
        ))
        .bind(Timestamp::now())
        .fetch_all(&self.readers)
        .await?)
    }

    /// Parks a queued task whose account is at its limit: `waiting_quota` until the limit's
    /// reset (no agent started, no attempt counted), following the limit if its reset moves.
    pub async fn wait_for_account(
        &self,
        task: Uuid,
        limit: &AccountLimit,
        policy: RetryPolicy,
    ) -> Result<Task> {
        let mut tx = self.write().await?;
        let reason = format!(
            "account `{}` is at its usage limit until {}: no agent of it starts before",
            limit.account, limit.reset_at
        );
        let until = Some(limit.reset_at);
        apply_in_tx(&mut tx, task, TaskEvent::QuotaExhausted { until }, &reason, "runtime", policy)
            .await?;
        wait_on(&mut tx, task, &limit.account).await?;
        // The limit may have moved since it was read.
        follow_limit(&mut tx, &limit.account).await?;
        let task = load_task(&mut tx, task).await?;
        tx.commit().await?;
        Ok(task)
    }

    /// Limits an agent of this system hit that the central has not acknowledged yet.
    pub async fn limits_to_report(&self) -> Result<Vec<AccountLimit>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {LIMIT_COLUMNS} FROM account_limits l \
             WHERE l.source = 'agent' AND l.shipped_at IS NULL AND l.reset_at > ?"
        ))
        .bind(Timestamp::now())
        .fetch_all(&self.readers)
        .await?)
    }

    /// The central acknowledged the limit of `account` resetting at `reset_at`.
    pub async fn limit_reported(&self, account: &str, reset_at: Timestamp) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE account_limits SET shipped_at = ? \
             WHERE account = ? AND reset_at = ? AND source = 'agent'",
        )
        .bind(Timestamp::now())
        .bind(account)
        .bind(reset_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The limits other systems sharing an account reported (the central's answer): each is
    /// recorded (a later reset than the one known wins) and moves the account's waiting tasks.
    /// Returns how many accounts' limits changed.
    pub async fn fleet_limits(&self, limits: &[FleetLimit]) -> Result<usize> {
        let now = Timestamp::now();
        let known = self.account_limits().await?;
        let news: Vec<&FleetLimit> = limits
            .iter()
            .filter(|l| l.reset_at > now)
            .filter(|l| !known.iter().any(|k| k.account == l.account && k.reset_at >= l.reset_at))
            .collect();
        if news.is_empty() {
            return Ok(0); // the usual answer: nothing new, no write lock
        }
        let mut tx = self.write().await?;
        let mut changed = 0;
        for limit in news {
            let fresh = Limit {
                account: &limit.account,
                reset_at: limit.reset_at,
                source: "fleet",
                task: None,
                system: Some(&limit.system),
                message: &limit.message,
            };
            changed += usize::from(record(&mut tx, &fresh, now).await?);
        }
        tx.commit().await?;
        Ok(changed)
    }
}

/// A limit to record.
struct Limit<'a> {
    account: &'a str,
    reset_at: Timestamp,
    source: &'static str,
    task: Option<Uuid>,
    system: Option<&'a str>,
    message: &'a str,
}

/// The agent of `task`'s attempt `attempt` hit a usage limit resetting at `reset_at` (the task
/// moves to `waiting_quota` in `tx`): its account is limited until then, and the task waits on
/// it. A later word from the same agent (its output, after its hook) replaces the reset time.
/// Returns when the task wakes: the account's reset (a later one may be known already).
pub(super) async fn agent_hit_limit(
    tx: &mut Writing,
    task: &Task,
    attempt: u32,
    reset_at: Timestamp,
    message: &str,
) -> Result<Timestamp> {
    let account: Option<(String,)> = sqlx::query_as(
        "SELECT coalesce(account, profile) FROM agents \
         WHERE task_id = ? AND attempt = ? AND kind = 'worker' ORDER BY started_at DESC LIMIT 1",
    )
    .bind(task.id.hyphenated())
    .bind(attempt)
    .fetch_optional(&mut **tx)
    .await?;
    let account = account.map_or_else(|| task.profile.clone(), |(account,)| account);
    let limit = Limit {
        account: &account,
        reset_at,
        source: "agent",
        task: Some(task.id),
        system: None,
        message,
    };
    record(tx, &limit, Timestamp::now()).await?;
    wait_on(tx, task.id, &account).await?;
    let (reset,): (Timestamp,) =
        sqlx::query_as("SELECT reset_at FROM account_limits WHERE account = ?")
            .bind(&account)
            .fetch_one(&mut **tx)
            .await?;
    Ok(reset.max(reset_at))
}

/// The reset time of the limit `task`'s agent hit, learnt after the task began waiting: the
/// limit (when that agent's word is still the one in force) and its waiting tasks move to it.
pub(super) async fn agent_limit_reset(
    tx: &mut Writing,
    task: Uuid,
    reset_at: Timestamp,
) -> Result<()> {
    let account: Option<(String,)> = sqlx::query_as(
        "UPDATE account_limits SET reset_at = ?, shipped_at = NULL \
         WHERE source = 'agent' AND task_id = ? AND reset_at <> ? RETURNING account",
    )
    .bind(reset_at)
    .bind(task.hyphenated())
    .bind(reset_at)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((account,)) = account {
        follow_limit(tx, &account).await?;
    }
    Ok(())
}

/// Records `limit`: it replaces the account's row when that one is over, came from the same
/// source (an agent's or a system's newer word), or resets later; else the later reset
/// stands. Then the account's waiting tasks follow the row. Whether the row changed.
async fn record(tx: &mut Writing, limit: &Limit<'_>, now: Timestamp) -> Result<bool> {
    let task = limit.task.map(|t| t.hyphenated().to_string());
    let changed = sqlx::query(
        r#"
        INSERT INTO account_limits (account, reset_at, source, task_id, system, message, reported_at)
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
        ON CONFLICT (account) DO UPDATE SET
            reset_at = excluded.reset_at, source = excluded.source, task_id = excluded.task_id,
            system = excluded.system, message = excluded.message,
            reported_at = excluded.reported_at, shipped_at = NULL
        WHERE account_limits.reset_at <= ?7
           OR excluded.reset_at > account_limits.reset_at
           OR (account_limits.source = excluded.source
               AND account_limits.task_id IS excluded.task_id
               AND account_limits.system IS excluded.system)
        "#,
    )
    .bind(limit.account)
    .bind(limit.reset_at)
    .bind(limit.source)
    .bind(task)
    .bind(limit.system)
    .bind(limit.message)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        > 0;
    if changed {
        follow_limit(tx, limit.account).await?;
    }
    Ok(changed)
}

/// The task waits in `waiting_quota` for `account`'s limit.
async fn wait_on(tx: &mut Writing, task: Uuid, account: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO account_waits (task_id, account) VALUES (?, ?) \
         ON CONFLICT (task_id) DO UPDATE SET account = excluded.account",
    )
    .bind(task.hyphenated())
    .bind(account)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Every task waiting for `account`'s limit wakes when the limit resets.
async fn follow_limit(tx: &mut Writing, account: &str) -> Result<()> {
    sqlx::query(
        r#"
        UPDATE tasks SET wake_at = (SELECT reset_at FROM account_limits WHERE account = ?1)
        WHERE state = 'waiting_quota'
          AND id IN (SELECT task_id FROM account_waits WHERE account = ?1)
          AND EXISTS (SELECT 1 FROM account_limits WHERE account = ?1)
        "#,
    )
    .bind(account)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The task left `waiting_quota`: it waits for no account any more.
pub(super) async fn stop_waiting(tx: &mut Writing, task: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM account_waits WHERE task_id = ?")
        .bind(task.hyphenated())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ccm_schema::TaskState;

    use super::*;
    use crate::store::NewTask;

    fn fleet(account: &str, reset_at: Timestamp, system: &str) -> FleetLimit {
        FleetLimit {
            account: account.into(),
            reset_at,
            system: system.into(),
            message: "limit".into(),
        }
    }

    #[tokio::test]
    async fn a_later_reset_wins_and_the_waiting_tasks_follow_their_accounts_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ccm.db"), "node").await.unwrap();
        let config = crate::config::Config::load(dir.path(), None).unwrap();
        let now = Timestamp::now();
        let hour = now.after(Duration::from_secs(3600));

        assert_eq!(store.fleet_limits(&[fleet("team", hour, "alpha")]).await.unwrap(), 1);
        let earlier = now.after(Duration::from_secs(600));
        assert_eq!(store.fleet_limits(&[fleet("team", earlier, "beta")]).await.unwrap(), 0);
        let past = Timestamp(now.millis() - 1000);
        assert_eq!(store.fleet_limits(&[fleet("solo", past, "beta")]).await.unwrap(), 0);
        let limit = store.account_limit("team").await.unwrap().expect("team is limited");
        assert_eq!((limit.reset_at, limit.system.as_deref()), (hour, Some("alpha")));
        assert_eq!(store.account_limit("solo").await.unwrap(), None);

        let new = NewTask { title: "waits".into(), ..NewTask::default() };
        let task = store.create_task(new, &config, "test").await.unwrap();
        store.schedule(1, &[], RetryPolicy::default()).await.unwrap();
        let parked = store.wait_for_account(task.id, &limit, RetryPolicy::default()).await.unwrap();
        assert_eq!(
            (parked.state, parked.wake_at, parked.attempts),
            (TaskState::WaitingQuota, Some(hour), 0)
        );
        assert_eq!(store.account_limits().await.unwrap()[0].waiting, 1);

        let later = now.after(Duration::from_secs(7200));
        assert_eq!(store.fleet_limits(&[fleet("team", later, "beta")]).await.unwrap(), 1);
        let moved = store.task(&task.id.to_string()).await.unwrap().task;
        assert_eq!(moved.wake_at, Some(later), "the waiting task follows the reset");
    }
}
