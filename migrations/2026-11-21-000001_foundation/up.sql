-- Mail is written here in the same transaction as the change that causes it, then sent by a worker.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    message_id      TEXT        NOT NULL UNIQUE,
    kind            TEXT        NOT NULL,
    sender          TEXT        NOT NULL,
    recipients      TEXT[]      NOT NULL,
    raw             BYTEA       NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    sent_at         TIMESTAMPTZ
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';

-- Server-side sessions: the cookie holds a random id, the row holds its SHA-256.
CREATE TABLE sessions (
    id                 BIGSERIAL PRIMARY KEY,
    token_hash         BYTEA       NOT NULL UNIQUE,
    matrix_user_id     TEXT        NOT NULL,
    device_id          TEXT        NOT NULL,
    homeserver_url     TEXT        NOT NULL,
    access_token_enc   BYTEA       NOT NULL,
    display_name       TEXT,
    emails             TEXT[]      NOT NULL DEFAULT '{}',
    auth_time          TIMESTAMPTZ NOT NULL,
    amr                TEXT[]      NOT NULL DEFAULT '{pwd}',
    created_at         TIMESTAMPTZ NOT NULL,
    last_seen_at       TIMESTAMPTZ NOT NULL,
    expires_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user ON sessions (matrix_user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);
