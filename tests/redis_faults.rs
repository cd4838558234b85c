//! The fault harness itself (a test that trusts a freeze or a restart must
//! know they happen), then the local-first store under those faults.
#![allow(clippy::unwrap_used)]

mod redis_support;

use std::time::{Duration, Instant};

use redis_support::faults::FaultProxy;
use redis_support::{Server, eventually};

/// These tests load the machine and measure time and CPU: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
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

/// Each sampled client's single admission of 1000/h reached Redis at most
/// once: its key's TAT is at most 3.6 s ahead of the server's clock (none at
/// all once its cost ran out: it was placed when it happened).
async fn charged_once(url: &str, prefix: &str, sample: impl Iterator<Item = usize>) {
    let mut conn = redis_support::raw(url).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let server_now = secs * 1_000_000 + micros;
    for i in sample {
        let key = format!("{prefix}:p:{}", client(i).to_store_key());
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
    charged_once(&server.url(), &p, (0..clients).step_by(clients / 200)).await;
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
    let _serial = SERIAL.lock().await;
    a_flood_of_new_clients_is_merged_and_nobody_is_charged_twice(20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_new_clients_are_merged_once() {
    let _serial = SERIAL.lock().await;
    a_flood_of_new_clients_is_merged_and_nobody_is_charged_twice(100_000).await;
}

#[tokio::test]
async fn a_sync_that_falls_behind_warns_once_then_says_it_caught_up() {
    let _serial = SERIAL.lock().await;
    let logs = redis_support::Logs::default();
    let _guard = logs.capture();
    let server = Server::started();
    let proxy = FaultProxy::start(server.port);
    let p = redis_support::prefix("behind");
    let a = layer(
        local_first(&proxy.url(), &p).await,
        Quota::per_hour(1000).burst(10),
    );
    proxy.set_blackhole(true);
    for i in 0..50 {
        assert!(decide(&a, &client(i)).await.unwrap().allowed);
    }
    // Ten intervals without an answer: behind.
    assert!(
        eventually(Duration::from_secs(3), || logs
            .count("the Redis sync is behind")
            == 1)
        .await,
        "no warning: {}",
        logs.text()
    );
    assert!(a.store().sync_lag() >= Duration::from_millis(500));
    assert_eq!(a.store().pending_keys(), 50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(logs.count("the Redis sync is behind"), 1, "warned once");
    proxy.set_blackhole(false);
    assert!(
        eventually(Duration::from_secs(3), || logs
            .count("the Redis sync caught up")
            == 1)
        .await,
        "{}",
        logs.text()
    );
    assert_eq!(a.store().pending_keys(), 0);
    assert_eq!(a.store().sync_lag(), Duration::ZERO);
}

/// Issue 22: while Redis is frozen (SIGSTOP), a replica decides alone at
/// little CPU cost; once it thaws, what was admitted meanwhile is shared
/// within two seconds, and nobody who spent nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_little_and_limits_are_shared_again_soon_after_it_thaws() {
    let _serial = SERIAL.lock().await;
    let server = Server::started();
    let p = redis_support::prefix("frozen");
    let quota = Quota::per_minute(60).burst(10);
    let a = layer(local_first(&server.url(), &p).await, quota);
    let b = layer(local_first(&server.url(), &p).await, quota);
    let hot = RateKey::text("hot");
    // Both replicas know the key before the outage.
    assert!(decide(&a, &hot).await.unwrap().allowed);
    assert!(decide(&b, &hot).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.freeze();
    let cpu = redis_support::faults::process_cpu();
    let frozen = Instant::now();
    let mut admitted_hot = 0;
    let mut i = 0;
    while frozen.elapsed() < Duration::from_secs(3) {
        // New clients, each one request: all admitted, decided alone.
        assert!(decide(&a, &client(i)).await.unwrap().allowed, "client {i}");
        i += 1;
        if decide(&a, &hot).await.unwrap().allowed {
            admitted_hot += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spent = redis_support::faults::process_cpu() - cpu;
    assert!(
        spent < Duration::from_millis(1_500),
        "{spent:?} of CPU in a 3 s outage"
    );
    assert!(admitted_hot >= 8, "a decided alone: {admitted_hot}");
    server.thaw();
    let thawed = Instant::now();
    // a's spending reaches Redis, then b learns it at its next ask.
    assert!(
        eventually(Duration::from_secs(2), || a.store().pending_keys() == 0).await,
        "{} keys unmerged 2 s after Redis thawed",
        a.store().pending_keys()
    );
    let mut b_admitted = 0;
    for _ in 0..5 {
        if decide(&b, &hot).await.unwrap().allowed {
            b_admitted += 1;
        }
    }
    assert!(b_admitted <= 1, "b admitted {b_admitted} of a key a spent");
    assert!(thawed.elapsed() < Duration::from_secs(3));
    // Nobody who sent one request is refused on b.
    for j in (0..i).step_by(7) {
        assert!(
            decide(&b, &client(j)).await.unwrap().allowed,
            "client {j} on b"
        );
    }
}

/// What Redis losing its data (restart without persistence, FLUSHALL) costs
/// the limits: replicas that knew a spent key keep refusing it from their own
/// state; only a replica that never saw it can admit it again, at most one
/// burst (SECURITY.md).
async fn limits_survive_redis_losing_its_data(lose: impl FnOnce(&mut Server)) {
    let mut server = Server::started();
    let p = redis_support::prefix("lost");
    // One a minute: nothing refills while the test runs.
    let quota = Quota::per_hour(60).burst(10);
    let a = layer(local_first(&server.url(), &p).await, quota);
    let b = layer(local_first(&server.url(), &p).await, quota);
    let hot = RateKey::text("hot");
    let mut admitted = 0;
    for _ in 0..20 {
        if decide(&a, &hot).await.unwrap().allowed {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "a spends the burst");
    assert!(eventually(Duration::from_secs(2), || a.store().pending_keys() == 0).await);
    // b meets the key: at most its provisional allowance, ⌊10 / (4 × 2)⌋.
    let mut on_b = 0;
    for _ in 0..5 {
        if decide(&b, &hot).await.unwrap().allowed {
            on_b += 1;
        }
    }
    assert!(on_b <= 1, "b admitted {on_b} of a spent key");

    lose(&mut server);
    // Both reconnect; neither admits the spent key again.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert!(
            !decide(&a, &hot).await.unwrap().allowed,
            "a admitted a spent key"
        );
        assert!(
            !decide(&b, &hot).await.unwrap().allowed,
            "b admitted a spent key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A replica that never saw it: at most one burst.
    let c = layer(local_first(&server.url(), &p).await, quota);
    let mut fresh = 0;
    for _ in 0..20 {
        if decide(&c, &hot).await.unwrap().allowed {
            fresh += 1;
        }
    }
    assert!(fresh <= 10, "c admitted {fresh}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_after_a_restart_without_persistence() {
    let _serial = SERIAL.lock().await;
    limits_survive_redis_losing_its_data(Server::restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_after_flushall() {
    let _serial = SERIAL.lock().await;
    limits_survive_redis_losing_its_data(|server| server.flushall()).await;
}

/// A slow link (10 ms each way, a fifth of the 50 ms timeout) while a backlog
/// drains: batches shrink until they fit, everything is merged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_still_merges_a_backlog_once() {
    let _serial = SERIAL.lock().await;
    let server = Server::started();
    let proxy = FaultProxy::start(server.port);
    let p = redis_support::prefix("slow");
    let quota = Quota::per_hour(1000).burst(10);
    let a = layer(local_first(&proxy.url(), &p).await, quota);
    proxy.set_blackhole(true);
    let clients = 20_000;
    for i in 0..clients {
        assert!(decide(&a, &client(i)).await.unwrap().allowed);
    }
    proxy.set_delay(Duration::from_millis(10));
    proxy.set_blackhole(false);
    assert!(
        eventually(Duration::from_secs(20), || a.store().pending_keys() == 0).await,
        "{} keys unmerged after 20 s on a slow link",
        a.store().pending_keys()
    );
    charged_once(&server.url(), &p, (0..clients).step_by(200)).await;
}
