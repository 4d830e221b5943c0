//! The userinfo endpoint (OIDC Core §5.3) at sign-in, for providers that put the profile claims
//! there and not in the ID token. Asked once, with the new access token; what it says is kept
//! with the session, so later calls cost nothing.

use openidconnect::AccessToken;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::{Map, Value};
use url::Url;

use super::jwks::{Expect, JwtError};
use super::login::CallbackError;
use super::{Oidc, OidcError, Provider};
use crate::config::UserinfoMode;
use crate::dpop::{DPOP_HEADER, DPOP_NONCE_HEADER, DpopKey, access_token_hash};
use crate::session::now_unix;

/// A userinfo answer larger than this is not read (a profile is a few hundred bytes).
const MAX_USERINFO_BYTES: usize = 64 * 1024;
/// Seconds of clock difference tolerated on a signed answer's `exp`, `nbf`.
const LEEWAY_SECS: u64 = 30;

/// The claims each scope stands for (OIDC Core §5.4), as far as `/auth/user` shows them: an ID
/// token with none of a requested scope's claims lacks that scope's.
const SCOPE_CLAIMS: &[(&str, &[&str])] = &[("profile", &["name", "preferred_username"]), ("email", &["email"])];

/// Claims of a signed answer that describe the JWT, not the user.
const JWT_CLAIMS: &[&str] = &["iss", "aud", "exp", "iat", "nbf", "jti", "azp"];

/// Why the userinfo endpoint gave no claims bff can use.
#[derive(Debug, thiserror::Error)]
pub enum UserinfoError {
    /// No answer, an error status, an unreadable or oversized body: the provider's trouble.
    #[error("{0}")]
    Unavailable(String),
    /// An answer that must not be believed (another `sub`, a bad or missing signature, an
    /// encrypted one bff cannot read).
    #[error("{0}")]
    Refused(String),
}

/// Whether `claims` (an ID token's) lack what a requested scope stands for.
pub(super) fn lacks_requested_claims(scopes: &[String], claims: &Map<String, Value>) -> bool {
    SCOPE_CLAIMS.iter().any(|(scope, names)| {
        scopes.iter().any(|s| s == scope) && !names.iter().any(|name| claims.get(*name).is_some_and(|v| !v.is_null()))
    })
}

/// The userinfo claims added to the ID token's: the ID token's win (they were verified with
/// it); userinfo fills in what it lacks. Claims about the JWT itself are left out.
pub(super) fn merge(claims: &mut Map<String, Value>, userinfo: Map<String, Value>) {
    for (name, value) in userinfo {
        if !JWT_CLAIMS.contains(&name.as_str()) {
            claims.entry(name).or_insert(value);
        }
    }
}

impl Oidc {
    /// The userinfo claims sign-in should add to the ID token's `claims`, as `oidc.userinfo`
    /// says: `None` when it is not asked (or, with `auto`, when it failed: logged).
    pub(super) async fn userinfo_at_login(
        &self,
        provider: &Provider,
        sub: &str,
        claims: &Map<String, Value>,
        access_token: &AccessToken,
        dpop: Option<&DpopKey>,
    ) -> Result<Option<Map<String, Value>>, CallbackError> {
        let wanted = match self.userinfo {
            UserinfoMode::Never => false,
            UserinfoMode::Always => true,
            UserinfoMode::Auto => lacks_requested_claims(&self.scopes, claims),
        };
        if !wanted {
            return Ok(None);
        }
        let Some(url) = provider.client.user_info_url().map(|u| u.url().clone()) else {
            // With `always`, discovery refuses such a provider; with `auto` there is nothing to ask.
            tracing::debug!("the ID token lacks requested claims and the provider names no userinfo endpoint");
            return Ok(None);
        };
        match self.fetch_userinfo(&url, access_token, dpop).await {
            Ok(userinfo) => match userinfo.get("sub").and_then(Value::as_str) {
                // OIDC Core §5.3.2: the answer may be about another user (token substitution).
                Some(other) if other == sub => Ok(Some(userinfo)),
                Some(_) => Err(CallbackError::InvalidUserinfo("its sub is not the ID token's".into())),
                None => Err(CallbackError::InvalidUserinfo("it has no sub".into())),
            },
            Err(UserinfoError::Refused(why)) => Err(CallbackError::InvalidUserinfo(why)),
            Err(UserinfoError::Unavailable(why)) if self.userinfo == UserinfoMode::Auto => {
                tracing::warn!(
                    "the userinfo endpoint failed ({why}); signing in with the ID token's claims only \
                     (oidc.userinfo = \"auto\")"
                );
                Ok(None)
            }
            Err(UserinfoError::Unavailable(why)) => Err(CallbackError::Provider(OidcError::Userinfo(why))),
        }
    }

    /// One userinfo request with the access token: `Bearer`, or with a DPoP key `DPoP` and a
    /// proof (asked once more with the endpoint's nonce when it wants one, RFC 9449 §9).
    async fn fetch_userinfo(
        &self,
        url: &Url,
        access_token: &AccessToken,
        dpop: Option<&DpopKey>,
    ) -> Result<Map<String, Value>, UserinfoError> {
        let unavailable = |e: &dyn std::fmt::Display| UserinfoError::Unavailable(e.to_string());
        let token = access_token.secret();
        let request = |nonce: Option<&str>| -> Result<reqwest::RequestBuilder, UserinfoError> {
            let request = self.http.get(url.clone()).header(ACCEPT, "application/json, application/jwt");
            Ok(match dpop {
                Some(key) => {
                    let ath = access_token_hash(token);
                    let proof =
                        key.proof("GET", url.as_str(), Some(&ath), nonce, now_unix()).map_err(|e| unavailable(&e))?;
                    request.header(AUTHORIZATION, format!("DPoP {token}")).header(DPOP_HEADER, proof)
                }
                None => request.bearer_auth(token),
            })
        };
        let mut response = self.http.send(request(None)?).await.map_err(|e| unavailable(&e))?;
        let nonce = response.headers().get(DPOP_NONCE_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
        let challenged = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("use_dpop_nonce"));
        if let (Some(nonce), true, Some(_)) = (nonce, challenged, dpop) {
            response = self.http.send(request(Some(&nonce))?).await.map_err(|e| unavailable(&e))?;
        }
        let status = response.status();
        if !status.is_success() {
            return Err(UserinfoError::Unavailable(format!("it answered {status}")));
        }
        let jwt = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/jwt"));
        let body = read_bounded(response).await?;
        if jwt {
            let text = String::from_utf8(body).map_err(|_| UserinfoError::Refused("a JWT that is not text".into()))?;
            return self.verify_userinfo_jwt(text.trim()).await;
        }
        match serde_json::from_slice(&body) {
            Ok(Value::Object(claims)) => Ok(claims),
            _ => Err(UserinfoError::Unavailable("its answer is not a JSON object".into())),
        }
    }

    /// A signed userinfo answer (OIDC Core §5.3.2): signed with a key of the provider's JWKS, with
    /// `iss` = the issuer and `aud` = this client. Unsigned and encrypted ones are refused.
    async fn verify_userinfo_jwt(&self, jwt: &str) -> Result<Map<String, Value>, UserinfoError> {
        use base64::Engine;
        match jwt.split('.').count() {
            3 => {}
            5 => {
                return Err(UserinfoError::Refused(
                    "it is encrypted (JWE), which bff does not decrypt: have the provider sign it only, or answer JSON"
                        .into(),
                ));
            }
            _ => return Err(UserinfoError::Refused("an application/jwt answer that is not a JWT".into())),
        }
        let header: Option<Value> = jwt
            .split('.')
            .next()
            .and_then(|h| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h.trim_end_matches('=')).ok())
            .and_then(|raw| serde_json::from_slice(&raw).ok());
        if header.as_ref().is_some_and(|h| h["alg"].as_str().is_some_and(|alg| alg.eq_ignore_ascii_case("none"))) {
            return Err(UserinfoError::Refused("an unsigned JWT (alg none)".into()));
        }
        // The provider's keys, as logout tokens are checked with.
        let verifier = self.logout_verifier().map_err(|e| UserinfoError::Unavailable(e.to_string()))?;
        let expect = Expect {
            issuer: self.issuer.as_str(),
            audience: self.client_id.as_str(),
            leeway_secs: LEEWAY_SECS,
            required: &["iss", "aud", "sub"],
            types: None,
        };
        verifier.verify::<Map<String, Value>>(jwt, &expect).await.map_err(|e| match e {
            JwtError::KeysUnavailable(e) => UserinfoError::Unavailable(crate::telemetry::error_chain(&e)),
            other => {
                UserinfoError::Refused(format!("its signature or claims: {}", crate::telemetry::error_chain(&other)))
            }
        })
    }
}

/// The body, up to [`MAX_USERINFO_BYTES`].
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, UserinfoError> {
    let too_large = || UserinfoError::Unavailable(format!("its answer is larger than {MAX_USERINFO_BYTES} bytes"));
    if response.content_length().is_some_and(|n| n > MAX_USERINFO_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| UserinfoError::Unavailable(e.to_string()))? {
        if body.len() + chunk.len() > MAX_USERINFO_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn requested_scopes_decide_what_is_lacking() {
        let scopes: Vec<String> = ["openid", "profile", "email"].map(String::from).to_vec();
        assert!(lacks_requested_claims(&scopes, &map(json!({"sub": "u"}))));
        assert!(lacks_requested_claims(&scopes, &map(json!({"sub": "u", "name": "Al"}))), "no email");
        assert!(!lacks_requested_claims(&scopes, &map(json!({"preferred_username": "al", "email": "a@x"}))));
        assert!(!lacks_requested_claims(&["openid".to_string()], &map(json!({"sub": "u"}))), "nothing requested");
        let email_only: Vec<String> = ["openid", "email"].map(String::from).to_vec();
        assert!(!lacks_requested_claims(&email_only, &map(json!({"email": "a@x"}))));
    }

    #[test]
    fn the_id_tokens_claims_win_and_jwt_claims_stay_out() {
        let mut claims = map(json!({"sub": "u", "name": "From the ID token", "iss": "https://idp"}));
        merge(&mut claims, map(json!({"sub": "u", "name": "Other", "email": "a@x", "aud": "bff", "jti": "j"})));
        assert_eq!(claims, map(json!({"sub": "u", "name": "From the ID token", "iss": "https://idp", "email": "a@x"})));
    }
}
