-- Failed logins, counted per account and per client address to slow down password guessing.
CREATE TABLE login_failures (
    id        BIGSERIAL PRIMARY KEY,
    key       TEXT        NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX login_failures_key ON login_failures (key, failed_at);
