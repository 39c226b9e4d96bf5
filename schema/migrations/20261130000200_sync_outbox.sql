-- The outbox as the sync engine drains it (sync-routing.md S-1): each row names its stream,
-- its entity and that entity's version, and the lane it travels in; a sealed batch keeps the
-- exact body it is sent with, so every retry sends the same id and the same bytes.

CREATE TABLE outbox_v2 (
    -- Local sequence, monotonic per database: the central side's gap detection counts on it.
    seq            INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL CHECK (stream IN (
        'task_summary', 'alert', 'report', 'health', 'context', 'decision')),
    -- Natural key of the entity: task id, alert id, `task/attempt`, window, ...
    entity_key     TEXT    NOT NULL,
    -- Monotonic per entity: the task's version, else the row's own seq.
    entity_version INTEGER NOT NULL,
    lane           TEXT    NOT NULL CHECK (lane IN ('urgent', 'normal')),
    payload        TEXT    NOT NULL, -- JSON snapshot of the entity after the change
    created_at     INTEGER NOT NULL,
    -- The batch that carries (state `sealed`) or covered (a superseded version) the row.
    batch_id       TEXT,
    state          TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN (
        'pending', 'sealed', 'acked', 'rejected')),
    -- Why the central side rejected the row (kept for inspection).
    error          TEXT
);

INSERT INTO outbox_v2 (seq, stream, entity_key, entity_version, lane, payload, created_at, state, error)
SELECT id,
       CASE kind WHEN 'task' THEN 'task_summary' ELSE kind END,
       entity_id,
       CASE kind WHEN 'task' THEN coalesce(json_extract(payload, '$.version'), id) ELSE id END,
       CASE urgent WHEN 1 THEN 'urgent' ELSE 'normal' END,
       payload,
       created_at,
       CASE status WHEN 'delivered' THEN 'acked' ELSE status END,
       error
FROM outbox;

DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_by_lane ON outbox (state, lane, seq);
CREATE INDEX outbox_by_batch ON outbox (batch_id) WHERE batch_id IS NOT NULL;

-- A sealed batch: its exact request body, reused on every retry until a final outcome.
CREATE TABLE outbox_batch (
    batch_id   TEXT    PRIMARY KEY,
    lane       TEXT    NOT NULL CHECK (lane IN ('urgent', 'normal')),
    -- Send order within the lane: a root batch's first seq (zero-padded), a split child's is
    -- its parent's plus `/0` or `/1`, so children go before the batches sealed after the parent.
    ord        TEXT    NOT NULL,
    parent_id  TEXT,
    seq_lo     INTEGER NOT NULL,
    seq_hi     INTEGER NOT NULL,
    items      INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    -- sealed: to send; acked: applied or duplicate; split: replaced by its children;
    -- rejected: its one item was refused whole.
    state      TEXT    NOT NULL DEFAULT 'sealed' CHECK (state IN ('sealed', 'acked', 'split', 'rejected')),
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sealed_at  INTEGER NOT NULL,
    acked_at   INTEGER
);
CREATE INDEX outbox_batch_open ON outbox_batch (lane, state, ord);

-- Per stream: the highest seq a normal batch declared in its `ranges` (the next one starts
-- right after it), and the highest seq acknowledged.
CREATE TABLE sync_state (
    stream       TEXT    PRIMARY KEY,
    declared_seq INTEGER NOT NULL DEFAULT 0,
    acked_seq    INTEGER NOT NULL DEFAULT 0,
    last_ok_at   INTEGER
);

-- Per lane: what `ccm sync status` shows, and the pause that stops sending (not queueing).
CREATE TABLE sync_lanes (
    lane          TEXT    PRIMARY KEY CHECK (lane IN ('urgent', 'normal')),
    last_ok_at    INTEGER,
    last_error    TEXT,
    last_error_at INTEGER,
    paused_reason TEXT
);
INSERT INTO sync_lanes (lane) VALUES ('urgent'), ('normal');
