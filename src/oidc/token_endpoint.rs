//! What a token endpoint call (code exchange, refresh) can end in, read once for both grants.

use openidconnect::core::CoreErrorResponseType;
use openidconnect::{HttpClientError, RequestTokenError, StandardErrorResponse};

use super::BoxError;

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
}

impl TokenEndpointError {
    /// The provider says the grant (code or refresh token) is not valid.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, TokenEndpointError::Refused(CoreErrorResponseType::InvalidGrant))
    }

    /// An answer from a provider that refused for a reason of its own, not of the request
    /// (`server_error`, `temporarily_unavailable`, OAuth 2.0 errata): worth trying again.
    pub fn is_provider_failure(&self) -> bool {
        match self {
            TokenEndpointError::Refused(CoreErrorResponseType::Extension(code)) => {
                code == "server_error" || code == "temporarily_unavailable"
            }
            TokenEndpointError::Refused(_) => false,
            _ => true,
        }
    }
}

impl From<RequestError> for TokenEndpointError {
    fn from(e: RequestError) -> Self {
        match e {
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
    }
}
