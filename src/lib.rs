//! Portail Tchap: Tchap Identité, AudioConf and Tchap Web léger behind one login, rendered on the
//! server without JavaScript. [`build`] assembles the Rocket application from its parts.

pub mod accounts;
pub mod audioconf;
pub mod chat;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod jobs;
pub mod logging;
pub mod mail;
pub mod oidc;
pub mod secrets;
pub mod web;

use std::time::Duration;

use base64::Engine;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::{Build, Rocket};

use crate::config::{Config, ConfigError};
use crate::db::Db;

/// The application for `figment` (see [`config::figment`]); fails with the faulty setting named.
pub fn build(figment: Figment) -> Result<Rocket<Build>, ConfigError> {
    let config = Config::from_figment(&figment)?;
    let db = Db::new(
        &config.database_url,
        config.settings.db.pool_size,
        Duration::from_secs(config.settings.db.timeout_secs),
        db::connect::Limits::new(Duration::from_secs(
            config.settings.db.statement_timeout_secs,
        )),
    )
    .map_err(|e| ConfigError {
        setting: "database_url",
        problem: e,
    })?;
    let migrate = config.settings.db.run_migrations;
    let url = config.database_url.clone();
    let keys = config.keys();
    // Rocket's private cookies (the OpenID client's state) use a key derived from the portal's
    // secret, so there is one secret to configure; an explicit ROCKET_SECRET_KEY still wins.
    let explicit = figment
        .extract::<rocket::Config>()
        .is_ok_and(|c| !c.secret_key.is_zero());
    let figment = if !explicit {
        let derived = keys.derive("rocket-private-cookies");
        figment.merge((
            "secret_key",
            base64::engine::general_purpose::STANDARD.encode(derived),
        ))
    } else {
        figment
    };
    Ok(rocket::custom(figment)
        .manage(db)
        .attach(AdHoc::try_on_ignite(
            "Migrations",
            move |rocket| async move {
                if !migrate {
                    return Ok(rocket);
                }
                match db::migrate(&url).await {
                    Ok(applied) => {
                        if !applied.is_empty() {
                            tracing::info!(?applied, "migrations applied");
                        }
                        Ok(rocket)
                    }
                    Err(e) => {
                        tracing::error!("database: {e}");
                        eprintln!("error: database: {e}");
                        Err(rocket)
                    }
                }
            },
        ))
        // The key ring is managed once its stable keys are read (after the migrations).
        .attach(AdHoc::try_on_ignite("Secret keys", |rocket| async move {
            let loaded = match rocket.state::<Db>() {
                Some(db) => match db.get().await {
                    Ok(mut conn) => secrets::load(&mut conn, &keys)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                None => Err("no database".into()),
            };
            match loaded {
                Ok(keys) => Ok(rocket.manage(keys)),
                Err(e) => {
                    tracing::error!("secret keys: {e}");
                    eprintln!("error: secret keys: {e}");
                    Err(rocket)
                }
            }
        }))
        // Rocket's default Shield sets three headers on every response that `SecurityHeaders`
        // (in web::stage) sets again with the portal's values; an empty Shield replaces it.
        .attach(rocket::shield::Shield::new())
        .attach(web::stage(&config))
        .attach(accounts::stage(&config))
        .attach(oidc::stage(&config))
        .attach(audioconf::stage(&config))
        .attach(chat::stage(&config))
        .attach(mail::stage(&config))
        .manage(config))
}
