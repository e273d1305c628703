//! The one login shared by the three services: a Tchap (Matrix) account, a server-side session.

pub mod admin;
pub mod login;
pub mod matrix;
pub mod session;
pub mod throttle;

use std::time::Duration;

use chrono::Utc;
use rocket::fairing::AdHoc;

use crate::config::{Config, SessionSettings};
use crate::crypto::Keys;
use crate::jobs::{self, First};

/// How often expired sessions and old login failures are removed.
const CLEAN_UP_EVERY: Duration = Duration::from_secs(3600);

/// An address not used to log in for this long is forgotten by the login throttle.
const ADDRESSES_KEPT_DAYS: i64 = 365;

pub fn stage(config: &Config) -> AdHoc {
    let config = config.clone();
    let sessions = config.settings.session.clone();
    // The whole ring: expired sessions sealed under a previous secret are still logged out.
    let keys = config.keys();
    AdHoc::try_on_ignite("Accounts", |rocket| async move {
        match matrix::MatrixClient::new(&config) {
            Ok(client) => {
                let job_matrix = client.clone();
                Ok(rocket
                    .manage(client)
                    .mount(
                        "/",
                        rocket::routes![
                            login::login_page,
                            login::login,
                            login::logout,
                            admin::index
                        ],
                    )
                    .attach(jobs::every(
                        "Accounts clean-up",
                        CLEAN_UP_EVERY,
                        First::Now,
                        move |mut conn| {
                            let sessions = sessions.clone();
                            let (matrix, keys) = (job_matrix.clone(), keys.clone());
                            async move {
                                match clean_up(&mut conn, &sessions, &matrix, &keys).await {
                                    Ok(n) if n > 0 => tracing::info!(rows = n, "accounts clean-up"),
                                    Ok(_) => {}
                                    Err(e) => {
                                        tracing::warn!(error = %e, "accounts clean-up failed")
                                    }
                                }
                            }
                        },
                    )))
            }
            Err(e) => {
                tracing::error!("matrix client: {e}");
                Err(rocket)
            }
        }
    })
}

/// Expired sessions handled per run of the clean-up (the rest wait for the next run).
const EXPIRED_PER_RUN: i64 = 500;

/// An expired session whose device could not be logged out (homeserver unavailable) is tried
/// again at each run, and forgotten this long after it ended.
const LOGOUT_RETRY_DAYS: i64 = 7;

/// Removes expired sessions (their devices logged out on the homeserver first, so that no
/// forgotten device keeps receiving messages and room keys), login failures past their window
/// and addresses not seen for a year; returns how many rows went.
pub async fn clean_up(
    conn: &mut diesel_async::AsyncPgConnection,
    sessions: &SessionSettings,
    matrix: &matrix::MatrixClient,
    keys: &Keys,
) -> diesel::QueryResult<usize> {
    let now = Utc::now();
    let a = purge_expired(conn, sessions, matrix, keys, now).await?;
    // Every throttling window (logins, IVR) is at most a day: older failures count for nothing.
    let b = throttle::purge(conn, now - chrono::Duration::hours(24)).await?;
    let c =
        throttle::purge_addresses(conn, now - chrono::Duration::days(ADDRESSES_KEPT_DAYS)).await?;
    Ok(a + b + c)
}

/// Logs out the devices of expired sessions, then deletes those sessions; returns how many went.
/// Safe on several instances at once: a device logged out twice is told "unknown token" the
/// second time, which counts as done.
pub async fn purge_expired(
    conn: &mut diesel_async::AsyncPgConnection,
    sessions: &SessionSettings,
    matrix: &matrix::MatrixClient,
    keys: &Keys,
    now: chrono::DateTime<Utc>,
) -> diesel::QueryResult<usize> {
    use rocket::futures::StreamExt;
    let expired = session::expired(conn, sessions, now, EXPIRED_PER_RUN).await?;
    if expired.is_empty() {
        return Ok(0);
    }
    let give_up_before = now - chrono::Duration::days(LOGOUT_RETRY_DAYS);
    let done: Vec<i64> = rocket::futures::stream::iter(expired)
        .map(|s| async move {
            let token = login::open_access_token(
                keys,
                &s.matrix_user_id,
                &s.device_id,
                &s.access_token_enc,
            );
            let logged_out = match token.ok() {
                Some(token) => match matrix.logout(&s.homeserver_url, &token).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "expired session: device not logged out yet");
                        false
                    }
                },
                // Nothing to log out with: the device cannot be reached from here.
                None => true,
            };
            (logged_out || s.ended_at(sessions) < give_up_before).then_some(s.id)
        })
        .buffer_unordered(8)
        .filter_map(|id| async move { id })
        .collect()
        .await;
    session::delete_all(conn, &done).await
}
