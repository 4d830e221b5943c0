//! Reloading the configuration: frontends added, removed and changed while bff serves; files it
//! cannot apply refused with nothing changed; and `SIGHUP` to the real binary.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use reqwest::header::SET_COOKIE;
use serde_json::Value;

use support::frontends::{FrontendBrowser, Layout, Side, TwoFrontends, resolving_client, shared_toml};
use support::{eventually, location, port_for_later, random_id, upstream};

in_both_layouts!(a_reload_adds_a_frontend, a_reload_removes_a_frontend);

async fn readyz(base: &str) -> (u16, Value) {
    let res = reqwest::get(format!("{base}/readyz")).await.expect("readyz");
    (res.status().as_u16(), res.json().await.expect("JSON"))
}

/// The value of the sample of `name` with exactly `labels` (`outcome="applied"`), 0 if absent.
async fn sample(base: &str, name: &str, labels: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("text");
    let head = format!("{name}{{{labels}}} ");
    text.lines().find_map(|l| l.strip_prefix(&head)).map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Signs in at `side` with a browser of its own.
async fn signed_in(app: &TwoFrontends, side: &Side, user: &str) -> FrontendBrowser {
    let browser = app.browser(side);
    assert!(browser.login_as(user).await.status().is_redirection(), "sign-in at {}", side.name);
    assert_eq!(browser.user().await.status(), 200);
    browser
}

async fn a_reload_adds_a_frontend(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let alice_at_one = signed_in(&app, &app.one, "alice").await;
    let three = Side::spawn("three", layout, app.port, None).await;
    // Before the reload, nothing serves frontend three.
    assert_eq!(app.browser(&three).get("/auth/login").await.status(), 404);

    let summary = app
        .reload(&format!("{}{}{}{}", app.shared(), app.one.table(), app.two.table(), three.table()))
        .await
        .expect("the file is applied");

    assert_eq!(summary.added, ["three"]);
    assert_eq!(summary.unchanged, ["one", "two"]);
    assert!(summary.changed.is_empty() && summary.removed.is_empty(), "{summary:?}");
    let carol = signed_in(&app, &three, "carol").await;
    assert_eq!(carol.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(three.upstream.seen().len(), 1, "frontend three's calls go to its upstream");
    assert_eq!(alice_at_one.user().await.status(), 200, "the session at frontend one is untouched");
    assert_eq!(alice_at_one.api(Method::GET, "/api/echo").await.status(), 200);
    let (status, body) = readyz(&app.address).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["configuration"]["last_reload"], "applied", "{body}");
    assert_eq!(body["frontends"]["three"], "ok", "{body}");
    assert_eq!(sample(&app.address, "bff_config_reloads_total", "outcome=\"applied\"").await, 1.0);
}

async fn a_reload_removes_a_frontend(layout: Layout) {
    let app = TwoFrontends::spawn(layout).await;
    let alice_at_one = signed_in(&app, &app.one, "alice").await;
    let alice_at_two = alice_at_one.at(&app.two);
    assert!(alice_at_two.login_as("alice").await.status().is_redirection());

    let summary = app.reload(&format!("{}{}", app.shared(), app.one.table())).await.expect("the file is applied");

    assert_eq!(summary.removed, ["two"]);
    // Frontend one is rebuilt, not kept: alone, its default share of the instance's upstream
    // calls grows from three quarters to all of it, so its effective configuration changed.
    assert_eq!(summary.changed, ["one"], "{summary:?}");
    // A request that still carries frontend two's cookie: its session is over, the cookie goes.
    let res = alice_at_two.user().await;
    assert_eq!(res.status(), 401);
    let cleared = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| actix_web::cookie::Cookie::parse(v.to_string()).ok())
        .find(|c| c.name() == "bff-two")
        .expect("frontend two's cookie is cleared");
    assert!(cleared.value().is_empty() && cleared.max_age().is_some_and(|a| a.is_zero()), "{cleared}");
    let expected_path = if layout == Layout::Paths { "/two" } else { "/" };
    assert_eq!(cleared.path(), Some(expected_path), "cleared with the path it was set with: {cleared}");
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["error"], "login_required");
    assert!(alice_at_two.session_cookie().is_none());
    // Its login is no longer served.
    let login = alice_at_two.get("/auth/login").await;
    assert_eq!(login.status(), 404);
    assert!(app.two.upstream.seen().is_empty());
    assert_eq!(alice_at_one.user().await.status(), 200, "frontend one's session stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_takes_new_calls_while_a_call_in_flight_finishes_at_the_old_one() {
    let app = TwoFrontends::spawn(Layout::Paths).await;
    let alice = signed_in(&app, &app.one, "alice").await;
    let old = &app.one.upstream;
    let slow = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.api(Method::GET, "/api/slow?ms=2500").await })
    };
    old.until_received("/slow").await;
    let new = upstream::spawn(Some(std::sync::Arc::clone(&app.one.idp.provider))).await;

    let summary = app
        .reload(&format!("{}{}{}", app.shared(), app.one.table_with_upstream(&new.url), app.two.table()))
        .await
        .expect("the file is applied");

    assert_eq!(summary.changed, ["one"]);
    assert_eq!(summary.unchanged, ["two"]);
    let res = alice.api(Method::GET, "/api/echo").await;
    assert_eq!(res.status(), 200, "the session outlives the change of its frontend");
    assert_eq!(new.seen().iter().map(|s| s.path.as_str()).collect::<Vec<_>>(), ["/echo"]);
    assert!(!old.seen().iter().any(|s| s.path == "/echo"), "the old upstream gets no new call");
    let finished = tokio::time::timeout(Duration::from_secs(10), slow).await.expect("bounded").expect("task");
    assert_eq!(finished.status(), 200, "the call in flight finished");
    let body: Value = finished.json().await.expect("JSON");
    assert_eq!(body["slow"], true, "answered by the old upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let app = TwoFrontends::spawn(Layout::Paths).await;
    let alice_at_one = signed_in(&app, &app.one, "alice").await;
    let alice_at_two = alice_at_one.at(&app.two);
    assert!(alice_at_two.login_as("alice").await.status().is_redirection());
    let dead = format!("http://127.0.0.1:{}", support::dead_port());
    let unreachable = app.one.table().replace(&app.one.idp.issuer, &dead).replace("\"one\"", "\"three\"");
    let unreachable = unreachable.replace("\"/one\"", "\"/three\"").replace("\"/one/api\"", "\"/three/api\"");
    let broken: [(&str, String, &str); 4] = [
        ("not TOML", "[server\npublic_url = ".to_string(), ""),
        // Frontend two without its issuer, and frontend one's API off its path.
        (
            "invalid keys",
            format!(
                "{}{}{}",
                app.shared(),
                app.one.table().replace("prefix = \"/one/api\"", "prefix = \"/api\""),
                app.two.table().replace(&format!("issuer = \"{}\"", app.two.idp.issuer), "")
            ),
            "frontend[1].oidc.issuer",
        ),
        (
            "top-level [oidc] with frontends",
            format!(
                "{}[oidc]\nissuer = \"{dead}\"\nclient_id = \"x\"\nclient_secret = \"y\"\n{}",
                app.shared(),
                app.one.table()
            ),
            "oidc",
        ),
        (
            "a provider that cannot be discovered",
            format!("{}{}{}{unreachable}", app.shared(), app.one.table(), app.two.table()),
            "frontend[2]",
        ),
    ];

    for (i, (what, text, key)) in broken.into_iter().enumerate() {
        let errors = app.reload(&text).await.expect_err(what);

        assert!(errors.0.iter().any(|e| e.key.starts_with(key)), "{what}: {errors}");
        let (status, body) = readyz(&app.address).await;
        assert_eq!(status, 200, "{what}: still ready: {body}");
        assert_eq!(body["configuration"]["last_reload"], "refused", "{what}: {body}");
        let problems = body["configuration"]["problems"].as_array().expect("problems").clone();
        assert!(!problems.is_empty(), "{what}: {body}");
        assert!(problems.iter().any(|p| p.as_str().is_some_and(|p| p.starts_with(key))), "{what}: {body}");
        assert_eq!(
            sample(&app.address, "bff_config_reloads_total", "outcome=\"refused\"").await,
            (i + 1) as f64,
            "{what}"
        );
        // Everything still works as before.
        assert_eq!(alice_at_one.api(Method::GET, "/api/echo").await.status(), 200, "{what}");
        assert_eq!(alice_at_two.api(Method::GET, "/api/echo").await.status(), 200, "{what}");
        assert_eq!(app.browser(&app.two).get("/auth/login").await.status(), 302, "{what}");
        assert_eq!(
            resolving_client(app.port)
                .get(format!("{}/three/auth/login", app.address))
                .send()
                .await
                .expect("get")
                .status(),
            404
        );
    }
    assert_eq!(sample(&app.address, "bff_config_reloads_total", "outcome=\"applied\"").await, 0.0);
    // A good file afterwards is applied, and says so.
    app.reload(&app.toml).await.expect("the file bff started with");
    assert_eq!(readyz(&app.address).await.1["configuration"]["last_reload"], "applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_only_a_restart_can_apply_is_refused() {
    let app = TwoFrontends::spawn(Layout::Hosts).await;
    let alice = signed_in(&app, &app.one, "alice").await;
    let tables = format!("{}{}", app.one.table(), app.two.table());
    let three_workers = format!("{}{tables}", shared_toml(app.port, &app.prefix, 3));
    let other_prefix = format!("{}{tables}", shared_toml(app.port, &format!("bfftest:{}:", random_id()), 2));

    for (text, key) in [(three_workers, "server.workers"), (other_prefix, "session.key_prefix")] {
        let errors = app.reload(&text).await.expect_err(key);

        assert_eq!(errors.0.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), [key], "{errors}");
        let (status, body) = readyz(&app.address).await;
        assert_eq!(status, 200);
        assert_eq!(body["configuration"]["last_reload"], "refused", "{body}");
        let problems = body["configuration"]["problems"].to_string();
        assert!(problems.contains(key) && problems.contains("restart"), "{body}");
        assert_eq!(alice.user().await.status(), 200, "{key}: the session stays");
    }
    assert_eq!(sample(&app.address, "bff_config_reloads_total", "outcome=\"refused\"").await, 2.0);
}

/// A `bff serve` process, killed when the test ends however it ends.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_binary_reload_its_file() {
    let port = port_for_later();
    let address = format!("http://127.0.0.1:{port}");
    let one = Side::spawn("one", Layout::Paths, port, None).await;
    let two = Side::spawn("two", Layout::Paths, port, None).await;
    let prefix = format!("bfftest:{}:", random_id());
    let shared = shared_toml(port, &prefix, 1).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let file = std::env::temp_dir().join(format!("bff-reload-{}.toml", random_id()));
    std::fs::write(&file, format!("{shared}{}", one.table())).expect("write the file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bff"));
    // The file alone: the test process's own BFF_* variables must not leak in.
    for (name, _) in std::env::vars() {
        if name.starts_with("BFF_") {
            cmd.env_remove(name);
        }
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start bff serve");
    let bff = Serving(child);
    let http = resolving_client(port);
    eventually("bff serve is ready", Duration::from_secs(30), || async {
        matches!(http.get(format!("{address}/readyz")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    let login = |path: &'static str| {
        let http = http.clone();
        let url = format!("{address}{path}");
        async move { http.get(url).send().await.expect("login") }
    };
    assert_eq!(login("/two/auth/login").await.status(), 404, "no frontend two yet");

    std::fs::write(&file, format!("{shared}{}{}", one.table(), two.table())).expect("edit the file");
    let hup = Command::new("kill").args(["-HUP", &bff.0.id().to_string()]).status().expect("run kill");
    assert!(hup.success());

    eventually("the edited file is applied", Duration::from_secs(20), || async {
        let Ok(res) = http.get(format!("{address}/readyz")).send().await else { return false };
        let body: Value = res.json().await.unwrap_or_default();
        body["configuration"]["last_reload"] == "applied"
    })
    .await;
    let res = login("/two/auth/login").await;
    assert_eq!(res.status(), 302, "frontend two is served");
    assert!(location(&res).starts_with(&format!("{}/authorize?", two.idp.issuer)), "{}", location(&res));
    assert_eq!(login("/one/auth/login").await.status(), 302, "frontend one still is");
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_started_before_its_frontend_changed_completes_after() {
    let app = TwoFrontends::spawn(Layout::Hosts).await;
    let browser = app.browser(&app.one);
    let start = browser.get("/auth/login").await;
    assert_eq!(start.status(), 302);
    let callback = browser.browser.sign_in_at_provider(&location(&start), "alice").await;
    let new = upstream::spawn(Some(std::sync::Arc::clone(&app.one.idp.provider))).await;

    let summary = app
        .reload(&format!("{}{}{}", app.shared(), app.one.table_with_upstream(&new.url), app.two.table()))
        .await
        .expect("the file is applied");
    assert_eq!(summary.changed, ["one"]);

    // The pending sign-in lives in the store, not in the frontend that was replaced.
    let back = browser.browser.get(&callback).await;
    assert!(back.status().is_redirection(), "{}", back.status());
    assert_eq!(browser.user().await.status(), 200);
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(new.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_of_a_removed_frontend_runs_to_its_end() {
    let app = TwoFrontends::spawn(Layout::Paths).await;
    let alice = signed_in(&app, &app.two, "alice").await;
    let stream = alice.api(Method::GET, "/api/sse?count=5").await;
    assert_eq!(stream.status(), 200);
    app.two.upstream.until_received("/sse").await;

    app.reload(&format!("{}{}", app.shared(), app.one.table())).await.expect("the file is applied");

    assert_eq!(alice.user().await.status(), 401, "new requests: the frontend is gone");
    let body = tokio::time::timeout(Duration::from_secs(10), stream.text()).await.expect("bounded").expect("body");
    assert!(body.contains("data: tick 4"), "the stream ran to its end: {body}");
}
