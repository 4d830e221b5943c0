//! `/auth/dbsc/*` (DBSC, `session.dbsc`): the browser registers its device key and renews the
//! bound cookie. What each outcome means is `bound_sessions`'; here, how the browser is told
//! (docs/DBSC-NOTES.md §1–2). No anti-forgery header: the browser sends none with these, and the
//! signed challenge is their proof.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{StatusCode, header::HeaderName};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError, web};
use serde_json::json;

use crate::bound_sessions::{BoundSessions, Refresh, RegisterError};
use crate::dbsc::{CHALLENGE_HEADER, RESPONSE_HEADER, SESSION_ID_HEADER};
use crate::error::{AppError, BadRequest};
use crate::state::AppState;

/// `POST /auth/dbsc/register`: the registration proof in `Secure-Session-Response`. Bound: the
/// session instructions and the bound cookie. Refused: 400, and the browser creates no device
/// session (the session goes on unbound).
///
/// No challenge is handed out in advance (the specification allows it, with any answer): the
/// next refresh comes a cookie's lifetime later, and a challenge that lived that long would let a
/// signature taken from the device now renew the cookie then. The refresh's 403 round trip is
/// the price, one every few minutes per browser.
pub async fn register(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let handle = state.cookies.session_handle(&req);
    match BoundSessions::new(&state).register(handle, header_value(&req, RESPONSE_HEADER)).await {
        Ok(bound) => {
            let now = state.lifetime.now();
            answer(StatusCode::OK)
                .cookie(state.dbsc.bound_cookie(&bound.handle, &bound.id, now))
                .json(state.dbsc.instructions(&bound.id))
        }
        Err(RegisterError::Refused(_)) => AppError::BadRequest(BadRequest::DeviceProof).error_response(),
        Err(RegisterError::Unavailable(e)) => e.error_response(),
    }
}

/// `POST /auth/dbsc/refresh`: the browser's device session in `Sec-Secure-Session-Id`, a proof
/// once it has a challenge. Renewed: 200 with the new bound cookie (and the instructions again).
/// A challenge to sign:
/// 403 (the one status the browser answers by signing and retrying). Over: 200
/// `{"continue": false}`. A store failure: 503, after which the browser keeps its device session
/// and tries again later.
pub async fn refresh(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let handle = state.cookies.session_handle(&req);
    let refreshed = BoundSessions::new(&state)
        .refresh(handle, header_value(&req, SESSION_ID_HEADER), header_value(&req, RESPONSE_HEADER))
        .await;
    let now = state.lifetime.now();
    match refreshed {
        Ok(Refresh::Renewed { handle, id }) => {
            answer(StatusCode::OK).cookie(state.dbsc.bound_cookie(&handle, &id, now)).json(state.dbsc.instructions(&id))
        }
        Ok(Refresh::Challenge { handle, id }) => {
            let mut res = answer(StatusCode::FORBIDDEN);
            if let Some(challenge) = state.dbsc.challenge_header(&handle, &id, now) {
                res.insert_header((HeaderName::from_static(CHALLENGE_HEADER), challenge));
            }
            res.json(json!({"error": "dbsc_proof_required"}))
        }
        Ok(Refresh::Ended { id }) => {
            answer(StatusCode::OK).cookie(state.dbsc.bound_cookie_removal()).json(crate::dbsc::ended(id.as_deref()))
        }
        Err(e) => e.error_response(),
    }
}

/// Never cached, never framed, never read by another origin (the specification's advice for
/// these endpoints: a page elsewhere must not learn from them).
fn answer(status: StatusCode) -> HttpResponseBuilder {
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ));
    res
}

fn header_value<'r>(req: &'r HttpRequest, name: &str) -> Option<&'r str> {
    req.headers().get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.trim().is_empty())
}
