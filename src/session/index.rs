//! Which sessions belong to a provider session (`sid`) or a user (`sub`), so a back-channel
//! logout can end them on every instance. Index sets live as long as the longest session in
//! them; a member whose session already ended is harmless (deleting it again does nothing).

use std::time::Duration;

use super::{KeyLayout, SessionHandle};
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct SessionIndex {
    store: Store,
    keys: KeyLayout,
}

impl SessionIndex {
    pub fn new(store: Store, keys: KeyLayout) -> SessionIndex {
        SessionIndex { store, keys }
    }

    pub async fn add(
        &self,
        handle: &SessionHandle,
        sub: &str,
        sid: Option<&str>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.store.set_add(&self.keys.sessions_of_sub(sub), handle.as_str(), ttl).await?;
        if let Some(sid) = sid {
            self.store.set_add(&self.keys.sessions_of_sid(sid), handle.as_str(), ttl).await?;
        }
        Ok(())
    }

    pub async fn remove(&self, handle: &SessionHandle, sub: &str, sid: Option<&str>) -> Result<(), StoreError> {
        self.store.set_remove(&self.keys.sessions_of_sub(sub), handle.as_str()).await?;
        if let Some(sid) = sid {
            self.store.set_remove(&self.keys.sessions_of_sid(sid), handle.as_str()).await?;
        }
        Ok(())
    }

    /// The sessions of a provider session if `sid` is given, else all sessions of `sub`; the
    /// index entry is dropped with them.
    pub async fn take(&self, sub: Option<&str>, sid: Option<&str>) -> Result<Vec<SessionHandle>, StoreError> {
        let key = match (sid, sub) {
            (Some(sid), _) => self.keys.sessions_of_sid(sid),
            (None, Some(sub)) => self.keys.sessions_of_sub(sub),
            (None, None) => return Ok(Vec::new()),
        };
        let members = self.store.set_members(&key).await?;
        self.store.delete(&[key]).await?;
        Ok(members.iter().filter_map(|m| SessionHandle::from_stored(m)).collect())
    }

    /// The sessions indexed under `sub` (left in the index: each is removed as it ends).
    pub async fn sessions_of_sub(&self, sub: &str) -> Result<Vec<SessionHandle>, StoreError> {
        let members = self.store.set_members(&self.keys.sessions_of_sub(sub)).await?;
        Ok(members.iter().filter_map(|m| SessionHandle::from_stored(m)).collect())
    }

    /// The sessions indexed under a provider session (left in the index).
    pub async fn sessions_of_sid(&self, sid: &str) -> Result<Vec<SessionHandle>, StoreError> {
        let members = self.store.set_members(&self.keys.sessions_of_sid(sid)).await?;
        Ok(members.iter().filter_map(|m| SessionHandle::from_stored(m)).collect())
    }

    /// Forgets a claimed `jti`, for a logout that could not be carried out.
    pub async fn release_logout_token(&self, jti: &str) -> Result<(), StoreError> {
        self.store.delete(&[self.keys.logout_token_jti(jti)]).await
    }

    /// Marks a logout token's `jti` as used until `ttl`; false if it was already used.
    pub async fn claim_logout_token(&self, jti: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.store.set_if_absent(&self.keys.logout_token_jti(jti), b"1", ttl).await
    }
}
