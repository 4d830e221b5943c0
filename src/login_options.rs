//! The sign-in options an SPA may ask for at `/auth/login` (OpenID Connect Core §3.1.2.1):
//! which ones the configuration lets through (`oidc.login_params`), what a valid value is, and
//! what the ID token must show afterwards for `max_age` and `acr_values` (§3.1.2.1, §2).

use serde::{Deserialize, Serialize};

/// One parameter an SPA may pass to `/auth/login`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginParam {
    Prompt,
    LoginHint,
    AcrValues,
    MaxAge,
    UiLocales,
}

impl LoginParam {
    pub const ALL: [LoginParam; 5] =
        [LoginParam::Prompt, LoginParam::LoginHint, LoginParam::AcrValues, LoginParam::MaxAge, LoginParam::UiLocales];

    /// `oidc.login_params` unset: what a sign-in flow of an SPA needs (silent sign-in, a fresh
    /// or stronger authentication); hints and locales reveal more and are the operator's choice.
    pub const DEFAULT_ALLOWED: [LoginParam; 3] = [LoginParam::Prompt, LoginParam::MaxAge, LoginParam::AcrValues];

    pub fn name(self) -> &'static str {
        match self {
            LoginParam::Prompt => "prompt",
            LoginParam::LoginHint => "login_hint",
            LoginParam::AcrValues => "acr_values",
            LoginParam::MaxAge => "max_age",
            LoginParam::UiLocales => "ui_locales",
        }
    }

    pub fn parse(name: &str) -> Option<LoginParam> {
        LoginParam::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The `prompt` values of OpenID Connect Core §3.1.2.1 and Initiating User Registration 1.0.
const PROMPTS: &[&str] = &["none", "login", "consent", "select_account", "create"];

/// `max_age` above ten years is a mistake, not a policy.
const MAX_AGE_LIMIT: u64 = 10 * 365 * 24 * 3600;

/// What the SPA asked for, as sent to `/auth/login` (each `None` when absent).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawLoginOptions<'a> {
    pub prompt: Option<&'a str>,
    pub login_hint: Option<&'a str>,
    pub acr_values: Option<&'a str>,
    pub max_age: Option<&'a str>,
    pub ui_locales: Option<&'a str>,
}

/// Validated sign-in options; kept with the pending login, so the callback knows what was asked.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acr_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ui_locales: Vec<String>,
}

/// Why a sign-in option was refused (shown to the SPA's developer: names the parameter only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionRefused {
    #[error("{0} is not allowed here (oidc.login_params)")]
    NotAllowed(&'static str),
    #[error("{0} has a value bff does not send on")]
    Invalid(&'static str),
}

/// Space-separated words, each checked by `word`, at most `max` of them, none repeated.
fn words(raw: &str, max: usize, word: impl Fn(&str) -> bool) -> Option<Vec<String>> {
    let list: Vec<String> = raw.split(' ').filter(|w| !w.is_empty()).map(String::from).collect();
    let distinct = list.iter().enumerate().all(|(i, w)| !list[..i].contains(w));
    (!list.is_empty() && list.len() <= max && distinct && list.iter().all(|w| word(w))).then_some(list)
}

impl LoginOptions {
    /// Reads what the SPA sent, refusing a parameter the configuration does not allow or a value
    /// that is not one (a value goes into the provider's URL: only what the specifications
    /// describe passes).
    pub fn read(raw: &RawLoginOptions<'_>, allowed: &[LoginParam]) -> Result<LoginOptions, OptionRefused> {
        let take = |param: LoginParam, value: Option<&str>| -> Result<Option<String>, OptionRefused> {
            match value {
                None => Ok(None),
                Some(_) if !allowed.contains(&param) => Err(OptionRefused::NotAllowed(param.name())),
                Some(v) if v.len() > 512 => Err(OptionRefused::Invalid(param.name())),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        let invalid = |param: LoginParam| OptionRefused::Invalid(param.name());
        let prompt = match take(LoginParam::Prompt, raw.prompt)? {
            None => Vec::new(),
            Some(v) => {
                let list = words(&v, PROMPTS.len(), |w| PROMPTS.contains(&w)).ok_or(invalid(LoginParam::Prompt))?;
                // §3.1.2.1: `none` with any other value is an error.
                if list.len() > 1 && list.iter().any(|w| w == "none") {
                    return Err(invalid(LoginParam::Prompt));
                }
                list
            }
        };
        let login_hint = match take(LoginParam::LoginHint, raw.login_hint)? {
            Some(v) if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) || v.trim() != v => {
                return Err(invalid(LoginParam::LoginHint));
            }
            hint => hint,
        };
        let acr_values = match take(LoginParam::AcrValues, raw.acr_values)? {
            None => Vec::new(),
            Some(v) => {
                words(&v, 8, |w| w.len() <= 128 && w.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'))
                    .ok_or(invalid(LoginParam::AcrValues))?
            }
        };
        let max_age = match take(LoginParam::MaxAge, raw.max_age)? {
            None => None,
            Some(v) => Some(
                Some(v.as_str())
                    .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|n| *n <= MAX_AGE_LIMIT)
                    .ok_or(invalid(LoginParam::MaxAge))?,
            ),
        };
        let ui_locales = match take(LoginParam::UiLocales, raw.ui_locales)? {
            None => Vec::new(),
            Some(v) => words(&v, 8, |w| w.len() <= 35 && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                .ok_or(invalid(LoginParam::UiLocales))?,
        };
        Ok(LoginOptions { prompt, login_hint, acr_values, max_age, ui_locales })
    }

    /// The authorization request's parameters for these options.
    pub fn auth_params(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.prompt.is_empty() {
            out.push(("prompt", self.prompt.join(" ")));
        }
        if let Some(hint) = &self.login_hint {
            out.push(("login_hint", hint.clone()));
        }
        if !self.acr_values.is_empty() {
            out.push(("acr_values", self.acr_values.join(" ")));
        }
        if let Some(max_age) = self.max_age {
            out.push(("max_age", max_age.to_string()));
        }
        if !self.ui_locales.is_empty() {
            out.push(("ui_locales", self.ui_locales.join(" ")));
        }
        out
    }

    /// `prompt=none`: a silent sign-in, whose "no" goes back to the SPA, not to a page.
    pub fn is_silent(&self) -> bool {
        self.prompt.iter().any(|p| p == "none")
    }

    /// Whether the ID token's claims show the authentication that was asked for: with
    /// `max_age`, an `auth_time` no older than that (§3.1.2.1: the claim is then required);
    /// with `acr_values`, an `acr` that is one of them. `now` in unix seconds.
    pub fn check(&self, claims: &serde_json::Map<String, serde_json::Value>, now: u64) -> Result<(), Unmet> {
        if let Some(max_age) = self.max_age {
            let auth_time = claims.get("auth_time").and_then(serde_json::Value::as_u64).ok_or(Unmet::NoAuthTime)?;
            // A minute for clocks that disagree, as ID token lifetimes are checked.
            if auth_time.saturating_add(max_age).saturating_add(60) < now {
                return Err(Unmet::TooOld);
            }
        }
        if !self.acr_values.is_empty() {
            let acr = claims.get("acr").and_then(serde_json::Value::as_str);
            if !acr.is_some_and(|acr| self.acr_values.iter().any(|wanted| wanted == acr)) {
                return Err(Unmet::OtherAcr);
            }
        }
        Ok(())
    }
}

/// How the authentication a provider reports falls short of what the sign-in asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unmet {
    #[error("max_age was asked but the ID token has no auth_time")]
    NoAuthTime,
    #[error("the authentication is older than max_age")]
    TooOld,
    #[error("the ID token's acr is none of the acr_values asked for")]
    OtherAcr,
}

/// The provider's answers to a silent sign-in that mean "not without the user" (OpenID Connect
/// Core §3.1.2.6): the SPA is told, never shown an error page.
pub fn is_interaction_needed(error: &str) -> bool {
    matches!(error, "login_required" | "interaction_required" | "consent_required" | "account_selection_required")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(raw: RawLoginOptions<'_>) -> Result<LoginOptions, OptionRefused> {
        LoginOptions::read(&raw, &LoginParam::ALL)
    }

    #[test]
    fn valid_options_are_sent_as_parameters() {
        let options = read(RawLoginOptions {
            prompt: Some("login consent"),
            login_hint: Some("alice@example.com"),
            acr_values: Some("urn:mace:incommon:iap:silver  mfa"),
            max_age: Some("300"),
            ui_locales: Some("fr-CA en"),
        })
        .unwrap();
        assert_eq!(
            options.auth_params(),
            vec![
                ("prompt", "login consent".to_string()),
                ("login_hint", "alice@example.com".to_string()),
                ("acr_values", "urn:mace:incommon:iap:silver mfa".to_string()),
                ("max_age", "300".to_string()),
                ("ui_locales", "fr-CA en".to_string()),
            ]
        );
        assert!(!options.is_silent());
        assert!(read(RawLoginOptions { prompt: Some("none"), ..Default::default() }).unwrap().is_silent());
        assert_eq!(read(RawLoginOptions::default()).unwrap(), LoginOptions::default());
        assert!(LoginOptions::default().auth_params().is_empty());
    }

    #[test]
    fn what_the_configuration_does_not_allow_is_refused_by_name() {
        let allowed = LoginParam::DEFAULT_ALLOWED;
        let hint = RawLoginOptions { login_hint: Some("alice"), ..Default::default() };
        assert_eq!(LoginOptions::read(&hint, &allowed), Err(OptionRefused::NotAllowed("login_hint")));
        let locales = RawLoginOptions { ui_locales: Some("de"), ..Default::default() };
        assert_eq!(LoginOptions::read(&locales, &allowed), Err(OptionRefused::NotAllowed("ui_locales")));
        let prompt = RawLoginOptions { prompt: Some("login"), ..Default::default() };
        assert!(LoginOptions::read(&prompt, &allowed).is_ok());
        assert_eq!(LoginOptions::read(&prompt, &[]), Err(OptionRefused::NotAllowed("prompt")));
    }

    #[test]
    fn values_that_are_not_ones_are_refused() {
        let bad = [
            RawLoginOptions { prompt: Some("none login"), ..Default::default() },
            RawLoginOptions { prompt: Some("sudo"), ..Default::default() },
            RawLoginOptions { prompt: Some("login login"), ..Default::default() },
            RawLoginOptions { prompt: Some(""), ..Default::default() },
            RawLoginOptions { login_hint: Some(""), ..Default::default() },
            RawLoginOptions { login_hint: Some(" alice"), ..Default::default() },
            RawLoginOptions { login_hint: Some("a\r\nb"), ..Default::default() },
            RawLoginOptions { login_hint: Some(&"a".repeat(257)), ..Default::default() },
            RawLoginOptions { acr_values: Some("a\"b"), ..Default::default() },
            RawLoginOptions { acr_values: Some("1 2 3 4 5 6 7 8 9"), ..Default::default() },
            RawLoginOptions { max_age: Some("-1"), ..Default::default() },
            RawLoginOptions { max_age: Some("1e3"), ..Default::default() },
            RawLoginOptions { max_age: Some("99999999999"), ..Default::default() },
            RawLoginOptions { max_age: Some(""), ..Default::default() },
            RawLoginOptions { ui_locales: Some("en_US"), ..Default::default() },
            RawLoginOptions { ui_locales: Some(&"x".repeat(600)), ..Default::default() },
        ];
        for raw in bad {
            assert!(matches!(read(raw), Err(OptionRefused::Invalid(_))), "{raw:?}");
        }
    }

    #[test]
    fn the_id_token_must_show_what_was_asked() {
        let now = 1_000_000;
        let asked =
            LoginOptions { max_age: Some(300), acr_values: vec!["mfa".into(), "hwk".into()], ..Default::default() };
        let claims = |v: serde_json::Value| v.as_object().cloned().unwrap();
        assert_eq!(asked.check(&claims(json!({"auth_time": now - 100, "acr": "hwk"})), now), Ok(()));
        assert_eq!(asked.check(&claims(json!({"acr": "mfa"})), now), Err(Unmet::NoAuthTime));
        assert_eq!(asked.check(&claims(json!({"auth_time": now - 1000, "acr": "mfa"})), now), Err(Unmet::TooOld));
        assert_eq!(asked.check(&claims(json!({"auth_time": now, "acr": "pwd"})), now), Err(Unmet::OtherAcr));
        assert_eq!(asked.check(&claims(json!({"auth_time": now})), now), Err(Unmet::OtherAcr));
        // Nothing asked, nothing required.
        assert_eq!(LoginOptions::default().check(&claims(json!({})), now), Ok(()));
    }

    #[test]
    fn only_the_interaction_answers_go_back_to_a_silent_sign_in() {
        for code in ["login_required", "interaction_required", "consent_required", "account_selection_required"] {
            assert!(is_interaction_needed(code));
        }
        for code in ["access_denied", "server_error", "invalid_request", ""] {
            assert!(!is_interaction_needed(code));
        }
    }
}
