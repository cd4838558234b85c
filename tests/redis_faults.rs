//! The fault harness itself (a test that trusts a freeze or a restart must
//! know they happen), then the local-first store under those faults.
#![allow(clippy::unwrap_used)]

mod redis_support;

use std::time::{Duration, Instant};

use redis_support::Server;
use redis_support::faults::FaultProxy;

async fn ping(url: &str, within: Duration) -> bool {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(tokio::time::timeout(within, attempt).await, Ok(Some(_)))
}

#[tokio::test]
async fn the_harness_restarts_flushes_freezes_and_slows_a_server() {
    let mut server = Server::started();
    let mut conn = redis_support::raw(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    server.flushall();
    let gone: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None, "FLUSHALL emptied the server");

    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    server.restart();
    let mut conn = redis_support::raw(&server.url()).await;
    let gone: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None, "a restart without persistence loses every key");

    server.freeze();
    assert!(
        !ping(&server.url(), Duration::from_millis(300)).await,
        "a frozen server answers nothing"
    );
    server.thaw();
    assert!(
        ping(&server.url(), Duration::from_secs(2)).await,
        "a thawed server answers again"
    );

    let proxy = FaultProxy::start(server.port);
    assert!(ping(&proxy.url(), Duration::from_secs(2)).await);
    proxy.set_delay(Duration::from_millis(150));
    let started = Instant::now();
    assert!(ping(&proxy.url(), Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the proxy delays"
    );
    proxy.set_delay(Duration::ZERO);
    proxy.set_blackhole(true);
    assert!(
        !ping(&proxy.url(), Duration::from_millis(300)).await,
        "a black hole answers nothing"
    );
}

use tollgate::rate_limit::store::{Check, Decision, RedisStore, StoreError};
use tollgate::rate_limit::{KeyBy, Quota, RateKey, RateLimitLayer, RateLimitStore};

fn layer(store: RedisStore, quota: Quota) -> RateLimitLayer<RedisStore> {
    RateLimitLayer::builder("p", quota)
        .key(KeyBy::global())
        .store(store)
        .build()
        .unwrap()
}

async fn decide(layer: &RateLimitLayer<RedisStore>, key: &RateKey) -> Result<Decision, StoreError> {
    match layer.store().check(&layer.policies()[0], key) {
        Check::Ready(decision) => decision,
        Check::Pending(future) => future.await,
    }
}

async fn local_first(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_millis(50))
        .local_first(Duration::from_millis(50))
}

/// Polls `done` every 10 ms for at most `limit`.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

fn client(i: usize) -> RateKey {
    RateKey::text(format!("client-{i}"))
}

/// Issue 22, item 1: one sync carrying more keys than Redis answers within
/// the timeout made every later sync time out too; merged keys were charged
/// again on every retry, and a client that sent one request was refused on
/// a healthy second replica.
async fn a_flood_of_new_clients_is_merged_and_nobody_is_charged_twice(clients: usize) {
    let server = Server::started();
    let proxy = FaultProxy::start(server.port);
    let p = redis_support::prefix("flood");
    let quota = Quota::per_hour(1000).burst(10);
    let a = layer(local_first(&proxy.url(), &p).await, quota);
    // The flood arrives while replica a cannot reach Redis, so its first
    // sync afterwards carries every key at once.
    proxy.set_blackhole(true);
    for i in 0..clients {
        let decision = decide(&a, &client(i)).await.unwrap();
        assert!(decision.allowed, "client {i}'s first request");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_blackhole(false);
    // The backlog drains...
    let recovered = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || a.store().pending_keys() == 0).await,
        "{} of {clients} keys still unmerged after 20 s ({} syncs, {} failures)",
        a.store().pending_keys(),
        a.store().syncs(),
        a.store().sync_failures()
    );
    eprintln!(
        "{clients} keys merged {:?} after Redis returned",
        recovered.elapsed()
    );
    // ...and every admission reached Redis once: one admission of 1000/h puts
    // a key's TAT at most 3.6 s ahead of the server's clock (none at all once
    // its cost ran out: it was placed when it happened).
    let mut conn = redis_support::raw(&server.url()).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let server_now = secs * 1_000_000 + micros;
    for i in (0..clients).step_by(clients / 200) {
        let key = format!("{p}:p:{}", client(i).to_store_key());
        let tat: Option<u64> = redis::cmd("HGET")
            .arg(&key)
            .arg("t")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ahead = tat.unwrap_or(0).saturating_sub(server_now);
        assert!(
            ahead <= 3_600_000,
            "{key}: TAT {ahead} µs ahead: charged more than once"
        );
    }
    // A healthy second replica admits every one of them again.
    let b = layer(local_first(&server.url(), &p).await, quota);
    for i in (0..clients).step_by(clients / 200) {
        for request in 0..3 {
            let decision = decide(&b, &client(i)).await.unwrap();
            assert!(
                decision.allowed,
                "client {i}, request {request} on replica b: {decision:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_new_clients_are_merged_once() {
    a_flood_of_new_clients_is_merged_and_nobody_is_charged_twice(20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_new_clients_are_merged_once() {
    a_flood_of_new_clients_is_merged_and_nobody_is_charged_twice(100_000).await;
}
