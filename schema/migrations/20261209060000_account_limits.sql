-- Usage limits across agents and machines (issue 25). Agents of one account (a profile's
-- `account`, by default the profile's name) share its usage limit: when one of them hits it,
-- no agent of the account starts until the reset.

-- The account an agent ran under (its profile's `account` when it started); NULL for agents
-- started before this migration (their profile's name is their account).
ALTER TABLE agents ADD COLUMN account TEXT;

-- One row per account that hit a usage limit: limited while `reset_at` is in the future.
CREATE TABLE account_limits (
    account     TEXT    PRIMARY KEY,
    -- When the limit resets (milliseconds since the epoch).
    reset_at    INTEGER NOT NULL,
    -- `agent`: an agent of this system hit it (`task_id`); `fleet`: another system sharing the
    -- account reported it to the central (`system`).
    source      TEXT    NOT NULL CHECK (source IN ('agent', 'fleet')),
    task_id     TEXT,
    system      TEXT,
    message     TEXT    NOT NULL,
    reported_at INTEGER NOT NULL,
    -- When the central last acknowledged this row's `reset_at` (an `agent` row); NULL while the
    -- fleet has not heard of it.
    shipped_at  INTEGER
);

-- The tasks waiting in `waiting_quota` for an account's limit, so a change of the reset time
-- (the agent's output names it after its hook parked the task, or another system reports a
-- later one) moves each waiting task's `wake_at` with it.
CREATE TABLE account_waits (
    task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    account TEXT NOT NULL
);
CREATE INDEX account_waits_by_account ON account_waits (account);
