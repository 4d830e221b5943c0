//! Whose token a proxied call carries, by the route's `token` policy and `resource`.

use std::sync::Arc;

use crate::session::SessionHandle;
use crate::tokens::{ClientGrant, TokenError, TokenManager, UsableToken};

/// Who a proxied call is made for.
#[derive(Clone, Copy)]
pub enum Caller<'h> {
    /// `user`: this session's token; no live session is 401.
    Session(&'h SessionHandle),
    /// `user_or_none`: this session's token while it lives, else no token.
    SessionIfLive(&'h SessionHandle),
    /// `client`: bff's own token for the route, for a signed-in session.
    Client(&'h SessionHandle, &'h ClientGrant),
    /// `none`, or `user_or_none` without a session cookie: no token.
    Anonymous,
}

impl<'h> Caller<'h> {
    /// The session the call counts against (concurrency shares).
    pub fn session(self) -> Option<&'h SessionHandle> {
        match self {
            Caller::Session(h) | Caller::SessionIfLive(h) | Caller::Client(h, _) => Some(h),
            Caller::Anonymous => None,
        }
    }

    /// The token to attach; `resource` is the route's audience for a user's token.
    pub async fn token(
        self,
        tokens: &Arc<TokenManager>,
        resource: Option<&str>,
    ) -> Result<Option<UsableToken>, TokenError> {
        match self {
            Caller::Session(h) => tokens.access_token(h, resource).await.map(Some),
            Caller::SessionIfLive(h) => match tokens.access_token(h, resource).await {
                Ok(token) => Ok(Some(token)),
                Err(TokenError::LoginRequired) => Ok(None),
                Err(e) => Err(e),
            },
            Caller::Client(h, grant) => {
                tokens.require_live_session(h).await?;
                tokens.client_tokens().token(grant).await.map(Some)
            }
            Caller::Anonymous => Ok(None),
        }
    }

    /// A newer token than `used`, which the upstream answered 401.
    pub async fn renewed(
        self,
        tokens: &Arc<TokenManager>,
        resource: Option<&str>,
        used: &UsableToken,
    ) -> Result<UsableToken, TokenError> {
        match self {
            Caller::Session(h) | Caller::SessionIfLive(h) => {
                tokens.refresh_after_rejection(h, resource, used.version).await
            }
            Caller::Client(_, grant) => tokens.client_tokens().after_rejection(grant, used.version).await,
            Caller::Anonymous => Err(TokenError::CannotRefresh),
        }
    }
}
