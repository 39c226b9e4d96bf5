-- Each agent's own credential for its hook events: the SHA-256 (hex) of the random token the
-- agent gets in its environment (`CCM_AGENT_TOKEN`). Events are attached to an agent, and so
-- to its task, by this credential only; it is set to NULL (revoked) when the agent ends.
ALTER TABLE agents ADD COLUMN token_hash TEXT;
