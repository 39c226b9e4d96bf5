-- Coordination between agents (issue 24): sub-tasks, named locks, allocators of sequences.

-- A task created by another task's agent (`create_subtask`) or by splitting (`task add
-- --split`): its parent, and its depth (1 for a child of a top-level task).
CREATE TABLE subtasks (
    task_id    TEXT    PRIMARY KEY REFERENCES tasks (id),
    parent_id  TEXT    NOT NULL REFERENCES tasks (id),
    depth      INTEGER NOT NULL CHECK (depth >= 1),
    -- Who created it: `agent:<agent id>` or `cli`, `api`, `split`.
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    CHECK (task_id <> parent_id)
) WITHOUT ROWID;
CREATE INDEX subtasks_by_parent ON subtasks (parent_id);

-- Named locks of this node. A row stays after release, so that the fencing token only grows.
CREATE TABLE named_locks (
    name        TEXT    PRIMARY KEY,
    -- The holder while held: its task and agent (NULL agent: the CLI's `ccm lock`).
    task_id     TEXT    REFERENCES tasks (id),
    agent_id    TEXT,
    holder      TEXT,
    -- The token of the latest acquisition; every acquisition adds one.
    fence       INTEGER NOT NULL DEFAULT 0,
    acquired_at INTEGER,
    expires_at  INTEGER
) WITHOUT ROWID;

-- Who waits for a named lock (visible in `ccm claims`).
CREATE TABLE lock_waiters (
    name   TEXT    NOT NULL,
    waiter TEXT    NOT NULL,
    task_id TEXT,
    since  INTEGER NOT NULL,
    PRIMARY KEY (name, waiter)
) WITHOUT ROWID;

-- Values handed out of a named sequence of a repository, exactly once each while held.
CREATE TABLE allocations (
    repo        TEXT    NOT NULL,
    sequence    TEXT    NOT NULL,
    value       INTEGER NOT NULL,
    formatted   TEXT    NOT NULL,
    task_id     TEXT    REFERENCES tasks (id),
    state       TEXT    NOT NULL CHECK (state IN ('held', 'released')),
    allocated_at INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (repo, sequence, value)
) WITHOUT ROWID;
CREATE INDEX allocations_by_task ON allocations (task_id);
