-- Stacked tasks (issue 23): `ccm task add --after A --stack` starts the task from A's branch
-- (`ccm/<short id of A>`) as soon as A is complete, and lands after A, rebased so that only its
-- own commits land. The task also depends on A in `task_deps`; this row says the dependency is
-- its stack base.
CREATE TABLE task_stacks (
    task_id     TEXT PRIMARY KEY REFERENCES tasks (id),
    base_task   TEXT NOT NULL REFERENCES tasks (id),
    -- The commit of the base's branch the task's branch started from, recorded when its
    -- worktree is first made from that branch; NULL while it has none, and when it started
    -- from the target because the base had landed by then.
    fork_commit TEXT
) WITHOUT ROWID;
CREATE INDEX task_stacks_by_base ON task_stacks (base_task);
