//! DPoP (RFC 9449): a P-256 key per session, and the proofs that bind its tokens to it.
//!
//! Proofs are made on every token request and every upstream call, so they are signed with
//! ring directly and a key pair parsed once (jsonwebtoken would parse the key for each one).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::crypto::random_token;

/// The header of a proof's HTTP request (`DPoP: <proof>`) and of a provider's or server's
/// nonce (`DPoP-Nonce`).
pub const DPOP_HEADER: &str = "dpop";
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";

/// A session's DPoP key. Secret by type: `Debug` shows the thumbprint only; stored only inside
/// the sealed token set.
#[derive(Clone)]
pub struct DpopKey(Arc<Inner>);

struct Inner {
    pkcs8: Vec<u8>,
    pair: EcdsaKeyPair,
    /// `{"alg":"ES256","typ":"dpop+jwt","jwk":{…}}`, base64url: the same for every proof.
    header_b64: String,
    /// RFC 7638 thumbprint of the public key (`cnf.jkt` of the tokens bound to it).
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DpopKey").field(&self.0.thumbprint).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DpopError {
    #[error("a DPoP key cannot be made or read")]
    Key,
    #[error("a DPoP proof cannot be signed")]
    Sign,
}

impl DpopKey {
    pub fn generate() -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| DpopError::Key)?;
        DpopKey::from_pkcs8(pkcs8.as_ref().to_vec())
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng).map_err(|_| DpopError::Key)?;
        // The public key is the uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else { return Err(DpopError::Key) };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let jwk = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()));
        let header = format!(r#"{{"alg":"ES256","typ":"dpop+jwt","jwk":{jwk}}}"#);
        Ok(DpopKey(Arc::new(Inner { pkcs8, pair, header_b64: URL_SAFE_NO_PAD.encode(header), thumbprint })))
    }

    pub fn thumbprint(&self) -> &str {
        &self.0.thumbprint
    }

    /// A proof for one request (RFC 9449 §4.2): `htm`, `htu` (without query and fragment), a
    /// fresh `jti`, `iat`; with a token, `ath`; with the server's nonce, `nonce`.
    pub fn proof(
        &self,
        method: &str,
        url: &str,
        access_token_hash: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, DpopError> {
        #[derive(Serialize)]
        struct Claims<'a> {
            jti: &'a str,
            htm: &'a str,
            htu: &'a str,
            iat: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            ath: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            nonce: Option<&'a str>,
        }
        let htu = url.split(['?', '#']).next().unwrap_or(url);
        let jti = random_token();
        let claims = Claims { jti: &jti, htm: method, htu, iat: now, ath: access_token_hash, nonce };
        let claims = serde_json::to_vec(&claims).map_err(|_| DpopError::Sign)?;
        let signing_input = format!("{}.{}", self.0.header_b64, URL_SAFE_NO_PAD.encode(claims));
        let signature =
            self.0.pair.sign(&SystemRandom::new(), signing_input.as_bytes()).map_err(|_| DpopError::Sign)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}

/// `ath`: base64url of the SHA-256 of the access token (RFC 9449 §4.2).
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

impl Serialize for DpopKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(&self.0.pkcs8))
    }
}

impl<'de> Deserialize<'de> for DpopKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DpopKey, D::Error> {
        let text = String::deserialize(d)?;
        let pkcs8 = URL_SAFE_NO_PAD.decode(text).map_err(serde::de::Error::custom)?;
        DpopKey::from_pkcs8(pkcs8).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let raw = URL_SAFE_NO_PAD.decode(jwt.split('.').nth(i).unwrap_or_default()).unwrap_or_default();
        serde_json::from_slice(&raw).unwrap_or_default()
    }

    #[test]
    fn a_proof_carries_the_public_key_the_request_and_verifies() {
        let Ok(key) = DpopKey::generate() else { panic!("key") };
        let ath = access_token_hash("at");
        let proof = key.proof("GET", "https://api.example/x?y=1#f", Some(&ath), Some("n1"), 1000).unwrap_or_default();
        let (header, claims) = (part(&proof, 0), part(&proof, 1));
        assert_eq!((header["typ"].as_str(), header["alg"].as_str()), (Some("dpop+jwt"), Some("ES256")));
        assert!(header["jwk"].get("d").is_none(), "never the private key");
        assert_eq!(claims["htu"], "https://api.example/x");
        assert_eq!(
            (claims["htm"].as_str(), claims["ath"].as_str(), claims["nonce"].as_str()),
            (Some("GET"), Some(ath.as_str()), Some("n1"))
        );
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(
            header["jwk"]["x"].as_str().unwrap_or_default(),
            header["jwk"]["y"].as_str().unwrap_or_default(),
        );
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let verified = decoding.and_then(|k| jsonwebtoken::decode::<serde_json::Value>(&proof, &k, &validation));
        assert!(verified.is_ok(), "{verified:?}");
        let again = key.proof("GET", "https://api.example/x", Some(&ath), None, 1000).unwrap_or_default();
        assert_ne!(part(&again, 1)["jti"], claims["jti"], "a fresh jti per proof");
    }

    #[test]
    fn a_key_survives_its_stored_form_and_debug_hides_it() {
        let Ok(key) = DpopKey::generate() else { panic!("key") };
        let stored = serde_json::to_string(&key).unwrap_or_default();
        let back: Option<DpopKey> = serde_json::from_str(&stored).ok();
        assert_eq!(back.map(|k| k.thumbprint().to_string()), Some(key.thumbprint().to_string()));
        assert_eq!(format!("{key:?}"), format!("DpopKey({:?})", key.thumbprint()));
    }
}
