//! `{api.prefix}/…`: the proxy (its steps are `Proxy::handle`); here only what the answer
//! means for the browser's cookie and the metrics.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::dbsc::BindingRefusal;
use crate::error::AppError;
use crate::proxy::{Route, UpstreamClient, is_upgrade};
use crate::state::AppState;

pub async fn proxy(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    route: web::Data<Arc<Route>>,
    client: web::Data<UpstreamClient>,
) -> Result<HttpResponse, AppError> {
    let upgrade = is_upgrade(&req);
    let answer = call(&req, payload, &state, &route, &client).await;
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
) -> Result<HttpResponse, AppError> {
    let forwarded = state.proxy.handle(req, payload, route, client, &state.tokens, &state.cookies).await;
    if let Err(AppError::Limited(limit)) = &forwarded {
        state.metrics.limited(*limit);
    }
    match forwarded {
        // The session is over: tell the browser to forget the cookie too.
        Err(AppError::LoginRequired) => {
            let mut res = AppError::LoginRequired.error_response();
            res.add_cookie(&state.cookies.session_cookie_removal()).map_err(|_| AppError::Internal)?;
            if state.dbsc.enabled() {
                res.add_cookie(&state.dbsc.bound_cookie_removal()).map_err(|_| AppError::Internal)?;
            }
            Ok(res)
        }
        // A bound cookie that no longer does is dropped: the browser then finds it missing
        // before its next call, and refreshes first.
        Err(AppError::DeviceBinding(refusal @ (BindingRefusal::Expired | BindingRefusal::Invalid))) => {
            let mut res = AppError::DeviceBinding(refusal).error_response();
            res.add_cookie(&state.dbsc.bound_cookie_removal()).map_err(|_| AppError::Internal)?;
            Ok(res)
        }
        other => other,
    }
}
