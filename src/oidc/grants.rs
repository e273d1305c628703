//! Consents, grants, codes and tokens. Every credential is 32 random bytes, stored as SHA-256,
//! single use where it must be; a replayed code or refresh token revokes its whole grant.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Map, Value};

use crate::crypto;
use crate::db::schema::{oidc_clients, oidc_codes, oidc_consents, oidc_grants, oidc_tokens};

use super::clients::Client;

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = oidc_grants)]
pub struct Grant {
    pub id: i64,
    pub client_id: String,
    pub matrix_user_id: String,
    pub sid: String,
    pub scopes: Vec<Option<String>>,
    pub claims: Value,
    pub nonce: Option<String>,
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<Option<String>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Grant {
    pub fn scope(&self) -> String {
        self.scopes
            .iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A client with what `user` approved for it, if anything, in one read (authorize's only one
/// besides the session's).
pub async fn client_with_consent(
    conn: &mut AsyncPgConnection,
    client_id: &str,
    user: Option<&str>,
) -> QueryResult<Option<(Client, Option<Vec<Option<String>>>)>> {
    oidc_clients::table
        .left_join(
            oidc_consents::table.on(oidc_consents::client_id
                .eq(oidc_clients::client_id)
                .and(oidc_consents::matrix_user_id.nullable().eq(user))),
        )
        .filter(oidc_clients::client_id.eq(client_id))
        .select((Client::as_select(), oidc_consents::scopes.nullable()))
        .first(conn)
        .await
        .optional()
}

/// Whether the scopes approved (`given`) cover at least `scopes`.
pub fn consent_covers(given: Option<&[Option<String>]>, scopes: &[String]) -> bool {
    given.is_some_and(|g| scopes.iter().all(|s| g.iter().flatten().any(|x| x == s)))
}

pub async fn remember_consent(
    conn: &mut AsyncPgConnection,
    client_id: &str,
    user: &str,
    scopes: &[String],
    now: DateTime<Utc>,
) -> QueryResult<()> {
    let scopes: Vec<Option<String>> = scopes.iter().cloned().map(Some).collect();
    diesel::insert_into(oidc_consents::table)
        .values((
            oidc_consents::client_id.eq(client_id),
            oidc_consents::matrix_user_id.eq(user),
            oidc_consents::scopes.eq(&scopes),
            oidc_consents::first_at.eq(now),
            oidc_consents::last_at.eq(now),
        ))
        .on_conflict((oidc_consents::client_id, oidc_consents::matrix_user_id))
        .do_update()
        .set((
            oidc_consents::scopes.eq(&scopes),
            oidc_consents::last_at.eq(now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// What a new authorization carries.
pub struct NewGrant<'a> {
    pub client_id: &'a str,
    pub matrix_user_id: &'a str,
    pub sid: &'a str,
    pub scopes: &'a [String],
    pub claims: &'a Map<String, Value>,
    pub nonce: Option<&'a str>,
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<String>,
    pub redirect_uri: &'a str,
    pub code_challenge: Option<&'a str>,
}

/// Creates the grant, its code (returned) and the history row, in one transaction.
pub async fn issue_code(
    conn: &mut AsyncPgConnection,
    g: NewGrant<'_>,
    code_ttl: Duration,
    now: DateTime<Utc>,
) -> Result<String, crate::web::errors::AppError> {
    use diesel::sql_types::{Array, Bytea, Jsonb, Nullable, Text, Timestamptz};
    let code = crypto::random_token(32)?;
    let hash = crypto::sha256(code.as_bytes());
    let mut shared: Vec<Option<String>> = vec![Some("sub".into())];
    shared.extend(g.claims.keys().cloned().map(Some));
    // The grant, its code and the record of what was shared, in one statement: atomic without a
    // transaction, and one round trip instead of five on every authorization; kept prepared.
    struct IssueCode;
    let statement = diesel::sql_query(
        "WITH g AS (
             INSERT INTO oidc_grants
                 (client_id, matrix_user_id, sid, scopes, claims, nonce, auth_time, amr, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id),
         c AS (
             INSERT INTO oidc_codes (code_hash, grant_id, redirect_uri, code_challenge, expires_at)
             SELECT $10, g.id, $11, $12, $13 FROM g)
         INSERT INTO oidc_shares (client_id, matrix_user_id, claims, shared_at)
         VALUES ($1, $2, $14, $9)",
    )
    .bind::<Text, _>(g.client_id)
    .bind::<Text, _>(g.matrix_user_id)
    .bind::<Text, _>(g.sid)
    .bind::<Array<Nullable<Text>>, _>(g.scopes.iter().cloned().map(Some).collect::<Vec<_>>())
    .bind::<Jsonb, _>(Value::Object(g.claims.clone()))
    .bind::<Nullable<Text>, _>(g.nonce)
    .bind::<Timestamptz, _>(g.auth_time)
    .bind::<Array<Nullable<Text>>, _>(g.amr.iter().cloned().map(Some).collect::<Vec<_>>())
    .bind::<Timestamptz, _>(now)
    .bind::<Bytea, _>(&hash)
    .bind::<Text, _>(g.redirect_uri)
    .bind::<Nullable<Text>, _>(g.code_challenge)
    .bind::<Timestamptz, _>(now + code_ttl)
    .bind::<Array<Nullable<Text>>, _>(shared);
    crate::db::prepared::<IssueCode, _>(statement)
        .execute(conn)
        .await?;
    Ok(code)
}

/// The code's content, once: a second use finds it used and revokes everything it gave.
pub struct Redeemed {
    pub grant: Grant,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RedeemError {
    Unknown,
    Expired,
    Replayed,
}

/// What a token request brings to redeem a code, checked in the statement that spends it.
pub struct Exchange<'a> {
    pub client_id: &'a str,
    /// A public client must have sent a PKCE challenge.
    pub client_public: bool,
    pub redirect_uri: &'a str,
    /// `b64url(SHA-256(code_verifier))` when a verifier was sent.
    pub challenge: Option<&'a str>,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// A code spent: either the tokens were issued, or the request did not match what the code was
/// issued for (its content says why; no token was issued and the code stays spent).
pub enum Redemption {
    Issued {
        grant: Grant,
        access: String,
        refresh: String,
    },
    Refused(Redeemed),
}

/// Spends a code and, when the request matches it (client, redirect URI, PKCE) and it is still
/// good, issues the token pair, all in one statement.
pub async fn redeem_code(
    conn: &mut AsyncPgConnection,
    code: &str,
    ex: &Exchange<'_>,
    now: DateTime<Utc>,
) -> Result<Result<Redemption, RedeemError>, crate::web::errors::AppError> {
    use diesel::sql_types::{Bool, Bytea, Nullable, Text, Timestamptz};
    let hash = crypto::sha256(code.as_bytes());
    let access = crypto::random_token(32)?;
    let refresh = crypto::random_token(32)?;
    // Marking it used and reading it is one statement: two concurrent uses cannot both win, and
    // the code is spent whatever follows. The tokens are written by the same statement when every
    // check passes: one round trip and one commit for the whole exchange. (The PKCE challenge is
    // compared here as it was sent in the authorization request, in clear: it is no secret.)
    struct RedeemCode;
    let statement = diesel::sql_query(
        "WITH c AS (
             UPDATE oidc_codes SET used_at = $2
             WHERE code_hash = $1 AND used_at IS NULL
             RETURNING grant_id, redirect_uri, code_challenge, expires_at AS code_expires_at),
         g AS (
             SELECT g.*, c.redirect_uri, c.code_challenge, c.code_expires_at,
                    c.code_expires_at > $2 AND g.revoked_at IS NULL AND g.client_id = $3
                    AND c.redirect_uri = $4 AND c.code_challenge IS NOT DISTINCT FROM $5
                    AND (c.code_challenge IS NOT NULL OR NOT $6) AS issued
             FROM c JOIN oidc_grants g ON g.id = c.grant_id),
         t AS (
             INSERT INTO oidc_tokens (token_hash, kind, grant_id, created_at, expires_at)
             SELECT v.token_hash, v.kind, g.id, $2, v.expires_at
             FROM g, (VALUES ($7, 'access', $8), ($9, 'refresh', $10))
                 AS v (token_hash, kind, expires_at)
             WHERE g.issued)
         SELECT * FROM g",
    )
    .bind::<Bytea, _>(&hash)
    .bind::<Timestamptz, _>(now)
    .bind::<Text, _>(ex.client_id)
    .bind::<Text, _>(ex.redirect_uri)
    .bind::<Nullable<Text>, _>(ex.challenge)
    .bind::<Bool, _>(ex.client_public)
    .bind::<Bytea, _>(crypto::sha256(access.as_bytes()))
    .bind::<Timestamptz, _>(now + ex.access_ttl)
    .bind::<Bytea, _>(crypto::sha256(refresh.as_bytes()))
    .bind::<Timestamptz, _>(now + ex.refresh_ttl);
    let claimed: Option<Claimed> = crate::db::prepared::<RedeemCode, _>(statement)
        .get_result(conn)
        .await
        .optional()?;
    let Some(claimed) = claimed else {
        let used: Option<i64> = oidc_codes::table
            .filter(oidc_codes::code_hash.eq(&hash))
            .select(oidc_codes::grant_id)
            .first(conn)
            .await
            .optional()?;
        return Ok(match used {
            Some(grant_id) => {
                conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                    revoke_grant(conn, grant_id, now).await
                })
                .await?;
                Err(RedeemError::Replayed)
            }
            None => Err(RedeemError::Unknown),
        });
    };
    if claimed.issued {
        return Ok(Ok(Redemption::Issued {
            grant: claimed.grant,
            access,
            refresh,
        }));
    }
    if claimed.code_expires_at <= now {
        return Ok(Err(RedeemError::Expired));
    }
    if claimed.grant.revoked_at.is_some() {
        return Ok(Err(RedeemError::Unknown));
    }
    Ok(Ok(Redemption::Refused(Redeemed {
        grant: claimed.grant,
        redirect_uri: claimed.redirect_uri,
        code_challenge: claimed.code_challenge,
    })))
}

/// A code just spent, with its grant.
#[derive(QueryableByName)]
struct Claimed {
    #[diesel(embed)]
    grant: Grant,
    #[diesel(sql_type = diesel::sql_types::Text)]
    redirect_uri: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    code_challenge: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    code_expires_at: DateTime<Utc>,
    /// Whether the tokens were issued.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    issued: bool,
}

/// The grant, unless it was revoked.
async fn live_grant(conn: &mut AsyncPgConnection, grant_id: i64) -> QueryResult<Option<Grant>> {
    oidc_grants::table
        .find(grant_id)
        .filter(oidc_grants::revoked_at.is_null())
        .select(Grant::as_select())
        .first(conn)
        .await
        .optional()
}

/// Revokes a grant and every token it gave.
pub async fn revoke_grant(
    conn: &mut AsyncPgConnection,
    grant_id: i64,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(
        oidc_grants::table
            .find(grant_id)
            .filter(oidc_grants::revoked_at.is_null()),
    )
    .set(oidc_grants::revoked_at.eq(now))
    .execute(conn)
    .await?;
    diesel::update(
        oidc_tokens::table
            .filter(oidc_tokens::grant_id.eq(grant_id))
            .filter(oidc_tokens::revoked_at.is_null()),
    )
    .set(oidc_tokens::revoked_at.eq(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// A new access token and refresh token for a grant: (access, refresh).
pub async fn issue_tokens(
    conn: &mut AsyncPgConnection,
    grant_id: i64,
    access_ttl: Duration,
    refresh_ttl: Duration,
    now: DateTime<Utc>,
) -> Result<(String, String), crate::web::errors::AppError> {
    let access = crypto::random_token(32)?;
    let refresh = crypto::random_token(32)?;
    // A fixed-size batch (not a `Vec`): the statement is prepared once per connection.
    diesel::insert_into(oidc_tokens::table)
        .values([
            (
                oidc_tokens::token_hash.eq(crypto::sha256(access.as_bytes())),
                oidc_tokens::kind.eq("access"),
                oidc_tokens::grant_id.eq(grant_id),
                oidc_tokens::created_at.eq(now),
                oidc_tokens::expires_at.eq(now + access_ttl),
            ),
            (
                oidc_tokens::token_hash.eq(crypto::sha256(refresh.as_bytes())),
                oidc_tokens::kind.eq("refresh"),
                oidc_tokens::grant_id.eq(grant_id),
                oidc_tokens::created_at.eq(now),
                oidc_tokens::expires_at.eq(now + refresh_ttl),
            ),
        ])
        .execute(conn)
        .await?;
    Ok((access, refresh))
}

/// What userinfo answers from: the agent and the values shared by the grant, and the client's
/// settings for the answer.
#[derive(QueryableByName)]
pub struct ForUserinfo {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub matrix_user_id: String,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub claims: Value,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub client_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub subject_type: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub userinfo_signed: bool,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub id_token_alg: String,
}

/// userinfo's only query: the token, its grant and their client must all still exist, unrevoked.
/// Raw SQL kept prepared, reading the six columns the answer needs (the query builder would spell
/// out and decode both rows whole, and build that text again on every call).
pub async fn for_userinfo(
    conn: &mut AsyncPgConnection,
    token: &str,
    now: DateTime<Utc>,
) -> QueryResult<Option<ForUserinfo>> {
    use diesel::sql_types::{Bytea, Timestamptz};
    struct Userinfo;
    let statement = diesel::sql_query(
        "SELECT g.matrix_user_id, g.claims, c.client_id, c.subject_type, c.userinfo_signed,
                c.id_token_alg
         FROM oidc_tokens t
         JOIN oidc_grants g ON g.id = t.grant_id
         JOIN oidc_clients c ON c.client_id = g.client_id
         WHERE t.token_hash = $1 AND t.kind = 'access' AND t.expires_at > $2
           AND t.revoked_at IS NULL AND g.revoked_at IS NULL",
    )
    .bind::<Bytea, _>(crypto::sha256(token.as_bytes()))
    .bind::<Timestamptz, _>(now);
    crate::db::prepared::<Userinfo, _>(statement)
        .get_result(conn)
        .await
        .optional()
}

/// Uses a refresh token once. A second use of the same token revokes the whole grant.
pub async fn use_refresh_token(
    conn: &mut AsyncPgConnection,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Result<Grant, RedeemError>, diesel::result::Error> {
    let hash = crypto::sha256(token.as_bytes());
    let claimed: Option<i64> = diesel::update(
        oidc_tokens::table
            .filter(oidc_tokens::token_hash.eq(&hash))
            .filter(oidc_tokens::kind.eq("refresh"))
            .filter(oidc_tokens::used_at.is_null())
            .filter(oidc_tokens::revoked_at.is_null())
            .filter(oidc_tokens::expires_at.gt(now)),
    )
    .set(oidc_tokens::used_at.eq(now))
    .returning(oidc_tokens::grant_id)
    .get_result(conn)
    .await
    .optional()?;
    match claimed {
        Some(grant_id) => Ok(live_grant(conn, grant_id)
            .await?
            .ok_or(RedeemError::Unknown)),
        None => {
            let used: Option<(i64, Option<DateTime<Utc>>)> = oidc_tokens::table
                .filter(oidc_tokens::token_hash.eq(&hash))
                .filter(oidc_tokens::kind.eq("refresh"))
                .select((oidc_tokens::grant_id, oidc_tokens::used_at))
                .first(conn)
                .await
                .optional()?;
            Ok(match used {
                Some((grant_id, Some(_))) => {
                    revoke_grant(conn, grant_id, now).await?;
                    Err(RedeemError::Replayed)
                }
                Some(_) => Err(RedeemError::Expired),
                None => Err(RedeemError::Unknown),
            })
        }
    }
}

/// A token as the revocation and introspection endpoints see it, valid or not.
pub struct TokenInfo {
    pub id: i64,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether it can still be used now (not expired, not revoked, grant live, refresh unused).
    pub active: bool,
    pub grant: Grant,
}

pub async fn lookup_token(
    conn: &mut AsyncPgConnection,
    token: &str,
    now: DateTime<Utc>,
) -> QueryResult<Option<TokenInfo>> {
    type Row = (
        i64,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Grant,
    );
    let row: Option<Row> = oidc_tokens::table
        .inner_join(oidc_grants::table)
        .filter(oidc_tokens::token_hash.eq(crypto::sha256(token.as_bytes())))
        .select((
            oidc_tokens::id,
            oidc_tokens::kind,
            oidc_tokens::created_at,
            oidc_tokens::expires_at,
            oidc_tokens::used_at,
            oidc_tokens::revoked_at,
            Grant::as_select(),
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(
        |(id, kind, created_at, expires_at, used_at, revoked_at, grant)| TokenInfo {
            active: expires_at > now
                && revoked_at.is_none()
                && grant.revoked_at.is_none()
                && used_at.is_none(),
            id,
            kind,
            created_at,
            expires_at,
            grant,
        },
    ))
}

/// Revokes one token.
pub async fn revoke_token(
    conn: &mut AsyncPgConnection,
    id: i64,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(
        oidc_tokens::table
            .find(id)
            .filter(oidc_tokens::revoked_at.is_null()),
    )
    .set(oidc_tokens::revoked_at.eq(now))
    .execute(conn)
    .await?;
    Ok(())
}
