-- Daily cost caps (issue 25): an account (`accounts.NAME.daily_cost_cap_usd`) or a project
-- (`daily_cost_cap_usd` in its `.ccm/config.yaml`) whose cost today (the local day, as the
-- daily summary's) reached its cap starts no new agent; its tasks wait in `waiting_quota` until
-- the next day or until the operator raises the cap for the day (a `cost_cap` decision).

-- One row per scope, name and local day once its cap was reached that day.
CREATE TABLE cost_caps (
    -- `account` (an account's name) or `project` (the tasks' `repo`).
    scope        TEXT    NOT NULL CHECK (scope IN ('account', 'project')),
    name         TEXT    NOT NULL,
    -- The local date, `YYYY-MM-DD`.
    day          TEXT    NOT NULL,
    -- The cap in force for the day (the configured one, or the last raise approved).
    cap_usd      REAL    NOT NULL,
    -- The configured cap when the row was written (each raise adds it once more).
    configured_usd REAL  NOT NULL,
    -- What the day had cost when the cap was last reached.
    spent_usd    REAL    NOT NULL,
    -- `reached`: its decision waits; `raised`: approved, `cap_usd` is the raised cap; `kept`:
    -- rejected, its tasks wait for the next day.
    state        TEXT    NOT NULL CHECK (state IN ('reached', 'raised', 'kept')),
    -- The latest decision about it, and the cap approving it gives.
    decision_id  TEXT    NOT NULL,
    raise_to_usd REAL    NOT NULL,
    -- Raises approved that day, who answered the latest decision and when.
    raises       INTEGER NOT NULL DEFAULT 0,
    answered_by  TEXT,
    answered_at  INTEGER,
    reached_at   INTEGER NOT NULL,
    -- When the day ends (milliseconds since the epoch): its waiting tasks wake then.
    day_ends_at  INTEGER NOT NULL,
    PRIMARY KEY (scope, name, day)
);
CREATE INDEX cost_caps_by_decision ON cost_caps (decision_id);

-- The tasks waiting in `waiting_quota` for a day's cap, so approving its decision wakes them.
CREATE TABLE cost_waits (
    task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    scope   TEXT NOT NULL,
    name    TEXT NOT NULL,
    day     TEXT NOT NULL
);
CREATE INDEX cost_waits_by_cap ON cost_waits (scope, name, day);

-- The project's cost today is read per start: the agents started since the day began, by task.
-- (`agents_by_started` covers the account's: `started_at`, then the rows' account.)

-- A new decision kind, `cost_cap`: SQLite cannot change a CHECK, so the table is copied
-- (nothing refers to it by foreign key; its index and its notification trigger are made again).
CREATE TABLE decisions_new (
    id          TEXT    PRIMARY KEY,
    task_id     TEXT    REFERENCES tasks (id),
    kind        TEXT    NOT NULL
        CHECK (kind IN ('retry_or_cancel', 'approve_tool', 'change_request', 'cost_cap')),
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
