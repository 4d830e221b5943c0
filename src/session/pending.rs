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

    /// Takes the pending login of `state`; a second call for the same state finds nothing.
    pub async fn take(&self, state: &str) -> Result<Option<PendingLogin>, StoreError> {
        let key = self.keys.pending_login(state);
        let Some(sealed) = self.store.take(&key).await? else { return Ok(None) };
        Ok(self.sealer.open(key.as_bytes(), &sealed).and_then(|plain| serde_json::from_slice(&plain).ok()))
    }

    /// How many logins this browser has in progress.
    pub async fn pending_for_browser(&self, browser: &str) -> Result<usize, StoreError> {
        Ok(self.store.set_members(&self.keys.pending_logins_of_browser(browser)).await?.len())
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
