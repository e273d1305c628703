DROP TABLE oidc_shares;
DROP TABLE oidc_tokens;
DROP TABLE oidc_codes;
DROP TABLE oidc_grants;
DROP TABLE oidc_consents;
