//! Unit tests of `load`: defaults, every validation rule, key paths in messages.
use super::*;
use crate::config::{AuthMethod, SameSitePolicy, TokenPolicy};
use std::time::Duration;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn minimal() -> String {
    format!(
        r#"
[oidc]
issuer = "https://idp.example.com"
client_id = "bff"
client_secret = "s3cret"
[session]
secret = "{SECRET}"
"#
    )
}

fn errors(text: &str) -> Vec<String> {
    match load(ConfigSource::from_toml_text(text)) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let config = load(ConfigSource::from_toml_text(&minimal())).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.public_url.as_str(), "http://localhost:8080/");
    assert_eq!(config.session.cookie_name, "bff");
    assert_eq!(config.session.same_site, SameSitePolicy::Strict);
    assert_eq!(config.session.cookie_prefix, "");
    assert_eq!(config.session.cookie_legacy_name, None);
    assert_eq!(config.session.idle_timeout, Duration::from_secs(28_800));
    assert_eq!(config.session.absolute_timeout, Duration::from_secs(86_400));
    assert_eq!(config.session.key_prefix, "bff:");
    assert_eq!(config.session.redis_timeout, Duration::from_millis(2000));
    assert!(config.session.redis_url.is_none());
    assert_eq!(config.oidc.auth_method, AuthMethod::ClientSecretBasic);
    assert_eq!(config.oidc.scopes, ["openid", "profile", "email", "offline_access"]);
    assert_eq!(config.oidc.post_logout_redirect.as_str(), "http://localhost:8080/");
    assert_eq!(config.oidc.timeout, Duration::from_secs(10));
    assert_eq!(config.tokens.refresh_skew, Duration::from_secs(30));
    assert_eq!(config.tokens.refresh_lock, Duration::from_millis(10_000));
    assert!(config.api.is_empty());
    assert_eq!(config.redirect_uri(), "http://localhost:8080/auth/callback");
}

#[test]
fn https_public_url_gets_a_host_prefixed_cookie() {
    let text = format!("[server]\npublic_url = \"https://app.example.com\"\n{}", minimal());
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    // RFC 10017 §6.1's recommendation; the name before it is still read (and renamed).
    assert_eq!(config.session.cookie_name, "__Host-Http-bff");
    assert_eq!(config.session.cookie_legacy_name.as_deref(), Some("__Host-bff"));
}

#[test]
fn cookie_prefixes_are_chosen_and_checked() {
    let with = |public_url: &str, session: &str| {
        let text = format!(
            "[server]\npublic_url = \"{public_url}\"\n{}",
            minimal().replace("[session]\n", &format!("[session]\n{session}\n"))
        );
        load(ConfigSource::from_toml_text(&text))
            .map(|c| (c.session.cookie_name, c.session.cookie_legacy_name))
            .map_err(|e| e.0[0].to_string())
    };
    assert_eq!(with("https://a.example", "cookie_prefix = \"__Host-\""), Ok(("__Host-bff".into(), None)));
    assert_eq!(with("https://a.example", "cookie_prefix = \"\""), Ok(("bff".into(), None)));
    assert_eq!(with("https://a.example", "cookie_name = \"app\""), Ok(("__Host-Http-app".into(), None)));
    // A name written with its prefix, as before `cookie_prefix`, is kept as it is.
    assert_eq!(with("https://a.example", "cookie_name = \"__Host-app\""), Ok(("__Host-app".into(), None)));
    // Browsers keep prefixed cookies on http://localhost too.
    assert_eq!(with("http://localhost:8080", "cookie_prefix = \"__Host-Http-\""), Ok(("__Host-Http-bff".into(), None)));
    assert_eq!(with("http://127.0.0.1:8080", "cookie_prefix = \"__Host-\""), Ok(("__Host-bff".into(), None)));
    for (url, session, problem) in [
        (
            "http://app.example",
            "cookie_prefix = \"__Host-\"",
            "session.cookie_prefix: a prefixed cookie needs an https",
        ),
        ("https://a.example", "cookie_prefix = \"__Secure-\"", "session.cookie_prefix: must be"),
        (
            "https://a.example",
            "cookie_prefix = \"__Host-\"\ncookie_name = \"__Host-x\"",
            "session.cookie_name: has a prefix of its own",
        ),
    ] {
        let got = with(url, session);
        assert!(got.as_ref().is_err_and(|e| e.starts_with(problem)), "{session}: {got:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    let text = r#"
[server]
public_url = "ftp://x"
listen = "nowhere"
bogus = 1
[oidc]
issuer = "not a url"
auth_method = "client_secret_jwt"
[session]
secret = "short"
same_site = "none"
[[api]]
prefix = "api"
upstream = "http://127.0.0.1:9100"
[[api]]
prefix = "/data"
upstream = "file:///etc"
[[api]]
prefix = "/data/"
upstream = "http://127.0.0.1:9101"
[extra]
x = 1
"#;
    let errs = errors(text);
    let expect = [
        "server.public_url: public_url must be http or https",
        "server.listen: not an address:port",
        "server.bogus: unknown key",
        "oidc.issuer: not a valid URL",
        "oidc.client_id: missing (required)",
        "oidc.client_secret: missing",
        "oidc.auth_method: must be",
        "session.secret: must be at least 64 bytes (got 5)",
        "session.same_site: must be",
        "api[0].prefix: must start with '/'",
        "api[1].upstream: upstream must be http or https",
        "api[2].prefix: duplicate prefix \"/data\" (also api[1])",
        "extra: unknown key",
    ];
    for e in expect {
        assert!(errs.iter().any(|got| got.starts_with(e)), "missing {e:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn numbers_are_read_and_checked() {
    let text = format!("{}\n[tokens]\nrefresh_skew_secs = 5\nrefresh_lock_ms = 50\n", minimal());
    assert_eq!(errors(&text), ["tokens.refresh_lock_ms: must be at least 100 (got 50)"]);
    let text = format!("{}\n[tokens]\nrefresh_skew_secs = 5\n", minimal());
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.tokens.refresh_skew, Duration::from_secs(5));
    let text = format!("{}\n[tokens]\nrefresh_skew_secs = -5\n", minimal());
    assert!(errors(&text)[0].starts_with("tokens.refresh_skew_secs: expected a non-negative integer"));
}

#[test]
fn missing_issuer_and_secret_are_named() {
    let errs = errors("[oidc]\nclient_id = \"x\"\nclient_secret = \"y\"\n");
    assert!(errs.iter().any(|e| e.starts_with("oidc.issuer: missing")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("session.secret: missing")), "{errs:?}");
}

#[test]
fn post_logout_redirect_must_stay_on_our_origin() {
    for bad in ["https://evil.example/", "//evil.example/x"] {
        let text = format!("{}\n", minimal()).replace(
            "client_secret = \"s3cret\"",
            &format!("client_secret = \"s3cret\"\npost_logout_redirect = \"{bad}\""),
        );
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.starts_with("oidc.post_logout_redirect: must be on the same origin")),
            "{bad}: {errs:?}"
        );
    }
    let text =
        minimal().replace("client_secret = \"s3cret\"", "client_secret = \"s3cret\"\npost_logout_redirect = \"/bye\"");
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.oidc.post_logout_redirect.as_str(), "http://localhost:8080/bye");
}

#[test]
fn api_prefixes_are_checked() {
    for (prefix, msg) in [
        ("/", "must not be \"/\""),
        ("/auth", "collides"),
        ("/auth/x", "collides"),
        ("/healthz", "collides"),
        ("/readyz/x", "collides"),
        ("/metrics", "collides"),
        // The provider fetches bff's keys at `/.well-known/jwks.json`; an API there took it.
        ("/.well-known", "collides with a route of bff itself (under /.well-known)"),
        ("/.well-known/jwks.json", "collides"),
        ("/.well-known/openid-configuration", "collides"),
        ("/a b", "plain path"),
        ("/a/../b", "plain path"),
    ] {
        let text = format!("{}\n[[api]]\nprefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:1\"\n", minimal());
        let errs = errors(&text);
        assert!(errs.iter().any(|e| e.starts_with("api[0].prefix") && e.contains(msg)), "{prefix}: {errs:?}");
    }
    let text = format!("{}\n[[api]]\nprefix = \"/api/\"\nupstream = \"http://h/v1\"\n", minimal());
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.api[0].prefix, "/api");
    assert_eq!(config.api[0].upstream.as_str(), "http://h/v1");
    assert_eq!(config.api[0].max_body_bytes, 104_857_600);
    assert_eq!(config.api[0].max_retry_body_bytes, 1_048_576);
}

#[test]
fn reserved_auth_params_cannot_be_overridden() {
    let text = minimal().replace(
        "client_secret = \"s3cret\"",
        "client_secret = \"s3cret\"\nextra_auth_params = { state = \"x\", audience = \"api\" }",
    );
    let errs = errors(&text);
    assert_eq!(errs, ["oidc.extra_auth_params.state: is set by bff itself and cannot be overridden"]);
}

#[test]
fn secret_may_be_a_list_for_rotation() {
    let text = minimal().replace(&format!("secret = \"{SECRET}\""), &format!("secret = [\"{SECRET}\", \"{SECRET}x\"]"));
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.session.secrets.len(), 2);
    let text = minimal().replace(&format!("secret = \"{SECRET}\""), &format!("secret = [\"{SECRET}\", \"short\"]"));
    assert_eq!(errors(&text), ["session.secret[1]: must be at least 64 bytes (got 5)"]);
}

#[test]
fn client_secret_file_is_read_and_trimmed() {
    use secrecy::ExposeSecret;
    let dir = std::env::temp_dir().join(format!("bff-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, "from-file\n").unwrap();
    let text = minimal()
        .replace("client_secret = \"s3cret\"", &format!("client_secret_file = {:?}", path.display().to_string()));
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.oidc.client_secret.as_ref().map(|s| s.expose_secret()), Some("from-file"));
    let text = minimal().replace("client_secret = \"s3cret\"", "client_secret_file = \"/nonexistent/secret\"");
    let errs = errors(&text);
    assert!(errs[0].starts_with("oidc.client_secret_file: cannot read /nonexistent/secret"), "{errs:?}");
    let text = minimal().replace("client_secret = \"s3cret\"", "client_secret = \"a\"\nclient_secret_file = \"/x\"");
    assert!(errors(&text)[0].contains("not both"));
}

#[test]
fn a_toml_syntax_error_is_reported_not_panicked() {
    let errs = errors("[oidc\nissuer = ");
    assert_eq!(errs.len(), 1);
}

#[test]
fn env_key_paths_need_a_double_underscore() {
    assert_eq!(env_key_path("BFF_OIDC__CLIENT_SECRET").as_deref(), Some("oidc.client_secret"));
    assert_eq!(env_key_path("BFF_CONFIG"), None);
    assert_eq!(env_key_path("OTHER_X__Y"), None);
}

#[test]
fn the_local_cache_is_on_by_default_and_can_be_turned_off() {
    let config = load(ConfigSource::from_toml_text(&minimal())).unwrap();
    assert!(config.tokens.local_cache);
    assert_eq!(config.tokens.local_cache_max_entries.get(), 100_000);
    let text = format!("{}\n[tokens]\nlocal_cache = false\nlocal_cache_max_entries = 10\n", minimal());
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert!(!config.tokens.local_cache);
    assert_eq!(config.tokens.local_cache_max_entries.get(), 10);
    let text = format!("{}\n[tokens]\nlocal_cache = \"sometimes\"\nlocal_cache_max_entries = 0\n", minimal());
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.starts_with("tokens.local_cache: expected true or false")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("tokens.local_cache_max_entries: must be at least 1")), "{errs:?}");
    assert_eq!(load(ConfigSource::from_toml_text(&minimal())).unwrap().tokens.local_cache_max_bytes, 256 << 20);
    let text = format!("{}\n[tokens]\nlocal_cache_max_bytes = 1048576\n", minimal());
    assert_eq!(load(ConfigSource::from_toml_text(&text)).unwrap().tokens.local_cache_max_bytes, 1 << 20);
    let errs = errors(&format!("{}\n[tokens]\nlocal_cache_max_bytes = 1000\n", minimal()));
    assert!(errs.iter().any(|e| e.starts_with("tokens.local_cache_max_bytes: must be at least 65536")), "{errs:?}");
}

#[test]
fn route_token_policies_resources_and_client_scopes_are_checked() {
    let route =
        |extra: &str| format!("{}\n[[api]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n", minimal());
    let config = load(ConfigSource::from_toml_text(&route(""))).unwrap();
    assert_eq!((config.api[0].token, config.api[0].resource.as_deref()), (TokenPolicy::User, None));
    let config = load(ConfigSource::from_toml_text(&route(
        "token = \"client\"\nscopes = [\"orders:read\", \"orders:write\"]\nresource = \"https://orders.example/\"",
    )))
    .unwrap();
    assert_eq!(config.api[0].token, TokenPolicy::Client);
    assert_eq!(config.api[0].scopes, ["orders:read", "orders:write"]);
    assert_eq!(config.api[0].resource.as_deref(), Some("https://orders.example/"));
    assert!(load(ConfigSource::from_toml_text(&route("resource = \"\""))).unwrap().api[0].resource.is_none());
    let config = load(ConfigSource::from_toml_text(&route(
        "token = \"exchange\"\naudience = \"orders-api\"\nscopes = [\"orders:read\"]",
    )))
    .unwrap();
    assert_eq!(config.api[0].token, TokenPolicy::Exchange);
    assert_eq!((config.api[0].audience.as_deref(), config.api[0].resource.as_deref()), (Some("orders-api"), None));
    assert_eq!(config.api[0].scopes, ["orders:read"]);
    let config =
        load(ConfigSource::from_toml_text(&route("token = \"exchange\"\nresource = \"https://orders.example/\"")))
            .unwrap();
    assert_eq!(
        (config.api[0].audience.as_deref(), config.api[0].resource.as_deref()),
        (None, Some("https://orders.example/"))
    );
    for (extra, key, msg) in [
        ("token = \"admin\"", "api[0].token", "must be"),
        ("resource = \"orders\"", "api[0].resource", "absolute URI"),
        ("resource = \"https://orders.example/#x\"", "api[0].resource", "without a fragment"),
        ("token = \"none\"\nresource = \"https://orders.example\"", "api[0].resource", "no token"),
        ("scopes = [\"a\"]", "api[0].scopes", "token = \"client\" or \"exchange\" only"),
        ("token = \"exchange\"", "api[0].audience", "needs an audience or a resource"),
        ("audience = \"orders-api\"", "api[0].audience", "token = \"exchange\" only"),
        ("token = \"client\"\naudience = \"orders-api\"", "api[0].audience", "token = \"exchange\" only"),
        ("token = \"client\"\nscopes = [\"a b\"]", "api[0].scopes", "not a scope"),
        ("token = \"client\"\nscopes = [\"a\\\"\"]", "api[0].scopes", "not a scope"),
    ] {
        let errs = errors(&route(extra));
        assert!(errs.iter().any(|e| e.starts_with(key) && e.contains(msg)), "{extra}: {errs:?}");
    }
}

#[test]
fn private_key_jwt_takes_keys_and_no_secret() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let base = |oidc: &str| {
        format!(
            "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"bff\"\n{oidc}\n[session]\nsecret = \"{SECRET}\"\n"
        )
    };
    let text = base(&format!(
        "auth_method = \"private_key_jwt\"\nclient_key_file = [\"{fixtures}/client-ec.pem\", \"{fixtures}/client-rsa.pem\"]"
    ));
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.oidc.auth_method, AuthMethod::PrivateKeyJwt);
    assert!(config.oidc.client_secret.is_none());
    let jwks = config.oidc.client_keys.as_ref().map(|k| k.jwks()).unwrap_or_default();
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    let single = base(&format!("auth_method = \"private_key_jwt\"\nclient_key_file = \"{fixtures}/client-ec.pem\""));
    assert!(load(ConfigSource::from_toml_text(&single)).is_ok(), "one path is a list of one");
    for (oidc, key, msg) in [
        ("auth_method = \"private_key_jwt\"".to_string(), "oidc.client_key_file", "missing"),
        (
            format!(
                "auth_method = \"private_key_jwt\"\nclient_key_file = \"{fixtures}/client-ec.pem\"\nclient_secret = \"s\""
            ),
            "oidc.client_secret",
            "not used",
        ),
        (
            format!("client_secret = \"s\"\nclient_key_file = \"{fixtures}/client-ec.pem\""),
            "oidc.client_key_file",
            "private_key_jwt",
        ),
        (
            "auth_method = \"private_key_jwt\"\nclient_key_file = \"/nonexistent/key.pem\"".to_string(),
            "oidc.client_key_file",
            "cannot read",
        ),
        (
            format!("auth_method = \"private_key_jwt\"\nclient_key_file = \"{fixtures}/../../Cargo.toml\""),
            "oidc.client_key_file",
            "key 1",
        ),
    ] {
        let errs = errors(&base(&oidc));
        assert!(errs.iter().any(|e| e.starts_with(key) && e.contains(msg)), "{oidc}: {errs:?}");
    }
}

#[test]
fn assertion_audience_key_id_and_userinfo_are_read_and_checked() {
    use crate::config::{AssertionAudience, UserinfoMode};
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let base = |oidc: &str| {
        format!(
            "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"bff\"\n{oidc}\n[session]\nsecret = \"{SECRET}\"\n"
        )
    };
    let defaults = load(ConfigSource::from_toml_text(&minimal())).unwrap();
    assert_eq!(defaults.oidc.client_assertion_audience, AssertionAudience::Issuer);
    assert_eq!(defaults.oidc.userinfo, UserinfoMode::Auto);
    assert!(defaults.oidc.client_key_id.is_none());
    let keys = format!(
        "auth_method = \"private_key_jwt\"\nclient_key_file = [\"{fixtures}/client-ec.pem\", \"{fixtures}/client-ec.jwk.json\"]"
    );
    let text = base(&format!(
        "{keys}\nclient_key_id = \"ops-key-1\"\nclient_assertion_audience = \"endpoint\"\nuserinfo = \"never\""
    ));
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert_eq!(config.oidc.client_assertion_audience, AssertionAudience::Endpoint);
    assert_eq!(config.oidc.userinfo, UserinfoMode::Never);
    let jwks = config.oidc.client_keys.as_ref().map(|k| k.jwks()).unwrap_or_default();
    assert_eq!(
        (jwks["keys"][0]["kid"].as_str(), jwks["keys"][1]["kid"].as_str()),
        (Some("ops-key-1"), Some("ops-ec-1"))
    );
    assert!(config.to_redacted_toml().contains("client_key_id = \"ops-key-1\""));
    for (oidc, key, msg) in [
        (format!("{keys}\nclient_key_id = \"ops-ec-1\""), "oidc.client_key_id", "key 2"),
        ("client_secret = \"s\"\nclient_key_id = \"k\"".to_string(), "oidc.client_key_id", "private_key_jwt"),
        (
            "client_secret = \"s\"\nclient_assertion_audience = \"token\"".to_string(),
            "oidc.client_assertion_audience",
            "\"endpoint\"",
        ),
        ("client_secret = \"s\"\nuserinfo = \"sometimes\"".to_string(), "oidc.userinfo", "\"always\""),
    ] {
        let errs = errors(&base(&oidc));
        assert!(errs.iter().any(|e| e.starts_with(key) && e.contains(msg)), "{oidc}: {errs:?}");
    }
}

#[test]
fn telemetry_is_off_unless_configured_and_its_values_are_checked() {
    let config = load(ConfigSource::from_toml_text(&minimal())).unwrap();
    assert!(config.telemetry.otlp_endpoint.is_none() && config.telemetry.service_name.is_none());
    assert!(config.telemetry.sampling_ratio.is_none() && !config.telemetry.trust_incoming_trace_context);

    let text = format!(
        "{}\n[telemetry]\notlp_endpoint = \"http://collector:4318\"\nservice_name = \"shop-bff\"\n\
         sampling_ratio = 0.25\ntrust_incoming_trace_context = true\n",
        minimal()
    );
    let t = load(ConfigSource::from_toml_text(&text)).unwrap().telemetry;
    assert_eq!(t.otlp_endpoint.map(|u| u.to_string()).as_deref(), Some("http://collector:4318/"));
    assert_eq!((t.service_name.as_deref(), t.sampling_ratio), (Some("shop-bff"), Some(0.25)));
    assert!(t.trust_incoming_trace_context);
    let text = format!("{}\n[telemetry]\nsampling_ratio = 1\n", minimal());
    assert_eq!(load(ConfigSource::from_toml_text(&text)).unwrap().telemetry.sampling_ratio, Some(1.0));

    let text = format!(
        "{}\n[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\nservice_name = \" \"\nsampling_ratio = 1.5\nendpoint = \"x\"\n",
        minimal()
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 4, "{errs:?}");
    assert!(
        errs.iter().any(|e| e.starts_with("telemetry.otlp_endpoint: otlp_endpoint must be http or https")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e == "telemetry.service_name: must not be empty"), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("telemetry.sampling_ratio: expected a number from 0 to 1")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("telemetry.endpoint")), "an unknown key: {errs:?}");
}

#[test]
fn redis_tls_files_are_read_checked_and_named_by_their_key_and_never_printed() {
    let dir = std::env::temp_dir().join(format!("bff-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let fixture = |name: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis-tls").join(name);
        path.display().to_string()
    };
    let (ca, cert, key) = (fixture("ca.pem"), fixture("client.pem"), fixture("client.key"));
    let not_pem = file("not.pem", "hello\n");
    let not_a_certificate = file("garbage.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let key_body: String = std::fs::read_to_string(&key).unwrap().lines().nth(1).unwrap().to_string();
    let session = |url: &str, extra: &str| format!("{}redis_url = \"{url}\"\n{extra}", minimal());

    let text = session(
        "rediss://:hunter2@127.0.0.1:6380",
        &format!("redis_ca_file = {ca:?}\nredis_client_cert_file = {cert:?}\nredis_client_key_file = {key:?}\n"),
    );
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    assert!(config.session.redis_tls.certificates().is_some_and(|c| c.client_tls.is_some() && c.root_cert.is_some()));
    let printed = config.to_redacted_toml();
    assert!(printed.contains(&format!("redis_ca_file = {ca:?}")), "{printed}");
    assert!(printed.contains(&format!("redis_client_key_file = {key:?}")), "{printed}");
    assert!(!printed.contains(&key_body) && !printed.contains("hunter2"), "{printed}");
    let errs = errors(&session("rediss://127.0.0.1:6380", &format!("redis_ca_file = {not_a_certificate:?}\n")));
    assert!(errs.len() == 1 && errs[0].starts_with("session.redis_ca_file: not usable for TLS"), "{errs:?}");

    let errs = errors(&session("rediss://127.0.0.1:6380", &format!("redis_ca_file = {not_pem:?}\n")));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("session.redis_ca_file: ") && errs[0].contains("no PEM certificate"), "{errs:?}");
    let missing = dir.join("absent.pem").display().to_string();
    let errs = errors(&session("rediss://127.0.0.1:6380", &format!("redis_ca_file = {missing:?}\n")));
    assert!(errs.len() == 1 && errs[0].starts_with("session.redis_ca_file: cannot read"), "{errs:?}");
    let errs = errors(&session("rediss://127.0.0.1:6380", &format!("redis_client_cert_file = {cert:?}\n")));
    assert_eq!(errs, vec!["session.redis_client_key_file: missing (required with redis_client_cert_file)"]);
    let errs = errors(&session(
        "rediss://127.0.0.1:6380",
        &format!("redis_client_cert_file = {cert:?}\nredis_client_key_file = {not_pem:?}\n"),
    ));
    assert!(errs.len() == 1 && errs[0].starts_with("session.redis_client_key_file: "), "{errs:?}");
    assert!(!errs[0].contains("hello"), "a key file's content is never repeated: {errs:?}");
    let errs = errors(&session("redis://127.0.0.1:6380", &format!("redis_ca_file = {ca:?}\n")));
    assert_eq!(errs, vec!["session.redis_ca_file: needs rediss:// Redis URLs (TLS)"]);

    let mixed = format!("{}redis_sentinels = [\"rediss://127.0.0.1:26379\", \"redis://127.0.0.1:26380\"]\n", minimal());
    assert_eq!(
        errors(&mixed),
        vec!["session.redis_sentinels: mixes rediss:// and other URLs: use rediss:// for all or none"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn two_frontends(extra: &str) -> String {
    format!(
        r#"
[server]
public_url = "https://app.example"
max_upstream_concurrency = 100
[session]
secret = "{SECRET}"
idle_timeout_secs = 600
[[frontend]]
name = "shop"
hosts = ["Shop.Example", "shop.example:8443"]
public_url = "https://shop.example"
static_dir = "shop-dist"
[frontend.oidc]
issuer = "https://idp-one.example"
client_id = "shop"
client_secret = "one"
[[frontend.api]]
prefix = "/api"
upstream = "http://orders.internal"
[[frontend]]
name = "admin"
path = "/admin/"
max_upstream_concurrency = 10
[frontend.oidc]
issuer = "https://idp-two.example"
client_id = "admin"
client_secret = "two"
[frontend.session]
absolute_timeout_secs = 3600
same_site = "strict"
[[frontend.api]]
prefix = "/admin/api"
upstream = "http://users.internal"
{extra}
"#
    )
}

#[test]
fn frontends_have_their_own_provider_routes_cookie_and_keys() {
    let config = load(ConfigSource::from_toml_text(&two_frontends(""))).unwrap();
    let views = config.views();
    assert_eq!(views.len(), 2);
    let (shop, admin) = (&views[0], &views[1]);
    assert_eq!(shop.frontend.hosts, ["shop.example", "shop.example:8443"]);
    assert_eq!((shop.frontend.path.as_str(), admin.frontend.path.as_str()), ("", "/admin"));
    assert!(!shop.frontend.implicit && !admin.frontend.implicit);
    assert_eq!(shop.oidc.issuer, "https://idp-one.example");
    assert_eq!(admin.oidc.issuer, "https://idp-two.example");
    assert_eq!(shop.redirect_uri(), "https://shop.example/auth/callback");
    assert_eq!(admin.redirect_uri(), "https://app.example/admin/auth/callback");
    assert_eq!(admin.oidc.post_logout_redirect.as_str(), "https://app.example/admin/");
    assert_eq!(
        (shop.session.cookie_name.as_str(), admin.session.cookie_name.as_str()),
        // Under a path, `__Host-Http-` becomes `__Http-` (a `__Host-` cookie must have `Path=/`).
        ("__Host-Http-bff-shop", "__Http-bff-admin")
    );
    assert_eq!(
        (shop.session.key_prefix.as_str(), admin.session.key_prefix.as_str()),
        ("bff:fe:shop:", "bff:fe:admin:")
    );
    // Lifetimes: the shared ones unless the frontend sets its own.
    assert_eq!(shop.session.idle_timeout, Duration::from_secs(600));
    assert_eq!(admin.session.absolute_timeout, Duration::from_secs(3600));
    assert_eq!(admin.session.same_site, SameSitePolicy::Strict);
    assert_eq!(shop.api[0].prefix, "/api");
    assert_eq!(admin.api[0].prefix, "/admin/api");
    assert_eq!(shop.server.static_dir.as_deref(), Some(std::path::Path::new("shop-dist")));
    assert_eq!(admin.server.static_dir, None);
    // Three quarters of the instance by default when there are several; or what is set.
    assert_eq!(shop.server.max_upstream_concurrency_per_frontend, 75);
    assert_eq!(admin.server.max_upstream_concurrency_per_frontend, 10);
    // The top level keeps the shared sections as written.
    assert_eq!(config.session.key_prefix, "bff:");
    let printed = config.to_redacted_toml();
    assert!(printed.contains("[[frontend]]") && printed.contains("name = \"admin\""), "{printed}");
    assert!(!printed.contains("\"one\"") && !printed.contains("\"two\""), "{printed}");
}

#[test]
fn a_file_without_frontends_is_the_implicit_one() {
    let config = load(ConfigSource::from_toml_text(&minimal())).unwrap();
    assert!(config.frontends.is_empty());
    assert!(config.frontend.implicit);
    assert_eq!(config.frontend.name, "default");
    assert_eq!(config.views().len(), 1);
    assert_eq!(config.server.max_upstream_concurrency_per_frontend, config.server.max_upstream_concurrency);
}

#[test]
fn frontend_mistakes_are_named_by_key() {
    let errs = errors(&two_frontends("[oidc]\nissuer = \"https://x\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"));
    assert!(errs.iter().any(|e| e.starts_with("oidc: with [[frontend]] tables")), "{errs:?}");
    let errs = errors(&two_frontends(
        "[[frontend]]\nname = \"shop\"\nhosts = [\"shop.example\"]\npublic_url = \"https://shop.example\"\n[frontend.oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
    ));
    assert!(errs.iter().any(|e| e.starts_with("frontend[2].name: duplicate name")), "{errs:?}");
    assert!(errs.iter().any(|e| e.starts_with("frontend[2].path: host \"shop.example\"")), "{errs:?}");
    for (table, expected) in [
        ("name = \"Bad Name\"\npath = \"/x\"", "frontend[2].name: at most 32"),
        ("name = \"x\"\npath = \"/auth\"", "frontend[2].path: \"/auth\" collides"),
        ("name = \"x\"\npath = \"x/../y\"", "frontend[2].path:"),
        ("name = \"x\"\nhosts = [\"x.example\"]", "frontend[2].public_url: missing"),
        ("name = \"x\"\nhosts = [\"http://x.example/\"]\npublic_url = \"https://x.example\"", "frontend[2].hosts:"),
        ("name = \"x\"\npath = \"/x\"\nunknown = 1", "frontend[2].unknown: unknown key"),
        (
            "name = \"x\"\npath = \"/x\"\n[frontend.session]\ncookie_name = \"__Host-x\"",
            "frontend[2].session.cookie_name: a __Host- cookie",
        ),
        (
            "name = \"x\"\npath = \"/x\"\n[[frontend.api]]\nprefix = \"/api\"\nupstream = \"http://u\"",
            "frontend[2].api[0].prefix: \"/api\" must be under",
        ),
        (
            "name = \"x\"\npath = \"/x\"\n[[frontend.api]]\nprefix = \"/x/auth\"\nupstream = \"http://u\"",
            "frontend[2].api[0].prefix: \"/x/auth\" collides",
        ),
    ] {
        let oidc = "[frontend.oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\nclient_secret = \"s\"\n";
        let text = two_frontends(&format!("[[frontend]]\n{table}\n{oidc}"));
        let errs = errors(&text);
        assert!(errs.iter().any(|e| e.starts_with(expected)), "{expected}: {errs:?}");
    }
    let errs = errors(&two_frontends("").replace("[session]\n", "[session]\ncookie_name = \"x\"\n"));
    assert!(errs.iter().any(|e| e.starts_with("session.cookie_name: with [[frontend]] tables")), "{errs:?}");
    let errs = errors(&two_frontends("").replace("[server]\n", "[server]\nstatic_dir = \"dist\"\n"));
    assert!(errs.iter().any(|e| e.starts_with("server.static_dir: with [[frontend]] tables")), "{errs:?}");
    let errs = errors(&format!("[session]\nsecret = \"{SECRET}\"\nfrontend = 3\n"));
    assert!(!errs.is_empty());
    let errs = errors(&format!("[session]\nsecret = \"{SECRET}\"\n[[frontend]]\nname = \"a\"\n"));
    assert!(errs.iter().any(|e| e.starts_with("frontend[0].oidc.issuer: missing")), "{errs:?}");
}

#[test]
fn step_up_requirements_are_for_routes_with_the_users_token() {
    let route = |extra: &str| {
        format!("{}\n[[api]]\nprefix = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n{extra}\n", minimal())
    };
    let config = load(ConfigSource::from_toml_text(&route("acr_values = [\"mfa\", \"hwk\"]\nmax_age = 300"))).unwrap();
    assert_eq!(config.api[0].acr_values, ["mfa", "hwk"]);
    assert_eq!(config.api[0].max_age, Some(300));
    let config = load(ConfigSource::from_toml_text(&route("token = \"exchange\"\naudience = \"a\"\nmax_age = 0")));
    assert_eq!(config.map(|c| c.api[0].max_age).ok(), Some(Some(0)));
    let defaults = load(ConfigSource::from_toml_text(&route(""))).unwrap();
    assert_eq!((defaults.api[0].acr_values.len(), defaults.api[0].max_age), (0, None));
    for (extra, key, msg) in [
        ("token = \"none\"\nacr_values = [\"mfa\"]", "api[0].acr_values", "carry the user's token only"),
        ("token = \"client\"\nmax_age = 60", "api[0].max_age", "not token = \"client\""),
        ("acr_values = [\"a b\"]", "api[0].acr_values", "is not an acr value"),
        ("acr_values = [\"\"]", "api[0].acr_values", "is not an acr value"),
        ("acr_values = [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\"]", "api[0].acr_values", "at most 8"),
        ("max_age = -1", "api[0].max_age", ""),
        ("max_age = 999999999999", "api[0].max_age", "ten years"),
    ] {
        let errs = errors(&route(extra));
        assert!(errs.iter().any(|e| e.starts_with(key) && e.contains(msg)), "{extra}: {errs:?}");
    }
}

#[test]
fn the_admin_listener_needs_a_token_file_of_a_usable_token() {
    use secrecy::ExposeSecret;
    let dir = std::env::temp_dir().join(format!("bff-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let good = write("good", &format!("{}\n", "t".repeat(40)));
    let short = write("short", "too-short\n");
    let empty = write("empty", "\n");
    let spaced = write("spaced", &format!("{} {}", "t".repeat(20), "u".repeat(20)));
    let missing = dir.join("missing").display().to_string();
    let with = |server: &str| format!("{}[server]\n{server}\n", minimal());

    let config = load(ConfigSource::from_toml_text(&with(&format!(
        "admin_listen = \"127.0.0.1:9901\"\nadmin_token_file = {good:?}"
    ))))
    .unwrap();
    assert_eq!(config.server.admin_listen.map(|a| a.port()), Some(9901));
    assert_eq!(
        config.server.admin_token.as_ref().map(|t| t.expose_secret().len()),
        Some(40),
        "the newline is not part of it"
    );
    let printed = config.to_redacted_toml();
    assert!(printed.contains("admin_token_file") && !printed.contains(&"t".repeat(40)), "{printed}");

    for (file, problem) in [
        (&short, "must be at least 32 bytes (got 9)"),
        (&empty, "is empty"),
        (&spaced, "printable ASCII"),
        (&missing, "cannot read"),
    ] {
        let errs = errors(&with(&format!("admin_listen = \"127.0.0.1:9901\"\nadmin_token_file = {file:?}")));
        assert!(
            errs.len() == 1 && errs[0].starts_with("server.admin_token_file: ") && errs[0].contains(problem),
            "{errs:?}"
        );
        assert!(!errs[0].contains("too-short"), "the token is never shown: {errs:?}");
    }
    let errs = errors(&with("admin_listen = \"127.0.0.1:9901\""));
    assert!(errs.len() == 1 && errs[0].starts_with("server.admin_token_file: missing"), "{errs:?}");
    let errs = errors(&with(&format!("admin_token_file = {good:?}")));
    assert!(errs.len() == 1 && errs[0].starts_with("server.admin_token_file: set server.admin_listen"), "{errs:?}");
    let errs = errors(&with("admin_listen = \"nowhere\""));
    assert!(errs.iter().any(|e| e.starts_with("server.admin_listen: not an address")), "{errs:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_per_user_are_bounded_by_default() {
    let config = load(ConfigSource::from_toml_text(&minimal())).unwrap();
    assert_eq!(config.session.max_per_user, 50);
    let errs = errors(&minimal().replace("[session]\n", "[session]\nmax_per_user = 0\n"));
    assert!(errs.iter().any(|e| e.starts_with("session.max_per_user")), "{errs:?}");
}

#[test]
fn http2_to_an_upstream_is_off_by_default_and_set_per_route_in_either_api_table() {
    let api = |extra: &str| format!("{}\n[[api]]\nprefix = \"/api\"\nupstream = \"http://h\"\n{extra}", minimal());
    assert!(!load(ConfigSource::from_toml_text(&api(""))).unwrap().api[0].http2);
    assert!(load(ConfigSource::from_toml_text(&api("http2 = true\n"))).unwrap().api[0].http2);
    let errs = errors(&api("http2 = \"h2c\"\n"));
    assert!(errs.iter().any(|e| e.starts_with("api[0].http2: expected true or false")), "{errs:?}");
    let printed = load(ConfigSource::from_toml_text(&api("http2 = true\n"))).unwrap().to_redacted_toml();
    assert!(printed.contains("http2 = true"), "{printed}");

    // `[[frontend.api]]` is read by the same parser: the key is taken, and named, there too.
    let text = two_frontends("")
        .replace("upstream = \"http://users.internal\"", "upstream = \"http://users.internal\"\nhttp2 = true");
    let config = load(ConfigSource::from_toml_text(&text)).unwrap();
    let views = config.views();
    assert_eq!((views[0].api[0].http2, views[1].api[0].http2), (false, true));
    let text = two_frontends("")
        .replace("upstream = \"http://users.internal\"", "upstream = \"http://users.internal\"\nhttp2 = 2");
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.contains("api[0].http2: expected true or false")), "{errs:?}");
}
