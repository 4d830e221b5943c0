//! bff's own access tokens (client-credentials grant, RFC 6749 §4.4) for `token = "client"`
//! routes: one per scopes and resource, shared by every caller. They are kept per instance,
//! not in the store: the client is the same on every instance, so nothing needs to agree
//! across them, and an instance costs the provider one request per token lifetime. One
//! request at a time per token; it is renewed when due (the refresh skew) or after an
//! upstream rejected it.

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Shared;

use super::backoff::Backoff;
use super::manager::{FlightResult, RefreshUnavailable, TokenError, UsableToken, Want, answers};
use super::{Expiry, bearer_header};
use crate::clock::Clock;
use crate::metrics::{Metrics, RefreshOutcome};
use crate::oidc::Oidc;
use crate::telemetry::error_chain;

/// What a client token is asked for with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientGrant {
    pub scopes: Vec<String>,
    pub resource: Option<String>,
}

type Flight = Shared<Pin<Box<dyn Future<Output = FlightResult> + Send>>>;

#[derive(Default)]
struct Slot {
    current: Option<(UsableToken, Expiry)>,
    flight: Option<Flight>,
    /// Tokens issued so far for this grant: the version of the next one.
    issued: u64,
}

pub struct ClientTokens {
    oidc: Arc<Oidc>,
    /// The clock token lifetimes are decided by.
    clock: Clock,
    /// Grants whose last request failed: every route and session shares the token, so a
    /// failing provider is asked once per back-off for it, not once per call.
    backoff: Backoff<ClientGrant>,
    skew: Duration,
    default_expires_in: Duration,
    slots: Mutex<HashMap<ClientGrant, Slot>>,
    metrics: Arc<Metrics>,
}

impl ClientTokens {
    pub fn new(
        oidc: Arc<Oidc>,
        clock: Clock,
        skew: Duration,
        default_expires_in: Duration,
        metrics: Arc<Metrics>,
    ) -> ClientTokens {
        ClientTokens {
            clock,
            oidc,
            backoff: Backoff::new(NonZeroUsize::MIN.saturating_add(255)),
            skew,
            default_expires_in,
            slots: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// A token not due for renewal; no provider call while the cached one is good.
    pub async fn token(self: &Arc<Self>, grant: &ClientGrant) -> FlightResult {
        self.get(grant, Want::Fresh).await
    }

    /// After an upstream answered 401 to the token of `used_version`.
    pub async fn after_rejection(self: &Arc<Self>, grant: &ClientGrant, used_version: u64) -> FlightResult {
        self.get(grant, Want::NewerThan(used_version)).await
    }

    async fn get(self: &Arc<Self>, grant: &ClientGrant, want: Want) -> FlightResult {
        match (self.renewed(grant, want).await, want) {
            // Renewed ahead of expiry: while the provider cannot answer, the token in hand is
            // still good until it expires.
            (Err(TokenError::RefreshUnavailable(why)), Want::Fresh) => {
                self.unexpired(grant).ok_or(TokenError::RefreshUnavailable(why))
            }
            (result, _) => result,
        }
    }

    fn unexpired(&self, grant: &ClientGrant) -> Option<UsableToken> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (token, expiry) = slots.get(grant)?.current.as_ref()?;
        (!expiry.is_expired(self.clock.now_unix())).then(|| token.clone())
    }

    async fn renewed(self: &Arc<Self>, grant: &ClientGrant, want: Want) -> FlightResult {
        let flight = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(grant.clone()).or_default();
            if let Some((token, expiry)) = &slot.current
                && answers(*expiry, token.version, want, self.clock.now_unix(), self.skew)
            {
                return Ok(token.clone());
            }
            // A token got because the one before it was refused, refused in turn: the upstream
            // refuses bff's tokens, and asking the provider for more until this one is due would
            // only let any caller drive the token endpoint.
            if let (Want::NewerThan(used), Some((token, expiry))) = (want, &slot.current)
                && token.version == used
                && token.after_rejection
                && !expiry.needs_refresh(self.clock.now_unix(), self.skew)
            {
                self.metrics.refresh(RefreshOutcome::RejectedAgain);
                return Err(TokenError::CannotRefresh);
            }
            // Whatever a running request was started for, it brings a token newer than any
            // this caller has seen.
            if let Some(flight) = &slot.flight {
                flight.clone()
            } else if let Some(left) = self.backoff.remaining(grant) {
                return Err(RefreshUnavailable::BackingOff(left).into());
            } else {
                slot.flight.insert(self.request(grant.clone(), matches!(want, Want::NewerThan(_)))).clone()
            }
        };
        flight.await
    }

    /// Asks the provider; `after_rejection`: because an upstream refused the current token.
    fn request(self: &Arc<Self>, grant: ClientGrant, after_rejection: bool) -> Flight {
        let this = Arc::clone(self);
        let fut: Pin<Box<dyn Future<Output = FlightResult> + Send>> = Box::pin(async move {
            let answer = this.oidc.client_credentials(&grant.scopes, grant.resource.as_deref()).await;
            this.metrics.client_token(answer.is_ok());
            let mut slots = this.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.entry(grant.clone()).or_default();
            slot.flight = None;
            let issued = match answer {
                Ok(issued) => {
                    this.backoff.succeeded(&grant);
                    issued
                }
                Err(e) => {
                    let wait = this.backoff.failed(grant);
                    tracing::warn!(
                        retry_in_ms = wait.as_millis() as u64,
                        "client-credentials token request failed: {}",
                        error_chain(&e)
                    );
                    return Err(RefreshUnavailable::Provider(e).into());
                }
            };
            slot.issued += 1;
            let lifetime = issued.expires_in.unwrap_or(this.default_expires_in).as_secs();
            let expiry = Expiry {
                expires_at: this.clock.now_unix() + lifetime,
                lifetime_secs: lifetime,
                session_expires_at: u64::MAX,
            };
            let token = UsableToken {
                authorization: bearer_header(&issued.access_token),
                dpop: None,
                version: slot.issued,
                expires_at: expiry.expires_at,
                after_rejection,
            };
            slot.current = Some((token.clone(), expiry));
            Ok(token)
        });
        fut.shared()
    }
}
