-- An agent's standing approval for a service and scopes (asked again when more is requested).
CREATE TABLE oidc_consents (
    id             BIGSERIAL PRIMARY KEY,
    client_id      TEXT        NOT NULL REFERENCES oidc_clients (client_id) ON DELETE CASCADE,
    matrix_user_id TEXT        NOT NULL,
    scopes         TEXT[]      NOT NULL,
    first_at       TIMESTAMPTZ NOT NULL,
    last_at        TIMESTAMPTZ NOT NULL,
    UNIQUE (client_id, matrix_user_id)
);

-- One authorization: the values shared then, and every code and token that descends from it.
CREATE TABLE oidc_grants (
    id             BIGSERIAL PRIMARY KEY,
    client_id      TEXT        NOT NULL REFERENCES oidc_clients (client_id) ON DELETE CASCADE,
    matrix_user_id TEXT        NOT NULL,
    sid            TEXT        NOT NULL,
    scopes         TEXT[]      NOT NULL,
    claims         JSONB       NOT NULL,
    nonce          TEXT,
    auth_time      TIMESTAMPTZ NOT NULL,
    amr            TEXT[]      NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    revoked_at     TIMESTAMPTZ
);
CREATE INDEX oidc_grants_user ON oidc_grants (matrix_user_id, client_id);

CREATE TABLE oidc_codes (
    code_hash      BYTEA PRIMARY KEY,
    grant_id       BIGINT      NOT NULL REFERENCES oidc_grants (id) ON DELETE CASCADE,
    redirect_uri   TEXT        NOT NULL,
    code_challenge TEXT,
    expires_at     TIMESTAMPTZ NOT NULL,
    used_at        TIMESTAMPTZ
);

CREATE TABLE oidc_tokens (
    id         BIGSERIAL PRIMARY KEY,
    token_hash BYTEA       NOT NULL UNIQUE,
    kind       TEXT        NOT NULL CHECK (kind IN ('access', 'refresh')),
    grant_id   BIGINT      NOT NULL REFERENCES oidc_grants (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- A refresh token is used once: set when it is exchanged; a second use revokes the grant.
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX oidc_tokens_grant ON oidc_tokens (grant_id);

-- The history shown in "Mes services connectés": what was shared with whom, when.
CREATE TABLE oidc_shares (
    id             BIGSERIAL PRIMARY KEY,
    client_id      TEXT        NOT NULL REFERENCES oidc_clients (client_id) ON DELETE CASCADE,
    matrix_user_id TEXT        NOT NULL,
    claims         TEXT[]      NOT NULL,
    shared_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX oidc_shares_user ON oidc_shares (matrix_user_id, shared_at);
