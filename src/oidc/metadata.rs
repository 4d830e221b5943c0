//! OAuth 2.0 Authorization Server Metadata (RFC 8414), for the endpoints a provider's OIDC
//! discovery document leaves out. Some providers list their revocation endpoint (and, later,
//! PAR and introspection) only there.

use serde::Deserialize;
use url::Url;

const WELL_KNOWN: &str = ".well-known/oauth-authorization-server";

/// The part of RFC 8414 metadata bff reads.
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizationServerMetadata {
    pub issuer: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

/// Where the metadata may be: RFC 8414 §3.1 inserts the well-known path between the host and the
/// issuer's path; many providers serve it appended to the issuer instead, as OIDC discovery is.
/// Both are tried, the standard one first.
pub fn metadata_urls(issuer: &str) -> Vec<Url> {
    let Ok(base) = Url::parse(issuer) else { return Vec::new() };
    let path = base.path().trim_end_matches('/').to_string();
    let mut inserted = base.clone();
    inserted.set_path(&format!("/{WELL_KNOWN}{path}"));
    let mut appended = base;
    appended.set_path(&format!("{path}/{WELL_KNOWN}"));
    if inserted == appended { vec![inserted] } else { vec![inserted, appended] }
}

/// The first metadata document that answers and names `issuer` (RFC 8414 §3.3: a document for
/// another issuer must not be used). `None` when there is none: that is common and not an error.
pub async fn fetch(http: &super::IdpHttp, issuer: &str) -> Option<AuthorizationServerMetadata> {
    for url in metadata_urls(issuer) {
        let Ok(response) = http.send(http.get(url.clone())).await else { continue };
        if !response.status().is_success() {
            continue;
        }
        match response.json::<AuthorizationServerMetadata>().await {
            Ok(metadata) if metadata.issuer == issuer => return Some(metadata),
            Ok(metadata) => {
                tracing::warn!(url = %url, issuer = metadata.issuer, "ignoring RFC 8414 metadata for another issuer");
            }
            Err(e) => tracing::debug!(url = %url, "no RFC 8414 metadata here: {e}"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_path_is_inserted_after_the_host_and_appended_to_the_issuer() {
        let urls: Vec<String> = metadata_urls("https://idp.example/realms/main").iter().map(Url::to_string).collect();
        assert_eq!(
            urls,
            [
                "https://idp.example/.well-known/oauth-authorization-server/realms/main",
                "https://idp.example/realms/main/.well-known/oauth-authorization-server",
            ]
        );
        let trailing: Vec<String> = metadata_urls("https://idp.example/o/").iter().map(Url::to_string).collect();
        assert_eq!(trailing[1], "https://idp.example/o/.well-known/oauth-authorization-server");
        let root: Vec<String> = metadata_urls("https://idp.example").iter().map(Url::to_string).collect();
        assert_eq!(root, ["https://idp.example/.well-known/oauth-authorization-server"], "one place only");
        assert!(metadata_urls("not a url").is_empty());
    }
}
