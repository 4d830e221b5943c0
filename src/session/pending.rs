//! Logins in progress: stored sealed under a hash of their `state`, taken once by the callback,
//! gone after ten minutes. Each browser's pending logins are also indexed under a hash of its
//! login cookie so that logout can drop them.

use std::time::Duration;

use super::KeyLayout;
use crate::crypto::{Sealer, digest};
use crate::oidc::PendingLogin;
use crate::store::{Store, StoreError};

pub const PENDING_LOGIN_TTL: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct PendingLogins {
    store: Store,
    sealer: Sealer,
    keys: KeyLayout,
}

impl PendingLogins {
    pub fn new(store: Store, sealer: Sealer, keys: KeyLayout) -> PendingLogins {
        PendingLogins { store, sealer, keys }
    }

    pub async fn put(&self, state: &str, pending: &PendingLogin) -> Result<(), StoreError> {
        let key = self.keys.pending_login(state);
        let plain =
            serde_json::to_vec(pending).map_err(|source| StoreError::Encoding { what: "a pending login", source })?;
        self.store.set(&key, &self.sealer.seal(key.as_bytes(), &plain), PENDING_LOGIN_TTL).await?;
        self.store
            .set_add(&self.keys.pending_logins_of_browser(&pending.browser), &digest(state), PENDING_LOGIN_TTL)
            .await
    }

    /// The pending login of `state`, left in place (the callback checks it before taking it).
    pub async fn peek(&self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let key = self.keys.pending_login(state);
        let Some(sealed) = self.store.get(&key).await? else { return Ok(None) };
        Ok(self.open(&key, &sealed))
    }

    /// Takes the pending login of `state`; a second call for the same state finds nothing. It no
    /// longer counts as in progress for its browser.
    pub async fn take(&self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let key = self.keys.pending_login(state);
        let Some(sealed) = self.store.take(&key).await? else { return Ok(None) };
        let pending = self.open(&key, &sealed);
        if let Some(pending) = &pending {
            self.store.set_remove(&self.keys.pending_logins_of_browser(&pending.browser), &digest(state)).await?;
        }
        Ok(pending)
    }

    fn open(&self, key: &str, sealed: &[u8]) -> Option<PendingLogin> {
        self.sealer.open(key.as_bytes(), sealed).and_then(|plain| serde_json::from_slice(&plain).ok())
    }

    /// Whether this browser may start one more login; if not, how long until its oldest login
    /// in progress expires. Logins that completed or expired do not count (an expired one is
    /// still listed until the index itself expires, so the index is only trusted below `limit`).
    pub async fn room_for(&self, browser: &str, limit: usize) -> Result<Result<(), Duration>, StoreError> {
        let index = self.keys.pending_logins_of_browser(browser);
        let listed = self.store.set_members(&index).await?;
        if listed.len() < limit {
            return Ok(Ok(()));
        }
        let mut live = Vec::new();
        for state_hash in listed {
            match self.store.get_with_ttl(&self.keys.pending_login_by_hash(&state_hash)).await? {
                Some((_, ttl)) => live.push(ttl),
                None => self.store.set_remove(&index, &state_hash).await?,
            }
        }
        if live.len() < limit {
            return Ok(Ok(()));
        }
        Ok(Err(live.into_iter().min().unwrap_or(PENDING_LOGIN_TTL)))
    }

    /// Drops every pending login the browser with this binding hash started.
    pub async fn forget_browser(&self, browser: &str) -> Result<(), StoreError> {
        let index = self.keys.pending_logins_of_browser(browser);
        for state_hash in self.store.set_members(&index).await? {
            // The index holds hashes of states; pending-login keys are built from the same hash.
            self.store.delete(&[self.keys.pending_login_by_hash(&state_hash)]).await?;
        }
        self.store.delete(&[index]).await
    }
}
