-- A sub-task an agent created that placement sent to the fleet (issue 24): it has no local
-- task row (it is a `routed_tasks` row here and runs on another system), so it is recorded
-- apart from `subtasks`, keyed by the routed task's id.
CREATE TABLE routed_subtasks (
    task_id    TEXT    PRIMARY KEY,
    parent_id  TEXT    NOT NULL REFERENCES tasks (id),
    depth      INTEGER NOT NULL CHECK (depth >= 1),
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX routed_subtasks_by_parent ON routed_subtasks (parent_id);
