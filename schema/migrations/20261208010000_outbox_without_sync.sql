-- What the outbox keeps when nothing ships it (issue 28).
--
-- The outbox is also the dashboard's change feed (`changes_since`: each row says what changed),
-- so every change still writes its row. A node without `sync:` is marked `outbox_off` by the
-- daemon at start: its rows are then written acknowledged (never pending, never shipped) and
-- only the newest 1,000 are kept, so nothing accumulates that nobody will send. When sync is
-- configured again the daemon removes the mark and queues the current state of every task once.
CREATE TABLE outbox_off (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    since     INTEGER NOT NULL
);

-- Decisions are never shipped (no central stream reads them): their rows are change notices
-- for the dashboard only, acknowledged as they are written.
CREATE TRIGGER outbox_local_only AFTER INSERT ON outbox
WHEN NEW.stream = 'decision' OR EXISTS (SELECT 1 FROM outbox_off)
BEGIN
    UPDATE outbox SET state = 'acked' WHERE seq = NEW.seq;
    DELETE FROM outbox
    WHERE seq <= NEW.seq - 1000 AND state = 'acked' AND EXISTS (SELECT 1 FROM outbox_off);
END;

UPDATE outbox SET state = 'acked' WHERE stream = 'decision' AND state = 'pending';
