-- A routed task that depends on tasks of this system (issue 24: a sub-task placed on the fleet
-- while its sibling still runs here). The central knows no dependencies, so the submission
-- waits here until every task it depends on is complete, then goes to `route_calls`.
CREATE TABLE routed_waits (
    task_id    TEXT NOT NULL REFERENCES routed_tasks (id),
    depends_on TEXT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX routed_waits_by_dependency ON routed_waits (depends_on);

-- The `submit_task` call of such a task while it waits (`held`), or why it will never be sent
-- (`blocked`: a dependency failed or was cancelled; `cancelled`: its parent was).
CREATE TABLE held_submissions (
    task_id TEXT PRIMARY KEY REFERENCES routed_tasks (id),
    params  TEXT NOT NULL,
    state   TEXT NOT NULL DEFAULT 'held' CHECK (state IN ('held', 'blocked', 'cancelled')),
    reason  TEXT
) WITHOUT ROWID;
