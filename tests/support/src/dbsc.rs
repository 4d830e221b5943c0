//! A browser's side of DBSC (device bound session credentials) for the tests: a device key —
//! P-256 (what software keys and most TPMs make) or RSA (some TPMs) — that signs bff's
//! challenges as Chromium does (`typ: dbsc+jwt`, the key in the header at registration only,
//! ES256 as raw r‖s), and the requests Chromium sends with them. Chromium sends the header
//! values bare, which is how these are sent too.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};

use crate::browser::Browser;

pub const REGISTRATION: &str = "secure-session-registration";
pub const CHALLENGE: &str = "secure-session-challenge";

pub enum Device {
    Ec(EcdsaKeyPair),
    /// The pair, and its public key as a JWK.
    Rsa(RsaKeyPair, Value),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Device {
    /// A fresh P-256 key.
    pub fn p256() -> Device {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("a P-256 key");
        Device::Ec(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("key"))
    }

    /// The RSA key of `tests/fixtures/client-rsa.pem` (2048 bits; generating one is slow).
    pub fn rsa() -> Device {
        use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
        use rsa::traits::PublicKeyParts;
        let pem = std::fs::read_to_string(crate::repository().join("tests/fixtures/client-rsa.pem"))
            .expect("the RSA fixture");
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).expect("a PKCS#1 key");
        let der = key.to_pkcs1_der().expect("DER");
        let jwk = json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())});
        Device::Rsa(RsaKeyPair::from_der(der.as_bytes()).expect("an RSA key pair"), jwk)
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Device::Ec(_) => "ES256",
            Device::Rsa(..) => "RS256",
        }
    }

    pub fn jwk(&self) -> Value {
        match self {
            Device::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Device::Rsa(_, jwk) => jwk.clone(),
        }
    }

    /// A compact JWS of `header` and `payload` signed with this key.
    pub fn sign(&self, header: &Value, payload: &Value) -> String {
        let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()));
        let rng = SystemRandom::new();
        let signature = match self {
            Device::Ec(pair) => pair.sign(&rng, signed.as_bytes()).expect("sign").as_ref().to_vec(),
            Device::Rsa(pair, _) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, signed.as_bytes(), &mut sig).expect("sign");
                sig
            }
        };
        format!("{signed}.{}", b64(&signature))
    }

    /// The registration proof for `challenge`: the key in the header.
    pub fn registration_proof(&self, challenge: &str) -> String {
        self.sign(&json!({"alg": self.alg(), "typ": "dbsc+jwt", "jwk": self.jwk()}), &json!({"jti": challenge}))
    }

    /// A refresh proof for `challenge`: no key in the header.
    pub fn refresh_proof(&self, challenge: &str) -> String {
        self.sign(&json!({"alg": self.alg(), "typ": "dbsc+jwt"}), &json!({"jti": challenge}))
    }
}

/// The registration a sign-in's answer offers: its path and challenge.
#[derive(Debug, Clone)]
pub struct Offer {
    pub path: String,
    pub challenge: String,
}

/// Reads `Secure-Session-Registration: (ES256 RS256);path="…";challenge="…"`.
pub fn offer(res: &reqwest::Response) -> Option<Offer> {
    let raw = res.headers().get(REGISTRATION)?.to_str().ok()?;
    let algs = raw.strip_prefix('(')?.split(')').next()?;
    assert_eq!(algs, "ES256 RS256", "the algorithms bff verifies, ES256 first: {raw}");
    Some(Offer { path: sf_param(raw, "path")?, challenge: sf_param(raw, "challenge")? })
}

/// `Secure-Session-Challenge: "<challenge>";id="<session id>"`: the challenge and the id.
pub fn challenge(res: &reqwest::Response) -> Option<(String, String)> {
    let raw = res.headers().get(CHALLENGE)?.to_str().ok()?;
    let (value, params) = raw.split_once(';')?;
    let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
    Some((value.to_string(), sf_param(&format!(";{params}"), "id")?))
}

fn sf_param(raw: &str, name: &str) -> Option<String> {
    let start = raw.find(&format!(";{name}=\""))? + name.len() + 3;
    let end = raw[start..].find('"')?;
    Some(raw[start..start + end].to_string())
}

/// `POST` to the registration endpoint as Chromium does: no body, no `X-CSRF`, the proof in
/// `Secure-Session-Response`.
pub async fn register(browser: &Browser, path: &str, proof: &str) -> reqwest::Response {
    browser
        .send(
            browser
                .request(reqwest::Method::POST, path)
                .header("secure-session-response", proof)
                .header("content-length", "0"),
        )
        .await
}

/// `POST /auth/dbsc/refresh` as Chromium does: the device session's id, a proof once it has a
/// challenge.
pub async fn refresh(browser: &Browser, id: &str, proof: Option<&str>) -> reqwest::Response {
    let mut rb = browser
        .request(reqwest::Method::POST, "/auth/dbsc/refresh")
        .header("sec-secure-session-id", id)
        .header("content-length", "0");
    if let Some(proof) = proof {
        rb = rb.header("secure-session-response", proof);
    }
    browser.send(rb).await
}

/// A browser that signed in and registered `device`: the device session's id. Panics on any
/// other outcome.
pub async fn sign_in_bound(browser: &Browser, device: &Device) -> String {
    let callback = browser.login_as("alice").await;
    assert_eq!(callback.status(), 302);
    let offer = offer(&callback).expect("the sign-in offers a registration");
    let res = register(browser, &offer.path, &device.registration_proof(&offer.challenge)).await;
    assert_eq!(res.status(), 200, "registered");
    let instructions: Value = res.json().await.expect("instructions");
    instructions["session_identifier"].as_str().expect("an id").to_string()
}

/// One full refresh as Chromium makes it: a first POST without a proof (403 and a challenge),
/// then the signed challenge. The answer to the second.
pub async fn refresh_signed(browser: &Browser, device: &Device, id: &str) -> reqwest::Response {
    let first = refresh(browser, id, None).await;
    assert_eq!(first.status(), 403, "a challenge to sign");
    let (challenge, for_id) = challenge(&first).expect("a Secure-Session-Challenge");
    assert_eq!(for_id, id);
    refresh(browser, id, Some(&device.refresh_proof(&challenge))).await
}
