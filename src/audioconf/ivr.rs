//! The IVR API for the telephony bridge: `POST /api/v1/ivr/verify` with the number called and the
//! PIN typed. Bearer secret per bridge (settings); wrong PINs throttled per caller; every call is
//! logged without the PIN.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rocket::http::Status;
use rocket::request::{FromRequest, Outcome};
use rocket::serde::json::Json;
use rocket::{post, Request, State};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::throttle;
use crate::config::{is_e164, Config};
use crate::crypto::{self, Keys};
use crate::db::schema::audioconf_conferences as conf;
use crate::db::Db;
use crate::oidc::token::Api;

use super::booking::pin_hmac;

/// The bridge that called, identified by its bearer secret.
pub struct Bridge(pub String);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Bridge {
    type Error = ();
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let given = req
            .headers()
            .get_one("Authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(|t| crypto::sha256(t.trim().as_bytes()));
        let (Some(given), Some(config)) = (given, req.rocket().state::<Config>()) else {
            return Outcome::Error((Status::Unauthorized, ()));
        };
        // Compare with every bridge, in constant time each, without stopping at the first match.
        let mut found = None;
        for b in &config.settings.audioconf.bridges {
            if crypto::constant_time_eq(&given, &crypto::sha256(b.secret.as_bytes())) {
                found = Some(b.name.clone());
            }
        }
        match found {
            Some(name) => Outcome::Success(Bridge(name)),
            None => Outcome::Error((Status::Unauthorized, ())),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct VerifyRequest {
    /// The number the caller dialled (E.164).
    pub called: String,
    /// The digits typed (spaces and a trailing `#` are ignored).
    pub pin: String,
    /// The caller's number, when the network gives it (throttling key).
    #[serde(default)]
    pub caller: Option<String>,
}

#[post("/api/v1/ivr/verify", data = "<body>")]
pub async fn verify(
    bridge: Result<Bridge, ()>,
    body: Option<Json<VerifyRequest>>,
    db: &State<Db>,
    keys: &State<Keys>,
    config: &State<Config>,
) -> Api {
    let Ok(Bridge(bridge)) = bridge else {
        tracing::warn!("ivr: unauthenticated call refused");
        return Api {
            www_authenticate: Some("Bearer realm=\"ivr\"".into()),
            ..Api::error(
                Status::Unauthorized,
                "unauthorized",
                "a bridge secret is required",
            )
        };
    };
    let Some(Json(v)) = body else {
        return Api::error(
            Status::BadRequest,
            "invalid_request",
            "JSON body {called, pin, caller?}",
        );
    };
    let settings = &config.settings.audioconf;
    let pin: String = v
        .pin
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '#')
        .collect();
    if !is_e164(&v.called) || pin.is_empty() || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Api::error(
            Status::BadRequest,
            "invalid_request",
            "called is E.164, pin is digits",
        );
    }
    let caller = v.caller.as_deref().unwrap_or("anonymous");
    let key = [format!("ivr:{bridge}:{caller}")];
    let now = Utc::now();
    let Ok(mut conn) = db.get().await else {
        return Api::unavailable();
    };
    let window = Duration::minutes(settings.ivr_window_minutes);
    match throttle::blocked_for(&mut conn, &key, settings.ivr_max_failures, window, now).await {
        Ok(Some(wait)) => {
            tracing::warn!(%bridge, called = %v.called, %caller, "ivr: caller locked out");
            let mut api = Api::error(
                Status::TooManyRequests,
                "locked",
                "too many wrong PINs: try later",
            );
            api.retry_after = Some(wait);
            return api;
        }
        Ok(None) => {}
        Err(_) => return Api::unavailable(),
    }
    let mac = pin_hmac(keys, &v.called, &pin);
    let found: Result<Option<(String, chrono::DateTime<Utc>)>, _> = conf::table
        .filter(conf::number.eq(&v.called))
        .filter(conf::pin_hmac.eq(&mac))
        .filter(conf::cancelled_at.is_null())
        .filter(conf::starts_at.le(now))
        .filter(conf::ends_at.gt(now))
        .select((conf::public_id, conf::ends_at))
        .first(&mut conn)
        .await
        .optional();
    match found {
        Ok(Some((id, ends_at))) => {
            tracing::info!(%bridge, called = %v.called, %caller, conference = %id, "ivr: PIN accepted");
            Api::ok(json!({
                "conference_id": id,
                "ends_at": ends_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "participant_limit": settings.participant_limit,
            }))
        }
        Ok(None) => {
            if throttle::record_failure(&mut conn, &key, now)
                .await
                .is_err()
            {
                return Api::unavailable();
            }
            tracing::info!(%bridge, called = %v.called, %caller, "ivr: wrong PIN");
            Api::error(
                Status::NotFound,
                "not_found",
                "no conference with this PIN now",
            )
        }
        Err(_) => Api::unavailable(),
    }
}
