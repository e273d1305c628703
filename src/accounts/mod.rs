//! The one login shared by the three services: a Tchap (Matrix) account, a server-side session.

pub mod login;
pub mod matrix;
pub mod session;
pub mod throttle;

use rocket::fairing::AdHoc;

use crate::config::Config;

pub fn stage(config: &Config) -> AdHoc {
    let settings = config.settings.matrix.clone();
    AdHoc::try_on_ignite("Accounts", |rocket| async move {
        match matrix::MatrixClient::new(&settings) {
            Ok(client) => Ok(rocket.manage(client).mount(
                "/",
                rocket::routes![login::login_page, login::login, login::logout],
            )),
            Err(e) => {
                tracing::error!("matrix client: {e}");
                Err(rocket)
            }
        }
    })
}
