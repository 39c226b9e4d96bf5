-- `ccm task discard` (issue 23): the operator dropped a finished task's work. The task keeps
-- its state and history; its branch and worktree are the janitor's to remove, and it leaves
-- the land queue and the conflict prediction.
CREATE TABLE discarded_tasks (
    task_id      TEXT    PRIMARY KEY REFERENCES tasks (id),
    reason       TEXT    NOT NULL,
    discarded_at INTEGER NOT NULL
) WITHOUT ROWID;
