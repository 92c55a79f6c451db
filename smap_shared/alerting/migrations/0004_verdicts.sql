-- Operators' verdicts on alerts (the categories of ESA's anomaly-detection benchmark): every verdict is kept,
-- the latest one is the alert's. Exported as labels in telemanom's labeled_anomalies.csv layout.
CREATE TABLE alert_verdicts (
    id          BIGSERIAL PRIMARY KEY,
    alert_id    BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    verdict     TEXT NOT NULL CHECK (verdict IN ('true_anomaly', 'false_alarm', 'rare_nominal_event')),
    comment     TEXT NOT NULL DEFAULT '',
    by_whom     TEXT NOT NULL,
    user_id     BIGINT REFERENCES users (id) ON DELETE SET NULL,
    auth_method TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX alert_verdicts_alert_idx ON alert_verdicts (alert_id, id);
