-- Notifications to the operator (Telegram, ntfy, Slack, webhooks), durable like the outbox.
--
-- A trigger queues one notification per alert and per decision in the very transaction that
-- inserts it, whatever code path raised it (the daemon, the CLI's direct path, a hook). The
-- daemon's delivery task routes each one to the configured notifiers (one `notification_sends`
-- row per notifier: the primary key makes delivery idempotent per item and notifier) and sends
-- them with retries.

CREATE TABLE notifications (
    id        INTEGER PRIMARY KEY,
    source    TEXT    NOT NULL CHECK (source IN ('alert', 'decision')),
    source_id TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    -- When the delivery task expanded it into sends (NULL: still to route).
    routed_at INTEGER,
    UNIQUE (source, source_id)
);
CREATE INDEX notifications_unrouted ON notifications (id) WHERE routed_at IS NULL;

CREATE TRIGGER notify_on_alert AFTER INSERT ON alerts
BEGIN
    INSERT OR IGNORE INTO notifications (source, source_id, created_at)
    VALUES ('alert', NEW.id, NEW.created_at);
END;

CREATE TRIGGER notify_on_decision AFTER INSERT ON decisions
BEGIN
    INSERT OR IGNORE INTO notifications (source, source_id, created_at)
    VALUES ('decision', NEW.id, NEW.created_at);
END;

CREATE TABLE notification_sends (
    notification_id INTEGER NOT NULL REFERENCES notifications (id),
    notifier        TEXT    NOT NULL,
    -- Repeats of one key within the dedupe window go to the digest instead of alone.
    dedupe_key      TEXT    NOT NULL,
    -- pending: to send alone (at next_at); sent; digest: waits for the next digest;
    -- digested: went out in a digest; failed: refused for good (last_error says why);
    -- skipped: a decision answered (or an alert resolved) before it was sent.
    state           TEXT    NOT NULL CHECK (state IN (
        'pending', 'sent', 'digest', 'digested', 'failed', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_at         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    last_error      TEXT,
    -- What the notifier answered, e.g. Telegram's `[[chat_id, message_id], ...]`, to edit the
    -- message later and to skip the chats already sent to on a retry.
    refs            TEXT    NOT NULL DEFAULT '[]',
    PRIMARY KEY (notification_id, notifier)
);
CREATE INDEX notification_sends_due ON notification_sends (notifier, state, next_at);
CREATE INDEX notification_sends_key ON notification_sends (notifier, dedupe_key, created_at);

-- Small durable values of the notifiers, such as Telegram's `getUpdates` offset per bot.
CREATE TABLE notify_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
