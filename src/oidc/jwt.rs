//! Compact JWS (RFC 7515) with RS256 and ES256, signed and verified with openssl.
//! Verification is used for `id_token_hint`, by the portal's own OpenID client side and by the
//! tests. Each kind of token the portal signs carries its own `typ` and each verification says
//! which kind it expects (explicit typing, RFC 8725 §3.11), so one kind cannot pass for another;
//! a `crit` header is refused (RFC 7515 §4.1.11: no extension is understood here).

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
    #[error("critical header extensions are not supported")]
    Critical,
    #[error("not the kind of token expected (typ)")]
    WrongType,
    #[error(transparent)]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// `typ` of ID tokens: `JWT`, as OpenID Connect Core's examples and most providers set it.
pub const ID_TOKEN_TYP: &str = "JWT";
/// `typ` of signed userinfo answers: OpenID sets none, so one of their own (RFC 8725 §3.11), so
/// that a userinfo answer, which also names an `aud` and a `sub`, is never taken for an ID token.
pub const USERINFO_TYP: &str = "userinfo+jwt";

/// The kind of token a verification expects, by its `typ` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An ID token: `typ` is `JWT`, or absent (other providers may set none).
    IdToken,
    /// A signed userinfo answer of this portal.
    Userinfo,
}

impl Expect {
    /// RFC 7515 §4.1.9: compared without case, `application/` may be left out.
    fn accepts(self, typ: Option<&str>) -> bool {
        let typ = typ.map(|t| {
            let t = t.to_ascii_lowercase();
            t.strip_prefix("application/")
                .map(str::to_owned)
                .unwrap_or(t)
        });
        match self {
            Expect::IdToken => typ.is_none_or(|t| t == "jwt"),
            Expect::Userinfo => typ.as_deref() == Some(USERINFO_TYP),
        }
    }
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

/// Whether `jwk` can check an `alg` signature: its own `alg`, or none and a key type that fits
/// (RSA for RS256, EC P-256 for ES256), as JWKS without `alg` are common (RFC 7517 §4.4: optional).
fn fits(jwk: &Value, alg: &str) -> bool {
    let for_signing = jwk.get("use").is_none_or(|u| u == "sig");
    let kind = match jwk.get("alg") {
        Some(a) => a == alg,
        None => match alg {
            "RS256" => jwk["kty"] == "RSA",
            "ES256" => jwk["kty"] == "EC" && jwk["crv"] == "P-256",
            _ => false,
        },
    };
    for_signing && kind
}

/// Checks the signature against the key of `jwks` named by the token's `kid` (any key that fits
/// when it names none) and that the token is of the `expected` kind; returns the claims.
/// Only RS256 and ES256 are accepted (never `none`).
pub fn verify(token: &str, jwks: &Value, expected: Expect) -> Result<Value, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Value = crypto::b64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    if !header.is_object() {
        return Err(JwtError::Malformed);
    }
    if header.get("crit").is_some() {
        return Err(JwtError::Critical);
    }
    let alg = header["alg"].as_str().ok_or(JwtError::Malformed)?;
    if alg != "RS256" && alg != "ES256" {
        return Err(JwtError::UnknownKey);
    }
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(JwtError::Malformed),
    };
    if !expected.accepts(typ) {
        return Err(JwtError::WrongType);
    }
    let kid = header["kid"].as_str();
    let candidates: Vec<&Value> = jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| fits(k, alg) && (kid.is_none() || k["kid"].as_str() == kid))
                .collect()
        })
        .unwrap_or_default();
    if candidates.is_empty() {
        return Err(JwtError::UnknownKey);
    }
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
    let input = format!("{h}.{p}");
    let mut verified = false;
    for jwk in candidates {
        let Ok(key) = public_key(jwk) else {
            continue;
        };
        let mut verifier = Verifier::new(MessageDigest::sha256(), &key)?;
        verifier.update(input.as_bytes())?;
        if verifier.verify(&sig).unwrap_or(false) {
            verified = true;
            break;
        }
    }
    if !verified {
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
                verify(&token, &jwks, Expect::IdToken).expect("verifies")["sub"],
                "alice",
                "{alg}"
            );

            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = crypto::b64url(br#"{"sub":"mallory","aud":"rp"}"#);
            parts[1] = &forged;
            assert!(
                matches!(
                    verify(&parts.join("."), &jwks, Expect::IdToken),
                    Err(JwtError::BadSignature)
                ),
                "{alg}"
            );

            let (_, other, _) = generate(alg).expect("key");
            let mut other = other;
            other["kid"] = jwks["keys"][0]["kid"].clone();
            assert!(
                verify(&token, &json!({"keys": [other]}), Expect::IdToken).is_err(),
                "{alg}: another key"
            );
        }
        let none = format!(
            "{}.{}.",
            crypto::b64url(br#"{"alg":"none"}"#),
            crypto::b64url(b"{}")
        );
        assert!(verify(&none, &json!({"keys": []}), Expect::IdToken).is_err());
    }

    fn key(alg: &str) -> (SigningKey, Value) {
        let (kid, jwk, der) = generate(alg).expect("key");
        let key = SigningKey {
            kid,
            alg: if alg == "ES256" { "ES256" } else { "RS256" },
            pkey: openssl::pkey::PKey::private_key_from_der(&der).expect("der"),
        };
        (key, jwk)
    }

    /// A token signed by `key` with `header` as given (for headers `sign` never writes).
    fn signed_with_header(key: &SigningKey, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            crypto::b64url(header.to_string().as_bytes()),
            crypto::b64url(claims.to_string().as_bytes())
        );
        let mut signer = Signer::new(MessageDigest::sha256(), &key.pkey).expect("signer");
        signer.update(input.as_bytes()).expect("update");
        let sig = signer.sign_to_vec().expect("sign");
        format!("{input}.{}", crypto::b64url(&sig))
    }

    #[test]
    fn a_crit_header_is_refused_even_when_the_signature_is_good() {
        let (key, jwk) = key("RS256");
        let jwks = json!({"keys": [jwk]});
        let claims = json!({"sub": "alice"});
        let plain = json!({"alg": "RS256", "kid": key.kid, "typ": "JWT"});
        assert!(verify(
            &signed_with_header(&key, plain, &claims),
            &jwks,
            Expect::IdToken
        )
        .is_ok());
        for crit in [json!(["exp"]), json!([]), json!("b64")] {
            let header =
                json!({"alg": "RS256", "kid": key.kid, "typ": "JWT", "crit": crit, "exp": 1});
            assert!(
                matches!(
                    verify(
                        &signed_with_header(&key, header, &claims),
                        &jwks,
                        Expect::IdToken
                    ),
                    Err(JwtError::Critical)
                ),
                "crit {crit}"
            );
        }
    }

    #[test]
    fn each_kind_of_token_passes_only_where_its_kind_is_expected() {
        let (key, jwk) = key("ES256");
        let jwks = json!({"keys": [jwk]});
        let claims = json!({"sub": "alice", "aud": "rp"});
        let id_token = sign(&key, &claims, Some(ID_TOKEN_TYP)).expect("sign");
        let userinfo = sign(&key, &claims, Some(USERINFO_TYP)).expect("sign");
        assert!(verify(&id_token, &jwks, Expect::IdToken).is_ok());
        assert!(verify(&userinfo, &jwks, Expect::Userinfo).is_ok());
        assert!(matches!(
            verify(&userinfo, &jwks, Expect::IdToken),
            Err(JwtError::WrongType)
        ));
        assert!(matches!(
            verify(&id_token, &jwks, Expect::Userinfo),
            Err(JwtError::WrongType)
        ));
        // Other providers: no typ, or JWT spelled as a media type, is an ID token; a logout or
        // access token is not.
        for typ in [None, Some("jwt"), Some("application/JWT")] {
            let t = sign(&key, &claims, typ).expect("sign");
            assert!(verify(&t, &jwks, Expect::IdToken).is_ok(), "{typ:?}");
        }
        for typ in ["logout+jwt", "at+jwt", "secevent+jwt"] {
            let t = sign(&key, &claims, Some(typ)).expect("sign");
            assert!(
                matches!(verify(&t, &jwks, Expect::IdToken), Err(JwtError::WrongType)),
                "{typ}"
            );
        }
    }

    #[test]
    fn a_jwk_without_alg_verifies_when_its_key_type_fits() {
        let (rsa, mut rsa_jwk) = key("RS256");
        let (ec, mut ec_jwk) = key("ES256");
        for jwk in [&mut rsa_jwk, &mut ec_jwk] {
            if let Value::Object(m) = jwk {
                m.remove("alg");
                m.remove("use");
            }
        }
        let claims = json!({"sub": "alice"});
        let jwks = json!({"keys": [rsa_jwk.clone(), ec_jwk.clone()]});
        for key in [&rsa, &ec] {
            let t = sign(key, &claims, Some("JWT")).expect("sign");
            assert_eq!(
                verify(&t, &jwks, Expect::IdToken).expect("verifies")["sub"],
                "alice",
                "{}",
                key.alg
            );
        }
        // Without a kid, every key that fits is tried.
        let no_kid = signed_with_header(&rsa, json!({"alg": "RS256"}), &claims);
        assert!(verify(&no_kid, &jwks, Expect::IdToken).is_ok());
        // A key of the wrong type, even named by the kid, is not used: RSA for ES256, EC for RS256,
        // an EC key on another curve, or one published for encryption.
        let mut ec_as_rsa = ec_jwk.clone();
        ec_as_rsa["kid"] = json!(rsa.kid);
        let t = sign(&rsa, &claims, Some("JWT")).expect("sign");
        assert!(matches!(
            verify(&t, &json!({"keys": [ec_as_rsa]}), Expect::IdToken),
            Err(JwtError::UnknownKey)
        ));
        let mut other_curve = ec_jwk.clone();
        other_curve["crv"] = json!("P-384");
        let t = sign(&ec, &claims, Some("JWT")).expect("sign");
        assert!(matches!(
            verify(&t, &json!({"keys": [other_curve]}), Expect::IdToken),
            Err(JwtError::UnknownKey)
        ));
        let mut for_encryption = ec_jwk;
        for_encryption["use"] = json!("enc");
        assert!(matches!(
            verify(&t, &json!({"keys": [for_encryption]}), Expect::IdToken),
            Err(JwtError::UnknownKey)
        ));
    }
}
