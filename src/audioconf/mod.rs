//! AudioConf: phone conferences booked with a professional email address.

pub mod admin;
pub mod booking;
pub mod domains;
pub mod format;
pub mod ics;
pub mod ivr;
pub mod pages;
pub mod request;
pub mod stats;
pub mod tchap;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rocket::fairing::AdHoc;
use rocket::{Build, Rocket};
use rocket_oauth2::{OAuth2, OAuthConfig};

use crate::config::{AudioconfSettings, Config};
use crate::db::schema::{audioconf_conferences as conf, audioconf_requests as req};
use crate::db::Db;
use crate::jobs::{self, First};

/// "Se connecter avec Tchap": `rocket_oauth2` over the issuer's discovered endpoints, and outside
/// release the portal's own provider gets the client registered.
async fn with_tchap(rocket: Rocket<Build>, issuer: Arc<tchap::Issuer>) -> Rocket<Build> {
    if issuer.dev_client {
        let registered = match rocket.state::<Db>() {
            Some(db) => tchap::register_dev_client(db, &issuer).await,
            None => Err("no database".into()),
        };
        if let Err(e) = registered {
            // Not fatal: the booking by email still works; the button's flow will say it failed.
            tracing::warn!(error = %e, "audioconf: development client not registered");
        }
    }
    let (client_id, secret) = (issuer.client_id.clone(), issuer.client_secret().to_owned());
    let oauth = OAuthConfig::new(
        tchap::DiscoveredProvider(issuer.clone()),
        client_id,
        secret,
        Some(issuer.redirect_uri.clone()),
    );
    rocket
        .attach(OAuth2::<tchap::Tchap>::custom(
            tchap::ReqwestAdapter(issuer.clone()),
            oauth,
        ))
        .manage(issuer)
        .mount("/", rocket::routes![tchap::start, tchap::callback])
}

/// How often the retention job runs (it is idempotent: running it more often changes nothing).
const RETENTION_EVERY: Duration = Duration::from_secs(6 * 3600);

pub fn stage(config: &Config) -> AdHoc {
    let settings = config.settings.audioconf.clone();
    let issuer = tchap::Issuer::from_config(config).map(Arc::new);
    AdHoc::on_ignite("AudioConf", move |rocket| async move {
        let rocket = match issuer {
            Some(issuer) => with_tchap(rocket, issuer).await,
            None => rocket,
        };
        rocket
            .mount(
                "/",
                rocket::routes![
                    pages::book_page,
                    pages::book,
                    pages::confirm_page,
                    pages::confirm,
                    pages::cancel_page,
                    pages::cancel,
                    ivr::verify,
                    stats::page,
                    admin::list,
                    admin::add,
                    admin::remove,
                ],
            )
            .attach(jobs::every(
                "AudioConf retention",
                RETENTION_EVERY,
                First::Now,
                move |mut conn| {
                    let settings = settings.clone();
                    async move {
                        match retention(&mut conn, &settings, Utc::now()).await {
                            Ok((erased, purged)) => tracing::info!(
                                emails_erased = erased,
                                requests_purged = purged,
                                "audioconf retention"
                            ),
                            Err(e) => tracing::warn!(error = %e, "audioconf retention failed"),
                        }
                    }
                },
            ))
    })
}

/// Erases the email address of conferences ended `retention_days` ago (their domain and HMAC
/// stay, for statistics) and deletes booking requests whose link has expired or was used more
/// than a day ago, and rooms' line records once their day is over. Returns (addresses erased, requests deleted).
pub async fn retention(
    conn: &mut AsyncPgConnection,
    settings: &AudioconfSettings,
    now: DateTime<Utc>,
) -> QueryResult<(usize, usize)> {
    let erased = diesel::update(
        conf::table
            .filter(conf::email.is_not_null())
            .filter(conf::ends_at.lt(now - chrono::Duration::days(settings.retention_days))),
    )
    .set(conf::email.eq(None::<String>))
    .execute(conn)
    .await?;
    // A used or expired request needs no address any more (its HMAC still counts for the limits).
    diesel::update(
        req::table
            .filter(req::email.is_not_null())
            .filter(req::used_at.is_not_null().or(req::expires_at.lt(now))),
    )
    .set(req::email.eq(None::<String>))
    .execute(conn)
    .await?;
    // Requests count towards the daily limits for 24 hours: keep them that long.
    let purged = diesel::delete(
        req::table
            .filter(req::expires_at.lt(now))
            .filter(req::created_at.lt(now - chrono::Duration::hours(24))),
    )
    .execute(conn)
    .await?;
    // A room's line is only needed on its day: who started it (a Matrix ID) goes the day after.
    diesel::delete(
        crate::db::schema::audioconf_rooms::table.filter(
            crate::db::schema::audioconf_rooms::day
                .lt(format::paris_date(now) - chrono::Duration::days(1)),
        ),
    )
    .execute(conn)
    .await?;
    Ok((erased, purged))
}
