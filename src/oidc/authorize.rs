//! `/authorize` (GET and POST) and the consent page.
//!
//! An unknown client or a redirect URI not registered exactly gets an error page, never a redirect.
//! Every other error goes back to the service with `error`, `state` and `iss` (RFC 9207).

use chrono::{Duration, Utc};
use rocket::form::{Form, FromForm};
use rocket::http::{CookieJar, Header, Status};
use rocket::response::{self, Redirect, Responder};
use rocket::{get, post, Request, State};
use rocket_dyn_templates::Template;
use serde::Serialize;
use serde_json::json;

use crate::accounts::matrix::percent_encode;
use crate::accounts::session::CurrentUser;
use crate::config::Config;
use crate::crypto::{self, Keys, Stable};
use crate::db::Db;
use crate::web::errors::AppError;
use crate::web::headers::CSP;
use crate::web::page::Ctx;

use super::clients::{self, Client};
use super::{claims, grants};
use crate::web::text::Text;

/// The request's parameters; unknown ones are ignored.
#[derive(Debug, Clone, Default, FromForm, Serialize)]
pub struct AuthParams {
    pub response_type: Option<Text>,
    pub client_id: Option<Text>,
    pub redirect_uri: Option<Text>,
    pub scope: Option<Text>,
    pub state: Option<Text>,
    pub nonce: Option<Text>,
    pub code_challenge: Option<Text>,
    pub code_challenge_method: Option<Text>,
    pub prompt: Option<Text>,
    pub max_age: Option<Text>,
    pub login_hint: Option<Text>,
    pub ui_locales: Option<Text>,
    pub acr_values: Option<Text>,
    pub request: Option<Text>,
    pub request_uri: Option<Text>,
    /// Set by the portal when it sends the agent to log in again: a login at or after this time
    /// satisfies `prompt=login` and `max_age`.
    #[field(name = "_fresh")]
    #[serde(rename = "_fresh")]
    pub fresh: Option<i64>,
}

impl AuthParams {
    /// The `prompt` values (`none`, `login`, `consent`).
    pub fn prompts(&self) -> Vec<&str> {
        self.prompt
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .collect()
    }

    /// The parameters as a query string, to come back to `/authorize` after logging in.
    pub fn to_query(&self) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        let mut pairs = Vec::new();
        if let Some(map) = v.as_object() {
            for (k, v) in map {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                pairs.push(format!("{k}={}", percent_encode(&s)));
            }
        }
        pairs.join("&")
    }
}

/// What `/authorize` answers.
pub enum AuthResponse {
    Redirect(Redirect),
    /// An error page (unknown client or redirect URI).
    Error(Status, Template),
    /// The consent page, whose form may redirect to the service: its CSP allows that origin.
    Consent(String, Template),
}

impl<'r> Responder<'r, 'static> for AuthResponse {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        match self {
            AuthResponse::Redirect(r) => r.respond_to(req),
            AuthResponse::Error(status, t) => {
                let mut res = t.respond_to(req)?;
                res.set_status(status);
                Ok(res)
            }
            AuthResponse::Consent(origin, t) => {
                let mut res = t.respond_to(req)?;
                res.set_header(Header::new(
                    "Content-Security-Policy",
                    csp_allowing(&origin),
                ));
                Ok(res)
            }
        }
    }
}

/// The page CSP, with `form-action` also allowing `origin` (browsers check the redirect that
/// follows a form POST against it).
pub fn csp_allowing(origin: &str) -> String {
    CSP.replace(
        "form-action 'self'",
        &format!("form-action 'self' {origin}"),
    )
}

/// Builds `uri?k=v&…` (or `&…` when it already has a query).
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    format!("{uri}{sep}{}", q.join("&"))
}

struct Checked {
    client: Client,
    redirect_uri: String,
    scopes: Vec<String>,
    /// What the logged-in agent approved for this client before, if anything.
    consented: Option<Vec<Option<String>>>,
}

fn error_page(ctx: &Ctx, key: &str) -> AuthResponse {
    AuthResponse::Error(
        Status::BadRequest,
        ctx.render("oidc/error", json!({ "message_key": key })),
    )
}

/// Back to the service with `pairs`, its `state` and our `iss` (RFC 9207).
fn back_to_service<'a>(
    issuer: &'a str,
    redirect_uri: &str,
    p: &'a AuthParams,
    mut pairs: Vec<(&'a str, &'a str)>,
) -> AuthResponse {
    if let Some(s) = p.state.as_deref() {
        pairs.push(("state", s));
    }
    pairs.push(("iss", issuer));
    AuthResponse::Redirect(Redirect::to(with_query(redirect_uri, &pairs)))
}

fn redirect_error(
    issuer: &str,
    redirect_uri: &str,
    p: &AuthParams,
    error: &str,
    description: &str,
) -> AuthResponse {
    back_to_service(
        issuer,
        redirect_uri,
        p,
        vec![("error", error), ("error_description", description)],
    )
}

/// Steps 1–3: the client and its redirect URI (errors shown here), then the request itself
/// (errors sent back to the service).
async fn check(
    ctx: &Ctx,
    p: &AuthParams,
    conn: &mut diesel_async::AsyncPgConnection,
    issuer: &str,
) -> Result<Result<Checked, AuthResponse>, AppError> {
    let user = ctx.user.as_ref().map(|u| u.matrix_user_id.as_str());
    let found = match p.client_id.as_deref() {
        Some(id) => grants::client_with_consent(conn, id, user).await?,
        None => None,
    };
    let Some((client, consented)) = found else {
        return Ok(Err(error_page(ctx, "oidc.error.client")));
    };
    let Some(redirect_uri) = p
        .redirect_uri
        .clone()
        .filter(|r| client.has_redirect_uri(r))
    else {
        return Ok(Err(error_page(ctx, "oidc.error.redirect_uri")));
    };
    let fail = |e: &str, d: &str| Ok(Err(redirect_error(issuer, &redirect_uri, p, e, d)));
    if p.request.is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if p.request_uri.is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    match p.response_type.as_deref() {
        Some("code") => {}
        None => return fail("invalid_request", "response_type is required"),
        Some(_) => {
            return fail(
                "unsupported_response_type",
                "only response_type=code is supported",
            )
        }
    }
    let scopes = claims::known_scopes(p.scope.as_deref().unwrap_or(""));
    if scopes.first().map(String::as_str) != Some("openid") {
        return fail("invalid_scope", "scope must contain openid");
    }
    match (
        p.code_challenge.as_deref(),
        p.code_challenge_method.as_deref(),
    ) {
        (Some(c), Some("S256")) if c.len() >= 43 && c.len() <= 128 => {}
        (Some(_), Some("S256")) => {
            return fail(
                "invalid_request",
                "code_challenge must be 43 to 128 characters",
            )
        }
        (Some(_), None) | (Some(_), Some("plain")) => {
            return fail(
                "invalid_request",
                "code_challenge_method must be S256 (plain is refused)",
            )
        }
        (Some(_), Some(_)) => return fail("invalid_request", "code_challenge_method must be S256"),
        (None, Some(_)) => return fail("invalid_request", "code_challenge is missing"),
        (None, None) if client.public => {
            return fail("invalid_request", "PKCE (S256) is required for this client")
        }
        (None, None) => {}
    }
    if let Some(m) = p.max_age.as_deref() {
        if m.parse::<u64>().is_err() {
            return fail("invalid_request", "max_age must be a number of seconds");
        }
    }
    let prompts = p.prompts();
    if prompts.contains(&"none") && prompts.len() > 1 {
        return fail("invalid_request", "prompt=none cannot be combined");
    }
    Ok(Ok(Checked {
        client,
        redirect_uri: redirect_uri.into_inner(),
        scopes,
        consented,
    }))
}

/// The session identifier a service sees (`sid`): not the row id itself.
pub fn sid(keys: &Keys, session_id: i64) -> String {
    crypto::b64url(&keys.stable(Stable::Sid).mac(&session_id.to_be_bytes()))
}

/// Issues the code and sends the agent back to the service.
async fn approve(
    conn: &mut diesel_async::AsyncPgConnection,
    keys: &Keys,
    config: &Config,
    user: &CurrentUser,
    c: &Checked,
    p: &AuthParams,
) -> Result<AuthResponse, AppError> {
    let now = Utc::now();
    let values = claims::values(user, &c.scopes);
    let code = grants::issue_code(
        conn,
        grants::NewGrant {
            client_id: &c.client.client_id,
            matrix_user_id: &user.matrix_user_id,
            sid: &sid(keys, user.id),
            scopes: &c.scopes,
            claims: &values,
            nonce: p.nonce.as_deref(),
            auth_time: user.auth_time,
            amr: user.amr.iter().flatten().cloned().collect(),
            redirect_uri: &c.redirect_uri,
            code_challenge: p.code_challenge.as_deref(),
        },
        Duration::seconds(config.settings.oidc.code_ttl_secs),
        now,
    )
    .await?;
    tracing::info!(client = %c.client.client_id, "authorization code issued");
    Ok(back_to_service(
        config.public_url(),
        &c.redirect_uri,
        p,
        vec![("code", code.as_str())],
    ))
}

async fn authorize(
    mut ctx: Ctx,
    p: AuthParams,
    cookies: &CookieJar<'_>,
    db: &Db,
    keys: &Keys,
    config: &Config,
) -> Result<AuthResponse, AppError> {
    let issuer = config.public_url();
    ctx.prefer_ui_locales(p.ui_locales.as_deref(), cookies);
    let mut conn = db.get().await?;
    let c = match check(&ctx, &p, &mut conn, issuer).await? {
        Ok(c) => c,
        Err(response) => return Ok(response),
    };
    let now = Utc::now();
    let prompts = p.prompts();
    let max_age = p.max_age.as_deref().and_then(|m| m.parse::<i64>().ok());
    let user = ctx.user.clone();
    let fresh = |u: &CurrentUser| p.fresh.is_some_and(|f| u.auth_time.timestamp() >= f);
    let must_log_in = match &user {
        None => true,
        Some(u) if fresh(u) => false,
        Some(u) => {
            prompts.contains(&"login")
                || max_age.is_some_and(|m| (now - u.auth_time).num_seconds() >= m.max(1))
        }
    };
    let user = match user {
        Some(u) if !must_log_in => u,
        _ if prompts.contains(&"none") => {
            return Ok(redirect_error(
                issuer,
                &c.redirect_uri,
                &p,
                "login_required",
                "the agent must log in",
            ));
        }
        logged_in => {
            let mut back = p.clone();
            if logged_in.is_some() || prompts.contains(&"login") || max_age.is_some() {
                back.fresh = Some(now.timestamp());
            }
            let next = format!("/authorize?{}", back.to_query());
            let mut pairs = vec![("next", next.as_str())];
            if let Some(h) = p.login_hint.as_deref() {
                pairs.push(("login_hint", h));
            }
            if logged_in.is_some() {
                pairs.push(("force", "1"));
            }
            return Ok(AuthResponse::Redirect(Redirect::to(with_query(
                "/connexion",
                &pairs,
            ))));
        }
    };
    // Read with the client, for this same agent (`ctx.user`).
    let remembered = grants::consent_covers(c.consented.as_deref(), &c.scopes);
    if remembered && !prompts.contains(&"consent") {
        return approve(&mut conn, keys, config, &user, &c, &p).await;
    }
    if prompts.contains(&"none") {
        return Ok(redirect_error(
            issuer,
            &c.redirect_uri,
            &p,
            "consent_required",
            "the agent has not approved this service",
        ));
    }
    let values = claims::values(&user, &c.scopes);
    let mut rows = claims::labelled(ctx.lang, &values);
    if values.get("email").is_none() && c.scopes.iter().any(|s| s == "email") {
        rows.push((
            ctx.lang.t("claim.email").to_owned(),
            ctx.lang.t("claim.none").to_owned(),
        ));
    }
    let origin = crate::config::origin_of(&c.redirect_uri).unwrap_or_default();
    let page = ctx.render(
        "oidc/consent",
        json!({
            "client_name": c.client.name,
            "client_origin": origin,
            "claims": rows,
            "authz": p.to_query(),
        }),
    );
    Ok(AuthResponse::Consent(origin, page))
}

#[get("/authorize?<p..>")]
pub async fn authorize_get(
    ctx: Ctx,
    p: AuthParams,
    cookies: &CookieJar<'_>,
    db: &State<Db>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<AuthResponse, AppError> {
    authorize(ctx, p, cookies, db, keys, config).await
}

#[post("/authorize", data = "<p>")]
pub async fn authorize_post(
    ctx: Ctx,
    p: Form<AuthParams>,
    cookies: &CookieJar<'_>,
    db: &State<Db>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<AuthResponse, AppError> {
    authorize(ctx, p.into_inner(), cookies, db, keys, config).await
}

#[derive(FromForm)]
pub struct ConsentForm {
    #[field(default = String::new())]
    authz: String,
    #[field(default = String::new())]
    decision: String,
}

/// The agent's answer on the consent page.
#[post("/authorize/consent", data = "<form>")]
pub async fn consent(
    ctx: Ctx,
    form: Form<ConsentForm>,
    db: &State<Db>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<AuthResponse, AppError> {
    let p: AuthParams = Form::<AuthParams>::parse_encoded(rocket::http::RawStr::new(&form.authz))
        .unwrap_or_default();
    let issuer = config.public_url();
    let mut conn = db.get().await?;
    let c = match check(&ctx, &p, &mut conn, issuer).await? {
        Ok(c) => c,
        Err(response) => return Ok(response),
    };
    let Some(user) = ctx.user.clone() else {
        // The session ended on the consent page: start over through the login.
        return Ok(AuthResponse::Redirect(Redirect::to(with_query(
            "/connexion",
            &[("next", &format!("/authorize?{}", p.to_query()))],
        ))));
    };
    if form.decision != "approve" {
        tracing::info!(client = %c.client.client_id, "consent refused");
        return Ok(redirect_error(
            issuer,
            &c.redirect_uri,
            &p,
            "access_denied",
            "the agent refused",
        ));
    }
    grants::remember_consent(
        &mut conn,
        &c.client.client_id,
        &user.matrix_user_id,
        &c.scopes,
        Utc::now(),
    )
    .await?;
    approve(&mut conn, keys, config, &user, &c, &p).await
}

/// For the login page: when it will send the agent on to `/authorize`, the origin of the service it
/// may end at (a form's redirects must be allowed by `form-action`).
pub async fn service_origin_for(
    conn: &mut diesel_async::AsyncPgConnection,
    next: &str,
) -> Option<String> {
    let query = next.strip_prefix("/authorize?")?;
    let p: AuthParams = Form::<AuthParams>::parse_encoded(rocket::http::RawStr::new(query)).ok()?;
    let client = clients::find(conn, p.client_id.as_deref()?).await.ok()??;
    let uri = p.redirect_uri.filter(|r| client.has_redirect_uri(r))?;
    crate::config::origin_of(&uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_survive_the_round_trip_through_the_consent_form() {
        let p = AuthParams {
            client_id: Some("abc".into()),
            redirect_uri: Some("https://rp.example.gouv.fr/cb?x=1&y=2".into()),
            scope: Some("openid email".into()),
            state: Some("a b&c=d".into()),
            fresh: Some(1700000000),
            ..<AuthParams as Default>::default()
        };
        let back: AuthParams =
            Form::<AuthParams>::parse_encoded(rocket::http::RawStr::new(&p.to_query()))
                .expect("parses");
        assert_eq!(back.client_id, p.client_id);
        assert_eq!(back.redirect_uri, p.redirect_uri);
        assert_eq!(back.scope, p.scope);
        assert_eq!(back.state, p.state);
        assert_eq!(back.fresh, p.fresh);
    }
}
