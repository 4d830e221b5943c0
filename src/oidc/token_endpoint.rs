//! What a token endpoint call (code exchange, refresh) can end in, read once for both grants.

use openidconnect::core::CoreErrorResponseType;
use openidconnect::{HttpClientError, RequestTokenError, StandardErrorResponse};

use super::BoxError;
use crate::config::AuthMethod;

type RequestError = RequestTokenError<HttpClientError<reqwest::Error>, StandardErrorResponse<CoreErrorResponseType>>;

#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    /// An OAuth error answer (RFC 6749 §5.2), such as `invalid_grant`.
    #[error("the token endpoint answered {}", .0.as_ref())]
    Refused(CoreErrorResponseType),
    #[error("the token request failed")]
    Request(#[source] HttpClientError<reqwest::Error>),
    /// A body that is not an OAuth answer at all: a proxy's error page, a 5xx.
    #[error("the token response is unreadable")]
    Unreadable(#[source] BoxError),
    #[error("the token request failed: {0}")]
    Other(String),
    /// `invalid_client`: a setup mistake on bff's side, not a refusal of the grant.
    #[error("{}", client_auth_failed(.auth_method))]
    ClientAuthFailed { auth_method: &'static str },
}

/// What bff says when the provider refuses its client authentication (token endpoint or
/// revocation endpoint).
pub fn client_auth_failed(auth_method: &str) -> String {
    let credential = if auth_method == "private_key_jwt" {
        "oidc.client_key_file (is its public key registered at the provider?)"
    } else {
        "oidc.client_secret"
    };
    format!(
        "the provider refused bff's client authentication (invalid_client, with oidc.auth_method = \
         {auth_method}): check oidc.client_id, {credential} and oidc.auth_method"
    )
}

impl TokenEndpointError {
    /// The provider says the grant (code or refresh token) is not valid.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, TokenEndpointError::Refused(CoreErrorResponseType::InvalidGrant))
    }

    /// RFC 8707 §2.2: the resource asked for is not one the grant or the client may have.
    pub fn is_invalid_target(&self) -> bool {
        matches!(self, TokenEndpointError::Refused(CoreErrorResponseType::Extension(code)) if code == "invalid_target")
    }

    /// An answer from a provider that refused for a reason of its own, not of the request
    /// (`server_error`, `temporarily_unavailable`, OAuth 2.0 errata): worth trying again.
    pub fn is_provider_failure(&self) -> bool {
        match self {
            TokenEndpointError::Refused(CoreErrorResponseType::Extension(code)) => {
                code == "server_error" || code == "temporarily_unavailable"
            }
            TokenEndpointError::Refused(_) | TokenEndpointError::ClientAuthFailed { .. } => false,
            _ => true,
        }
    }
}

impl TokenEndpointError {
    /// Reads a failed token request; `auth_method` is how bff authenticated itself.
    pub fn read(e: RequestError, auth_method: AuthMethod) -> Self {
        match e {
            RequestTokenError::ServerResponse(err) if *err.error() == CoreErrorResponseType::InvalidClient => {
                TokenEndpointError::ClientAuthFailed { auth_method: auth_method.as_str() }
            }
            RequestTokenError::ServerResponse(err) => TokenEndpointError::Refused(err.error().clone()),
            RequestTokenError::Request(e) => TokenEndpointError::Request(e),
            RequestTokenError::Parse(e, _body) => TokenEndpointError::Unreadable(Box::new(e)),
            RequestTokenError::Other(msg) => TokenEndpointError::Other(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_provider_side_refusals_count_as_failures_of_the_provider() {
        let refused = |code: CoreErrorResponseType| TokenEndpointError::Refused(code);
        assert!(refused(CoreErrorResponseType::InvalidGrant).is_invalid_grant());
        assert!(!refused(CoreErrorResponseType::InvalidGrant).is_provider_failure());
        assert!(!refused(CoreErrorResponseType::InvalidClient).is_provider_failure());
        assert!(refused(CoreErrorResponseType::Extension("server_error".into())).is_provider_failure());
        assert!(refused(CoreErrorResponseType::Extension("temporarily_unavailable".into())).is_provider_failure());
        assert!(!refused(CoreErrorResponseType::Extension("consent_required".into())).is_provider_failure());
        assert!(TokenEndpointError::Other("x".into()).is_provider_failure());
        let client = TokenEndpointError::ClientAuthFailed { auth_method: "client_secret_post" };
        assert!(!client.is_provider_failure() && !client.is_invalid_grant());
        assert!(
            client.to_string().contains("client authentication") && client.to_string().contains("client_secret_post")
        );
    }
}
