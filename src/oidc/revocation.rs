//! `/revoke` (RFC 7009) and `/introspect` (RFC 7662), for services' servers. Both authenticate the
//! client, and a client only ever learns about or acts on the tokens it was issued.

use chrono::Utc;
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::{post, State};
use serde_json::json;

use crate::config::Config;
use crate::crypto::Keys;
use crate::db::Db;

use super::grants;
use super::token::{authenticate_client, Api, BasicAuth};
use super::{claims, clients::Client};
use crate::web::text::Text;

#[derive(Debug, Default, FromForm)]
pub struct TokenRequest {
    pub token: Option<Text>,
    pub token_type_hint: Option<Text>,
    pub client_id: Option<Text>,
    pub client_secret: Option<Text>,
}

async fn client_and_token(
    conn: &mut diesel_async::AsyncPgConnection,
    form: &TokenRequest,
    basic: &BasicAuth,
) -> Result<(Client, String), Api> {
    let client = authenticate_client(
        conn,
        basic,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )
    .await?;
    match form.token.as_deref() {
        Some(t) if !t.is_empty() => Ok((client, t.to_owned())),
        _ => Err(Api::error(
            Status::BadRequest,
            "invalid_request",
            "token is required",
        )),
    }
}

/// RFC 7009. Revoking a refresh token ends its whole grant (and so every access token it gave);
/// revoking an access token ends that token. Unknown tokens are answered 200, as the RFC says.
#[post("/revoke", data = "<form>")]
pub async fn revoke(form: Form<TokenRequest>, basic: BasicAuth, db: &State<Db>) -> Api {
    let Ok(mut conn) = db.get().await else {
        return Api::unavailable();
    };
    let (client, token) = match client_and_token(&mut conn, &form, &basic).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    if let Some(hint) = form.token_type_hint.as_deref() {
        if hint != "access_token" && hint != "refresh_token" {
            return Api::error(
                Status::BadRequest,
                "unsupported_token_type",
                "access_token or refresh_token",
            );
        }
    }
    let now = Utc::now();
    let found = match grants::lookup_token(&mut conn, &token, now).await {
        Ok(f) => f,
        Err(_) => return Api::unavailable(),
    };
    let Some(info) = found else {
        return Api::ok(json!({}));
    };
    if info.grant.client_id != client.client_id {
        tracing::warn!(client = %client.client_id, "revocation of another client's token refused");
        return Api::error(
            Status::BadRequest,
            "invalid_request",
            "the token was not issued to this client",
        );
    }
    let done = if info.kind == "refresh" {
        grants::revoke_grant(&mut conn, info.grant.id, now).await
    } else {
        grants::revoke_token(&mut conn, info.id, now).await
    };
    if done.is_err() {
        return Api::unavailable();
    }
    tracing::info!(client = %client.client_id, kind = %info.kind, "token revoked");
    Api::ok(json!({}))
}

/// RFC 7662. A confidential client may introspect the tokens it was issued; any other token,
/// and every expired, revoked or used one, is `{"active": false}`.
#[post("/introspect", data = "<form>")]
pub async fn introspect(
    form: Form<TokenRequest>,
    basic: BasicAuth,
    db: &State<Db>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Api {
    let Ok(mut conn) = db.get().await else {
        return Api::unavailable();
    };
    let (client, token) = match client_and_token(&mut conn, &form, &basic).await {
        Ok(x) => x,
        Err(e) => return e,
    };
    if client.public {
        return Api {
            www_authenticate: Some("Basic realm=\"tchap\"".into()),
            ..Api::error(
                Status::Unauthorized,
                "invalid_client",
                "introspection needs client authentication",
            )
        };
    }
    let info = match grants::lookup_token(&mut conn, &token, Utc::now()).await {
        Ok(Some(info)) if info.active && info.grant.client_id == client.client_id => info,
        Ok(_) => return Api::ok(json!({"active": false})),
        Err(_) => return Api::unavailable(),
    };
    Api::ok(json!({
        "active": true,
        "scope": info.grant.scope(),
        "client_id": client.client_id,
        "token_type": if info.kind == "access" { "Bearer" } else { "refresh_token" },
        "exp": info.expires_at.timestamp(),
        "iat": info.created_at.timestamp(),
        "sub": claims::subject(keys, &client.subject_type, &client.client_id, &info.grant.matrix_user_id),
        "aud": client.client_id,
        "iss": config.public_url(),
        "auth_time": info.grant.auth_time.timestamp(),
        "sid": info.grant.sid,
    }))
}
