//! Scheduled supervisors' runs (`supervisor_runs`, migration `20261208050000`) and the digest
//! of a scope the store builds for a run's prompt.

use ccm_schema::{Severity, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::ConnectOptions;

use super::tasks::raise_alert;
use super::{Result, Store};

/// The reason of an alert a supervisor raised (an `ALERT:` line of its report).
pub const SUPERVISOR_ALERT: &str = "supervisor_alert";

/// One run of a scheduled supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct SupervisorRun {
    pub id: String,
    pub supervisor: String,
    pub scope: String,
    /// Why it ran: "2 completions", "interval 2h".
    pub reason: String,
    /// `running`, `done` or `failed`.
    pub status: String,
    pub profile: String,
    pub dir: String,
    pub window_id: Option<String>,
    pub digest: String,
    pub report: Option<String>,
    pub alerts: i64,
    pub cost_usd: f64,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

const RUN_COLUMNS: &str = "id, supervisor, scope, reason, status, profile, dir, window_id, \
    digest, report, alerts, cost_usd, started_at, ended_at";

/// Which tasks a supervisor looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeFilter {
    /// Tasks of this repository only (scope `project`).
    pub repo: Option<String>,
    /// Tasks of this workflow only (scope `task:<workflow>`).
    pub workflow: Option<String>,
}

impl ScopeFilter {
    /// The tasks of the scope filtered in SQL (`t` is `tasks`; `?1` the repository, `?2` the
    /// workflow, both always bound): only the conditions the scope sets are written, so that a
    /// project's moves are read through `tasks_by_repo` (`(?1 IS NULL OR t.repo = ?1)` keeps
    /// SQLite from using an index on `repo`).
    fn in_scope(&self) -> &'static str {
        match (&self.repo, &self.workflow) {
            (Some(_), Some(_)) => "t.repo = ?1 AND t.workflow = ?2",
            (Some(_), None) => "t.repo = ?1 AND ?2 IS NULL",
            (None, Some(_)) => "?1 IS NULL AND t.workflow = ?2",
            (None, None) => "?1 IS NULL AND ?2 IS NULL",
        }
    }
}

impl Store {
    /// Records a run that was just launched.
    pub async fn begin_supervisor_run(&self, run: &SupervisorRun) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(&format!(
            r#"
            INSERT INTO supervisor_runs ({RUN_COLUMNS})
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            "#
        ))
        .bind(&run.id)
        .bind(&run.supervisor)
        .bind(&run.scope)
        .bind(&run.reason)
        .bind(&run.status)
        .bind(&run.profile)
        .bind(&run.dir)
        .bind(&run.window_id)
        .bind(&run.digest)
        .bind(&run.report)
        .bind(run.alerts)
        .bind(run.cost_usd)
        .bind(run.started_at)
        .bind(run.ended_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Ends a run with its report, and raises each of `alerts` (warning, `supervisor_alert`),
    /// in one transaction.
    pub async fn end_supervisor_run(
        &self,
        id: &str,
        ok: bool,
        report: &str,
        alerts: &[String],
        cost_usd: f64,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let now = Timestamp::now();
        let ended = sqlx::query(
            r#"
            UPDATE supervisor_runs
            SET status = ?, report = ?, alerts = ?, cost_usd = ?, ended_at = ?
            WHERE id = ? AND status = 'running'
            "#,
        )
        .bind(if ok { "done" } else { "failed" })
        .bind(report)
        .bind(i64::try_from(alerts.len()).unwrap_or(i64::MAX))
        .bind(cost_usd)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if ended.rows_affected() == 1 {
            for alert in alerts {
                raise_alert(&mut tx, None, Severity::Warning, SUPERVISOR_ALERT, alert, None, now)
                    .await?;
            }
        }
        tx.commit().await
    }

    /// Runs, newest first: of one supervisor, or all.
    pub async fn supervisor_runs(&self, supervisor: Option<&str>) -> Result<Vec<SupervisorRun>> {
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT {RUN_COLUMNS} FROM supervisor_runs
            WHERE ?1 IS NULL OR supervisor = ?1
            ORDER BY started_at DESC, id DESC
            "#
        ))
        .bind(supervisor)
        .fetch_all(&self.readers)
        .await?)
    }

    /// The runs still running.
    pub async fn running_supervisor_runs(&self) -> Result<Vec<SupervisorRun>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM supervisor_runs WHERE status = 'running' ORDER BY started_at"
        ))
        .fetch_all(&self.readers)
        .await?)
    }

    /// The run whose id starts with `prefix` (at least 4 characters); an error names an unknown
    /// or ambiguous one.
    pub async fn supervisor_run(&self, prefix: &str) -> Result<SupervisorRun> {
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(super::StoreError::Invalid {
                field: "report",
                message: format!("`{prefix}` is not a report id (at least 4 hex digits)"),
            });
        }
        let mut runs: Vec<SupervisorRun> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM supervisor_runs WHERE id LIKE ? || '%' LIMIT 2"
        ))
        .bind(&prefix)
        .fetch_all(&self.readers)
        .await?;
        match runs.len() {
            1 => Ok(runs.remove(0)),
            0 => Err(super::StoreError::Invalid {
                field: "report",
                message: format!("no supervisor report `{prefix}`; `ccm supervisors` lists them"),
            }),
            _ => Err(super::StoreError::Invalid {
                field: "report",
                message: format!("`{prefix}` names more than one report; give more of the id"),
            }),
        }
    }

    /// Tasks of the scope that completed, and that failed or were blocked, since `since`.
    pub async fn scope_outcomes_since(
        &self,
        scope: &ScopeFilter,
        since: Timestamp,
    ) -> Result<(i64, i64)> {
        let in_scope = scope.in_scope();
        Ok(sqlx::query_as(&format!(
            r#"
            SELECT coalesce(sum(l.to_state = 'complete'), 0),
                   coalesce(sum(l.to_state IN ('failed', 'blocked')), 0)
            FROM task_log l JOIN tasks t ON t.id = l.task_id
            WHERE l.at > ?3 AND l.to_state IN ('complete', 'failed', 'blocked')
                AND l.from_state IS NOT l.to_state AND {in_scope}
            "#
        ))
        .bind(&scope.repo)
        .bind(&scope.workflow)
        .bind(since)
        .fetch_one(&self.readers)
        .await?)
    }

    /// The digest of a scope since `since`, as text for an agent's prompt: tasks by outcome,
    /// failures with the tail of their reason (a failed verification's output), retries,
    /// denied writes and tool calls, cost, silent agents, open alerts, and the previous report.
    ///
    /// Background work, a core's worth of CPU for tens of milliseconds over a large store: it
    /// runs on a thread of its own in the idle scheduling class
    /// ([`crate::background::lower_this_thread`]) with a read-only connection of its own, whose
    /// SQLite thread the lowered one starts (and so is lowered too), so the daemon's hooks and
    /// requests go first.
    pub async fn digest(
        &self,
        scope: &ScopeFilter,
        since: Timestamp,
        previous: Option<&str>,
    ) -> Result<String> {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .read_only(true)
            .busy_timeout(super::BUSY_TIMEOUT)
            .disable_statement_logging();
        let (scope, previous) = (scope.clone(), previous.map(str::to_owned));
        let (answer, answered) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new().name("ccm-digest".into()).spawn(move || {
            crate::background::lower_this_thread();
            let digest = async {
                let mut conn = options.connect().await?;
                let text = digest(&mut conn, &scope, since, previous.as_deref()).await;
                sqlx::Connection::close(conn).await?;
                text
            };
            let text = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(|e| sqlx::Error::Io(e).into())
                .and_then(|runtime| runtime.block_on(digest));
            let _ = answer.send(text);
        });
        spawned.map_err(sqlx::Error::Io)?;
        answered.await.map_err(|_| super::StoreError::Closed)?
    }
}

/// [`Store::digest`]'s queries, on one connection.
async fn digest(
    conn: &mut SqliteConnection,
    scope: &ScopeFilter,
    since: Timestamp,
    previous: Option<&str>,
) -> Result<String> {
    let in_scope = scope.in_scope();
    let moves: Vec<(String, i64)> = sqlx::query_as(&format!(
        r#"
            SELECT l.to_state, count(*) FROM task_log l JOIN tasks t ON t.id = l.task_id
            WHERE l.at > ?3 AND {in_scope}
            GROUP BY l.to_state ORDER BY l.to_state
            "#
    ))
    .bind(&scope.repo)
    .bind(&scope.workflow)
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let failures: Vec<(String, String, String, String)> = sqlx::query_as(&format!(
            r#"
            SELECT t.id, t.title, l.to_state, l.reason FROM task_log l JOIN tasks t ON t.id = l.task_id
            WHERE l.at > ?3 AND l.to_state IN ('error', 'failed', 'blocked')
                AND l.from_state IS NOT l.to_state AND {in_scope}
            ORDER BY l.id DESC LIMIT 10
            "#
        ))
        .bind(&scope.repo)
        .bind(&scope.workflow)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
    let (cost, agents): (f64, i64) = sqlx::query_as(&format!(
            r#"
            SELECT coalesce(sum(a.cost_usd), 0.0), count(*) FROM agents a CROSS JOIN tasks t ON t.id = a.task_id
            WHERE a.started_at > ?3 AND {in_scope}
            "#
        ))
        .bind(&scope.repo)
        .bind(&scope.workflow)
        .bind(since)
        .fetch_one(&mut *conn)
        .await?;
    let alerts: Vec<(String, String, String)> = sqlx::query_as(
        r#"
            SELECT severity, reason, message FROM alerts WHERE resolved_at IS NULL
            ORDER BY created_at DESC LIMIT 20
            "#,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut text = format!("Since {since}:\n");
    let moves_text: Vec<String> = moves.iter().map(|(s, n)| format!("{s} {n}")).collect();
    text.push_str(&format!(
        "- task moves by state: {}\n",
        if moves_text.is_empty() { "none".to_string() } else { moves_text.join(", ") }
    ));
    let retries = moves.iter().find(|(s, _)| s == "retry").map_or(0, |(_, n)| *n);
    text.push_str(&format!("- retries: {retries}\n"));
    text.push_str(&format!("- cost: ${cost:.4} over {agents} agent(s)\n"));
    text.push_str(&format!("- failures ({}):\n", failures.len()));
    for (id, title, state, reason) in &failures {
        let tail = crate::text::tail(reason, 400).replace('\n', "\n    ");
        text.push_str(&format!("  - task {} \"{title}\" → {state}: {tail}\n", &id[..8]));
    }
    let denials =
        alerts.iter().filter(|(_, r, _)| r == "write_denied" || r == "permission_denied").count();
    let stalled = alerts.iter().filter(|(_, r, _)| r == "stalled").count();
    text.push_str(&format!("- denials (open alerts): {denials}\n"));
    text.push_str(&format!("- silent (stalled) agents: {stalled}\n"));
    text.push_str(&format!("- open alerts ({}):\n", alerts.len()));
    for (severity, reason, message) in &alerts {
        let first = message.lines().next().unwrap_or_default();
        text.push_str(&format!("  - [{severity}] {reason}: {}\n", crate::text::head(first, 200)));
    }
    match previous {
        Some(report) => {
            text.push_str(&format!("- previous report:\n{}\n", crate::text::head(report, 2_000)))
        }
        None => text.push_str("- previous report: none (first run)\n"),
    }
    Ok(text)
}
