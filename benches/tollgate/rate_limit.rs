//! Local decision cost at 1k and 1M keys, bytes per key, and the full stack
//! (IP limit → auth → user limit) against the bare service.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput};
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

pub fn bench(c: &mut Criterion) {
    if !crate::selected("rate_limit") {
        return;
    }
    let mut group = c.benchmark_group("rate_limit");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));

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
    group.finish();
}
