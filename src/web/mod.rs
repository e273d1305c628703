//! Web plumbing shared by every part: pages, CSRF, security headers, errors, translations, metrics.

pub mod client;
pub mod csrf;
pub mod errors;
pub mod form;
pub mod headers;
pub mod health;
pub mod i18n;
pub mod metrics;
pub mod page;
pub mod pages;
pub mod text;

use rocket::fairing::AdHoc;
use rocket::fs::FileServer;
use rocket_dyn_templates::Template;

use crate::config::Config;

pub fn stage(config: &Config) -> AdHoc {
    let csrf = csrf::CsrfFairing {
        keys: config.keys(),
        release: config.release,
        public_origin: config.public_origin.clone(),
    };
    let headers = headers::SecurityHeaders {
        release: config.release,
    };
    let drain = std::time::Duration::from_secs(config.settings.drain_secs);
    AdHoc::on_ignite("Web", move |rocket| async move {
        rocket
            .attach(metrics::RequestLog)
            .attach(text::RefuseHostileUri)
            .attach(csrf)
            .attach(headers)
            .attach(Template::custom(|engines| {
                engines.tera.register_function("t", i18n::TeraT);
            }))
            .attach(health::graceful_stop(drain))
            .manage(metrics::Metrics::default())
            .mount(
                "/",
                rocket::routes![
                    pages::home,
                    pages::accessibility,
                    pages::legal,
                    pages::sitemap,
                    pages::switch_language,
                    health::healthz,
                    health::readyz,
                    metrics::metrics,
                    csrf::rejected,
                    text::refused,
                ],
            )
            .mount("/public", FileServer::from("public").rank(20))
            .register("/", errors::catchers())
    })
}
