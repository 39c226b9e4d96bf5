-- Review with line comments (issue 23): the operator's comments on lines of a finished task's
-- diff against its target. A comment waits (`requested_at` NULL) until "request changes" sends
-- the task's pending comments to its next attempt (`for_attempt`, the attempt number that
-- answers them); the comments of a task's latest request are in the prompt of every attempt
-- until the task completes again.
CREATE TABLE review_comments (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT    NOT NULL REFERENCES tasks (id),
    -- A path of the diff, and a line of the branch's version of that file the diff shows
    -- (an added or a context line).
    file        TEXT    NOT NULL CHECK (length(file) > 0),
    line        INTEGER NOT NULL CHECK (line >= 1),
    text        TEXT    NOT NULL CHECK (length(text) > 0),
    created_at  INTEGER NOT NULL,
    -- Who wrote it: `cli`, `api` or `dashboard`.
    created_by  TEXT    NOT NULL,
    requested_at INTEGER,
    for_attempt INTEGER
);
CREATE INDEX review_comments_by_task ON review_comments (task_id, requested_at, id);
