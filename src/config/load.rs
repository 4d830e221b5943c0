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
