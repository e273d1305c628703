//! `/.well-known/openid-configuration` and the JWKS.

use std::io::Cursor;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use rocket::http::ContentType;
use rocket::response::{self, Responder};
use rocket::{get, Request, Response, State};
use serde_json::{json, Value};

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

/// The discovery document, serialised once at start (it only depends on the settings).
pub struct DiscoveryDoc(String);

impl DiscoveryDoc {
    pub fn new(issuer: &str) -> DiscoveryDoc {
        DiscoveryDoc(document(issuer).to_string())
    }
}

#[get("/.well-known/openid-configuration")]
pub fn openid_configuration(doc: &State<DiscoveryDoc>) -> (ContentType, &str) {
    (ContentType::JSON, &doc.0)
}

/// A JSON document shared by every request that serves it (no copy per request).
pub struct SharedJson(Arc<str>);

impl<'r> Responder<'r, 'static> for SharedJson {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let len = self.0.len();
        Response::build()
            .header(ContentType::JSON)
            .sized_body(len, Cursor::new(ArcBytes(self.0)))
            .ok()
    }
}

struct ArcBytes(Arc<str>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// How long a JWKS read from the database is served again. Short, so that every instance
/// publishes a rotation's new keys within a second, long before any instance signs with them
/// (signers pick new keys up at their next refresh, every minute); under load it spares the
/// database one query per request.
const JWKS_TTL: Duration = Duration::from_secs(1);

/// The JWKS last read, and when.
#[derive(Default)]
pub struct JwksCache(RwLock<Option<(Instant, Arc<str>)>>);

impl JwksCache {
    fn fresh(&self) -> Option<Arc<str>> {
        let cached = self.0.read().ok()?;
        let (at, doc) = cached.as_ref()?;
        (at.elapsed() < JWKS_TTL).then(|| doc.clone())
    }

    fn store(&self, doc: Arc<str>) {
        if let Ok(mut cached) = self.0.write() {
            *cached = Some((Instant::now(), doc));
        }
    }
}

#[get("/jwks.json")]
pub async fn jwks(db: &State<Db>, cache: &State<JwksCache>) -> Result<SharedJson, AppError> {
    if let Some(doc) = cache.fresh() {
        return Ok(SharedJson(doc));
    }
    let mut conn = db.get().await?;
    let doc: Arc<str> = super::keys::jwks(&mut conn, Utc::now())
        .await?
        .to_string()
        .into();
    cache.store(doc.clone());
    Ok(SharedJson(doc))
}
