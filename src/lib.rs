//! bff: a Backend-for-Frontend. The browser holds an opaque HttpOnly cookie; bff is the OAuth 2.0
//! / OpenID Connect confidential client, keeps every token server-side and proxies the SPA's API
//! calls with the access token attached, refreshing it as needed.
//!
//! `startup::Application` builds the whole app on a given listener, so `main` and the tests
//! start it the same way.

pub mod admin;
pub mod bound_sessions;
pub mod bounded;
pub mod client_keys;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dbsc;
pub mod dpop;
pub mod error;
pub mod forwarded;
pub mod frontends;
pub mod http;
pub mod limits;
pub mod login_options;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod paths;
pub mod proxy;
pub mod request_id;
pub mod return_to;
pub mod routes;
pub mod runtime;
pub mod session;
pub mod signin;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;

#[cfg(feature = "demo")]
pub mod demo;

#[cfg(test)]
mod prop;

pub use startup::Application;
