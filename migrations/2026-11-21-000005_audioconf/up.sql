-- AudioConf: phone conferences booked by email (magic link) or with a Tchap login.
CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Email domains allowed to book, added by administrators (on top of those in the settings).
-- A rule is an exact domain ("agent.gouv.fr") or a suffix starting with a dot (".gouv.fr").
CREATE TABLE audioconf_domains (
    id         BIGSERIAL PRIMARY KEY,
    rule       TEXT        NOT NULL UNIQUE,
    added_by   TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- A booking asked for by email, waiting for its magic link to be confirmed (single use).
CREATE TABLE audioconf_requests (
    id               BIGSERIAL PRIMARY KEY,
    token_hash       BYTEA       NOT NULL UNIQUE,
    email            TEXT,
    email_hmac       BYTEA       NOT NULL,
    ip_hmac          BYTEA       NOT NULL,
    day              DATE,
    duration_minutes INTEGER,
    lang             TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    used_at          TIMESTAMPTZ,
    CHECK ((day IS NULL) <> (duration_minutes IS NULL))
);
CREATE INDEX audioconf_requests_email ON audioconf_requests (email_hmac, created_at);
CREATE INDEX audioconf_requests_ip ON audioconf_requests (ip_hmac, created_at);

-- A conference line. The PIN is kept as an HMAC (what the IVR looks up, and what the exclusion
-- constraint compares) and encrypted (to show it again to its owner); never in clear.
CREATE TABLE audioconf_conferences (
    id                BIGSERIAL PRIMARY KEY,
    public_id         TEXT        NOT NULL UNIQUE,
    email             TEXT,
    email_domain      TEXT        NOT NULL,
    email_hmac        BYTEA       NOT NULL,
    number            TEXT        NOT NULL,
    pin_hmac          BYTEA       NOT NULL,
    pin_enc           BYTEA       NOT NULL,
    all_day           BOOLEAN     NOT NULL,
    starts_at         TIMESTAMPTZ NOT NULL,
    ends_at           TIMESTAMPTZ NOT NULL,
    cancel_token_hash BYTEA       NOT NULL UNIQUE,
    cancelled_at      TIMESTAMPTZ,
    via               TEXT        NOT NULL CHECK (via IN ('email', 'tchap', 'room')),
    lang              TEXT        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    CHECK (ends_at >= starts_at),
    -- One PIN per number at any moment: two conferences on the same number whose periods overlap
    -- never share a PIN. Enforced here, not by check-then-insert.
    CONSTRAINT audioconf_pin_unique_per_period EXCLUDE USING gist (
        number WITH =,
        pin_hmac WITH =,
        tstzrange(starts_at, ends_at) WITH &&
    )
);
CREATE INDEX audioconf_conferences_ivr ON audioconf_conferences (number, pin_hmac, ends_at);
CREATE INDEX audioconf_conferences_day ON audioconf_conferences (created_at);
CREATE INDEX audioconf_conferences_retention ON audioconf_conferences (ends_at) WHERE email IS NOT NULL;
