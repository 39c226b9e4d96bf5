-- Fewer index entries at random places per task write (issue 28: task creation on day 30).
-- Task ids are random, so every index keyed by one puts each new entry on some leaf of the
-- whole index: once a node has tens of thousands of tasks, those leaves are no longer in
-- memory and each write reads and later checkpoints a page of its own.
--
-- `task_log_by_task (task_id, id)` repeated `task_log_by_task_at (task_id, at, to_state)`: a
-- task's moves are found through the latter and its few rows sorted by id.
DROP INDEX task_log_by_task;
-- A task without a repository (most manual tasks) had an entry among all the others without
-- one; the queries of this index all name a repository (`t.repo = ?`), which SQLite knows
-- implies `repo IS NOT NULL`.
DROP INDEX tasks_by_repo;
CREATE INDEX tasks_by_repo ON tasks (repo, id) WHERE repo IS NOT NULL;
