//! Where configuration comes from (a TOML file or text, and `BFF_*` environment variables) and
//! how its problems are reported: every one, by key path, not only the first (serde stops at
//! the first, so `walker` walks the tree and `sections` holds the rules).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::Dict;

use super::Config;
use super::walker::Walker;

const ENV_PREFIX: &str = "BFF_";

/// One problem, named by its key path (`oidc.issuer`, `api[1].prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found; never empty.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.key.as_str()).collect()
    }
}

/// Where configuration comes from: a TOML file or text, and environment variables.
pub struct ConfigSource {
    figment: Figment,
    file_name: Option<String>,
    /// Key path (`oidc.client_secret`) to the variable that set it, to report and to read raw.
    env_keys: HashMap<String, String>,
}

impl ConfigSource {
    pub fn from_process(file: Option<&Path>) -> ConfigSource {
        let mut figment = Figment::new();
        let mut file_name = None;
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
            file_name = Some(path.display().to_string());
        }
        let env_keys: HashMap<String, String> =
            std::env::vars().filter_map(|(name, _)| env_key_path(&name).map(|key| (key, name))).collect();
        // Variables without `__` (BFF_CONFIG, anything else) are not config keys.
        figment = figment.merge(Env::prefixed(ENV_PREFIX).filter(|key| key.as_str().contains("__")).split("__"));
        ConfigSource { figment, file_name, env_keys }
    }

    pub fn from_toml_text(text: &str) -> ConfigSource {
        ConfigSource { figment: Figment::from(Toml::string(text)), file_name: None, env_keys: HashMap::new() }
    }
}

/// `BFF_OIDC__CLIENT_SECRET` → `oidc.client_secret`.
fn env_key_path(var: &str) -> Option<String> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join("."))
}

pub(super) fn load(source: ConfigSource) -> Result<Config, ConfigErrors> {
    let root: Dict = match source.figment.extract::<Dict>() {
        Ok(root) => root,
        Err(err) => {
            let key = source.file_name.clone().unwrap_or_else(|| "config".into());
            // figment's message names the file and the line; it holds no secret values.
            let errors = err.into_iter().map(|e| ConfigError { key: key.clone(), message: e.to_string() }).collect();
            return Err(ConfigErrors(errors));
        }
    };
    let mut w = Walker { errors: Vec::new(), env_keys: &source.env_keys };
    let config = w.config(&root);
    match config {
        Some(config) if w.errors.is_empty() => Ok(config),
        _ => Err(ConfigErrors(w.errors)),
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;

#[cfg(test)]
mod properties {
    use figment::providers::Serialized;
    use figment::value::Value;
    use proptest::prelude::*;

    use super::*;

    const SECTIONS: &[&str] =
        &["server", "oidc", "session", "tokens", "log", "telemetry", "websocket", "userinfo", "other"];
    const KEYS: &[&str] = &[
        "absolute_timeout_secs",
        "auth_method",
        "body_timeout_secs",
        "client_assertion_audience",
        "client_id",
        "client_key_file",
        "client_secret",
        "client_secret_file",
        "cookie_name",
        "default_expires_in_secs",
        "dpop",
        "extra_auth_params",
        "format",
        "idle_timeout_secs",
        "issuer",
        "key_prefix",
        "level",
        "listen",
        "local_cache",
        "local_cache_max_bytes",
        "local_cache_max_entries",
        "login_starts_per_minute",
        "max_body_bytes",
        "max_header_bytes",
        "methods",
        "metrics_listen",
        "otlp_endpoint",
        "par",
        "post_logout_redirect",
        "prefix",
        "public_url",
        "redis_sentinels",
        "redis_timeout_ms",
        "redis_url",
        "refresh_skew_secs",
        "request_headers_drop",
        "resource",
        "same_site",
        "sampling_ratio",
        "scopes",
        "secret",
        "timeout_secs",
        "trusted_proxy_hops",
        "upstream",
        "workers",
        "unknown",
    ];

    /// A TOML value of any kind, as text.
    fn toml_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("TOML has no NaN literal here", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            "[ -~&&[^\"\\\\]]{0,30}".prop_map(|s| format!("\"{s}\"")),
            prop::sample::select(vec![
                "\"https://idp.example\"",
                "\"127.0.0.1:0\"",
                "\"/api\"",
                "\"\"",
                "\"lax\"",
                "\"json\""
            ])
            .prop_map(String::from),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..3).prop_map(|kv| {
                    format!("{{ {} }}", kv.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "))
                }),
            ]
        })
    }

    /// A configuration file: known and unknown sections and keys, `[[api]]` routes, values of
    /// every type; or any text at all.
    fn toml_text() -> impl Strategy<Value = String> {
        let table = (
            prop_oneof![prop::sample::select(SECTIONS).prop_map(|s| format!("[{s}]")), Just("[[api]]".to_string())],
            prop::collection::btree_map(prop::sample::select(KEYS), toml_value(), 0..6),
        )
            .prop_map(|(head, kv)| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{head}\n{}\n", body.join("\n"))
            });
        prop_oneof![
            4 => prop::collection::vec(table, 0..6).prop_map(|t| t.concat()),
            1 => "\\PC{0,200}",
        ]
    }

    /// Every error names a key: a path of the configuration, or where the text came from.
    fn names_a_key(e: &ConfigError) -> bool {
        let segment = |s: &str| {
            let name = s.split('[').next().unwrap_or_default();
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        !e.message.is_empty() && (e.key == "config" || e.key.split('.').all(segment))
    }

    proptest! {
        #![proptest_config(crate::prop::config())]

        #[test]
        fn any_toml_is_read_without_panic_and_errors_name_a_key(text in toml_text()) {
            if let Err(errors) = load(ConfigSource::from_toml_text(&text)) {
                prop_assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    prop_assert!(names_a_key(e), "{:?} from\n{}", e, text);
                }
            }
        }

        /// Environment variables as figment reads them (`BFF_SECTION__KEY=text`, the text parsed
        /// as it parses it), over a file: no panic, errors name a key.
        #[test]
        fn any_environment_is_read_without_panic_and_errors_name_a_key(
            text in toml_text(),
            vars in prop::collection::vec((prop::sample::select(SECTIONS), prop::sample::select(KEYS), "[ -~]{0,24}"), 0..6),
        ) {
            let mut env = Dict::new();
            let mut env_keys = HashMap::new();
            for (section, key, raw) in &vars {
                let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
                let entry = env.entry((*section).to_string()).or_insert_with(|| Value::from(Dict::new()));
                if let Value::Dict(_, d) = entry {
                    d.insert((*key).to_string(), value);
                }
                env_keys.insert(format!("{section}.{key}"), format!("BFF_{}__{}", section.to_uppercase(), key.to_uppercase()));
            }
            let figment = Figment::from(Toml::string(&text)).merge(Serialized::defaults(env));
            if let Err(errors) = load(ConfigSource { figment, file_name: None, env_keys }) {
                for e in &errors.0 {
                    prop_assert!(names_a_key(e), "{:?}", e);
                }
            }
        }
    }
}
