ALTER TABLE oidc_keys DROP COLUMN active_from;
DROP TABLE stable_keys;
