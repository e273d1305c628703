//! `/connexion` (log in with a Tchap account) and `/deconnexion` (log out).

use chrono::Utc;
use rocket::form::Form;
use rocket::http::{CookieJar, Status};
use rocket::response::Redirect;
use rocket::{get, post, Either, FromForm, State};
use serde_json::json;

use crate::accounts::matrix::{Identifier, MatrixClient, MatrixError};
use crate::accounts::session::{self, CurrentUser, NewLogin};
use crate::accounts::throttle;
use crate::config::Config;
use crate::crypto::Keys;
use crate::db::Db;
use crate::web::client::ClientAddr;
use crate::web::csrf;
use crate::web::errors::AppError;
use crate::web::form::{FieldErrors, Page};
use crate::web::page::Ctx;
use crate::web::pages::local_path;
use crate::web::text::Text;

/// What the encrypted Matrix token is bound to, so a sealed token cannot be moved to another row.
pub const TOKEN_PURPOSE: &str = "matrix-access-token";

pub fn token_aad(user_id: &str, device_id: &str) -> Vec<u8> {
    format!("{user_id}|{device_id}").into_bytes()
}

/// A session's Matrix access token, opened (it is sealed bound to its user and device).
pub fn open_access_token(
    keys: &Keys,
    matrix_user_id: &str,
    device_id: &str,
    sealed: &[u8],
) -> Result<String, AppError> {
    let plain = keys.decrypt(TOKEN_PURPOSE, sealed, &token_aad(matrix_user_id, device_id))?;
    String::from_utf8(plain).map_err(|_| AppError::Internal("token is not UTF-8".into()))
}

impl CurrentUser {
    /// The agent's Matrix access token, decrypted.
    pub fn access_token(&self, keys: &Keys) -> Result<String, AppError> {
        open_access_token(
            keys,
            &self.matrix_user_id,
            &self.device_id,
            &self.access_token_enc,
        )
    }
}

#[derive(Debug, FromForm)]
pub struct LoginForm {
    #[field(default = Text::empty())]
    pub identifier: Text,
    #[field(default = Text::empty())]
    pub password: Text,
    #[field(default = Text::empty())]
    pub next: Text,
}

fn render(
    ctx: &Ctx,
    identifier: &str,
    next: &str,
    errors: &FieldErrors,
) -> rocket_dyn_templates::Template {
    ctx.render(
        "accounts/login",
        json!({
            "identifier": identifier,
            "next": next,
            "errors": errors,
            "form_errors": !errors.is_empty(),
        }),
    )
}

/// When the login leads on to a service (OpenID), the form's redirects end there: allow it.
async fn with_service_csp(db: &Db, next: &str, mut page: Page) -> Page {
    if !next.starts_with("/authorize?") {
        return page;
    }
    if let Ok(mut conn) = db.get().await {
        page.csp = crate::oidc::authorize::service_origin_for(&mut conn, next)
            .await
            .map(|origin| crate::oidc::authorize::csp_allowing(&origin));
    }
    page
}

/// `force=1`: log in again although a session exists (OpenID `prompt=login`, `max_age`).
/// `fin=1`: the Tchap session was ended elsewhere (its token revoked); the page says so.
#[get("/connexion?<next>&<login_hint>&<force>&<fin>")]
pub async fn login_page(
    ctx: Ctx,
    next: Option<&str>,
    login_hint: Option<&str>,
    force: Option<&str>,
    fin: Option<&str>,
    db: &State<Db>,
) -> Either<Page, Redirect> {
    let next = local_path(next);
    if ctx.user.is_some() && force.is_none() {
        return Either::Right(Redirect::to(next));
    }
    let mut notice = FieldErrors::default();
    if fin.is_some() {
        notice.form(ctx.lang.t("login.session_ended"));
    }
    let page = Page::ok(render(&ctx, login_hint.unwrap_or(""), &next, &notice));
    Either::Left(with_service_csp(db, &next, page).await)
}

#[allow(clippy::too_many_arguments)]
#[post("/connexion", data = "<form>")]
pub async fn login(
    ctx: Ctx,
    form: Form<LoginForm>,
    cookies: &CookieJar<'_>,
    client: ClientAddr,
    db: &State<Db>,
    matrix: &State<MatrixClient>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<Either<Redirect, Page>, AppError> {
    let form = form.into_inner();
    let next = local_path(Some(&form.next));
    let lang = ctx.lang;
    let page = |status: Status, retry_after: Option<i64>, errors: FieldErrors| Page {
        status,
        retry_after,
        csp: None,
        template: render(&ctx, &form.identifier, &next, &errors),
    };

    let mut errors = FieldErrors::default();
    let identifier = Identifier::parse(&form.identifier);
    if form.identifier.trim().is_empty() {
        errors.add("identifier", lang.t("login.identifier.missing"));
    } else if identifier.is_none() {
        errors.add("identifier", lang.t("login.identifier.invalid"));
    }
    if form.password.is_empty() {
        errors.add("password", lang.t("login.password.missing"));
    }
    let Some(identifier) = identifier.filter(|_| errors.is_empty()) else {
        return Ok(Either::Right(page(
            Status::UnprocessableEntity,
            None,
            errors,
        )));
    };

    let settings = &config.settings.accounts;
    let now = Utc::now();
    let mut conn = db.get().await?;
    // One account however it is spelled: user name, Matrix ID, or an address it logged in with.
    let account = match matrix.user_id_of(&identifier) {
        Some(user_id) => user_id,
        None => {
            let address = form.identifier.trim().to_lowercase();
            throttle::account_of_address(&mut conn, keys, &address)
                .await?
                .unwrap_or(address)
        }
    };
    let keys_for_throttle = [throttle::account_key(&account), throttle::ip_key(client.0)];
    if let Some(wait) = throttle::blocked_for(
        &mut conn,
        &keys_for_throttle,
        settings.max_failures,
        chrono::Duration::minutes(settings.failure_window_minutes),
        now,
    )
    .await?
    {
        let minutes = ((wait + 59) / 60).to_string();
        errors.form(lang.tf("login.throttled", &[("minutes", &minutes)]));
        return Ok(Either::Right(page(
            Status::TooManyRequests,
            Some(wait),
            errors,
        )));
    }

    let result = async {
        let hs = matrix.discover(&identifier).await?;
        let login = matrix
            .login(&hs, &identifier, &form.password, &settings.device_name)
            .await?;
        Ok::<_, MatrixError>((hs.url, login))
    }
    .await;
    let (homeserver, login) = match result {
        Ok(ok) => ok,
        Err(MatrixError::Forbidden)
        | Err(MatrixError::Other {
            status: 400..=404, ..
        }) => {
            throttle::record_failure(&mut conn, &keys_for_throttle, now).await?;
            tracing::info!("login refused: wrong credentials");
            errors.form(lang.t("login.wrong"));
            return Ok(Either::Right(page(Status::Ok, None, errors)));
        }
        Err(MatrixError::Expired) => {
            errors.form(lang.t("login.expired"));
            return Ok(Either::Right(page(Status::Ok, None, errors)));
        }
        Err(MatrixError::Untrusted(server)) => {
            tracing::info!(server = %server, "login refused: homeserver not configured");
            errors.add("identifier", lang.t("login.identifier.untrusted"));
            return Ok(Either::Right(page(
                Status::UnprocessableEntity,
                None,
                errors,
            )));
        }
        Err(MatrixError::WrongUser(answered)) => {
            tracing::warn!(
                target: "security",
                event = "homeserver_vouched_for_another_account",
                answered = %answered,
                "login refused: the homeserver answered for an account it may not assert"
            );
            errors.form(lang.t("login.wrong_user"));
            return Ok(Either::Right(page(Status::BadGateway, None, errors)));
        }
        Err(MatrixError::RateLimited) => {
            errors.form(lang.tf("login.throttled", &[("minutes", "1")]));
            return Ok(Either::Right(page(
                Status::TooManyRequests,
                Some(60),
                errors,
            )));
        }
        Err(e) => {
            tracing::warn!(error = %e, "login: homeserver unavailable");
            errors.form(lang.t("login.unreachable"));
            return Ok(Either::Right(page(
                Status::ServiceUnavailable,
                Some(30),
                errors,
            )));
        }
    };

    // The profile and addresses are best effort: a login is not refused for them.
    let display_name = matrix
        .display_name(&homeserver, &login.user_id, &login.access_token)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "login: profile unavailable");
            None
        });
    let emails = match matrix
        .verified_emails(&homeserver, &login.access_token)
        .await
    {
        Ok(emails) => emails,
        // Tchap lets an expired account log in, then refuses its requests: say so, leave no device.
        Err(MatrixError::Expired) => {
            let _ = matrix.logout(&homeserver, &login.access_token).await;
            errors.form(lang.t("login.expired"));
            return Ok(Either::Right(page(Status::Ok, None, errors)));
        }
        Err(e) => {
            tracing::warn!(error = %e, "login: email addresses unavailable");
            vec![]
        }
    };
    let sealed = keys.encrypt(
        TOKEN_PURPOSE,
        login.access_token.as_bytes(),
        &token_aad(&login.user_id, &login.device_id),
    )?;
    let (_, cookie) = session::create(
        &mut conn,
        &NewLogin {
            matrix_user_id: &login.user_id,
            device_id: &login.device_id,
            homeserver_url: &homeserver,
            access_token_enc: &sealed,
            display_name: display_name.as_deref(),
            emails: &emails,
            amr: &["pwd"],
        },
        &config.settings.session,
        now,
    )
    .await?;
    // A login over an existing session (forced re-login) replaces it.
    if let Some(old) = &ctx.user {
        session::delete(&mut conn, old.id).await?;
    }
    throttle::remember_addresses(&mut conn, keys, &login.user_id, &emails, now).await?;
    session::set_cookie(cookies, cookie, config.release);
    csrf::rotate(cookies, config.release);
    tracing::info!(user = %login.user_id, "logged in");
    Ok(Either::Left(Redirect::to(next)))
}

/// Ends the agent's session: revokes the Matrix token (whatever the homeserver says, the portal
/// session ends), deletes the session row, clears the cookie and renews the CSRF secret.
pub async fn end_session(
    user: Option<&CurrentUser>,
    cookies: &CookieJar<'_>,
    db: &Db,
    matrix: &MatrixClient,
    keys: &Keys,
    config: &Config,
) -> Result<(), AppError> {
    if let Some(user) = user {
        match user.access_token(keys) {
            Ok(token) => {
                if let Err(e) = matrix.logout(&user.homeserver_url, &token).await {
                    tracing::warn!(error = %e, "logout: the homeserver did not revoke the token");
                }
            }
            Err(e) => tracing::warn!(error = %e, "logout: token unreadable"),
        }
        let mut conn = db.get().await?;
        session::delete(&mut conn, user.id).await?;
        tracing::info!(user = %user.matrix_user_id, "logged out");
    }
    session::clear_cookie(cookies, config.release);
    csrf::rotate(cookies, config.release);
    Ok(())
}

#[post("/deconnexion")]
pub async fn logout(
    user: Option<CurrentUser>,
    cookies: &CookieJar<'_>,
    db: &State<Db>,
    matrix: &State<MatrixClient>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Result<Redirect, AppError> {
    end_session(user.as_ref(), cookies, db, matrix, keys, config).await?;
    Ok(Redirect::to("/"))
}
