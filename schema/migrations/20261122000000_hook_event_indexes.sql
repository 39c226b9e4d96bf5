-- Storing a hook event writes its table page and one page per index it is in, each synced
-- before the answer. Events of sessions ccm did not start name no task: they are now left out of
-- the task index. No query reads events by agent, so that index goes.
DROP INDEX hook_events_by_agent;
DROP INDEX hook_events_by_task;
CREATE INDEX hook_events_by_task ON hook_events (task_id, id) WHERE task_id IS NOT NULL;
