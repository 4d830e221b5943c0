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

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::client_keys::ClientKeys;

    const ISSUER: &str = "https://idp.example";
    const CLIENT: &str = "bff-client";

    /// A P-256 key of the fixtures: its signer, and a verifier that already holds its public key
    /// (the JWKS URI answers nothing: a refetch fails fast).
    fn keys() -> &'static (ClientKeys, JwksVerifier) {
        static KEYS: std::sync::OnceLock<(ClientKeys, JwksVerifier)> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let jwk = include_str!("../../tests/fixtures/client-ec.jwk.json");
            let signer = ClientKeys::parse(&[jwk]).unwrap();
            let http = super::super::IdpHttp::new(Duration::from_millis(200)).unwrap();
            let verifier = JwksVerifier::new(http, Url::parse("http://127.0.0.1:9/jwks").unwrap());
            let set: JwkSet = serde_json::from_value(signer.jwks()).unwrap();
            *verifier.keys.write().unwrap() = Some((set, Instant::now() + Duration::from_secs(3600)));
            (signer, verifier)
        })
    }

    /// A token signed by the provider's key, for us, valid now.
    fn signed() -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        // A client assertion has the shape of any provider-signed token: iss, sub, aud, iat, exp.
        keys().0.assertion(ISSUER, CLIENT, &[], now).unwrap()
    }

    fn verify(jwt: &str) -> Result<serde_json::Value, JwtError> {
        let expect =
            Expect { issuer: ISSUER, audience: CLIENT, leeway_secs: 30, required: &["iss", "aud", "exp"], types: None };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(keys().1.verify(jwt, &expect))
    }

    /// A JWT-shaped string: three dot-separated parts of base64url text, or JSON made to look
    /// like a header and claims.
    fn jwt_like() -> impl Strategy<Value = String> {
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
        prop_oneof![
            "\\PC{0,120}",
            "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,40}",
            ("\\{\"alg\":\"(ES256|RS256|HS256|none|ES384)\"(,\"kid\":\"[a-z0-9-]{0,8}\")?(,\"typ\":\"[A-Za-z+/]{0,12}\")?\\}", "\\{\"iss\":\"[a-z:/.]{0,20}\",\"aud\":\"[a-z-]{0,10}\",\"exp\":[0-9]{1,12}\\}", "[A-Za-z0-9_-]{0,90}")
                .prop_map(move |(h, c, s)| format!("{}.{}.{s}", b64(&h), b64(&c))),
        ]
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        #[test]
        fn no_input_panics_or_is_accepted(jwt in jwt_like()) {
            prop_assert!(verify(&jwt).is_err(), "{}", jwt);
        }

        /// One character changed, added or removed anywhere: refused.
        #[test]
        fn a_modified_signed_token_is_never_accepted(
            at in any::<prop::sample::Index>(),
            c in prop::sample::select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=".to_vec()),
            how in 0u8..3,
        ) {
            let token = signed();
            let modified = crate::prop::mutate(&token, at, c, how);
            prop_assert!(verify(&modified).is_err(), "{} accepted (from {})", modified, token);
        }
    }

    #[test]
    fn the_unmodified_token_is_accepted() {
        assert!(verify(&signed()).is_ok());
    }
}
