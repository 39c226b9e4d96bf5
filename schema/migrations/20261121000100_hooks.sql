-- Structured events from the agent CLIs' hooks, and what they feed: claims, change requests,
-- files touched.

-- Every event as received, unknown ones included. `key` is the sender's idempotency key, so an
-- event retried through another path (API, direct write, spool) is stored once.
CREATE TABLE hook_events (
    id         INTEGER PRIMARY KEY,
    key        TEXT    NOT NULL UNIQUE,
    at         INTEGER NOT NULL,
    system     TEXT    NOT NULL CHECK (system IN ('claude', 'gemini', 'codex', 'unknown')),
    -- The agent and task it belongs to; NULL for sessions ccm did not start.
    agent_id   TEXT,
    task_id    TEXT,
    session_id TEXT,
    -- The event's own name as sent, and its normalized kind.
    event      TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    tool       TEXT,
    cwd        TEXT,
    via        TEXT    NOT NULL CHECK (via IN ('api', 'direct', 'spool')),
    -- What was wrong with the payload (malformed, truncated, ...), if anything.
    problem    TEXT,
    payload    TEXT    NOT NULL
);
CREATE INDEX hook_events_by_task ON hook_events (task_id, id);
CREATE INDEX hook_events_by_agent ON hook_events (agent_id, id);

-- Strict ownership: the first active task that writes a file of a repository owns it.
CREATE TABLE file_claims (
    repo       TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    task_id    TEXT    NOT NULL REFERENCES tasks (id),
    claimed_at INTEGER NOT NULL,
    PRIMARY KEY (repo, path)
) WITHOUT ROWID;
CREATE INDEX file_claims_by_task ON file_claims (task_id);

-- A write refused because another task (or a pre-assigned owner) owns the file.
CREATE TABLE change_requests (
    id             TEXT    PRIMARY KEY,
    repo           TEXT    NOT NULL,
    path           TEXT    NOT NULL,
    -- The owning task's id, or the workflow or task a glob pre-assigns the file to.
    owner          TEXT    NOT NULL,
    requester_task TEXT    NOT NULL REFERENCES tasks (id),
    tool           TEXT,
    created_at     INTEGER NOT NULL,
    resolved_at    INTEGER,
    resolution     TEXT
);
CREATE INDEX change_requests_open ON change_requests (resolved_at, created_at);

-- Files each task's agents wrote, from tool events.
CREATE TABLE task_files (
    task_id  TEXT    NOT NULL REFERENCES tasks (id),
    path     TEXT    NOT NULL,
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    writes   INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (task_id, path)
) WITHOUT ROWID;

ALTER TABLE agents ADD COLUMN hook_events INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN hook_tool_calls INTEGER NOT NULL DEFAULT 0;
-- Set by a Stop event (the agent finished its turn), cleared by the next prompt.
ALTER TABLE agents ADD COLUMN turn_done_at INTEGER;
