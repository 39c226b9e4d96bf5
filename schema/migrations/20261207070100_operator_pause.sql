-- Whether a lane's pause is the operator's (`ccm sync pause`), not the driver's or a refused
-- session's (issue 27, item 4): while the operator pauses sync the node keeps sending a
-- heartbeat that says so, so the other systems see `sync_paused` rather than a stale
-- heartbeat. A pause made before this column existed counts as the operator's when it has the
-- default reason of `ccm sync pause`.
ALTER TABLE sync_lanes ADD COLUMN paused_by_operator INTEGER NOT NULL DEFAULT 0;
UPDATE sync_lanes SET paused_by_operator = 1
WHERE paused_reason = 'paused by the operator' AND paused_config IS NULL;
