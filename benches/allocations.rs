//! Heap allocations per request through each layer, counted by dhat's
//! allocator (in its own bench binary: counting slows every allocation, so
//! the timing benches never run under it).
//!
//! `cargo bench --bench allocations`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use jsonwebtoken::{EncodingKey, Header};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::{KeyBy, PeerAddr, Quota, RateLimitLayer};
use tower::{Layer, Service, ServiceBuilder};

#[path = "support/example_app.rs"]
mod example_app;
#[path = "tollgate/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use fixtures::{SECRET, User, ready};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const REQUESTS: u64 = 10_000;

/// Allocations per request of `svc`, net of building and dropping the
/// request and the response (measured on the bare service).
fn per_request<S, B>(svc: &mut S, request: &impl Fn() -> Request<()>) -> f64
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    for _ in 0..1_000 {
        let _ = ready(svc.call(request()));
    }
    let before = dhat::HeapStats::get().total_blocks;
    for _ in 0..REQUESTS {
        let res = ready(svc.call(request())).expect("infallible");
        assert_eq!(res.status(), 200);
    }
    (dhat::HeapStats::get().total_blocks - before) as f64 / REQUESTS as f64
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    tollgate::crypto::install_default_provider();
    let noop = tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Bytes::new());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(res)
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
    // A quota that replenishes faster than requests come, so the RateLimit
    // value repeats as it does for a client at a steady pace.
    let steady = Quota::per_second(1_000_000_000).burst(100);
    let limit = || {
        RateLimitLayer::builder("per-ip", steady)
            .key(KeyBy::peer_ip())
            .build()
            .expect("layer")
    };
    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).expect("key"))
        .cookie("da3")
        .issuer("https://auth.example")
        .audience("api")
        .cache(1_000)
        .build()
        .expect("layer");
    let per_user = RateLimitLayer::builder("anonymous", steady)
        .authenticated("registered", steady)
        .build()
        .expect("layer");

    let bare = per_request(&mut noop.clone(), &request);
    println!("allocations/bare: {bare:.2} per request (request, response)");
    let cases: Vec<(&str, f64)> = vec![
        (
            "rate_limit_layer",
            per_request(&mut limit().layer(noop), &request),
        ),
        (
            "auth_layer_cache_hit",
            per_request(&mut auth.clone().layer(noop), &request),
        ),
        (
            "stack_ip_auth_user_cache_hit",
            per_request(
                &mut ServiceBuilder::new()
                    .layer(limit())
                    .layer(auth)
                    .layer(per_user)
                    .service(noop),
                &request,
            ),
        ),
    ];
    for (name, n) in cases {
        println!(
            "allocations/{name}: {:.2} per request beyond the bare service",
            n - bare
        );
    }
    example();
}

/// The example's router with the layers off and on: one GraphQL query with
/// a session cookie.
fn example() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let cookie = example_app::cookie();
    let request = || example_app::request(&cookie);
    let mut counts = Vec::new();
    for layers in ["off", "on"] {
        let app = rt
            .block_on(example_app::graphql::app(
                &example_app::config(layers),
                recorder.handle(),
            ))
            .expect("app");
        let n = metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let once = || async {
                    let res = app.clone().oneshot(request()).await.expect("infallible");
                    assert_eq!(res.status(), 200);
                    res.into_body().collect().await.expect("body");
                };
                for _ in 0..100 {
                    once().await;
                }
                let before = dhat::HeapStats::get().total_blocks;
                for _ in 0..1_000 {
                    once().await;
                }
                (dhat::HeapStats::get().total_blocks - before) as f64 / 1_000.0
            })
        });
        counts.push(n);
    }
    println!(
        "allocations/example: {:.1} per request with the layers off, {:.1} on (+{:.1})",
        counts[0],
        counts[1],
        counts[1] - counts[0]
    );
}
