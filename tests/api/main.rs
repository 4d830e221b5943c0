//! Integration tests: real HTTP to bff on port 0, real Redis, the demo provider on port 0. The
//! harness that sets them up is the `support` crate (tests/support).

// A test that cannot set up its fixture should stop right there, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A test for each frontend layout (`support::Layout`: by host, by path), in a module named
/// after the scenario (frontends, reload). Defined before the modules that use it.
macro_rules! in_both_layouts {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn by_host() {
                super::$scenario(super::Layout::Hosts).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn by_path() {
                super::$scenario(super::Layout::Paths).await
            }
        }
    )*};
}

mod admin;
mod answers;
mod backchannel;
mod cache;
mod callback;
mod cli;
mod client_auth;
mod compose;
mod cookie_memory;
mod cookies;
mod dbsc;
mod demo;
mod dpop;
mod edges;
mod frontchannel;
mod frontends;
mod h2;
mod hostile;
mod login;
mod logout;
mod operations;
mod par;
mod provider_refusals;
mod providers;
mod proxy;
mod refresh;
mod reload;
mod rotation;
mod route_tokens;
mod sessions;
mod signin_options;
mod step_up;
mod store_conformance;
mod store_down;
mod telemetry;
mod timeouts;
mod tls;
mod trust;
mod upstream_h2;
mod upstream_pool;
mod user;
mod userinfo;
mod websocket;
