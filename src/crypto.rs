//! Keys derived from `session.secret`, encryption at rest (AES-256-GCM), random identifiers.
//!
//! Every value bff writes to its store is sealed with a key derived from the current secret and
//! bound (as associated data) to the key it is stored under, so a value copied to another key or
//! edited in Redis fails to open. Older secrets are still tried when opening, so a secret can be
//! rotated without logging everyone out.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;

/// Seals and opens values at rest. Cheap to clone (keys are small).
#[derive(Clone)]
pub struct Sealer {
    /// First is current; the rest are only used to open.
    ciphers: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.ciphers.len())
    }
}

/// Derives a purpose-bound key from a secret; secrets are never used directly.
pub fn derive_key<const N: usize>(secret: &SecretString, purpose: &str) -> [u8; N] {
    let hk = Hkdf::<Sha256>::new(Some(b"bff key derivation v1"), secret.expose_secret().as_bytes());
    let mut out = [0u8; N];
    // Only fails for N > 255 * 32, which no caller asks for.
    if hk.expand(purpose.as_bytes(), &mut out).is_err() {
        unreachable!("HKDF output length {N} is within bounds");
    }
    out
}

impl Sealer {
    pub fn new(secrets: &[SecretString]) -> Sealer {
        let ciphers =
            secrets.iter().map(|s| Aes256Gcm::new(&derive_key::<32>(s, "bff store encryption").into())).collect();
        Sealer { ciphers }
    }

    /// `nonce || ciphertext+tag`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let Some(cipher) = self.ciphers.first() else {
            unreachable!("config validation guarantees at least one secret")
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            // AES-GCM encryption only fails for messages over 64 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// `None` when no key opens it (tampered, copied to another key, or an unknown secret).
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        self.open_noting_key(aad, sealed).map(|(plain, _)| plain)
    }

    /// Opens, and tells whether the current key did (false: seal it again with the current one).
    pub fn open_noting_key(&self, aad: &[u8], sealed: &[u8]) -> Option<(Vec<u8>, bool)> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.ciphers.iter().enumerate().find_map(|(i, c)| {
            c.decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad }).ok().map(|plain| (plain, i == 0))
        })
    }
}

/// 256 random bits, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `value` has the form `random_token` makes (43 base64url characters for 32 bytes):
/// values made elsewhere are refused before they are used as keys or compared.
pub fn is_random_token(value: &str) -> bool {
    value.len() == 43 && URL_SAFE_NO_PAD.decode(value).is_ok_and(|bytes| bytes.len() == 32)
}

/// 128 random bits as 22 base64url characters: an identifier, not a secret (request ids).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `value` has the form `random_id` makes (22 base64url characters for 16 bytes).
pub fn is_random_id(value: &str) -> bool {
    value.len() == 22 && URL_SAFE_NO_PAD.decode(value).is_ok_and(|bytes| bytes.len() == 16)
}

/// SHA-256, base64url without padding.
pub fn digest(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.repeat(64))
    }

    #[test]
    fn random_ids_are_22_url_safe_characters_and_differ() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_aad() {
        let sealer = Sealer::new(&[secret("a")]);
        let sealed = sealer.seal(b"key1", b"hello");
        assert_eq!(sealer.open(b"key1", &sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(sealer.open(b"key2", &sealed), None);
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(sealer.open(b"key1", &tampered), None);
        assert_eq!(Sealer::new(&[secret("b")]).open(b"key1", &sealed), None);
        assert_eq!(sealer.open(b"key1", b"short"), None);
    }

    #[test]
    fn rotated_secrets_still_open_old_values() {
        let old = Sealer::new(&[secret("a")]);
        let sealed = old.seal(b"k", b"v");
        let rotated = Sealer::new(&[secret("b"), secret("a")]);
        assert_eq!(rotated.open(b"k", &sealed).as_deref(), Some(&b"v"[..]));
        assert_eq!(rotated.open_noting_key(b"k", &sealed), Some((b"v".to_vec(), false)));
        assert_eq!(rotated.open_noting_key(b"k", &rotated.seal(b"k", b"v")), Some((b"v".to_vec(), true)));
    }

    #[test]
    fn random_tokens_are_unique_and_url_safe() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        let s = secret("a");
        assert_ne!(derive_key::<32>(&s, "one"), derive_key::<32>(&s, "two"));
    }
}
