-- The origin controls its routed tasks through the central (issue 27, routing item 2): a
-- cancel, a retry or a new pin waits in `route_calls` like the other calls, in order after
-- the task's submission. SQLite cannot change a CHECK constraint in place: the table is
-- rebuilt with the same rows and sequence.

CREATE TABLE route_calls_new (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    function   TEXT    NOT NULL
               CHECK (function IN ('submit_task', 'report_progress', 'complete', 'release',
                                   'cancel_routed', 'retry_routed', 'pin_routed')),
    task_id    TEXT    NOT NULL,
    params     TEXT    NOT NULL,               -- the request body (JSON)
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
INSERT INTO route_calls_new (seq, function, task_id, params, attempts, last_error, created_at)
SELECT seq, function, task_id, params, attempts, last_error, created_at FROM route_calls;
DROP TABLE route_calls;
ALTER TABLE route_calls_new RENAME TO route_calls;
