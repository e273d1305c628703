//! Tchap Web léger: a Matrix chat that works without JavaScript.

pub mod hs;
pub mod pages;
pub mod sync;

use std::time::Duration;

use rocket::fairing::AdHoc;

use crate::config::Config;

pub fn stage(config: &Config) -> AdHoc {
    let timeout = Duration::from_secs(config.settings.matrix.timeout_secs);
    AdHoc::try_on_ignite("Tchap Web léger", move |rocket| async move {
        match hs::Hs::new(timeout) {
            Ok(hs) => Ok(rocket
                .manage(hs)
                .mount("/", rocket::routes![pages::rooms, pages::invitation])),
            Err(e) => {
                tracing::error!("homeserver client: {e}");
                Err(rocket)
            }
        }
    })
}
