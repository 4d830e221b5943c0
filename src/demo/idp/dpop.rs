//! Checking DPoP proofs (RFC 9449 §4.3), for the demo provider's token endpoint and the demo
//! APIs: a proof names the request it was made for and carries the public key it was signed
//! with; the key's thumbprint is what a bound token's `cnf.jkt` names.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::AlgorithmParameters;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::session::now_unix;

/// What a proof must say to be accepted for one request.
pub struct Expected<'a> {
    pub method: &'a str,
    /// The request's URL; compared without query and fragment.
    pub url: &'a str,
    /// For a call with a token: the token, whose hash `ath` must be.
    pub access_token: Option<&'a str>,
    /// The server's current nonce, when it asks for one.
    pub nonce: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ProofError {
    Invalid(String),
    /// The proof lacks the server's current nonce: `use_dpop_nonce`.
    NonceRequired,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: u64,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// Proof `jti`s seen, until they are too old to be accepted anyway.
#[derive(Default)]
pub struct SeenProofs(Mutex<HashMap<String, u64>>);

/// How far a proof's `iat` may be from now.
const IAT_WINDOW_SECS: u64 = 60;

/// Checks `proof` for the request `expected` describes; the thumbprint of its key.
pub fn verify(proof: &str, expected: &Expected<'_>, seen: &SeenProofs) -> Result<String, ProofError> {
    let invalid = |why: &str| ProofError::Invalid(why.to_string());
    let header = jsonwebtoken::decode_header(proof).map_err(|_| invalid("not a JWT"))?;
    if header.typ.as_deref() != Some("dpop+jwt") || header.alg != jsonwebtoken::Algorithm::ES256 {
        return Err(invalid("typ must be dpop+jwt and alg ES256"));
    }
    let jwk = header.jwk.ok_or_else(|| invalid("no jwk"))?;
    let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else { return Err(invalid("not an EC key")) };
    let key = jsonwebtoken::DecodingKey::from_ec_components(&ec.x, &ec.y).map_err(|_| invalid("unusable key"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Claims>(proof, &key, &validation).map_err(|e| invalid(&e.to_string()))?.claims;
    let without_query = |url: &str| url.split(['?', '#']).next().unwrap_or(url).to_string();
    if !claims.htm.eq_ignore_ascii_case(expected.method) || claims.htu != without_query(expected.url) {
        return Err(invalid("made for another request (htm, htu)"));
    }
    let now = now_unix();
    if claims.iat + IAT_WINDOW_SECS < now || claims.iat > now + IAT_WINDOW_SECS {
        return Err(invalid("iat too far from now"));
    }
    let ath = expected.access_token.map(|t| URL_SAFE_NO_PAD.encode(Sha256::digest(t.as_bytes())));
    if claims.ath != ath {
        return Err(invalid("ath does not match the token"));
    }
    if expected.nonce.is_some() && claims.nonce.as_deref() != expected.nonce {
        return Err(ProofError::NonceRequired);
    }
    let mut jtis = seen.0.lock().unwrap_or_else(|p| p.into_inner());
    jtis.retain(|_, iat| *iat + 2 * IAT_WINDOW_SECS >= now);
    if jtis.insert(claims.jti, claims.iat).is_some() {
        return Err(invalid("replayed (jti seen before)"));
    }
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, ec.x, ec.y);
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// Why a token was not used as it is bound.
#[derive(Debug, PartialEq, Eq)]
pub enum BindingError {
    /// The server's nonce is missing from the proof: answer `use_dpop_nonce`.
    NonceRequired,
    Refused(&'static str),
}

/// RFC 9449 §7: a token bound to `jkt` is accepted only as `DPoP`, with a `proof` of that key
/// made for the request `expected` describes; an unbound one only as `Bearer`.
pub fn check_binding(
    scheme: &str,
    jkt: Option<&str>,
    proof: Option<&str>,
    expected: &Expected<'_>,
    seen: &SeenProofs,
) -> Result<(), BindingError> {
    match (scheme, jkt) {
        ("Bearer", None) => Ok(()),
        ("DPoP", Some(jkt)) => {
            let proof = proof.ok_or(BindingError::Refused("no DPoP proof"))?;
            match verify(proof, expected, seen) {
                Ok(thumbprint) if thumbprint == jkt => Ok(()),
                Ok(_) => Err(BindingError::Refused("the proof's key is not the token's")),
                Err(ProofError::NonceRequired) => Err(BindingError::NonceRequired),
                Err(ProofError::Invalid(_)) => Err(BindingError::Refused("the DPoP proof is not for this request")),
            }
        }
        _ => Err(BindingError::Refused("the token is not sent as it is bound")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dpop::{DpopKey, access_token_hash};

    #[test]
    fn a_proof_is_accepted_once_for_its_own_request_only() {
        let Ok(key) = DpopKey::generate() else { panic!("key") };
        let seen = SeenProofs::default();
        let url = "https://api.example/orders";
        let expected = Expected { method: "GET", url, access_token: Some("at"), nonce: None };
        let proof = key.proof("GET", url, Some(&access_token_hash("at")), None, now_unix()).unwrap_or_default();
        assert_eq!(verify(&proof, &expected, &seen).as_deref(), Ok(key.thumbprint()));
        assert!(matches!(verify(&proof, &expected, &seen), Err(ProofError::Invalid(why)) if why.contains("replayed")));
        let other = key.proof("GET", "https://api.example/other", Some(&access_token_hash("at")), None, now_unix());
        assert!(verify(&other.unwrap_or_default(), &expected, &seen).is_err(), "another URL");
        let other_token = key.proof("GET", url, Some(&access_token_hash("x")), None, now_unix());
        assert!(verify(&other_token.unwrap_or_default(), &expected, &seen).is_err(), "another token");
        let stale = key.proof("GET", url, Some(&access_token_hash("at")), None, now_unix() - 600);
        assert!(verify(&stale.unwrap_or_default(), &expected, &seen).is_err(), "too old");
        let with_nonce = Expected { nonce: Some("n1"), ..expected };
        let no_nonce = key.proof("GET", url, Some(&access_token_hash("at")), None, now_unix()).unwrap_or_default();
        assert_eq!(verify(&no_nonce, &with_nonce, &seen), Err(ProofError::NonceRequired));
    }
}
