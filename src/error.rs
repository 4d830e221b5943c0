//! The one error type that becomes an HTTP answer, and the one place that decides how: JSON
//! `{"error": "<code>"}` for the SPA and APIs, or an HTML page for browser navigations. No
//! internal error text ever reaches a body; details go to the log.

use std::borrow::Cow;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use crate::dbsc::BindingRefusal;
use crate::limits::Limit;
use crate::pages::Pages;
use crate::proxy::StepUp;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use crate::tokens::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("login required")]
    LoginRequired,
    /// The session's authentication is not strong or recent enough for the call (RFC 9470):
    /// the upstream said so, or the route's `acr_values`/`max_age` did. The body says what to
    /// sign in with; the session stays as it is.
    #[error("step-up authentication required")]
    StepUpRequired(StepUp),
    /// A call of a session bound to a device (DBSC) without its valid bound cookie, or, with
    /// `session.dbsc = "required"`, of a session that has not registered a device.
    #[error("device binding refused the call ({})", .0.label())]
    DeviceBinding(BindingRefusal),
    #[error("missing or wrong anti-forgery header")]
    Csrf,
    #[error("refused by a limit ({})", .0.label())]
    Limited(Limit),
    /// A limit that knows when it frees up: `Retry-After` says so.
    #[error("refused by a limit ({}) for {:?}", .0.label(), .1)]
    LimitedFor(Limit, Duration),
    #[error("bad request ({})", .0.code())]
    BadRequest(BadRequest),
    /// No route serves the path (and it is not a navigation into the SPA).
    #[error("not found")]
    NotFound,
    /// The route does not take the method; what it does take goes in `Allow` (RFC 9110 §15.5.6).
    #[error("method not allowed (allowed: {0})")]
    MethodNotAllowed(Cow<'static, str>),
    /// The request body stopped arriving.
    #[error("request timeout")]
    RequestTimeout,
    #[error("session store unavailable")]
    SessionStoreUnavailable,
    #[error("token refresh unavailable")]
    TokenRefreshUnavailable,
    /// The sign-in's grant does not cover the route's resource (RFC 8707).
    #[error("no token for the route's resource")]
    ResourceNotGranted,
    /// The provider refused to exchange the user's token for the route's audience (RFC 8693).
    #[error("token exchange refused")]
    ExchangeRefused,
    #[error("identity provider unavailable")]
    IdpUnavailable,
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream timeout")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal,
    /// The admin API's bearer token is missing, wrong, or too long to be one.
    #[error("admin token missing or wrong")]
    AdminUnauthorized,
    /// `POST /admin/reload`: the file was refused (its problems are logged, and on `/readyz`).
    #[error("configuration refused")]
    ConfigRefused,
}

/// What was wrong with a request that is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// The path would leave the upstream's base path, or does not make a URL.
    InvalidPath,
    /// Not an HTTP method the upstream client can send.
    BadMethod,
    /// The body broke off or was malformed on the way in.
    BadRequestBody,
    /// A WebSocket upgrade on a route with `websocket = false`.
    WebSocketDisabled,
    /// A logout request from the provider that is not one (back- or front-channel).
    InvalidRequest,
    /// A sign-in option (`prompt`, `max_age`…) the configuration does not allow, or not a value.
    LoginParameter,
    /// A DBSC registration whose proof bff does not take (docs/CONTRACT.md lists why).
    DeviceProof,
}

impl BadRequest {
    pub fn code(self) -> &'static str {
        match self {
            BadRequest::InvalidPath => "invalid_path",
            BadRequest::BadMethod => "bad_method",
            BadRequest::BadRequestBody => "bad_request_body",
            BadRequest::WebSocketDisabled => "websocket_disabled",
            BadRequest::InvalidRequest => "invalid_request",
            BadRequest::LoginParameter => "invalid_login_parameter",
            BadRequest::DeviceProof => "dbsc_registration_refused",
        }
    }
}

impl AppError {
    /// The stable code in the JSON body; docs/CONTRACT.md lists them.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::LoginRequired => "login_required",
            AppError::StepUpRequired(_) => "step_up_required",
            AppError::DeviceBinding(BindingRefusal::Unregistered) => "dbsc_registration_required",
            AppError::DeviceBinding(_) => "dbsc_bound_cookie_required",
            AppError::Csrf => "csrf",
            AppError::Limited(Limit::HeaderSize) => "headers_too_large",
            AppError::Limited(Limit::BodySize) => "payload_too_large",
            AppError::Limited(Limit::LoginRate) => "too_many_logins",
            AppError::Limited(_) => "upstream_busy",
            AppError::LimitedFor(limit, _) => AppError::Limited(*limit).code(),
            AppError::BadRequest(reason) => reason.code(),
            AppError::NotFound => "not_found",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::RequestTimeout => "request_timeout",
            AppError::SessionStoreUnavailable => "session_store_unavailable",
            AppError::TokenRefreshUnavailable => "token_refresh_unavailable",
            AppError::ResourceNotGranted => "resource_not_granted",
            AppError::ExchangeRefused => "exchange_refused",
            AppError::IdpUnavailable => "idp_unavailable",
            AppError::UpstreamUnavailable => "upstream_unavailable",
            AppError::UpstreamTimeout => "upstream_timeout",
            AppError::Internal => "internal",
            AppError::AdminUnauthorized => "unauthorized",
            AppError::ConfigRefused => "config_refused",
        }
    }

    /// A sentence for the HTML page.
    fn explanation(&self) -> &'static str {
        match self {
            AppError::LoginRequired => "You are not signed in, or your session has ended.",
            AppError::StepUpRequired(_) => "This needs you to sign in again, with a stronger or more recent sign-in.",
            AppError::DeviceBinding(BindingRefusal::Unregistered) => {
                "This browser has not yet bound your session to this device. Please reload the page."
            }
            AppError::DeviceBinding(_) => {
                "Your session is bound to the device it started on, and this request did not prove it came from there."
            }
            AppError::Csrf => "This request was refused because it did not come from the application.",
            AppError::Limited(Limit::HeaderSize | Limit::BodySize) => "The request was too large.",
            AppError::Limited(_) => "Too many requests. Please wait a moment and try again.",
            AppError::LimitedFor(limit, _) => AppError::Limited(*limit).explanation(),
            AppError::BadRequest(_) => "The request was not understood.",
            AppError::NotFound => "There is nothing at this address.",
            AppError::MethodNotAllowed(_) => "This method is not allowed here.",
            AppError::RequestTimeout => "The request took too long to arrive.",
            AppError::SessionStoreUnavailable => "Sessions cannot be read right now. Please try again in a moment.",
            AppError::TokenRefreshUnavailable | AppError::IdpUnavailable => {
                "The sign-in service cannot be reached right now. Please try again in a moment."
            }
            AppError::UpstreamUnavailable | AppError::UpstreamTimeout => {
                "A service behind this application is not answering."
            }
            AppError::ResourceNotGranted | AppError::ExchangeRefused => {
                "Your sign-in does not give access to this service."
            }
            AppError::Internal => "Something went wrong on our side.",
            AppError::AdminUnauthorized => "This needs the admin token.",
            AppError::ConfigRefused => "The configuration file was refused; the one before it still serves.",
        }
    }

    /// JSON for API callers, a page for a browser navigation.
    pub fn respond(&self, req: &HttpRequest, pages: &Pages) -> HttpResponse {
        if is_navigation(req) { self.page(pages) } else { self.error_response() }
    }

    /// The HTML error page for this error.
    pub fn page(&self, pages: &Pages) -> HttpResponse {
        let sign_in = matches!(self, AppError::LoginRequired | AppError::StepUpRequired(_));
        let mut res = pages.error(self.status_code(), self.explanation(), sign_in);
        self.add_headers(res.headers_mut());
        res
    }

    /// What an answer of this error says besides its body, JSON or page alike: when to come back
    /// (`Retry-After`), which methods the route takes (`Allow`).
    fn add_headers(&self, headers: &mut actix_web::http::header::HeaderMap) {
        match self {
            AppError::LimitedFor(_, after) => {
                // Whole seconds, rounded up: a client that waits that long is let through.
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            _ if self.status_code() == StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            AppError::MethodNotAllowed(allow) => {
                if let Ok(allow) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, allow);
                }
            }
            AppError::AdminUnauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The browser registers right after the sign-in's redirect: a call that raced it
            // succeeds a moment later.
            AppError::DeviceBinding(BindingRefusal::Unregistered) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
    }
}

/// A top-level browser navigation wants HTML; `fetch`/XHR callers get JSON.
pub fn is_navigation(req: &HttpRequest) -> bool {
    let headers = req.headers();
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes() == b"navigate";
    }
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::LoginRequired
            | AppError::StepUpRequired(_)
            | AppError::AdminUnauthorized
            | AppError::DeviceBinding(_) => StatusCode::UNAUTHORIZED,
            AppError::ConfigRefused => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Csrf | AppError::ResourceNotGranted | AppError::ExchangeRefused => StatusCode::FORBIDDEN,
            AppError::Limited(Limit::BodySize) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Limited(Limit::HeaderSize) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            AppError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::LimitedFor(limit, _) => AppError::Limited(*limit).status_code(),
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::SessionStoreUnavailable | AppError::TokenRefreshUnavailable | AppError::IdpUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            AppError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            AppError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({ "error": self.code() });
        // What to pass to `/auth/login` (validated where they were read: nothing reflected).
        if let AppError::StepUpRequired(step_up) = self {
            if let Some(acr_values) = &step_up.acr_values {
                body["acr_values"] = acr_values.as_str().into();
            }
            if let Some(max_age) = step_up.max_age {
                body["max_age"] = max_age.into();
            }
        }
        let mut res = HttpResponse::build(self.status_code())
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .json(body);
        self.add_headers(res.headers_mut());
        res
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        tracing::warn!("{}", error_chain(&e));
        AppError::SessionStoreUnavailable
    }
}

impl From<TokenError> for AppError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::LoginRequired => AppError::LoginRequired,
            // Only reached where the caller has no upstream answer to pass through.
            TokenError::CannotRefresh => AppError::LoginRequired,
            TokenError::RefreshUnavailable(_) => AppError::TokenRefreshUnavailable,
            TokenError::NotForResource => AppError::ResourceNotGranted,
            TokenError::ExchangeRefused => AppError::ExchangeRefused,
            TokenError::Store(e) => {
                tracing::warn!("{}", error_chain(&e));
                AppError::SessionStoreUnavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_web::test]
    async fn json_bodies_carry_only_the_code() {
        for (err, status, code) in [
            (AppError::LoginRequired, 401, "login_required"),
            (AppError::Csrf, 403, "csrf"),
            (AppError::DeviceBinding(BindingRefusal::Expired), 401, "dbsc_bound_cookie_required"),
            (AppError::DeviceBinding(BindingRefusal::Unregistered), 401, "dbsc_registration_required"),
            (AppError::SessionStoreUnavailable, 503, "session_store_unavailable"),
            (AppError::TokenRefreshUnavailable, 503, "token_refresh_unavailable"),
            (AppError::ResourceNotGranted, 403, "resource_not_granted"),
            (AppError::ExchangeRefused, 403, "exchange_refused"),
            (AppError::UpstreamUnavailable, 502, "upstream_unavailable"),
            (AppError::UpstreamTimeout, 504, "upstream_timeout"),
            (AppError::Limited(Limit::BodySize), 413, "payload_too_large"),
            (AppError::Limited(Limit::HeaderSize), 431, "headers_too_large"),
            (AppError::Limited(Limit::LoginRate), 429, "too_many_logins"),
            (AppError::Limited(Limit::UpstreamConcurrency), 429, "upstream_busy"),
            (AppError::Limited(Limit::FrontendConcurrency), 429, "upstream_busy"),
            (AppError::LimitedFor(Limit::LoginRate, Duration::from_millis(1500)), 429, "too_many_logins"),
            (AppError::BadRequest(BadRequest::InvalidPath), 400, "invalid_path"),
            (AppError::BadRequest(BadRequest::InvalidRequest), 400, "invalid_request"),
            (AppError::BadRequest(BadRequest::LoginParameter), 400, "invalid_login_parameter"),
            (AppError::NotFound, 404, "not_found"),
            (AppError::MethodNotAllowed("POST".into()), 405, "method_not_allowed"),
            (AppError::AdminUnauthorized, 401, "unauthorized"),
            (AppError::ConfigRefused, 422, "config_refused"),
        ] {
            let res = err.error_response();
            assert_eq!(res.status().as_u16(), status);
            let body = to_bytes(res.into_body()).await.unwrap_or_default();
            assert_eq!(body, format!("{{\"error\":\"{code}\"}}").as_bytes());
        }
    }

    #[actix_web::test]
    async fn a_step_up_says_what_to_sign_in_with() {
        let body = |e: AppError| async move {
            let res = e.error_response();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
            let bytes = to_bytes(res.into_body()).await.unwrap_or_default();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_default()
        };
        let both = StepUp { acr_values: Some("a b".into()), max_age: Some(30) };
        assert_eq!(
            body(AppError::StepUpRequired(both)).await,
            serde_json::json!({"error": "step_up_required", "acr_values": "a b", "max_age": 30})
        );
        assert_eq!(
            body(AppError::StepUpRequired(StepUp::default())).await,
            serde_json::json!({"error": "step_up_required"})
        );
    }

    #[test]
    fn retry_after_tells_when_a_limit_frees_up() {
        let retry_after = |e: AppError| {
            let res = e.error_response();
            res.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(String::from)
        };
        assert_eq!(
            retry_after(AppError::LimitedFor(Limit::LoginRate, Duration::from_millis(1500))).as_deref(),
            Some("2")
        );
        assert_eq!(retry_after(AppError::LimitedFor(Limit::LoginRate, Duration::ZERO)).as_deref(), Some("1"));
        assert_eq!(retry_after(AppError::Limited(Limit::UpstreamConcurrency)).as_deref(), Some("10"));
        assert_eq!(retry_after(AppError::Limited(Limit::FrontendConcurrency)).as_deref(), Some("10"));
        assert_eq!(retry_after(AppError::Limited(Limit::BodySize)), None);
    }

    #[test]
    fn a_refused_method_names_what_the_route_takes_in_json_and_on_a_page() {
        let err = AppError::MethodNotAllowed("GET, HEAD".into());
        let json = err.error_response();
        assert_eq!(json.headers().get(header::ALLOW).and_then(|v| v.to_str().ok()), Some("GET, HEAD"));
        let pages =
            Pages::load(std::path::Path::new("/nonexistent"), "/auth/style.css").unwrap_or_else(|e| panic!("{e}"));
        let page = err.page(&pages);
        assert_eq!(page.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(page.headers().get(header::ALLOW).and_then(|v| v.to_str().ok()), Some("GET, HEAD"));
    }

    #[test]
    fn navigations_are_told_apart_from_fetches() {
        use actix_web::test::TestRequest;
        let nav = TestRequest::default().insert_header(("sec-fetch-mode", "navigate")).to_http_request();
        assert!(is_navigation(&nav));
        let fetch = TestRequest::default()
            .insert_header(("sec-fetch-mode", "cors"))
            .insert_header(("accept", "text/html"))
            .to_http_request();
        assert!(!is_navigation(&fetch));
        let old_browser = TestRequest::default().insert_header(("accept", "text/html,*/*")).to_http_request();
        assert!(is_navigation(&old_browser));
        assert!(!is_navigation(&TestRequest::default().to_http_request()));
    }
}
