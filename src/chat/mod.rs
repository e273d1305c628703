//! Tchap Web léger: a Matrix chat that works without JavaScript.

pub mod actions;
pub mod conference;
pub mod hs;
pub mod html;
pub mod media;
pub mod pages;
pub mod room;
pub mod sync;
pub mod timeline;

use std::time::Duration;

use rocket::fairing::AdHoc;

use crate::config::Config;

pub fn stage(config: &Config) -> AdHoc {
    let timeout = Duration::from_secs(config.settings.matrix.timeout_secs);
    AdHoc::try_on_ignite("Tchap Web léger", move |rocket| async move {
        match hs::Hs::new(timeout) {
            Ok(hs) => Ok(rocket.manage(hs).mount(
                "/",
                rocket::routes![
                    pages::rooms,
                    pages::invitation,
                    room::show,
                    room::send,
                    conference::start_page,
                    conference::close,
                    media::upload,
                    media::media,
                    actions::join_form,
                    actions::join,
                    actions::leave_form,
                    actions::leave,
                    actions::create_form,
                    actions::create,
                    actions::direct_form,
                    actions::direct,
                    actions::invite_form,
                    actions::invite,
                ],
            )),
            Err(e) => {
                tracing::error!("homeserver client: {e}");
                Err(rocket)
            }
        }
    })
}
