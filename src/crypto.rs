//! Secrets: random tokens from openssl's CSPRNG, SHA-256 for stored credentials, HMAC-SHA256,
//! constant-time comparison and AES-256-GCM encryption at rest. Keys are derived from the
//! `secret_key` setting, one per purpose, so that no two features share a key; older secrets
//! (`previous_secret_keys`) still open and verify what they sealed and signed.

use std::sync::Arc;

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
    /// Altered, or sealed with a secret that is neither `secret_key` nor in `previous_secret_keys`.
    #[error(
        "sealed with a key that is neither secret_key nor one of previous_secret_keys (or altered)"
    )]
    UnknownKey,
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

/// What is derived by HMAC from the secret and then stored or published for lookup: a rotation
/// of `secret_key` must not change it, so each purpose's key is kept in the database (see
/// `crate::secrets`), sealed under the key ring, instead of being derived again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stable {
    /// `sub` for services with public subjects.
    SubjectPublic,
    /// `sub` for services with pairwise subjects.
    SubjectPairwise,
    /// `sid` in ID tokens (services keep it to match logouts).
    Sid,
    /// AudioConf PINs (the IVR looks them up, an exclusion constraint compares them).
    AudioconfPin,
    /// AudioConf email addresses (limits, retention, lookups).
    AudioconfEmail,
    /// AudioConf client addresses (limits).
    AudioconfIp,
    /// The addresses an account logged in with (the login throttle counts one account).
    AccountAddress,
}

impl Stable {
    pub const ALL: [Stable; 7] = [
        Stable::SubjectPublic,
        Stable::SubjectPairwise,
        Stable::Sid,
        Stable::AudioconfPin,
        Stable::AudioconfEmail,
        Stable::AudioconfIp,
        Stable::AccountAddress,
    ];

    /// The purpose string each was derived with before it was stored, so existing values stay.
    pub fn purpose(self) -> &'static str {
        match self {
            Stable::SubjectPublic => "oidc-subject-public",
            Stable::SubjectPairwise => "oidc-subject-pairwise",
            Stable::Sid => "oidc-sid",
            Stable::AudioconfPin => "audioconf-pin",
            Stable::AudioconfEmail => "audioconf-email",
            Stable::AudioconfIp => "audioconf-ip",
            Stable::AccountAddress => "throttle-account-address",
        }
    }
}

/// The portal's keys. A ring of secrets: the current `secret_key` derives every new key (one per
/// purpose), `previous_secret_keys` still open what they sealed and still verify what they signed;
/// the [`Stable`] keys never change with a rotation.
#[derive(Clone)]
pub struct Keys {
    /// The root of each secret, the current one first.
    ring: Arc<[HmacKey]>,
    stable: Arc<[HmacKey; Stable::ALL.len()]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// One secret, whose own derivations are the stable keys (as on a new database).
    pub fn new(secret_key: &[u8]) -> Keys {
        Keys::with_previous(secret_key, &[])
    }

    /// The current secret and older ones still accepted, newest first.
    pub fn with_previous(current: &[u8], previous: &[Vec<u8>]) -> Keys {
        let ring: Vec<HmacKey> = std::iter::once(current)
            .chain(previous.iter().map(Vec::as_slice))
            .map(HmacKey::new)
            .collect();
        let stable =
            Arc::new(Stable::ALL.map(|s| HmacKey::new(&ring[0].mac(s.purpose().as_bytes()))));
        Keys {
            ring: ring.into(),
            stable,
        }
    }

    /// The same ring with the stable keys read from the database, in [`Stable::ALL`] order.
    pub fn with_stable(&self, stable: [Vec<u8>; Stable::ALL.len()]) -> Keys {
        Keys {
            ring: self.ring.clone(),
            stable: Arc::new(stable.map(|k| HmacKey::new(&k))),
        }
    }

    /// HKDF-like derivation from the current secret: one HMAC of the purpose under its root.
    pub fn derive(&self, purpose: &str) -> Vec<u8> {
        self.derive_with(0, purpose)
    }

    /// The derivation for `purpose` from the ring's `index`-th secret (0: the current one).
    pub fn derive_with(&self, index: usize, purpose: &str) -> Vec<u8> {
        self.ring[index.min(self.ring.len() - 1)]
            .mac(purpose.as_bytes())
            .to_vec()
    }

    /// The HMAC key of a stored or published value: the same before and after a rotation.
    pub fn stable(&self, which: Stable) -> &HmacKey {
        &self.stable[which as usize]
    }

    /// The MAC of `data` for `purpose` under the current secret: what the portal signs now.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        Self::mac_under(&self.ring[0], purpose, data)
    }

    /// The MAC of `data` for `purpose` under each secret of the ring, the current one first:
    /// accept any (what was signed before a rotation stays valid until it expires).
    pub fn macs<'a>(
        &'a self,
        purpose: &'a str,
        data: &'a [u8],
    ) -> impl Iterator<Item = [u8; 32]> + 'a {
        self.ring
            .iter()
            .map(move |root| Self::mac_under(root, purpose, data))
    }

    fn mac_under(root: &HmacKey, purpose: &str, data: &[u8]) -> [u8; 32] {
        HmacKey::new(&root.mac(purpose.as_bytes())).mac(data)
    }

    /// AES-256-GCM under the current secret with a random 96-bit nonce: `nonce || ciphertext ||
    /// tag`. `aad` binds the ciphertext to its context (e.g. the row it belongs to).
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

    /// Opens what any secret of the ring sealed.
    pub fn decrypt(
        &self,
        purpose: &str,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.open(purpose, sealed, aad).map(|(plain, _)| plain)
    }

    /// Opens `sealed`; also says which secret of the ring sealed it (0: the current one).
    pub fn open(
        &self,
        purpose: &str,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, usize), CryptoError> {
        if sealed.len() < 28 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, rest) = sealed.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        for index in 0..self.ring.len() {
            let key = self.derive_with(index, purpose);
            // A wrong key fails the tag check: try the next secret.
            if let Ok(plain) = decrypt_aead(Cipher::aes_256_gcm(), &key, Some(nonce), aad, ct, tag)
            {
                return Ok((plain, index));
            }
        }
        Err(CryptoError::UnknownKey)
    }

    /// `sealed` sealed again under the current secret, or `None` when it already is.
    pub fn reseal(
        &self,
        purpose: &str,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Option<Vec<u8>>, CryptoError> {
        match self.open(purpose, sealed, aad)? {
            (_, 0) => Ok(None),
            (plain, _) => self.encrypt(purpose, &plain, aad).map(Some),
        }
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
    fn a_rotated_ring_opens_old_values_reseals_them_and_names_an_unknown_key() {
        let (old, new) = (
            b"0123456789abcdef0123456789abcdef".to_vec(),
            b"fedcba9876543210fedcba9876543210".to_vec(),
        );
        let sealed = Keys::new(&old)
            .encrypt("matrix-token", b"syt_secret", b"row-1")
            .expect("seal");
        let ring = Keys::with_previous(&new, std::slice::from_ref(&old));
        let (plain, index) = ring.open("matrix-token", &sealed, b"row-1").expect("open");
        assert_eq!((plain.as_slice(), index), (&b"syt_secret"[..], 1));
        let resealed = ring
            .reseal("matrix-token", &sealed, b"row-1")
            .expect("reseal")
            .expect("sealed again under the new key");
        assert_eq!(
            Keys::new(&new)
                .decrypt("matrix-token", &resealed, b"row-1")
                .expect("the new key alone opens it"),
            b"syt_secret"
        );
        assert!(ring
            .reseal("matrix-token", &resealed, b"row-1")
            .expect("reseal")
            .is_none());
        // Without the old key: a clear error, not a panic; nor on a value too short or altered.
        let err = Keys::new(&new)
            .decrypt("matrix-token", &sealed, b"row-1")
            .expect_err("unknown key");
        assert!(matches!(err, CryptoError::UnknownKey));
        assert!(err.to_string().contains("previous_secret_keys"));
        assert!(matches!(
            ring.decrypt("matrix-token", b"short", b"row-1"),
            Err(CryptoError::Malformed)
        ));
        let mut altered = resealed.clone();
        altered[14] ^= 1;
        assert!(ring.decrypt("matrix-token", &altered, b"row-1").is_err());
    }

    #[test]
    fn stable_keys_do_not_follow_the_current_secret() {
        let (old, new) = (
            b"0123456789abcdef0123456789abcdef".to_vec(),
            b"fedcba9876543210fedcba9876543210".to_vec(),
        );
        let before = Keys::new(&old);
        // What a database initialised under the old key keeps.
        let stored = Stable::ALL.map(|s| before.derive(s.purpose()));
        let rotated = Keys::with_previous(&new, &[old]).with_stable(stored);
        for s in Stable::ALL {
            assert_eq!(
                before.stable(s).mac(b"@agent:server"),
                rotated.stable(s).mac(b"@agent:server"),
                "{s:?}"
            );
            assert_ne!(
                Keys::new(&new).stable(s).mac(b"@agent:server"),
                rotated.stable(s).mac(b"@agent:server")
            );
        }
        // Signatures: the current secret signs, both verify.
        let old_mac = before.macs("csrf", b"x").next().expect("one");
        let macs: Vec<[u8; 32]> = rotated.macs("csrf", b"x").collect();
        assert_eq!(macs.len(), 2);
        assert_eq!(macs[1], old_mac);
        assert_eq!(
            rotated.mac("csrf", b"x"),
            macs[0],
            "the current secret signs"
        );
        assert_ne!(macs[0], old_mac);
    }

    #[test]
    fn random_below_stays_in_range() {
        for _ in 0..1000 {
            assert!(random_below(10).expect("rand") < 10);
        }
    }
}
