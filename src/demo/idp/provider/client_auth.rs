//! How the token endpoint knows its caller: client authentication (a secret, or a
//! `private_key_jwt` assertion) and the DPoP proof of the key the tokens will be bound to.

use std::sync::atomic::Ordering;

use serde::Deserialize;

use super::super::Client;
use super::{OAuthError, Presented, Provider, oauth_error};
use crate::config::AuthMethod;
use crate::session::now_unix;

impl Provider {
    /// Authenticates the client with exactly its registered method.
    pub fn authenticate(&self, presented: &Presented) -> Result<&Client, OAuthError> {
        if let Some((form_client_id, assertion)) = &presented.assertion {
            if presented.basic.is_some() || presented.post.is_some() {
                return Err(oauth_error(400, "invalid_request", "more than one client authentication"));
            }
            return self.authenticate_assertion(form_client_id.as_deref(), assertion, &presented.endpoint);
        }
        let (method, (id, secret)) = match (&presented.basic, &presented.post) {
            (Some(b), None) => (AuthMethod::ClientSecretBasic, b),
            (None, Some(p)) => (AuthMethod::ClientSecretPost, p),
            (Some(_), Some(_)) => {
                return Err(oauth_error(400, "invalid_request", "more than one client authentication"));
            }
            (None, None) => return Err(oauth_error(401, "invalid_client", "client authentication required")),
        };
        let client = self.clients.get(id).ok_or_else(|| oauth_error(401, "invalid_client", "unknown client"))?;
        if client.client_secret != *secret {
            return Err(oauth_error(401, "invalid_client", "wrong client secret"));
        }
        if client.auth_method != method {
            return Err(oauth_error(
                401,
                "invalid_client",
                format!("this client must use {}", client.auth_method.as_str()),
            ));
        }
        Ok(client)
    }

    /// `private_key_jwt` (RFC 7523 §3): signed by a key registered for the client, `iss` = `sub`
    /// = the client, `aud` this provider (its issuer or one of its endpoints; with
    /// `assertion_aud_endpoint_only`, the URL of `endpoint`, the one receiving it), a minute or
    /// so of life, a `jti` never seen before.
    fn authenticate_assertion(
        &self,
        form_client_id: Option<&str>,
        jwt: &str,
        endpoint: &str,
    ) -> Result<&Client, OAuthError> {
        #[derive(Deserialize)]
        struct Assertion {
            iss: String,
            sub: String,
            jti: String,
            exp: u64,
            #[serde(default)]
            iat: Option<u64>,
        }
        let refused = |why: &str| oauth_error(401, "invalid_client", why);
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| refused("client_assertion is not a JWT"))?;
        let kid = header.kid.ok_or_else(|| refused("client_assertion has no kid"))?;
        let jwks = self.controls.client_jwks();
        let jwk = jwks.iter().find(|k| k["kid"] == kid.as_str()).ok_or_else(|| refused("unknown key"))?;
        let key = match (jwk["kty"].as_str(), header.alg) {
            (Some("RSA"), jsonwebtoken::Algorithm::RS256 | jsonwebtoken::Algorithm::PS256) => {
                jsonwebtoken::DecodingKey::from_rsa_components(
                    jwk["n"].as_str().unwrap_or_default(),
                    jwk["e"].as_str().unwrap_or_default(),
                )
            }
            (Some("EC"), jsonwebtoken::Algorithm::ES256) => jsonwebtoken::DecodingKey::from_ec_components(
                jwk["x"].as_str().unwrap_or_default(),
                jwk["y"].as_str().unwrap_or_default(),
            ),
            _ => return Err(refused("key type and algorithm do not match")),
        }
        .map_err(|_| refused("unusable key"))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        let audiences: Vec<String> = if self.controls.quirks().assertion_aud_endpoint_only {
            vec![format!("{}{endpoint}", self.issuer)]
        } else {
            ["", "/token", "/par", "/revoke"].iter().map(|path| format!("{}{path}", self.issuer)).collect()
        };
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let claims = jsonwebtoken::decode::<Assertion>(jwt, &key, &validation)
            .map_err(|e| refused(&format!("client_assertion refused: {e}")))?
            .claims;
        if claims.iss != claims.sub || form_client_id.is_some_and(|id| id != claims.iss) {
            return Err(refused("iss, sub and client_id must all name the client"));
        }
        if claims.exp > now_unix() + 300 || claims.iat.is_some_and(|iat| iat > now_unix() + 30) {
            return Err(refused("client_assertion lives too long"));
        }
        let client = self.clients.get(&claims.iss).ok_or_else(|| refused("unknown client"))?;
        if client.auth_method != AuthMethod::PrivateKeyJwt {
            return Err(refused(&format!("this client must use {}", client.auth_method.as_str())));
        }
        let mut data = self.data();
        let now = now_unix();
        data.seen_assertions.retain(|_, exp| *exp >= now);
        if data.seen_assertions.insert(claims.jti, claims.exp).is_some() {
            return Err(refused("client_assertion replayed (jti seen before)"));
        }
        self.counters.client_assertions.fetch_add(1, Ordering::SeqCst);
        Ok(client)
    }

    /// The key a token request's DPoP proof was made with (RFC 9449 §5), if it has one.
    pub(super) fn token_proof(&self, proof: Option<&str>) -> Result<Option<String>, OAuthError> {
        self.endpoint_proof(proof, "/token")
    }

    /// The key a request's DPoP proof for the endpoint at `path` was made with, if it has one.
    pub(super) fn endpoint_proof(&self, proof: Option<&str>, path: &str) -> Result<Option<String>, OAuthError> {
        let Some(proof) = proof else { return Ok(None) };
        let url = format!("{}{path}", self.issuer);
        let nonce = self.controls.requires_dpop_nonce().then_some(self.dpop_nonce.as_str());
        let expected = super::super::dpop::Expected { method: "POST", url: &url, access_token: None, nonce };
        match super::super::dpop::verify(proof, &expected, &self.seen_proofs) {
            Ok(jkt) => {
                self.counters.dpop_proofs.fetch_add(1, Ordering::SeqCst);
                Ok(Some(jkt))
            }
            Err(super::super::dpop::ProofError::NonceRequired) => {
                Err(oauth_error(400, "use_dpop_nonce", "the proof must carry the server's nonce"))
            }
            Err(super::super::dpop::ProofError::Invalid(why)) => Err(oauth_error(400, "invalid_dpop_proof", why)),
        }
    }
}
