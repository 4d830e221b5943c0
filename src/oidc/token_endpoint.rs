//! What an endpoint that authenticates bff (token, pushed authorization requests, revocation)
//! answered, read once for every call, and what it means for the grant: it is over, bff's own
//! credentials were refused, or the provider is failing for now.
//!
//! Providers end grants in more ways than `invalid_grant`: one answers a refresh whose SSO
//! session timed out with 400 `invalid_request`, another with 400 and an empty body. A reading
//! that calls every unknown refusal transient strands the user on 503 until bff's own idle
//! timeout; so every 4xx ends the grant unless it names bff's credentials or a passing state.

use std::sync::Mutex;

use openidconnect::core::CoreErrorResponseType;
use openidconnect::{
    AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse, RequestTokenError, StandardErrorResponse,
};

use super::BoxError;
use crate::config::AuthMethod;

type ClientError = HttpClientError<reqwest::Error>;
pub(super) type RequestError = RequestTokenError<ClientError, StandardErrorResponse<CoreErrorResponseType>>;

/// What a failed call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The grant (code or refresh token) will never work again: a refresh ends the session, a
    /// code exchange is refused.
    GrantOver,
    /// bff's own client authentication was refused: a setup problem; sessions are kept.
    ClientAuth,
    /// RFC 8707 §2.2 `invalid_target`: not for this resource; the grant itself is fine.
    NotForResource,
    /// Unreachable, 5xx, rate-limited or a passing state: try again later.
    Transient,
}

/// Refusals that name a grant or request that cannot succeed (RFC 6749 §5.2).
const GRANT_OVER_CODES: &[&str] =
    &["invalid_grant", "invalid_request", "invalid_scope", "unauthorized_client", "unsupported_grant_type"];
/// Refusals of a provider that is failing or busy (RFC 6749 errata, RFC 8628's `slow_down`), or
/// that wants a DPoP nonce it changed again while bff retried with the last one (RFC 9449 §8).
const TRANSIENT_CODES: &[&str] = &["server_error", "temporarily_unavailable", "slow_down", "use_dpop_nonce"];
/// How much of an `error_description` a log line carries.
const MAX_DESCRIPTION_CHARS: usize = 200;
const MAX_CODE_CHARS: usize = 64;
/// How much of an error answer's body is kept to read it.
const MAX_RECORDED_BODY: usize = 16 * 1024;

/// An answer other than success, as far as bff reads it: the status, and the OAuth error
/// object's fields when the body is one (bounded and stripped to printable ASCII: they go to
/// logs, and a provider could echo anything there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// `error`; `None` when the body is not an OAuth error object (empty, HTML, other JSON).
    pub error: Option<String>,
    pub description: Option<String>,
    body_len: usize,
}

impl Refusal {
    pub fn from_body(status: u16, body: &[u8]) -> Refusal {
        #[derive(serde::Deserialize)]
        struct ErrorObject {
            error: String,
            #[serde(default)]
            error_description: Option<serde_json::Value>,
        }
        let object = serde_json::from_slice::<ErrorObject>(body).ok().filter(|o| !o.error.trim().is_empty());
        let error = object.as_ref().map(|o| printable(&o.error, MAX_CODE_CHARS));
        let description = object
            .and_then(|o| o.error_description)
            .and_then(|d| d.as_str().map(|d| printable(d, MAX_DESCRIPTION_CHARS)))
            .filter(|d| !d.is_empty());
        Refusal { status, error, description, body_len: body.len() }
    }

    pub fn verdict(&self) -> Verdict {
        let code = self.error.as_deref();
        match (self.status, code) {
            // Keycloak answers a wrong client secret 401 `unauthorized_client`.
            (_, Some("invalid_client")) | (401, Some("unauthorized_client")) => Verdict::ClientAuth,
            (_, Some("invalid_target")) => Verdict::NotForResource,
            (_, Some(code)) if TRANSIENT_CODES.contains(&code) => Verdict::Transient,
            (408 | 429, _) => Verdict::Transient,
            (_, Some(code)) if GRANT_OVER_CODES.contains(&code) => Verdict::GrantOver,
            // An endpoint that authenticates bff and answers 401, or 403 without saying why,
            // refused bff's credentials (one provider answers a wrong secret at PAR so).
            (401, _) | (403, None) => Verdict::ClientAuth,
            (400..=499, _) => Verdict::GrantOver,
            _ => Verdict::Transient,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the provider answered {}", self.status)?;
        match (&self.error, &self.description) {
            (Some(error), Some(description)) => write!(f, " {error} ({description:?})"),
            (Some(error), None) => write!(f, " {error}"),
            (None, _) if self.body_len == 0 => write!(f, " with an empty body"),
            (None, _) => write!(f, " with a body that is not an OAuth error ({} bytes)", self.body_len),
        }
    }
}

/// `s` cut to `max` characters, anything but printable ASCII replaced (RFC 6749 §5.2 allows no
/// more in these fields; a log line must not carry control characters).
fn printable(s: &str, max: usize) -> String {
    s.chars().take(max).map(|c| if (' '..='~').contains(&c) { c } else { '?' }).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    #[error("{refusal}{}", advice(refusal, *auth_method))]
    Refused { refusal: Refusal, auth_method: AuthMethod },
    /// No answer at all (timeout, connection refused or lost).
    #[error("no answer from the provider")]
    Request(#[source] ClientError),
    /// A success status with a body that is not a token response.
    #[error("the provider's answer is unreadable")]
    Unreadable(#[source] BoxError),
    #[error("the request failed: {0}")]
    Other(String),
}

/// What an operator should look at, after a refusal that names bff's credentials.
fn advice(refusal: &Refusal, auth_method: AuthMethod) -> String {
    let check = credential_keys(auth_method);
    match (refusal.verdict(), refusal.error.as_deref()) {
        (Verdict::ClientAuth, _) => format!(
            ": the provider refused bff's client authentication (oidc.auth_method = {}): check {check}",
            auth_method.as_str()
        ),
        (_, Some("unauthorized_client")) => format!(
            ": the client may not use this grant, or (as some providers answer a wrong credential) its \
             authentication failed (oidc.auth_method = {}): check the client's grant types at the provider, {check}",
            auth_method.as_str()
        ),
        _ => String::new(),
    }
}

/// The configuration keys behind bff's client authentication.
pub fn credential_keys(auth_method: AuthMethod) -> &'static str {
    match auth_method {
        AuthMethod::PrivateKeyJwt => {
            "oidc.client_id, oidc.client_key_file (is its public key registered at the provider, under the kid \
             bff sends?), oidc.client_key_id, oidc.client_assertion_audience and oidc.auth_method"
        }
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            "oidc.client_id, oidc.client_secret and oidc.auth_method (client_secret_post where the secret holds \
             characters such as + / = %, which some providers decode wrongly in a Basic header)"
        }
    }
}

impl TokenEndpointError {
    pub fn verdict(&self) -> Verdict {
        match self {
            TokenEndpointError::Refused { refusal, .. } => refusal.verdict(),
            _ => Verdict::Transient,
        }
    }

    /// RFC 9449 §8: the provider wants a proof with its nonce.
    pub fn asks_for_dpop_nonce(&self) -> bool {
        matches!(self, TokenEndpointError::Refused { refusal, .. } if refusal.error.as_deref() == Some("use_dpop_nonce"))
    }

    /// A refusal read from an answer bff sent by hand (PAR, revocation).
    pub fn refused(status: u16, body: &[u8], auth_method: AuthMethod) -> Self {
        TokenEndpointError::Refused { refusal: Refusal::from_body(status, body), auth_method }
    }

    /// Reads a failed oauth2 request with the error answer the [`Recorder`] kept: oauth2 keeps
    /// neither the status nor a body that is not an OAuth error object.
    pub fn read(e: RequestError, recorder: &Recorder<'_>, auth_method: AuthMethod) -> Self {
        if let RequestTokenError::Request(e) = e {
            return TokenEndpointError::Request(e);
        }
        if let Some((status, body)) = recorder.take() {
            return TokenEndpointError::refused(status, &body, auth_method);
        }
        match e {
            RequestTokenError::ServerResponse(err) => TokenEndpointError::Refused {
                refusal: Refusal {
                    status: 400,
                    error: Some(printable(err.error().as_ref(), MAX_CODE_CHARS)),
                    description: err.error_description().map(|d| printable(d, MAX_DESCRIPTION_CHARS)),
                    body_len: 0,
                },
                auth_method,
            },
            RequestTokenError::Request(e) => TokenEndpointError::Request(e),
            RequestTokenError::Parse(e, _body) => TokenEndpointError::Unreadable(Box::new(e)),
            RequestTokenError::Other(msg) => TokenEndpointError::Other(msg),
        }
    }
}

/// The HTTP client handed to oauth2 for one token request: passes it on and keeps the last
/// answer that was not a success, for [`TokenEndpointError::read`].
pub struct Recorder<'a> {
    inner: Inner<'a>,
    answer: Mutex<Option<(u16, Vec<u8>)>>,
}

enum Inner<'a> {
    Plain(&'a super::IdpHttp),
    Dpop(super::dpop_client::DpopHttp<'a>),
}

impl<'a> Recorder<'a> {
    pub(super) fn plain(http: &'a super::IdpHttp) -> Self {
        Recorder { inner: Inner::Plain(http), answer: Mutex::new(None) }
    }

    pub(super) fn dpop(client: super::dpop_client::DpopHttp<'a>) -> Self {
        Recorder { inner: Inner::Dpop(client), answer: Mutex::new(None) }
    }

    /// The recorder for a token request of a session with `key` (proven with it), or without.
    pub(super) fn for_key(
        oidc: &'a super::Oidc,
        provider: &'a super::Provider,
        key: Option<&'a crate::dpop::DpopKey>,
    ) -> Self {
        match key {
            Some(key) => Recorder::dpop(oidc.dpop_client(provider, key)),
            None => Recorder::plain(&oidc.http),
        }
    }

    fn take(&self) -> Option<(u16, Vec<u8>)> {
        self.answer.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<'c> AsyncHttpClient<'c> for Recorder<'_> {
    type Error = ClientError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, ClientError>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        let sent = match &self.inner {
            Inner::Plain(http) => http.call(request),
            Inner::Dpop(client) => client.call(request),
        };
        Box::pin(async move {
            let response = sent.await?;
            if response.status() != openidconnect::http::StatusCode::OK {
                let body = response.body();
                let kept = body[..body.len().min(MAX_RECORDED_BODY)].to_vec();
                *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some((response.status().as_u16(), kept));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: u16, body: &str) -> Verdict {
        Refusal::from_body(status, body.as_bytes()).verdict()
    }

    #[test]
    fn every_way_providers_end_a_grant_ends_it() {
        for code in GRANT_OVER_CODES {
            assert_eq!(verdict(400, &format!(r#"{{"error":"{code}"}}"#)), Verdict::GrantOver, "{code}");
        }
        // LemonLDAP::NG's answer to an expired SSO session, Glewlwyd's empty refusal, an error
        // page from a gateway, an unknown code.
        assert_eq!(verdict(400, r#"{"error":"invalid_request","error_description":"no session"}"#), Verdict::GrantOver);
        assert_eq!(verdict(400, ""), Verdict::GrantOver);
        assert_eq!(verdict(400, "<html>bad request</html>"), Verdict::GrantOver);
        assert_eq!(verdict(404, r#"{"message":"not found"}"#), Verdict::GrantOver);
        assert_eq!(verdict(400, r#"{"error":"invalid_dpop_proof"}"#), Verdict::GrantOver);
        assert_eq!(verdict(403, r#"{"error":"access_denied"}"#), Verdict::GrantOver);
    }

    #[test]
    fn refusals_of_bffs_credentials_are_told_apart() {
        assert_eq!(verdict(401, r#"{"error":"invalid_client"}"#), Verdict::ClientAuth);
        assert_eq!(verdict(400, r#"{"error":"invalid_client"}"#), Verdict::ClientAuth);
        assert_eq!(verdict(401, ""), Verdict::ClientAuth);
        assert_eq!(verdict(401, "Unauthorized"), Verdict::ClientAuth);
        assert_eq!(verdict(403, ""), Verdict::ClientAuth);
        assert_eq!(verdict(401, r#"{"error":"unauthorized_client"}"#), Verdict::ClientAuth, "Keycloak");
        assert_eq!(
            verdict(401, r#"{"error":"access_denied","error_description":"Unauthorized"}"#),
            Verdict::ClientAuth,
            "Auth0"
        );
        assert_eq!(verdict(403, r#"{"error":"invalid_grant"}"#), Verdict::GrantOver, "Auth0");
        // An explicit grant refusal is one, whatever the status.
        assert_eq!(verdict(401, r#"{"error":"invalid_grant"}"#), Verdict::GrantOver);
    }

    #[test]
    fn a_failing_or_busy_provider_is_tried_again_later() {
        assert_eq!(verdict(500, ""), Verdict::Transient);
        assert_eq!(verdict(503, "<html>503</html>"), Verdict::Transient);
        assert_eq!(verdict(502, r#"{"error":"invalid_grant"}"#), Verdict::GrantOver);
        assert_eq!(verdict(429, r#"{"error":"invalid_request"}"#), Verdict::Transient);
        assert_eq!(verdict(408, ""), Verdict::Transient);
        assert_eq!(verdict(400, r#"{"error":"temporarily_unavailable"}"#), Verdict::Transient);
        assert_eq!(verdict(400, r#"{"error":"server_error"}"#), Verdict::Transient);
        assert_eq!(verdict(400, r#"{"error":"invalid_target"}"#), Verdict::NotForResource);
        let no_answer = TokenEndpointError::Other("x".into());
        assert_eq!(no_answer.verdict(), Verdict::Transient);
    }

    #[test]
    fn log_lines_name_status_code_and_a_bounded_description() {
        let long = "x".repeat(5000);
        let body = format!(r#"{{"error":"invalid_request","error_description":"line\nbreak {long}"}}"#);
        let refusal = Refusal::from_body(400, body.as_bytes());
        let text = refusal.to_string();
        assert!(text.starts_with("the provider answered 400 invalid_request (\"line?break xxx"), "{text}");
        assert!(text.len() < 300, "{text}");
        assert_eq!(Refusal::from_body(400, b"").to_string(), "the provider answered 400 with an empty body");
        assert_eq!(
            Refusal::from_body(502, b"<html/>").to_string(),
            "the provider answered 502 with a body that is not an OAuth error (7 bytes)"
        );
        let client = TokenEndpointError::refused(401, br#"{"error":"invalid_client"}"#, AuthMethod::PrivateKeyJwt);
        let text = client.to_string();
        assert!(text.contains("401 invalid_client") && text.contains("oidc.client_key_id"), "{text}");
        let unauthorized =
            TokenEndpointError::refused(400, br#"{"error":"unauthorized_client"}"#, AuthMethod::ClientSecretBasic);
        assert!(unauthorized.to_string().contains("oidc.client_secret"), "{unauthorized}");
        let ended = TokenEndpointError::refused(400, br#"{"error":"invalid_grant"}"#, AuthMethod::ClientSecretBasic);
        assert_eq!(ended.to_string(), "the provider answered 400 invalid_grant");
    }
}
