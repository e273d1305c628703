//! Secrets: random tokens from openssl's CSPRNG, SHA-256 for stored credentials, HMAC-SHA256,
//! constant-time comparison and AES-256-GCM encryption at rest. Keys are derived from the one
//! `secret_key` setting, one per purpose, so that no two features share a key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::sha::Sha256;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("ciphertext is malformed")]
    Malformed,
}

/// `n` bytes from openssl's CSPRNG.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

/// A URL-safe token of `n` random bytes (43 characters for 32 bytes).
pub fn random_token(n: usize) -> Result<String, CryptoError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes(n)?))
}

/// A uniformly drawn number below `bound` (rejection sampling: no modulo bias).
pub fn random_below(bound: u64) -> Result<u64, CryptoError> {
    assert!(bound > 0, "bound must be positive");
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let mut b = [0u8; 8];
        openssl::rand::rand_bytes(&mut b)?;
        let v = u64::from_le_bytes(b);
        if v < zone {
            return Ok(v % bound);
        }
    }
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    openssl::sha::sha256(data).to_vec()
}

/// HMAC-SHA256 (RFC 2104) on openssl's SHA-256. Built from the digest rather than through
/// `EVP_PKEY`/`EVP_DigestSign`: with OpenSSL 3 those look the algorithm up in the provider store
/// (locks and allocations) on every call, which profiles showed costing more than the hashing on
/// hot paths (each page's CSRF token, every subject identifier).
#[derive(Clone)]
pub struct HmacKey {
    inner: Sha256,
    outer: Sha256,
}

impl HmacKey {
    pub fn new(key: &[u8]) -> HmacKey {
        let mut block = [0u8; 64];
        if key.len() > block.len() {
            block[..32].copy_from_slice(&openssl::sha::sha256(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut inner = Sha256::new();
        inner.update(&block.map(|b| b ^ 0x36));
        let mut outer = Sha256::new();
        outer.update(&block.map(|b| b ^ 0x5c));
        HmacKey { inner, outer }
    }

    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut inner = self.inner.clone();
        inner.update(data);
        let mut outer = self.outer.clone();
        outer.update(&inner.finish());
        outer.finish()
    }
}

/// Constant-time equality; different lengths are unequal (length is not secret here).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// The portal's keys, each derived from `secret_key` for one purpose.
#[derive(Clone)]
pub struct Keys {
    root: HmacKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(secret_key: &[u8]) -> Keys {
        Keys {
            root: HmacKey::new(secret_key),
        }
    }

    /// HKDF-like derivation: one HMAC of the purpose under the root key.
    pub fn derive(&self, purpose: &str) -> Vec<u8> {
        self.root.mac(purpose.as_bytes()).to_vec()
    }

    /// The HMAC key for one purpose, to MAC many messages with one derivation.
    pub fn hmac_key(&self, purpose: &str) -> HmacKey {
        HmacKey::new(&self.root.mac(purpose.as_bytes()))
    }

    pub fn hmac(&self, purpose: &str, data: &[u8]) -> Vec<u8> {
        self.hmac_key(purpose).mac(data).to_vec()
    }

    /// AES-256-GCM with a random 96-bit nonce: `nonce || ciphertext || tag`.
    /// `aad` binds the ciphertext to its context (e.g. the row it belongs to).
    pub fn encrypt(&self, purpose: &str, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.derive(purpose);
        let nonce = random_bytes(12)?;
        let mut tag = [0u8; 16];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &key,
            Some(&nonce),
            aad,
            plain,
            &mut tag,
        )?;
        Ok([nonce, ct, tag.to_vec()].concat())
    }

    pub fn decrypt(
        &self,
        purpose: &str,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < 28 {
            return Err(CryptoError::Malformed);
        }
        let key = self.derive(purpose);
        let (nonce, rest) = sealed.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        Ok(decrypt_aead(
            Cipher::aes_256_gcm(),
            &key,
            Some(nonce),
            aad,
            ct,
            tag,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231_and_openssl_own_hmac() {
        // RFC 4231 test cases 1, 2 and 6 (a key longer than the block).
        let cases: [(&[u8], &[u8], &str); 3] = [
            (
                &[0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex(&HmacKey::new(key).mac(data)), expected);
        }
        // And the same as openssl's EVP HMAC (which refuses an empty key) for keys and messages
        // of every length around a block.
        for len in [1usize, 31, 32, 63, 64, 65, 200] {
            let key = random_bytes(len).expect("random");
            let data = random_bytes(len * 3).expect("random");
            let pkey = openssl::pkey::PKey::hmac(&key).expect("key");
            let mut signer =
                openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)
                    .expect("signer");
            signer.update(&data).expect("update");
            let theirs = signer.sign_to_vec().expect("sign");
            assert_eq!(
                HmacKey::new(&key).mac(&data).to_vec(),
                theirs,
                "length {len}"
            );
        }
    }

    #[test]
    fn tokens_are_random_and_url_safe() {
        let a = random_token(32).expect("rand");
        let b = random_token(32).expect("rand");
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_context() {
        let keys = Keys::new(b"0123456789abcdef0123456789abcdef");
        let sealed = keys
            .encrypt("matrix-token", b"syt_secret", b"row-1")
            .expect("seal");
        assert!(!sealed.windows(10).any(|w| w == b"syt_secret"));
        assert_eq!(
            keys.decrypt("matrix-token", &sealed, b"row-1")
                .expect("open"),
            b"syt_secret"
        );
        assert!(keys.decrypt("matrix-token", &sealed, b"row-2").is_err());
        assert!(keys.decrypt("other", &sealed, b"row-1").is_err());
        let other = Keys::new(b"fedcba9876543210fedcba9876543210");
        assert!(other.decrypt("matrix-token", &sealed, b"row-1").is_err());
    }

    #[test]
    fn random_below_stays_in_range() {
        for _ in 0..1000 {
            assert!(random_below(10).expect("rand") < 10);
        }
    }
}
