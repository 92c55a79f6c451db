-- Shelving (smap_shared.alerting.shelving): an operator shelves an alert, a stream or a rule for a duration
-- or until unshelved. While a shelf is active the alerts it covers are still recorded, but their
-- notifications are held in the outbox (status 'held'); when the shelf ends (expiry or unshelve) the held
-- notifications of alerts no longer covered are released ('pending'), or dropped when the alert resolved in
-- the meantime. Every shelve, unshelve and expiry is also in audit_log.
CREATE TABLE shelves (
    id          BIGSERIAL PRIMARY KEY,
    scope       TEXT NOT NULL CHECK (scope IN ('alert', 'stream', 'rule')),
    target      TEXT NOT NULL,                -- the alert id, the stream id (SAT-001/A-1) or the rule name
    reason      TEXT NOT NULL,
    by_whom     TEXT NOT NULL,
    user_id     BIGINT REFERENCES users (id) ON DELETE SET NULL,
    auth_method TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ,                  -- NULL: until unshelved
    ended_at    TIMESTAMPTZ,                  -- unshelved or expired
    ended_by    TEXT,                         -- the user who unshelved, or 'expiry'
    end_reason  TEXT
);
CREATE INDEX shelves_open_idx ON shelves (scope, target) WHERE ended_at IS NULL;

ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_status_check;
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_status_check
    CHECK (status IN ('pending', 'delivered', 'failed', 'held', 'dropped'));
ALTER TABLE notification_outbox ADD COLUMN held_by BIGINT REFERENCES shelves (id);
CREATE INDEX notification_outbox_held_idx ON notification_outbox (alert_id) WHERE status = 'held';
