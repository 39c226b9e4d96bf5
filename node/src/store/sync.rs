//! The outbox as the sync engine sees it ([`ccm_sync::Outbox`]): reads on the readers, every
//! write a transaction on the one writer.

use std::collections::BTreeMap;

use ccm_schema::{Severity, Timestamp};
use ccm_sync::outbox::{HealthRowV1, TaskSummaryRowV1};
use ccm_sync::wire::{ContextV1, HeartbeatAnswerV1, LeaseV1};
use ccm_sync::{
    Lane, LaneStatus, NewBatch, OpenBatch, OutboxRow, RejectedItem, Rejection, REJECTED_SHOWN,
    SHIPPED_STREAMS,
};
use uuid::Uuid;

use super::records::ALERT_COLUMNS;

/// Outbox rows kept without sync (the trigger `outbox_local_only` keeps the same number).
pub const OUTBOX_KEPT_OFF: i64 = 1000;
use super::tasks::raise_alert;
use super::{Result, Store, StoreError, Writing};

/// `stream IN (...)` of the streams `api.ingest_batch` takes.
fn shipped() -> String {
    let list: Vec<String> = SHIPPED_STREAMS.iter().map(|s| format!("'{s}'")).collect();
    format!("stream IN ({})", list.join(", "))
}

fn seqs(seqs: &[i64]) -> String {
    serde_json::Value::from(seqs.to_vec()).to_string()
}

/// A `sync_lanes` row with its backlog and drop count.
type LaneRow =
    (String, Option<Timestamp>, Option<String>, Option<Timestamp>, Option<String>, i64, i64);

type RowTuple = (i64, String, String, i64, String);

/// A refused row: seq, stream, key, code, reason, when.
type RejectedRow = (i64, String, String, Option<String>, Option<String>, Option<Timestamp>);

fn row((seq, stream, entity_key, entity_version, payload): RowTuple) -> OutboxRow {
    OutboxRow { seq, stream, entity_key, entity_version, payload }
}

fn lane(text: &str) -> Result<Lane> {
    match text {
        "urgent" => Ok(Lane::Urgent),
        "normal" => Ok(Lane::Normal),
        other => {
            Err(StoreError::Invalid { field: "lane", message: format!("unknown lane `{other}`") })
        }
    }
}

async fn insert_batch(tx: &mut Writing, batch: &NewBatch) -> Result<()> {
    sqlx::query(
        r#"
        INSERT INTO outbox_batch
            (batch_id, lane, ord, parent_id, seq_lo, seq_hi, items, bytes, body, sealed_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        "#,
    )
    .bind(batch.id.hyphenated())
    .bind(batch.lane.as_str())
    .bind(&batch.ord)
    .bind(batch.parent.map(|p| p.hyphenated().to_string()))
    .bind(batch.seq_lo)
    .bind(batch.seq_hi)
    .bind(batch.items.len() as i64)
    .bind(batch.body.len() as i64)
    .bind(&batch.body)
    .bind(Timestamp::now())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        r#"
        UPDATE outbox SET state = 'sealed', batch_id = ?1
        WHERE seq IN (SELECT value FROM json_each(?2)) AND state IN ('pending', 'sealed')
        "#,
    )
    .bind(batch.id.hyphenated())
    .bind(seqs(&batch.items))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks the rows refused (kept, never sent again) with their code and reason.
async fn reject_rows(tx: &mut Writing, rejected: &[Rejection], now: Timestamp) -> Result<()> {
    for rejection in rejected {
        sqlx::query(
            "UPDATE outbox SET state = 'rejected', error = ?, error_code = ?, rejected_at = ? \
             WHERE seq = ?",
        )
        .bind(&rejection.reason)
        .bind(&rejection.code)
        .bind(now)
        .bind(rejection.seq)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Resolves the open `sync_paused` alerts: sync runs again.
async fn resolve_paused_alerts(tx: &mut Writing) -> Result<()> {
    let resolved: Vec<ccm_schema::Alert> = sqlx::query_as(&format!(
        "UPDATE alerts SET resolved_at = ? WHERE resolved_at IS NULL AND reason = 'sync_paused' \
         RETURNING {ALERT_COLUMNS}"
    ))
    .bind(Timestamp::now())
    .fetch_all(&mut **tx)
    .await?;
    for alert in resolved {
        super::outbox_alert(tx, &alert, false).await?;
    }
    Ok(())
}

/// A refused row as its alert names it: stream, key, code, reason, and whether it is itself
/// such an alert.
type RefusedRow = (String, String, Option<String>, Option<String>, bool);

/// How many refused rows an alert names; the rest are counted.
const ALERT_NAMES: usize = 3;

/// One alert for the refused rows (seqs) `rows` of one batch, naming the first of them;
/// `by` refused them (`the central`, `this node`). None when every refused row is itself such
/// an alert, so a central that refuses alerts does not get an endless chain of them.
async fn alert_rejected(tx: &mut Writing, rows: &[i64], by: &str, now: Timestamp) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<RefusedRow> = sqlx::query_as(
        r#"
        SELECT stream, entity_key, error_code, error,
               stream = 'alert' AND json_extract(payload, '$.reason') = ?1
        FROM outbox WHERE seq IN (SELECT value FROM json_each(?2)) ORDER BY seq
        "#,
    )
    .bind(ccm_sync::REJECTED_ALERT)
    .bind(seqs(rows))
    .fetch_all(&mut **tx)
    .await?;
    if rows.iter().all(|row| row.4) {
        return Ok(());
    }
    let named: Vec<String> = rows
        .iter()
        .take(ALERT_NAMES)
        .map(|(stream, key, code, error, _)| {
            let code = code.as_deref().unwrap_or("rejected");
            let message = rejected_message(code, error.as_deref().unwrap_or_default());
            format!("{stream} {key} ({code}: {})", message.chars().take(200).collect::<String>())
        })
        .collect();
    let more = rows.len().saturating_sub(ALERT_NAMES);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    let count = rows.len();
    let items = if count == 1 { "item" } else { "items" };
    let message = format!(
        "{by} refused {count} {items} of a sync batch: {}{more}; kept locally and not sent \
         again (`ccm sync status` lists them)",
        named.join(", ")
    );
    raise_alert(tx, None, Severity::Warning, ccm_sync::REJECTED_ALERT, &message, None, now).await
}

/// A refusal's message without the code its stored reason starts with (`CODE: ...`, or
/// `HTTP 400 CODE: ...` for a refused request).
fn rejected_message(code: &str, error: &str) -> String {
    let rest = match error.strip_prefix("HTTP ") {
        Some(rest) => rest.split_once(' ').map_or(rest, |(_, after)| after),
        None => error,
    };
    rest.strip_prefix(code).and_then(|r| r.strip_prefix(": ")).unwrap_or(error).to_string()
}

impl Store {
    /// Per lane: backlog, last success, last error and pause reason.
    pub async fn sync_status(&self) -> Result<BTreeMap<Lane, LaneStatus>> {
        let rows: Vec<LaneRow> = sqlx::query_as(&format!(
            r#"
                SELECT l.lane, l.last_ok_at, l.last_error, l.last_error_at, l.paused_reason,
                       (SELECT count(*) FROM outbox o
                        WHERE o.state IN ('pending', 'sealed') AND o.lane = l.lane AND o.{}),
                       l.dropped_total
                FROM sync_lanes l
                "#,
            shipped()
        ))
        .fetch_all(&self.readers)
        .await?;
        let mut lanes = rows
            .into_iter()
            .map(
                |(name, last_ok_at, last_error, last_error_at, paused_reason, backlog, dropped)| {
                    Ok((
                        lane(&name)?,
                        LaneStatus {
                            backlog,
                            last_ok_at,
                            last_error,
                            last_error_at,
                            paused_reason,
                            dropped_total: dropped,
                            rejected_total: 0,
                            rejected: Vec::new(),
                        },
                    ))
                },
            )
            .collect::<Result<BTreeMap<Lane, LaneStatus>>>()?;
        for (name, status) in &mut lanes {
            let (total,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM outbox WHERE state = 'rejected' AND lane = ?")
                    .bind(name.as_str())
                    .fetch_one(&self.readers)
                    .await?;
            status.rejected_total = total;
            if total == 0 {
                continue;
            }
            let rows: Vec<RejectedRow> = sqlx::query_as(
                r#"
                SELECT seq, stream, entity_key, error_code, error, rejected_at FROM outbox
                WHERE state = 'rejected' AND lane = ? ORDER BY seq DESC LIMIT ?
                "#,
            )
            .bind(name.as_str())
            .bind(REJECTED_SHOWN as i64)
            .fetch_all(&self.readers)
            .await?;
            status.rejected = rows
                .into_iter()
                .map(|(seq, stream, key, code, error, rejected_at)| {
                    let error = error.unwrap_or_default();
                    let message = match &code {
                        Some(code) => rejected_message(code, &error),
                        None => error,
                    };
                    RejectedItem { seq, stream, key, code, message, rejected_at }
                })
                .collect();
        }
        Ok(lanes)
    }

    /// Writes a health snapshot in the normal lane, keeping at most `cap` health rows pending
    /// (S-13): the oldest pending ones beyond it are dropped and counted in the lane's
    /// `dropped_total`, which the snapshot carries. Other streams are never dropped. Returns
    /// how many rows this call dropped.
    pub async fn record_health(&self, mut snapshot: HealthRowV1, cap: u64) -> Result<i64> {
        let mut tx = self.write().await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE stream = 'health' AND state = 'pending'",
        )
        .fetch_one(&mut *tx)
        .await?;
        let cap = i64::try_from(cap).unwrap_or(i64::MAX).max(1);
        let drop = (pending + 1 - cap).max(0);
        let total: i64 = sqlx::query_scalar(
            "UPDATE sync_lanes SET dropped_total = dropped_total + ? WHERE lane = 'normal' \
             RETURNING dropped_total",
        )
        .bind(drop)
        .fetch_one(&mut *tx)
        .await?;
        snapshot.metrics.dropped_total = total;
        let key = format!("{}/{}", snapshot.window_start, snapshot.window_len_s);
        super::outbox(&mut tx, &key, &snapshot, false).await?;
        // The newest row (just written) is never among the oldest `drop` of `pending + 1`.
        sqlx::query(
            r#"
            DELETE FROM outbox WHERE seq IN (
                SELECT seq FROM outbox WHERE stream = 'health' AND state = 'pending'
                ORDER BY seq LIMIT ?)
            "#,
        )
        .bind(drop)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(drop)
    }

    /// Open alerts of `reason` (`stalled`, `orphan_window`), for health snapshots.
    pub async fn open_alerts_of(&self, reason: &str) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM alerts WHERE reason = ? AND resolved_at IS NULL",
        )
        .bind(reason)
        .fetch_one(&self.readers)
        .await?)
    }

    /// Pauses (with `reason`: the operator's pause, which only a resume lifts) or resumes
    /// (`None`) sending on both lanes. A resume resolves the open `sync_paused` alerts.
    pub async fn pause_sync(&self, reason: Option<&str>) -> Result<()> {
        self.pause_lanes(reason, false).await
    }

    /// `ccm sync pause`: as [`Store::pause_sync`], marked as the operator's, so heartbeats go
    /// on saying `sync_paused`.
    pub async fn pause_sync_by_operator(&self, reason: &str) -> Result<()> {
        self.pause_lanes(Some(reason), true).await
    }

    async fn pause_lanes(&self, reason: Option<&str>, by_operator: bool) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE sync_lanes SET paused_reason = ?, paused_config = NULL, paused_by_operator = ?",
        )
        .bind(reason)
        .bind(by_operator && reason.is_some())
        .execute(&mut *tx)
        .await?;
        if reason.is_none() {
            resolve_paused_alerts(&mut tx).await?;
        }
        tx.commit().await
    }

    /// A daemon without `sync:`: nothing will send the outbox
    /// (`20261208010000_outbox_without_sync.sql`). Marks it off, so every later row is written
    /// acknowledged and only the newest [`OUTBOX_KEPT_OFF`] are kept (the dashboard's change
    /// feed), and does the same to the rows already there. How many were still pending.
    pub async fn outbox_off(&self) -> Result<u64> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT OR IGNORE INTO outbox_off (singleton, since) VALUES (1, ?)")
            .bind(Timestamp::now())
            .execute(&mut *tx)
            .await?;
        let pending = sqlx::query("UPDATE outbox SET state = 'acked' WHERE state = 'pending'")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "DELETE FROM outbox WHERE state = 'acked' \
             AND seq <= (SELECT max(seq) FROM outbox) - ?",
        )
        .bind(OUTBOX_KEPT_OFF)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pending)
    }

    /// A daemon with `sync:`: the outbox is kept. After a time without sync, the current state
    /// of every task (one summary each, with its cost, not its history) is queued once, in
    /// the transaction that ends the time without. How many tasks were queued.
    pub async fn outbox_on(&self) -> Result<usize> {
        let mut tx = self.write().await?;
        let was_off =
            sqlx::query("DELETE FROM outbox_off").execute(&mut *tx).await?.rows_affected();
        if was_off == 0 {
            return Ok(0); // kept all along: nothing was missed (the write rolls back)
        }
        let tasks: Vec<ccm_schema::Task> = sqlx::query_as(&format!(
            "SELECT {} FROM tasks ORDER BY created_at, id",
            super::tasks::TASK_COLUMNS
        ))
        .fetch_all(&mut *tx)
        .await?;
        #[derive(sqlx::FromRow)]
        struct Cost {
            task_id: String,
            cost: Option<f64>,
            input: Option<i64>,
            output: Option<i64>,
        }
        let costs: Vec<Cost> = sqlx::query_as(
            "SELECT task_id, sum(cost_usd) AS cost, sum(input_tokens) AS input, \
             sum(output_tokens) AS output FROM agents WHERE task_id IS NOT NULL GROUP BY task_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let costs: std::collections::HashMap<String, Cost> =
            costs.into_iter().map(|c| (c.task_id.clone(), c)).collect();
        let rows: Vec<(String, TaskSummaryRowV1)> = tasks
            .iter()
            .map(|task| {
                let mut row = TaskSummaryRowV1::of(task);
                if let Some(cost) = costs.get(&task.id.hyphenated().to_string()) {
                    (row.cost_usd, row.input_tokens, row.output_tokens) =
                        (cost.cost, cost.input, cost.output);
                }
                (task.id.to_string(), row)
            })
            .collect();
        for chunk in rows.chunks(500) {
            super::outbox_rows(&mut tx, chunk, false).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// The daemon's sync starts with the endpoint and identity `config` (a fingerprint). A
    /// pause the driver made under another one (a wrong URL or key, an old token) is lifted,
    /// since what it was about has changed; the operator's pause is kept. Whether it lifted
    /// one.
    pub async fn sync_started(&self, config: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let lifted = sqlx::query(
            "UPDATE sync_lanes SET paused_reason = NULL, paused_config = NULL \
             WHERE paused_reason IS NOT NULL AND paused_config IS NOT NULL AND paused_config <> ?",
        )
        .bind(config)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if lifted {
            resolve_paused_alerts(&mut tx).await?;
        }
        sqlx::query("UPDATE sync_lanes SET config = ?").bind(config).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(lifted)
    }
}

impl ccm_sync::Outbox for Store {
    type Error = StoreError;

    async fn pending(&self, lane: Lane, after: i64, limit: u32) -> Result<Vec<OutboxRow>> {
        let rows: Vec<RowTuple> = sqlx::query_as(&format!(
            r#"
            SELECT seq, stream, entity_key, entity_version, payload FROM outbox
            WHERE state = 'pending' AND lane = ? AND seq > ? AND {}
            ORDER BY seq LIMIT ?
            "#,
            shipped()
        ))
        .bind(lane.as_str())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    async fn batch_rows(&self, batch: Uuid) -> Result<Vec<OutboxRow>> {
        let rows: Vec<RowTuple> = sqlx::query_as(
            r#"
            SELECT seq, stream, entity_key, entity_version, payload FROM outbox
            WHERE batch_id = ? AND state = 'sealed' ORDER BY seq
            "#,
        )
        .bind(batch.hyphenated())
        .fetch_all(&self.readers)
        .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    async fn declared(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT stream, declared_seq FROM sync_state")
            .fetch_all(&self.readers)
            .await?)
    }

    async fn seal(&self, batch: &NewBatch) -> Result<()> {
        let mut tx = self.write().await?;
        insert_batch(&mut tx, batch).await?;
        sqlx::query(
            r#"
            UPDATE outbox SET state = 'acked', batch_id = ?1
            WHERE seq IN (SELECT value FROM json_each(?2)) AND state = 'pending'
            "#,
        )
        .bind(batch.id.hyphenated())
        .bind(seqs(&batch.superseded))
        .execute(&mut *tx)
        .await?;
        if !batch.invalid.is_empty() {
            let now = Timestamp::now();
            reject_rows(&mut tx, &batch.invalid, now).await?;
            let seqs: Vec<i64> = batch.invalid.iter().map(|r| r.seq).collect();
            alert_rejected(&mut tx, &seqs, "this node", now).await?;
        }
        for (stream, seq) in &batch.declared {
            sqlx::query(
                r#"
                INSERT INTO sync_state (stream, declared_seq) VALUES (?, ?)
                ON CONFLICT (stream) DO UPDATE SET declared_seq = max(declared_seq, excluded.declared_seq)
                "#,
            )
            .bind(stream)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    async fn open_batch(&self, lane: Lane) -> Result<Option<OpenBatch>> {
        let found: Option<(String, String, Vec<u8>, i64, i64)> = sqlx::query_as(
            r#"
            SELECT batch_id, ord, body, items, attempts FROM outbox_batch
            WHERE lane = ? AND state = 'sealed' ORDER BY ord LIMIT 1
            "#,
        )
        .bind(lane.as_str())
        .fetch_optional(&self.readers)
        .await?;
        found
            .map(|(id, ord, body, items, attempts)| {
                let id = id.parse().map_err(|e| StoreError::Invalid {
                    field: "outbox_batch.batch_id",
                    message: format!("`{id}`: {e}"),
                })?;
                Ok(OpenBatch { id, lane, ord, body: body.into(), items, attempts })
            })
            .transpose()
    }

    async fn acknowledge(&self, batch: Uuid, rejected: &[Rejection]) -> Result<()> {
        let now = Timestamp::now();
        let id = batch.hyphenated();
        let mut tx = self.write().await?;
        if !rejected.is_empty() {
            // Only rows this batch carries (a rejection names one by its seq).
            let carried: Vec<i64> = sqlx::query_scalar(
                "SELECT seq FROM outbox WHERE batch_id = ? AND state = 'sealed' \
                 AND seq IN (SELECT value FROM json_each(?))",
            )
            .bind(id)
            .bind(seqs(&rejected.iter().map(|r| r.seq).collect::<Vec<_>>()))
            .fetch_all(&mut *tx)
            .await?;
            let rejected: Vec<Rejection> =
                rejected.iter().filter(|r| carried.contains(&r.seq)).cloned().collect();
            reject_rows(&mut tx, &rejected, now).await?;
            alert_rejected(&mut tx, &carried, "the central", now).await?;
        }
        sqlx::query("UPDATE outbox SET state = 'acked' WHERE batch_id = ? AND state = 'sealed'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            r#"
            INSERT INTO sync_state (stream, acked_seq, last_ok_at)
            SELECT stream, max(seq), ?1 FROM outbox WHERE batch_id = ?2 GROUP BY stream
            ON CONFLICT (stream) DO UPDATE
            SET acked_seq = max(acked_seq, excluded.acked_seq), last_ok_at = excluded.last_ok_at
            "#,
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            r#"
            UPDATE sync_lanes SET last_ok_at = ?1, last_error = NULL, last_error_at = NULL
            WHERE lane = (SELECT lane FROM outbox_batch WHERE batch_id = ?2)
            "#,
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE outbox_batch SET state = 'acked', acked_at = ? WHERE batch_id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    async fn reject_batch(&self, batch: Uuid, code: Option<&str>, reason: &str) -> Result<()> {
        let id = batch.hyphenated();
        let now = Timestamp::now();
        let mut tx = self.write().await?;
        let rejected: Vec<i64> = sqlx::query_scalar(
            r#"
            UPDATE outbox SET state = 'rejected', error = ?, error_code = ?, rejected_at = ?
            WHERE batch_id = ? AND state = 'sealed' RETURNING seq
            "#,
        )
        .bind(reason)
        .bind(code)
        .bind(now)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        alert_rejected(&mut tx, &rejected, "the central", now).await?;
        sqlx::query(
            "UPDATE outbox_batch SET state = 'rejected', last_error = ? WHERE batch_id = ?",
        )
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn split(&self, parent: Uuid, children: &[NewBatch]) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE outbox_batch SET state = 'split' WHERE batch_id = ?")
            .bind(parent.hyphenated())
            .execute(&mut *tx)
            .await?;
        for child in children {
            insert_batch(&mut tx, child).await?;
        }
        tx.commit().await
    }

    async fn record_failure(&self, batch: Uuid, lane: Lane, error: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE outbox_batch SET attempts = attempts + 1, last_error = ? WHERE batch_id = ?",
        )
        .bind(error)
        .bind(batch.hyphenated())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sync_lanes SET last_error = ?, last_error_at = ? WHERE lane = ?")
            .bind(error)
            .bind(Timestamp::now())
            .bind(lane.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    async fn set_paused(&self, lane: Lane, reason: Option<&str>) -> Result<()> {
        let mut tx = self.write().await?;
        // The driver's pause remembers the config it was made under (see `sync_started`).
        sqlx::query(
            "UPDATE sync_lanes SET paused_reason = ?1, paused_by_operator = 0, \
             paused_config = CASE WHEN ?1 IS NULL THEN NULL ELSE config END WHERE lane = ?2",
        )
        .bind(reason)
        .bind(lane.as_str())
        .execute(&mut *tx)
        .await?;
        if reason.is_none() {
            resolve_paused_alerts(&mut tx).await?;
        }
        tx.commit().await
    }

    async fn paused(&self, lane: Lane) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT paused_reason FROM sync_lanes WHERE lane = ?")
            .bind(lane.as_str())
            .fetch_optional(&self.readers)
            .await?
            .flatten())
    }

    async fn paused_by_operator(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sync_lanes WHERE paused_reason IS NOT NULL \
             AND paused_by_operator)",
        )
        .fetch_one(&self.readers)
        .await?)
    }

    async fn running(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM agents WHERE status IN ('starting', 'running')",
        )
        .fetch_one(&self.readers)
        .await?)
    }

    async fn leases(&self) -> Result<Vec<LeaseV1>> {
        self.held_leases().await
    }

    async fn heartbeat_answered(&self, answer: &HeartbeatAnswerV1) -> Result<()> {
        self.leases_answered(answer).await
    }

    async fn contexts(&self) -> Result<(i64, Vec<ContextV1>)> {
        let generation: i64 =
            sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM outbox WHERE stream = 'context'")
                .fetch_one(&self.readers)
                .await?;
        let contexts = Store::contexts(self) // the inherent one: the rows of `contexts`
            .await?
            .into_iter()
            .filter_map(|c| {
                Some(ContextV1 {
                    repo_url: c.repo_url?,
                    path: c.path,
                    default_branch: c.default_branch,
                    head_sha: None,
                    updated_at: c.updated_at,
                })
            })
            .collect();
        Ok((generation, contexts))
    }

    async fn contexts_registered(&self, generation: i64) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'acked' WHERE stream = 'context' AND state = 'pending' AND seq <= ?",
        )
        .bind(generation)
        .execute(&mut self.writer().await?.conn)
        .await?;
        Ok(())
    }

    async fn next_call(&self) -> Result<Option<ccm_sync::QueuedCall>> {
        self.next_route_call().await
    }

    async fn call_answered(
        &self,
        call: &ccm_sync::QueuedCall,
        outcome: &ccm_sync::CallOutcome,
    ) -> Result<()> {
        self.route_call_answered(call, outcome).await
    }

    async fn call_failed(&self, call: &ccm_sync::QueuedCall, error: &str) -> Result<()> {
        self.route_call_failed(call, error).await
    }

    async fn raise_alert(&self, reason: &str, message: &str) -> Result<()> {
        let mut tx = self.write().await?;
        raise_alert(&mut tx, None, Severity::Critical, reason, message, None, Timestamp::now())
            .await?;
        tx.commit().await
    }
}
