-- Keys of what is stored or published for lookup (subjects, sid, AudioConf HMACs): they must not
-- change when PORTAL_SECRET_KEY is rotated. Each is written once, at the first start after this
-- migration, from the secret in use then (so no existing value changes), sealed under the key ring.
CREATE TABLE stable_keys (
    purpose    TEXT        PRIMARY KEY,
    key_enc    BYTEA       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A rotated signing key is published at once and signs only from `active_from` on, so that
-- services caching the JWKS know it before they meet its `kid`.
ALTER TABLE oidc_keys ADD COLUMN active_from TIMESTAMPTZ;
UPDATE oidc_keys SET active_from = created_at;
ALTER TABLE oidc_keys ALTER COLUMN active_from SET NOT NULL;
