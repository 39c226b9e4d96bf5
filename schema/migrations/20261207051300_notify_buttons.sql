-- Telegram buttons that are still live: a decision's message keeps its buttons until the
-- decision is answered (from the message, the CLI, the API, another notifier or a timeout);
-- then the notifier edits the message to say how it was answered and takes the buttons away.
ALTER TABLE notification_sends ADD COLUMN live_buttons INTEGER NOT NULL DEFAULT 0
    CHECK (live_buttons IN (0, 1));

-- Decisions already sent with buttons and not answered yet keep them until answered.
UPDATE notification_sends SET live_buttons = 1
WHERE state = 'sent' AND refs <> '[]' AND notification_id IN (
    SELECT n.id FROM notifications n JOIN decisions d ON n.source = 'decision' AND d.id = n.source_id
    WHERE d.answered_at IS NULL);

CREATE INDEX notification_sends_live_buttons ON notification_sends (notifier)
    WHERE live_buttons = 1;
