-- Change requests that go somewhere (issue 24). A write refused by ownership, or an agent's
-- `request_change`, is a change request with a state and a decision (kind `change_request`,
-- answered `approve` or `reject` like any decision):
--   pending  → the decision waits (operator, or the configured reviewer agent);
--   approved → forwarded to `forwarded_to`: the owner's next attempt, or a new task owning the
--              file; `delivered_attempt` is the attempt whose prompt carried it;
--   applied  → that attempt completed;
--   rejected → refused, `resolution` says why;
--   withdrawn → it ended without a decision (its owner or requester ended; the file is free).
-- `resolution` is the words the requester is told; `resolved_at` when it reached its end.

ALTER TABLE change_requests ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'
    CHECK (state IN ('pending', 'approved', 'applied', 'rejected', 'withdrawn'));
-- What to change and why (an agent's `request_change`; a refused write has none).
ALTER TABLE change_requests ADD COLUMN what TEXT;
ALTER TABLE change_requests ADD COLUMN why TEXT;
ALTER TABLE change_requests ADD COLUMN decision_id TEXT;
ALTER TABLE change_requests ADD COLUMN decided_by TEXT;
ALTER TABLE change_requests ADD COLUMN forwarded_to TEXT REFERENCES tasks (id);
ALTER TABLE change_requests ADD COLUMN delivered_attempt INTEGER;
ALTER TABLE change_requests ADD COLUMN updated_at INTEGER;

-- Before: a request was resolved when its owner ended, with no decision.
UPDATE change_requests SET state = 'withdrawn', updated_at = resolved_at
WHERE resolved_at IS NOT NULL;

CREATE INDEX change_requests_by_requester ON change_requests (requester_task, created_at);
CREATE INDEX change_requests_forwarded ON change_requests (forwarded_to)
    WHERE forwarded_to IS NOT NULL;
CREATE INDEX change_requests_by_owner ON change_requests (owner) WHERE resolved_at IS NULL;
-- What the runtime's pass forwards (approved, nowhere to go yet): read on every pass.
CREATE INDEX change_requests_to_forward ON change_requests (created_at)
    WHERE state = 'approved' AND forwarded_to IS NULL;

-- A new decision kind: SQLite cannot change a CHECK, so the table is copied (nothing refers to
-- it by foreign key; its index and its notification trigger are made again).
CREATE TABLE decisions_new (
    id          TEXT    PRIMARY KEY,
    task_id     TEXT    REFERENCES tasks (id),
    kind        TEXT    NOT NULL
        CHECK (kind IN ('retry_or_cancel', 'approve_tool', 'change_request')),
    question    TEXT    NOT NULL,
    options     TEXT    NOT NULL, -- JSON array of strings
    answer      TEXT,
    answered_by TEXT,
    created_at  INTEGER NOT NULL,
    answered_at INTEGER
);
INSERT INTO decisions_new (id, task_id, kind, question, options, answer, answered_by, created_at, answered_at)
SELECT id, task_id, kind, question, options, answer, answered_by, created_at, answered_at FROM decisions;
DROP TABLE decisions;
ALTER TABLE decisions_new RENAME TO decisions;
CREATE INDEX decisions_pending ON decisions (answered_at, created_at);
CREATE TRIGGER notify_on_decision AFTER INSERT ON decisions
BEGIN
    INSERT OR IGNORE INTO notifications (source, source_id, created_at)
    VALUES ('decision', NEW.id, NEW.created_at);
END;
