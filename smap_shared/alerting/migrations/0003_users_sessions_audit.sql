-- Who may do what (smap_shared.auth): users with a role, API tokens and page sessions, and an audit log of
-- every action. Secrets are stored only as hashes (scrypt for passwords and tokens, SHA-256 of a 256-bit
-- random session id). Acknowledgements now name the user row that made them.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    role          TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'ingest', 'admin')),
    password_hash TEXT,                        -- NULL: token-only (e.g. a ground segment's ingest account)
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_by    TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_tokens_user_idx ON api_tokens (user_id);

CREATE TABLE sessions (
    id_digest  TEXT PRIMARY KEY,               -- sha256 hex of the cookie's value
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

CREATE TABLE audit_log (
    id       BIGSERIAL PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    username TEXT NOT NULL,                    -- who acted ('local-dev' with SMAP_AUTH=off)
    user_id  BIGINT REFERENCES users (id) ON DELETE SET NULL,
    method   TEXT NOT NULL,                    -- session | token | off | cli
    action   TEXT NOT NULL,                    -- login, login_failed, logout, user_created, token_created, ...
    target   TEXT NOT NULL DEFAULT '',
    detail   JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);

ALTER TABLE alert_acknowledgements ADD COLUMN user_id BIGINT REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE alert_acknowledgements ADD COLUMN auth_method TEXT NOT NULL DEFAULT 'legacy';
