//! Server-side sessions. The cookie holds 32 random bytes; the row holds their SHA-256, so a
//! database leak gives no usable cookie. A session ends after `idle_minutes` without a request or
//! `absolute_hours` after login, whichever comes first; logging in always makes a new id.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rocket::http::{Cookie, CookieJar, SameSite};
use rocket::request::{FromRequest, Outcome, Request};

use crate::config::{Config, SessionSettings};
use crate::crypto;
use crate::db::schema::sessions;
use crate::db::Db;

/// Requests within this long of the last one do not rewrite `last_seen_at`.
const TOUCH_EVERY_SECS: i64 = 60;

pub fn cookie_name(release: bool) -> &'static str {
    if release {
        "__Host-session"
    } else {
        "session"
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct CurrentUser {
    pub id: i64,
    pub matrix_user_id: String,
    pub device_id: String,
    pub homeserver_url: String,
    pub access_token_enc: Vec<u8>,
    pub display_name: Option<String>,
    pub emails: Vec<Option<String>>,
    pub auth_time: DateTime<Utc>,
    pub amr: Vec<Option<String>>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl CurrentUser {
    pub fn emails(&self) -> impl Iterator<Item = &str> {
        self.emails.iter().flatten().map(String::as_str)
    }
}

/// What a successful login knows about the agent.
#[derive(Debug, Clone)]
pub struct NewLogin<'a> {
    pub matrix_user_id: &'a str,
    pub device_id: &'a str,
    pub homeserver_url: &'a str,
    pub access_token_enc: &'a [u8],
    pub display_name: Option<&'a str>,
    pub emails: &'a [String],
    pub amr: &'a [&'a str],
}

#[derive(Insertable)]
#[diesel(table_name = sessions)]
struct NewSessionRow<'a> {
    token_hash: Vec<u8>,
    matrix_user_id: &'a str,
    device_id: &'a str,
    homeserver_url: &'a str,
    access_token_enc: &'a [u8],
    display_name: Option<&'a str>,
    emails: Vec<Option<String>>,
    auth_time: DateTime<Utc>,
    amr: Vec<Option<String>>,
    created_at: DateTime<Utc>,
    last_seen_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// Creates the session row and returns the cookie value (shown once, never stored).
pub async fn create(
    conn: &mut AsyncPgConnection,
    login: &NewLogin<'_>,
    settings: &SessionSettings,
    now: DateTime<Utc>,
) -> Result<(i64, String), crate::web::errors::AppError> {
    let token = crypto::random_token(32)?;
    let id = diesel::insert_into(sessions::table)
        .values(NewSessionRow {
            token_hash: crypto::sha256(token.as_bytes()),
            matrix_user_id: login.matrix_user_id,
            device_id: login.device_id,
            homeserver_url: login.homeserver_url,
            access_token_enc: login.access_token_enc,
            display_name: login.display_name,
            emails: login.emails.iter().cloned().map(Some).collect(),
            auth_time: now,
            amr: login.amr.iter().map(|a| Some(a.to_string())).collect(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + Duration::hours(settings.absolute_hours),
        })
        .returning(sessions::id)
        .get_result(conn)
        .await?;
    Ok((id, token))
}

/// The live session for a cookie value, touching its idle clock.
pub async fn find(
    conn: &mut AsyncPgConnection,
    token: &str,
    settings: &SessionSettings,
    now: DateTime<Utc>,
) -> QueryResult<Option<CurrentUser>> {
    let hash = crypto::sha256(token.as_bytes());
    let idle_limit = now - Duration::minutes(settings.idle_minutes);
    let found: Option<CurrentUser> = sessions::table
        .filter(sessions::token_hash.eq(&hash))
        .filter(sessions::expires_at.gt(now))
        .filter(sessions::last_seen_at.gt(idle_limit))
        .select(CurrentUser::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(user) = &found {
        if (now - user.last_seen_at).num_seconds() >= TOUCH_EVERY_SECS {
            diesel::update(sessions::table.find(user.id))
                .set(sessions::last_seen_at.eq(now))
                .execute(conn)
                .await?;
        }
    }
    Ok(found)
}

pub async fn delete(conn: &mut AsyncPgConnection, id: i64) -> QueryResult<usize> {
    diesel::delete(sessions::table.find(id)).execute(conn).await
}

/// A session past its absolute or idle expiry, with what logging its device out needs.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct Expired {
    pub id: i64,
    pub matrix_user_id: String,
    pub device_id: String,
    pub homeserver_url: String,
    pub access_token_enc: Vec<u8>,
    pub expires_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

impl Expired {
    /// When it ended: its absolute expiry or its last request plus the idle time.
    pub fn ended_at(&self, settings: &SessionSettings) -> DateTime<Utc> {
        self.expires_at
            .min(self.last_seen_at + Duration::minutes(settings.idle_minutes))
    }
}

/// Up to `limit` sessions past their absolute or idle expiry, oldest first.
pub async fn expired(
    conn: &mut AsyncPgConnection,
    settings: &SessionSettings,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<Expired>> {
    let idle_limit = now - Duration::minutes(settings.idle_minutes);
    sessions::table
        .filter(
            sessions::expires_at
                .le(now)
                .or(sessions::last_seen_at.le(idle_limit)),
        )
        .order(sessions::id)
        .limit(limit)
        .select(Expired::as_select())
        .load(conn)
        .await
}

/// Deletes the sessions `ids`; returns how many went.
pub async fn delete_all(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<usize> {
    diesel::delete(sessions::table.filter(sessions::id.eq_any(ids)))
        .execute(conn)
        .await
}

pub fn set_cookie(cookies: &CookieJar<'_>, token: String, release: bool) {
    cookies.add(
        Cookie::build((cookie_name(release), token))
            .path("/")
            .http_only(true)
            .secure(release)
            .same_site(SameSite::Lax)
            .build(),
    );
}

pub fn clear_cookie(cookies: &CookieJar<'_>, release: bool) {
    cookies.remove(Cookie::build(cookie_name(release)).path("/").build());
}

/// The logged-in agent, if any; looked up once per request. When the database cannot tell (down,
/// too slow), the answer is 503, not "logged out": an agent is never sent to the login page for a
/// fault of ours.
#[rocket::async_trait]
impl<'r> FromRequest<'r> for CurrentUser {
    type Error = ();
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let cached: &Result<Option<CurrentUser>, ()> = req
            .local_cache_async(async {
                let Some(config) = req.rocket().state::<Config>() else {
                    return Err(());
                };
                let Some(token) = req.cookies().get(cookie_name(config.release)) else {
                    return Ok(None);
                };
                let token = token.value().to_owned();
                let db = req.rocket().state::<Db>().ok_or(())?;
                let mut conn = db.get().await.map_err(|e| {
                    tracing::warn!(error = %e, "session lookup: no database connection");
                })?;
                find(&mut conn, &token, &config.settings.session, Utc::now())
                    .await
                    .map_err(|e| tracing::warn!(error = %e, "session lookup failed"))
            })
            .await;
        match cached {
            Ok(Some(user)) => Outcome::Success(user.clone()),
            Ok(None) => Outcome::Forward(rocket::http::Status::Unauthorized),
            Err(()) => Outcome::Error((rocket::http::Status::ServiceUnavailable, ())),
        }
    }
}
