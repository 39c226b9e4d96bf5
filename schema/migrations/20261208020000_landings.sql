-- Landing finished work onto its target branch (issue 23): one row per task that entered a land
-- queue. `state` is `ccm_schema::LandState`; `landing`, `merged` and `moved` are the durable
-- steps of a landing in progress, so that a restart knows whether the target already moved.
CREATE TABLE landings (
    task_id     TEXT    PRIMARY KEY REFERENCES tasks (id),
    -- The registered checkout (its path) and the target branch: the queue.
    repo        TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN (
        'land_queued', 'landing', 'merged', 'moved', 'landed', 'land_failed')),
    -- Order in the queue: when it was (last) enqueued.
    queued_at   INTEGER NOT NULL,
    -- The task's attempt whose branch this landing carries.
    attempt     INTEGER NOT NULL,
    -- The target's head the landing started from, and the merged result (a commit).
    old_head    TEXT,
    new_head    TEXT,
    -- Why it waits (a dirty operator tree), or why it failed (conflict, verify output).
    reason      TEXT,
    -- The files of a conflict (JSON list), for the next attempt's prompt.
    conflicts   TEXT,
    -- The verify's output on the merged result.
    verify_output TEXT,
    -- How often it started again because the target moved meanwhile.
    restarts    INTEGER NOT NULL DEFAULT 0,
    started_at  INTEGER,
    landed_at   INTEGER,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- The local lease of a land queue: at most one landing in progress per repository and target.
CREATE UNIQUE INDEX landings_one_in_progress ON landings (repo, target)
    WHERE state IN ('landing', 'merged', 'moved');
CREATE INDEX landings_by_queue ON landings (repo, target, state, queued_at);
