//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): `/logout` with `id_token_hint`,
//! a registered `post_logout_redirect_uri` and `state`.
//!
//! With a valid hint for the agent who is logged in, the session ends at once and the agent goes
//! back to the service. Without a hint (or a hint for someone else) the agent confirms first, so
//! that a link on any site cannot log them out.

use chrono::Utc;
use rocket::form::{Form, FromForm};
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, Either, State};
use serde_json::{json, Value};

use crate::accounts::login::end_session;
use crate::accounts::matrix::MatrixClient;
use crate::config::Config;
use crate::crypto::Keys;
use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::form::Page;
use crate::web::page::Ctx;

use super::authorize::{csp_allowing, with_query};
use super::clients::{self, Client};
use super::{claims, jwt, keys};
use crate::web::text::Text;

#[derive(Debug, Default, Clone, FromForm)]
pub struct LogoutParams {
    pub id_token_hint: Option<Text>,
    pub post_logout_redirect_uri: Option<Text>,
    pub state: Option<Text>,
    pub client_id: Option<Text>,
    pub ui_locales: Option<Text>,
}

/// What a request resolved to, once its parameters are checked.
struct Checked {
    client: Option<Client>,
    /// The `sub` of the hint, for the client it was issued to.
    hinted_sub: Option<String>,
    redirect: Option<String>,
}

fn error(ctx: &Ctx, key: &str) -> Page {
    Page {
        status: Status::BadRequest,
        ..Page::ok(ctx.render(
            "oidc/error",
            json!({ "message_key": key, "title_key": "logout.error.title" }),
        ))
    }
}

/// Verifies the hint: our signature (expired tokens are accepted, as the specification allows),
/// our issuer, an audience that is a registered client.
async fn check(
    conn: &mut diesel_async::AsyncPgConnection,
    config: &Config,
    p: &LogoutParams,
) -> Result<Result<Checked, &'static str>, AppError> {
    let mut client = None;
    let mut hinted_sub = None;
    if let Some(hint) = p.id_token_hint.as_deref().filter(|h| !h.is_empty()) {
        let jwks = keys::jwks(conn, Utc::now()).await?;
        // An ID token only: by its `typ`, and by its `exp` for signed userinfo answers made
        // before they had a `typ` of their own (they never carry one).
        let Ok(claims) = jwt::verify(hint, &jwks, jwt::Expect::IdToken) else {
            return Ok(Err("logout.error.hint"));
        };
        if !claims["exp"].is_i64() {
            return Ok(Err("logout.error.hint"));
        }
        let aud = match &claims["aud"] {
            Value::String(a) => Some(a.clone()),
            Value::Array(a) if a.len() == 1 => a[0].as_str().map(str::to_owned),
            _ => None,
        };
        if claims["iss"].as_str() != Some(config.public_url()) {
            return Ok(Err("logout.error.hint"));
        }
        let Some(aud) = aud else {
            return Ok(Err("logout.error.hint"));
        };
        if p.client_id.as_deref().is_some_and(|c| c != aud) {
            return Ok(Err("logout.error.client"));
        }
        client = clients::find(conn, &aud).await?;
        if client.is_none() {
            return Ok(Err("logout.error.client"));
        }
        hinted_sub = claims["sub"].as_str().map(str::to_owned);
    } else if let Some(id) = p.client_id.as_deref().filter(|c| !c.is_empty()) {
        client = clients::find(conn, id).await?;
        if client.is_none() {
            return Ok(Err("logout.error.client"));
        }
    }
    let redirect = match p
        .post_logout_redirect_uri
        .as_deref()
        .filter(|u| !u.is_empty())
    {
        None => None,
        Some(uri) => match &client {
            Some(c) if c.post_logout_redirect_uris().any(|r| r == uri) => {
                let mut pairs = Vec::new();
                if let Some(s) = p.state.as_deref() {
                    pairs.push(("state", s));
                }
                Some(if pairs.is_empty() {
                    uri.to_owned()
                } else {
                    with_query(uri, &pairs)
                })
            }
            _ => return Ok(Err("logout.error.redirect")),
        },
    };
    Ok(Ok(Checked {
        client,
        hinted_sub,
        redirect,
    }))
}

fn done(ctx: &Ctx, c: &Checked) -> Either<Page, Redirect> {
    match &c.redirect {
        Some(uri) => Either::Right(Redirect::to(uri.clone())),
        None => Either::Left(Page::ok(ctx.render(
            "oidc/logged_out",
            json!({ "client_name": c.client.as_ref().map(|c| c.name.clone()) }),
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn logout(
    mut ctx: Ctx,
    p: LogoutParams,
    cookies: &CookieJar<'_>,
    db: &Db,
    matrix: &MatrixClient,
    keys: &Keys,
    config: &Config,
) -> Result<Either<Page, Redirect>, AppError> {
    ctx.prefer_ui_locales(p.ui_locales.as_deref(), cookies);
    let mut conn = db.get().await?;
    let c = match check(&mut conn, config, &p).await? {
        Ok(c) => c,
        Err(key) => return Ok(Either::Left(error(&ctx, key))),
    };
    drop(conn);
    let Some(user) = ctx.user.clone() else {
        // Already logged out: nothing to confirm.
        return Ok(done(&ctx, &c));
    };
    let same_agent = match (&c.client, &c.hinted_sub) {
        (Some(client), Some(sub)) => {
            &claims::subject(
                keys,
                &client.subject_type,
                &client.client_id,
                &user.matrix_user_id,
            ) == sub
        }
        _ => false,
    };
    if same_agent {
        end_session(Some(&user), cookies, db, matrix, keys, config).await?;
        ctx.user = None;
        return Ok(done(&ctx, &c));
    }
    let origin = c
        .redirect
        .as_deref()
        .and_then(crate::config::origin_of)
        .unwrap_or_default();
    let page = ctx.render(
        "oidc/logout",
        json!({
            "client_name": c.client.as_ref().map(|c| c.name.clone()),
            "client_id": c.client.as_ref().map(|c| c.client_id.clone()),
            "post_logout_redirect_uri": p.post_logout_redirect_uri.filter(|_| c.redirect.is_some()),
            "state": p.state,
        }),
    );
    Ok(Either::Left(Page {
        csp: (!origin.is_empty()).then(|| csp_allowing(&origin)),
        ..Page::ok(page)
    }))
}

#[allow(clippy::too_many_arguments)]
#[get("/logout?<p..>")]
pub async fn logout_get(
    ctx: Ctx,
    p: LogoutParams,
    cookies: &CookieJar<'_>,
    db: &State<Db>,
    matrix: &State<MatrixClient>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<Either<Page, Redirect>, AppError> {
    logout(ctx, p, cookies, db, matrix, keys, config).await
}

/// A service may also send the agent here with a form POST (no CSRF token: it only leads to the
/// confirmation page, or ends the session the hint names).
#[allow(clippy::too_many_arguments)]
#[post("/logout", data = "<p>")]
pub async fn logout_post(
    ctx: Ctx,
    p: Form<LogoutParams>,
    cookies: &CookieJar<'_>,
    db: &State<Db>,
    matrix: &State<MatrixClient>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<Either<Page, Redirect>, AppError> {
    logout(ctx, p.into_inner(), cookies, db, matrix, keys, config).await
}

/// The agent confirmed on the page (CSRF-protected like every form of the portal).
#[allow(clippy::too_many_arguments)]
#[post("/logout/confirmer", data = "<p>")]
pub async fn confirm(
    mut ctx: Ctx,
    p: Form<LogoutParams>,
    cookies: &CookieJar<'_>,
    db: &State<Db>,
    matrix: &State<MatrixClient>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<Either<Page, Redirect>, AppError> {
    let p = LogoutParams {
        id_token_hint: None,
        ..p.into_inner()
    };
    let mut conn = db.get().await?;
    let c = match check(&mut conn, config, &p).await? {
        Ok(c) => c,
        Err(key) => return Ok(Either::Left(error(&ctx, key))),
    };
    drop(conn);
    end_session(ctx.user.as_ref(), cookies, db, matrix, keys, config).await?;
    ctx.user = None;
    Ok(done(&ctx, &c))
}
