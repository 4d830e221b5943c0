//! docker-compose.yml cannot run here (no Docker engine), so its structure is checked: the
//! services, their ports and wiring, the realm import, and that bff's environment plus its
//! mounted config file is a configuration `bff check-config` accepts.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    YamlLoader::load_from_str(&text).expect("valid YAML").remove(0)
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn env_of(service: &Yaml) -> HashMap<String, String> {
    service["environment"]
        .as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.as_str()?.to_string(),
                        v.as_str().map(String::from).or_else(|| v.as_i64().map(|n| n.to_string()))?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_has_redis_keycloak_the_demo_api_and_bff_wired_together() {
    let doc = compose();
    let services = &doc["services"];
    for name in ["redis", "keycloak", "demo-api", "bff"] {
        assert!(!services[name].is_badvalue(), "service {name}");
    }

    let redis = &services["redis"];
    assert!(strings(&redis["command"]).windows(2).any(|w| w == ["--appendonly", "yes"]), "Redis persists");
    assert!(strings(&redis["volumes"]).iter().any(|v| v.ends_with(":/data")));
    assert!(strings(&redis["ports"]).contains(&"127.0.0.1:6380:6379".to_string()));

    let keycloak = &services["keycloak"];
    assert!(strings(&keycloak["command"]).contains(&"--import-realm".to_string()));
    assert!(strings(&keycloak["ports"]).contains(&"127.0.0.1:8081:8080".to_string()));
    let realm_mount = strings(&keycloak["volumes"])
        .into_iter()
        .find(|v| v.contains("/opt/keycloak/data/import/"))
        .expect("realm import");
    let realm_file = realm_mount.split(':').next().expect("host path");
    assert!(root().join(realm_file).is_file(), "{realm_file} is in the repository");
    assert_eq!(env_of(keycloak).get("KC_HOSTNAME").map(String::as_str), Some("http://localhost:8081"));

    let bff = &services["bff"];
    assert_eq!(bff["build"].as_str(), Some("."));
    assert!(root().join("Dockerfile").is_file());
    let env = env_of(bff);
    assert_eq!(env["BFF_OIDC__ISSUER"], "http://localhost:8081/realms/bff-demo");
    assert_eq!(env["BFF_SESSION__REDIS_URL"], "redis://127.0.0.1:6380", "the published Redis port");
    let api = &services["demo-api"];
    assert_eq!(api["build"]["dockerfile"].as_str(), Some("Dockerfile.demo"), "demo-api is in the demo build only");
    assert_eq!(api["build"]["context"].as_str(), Some("."));
    assert!(strings(&api["command"]).windows(2).any(|w| w == ["--issuer", "http://localhost:8081/realms/bff-demo"]));
    assert!(strings(&api["command"]).windows(2).any(|w| w == ["--listen", "127.0.0.1:9100"]));
}

#[test]
fn bffs_compose_environment_and_config_file_make_a_valid_configuration() {
    let doc = compose();
    let bff = &doc["services"]["bff"];
    let env = env_of(bff);
    assert!(env.keys().filter(|k| k.starts_with("BFF_")).all(|k| k.contains("__")), "config keys are BFF_SECTION__KEY");
    let mount =
        strings(&bff["volumes"]).into_iter().find(|v| v.ends_with(":/etc/bff/bff.toml:ro")).expect("config mount");
    let file = root().join(mount.split(':').next().expect("host path"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bff"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("BFF_")) {
        cmd.env_remove(name);
    }
    let out = cmd.args(["check-config", "--config"]).arg(&file).envs(&env).output().expect("run bff");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("upstream = \"http://127.0.0.1:9100/\""),
        "the API goes to the demo-api service:\n{stdout}"
    );
    assert!(stdout.contains("listen = \"127.0.0.1:8080\""));
}

#[test]
fn the_keycloak_realm_registers_bff_as_compose_runs_it() {
    let doc = compose();
    let env = env_of(&doc["services"]["bff"]);
    let realm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("docs/compose/keycloak-realm.json")).expect("realm"))
            .expect("json");
    assert_eq!(realm["realm"], "bff-demo");
    assert_eq!(realm["revokeRefreshToken"], true, "refresh-token rotation");
    assert_eq!(realm["refreshTokenMaxReuse"], 0);
    let client = realm["clients"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["clientId"] == env["BFF_OIDC__CLIENT_ID"].as_str()))
        .expect("bff client");
    assert_eq!(client["publicClient"], false, "confidential");
    assert_eq!(client["secret"], env["BFF_OIDC__CLIENT_SECRET"].as_str());
    let public_url = &env["BFF_SERVER__PUBLIC_URL"];
    assert_eq!(client["redirectUris"][0], format!("{public_url}/auth/callback"));
    assert_eq!(client["attributes"]["post.logout.redirect.uris"], format!("{public_url}/"));
    assert_eq!(client["attributes"]["pkce.code.challenge.method"], "S256");
    let audience = client["protocolMappers"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["protocolMapper"] == "oidc-audience-mapper"))
        .expect("audience mapper");
    assert_eq!(audience["config"]["included.custom.audience"], "demo-api", "the demo API's audience");
    assert!(realm["users"].as_array().is_some_and(|u| u.iter().any(|u| u["username"] == "alice")));
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_a_non_root_user() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert_eq!(text.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    let user = text.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(user.trim() != "root" && user.trim() != "0");
    assert!(text.contains("--locked"), "builds what Cargo.lock pins");
}

#[test]
fn the_production_image_has_no_demo_and_the_demo_image_has_it() {
    let build_line = |file: &str| {
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        text.lines().find(|l| l.starts_with("RUN cargo build")).map(String::from).expect("a cargo build line")
    };
    let production = build_line("Dockerfile");
    assert!(production.contains("--no-default-features"), "the demo provider signs anyone in: {production}");
    let demo = build_line("Dockerfile.demo");
    assert!(!demo.contains("--no-default-features"), "{demo}");
    let demo_text = std::fs::read_to_string(root().join("Dockerfile.demo")).expect("Dockerfile.demo");
    assert!(demo_text.lines().any(|l| l.trim() == "CMD [\"demo\"]"), "runs the demo by default");
    // What the builds copy must exist (a workspace member's manifest included).
    for file in ["Dockerfile", "Dockerfile.demo"] {
        let text = std::fs::read_to_string(root().join(file)).expect(file);
        for path in text.lines().filter_map(|l| l.strip_prefix("COPY ")).filter(|l| !l.starts_with("--from")) {
            let source = path.split_whitespace().next().expect("a source");
            assert!(root().join(source).exists(), "{file} copies {source}, which is missing");
        }
    }
}
