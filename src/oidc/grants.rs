//! Grants after login: refresh (RFC 6749 §6) and revocation (RFC 7009).

use std::time::Duration;

use openidconnect::core::{CoreErrorResponseType, CoreRevocableToken};
use openidconnect::{
    AccessToken, Nonce, OAuth2TokenResponse, RefreshToken, RequestTokenError, RevocationUrl, TokenResponse,
};

use super::{Oidc, OidcError, RawIdToken, error_chain};

/// A successful refresh.
pub struct Refreshed {
    pub access_token: AccessToken,
    /// Present when the provider rotated the refresh token; absent means keep the old one.
    pub refresh_token: Option<RefreshToken>,
    /// A new, validated ID token for the same subject, if the provider sent one.
    pub id_token: Option<RawIdToken>,
    pub expires_in: Option<Duration>,
}

/// Why a refresh failed, by consequence.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RefreshError {
    /// `invalid_grant`: the grant is gone; the session is over.
    #[error("the provider rejected the refresh token (invalid_grant)")]
    Revoked,
    /// Anything else (unreachable, timeout, 5xx, `invalid_client`, `server_error`,
    /// `temporarily_unavailable`): keep the session and the refresh token, try again later.
    #[error("token refresh unavailable: {0}")]
    Unavailable(String),
}

impl Oidc {
    pub async fn refresh(&self, refresh_token: &RefreshToken, sub: &str) -> Result<Refreshed, RefreshError> {
        let provider = self.provider().map_err(|e| RefreshError::Unavailable(e.to_string()))?;
        let request = provider
            .client
            .exchange_refresh_token(refresh_token)
            .map_err(|e| RefreshError::Unavailable(format!("provider has no token endpoint ({e})")))?;
        let response = request.request_async(&self.http).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(err) if *err.error() == CoreErrorResponseType::InvalidGrant => {
                RefreshError::Revoked
            }
            RequestTokenError::ServerResponse(err) => {
                RefreshError::Unavailable(format!("token endpoint answered {}", err.error().as_ref()))
            }
            RequestTokenError::Request(e) => RefreshError::Unavailable(error_chain(&e)),
            RequestTokenError::Parse(e, _body) => RefreshError::Unavailable(format!("unreadable token response: {e}")),
            RequestTokenError::Other(msg) => RefreshError::Unavailable(msg),
        })?;
        let id_token = response.id_token().and_then(|token| {
            // OIDC Core §12.2: a refreshed ID token must be valid and name the same subject;
            // one that is not is ignored (the tokens it came with are still good).
            let verified = token
                .claims(&provider.client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
                .map_err(|e| e.to_string())
                .and_then(|claims| {
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

    /// Revokes a refresh token when the provider has a revocation endpoint; Ok(false) if it has none.
    pub async fn revoke_refresh_token(&self, refresh_token: &RefreshToken) -> Result<bool, OidcError> {
        let provider = self.provider()?;
        let Some(url) = provider.revocation_url.clone() else { return Ok(false) };
        provider
            .client
            .clone()
            .set_revocation_url(RevocationUrl::from_url(url))
            .revoke_token(CoreRevocableToken::from(refresh_token.clone()))
            .map_err(|e| OidcError::Unavailable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| {
                OidcError::Unavailable(match e {
                    RequestTokenError::ServerResponse(err) => format!("revocation endpoint answered {}", err.error()),
                    other => error_chain(&other),
                })
            })?;
        Ok(true)
    }
}
