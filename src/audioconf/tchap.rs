//! "Se connecter avec Tchap" for AudioConf: an OpenID Connect relying party on `rocket_oauth2`.
//!
//! `rocket_oauth2` keeps the `state` in a private cookie and performs the code exchange; everything
//! else OpenID Connect asks of a client is here: the issuer's discovery document, `nonce` and PKCE
//! (`S256`), and the ID token's verification (signature from the issuer's JWKS, `iss`, `aud`/`azp`,
//! `exp`, `iat`, `nonce`, `at_hash`), then the verified email from `userinfo` (same `sub`).
//!
//! The PKCE verifier must reach the token request, which `rocket_oauth2` makes from its own guard:
//! [`Returned`] runs that guard inside a task-local scope holding the verifier read from this
//! flow's private cookie, and the adapter reads it there.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use rocket::form::Form;
use rocket::http::uri::Absolute;
use rocket::http::{Cookie, CookieJar, SameSite, Status};
use rocket::request::{FromRequest, Outcome};
use rocket::response::Redirect;
use rocket::tokio::sync::Mutex;
use rocket::{get, post, Either, Request, State};
use rocket_oauth2::{Adapter, OAuth2, OAuthConfig, Provider, TokenRequest, TokenResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::accounts::matrix::percent_encode;
use crate::config::{origin_of, Config};
use crate::crypto::{self, Keys};
use crate::db::Db;
use crate::mail::Mailer;
use crate::oidc::authorize::with_query;
use crate::oidc::clients::{self, NewClient};
use crate::oidc::jwt;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::page::Ctx;
use crate::web::text::Text;

use super::booking::{self, BookError, NewConference};
use super::pages::{self, BookForm};
use super::{domains, request};

/// `rocket_oauth2`'s key type for this provider.
pub struct Tchap;

/// The client id the portal registers for itself outside release.
pub const DEV_CLIENT_ID: &str = "portail-audioconf";
/// Where the issuer sends the agent back.
pub const CALLBACK: &str = "/audioconf/tchap/retour";
/// This flow's private cookie: nonce, PKCE verifier and the agent's choice, for 10 minutes.
const COOKIE: &str = "audioconf_tchap";
const FLOW_TTL_SECS: i64 = 600;
/// How long the issuer's keys are trusted before being read again (sooner on an unknown `kid`).
const JWKS_TTL: Duration = Duration::from_secs(300);
/// Clock difference tolerated with the issuer.
const LEEWAY_SECS: i64 = 60;

rocket::tokio::task_local! {
    static PKCE_VERIFIER: String;
}

#[derive(Debug, thiserror::Error)]
pub enum RpError {
    #[error("issuer unreachable or answering badly: {0}")]
    Issuer(String),
    #[error("ID token refused: {0}")]
    IdToken(&'static str),
    #[error("userinfo refused: {0}")]
    Userinfo(&'static str),
    /// The account has no verified email to book with (the agent can use the email path).
    #[error("no verified email")]
    NoVerifiedEmail,
}

/// The endpoints read from the issuer's discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub userinfo_endpoint: String,
    pub jwks_uri: String,
}

/// The configured issuer, its metadata and keys (both cached).
pub struct Issuer {
    pub issuer: String,
    pub client_id: String,
    client_secret: String,
    pub redirect_uri: String,
    /// The portal registers this client at its own provider (development).
    pub dev_client: bool,
    http: reqwest::Client,
    metadata: RwLock<Option<Arc<Metadata>>>,
    jwks: Mutex<Option<(Value, Instant)>>,
}

impl Issuer {
    /// The issuer from the settings; `None` when the button cannot be offered (no client in
    /// release, or when the issuer is another one).
    pub fn from_config(config: &Config) -> Option<Issuer> {
        let dev = dev_client(config);
        let issuer = issuer_url(config);
        let (client_id, client_secret) = client_of(config)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.settings.matrix.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Issuer {
            issuer,
            client_id,
            client_secret,
            dev_client: dev,
            redirect_uri: format!("{}{CALLBACK}", config.public_url()),
            http,
            metadata: RwLock::new(None),
            jwks: Mutex::new(None),
        })
    }

    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    fn cached_metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata.read().ok().and_then(|m| m.clone())
    }

    /// The discovery document, read once; its `issuer` must be the configured one (Discovery §4.3).
    pub async fn metadata(&self) -> Result<Arc<Metadata>, RpError> {
        if let Some(m) = self.cached_metadata() {
            return Ok(m);
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let m: Metadata = self.get_json(&url).await?;
        if m.issuer.trim_end_matches('/') != self.issuer {
            return Err(RpError::Issuer(format!(
                "discovery names issuer {}",
                m.issuer
            )));
        }
        let m = Arc::new(m);
        if let Ok(mut slot) = self.metadata.write() {
            *slot = Some(m.clone());
        }
        Ok(m)
    }

    /// The issuer's JWKS, cached; `fresh` reads it again (a key the cache does not know).
    async fn jwks(&self, fresh: bool) -> Result<Value, RpError> {
        let mut cached = self.jwks.lock().await;
        if let Some((keys, at)) = cached.as_ref() {
            if !fresh && at.elapsed() < JWKS_TTL {
                return Ok(keys.clone());
            }
        }
        let uri = self.metadata().await?.jwks_uri.clone();
        let keys: Value = self.get_json(&uri).await?;
        *cached = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, RpError> {
        let res = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| RpError::Issuer(e.to_string()))?;
        if !res.status().is_success() {
            return Err(RpError::Issuer(format!("{url}: {}", res.status())));
        }
        res.json()
            .await
            .map_err(|e| RpError::Issuer(format!("{url}: {e}")))
    }

    /// Verifies the ID token of `tokens` and returns the agent's verified email from `userinfo`.
    pub async fn verified_email(
        &self,
        tokens: &TokenResponse<Tchap>,
        nonce: &str,
    ) -> Result<String, RpError> {
        let id_token = tokens.as_value()["id_token"]
            .as_str()
            .ok_or(RpError::IdToken("missing"))?;
        let expect = jwt::Expect::IdToken;
        let claims = match jwt::verify(id_token, &self.jwks(false).await?, expect) {
            Err(jwt::JwtError::UnknownKey) => {
                jwt::verify(id_token, &self.jwks(true).await?, expect)
            }
            other => other,
        }
        .map_err(|e| {
            RpError::IdToken(match e {
                jwt::JwtError::Critical => "crit",
                jwt::JwtError::WrongType => "typ",
                _ => "signature",
            })
        })?;
        check_claims(
            &claims,
            &self.issuer,
            &self.client_id,
            nonce,
            tokens.access_token(),
            Utc::now().timestamp(),
        )?;
        let userinfo_endpoint = self.metadata().await?.userinfo_endpoint.clone();
        let res = self
            .http
            .get(&userinfo_endpoint)
            .bearer_auth(tokens.access_token())
            .send()
            .await
            .map_err(|e| RpError::Issuer(e.to_string()))?;
        if !res.status().is_success() {
            return Err(RpError::Userinfo("refused"));
        }
        let info: Value = res
            .json()
            .await
            .map_err(|_| RpError::Userinfo("not JSON"))?;
        verified_email_of(&claims, &info)
    }
}

/// The configured issuer, or this portal.
fn issuer_url(config: &Config) -> String {
    config
        .settings
        .audioconf
        .tchap
        .issuer
        .as_deref()
        .unwrap_or(config.public_url())
        .trim_end_matches('/')
        .to_owned()
}

/// Whether the portal registers its own client: no client configured, the issuer is this portal,
/// and not in release.
fn dev_client(config: &Config) -> bool {
    config.settings.audioconf.tchap.client_id.is_none()
        && issuer_url(config) == config.public_url()
        && !config.release
}

/// Whether the booking form offers "Se connecter avec Tchap": a client is configured, or the
/// portal registers its own.
pub fn offered(config: &Config) -> bool {
    config.settings.audioconf.tchap.client_id.is_some() || dev_client(config)
}

/// The client to use at the issuer; `None`: the button is not offered.
fn client_of(config: &Config) -> Option<(String, String)> {
    let t = &config.settings.audioconf.tchap;
    match (&t.client_id, &t.client_secret) {
        (Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ if dev_client(config) => Some((
            DEV_CLIENT_ID.to_owned(),
            dev_client_secret(&Keys::new(&config.secret_key)),
        )),
        _ => None,
    }
}

/// The issuer's origin when it is not this portal: the booking form's CSP must allow going there.
pub fn foreign_origin(config: &Config) -> Option<String> {
    origin_of(&issuer_url(config)).filter(|o| *o != config.public_origin)
}

/// The checks of OpenID Connect Core §3.1.3.7 on a token whose signature is already verified.
pub fn check_claims(
    claims: &Value,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    access_token: &str,
    now: i64,
) -> Result<(), RpError> {
    if claims["iss"].as_str() != Some(issuer) {
        return Err(RpError::IdToken("iss"));
    }
    // Core §3.1.3.7 (3): refused if it lists an audience this client does not trust, and this
    // client trusts no other; an array holding only the client is fine.
    let audience_ok = match &claims["aud"] {
        Value::String(a) => a == client_id,
        Value::Array(list) => !list.is_empty() && list.iter().all(|a| a == client_id),
        _ => false,
    };
    if !audience_ok {
        return Err(RpError::IdToken("aud"));
    }
    // (5): when present, `azp` names this client.
    match claims.get("azp") {
        None => {}
        Some(Value::String(azp)) if azp == client_id => {}
        Some(_) => return Err(RpError::IdToken("azp")),
    }
    match claims["exp"].as_i64() {
        Some(exp) if exp + LEEWAY_SECS > now => {}
        _ => return Err(RpError::IdToken("exp")),
    }
    match claims["iat"].as_i64() {
        Some(iat) if iat <= now + LEEWAY_SECS => {}
        _ => return Err(RpError::IdToken("iat")),
    }
    let sent = claims["nonce"].as_str().unwrap_or_default();
    if sent.is_empty() || !crypto::constant_time_eq(sent.as_bytes(), nonce.as_bytes()) {
        return Err(RpError::IdToken("nonce"));
    }
    if let Some(at_hash) = claims["at_hash"].as_str() {
        let hash = crypto::sha256(access_token.as_bytes());
        if !crypto::constant_time_eq(at_hash.as_bytes(), crypto::b64url(&hash[..16]).as_bytes()) {
            return Err(RpError::IdToken("at_hash"));
        }
    }
    Ok(())
}

/// The email `userinfo` vouches for, for the same subject as the ID token (Core §5.3.2).
pub fn verified_email_of(claims: &Value, userinfo: &Value) -> Result<String, RpError> {
    if claims["sub"].as_str().is_none() || userinfo["sub"] != claims["sub"] {
        return Err(RpError::Userinfo("sub"));
    }
    if userinfo["email_verified"] != json!(true) {
        return Err(RpError::NoVerifiedEmail);
    }
    userinfo["email"]
        .as_str()
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.trim().to_owned())
        .ok_or(RpError::NoVerifiedEmail)
}

/// The development client's secret: derived from the portal's key, so stable across restarts.
pub fn dev_client_secret(keys: &Keys) -> String {
    crypto::b64url(&keys.derive("audioconf-dev-client-secret"))
}

/// Registers the development client at this portal's own provider, with the issuer's secret.
pub async fn register_dev_client(db: &Db, issuer: &Issuer) -> Result<(), String> {
    let mut conn = db.get().await.map_err(|e| e.to_string())?;
    let new = NewClient {
        name: "AudioConf (Portail Tchap)".into(),
        redirect_uris: vec![issuer.redirect_uri.clone()],
        post_logout_redirect_uris: vec![],
        public: false,
        subject_type: "pairwise".into(),
        id_token_alg: "RS256".into(),
        userinfo_signed: false,
    };
    clients::upsert_own(
        &mut conn,
        &issuer.client_id,
        &issuer.client_secret,
        &new,
        Utc::now(),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// The issuer's endpoints for `rocket_oauth2`, read from the cached discovery document (the
/// starting route loads it first).
pub struct DiscoveredProvider(pub Arc<Issuer>);

impl Provider for DiscoveredProvider {
    fn auth_uri(&self) -> Cow<'_, str> {
        Cow::Owned(
            self.0
                .cached_metadata()
                .map(|m| m.authorization_endpoint.clone())
                .unwrap_or_default(),
        )
    }

    fn token_uri(&self) -> Cow<'_, str> {
        Cow::Owned(
            self.0
                .cached_metadata()
                .map(|m| m.token_endpoint.clone())
                .unwrap_or_default(),
        )
    }
}

/// `rocket_oauth2`'s adapter over the portal's HTTP client (timeouts, native TLS), adding the
/// PKCE verifier to the code exchange.
pub struct ReqwestAdapter(pub Arc<Issuer>);

fn oauth_error(kind: rocket_oauth2::ErrorKind, why: impl Into<String>) -> rocket_oauth2::Error {
    rocket_oauth2::Error::new_from(kind, why.into())
}

#[rocket::async_trait]
impl Adapter for ReqwestAdapter {
    fn authorization_uri(
        &self,
        config: &OAuthConfig,
        state: &str,
        scopes: &[&str],
        extras: &[(&str, &str)],
    ) -> Result<Absolute<'static>, rocket_oauth2::Error> {
        let endpoint = config.provider().auth_uri().into_owned();
        let scope = scopes.join(" ");
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", config.client_id()),
            ("scope", scope.as_str()),
            ("state", state),
        ];
        if let Some(r) = config.redirect_uri() {
            pairs.push(("redirect_uri", r));
        }
        pairs.extend_from_slice(extras);
        let uri = with_query(&endpoint, &pairs);
        Absolute::parse_owned(uri.clone())
            .map_err(|_| oauth_error(rocket_oauth2::ErrorKind::InvalidUri(uri), "bad URI"))
    }

    async fn exchange_code(
        &self,
        config: &OAuthConfig,
        token: TokenRequest,
    ) -> Result<TokenResponse<()>, rocket_oauth2::Error> {
        use rocket_oauth2::ErrorKind::{ExchangeError, ExchangeFailure};
        let TokenRequest::AuthorizationCode(code) = token else {
            return Err(oauth_error(ExchangeFailure, "only codes are exchanged"));
        };
        let verifier = PKCE_VERIFIER
            .try_with(Clone::clone)
            .map_err(|_| oauth_error(ExchangeFailure, "no PKCE verifier in scope"))?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", verifier.as_str()),
        ];
        if let Some(r) = config.redirect_uri() {
            form.push(("redirect_uri", r));
        }
        let res = self
            .0
            .http
            .post(config.provider().token_uri().as_ref())
            // RFC 6749 §2.3.1: each part form-urlencoded before Basic.
            .basic_auth(
                percent_encode(config.client_id()),
                Some(percent_encode(config.client_secret())),
            )
            .form(&form)
            .send()
            .await
            .map_err(|e| oauth_error(ExchangeFailure, e.to_string()))?;
        if !res.status().is_success() {
            return Err(oauth_error(ExchangeError(res.status().as_u16()), "refused"));
        }
        let body: Value = res
            .json()
            .await
            .map_err(|e| oauth_error(ExchangeFailure, e.to_string()))?;
        TokenResponse::try_from(body)
    }
}

/// What the flow's private cookie keeps between leaving for the issuer and coming back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flow {
    nonce: String,
    verifier: String,
    when: String,
    day: String,
    duration: String,
    expires: i64,
}

impl Flow {
    fn form(&self) -> BookForm {
        BookForm {
            email: Text::empty(),
            when: Text::from(self.when.as_str()),
            day: Text::from(self.day.as_str()),
            duration: Text::from(self.duration.as_str()),
        }
    }
}

/// "Se connecter avec Tchap" on the booking form: checks the choice, then leaves for the issuer.
#[post("/audioconf/tchap", data = "<form>")]
pub async fn start(
    ctx: Ctx,
    form: Form<BookForm>,
    oauth2: OAuth2<Tchap>,
    issuer: &State<Arc<Issuer>>,
    cookies: &CookieJar<'_>,
    config: &State<Config>,
) -> Result<Either<Redirect, Page>, AppError> {
    let settings = &config.settings.audioconf;
    let form = form.into_inner();
    let mut errors = FieldErrors::default();
    let chosen = pages::choice(&form, settings, ctx.lang, &mut errors);
    if settings.numbers.is_empty() {
        errors.form(ctx.lang.t("audioconf.unavailable"));
    }
    if chosen.is_none() || !errors.is_empty() {
        let page = pages::form_page(&ctx, config, &form, &errors, Status::UnprocessableEntity);
        return Ok(Either::Right(page));
    }
    if let Err(e) = issuer.metadata().await {
        tracing::warn!(error = %e, "audioconf: Tchap issuer unavailable");
        errors.form(ctx.lang.t("audioconf.tchap.unavailable"));
        let page = pages::form_page(&ctx, config, &form, &errors, Status::ServiceUnavailable);
        return Ok(Either::Right(page));
    }
    let flow = Flow {
        nonce: crypto::random_token(32)?,
        verifier: crypto::random_token(32)?,
        when: form.when.to_string(),
        day: form.day.to_string(),
        duration: form.duration.to_string(),
        expires: Utc::now().timestamp() + FLOW_TTL_SECS,
    };
    let challenge = crypto::b64url(&crypto::sha256(flow.verifier.as_bytes()));
    let value = serde_json::to_string(&flow).map_err(|e| AppError::Internal(e.to_string()))?;
    cookies.add_private(
        Cookie::build((COOKIE, value))
            .path("/audioconf")
            .same_site(SameSite::Lax)
            .http_only(true)
            .secure(config.release)
            .max_age(rocket::time::Duration::seconds(FLOW_TTL_SECS)),
    );
    let redirect = oauth2
        .get_redirect_extras(
            cookies,
            &["openid", "email"],
            &[
                ("nonce", &flow.nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("ui_locales", ctx.lang.code()),
            ],
        )
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Either::Left(redirect))
}

/// The issuer's answer, the code already exchanged (with the PKCE verifier) when there was one.
pub enum Returned {
    Tokens(Box<TokenResponse<Tchap>>, Flow),
    /// The agent refused or cancelled at the issuer.
    Refused(Option<Flow>),
    /// No flow (expired, cookie blocked, replayed) or a failed exchange.
    Failed(Option<Flow>),
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Returned {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let cookies = req.cookies();
        let flow = cookies
            .get_private(COOKIE)
            .and_then(|c| serde_json::from_str::<Flow>(c.value()).ok())
            .filter(|f| f.expires > Utc::now().timestamp());
        // Single use: whatever happens next, this flow is over.
        cookies.remove_private(Cookie::build(COOKIE).path("/audioconf"));
        if req.query_value::<&str>("error").is_some() {
            return Outcome::Success(Returned::Refused(flow));
        }
        let Some(flow) = flow else {
            return Outcome::Success(Returned::Failed(None));
        };
        let exchanged = PKCE_VERIFIER
            .scope(
                flow.verifier.clone(),
                TokenResponse::<Tchap>::from_request(req),
            )
            .await;
        Outcome::Success(match exchanged {
            Outcome::Success(tokens) => Returned::Tokens(Box::new(tokens), flow),
            Outcome::Error((_, e)) => {
                tracing::warn!(error = %e, "audioconf: Tchap code exchange failed");
                Returned::Failed(Some(flow))
            }
            Outcome::Forward(_) => Returned::Failed(Some(flow)),
        })
    }
}

fn back_to_form(
    ctx: &Ctx,
    config: &Config,
    flow: Option<&Flow>,
    message: &str,
    status: Status,
) -> Page {
    let form = flow.map(Flow::form).unwrap_or_default();
    let mut errors = FieldErrors::default();
    errors.form(ctx.lang.t(message));
    pages::form_page(ctx, config, &form, &errors, status)
}

/// Back from the issuer: verify, then book with the verified email and show the details.
#[allow(clippy::too_many_arguments)]
#[get("/audioconf/tchap/retour")]
pub async fn callback(
    ctx: Ctx,
    returned: Returned,
    issuer: &State<Arc<Issuer>>,
    db: &State<Db>,
    keys: &State<Keys>,
    mailer: &State<Mailer>,
    config: &State<Config>,
) -> Result<Page, AppError> {
    let settings = &config.settings.audioconf;
    let (tokens, flow) = match returned {
        Returned::Tokens(t, f) => (t, f),
        Returned::Refused(f) => {
            return Ok(back_to_form(
                &ctx,
                config,
                f.as_ref(),
                "audioconf.tchap.refused",
                Status::Ok,
            ))
        }
        Returned::Failed(f) => {
            return Ok(back_to_form(
                &ctx,
                config,
                f.as_ref(),
                "audioconf.tchap.failed",
                Status::BadRequest,
            ))
        }
    };
    let email = match issuer.verified_email(&tokens, &flow.nonce).await {
        Ok(email) => email,
        Err(e) => {
            tracing::warn!(error = %e, "audioconf: Tchap answer refused");
            let key = match e {
                RpError::NoVerifiedEmail => "audioconf.tchap.no_email",
                _ => "audioconf.tchap.failed",
            };
            return Ok(back_to_form(
                &ctx,
                config,
                Some(&flow),
                key,
                Status::BadRequest,
            ));
        }
    };
    let form = flow.form();
    let mut errors = FieldErrors::default();
    let Some(chosen) = pages::choice(&form, settings, ctx.lang, &mut errors) else {
        return Ok(pages::form_page(
            &ctx,
            config,
            &form,
            &errors,
            Status::UnprocessableEntity,
        ));
    };
    let mut conn = db.get().await?;
    if !domains::allowed(&mut conn, &settings.domains, &email).await? {
        errors.form(ctx.lang.tf(
            "audioconf.form.email.refused",
            &[
                ("domain", &domains::domain_of(&email).unwrap_or_default()),
                ("contact", &settings.access_contact),
            ],
        ));
        return Ok(pages::form_page(
            &ctx,
            config,
            &form,
            &errors,
            Status::Forbidden,
        ));
    }
    let now = Utc::now();
    let mac = booking::email_hmac(keys, &email);
    if request::over_email_limit(&mut conn, settings, &mac, now).await? {
        errors.form(ctx.lang.t("audioconf.limit.email"));
        return Ok(pages::form_page(
            &ctx,
            config,
            &form,
            &errors,
            Status::TooManyRequests,
        ));
    }
    let new = NewConference {
        email: &email,
        period: chosen.period(now),
        via: "tchap",
        lang: ctx.lang,
    };
    match booking::book(&mut conn, keys, settings, mailer, new, now).await {
        Ok(created) => {
            mailer.wake.notify_one();
            tracing::info!(conference = %created.public_id, via = "tchap", "audioconf: conference booked");
            Ok(Page::ok(ctx.render(
                "audioconf/details",
                pages::details(&ctx, settings, &created, &email),
            )))
        }
        Err(BookError::Exhausted) | Err(BookError::NoNumbers) => {
            errors.form(ctx.lang.t("audioconf.tchap.exhausted"));
            Ok(pages::form_page(
                &ctx,
                config,
                &form,
                &errors,
                Status::ServiceUnavailable,
            ))
        }
        Err(e) => Err(pages::book_failure(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Value {
        let at = "access";
        let hash = crypto::sha256(at.as_bytes());
        json!({
            "iss": "https://id.example", "aud": "rp", "sub": "s1", "nonce": "n1",
            "exp": 1_000_600, "iat": 1_000_000, "at_hash": crypto::b64url(&hash[..16]),
        })
    }

    fn check(c: &Value) -> Result<(), RpError> {
        check_claims(c, "https://id.example", "rp", "n1", "access", 1_000_100)
    }

    #[test]
    fn id_token_claims_must_name_this_client_this_issuer_and_this_nonce() {
        assert!(check(&claims()).is_ok());
        for (field, value, why) in [
            ("iss", json!("https://other.example"), "iss"),
            ("aud", json!("someone-else"), "aud"),
            ("aud", json!(["rp", "other"]), "aud"),
            ("aud", json!(["other", "rp"]), "aud"),
            ("aud", json!([]), "aud"),
            ("aud", Value::Null, "aud"),
            ("azp", json!("other"), "azp"),
            ("azp", json!(["rp"]), "azp"),
            ("exp", json!(1_000_000), "exp"),
            ("iat", json!(1_000_500), "iat"),
            ("nonce", json!("n2"), "nonce"),
            ("nonce", Value::Null, "nonce"),
            ("at_hash", json!("AAAA"), "at_hash"),
        ] {
            let mut c = claims();
            c[field] = value;
            match check(&c) {
                Err(RpError::IdToken(w)) => assert_eq!(w, why, "{field}"),
                other => panic!("{field}: {other:?}"),
            }
        }
        // More audiences than the client: refused even when `azp` names the client.
        let mut c = claims();
        c["aud"] = json!(["rp", "other"]);
        c["azp"] = json!("rp");
        assert!(matches!(check(&c), Err(RpError::IdToken("aud"))));
        // Only the client, as an array, with or without `azp`.
        let mut c = claims();
        c["aud"] = json!(["rp"]);
        assert!(check(&c).is_ok());
        c["azp"] = json!("rp");
        assert!(check(&c).is_ok());
    }

    #[test]
    fn the_email_comes_from_userinfo_for_the_same_subject_and_verified() {
        let c = claims();
        let ok = json!({"sub": "s1", "email": "a@b.gouv.fr", "email_verified": true});
        assert_eq!(verified_email_of(&c, &ok).expect("email"), "a@b.gouv.fr");
        let other = json!({"sub": "s2", "email": "a@b.gouv.fr", "email_verified": true});
        assert!(verified_email_of(&c, &other).is_err());
        let unverified = json!({"sub": "s1", "email": "a@b.gouv.fr", "email_verified": false});
        assert!(verified_email_of(&c, &unverified).is_err());
        assert!(verified_email_of(&c, &json!({"sub": "s1", "email_verified": true})).is_err());
    }
}
