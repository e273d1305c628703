-- The verified addresses an account logged in with (as an HMAC, no address in clear), so that
-- failed logins count for one account whether it is typed as a user name, a Matrix ID or an address.
CREATE TABLE account_addresses (
    address_mac    BYTEA       PRIMARY KEY,
    matrix_user_id TEXT        NOT NULL,
    seen_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX account_addresses_seen_at ON account_addresses (seen_at);
