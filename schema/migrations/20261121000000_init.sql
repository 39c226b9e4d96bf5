-- The node's local store. Timestamps are milliseconds since the Unix epoch (UTC).
-- Status columns are TEXT with a CHECK: one snake_case spelling shared by SQLite, JSON and Display.

-- This node's identity: exactly one row.
CREATE TABLE system (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    id         TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

-- Repository checkouts on this system.
CREATE TABLE contexts (
    id             TEXT    PRIMARY KEY,
    path           TEXT    NOT NULL UNIQUE,
    repo_url       TEXT,
    default_branch TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE tasks (
    id           TEXT    PRIMARY KEY,
    title        TEXT    NOT NULL CHECK (length(title) > 0),
    prompt       TEXT    NOT NULL,
    repo         TEXT,
    profile      TEXT    NOT NULL,
    workflow     TEXT,
    verify       TEXT,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    priority     INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL CHECK (state IN (
        'created', 'queued', 'executing', 'report_generation', 'supervisory', 'complete',
        'alert', 'error', 'retry', 'failed', 'blocked', 'waiting_quota', 'cancelled')),
    -- When a task in `retry` or `waiting_quota` may be queued again.
    wake_at      INTEGER,
    -- JSON of the task's git worktree while it exists (path, branch, base commit).
    worktree     TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    -- Bumped on every change; sync never lets an older version overwrite a newer one.
    version      INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX tasks_by_state ON tasks (state, priority DESC, created_at);

-- Dependency edges: `task_id` may be queued only when `depends_on` is complete.
CREATE TABLE task_deps (
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    depends_on TEXT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, depends_on),
    CHECK (task_id <> depends_on)
) WITHOUT ROWID;
CREATE INDEX task_deps_by_dependency ON task_deps (depends_on);

-- Append-only audit trail: one row per transition, creation included (from_state NULL).
CREATE TABLE task_log (
    id         INTEGER PRIMARY KEY,
    task_id    TEXT    NOT NULL REFERENCES tasks (id),
    at         INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    actor      TEXT    NOT NULL
);
CREATE INDEX task_log_by_task ON task_log (task_id, id);
CREATE TRIGGER task_log_no_update BEFORE UPDATE ON task_log
BEGIN
    SELECT RAISE(ABORT, 'task_log is append-only');
END;
CREATE TRIGGER task_log_no_delete BEFORE DELETE ON task_log
BEGIN
    SELECT RAISE(ABORT, 'task_log is append-only');
END;

CREATE TABLE alerts (
    id          TEXT    PRIMARY KEY,
    task_id     TEXT    REFERENCES tasks (id),
    severity    TEXT    NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    reason      TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    -- JSON attached to the alert, such as the supervisory report.
    details     TEXT,
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX alerts_open ON alerts (resolved_at, created_at);

-- Questions for the human, with the answer and who gave it.
CREATE TABLE decisions (
    id          TEXT    PRIMARY KEY,
    task_id     TEXT    REFERENCES tasks (id),
    kind        TEXT    NOT NULL CHECK (kind IN ('retry_or_cancel', 'approve_tool')),
    question    TEXT    NOT NULL,
    options     TEXT    NOT NULL, -- JSON array of strings
    answer      TEXT,
    answered_by TEXT,
    created_at  INTEGER NOT NULL,
    answered_at INTEGER
);
CREATE INDEX decisions_pending ON decisions (answered_at, created_at);

-- Changes that must reach the central store, written in the same transaction as the change.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('task', 'alert', 'context', 'decision', 'report')),
    entity_id  TEXT    NOT NULL,
    payload    TEXT    NOT NULL, -- JSON snapshot of the entity after the change
    urgent     INTEGER NOT NULL DEFAULT 0 CHECK (urgent IN (0, 1)),
    created_at INTEGER NOT NULL,
    status     TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'rejected')),
    error      TEXT
);
CREATE INDEX outbox_by_status ON outbox (status, id);

-- One agent process: a worker running an attempt, or a supervisory agent reviewing it.
CREATE TABLE agents (
    id             TEXT    PRIMARY KEY,
    task_id        TEXT    NOT NULL REFERENCES tasks (id),
    attempt        INTEGER NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('worker', 'supervisory')),
    profile        TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('starting', 'running', 'exited', 'lost', 'killed')),
    -- tmux window id (@N) once the window exists.
    window_id      TEXT,
    pane_pid       INTEGER,
    -- Directory with the agent's prompt, output log and exit file.
    dir            TEXT    NOT NULL,
    cwd            TEXT    NOT NULL,
    session_id     TEXT,
    exit_code      INTEGER,
    -- JSON summary of the output: outcome, last message, cost, tokens, quota.
    summary        TEXT,
    cost_usd       REAL    NOT NULL DEFAULT 0,
    input_tokens   INTEGER NOT NULL DEFAULT 0,
    output_tokens  INTEGER NOT NULL DEFAULT 0,
    tool_calls     INTEGER NOT NULL DEFAULT 0,
    started_at     INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    ended_at       INTEGER,
    stall_alerted  INTEGER NOT NULL DEFAULT 0 CHECK (stall_alerted IN (0, 1))
);
CREATE INDEX agents_by_status ON agents (status);
CREATE INDEX agents_by_task ON agents (task_id, attempt);

-- One run of a task by a worker, with what decided its fate.
-- A manual retry starts numbering again at 1, so a task may have two attempts numbered 1.
CREATE TABLE attempts (
    id            INTEGER PRIMARY KEY,
    task_id       TEXT    NOT NULL REFERENCES tasks (id),
    number        INTEGER NOT NULL,
    agent_id      TEXT    NOT NULL REFERENCES agents (id),
    prompt        TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    -- success, crash, verify_failed, timeout, quota, cancelled; NULL while running.
    outcome       TEXT,
    verify_output TEXT,
    last_message  TEXT
);
CREATE INDEX attempts_by_task ON attempts (task_id, id);

-- What report_generation gathered, and the supervisory verdict on it.
CREATE TABLE reports (
    task_id    TEXT    NOT NULL REFERENCES tasks (id),
    attempt    INTEGER NOT NULL,
    summary    TEXT    NOT NULL, -- JSON: diff stat, commits, cost, tokens, tool calls, duration, last message
    verdict    TEXT    CHECK (verdict IN ('ok', 'issue')),
    review     TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt)
);
