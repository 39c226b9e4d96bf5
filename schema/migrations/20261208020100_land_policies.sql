-- The repositories that have a landing policy (a `land:` section in their `.ccm/config.yaml`),
-- as the lander last read them: a task that depends on a task of such a repository waits until
-- that task has landed, not only completed (issue 23). Kept by the lander; `repo` is a task's
-- `repo` (the normalized URL, or the checkout's path without a remote).
CREATE TABLE land_policies (
    repo       TEXT    PRIMARY KEY,
    target     TEXT    NOT NULL,
    auto       INTEGER NOT NULL CHECK (auto IN (0, 1)),
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
