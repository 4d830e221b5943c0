//! bff on a real Redis Cluster: three primaries with a replica each, started on loopback by the
//! test (`redis-server --cluster-enabled yes`, `redis-cli --cluster create`). The two-instance
//! storm runs on it, then the primary holding the session is killed: calls may fail with 503
//! during the failover window, never otherwise, and the session survives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use secrecy::SecretString;

use support::{
    AppOptions, blocking_eventually, eventually, metric, port_for_later, report, spawn_app_with, spawn_second_instance,
    temp_dir,
};

struct Node {
    port: u16,
    child: Child,
}

struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A number from a server's `INFO <section>` (0 when absent).
fn info_number(port: u16, section: &str, name: &str) -> u64 {
    let info = redis_cli(port, &["info", section]);
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok()).unwrap_or(0)
}

/// Waits until `replica` has applied every write `primary` has taken so far, so a failover
/// loses none of them. (`WAIT` cannot tell: it waits for the writes made on the connection it
/// runs on, and a new redis-cli connection has made none, so it returns at once.)
fn until_replicated(primary: u16, replica: u16) {
    let written = info_number(primary, "replication", "master_repl_offset");
    assert!(written > 0, "the primary {primary} reports its replication offset");
    blocking_eventually(
        &format!("the replica {replica} applies the primary's writes up to offset {written}"),
        Duration::from_secs(10),
        || info_number(replica, "replication", "slave_repl_offset") >= written,
    );
}

impl RedisCluster {
    fn start(nodes: usize) -> RedisCluster {
        let dir = temp_dir("cluster");
        let nodes: Vec<Node> = (0..nodes)
            .map(|_| {
                let port = port_for_later();
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).unwrap();
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
                    .args(["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir"])
                    .arg(&node_dir)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server (apt-get install -y redis-server)");
                Node { port, child }
            })
            .collect();
        let cluster = RedisCluster { nodes, dir };
        let limit = Duration::from_secs(20);
        for node in &cluster.nodes {
            blocking_eventually(&format!("redis node {} starts", node.port), limit, || {
                redis_cli(node.port, &["ping"]).contains("PONG")
            });
        }
        let addrs: Vec<String> = cluster.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        for node in &cluster.nodes {
            blocking_eventually(&format!("the cluster is ok at {}", node.port), limit, || {
                redis_cli(node.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        // A replica that never synced is not allowed to take over: wait for every link.
        for node in &cluster.nodes {
            blocking_eventually(&format!("node {} is a primary or a synced replica", node.port), limit, || {
                let info = redis_cli(node.port, &["info", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// The port of the primary serving `key`.
    fn primary_for(&self, key: &str) -> u16 {
        let slot: u16 = redis_cli(self.nodes[0].port, &["cluster", "keyslot", key]).trim().parse().unwrap();
        let nodes = redis_cli(self.nodes[0].port, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let covers = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => (a.parse::<u16>().unwrap_or(1) <= slot) && (slot <= b.parse::<u16>().unwrap_or(0)),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if covers {
                let addr = fields[1].split('@').next().unwrap();
                return addr.rsplit(':').next().unwrap().parse().unwrap();
            }
        }
        panic!("no primary for slot {slot}");
    }

    /// The port of the replica following the primary on `primary`.
    fn replica_of(&self, primary: u16) -> u16 {
        let nodes = redis_cli(self.nodes[0].port, &["cluster", "nodes"]);
        let port = |addr: &str| -> u16 { addr.split('@').next().unwrap().rsplit(':').next().unwrap().parse().unwrap() };
        let lines: Vec<Vec<&str>> =
            nodes.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.len() >= 8).collect();
        let id = lines.iter().find(|f| port(f[1]) == primary).map(|f| f[0]).expect("the primary in CLUSTER NODES");
        lines.iter().find(|f| f[2].contains("slave") && f[3] == id).map(|f| port(f[1])).expect("its replica")
    }

    fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bff_runs_on_a_redis_cluster_and_rides_out_a_primary_failover() {
    let mut cluster = RedisCluster::start(6);
    let nodes = cluster.urls();
    let app = spawn_app_with(AppOptions {
        access_token_ttl: Duration::from_secs(2),
        tweak: Arc::new(move |c: &mut bff::config::Config| {
            c.session.redis_url = None;
            c.session.redis_cluster_nodes = nodes.iter().map(|u| SecretString::from(u.clone())).collect();
        }),
        ..Default::default()
    })
    .await;
    let second = spawn_second_instance(&app).await;
    // No per-node tracking here: every call reads its token set, and the metrics say so.
    assert_eq!(metric(&app.address, "bff_token_cache_mode{mode=\"per_call_read\"}").await, 1.0);
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(browser.user().await.status(), 200);

    // The two-instance storm, on the cluster.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.idp.controls.set_access_token_ttl(Duration::from_secs(300));
    let calls = (0..100).map(|i| {
        let b = browser.at(if i % 2 == 0 { &app.address } else { &second });
        async move { b.api(Method::GET, "/api/echo").await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    report(&format!(
        "cluster: storm of 100 calls over 2 instances on a 3+3 Redis Cluster: {failed} failed, {} refresh(es)",
        app.token_requests("refresh_token")
    ));
    assert_eq!(failed, 0, "{statuses:?}");
    assert_eq!(app.token_requests("refresh_token"), 1);
    assert_eq!(app.token_requests("reuse"), 0);

    // Kill the primary that holds this session's keys (one hash tag, one slot).
    let prefix = app.prefix.clone();
    let any_key = {
        let mut found = None;
        for node in &cluster.nodes {
            let keys = redis_cli(node.port, &["keys", &format!("{prefix}*:tokens")]);
            if let Some(k) = keys.lines().map(str::trim).find(|k| !k.is_empty()) {
                found = Some(k.to_string());
                break;
            }
        }
        found.expect("the token set is in the cluster")
    };
    let victim = cluster.primary_for(&any_key);
    // Every write so far has reached the replica before the primary dies.
    until_replicated(victim, cluster.replica_of(victim));
    cluster.kill(victim);
    let killed_at = Instant::now();

    let mut outcomes: BTreeMap<u16, u32> = BTreeMap::new();
    let mut first_failure = None;
    let mut last_failure = None;
    let mut healthy_streak = 0;
    while killed_at.elapsed() < Duration::from_secs(45) && healthy_streak < 20 {
        let status = browser.api(Method::GET, "/api/echo").await.status().as_u16();
        *outcomes.entry(status).or_default() += 1;
        if status == 200 {
            healthy_streak += 1;
        } else {
            healthy_streak = 0;
            first_failure.get_or_insert(killed_at.elapsed());
            last_failure = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = match (first_failure, last_failure) {
        (Some(a), Some(b)) => format!(
            "{:.1} s (from {:.1} s to {:.1} s after the kill)",
            (b - a).as_secs_f64(),
            a.as_secs_f64(),
            b.as_secs_f64()
        ),
        _ => "none".into(),
    };
    report(&format!("cluster: primary of the session killed: outcomes {outcomes:?}; 503 window {window}"));
    assert!(healthy_streak >= 20, "calls succeed again after the failover: {outcomes:?}");
    assert!(outcomes.keys().all(|s| *s == 200 || *s == 503), "only 503 during the failover: {outcomes:?}");
    let b = browser.clone();
    eventually("the session is still there", Duration::from_secs(5), || {
        let b = b.clone();
        async move { b.user().await.status() == 200 }
    })
    .await;
}

/// A primary, a replica and a sentinel on loopback.
struct SentinelSetup {
    children: Vec<Child>,
    primary: u16,
    replica: u16,
    sentinel: u16,
    dir: PathBuf,
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_process(args: &[&str]) -> Child {
    Command::new("redis-server").args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("redis-server")
}

impl SentinelSetup {
    fn start() -> SentinelSetup {
        let dir = temp_dir("sentinel");
        let (primary, replica, sentinel) = (port_for_later(), port_for_later(), port_for_later());
        // Each server in a directory of its own: nothing it writes (the RDB a replica receives
        // when it does not load it diskless) lands in the working directory, the repository.
        let server = |port: u16, extra: &[&str]| {
            let own = dir.join(port.to_string());
            std::fs::create_dir_all(&own).unwrap();
            let own = own.to_str().unwrap().to_string();
            let port = port.to_string();
            let args = ["--port", &port, "--dir", &own, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
            redis_process(&[&args[..], &["--repl-diskless-sync-delay", "0"], extra].concat())
        };
        let mut children = vec![server(primary, &[])];
        children.push(server(replica, &["--replicaof", "127.0.0.1", &primary.to_string()]));
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\nsentinel monitor bffdata 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds bffdata 1000\nsentinel failover-timeout bffdata 3000\n"
            ),
        )
        .unwrap();
        children.push(redis_process(&[conf.to_str().unwrap(), "--sentinel"]));
        let setup = SentinelSetup { children, primary, replica, sentinel, dir };
        // The sentinel learns of the replica from the primary's INFO (every ten seconds): until it
        // has, it could not fail over.
        blocking_eventually("the sentinel set-up is ready", Duration::from_secs(20), || {
            redis_cli(replica, &["info", "replication"]).contains("master_link_status:up")
                && redis_cli(sentinel, &["sentinel", "get-master-addr-by-name", "bffdata"])
                    .contains(&primary.to_string())
                && redis_cli(sentinel, &["sentinel", "replicas", "bffdata"]).contains(&replica.to_string())
        });
        setup
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bff_finds_its_redis_through_sentinel_and_follows_a_failover() {
    let mut setup = SentinelSetup::start();
    let sentinel_url = format!("redis://127.0.0.1:{}", setup.sentinel);
    let app = spawn_app_with(AppOptions {
        tweak: Arc::new(move |c: &mut bff::config::Config| {
            c.session.redis_url = None;
            c.session.redis_sentinels = vec![SecretString::from(sentinel_url.clone())];
            c.session.redis_sentinel_service = "bffdata".into();
        }),
        ..Default::default()
    })
    .await;
    let browser = app.browser();
    browser.login_as("alice").await;
    assert_eq!(browser.api(Method::GET, "/api/echo").await.status(), 200);
    // Every write so far has reached the replica before the primary dies.
    until_replicated(setup.primary, setup.replica);

    let primary = setup.primary;
    let _ = setup.children[0].kill();
    let _ = setup.children[0].wait();
    let killed_at = Instant::now();
    let mut outcomes: BTreeMap<u16, u32> = BTreeMap::new();
    let mut healthy_streak = 0;
    while killed_at.elapsed() < Duration::from_secs(45) && healthy_streak < 10 {
        let status = browser.api(Method::GET, "/api/echo").await.status().as_u16();
        *outcomes.entry(status).or_default() += 1;
        healthy_streak = if status == 200 { healthy_streak + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report(&format!(
        "sentinel: primary killed: outcomes {outcomes:?}, healthy again within {:.1} s",
        killed_at.elapsed().as_secs_f64()
    ));
    assert!(healthy_streak >= 10, "calls succeed on the new primary: {outcomes:?}");
    assert!(outcomes.keys().all(|s| *s == 200 || *s == 503), "only 503 while the primary moves: {outcomes:?}");
    assert!(
        !redis_cli(setup.sentinel, &["sentinel", "get-master-addr-by-name", "bffdata"]).contains(&primary.to_string())
    );
    assert_eq!(browser.user().await.status(), 200, "the session moved with the data");

    // The token cache followed the primary: its channel is up again, a second instance caches
    // the session there, and refuses it once the first instance logs it out on the new primary.
    let cookie =
        format!("{0}={1}", app.config.session.cookie_name, browser.cookie(&app.config.session.cookie_name).unwrap());
    let second = spawn_second_instance(&app).await;
    for base in [app.address.clone(), second.clone()] {
        eventually("the invalidation channel is up on the new primary", Duration::from_secs(15), || {
            let base = base.clone();
            async move { metric(&base, "bff_token_cache_channel_up").await == 1.0 }
        })
        .await;
    }
    let on_second = browser.at(&second);
    let hits = metric(&second, "bff_token_cache_hits_total").await;
    assert_eq!(on_second.api(Method::GET, "/api/echo").await.status(), 200);
    assert_eq!(on_second.api(Method::GET, "/api/echo").await.status(), 200);
    assert!(metric(&second, "bff_token_cache_hits_total").await > hits, "cached on the second instance");
    assert_eq!(browser.logout().await.status(), 303);
    let (url, seen) = (on_second.url("/api/echo"), app.upstream.seen.clone());
    eventually("the second instance refuses without calling the upstream", Duration::from_secs(5), || {
        let (url, cookie, seen) = (url.clone(), cookie.clone(), seen.clone());
        async move {
            let before = seen.lock().unwrap().len();
            let res =
                reqwest::Client::new().get(url).header("cookie", cookie).header("x-csrf", "1").send().await.unwrap();
            res.status() == 401 && seen.lock().unwrap().len() == before
        }
    })
    .await;
}
