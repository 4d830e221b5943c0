//! The `bff` binary itself: `check-config` with files and environment overrides, and a full
//! `bff serve` run whose log output is searched for secrets.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Browser, IdpOptions, eventually, random_id, spawn_idp, test_secret};

fn bff() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bff"));
    // A clean slate: the test process's own BFF_* variables must not leak in.
    for (name, _) in std::env::vars() {
        if name.starts_with("BFF_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn write_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("bff-{}.toml", random_id()));
    std::fs::write(&path, text).expect("write config");
    path
}

fn valid_config() -> String {
    format!(
        "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"bff\"\nclient_secret = \"file-secret\"\n\
         [session]\nsecret = \"{}\"\n",
        test_secret()
    )
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let path = write_config(&valid_config());
    let out = bff()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("BFF_OIDC__CLIENT_ID", "0123")
        .env("BFF_SESSION__REDIS_URL", "redis://:hunter2@127.0.0.1:6379")
        .env("BFF_CONFIG_UNRELATED", "ignored")
        .output()
        .expect("run bff");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("client_id = \"0123\""), "env overrides the file, as a string: {stdout}");
    assert!(!stdout.contains("file-secret") && !stdout.contains("hunter2") && !stdout.contains(&test_secret()));
    assert!(stdout.contains("[redacted]"));
}

#[test]
fn check_config_reports_every_problem_with_its_key_and_exits_2() {
    let path = write_config(
        "[server]\npublic_url = \"ftp://x\"\n[oidc]\nissuer = \"nope\"\n[session]\nsecret = \"short\"\nbogus = 1\n",
    );
    let out =
        bff().args(["check-config", "--config"]).arg(&path).env("BFF_TOKENS__UNKNOWN", "1").output().expect("run bff");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.public_url:",
        "oidc.issuer:",
        "oidc.client_id:",
        "oidc.client_secret:",
        "session.secret:",
        "session.bogus: unknown key",
        "tokens.unknown: unknown key (from BFF_TOKENS__UNKNOWN)",
    ] {
        assert!(stderr.contains(key), "{key} missing in:\n{stderr}");
    }
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
}

#[test]
fn config_comes_from_bff_config_and_a_missing_file_is_reported() {
    let path = write_config(&valid_config());
    let out = bff().arg("check-config").env("BFF_CONFIG", &path).output().expect("run bff");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bff().args(["check-config", "--config", "/nonexistent/bff.toml"]).output().expect("run bff");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bff.toml"));
}

#[test]
fn client_secret_can_come_from_a_file() {
    let secret_path = std::env::temp_dir().join(format!("bff-secret-{}", random_id()));
    std::fs::write(&secret_path, "from-a-file\n").expect("write");
    let text = valid_config().replace(
        "client_secret = \"file-secret\"",
        &format!("client_secret_file = {:?}", secret_path.display().to_string()),
    );
    let out = bff().args(["check-config", "--config"]).arg(write_config(&text)).output().expect("run bff");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `bff serve` as a child process with its own provider and upstream; its output is collected.
/// `bff serve` in a process of its own, with the demo provider and the test upstream.
pub(crate) struct Served {
    child: std::process::Child,
    logs: Arc<Mutex<String>>,
    pub(crate) browser: Browser,
    pub(crate) idp: bff::demo::idp::RunningIdp,
    pub(crate) upstream: support::upstream::Upstream,
    pub(crate) prefix: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// `edits` replace text in the configuration; `extra` is appended to it.
    async fn start(access_token_ttl: u64, edits: &[(&str, &str)], extra: &str, rust_log: Option<&str>) -> Served {
        Served::start_with_env(access_token_ttl, edits, extra, rust_log, &[]).await
    }

    /// `start`, with these variables in the process's environment (and no `OTEL_*` of the test's).
    pub(crate) async fn start_with_env(
        access_token_ttl: u64,
        edits: &[(&str, &str)],
        extra: &str,
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Served {
        let port = support::port_for_later();
        let public_url = format!("http://127.0.0.1:{port}");
        let idp = spawn_idp(IdpOptions {
            auth_method: bff::config::AuthMethod::ClientSecretBasic,
            access_token_ttl: Duration::from_secs(access_token_ttl),
            redirect_uris: vec![format!("{public_url}/auth/callback")],
            post_logout_redirect_uris: vec![format!("{public_url}/")],
            backchannel_logout_uri: None,
            frontchannel_logout_uri: None,
        })
        .await;
        let upstream = support::upstream::spawn(Some(Arc::clone(&idp.provider))).await;
        let prefix = format!("bfftest:{}:", random_id());
        let options = support::AppOptions { refresh_skew_secs: 1, ..Default::default() };
        let text = support::config_toml(&public_url, &idp.issuer, &upstream.url, &prefix, &options)
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
            + extra;
        let text = edits.iter().fold(text, |t, (from, to)| t.replace(from, to));
        let path = write_config(&text);
        let mut cmd = bff();
        cmd.args(["serve", "--config"]).arg(&path).env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
            cmd.env_remove(name);
        }
        // The pipe alone decides whether logs are coloured, not the test runner's NO_COLOR.
        cmd.env_remove("NO_COLOR");
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start bff serve");
        let logs = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = Arc::clone(&logs);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut l = logs.lock().expect("logs");
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let browser = Browser::new(&public_url);
        let b = browser.clone();
        eventually("bff serve is ready", Duration::from_secs(20), || {
            let b = b.clone();
            async move { b.http.get(b.url("/readyz")).send().await.map(|r| r.status() == 200).unwrap_or(false) }
        })
        .await;
        Served { child, logs, browser, idp, upstream, prefix }
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().expect("logs").clone()
    }

    pub(crate) fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then the process must exit 0 within `limit`.
    pub(crate) async fn stop_cleanly(&mut self, limit: Duration) {
        self.terminate();
        assert_eq!(self.exit_code(limit).await, Some(0), "{}", self.logs());
    }

    /// Waits (bounded) for the process to exit; its exit code.
    pub(crate) async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// A full login → API call → refresh → logout through `bff serve`, with every log line
/// captured at the most verbose level; no token, code, secret or cookie value may appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_in_a_full_run() {
    let mut served = Served::start(4, &[], "", Some("trace")).await;
    let browser = served.browser.clone();

    let start = browser.start_login(None).await;
    let callback = browser.sign_in_at_provider(&support::location(&start), "alice").await;
    let code = support::query_param(&callback, "code").expect("code");
    assert_eq!(browser.get(&callback).await.status(), 302);
    let cookie = browser.cookie("bff").expect("session cookie");
    assert_eq!(browser.api(reqwest::Method::GET, "/api/echo").await.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(browser.api(reqwest::Method::GET, "/api/echo").await.status(), 200);
    assert!(
        served.idp.provider.counters.refresh_token.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "a refresh happened"
    );
    assert_eq!(browser.logout().await.status(), 303);
    served.terminate();
    assert_eq!(served.exit_code(Duration::from_secs(10)).await, Some(0));

    let logs = served.logs();
    assert!(logs.contains("signed in") && logs.contains("access token refreshed"), "the run was logged:\n{logs}");
    let mut secrets: Vec<(String, String)> =
        served.idp.provider.issued_tokens().into_iter().map(|t| ("token".into(), t)).collect();
    secrets.push(("code".into(), code));
    secrets.push(("cookie".into(), cookie));
    secrets.push(("client secret".into(), support::CLIENT_SECRET.into()));
    secrets.push(("session secret".into(), test_secret()));
    for (what, secret) in secrets {
        assert!(!logs.contains(&secret), "a {what} appears in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_then_exits_zero() {
    let mut served = Served::start(300, &[], "", None).await;
    let browser = served.browser.clone();
    browser.login_as("alice").await;
    let in_flight = {
        let b = browser.clone();
        tokio::spawn(async move { b.api(reqwest::Method::GET, "/api/slow?ms=1500").await.status() })
    };
    // In flight once the upstream has it (it answers 1.5 s later).
    served.upstream.until_received("/slow").await;

    served.terminate();

    assert_eq!(in_flight.await.expect("the call"), 200, "the call in flight finished");
    assert_eq!(served.exit_code(Duration::from_secs(10)).await, Some(0));
    assert!(browser.http.get(browser.url("/healthz")).send().await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_locks_still_held_when_the_grace_period_ends_are_released() {
    // A provider that never answers, a refresh bounded by a 10 s timeout, a 1 s grace period.
    let edits = [
        ("workers = 2", "workers = 2\nshutdown_grace_secs = 1"),
        ("timeout_secs = 2\n\n[session]", "timeout_secs = 10\n\n[session]"),
    ];
    let mut served = Served::start(2, &edits, "", None).await;
    let browser = served.browser.clone();
    browser.login_as("alice").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    served.idp.controls.set_token_fault(bff::demo::idp::TokenFault::Hang);
    let stuck = {
        let request = browser.request(reqwest::Method::GET, "/api/echo").header("x-csrf", "1");
        // Cut off by the shutdown: its outcome does not matter here.
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    };
    let client = redis::Client::open(support::REDIS_URL).expect("redis");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    let pattern = format!("{}*:lock", served.prefix);
    let mut locks: Vec<String> = Vec::new();
    for _ in 0..40 {
        locks = redis::AsyncCommands::keys(&mut redis, &pattern).await.expect("keys");
        if !locks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(locks.len(), 1, "the refresh holds its lock");

    served.terminate();

    assert_eq!(served.exit_code(Duration::from_secs(8)).await, Some(0));
    let left: Vec<String> = redis::AsyncCommands::keys(&mut redis, &pattern).await.expect("keys");
    assert!(left.is_empty(), "the lock was released at shutdown, not left to its lease");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let mut served = Served::start(300, &[], "", None).await;
    let browser = served.browser.clone();
    assert_eq!(browser.get("/healthz").await.status(), 200);
    served.stop_cleanly(Duration::from_secs(10)).await;

    let logs = served.logs();
    assert!(logs.contains("INFO") && logs.contains("request"), "text logs were written:\n{logs}");
    assert!(!logs.contains("\x1b["), "an ANSI escape in logs written to a pipe:\n{logs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id() {
    let mut served = Served::start(300, &[], "\n[log]\nformat = \"json\"\nlevel = \"info\"\n", None).await;
    let browser = served.browser.clone();
    let res =
        browser.send(browser.request(reqwest::Method::GET, "/healthz").header("x-request-id", "json-check-1")).await;
    assert_eq!(res.status(), 200);
    served.terminate();
    served.exit_code(Duration::from_secs(10)).await;

    let logs = served.logs();
    let line: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["span"]["request_id"] == "json-check-1")
        .unwrap_or_else(|| panic!("a JSON line for the request:\n{logs}"));
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["fields"]["path"], "/healthz");
    assert_eq!(line["span"]["route"], "health");
    assert!(
        logs.lines().filter(|l| !l.trim().is_empty()).all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "every line is JSON"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let out = bff().args(["check-config", "--config", "bff.example.toml"]).output().expect("run bff");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("[server]"));
}

fn cli_idp_options() -> IdpOptions {
    IdpOptions {
        auth_method: bff::config::AuthMethod::ClientSecretBasic,
        access_token_ttl: Duration::from_secs(300),
        redirect_uris: vec!["http://localhost:8080/auth/callback".into()],
        post_logout_redirect_uris: vec![],
        backchannel_logout_uri: None,
        frontchannel_logout_uri: None,
    }
}

/// A configuration for the demo provider's test client, with `secret`.
fn online_config(issuer: &str, secret: &str) -> std::path::PathBuf {
    write_config(&format!(
        "[server]\npublic_url = \"http://localhost:8080\"\n[oidc]\nissuer = \"{issuer}\"\nclient_id = \"{}\"\n\
         client_secret = \"{secret}\"\n[session]\nsecret = \"{}\"\n",
        support::CLIENT_ID,
        test_secret()
    ))
}

fn check_online(config: &std::path::Path) -> (Option<i32>, String) {
    let out = bff().args(["check-config", "--online", "--config"]).arg(config).output().expect("run bff");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_names_an_issuer_that_differs_by_a_slash() {
    let idp = spawn_idp(cli_idp_options()).await;
    let (code, stderr) = check_online(&online_config(&format!("{}/", idp.issuer), support::CLIENT_SECRET));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("oidc.issuer: error:") && stderr.contains("configuration error"), "{stderr}");
    let (code, stderr) = check_online(&online_config(&idp.issuer, support::CLIENT_SECRET));
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_proves_bffs_credentials_and_lists_what_the_provider_lacks() {
    let idp = spawn_idp(cli_idp_options()).await;
    // Right credentials: a made-up code is answered invalid_grant, which proves them.
    let (code, stderr) = check_online(&online_config(&idp.issuer, support::CLIENT_SECRET));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("oidc.client_secret: ok: the provider accepted bff's client authentication"), "{stderr}");
    // The demo provider advertises no back- or front-channel logout: a warning, not an error.
    assert!(stderr.contains("oidc.issuer: warning: the provider advertises neither back-channel"), "{stderr}");
    assert!(stderr.contains("answers as configured"), "{stderr}");
    for line in stderr.lines().filter(|l| !l.starts_with("bff: ")) {
        let (key, rest) = line.split_once(": ").unwrap_or_default();
        assert!(
            key.starts_with("oidc.") && ["ok:", "warning:", "error:"].iter().any(|w| rest.starts_with(w)),
            "{line}"
        );
    }

    // A wrong secret: refuted, exit 2, the keys to check named; no exchange happened for anyone.
    let (code, stderr) = check_online(&online_config(&idp.issuer, "wrong-secret"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("oidc.client_secret: error: the provider answered 401 invalid_client"), "{stderr}");
    assert!(stderr.contains("check oidc.client_id, oidc.client_secret"), "{stderr}");
    assert!(!stderr.contains("wrong-secret"), "never the secret: {stderr}");
    assert!(stderr.contains("will not work as configured"), "{stderr}");
    // Only the first probe got as far as a code (the made-up one); the refuted one stopped at
    // client authentication.
    assert_eq!(idp.provider.counters.authorization_code.load(std::sync::atomic::Ordering::SeqCst), 1);

    // With PAR offered the push is the probe; a bare 403 for a wrong secret is named as such.
    idp.controls.set_quirks(bff::demo::idp::Quirks {
        par_offered: true,
        client_auth_refusal: bff::demo::idp::ClientAuthRefusal::ForbiddenEmpty,
        revocation_only_in_rfc8414: true,
        ..Default::default()
    });
    let (code, stderr) = check_online(&online_config(&idp.issuer, "wrong-secret"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("oidc.client_secret: error: the pushed authorization request failed: the provider answered 403 with an empty body"), "{stderr}");
    let (code, stderr) = check_online(&online_config(&idp.issuer, support::CLIENT_SECRET));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("at its PAR endpoint"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_online_warns_of_an_exchange_route_the_provider_does_not_offer() {
    let idp = spawn_idp(cli_idp_options()).await;
    let config = |issuer: &str| {
        let base = std::fs::read_to_string(online_config(issuer, support::CLIENT_SECRET)).expect("read config");
        write_config(&format!(
            "{base}[[api]]\nprefix = \"/ledger\"\nupstream = \"http://127.0.0.1:9\"\ntoken = \"exchange\"\n\
             audience = \"ledger-api\"\n"
        ))
    };
    let (code, stderr) = check_online(&config(&idp.issuer));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("api[].token"), "the demo provider offers token exchange: {stderr}");
    idp.controls.set_quirks(bff::demo::idp::Quirks { no_token_exchange: true, ..Default::default() });
    let (code, stderr) = check_online(&config(&idp.issuer));
    assert_eq!(code, Some(0), "a warning: {stderr}");
    assert!(
        stderr.contains("api[].token: warning: a route has token = \"exchange\" but the provider's grant_types_supported lacks urn:ietf:params:oauth:grant-type:token-exchange"),
        "{stderr}"
    );
}
