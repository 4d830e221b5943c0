//! Who a proxied call is for, decided before it is admitted, and whose token it carries (by the
//! route's `token` policy and `resource`), with the one policy for a token an upstream refused.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;

use super::admission::Share;
use crate::config::TokenPolicy;
use crate::error::AppError;
use crate::session::{CookiePolicy, SessionHandle};
use crate::tokens::{ClientGrant, HotToken, Target, TokenError, TokenManager, UsableToken};

/// Who a proxied call is made for.
pub enum Caller<'r> {
    /// A live session whose user's token goes upstream (`user`, `user_or_none` signed in, and
    /// `exchange`: the user's token exchanged for the route's audience).
    /// `view`: the session as read when it was identified.
    Session { handle: SessionHandle, view: HotToken, or_none: bool },
    /// `client`: bff's own token for the route, for a live session whose grant lives.
    Client { handle: SessionHandle, view: HotToken, grant: &'r ClientGrant },
    /// `none`, or `user_or_none` without a live session: no token; counted by client address.
    Anonymous { address: Option<IpAddr> },
}

impl<'r> Caller<'r> {
    /// Decides who the call is for, before anything is admitted or read: a cookie whose session
    /// is over is `LoginRequired` at once (on a `user_or_none` route: anonymous), never a share.
    /// With the local cache a live session costs no store command.
    pub async fn identify(
        req: &HttpRequest,
        route: &'r super::Route,
        cookies: &CookiePolicy,
        tokens: &TokenManager,
        trusted_hops: usize,
    ) -> Result<Caller<'r>, AppError> {
        let anonymous = || Caller::Anonymous { address: crate::limits::client_ip(req, trusted_hops) };
        match (route.token, &route.client_grant) {
            (TokenPolicy::None, _) => Ok(anonymous()),
            (TokenPolicy::User | TokenPolicy::Exchange, _) => {
                let handle = cookies.session_handle(req).ok_or(AppError::LoginRequired)?;
                let view = tokens.live_session(&handle).await?;
                Ok(Caller::Session { handle, view, or_none: false })
            }
            (TokenPolicy::UserOrNone, _) => {
                let Some(handle) = cookies.session_handle(req) else { return Ok(anonymous()) };
                match tokens.live_session(&handle).await {
                    Ok(view) => Ok(Caller::Session { handle, view, or_none: true }),
                    Err(TokenError::LoginRequired) => Ok(anonymous()),
                    Err(e) => Err(e.into()),
                }
            }
            (TokenPolicy::Client, Some(grant)) => {
                let handle = cookies.session_handle(req).ok_or(AppError::LoginRequired)?;
                let view = tokens.live_session(&handle).await?;
                Ok(Caller::Client { handle, view, grant })
            }
            (TokenPolicy::Client, None) => Err(AppError::Internal),
        }
    }

    /// The share the call counts against.
    pub fn share(&self) -> Share<'_> {
        match self {
            Caller::Session { handle, .. } | Caller::Client { handle, .. } => Share::Session(handle),
            Caller::Anonymous { address } => Share::Anonymous(*address),
        }
    }

    /// What the session must sign in with again for `required` (a route's `acr_values`,
    /// `max_age`) at `now`, if its authentication falls short. Only a call that carries the
    /// user's token is held to it: an anonymous one on a `user_or_none` route carries no
    /// authentication to judge (and `client`/`none` routes cannot have a requirement).
    pub fn unmet(&self, required: &super::Requirement, now: u64) -> Option<super::StepUp> {
        match self {
            Caller::Session { view, .. } => required.unmet_by(view, now),
            _ => None,
        }
    }

    /// The live session the call is made for, and its view, when it has one (a user's token or
    /// bff's own for a signed-in user).
    pub fn live_session(&self) -> Option<(&SessionHandle, &HotToken)> {
        match self {
            Caller::Session { handle, view, .. } | Caller::Client { handle, view, .. } => Some((handle, view)),
            Caller::Anonymous { .. } => None,
        }
    }

    /// The session a user's token came from, for a WebSocket to watch.
    pub fn session(&self) -> Option<&SessionHandle> {
        match self {
            Caller::Session { handle, .. } => Some(handle),
            _ => None,
        }
    }

    /// The token to attach; `target` says which of the user's tokens. `fresh`: the view read at
    /// identification is still current (no body kept the call waiting since), so it is decided
    /// from that view instead of one read again.
    pub async fn token(
        &self,
        tokens: &Arc<TokenManager>,
        target: &Target,
        fresh: bool,
    ) -> Result<Option<UsableToken>, TokenError> {
        match self {
            Caller::Session { handle, view, or_none } => {
                match user_token(tokens, handle, view, target, fresh).await {
                    Ok(token) => Ok(Some(token)),
                    // It ended meanwhile (expired with nothing to refresh it, or signed out).
                    Err(TokenError::LoginRequired) if *or_none => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Caller::Client { handle, view, grant } => {
                // The user's grant decides first, as on a `user` route: refreshed when due, and
                // a grant the provider ended ends the session here too (401), so a `client`
                // route never serves a user the provider signed out.
                user_token(tokens, handle, view, &Target::Default, fresh).await?;
                tokens.client_tokens().token(grant).await.map(Some)
            }
            Caller::Anonymous { .. } => Ok(None),
        }
    }

    /// The one policy for an upstream's 401 to `used` (HTTP and WebSocket alike): a newer token
    /// to retry with, or `None` to pass the 401 back as it is (nothing to refresh with, or a
    /// token that was itself got after a 401 and is not due: renewing again would let any
    /// caller drive the provider's token endpoint).
    pub async fn after_401(
        &self,
        tokens: &Arc<TokenManager>,
        target: &Target,
        used: &UsableToken,
    ) -> Result<Option<UsableToken>, TokenError> {
        let renewed = match self {
            Caller::Session { handle, .. } => tokens.refresh_after_rejection(handle, target, used).await,
            Caller::Client { grant, .. } => tokens.client_tokens().after_rejection(grant, used.version).await,
            Caller::Anonymous { .. } => Err(TokenError::CannotRefresh),
        };
        match renewed {
            Ok(fresh) => Ok(Some(fresh)),
            Err(TokenError::CannotRefresh) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The session's token for `target`: decided from `view` when it is current, else from the
/// session read again.
async fn user_token(
    tokens: &Arc<TokenManager>,
    handle: &SessionHandle,
    view: &HotToken,
    target: &Target,
    fresh: bool,
) -> Result<UsableToken, TokenError> {
    if fresh { tokens.token_in(handle, target, view).await } else { tokens.access_token(handle, target).await }
}
