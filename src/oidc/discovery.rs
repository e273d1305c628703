//! `/.well-known/openid-configuration` and the JWKS.

use chrono::Utc;
use rocket::serde::json::Json;
use rocket::{get, State};
use serde_json::{json, Value};

use crate::config::Config;
use crate::db::Db;
use crate::web::errors::AppError;

/// The claims each scope releases, in consent-page order.
pub const SCOPES: &[(&str, &[&str])] = &[
    ("openid", &["sub"]),
    ("email", &["email", "email_verified"]),
    ("profile", &["name", "given_name", "family_name"]),
    ("tchap", &["matrix_user_id", "homeserver", "organization"]),
];

pub fn document(issuer: &str) -> Value {
    let claims: Vec<&str> = SCOPES.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks.json"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": SCOPES.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "subject_types_supported": ["pairwise", "public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "userinfo_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": claims,
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "require_request_uri_registration": true,
        "authorization_response_iss_parameter_supported": true,
        "prompt_values_supported": ["none", "login", "consent"],
        "ui_locales_supported": ["fr", "en"],
        "claims_locales_supported": ["fr", "en"],
        "acr_values_supported": ["eidas1"],
        "frontchannel_logout_supported": false,
        "backchannel_logout_supported": false,
    })
}

#[get("/.well-known/openid-configuration")]
pub fn openid_configuration(config: &State<Config>) -> Json<Value> {
    Json(document(config.public_url()))
}

#[get("/jwks.json")]
pub async fn jwks(db: &State<Db>) -> Result<Json<Value>, AppError> {
    let mut conn = db.get().await?;
    Ok(Json(super::keys::jwks(&mut conn, Utc::now()).await?))
}
