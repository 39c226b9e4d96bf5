-- A project supervisor's digest (issue 25: 10,000 tasks, 80,000 moves) and a project's daily
-- cost read the tasks of one repository, then their moves since a time: without these, the
-- digest walked every move since then through `task_log_by_at` and looked each one's task up
-- (its repository), 80,000 lookups for a supervisor that never ran. With them both sides are
-- read from indexes alone (`EXPLAIN QUERY PLAN`: `SEARCH t USING COVERING INDEX
-- tasks_by_repo`, `SEARCH l USING COVERING INDEX task_log_by_task_at`).
CREATE INDEX tasks_by_repo ON tasks (repo, id);
CREATE INDEX task_log_by_task_at ON task_log (task_id, at, to_state);
