-- The dashboard's board and overview read through indexes (issue 26): with 10,000 tasks the
-- board sorted the whole task table per page and the overview read the whole day's task log.
--
-- The board: per state, the most recently changed tasks, one index range per column.
CREATE INDEX tasks_board ON tasks (state, updated_at DESC, id);
-- The overview's queue chart: the task log of the last hours, aggregated per hour.
CREATE INDEX task_log_by_at ON task_log (at, from_state, to_state);
-- The overview's cost per day: the agents started in the last two weeks.
CREATE INDEX agents_by_started ON agents (started_at, cost_usd);
