//! Runs the browser tests (`tests/browser/*.test.mjs`: Debian's Chromium driven by
//! playwright-core) against this build's `bff demo`, so `cargo test` runs every test there is.
//! Needs `/usr/bin/chromium` and `npm ci --prefix tests/browser`; `scripts/test` provides both.

#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Runs `tests/browser/<script>` with node; it starts `bff demo` itself and stops by itself.
fn run_browser_test(script: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's Chromium: apt-get install -y chromium (or run scripts/test)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "the browser test needs its Node packages: npm ci --prefix tests/browser (or run scripts/test)"
    );
    let status = Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .env("BFF_BIN", env!("CARGO_BIN_EXE_bff"))
        .current_dir(root)
        .status()
        .expect("node runs (apt-get install -y nodejs)");
    assert!(status.success(), "the browser test {script} failed (its output is above)");
}

#[test]
fn the_demo_works_in_a_real_browser() {
    run_browser_test("demo.test.mjs");
}

/// `bff demo --frontends`: the demo SPA at `/shop/` and at `/admin/` on one origin, each signed
/// in and out on its own, each with its own cookie.
#[test]
fn two_spas_on_two_path_frontends_work_in_a_real_browser() {
    run_browser_test("frontends.test.mjs");
}

/// The session cookie with each `session.cookie_prefix`, set, kept and sent by Chromium, and
/// `SameSite=Strict` against a sign-in and a deep link from another site.
#[test]
fn the_session_cookie_works_with_each_prefix_and_strict_in_a_real_browser() {
    run_browser_test("cookies.test.mjs");
}

/// The demo SPA's silent sign-in: declined back to the SPA, or signed in without a page.
#[test]
fn sign_in_options_work_from_the_demo_spa_in_a_real_browser() {
    run_browser_test("signin.test.mjs");
}

/// `bff demo --tls`: Chromium trusts the demo's certificate by the banner's SPKI hash, signs in
/// through the provider back to https bff; pages, API calls and the event stream over HTTP/2, the
/// WebSocket over HTTP/1.1, the `__Host-Http-` cookie.
#[test]
fn the_demo_over_https_works_in_a_real_browser() {
    run_browser_test("tls.test.mjs");
}

/// DBSC in Chromium (its software keys, over the demo's https): registration at sign-in, the
/// bound cookie renewed by a signature once it expired, and a copy of the cookies in a second
/// browser without the key refused once the copied bound cookie expired.
#[test]
fn device_bound_cookies_work_in_a_real_browser_and_a_copy_without_the_key_stops_working() {
    run_browser_test("dbsc.test.mjs");
}
