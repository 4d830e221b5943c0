//! `bff check-config --online`: whether the provider will work as configured, told before the
//! first user finds out. Discovery must succeed (as `serve` needs it); then bff's client
//! authentication is tried without side effects on any user, and what the configuration relies
//! on but the provider's metadata does not offer is listed.

use openidconnect::{AuthorizationCode, PkceCodeVerifier};
use serde::Serialize;

use super::token_endpoint::{Recorder, credential_keys};
use super::{DiscoveredMetadata, Oidc, OidcError, TokenEndpointError, Verdict};
use crate::config::{AuthMethod, ParMode};
use crate::crypto::random_token;
use crate::dpop::DpopKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Sign-ins or refreshes will fail: exit 2.
    Error,
    /// Works, with a consequence the operator should know of.
    Warning,
    /// What was proven.
    Ok,
}

/// One line of the report: `key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Ok => "ok",
        };
        write!(f, "{}: {word}: {}", self.key, self.message)
    }
}

fn finding(severity: Severity, key: &'static str, message: impl Into<String>) -> Finding {
    Finding { severity, key, message: message.into() }
}

/// What the provider's metadata offers beyond what sign-in needs.
#[derive(Debug, Clone, Default)]
pub(super) struct Offers {
    revocation: bool,
    /// `grant_types_supported`, when the metadata lists it.
    grant_types: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    auth_methods: Option<Vec<String>>,
    backchannel_logout: bool,
    frontchannel_logout: bool,
    response_iss: bool,
}

fn names<T: Serialize>(values: Option<&Vec<T>>) -> Option<Vec<String>> {
    values
        .map(|values| values.iter().filter_map(|v| serde_json::to_value(v).ok()?.as_str().map(String::from)).collect())
}

impl Offers {
    pub(super) fn read(metadata: &DiscoveredMetadata, revocation: bool) -> Offers {
        let extra = metadata.additional_metadata();
        Offers {
            revocation,
            grant_types: names(metadata.grant_types_supported()),
            scopes: names(metadata.scopes_supported()),
            auth_methods: names(metadata.token_endpoint_auth_methods_supported()),
            backchannel_logout: extra.backchannel_logout_supported == Some(true),
            frontchannel_logout: extra.frontchannel_logout_supported == Some(true),
            response_iss: extra.authorization_response_iss_parameter_supported == Some(true),
        }
    }
}

impl Oidc {
    /// The whole online check: discovery, client authentication, what the provider lacks.
    pub async fn check_online(&self) -> Vec<Finding> {
        if let Err(e) = self.discover().await {
            let key = if matches!(e, OidcError::IssuerMismatch { .. } | OidcError::Discovery(_)) {
                "oidc.issuer"
            } else if matches!(e, OidcError::DpopNotOffered) {
                "oidc.dpop"
            } else {
                "oidc.par"
            };
            return vec![finding(Severity::Error, key, crate::telemetry::error_chain(&e))];
        }
        let mut findings = vec![finding(Severity::Ok, "oidc.issuer", "discovery and signing keys loaded")];
        findings.push(self.probe_client_authentication().await);
        findings.extend(self.missing_offers());
        findings
    }

    /// The key whose value the credential check is about.
    fn credential_key(&self) -> &'static str {
        match self.auth_method {
            AuthMethod::PrivateKeyJwt => "oidc.client_key_file",
            AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => "oidc.client_secret",
        }
    }

    /// Proves or refutes bff's credentials without touching any user's grant: a pushed
    /// authorization request where the provider takes them (it only stores a request that
    /// expires unused), else a code exchange with a code that was never issued, which a provider
    /// answers `invalid_grant` only after it has authenticated the client.
    async fn probe_client_authentication(&self) -> Finding {
        let key = self.credential_key();
        let method = self.auth_method.as_str();
        let pushes = self.provider().is_ok_and(|p| p.par_url.is_some());
        if pushes {
            return match self.begin_login("/".into(), "check-config".into(), Default::default()).await {
                Ok(_) => finding(
                    Severity::Ok,
                    key,
                    format!("the provider accepted bff's client authentication ({method}) at its PAR endpoint"),
                ),
                Err(e) if e.verdict() == Verdict::ClientAuth => finding(
                    Severity::Error,
                    key,
                    format!("{}; every sign-in would fail", crate::telemetry::error_chain(&e)),
                ),
                Err(e) => finding(
                    Severity::Error,
                    "oidc.par",
                    format!(
                        "{}; every sign-in would fail (is {} registered as a redirect URI?)",
                        crate::telemetry::error_chain(&e),
                        self.redirect_uri.as_str()
                    ),
                ),
            };
        }
        match self.exchange_made_up_code().await {
            Ok(()) => finding(Severity::Error, key, "the provider exchanged a code it never issued: do not use it"),
            Err(e) => {
                let proven = matches!(&e, TokenEndpointError::Refused { refusal, .. }
                    if refusal.error.as_deref() == Some("invalid_grant"));
                match e.verdict() {
                    _ if proven => finding(
                        Severity::Ok,
                        key,
                        format!(
                            "the provider accepted bff's client authentication ({method}): it answered a made-up \
                             code with invalid_grant"
                        ),
                    ),
                    Verdict::ClientAuth => {
                        finding(Severity::Error, key, format!("{e}; every sign-in and refresh would fail"))
                    }
                    Verdict::Transient => finding(
                        Severity::Error,
                        "oidc.issuer",
                        format!(
                            "the token endpoint did not answer a test exchange: {}",
                            crate::telemetry::error_chain(&e)
                        ),
                    ),
                    Verdict::GrantOver | Verdict::NotForResource => finding(
                        Severity::Warning,
                        key,
                        format!(
                            "could not prove bff's client authentication: a made-up code was answered \"{e}\" \
                             (invalid_grant would have proven it; some providers answer a wrong credential so: \
                             check {})",
                            credential_keys(self.auth_method)
                        ),
                    ),
                }
            }
        }
    }

    /// A code exchange with a code and verifier nobody issued, authenticated as every exchange.
    async fn exchange_made_up_code(&self) -> Result<(), TokenEndpointError> {
        let provider = self.provider().map_err(|e| TokenEndpointError::Other(e.to_string()))?;
        let code = AuthorizationCode::new(format!("bff-check-config-{}", random_token()));
        let verifier = PkceCodeVerifier::new(format!("{}{}", random_token(), random_token()));
        let mut request = provider
            .client
            .exchange_code(code)
            .map_err(|e| TokenEndpointError::Other(e.to_string()))?
            .set_pkce_verifier(verifier);
        let assertion = self
            .client_assertion(&provider, Oidc::token_url(&provider))
            .map_err(|e| TokenEndpointError::Other(e.to_string()))?;
        for (name, value) in assertion.into_iter().flatten() {
            request = request.add_extra_param(name, value);
        }
        let key = if self.dpop {
            Some(DpopKey::generate().map_err(|e| TokenEndpointError::Other(e.to_string()))?)
        } else {
            None
        };
        let recorder = Recorder::for_key(self, &provider, key.as_ref());
        let answer = request.request_async(&recorder).await;
        self.read_answer(answer, &recorder).map(|_| ())
    }

    /// What the configuration relies on that the provider's metadata does not offer.
    fn missing_offers(&self) -> Vec<Finding> {
        let Ok(provider) = self.provider() else { return Vec::new() };
        let offers = &provider.offers;
        let lists = |list: &Option<Vec<String>>, name: &str| list.as_ref().is_none_or(|l| l.iter().any(|v| v == name));
        let mut found = Vec::new();
        if !offers.revocation {
            found.push(finding(
                Severity::Warning,
                "oidc.revocation_endpoint",
                "the provider names no revocation endpoint (RFC 7009): logout cannot revoke refresh tokens at the \
                 provider; set oidc.revocation_endpoint if it has one, and prefer not to ask for offline_access",
            ));
        }
        let offline = self.scopes.iter().any(|s| s == "offline_access");
        if offline && !lists(&offers.grant_types, "refresh_token") {
            found.push(finding(
                Severity::Warning,
                "oidc.scopes",
                "offline_access is asked for but the provider's grant_types_supported lacks refresh_token: sessions \
                 end when their access token expires; enable refresh tokens for this client at the provider",
            ));
        }
        if offline && !lists(&offers.scopes, "offline_access") {
            found.push(finding(
                Severity::Warning,
                "oidc.scopes",
                "offline_access is asked for but the provider's scopes_supported lacks it: the provider may refuse \
                 the sign-in or issue no refresh token",
            ));
        }
        if !lists(&offers.auth_methods, self.auth_method.as_str()) {
            found.push(finding(
                Severity::Error,
                "oidc.auth_method",
                format!(
                    "the provider's token_endpoint_auth_methods_supported does not list {}",
                    self.auth_method.as_str()
                ),
            ));
        }
        if !offers.backchannel_logout && !offers.frontchannel_logout {
            found.push(finding(
                Severity::Warning,
                "oidc.issuer",
                "the provider advertises neither back-channel nor front-channel logout: a sign-out at the provider \
                 (or in another application) does not end bff's sessions until they expire or a refresh is refused",
            ));
        }
        if self.exchanges && !lists(&offers.grant_types, super::grants::TOKEN_EXCHANGE_GRANT) {
            found.push(finding(
                Severity::Warning,
                "api[].token",
                format!(
                    "a route has token = \"exchange\" but the provider's grant_types_supported lacks {}: its calls \
                     are refused (403 exchange_refused) unless the provider takes the grant anyway; enable token \
                     exchange (RFC 8693) for this client at the provider",
                    super::grants::TOKEN_EXCHANGE_GRANT
                ),
            ));
        }
        let iss_required = self.dpop || self.par == ParMode::Required;
        if iss_required && !offers.response_iss {
            found.push(finding(
                Severity::Warning,
                if self.dpop { "oidc.dpop" } else { "oidc.par" },
                "bff requires iss in authorization responses in this mode (RFC 9207, FAPI 2.0) but the provider \
                 does not advertise authorization_response_iss_parameter_supported: sign-ins fail unless it sends it",
            ));
        }
        found
    }
}
