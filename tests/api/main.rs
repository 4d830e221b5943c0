//! Integration tests: real HTTP to bff on port 0, real Redis, the demo provider on port 0.

mod callback;
mod cookies;
mod helpers;
mod login;
mod logout;
mod store_down;
mod upstream;
mod user;
