-- Signing keys: private parts encrypted with the portal's key; public JWKs published until
-- everything they signed has expired.
CREATE TABLE oidc_keys (
    id              BIGSERIAL PRIMARY KEY,
    kid             TEXT        NOT NULL UNIQUE,
    alg             TEXT        NOT NULL CHECK (alg IN ('RS256', 'ES256')),
    public_jwk      JSONB       NOT NULL,
    private_der_enc BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    retired_at      TIMESTAMPTZ,
    unpublish_at    TIMESTAMPTZ
);

-- Relying parties (state services).
CREATE TABLE oidc_clients (
    id                        BIGSERIAL PRIMARY KEY,
    client_id                 TEXT        NOT NULL UNIQUE,
    secret_hash               BYTEA,
    name                      TEXT        NOT NULL,
    redirect_uris             TEXT[]      NOT NULL,
    post_logout_redirect_uris TEXT[]      NOT NULL DEFAULT '{}',
    public                    BOOLEAN     NOT NULL DEFAULT false,
    subject_type              TEXT        NOT NULL DEFAULT 'pairwise' CHECK (subject_type IN ('pairwise', 'public')),
    id_token_alg              TEXT        NOT NULL DEFAULT 'RS256' CHECK (id_token_alg IN ('RS256', 'ES256')),
    userinfo_signed           BOOLEAN     NOT NULL DEFAULT false,
    created_at                TIMESTAMPTZ NOT NULL,
    CHECK (public = (secret_hash IS NULL))
);
