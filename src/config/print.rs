//! `bff check-config` output: the effective configuration as TOML, with every secret redacted.

use toml::{Table, Value};

use super::{Config, SameSitePolicy};

const REDACTED: &str = "[redacted]";

fn secs(d: std::time::Duration) -> Value {
    Value::Integer(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn millis(d: std::time::Duration) -> Value {
    Value::Integer(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn string(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn oidc_table(oidc_config: &super::OidcConfig) -> Table {
    let mut oidc = Table::new();
    oidc.insert("issuer".into(), string(&oidc_config.issuer));
    oidc.insert("client_id".into(), string(&oidc_config.client_id));
    if oidc_config.client_secret.is_some() {
        oidc.insert("client_secret".into(), string(REDACTED));
    }
    if !oidc_config.client_key_files.is_empty() {
        oidc.insert("client_key_file".into(), Value::Array(oidc_config.client_key_files.iter().map(string).collect()));
    }
    if let Some(kid) = &oidc_config.client_key_id {
        oidc.insert("client_key_id".into(), string(kid));
    }
    oidc.insert("auth_method".into(), string(oidc_config.auth_method.as_str()));
    oidc.insert("client_assertion_audience".into(), string(oidc_config.client_assertion_audience.as_str()));
    oidc.insert("userinfo".into(), string(oidc_config.userinfo.as_str()));
    oidc.insert(
        "login_params".into(),
        Value::Array(oidc_config.login_params.iter().map(|p| string(p.name())).collect()),
    );
    oidc.insert("par".into(), string(oidc_config.par.as_str()));
    oidc.insert("dpop".into(), Value::Boolean(oidc_config.dpop));
    oidc.insert("scopes".into(), Value::Array(oidc_config.scopes.iter().map(string).collect()));
    oidc.insert(
        "extra_auth_params".into(),
        Value::Table(oidc_config.extra_auth_params.iter().map(|(k, v)| (k.clone(), string(v))).collect()),
    );
    oidc.insert("post_logout_redirect".into(), string(oidc_config.post_logout_redirect.as_str()));
    oidc.insert("logout_id_token_hint".into(), Value::Boolean(oidc_config.logout_id_token_hint));
    oidc.insert("timeout_secs".into(), secs(oidc_config.timeout));
    oidc.insert(
        "revocation_endpoint".into(),
        string(oidc_config.revocation_endpoint.as_ref().map_or("", |u| u.as_str())),
    );

    oidc
}

fn api_tables(api: &[super::ApiConfig]) -> Vec<Value> {
    api.iter()
        .map(|api| {
            let mut t = Table::new();
            t.insert("prefix".into(), string(&api.prefix));
            t.insert("upstream".into(), string(api.upstream.as_str()));
            t.insert("timeout_secs".into(), secs(api.timeout));
            t.insert("max_retry_body_bytes".into(), int(api.max_retry_body_bytes));
            t.insert("max_body_bytes".into(), int(api.max_body_bytes));
            t.insert("body_timeout_secs".into(), secs(api.body_timeout));
            t.insert("min_body_bytes_per_sec".into(), int(api.min_body_bytes_per_sec));
            t.insert("token".into(), string(api.token.as_str()));
            if let Some(resource) = &api.resource {
                t.insert("resource".into(), string(resource));
            }
            if let Some(audience) = &api.audience {
                t.insert("audience".into(), string(audience));
            }
            t.insert("scopes".into(), Value::Array(api.scopes.iter().map(string).collect()));
            t.insert("methods".into(), Value::Array(api.methods.iter().map(string).collect()));
            t.insert("websocket".into(), Value::Boolean(api.websocket));
            t.insert("http2".into(), Value::Boolean(api.http2));
            t.insert("keep_alive_secs".into(), secs(api.keep_alive));
            t.insert("acr_values".into(), Value::Array(api.acr_values.iter().map(string).collect()));
            if let Some(max_age) = api.max_age {
                t.insert("max_age".into(), int(max_age));
            }
            t.insert(
                "request_headers_drop".into(),
                Value::Array(api.request_headers_drop.iter().map(string).collect()),
            );
            Value::Table(t)
        })
        .collect()
}

/// `[[frontend]]` tables: what each frontend has of its own.
fn frontend_tables(frontends: &[Config]) -> Vec<Value> {
    frontends
        .iter()
        .map(|f| {
            let mut t = Table::new();
            t.insert("name".into(), string(&f.frontend.name));
            t.insert("hosts".into(), Value::Array(f.frontend.hosts.iter().map(string).collect()));
            t.insert("path".into(), string(&f.frontend.path));
            t.insert("public_url".into(), string(f.server.public_url.as_str().trim_end_matches('/')));
            t.insert(
                "static_dir".into(),
                string(f.server.static_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
            );
            t.insert("max_upstream_concurrency".into(), int(f.server.max_upstream_concurrency_per_frontend as u64));
            t.insert("oidc".into(), Value::Table(oidc_table(&f.oidc)));
            let mut session = Table::new();
            session.insert("cookie_prefix".into(), string(&f.session.cookie_prefix));
            session.insert("cookie_name".into(), string(&f.session.cookie_name));
            session.insert("same_site".into(), string(same_site(f.session.same_site)));
            session.insert("idle_timeout_secs".into(), secs(f.session.idle_timeout));
            session.insert("absolute_timeout_secs".into(), secs(f.session.absolute_timeout));
            session.insert("dbsc".into(), string(f.session.dbsc.label()));
            session.insert("dbsc_cookie_ttl_secs".into(), secs(f.session.dbsc_cookie_ttl));
            t.insert("session".into(), Value::Table(session));
            t.insert("api".into(), Value::Array(api_tables(&f.api)));
            Value::Table(t)
        })
        .collect()
}

fn same_site(policy: SameSitePolicy) -> &'static str {
    match policy {
        SameSitePolicy::Lax => "lax",
        SameSitePolicy::Strict => "strict",
    }
}

pub(super) fn redacted_toml(config: &Config) -> String {
    let mut server = Table::new();
    server.insert("listen".into(), string(config.server.listen.to_string()));
    server.insert("public_url".into(), string(config.server.public_url.as_str().trim_end_matches('/')));
    server.insert(
        "static_dir".into(),
        string(config.server.static_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default()),
    );
    server.insert("templates_dir".into(), string(config.server.templates_dir.display().to_string()));
    server.insert("workers".into(), int(config.server.workers as u64));
    if let Some(addr) = config.server.metrics_listen {
        server.insert("metrics_listen".into(), string(addr.to_string()));
    }
    server.insert("metrics_public".into(), Value::Boolean(config.server.metrics_public));
    if let Some(addr) = config.server.admin_listen {
        server.insert("admin_listen".into(), string(addr.to_string()));
    }
    // The path only: the token is never printed.
    if let Some(path) = &config.server.admin_token_file {
        server.insert("admin_token_file".into(), string(path));
    }
    server.insert("shutdown_grace_secs".into(), secs(config.server.shutdown_grace));
    server.insert("keep_alive_secs".into(), secs(config.server.keep_alive));
    server.insert("max_header_bytes".into(), int(config.server.max_header_bytes as u64));
    server.insert("max_upstream_concurrency".into(), int(config.server.max_upstream_concurrency as u64));
    server.insert(
        "max_upstream_concurrency_per_session".into(),
        int(config.server.max_upstream_concurrency_per_session as u64),
    );
    server.insert(
        "max_upstream_concurrency_anonymous".into(),
        int(config.server.max_upstream_concurrency_anonymous as u64),
    );
    server.insert(
        "max_upstream_concurrency_per_address".into(),
        int(config.server.max_upstream_concurrency_per_address as u64),
    );
    server.insert("login_starts_per_minute".into(), int(u64::from(config.server.login_starts_per_minute)));
    server.insert("max_pending_logins".into(), int(u64::from(config.server.max_pending_logins)));
    server.insert("trusted_proxy_hops".into(), int(config.server.trusted_proxy_hops as u64));
    // The paths only: the key is never printed.
    if let Some(tls) = &config.server.tls {
        server.insert("tls_cert_file".into(), string(tls.cert_file.display().to_string()));
        server.insert("tls_key_file".into(), string(tls.key_file.display().to_string()));
    }
    server.insert("hsts_max_age_secs".into(), secs(config.server.hsts_max_age));
    if let Some(addr) = config.server.redirect_http_listen {
        server.insert("redirect_http_listen".into(), string(addr.to_string()));
    }

    let oidc = oidc_table(&config.oidc);

    let mut session = Table::new();
    session.insert("redis_url".into(), string(if config.session.redis_url.is_some() { REDACTED } else { "" }));
    let redacted_list = |list: &[secrecy::SecretString]| Value::Array(list.iter().map(|_| string(REDACTED)).collect());
    session.insert("redis_sentinels".into(), redacted_list(&config.session.redis_sentinels));
    session.insert("redis_sentinel_service".into(), string(&config.session.redis_sentinel_service));
    session.insert("redis_cluster_nodes".into(), redacted_list(&config.session.redis_cluster_nodes));
    session.insert("secret".into(), Value::Array(config.session.secrets.iter().map(|_| string(REDACTED)).collect()));
    session.insert("cookie_prefix".into(), string(&config.session.cookie_prefix));
    session.insert("cookie_name".into(), string(&config.session.cookie_name));
    session.insert("same_site".into(), string(same_site(config.session.same_site)));
    session.insert("idle_timeout_secs".into(), secs(config.session.idle_timeout));
    session.insert("absolute_timeout_secs".into(), secs(config.session.absolute_timeout));
    session.insert("key_prefix".into(), string(&config.session.key_prefix));
    session.insert("redis_timeout_ms".into(), millis(config.session.redis_timeout));
    session.insert("max_per_user".into(), int(config.session.max_per_user as u64));
    session.insert("dbsc".into(), string(config.session.dbsc.label()));
    session.insert("dbsc_cookie_ttl_secs".into(), secs(config.session.dbsc_cookie_ttl));
    // Paths only: the key file's content is never printed.
    let tls = &config.session.redis_tls;
    if let Some((path, _)) = &tls.ca {
        session.insert("redis_ca_file".into(), string(path));
    }
    if let Some(client) = &tls.client {
        session.insert("redis_client_cert_file".into(), string(&client.cert_file));
        session.insert("redis_client_key_file".into(), string(&client.key_file));
    }

    let mut tokens = Table::new();
    tokens.insert("refresh_skew_secs".into(), secs(config.tokens.refresh_skew));
    tokens.insert("refresh_lock_ms".into(), millis(config.tokens.refresh_lock));
    tokens.insert("default_expires_in_secs".into(), secs(config.tokens.default_expires_in));
    tokens.insert("local_cache".into(), Value::Boolean(config.tokens.local_cache));
    tokens.insert(
        "local_cache_max_entries".into(),
        int(u64::try_from(config.tokens.local_cache_max_entries.get()).unwrap_or(u64::MAX)),
    );
    tokens.insert(
        "local_cache_max_bytes".into(),
        int(u64::try_from(config.tokens.local_cache_max_bytes).unwrap_or(u64::MAX)),
    );

    let apis = api_tables(&config.api);

    let mut log = Table::new();
    log.insert(
        "format".into(),
        string(match config.log.format {
            super::LogFormat::Text => "text",
            super::LogFormat::Json => "json",
        }),
    );
    log.insert("level".into(), string(&config.log.level));

    let t = &config.telemetry;
    let mut telemetry = Table::new();
    telemetry.insert("otlp_endpoint".into(), string(t.otlp_endpoint.as_ref().map_or("", url::Url::as_str)));
    // Keys left unset are left out: the `OTEL_*` variables decide those.
    if let Some(name) = &t.service_name {
        telemetry.insert("service_name".into(), string(name));
    }
    if let Some(ratio) = t.sampling_ratio {
        telemetry.insert("sampling_ratio".into(), Value::Float(ratio));
    }
    telemetry.insert("trust_incoming_trace_context".into(), Value::Boolean(t.trust_incoming_trace_context));

    let mut root = Table::new();
    root.insert("server".into(), Value::Table(server));
    // With frontends, each has its own `oidc` and `api` (the top level's are the first's).
    if config.frontends.is_empty() {
        root.insert("oidc".into(), Value::Table(oidc));
    }
    root.insert("session".into(), Value::Table(session));
    root.insert("tokens".into(), Value::Table(tokens));
    if config.frontends.is_empty() {
        root.insert("api".into(), Value::Array(apis));
    } else {
        root.insert("frontend".into(), Value::Array(frontend_tables(&config.frontends)));
    }
    root.insert("log".into(), Value::Table(log));
    root.insert("telemetry".into(), Value::Table(telemetry));
    toml::to_string(&root).unwrap_or_else(|e| format!("# could not render the configuration: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn secrets_are_redacted() {
        let secret = "S".repeat(64);
        let text = format!(
            "[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"bff\"\nclient_secret = \"TOPSECRET\"\n\
             [session]\nsecret = \"{secret}\"\nredis_url = \"redis://:hunter2@127.0.0.1:6379\"\n"
        );
        let printed = Config::from_toml(&text).unwrap().to_redacted_toml();
        assert!(!printed.contains("TOPSECRET"));
        assert!(!printed.contains(&secret));
        assert!(!printed.contains("hunter2"));
        assert!(printed.contains("client_secret = \"[redacted]\""));
        assert!(printed.contains("client_id = \"bff\""));
    }
}
