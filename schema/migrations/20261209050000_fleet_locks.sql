-- Fleet-scoped named locks (issue 24): a lock of scope `fleet` is held by this node's holder
-- only while this system also holds the central lease `lock:<name>` (`api.acquire_lock`).
-- `central_held`: this system holds (or may still hold) that lease, so the daemon's fleet-lock
-- loop renews it while the holder lives and gives it back once the holder is gone;
-- `fleet_holder`: the system that held it when this node last asked and was refused;
-- `ttl_secs`: the lease asked for, renewed by that much.
ALTER TABLE named_locks ADD COLUMN scope TEXT NOT NULL DEFAULT 'node'
    CHECK (scope IN ('node', 'fleet'));
ALTER TABLE named_locks ADD COLUMN central_held INTEGER NOT NULL DEFAULT 0;
ALTER TABLE named_locks ADD COLUMN fleet_holder TEXT;
ALTER TABLE named_locks ADD COLUMN ttl_secs INTEGER;
