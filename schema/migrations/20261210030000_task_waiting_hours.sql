-- The overview's queue chart, kept by a trigger (issue 26): the net number of tasks that became
-- waiting (`created` or `queued`) per clock hour. The chart read every task-log row of the last
-- twelve hours (20,000 rows after 10,000 tasks were created), now it reads at most twelve rows.
-- Hours older than 14 days are dropped as new ones start.
CREATE TABLE task_waiting_hours (
    hour INTEGER PRIMARY KEY,
    net  INTEGER NOT NULL
);

INSERT INTO task_waiting_hours (hour, net)
SELECT at / 3600000, sum((to_state IN ('created', 'queued'))
                         - coalesce(from_state IN ('created', 'queued'), 0))
FROM task_log
WHERE at > (SELECT coalesce(max(at), 0) FROM task_log) - 14 * 86400000
GROUP BY at / 3600000;

CREATE TRIGGER task_waiting_hours_log AFTER INSERT ON task_log
WHEN (new.to_state IN ('created', 'queued'))
     IS NOT coalesce(new.from_state IN ('created', 'queued'), 0)
BEGIN
    INSERT INTO task_waiting_hours (hour, net)
    VALUES (new.at / 3600000, (new.to_state IN ('created', 'queued'))
                              - coalesce(new.from_state IN ('created', 'queued'), 0))
        ON CONFLICT (hour) DO UPDATE SET net = net + excluded.net;
    DELETE FROM task_waiting_hours WHERE hour < new.at / 3600000 - 14 * 24;
END;
