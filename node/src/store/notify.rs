//! Durable delivery of notifications: routing the queue the triggers fill (one row per alert
//! and decision, written in the transaction that raised it) into one send per notifier, the
//! sends that are due, their outcomes, and small durable values (Telegram's update offset).

use ccm_schema::{Alert, Decision, Severity, Timestamp};
use serde::{Deserialize, Serialize};

use super::records::{ALERT_COLUMNS, DECISION_COLUMNS};
use super::{Result, Store};

/// What a notification is about.
#[derive(Debug, Clone)]
pub enum Subject {
    Alert(Alert),
    Decision(Decision),
}

impl Subject {
    /// The alert's reason, or `decision`: what routing rules match.
    pub fn kind(&self) -> &str {
        match self {
            Subject::Alert(alert) => &alert.reason,
            Subject::Decision(_) => "decision",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Subject::Alert(alert) => alert.severity,
            Subject::Decision(_) => Severity::Warning,
        }
    }

    /// Repeats of one key within the dedupe window fold into the digest.
    pub fn dedupe_key(&self) -> String {
        match self {
            Subject::Alert(alert) => format!("alert:{}:{}", alert.reason, alert.message),
            Subject::Decision(decision) => format!("decision:{}", decision.id),
        }
    }

    /// Settled before it was sent: nothing left to tell.
    fn settled(&self) -> bool {
        match self {
            Subject::Alert(alert) => alert.resolved_at.is_some(),
            Subject::Decision(decision) => decision.answer.is_some(),
        }
    }
}

/// One send of a notification to one notifier.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub notification: i64,
    pub subject: Subject,
    pub attempts: u32,
    pub dedupe_key: String,
    /// What earlier attempts already delivered (Telegram: `[[chat_id, message_id], ...]`).
    pub refs: serde_json::Value,
}

/// Where a send goes, decided by the routing rules: `(notifier, immediate)`.
pub type Routes = Vec<(String, bool)>;

impl Store {
    /// Routes the notifications not routed yet: one send per notifier `route` names, pending
    /// (immediate, and no send of the same key to that notifier within `dedupe`) or waiting
    /// for the digest. Alerts that ask for a decision are left to the decision. Returns how
    /// many sends it queued.
    pub async fn route_notifications(
        &self,
        route: impl Fn(&Subject) -> Routes,
        dedupe: std::time::Duration,
    ) -> Result<usize> {
        let (waiting,): (bool,) =
            sqlx::query_as("SELECT EXISTS (SELECT 1 FROM notifications WHERE routed_at IS NULL)")
                .fetch_one(&self.readers)
                .await?;
        if !waiting {
            return Ok(0);
        }
        let now = Timestamp::now();
        let since = Timestamp(now.millis() - i64::try_from(dedupe.as_millis()).unwrap_or(i64::MAX));
        let mut tx = self.write().await?;
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, source, source_id FROM notifications WHERE routed_at IS NULL ORDER BY id LIMIT 500",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut queued = 0;
        for (id, source, source_id) in rows {
            let subject = load_subject(&mut tx, &source, &source_id).await?;
            // An alert raised with a decision (one its details name: an approval, a refused
            // write's change request; or one about its task: a blocked task's
            // `attempts_exhausted` and its retry-or-cancel question) goes out as that decision
            // where the decision goes, one message, not two; alone where only the alert goes.
            let named = match &subject {
                Some(Subject::Alert(a)) => a
                    .details
                    .as_ref()
                    .and_then(|d| d.0.get("decision"))
                    .and_then(|d| d.as_str())
                    .map(str::to_owned),
                _ => None,
            };
            let companion = match (&subject, named) {
                (_, Some(decision)) => load_subject(&mut tx, "decision", &decision).await?,
                (Some(Subject::Alert(alert)), None) => companion_decision(&mut tx, alert).await?,
                _ => None,
            };
            let with_decision = companion.as_ref().map(&route).unwrap_or_default();
            if let Some(subject) = subject {
                let key = subject.dedupe_key();
                for (notifier, immediate) in route(&subject) {
                    if with_decision.iter().any(|(n, _)| *n == notifier) {
                        continue;
                    }
                    let (recent,): (bool,) = sqlx::query_as(
                        r#"
                        SELECT EXISTS (SELECT 1 FROM notification_sends
                            WHERE notifier = ? AND dedupe_key = ? AND created_at >= ?
                              AND state IN ('pending', 'sent'))
                        "#,
                    )
                    .bind(&notifier)
                    .bind(&key)
                    .bind(since)
                    .fetch_one(&mut *tx)
                    .await?;
                    let state = if immediate && !recent { "pending" } else { "digest" };
                    queued += sqlx::query(
                        r#"
                        INSERT OR IGNORE INTO notification_sends
                            (notification_id, notifier, dedupe_key, state, next_at, created_at)
                        VALUES (?, ?, ?, ?, ?, ?)
                        "#,
                    )
                    .bind(id)
                    .bind(&notifier)
                    .bind(&key)
                    .bind(state)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected() as usize;
                }
            }
            sqlx::query("UPDATE notifications SET routed_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(queued)
    }

    /// The pending sends of `notifier` that are due, oldest first. Sends whose subject was
    /// settled meanwhile are marked `skipped` instead.
    pub async fn due_sends(&self, notifier: &str, limit: u32) -> Result<Vec<Outgoing>> {
        let rows: Vec<SendRow> = sqlx::query_as(
            r#"
            SELECT s.notification_id, n.source, n.source_id, s.attempts, s.dedupe_key, s.refs
            FROM notification_sends s JOIN notifications n ON n.id = s.notification_id
            WHERE s.notifier = ? AND s.state = 'pending' AND s.next_at <= ?
            ORDER BY s.next_at, s.notification_id LIMIT ?
            "#,
        )
        .bind(notifier)
        .bind(Timestamp::now())
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        let mut due = Vec::new();
        for row in rows {
            match self.outgoing(row).await? {
                Some(out) if !out.subject.settled() => due.push(out),
                Some(out) => {
                    self.finish_sends(notifier, &[out.notification], "skipped", None, false).await?
                }
                None => {}
            }
        }
        Ok(due)
    }

    /// The sends waiting for `notifier`'s digest, if the oldest has waited `wait` or more.
    pub async fn digest_due(
        &self,
        notifier: &str,
        wait: std::time::Duration,
    ) -> Result<Vec<Outgoing>> {
        let (oldest,): (Option<Timestamp>,) = sqlx::query_as(
            "SELECT min(created_at) FROM notification_sends WHERE notifier = ? AND state = 'digest'",
        )
        .bind(notifier)
        .fetch_one(&self.readers)
        .await?;
        let due = oldest.is_some_and(|t| {
            t.millis() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
                <= Timestamp::now().millis()
        });
        if !due {
            return Ok(Vec::new());
        }
        let rows: Vec<SendRow> = sqlx::query_as(
            r#"
            SELECT s.notification_id, n.source, n.source_id, s.attempts, s.dedupe_key, s.refs
            FROM notification_sends s JOIN notifications n ON n.id = s.notification_id
            WHERE s.notifier = ? AND s.state = 'digest' ORDER BY s.notification_id LIMIT 10000
            "#,
        )
        .bind(notifier)
        .fetch_all(&self.readers)
        .await?;
        let mut items = Vec::new();
        for row in rows {
            items.extend(self.outgoing(row).await?);
        }
        Ok(items)
    }

    /// Records the outcome of sends: `sent`, `digested`, `failed` or `skipped`, with what the
    /// notifier answered (`refs`) when given; `buttons`: the message has buttons that stay
    /// live until its decision is answered.
    pub async fn finish_sends(
        &self,
        notifier: &str,
        notifications: &[i64],
        state: &str,
        refs: Option<&serde_json::Value>,
        buttons: bool,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        for id in notifications {
            sqlx::query(
                r#"
                UPDATE notification_sends SET state = ?, sent_at = ?, refs = coalesce(?, refs),
                    attempts = attempts + 1, live_buttons = ?
                WHERE notification_id = ? AND notifier = ?
                "#,
            )
            .bind(state)
            .bind(Timestamp::now())
            .bind(refs.map(|r| r.to_string()))
            .bind(buttons)
            .bind(id)
            .bind(notifier)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed attempt: the send is tried again at `next_at`; what was delivered so
    /// far (`refs`) is kept so a retry does not repeat it.
    pub async fn retry_send(
        &self,
        notifier: &str,
        notification: i64,
        next_at: Timestamp,
        error: &str,
        refs: &serde_json::Value,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            r#"
            UPDATE notification_sends SET attempts = attempts + 1, next_at = ?, last_error = ?, refs = ?
            WHERE notification_id = ? AND notifier = ?
            "#,
        )
        .bind(next_at)
        .bind(error)
        .bind(refs.to_string())
        .bind(notification)
        .bind(notifier)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What `notifier` answered when it sent decision `decision` (to edit the message).
    pub async fn decision_refs(
        &self,
        notifier: &str,
        decision: uuid::Uuid,
    ) -> Result<Option<serde_json::Value>> {
        let row: Option<(String,)> = sqlx::query_as(
            r#"
            SELECT s.refs FROM notification_sends s JOIN notifications n ON n.id = s.notification_id
            WHERE s.notifier = ? AND n.source = 'decision' AND n.source_id = ?
            "#,
        )
        .bind(notifier)
        .bind(decision.hyphenated().to_string())
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.and_then(|(refs,)| serde_json::from_str(&refs).ok()))
    }

    /// Decisions that `notifier` sent with buttons and that were answered since (anywhere: a
    /// button, the CLI, the API, a timeout, the task's end): what was sent (`refs`) and the
    /// decision as answered.
    pub async fn answered_with_buttons(
        &self,
        notifier: &str,
    ) -> Result<Vec<(i64, serde_json::Value, Decision)>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            r#"
            SELECT s.notification_id, s.refs, n.source_id
            FROM notification_sends s JOIN notifications n ON n.id = s.notification_id
            WHERE s.notifier = ? AND s.live_buttons = 1 AND n.source = 'decision'
              AND EXISTS (SELECT 1 FROM decisions d WHERE d.id = n.source_id AND d.answered_at IS NOT NULL)
            ORDER BY s.notification_id LIMIT 50
            "#,
        )
        .bind(notifier)
        .fetch_all(&self.readers)
        .await?;
        let mut answered = Vec::with_capacity(rows.len());
        let mut conn = self.readers.acquire().await?;
        for (notification, refs, decision) in rows {
            if let Some(Subject::Decision(decision)) =
                load_subject(&mut conn, "decision", &decision).await?
            {
                answered.push((
                    notification,
                    serde_json::from_str(&refs).unwrap_or_default(),
                    decision,
                ));
            }
        }
        Ok(answered)
    }

    /// Whether the buttons of `notifier`'s message about notification `notification` are
    /// live (`false`: gone, or being taken away by a press).
    pub async fn set_live_buttons(
        &self,
        notifier: &str,
        notification: i64,
        live: bool,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE notification_sends SET live_buttons = ? WHERE notification_id = ? AND notifier = ?",
        )
        .bind(live)
        .bind(notification)
        .bind(notifier)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live buttons `notifier` sent for `decision`: `(notification, refs)`.
    pub async fn decision_buttons(
        &self,
        notifier: &str,
        decision: uuid::Uuid,
    ) -> Result<Option<(i64, serde_json::Value)>> {
        let row: Option<(i64, String)> = sqlx::query_as(
            r#"
            SELECT s.notification_id, s.refs
            FROM notification_sends s JOIN notifications n ON n.id = s.notification_id
            WHERE s.notifier = ? AND n.source = 'decision' AND n.source_id = ? AND s.live_buttons = 1
            "#,
        )
        .bind(notifier)
        .bind(decision.hyphenated().to_string())
        .fetch_optional(&self.readers)
        .await?;
        Ok(row.map(|(id, refs)| (id, serde_json::from_str(&refs).unwrap_or_default())))
    }

    /// Records the last failure of `notifier` (a send, a digest, a summary, a poll, or why it
    /// did not start), for `ccm notify status`.
    pub async fn notifier_failed(&self, notifier: &str, error: &str) -> Result<()> {
        let value = serde_json::json!({ "at": Timestamp::now(), "message": error }).to_string();
        self.set_notify_value(&format!("last_error:{notifier}"), &value).await
    }

    /// Per notifier that has sends or a recorded failure: its sends per state, when it last
    /// delivered one, and its last failure. For `ccm notify status`.
    pub async fn notifier_status(&self) -> Result<Vec<NotifierStatus>> {
        let counts: Vec<(String, String, i64, Option<Timestamp>)> = sqlx::query_as(
            r#"
            SELECT notifier, state, count(*), max(sent_at) FILTER (WHERE state IN ('sent', 'digested'))
            FROM notification_sends GROUP BY notifier, state ORDER BY 1, 2
            "#,
        )
        .fetch_all(&self.readers)
        .await?;
        let errors: Vec<(String, String)> = sqlx::query_as(
            "SELECT substr(key, 12), value FROM notify_state WHERE key LIKE 'last!_error:%' ESCAPE '!' ORDER BY 1",
        )
        .fetch_all(&self.readers)
        .await?;
        let mut all: std::collections::BTreeMap<String, NotifierStatus> = Default::default();
        let blank = |notifier: String| NotifierStatus { notifier, ..Default::default() };
        for (notifier, state, count, sent) in counts {
            let status = all.entry(notifier.clone()).or_insert_with(|| blank(notifier));
            status.sends.insert(state, count);
            status.last_sent_at = status.last_sent_at.max(sent);
        }
        for (notifier, value) in errors {
            let status = all.entry(notifier.clone()).or_insert_with(|| blank(notifier));
            status.last_error = serde_json::from_str(&value).ok();
        }
        Ok(all.into_values().collect())
    }

    /// Raises health alert `reason` about `key` (a filesystem, a window) unless one is open:
    /// one alert while the condition lasts, whatever its figures say meanwhile.
    pub async fn raise_health(
        &self,
        severity: Severity,
        reason: &str,
        key: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let (open,): (bool,) = sqlx::query_as(
            r#"
            SELECT EXISTS (SELECT 1 FROM alerts
                WHERE resolved_at IS NULL AND reason = ? AND json_extract(details, '$.health') = ?)
            "#,
        )
        .bind(reason)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        if !open {
            let details = serde_json::json!({ "health": key });
            let now = Timestamp::now();
            super::tasks::raise_alert(&mut tx, None, severity, reason, message, Some(details), now)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Resolves the open health alerts `reason` whose condition cleared: those about a key not
    /// in `still`. The next time the condition comes, a new alert is raised (and sent).
    pub async fn settle_health(&self, reason: &str, still: &[String]) -> Result<usize> {
        let still = serde_json::to_string(still).unwrap_or_else(|_| "[]".into());
        let (any,): (bool,) = sqlx::query_as(
            r#"
            SELECT EXISTS (SELECT 1 FROM alerts WHERE resolved_at IS NULL AND reason = ?
                AND coalesce(json_extract(details, '$.health'), '') NOT IN (SELECT value FROM json_each(?)))
            "#,
        )
        .bind(reason)
        .bind(&still)
        .fetch_one(&self.readers)
        .await?;
        if !any {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let resolved: Vec<Alert> = sqlx::query_as(&format!(
            r#"
            UPDATE alerts SET resolved_at = ?
            WHERE resolved_at IS NULL AND reason = ?
              AND coalesce(json_extract(details, '$.health'), '') NOT IN (SELECT value FROM json_each(?))
            RETURNING {ALERT_COLUMNS}
            "#
        ))
        .bind(Timestamp::now())
        .bind(reason)
        .bind(&still)
        .fetch_all(&mut *tx)
        .await?;
        for alert in &resolved {
            super::outbox_alert(&mut tx, alert, false).await?;
        }
        tx.commit().await?;
        Ok(resolved.len())
    }

    /// A durable value of the notifiers (such as a bot's update offset).
    /// The tasks that ended (`complete`, `failed`, `blocked`) since `since`, each once with
    /// its latest such move, newest first: `(state, title, reason)`. For the daily summary.
    pub async fn ended_since(&self, since: Timestamp) -> Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            r#"
            SELECT l.to_state, t.title, l.reason
            FROM task_log l JOIN tasks t ON t.id = l.task_id
            WHERE l.id IN (
                SELECT max(id) FROM task_log
                WHERE at >= ? AND to_state IN ('complete', 'failed', 'blocked')
                    AND from_state IS NOT to_state
                GROUP BY task_id
            )
            ORDER BY l.id DESC
            "#,
        )
        .bind(since)
        .fetch_all(&self.readers)
        .await?)
    }

    pub async fn notify_value(&self, key: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM notify_state WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.readers)
            .await?;
        Ok(row.map(|(value,)| value))
    }

    pub async fn set_notify_value(&self, key: &str, value: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO notify_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outgoing(&self, row: SendRow) -> Result<Option<Outgoing>> {
        let mut conn = self.readers.acquire().await?;
        let subject = load_subject(&mut conn, &row.source, &row.source_id).await?;
        Ok(subject.map(|subject| Outgoing {
            notification: row.notification_id,
            subject,
            attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
            dedupe_key: row.dedupe_key,
            refs: serde_json::from_str(&row.refs).unwrap_or_default(),
        }))
    }
}

/// What `ccm notify status` shows of one notifier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NotifierStatus {
    pub notifier: String,
    /// Sends per state (`pending`, `sent`, `digest`, `digested`, `failed`, `skipped`).
    pub sends: std::collections::BTreeMap<String, i64>,
    /// When it last delivered a message (alone or in a digest).
    pub last_sent_at: Option<Timestamp>,
    /// Its last failure, whatever came after it.
    pub last_error: Option<NotifierError>,
}

/// A notifier's failure, with its cause (never a token or a secret URL part).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifierError {
    pub at: Timestamp,
    pub message: String,
}

/// The pending decision raised about `alert`'s task in the alert's transaction (same task,
/// same time), if any.
async fn companion_decision(
    conn: &mut sqlx::SqliteConnection,
    alert: &Alert,
) -> Result<Option<Subject>> {
    let Some(task) = &alert.task_id else { return Ok(None) };
    let decision: Option<Decision> = sqlx::query_as(&format!(
        "SELECT {DECISION_COLUMNS} FROM decisions WHERE task_id = ? AND created_at = ? LIMIT 1"
    ))
    .bind(task)
    .bind(alert.created_at)
    .fetch_optional(conn)
    .await?;
    Ok(decision.map(Subject::Decision))
}

#[derive(sqlx::FromRow)]
struct SendRow {
    notification_id: i64,
    source: String,
    source_id: String,
    attempts: i64,
    dedupe_key: String,
    refs: String,
}

async fn load_subject(
    conn: &mut sqlx::SqliteConnection,
    source: &str,
    id: &str,
) -> Result<Option<Subject>> {
    Ok(match source {
        "alert" => sqlx::query_as(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?"))
            .bind(id)
            .fetch_optional(conn)
            .await?
            .map(Subject::Alert),
        _ => sqlx::query_as(&format!("SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?"))
            .bind(id)
            .fetch_optional(conn)
            .await?
            .map(Subject::Decision),
    })
}
