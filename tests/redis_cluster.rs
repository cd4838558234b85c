//! The Redis store on a real Redis Cluster: three primaries on loopback ports,
//! started by each test with `redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create` (both from PATH), killed when it ends.
#![allow(clippy::unwrap_used)]

mod redis_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{HeaderName, Request, StatusCode};
use redis_support::{Cluster, eventually, ok_service, prefix};
use tollgate::rate_limit::store::RedisStore;
use tollgate::rate_limit::{KeyBy, OnStoreError, Quota, RateLimitLayer};
use tower::{Layer, ServiceExt};

const KEY: HeaderName = HeaderName::from_static("x-key");

fn layer(store: RedisStore, quota: Quota) -> RateLimitLayer<RedisStore> {
    RateLimitLayer::builder("p", quota)
        .key(KeyBy::header(KEY))
        .store(store)
        .build()
        .unwrap()
}

/// The status of one request for `key`, and whether it carried rate-limit
/// headers (a failed-open request does not).
async fn status(layer: &RateLimitLayer<RedisStore>, key: &str) -> (StatusCode, bool) {
    let req = Request::builder().header(KEY, key).body(()).unwrap();
    let res = layer.layer(ok_service()).oneshot(req).await.unwrap();
    (res.status(), res.headers().contains_key("ratelimit"))
}

/// The Redis key of header value `value` under policy `p` and `prefix`.
fn redis_key(prefix: &str, value: &str) -> String {
    format!(
        "{prefix}:p:{}",
        tollgate::rate_limit::RateKey::text(value).to_store_key()
    )
}

/// Header values whose Redis keys (under `prefix`) fall on every node,
/// `per_node` on each, and the port of the node that owns each.
async fn spread_keys(
    cluster: &Cluster,
    prefix: &str,
    per_node: usize,
) -> (Vec<String>, HashMap<String, u16>) {
    let mut owners = HashMap::new();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    let mut keys = Vec::new();
    for i in 0..500 {
        let key = format!("user-{i}");
        let owner = cluster.owner(&redis_key(prefix, &key)).await;
        let count = counts.entry(owner).or_default();
        if *count < per_node {
            *count += 1;
            keys.push(key.clone());
            owners.insert(key, owner);
        }
        if counts.len() == 3 && counts.values().all(|&n| n == per_node) {
            return (keys, owners);
        }
    }
    panic!("no keys on every node: {counts:?}");
}

#[tokio::test]
async fn two_exact_replicas_admit_exactly_the_burst_of_each_key_on_every_shard() {
    let cluster = Cluster::start();
    let p = prefix("cluster-exact");
    let (keys, _) = spread_keys(&cluster, &p, 4).await;
    let connect = |url: String| {
        let p = p.clone();
        async move {
            RedisStore::connect(&url)
                .await
                .unwrap()
                .prefix(p)
                .timeout(Duration::from_secs(1))
        }
    };
    let a = layer(connect(cluster.url(0)).await, Quota::per_hour(5));
    let b = layer(connect(cluster.url(1)).await, Quota::per_hour(5));
    assert!(a.store().is_cluster() && b.store().is_cluster());
    for key in &keys {
        let mut ok = 0;
        for i in 0..12 {
            let replica = if i % 2 == 0 { &a } else { &b };
            if status(replica, key).await.0 == StatusCode::OK {
                ok += 1;
            }
        }
        assert_eq!(
            ok, 5,
            "{key}: two replicas together admit exactly the burst"
        );
    }
    assert_eq!(a.store_failures() + b.store_failures(), 0);
    for node in 0..3 {
        let held = cluster.keys_on(node, &format!("{p}:*")).await;
        assert!(!held.is_empty(), "node {node} holds none of the keys");
    }
}

#[tokio::test]
async fn any_node_url_a_cluster_url_or_a_seed_list_reaches_every_shard() {
    let cluster = Cluster::start();
    let p = prefix("cluster-urls");
    let (keys, _) = spread_keys(&cluster, &p, 4).await;
    let stores = [
        RedisStore::connect(&cluster.url(2)).await.unwrap(),
        RedisStore::connect(&format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            cluster.port(0),
            cluster.port(1)
        ))
        .await
        .unwrap(),
        RedisStore::connect_cluster([cluster.url(1)]).await.unwrap(),
    ];
    for (i, store) in stores.into_iter().enumerate() {
        assert!(store.is_cluster());
        let layer = layer(
            store
                .prefix(format!("{p}:{i}"))
                .timeout(Duration::from_secs(1)),
            Quota::per_hour(2),
        );
        for key in &keys {
            assert_eq!(status(&layer, key).await, (StatusCode::OK, true), "{key}");
            assert_eq!(status(&layer, key).await, (StatusCode::OK, true), "{key}");
            assert_eq!(
                status(&layer, key).await.0,
                StatusCode::TOO_MANY_REQUESTS,
                "{key}"
            );
        }
        assert_eq!(layer.store_failures(), 0, "no MOVED reached the layer");
    }
}

/// The figure of the module docs: 3 replicas, 100/s, burst 10, 50 ms, one key
/// driven at ten times its rate for ten seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_replicas_at_ten_times_the_rate_stay_within_the_bound() {
    const REPLICAS: u64 = 3;
    const RATE: u64 = 100;
    const BURST: u64 = 10;
    let interval = Duration::from_millis(50);
    let cluster = Cluster::start();
    let p = prefix("cluster-bound");
    let mut layers = Vec::new();
    for node in 0..REPLICAS as usize {
        let store = RedisStore::connect(&cluster.url(node))
            .await
            .unwrap()
            .prefix(&p)
            .local_first(interval);
        layers.push(layer(
            store,
            Quota::per_second(RATE as u32).burst(BURST as u32),
        ));
    }
    let run = Duration::from_secs(10);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for layer in layers.clone() {
        tasks.spawn(async move {
            // 10× the rate in total: one request per 3 ms on each replica.
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            let (mut admitted, mut sent) = (0u64, 0u64);
            while started.elapsed() < run {
                tick.tick().await;
                sent += 1;
                if status(&layer, "hot").await.0 == StatusCode::OK {
                    admitted += 1;
                }
            }
            (admitted, sent)
        });
    }
    let (mut admitted, mut sent) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (a, s) = result.unwrap();
        admitted += a;
        sent += s;
    }
    let elapsed = started.elapsed();
    let quota = BURST + RATE * elapsed.as_millis() as u64 / 1000;
    // I = the interval plus a sync round trip (generous on a busy machine).
    let i_ms = interval.as_millis() as u64 + 20;
    let bound = (REPLICAS - 1) * (BURST + RATE * i_ms / 1000);
    println!(
        "local-first, {REPLICAS} replicas, {sent} requests in {elapsed:?}: admitted {admitted}, \
         quota {quota}, bound +{bound}"
    );
    assert!(
        sent >= 8 * RATE * 10,
        "the drive was too slow: {sent} requests"
    );
    assert!(admitted <= quota + bound, "{admitted} > {quota} + {bound}");
    assert!(
        admitted * 10 >= quota * 9,
        "{admitted}: more than 10 % under the quota"
    );
    assert!(
        admitted * 10 <= quota * 11,
        "{admitted}: more than 10 % over the quota"
    );
    for layer in &layers {
        assert_eq!(layer.store().sync_failures(), 0);
    }
}

#[tokio::test]
async fn a_limit_reached_on_one_replica_refuses_on_the_others_within_one_interval() {
    let interval = Duration::from_millis(50);
    let cluster = Cluster::start();
    let p = prefix("cluster-propagation");
    let (keys, _) = spread_keys(&cluster, &p, 3).await;
    let quota = Quota::per_hour(200);
    let mut replicas = Vec::new();
    for node in 0..3 {
        let store = RedisStore::connect(&cluster.url(node))
            .await
            .unwrap()
            .prefix(&p)
            .local_first(interval);
        replicas.push(layer(store, quota));
    }
    // Replica 0 spends every key's burst, on its own state.
    for key in &keys {
        for _ in 0..200 {
            assert_eq!(status(&replicas[0], key).await.0, StatusCode::OK);
        }
        assert_eq!(
            status(&replicas[0], key).await.0,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let synced = replicas[0].store().syncs();
    assert!(
        eventually(Duration::from_secs(2), || replicas[0].store().syncs()
            > synced)
        .await,
        "replica 0 did not sync"
    );
    // The others, which never saw the keys, get a request per key every
    // millisecond: alone they would admit 200 each; they refuse after their
    // first sync.
    for replica in &replicas[1..] {
        let started = Instant::now();
        let mut admitted: HashMap<&str, u32> = HashMap::new();
        let mut refused_after: HashMap<&str, Duration> = HashMap::new();
        while refused_after.len() < keys.len() && started.elapsed() < Duration::from_secs(1) {
            for key in &keys {
                if refused_after.contains_key(key.as_str()) {
                    continue;
                }
                match status(replica, key).await.0 {
                    StatusCode::OK => *admitted.entry(key).or_default() += 1,
                    _ => {
                        refused_after.insert(key, started.elapsed());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            refused_after.len(),
            keys.len(),
            "not refused everywhere: {refused_after:?}"
        );
        let slowest = refused_after.values().max().unwrap();
        // One interval, plus a sync round trip and scheduling on a busy
        // machine; without syncs it would take 200 ms.
        assert!(
            *slowest <= interval + Duration::from_millis(60),
            "refused only after {slowest:?}"
        );
        let most = admitted.values().max().copied().unwrap_or(0);
        assert!(most <= 100, "a replica admitted {most} of a spent key");
        assert_eq!(replica.store().sync_failures(), 0);
    }
}

#[tokio::test]
async fn local_first_sync_is_one_pipeline_per_node_per_interval() {
    let interval = Duration::from_millis(50);
    let cluster = Cluster::start();
    let p = prefix("cluster-trips");
    // A timeout no sync of this test reaches on a loaded machine (a timed-out
    // batch is sent again in smaller ones: more round trips, by design).
    let store = RedisStore::connect(&cluster.url(0))
        .await
        .unwrap()
        .prefix(&p)
        .timeout(Duration::from_millis(250))
        .local_first(interval);
    // Never refused, and each admission keeps its key for 3.6 s.
    let layer = layer(store, Quota::per_hour(1_000).burst(1_000_000));
    // Until the replica count is known, a new key asks Redis first.
    let deadline = Instant::now() + Duration::from_secs(5);
    while layer.store().replicas().is_none() {
        assert!(Instant::now() < deadline, "the store never registered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    let before = layer.store().round_trips();
    let started = Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        for key in &keys {
            assert_eq!(status(&layer, key).await.0, StatusCode::OK);
            requests += 1;
        }
        tokio::task::yield_now().await;
    }
    let trips = layer.store().round_trips() - before;
    assert_eq!(layer.store().sync_failures(), 0);
    let intervals = (started.elapsed().as_millis() / interval.as_millis()) as u64 + 1;
    println!(
        "{requests} requests over 300 keys on 3 nodes: {trips} round trips in {intervals} intervals"
    );
    // One pipeline per node per interval, plus a slot-map read now and then.
    assert!(
        trips <= 3 * intervals + 2,
        "{trips} round trips in {intervals} intervals"
    );
    assert!(
        trips >= 3 * (intervals / 2),
        "{trips}: the keys were not synced"
    );
    assert_eq!(layer.store().sync_failures(), 0);
    for node in 0..3 {
        assert!(
            !cluster.keys_on(node, &format!("{p}:*")).await.is_empty(),
            "node {node}"
        );
    }
}

#[tokio::test]
async fn a_dead_node_fails_only_its_own_keys() {
    let mut cluster = Cluster::start();
    let p = prefix("cluster-dead");
    let quota = Quota::per_hour(1_000);
    let mut layers = Vec::new();
    let mut first = Instant::now();
    for mode in ["open", "closed", "local"] {
        let p = format!("{p}:{mode}");
        let (keys, owners) = spread_keys(&cluster, &p, 4).await;
        let store = RedisStore::connect(&cluster.url(0))
            .await
            .unwrap()
            .prefix(p)
            .timeout(Duration::from_millis(200));
        let store = if mode == "local" {
            store.local_first(Duration::from_millis(50))
        } else {
            store
        };
        let on_error = if mode == "closed" {
            OnStoreError::FailClosed
        } else {
            OnStoreError::FailOpen
        };
        let layer = RateLimitLayer::builder("p", quota)
            .key(KeyBy::header(KEY))
            .on_store_error(on_error)
            .store(store)
            .build()
            .unwrap();
        if mode == "local" {
            // Until the replica count is confirmed, new keys ask Redis.
            let deadline = Instant::now() + Duration::from_secs(5);
            while layer.store().replicas().is_none() {
                assert!(Instant::now() < deadline, "the store never registered");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        first = Instant::now();
        for key in &keys {
            assert_eq!(
                status(&layer, key).await,
                (StatusCode::OK, true),
                "{mode} {key}"
            );
        }
        layers.push((mode, layer, keys, owners));
    }
    let local = &layers[2].1;
    assert!(
        eventually(Duration::from_secs(2), || local.store().syncs() >= 1).await,
        "local-first synced before the node died"
    );

    let dead = cluster.port(2);
    cluster.kill(2);
    let failures = local.store().sync_failures();
    for round in 0..3 {
        for (mode, layer, keys, owners) in &layers {
            for key in keys {
                let started = Instant::now();
                let got = status(layer, key).await;
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{:?}",
                    started.elapsed()
                );
                let expected = match (*mode, owners[key] == dead) {
                    (_, false) | ("local", true) => (StatusCode::OK, true),
                    ("open", true) => (StatusCode::OK, false),
                    (_, true) => (StatusCode::SERVICE_UNAVAILABLE, false),
                };
                assert_eq!(
                    got,
                    expected,
                    "round {round}, {mode}, {key} on the dead node: {}",
                    owners[key] == dead
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (mode, layer, _, _) in &layers[..2] {
        assert_eq!(
            layer.store_failures(),
            3 * 4,
            "{mode}: the dead node's 4 keys, 3 times"
        );
    }
    assert_eq!(
        local.store_failures(),
        0,
        "local-first decides every request"
    );
    assert!(
        eventually(Duration::from_secs(2), || local.store().sync_failures()
            > failures)
        .await,
        "local-first counts the dead node's failed syncs"
    );
    // The live nodes still get local-first's syncs: their keys' shared
    // state holds every admission (1 before the kill + 3 rounds).
    let (_, _, keys, owners) = &layers[2];
    tokio::time::sleep(Duration::from_millis(200)).await;
    for key in keys.iter().filter(|k| owners[*k] != dead) {
        let node = if owners[key] == cluster.port(0) { 0 } else { 1 };
        let mut conn_node = redis_support::raw(&cluster.url(node)).await;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(redis_key(&format!("{p}:local"), key))
            .query_async(&mut conn_node)
            .await
            .unwrap();
        // 4 admissions at one per 3.6 s: full again 14.4 s after the first.
        let expected = 14_400 - first.elapsed().as_millis() as i64;
        assert!(
            ttl > expected - 1_000 && ttl <= expected + 1_000,
            "{key}: {ttl}, {expected}"
        );
    }
}
