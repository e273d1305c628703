-- The history of a portal that has been serving for a while, loaded by scripts/bench before the
-- loads: 200,000 authorizations by 20,000 agents for the bench client (each with its spent code,
-- its access and refresh tokens and its sharing record, one in fifty revoked), their consents,
-- and 100,000 AudioConf requests older than the daily limits' 24 hours. Then VACUUM ANALYZE, as
-- autovacuum would have done by then. Without it every load would start on empty tables: the
-- plans PostgreSQL keeps for prepared statements (built from an empty table's statistics) scan
-- whole tables once they have grown, until autovacuum analyzes them again.
-- psql -v client=CLIENT_ID -f seed.sql
\set ON_ERROR_STOP on
INSERT INTO oidc_grants (client_id, matrix_user_id, sid, scopes, claims, nonce, auth_time, amr,
                         created_at, revoked_at)
SELECT :'client', '@agent.' || (i % 20000) || ':localhost', md5('sid' || i),
       '{openid,profile,email}', jsonb_build_object('email', 'agent.' || (i % 20000) || '@numerique.gouv.fr'),
       md5('nonce' || i), t, '{pwd}', t, CASE WHEN i % 50 = 0 THEN t + interval '1 day' END
FROM generate_series(1, 200000) i, LATERAL (SELECT now() - i * interval '40 seconds' AS t) ts;

INSERT INTO oidc_codes (code_hash, grant_id, redirect_uri, code_challenge, expires_at, used_at)
SELECT sha256(('code' || id)::bytea), id, 'http://127.0.0.1:1/cb', md5('pkce' || id),
       created_at + interval '60 seconds', created_at + interval '1 second'
FROM oidc_grants;

INSERT INTO oidc_tokens (token_hash, kind, grant_id, created_at, expires_at)
SELECT sha256((k || id)::bytea), k, id, created_at,
       created_at + CASE k WHEN 'access' THEN interval '1 hour' ELSE interval '30 days' END
FROM oidc_grants, unnest(ARRAY['access', 'refresh']) k;

INSERT INTO oidc_shares (client_id, matrix_user_id, claims, shared_at)
SELECT client_id, matrix_user_id, '{sub,email}', created_at FROM oidc_grants;

INSERT INTO oidc_consents (client_id, matrix_user_id, scopes, first_at, last_at)
SELECT client_id, matrix_user_id, '{openid,profile,email}', min(created_at), max(created_at)
FROM oidc_grants GROUP BY client_id, matrix_user_id;

INSERT INTO audioconf_requests (token_hash, email, email_hmac, ip_hmac, day, duration_minutes, lang,
                                created_at, expires_at, used_at)
SELECT sha256(('req' || i)::bytea), NULL, sha256(('mail' || (i % 20000))::bytea),
       sha256(('ip' || (i % 5000))::bytea), NULL, 60, 'fr', t, t + interval '30 minutes',
       CASE WHEN i % 3 = 0 THEN t + interval '5 minutes' END
FROM generate_series(1, 100000) i,
     LATERAL (SELECT now() - interval '2 days' - i * interval '30 seconds' AS t) ts;

VACUUM ANALYZE;
