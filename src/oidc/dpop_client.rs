//! Token requests with a DPoP proof (RFC 9449 §5): the HTTP client handed to oauth2 for the code
//! exchange and refreshes of a session with a DPoP key. The provider's nonce (§8) is kept and
//! sent; a request it answers `use_dpop_nonce` is sent once more with the nonce it gave.

use std::future::Future;
use std::pin::Pin;

use openidconnect::{AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse, http};

use super::{Oidc, Provider};
use crate::dpop::{DPOP_HEADER, DPOP_NONCE_HEADER, DpopKey};
use crate::session::now_unix;

type ClientError = HttpClientError<reqwest::Error>;

/// The HTTP client handed to oauth2 for the token requests of a session with a DPoP key.
pub(super) struct DpopHttp<'a> {
    oidc: &'a Oidc,
    provider: &'a Provider,
    key: &'a DpopKey,
}

impl<'c> AsyncHttpClient<'c> for DpopHttp<'_> {
    type Error = ClientError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, ClientError>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.oidc.send_with_proof(self.provider, self.key, request))
    }
}

impl Oidc {
    /// The provider's last `DPoP-Nonce`, for the next proof.
    pub(super) fn dpop_nonce(&self) -> Option<String> {
        self.dpop_nonce.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps a `DPoP-Nonce` the provider sent with any answer (§8).
    pub(super) fn keep_dpop_nonce(&self, headers: &http::HeaderMap) {
        if let Some(fresh) = headers.get(DPOP_NONCE_HEADER).and_then(|v| v.to_str().ok()) {
            *self.dpop_nonce.lock().unwrap_or_else(|p| p.into_inner()) = Some(fresh.to_string());
        }
    }

    /// An HTTP client for oauth2 that signs each token request with `key`.
    pub(super) fn dpop_client<'a>(&'a self, provider: &'a Provider, key: &'a DpopKey) -> DpopHttp<'a> {
        DpopHttp { oidc: self, provider, key }
    }

    async fn send_with_proof(
        &self,
        provider: &Provider,
        key: &DpopKey,
        request: HttpRequest,
    ) -> Result<HttpResponse, ClientError> {
        let (parts, body) = request.into_parts();
        let nonce = self.dpop_nonce();
        let (response, offered) = self.send_once(key, &parts, &body, nonce.as_deref()).await?;
        let challenged = response.status() == http::StatusCode::BAD_REQUEST
            && String::from_utf8_lossy(response.body()).contains("use_dpop_nonce");
        match offered {
            Some(fresh) if challenged && nonce.as_ref() != Some(&fresh) => {
                // A client assertion is good once (its jti): the second request gets its own.
                let body = self
                    .with_fresh_assertion(provider, &parts.uri.to_string(), &body)
                    .map_err(|e| ClientError::Other(e.to_string()))?;
                Ok(self.send_once(key, &parts, &body, Some(&fresh)).await?.0)
            }
            _ => Ok(response),
        }
    }

    /// `body` (a form, sent to `endpoint`) with its `client_assertion`, if it has one, made again.
    fn with_fresh_assertion(
        &self,
        provider: &Provider,
        endpoint: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, super::OidcError> {
        let Some([_, (_, assertion)]) = self.client_assertion(provider, endpoint)? else { return Ok(body.to_vec()) };
        let fields = url::form_urlencoded::parse(body).map(|(name, value)| {
            let value = if name == "client_assertion" { assertion.clone().into() } else { value };
            (name, value)
        });
        Ok(url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish().into_bytes())
    }

    /// One request with a proof; the answer and the nonce it offers (kept for the next ones).
    async fn send_once(
        &self,
        key: &DpopKey,
        parts: &http::request::Parts,
        body: &[u8],
        nonce: Option<&str>,
    ) -> Result<(HttpResponse, Option<String>), ClientError> {
        let proof = key
            .proof(parts.method.as_str(), &parts.uri.to_string(), None, nonce, now_unix())
            .map_err(|e| ClientError::Other(e.to_string()))?;
        let mut request = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
        for (name, value) in &parts.headers {
            request = request.header(name, value);
        }
        let request = request.header(DPOP_HEADER, proof).body(body.to_vec())?;
        let response = self.http.call(request).await?;
        let offered = response.headers().get(DPOP_NONCE_HEADER).and_then(|v| v.to_str().ok()).map(String::from);
        self.keep_dpop_nonce(response.headers());
        Ok((response, offered))
    }
}
