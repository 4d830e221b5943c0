//! bff on Redis that speaks TLS only (`--port 0 --tls-port …`), with a private CA and client
//! certificates (Redis asks for one by default, `tls-auth-clients yes`): one server, Sentinel
//! (the sentinel and the primary both TLS-only) and Cluster. The test makes its CA and
//! certificates with the `openssl` command line; every server runs on a port of its own and is
//! stopped by the test. A plain-TCP connection anywhere (to the primary Sentinel names, the
//! cache's tracking connection) would find no port to talk to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bff::config::{Config, RedisTls};
use reqwest::Method;
use secrecy::SecretString;

use support::{AppOptions, blocking_eventually, eventually, metric, port_for_later, spawn_app_with, temp_dir};

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and another CA.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("the openssl command line");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    fn new() -> Pki {
        let dir = temp_dir("redis-tls");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=bff test {ca}"));
            openssl(
                &dir,
                &[&["req", "-x509"][..], &ec, &["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject]]
                    .concat(),
            );
        }
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let signed =
            [("server", "ca", "/CN=localhost"), ("client", "ca", "/CN=bff"), ("stranger", "other-ca", "/CN=bff")];
        for (name, ca, subject) in signed {
            let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            openssl(&dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", subject]].concat());
            openssl(
                &dir,
                &["x509", "-req", "-in", &csr, "-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial", "-out", &pem]
                    .into_iter()
                    .chain(["-days", "2", "-extfile", "ext.cnf"])
                    .collect::<Vec<_>>(),
            );
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// What bff is configured with: `ca` trusted, the client certificate when `client`.
    fn tls(&self, ca: &str, client: bool) -> RedisTls {
        self.tls_as(ca, client.then_some("client"))
    }

    /// The same with the certificate `client` (`stranger`'s is signed by the other CA).
    fn tls_as(&self, ca: &str, client: Option<&str>) -> RedisTls {
        let files = client.map(|name| (self.path(&format!("{name}.pem")), self.path(&format!("{name}.key"))));
        let client = files.as_ref().map(|(cert, key)| (cert.as_str(), key.as_str()));
        RedisTls::from_files(Some(&self.path(ca)), client.map(|c| c.0), client.map(|c| c.1))
            .expect("the test's PEM files")
    }

    /// The client certificate with another certificate's key.
    fn mismatched(&self) -> RedisTls {
        let (cert, key) = (self.path("client.pem"), self.path("stranger.key"));
        RedisTls::from_files(Some(&self.path("ca.pem")), Some(&cert), Some(&key)).expect("PEM files")
    }

    /// The arguments that make a Redis server (or sentinel) TLS-only with the server certificate.
    fn server_args(&self, port: u16) -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &self.path("server.pem"),
            "--tls-key-file",
            &self.path("server.key"),
            "--tls-ca-cert-file",
            &self.path("ca.pem"),
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &self.path("ca.pem"), "--cert", &self.path("client.pem")])
            .args(["--key", &self.path("client.key"), "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis processes of one test, stopped when it ends (also when it fails).
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server(args: &[String], dir: &Path) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("redis-server")
        .args(args)
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server with TLS (Debian's links libssl)")
}

/// One TLS-only server; answers once this returns.
fn tls_server(pki: &Pki, port: u16) -> Child {
    let child = redis_server(&pki.server_args(port), &pki.dir.join(port.to_string()));
    blocking_eventually("the TLS-only Redis answers", Duration::from_secs(10), || {
        pki.cli(port, &["ping"]).contains("PONG")
    });
    child
}

/// Signs in, calls the API twice (a token-set read each) and checks readiness; the browser.
async fn signs_in_and_proxies(app: &support::TestApp) -> support::Browser {
    let browser = app.browser();
    browser.login_as("alice").await;
    for _ in 0..2 {
        assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    }
    let ready: serde_json::Value = reqwest::get(format!("{}/readyz", app.address)).await.unwrap().json().await.unwrap();
    assert_eq!(ready["session_store"], "ok", "{ready}");
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_server_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let port = port_for_later();
    let _servers = Servers(vec![tls_server(&pki, port)]);
    let tls = pki.tls("ca.pem", true);
    let app = spawn_app_with(AppOptions {
        redis_url: Some(format!("rediss://127.0.0.1:{port}")),
        tweak: Arc::new(move |c: &mut Config| c.session.redis_tls = tls.clone()),
        ..Default::default()
    })
    .await;

    signs_in_and_proxies(&app).await;
    // The coherent cache's tracking connection is TLS too: it comes up on a TLS-only server.
    let address = app.address.clone();
    eventually("the invalidation channel is up over TLS", Duration::from_secs(10), || {
        let address = address.clone();
        async move { metric(&address, "bff_token_cache_channel_up").await == 1.0 }
    })
    .await;
    let keys = pki.cli(port, &["--scan", "--pattern", &format!("{}*", app.prefix)]);
    assert!(keys.contains(":tokens"), "the token set is in the TLS server: {keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_does_not_verify_the_server_or_a_client_certificate_refused_stops_the_start_naming_the_key() {
    let pki = Pki::new();
    let port = port_for_later();
    let _servers = Servers(vec![tls_server(&pki, port)]);
    let good = pki.tls("ca.pem", true);
    let app = spawn_app_with(AppOptions {
        redis_url: Some(format!("rediss://127.0.0.1:{port}")),
        tweak: Arc::new(move |c: &mut Config| c.session.redis_tls = good.clone()),
        ..Default::default()
    })
    .await;

    for (tls, key) in [
        (pki.tls("other-ca.pem", true), "session.redis_ca_file"),
        (pki.tls("ca.pem", false), "session.redis_client_cert_file"),
        (pki.tls_as("ca.pem", Some("stranger")), "session.redis_client_cert_file"),
        (pki.mismatched(), "session.redis_client_cert_file"),
    ] {
        let mut config = app.config.clone();
        config.session.redis_tls = tls;
        let listener = support::listener();
        config.server.listen = listener.local_addr().unwrap();
        let error = bff::Application::build(config, listener).await.err().expect("bff does not start");
        assert!(error.downcast_ref::<bff::config::ConfigErrors>().is_some(), "a configuration error (exit 2)");
        let text = format!("{error:#}");
        assert!(text.starts_with(&format!("{key}: ")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_found_after_the_start_is_named_by_readyz() {
    let pki = Pki::new();
    let port = port_for_later();
    // Redis is down at start: bff starts; its first connection finds the CA wrong.
    let wrong = pki.tls("other-ca.pem", true);
    let app = spawn_app_with(AppOptions {
        redis_url: Some(format!("rediss://127.0.0.1:{port}")),
        tweak: Arc::new(move |c: &mut Config| c.session.redis_tls = wrong.clone()),
        ..Default::default()
    })
    .await;
    let _servers = Servers(vec![tls_server(&pki, port)]);

    let address = app.address.clone();
    eventually("readyz names the key", Duration::from_secs(10), || {
        let address = address.clone();
        async move {
            let res = reqwest::get(format!("{address}/readyz")).await.unwrap();
            let body: serde_json::Value = res.json().await.unwrap();
            body["session_store"] == "misconfigured"
                && body["session_store_problem"].as_str().is_some_and(|p| p.starts_with("session.redis_ca_file: "))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_tls_only_sentinels_primary_and_replica_through_a_failover() {
    let pki = Pki::new();
    let (primary, replica, sentinel) = (port_for_later(), port_for_later(), port_for_later());
    let mut servers = Servers(vec![tls_server(&pki, primary)]);
    // The replica follows over TLS (`--tls-replication yes`) and becomes the primary below.
    let mut args = pki.server_args(replica);
    args.extend(
        ["--replicaof", "127.0.0.1", &primary.to_string(), "--repl-diskless-sync-delay", "0"].map(String::from),
    );
    servers.0.push(redis_server(&args, &pki.dir.join(replica.to_string())));
    let dir = pki.dir.join(sentinel.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {sentinel}\nbind 127.0.0.1\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-replication yes\nsentinel monitor bffdata 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds bffdata 1000\nsentinel failover-timeout bffdata 3000\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        ),
    )
    .unwrap();
    servers.0.push(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel"),
    );
    // The sentinel learns of the replica from the primary's INFO (every ten seconds).
    blocking_eventually("the TLS sentinel knows the primary and its synced replica", Duration::from_secs(25), || {
        pki.cli(replica, &["info", "replication"]).contains("master_link_status:up")
            && pki.cli(sentinel, &["sentinel", "get-master-addr-by-name", "bffdata"]).contains(&primary.to_string())
            && pki.cli(sentinel, &["sentinel", "replicas", "bffdata"]).contains(&replica.to_string())
    });
    let tls = pki.tls("ca.pem", true);
    let sentinel_url = format!("rediss://127.0.0.1:{sentinel}");
    let app = spawn_app_with(AppOptions {
        tweak: Arc::new(move |c: &mut Config| {
            c.session.redis_url = None;
            c.session.redis_sentinels = vec![SecretString::from(sentinel_url.clone())];
            c.session.redis_sentinel_service = "bffdata".into();
            c.session.redis_tls = tls.clone();
        }),
        ..Default::default()
    })
    .await;

    let browser = signs_in_and_proxies(&app).await;
    let address = app.address.clone();
    eventually("the invalidation channel is up on the TLS primary", Duration::from_secs(10), || {
        let address = address.clone();
        async move { metric(&address, "bff_token_cache_channel_up").await == 1.0 }
    })
    .await;
    let keys = pki.cli(primary, &["--scan", "--pattern", &format!("{}*", app.prefix)]);
    assert!(keys.contains(":tokens"), "the token set is on the primary: {keys}");

    // The replica, promoted, is reached by TLS too, the session with it.
    blocking_eventually("the replica has every write", Duration::from_secs(10), || {
        pki.cli(replica, &["--scan", "--pattern", &format!("{}*", app.prefix)]).contains(":tokens")
    });
    let _ = servers.0[0].kill();
    let _ = servers.0[0].wait();
    let address = app.address.clone();
    eventually("calls succeed on the new primary", Duration::from_secs(45), || {
        let (browser, address) = (browser.clone(), address.clone());
        async move {
            browser.user().await.status() == 200 && metric(&address, "bff_token_cache_channel_up").await == 1.0
        }
    })
    .await;
    assert!(pki.cli(sentinel, &["sentinel", "get-master-addr-by-name", "bffdata"]).contains(&replica.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_tls_only_nodes() {
    let pki = Pki::new();
    let ports: Vec<u16> = (0..3).map(|_| port_for_later()).collect();
    let servers = Servers(
        ports
            .iter()
            .map(|&port| {
                let mut args = pki.server_args(port);
                args.extend(
                    ["--tls-cluster", "yes", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                        .into_iter()
                        .chain(["--cluster-node-timeout", "2000"])
                        .map(String::from),
                );
                redis_server(&args, &pki.dir.join(port.to_string()))
            })
            .collect(),
    );
    for &port in &ports {
        blocking_eventually("a TLS cluster node answers", Duration::from_secs(10), || {
            pki.cli(port, &["ping"]).contains("PONG")
        });
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", &pki.path("ca.pem"), "--cert", &pki.path("client.pem")])
        .args(["--key", &pki.path("client.key"), "--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    for &port in &ports {
        blocking_eventually("the TLS cluster is ok", Duration::from_secs(20), || {
            pki.cli(port, &["cluster", "info"]).contains("cluster_state:ok")
        });
    }
    let tls = pki.tls("ca.pem", true);
    let nodes: Vec<SecretString> =
        ports.iter().map(|p| SecretString::from(format!("rediss://127.0.0.1:{p}"))).collect();
    let app = spawn_app_with(AppOptions {
        tweak: Arc::new(move |c: &mut Config| {
            c.session.redis_url = None;
            c.session.redis_cluster_nodes = nodes.clone();
            c.session.redis_tls = tls.clone();
        }),
        ..Default::default()
    })
    .await;

    signs_in_and_proxies(&app).await;
    drop(servers);
}
