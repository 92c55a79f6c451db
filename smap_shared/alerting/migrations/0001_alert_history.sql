-- Alert history of smap-alert-manager. Applied once by smap_shared.alerting.store.migrate, in one
-- transaction with its row in schema_migrations. Never edit an applied migration: add the next one.

CREATE TABLE alerts (
    id              BIGSERIAL PRIMARY KEY,
    rule            TEXT NOT NULL,
    severity        TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    satellite_id    TEXT NOT NULL,
    entity          TEXT NOT NULL,
    sensor          TEXT,
    stream_id       TEXT NOT NULL,
    stream_key      TEXT NOT NULL,            -- stream_id, or stream_id#sensor for a sensor-scoped rule
    score_at_firing DOUBLE PRECISION,
    top_sensors     JSONB NOT NULL DEFAULT '[]'::jsonb,  -- [{"id": "sensor_3", "error": 1.2}, ...] at firing
    started_at      TIMESTAMPTZ NOT NULL,     -- frame times
    fired_at        TIMESTAMPTZ,
    resolved_at     TIMESTAMPTZ,
    first_index     BIGINT NOT NULL,
    fired_index     BIGINT,
    notified        BOOLEAN NOT NULL DEFAULT FALSE,
    acknowledged_at TIMESTAMPTZ,
    acknowledged_by TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alerts_state_idx ON alerts (state);
CREATE INDEX alerts_stream_idx ON alerts (satellite_id, entity);
CREATE INDEX alerts_rule_idx ON alerts (rule);
CREATE INDEX alerts_started_idx ON alerts (started_at DESC);

CREATE TABLE alert_transitions (
    id          BIGSERIAL PRIMARY KEY,
    alert_id    BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,         -- the frame's timestamp
    frame_index BIGINT NOT NULL,
    score       DOUBLE PRECISION NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alert_transitions_alert_idx ON alert_transitions (alert_id, id);

CREATE TABLE alert_acknowledgements (
    id       BIGSERIAL PRIMARY KEY,
    alert_id BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    by_whom  TEXT NOT NULL,
    note     TEXT NOT NULL DEFAULT '',
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alert_acknowledgements_alert_idx ON alert_acknowledgements (alert_id, id);

-- The lifecycle of each (rule, stream key), so a restart continues the same alert.
CREATE TABLE lifecycle_states (
    rule       TEXT NOT NULL,
    stream_key TEXT NOT NULL,
    state      JSONB NOT NULL,
    alert_id   BIGINT REFERENCES alerts (id),  -- the open (pending/firing) alert
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, stream_key)
);

-- The results topic's next offset per partition, written in the transaction that applied the records:
-- the consumer seeks here on assignment, so no record is applied twice or skipped.
CREATE TABLE consumer_offsets (
    group_id    TEXT NOT NULL,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Notifications to deliver: written with the firing, delivered after, marked delivered (transactional outbox).
CREATE TABLE notification_outbox (
    id              BIGSERIAL PRIMARY KEY,
    notification_id UUID NOT NULL UNIQUE,     -- stable across retries: X-SMAP-Notification-Id, Message-ID
    alert_id        BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    channel         TEXT NOT NULL CHECK (channel IN ('slack', 'email')),
    event           TEXT NOT NULL,            -- firing | resolved
    payload         JSONB NOT NULL,           -- the rendered message, so every attempt sends the same
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX notification_outbox_due_idx ON notification_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX notification_outbox_alert_idx ON notification_outbox (alert_id);

CREATE TABLE delivery_log (
    id          BIGSERIAL PRIMARY KEY,
    outbox_id   BIGINT NOT NULL REFERENCES notification_outbox (id) ON DELETE CASCADE,
    alert_id    BIGINT NOT NULL,
    channel     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    ok          BOOLEAN NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',     -- HTTP status / SMTP answer / the error
    duration_ms DOUBLE PRECISION NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX delivery_log_alert_idx ON delivery_log (alert_id, id);
