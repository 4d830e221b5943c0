//! Authorization code + PKCE: building the authorization request, and completing it (code
//! exchange and ID-token validation).

use crate::login_options::LoginOptions;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreAuthenticationFlow, CoreIdToken};
use openidconnect::{
    AccessToken, AccessTokenHash, AuthorizationCode, ClaimsVerificationError, CsrfToken, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RefreshToken, Scope, SignatureVerificationError, TokenResponse,
};
use serde::{Deserialize, Serialize};
use url::Url;

use super::token_endpoint::Recorder;
use super::{Oidc, OidcError, Provider, RawIdToken, TokenEndpointError, UserInfo, Verdict};
use crate::config::ParMode;
use crate::dpop::{DPOP_HEADER, DpopKey};
use crate::session::now_unix;

/// A login in progress, stored server-side under its `state` until the callback takes it.
#[derive(Serialize, Deserialize)]
pub struct PendingLogin {
    pub pkce_verifier: PkceCodeVerifier,
    pub nonce: Nonce,
    pub return_to: String,
    /// Hash of the browser-binding cookie set when the login started.
    pub browser: String,
    /// With `oidc.dpop`: the key the session's tokens will be bound to, made when the login
    /// starts so that the pushed request and the authorization request (`dpop_jkt`, RFC 9449
    /// §10) name it before the code exchange proves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_key: Option<DpopKey>,
    /// What the SPA asked for (`prompt`, `max_age`, `acr_values`…): the callback checks the ID
    /// token against it and answers a silent sign-in's "no" to the SPA.
    #[serde(default)]
    pub options: LoginOptions,
    /// The session this browser had when the sign-in started (its handle): the one the new
    /// session replaces, even when the callback arrives without a `SameSite=Strict` cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// A completed login: the token set and who signed in.
pub struct LoginResult {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub id_token: RawIdToken,
    pub expires_in: Option<Duration>,
    pub user: UserInfo,
    /// The provider's session id (`sid` claim), for back-channel logout.
    pub provider_sid: Option<String>,
    /// With `oidc.dpop`: the key the session's tokens are bound to, made for this sign-in.
    pub dpop_key: Option<DpopKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The provider refused the code (`invalid_grant` and other client errors): 400.
    #[error("the identity provider refused the code exchange")]
    CodeRejected(#[source] TokenEndpointError),
    /// 400.
    #[error("the ID token failed validation: {0}")]
    InvalidIdToken(String),
    /// The provider refused bff's own credentials: a setup problem, 503.
    #[error("the identity provider refused bff's client authentication at the code exchange")]
    ClientAuth(#[source] TokenEndpointError),
    /// A userinfo answer that must not be believed (another `sub`, a bad signature): 400.
    #[error("the userinfo response was refused: {0}")]
    InvalidUserinfo(String),
    /// Unreachable, timed out or 5xx: 502.
    #[error(transparent)]
    Provider(#[from] OidcError),
}

/// Why an authorization response's `iss` (RFC 9207) is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseIssuerError {
    #[error("the authorization response names issuer {0:?}, not ours (mix-up attack or misconfiguration)")]
    Mismatch(String),
    #[error("the authorization response has no iss, which the provider says it always sends (RFC 9207)")]
    Missing,
}

/// Claims that only serve the protocol and mean nothing to the SPA.
const PROTOCOL_CLAIMS: &[&str] = &["nonce", "at_hash", "c_hash", "s_hash"];

impl Oidc {
    /// The authorization URL (PKCE S256, fresh state and nonce) and what the callback needs.
    /// With pushed authorization requests (RFC 9126), the request goes to the provider first
    /// and the browser carries only a reference to it.
    pub async fn begin_login(
        &self,
        return_to: String,
        browser: String,
        options: LoginOptions,
    ) -> Result<(Url, CsrfToken, PendingLogin), OidcError> {
        let provider = self.provider()?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = provider
            .client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge);
        for scope in self.scopes.iter().filter(|s| s.as_str() != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        for (name, value) in &self.extra_auth_params {
            request = request.add_extra_param(name.as_str(), value.as_str());
        }
        for resource in &self.user_resources {
            request = request.add_extra_param("resource", resource.as_str());
        }
        // Pushed with the rest under PAR: the pushed request is made from this URL's query.
        for (name, value) in options.auth_params() {
            request = request.add_extra_param(name, value);
        }
        let dpop_key = if self.dpop { Some(DpopKey::generate()?) } else { None };
        if let Some(key) = &dpop_key {
            request = request.add_extra_param("dpop_jkt", key.thumbprint());
        }
        let (url, state, nonce) = request.url();
        let url = match &provider.par_url {
            Some(endpoint) => self.push_authorization_request(&provider, endpoint, &url, dpop_key.as_ref()).await?,
            None => url,
        };
        Ok((
            url,
            state,
            PendingLogin { pkce_verifier: verifier, nonce, return_to, browser, dpop_key, options, replaces: None },
        ))
    }

    /// RFC 9126 §2: posts the parameters of `authorize` (with client authentication, and with
    /// DPoP a proof of the login's key, RFC 9449 §10.1), and answers the authorization
    /// endpoint's URL with `client_id` and the `request_uri` only.
    async fn push_authorization_request(
        &self,
        provider: &Provider,
        endpoint: &Url,
        authorize: &Url,
        dpop: Option<&DpopKey>,
    ) -> Result<Url, OidcError> {
        #[derive(Deserialize)]
        struct Pushed {
            request_uri: String,
        }
        let params: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
        let mut asked_again = false;
        let response = loop {
            // Made again for a second try: a client assertion and a proof are good once.
            let mut request = self.authenticated_post(provider, endpoint.clone(), params.clone())?;
            let nonce = self.dpop_nonce();
            if let Some(key) = dpop {
                let proof = key.proof("POST", endpoint.as_str(), None, nonce.as_deref(), now_unix())?;
                request = request.header(DPOP_HEADER, proof);
            }
            match self.send_authenticated(request).await {
                Ok(response) => break response,
                // §8: the provider wants its nonce in the proof; it sent one with the refusal.
                Err(e) if dpop.is_some() && !asked_again && e.asks_for_dpop_nonce() && self.dpop_nonce() != nonce => {
                    asked_again = true;
                }
                Err(e) => return Err(OidcError::Push(e)),
            }
        };
        let pushed: Pushed =
            response.json().await.map_err(|e| OidcError::Push(TokenEndpointError::Unreadable(Box::new(e))))?;
        // The endpoint's own query (Azure B2C's `p=`, say) stays.
        let mut url = provider.client.auth_uri().url().clone();
        url.query_pairs_mut()
            .append_pair("client_id", self.client_id.as_str())
            .append_pair("request_uri", &pushed.request_uri);
        Ok(url)
    }

    /// RFC 9207: an `iss` in the authorization response must be our issuer; one is required
    /// when the provider advertises that it always sends it. Checked before anything else of
    /// the response is used.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), ResponseIssuerError> {
        // FAPI 2.0 §5.3.2.2: with the high-security options (DPoP, PAR required) `iss` is
        // required whatever the metadata says.
        let high_security = self.dpop || self.par == ParMode::Required;
        let required = high_security || self.provider().is_ok_and(|p| p.requires_response_iss);
        match iss {
            Some(iss) if iss == self.issuer.as_str() => Ok(()),
            Some(other) => Err(ResponseIssuerError::Mismatch(other.chars().take(200).collect())),
            None if required => Err(ResponseIssuerError::Missing),
            None => Ok(()),
        }
    }

    /// Exchanges the code and validates the ID token (signature, iss, aud, exp, nonce).
    pub async fn complete_login(&self, code: String, pending: PendingLogin) -> Result<LoginResult, CallbackError> {
        let provider = self.provider()?;
        let mut request = provider
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(OidcError::NoTokenEndpoint)?
            .set_pkce_verifier(pending.pkce_verifier);
        for (name, value) in self.client_assertion(&provider, Oidc::token_url(&provider))?.into_iter().flatten() {
            request = request.add_extra_param(name, value);
        }
        // A login started before DPoP was turned on has no key yet: one is made for it here.
        let dpop_key = match (self.dpop, pending.dpop_key) {
            (false, _) => None,
            (true, Some(key)) => Some(key),
            (true, None) => Some(DpopKey::generate().map_err(OidcError::from)?),
        };
        let recorder = Recorder::for_key(self, &provider, dpop_key.as_ref());
        let answer = self.read_answer(request.request_async(&recorder).await, &recorder);
        let response = answer.map_err(|e| match e.verdict() {
            Verdict::GrantOver | Verdict::NotForResource => CallbackError::CodeRejected(e),
            Verdict::ClientAuth => CallbackError::ClientAuth(e),
            Verdict::Transient => CallbackError::Provider(e.into()),
        })?;

        // Sent upstream as the type bff asked for: a token of another type must not be.
        if super::grants::require_token_type(response.token_type(), dpop_key.is_some()).is_err() {
            return Err(CallbackError::InvalidIdToken(format!(
                "the token response's token_type is {:?}, not {}",
                response.token_type().as_ref(),
                if dpop_key.is_some() { "DPoP" } else { "Bearer" }
            )));
        }
        let id_token = response
            .id_token()
            .ok_or_else(|| CallbackError::InvalidIdToken("the token response has no id_token".into()))?;
        let raw_id_token = id_token.to_string();
        let sub = self.verify_id_token(id_token, &pending.nonce, response.access_token()).await?;
        let mut claims =
            decode_claims(&raw_id_token).ok_or_else(|| CallbackError::InvalidIdToken("unreadable claims".into()))?;
        let access_token = response.access_token();
        if let Some(userinfo) =
            self.userinfo_at_login(&provider, &sub, &claims, access_token, dpop_key.as_ref()).await?
        {
            super::userinfo::merge(&mut claims, userinfo);
        }
        let user = user_from_claims(sub, claims);
        let provider_sid = user.claims.get("sid").and_then(|v| v.as_str()).map(String::from);
        Ok(LoginResult {
            access_token: response.access_token().clone(),
            refresh_token: response.refresh_token().cloned(),
            id_token: RawIdToken::new(raw_id_token),
            expires_in: response.expires_in(),
            user,
            provider_sid,
            dpop_key,
        })
    }

    /// Validates an ID token (see `Provider::id_token_verifier`) and its `at_hash`, when it has
    /// one, against the access token it came with; refetches the provider's keys once if it
    /// names an unknown key. Returns the subject.
    async fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        nonce: &Nonce,
        access_token: &AccessToken,
    ) -> Result<String, CallbackError> {
        let first = check_id_token(&*self.provider()?, id_token, nonce, access_token);
        match first {
            Err(IdTokenProblem::Claims(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            ))) if self.refresh_keys().await => {
                check_id_token(&*self.provider()?, id_token, nonce, access_token).map_err(CallbackError::from)
            }
            other => other.map_err(CallbackError::from),
        }
    }
}

enum IdTokenProblem {
    Claims(ClaimsVerificationError),
    Other(String),
}

impl From<IdTokenProblem> for CallbackError {
    fn from(p: IdTokenProblem) -> Self {
        match p {
            IdTokenProblem::Claims(e) => CallbackError::InvalidIdToken(e.to_string()),
            IdTokenProblem::Other(why) => CallbackError::InvalidIdToken(why),
        }
    }
}

fn check_id_token(
    provider: &super::Provider,
    id_token: &CoreIdToken,
    nonce: &Nonce,
    access_token: &AccessToken,
) -> Result<String, IdTokenProblem> {
    let verifier = provider.id_token_verifier();
    let claims = id_token.claims(&verifier, nonce).map_err(IdTokenProblem::Claims)?;
    provider.check_authorized_party(claims).map_err(IdTokenProblem::Other)?;
    if let Some(expected) = claims.access_token_hash() {
        let hash_problem = |e: &dyn std::fmt::Display| IdTokenProblem::Other(format!("at_hash: {e}"));
        let alg = id_token.signing_alg().map_err(|e| hash_problem(&e))?;
        let key = id_token.signing_key(&verifier).map_err(|e| hash_problem(&e))?;
        let actual = AccessTokenHash::from_token(access_token, alg, key).map_err(|e| hash_problem(&e))?;
        if actual != *expected {
            return Err(IdTokenProblem::Other("at_hash does not match the access token".into()));
        }
    }
    Ok(claims.subject().to_string())
}

/// The payload of a JWT whose signature was already verified.
fn decode_claims(jwt: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn user_from_claims(sub: String, mut claims: serde_json::Map<String, serde_json::Value>) -> UserInfo {
    for name in PROTOCOL_CLAIMS {
        claims.remove(*name);
    }
    let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(String::from);
    let name = text("name").or_else(|| text("preferred_username"));
    let email = text("email");
    UserInfo { sub, name, email, claims }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_decoded_and_protocol_claims_dropped() {
        let payload = URL_SAFE_NO_PAD
            .encode(br#"{"sub":"u1","nonce":"n","at_hash":"x","preferred_username":"al","email":"a@x","sid":"s1"}"#);
        let claims = decode_claims(&format!("h.{payload}.sig")).unwrap_or_default();
        let user = user_from_claims("u1".into(), claims);
        assert_eq!(user.name.as_deref(), Some("al"));
        assert_eq!(user.email.as_deref(), Some("a@x"));
        assert!(!user.claims.contains_key("nonce"));
        assert!(!user.claims.contains_key("at_hash"));
        assert_eq!(user.claims.get("sid").and_then(|v| v.as_str()), Some("s1"));
        assert!(decode_claims("nonsense").is_none());
    }
}

#[cfg(test)]
mod properties {
    use openidconnect::core::{CoreIdTokenVerifier, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
    use openidconnect::{ClientId, ClientSecret, IssuerUrl};
    use proptest::prelude::*;

    use super::*;
    use crate::client_keys::ClientKeys;

    const ISSUER: &str = "https://idp.example";
    const CLIENT: &str = "bff-client";

    fn keys() -> &'static (ClientKeys, CoreJsonWebKeySet) {
        static KEYS: std::sync::OnceLock<(ClientKeys, CoreJsonWebKeySet)> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let signer = ClientKeys::parse(&[include_str!("../../tests/fixtures/client-ec.jwk.json")]).unwrap();
            let set = serde_json::from_value(signer.jwks()).unwrap();
            (signer, set)
        })
    }

    /// Verified as `Provider::id_token_verifier` does, with the provider's key ES256; the nonce
    /// is not what is tested here.
    fn accepted(raw: &str) -> bool {
        let Ok(token) = raw.parse::<CoreIdToken>() else { return false };
        let verifier = CoreIdTokenVerifier::new_confidential_client(
            ClientId::new(CLIENT.into()),
            ClientSecret::new("s".into()),
            IssuerUrl::new(ISSUER.into()).unwrap(),
            keys().1.clone(),
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::EcdsaP256Sha256])
        .set_other_audience_verifier_fn(|_| true);
        token.claims(&verifier, |_: Option<&openidconnect::Nonce>| Ok(())).is_ok()
    }

    /// The bytes a JWT's three parts decode to, read as leniently as any library might (unused
    /// trailing bits, padding); `None` if not three decodable parts.
    fn decoded_parts(jwt: &str) -> Option<Vec<Vec<u8>>> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        let lenient = GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let parts: Vec<&str> = jwt.split('.').collect();
        (parts.len() == 3).then(|| parts.iter().map(|p| lenient.decode(p).ok()).collect()).flatten()
    }

    /// A provider-signed token with an ID token's required claims (iss, sub, aud, iat, exp).
    fn signed() -> String {
        keys().0.assertion(ISSUER, CLIENT, &[], now_unix()).unwrap()
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        #[test]
        fn no_input_panics_or_is_accepted(raw in prop_oneof!["\\PC{0,120}", "[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,90}"]) {
            prop_assert!(!accepted(&raw));
            let _ = decode_claims(&raw);
        }

        /// One character changed, added or removed anywhere: refused, unless the text still
        /// decodes to the very bytes that were signed (see the regression test below).
        #[test]
        fn a_modified_id_token_is_never_accepted(
            at in any::<prop::sample::Index>(),
            c in prop::sample::select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=".to_vec()),
            how in 0u8..3,
        ) {
            let token = signed();
            let modified = crate::prop::mutate(&token, at, c, how);
            if decoded_parts(&modified).is_none_or(|parts| Some(parts) != decoded_parts(&token)) {
                prop_assert!(!accepted(&modified), "{} accepted (from {})", modified, token);
            }
        }
    }

    /// Found by the property above: openidconnect decodes base64url ignoring a last
    /// character's unused bits, so an ES256 signature ending `…w` also verifies spelled `…_`
    /// (the same 64 bytes). Harmless: nothing changes in what was signed, and bff receives ID
    /// tokens only from the token endpoint and keys nothing on their text. (Logout tokens,
    /// which anyone can post, go through jsonwebtoken, which refuses such a spelling:
    /// `jwks::properties`.)
    #[test]
    fn a_signature_spelled_with_other_unused_bits_is_the_same_signature() {
        let token = signed();
        let (body, last) = token.split_at(token.len() - 1);
        // 64 bytes in 86 characters: the last one carries two bits and four unused ones.
        let kept = base64::alphabet::URL_SAFE.as_str().find(last).unwrap() & 0b11_0000;
        let respelled: String = base64::alphabet::URL_SAFE.as_str().chars().nth(kept | 0b1111).into_iter().collect();
        let modified = format!("{body}{respelled}");
        assert_ne!(modified, token);
        assert_eq!(decoded_parts(&modified), decoded_parts(&token));
        assert!(accepted(&modified), "openidconnect's reading changed: tighten the property above");
    }

    #[test]
    fn the_unmodified_id_token_is_accepted() {
        assert!(accepted(&signed()));
    }
}
