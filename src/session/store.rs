//! actix-session's `SessionStore` over our [`Store`], and the typed entries a session holds.
//!
//! actix-session writes a new session's state when the response leaves, after the handler;
//! a sign-in cannot leave its failure that late (the token set would be left behind with no
//! cookie to reach it). So the sign-in (`tokens::Sessions::start`) writes the state itself,
//! with its other writes, and marks the in-memory session with [`STORED_ID_ENTRY`]: `save`
//! then only hands actix-session the key, writing nothing.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_session::Session;
use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time;

use super::{KeyLayout, SessionHandle, SessionId};
use crate::crypto::Sealer;
use crate::oidc::UserInfo;
use crate::store::{Store, StoreError};
use crate::telemetry::error_chain;

const STORED_ID_ENTRY: &str = "__stored_session_id";
const HANDLE_ENTRY: &str = "handle";
const USER_ENTRY: &str = "user";
const EXPIRES_AT_ENTRY: &str = "expires_at";

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The typed view of a session's entries; the only code that knows the entry names.
pub struct SessionEntries;

/// What a signed-in session holds.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub handle: SessionHandle,
    pub user: UserInfo,
    /// Unix seconds: the absolute end of the session.
    pub expires_at: u64,
}

impl SessionEntries {
    /// The state of a new signed-in session, as actix-session holds it (values in JSON).
    pub fn state(
        handle: &SessionHandle,
        user: &UserInfo,
        expires_at: u64,
    ) -> Result<HashMap<String, String>, serde_json::Error> {
        Ok(HashMap::from([
            (HANDLE_ENTRY.to_string(), serde_json::to_string(handle.as_str())?),
            (USER_ENTRY.to_string(), serde_json::to_string(user)?),
            (EXPIRES_AT_ENTRY.to_string(), serde_json::to_string(&expires_at)?),
        ]))
    }

    /// Puts into the browser's session the state `Sessions::start` already stored under `id`,
    /// and renews the session (no fixation: the old id, if any, is dropped).
    pub fn start(session: &Session, id: &SessionId, state: HashMap<String, String>) -> Result<(), anyhow::Error> {
        clear_entries(session);
        session.insert(STORED_ID_ENTRY, id.expose())?;
        for (name, json) in state {
            let value: serde_json::Value = serde_json::from_str(&json)?;
            session.insert(name, value)?;
        }
        session.renew();
        Ok(())
    }

    /// The signed-in state, unless it ended by `now` (Unix seconds, the instance's clock).
    pub fn read(session: &Session, now: u64) -> Option<SignedIn> {
        let handle = session.get::<String>(HANDLE_ENTRY).ok()??;
        let user = session.get::<UserInfo>(USER_ENTRY).ok()??;
        let expires_at = session.get::<u64>(EXPIRES_AT_ENTRY).ok()??;
        if expires_at <= now {
            return None;
        }
        Some(SignedIn { handle: SessionHandle::from_stored(&handle)?, user, expires_at })
    }
}

/// Drops every entry but keeps the session object usable (unlike `purge`).
fn clear_entries(session: &Session) {
    let keys: Vec<String> = session.entries().keys().cloned().collect();
    for key in keys {
        session.remove(&key);
    }
}

/// How long a session may live from now, by the instance's clock.
#[derive(Debug, Clone)]
pub struct SessionLifetime {
    pub idle: Duration,
    pub clock: crate::clock::Clock,
}

impl SessionLifetime {
    /// Unix seconds by the clock lifetimes are decided by.
    pub fn now(&self) -> u64 {
        self.clock.now_unix()
    }

    /// The store time to live: the idle timeout, never past the absolute end.
    pub fn ttl(&self, expires_at: u64) -> Option<Duration> {
        let remaining = expires_at.checked_sub(self.now()).filter(|r| *r > 0)?;
        Some(self.idle.min(Duration::from_secs(remaining)))
    }
}

#[derive(Clone)]
pub struct SessionStoreAdapter {
    store: Store,
    sealer: Sealer,
    keys: KeyLayout,
    lifetime: SessionLifetime,
}

impl SessionStoreAdapter {
    pub fn new(store: Store, sealer: Sealer, keys: KeyLayout, lifetime: SessionLifetime) -> Self {
        SessionStoreAdapter { store, sealer, keys, lifetime }
    }

    fn id_of(key: &SessionKey) -> Option<SessionId> {
        SessionId::parse(key.as_ref())
    }

    fn seal(&self, key: &str, state: &HashMap<String, String>) -> Result<Vec<u8>, serde_json::Error> {
        Ok(self.sealer.seal(key.as_bytes(), &serde_json::to_vec(state)?))
    }

    /// Writes the state of a session that is being signed in (see the module's note).
    pub async fn create(&self, id: &SessionId, state: &HashMap<String, String>) -> Result<(), StoreError> {
        let key = self.keys.session(&id.handle());
        let sealed = self.seal(&key, state).map_err(|source| StoreError::Encoding { what: "a session", source })?;
        self.store.set(&key, &sealed, self.ttl_of(state)).await
    }

    fn ttl_of(&self, state: &HashMap<String, String>) -> Duration {
        let expires_at = state.get(EXPIRES_AT_ENTRY).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // A state without an end (never written by bff) lives one idle period at most.
        self.lifetime.ttl(expires_at).unwrap_or(Duration::from_millis(1))
    }
}

fn session_key(id: &SessionId) -> Result<SessionKey, anyhow::Error> {
    Ok(SessionKey::try_from(id.expose().to_string())?)
}

impl SessionStore for SessionStoreAdapter {
    async fn load(&self, session_key: &SessionKey) -> Result<Option<HashMap<String, String>>, LoadError> {
        let Some(id) = Self::id_of(session_key) else { return Ok(None) };
        let key = self.keys.session(&id.handle());
        let Some(sealed) = self.store.get(&key).await.map_err(|e| LoadError::Other(e.into()))? else {
            return Ok(None);
        };
        let Some((plain, current)) = self.sealer.open_noting_key(key.as_bytes(), &sealed) else {
            tracing::warn!(session = id.handle().short(), "session state does not open with any configured secret");
            return Ok(None);
        };
        if !current {
            // Sealed under a rotated-out secret: seal it again with the current one, keeping
            // its time to live, so the old secret can later be removed without ending it.
            let resealed = self.sealer.seal(key.as_bytes(), &plain);
            if let Err(e) = self.store.replace_if_prefix(&key, b"", &resealed).await {
                tracing::warn!(
                    session = id.handle().short(),
                    "could not re-seal the session state: {}",
                    error_chain(&e)
                );
            }
        }
        let state: HashMap<String, String> =
            serde_json::from_slice(&plain).map_err(|e| LoadError::Deserialization(e.into()))?;
        Ok(Some(state))
    }

    async fn save(&self, mut state: HashMap<String, String>, _ttl: &time::Duration) -> Result<SessionKey, SaveError> {
        let stored = state
            .remove(STORED_ID_ENTRY)
            .and_then(|raw| serde_json::from_str::<String>(&raw).ok())
            .and_then(|raw| SessionId::parse(&raw));
        if let Some(id) = stored {
            return session_key(&id).map_err(SaveError::Other);
        }
        let id = SessionId::generate();
        let key = self.keys.session(&id.handle());
        let sealed = self.seal(&key, &state).map_err(|e| SaveError::Serialization(e.into()))?;
        self.store.set(&key, &sealed, self.ttl_of(&state)).await.map_err(|e| SaveError::Other(e.into()))?;
        session_key(&id).map_err(SaveError::Other)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        mut state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, UpdateError> {
        let Some(id) = Self::id_of(&session_key) else {
            return self.save(state, ttl).await.map_err(|e| UpdateError::Other(e.into()));
        };
        state.remove(STORED_ID_ENTRY);
        let key = self.keys.session(&id.handle());
        let sealed = self.seal(&key, &state).map_err(|e| UpdateError::Serialization(e.into()))?;
        let written = self
            .store
            .set_if_exists(&key, &sealed, self.ttl_of(&state))
            .await
            .map_err(|e| UpdateError::Other(e.into()))?;
        if written {
            Ok(session_key)
        } else {
            // Expired meanwhile: start over under a new id rather than resurrect the old one.
            self.save(state, ttl).await.map_err(|e| UpdateError::Other(e.into()))
        }
    }

    /// Never called with `TtlExtensionPolicy::OnStateChanges`; bff extends sessions itself
    /// (`TokenStore::load`), at most once a minute.
    async fn update_ttl(&self, _session_key: &SessionKey, _ttl: &time::Duration) -> Result<(), anyhow::Error> {
        Ok(())
    }

    /// Only the state: the token set and the rest of a session end with it, through
    /// `tokens::Sessions::end`, which every path that purges a live session calls first.
    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        if let Some(id) = Self::id_of(session_key) {
            self.store.delete(&[self.keys.session(&id.handle())]).await?;
        }
        Ok(())
    }
}
