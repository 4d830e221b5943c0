//! bff's own signing keys for `private_key_jwt` client authentication (RFC 7523, OIDC Core §9):
//! read from PEM files, the first one signs, every one is published (`/.well-known/jwks.json`)
//! so a new key can be rolled out before the old one is dropped.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crypto::random_token;

/// How long a client assertion is good for: long enough for one request, short enough that a
/// captured one is useless (FAPI 2.0 asks for short-lived assertions).
const ASSERTION_LIFETIME_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
}

/// One key: what signs, and what is published.
struct ClientKey {
    kind: KeyKind,
    /// RFC 7638 thumbprint of the public key.
    kid: String,
    signing: EncodingKey,
    public: Value,
}

/// The keys, in the configured order. A secret by type: `Debug` shows key ids only.
#[derive(Clone)]
pub struct ClientKeys(Arc<Vec<ClientKey>>);

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|k| &k.kid)).finish()
    }
}

impl ClientKeys {
    /// From PEM texts (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`):
    /// RSA of at least 2048 bits, or EC P-256. The error names the failing one by position.
    pub fn from_pems(pems: &[&str]) -> Result<ClientKeys, String> {
        if pems.is_empty() {
            return Err("no key".into());
        }
        let keys = pems
            .iter()
            .enumerate()
            .map(|(i, pem)| read_key(pem).map_err(|e| format!("key {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientKeys(Arc::new(keys)))
    }

    /// The public keys as a JWK Set.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.0.iter().map(|k| k.public.clone()).collect::<Vec<_>>() })
    }

    /// The algorithm the signing key uses: ES256 for P-256; for RSA, PS256 (FAPI 2.0) unless the
    /// provider lists only RS256 among what it accepts.
    fn algorithm(&self, accepted: &[String]) -> Algorithm {
        match self.0[0].kind {
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::Rsa if accepted.iter().any(|a| a == "RS256") && !accepted.iter().any(|a| a == "PS256") => {
                Algorithm::RS256
            }
            KeyKind::Rsa => Algorithm::PS256,
        }
    }

    /// A client assertion (RFC 7523 §3): `iss` = `sub` = the client, `aud` = the provider's
    /// issuer (what FAPI 2.0 asks and what providers accept for every endpoint), a unique
    /// `jti`, a minute of life.
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        accepted_algs: &[String],
        now: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let key = &self.0[0];
        let mut header = Header::new(self.algorithm(accepted_algs));
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".into());
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": random_token(),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        jsonwebtoken::encode(&header, &claims, &key.signing)
    }
}

fn read_key(pem: &str) -> Result<ClientKey, String> {
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
    use rsa::traits::PublicKeyParts as _;

    let pem = pem.trim();
    let rsa = if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        Some(rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA key ({e})"))?)
    } else {
        <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem).ok()
    };
    if let Some(key) = rsa {
        if key.size() < 256 {
            return Err(format!("an RSA key of {} bits; at least 2048 are needed", key.size() * 8));
        }
        let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        // RFC 7638 §3.2: the required members, in lexicographic order, no spaces.
        let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        let public = json!({ "kty": "RSA", "n": n, "e": e, "kid": kid, "use": "sig" });
        return Ok(ClientKey { kind: KeyKind::Rsa, kid, signing: EncodingKey::from_rsa_der(der.as_bytes()), public });
    }
    let secret = if pem.starts_with("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(pem).map_err(|e| format!("not a P-256 EC key ({e})"))?
    } else {
        p256::SecretKey::from_pkcs8_pem(pem)
            .map_err(|_| "neither an RSA nor a P-256 EC private key in PEM form".to_string())?
    };
    let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&secret).map_err(|e| e.to_string())?;
    let point = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&secret.public_key(), false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else { return Err("an EC key without a public point".into()) };
    let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
    let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
    let public = json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig" });
    Ok(ClientKey { kind: KeyKind::P256, kid, signing: EncodingKey::from_ec_der(der.as_bytes()), public })
}

fn thumbprint(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_default()
    }

    #[test]
    fn every_supported_pem_form_is_read_and_published_with_its_thumbprint() {
        let (ec, sec1, rsa) = (fixture("client-ec.pem"), fixture("client-ec-sec1.pem"), fixture("client-rsa.pem"));
        let keys = ClientKeys::from_pems(&[&ec, &sec1, &rsa]).map_err(|e| e.to_string());
        let Ok(keys) = keys else { panic!("{keys:?}") };
        let jwks = keys.jwks();
        let kinds: Vec<_> = jwks["keys"].as_array().into_iter().flatten().map(|k| k["kty"].clone()).collect();
        assert_eq!(kinds, [json!("EC"), json!("EC"), json!("RSA")]);
        for key in jwks["keys"].as_array().into_iter().flatten() {
            assert_eq!(key["kid"].as_str().map(str::len), Some(43), "a SHA-256 thumbprint");
            assert!(key.get("d").is_none(), "never the private part: {key}");
        }
        assert!(!format!("{keys:?}").contains("BEGIN"), "Debug shows key ids only");
    }

    #[test]
    fn an_assertion_names_the_client_the_audience_and_a_fresh_jti() {
        let ec = fixture("client-ec.pem");
        let Ok(keys) = ClientKeys::from_pems(&[&ec]) else { panic!("key") };
        let one = keys.assertion("bff", "https://idp.example", &[], 1000).unwrap_or_default();
        let two = keys.assertion("bff", "https://idp.example", &[], 1000).unwrap_or_default();
        let claims = |jwt: &str| -> Value {
            let payload = jwt.split('.').nth(1).unwrap_or_default();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default()).unwrap_or_default()
        };
        let c = claims(&one);
        assert_eq!(
            (c["iss"].as_str(), c["sub"].as_str(), c["aud"].as_str()),
            (Some("bff"), Some("bff"), Some("https://idp.example"))
        );
        assert_eq!((c["iat"].as_u64(), c["exp"].as_u64()), (Some(1000), Some(1060)));
        assert_ne!(c["jti"], claims(&two)["jti"]);
        let header = jsonwebtoken::decode_header(&one).map(|h| (h.alg, h.kid));
        assert_eq!(header.ok(), Some((Algorithm::ES256, keys.jwks()["keys"][0]["kid"].as_str().map(String::from))));
    }

    #[test]
    fn rsa_signs_ps256_unless_the_provider_takes_only_rs256() {
        let rsa = fixture("client-rsa.pem");
        let Ok(keys) = ClientKeys::from_pems(&[&rsa]) else { panic!("key") };
        assert_eq!(keys.algorithm(&[]), Algorithm::PS256);
        assert_eq!(keys.algorithm(&["RS256".into(), "PS256".into()]), Algorithm::PS256);
        assert_eq!(keys.algorithm(&["RS256".into()]), Algorithm::RS256);
    }

    #[test]
    fn what_is_not_a_usable_key_is_named() {
        assert!(ClientKeys::from_pems(&[]).is_err());
        let err = ClientKeys::from_pems(&["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]).err();
        assert!(err.is_some_and(|e| e.starts_with("key 1:")));
    }
}
