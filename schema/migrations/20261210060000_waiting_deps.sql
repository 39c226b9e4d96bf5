-- The dependency edges of tasks still waiting in `created` (issue 28). The scheduler looks for
-- a waiting task whose dependency failed or was cancelled up to every 20 ms; it walked every
-- failed or cancelled task the node ever had, which grows with its history (1 ms a check with
-- 10,000 cancelled tasks: BENCHMARKS.md, soak). These rows are the edges it needs: kept by the
-- triggers below as edges are added and tasks enter or leave `created`.
CREATE TABLE waiting_deps (
    task_id    TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (task_id, depends_on)
) WITHOUT ROWID;

INSERT INTO waiting_deps (task_id, depends_on)
SELECT d.task_id, d.depends_on FROM task_deps d JOIN tasks t ON t.id = d.task_id
WHERE t.state = 'created';

CREATE TRIGGER task_deps_waiting AFTER INSERT ON task_deps
WHEN (SELECT state FROM tasks WHERE id = NEW.task_id) = 'created'
BEGIN
    INSERT OR IGNORE INTO waiting_deps (task_id, depends_on) VALUES (NEW.task_id, NEW.depends_on);
END;

CREATE TRIGGER tasks_waiting_deps_leave AFTER UPDATE OF state ON tasks
WHEN OLD.state = 'created' AND NEW.state <> 'created'
BEGIN
    DELETE FROM waiting_deps WHERE task_id = NEW.id;
END;

CREATE TRIGGER tasks_waiting_deps_enter AFTER UPDATE OF state ON tasks
WHEN NEW.state = 'created' AND OLD.state <> 'created'
BEGIN
    INSERT OR IGNORE INTO waiting_deps (task_id, depends_on)
    SELECT task_id, depends_on FROM task_deps WHERE task_id = NEW.id;
END;
