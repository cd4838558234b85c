//! Local decision cost at 1k and 1M keys, bytes per key, the clean-up at 1M
//! keys (one incremental step when nothing, 1% or half of the keys are
//! replenished, and a full sweep), and the full stack (IP limit → auth → user
//! limit) against the bare service.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput};
use governor::clock::{Clock, FakeRelativeClock};
use http::{Request, Response, header};
use jsonwebtoken::{EncodingKey, Header};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::store::Check;
use tollgate::rate_limit::{
    KeyBy, LocalStore, PeerAddr, Quota, RateKey, RateLimitLayer, RateLimitStore, TrustedProxies,
};
use tower::{Layer, Service, ServiceBuilder};

use crate::fixtures::{SECRET, User, ready};

/// Resident set size in bytes (Linux), to measure memory per key.
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn ip_key(i: u32) -> RateKey {
    RateKey::ip(IpAddr::V4(Ipv4Addr::from(i)), 64)
}

/// Percentile `p` (0..=1) of sorted nanoseconds, as a duration.
fn percentile(sorted: &[u64], p: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    let index = ((last as f64) * p).round() as usize;
    Duration::from_nanos(sorted.get(index).copied().unwrap_or(0))
}

/// Nanoseconds `f` takes.
fn time<R>(f: impl FnOnce() -> R) -> u64 {
    let start = Instant::now();
    black_box(f());
    start.elapsed().as_nanos() as u64
}

/// How many times this thread has been put on a CPU (Linux), to tell a step
/// that was preempted from a slow one.
fn scheduled() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().nth(2)?.parse().ok()
}

/// Steps timed one by one, sorted, leaving out those during which the thread
/// was descheduled (their time says more about the machine than the step);
/// returns the timings and how many were left out.
fn time_steps(store: &LocalStore<impl Clock + Clone>, steps: usize) -> (Vec<u64>, usize) {
    let mut timings = Vec::with_capacity(steps);
    for _ in 0..steps {
        let before = scheduled();
        let nanos = time(|| store.cleanup_step());
        if scheduled() == before {
            timings.push(nanos);
        }
    }
    timings.sort_unstable();
    let left_out = steps - timings.len();
    (timings, left_out)
}

/// Percentiles of sorted step timings, and how many pass the 100 µs target.
fn summary((sorted, left_out): &(Vec<u64>, usize)) -> String {
    let over = sorted.len() - sorted.partition_point(|&n| n <= 100_000);
    format!(
        "median {:?}, p99 {:?}, max {:?}, {over} over 100µs; {} steps ({left_out} preempted, left out)",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0),
        sorted.len(),
    )
}

/// Keys at the default cap, and the shards a round of clean-up visits there
/// (1M / 1,650 keys a shard).
const CAP: u32 = 1_000_000;
const SHARDS_AT_DEFAULT_CAP: usize = 607;

/// Clean-up at the default cap, full with 1M keys that do not replenish
/// during the bench: one incremental step (which then passes over shards
/// without locking them), and the full sweep of `cleanup()`, which visits
/// every key, as one decision did before clean-up was incremental. Returns
/// the layer, to be dropped last.
fn cleanup(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) -> RateLimitLayer<LocalStore> {
    let layer = RateLimitLayer::builder("ip", Quota::per_hour(1).burst(1_000_000))
        .key(KeyBy::peer_ip())
        .store(LocalStore::new())
        .build()
        .expect("layer");
    let policy = layer.policies()[0].clone();
    let store = layer.store();
    let before = rss();
    for i in 0..CAP {
        let _ = store.check(&policy, &ip_key(i));
    }
    if let (Some(before), Some(after)) = (before, rss()) {
        let per_key = after.saturating_sub(before) as f64 / f64::from(CAP);
        println!("rate_limit/bytes_per_key/{CAP}_at_the_cap: {per_key:.1} bytes (RSS delta)");
    }
    let steps = time_steps(store, SHARDS_AT_DEFAULT_CAP);
    println!(
        "rate_limit/cleanup_step_nothing_replenished/{CAP}_keys: {}",
        summary(&steps)
    );
    group.bench_function(
        format!("cleanup_step_nothing_replenished/{CAP}_keys"),
        |b| b.iter(|| store.cleanup_step()),
    );
    // Milliseconds an iteration: fewer samples.
    group.sample_size(10);
    group.bench_function(format!("cleanup_full/{CAP}_keys"), |b| {
        b.iter(|| store.cleanup())
    });
    group.sample_size(30);
    layer
}

/// Clean-up steps that remove keys, at the default cap: `percent` of the
/// keys replenished, spread over all shards, so that every step visits a
/// whole shard (1,650 keys) — the most a step visits. 1% is everyday churn;
/// at 50%, every shard is left too sparse, and the step after its clean-up
/// rebuilds it at half its size (so a round takes twice the steps).
fn removing_steps(percent: u32) {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("ip", Quota::per_second(1))
        .key(KeyBy::peer_ip())
        .store(LocalStore::with_clock(clock.clone()))
        .build()
        .expect("layer");
    let policy = layer.policies()[0].clone();
    let store = layer.store();
    // Full again at 1 s; the others, at 1.5 s. The steps taken while filling
    // remove nothing, as none is replenished yet.
    let old = CAP / 100 * percent;
    for i in 0..old {
        let _ = store.check(&policy, &ip_key(i));
    }
    clock.advance(Duration::from_millis(500));
    for i in old..CAP {
        let _ = store.check(&policy, &ip_key(i));
    }
    clock.advance(Duration::from_millis(1700));
    let steps = time_steps(store, 2 * SHARDS_AT_DEFAULT_CAP);
    println!(
        "rate_limit/cleanup_step_removing_{percent}%/{CAP}_keys: {}",
        summary(&steps)
    );
}

pub fn bench(c: &mut Criterion) {
    if !crate::selected("rate_limit") {
        return;
    }
    let mut group = c.benchmark_group("rate_limit");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));

    // First, while the allocator holds no freed memory to reuse, so that the
    // RSS deltas count what the keys take; kept to the end for the same reason.
    let at_the_cap = cleanup(&mut group);

    for keys in [1_000u32, 1_000_000] {
        // A large burst that replenishes slowly: every decision is an
        // admission that updates state, and no key is cleaned away mid-bench
        // (the periodic clean-up still scans them all, as in production).
        let before = rss();
        let layer = RateLimitLayer::builder("ip", Quota::per_hour(1).burst(1_000_000))
            .key(KeyBy::peer_ip())
            .store(LocalStore::new().max_keys(2_000_000))
            .build()
            .expect("layer");
        let policy = layer.policies()[0].clone();
        for i in 0..keys {
            let _ = layer.store().check(&policy, &ip_key(i));
        }
        if let (Some(before), Some(after)) = (before, rss()) {
            let per_key = after.saturating_sub(before) as f64 / f64::from(keys);
            println!(
                "rate_limit/bytes_per_key/{keys}: {per_key:.1} bytes (RSS delta over {keys} keys)"
            );
        }
        // Uniform over all keys (every access a cache miss at 1M keys), and
        // over a hot set of 1,000 of them (the common skewed case).
        for (name, span) in [("uniform", keys), ("hot_1k", keys.min(1_000))] {
            let mut i = 0u32;
            group.bench_function(format!("local_decision/{keys}_keys/{name}"), |b| {
                b.iter(|| {
                    i = (i + 7919) % span;
                    match layer.store().check(&policy, black_box(&ip_key(i))) {
                        Check::Ready(Ok(d)) => d,
                        _ => unreachable!(),
                    }
                })
            });
        }
    }

    // The recommended stack versus the bare service, HS256 token in a cookie.
    let noop = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::new()))
    });
    let now = jsonwebtoken::get_current_timestamp();
    let user = User {
        sub: "user-1".into(),
        iss: "https://auth.example".into(),
        aud: "api".into(),
        exp: now + 3600,
        roles: vec!["reader".into()],
    };
    let token = jsonwebtoken::encode(&Header::default(), &user, &EncodingKey::from_secret(SECRET))
        .expect("token");
    let cookie = format!("theme=dark; da3={token}; lang=en");
    let request = || {
        let mut req = Request::builder()
            .header(header::COOKIE, cookie.as_str())
            .body(())
            .expect("request");
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 40000))));
        req
    };
    let mut bare = noop;
    group.bench_function("stack/bare", |b| {
        b.iter_batched(request, |req| ready(bare.call(req)), BatchSize::SmallInput)
    });
    let per_ip =
        RateLimitLayer::builder("per-ip", Quota::per_second(1_000_000).burst(1_000_000_000))
            .key(KeyBy::client_ip(TrustedProxies::none()))
            .build()
            .expect("layer");
    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).expect("key"))
        .cookie("da3")
        .issuer("https://auth.example")
        .audience("api")
        .build()
        .expect("layer");
    let per_user =
        RateLimitLayer::builder("anon", Quota::per_second(1_000_000).burst(1_000_000_000))
            .authenticated("user", Quota::per_second(1_000_000).burst(1_000_000_000))
            .build()
            .expect("layer");
    let mut stack = ServiceBuilder::new()
        .layer(per_ip)
        .layer(auth)
        .layer(per_user)
        .service(noop);
    group.bench_function("stack/ip_auth_user_HS256", |b| {
        b.iter_batched(
            request,
            |req| {
                let res = ready(stack.call(req)).expect("infallible");
                assert_eq!(res.status(), 200);
                res
            },
            BatchSize::SmallInput,
        )
    });
    let rate_only =
        RateLimitLayer::builder("per-ip", Quota::per_second(1_000_000).burst(1_000_000_000))
            .key(KeyBy::peer_ip())
            .build()
            .expect("layer");
    let mut limited = rate_only.layer(noop);
    group.bench_function("stack/ip_limit_only", |b| {
        b.iter_batched(
            request,
            |req| ready(limited.call(req)),
            BatchSize::SmallInput,
        )
    });
    // The failure-driven lockout next to the plain limiter: a request it
    // lets through (a successful response, nothing counted), and one of a
    // key it has locked out (refused before the inner service).
    let lockout = tollgate::lockout::LockoutLayer::builder(KeyBy::peer_ip())
        .build()
        .expect("layer");
    let mut guarded = lockout.layer(noop);
    group.bench_function("stack/lockout_pass", |b| {
        b.iter_batched(
            request,
            |req| ready(guarded.call(req)),
            BatchSize::SmallInput,
        )
    });
    let failing = tower::service_fn(|_req: Request<()>| async {
        let mut response = Response::new(http_body_util::Empty::<bytes::Bytes>::new());
        *response.status_mut() = http::StatusCode::UNAUTHORIZED;
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut locked = lockout.layer(failing);
    for _ in 0..tollgate::lockout::DEFAULT_FAILURES {
        let _ = ready(locked.call(request()));
    }
    group.bench_function("stack/lockout_refused", |b| {
        b.iter_batched(
            request,
            |req| {
                let res = ready(locked.call(req)).expect("infallible");
                assert_eq!(res.status(), 429);
                res
            },
            BatchSize::SmallInput,
        )
    });
    // The per-caller concurrency limit next to it: a slot taken and given
    // back when the response is dropped.
    let in_flight = tollgate::concurrency::ConcurrencyLimitLayer::builder(64)
        .key(KeyBy::peer_ip())
        .build()
        .expect("layer");
    let mut capped = in_flight.layer(noop);
    group.bench_function("stack/concurrency_pass", |b| {
        b.iter_batched(
            request,
            |req| ready(capped.call(req)),
            BatchSize::SmallInput,
        )
    });
    // A limit charged by cost: the door's unit, an estimate of 4 charged
    // and settled at 3 by the handler, the headers from the last charge.
    let cost = RateLimitLayer::builder("cost", Quota::per_second(1_000_000).burst(1_000_000_000))
        .key(KeyBy::peer_ip())
        .charged_by_handler(8)
        .build()
        .expect("layer");
    let charging = tower::service_fn(|req: Request<()>| async move {
        let cost = req
            .extensions()
            .get::<tollgate::rate_limit::Cost>()
            .cloned()
            .expect("handle");
        let charged = cost.charge(4).await.is_ok();
        assert!(charged);
        cost.settle(3).await;
        Ok::<_, std::convert::Infallible>(Response::new(
            http_body_util::Empty::<bytes::Bytes>::new(),
        ))
    });
    let mut charged = cost.layer(charging);
    group.bench_function("stack/cost_charged", |b| {
        b.iter_batched(
            request,
            |req| ready(charged.call(req)),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    drop(at_the_cap);
    removing_steps(1);
    removing_steps(50);
}
