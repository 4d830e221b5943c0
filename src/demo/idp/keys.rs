//! The demo provider's signing key: RSA 2048 generated at start, published as a JWKS, used for
//! ID tokens, access tokens and logout tokens (RS256).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Value,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Result<SigningKey, anyhow::Error> {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let der = private.to_pkcs1_der()?;
        let n = private.n().to_bytes_be();
        let e = private.e().to_bytes_be();
        Ok(SigningKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            decoding: DecodingKey::from_rsa_raw_components(&n, &e),
            jwk: json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(&n),
                "e": URL_SAFE_NO_PAD.encode(&e),
            }),
        })
    }

    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    pub fn sign<T: Serialize>(&self, claims: &T, typ: Option<&str>) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = typ.map(String::from);
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    /// Verifies a token this key signed: signature and, when given, audience; expiry optional.
    pub fn verify<T: DeserializeOwned>(&self, jwt: &str, audience: Option<&str>, check_exp: bool) -> Option<T> {
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = check_exp;
        v.required_spec_claims.clear();
        match audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        jsonwebtoken::decode::<T>(jwt, &self.decoding, &v).ok().map(|d| d.claims)
    }
}
