//! Decision cost of the Redis store (loopback) in exact and local-first mode
//! versus the local store, at one hot key and at 1,000 keys; refusals with
//! and without the deny cache; and Redis round trips per 1,000 requests
//! (and, local-first, per sync interval).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tollgate::rate_limit::store::{Check, RedisStore};
use tollgate::rate_limit::{KeyBy, LocalStore, Quota, RateKey, RateLimitLayer, RateLimitStore};

/// The sync interval of the local-first cases.
const SYNC: Duration = Duration::from_millis(50);

async fn decide<S: RateLimitStore>(layer: &RateLimitLayer<S>, key: &RateKey) -> bool {
    let policy = &layer.policies()[0];
    match layer.store().check(policy, key) {
        Check::Ready(d) => d.expect("decision").allowed,
        Check::Pending(f) => f.await.expect("decision").allowed,
    }
}

/// Prints the round trips a Redis case made over `requests` in `elapsed`.
fn report(name: &str, store: &RedisStore, trips: u64, requests: u64, elapsed: Duration) {
    let per_thousand = trips as f64 * 1_000.0 / requests.max(1) as f64;
    let mut line = format!(
        "redis/{name}: {per_thousand:.3} round trips per 1,000 requests ({trips} over {requests} in {elapsed:.2?})"
    );
    if let Some(interval) = store.sync_interval() {
        let intervals = elapsed.as_secs_f64() / interval.as_secs_f64();
        line += &format!(
            "; {:.2} per sync interval{}",
            trips as f64 / intervals.max(1.0),
            if store.is_cluster() {
                " (all nodes together)"
            } else {
                ""
            },
        );
    }
    println!("{line}");
}

pub fn bench(c: &mut Criterion) {
    if !crate::selected("redis") {
        return;
    }
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    // Exact mode on one thread, as a single-threaded client would see it (a
    // multi-threaded runtime adds a cross-thread wake-up to each round trip).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Local-first needs its sync task running: it gets the worker, the bench
    // this thread; the local store is measured the same way.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let Ok(probe) = rt.block_on(RedisStore::connect(&url)) else {
        println!("redis: nothing answers at {url}, skipping (set REDIS_URL)");
        return;
    };
    drop(probe);
    let mut group = c.benchmark_group("redis");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));

    let prefix = format!("tollgate-bench:{}", std::process::id());
    let allowing = Quota::per_second(1_000_000).burst(1_000_000_000);
    let hot = vec![RateKey::text("bench-user")];
    let thousand: Vec<RateKey> = (0..1_000)
        .map(|i| RateKey::text(format!("user-{i}")))
        .collect();

    for (keys_name, keys) in [("hot_key", &hot), ("1k_keys", &thousand)] {
        let local = mt.block_on(async {
            RateLimitLayer::builder("p", allowing)
                .key(KeyBy::global())
                .store(LocalStore::new())
                .build()
                .expect("layer")
        });
        let mut next = 0;
        group.bench_function(format!("allowed/{keys_name}/local"), |b| {
            b.to_async(&mt).iter(|| {
                next = (next + 1) % keys.len();
                decide(&local, &keys[next])
            })
        });

        for mode in ["redis_exact", "redis_local_first"] {
            let rt = if mode == "redis_exact" { &rt } else { &mt };
            let layer = rt.block_on(async {
                let store = RedisStore::connect(&url)
                    .await
                    .expect("redis")
                    .prefix(format!("{prefix}:{keys_name}:{mode}"));
                let store = if mode == "redis_local_first" {
                    store.local_first(SYNC)
                } else {
                    store
                };
                RateLimitLayer::builder("p", allowing)
                    .key(KeyBy::global())
                    .store(store)
                    .build()
                    .expect("layer")
            });
            if mode == "redis_local_first" {
                // Until the replica count is confirmed (two registrations, a
                // second apart), new keys ask Redis.
                rt.block_on(async {
                    while layer.store().replicas().is_none() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
            }
            let name = format!("allowed/{keys_name}/{mode}");
            let before = layer.store().round_trips();
            let started = Instant::now();
            let mut requests = 0u64;
            group.bench_function(&name, |b| {
                b.to_async(rt).iter(|| {
                    requests += 1;
                    next = (next + 1) % keys.len();
                    decide(&layer, &keys[next])
                })
            });
            let trips = layer.store().round_trips() - before;
            report(&name, layer.store(), trips, requests, started.elapsed());
            assert_eq!(layer.store().sync_failures(), 0, "{name}: syncs failed");
        }
    }

    // A spent key: refusals with and without the local deny cache.
    for deny_cache in [true, false] {
        let layer = rt.block_on(async {
            RateLimitLayer::builder("spent", Quota::per_hour(1))
                .key(KeyBy::global())
                .store(
                    RedisStore::connect(&url)
                        .await
                        .expect("redis")
                        .prefix(format!("{prefix}:{deny_cache}"))
                        .deny_cache(deny_cache),
                )
                .build()
                .expect("layer")
        });
        let key = &hot[0];
        rt.block_on(async {
            decide(&layer, key).await;
            decide(&layer, key).await;
        });
        let before = layer.store().round_trips();
        let started = Instant::now();
        let mut requests = 0u64;
        let name = if deny_cache {
            "limited/hot_key/redis_deny_cache"
        } else {
            "limited/hot_key/redis_no_deny_cache"
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                requests += 1;
                decide(&layer, key)
            })
        });
        let trips = layer.store().round_trips() - before;
        report(name, layer.store(), trips, requests, started.elapsed());
    }
    group.finish();
}
