//! Signing keys: one active RS256 and one active ES256 key, generated with openssl, their private
//! parts encrypted in the database. Rotation retires the active keys and adds new ones; retired
//! public keys stay in the JWKS until what they signed has expired.

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
const PURPOSE: &str = "oidc-signing-key";

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

/// The active keys, kept in memory and refreshed from the database (a rotation made by the CLI in
/// another process reaches every instance at the next refresh).
#[derive(Clone, Default)]
pub struct KeyRing {
    active: Arc<RwLock<HashMap<&'static str, SigningKey>>>,
}

impl KeyRing {
    pub fn get(&self, alg: &str) -> Result<SigningKey, KeyError> {
        self.active
            .read()
            .ok()
            .and_then(|m| m.get(alg).cloned())
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
        let rows: Vec<(i64, String, String, Vec<u8>)> = oidc_keys::table
            .filter(oidc_keys::retired_at.is_null())
            .order(oidc_keys::id.desc())
            .select((
                oidc_keys::id,
                oidc_keys::kid,
                oidc_keys::alg,
                oidc_keys::private_der_enc,
            ))
            .load(conn)
            .await?;
        let mut map = HashMap::new();
        for (_, kid, alg, sealed) in rows {
            let alg = alg_static(&alg);
            if map.contains_key(alg) {
                continue;
            }
            let der = keys.decrypt(PURPOSE, &sealed, kid.as_bytes())?;
            let pkey = PKey::private_key_from_der(&der)?;
            map.insert(alg, SigningKey { kid, alg, pkey });
        }
        if let Ok(mut active) = self.active.write() {
            *active = map;
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
            insert_new(conn, keys, alg, now).await?;
        }
    }
    Ok(())
}

/// Retires the active keys (published for `grace` more) and adds new ones; returns the new kids.
pub async fn rotate(
    conn: &mut AsyncPgConnection,
    keys: &Keys,
    grace: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<String>, KeyError> {
    conn.transaction::<_, KeyError, _>(async |conn| {
        diesel::update(oidc_keys::table.filter(oidc_keys::retired_at.is_null()))
            .set((
                oidc_keys::retired_at.eq(now),
                oidc_keys::unpublish_at.eq(now + grace),
            ))
            .execute(conn)
            .await?;
        let mut kids = Vec::new();
        for alg in ALGS {
            kids.push(insert_new(conn, keys, alg, now).await?);
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
