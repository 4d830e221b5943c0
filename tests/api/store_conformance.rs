//! One conformance suite for every store: Redis and memory must behave the same.

use std::time::Duration;

use bff::store::{CasOutcome, MemoryStore, RedisStore, Store};
use secrecy::SecretString;

use support::{REDIS_URL, random_id};

fn stores() -> Vec<(Store, String)> {
    let redis = RedisStore::new(&SecretString::from(REDIS_URL.to_string()), Duration::from_secs(2)).expect("redis url");
    vec![
        (Store::memory(MemoryStore::new()), format!("conf:{}:", random_id())),
        (Store::redis(redis), format!("bfftest:conf:{}:", random_id())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_with_their_time_to_live() {
    for (store, p) in stores() {
        let kind = store.kind();
        let key = format!("{p}a");
        assert_eq!(store.get(&key).await.expect("get"), None, "{kind}");
        store.set(&key, b"v1", Duration::from_secs(60)).await.expect("set");
        assert_eq!(store.get(&key).await.expect("get").as_deref(), Some(&b"v1"[..]), "{kind}");
        let (value, ttl) = store.get_with_ttl(&key).await.expect("get_with_ttl").expect("present");
        assert_eq!(value, b"v1");
        assert!(ttl > Duration::from_secs(55) && ttl <= Duration::from_secs(60), "{kind}: {ttl:?}");
        store.expire(std::slice::from_ref(&key), Duration::from_secs(120)).await.expect("expire");
        let (_, ttl) = store.get_with_ttl(&key).await.expect("ttl").expect("present");
        assert!(ttl > Duration::from_secs(115), "{kind}");
        store.delete(std::slice::from_ref(&key)).await.expect("delete");
        assert_eq!(store.get(&key).await.expect("get"), None, "{kind}");
        assert!(store.get_with_ttl(&key).await.expect("get").is_none(), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_expire() {
    for (store, p) in stores() {
        let key = format!("{p}short");
        store.set(&key, b"v", Duration::from_millis(100)).await.expect("set");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(store.get(&key).await.expect("get"), None, "{}", store.kind());
        assert!(!store.set_if_exists(&key, b"x", Duration::from_secs(1)).await.expect("xx"), "{}", store.kind());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes() {
    for (store, p) in stores() {
        let kind = store.kind();
        let key = format!("{p}cond");
        assert!(!store.set_if_exists(&key, b"a", Duration::from_secs(10)).await.expect("xx"), "{kind}");
        assert!(store.set_if_absent(&key, b"a", Duration::from_secs(10)).await.expect("nx"), "{kind}");
        assert!(!store.set_if_absent(&key, b"b", Duration::from_secs(10)).await.expect("nx"), "{kind}: taken");
        assert!(store.set_if_exists(&key, b"c", Duration::from_secs(10)).await.expect("xx"), "{kind}");
        assert_eq!(store.get(&key).await.expect("get").as_deref(), Some(&b"c"[..]), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_hands_a_value_out_once() {
    for (store, p) in stores() {
        let key = format!("{p}once");
        store.set(&key, b"pending", Duration::from_secs(10)).await.expect("set");
        let (a, b) = tokio::join!(store.take(&key), store.take(&key));
        let taken: Vec<_> = [a.expect("take"), b.expect("take")].into_iter().flatten().collect();
        assert_eq!(taken, vec![b"pending".to_vec()], "{}: exactly one taker", store.kind());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_on_a_prefix_keeps_the_time_to_live() {
    for (store, p) in stores() {
        let kind = store.kind();
        let key = format!("{p}cas");
        assert_eq!(store.replace_if_prefix(&key, b"v1.", b"v2.x").await.expect("cas"), CasOutcome::Missing, "{kind}");
        store.set(&key, b"v1.data", Duration::from_secs(30)).await.expect("set");
        assert_eq!(store.replace_if_prefix(&key, b"v9.", b"v10.x").await.expect("cas"), CasOutcome::Conflict, "{kind}");
        assert_eq!(store.replace_if_prefix(&key, b"v1.", b"v2.new").await.expect("cas"), CasOutcome::Written, "{kind}");
        let (value, ttl) = store.get_with_ttl(&key).await.expect("get").expect("present");
        assert_eq!(value, b"v2.new", "{kind}");
        assert!(ttl > Duration::from_secs(25), "{kind}: ttl kept, got {ttl:?}");
        // Two writers that both read v2: one wins.
        let (a, b) = tokio::join!(
            store.replace_if_prefix(&key, b"v2.", b"v3.a"),
            store.replace_if_prefix(&key, b"v2.", b"v3.b")
        );
        let mut outcomes = [a.expect("cas"), b.expect("cas")];
        outcomes.sort_by_key(|o| *o == CasOutcome::Written);
        assert_eq!(outcomes, [CasOutcome::Conflict, CasOutcome::Written], "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_released_and_renewed_by_their_owner_only() {
    for (store, p) in stores() {
        let kind = store.kind();
        let key = format!("{p}lock");
        assert!(store.set_if_absent(&key, b"owner-a", Duration::from_millis(300)).await.expect("lock"));
        assert!(!store.delete_if_equals(&key, b"owner-b").await.expect("unlock"), "{kind}: not b's lock");
        assert!(!store.expire_if_equals(&key, b"owner-b", Duration::from_secs(5)).await.expect("renew"), "{kind}");
        assert!(store.expire_if_equals(&key, b"owner-a", Duration::from_secs(5)).await.expect("renew"), "{kind}");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(store.get(&key).await.expect("get").is_some(), "{kind}: the renewed lease outlives the first");
        assert!(store.delete_if_equals(&key, b"owner-a").await.expect("unlock"), "{kind}");
        assert!(store.get(&key).await.expect("get").is_none(), "{kind}");
        // A lease that is not renewed runs out: a crashed holder does not block forever.
        assert!(store.set_if_absent(&key, b"crashed", Duration::from_millis(100)).await.expect("lock"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.set_if_absent(&key, b"next", Duration::from_secs(5)).await.expect("lock"), "{kind}");
        store.delete(&[key]).await.expect("cleanup");
    }
}

/// A key's remaining life as Redis reports it (`PTTL`), read past the store: the store's own
/// `get_with_ttl` reads values, not sets. `None` for the memory store, which tells a set's life
/// only by when it ends.
async fn redis_ttl(store: &Store, key: &str) -> Option<Duration> {
    if store.kind() != "redis" {
        return None;
    }
    let client = redis::Client::open(REDIS_URL).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to the test Redis");
    let ms: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.expect("PTTL");
    assert!(ms >= 0, "{key} has a time to live (PTTL {ms})");
    Some(Duration::from_millis(ms.unsigned_abs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_collect_members_and_never_shorten_their_life() {
    for (store, p) in stores() {
        let kind = store.kind();
        let key = format!("{p}set");
        assert!(store.set_members(&key).await.expect("members").is_empty(), "{kind}");
        store.set_add(&key, "a", Duration::from_secs(60)).await.expect("add");
        store.set_add(&key, "b", Duration::from_millis(100)).await.expect("add");
        // The shorter life of the second member leaves the set's as it was: Redis says so...
        if let Some(ttl) = redis_ttl(&store, &key).await {
            assert!(ttl > Duration::from_secs(55), "{kind}: the set's life was shortened to {ttl:?}");
        }
        // ...and both stores keep the set past it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut members = store.set_members(&key).await.expect("members");
        members.sort();
        assert_eq!(members, ["a", "b"], "{kind}: the set outlives its shortest-lived member");
        // A longer life extends it.
        store.set_add(&key, "a", Duration::from_secs(120)).await.expect("add");
        if let Some(ttl) = redis_ttl(&store, &key).await {
            assert!(ttl > Duration::from_secs(115), "{kind}: the set's life was not extended: {ttl:?}");
        }
        store.set_remove(&key, "a").await.expect("remove");
        assert_eq!(store.set_members(&key).await.expect("members"), ["b"], "{kind}");
        store.set_remove(&key, "b").await.expect("remove");
        assert!(store.set_members(&key).await.expect("members").is_empty(), "{kind}");
        store.set_add(&key, "c", Duration::from_millis(100)).await.expect("add");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.set_members(&key).await.expect("members").is_empty(), "{kind}: expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_answer_ping() {
    for (store, _) in stores() {
        store.ping().await.expect("ping");
    }
    let dead = RedisStore::new(
        &SecretString::from(format!("redis://127.0.0.1:{}", support::dead_port())),
        Duration::from_millis(500),
    )
    .expect("url");
    let started = std::time::Instant::now();
    assert!(Store::redis(dead).ping().await.is_err());
    assert!(started.elapsed() < Duration::from_secs(2), "a dead Redis fails within its timeout");
}
