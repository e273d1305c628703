//! Signing keys: one active RS256 and one active ES256 key, generated with openssl, their private
//! parts encrypted in the database. Rotation adds new keys, published at once but signing only
//! from `active_from` on (`oidc.key_publish_before_use_secs` later), when the old ones retire;
//! retired public keys stay in the JWKS until what they signed has expired.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde_json::{json, Value};

use crate::crypto::{self, CryptoError, Keys};
use crate::db::schema::oidc_keys;

pub const ALGS: [&str; 2] = ["RS256", "ES256"];
/// What the private keys are sealed for.
pub const PURPOSE: &str = "oidc-signing-key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    #[error("no active {0} key")]
    Missing(String),
}

/// A key the portal signs with.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: &'static str,
    pub pkey: PKey<Private>,
}

fn alg_static(alg: &str) -> &'static str {
    if alg == "ES256" {
        "ES256"
    } else {
        "RS256"
    }
}

/// A key that signs, or will: from `from` until `until` (if it is already set to retire).
#[derive(Clone)]
struct Scheduled {
    key: SigningKey,
    from: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
}

/// The keys that sign now or will, kept in memory and refreshed from the database (a rotation
/// made by the CLI in another process reaches every instance at the next refresh); each signature
/// picks by the clock, so every instance switches to a new key at the moment it was set for.
#[derive(Clone, Default)]
pub struct KeyRing {
    /// Per algorithm, newest first.
    keys: Arc<RwLock<HashMap<&'static str, Vec<Scheduled>>>>,
}

impl KeyRing {
    pub fn get(&self, alg: &str) -> Result<SigningKey, KeyError> {
        self.get_at(alg, Utc::now())
    }

    /// The key that signs for `alg` at `now`: the newest whose time has come and not gone, else
    /// (a schedule that has run past what this instance last read) the newest already active.
    pub fn get_at(&self, alg: &str, now: DateTime<Utc>) -> Result<SigningKey, KeyError> {
        let keys = self.keys.read().ok();
        let list = keys.as_ref().and_then(|m| m.get(alg));
        list.and_then(|l| {
            l.iter()
                .find(|k| k.from <= now && k.until.is_none_or(|u| now < u))
                .or_else(|| l.iter().find(|k| k.from <= now))
                // Only keys set for later (a clock behind the rotation's): they are published.
                .or_else(|| l.last())
        })
        .map(|k| k.key.clone())
        .ok_or_else(|| KeyError::Missing(alg.to_owned()))
    }

    /// Loads the active keys, creating any that is missing.
    pub async fn refresh(
        &self,
        conn: &mut AsyncPgConnection,
        keys: &Keys,
        now: DateTime<Utc>,
    ) -> Result<(), KeyError> {
        ensure_active(conn, keys, now).await?;
        type Row = (
            String,
            String,
            Vec<u8>,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
        );
        let rows: Vec<Row> = oidc_keys::table
            .filter(
                oidc_keys::retired_at
                    .is_null()
                    .or(oidc_keys::retired_at.gt(now)),
            )
            .order(oidc_keys::id.desc())
            .select((
                oidc_keys::kid,
                oidc_keys::alg,
                oidc_keys::private_der_enc,
                oidc_keys::active_from,
                oidc_keys::retired_at,
            ))
            .load(conn)
            .await?;
        let mut map: HashMap<&'static str, Vec<Scheduled>> = HashMap::new();
        for (kid, alg, sealed, from, until) in rows {
            let alg = alg_static(&alg);
            let der = keys.decrypt(PURPOSE, &sealed, kid.as_bytes())?;
            let pkey = PKey::private_key_from_der(&der)?;
            map.entry(alg).or_default().push(Scheduled {
                key: SigningKey { kid, alg, pkey },
                from,
                until,
            });
        }
        if let Ok(mut current) = self.keys.write() {
            *current = map;
        }
        Ok(())
    }
}

fn b64_bn(n: &openssl::bn::BigNumRef, len: Option<i32>) -> Result<String, KeyError> {
    let bytes = match len {
        Some(l) => n.to_vec_padded(l)?,
        None => n.to_vec(),
    };
    Ok(crypto::b64url(&bytes))
}

/// A new key pair: (kid, public JWK, private key as PKCS#8 DER).
pub fn generate(alg: &str) -> Result<(String, Value, Vec<u8>), KeyError> {
    let (pkey, thumb_input, mut jwk) = if alg == "ES256" {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let ec = EcKey::generate(&group)?;
        let mut ctx = BigNumContext::new()?;
        let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)?;
        let (x, y) = (b64_bn(&x, Some(32))?, b64_bn(&y, Some(32))?);
        let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        (
            PKey::from_ec_key(ec)?,
            thumb,
            json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
        )
    } else {
        let rsa = Rsa::generate(2048)?;
        let (n, e) = (b64_bn(rsa.n(), None)?, b64_bn(rsa.e(), None)?);
        let thumb = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        (
            PKey::from_rsa(rsa)?,
            thumb,
            json!({"kty": "RSA", "n": n, "e": e}),
        )
    };
    // The RFC 7638 thumbprint names the key.
    let kid = crypto::b64url(&crypto::sha256(thumb_input.as_bytes()));
    if let Value::Object(m) = &mut jwk {
        m.insert("kid".into(), json!(kid));
        m.insert("use".into(), json!("sig"));
        m.insert("alg".into(), json!(alg));
    }
    Ok((kid, jwk, pkey.private_key_to_pkcs8()?))
}

async fn insert_new(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    alg: &str,
    now: DateTime<Utc>,
    active_from: DateTime<Utc>,
) -> Result<String, KeyError> {
    let (kid, jwk, der) = generate(alg)?;
    let sealed = keys.encrypt(PURPOSE, &der, kid.as_bytes())?;
    diesel::insert_into(oidc_keys::table)
        .values((
            oidc_keys::kid.eq(&kid),
            oidc_keys::alg.eq(alg),
            oidc_keys::public_jwk.eq(jwk),
            oidc_keys::private_der_enc.eq(sealed),
            oidc_keys::created_at.eq(now),
            oidc_keys::active_from.eq(active_from),
        ))
        .execute(conn)
        .await?;
    Ok(kid)
}

/// Makes sure each algorithm has an active key.
pub async fn ensure_active(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    now: DateTime<Utc>,
) -> Result<(), KeyError> {
    for alg in ALGS {
        let n: i64 = oidc_keys::table
            .filter(oidc_keys::alg.eq(alg))
            .filter(oidc_keys::retired_at.is_null())
            .count()
            .get_result(conn)
            .await?;
        if n == 0 {
            insert_new(conn, keys, alg, now, now).await?;
        }
    }
    Ok(())
}

/// Adds new keys, published now and signing from `now + publish_before_use`, when the keys in
/// service retire (then published for `grace` more); returns the new kids.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    publish_before_use: Duration,
    grace: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<String>, KeyError> {
    let switch = now + publish_before_use;
    conn.transaction::<_, KeyError, _>(async |conn| {
        diesel::update(oidc_keys::table.filter(oidc_keys::retired_at.is_null()))
            .set((
                oidc_keys::retired_at.eq(switch),
                oidc_keys::unpublish_at.eq(switch + grace),
            ))
            .execute(conn)
            .await?;
        let mut kids = Vec::new();
        for alg in ALGS {
            kids.push(insert_new(conn, keys, alg, now, switch).await?);
        }
        Ok(kids)
    })
    .await
}

/// The published JWKS: active keys and retired ones still within their grace.
pub async fn jwks(conn: &mut AsyncPgConnection, now: DateTime<Utc>) -> QueryResult<Value> {
    let keys: Vec<Value> = oidc_keys::table
        .filter(
            oidc_keys::unpublish_at
                .is_null()
                .or(oidc_keys::unpublish_at.gt(now)),
        )
        .order(oidc_keys::id.desc())
        .select(oidc_keys::public_jwk)
        .load(conn)
        .await?;
    Ok(json!({ "keys": keys }))
}
