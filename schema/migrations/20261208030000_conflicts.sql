-- Conflict prediction between the active tasks of a repository (issue 23; `node/src/conflicts/`).

-- The files each task touched, as the predictor last saw them (hook events' writes while it
-- runs, its branch's diff against the target): relative paths, a sorted JSON array. The task
-- summary carries at most 200 of them to the central, so other systems include the task in
-- their prediction.
CREATE TABLE task_touched (
    task_id    TEXT    PRIMARY KEY REFERENCES tasks (id),
    repo       TEXT    NOT NULL,
    files      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The newest prediction of each repository (a task's `repo`): a JSON array of predicted
-- conflicts, replaced whole when it changes.
CREATE TABLE conflict_predictions (
    repo         TEXT    PRIMARY KEY,
    conflicts    TEXT    NOT NULL,
    predicted_at INTEGER NOT NULL
) WITHOUT ROWID;
