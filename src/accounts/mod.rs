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
use crate::jobs::{self, First};

/// How often expired sessions and old login failures are removed.
const CLEAN_UP_EVERY: Duration = Duration::from_secs(3600);

pub fn stage(config: &Config) -> AdHoc {
    let settings = config.settings.matrix.clone();
    let sessions = config.settings.session.clone();
    AdHoc::try_on_ignite("Accounts", |rocket| async move {
        match matrix::MatrixClient::new(&settings) {
            Ok(client) => Ok(rocket
                .manage(client)
                .mount(
                    "/",
                    rocket::routes![login::login_page, login::login, login::logout, admin::index],
                )
                .attach(jobs::every(
                    "Accounts clean-up",
                    CLEAN_UP_EVERY,
                    First::Now,
                    move |mut conn| {
                        let sessions = sessions.clone();
                        async move {
                            match clean_up(&mut conn, &sessions).await {
                                Ok(n) if n > 0 => tracing::info!(rows = n, "accounts clean-up"),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(error = %e, "accounts clean-up failed"),
                            }
                        }
                    },
                ))),
            Err(e) => {
                tracing::error!("matrix client: {e}");
                Err(rocket)
            }
        }
    })
}

/// Removes expired sessions and login failures past their window; returns how many rows went.
pub async fn clean_up(
    conn: &mut diesel_async::AsyncPgConnection,
    sessions: &SessionSettings,
) -> diesel::QueryResult<usize> {
    let now = Utc::now();
    let a = session::purge_expired(conn, sessions, now).await?;
    // Every throttling window (logins, IVR) is at most a day: older failures count for nothing.
    let b = throttle::purge(conn, now - chrono::Duration::hours(24)).await?;
    Ok(a + b)
}
