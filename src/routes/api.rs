//! `{api.prefix}/…`: the proxy. Checks anti-forgery, the path and the session, then forwards.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::config::TokenPolicy;
use crate::error::AppError;
use crate::http::require_csrf_header;
use crate::proxy::{Caller, Route, UpstreamClient};
use crate::state::AppState;

pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route: web::Data<Arc<Route>>,
    client: web::Data<UpstreamClient>,
) -> Result<HttpResponse, AppError> {
    if !route.takes(req.method().as_str()) {
        let mut res = AppError::MethodNotAllowed.error_response();
        if let Ok(allow) = actix_web::http::header::HeaderValue::from_str(&route.allowed()) {
            res.headers_mut().insert(actix_web::http::header::ALLOW, allow);
        }
        return Ok(res);
    }
    // A route that never carries a user's token needs no proof the call came from the SPA.
    if route.token != TokenPolicy::None {
        require_csrf_header(&req)?;
    }
    let destination = state.proxy.destination(&req, &route)?;
    let handle = match route.token {
        TokenPolicy::None => None,
        TokenPolicy::User | TokenPolicy::Client => {
            Some(state.cookies.session_handle(&req).ok_or(AppError::LoginRequired)?)
        }
        TokenPolicy::UserOrNone => state.cookies.session_handle(&req),
    };
    let caller = match (route.token, &handle, &route.client_grant) {
        (TokenPolicy::User, Some(h), _) => Caller::Session(h),
        (TokenPolicy::UserOrNone, Some(h), _) => Caller::SessionIfLive(h),
        (TokenPolicy::Client, Some(h), Some(grant)) => Caller::Client(h, grant),
        _ => Caller::Anonymous,
    };
    let forwarded = state.proxy.forward(&client, &req, payload, destination, &state.tokens, caller).await;
    if let Err(AppError::Limited(limit)) = &forwarded {
        state.metrics.limited(*limit);
    }
    match forwarded {
        // The session is over: tell the browser to forget the cookie too.
        Err(AppError::LoginRequired) => {
            let mut res = AppError::LoginRequired.error_response();
            res.add_cookie(&state.cookies.session_cookie_removal()).map_err(|_| AppError::Internal)?;
            Ok(res)
        }
        other => other,
    }
}
