//! A signed-in session from the login that starts it to whatever ends it: the one owner of its
//! keys (state, token set, refresh lock) and of its entries in the back-channel logout index.
//!
//! A start writes four things; one that fails midway removes what it wrote before answering,
//! so a failed sign-in leaves nothing a later request could find. An end removes them all,
//! whatever the reason, and says why in the log.

use std::time::Duration;

use openidconnect::{AccessToken, RefreshToken};

use super::{Owner, TokenSet, TokenStore};
use crate::oidc::{GrantToken, LoginResult, LogoutRequest, RawIdToken, UserInfo};
use crate::session::{
    Device, SessionEntries, SessionHandle, SessionId, SessionIndex, SessionMeta, SessionStoreAdapter, now_unix,
};
use crate::store::StoreError;
use crate::telemetry::error_chain;

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The user signed out (`POST /auth/logout`).
    SignedOut,
    /// The provider ended its session (back-channel logout).
    BackChannel,
    /// The provider ended its session, or this browser's, from its logout page (front-channel
    /// logout).
    FrontChannel,
    /// The provider ended the grant: it refused the refresh token (`invalid_grant`, or another
    /// refusal of the grant).
    GrantRevoked,
    /// The same browser signed in again.
    Replaced,
    /// The absolute timeout passed, or the access token expired with nothing to refresh it.
    Expired,
    /// The sign-in was stored but could not be handed to the browser.
    Abandoned,
    /// The user ended it from another of their sessions (`DELETE /auth/sessions…`).
    EndedByUser,
    /// An operator ended it (`DELETE /admin/sessions`).
    EndedByAdmin,
    /// The user signed in once more than `session.max_per_user` allows: the oldest ends.
    OverLimit,
}

impl EndReason {
    fn label(self) -> &'static str {
        match self {
            EndReason::SignedOut => "signed_out",
            EndReason::BackChannel => "backchannel_logout",
            EndReason::FrontChannel => "frontchannel_logout",
            EndReason::GrantRevoked => "grant_over",
            EndReason::Replaced => "replaced",
            EndReason::Expired => "expired",
            EndReason::Abandoned => "abandoned",
            EndReason::EndedByUser => "ended_by_user",
            EndReason::EndedByAdmin => "ended_by_admin",
            EndReason::OverLimit => "over_limit",
        }
    }
}

/// A session just signed in: what the browser's session needs.
pub struct Started {
    pub id: SessionId,
    pub handle: SessionHandle,
    /// The state `SessionEntries::start` puts into the browser's session (already stored).
    pub state: std::collections::HashMap<String, String>,
}

/// What is left of a session that ended, for the provider's sake (revocation, the logout hint).
pub struct Ended {
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    pub id_token: Option<RawIdToken>,
    /// The provider session (`sid`) it belonged to, when the ID token named one.
    pub provider_sid: Option<String>,
}

impl Ended {
    /// What to revoke so the provider ends the grant too.
    pub fn grant(&self) -> GrantToken<'_> {
        match &self.refresh_token {
            Some(refresh) => GrantToken::Refresh(refresh),
            None => GrantToken::Access(&self.access_token),
        }
    }
}

/// One of a user's sessions, as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub handle: SessionHandle,
    /// `None` for a session started before sessions kept their device.
    pub meta: Option<SessionMeta>,
    /// Unix seconds, to the minute.
    pub last_used_at: Option<u64>,
}

impl Listed {
    /// As `GET /auth/sessions` and the admin API show it (`null` for what was not kept).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.handle.as_str(),
            "created_at": self.meta.as_ref().map(|m| m.created_at),
            "last_used_at": self.last_used_at,
            "user_agent": self.meta.as_ref().map(|m| m.user_agent.as_str()),
            "address": self.meta.as_ref().and_then(|m| m.address.as_deref()),
        })
    }
}

pub struct Sessions {
    tokens: TokenStore,
    index: SessionIndex,
    states: SessionStoreAdapter,
    absolute_timeout: Duration,
    default_expires_in: Duration,
    /// `session.max_per_user`.
    max_per_user: usize,
}

impl Sessions {
    pub fn new(
        tokens: TokenStore,
        states: SessionStoreAdapter,
        absolute_timeout: Duration,
        default_expires_in: Duration,
        max_per_user: usize,
    ) -> Sessions {
        let index = SessionIndex::new(tokens.store().clone(), tokens.keys().clone());
        Sessions { tokens, index, states, absolute_timeout, default_expires_in, max_per_user }
    }

    /// Starts a session for a completed login: its token set, its back-channel index entries
    /// and its state, under a fresh id. On failure nothing of it is left (best effort: the
    /// clean-up needs the store too, and whatever it cannot remove expires with its TTL).
    pub async fn start(&self, login: LoginResult, device: &Device) -> Result<Started, StoreError> {
        let id = SessionId::generate();
        let handle = id.handle();
        let now = self.tokens.now();
        let session_expires_at = now + self.absolute_timeout.as_secs();
        let user: UserInfo = login.user.clone();
        // The ID token's claims (checked at the callback against what the sign-in asked for).
        let owner = Owner {
            sub: user.sub.clone(),
            provider_sid: login.provider_sid.clone(),
            session_expires_at,
            acr: user.claims.get("acr").and_then(serde_json::Value::as_str).map(String::from),
            auth_time: user.claims.get("auth_time").and_then(serde_json::Value::as_u64),
        };
        let set = TokenSet::issue(login.into(), owner, None, now, self.default_expires_in);
        let state = SessionEntries::state(&handle, &user, session_expires_at)
            .map_err(|source| StoreError::Encoding { what: "a session", source })?;
        let written = async {
            self.tokens.create(&handle, &set).await?;
            self.index.add(&handle, &set.sub, set.provider_sid.as_deref(), self.absolute_timeout).await?;
            self.tokens.create_meta(&handle, &device.meta(now), session_expires_at).await?;
            self.states.create(&id, &state).await
        };
        if let Err(e) = written.await {
            if let Err(cleanup) = self.remove(&handle, Some(&set)).await {
                tracing::warn!(
                    session = handle.short(),
                    "a failed sign-in left keys behind: {}",
                    error_chain(&cleanup)
                );
            }
            return Err(e);
        }
        tracing::info!(session = handle.short(), "signed in");
        Ok(Started { id, handle, state })
    }

    /// Ends a session, reading its token set first (it names the index entries to remove, and
    /// holds what the provider is told at sign-out). `None`: it had already ended.
    pub async fn end(&self, handle: &SessionHandle, reason: EndReason) -> Result<Option<Ended>, StoreError> {
        let set = self.tokens.load(handle).await?;
        self.end_known(handle, set.as_ref(), reason).await?;
        Ok(set.map(|set| Ended {
            access_token: set.access_token,
            refresh_token: set.refresh_token,
            id_token: set.id_token,
            provider_sid: set.provider_sid,
        }))
    }

    /// Ends a session whose token set the caller already holds (the token manager).
    pub(super) async fn end_known(
        &self,
        handle: &SessionHandle,
        set: Option<&TokenSet>,
        reason: EndReason,
    ) -> Result<(), StoreError> {
        self.remove(handle, set).await?;
        tracing::info!(session = handle.short(), reason = reason.label(), "session ended");
        Ok(())
    }

    /// Back-channel logout: ends every session of the provider session (`sid`); without one, or
    /// with a `sid` no session was indexed under (an ID token without `sid`), every session of
    /// the user (`sub`) that belongs to no other provider session (OIDC Back-Channel Logout
    /// §2.6): the provider believes the user signed out, so no session of theirs may live on
    /// unseen. How many ended; `None` if this logout token was already used.
    pub async fn end_for_provider(&self, request: &LogoutRequest) -> Result<Option<usize>, StoreError> {
        let replay_window = Duration::from_secs(request.exp.saturating_sub(now_unix()).max(60) + 60);
        if !self.index.claim_logout_token(&request.jti, replay_window).await? {
            return Ok(None);
        }
        match self.end_for_logout_token(request.sub.as_deref(), request.sid.as_deref()).await {
            Ok(count) => Ok(Some(count)),
            // The provider retries a logout that failed; its retry must not look like a replay.
            Err(e) => {
                if let Err(release) = self.index.release_logout_token(&request.jti).await {
                    tracing::warn!("a failed back-channel logout keeps its jti claimed: {}", error_chain(&release));
                }
                Err(e)
            }
        }
    }

    /// Front-channel logout: ends every session of the provider session `sid`; how many were
    /// still live.
    pub async fn end_provider_session(&self, sid: &str) -> Result<usize, StoreError> {
        self.end_indexed(None, Some(sid), EndReason::FrontChannel).await
    }

    async fn end_for_logout_token(&self, sub: Option<&str>, sid: Option<&str>) -> Result<usize, StoreError> {
        let by_sid = match sid {
            Some(sid) => self.index.take(None, Some(sid)).await?,
            None => Vec::new(),
        };
        if !by_sid.is_empty() {
            return self.end_all(by_sid, EndReason::BackChannel).await;
        }
        let Some(sub) = sub else { return Ok(0) };
        let mut of_user = Vec::new();
        for handle in self.index.sessions_of_sub(sub).await? {
            // A session of another provider session stays: that one was not ended.
            let other_provider_session = match (self.tokens.load(&handle).await?, sid) {
                (Some(set), Some(sid)) => set.provider_sid.as_deref().is_some_and(|own| own != sid),
                _ => false,
            };
            if !other_provider_session {
                of_user.push(handle);
            }
        }
        self.end_all(of_user, EndReason::BackChannel).await
    }

    /// Ends `handles`; how many were still live.
    async fn end_all(&self, handles: Vec<SessionHandle>, reason: EndReason) -> Result<usize, StoreError> {
        let mut ended = 0;
        for handle in handles {
            if self.end(&handle, reason).await?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends the sessions the index holds for `sid` (else `sub`); how many were still live.
    async fn end_indexed(&self, sub: Option<&str>, sid: Option<&str>, reason: EndReason) -> Result<usize, StoreError> {
        let mut ended = 0;
        for handle in self.index.take(sub, sid).await? {
            if self.end(&handle, reason).await?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// The live sessions of `sub` (this frontend's), newest first. An index entry whose session
    /// is gone (its idle timeout passed) is dropped on the way.
    pub async fn list(&self, sub: &str) -> Result<Vec<Listed>, StoreError> {
        let mut listed = Vec::new();
        for handle in self.index.sessions_of_sub(sub).await? {
            match self.tokens.meta(&handle).await? {
                Some((meta, last_used_at)) => listed.push(Listed { handle, meta: Some(meta), last_used_at }),
                None if self.tokens.exists(&handle).await? => {
                    listed.push(Listed { handle, meta: None, last_used_at: None });
                }
                None => self.index.remove(&handle, sub, None).await?,
            }
        }
        listed.sort_by_key(|l| std::cmp::Reverse(l.meta.as_ref().map_or(0, |m| m.created_at)));
        Ok(listed)
    }

    /// Whether `handle` is one of the sessions of `sub` here: what lets a user end it.
    pub async fn belongs_to(&self, handle: &SessionHandle, sub: &str) -> Result<bool, StoreError> {
        Ok(self.index.sessions_of_sub(sub).await?.contains(handle))
    }

    /// The sessions of `sub` beyond `session.max_per_user`, oldest first, never `keep` (the one
    /// just started). One read when the user is within the bound.
    pub async fn beyond_limit(&self, sub: &str, keep: &SessionHandle) -> Result<Vec<SessionHandle>, StoreError> {
        if self.index.sessions_of_sub(sub).await?.len() <= self.max_per_user {
            return Ok(Vec::new());
        }
        // Newest first; what lies past the bound goes (a session without a start counts as oldest).
        let live = self.list(sub).await?;
        let excess = live.len().saturating_sub(self.max_per_user);
        Ok(live.into_iter().rev().map(|l| l.handle).filter(|h| h != keep).take(excess).collect())
    }

    /// Ends each of `handles`; what was left of those still live, for revocation.
    pub async fn end_each(
        &self,
        handles: Vec<SessionHandle>,
        reason: EndReason,
    ) -> Result<Vec<(SessionHandle, Ended)>, StoreError> {
        let mut ended = Vec::new();
        for handle in handles {
            if let Some(e) = self.end(&handle, reason).await? {
                ended.push((handle, e));
            }
        }
        Ok(ended)
    }

    /// The sessions indexed under a provider session `sid` (left in the index).
    pub async fn of_provider_session(&self, sid: &str) -> Result<Vec<SessionHandle>, StoreError> {
        self.index.sessions_of_sid(sid).await
    }

    async fn remove(&self, handle: &SessionHandle, set: Option<&TokenSet>) -> Result<(), StoreError> {
        self.tokens.delete_session(handle).await?;
        if let Some(set) = set {
            self.index.remove(handle, &set.sub, set.provider_sid.as_deref()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Sealer;
    use crate::oidc::RawIdToken;
    use crate::session::{KeyLayout, SessionLifetime};
    use crate::store::{MemoryStore, Store};

    fn sessions(memory: &MemoryStore) -> Sessions {
        let store = Store::memory(memory.clone());
        let sealer = Sealer::new(&[secrecy::SecretString::from("s".repeat(64))]);
        let keys = KeyLayout::new("t:");
        let lifetime = SessionLifetime { idle: Duration::from_secs(600), clock: crate::clock::Clock::system() };
        let tokens = TokenStore::new(store.clone(), sealer.clone(), keys.clone(), lifetime.clone());
        let states = SessionStoreAdapter::new(store, sealer, keys, lifetime);
        Sessions::new(tokens, states, Duration::from_secs(3600), Duration::from_secs(300), 3)
    }

    fn login() -> LoginResult {
        LoginResult {
            dpop_key: None,
            access_token: AccessToken::new("at".into()),
            refresh_token: Some(RefreshToken::new("rt".into())),
            id_token: RawIdToken::new("id.token.jwt".into()),
            expires_in: Some(Duration::from_secs(300)),
            user: UserInfo { sub: "alice".into(), name: None, email: None, claims: serde_json::Map::new() },
            provider_sid: Some("op-session".into()),
        }
    }

    #[tokio::test]
    async fn a_start_writes_its_state_tokens_and_index_entries() {
        let memory = MemoryStore::new();
        let started = sessions(&memory).start(login(), &Device::default()).await;
        assert!(started.is_ok());
        let mut keys = memory.keys();
        keys.sort();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert!(keys.iter().any(|k| k.ends_with(":meta")) && keys.iter().any(|k| k.ends_with(":seen")));
        assert!(keys.iter().any(|k| k.ends_with(":session")) && keys.iter().any(|k| k.ends_with(":tokens")));
        assert_eq!(keys.iter().filter(|k| k.starts_with("t:by-s")).count(), 2, "by-sub and by-sid: {keys:?}");
    }

    #[tokio::test]
    async fn a_start_that_fails_at_any_write_leaves_nothing_behind() {
        // Writes: token set, by-sub index, by-sid index, device, first use, session state.
        for failing in 1..=6 {
            let memory = MemoryStore::new();
            memory.fail_write(failing);
            let started = sessions(&memory).start(login(), &Device::default()).await;
            assert!(started.is_err(), "write {failing} failed, yet the start succeeded");
            assert_eq!(memory.keys(), Vec::<String>::new(), "after a failure at write {failing}");
        }
        // A seventh write is not part of a start: failing it changes nothing.
        let memory = MemoryStore::new();
        memory.fail_write(7);
        assert!(sessions(&memory).start(login(), &Device::default()).await.is_ok());
        assert_eq!(memory.keys().len(), 6);
    }

    #[tokio::test]
    async fn an_end_removes_every_key_and_index_entry_and_hands_back_the_tokens() {
        let memory = MemoryStore::new();
        let sessions = sessions(&memory);
        let Ok(started) = sessions.start(login(), &Device::default()).await else { panic!("start failed") };
        let ended = sessions.end(&started.handle, EndReason::SignedOut).await;
        let Ok(Some(ended)) = ended else { panic!("the session was not found") };
        assert_eq!(ended.refresh_token.as_ref().map(|t| t.secret().as_str()), Some("rt"));
        assert_eq!(ended.id_token.as_ref().map(RawIdToken::secret), Some("id.token.jwt"));
        assert_eq!(memory.keys(), Vec::<String>::new());
        assert!(matches!(sessions.end(&started.handle, EndReason::SignedOut).await, Ok(None)));
    }

    #[tokio::test]
    async fn a_back_channel_logout_ends_the_provider_session_once() {
        let memory = MemoryStore::new();
        let sessions = sessions(&memory);
        let (Ok(first), Ok(second)) =
            (sessions.start(login(), &Device::default()).await, sessions.start(login(), &Device::default()).await)
        else {
            panic!("start failed")
        };
        let request =
            LogoutRequest { sub: None, sid: Some("op-session".into()), jti: "j1".into(), exp: now_unix() + 60 };
        assert!(matches!(sessions.end_for_provider(&request).await, Ok(Some(2))));
        for handle in [&first.handle, &second.handle] {
            assert!(matches!(sessions.end(handle, EndReason::SignedOut).await, Ok(None)));
        }
        let left: Vec<String> = memory.keys().into_iter().filter(|k| !k.starts_with("t:logout-jti:")).collect();
        assert_eq!(left, Vec::<String>::new(), "the by-sub entries go too");
        assert!(matches!(sessions.end_for_provider(&request).await, Ok(None)), "a replayed token ends nothing");
    }

    #[tokio::test]
    async fn a_front_channel_logout_ends_the_live_sessions_of_the_provider_session() {
        let memory = MemoryStore::new();
        let sessions = sessions(&memory);
        let (Ok(first), Ok(second)) =
            (sessions.start(login(), &Device::default()).await, sessions.start(login(), &Device::default()).await)
        else {
            panic!("start failed")
        };
        // One of them already ended: the other is what is left to end.
        assert!(matches!(sessions.end(&first.handle, EndReason::SignedOut).await, Ok(Some(_))));
        assert!(matches!(sessions.end_provider_session("op-session").await, Ok(1)), "the live one only");
        assert!(matches!(sessions.end(&second.handle, EndReason::SignedOut).await, Ok(None)));
        assert_eq!(memory.keys(), Vec::<String>::new());
        assert!(matches!(sessions.end_provider_session("op-session").await, Ok(0)), "nothing left to end");
    }

    #[tokio::test]
    async fn a_back_channel_logout_that_fails_midway_can_be_retried() {
        let memory = MemoryStore::new();
        let sessions = sessions(&memory);
        let Ok(started) = sessions.start(login(), &Device::default()).await else { panic!("start failed") };
        let request =
            LogoutRequest { sub: None, sid: Some("op-session".into()), jti: "j2".into(), exp: now_unix() + 60 };
        // Write 1 claims the jti; write 2 (taking the index) fails.
        memory.fail_write(2);
        assert!(sessions.end_for_provider(&request).await.is_err());
        assert!(matches!(sessions.end_for_provider(&request).await, Ok(Some(1))), "the retry is not a replay");
        assert!(matches!(sessions.end(&started.handle, EndReason::SignedOut).await, Ok(None)));
    }
}
