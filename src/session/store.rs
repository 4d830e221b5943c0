//! actix-session's `SessionStore` over our [`Store`], and the typed entries a session holds.
//!
//! actix-session lets the store pick the session key at the first save, but a login must know
//! the id before that: the token set is written under the same handle during the callback. So
//! the callback puts the id it generated into the state under [`NEW_ID_ENTRY`]; `save` takes it
//! out (it is never stored) and uses it as the key.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_session::Session;
use actix_session::storage::{LoadError, SaveError, SessionKey, SessionStore, UpdateError};
use actix_web::cookie::time;

use super::{KeyLayout, SessionHandle, SessionId};
use crate::crypto::Sealer;
use crate::oidc::UserInfo;
use crate::store::Store;
use crate::telemetry::error_chain;

const NEW_ID_ENTRY: &str = "__new_session_id";
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
    /// Fills a session for a fresh login and renews its id (no fixation).
    pub fn start(session: &Session, id: &SessionId, user: &UserInfo, expires_at: u64) -> Result<(), anyhow::Error> {
        clear_entries(session);
        session.insert(NEW_ID_ENTRY, id.expose())?;
        session.insert(HANDLE_ENTRY, id.handle().as_str())?;
        session.insert(USER_ENTRY, user)?;
        session.insert(EXPIRES_AT_ENTRY, expires_at)?;
        session.renew();
        Ok(())
    }

    pub fn read(session: &Session) -> Option<SignedIn> {
        let handle = session.get::<String>(HANDLE_ENTRY).ok()??;
        let user = session.get::<UserInfo>(USER_ENTRY).ok()??;
        let expires_at = session.get::<u64>(EXPIRES_AT_ENTRY).ok()??;
        if expires_at <= now_unix() {
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

/// How long a session may live from now.
#[derive(Debug, Clone, Copy)]
pub struct SessionLifetime {
    pub idle: Duration,
}

impl SessionLifetime {
    /// The store time to live: the idle timeout, never past the absolute end.
    pub fn ttl(&self, expires_at: u64) -> Option<Duration> {
        let remaining = expires_at.checked_sub(now_unix()).filter(|r| *r > 0)?;
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
        let id = state
            .remove(NEW_ID_ENTRY)
            .and_then(|raw| serde_json::from_str::<String>(&raw).ok())
            .and_then(|raw| SessionId::parse(&raw))
            .unwrap_or_else(SessionId::generate);
        let key = self.keys.session(&id.handle());
        let sealed = self.seal(&key, &state).map_err(|e| SaveError::Serialization(e.into()))?;
        self.store.set(&key, &sealed, self.ttl_of(&state)).await.map_err(|e| SaveError::Other(e.into()))?;
        session_key(&id).map_err(SaveError::Other)
    }

    async fn update(
        &self,
        session_key: SessionKey,
        state: HashMap<String, String>,
        ttl: &time::Duration,
    ) -> Result<SessionKey, UpdateError> {
        let Some(id) = Self::id_of(&session_key) else {
            return self.save(state, ttl).await.map_err(|e| UpdateError::Other(e.into()));
        };
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

    async fn delete(&self, session_key: &SessionKey) -> Result<(), anyhow::Error> {
        if let Some(id) = Self::id_of(session_key) {
            self.store.delete(&self.keys.all_of_session(&id.handle())).await?;
        }
        Ok(())
    }
}
