//! Verifying JWTs signed by the provider with keys from its JWKS: for tokens openidconnect does
//! not cover (logout tokens) and for the demo API's bearer tokens. Keys are fetched on first use
//! and again when a token names an unknown key (rotation), at most once per interval.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use url::Url;

const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Asymmetric algorithms only: a JWKS never holds the secret an HMAC would need.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("a token of another type ({0:?})")]
    Type(String),
    #[error("no key for this token")]
    UnknownKey,
    #[error("invalid")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("keys unavailable")]
    KeysUnavailable(#[source] reqwest::Error),
}

/// What a token must satisfy besides its signature.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    /// Seconds of clock difference tolerated on `exp`, `nbf` (and `iat` where checked).
    pub leeway_secs: u64,
    /// Claims that must be present.
    pub required: &'a [&'a str],
    /// When the header names a `typ`, one of these (compared without case); `None`: any.
    pub types: Option<&'a [&'a str]>,
}

pub struct JwksVerifier {
    http: super::IdpHttp,
    jwks_uri: Url,
    keys: RwLock<Option<(JwkSet, Instant)>>,
}

impl JwksVerifier {
    pub fn new(http: super::IdpHttp, jwks_uri: Url) -> JwksVerifier {
        JwksVerifier { http, jwks_uri, keys: RwLock::new(None) }
    }

    async fn fetch(&self) -> Result<(), JwtError> {
        let set: JwkSet = self
            .http
            .send(self.http.get(self.jwks_uri.clone()))
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(JwtError::KeysUnavailable)?
            .json()
            .await
            .map_err(JwtError::KeysUnavailable)?;
        if let Ok(mut slot) = self.keys.write() {
            *slot = Some((set, Instant::now()));
        }
        Ok(())
    }

    fn key_for(&self, kid: Option<&str>) -> Option<Jwk> {
        let guard = self.keys.read().ok()?;
        let (set, _) = guard.as_ref()?;
        match kid {
            Some(kid) => set.find(kid).cloned(),
            // No `kid`: acceptable only when there is no choice to make.
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        }
    }

    fn refetch_allowed(&self) -> bool {
        self.keys.read().map(|k| k.as_ref().is_none_or(|(_, at)| at.elapsed() > REFETCH_INTERVAL)).unwrap_or(true)
    }

    /// Verifies signature, `iss`, `aud`, `exp`/`nbf` and the required claims.
    pub async fn verify<T: DeserializeOwned>(&self, jwt: &str, expect: &Expect<'_>) -> Result<T, JwtError> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| JwtError::Malformed)?;
        if !ALLOWED.contains(&header.alg) {
            return Err(JwtError::Algorithm);
        }
        if let (Some(allowed), Some(typ)) = (expect.types, header.typ.as_deref())
            && !allowed.iter().any(|a| a.eq_ignore_ascii_case(typ))
        {
            return Err(JwtError::Type(typ.chars().take(40).collect()));
        }
        let kid = header.kid.as_deref();
        let jwk = match self.key_for(kid) {
            Some(jwk) => jwk,
            None if self.refetch_allowed() => {
                self.fetch().await?;
                self.key_for(kid).ok_or(JwtError::UnknownKey)?
            }
            None => return Err(JwtError::UnknownKey),
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| JwtError::UnknownKey)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[expect.issuer]);
        validation.set_audience(&[expect.audience]);
        validation.leeway = expect.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(expect.required);
        jsonwebtoken::decode::<T>(jwt, &key, &validation).map(|data| data.claims).map_err(JwtError::Invalid)
    }
}
