-- Hook ingest finds the agents of the session ids its events carry (issue 28): without an
-- index every batch of hook events read the whole agents table, which keeps every agent a node
-- ever ran (their cost and tokens are aggregates retention keeps), so ingest slowed as the
-- months went by.
CREATE INDEX agents_by_session ON agents (session_id);
