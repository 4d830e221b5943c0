//! The generic half of reading configuration: a walk over the merged file + environment tree
//! that reads typed values by key path, remembers which keys each section defines (to report
//! the others as unknown) and collects every problem instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use figment::value::{Dict, Value};
use url::Url;

use super::load::ConfigError;

pub(super) struct Section<'v> {
    pub(super) path: String,
    pub(super) dict: Option<&'v Dict>,
    pub(super) known: BTreeSet<&'static str>,
}

impl<'v> Section<'v> {
    pub(super) fn key(&self, name: &str) -> String {
        if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) }
    }
}

pub(super) struct Walker<'a> {
    pub(super) errors: Vec<ConfigError>,
    pub(super) env_keys: &'a HashMap<String, String>,
}

impl Walker<'_> {
    pub(super) fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let mut message = message.into();
        if let Some(var) = self.env_keys.get(&key) {
            message.push_str(&format!(" (from {var})"));
        }
        self.errors.push(ConfigError { key, message });
    }

    pub(super) fn section<'v>(&mut self, parent: &Section<'v>, name: &'static str) -> Section<'v> {
        let path = parent.key(name);
        let dict = match parent.dict.and_then(|d| d.get(name)) {
            None => None,
            Some(Value::Dict(_, dict)) => Some(dict),
            Some(other) => {
                self.error(&path, format!("expected a table, found {}", describe(other)));
                None
            }
        };
        Section { path, dict, known: BTreeSet::new() }
    }

    pub(super) fn value<'v>(&mut self, sec: &mut Section<'v>, name: &'static str) -> Option<&'v Value> {
        sec.known.insert(name);
        sec.dict.and_then(|d| d.get(name))
    }

    /// Reports keys the section does not define.
    pub(super) fn finish(&mut self, sec: Section<'_>) {
        if let Some(dict) = sec.dict {
            for key in dict.keys() {
                if !sec.known.contains(key.as_str()) {
                    self.error(sec.key(key), "unknown key");
                }
            }
        }
    }

    pub(super) fn string(&mut self, sec: &mut Section<'_>, name: &'static str) -> Option<String> {
        let key = sec.key(name);
        let value = self.value(sec, name)?;
        // Environment values are re-read raw: figment would turn "0123" into the number 123.
        if let Some(raw) = self.env_keys.get(&key).and_then(|var| std::env::var(var).ok()) {
            return Some(raw);
        }
        match value {
            Value::String(_, s) => Some(s.clone()),
            Value::Char(_, c) => Some(c.to_string()),
            Value::Num(_, n) => {
                n.to_f64().map(|f| if f.fract() == 0.0 { format!("{}", f as i64) } else { f.to_string() })
            }
            Value::Bool(_, b) => Some(b.to_string()),
            other => {
                self.error(key, format!("expected a string, found {}", describe(other)));
                None
            }
        }
    }

    pub(super) fn string_or(&mut self, sec: &mut Section<'_>, name: &'static str, default: &str) -> String {
        self.string(sec, name).unwrap_or_else(|| default.to_string())
    }

    pub(super) fn required_string(&mut self, sec: &mut Section<'_>, name: &'static str) -> Option<String> {
        match self.string(sec, name) {
            Some(s) if !s.trim().is_empty() => Some(s),
            Some(_) => {
                self.error(sec.key(name), "must not be empty");
                None
            }
            None => {
                if sec.dict.and_then(|d| d.get(name)).is_none() {
                    self.error(sec.key(name), "missing (required)");
                }
                None
            }
        }
    }

    /// [`Self::uint`] for a key whose default depends on others: `None` when it is absent.
    pub(super) fn optional_uint(&mut self, sec: &mut Section<'_>, name: &'static str, min: u64) -> Option<u64> {
        self.value(sec, name)?;
        Some(self.uint(sec, name, min, min))
    }

    pub(super) fn uint(&mut self, sec: &mut Section<'_>, name: &'static str, default: u64, min: u64) -> u64 {
        let key = sec.key(name);
        let Some(value) = self.value(sec, name) else { return default };
        let parsed = match value {
            Value::Num(_, n) => n
                .to_i128()
                .or_else(|| n.to_u128().and_then(|n| i128::try_from(n).ok()))
                .and_then(|n| u64::try_from(n).ok()),
            Value::String(_, s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match parsed {
            Some(n) if n >= min => n,
            Some(n) => {
                self.error(key, format!("must be at least {min} (got {n})"));
                default
            }
            None => {
                self.error(key, format!("expected a non-negative integer, found {}", describe(value)));
                default
            }
        }
    }

    /// A fraction from 0 to 1 (`None` when the key is absent).
    pub(super) fn ratio(&mut self, sec: &mut Section<'_>, name: &'static str) -> Option<f64> {
        let key = sec.key(name);
        let value = self.value(sec, name)?;
        let parsed = match value {
            // An integer (`1`, `0`) is a fraction too.
            Value::Num(_, n) => n.to_f64().or_else(|| n.to_i128().map(|i| i as f64)),
            Value::String(_, s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(r) if (0.0..=1.0).contains(&r) => Some(r),
            _ => {
                self.error(key, format!("expected a number from 0 to 1, found {}", describe(value)));
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, sec: &mut Section<'_>, name: &'static str, default: bool) -> bool {
        let key = sec.key(name);
        let Some(value) = self.value(sec, name) else { return default };
        match value {
            Value::Bool(_, b) => *b,
            Value::String(_, s) if s.trim() == "true" => true,
            Value::String(_, s) if s.trim() == "false" => false,
            other => {
                self.error(key, format!("expected true or false, found {}", describe(other)));
                default
            }
        }
    }

    pub(super) fn secs(&mut self, sec: &mut Section<'_>, name: &'static str, default: u64, min: u64) -> Duration {
        Duration::from_secs(self.uint(sec, name, default, min))
    }

    pub(super) fn string_list(&mut self, sec: &mut Section<'_>, name: &'static str) -> Option<Vec<String>> {
        let key = sec.key(name);
        let value = self.value(sec, name)?;
        match value {
            Value::Array(_, items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(_, s) => out.push(s.clone()),
                        other => {
                            self.error(format!("{key}[{i}]"), format!("expected a string, found {}", describe(other)))
                        }
                    }
                }
                Some(out)
            }
            // A single string is accepted where a list is expected (`secret = "…"`).
            Value::String(_, s) => Some(vec![s.clone()]),
            other => {
                self.error(key, format!("expected a list of strings, found {}", describe(other)));
                None
            }
        }
    }

    pub(super) fn string_map(&mut self, sec: &mut Section<'_>, name: &'static str) -> BTreeMap<String, String> {
        let key = sec.key(name);
        let mut out = BTreeMap::new();
        match self.value(sec, name) {
            None => {}
            Some(Value::Dict(_, dict)) => {
                for (k, v) in dict {
                    match v {
                        Value::String(_, s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => {
                            self.error(format!("{key}.{k}"), format!("expected a string, found {}", describe(other)))
                        }
                    }
                }
            }
            Some(other) => self.error(key, format!("expected a table of strings, found {}", describe(other))),
        }
        out
    }

    pub(super) fn url(&mut self, key: &str, raw: &str, what: &str) -> Option<Url> {
        match Url::parse(raw) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    self.error(key, format!("{what} must have a host"));
                    return None;
                }
                if !url.username().is_empty() || url.password().is_some() {
                    self.error(key, format!("{what} must not carry credentials"));
                    return None;
                }
                Some(url)
            }
            Ok(url) => {
                self.error(key, format!("{what} must be http or https (got scheme {:?})", url.scheme()));
                None
            }
            Err(e) => {
                self.error(key, format!("not a valid URL ({e})"));
                None
            }
        }
    }
}

pub(super) fn describe(value: &Value) -> &'static str {
    match value {
        Value::String(..) => "a string",
        Value::Char(..) => "a character",
        Value::Bool(..) => "a boolean",
        Value::Num(..) => "a number",
        Value::Empty(..) => "an empty value",
        Value::Dict(..) => "a table",
        Value::Array(..) => "an array",
    }
}
