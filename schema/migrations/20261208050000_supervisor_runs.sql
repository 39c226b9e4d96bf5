-- Scheduled supervisors (issue 25): one row per run of a supervisor configured under
-- `supervisors:`. A run is a headless agent in its own tmux window (not a task: it holds no
-- worker slot); its prompt carried `digest`, built from the store over its scope since the
-- supervisor's previous run; `report` is its final answer, `alerts` how many `ALERT:` lines
-- of it were raised as alerts.
CREATE TABLE supervisor_runs (
    id          TEXT    PRIMARY KEY,
    supervisor  TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    -- Why it ran: "2 completions", "interval 2h".
    reason      TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    profile     TEXT    NOT NULL,
    -- Directory with its prompt, launcher, output log and exit file.
    dir         TEXT    NOT NULL,
    window_id   TEXT,
    digest      TEXT    NOT NULL,
    report      TEXT,
    alerts      INTEGER NOT NULL DEFAULT 0,
    cost_usd    REAL    NOT NULL DEFAULT 0,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER
);
CREATE INDEX supervisor_runs_by_name ON supervisor_runs (supervisor, started_at);
CREATE INDEX supervisor_runs_running ON supervisor_runs (status) WHERE status = 'running';
