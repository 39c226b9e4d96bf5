-- An agent's cost is NULL when its CLI reports none (Gemini CLI, Codex): unknown, never $0.
-- Rows written before held 0 for those; their summary says the cost was missing (null).
ALTER TABLE agents ADD COLUMN cost REAL;
UPDATE agents SET cost = cost_usd
    WHERE summary IS NULL OR json_extract(summary, '$.cost_usd') IS NOT NULL;
ALTER TABLE agents DROP COLUMN cost_usd;
ALTER TABLE agents RENAME COLUMN cost TO cost_usd;
