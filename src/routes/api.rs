//! `{api.prefix}/…`: the proxy. Checks anti-forgery, the path and the session, then forwards
//! (or, for a WebSocket handshake, opens the tunnel).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::config::TokenPolicy;
use crate::error::{AppError, BadRequest};
use crate::http::{require_csrf_header, require_same_origin};
use crate::proxy::{Call, Caller, Route, UpstreamClient, is_upgrade};
use crate::state::AppState;

pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route: web::Data<Arc<Route>>,
    client: web::Data<UpstreamClient>,
) -> Result<HttpResponse, AppError> {
    let upgrade = is_upgrade(&req);
    let answer = call(&req, payload, &state, &route, &client, upgrade).await;
    if upgrade {
        state.metrics.websocket_upgrade(match &answer {
            Ok(res) => res.status().as_u16(),
            Err(e) => e.status_code().as_u16(),
        });
    }
    answer
}

async fn call(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    route: &Route,
    client: &UpstreamClient,
    upgrade: bool,
) -> Result<HttpResponse, AppError> {
    if !route.takes(req.method().as_str()) {
        return Err(AppError::MethodNotAllowed(route.allowed().into()));
    }
    if upgrade && !route.websocket {
        return Err(AppError::BadRequest(BadRequest::WebSocketDisabled));
    }
    // A route that never carries a user's token needs no proof the call came from the SPA. A
    // WebSocket cannot carry a header of the page's choosing: its `Origin` is the proof.
    if route.token != TokenPolicy::None {
        if upgrade { require_same_origin(req, &state.public_origin)? } else { require_csrf_header(req)? }
    }
    let destination = state.proxy.destination(req, route)?;
    let handle = match route.token {
        TokenPolicy::None => None,
        TokenPolicy::User | TokenPolicy::Client => {
            Some(state.cookies.session_handle(req).ok_or(AppError::LoginRequired)?)
        }
        TokenPolicy::UserOrNone => state.cookies.session_handle(req),
    };
    let caller = match (route.token, &handle, &route.client_grant) {
        (TokenPolicy::User, Some(h), _) => Caller::Session(h),
        (TokenPolicy::UserOrNone, Some(h), _) => Caller::SessionIfLive(h),
        (TokenPolicy::Client, Some(h), Some(grant)) => Caller::Client(h, grant),
        _ => Caller::Anonymous,
    };
    let forwarded = if upgrade {
        state.proxy.websocket(Call { req, destination, tokens: &state.tokens, caller }, payload).await
    } else {
        state.proxy.forward(client, Call { req, destination, tokens: &state.tokens, caller }, payload).await
    };
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
