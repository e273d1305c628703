//! Compact JWS (RFC 7515) with RS256 and ES256, signed and verified with openssl.
//! Verification is used by the portal's own OpenID client side and by the tests.

use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Rsa;
use openssl::sign::{Signer, Verifier};
use serde_json::{json, Value};

use super::keys::SigningKey;
use crate::crypto;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown key or algorithm")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error(transparent)]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// `header.payload.signature` for `claims`, signed with `key`.
pub fn sign(key: &SigningKey, claims: &Value, typ: Option<&str>) -> Result<String, JwtError> {
    let mut header = json!({"alg": key.alg, "kid": key.kid});
    if let Some(t) = typ {
        header["typ"] = json!(t);
    }
    let input = format!(
        "{}.{}",
        crypto::b64url(header.to_string().as_bytes()),
        crypto::b64url(claims.to_string().as_bytes())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &key.pkey)?;
    signer.update(input.as_bytes())?;
    let der_or_raw = signer.sign_to_vec()?;
    let sig = if key.alg == "ES256" {
        // JWS wants r || s (32 bytes each), openssl gives DER.
        let s = EcdsaSig::from_der(&der_or_raw)?;
        [s.r().to_vec_padded(32)?, s.s().to_vec_padded(32)?].concat()
    } else {
        der_or_raw
    };
    Ok(format!("{input}.{}", crypto::b64url(&sig)))
}

fn bn(jwk: &Value, field: &str) -> Result<BigNum, JwtError> {
    let s = jwk[field].as_str().ok_or(JwtError::UnknownKey)?;
    let bytes = crypto::b64url_decode(s).ok_or(JwtError::UnknownKey)?;
    Ok(BigNum::from_slice(&bytes)?)
}

fn public_key(jwk: &Value) -> Result<PKey<Public>, JwtError> {
    match jwk["kty"].as_str() {
        Some("RSA") => Ok(PKey::from_rsa(Rsa::from_public_components(
            bn(jwk, "n")?,
            bn(jwk, "e")?,
        )?)?),
        Some("EC") if jwk["crv"] == "P-256" => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            let (x, y) = (bn(jwk, "x")?, bn(jwk, "y")?);
            let ec = EcKey::from_public_key_affine_coordinates(&group, &x, &y)?;
            Ok(PKey::from_ec_key(ec)?)
        }
        _ => Err(JwtError::UnknownKey),
    }
}

/// Checks the signature against the key of `jwks` named by the token's `kid`; returns the claims.
/// Only RS256 and ES256 are accepted (never `none`).
pub fn verify(token: &str, jwks: &Value) -> Result<Value, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = crypto::b64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    let alg = header["alg"].as_str().ok_or(JwtError::Malformed)?;
    if alg != "RS256" && alg != "ES256" {
        return Err(JwtError::UnknownKey);
    }
    let kid = header["kid"].as_str();
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| {
            keys.iter()
                .find(|k| k["alg"] == alg && (kid.is_none() || k["kid"].as_str() == kid))
        })
        .ok_or(JwtError::UnknownKey)?;
    let key = public_key(jwk)?;
    let sig = crypto::b64url_decode(s).ok_or(JwtError::Malformed)?;
    let sig = if alg == "ES256" {
        if sig.len() != 64 {
            return Err(JwtError::BadSignature);
        }
        EcdsaSig::from_private_components(
            BigNum::from_slice(&sig[..32])?,
            BigNum::from_slice(&sig[32..])?,
        )?
        .to_der()?
    } else {
        sig
    };
    let mut verifier = Verifier::new(MessageDigest::sha256(), &key)?;
    verifier.update(format!("{h}.{p}").as_bytes())?;
    if !verifier.verify(&sig).unwrap_or(false) {
        return Err(JwtError::BadSignature);
    }
    crypto::b64url_decode(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::keys::generate;

    #[test]
    fn tokens_verify_with_their_key_only_and_tampering_is_caught() {
        for alg in ["RS256", "ES256"] {
            let (kid, jwk, der) = generate(alg).expect("key");
            let key = SigningKey {
                kid,
                alg: if alg == "ES256" { "ES256" } else { "RS256" },
                pkey: openssl::pkey::PKey::private_key_from_der(&der).expect("der"),
            };
            let jwks = json!({"keys": [jwk]});
            let token = sign(&key, &json!({"sub": "alice", "aud": "rp"}), None).expect("sign");
            assert_eq!(
                verify(&token, &jwks).expect("verifies")["sub"],
                "alice",
                "{alg}"
            );

            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = crypto::b64url(br#"{"sub":"mallory","aud":"rp"}"#);
            parts[1] = &forged;
            assert!(
                matches!(verify(&parts.join("."), &jwks), Err(JwtError::BadSignature)),
                "{alg}"
            );

            let (_, other, _) = generate(alg).expect("key");
            let mut other = other;
            other["kid"] = jwks["keys"][0]["kid"].clone();
            assert!(
                verify(&token, &json!({"keys": [other]})).is_err(),
                "{alg}: another key"
            );
        }
        let none = format!(
            "{}.{}.",
            crypto::b64url(br#"{"alg":"none"}"#),
            crypto::b64url(b"{}")
        );
        assert!(verify(&none, &json!({"keys": []})).is_err());
    }
}
