//! The registry of relying parties (state services). A confidential client's secret is shown once
//! and stored as its SHA-256 (it is 32 random bytes: a slow hash adds nothing).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use crate::crypto;
use crate::db::schema::oidc_clients;

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = oidc_clients)]
pub struct Client {
    pub id: i64,
    pub client_id: String,
    #[serde(skip)]
    pub secret_hash: Option<Vec<u8>>,
    pub name: String,
    pub redirect_uris: Vec<Option<String>>,
    pub post_logout_redirect_uris: Vec<Option<String>>,
    pub public: bool,
    pub subject_type: String,
    pub id_token_alg: String,
    pub userinfo_signed: bool,
    pub created_at: DateTime<Utc>,
}

impl Client {
    pub fn redirect_uris(&self) -> impl Iterator<Item = &str> {
        self.redirect_uris.iter().flatten().map(String::as_str)
    }

    pub fn post_logout_redirect_uris(&self) -> impl Iterator<Item = &str> {
        self.post_logout_redirect_uris
            .iter()
            .flatten()
            .map(String::as_str)
    }

    /// Exact string comparison, as OpenID Connect requires.
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris().any(|r| r == uri)
    }

    pub fn check_secret(&self, secret: &str) -> bool {
        match &self.secret_hash {
            Some(hash) => crypto::constant_time_eq(hash, &crypto::sha256(secret.as_bytes())),
            None => false,
        }
    }
}

/// What an operator registers.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub public: bool,
    pub subject_type: String,
    pub id_token_alg: String,
    pub userinfo_signed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Invalid(String),
    #[error("no client {0}")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
}

impl From<ClientError> for crate::web::errors::AppError {
    fn from(e: ClientError) -> Self {
        use crate::web::errors::AppError;
        match e {
            ClientError::NotFound(_) => AppError::NotFound,
            ClientError::Db(e) => AppError::Query(e),
            e => AppError::Internal(e.to_string()),
        }
    }
}

/// A redirect URI must be absolute, without fragment; https except on loopback (development).
pub fn valid_redirect_uri(uri: &str) -> bool {
    let Some(origin) = crate::config::origin_of(uri) else {
        return false;
    };
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| origin == *p || origin.starts_with(&format!("{p}:")));
    !uri.contains('#') && (origin.starts_with("https://") || loopback)
}

impl NewClient {
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.name.trim().is_empty() {
            return Err(ClientError::Invalid("a name is required".into()));
        }
        if self.redirect_uris.is_empty() {
            return Err(ClientError::Invalid(
                "at least one redirect URI is required".into(),
            ));
        }
        for uri in self
            .redirect_uris
            .iter()
            .chain(&self.post_logout_redirect_uris)
        {
            if !valid_redirect_uri(uri) {
                return Err(ClientError::Invalid(format!(
                    "{uri}: must be an absolute https URL (http only on 127.0.0.1/localhost), without #fragment"
                )));
            }
        }
        if !["pairwise", "public"].contains(&self.subject_type.as_str()) {
            return Err(ClientError::Invalid(
                "subject type is pairwise or public".into(),
            ));
        }
        if !["RS256", "ES256"].contains(&self.id_token_alg.as_str()) {
            return Err(ClientError::Invalid(
                "ID token algorithm is RS256 or ES256".into(),
            ));
        }
        Ok(())
    }
}

/// Registers a client; returns it and, for a confidential client, its secret (shown once).
pub async fn add(
    conn: &mut AsyncPgConnection,
    new: &NewClient,
    now: DateTime<Utc>,
) -> Result<(Client, Option<String>), ClientError> {
    new.validate()?;
    let client_id = crypto::random_token(16)?;
    let secret = if new.public {
        None
    } else {
        Some(crypto::random_token(32)?)
    };
    let client = diesel::insert_into(oidc_clients::table)
        .values((
            oidc_clients::client_id.eq(&client_id),
            oidc_clients::secret_hash.eq(secret.as_ref().map(|s| crypto::sha256(s.as_bytes()))),
            oidc_clients::name.eq(new.name.trim()),
            oidc_clients::redirect_uris.eq(new
                .redirect_uris
                .iter()
                .cloned()
                .map(Some)
                .collect::<Vec<_>>()),
            oidc_clients::post_logout_redirect_uris.eq(new
                .post_logout_redirect_uris
                .iter()
                .cloned()
                .map(Some)
                .collect::<Vec<_>>()),
            oidc_clients::public.eq(new.public),
            oidc_clients::subject_type.eq(&new.subject_type),
            oidc_clients::id_token_alg.eq(&new.id_token_alg),
            oidc_clients::userinfo_signed.eq(new.userinfo_signed),
            oidc_clients::created_at.eq(now),
        ))
        .returning(Client::as_returning())
        .get_result(conn)
        .await?;
    Ok((client, secret))
}

/// Registers, or brings up to date, a client whose id and secret the portal chose itself (its own
/// services in development, such as AudioConf's "Se connecter avec Tchap").
pub async fn upsert_own(
    conn: &mut AsyncPgConnection,
    client_id: &str,
    secret: &str,
    new: &NewClient,
    now: DateTime<Utc>,
) -> Result<Client, ClientError> {
    new.validate()?;
    let uris = |v: &[String]| v.iter().cloned().map(Some).collect::<Vec<_>>();
    let hash = crypto::sha256(secret.as_bytes());
    Ok(diesel::insert_into(oidc_clients::table)
        .values((
            oidc_clients::client_id.eq(client_id),
            oidc_clients::secret_hash.eq(Some(&hash)),
            oidc_clients::name.eq(new.name.trim()),
            oidc_clients::redirect_uris.eq(uris(&new.redirect_uris)),
            oidc_clients::post_logout_redirect_uris.eq(uris(&new.post_logout_redirect_uris)),
            oidc_clients::public.eq(false),
            oidc_clients::subject_type.eq(&new.subject_type),
            oidc_clients::id_token_alg.eq(&new.id_token_alg),
            oidc_clients::userinfo_signed.eq(new.userinfo_signed),
            oidc_clients::created_at.eq(now),
        ))
        .on_conflict(oidc_clients::client_id)
        .do_update()
        .set((
            oidc_clients::secret_hash.eq(Some(&hash)),
            oidc_clients::name.eq(new.name.trim()),
            oidc_clients::redirect_uris.eq(uris(&new.redirect_uris)),
        ))
        .returning(Client::as_returning())
        .get_result(conn)
        .await?)
}

pub async fn find(conn: &mut AsyncPgConnection, client_id: &str) -> QueryResult<Option<Client>> {
    oidc_clients::table
        .filter(oidc_clients::client_id.eq(client_id))
        .select(Client::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn list(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Client>> {
    oidc_clients::table
        .order(oidc_clients::id)
        .select(Client::as_select())
        .load(conn)
        .await
}

/// A new secret for a confidential client; the old one stops working at once.
pub async fn rotate_secret(
    conn: &mut AsyncPgConnection,
    client_id: &str,
) -> Result<String, ClientError> {
    let secret = crypto::random_token(32)?;
    let n = diesel::update(
        oidc_clients::table
            .filter(oidc_clients::client_id.eq(client_id))
            .filter(oidc_clients::public.eq(false)),
    )
    .set(oidc_clients::secret_hash.eq(Some(crypto::sha256(secret.as_bytes()))))
    .execute(conn)
    .await?;
    if n == 0 {
        return Err(ClientError::NotFound(format!(
            "{client_id} (or it is public: no secret)"
        )));
    }
    Ok(secret)
}

pub async fn remove(conn: &mut AsyncPgConnection, client_id: &str) -> Result<(), ClientError> {
    let n = diesel::delete(oidc_clients::table.filter(oidc_clients::client_id.eq(client_id)))
        .execute(conn)
        .await?;
    if n == 0 {
        return Err(ClientError::NotFound(client_id.to_owned()));
    }
    Ok(())
}
