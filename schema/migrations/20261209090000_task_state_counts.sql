-- Tasks per state, kept by triggers (issue 28): the board's column counts, `ccm status`,
-- `/metrics` and `ccm task list`'s line about older tasks read these few rows instead of
-- counting the task table, whose rows carry their prompts (a count read every row and its
-- overflow pages: over a month of 200 tasks a day the board's server time grew 8.5×).
CREATE TABLE task_state_counts (
    state TEXT    PRIMARY KEY,
    n     INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO task_state_counts (state, n) SELECT state, count(*) FROM tasks GROUP BY state;

CREATE TRIGGER task_state_counts_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO task_state_counts (state, n) VALUES (new.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER task_state_counts_update AFTER UPDATE OF state ON tasks
WHEN old.state IS NOT new.state
BEGIN
    UPDATE task_state_counts SET n = n - 1 WHERE state = old.state;
    INSERT INTO task_state_counts (state, n) VALUES (new.state, 1)
        ON CONFLICT (state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER task_state_counts_delete AFTER DELETE ON tasks
BEGIN
    UPDATE task_state_counts SET n = n - 1 WHERE state = old.state;
END;
