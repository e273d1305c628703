//! Tchap Identité: an OpenID Connect provider for state services.

pub mod admin;
pub mod authorize;
pub mod claims;
pub mod clients;
pub mod connected;
pub mod discovery;
pub mod grants;
pub mod jwt;
pub mod keys;
pub mod logout;
pub mod revocation;
pub mod token;

use std::time::Duration;

use chrono::Utc;
use rocket::fairing::AdHoc;

use crate::config::Config;
use crate::db::Db;
use crate::jobs::{self, First};

/// How often each instance reloads the active signing keys (to follow a rotation made elsewhere).
const KEY_REFRESH: Duration = Duration::from_secs(60);

pub fn stage(config: &Config) -> AdHoc {
    let keys = config.keys();
    let discovery_doc = discovery::DiscoveryDoc::new(config.public_url());
    AdHoc::try_on_ignite("Tchap Identité", |rocket| async move {
        let ring = keys::KeyRing::default();
        let loaded = match rocket.state::<Db>() {
            Some(db) => match db.get().await {
                Ok(mut conn) => ring
                    .refresh(&mut conn, &keys, Utc::now())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            None => Err("no database".into()),
        };
        if let Err(e) = loaded {
            tracing::error!("signing keys: {e}");
            eprintln!("error: signing keys: {e}");
            return Err(rocket);
        }
        let refresher = ring.clone();
        Ok(rocket
            .manage(ring)
            .manage(discovery_doc)
            .manage(discovery::JwksCache::default())
            .mount(
                "/",
                rocket::routes![
                    discovery::openid_configuration,
                    discovery::jwks,
                    authorize::authorize_get,
                    authorize::authorize_post,
                    authorize::consent,
                    token::token,
                    token::userinfo_get,
                    token::userinfo_post,
                    connected::page,
                    connected::withdraw,
                    revocation::revoke,
                    revocation::introspect,
                    logout::logout_get,
                    logout::logout_post,
                    logout::confirm,
                    admin::list,
                    admin::new_page,
                    admin::create,
                    admin::show,
                    admin::rotate_secret,
                    admin::remove_page,
                    admin::remove,
                ],
            )
            .attach(jobs::every(
                "Signing keys refresh",
                KEY_REFRESH,
                First::AfterPeriod,
                move |mut conn| {
                    let (ring, keys) = (refresher.clone(), keys.clone());
                    async move {
                        if let Err(e) = ring.refresh(&mut conn, &keys, Utc::now()).await {
                            tracing::warn!(error = %e, "signing keys refresh failed");
                        }
                    }
                },
            )))
    })
}
