-- Bounded storage (issue 28): what the retention pass did, and which agents' files it removed.

-- One row per retention pass: when it ran, how long it took, and the rows (and files) it removed
-- per kind, as a JSON object. `ccm status` and `/metrics` show the newest; older passes go with
-- the pass after next (a pass keeps the 100 newest).
CREATE TABLE retention_passes (
    id          INTEGER PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    removed     TEXT    NOT NULL, -- JSON: {"hook_events": 1200, ...}
    -- Pages given back to the file system by `PRAGMA incremental_vacuum`.
    freed_pages INTEGER NOT NULL DEFAULT 0
);

-- When the retention pass removed the agent's output log, then its whole directory: an agent's
-- files are looked at once per step, not on every pass.
ALTER TABLE agents ADD COLUMN output_removed_at INTEGER;
ALTER TABLE agents ADD COLUMN dir_removed_at INTEGER;
