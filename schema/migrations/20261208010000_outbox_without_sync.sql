-- The outbox is kept only while sync is configured (issue 28). A node without `sync:` marks it
-- off (the daemon at start): every insert into the outbox is then skipped, and the rows still
-- pending are pruned, so nothing accumulates that nobody will send. When sync is configured
-- again the daemon removes the mark and queues the current state of every task once.
CREATE TABLE outbox_off (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    since     INTEGER NOT NULL
);

CREATE TRIGGER outbox_skipped_while_off BEFORE INSERT ON outbox
WHEN EXISTS (SELECT 1 FROM outbox_off)
BEGIN
    SELECT RAISE(IGNORE);
END;

-- Decisions are not shipped (no central stream reads them): their rows leave the outbox and
-- no new ones are written.
DELETE FROM outbox WHERE stream = 'decision' AND state = 'pending';
