//! Read models of the dashboard: the task board, what changed since an outbox id, counts and
//! costs for the overview; and acknowledging an alert.

use ccm_schema::{Alert, TaskState, Timestamp};
use serde::{Deserialize, Serialize};

use super::records::ALERT_COLUMNS;
use super::{outbox_alert, Result, Store, StoreError};

/// How many tasks of one state the board shows (the most recently changed).
pub const BOARD_COLUMN_LIMIT: i64 = 50;
/// How many outbox rows one change notice reads at most.
const CHANGES_LIMIT: i64 = 500;

/// A task as a card of the board.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct BoardTask {
    pub id: String,
    pub title: String,
    pub state: TaskState,
    pub repo: Option<String>,
    pub profile: String,
    pub priority: i64,
    pub attempts: u32,
    pub updated_at: Timestamp,
    /// A complete task's land state, once it entered a land queue.
    pub land_state: Option<ccm_schema::LandState>,
}

/// Which cards the board shows; empty fields match everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BoardFilter {
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    /// Words of the title or id.
    #[serde(default)]
    pub q: Option<String>,
}

/// Cost of the agents started on one day (UTC).
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow)]
pub struct CostDay {
    /// Days since the Unix epoch.
    pub day: i64,
    pub cost_usd: f64,
}

/// The numbers of the overview besides tasks per state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, sqlx::FromRow)]
pub struct DashboardCounts {
    pub live_agents: i64,
    pub open_alerts: i64,
    pub pending_decisions: i64,
}

fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl Store {
    /// The board: per state, the most recently changed tasks that match `filter` (a page of
    /// [`BOARD_COLUMN_LIMIT`], the `page`th), and the number of matching tasks per state.
    ///
    /// One index range per column (`tasks_board`: state, then the newest first), each bounded:
    /// with 10,000 tasks the board no longer sorts the whole table.
    pub async fn board(
        &self,
        filter: &BoardFilter,
        page: i64,
    ) -> Result<(Vec<BoardTask>, Vec<(TaskState, i64)>)> {
        let state = nonempty(&filter.state);
        let repo = nonempty(&filter.repo);
        let profile = nonempty(&filter.profile);
        let q = nonempty(&filter.q).map(|q| format!("%{}%", q.replace(['%', '_'], "")));
        let matching = "(?2 IS NULL OR repo = ?2) AND (?3 IS NULL OR profile = ?3) \
                        AND (?4 IS NULL OR title LIKE ?4 OR id LIKE ?4)";
        let states: Vec<&str> = TaskState::ALL
            .iter()
            .map(|s| s.as_str())
            .filter(|s| state.is_none_or(|wanted| wanted == *s))
            .collect();
        let mut cards = Vec::new();
        for column in &states {
            let rows: Vec<BoardTask> = sqlx::query_as(&format!(
                r#"
                SELECT id, title, state, repo, profile, priority, attempts, updated_at,
                       (SELECT l.state FROM landings l WHERE l.task_id = t.id) AS land_state
                FROM tasks t INDEXED BY tasks_board
                WHERE state = ?1 AND {matching}
                ORDER BY updated_at DESC, id
                LIMIT ?5 OFFSET ?6
                "#
            ))
            .bind(column)
            .bind(repo)
            .bind(profile)
            .bind(&q)
            .bind(BOARD_COLUMN_LIMIT)
            .bind(page.max(0) * BOARD_COLUMN_LIMIT)
            .fetch_all(&self.readers)
            .await?;
            cards.extend(rows);
        }
        // Unfiltered, the counts the task table's triggers keep; filtered, a count of the
        // matching tasks.
        let counts = if repo.is_none() && profile.is_none() && q.is_none() {
            sqlx::query_as(
                "SELECT state, n FROM task_state_counts WHERE n > 0 AND (?1 IS NULL OR state = ?1)",
            )
            .bind(state)
            .fetch_all(&self.readers)
            .await?
        } else {
            sqlx::query_as(&format!(
                r#"
                SELECT state, count(*) FROM tasks
                WHERE (?1 IS NULL OR state = ?1) AND {matching}
                GROUP BY state
                "#
            ))
            .bind(state)
            .bind(repo)
            .bind(profile)
            .bind(&q)
            .fetch_all(&self.readers)
            .await?
        };
        Ok((cards, counts))
    }

    /// When a routed task last changed here and how many there are: the dashboard's fleet
    /// refresher tells the pages when it moves (the central's view of a routed task is
    /// written without an outbox row).
    pub async fn routed_version(&self) -> Result<(i64, i64)> {
        Ok(sqlx::query_as("SELECT coalesce(max(updated_at), 0), count(*) FROM routed_tasks")
            .fetch_one(&self.readers)
            .await?)
    }

    /// The id of the newest outbox row (0 when there is none): what a page has seen.
    pub async fn outbox_head(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM outbox")
            .fetch_one(&self.readers)
            .await?)
    }

    /// The entities (`kind`, `entity_id`) changed after outbox row `after`, oldest first, and
    /// the id of the last row read. A task's rows are kind `task` (stream `task_summary`).
    pub async fn changes_since(&self, after: i64) -> Result<(i64, Vec<(String, String)>)> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            r#"
            SELECT seq, CASE stream WHEN 'task_summary' THEN 'task' ELSE stream END, entity_key
            FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?
            "#,
        )
        .bind(after)
        .bind(CHANGES_LIMIT)
        .fetch_all(&self.readers)
        .await?;
        let last = rows.last().map_or(after, |(id, ..)| *id);
        Ok((last, rows.into_iter().map(|(_, kind, entity)| (kind, entity)).collect()))
    }

    pub async fn dashboard_counts(&self) -> Result<DashboardCounts> {
        Ok(sqlx::query_as(
            r#"
            SELECT (SELECT count(*) FROM agents WHERE status IN ('starting', 'running')) AS live_agents,
                   (SELECT count(*) FROM alerts WHERE resolved_at IS NULL) AS open_alerts,
                   (SELECT count(*) FROM decisions WHERE answered_at IS NULL) AS pending_decisions
            "#,
        )
        .fetch_one(&self.readers)
        .await?)
    }

    /// Cost per day of the agents started since `since`, oldest day first.
    pub async fn cost_per_day(&self, since: Timestamp) -> Result<Vec<CostDay>> {
        Ok(sqlx::query_as(
            "SELECT started_at / 86400000 AS day, sum(cost_usd) AS cost_usd FROM agents \
             WHERE started_at >= ? GROUP BY day ORDER BY day",
        )
        .bind(since)
        .fetch_all(&self.readers)
        .await?)
    }

    /// Cost per repository (`None`: tasks of no repository) of all agents, highest first.
    pub async fn cost_per_repo(&self) -> Result<Vec<(Option<String>, f64)>> {
        Ok(sqlx::query_as(
            "SELECT t.repo, sum(a.cost_usd) AS cost FROM agents a JOIN tasks t ON t.id = a.task_id \
             GROUP BY t.repo ORDER BY cost DESC LIMIT 10",
        )
        .fetch_all(&self.readers)
        .await?)
    }

    /// Marks an open alert as acknowledged (resolved now); `id` may be a unique prefix.
    pub async fn acknowledge_alert(&self, id: &str) -> Result<Alert> {
        let key = id.trim().to_ascii_lowercase();
        let mut tx = self.write().await?;
        let open: Vec<Alert> = sqlx::query_as(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE id >= ?1 AND id < ?1 || 'g' AND resolved_at IS NULL LIMIT 2"
        ))
        .bind(&key)
        .fetch_all(&mut *tx)
        .await?;
        let invalid = |message: String| StoreError::Invalid { field: "alert", message };
        let alert = match <[Alert; 1]>::try_from(open) {
            Ok([alert]) if !key.is_empty() => alert,
            Err(open) if open.len() > 1 => {
                return Err(invalid(format!("alert id `{key}` is ambiguous")))
            }
            _ => return Err(invalid(format!("no open alert has id `{id}`"))),
        };
        let alert: Alert = sqlx::query_as(&format!(
            "UPDATE alerts SET resolved_at = ? WHERE id = ? RETURNING {ALERT_COLUMNS}"
        ))
        .bind(Timestamp::now())
        .bind(alert.id.hyphenated())
        .fetch_one(&mut *tx)
        .await?;
        outbox_alert(&mut tx, &alert, false).await?;
        tx.commit().await?;
        Ok(alert)
    }
}

impl Store {
    /// The net number of tasks that became waiting (`created` or `queued`) per clock hour of the
    /// last `hours` before `now`, as `(hours ago, net)` (0: the current hour); hours without
    /// changes are left out. Read from `task_waiting_hours`, which a trigger on the task log keeps.
    pub async fn waiting_changes(&self, now: Timestamp, hours: i64) -> Result<Vec<(i64, i64)>> {
        Ok(sqlx::query_as(
            "SELECT ?1 / 3600000 - hour AS ago, net FROM task_waiting_hours \
             WHERE hour > ?1 / 3600000 - ?2",
        )
        .bind(now)
        .bind(hours)
        .fetch_all(&self.readers)
        .await?)
    }
}
