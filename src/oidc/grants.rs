//! Grants after login: refresh (RFC 6749 §6), client credentials (§4.4), token exchange
//! (RFC 8693) and revocation (RFC 7009).

use std::time::Duration;

use openidconnect::core::CoreTokenType;
use openidconnect::{AccessToken, AuthType, Nonce, OAuth2TokenResponse, RefreshToken, Scope, TokenResponse};

use super::token_endpoint::Recorder;
use super::{Credential, Oidc, OidcError, Provider, RawIdToken, TokenEndpointError, Verdict};
use crate::dpop::DpopKey;
use url::Url;

/// A successful refresh.
pub struct Refreshed {
    pub access_token: AccessToken,
    /// Present when the provider rotated the refresh token; absent means keep the old one.
    pub refresh_token: Option<RefreshToken>,
    /// A new, validated ID token for the same subject, if the provider sent one.
    pub id_token: Option<RawIdToken>,
    pub expires_in: Option<Duration>,
}

/// bff's own access token, from the client-credentials grant.
pub struct ClientToken {
    pub access_token: AccessToken,
    pub expires_in: Option<Duration>,
}

/// A token got by exchanging the session's access token (RFC 8693).
pub struct Exchanged {
    pub access_token: AccessToken,
    pub expires_in: Option<Duration>,
}

/// Why a token exchange failed, by consequence.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The provider will not exchange the token for this audience (`invalid_target`,
    /// `invalid_request`, `invalid_grant`, `unauthorized_client`, any refusal that is neither of
    /// bff's credentials nor passing): the route is refused, the session is kept (the subject
    /// token was live; its grant is not what was refused).
    #[error("the provider refused the exchange")]
    Refused(#[source] TokenEndpointError),
    /// The provider refused bff's own credentials: a setup problem; the session is kept.
    #[error("the provider refused bff's client authentication")]
    ClientAuth(#[source] OidcError),
    /// Unreachable, timeout, 5xx, 429, `server_error`, an answer bff cannot use: try later.
    #[error("token exchange unavailable")]
    Unavailable(#[from] OidcError),
}

/// RFC 8693 §2.1 and §3.
pub(super) const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An exchange's success answer (RFC 8693 §2.2.1), as far as bff reads it.
#[derive(serde::Deserialize)]
struct ExchangeAnswer {
    access_token: String,
    #[serde(default)]
    issued_token_type: Option<String>,
    token_type: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// bff attaches tokens as the type it asked for (`DPoP` with a proof, `Bearer` otherwise): a
/// token of another type would be sent wrongly.
pub(super) fn require_token_type(token_type: &CoreTokenType, dpop: bool) -> Result<(), OidcError> {
    let expected = if dpop { "DPoP" } else { "Bearer" };
    if token_type.as_ref().eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(OidcError::UnsupportedTokenType(token_type.as_ref().to_string()))
    }
}

/// The token that stands for a grant at revocation: the refresh token, or, for a grant without
/// one, the access token (RFC 7009 §2.1).
#[derive(Clone, Copy)]
pub enum GrantToken<'t> {
    Refresh(&'t RefreshToken),
    Access(&'t AccessToken),
}

/// What a revocation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    /// Neither the configuration nor the provider's metadata names a revocation endpoint.
    NoEndpoint,
}

/// Why a refresh failed, by consequence.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The provider ended the grant (`invalid_grant`, and every other refusal of the grant:
    /// see `token_endpoint::Verdict`); the session is over.
    #[error("the provider ended the grant")]
    GrantOver(#[source] TokenEndpointError),
    /// `invalid_target` (RFC 8707 §2.2): the grant does not cover the resource asked for; the
    /// session and its other tokens are fine.
    #[error("the provider will not issue a token for this resource (invalid_target)")]
    NotForResource,
    /// The provider refused bff's own credentials: a setup problem; the session is kept.
    #[error("the provider refused bff's client authentication")]
    ClientAuth(#[source] OidcError),
    /// Anything else (unreachable, timeout, 5xx, `server_error`, `temporarily_unavailable`,
    /// 429): keep the session and the refresh token, try again later.
    #[error("token refresh unavailable")]
    Unavailable(#[from] OidcError),
}

impl Oidc {
    /// A refresh; with `resource`, for that audience (RFC 8707 §2.2), the default one otherwise;
    /// with the session's DPoP key, proven with it.
    pub async fn refresh(
        &self,
        refresh_token: &RefreshToken,
        sub: &str,
        resource: Option<&str>,
        dpop: Option<&DpopKey>,
    ) -> Result<Refreshed, RefreshError> {
        let provider = self.provider()?;
        let mut asked_again = false;
        let response = loop {
            let mut request =
                provider.client.exchange_refresh_token(refresh_token).map_err(OidcError::NoTokenEndpoint)?;
            if let Some(resource) = resource {
                request = request.add_extra_param("resource", resource);
            }
            // A new assertion for each request: a provider refuses a `jti` it has seen.
            for (name, value) in self.client_assertion(&provider, Oidc::token_url(&provider))?.into_iter().flatten() {
                request = request.add_extra_param(name, value);
            }
            let recorder = Recorder::for_key(self, &provider, dpop);
            let answer = self.read_answer(request.request_async(&recorder).await, &recorder);
            match answer {
                Ok(response) => break response,
                // No answer (timeout, connection lost): the provider may have rotated the refresh
                // token already. One prompt second try with the same token: a provider with a
                // reuse grace period answers it with the new pair; without one it would have
                // refused the next refresh anyway.
                Err(e @ TokenEndpointError::Request(_)) if !asked_again => {
                    tracing::warn!(
                        "no answer to a refresh ({}); asking once more with the same refresh token",
                        crate::telemetry::error_chain(&e)
                    );
                    asked_again = true;
                }
                Err(e) => {
                    return Err(match e.verdict() {
                        Verdict::GrantOver => RefreshError::GrantOver(e),
                        Verdict::NotForResource => RefreshError::NotForResource,
                        Verdict::ClientAuth => RefreshError::ClientAuth(e.into()),
                        Verdict::Transient => RefreshError::Unavailable(e.into()),
                    });
                }
            }
        };
        require_token_type(response.token_type(), dpop.is_some())?;
        let id_token = response.id_token().and_then(|token| {
            // OIDC Core §12.2: a refreshed ID token must be valid and name the same subject;
            // one that is not is ignored (the tokens it came with are still good).
            let verified = token
                .claims(&provider.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
                .map_err(|e| e.to_string())
                .and_then(|claims| {
                    provider.check_authorized_party(claims)?;
                    (claims.subject().as_str() == sub).then_some(()).ok_or_else(|| "subject changed".to_string())
                });
            match verified {
                Ok(()) => Some(RawIdToken::new(token.to_string())),
                Err(reason) => {
                    tracing::warn!(reason, "ignoring the ID token of a refresh response");
                    None
                }
            }
        });
        Ok(Refreshed {
            access_token: response.access_token().clone(),
            refresh_token: response.refresh_token().cloned(),
            id_token,
            expires_in: response.expires_in(),
        })
    }

    /// bff's own token (RFC 6749 §4.4), for `scopes` and, with `resource`, that audience.
    pub async fn client_credentials(
        &self,
        scopes: &[String],
        resource: Option<&str>,
    ) -> Result<ClientToken, OidcError> {
        let provider = self.provider()?;
        let mut request = provider.client.exchange_client_credentials().map_err(OidcError::NoTokenEndpoint)?;
        request = request.add_scopes(scopes.iter().cloned().map(Scope::new));
        if let Some(resource) = resource {
            request = request.add_extra_param("resource", resource);
        }
        for (name, value) in self.client_assertion(&provider, Oidc::token_url(&provider))?.into_iter().flatten() {
            request = request.add_extra_param(name, value);
        }
        let recorder = Recorder::plain(&self.http);
        let response = self.read_answer(request.request_async(&recorder).await, &recorder)?;
        require_token_type(response.token_type(), false)?;
        Ok(ClientToken { access_token: response.access_token().clone(), expires_in: response.expires_in() })
    }

    /// RFC 8693: the session's access token (`subject`) exchanged for an access token for
    /// `audience` and/or `resource`, with `scopes` (none: the provider's choice). Sent without a
    /// DPoP proof, whatever the session's key: the token asked for is a `Bearer` one (an answer
    /// of another `token_type` is refused). Sent by hand: oauth2 has no token-exchange request.
    pub async fn exchange(
        &self,
        subject: &AccessToken,
        audience: Option<&str>,
        resource: Option<&str>,
        scopes: &[String],
    ) -> Result<Exchanged, ExchangeError> {
        let provider = self.provider()?;
        let url = provider.client.token_uri().map(|u| u.url().clone()).ok_or_else(|| {
            OidcError::TokenEndpoint(TokenEndpointError::Other("the provider names no token endpoint".into()))
        })?;
        let mut form: Vec<(String, String)> = vec![
            ("grant_type".into(), TOKEN_EXCHANGE_GRANT.into()),
            ("subject_token".into(), subject.secret().clone()),
            ("subject_token_type".into(), ACCESS_TOKEN_TYPE.into()),
            ("requested_token_type".into(), ACCESS_TOKEN_TYPE.into()),
        ];
        if let Some(audience) = audience {
            form.push(("audience".into(), audience.into()));
        }
        if let Some(resource) = resource {
            form.push(("resource".into(), resource.into()));
        }
        if !scopes.is_empty() {
            form.push(("scope".into(), scopes.join(" ")));
        }
        let request = self.authenticated_post(&provider, url, form)?;
        let response = match self.send_authenticated(request).await {
            Ok(response) => response,
            Err(e) => {
                return Err(match e.verdict() {
                    Verdict::GrantOver | Verdict::NotForResource => ExchangeError::Refused(e),
                    Verdict::ClientAuth => ExchangeError::ClientAuth(e.into()),
                    Verdict::Transient => ExchangeError::Unavailable(e.into()),
                });
            }
        };
        let body = super::http::read_bounded(response, 64 * 1024).await;
        let answer: ExchangeAnswer = serde_json::from_slice(&body)
            .map_err(|e| OidcError::TokenEndpoint(TokenEndpointError::Unreadable(Box::new(e))))?;
        if !answer.token_type.eq_ignore_ascii_case("Bearer") {
            return Err(OidcError::UnsupportedTokenType(answer.token_type).into());
        }
        if let Some(issued) = answer.issued_token_type.filter(|t| t != ACCESS_TOKEN_TYPE) {
            return Err(OidcError::UnsupportedTokenType(issued).into());
        }
        Ok(Exchanged {
            access_token: AccessToken::new(answer.access_token),
            expires_in: answer.expires_in.map(Duration::from_secs),
        })
    }

    /// A form post to `url` with bff's client authentication, as `oidc.auth_method` says (a
    /// header, or fields of the form), for the calls bff makes by hand (revocation, pushed
    /// authorization requests, token exchange).
    pub(super) fn authenticated_post(
        &self,
        provider: &Provider,
        url: Url,
        mut form: Vec<(String, String)>,
    ) -> Result<reqwest::RequestBuilder, OidcError> {
        let endpoint = url.to_string();
        let request = self.http.post(url);
        let with_client_id = |form: &mut Vec<(String, String)>| {
            form.retain(|(name, _)| name != "client_id");
            form.push(("client_id".into(), self.client_id.to_string()));
        };
        let request = match (&self.credential, &self.auth_type) {
            (Credential::Keys(_), _) => {
                with_client_id(&mut form);
                for (name, value) in self.client_assertion(provider, &endpoint)?.into_iter().flatten() {
                    form.push((name.into(), value));
                }
                request
            }
            (Credential::Secret(secret), AuthType::RequestBody) => {
                with_client_id(&mut form);
                form.push(("client_secret".into(), secret.secret().clone()));
                request
            }
            (Credential::Secret(secret), _) => {
                // RFC 6749 §2.3.1: form-urlencode each part before base64.
                let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                request.basic_auth(encode(self.client_id.as_str()), Some(encode(secret.secret())))
            }
        };
        Ok(request.form(&form))
    }

    /// Sends a request made with `authenticated_post`; a success answer, or what the refusal
    /// was (read as a token endpoint's, which these endpoints' errors are). What it said of
    /// bff's credentials is kept (`note_client_auth`).
    pub(super) async fn send_authenticated(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, TokenEndpointError> {
        let answer = self.send_authenticated_once(request).await;
        self.note_client_auth(answer.as_ref().map(|_| ()));
        answer
    }

    async fn send_authenticated_once(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, TokenEndpointError> {
        let response = self
            .http
            .send(request)
            .await
            .map_err(|e| TokenEndpointError::Request(openidconnect::HttpClientError::Reqwest(Box::new(e))))?;
        self.keep_dpop_nonce(response.headers());
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // A refusal's body is read within bounds: a hostile or broken endpoint may send anything.
        let body = super::http::read_bounded(response, 16 * 1024).await;
        Err(TokenEndpointError::refused(status.as_u16(), &body, self.auth_method))
    }

    /// Revokes a refresh token (RFC 7009) when the provider has a revocation endpoint. Sent by
    /// hand: oauth2's helper refuses plain-http endpoints, which rules out a provider on loopback
    /// during development.
    pub async fn revoke(&self, grant: GrantToken<'_>) -> Result<Revocation, OidcError> {
        let provider = self.provider()?;
        let Some(url) = provider.revocation_url.clone() else { return Ok(Revocation::NoEndpoint) };
        let (token, hint) = match grant {
            GrantToken::Refresh(t) => (t.secret().as_str(), "refresh_token"),
            GrantToken::Access(t) => (t.secret().as_str(), "access_token"),
        };
        let form = vec![("token".into(), token.to_string()), ("token_type_hint".into(), hint.to_string())];
        let request = self.authenticated_post(&provider, url, form)?;
        self.send_authenticated(request).await.map_err(OidcError::Revocation)?;
        Ok(Revocation::Revoked)
    }
}
