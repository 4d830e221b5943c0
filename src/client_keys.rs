//! bff's own signing keys for `private_key_jwt` client authentication (RFC 7523, OIDC Core §9):
//! read from key files (PEM, or a JWK or JWK Set in JSON), the first one signs, every one is
//! published (`/.well-known/jwks.json`) so a new key can be rolled out before the old one is
//! dropped.

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
#[derive(Clone)]
struct ClientKey {
    kind: KeyKind,
    /// The `kid` sent and published: the JWK's own, else the RFC 7638 thumbprint of the public
    /// key (`oidc.client_key_id` replaces the signing key's).
    kid: String,
    /// The JWK's `alg`, when its file names one: the key was registered for that algorithm.
    alg: Option<Algorithm>,
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
    /// From the contents of key files, each either PEM (PKCS#8 `PRIVATE KEY`, PKCS#1
    /// `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`) or JSON (first non-space character `{`): a
    /// private JWK, or a JWK Set holding exactly one private signing key. RSA of at least 2048
    /// bits, or EC P-256. A JWK's `kid` and `alg` are kept. Two keys may not share a `kid`. The
    /// error names the failing one by position.
    pub fn parse(texts: &[&str]) -> Result<ClientKeys, String> {
        if texts.is_empty() {
            return Err("no key".into());
        }
        let keys = texts
            .iter()
            .enumerate()
            .map(|(i, text)| read_file(text).map_err(|e| format!("key {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = ClientKeys(Arc::new(keys));
        keys.check_distinct_kids()?;
        Ok(keys)
    }

    /// The same keys, the signing (first) one sent and published under `kid` (a provider that
    /// registered the key under an id of the operator's choosing refuses assertions naming
    /// another).
    pub fn with_signing_kid(&self, kid: &str) -> Result<ClientKeys, String> {
        if kid.is_empty() {
            return Err("must not be empty".into());
        }
        if let Some(other) = self.0.iter().skip(1).position(|k| k.kid == kid) {
            return Err(format!("{kid:?} is the kid of key {} already (each key needs its own)", other + 2));
        }
        let mut keys: Vec<ClientKey> = self.0.as_ref().clone();
        if let Some(first) = keys.first_mut() {
            first.kid = kid.to_string();
            first.public["kid"] = json!(kid);
        }
        Ok(ClientKeys(Arc::new(keys)))
    }

    /// The `kid` of the signing key.
    pub fn signing_kid(&self) -> &str {
        self.0.first().map_or("", |k| k.kid.as_str())
    }

    /// A provider picks the key by `kid`: two keys under one would make it try the wrong one.
    fn check_distinct_kids(&self) -> Result<(), String> {
        for (i, key) in self.0.iter().enumerate() {
            if let Some(j) = self.0.iter().take(i).position(|other| other.kid == key.kid) {
                return Err(format!("key {} has the kid {:?} of key {} (each needs its own)", i + 1, key.kid, j + 1));
            }
        }
        Ok(())
    }

    /// The public keys as a JWK Set.
    pub fn jwks(&self) -> Value {
        json!({ "keys": self.0.iter().map(|k| k.public.clone()).collect::<Vec<_>>() })
    }

    /// The algorithm the signing key uses: the one its JWK names; else ES256 for P-256; for RSA,
    /// PS256 (FAPI 2.0) unless the provider lists only RS256 among what it accepts.
    fn algorithm(&self, accepted: &[String]) -> Algorithm {
        let key = &self.0[0];
        if let Some(alg) = key.alg {
            return alg;
        }
        match key.kind {
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::Rsa if accepted.iter().any(|a| a == "RS256") && !accepted.iter().any(|a| a == "PS256") => {
                Algorithm::RS256
            }
            KeyKind::Rsa => Algorithm::PS256,
        }
    }

    /// A client assertion (RFC 7523 §3): `iss` = `sub` = the client, `aud` = `audience` (the
    /// provider's issuer, or the URL of the endpoint the request goes to: `oidc.client_assertion_audience`),
    /// a unique `jti`, a minute of life.
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

/// One key file: JSON (a JWK or a JWK Set) when its first non-space character is `{`, else PEM.
fn read_file(text: &str) -> Result<ClientKey, String> {
    if text.trim_start().starts_with('{') { read_json(text) } else { read_pem(text) }
}

fn read_json(text: &str) -> Result<ClientKey, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not a JWK or JWK Set ({e})"))?;
    let jwk = match value.get("keys") {
        None => &value,
        Some(Value::Array(keys)) => {
            // Public keys may sit beside the private one (a set made for publishing too).
            let private: Vec<&Value> = keys.iter().filter(|k| k.get("d").is_some() && is_for_signing(k)).collect();
            match private.as_slice() {
                [one] => *one,
                [] => return Err("a JWK Set without a private signing key (one with \"d\")".into()),
                more => {
                    return Err(format!(
                        "a JWK Set with {} private signing keys; put each in a file of its own and list the files",
                        more.len()
                    ));
                }
            }
        }
        Some(_) => return Err("a JWK Set whose \"keys\" is not an array".into()),
    };
    read_jwk(jwk)
}

/// `use` absent or `sig`, and `key_ops`, when present, allowing `sign`.
fn is_for_signing(jwk: &Value) -> bool {
    let use_ok = jwk.get("use").is_none_or(|u| u == "sig");
    let ops_ok = jwk.get("key_ops").and_then(Value::as_array).is_none_or(|ops| ops.iter().any(|op| op == "sign"));
    use_ok && ops_ok
}

/// A private JWK (RFC 7517/7518): EC P-256 with `d` (and `x`, `y`, which must be its public
/// point), or RSA with `n`, `e`, `d` (and `p`, `q` when present).
fn read_jwk(jwk: &Value) -> Result<ClientKey, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let raw = text(name).ok_or_else(|| format!("the JWK has no \"{name}\""))?;
        URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')).map_err(|_| format!("the JWK's \"{name}\" is not base64url"))
    };
    if jwk.get("d").is_none() {
        return Err("a public JWK (no \"d\"): bff needs the private key".into());
    }
    if !is_for_signing(jwk) {
        return Err("a JWK not meant for signing (\"use\" or \"key_ops\")".into());
    }
    let alg = match text("alg") {
        None => None,
        Some("ES256") => Some(Algorithm::ES256),
        Some("PS256") => Some(Algorithm::PS256),
        Some("RS256") => Some(Algorithm::RS256),
        Some(other) => return Err(format!("the JWK's alg {other:?} is not one bff signs with (ES256, PS256, RS256)")),
    };
    let mut key = match text("kty") {
        Some("EC") => {
            if text("crv") != Some("P-256") {
                return Err("an EC JWK on a curve other than P-256".into());
            }
            let secret = p256::SecretKey::from_slice(&bytes("d")?).map_err(|_| "the JWK's \"d\" is not a P-256 key")?;
            let key = ec_key(&secret)?;
            if text("x") != key.public["x"].as_str() || text("y") != key.public["y"].as_str() {
                return Err("the JWK's \"x\" and \"y\" are not the public key of its \"d\"".into());
            }
            key
        }
        Some("RSA") => {
            let int = |name: &str| bytes(name).map(|b| rsa::BigUint::from_bytes_be(&b));
            // Without the primes, rsa recovers them from n, e and d.
            let primes = match (jwk.get("p"), jwk.get("q")) {
                (Some(_), Some(_)) => vec![int("p")?, int("q")?],
                _ => Vec::new(),
            };
            let private = rsa::RsaPrivateKey::from_components(int("n")?, int("e")?, int("d")?, primes)
                .map_err(|e| format!("not a consistent RSA JWK ({e})"))?;
            rsa_key(&private)?
        }
        Some(other) => return Err(format!("a JWK of kty {other:?}; RSA or EC P-256 keys only")),
        None => return Err("the JWK has no \"kty\"".into()),
    };
    let fits = matches!(
        (key.kind, alg),
        (_, None) | (KeyKind::P256, Some(Algorithm::ES256)) | (KeyKind::Rsa, Some(Algorithm::PS256 | Algorithm::RS256))
    );
    if !fits {
        return Err("the JWK's alg does not fit its kty".into());
    }
    if let Some(alg) = alg {
        key.alg = Some(alg);
        key.public["alg"] = json!(text("alg"));
    }
    if let Some(kid) = text("kid").filter(|kid| !kid.is_empty()) {
        key.kid = kid.to_string();
        key.public["kid"] = json!(kid);
    }
    Ok(key)
}

fn read_pem(pem: &str) -> Result<ClientKey, String> {
    use p256::pkcs8::DecodePrivateKey as _;
    use rsa::pkcs1::DecodeRsaPrivateKey as _;

    let pem = pem.trim();
    let rsa = if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        Some(rsa::RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| format!("not a PKCS#1 RSA key ({e})"))?)
    } else {
        <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem).ok()
    };
    if let Some(key) = rsa {
        return rsa_key(&key);
    }
    let secret = if pem.starts_with("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(pem).map_err(|e| format!("not a P-256 EC key ({e})"))?
    } else {
        p256::SecretKey::from_pkcs8_pem(pem)
            .map_err(|_| "neither an RSA nor a P-256 EC private key in PEM form, nor a JWK".to_string())?
    };
    ec_key(&secret)
}

fn rsa_key(key: &rsa::RsaPrivateKey) -> Result<ClientKey, String> {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::traits::PublicKeyParts as _;

    if key.size() < 256 {
        return Err(format!("an RSA key of {} bits; at least 2048 are needed", key.size() * 8));
    }
    let der = key.to_pkcs1_der().map_err(|e| e.to_string())?;
    let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
    let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
    // RFC 7638 §3.2: the required members, in lexicographic order, no spaces.
    let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
    let public = json!({ "kty": "RSA", "n": n, "e": e, "kid": kid, "use": "sig" });
    Ok(ClientKey { kind: KeyKind::Rsa, kid, alg: None, signing: EncodingKey::from_rsa_der(der.as_bytes()), public })
}

fn ec_key(secret: &p256::SecretKey) -> Result<ClientKey, String> {
    let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(secret).map_err(|e| e.to_string())?;
    let point = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&secret.public_key(), false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else { return Err("an EC key without a public point".into()) };
    let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
    let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
    let public = json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig" });
    Ok(ClientKey { kind: KeyKind::P256, kid, alg: None, signing: EncodingKey::from_ec_der(der.as_bytes()), public })
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
        let keys = ClientKeys::parse(&[&ec, &sec1, &rsa]).map_err(|e| e.to_string());
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
        let Ok(keys) = ClientKeys::parse(&[&ec]) else { panic!("key") };
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
        let Ok(keys) = ClientKeys::parse(&[&rsa]) else { panic!("key") };
        assert_eq!(keys.algorithm(&[]), Algorithm::PS256);
        assert_eq!(keys.algorithm(&["RS256".into(), "PS256".into()]), Algorithm::PS256);
        assert_eq!(keys.algorithm(&["RS256".into()]), Algorithm::RS256);
    }

    #[test]
    fn a_jwk_or_a_jwks_file_is_read_with_its_kid_and_alg() {
        let (jwk, jwks) = (fixture("client-ec.jwk.json"), fixture("client-rsa.jwks.json"));
        let Ok(keys) = ClientKeys::parse(&[&jwk, &jwks]) else { panic!("keys") };
        let published = keys.jwks();
        assert_eq!(published["keys"][0]["kid"], "ops-ec-1");
        assert_eq!(published["keys"][1]["kid"], "ops-rsa-1", "the private key of the set, not the public one");
        assert_eq!(published["keys"][1]["alg"], "PS256");
        assert_eq!(keys.algorithm(&["RS256".into()]), Algorithm::ES256);
        // The same key as its PEM: the same public key.
        let Ok(pem) = ClientKeys::parse(&[&fixture("client-ec-next.pem")]) else { panic!("pem") };
        assert_eq!(pem.jwks()["keys"][0]["x"], published["keys"][0]["x"]);
        for key in published["keys"].as_array().into_iter().flatten() {
            assert!(key.get("d").is_none() && key.get("p").is_none(), "never the private part: {key}");
        }
        let jwt = keys.assertion("bff", "https://idp.example/token", &[], 1000).unwrap_or_default();
        assert_eq!(jsonwebtoken::decode_header(&jwt).ok().and_then(|h| h.kid).as_deref(), Some("ops-ec-1"));
        // An RSA JWK that names its alg signs with it, whatever the provider lists.
        let Ok(rsa) = ClientKeys::parse(&[&jwks]) else { panic!("rsa") };
        assert_eq!(rsa.algorithm(&["RS256".into()]), Algorithm::PS256);
    }

    #[test]
    fn the_signing_kid_can_be_chosen_but_not_shared() {
        let (ec, next) = (fixture("client-ec.pem"), fixture("client-ec-next.pem"));
        let Ok(keys) = ClientKeys::parse(&[&ec, &next]) else { panic!("keys") };
        let Ok(named) = keys.with_signing_kid("ops-key-1") else { panic!("kid") };
        assert_eq!(named.signing_kid(), "ops-key-1");
        assert_eq!(named.jwks()["keys"][0]["kid"], "ops-key-1");
        assert_eq!(named.jwks()["keys"][1], keys.jwks()["keys"][1], "the other keys keep theirs");
        let jwt = named.assertion("bff", "https://idp.example", &[], 1000).unwrap_or_default();
        assert_eq!(jsonwebtoken::decode_header(&jwt).ok().and_then(|h| h.kid).as_deref(), Some("ops-key-1"));
        let second = keys.jwks()["keys"][1]["kid"].as_str().unwrap_or_default().to_string();
        assert!(keys.with_signing_kid(&second).is_err_and(|e| e.contains("key 2")));
        assert!(keys.with_signing_kid("").is_err());
        let jwk = fixture("client-ec.jwk.json");
        let twice = ClientKeys::parse(&[&jwk, &jwk]).err();
        assert!(twice.is_some_and(|e| e.contains("\"ops-ec-1\"")), "two keys under one kid");
    }

    #[test]
    fn a_jwk_that_cannot_sign_is_named() {
        let refused = |text: &str| ClientKeys::parse(&[text]).err().unwrap_or_default();
        let public: Value = serde_json::from_str(&fixture("client-rsa.jwks.json")).unwrap_or_default();
        assert!(refused(&public["keys"][0].to_string()).contains("public JWK"));
        assert!(refused(&json!({ "keys": [public["keys"][0]] }).to_string()).contains("without a private"));
        let private = &public["keys"][1];
        assert!(refused(&json!({ "keys": [private, private] }).to_string()).contains("2 private signing keys"));
        let mut ec: Value = serde_json::from_str(&fixture("client-ec.jwk.json")).unwrap_or_default();
        ec["x"] = public["keys"][0]["e"].clone();
        assert!(refused(&ec.to_string()).contains("not the public key"));
        ec["crv"] = json!("P-384");
        assert!(refused(&ec.to_string()).contains("P-256"));
        let mut rsa = private.clone();
        rsa["alg"] = json!("ES256");
        assert!(refused(&rsa.to_string()).contains("does not fit"));
        rsa["alg"] = json!("HS256");
        assert!(refused(&rsa.to_string()).contains("HS256"));
        assert!(refused("{ not json").starts_with("key 1: not a JWK"));
    }

    #[test]
    fn what_is_not_a_usable_key_is_named() {
        assert!(ClientKeys::parse(&[]).is_err());
        let err = ClientKeys::parse(&["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]).err();
        assert!(err.is_some_and(|e| e.starts_with("key 1:")));
    }
}
