//! The browser's signed answer to a challenge (`Secure-Session-Response`): a compact JWS with
//! `typ: dbsc+jwt`, ES256 (raw r‖s) or RS256, whose payload names the challenge in `jti`.
//! At registration its header carries the public key (`jwk`); at refresh it is verified with
//! the key registered then. There is no `aud`, `iat` or `exp` (the specification dropped them):
//! freshness and single use come from the challenge alone.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Longest proof read: an RS256 proof with a 4096-bit key in its header is ~1.9 KB; anything
/// much longer is no browser's.
const MAX_PROOF_LEN: usize = 8 * 1024;

/// The algorithms bff offers, in the order of the registration header (the browser picks the
/// first it can: software keys and most TPMs sign ES256, some TPMs only RS256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alg {
    ES256,
    RS256,
}

impl Alg {
    pub fn label(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }

    fn parse(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::ES256),
            "RS256" => Some(Alg::RS256),
            _ => None,
        }
    }
}

/// A device's public key as the browser sent it (RFC 7517 members, base64url), kept in the
/// sealed token set. Only what verifying needs is kept.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum PublicJwk {
    EC { crv: String, x: String, y: String },
    RSA { n: String, e: String },
}

impl std::fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicJwk::EC { crv, .. } => write!(f, "PublicJwk(EC {crv})"),
            PublicJwk::RSA { n, .. } => write!(f, "PublicJwk(RSA, {} bits)", n.len() * 6),
        }
    }
}

impl PublicJwk {
    /// The bytes its members hold (a cache's estimate of what it keeps).
    pub fn encoded_len(&self) -> usize {
        match self {
            PublicJwk::EC { crv, x, y } => crv.len() + x.len() + y.len(),
            PublicJwk::RSA { n, e } => n.len() + e.len(),
        }
    }

    /// Verifies `signature` over `message` made with `alg`: the key must be of that algorithm's
    /// kind (a P-256 point for ES256, an RSA key of 2048 to 8192 bits for RS256).
    fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), ProofError> {
        match (alg, self) {
            (Alg::ES256, PublicJwk::EC { crv, x, y }) if crv == "P-256" => {
                let (x, y) = (decode(x)?, decode(y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(ProofError::BadKey);
                }
                let point = [&[0x04][..], &x, &y].concat();
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .map_err(|_| ProofError::BadSignature)
            }
            (Alg::RS256, PublicJwk::RSA { n, e }) => {
                let key = RsaPublicKeyComponents { n: decode(n)?, e: decode(e)? };
                key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                    .map_err(|_| ProofError::BadSignature)
            }
            _ => Err(ProofError::BadKey),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("not a compact JWS of a DBSC proof")]
    Malformed,
    #[error("typ is not dbsc+jwt")]
    WrongType,
    #[error("an algorithm bff did not offer")]
    UnsupportedAlg,
    #[error("no key in the registration proof")]
    NoKey,
    #[error("a key that does not fit the algorithm, or is not one")]
    BadKey,
    #[error("the signature does not verify")]
    BadSignature,
}

impl ProofError {
    /// The `reason` label of a refusal.
    pub fn label(self) -> &'static str {
        match self {
            ProofError::Malformed | ProofError::WrongType => "malformed_proof",
            ProofError::UnsupportedAlg | ProofError::NoKey | ProofError::BadKey => "bad_key",
            ProofError::BadSignature => "bad_signature",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    jwk: Option<PublicJwk>,
}

#[derive(Deserialize)]
struct Payload {
    jti: String,
}

/// A proof whose signature verified: the challenge it answers, and the key (at registration).
#[derive(Debug)]
pub struct Proof {
    pub challenge: String,
    pub alg: Alg,
    pub key: PublicJwk,
}

/// The registration proof: verified with the key in its own header.
pub fn verify_registration(raw: &str) -> Result<Proof, ProofError> {
    let parts = split(raw)?;
    let header = parts.header()?;
    let alg = Alg::parse(&header.alg).ok_or(ProofError::UnsupportedAlg)?;
    let key = header.jwk.ok_or(ProofError::NoKey)?;
    key.verify(alg, parts.signed, &parts.signature)?;
    Ok(Proof { challenge: parts.payload()?.jti, alg, key })
}

/// A refresh proof, verified with the registered `key` and its algorithm; a key in its header
/// (which the specification forbids there) is ignored, never trusted.
pub fn verify_refresh(raw: &str, alg: Alg, key: &PublicJwk) -> Result<String, ProofError> {
    let parts = split(raw)?;
    let header = parts.header()?;
    if Alg::parse(&header.alg) != Some(alg) {
        return Err(ProofError::UnsupportedAlg);
    }
    key.verify(alg, parts.signed, &parts.signature)?;
    Ok(parts.payload()?.jti)
}

struct Parts<'a> {
    /// `header.payload`, what the signature covers.
    signed: &'a [u8],
    header: &'a str,
    payload: &'a str,
    signature: Vec<u8>,
}

impl Parts<'_> {
    fn header(&self) -> Result<Header, ProofError> {
        let header: Header = serde_json::from_slice(&decode(self.header)?).map_err(|_| ProofError::Malformed)?;
        // `typ` is compared as the media type it is (RFC 7515 §4.1.9: case-insensitive).
        match &header.typ {
            Some(typ) if typ.eq_ignore_ascii_case("dbsc+jwt") => Ok(header),
            _ => Err(ProofError::WrongType),
        }
    }

    fn payload(&self) -> Result<Payload, ProofError> {
        serde_json::from_slice(&decode(self.payload)?).map_err(|_| ProofError::Malformed)
    }
}

/// The three parts of a compact JWS. The header's value may come as an RFC 9651 string
/// (quoted) or bare, as Chromium sends it.
fn split(raw: &str) -> Result<Parts<'_>, ProofError> {
    let raw = unquote(raw.trim());
    if raw.len() > MAX_PROOF_LEN {
        return Err(ProofError::Malformed);
    }
    let mut it = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(ProofError::Malformed);
    };
    let signed = &raw.as_bytes()[..header.len() + 1 + payload.len()];
    Ok(Parts { signed, header, payload, signature: decode(signature)? })
}

/// `"value"` → `value`; anything else as it is.
pub(super) fn unquote(raw: &str) -> &str {
    raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(raw)
}

fn decode(part: &str) -> Result<Vec<u8>, ProofError> {
    URL_SAFE_NO_PAD.decode(part).map_err(|_| ProofError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Device {
        pair: EcdsaKeyPair,
    }

    impl Device {
        fn new() -> Device {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Device { pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap() }
        }

        fn jwk(&self) -> serde_json::Value {
            let point = self.pair.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
        }

        fn sign(&self, header: serde_json::Value, payload: serde_json::Value) -> String {
            let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()));
            let sig = self.pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
            format!("{signed}.{}", b64(sig.as_ref()))
        }

        fn registration(&self, jti: &str) -> String {
            self.sign(json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": self.jwk()}), json!({"jti": jti}))
        }
    }

    #[test]
    fn a_registration_proof_yields_its_challenge_and_key_and_a_refresh_verifies_with_that_key() {
        let device = Device::new();
        let proof = verify_registration(&device.registration("c1")).unwrap();
        assert_eq!((proof.challenge.as_str(), proof.alg), ("c1", Alg::ES256));
        let refresh = device.sign(json!({"alg": "ES256", "typ": "dbsc+jwt"}), json!({"jti": "c2", "x": 1}));
        assert_eq!(verify_refresh(&refresh, Alg::ES256, &proof.key).as_deref(), Ok("c2"));
        // Chromium sends the value bare; an RFC 9651 string is the same proof.
        assert_eq!(verify_refresh(&format!("\"{refresh}\""), Alg::ES256, &proof.key).as_deref(), Ok("c2"));
    }

    #[test]
    fn another_key_a_tampered_payload_or_a_wrong_type_is_refused() {
        let (device, thief) = (Device::new(), Device::new());
        let key = verify_registration(&device.registration("c1")).unwrap().key;
        let stolen = thief.sign(json!({"alg": "ES256", "typ": "dbsc+jwt"}), json!({"jti": "c2"}));
        assert_eq!(verify_refresh(&stolen, Alg::ES256, &key).unwrap_err(), ProofError::BadSignature);

        let genuine = device.sign(json!({"alg": "ES256", "typ": "dbsc+jwt"}), json!({"jti": "c2"}));
        let mut parts: Vec<&str> = genuine.split('.').collect();
        let forged_payload = b64(json!({"jti": "c3"}).to_string().as_bytes());
        parts[1] = &forged_payload;
        assert_eq!(verify_refresh(&parts.join("."), Alg::ES256, &key).unwrap_err(), ProofError::BadSignature);

        let untyped = device.sign(json!({"alg": "ES256", "typ": "JWT", "jwk": device.jwk()}), json!({"jti": "c"}));
        assert_eq!(verify_registration(&untyped).unwrap_err(), ProofError::WrongType);
        let none = device.sign(json!({"alg": "none", "typ": "dbsc+jwt", "jwk": device.jwk()}), json!({"jti": "c"}));
        assert_eq!(verify_registration(&none).unwrap_err(), ProofError::UnsupportedAlg);
        let keyless = device.sign(json!({"alg": "ES256", "typ": "dbsc+jwt"}), json!({"jti": "c"}));
        assert_eq!(verify_registration(&keyless).unwrap_err(), ProofError::NoKey);
        // The key the thief puts in a refresh proof's header is not looked at.
        let with_key = thief.sign(json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": thief.jwk()}), json!({"jti": "c"}));
        assert_eq!(verify_refresh(&with_key, Alg::ES256, &key).unwrap_err(), ProofError::BadSignature);
        // The registered algorithm only.
        let rs = device.sign(json!({"alg": "RS256", "typ": "dbsc+jwt"}), json!({"jti": "c"}));
        assert_eq!(verify_refresh(&rs, Alg::ES256, &key).unwrap_err(), ProofError::UnsupportedAlg);
    }

    #[test]
    fn a_key_of_the_wrong_kind_for_its_algorithm_is_refused() {
        let device = Device::new();
        let rsa_named =
            device.sign(json!({"alg": "RS256", "typ": "dbsc+jwt", "jwk": device.jwk()}), json!({"jti": "c"}));
        assert_eq!(verify_registration(&rsa_named).unwrap_err(), ProofError::BadKey);
        let mut p384 = device.jwk();
        p384["crv"] = "P-384".into();
        let wrong_curve = device.sign(json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": p384}), json!({"jti": "c"}));
        assert_eq!(verify_registration(&wrong_curve).unwrap_err(), ProofError::BadKey);
    }

    #[test]
    fn what_is_not_a_jws_is_malformed() {
        for raw in ["", "a.b", "a.b.c.d", "!!.??.**", &"a".repeat(MAX_PROOF_LEN + 1)] {
            assert!(verify_registration(raw).is_err(), "{raw:.20}");
        }
    }

    #[test]
    fn rs256_proofs_verify_with_the_rsa_key_they_carry() {
        use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::from_pkcs1_pem(include_str!("../../tests/fixtures/client-rsa.pem")).unwrap();
        let public = private.to_public_key();
        let jwk = json!({"kty": "RSA", "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())});
        let pair = ring::signature::RsaKeyPair::from_der(private.to_pkcs1_der().unwrap().as_bytes()).unwrap();
        let sign = |header: serde_json::Value, jti: &str| {
            let payload = json!({"jti": jti}).to_string();
            let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload.as_bytes()));
            let mut sig = vec![0; pair.public().modulus_len()];
            pair.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), signed.as_bytes(), &mut sig).unwrap();
            format!("{signed}.{}", b64(&sig))
        };
        let proof = verify_registration(&sign(json!({"alg": "RS256", "typ": "dbsc+jwt", "jwk": jwk}), "c1")).unwrap();
        assert_eq!(proof.alg, Alg::RS256);
        let refresh = sign(json!({"alg": "RS256", "typ": "dbsc+jwt"}), "c2");
        assert_eq!(verify_refresh(&refresh, Alg::RS256, &proof.key).as_deref(), Ok("c2"));
    }
}
