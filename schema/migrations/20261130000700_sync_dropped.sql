-- Per lane: rows dropped to keep the backlog bounded (S-13; only ever pending health
-- snapshots), shown by `ccm sync status` and `/metrics` and carried by the next snapshot.
ALTER TABLE sync_lanes ADD COLUMN dropped_total INTEGER NOT NULL DEFAULT 0;
