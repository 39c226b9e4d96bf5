//! Outbox reading and sealing: pending rows are read oldest first in pages (memory does not
//! grow with the backlog), coalesced to the latest version of each entity (S-3), and sealed
//! into a batch with a UUIDv7 id and its exact body (S-5).

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::wire::{BatchV1, IngestParams, Item, RangeV1, StreamsV1};
use crate::{Lane, NewBatch, Outbox, OutboxRow, Rejection};

/// How big a batch of a lane may grow (vector's batch triple, the age being the driver's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Items (entities after coalescing) per batch.
    pub max_items: usize,
    /// Bytes of JSON per batch (about; the envelope adds a little).
    pub max_bytes: usize,
    /// Rows read per query.
    pub page: u32,
}

/// Urgent items go in small batches of their own.
pub const URGENT: BatchPolicy = BatchPolicy { max_items: 100, max_bytes: 256 * 1024, page: 100 };
/// Normal batches, and catch-up after an outage: 2,000 items or 1 MiB (S-12).
pub const NORMAL: BatchPolicy = BatchPolicy { max_items: 2000, max_bytes: 1 << 20, page: 500 };

impl BatchPolicy {
    pub fn of(lane: Lane) -> BatchPolicy {
        match lane {
            Lane::Urgent => URGENT,
            Lane::Normal => NORMAL,
        }
    }
}

/// Rows gathered for one batch, coalesced.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The latest version of each entity: the row's (seq, version), its item (the payload is
    /// not kept once converted) and the item's encoded length.
    items: Vec<((i64, i64), Item, usize)>,
    by_entity: HashMap<(String, String), usize>,
    superseded: Vec<i64>,
    invalid: Vec<Rejection>,
    bytes: usize,
    /// Highest seq taken per stream (items, superseded and invalid rows alike).
    max_seq: BTreeMap<String, i64>,
    seq_lo: Option<i64>,
    seq_hi: i64,
}

impl Gathered {
    /// Takes `row` unless the batch is full; a newer version of an entity already gathered
    /// replaces it (the older row is covered by this batch), an older one is covered by it.
    pub fn offer(&mut self, row: OutboxRow, policy: BatchPolicy) -> bool {
        let item = match Item::from_row(&row) {
            Ok(item) => item,
            Err(reason) => {
                self.cover(&row);
                self.invalid.push(Rejection { seq: row.seq, code: Some("invalid".into()), reason });
                return true;
            }
        };
        let len = item.encoded_len();
        let key = (row.stream, row.entity_key);
        let existing = self.by_entity.get(&key).copied();
        if existing.is_none()
            && !self.items.is_empty()
            && (self.items.len() >= policy.max_items || self.bytes + len > policy.max_bytes)
        {
            return false;
        }
        self.cover_seq(&key.0, row.seq);
        let (seq, version) = (row.seq, row.entity_version);
        match existing {
            Some(i) => {
                let (old_seq, old_version) = self.items[i].0;
                if (version, seq) > (old_version, old_seq) {
                    self.superseded.push(old_seq);
                    self.bytes = self.bytes + len - self.items[i].2;
                    self.items[i] = ((seq, version), item, len);
                } else {
                    self.superseded.push(seq);
                }
            }
            None => {
                self.by_entity.insert(key, self.items.len());
                self.bytes += len;
                self.items.push(((seq, version), item, len));
            }
        }
        true
    }

    fn cover(&mut self, row: &OutboxRow) {
        self.cover_seq(&row.stream, row.seq);
    }

    fn cover_seq(&mut self, stream: &str, seq: i64) {
        match self.max_seq.get_mut(stream) {
            Some(max) => *max = (*max).max(seq),
            None => {
                self.max_seq.insert(stream.to_string(), seq);
            }
        }
        self.seq_lo = Some(self.seq_lo.map_or(seq, |lo| lo.min(seq)));
        self.seq_hi = self.seq_hi.max(seq);
    }

    pub fn is_empty(&self) -> bool {
        self.seq_lo.is_none()
    }

    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// Seals what was gathered. `ranges` are the per-stream ranges the body declares.
    fn into_batch(
        mut self,
        lane: Lane,
        ord: String,
        parent: Option<Uuid>,
        ranges: BTreeMap<String, RangeV1>,
    ) -> Result<NewBatch, serde_json::Error> {
        let id = Uuid::now_v7();
        self.items.sort_by_key(|((seq, _), _, _)| *seq);
        let mut streams = StreamsV1::default();
        let mut items = Vec::with_capacity(self.items.len());
        for ((seq, _), item, _) in self.items {
            items.push(seq);
            item.push_into(&mut streams);
        }
        let batch = BatchV1 { batch_id: id, lane, streams: &streams, ranges: &ranges };
        // Sized for the items and the envelope, so the body is never copied while it grows.
        let mut body = Vec::with_capacity(self.bytes + 1024);
        serde_json::to_writer(&mut body, &IngestParams { p_batch: batch })?;
        Ok(NewBatch {
            id,
            lane,
            ord,
            parent,
            items,
            superseded: self.superseded,
            invalid: self.invalid,
            seq_lo: self.seq_lo.unwrap_or(0),
            seq_hi: self.seq_hi,
            declared: ranges.iter().map(|(s, r)| (s.clone(), r.seq_hi)).collect(),
            body,
        })
    }
}

/// The send order of a root batch: its first seq, zero-padded so text order is number order.
pub fn root_ord(seq_lo: i64) -> String {
    format!("{seq_lo:020}")
}

/// Ranges a normal batch declares: per stream, from just after what earlier batches declared
/// to the highest seq it took. Seqs inside that range that the batch does not carry were
/// coalesced away, travel in the urgent lane, or belong to another stream: not a gap. Urgent
/// batches declare none, so batches that declare are sealed and sent strictly in order.
fn ranges_after(
    max_seq: &BTreeMap<String, i64>,
    declared: &BTreeMap<String, i64>,
) -> BTreeMap<String, RangeV1> {
    max_seq
        .iter()
        .filter_map(|(stream, &hi)| {
            let lo = declared.get(stream).copied().unwrap_or(0) + 1;
            (hi >= lo).then(|| (stream.clone(), RangeV1 { seq_lo: lo, seq_hi: hi }))
        })
        .collect()
}

/// Reads the lane's pending rows in pages and seals the next batch, stored through `outbox`.
/// `Ok(None)` when nothing is pending; the flag says the batch was cut by the policy (more is
/// waiting: catch-up).
pub async fn seal_next<O: Outbox>(
    outbox: &O,
    lane: Lane,
    policy: BatchPolicy,
) -> Result<Option<(NewBatch, bool)>, SealError<O::Error>> {
    let mut gathered = Gathered::default();
    let mut after = 0;
    let mut full = false;
    'pages: loop {
        let rows = outbox.pending(lane, after, policy.page).await.map_err(SealError::Outbox)?;
        let last_page = rows.len() < policy.page as usize;
        for row in rows {
            after = row.seq;
            if !gathered.offer(row, policy) {
                full = true;
                break 'pages;
            }
        }
        if last_page {
            break;
        }
    }
    if gathered.is_empty() {
        return Ok(None);
    }
    let ranges = match lane {
        Lane::Urgent => BTreeMap::new(),
        Lane::Normal => {
            let declared = outbox.declared().await.map_err(SealError::Outbox)?;
            ranges_after(&gathered.max_seq, &declared.into_iter().collect())
        }
    };
    let ord = root_ord(gathered.seq_lo.unwrap_or(0));
    let batch = gathered.into_batch(lane, ord, None, ranges)?;
    outbox.seal(&batch).await.map_err(SealError::Outbox)?;
    Ok(Some((batch, full)))
}

/// Splits a sealed batch in two halves (children `ord/0` and `ord/1`, new ids, new bodies),
/// keeping the parent's ranges: the first child declares from the parent's start, the second
/// up to the parent's end. `None` when the batch has a single item.
pub fn halves(
    parent: &crate::OpenBatch,
    rows: Vec<OutboxRow>,
) -> Result<Option<[NewBatch; 2]>, serde_json::Error> {
    if rows.len() < 2 {
        return Ok(None);
    }
    let parent_ranges = declared_ranges(&parent.body);
    let mut rows = rows;
    let second = rows.split_off(rows.len() / 2);
    let mut children = Vec::with_capacity(2);
    let mut before: BTreeMap<String, i64> =
        parent_ranges.iter().map(|(s, r)| (s.clone(), r.seq_lo - 1)).collect();
    for (k, half) in [rows, second].into_iter().enumerate() {
        let mut gathered = Gathered::default();
        for row in half {
            // A half of a batch that fit always fits again.
            gathered
                .offer(row, BatchPolicy { max_items: usize::MAX, max_bytes: usize::MAX, page: 0 });
        }
        let mut max_seq = gathered.max_seq.clone();
        if k == 1 {
            for (stream, range) in &parent_ranges {
                max_seq.insert(stream.clone(), range.seq_hi);
            }
        }
        let mut ranges = ranges_after(&max_seq, &before);
        ranges.retain(|s, _| parent_ranges.contains_key(s));
        for (stream, range) in &ranges {
            before.insert(stream.clone(), range.seq_hi);
        }
        let ord = format!("{}/{k}", parent.ord);
        children.push(gathered.into_batch(parent.lane, ord, Some(parent.id), ranges)?);
    }
    let second = children.pop();
    let first = children.pop();
    Ok(first.zip(second).map(|(a, b)| [a, b]))
}

/// The ranges a stored body declares.
fn declared_ranges(body: &[u8]) -> BTreeMap<String, RangeV1> {
    #[derive(serde::Deserialize)]
    struct Range {
        seq_lo: i64,
        seq_hi: i64,
    }
    #[derive(serde::Deserialize)]
    struct Batch {
        #[serde(default)]
        ranges: BTreeMap<String, Range>,
    }
    #[derive(serde::Deserialize)]
    struct Body {
        p_batch: Batch,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| {
            b.p_batch
                .ranges
                .into_iter()
                .map(|(s, r)| (s, RangeV1 { seq_lo: r.seq_lo, seq_hi: r.seq_hi }))
                .collect()
        })
        .unwrap_or_default()
}

/// Sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError<E: std::error::Error + 'static> {
    /// The outbox could not be read or written.
    #[error("outbox: {0}")]
    Outbox(#[source] E),
    /// The body could not be encoded.
    #[error("cannot encode the batch: {0}")]
    Encode(#[from] serde_json::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TASK: &str = "0193a000-0000-7000-8000-000000000001";

    fn task_row(seq: i64, task: &str, version: i64, state: &str) -> OutboxRow {
        let payload = json!({
            "id": task, "title": "t", "prompt": "p", "repo": null, "profile": "claude",
            "workflow": null, "verify": null, "max_attempts": 3, "attempts": 0, "priority": 0,
            "state": state, "wake_at": null, "created_at": "2026-11-30T10:00:00.000Z",
            "updated_at": "2026-11-30T10:00:00.000Z", "version": version, "depends_on": []
        });
        OutboxRow {
            seq,
            stream: "task_summary".into(),
            entity_key: task.into(),
            entity_version: version,
            payload: payload.to_string(),
        }
    }

    fn alert_row(seq: i64, id: &str) -> OutboxRow {
        let payload = json!({
            "id": id, "task_id": TASK, "severity": "critical", "reason": "stalled",
            "message": "m", "details": null, "created_at": "2026-11-30T10:00:00.000Z",
            "resolved_at": null
        });
        OutboxRow {
            seq,
            stream: "alert".into(),
            entity_key: id.into(),
            entity_version: seq,
            payload: payload.to_string(),
        }
    }

    fn body(batch: &NewBatch) -> serde_json::Value {
        let mut body: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
        body["p_batch"].take()
    }

    #[test]
    fn coalescing_keeps_the_latest_version_of_each_task_and_every_alert() {
        let mut g = Gathered::default();
        let other = "0193a000-0000-7000-8000-000000000002";
        for row in [
            task_row(1, TASK, 1, "created"),
            task_row(2, TASK, 2, "queued"),
            alert_row(3, "0193a000-0000-7000-8000-0000000000a1"),
            task_row(4, other, 1, "created"),
            task_row(5, TASK, 3, "executing"),
            alert_row(6, "0193a000-0000-7000-8000-0000000000a2"),
        ] {
            assert!(g.offer(row, NORMAL));
        }
        let ranges = ranges_after(&g.max_seq, &BTreeMap::from([("alert".to_string(), 2)]));
        let batch = g.into_batch(Lane::Normal, root_ord(1), None, ranges).unwrap();
        assert_eq!(batch.items, vec![3, 4, 5, 6]);
        assert_eq!(batch.superseded, vec![1, 2]);
        let body = body(&batch);
        assert_eq!(body["batch_id"], batch.id.to_string());
        assert_eq!(batch.id.get_version_num(), 7);
        let tasks = body["streams"]["task_summary"].as_array().unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0]["task_id"], other);
        assert_eq!(tasks[1]["version"], 3);
        assert_eq!(tasks[1]["state"], "executing");
        assert_eq!(tasks[1]["seq"], 5);
        assert_eq!(body["streams"]["alert"].as_array().unwrap().len(), 2);
        assert_eq!(body["ranges"]["task_summary"], json!({"seq_lo": 1, "seq_hi": 5}));
        assert_eq!(body["ranges"]["alert"], json!({"seq_lo": 3, "seq_hi": 6}));
        assert!(body["streams"].get("report").is_none());
    }

    #[test]
    fn an_older_version_arriving_after_a_newer_one_is_covered_not_sent() {
        let mut g = Gathered::default();
        g.offer(task_row(1, TASK, 5, "complete"), NORMAL);
        g.offer(task_row(2, TASK, 4, "supervisory"), NORMAL);
        let batch = g.into_batch(Lane::Urgent, root_ord(1), None, BTreeMap::new()).unwrap();
        assert_eq!(batch.items, vec![1]);
        assert_eq!(batch.superseded, vec![2]);
        assert_eq!(body(&batch)["streams"]["task_summary"][0]["version"], 5);
        assert_eq!(body(&batch)["ranges"], json!({}));
    }

    #[test]
    fn a_batch_stops_at_its_item_and_byte_limits() {
        let policy = BatchPolicy { max_items: 2, max_bytes: usize::MAX, page: 10 };
        let mut g = Gathered::default();
        assert!(g.offer(alert_row(1, "0193a000-0000-7000-8000-0000000000a1"), policy));
        assert!(g.offer(alert_row(2, "0193a000-0000-7000-8000-0000000000a2"), policy));
        assert!(!g.offer(alert_row(3, "0193a000-0000-7000-8000-0000000000a3"), policy));
        // a newer version of an entity already in the batch still fits
        assert!(g.offer(task_row(4, TASK, 1, "created"), BatchPolicy { max_items: 3, ..policy }));
        let tiny = BatchPolicy { max_items: 100, max_bytes: 10, page: 10 };
        let mut g = Gathered::default();
        assert!(g.offer(alert_row(1, "0193a000-0000-7000-8000-0000000000a1"), tiny));
        assert!(!g.offer(alert_row(2, "0193a000-0000-7000-8000-0000000000a2"), tiny));
    }

    #[test]
    fn a_row_whose_payload_does_not_parse_is_rejected_with_its_reason() {
        let mut g = Gathered::default();
        let mut bad = task_row(1, TASK, 1, "created");
        bad.payload = "{\"id\": 3}".into();
        assert!(g.offer(bad, NORMAL));
        assert!(g.offer(task_row(2, TASK, 2, "queued"), NORMAL));
        let batch = g.into_batch(Lane::Normal, root_ord(1), None, BTreeMap::new()).unwrap();
        assert_eq!(batch.items, vec![2]);
        assert_eq!(batch.invalid.len(), 1);
        assert!(batch.invalid[0].reason.contains("task_summary payload is not valid"));
    }

    #[test]
    fn halves_keep_the_parents_ranges_contiguous() {
        let rows: Vec<_> = (1..=5)
            .map(|i| alert_row(i * 2, &format!("0193a000-0000-7000-8000-0000000000a{i}")))
            .collect();
        let mut g = Gathered::default();
        for row in rows.clone() {
            g.offer(row, NORMAL);
        }
        let ranges = ranges_after(&g.max_seq, &BTreeMap::new());
        let parent = g.into_batch(Lane::Normal, root_ord(2), None, ranges).unwrap();
        let open = crate::OpenBatch {
            id: parent.id,
            lane: Lane::Normal,
            ord: parent.ord.clone(),
            body: parent.body.clone().into(),
            items: 5,
            attempts: 1,
        };
        let [a, b] = halves(&open, rows).unwrap().unwrap();
        assert_eq!(a.items, vec![2, 4]);
        assert_eq!(b.items, vec![6, 8, 10]);
        assert_eq!(a.ord, format!("{}/0", parent.ord));
        assert!(a.ord < b.ord && b.ord < root_ord(11));
        assert_eq!(a.parent, Some(parent.id));
        assert_eq!(body(&a)["ranges"]["alert"], json!({"seq_lo": 1, "seq_hi": 4}));
        assert_eq!(body(&b)["ranges"]["alert"], json!({"seq_lo": 5, "seq_hi": 10}));
        let one = crate::OpenBatch { items: 1, ..open };
        assert!(halves(&one, vec![alert_row(2, "0193a000-0000-7000-8000-0000000000a1")])
            .unwrap()
            .is_none());
    }
}
