//! Decision cost with Redis (loopback) versus the local store, with and
//! without the deny cache, and round trips per request.

use std::time::Duration;

use criterion::Criterion;
use tollgate::rate_limit::store::{Check, RedisStore};
use tollgate::rate_limit::{KeyBy, LocalStore, Quota, RateKey, RateLimitLayer, RateLimitStore};

async fn decide<S: RateLimitStore>(layer: &RateLimitLayer<S>, key: &RateKey) -> bool {
    let policy = &layer.policies()[0];
    match layer.store().check(policy, key) {
        Check::Ready(d) => d.expect("decision").allowed,
        Check::Pending(f) => f.await.expect("decision").allowed,
    }
}

pub fn bench(c: &mut Criterion) {
    if !crate::selected("redis") {
        return;
    }
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
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

    let prefix = format!("tollgate-bench:{}", std::process::id());
    let allowing = Quota::per_second(1_000_000).burst(1_000_000_000);
    let local = RateLimitLayer::builder("p", allowing)
        .key(KeyBy::global())
        .store(LocalStore::new())
        .build()
        .expect("layer");
    let key = RateKey::text("bench-user");
    group.bench_function("allowed/local", |b| {
        b.to_async(&rt).iter(|| decide(&local, &key))
    });

    let remote = rt.block_on(async {
        RateLimitLayer::builder("p", allowing)
            .key(KeyBy::global())
            .store(
                RedisStore::connect(&url)
                    .await
                    .expect("redis")
                    .prefix(&prefix),
            )
            .build()
            .expect("layer")
    });
    group.bench_function("allowed/redis", |b| {
        b.to_async(&rt).iter(|| decide(&remote, &key))
    });

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
        let hot = RateKey::text("hot");
        rt.block_on(async {
            decide(&layer, &hot).await;
            decide(&layer, &hot).await;
        });
        let before = layer.store().round_trips();
        let mut calls = 0u64;
        let name = if deny_cache {
            "limited/redis_deny_cache"
        } else {
            "limited/redis_no_deny_cache"
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                calls += 1;
                decide(&layer, &hot)
            })
        });
        let trips = layer.store().round_trips() - before;
        println!(
            "redis/{name}: {:.3} round trips per request ({trips} over {calls})",
            trips as f64 / calls.max(1) as f64
        );
    }
    group.finish();
}
