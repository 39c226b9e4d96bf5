-- What `ccm sync status` shows of a refused item, and how a pause knows it is out of date.
-- The code the central side (or the node, `invalid`) refused a row with; `error` keeps the
-- whole reason, `rejected_at` when it was refused.
ALTER TABLE outbox ADD COLUMN error_code TEXT;
ALTER TABLE outbox ADD COLUMN rejected_at INTEGER;
-- A fingerprint of the sync endpoint and identity the running daemon uses (`sync::start`),
-- and the one a pause of the driver was made under: NULL for the operator's `ccm sync pause`,
-- which only `ccm sync resume` lifts.
ALTER TABLE sync_lanes ADD COLUMN config TEXT;
ALTER TABLE sync_lanes ADD COLUMN paused_config TEXT;
