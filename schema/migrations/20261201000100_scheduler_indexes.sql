-- The scheduler's and the runtime's questions about tasks, answered from indexes whatever the
-- number of tasks waiting or finished:
-- - "which waiting tasks are of an external profile?" (asked at every scheduler pass) read
--   every `created` task's row to check its profile; the scheduler now looks each external
--   profile up in `(state, profile)`, which also lets the runtime's pass skip the queued tasks
--   of external profiles (thousands of them may wait) without reading their rows.
-- - the admission query orders by `priority DESC, created_at, id`; with `id` in the index the
--   order is the index's, and the query stops after the tasks it admits instead of sorting
--   every waiting task of the same priority.
-- - the runtime's pass looks for finished tasks whose worktree still exists; without an index
--   it read the row of every finished task, at every pass.
CREATE INDEX tasks_by_state_profile ON tasks (state, profile);
DROP INDEX tasks_by_state;
CREATE INDEX tasks_by_state ON tasks (state, priority DESC, created_at, id);
CREATE INDEX tasks_with_worktree ON tasks (state) WHERE worktree IS NOT NULL;
