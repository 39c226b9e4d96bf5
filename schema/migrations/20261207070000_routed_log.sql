-- The origin's history of its routed tasks (issue 27, item 4): each change of a routed task's
-- state, executing system or waiting reason that the origin observes (the central's answers
-- to `api.routed_status` and to its cancel, retry and pin), with when it saw it. Shown as the
-- log of `ccm task show` for a routed task. Rows leave with their routed task.

CREATE TABLE routed_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT    NOT NULL,               -- routed_tasks.id
    at         INTEGER NOT NULL,               -- when this system observed the change
    from_state TEXT,                           -- NULL for the first entry
    to_state   TEXT    NOT NULL,               -- as `ccm task show` names it
    system     TEXT,                           -- where it runs or ran, per the central
    reason     TEXT                            -- the central's waiting reason or last error
);
CREATE INDEX routed_log_task ON routed_log (task_id, seq);
