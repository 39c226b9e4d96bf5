-- Context windows (issue 25): how full each agent's context is, and what ccm did about it.
-- `context_tokens` is the context in use after the agent's latest model call (its input,
-- cache reads and cache writes, as its CLI reported them); `context_window` the window it was
-- started with (the profile's `context.window`, else its CLI's default); `context_action` what
-- ccm did once the share passed the profile's `context.threshold` (`warn`: an alert;
-- `handoff`: the agent was asked for a summary, and its attempt ends with it), at most once
-- per agent; `compactions` how many times its CLI compacted the context (`PreCompact`).
ALTER TABLE agents ADD COLUMN context_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN context_window INTEGER;
ALTER TABLE agents ADD COLUMN context_action TEXT CHECK (context_action IN ('warn', 'handoff'));
ALTER TABLE agents ADD COLUMN compactions INTEGER NOT NULL DEFAULT 0;

-- The summary an attempt that handed off wrote for the next one (outcome `handoff`).
ALTER TABLE attempts ADD COLUMN handoff TEXT;
