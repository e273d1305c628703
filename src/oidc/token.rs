//! `/token` (authorization code with PKCE, refresh token) and `/userinfo`, with RFC 6749 JSON
//! errors, `WWW-Authenticate` on 401 and `Cache-Control: no-store`.

use chrono::{Duration, Utc};
use rocket::form::{Form, FromForm};
use rocket::http::{ContentType, Header, Status};
use rocket::request::{FromRequest, Outcome};
use rocket::response::{self, Responder};
use rocket::{get, post, Request, State};
use serde_json::{json, Value};

use crate::config::Config;
use crate::crypto::{self, Keys};
use crate::db::Db;

use super::clients::{self, Client};
use super::grants::{self, Grant, RedeemError, Redemption};
use super::keys::KeyRing;
use super::{claims, jwt};
use crate::web::text::Text;

/// A JSON answer for machines: never cached.
pub struct Api {
    pub status: Status,
    pub body: Value,
    pub www_authenticate: Option<String>,
    /// A signed userinfo answer (`application/jwt`) instead of JSON.
    pub jwt: Option<String>,
    /// Seconds, for 429 answers.
    pub retry_after: Option<i64>,
}

impl Api {
    pub fn ok(body: Value) -> Api {
        Api {
            status: Status::Ok,
            body,
            www_authenticate: None,
            jwt: None,
            retry_after: None,
        }
    }

    pub fn error(status: Status, error: &str, description: &str) -> Api {
        Api {
            status,
            body: json!({"error": error, "error_description": description}),
            www_authenticate: None,
            jwt: None,
            retry_after: None,
        }
    }

    /// 503: the database did not answer in time; the caller may retry.
    pub fn unavailable() -> Api {
        Api::error(
            Status::ServiceUnavailable,
            "temporarily_unavailable",
            "try again",
        )
    }

    fn invalid_client(description: &str) -> Api {
        Api {
            www_authenticate: Some("Basic realm=\"tchap\"".into()),
            ..Api::error(Status::Unauthorized, "invalid_client", description)
        }
    }
}

impl<'r> Responder<'r, 'static> for Api {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut res = match self.jwt {
            Some(token) => (ContentType::new("application", "jwt"), token).respond_to(req)?,
            None => (ContentType::JSON, self.body.to_string()).respond_to(req)?,
        };
        res.set_status(self.status);
        res.set_header(Header::new("Cache-Control", "no-store"));
        res.set_header(Header::new("Pragma", "no-cache"));
        if let Some(secs) = self.retry_after {
            res.set_header(Header::new("Retry-After", secs.max(1).to_string()));
        }
        if let Some(w) = self.www_authenticate {
            res.set_header(Header::new("WWW-Authenticate", w));
        }
        Ok(res)
    }
}

#[derive(Debug, Default, FromForm)]
pub struct TokenForm {
    pub grant_type: Option<Text>,
    pub code: Option<Text>,
    pub redirect_uri: Option<Text>,
    pub code_verifier: Option<Text>,
    pub refresh_token: Option<Text>,
    pub client_id: Option<Text>,
    pub client_secret: Option<Text>,
    pub scope: Option<Text>,
}

/// The `Authorization: Basic` credentials, if any (RFC 6749 §2.3.1: form-urlencoded parts).
pub struct BasicAuth(pub Option<(String, String)>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for BasicAuth {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let creds = req
            .headers()
            .get_one("Authorization")
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (id, secret) = s.split_once(':')?;
                Some((url_decode(id), url_decode(secret)))
            });
        Outcome::Success(BasicAuth(creds))
    }
}

/// Decodes `application/x-www-form-urlencoded` text.
pub fn url_decode(s: &str) -> String {
    rocket::http::RawStr::new(s).url_decode_lossy().into_owned()
}

/// Authenticates the client: Basic, or `client_secret` in the body, or none for a public client.
pub async fn authenticate_client(
    conn: &mut diesel_async::AsyncPgConnection,
    basic: &BasicAuth,
    form_id: Option<&str>,
    form_secret: Option<&str>,
) -> Result<Client, Api> {
    let (id, secret) = match (&basic.0, form_id, form_secret) {
        (Some(_), _, Some(_)) => {
            return Err(Api::error(
                Status::BadRequest,
                "invalid_request",
                "use one client authentication method",
            ))
        }
        (Some((id, secret)), _, None) => (id.clone(), Some(secret.clone())),
        (None, Some(id), secret) => (id.to_owned(), secret.map(str::to_owned)),
        (None, None, _) => return Err(Api::invalid_client("client authentication is required")),
    };
    let client = clients::find(conn, &id)
        .await
        .map_err(|_| Api::unavailable())?
        .ok_or_else(|| Api::invalid_client("unknown client"))?;
    match (client.public, secret) {
        (true, None) => Ok(client),
        (true, Some(_)) => Err(Api::invalid_client("a public client has no secret")),
        (false, Some(s)) if client.check_secret(&s) => Ok(client),
        (false, _) => Err(Api::invalid_client("wrong client secret")),
    }
}

/// The ID token for `grant`, signed with the client's algorithm.
pub fn id_token(
    ring: &KeyRing,
    keys: &Keys,
    config: &Config,
    client: &Client,
    grant: &Grant,
    access_token: &str,
    with_nonce: bool,
) -> Result<String, Api> {
    let now = Utc::now();
    let key = ring.get(&client.id_token_alg).map_err(|_| {
        Api::error(
            Status::InternalServerError,
            "server_error",
            "no signing key",
        )
    })?;
    let hash = crypto::sha256(access_token.as_bytes());
    let mut claims = json!({
        "iss": config.public_url(),
        "sub": claims::subject(keys, &client.subject_type, &client.client_id, &grant.matrix_user_id),
        "aud": client.client_id,
        "exp": (now + Duration::seconds(config.settings.oidc.id_token_ttl_secs)).timestamp(),
        "iat": now.timestamp(),
        "auth_time": grant.auth_time.timestamp(),
        "acr": "eidas1",
        "amr": grant.amr.iter().flatten().collect::<Vec<_>>(),
        "sid": grant.sid,
        "at_hash": crypto::b64url(&hash[..16]),
    });
    if with_nonce {
        if let Some(n) = &grant.nonce {
            claims["nonce"] = json!(n);
        }
    }
    jwt::sign(&key, &claims, Some(jwt::ID_TOKEN_TYP)).map_err(|_| {
        Api::error(
            Status::InternalServerError,
            "server_error",
            "signing failed",
        )
    })
}

/// Why a spent code gave no tokens: the first check, in the order RFC 6749 and 7636 give them,
/// that the request fails (the statement that spent the code made the same checks).
fn refusal(
    redeemed: &grants::Redeemed,
    client: &Client,
    redirect_uri: &str,
    challenge: Option<&str>,
) -> Api {
    let bad = |d: &str| Api::error(Status::BadRequest, "invalid_grant", d);
    if redeemed.grant.client_id != client.client_id {
        return bad("code was issued to another client");
    }
    if redeemed.redirect_uri != redirect_uri {
        return bad("redirect_uri differs from the authorization request");
    }
    match (&redeemed.code_challenge, challenge) {
        (Some(expected), Some(computed)) => {
            if !crypto::constant_time_eq(computed.as_bytes(), expected.as_bytes()) {
                return bad("code_verifier does not match");
            }
        }
        (Some(_), None) => return bad("code_verifier is required"),
        (None, Some(_)) => return bad("no code_challenge was sent"),
        (None, None) if client.public => return bad("PKCE is required"),
        (None, None) => {}
    }
    tracing::error!(client = %client.client_id, "a code was refused without a reason");
    Api::error(
        Status::InternalServerError,
        "server_error",
        "the code could not be redeemed",
    )
}

#[allow(clippy::too_many_arguments)]
#[post("/token", data = "<form>")]
pub async fn token(
    form: Form<TokenForm>,
    basic: BasicAuth,
    db: &State<Db>,
    ring: &State<KeyRing>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Api {
    let Ok(mut conn) = db.get().await else {
        return Api::unavailable();
    };
    let client = match authenticate_client(
        &mut conn,
        &basic,
        form.client_id.as_deref(),
        form.client_secret.as_deref(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return e,
    };
    let now = Utc::now();
    let o = &config.settings.oidc;
    let access_ttl = Duration::seconds(o.access_token_ttl_secs);
    let refresh_ttl = Duration::hours(o.refresh_token_ttl_hours);
    let (grant, with_nonce, access, refresh) = match form.grant_type.as_deref() {
        Some("authorization_code") => {
            let (Some(code), Some(redirect_uri)) =
                (form.code.as_deref(), form.redirect_uri.as_deref())
            else {
                return Api::error(
                    Status::BadRequest,
                    "invalid_request",
                    "code and redirect_uri are required",
                );
            };
            // The challenge the verifier answers (RFC 7636 S256), compared with the code's.
            let challenge = form
                .code_verifier
                .as_deref()
                .map(|v| crypto::b64url(&crypto::sha256(v.as_bytes())));
            let exchange = grants::Exchange {
                client_id: &client.client_id,
                client_public: client.public,
                redirect_uri,
                challenge: challenge.as_deref(),
                access_ttl,
                refresh_ttl,
            };
            match grants::redeem_code(&mut conn, code, &exchange, now).await {
                Ok(Ok(Redemption::Issued {
                    grant,
                    access,
                    refresh,
                })) => (grant, true, access, refresh),
                Ok(Ok(Redemption::Refused(redeemed))) => {
                    return refusal(&redeemed, &client, redirect_uri, challenge.as_deref())
                }
                Ok(Err(RedeemError::Replayed)) => {
                    tracing::warn!(client = %client.client_id, "authorization code replayed: grant revoked");
                    return Api::error(Status::BadRequest, "invalid_grant", "code already used");
                }
                Ok(Err(_)) => {
                    return Api::error(
                        Status::BadRequest,
                        "invalid_grant",
                        "unknown or expired code",
                    )
                }
                Err(_) => return Api::unavailable(),
            }
        }
        Some("refresh_token") => {
            let Some(rt) = form.refresh_token.as_deref() else {
                return Api::error(
                    Status::BadRequest,
                    "invalid_request",
                    "refresh_token is required",
                );
            };
            let grant = match grants::use_refresh_token(&mut conn, rt, now).await {
                Ok(Ok(g)) => g,
                Ok(Err(RedeemError::Replayed)) => {
                    tracing::warn!(client = %client.client_id, "refresh token reused: grant revoked");
                    return Api::error(
                        Status::BadRequest,
                        "invalid_grant",
                        "refresh token already used",
                    );
                }
                Ok(Err(_)) => {
                    return Api::error(
                        Status::BadRequest,
                        "invalid_grant",
                        "unknown or expired refresh token",
                    )
                }
                Err(_) => return Api::unavailable(),
            };
            if grant.client_id != client.client_id {
                return Api::error(
                    Status::BadRequest,
                    "invalid_grant",
                    "refresh token was issued to another client",
                );
            }
            match grants::issue_tokens(&mut conn, grant.id, access_ttl, refresh_ttl, now).await {
                Ok((access, refresh)) => (grant, false, access, refresh),
                Err(_) => return Api::unavailable(),
            }
        }
        Some(_) => {
            return Api::error(
                Status::BadRequest,
                "unsupported_grant_type",
                "authorization_code or refresh_token",
            )
        }
        None => {
            return Api::error(
                Status::BadRequest,
                "invalid_request",
                "grant_type is required",
            )
        }
    };
    // Signing needs no connection: give it back first.
    drop(conn);
    let id_token = match id_token(ring, keys, config, &client, &grant, &access, with_nonce) {
        Ok(t) => t,
        Err(e) => return e,
    };
    Api::ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": o.access_token_ttl_secs,
        "refresh_token": refresh,
        "id_token": id_token,
        "scope": grant.scope(),
    }))
}

#[derive(Debug, Default, FromForm)]
pub struct UserinfoForm {
    pub access_token: Option<Text>,
}

fn bearer(req_header: Option<&str>) -> Option<String> {
    req_header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

pub struct AuthorizationHeader(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for AuthorizationHeader {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(AuthorizationHeader(bearer(
            req.headers().get_one("Authorization"),
        )))
    }
}

async fn userinfo(
    token: Option<String>,
    db: &Db,
    ring: &KeyRing,
    keys: &Keys,
    config: &Config,
) -> Api {
    let invalid = |d: &str| Api {
        www_authenticate: Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{d}\""
        )),
        ..Api::error(Status::Unauthorized, "invalid_token", d)
    };
    let Some(token) = token else {
        return Api {
            www_authenticate: Some("Bearer realm=\"tchap\"".into()),
            ..Api::error(
                Status::Unauthorized,
                "invalid_request",
                "a bearer access token is required",
            )
        };
    };
    let Ok(mut conn) = db.get().await else {
        return Api::unavailable();
    };
    let found = match grants::for_userinfo(&mut conn, &token, Utc::now()).await {
        Ok(Some(found)) => found,
        Ok(None) => return invalid("unknown, expired or revoked token"),
        Err(_) => return Api::unavailable(),
    };
    // The connection goes back to the pool before the answer is built (and maybe signed).
    drop(conn);
    let mut body = serde_json::Map::new();
    body.insert(
        "sub".into(),
        json!(claims::subject(
            keys,
            &found.subject_type,
            &found.client_id,
            &found.matrix_user_id
        )),
    );
    if let Value::Object(shared) = found.claims {
        body.extend(shared);
    }
    let mut body = Value::Object(body);
    if found.userinfo_signed {
        let Ok(key) = ring.get(&found.id_token_alg) else {
            return Api::error(
                Status::InternalServerError,
                "server_error",
                "no signing key",
            );
        };
        body["iss"] = json!(config.public_url());
        body["aud"] = json!(found.client_id);
        body["iat"] = json!(Utc::now().timestamp());
        return match jwt::sign(&key, &body, Some(jwt::USERINFO_TYP)) {
            Ok(signed) => Api {
                jwt: Some(signed),
                ..Api::ok(Value::Null)
            },
            Err(_) => Api::error(
                Status::InternalServerError,
                "server_error",
                "signing failed",
            ),
        };
    }
    Api::ok(body)
}

#[get("/userinfo")]
pub async fn userinfo_get(
    auth: AuthorizationHeader,
    db: &State<Db>,
    ring: &State<KeyRing>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Api {
    userinfo(auth.0, db, ring, keys, config).await
}

#[post("/userinfo", data = "<form>")]
pub async fn userinfo_post(
    auth: AuthorizationHeader,
    form: Option<Form<UserinfoForm>>,
    db: &State<Db>,
    ring: &State<KeyRing>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Api {
    let from_body = form.and_then(|f| f.into_inner().access_token.map(Text::into_inner));
    if auth.0.is_some() && from_body.is_some() {
        return Api::error(Status::BadRequest, "invalid_request", "send the token once");
    }
    userinfo(auth.0.or(from_body), db, ring, keys, config).await
}
