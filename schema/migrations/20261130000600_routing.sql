-- Routing across systems (SPEC section 9, supabase/README.md "Routing").
--
-- A task this system cannot run (its repository has no checkout here, it is pinned to another
-- system, or no slot is free) is *routed*: a `routed_tasks` row (this system is its origin)
-- and a queued `route_calls` row that submits it to the central. A task this system claimed
-- from the central is an ordinary local task with a `routed_leases` row carrying the claim's
-- fencing token. Calls to the central wait in `route_calls` and are sent in order, each retried
-- with the same idempotency key or fencing token until it has an answer.

CREATE TABLE routed_tasks (
    id           TEXT    PRIMARY KEY,          -- also the central task id and idempotency key
    title        TEXT    NOT NULL,
    prompt       TEXT    NOT NULL,
    repo         TEXT,
    pin          TEXT,                         -- the system it must run on (name or id)
    profile      TEXT,
    verify       TEXT,
    priority     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    submitted_at INTEGER,                      -- when the central took it
    central      TEXT,                         -- the central's latest view (JSON), if any
    updated_at   INTEGER NOT NULL
);

CREATE TABLE routed_leases (
    task_id       TEXT    PRIMARY KEY REFERENCES tasks (id),
    fencing_token INTEGER NOT NULL,
    origin_name   TEXT,
    lease_ms      INTEGER NOT NULL,
    -- When the central last confirmed the lease (claim or heartbeat): the self-fencing clock.
    renewed_at    INTEGER NOT NULL,
    state         TEXT    NOT NULL DEFAULT 'held'
                  CHECK (state IN ('held', 'finished', 'lost')),
    reason        TEXT                          -- why it is no longer held
);

CREATE TABLE route_calls (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    function   TEXT    NOT NULL
               CHECK (function IN ('submit_task', 'report_progress', 'complete', 'release')),
    task_id    TEXT    NOT NULL,
    params     TEXT    NOT NULL,               -- the request body (JSON)
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
