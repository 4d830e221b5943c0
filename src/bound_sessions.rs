//! Registering and refreshing device-bound sessions (DBSC, `session.dbsc`): the two steps that
//! read and write a session for it. The protocol (proofs, challenges, the bound cookie, the
//! headers) is `dbsc`'s; what each outcome answers on the wire is `routes::dbsc`'s.
//!
//! Neither step trusts anything but the signed proof: the browser sends no `X-CSRF` and, in
//! some versions, no `Origin` with them. The challenge it signed is bff's own MAC over the
//! session (and the device session, at refresh), answered once: its nonce is claimed in the
//! store, which is the only store command either step makes besides reading the session (and,
//! at registration, writing the binding).

use crate::dbsc::{self, Dbsc, DeviceBinding, Purpose};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::session::{KeyLayout, SessionHandle};
use crate::state::AppState;
use crate::store::Store;
use crate::tokens::{TokenError, TokenManager};

/// A registration that was not made, and why (the metrics' `reason`). The browser is answered
/// 400 and creates no device session: the session goes on unbound.
#[derive(Debug)]
pub enum RegisterError {
    Refused(&'static str),
    /// The store or the session's lock was not there: nothing was decided.
    Unavailable(AppError),
}

/// A session just bound: `id` names its device session.
#[derive(Debug)]
pub struct Registered {
    pub handle: SessionHandle,
    pub id: String,
}

/// What a refresh comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// A valid proof: a new bound cookie for the device session `id` of `handle`.
    Renewed { handle: SessionHandle, id: String },
    /// No proof, or one bff cannot take (stale, used, not the registered key's): the browser
    /// is handed a new challenge to sign (403), and may try again.
    Challenge { handle: SessionHandle, id: String },
    /// The session is over, or this device session is not its: the browser ends it.
    Ended { id: Option<String> },
}

pub struct BoundSessions<'a> {
    dbsc: &'a Dbsc,
    tokens: &'a TokenManager,
    store: &'a Store,
    keys: &'a KeyLayout,
    metrics: &'a Metrics,
}

impl<'a> BoundSessions<'a> {
    pub fn new(state: &'a AppState) -> BoundSessions<'a> {
        BoundSessions {
            dbsc: &state.dbsc,
            tokens: &state.tokens,
            store: &state.store,
            keys: &state.keys,
            metrics: &state.metrics,
        }
    }

    /// Registration: the proof carries the device's public key and signs the challenge bff
    /// offered with this session's sign-in. The session must be live and not bound yet (a
    /// session is bound once: a stolen cookie cannot re-bind it to the thief's key). The new
    /// device session.
    pub async fn register(
        &self,
        handle: Option<SessionHandle>,
        proof: Option<&str>,
    ) -> Result<Registered, RegisterError> {
        let refused = |reason: &'static str| {
            self.metrics.dbsc_refused("register", reason);
            tracing::info!(reason, "device registration refused");
            RegisterError::Refused(reason)
        };
        let handle = handle.ok_or_else(|| refused("no_session"))?;
        let proof = proof.ok_or_else(|| refused("no_proof"))?;
        let proof = dbsc::verify_registration(proof).map_err(|e| refused(e.label()))?;
        let now = self.tokens.store().now();
        let challenge = self
            .dbsc
            .keys()
            .check_challenge(&proof.challenge, Purpose::Register, &handle, "", now)
            .ok_or_else(|| refused("stale_challenge"))?;
        if !self.claim(&handle, &challenge, now).await.map_err(RegisterError::Unavailable)? {
            return Err(refused("replayed_challenge"));
        }
        let id = crate::crypto::random_id();
        let binding = DeviceBinding { session_id: id.clone(), alg: proof.alg, key: proof.key };
        match self.tokens.bind_device(&handle, binding).await {
            Ok(true) => {
                self.metrics.dbsc_registered(proof.alg.label());
                tracing::info!(session = handle.short(), alg = proof.alg.label(), "session bound to a device key");
                Ok(Registered { handle, id })
            }
            Ok(false) => Err(refused("already_bound")),
            Err(TokenError::LoginRequired) => Err(refused("session_ended")),
            Err(e) => Err(RegisterError::Unavailable(e.into())),
        }
    }

    /// Refresh: `id` is the browser's `Sec-Secure-Session-Id`. Without a proof, or with one that
    /// does not do, a new challenge; with a valid one signed by the registered key, renewal.
    pub async fn refresh(
        &self,
        handle: Option<SessionHandle>,
        id: Option<&str>,
        proof: Option<&str>,
    ) -> Result<Refresh, AppError> {
        let ended = |reason: &'static str, id: Option<&str>| {
            self.metrics.dbsc_refused("refresh", reason);
            tracing::info!(reason, "device session ended at refresh");
            Ok(Refresh::Ended { id: id.map(String::from) })
        };
        let Some(id) = id.and_then(dbsc::parse_session_id) else { return ended("unknown_device_session", None) };
        let Some(handle) = handle else { return ended("no_session", Some(id)) };
        let view = match self.tokens.live_session(&handle).await {
            Ok(view) => view,
            Err(TokenError::LoginRequired) => return ended("session_ended", Some(id)),
            Err(e) => return Err(e.into()),
        };
        let Some(binding) = view.device.as_ref().filter(|b| b.session_id == id) else {
            return ended("unknown_device_session", Some(id));
        };
        let challenge = || Ok(Refresh::Challenge { handle: handle.clone(), id: id.to_string() });
        let Some(proof) = proof else { return challenge() };
        let refused = |reason: &'static str| {
            self.metrics.dbsc_refused("refresh", reason);
            tracing::info!(session = handle.short(), reason, "device refresh refused; a new challenge is sent");
            challenge()
        };
        let jti = match dbsc::verify_refresh(proof, binding.alg, &binding.key) {
            Ok(jti) => jti,
            Err(e) => return refused(e.label()),
        };
        let now = self.tokens.store().now();
        let Some(checked) = self.dbsc.keys().check_challenge(&jti, Purpose::Refresh, &handle, id, now) else {
            return refused("stale_challenge");
        };
        if !self.claim(&handle, &checked, now).await? {
            return refused("replayed_challenge");
        }
        self.metrics.dbsc_refreshed();
        Ok(Refresh::Renewed { handle, id: id.to_string() })
    }

    /// Claims a challenge's nonce until it would have expired: `false` if it was answered before.
    async fn claim(&self, handle: &SessionHandle, challenge: &dbsc::Challenge, now: u64) -> Result<bool, AppError> {
        let ttl = std::time::Duration::from_secs(challenge.expires_at.saturating_sub(now) + 1);
        let key = self.keys.dbsc_challenge(handle, &challenge.nonce);
        Ok(self.store.set_if_absent(&key, b"1", ttl).await?)
    }
}
