//! tollgate's limiter layer next to tower_governor's, on the same request and
//! the same never-refusing quota, keyed by the peer IP (axum's
//! `ConnectInfo`), both over an axum-bodied service: the comparison the
//! performance page (docs/performance.md) makes lives here, run in one process.
//!
//! `cargo bench --bench tollgate -- peers`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::Criterion;
use http::{HeaderValue, Request, Response, header};
use tollgate::rate_limit::{HeaderStyle, KeyBy, Quota, RateLimitLayer};
use tower::{Layer, Service};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

use crate::fixtures::ready;

/// The same quota for both: one cell per microsecond, a burst of 10⁹, so
/// that no request is refused while a bench runs.
const BURST: u32 = 1_000_000_000;
const PER_SECOND: u32 = 1_000_000;

fn check<B>(res: Response<B>) -> Response<B> {
    assert_eq!(res.status(), 200, "the quota never refuses");
    res
}

pub fn bench(c: &mut Criterion) {
    if !crate::selected("peers") {
        return;
    }
    // `iter`, not `iter_batched`: building the request and dropping the
    // response are timed in every case alike (the bare case is that cost),
    // and no batch of requests and responses moves through memory — which
    // dominated, and varied, with batches.
    let mut group = c.benchmark_group("peers");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(40);

    // Like any real handler, the service answers with a header of its own.
    let noop = tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Body::empty());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(res)
    });
    let request = || {
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
        req
    };

    let mut bare = noop;
    group.bench_function("bare", |b| {
        b.iter(|| drop(check(ready(bare.call(request())).expect("infallible"))))
    });

    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs(1) / PER_SECOND)
        .burst_size(BURST)
        .finish()
        .expect("config");
    let mut tower_governor = GovernorLayer::new(config).layer(noop);
    group.bench_function("tower_governor", |b| {
        b.iter(|| {
            drop(check(
                ready(tower_governor.call(request())).expect("infallible"),
            ))
        })
    });
    let config = GovernorConfigBuilder::default()
        .period(Duration::from_secs(1) / PER_SECOND)
        .burst_size(BURST)
        .use_headers()
        .finish()
        .expect("config");
    let mut tower_governor_headers = GovernorLayer::new(config).layer(noop);
    group.bench_function("tower_governor_headers", |b| {
        b.iter(|| {
            drop(check(
                ready(tower_governor_headers.call(request())).expect("infallible"),
            ))
        })
    });

    for (name, style) in [
        ("tollgate", HeaderStyle::Ietf),
        ("tollgate_no_headers", HeaderStyle::Off),
    ] {
        let layer = RateLimitLayer::builder("per-ip", Quota::per_second(PER_SECOND).burst(BURST))
            .key(KeyBy::peer_ip())
            .headers(style)
            .build()
            .expect("layer");
        let mut tollgate = layer.layer(noop);
        group.bench_function(name, |b| {
            b.iter(|| drop(check(ready(tollgate.call(request())).expect("infallible"))))
        });
    }
    group.finish();
}
