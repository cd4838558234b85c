//! The paths whose cost is budgeted (`benches/budgets.txt`), each as one
//! request through a warmed service: shared by the instruction-count bench
//! (`benches/budgets.rs`) and the allocation bench (`benches/allocations.rs`).

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::store::RedisStore;
use tollgate::rate_limit::{HeaderStyle, KeyBy, PeerAddr, Quota, RateLimitLayer};
use tower::{Layer, Service, ServiceBuilder};

use super::example_app;
use super::fixtures::{SECRET, User, fixture, ready};

/// One request through a warmed service, as a closure; what it captures
/// (runtimes, stores) lives as long as the case.
pub type Case = Box<dyn FnMut()>;

/// Runs one request through `case`, warmed by `WARM_UP` requests first.
pub fn warmed(mut case: Case) -> Case {
    for _ in 0..WARM_UP {
        case();
    }
    case
}

pub const WARM_UP: usize = 200;

// --- the services ---------------------------------------------------------

/// The inner service of the auth cases: an empty body, as in the criterion
/// `fast_path` group.
pub fn bytes_noop() -> impl Service<
    Request<()>,
    Response = Response<Bytes>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Bytes>, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Bytes::new());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(res)
    })
}

/// The inner service of the limiter cases: an axum body and a header of its
/// own, as in the criterion `peers` group (tower_governor needs axum's types).
pub fn axum_noop() -> impl Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Body::empty());
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(res)
    })
}

pub fn token(algorithm: Algorithm, key: &EncodingKey) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let user = User {
        sub: "user-1".into(),
        iss: "https://auth.example".into(),
        aud: "api".into(),
        exp: now + 3600,
        roles: vec!["reader".into()],
    };
    jsonwebtoken::encode(&Header::new(algorithm), &user, key).expect("token")
}

/// A request with the session cookie among others and a peer address.
pub fn cookie_request(cookie: &'static str) -> impl Fn() -> Request<()> {
    move || {
        let mut req = Request::builder()
            .header(header::COOKIE, cookie)
            .body(())
            .expect("request");
        req.extensions_mut()
            .insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 40000))));
        req
    }
}

pub fn auth_layer(key: Key, cache: bool) -> JwtAuthLayer<User> {
    auth_builder(key, cache).build().expect("auth layer")
}

fn auth_builder(key: Key, cache: bool) -> tollgate::auth::JwtAuthBuilder<User> {
    let builder = JwtAuthLayer::<User>::builder()
        .key(key)
        .cookie("da3")
        .issuer("https://auth.example")
        .audience("api");
    if cache { builder.cache(1_000) } else { builder }
}

/// The per-IP and per-subject limits of the stack cases, with a quota that
/// refills faster than requests come.
fn stack_limits() -> (RateLimitLayer, RateLimitLayer) {
    let steady = Quota::per_second(1_000_000_000).burst(100);
    let per_ip = RateLimitLayer::builder("per-ip", steady)
        .key(KeyBy::peer_ip())
        .build()
        .expect("layer");
    let per_user = RateLimitLayer::builder("anonymous", steady)
        .authenticated("registered", steady)
        .build()
        .expect("layer");
    (per_ip, per_user)
}

pub fn case<S, B>(mut svc: S, request: impl Fn() -> Request<()> + 'static) -> Case
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + 'static,
    B: 'static,
{
    warmed(Box::new(move || {
        let res = ready(svc.call(request())).expect("infallible");
        assert_eq!(res.status(), 200);
        drop(black_box(res));
    }))
}

pub fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

pub fn hs256_cookie() -> &'static str {
    let token = token(Algorithm::HS256, &EncodingKey::from_secret(SECRET));
    leak(format!("theme=dark; da3={token}; lang=en"))
}

pub fn auth_bare() -> Case {
    tollgate::crypto::install_default_provider();
    case(bytes_noop(), cookie_request(hs256_cookie()))
}

pub fn auth_cache_hit() -> Case {
    tollgate::crypto::install_default_provider();
    let layer = auth_layer(Key::hmac(SECRET).expect("key"), true);
    case(layer.layer(bytes_noop()), cookie_request(hs256_cookie()))
}

pub fn auth_hs256_uncached() -> Case {
    tollgate::crypto::install_default_provider();
    let layer = auth_layer(Key::hmac(SECRET).expect("key"), false);
    case(layer.layer(bytes_noop()), cookie_request(hs256_cookie()))
}

pub fn auth_es256_uncached() -> Case {
    tollgate::crypto::install_default_provider();
    let encoding = EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).expect("key");
    let cookie = leak(format!(
        "theme=dark; da3={}; lang=en",
        token(Algorithm::ES256, &encoding)
    ));
    let layer = auth_layer(
        Key::ec_pem(fixture("ec256_public.pem")).expect("key"),
        false,
    );
    case(layer.layer(bytes_noop()), cookie_request(cookie))
}

/// `jsonwebtoken::decode` alone on the same HS256 token: the floor under
/// the uncached auth case.
pub fn jsonwebtoken_decode_hs256() -> Case {
    tollgate::crypto::install_default_provider();
    let token = token(Algorithm::HS256, &EncodingKey::from_secret(SECRET));
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET);
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.set_issuer(&["https://auth.example"]);
    validation.set_audience(&["api"]);
    warmed(Box::new(move || {
        let data = jsonwebtoken::decode::<User>(&token, &key, &validation).expect("valid");
        drop(black_box(data));
    }))
}

// The limiter cases: the same never-refusing quota, keyed by the peer IP
// (axum's ConnectInfo), over the same service.
pub const BURST: u32 = 1_000_000_000;
pub const PER_SECOND: u32 = 1_000_000;

pub fn connect_info_request() -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
    req
}

pub fn limit_bare() -> Case {
    case(axum_noop(), connect_info_request)
}

pub fn limit(style: HeaderStyle) -> Case {
    let layer = RateLimitLayer::builder("per-ip", Quota::per_second(PER_SECOND).burst(BURST))
        .key(KeyBy::peer_ip())
        .headers(style)
        .build()
        .expect("layer");
    case(layer.layer(axum_noop()), connect_info_request)
}

pub fn limit_ietf_headers() -> Case {
    limit(HeaderStyle::Ietf)
}

pub fn limit_no_headers() -> Case {
    limit(HeaderStyle::Off)
}

/// A request through a failure-driven lockout that lets it pass and looks
/// at its (successful) response: the cost every request of a guarded route
/// pays.
pub fn lockout_pass() -> Case {
    let layer = tollgate::lockout::LockoutLayer::builder(KeyBy::peer_ip())
        .build()
        .expect("layer");
    case(layer.layer(axum_noop()), connect_info_request)
}

/// A request through a limit charged by cost whose handler charges an
/// estimate of 4 units and settles at 3 (one given back): the door, the
/// handle in the extensions, two charges of the store and the headers from
/// the last one.
pub fn cost_charged() -> Case {
    let layer = RateLimitLayer::builder("cost", Quota::per_second(PER_SECOND).burst(BURST))
        .key(KeyBy::peer_ip())
        .charged_by_handler(8)
        .build()
        .expect("layer");
    let handler = tower::service_fn(|req: Request<()>| async move {
        if let Some(cost) = req.extensions().get::<tollgate::rate_limit::Cost>() {
            let charged = cost.charge(4).await.is_ok();
            assert!(charged);
            cost.settle(3).await;
        }
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    case(layer.layer(handler), connect_info_request)
}

/// A request through a per-caller concurrency limit that has a slot free:
/// the slot taken, the headers, the slot given back when the response
/// (and its body) is dropped.
pub fn concurrency_pass() -> Case {
    let layer = tollgate::concurrency::ConcurrencyLimitLayer::builder(64)
        .key(KeyBy::peer_ip())
        .build()
        .expect("layer");
    case(layer.layer(axum_noop()), connect_info_request)
}

pub fn tower_governor(headers: bool) -> Case {
    let mut config = tower_governor::governor::GovernorConfigBuilder::default();
    config
        .period(Duration::from_secs(1) / PER_SECOND)
        .burst_size(BURST);
    if headers {
        let config = config.use_headers().finish().expect("config");
        case(
            tower_governor::GovernorLayer::new(config).layer(axum_noop()),
            connect_info_request,
        )
    } else {
        let config = config.finish().expect("config");
        case(
            tower_governor::GovernorLayer::new(config).layer(axum_noop()),
            connect_info_request,
        )
    }
}

pub fn tower_governor_no_headers() -> Case {
    tower_governor(false)
}

pub fn tower_governor_headers() -> Case {
    tower_governor(true)
}

/// Per-IP limit → auth (cache hit) → per-subject limit, as the example
/// mounts them, with a quota that refills faster than requests come.
pub fn stack_cache_hit() -> Case {
    tollgate::crypto::install_default_provider();
    let (per_ip, per_user) = stack_limits();
    let svc = ServiceBuilder::new()
        .layer(per_ip)
        .layer(auth_layer(Key::hmac(SECRET).expect("key"), true))
        .layer(per_user)
        .service(bytes_noop());
    case(svc, cookie_request(hs256_cookie()))
}

/// `stack_cache_hit` behind route rules: a table of eight rules like a
/// service's (the request's `/` matches one that lists both limits; one
/// rule needs a role, so the auth layer reads roles), outermost.
pub fn routes_stack_cache_hit() -> Case {
    use tollgate::routes::{Access, Route, RouteTable};
    tollgate::crypto::install_default_provider();
    let table = RouteTable::builder()
        .route(
            Route::new("/healthz")
                .access(Access::Off)
                .limits::<&str>([]),
        )
        .route(
            Route::new("/metrics")
                .access(Access::Off)
                .limits(["per-ip"]),
        )
        .route(
            Route::new("/graphql")
                .methods([http::Method::GET, http::Method::POST])
                .access(Access::Lenient)
                .limits(["per-ip", "anonymous"])
                .csrf(true),
        )
        .route(Route::new("/me").limits(["per-ip", "anonymous"]))
        .route(Route::new("/logout").methods([http::Method::POST]))
        .route(Route::new("/admin/{*rest}").roles_any(["admin"]))
        .route(Route::new("/users/{id}"))
        .route(Route::new("/").limits(["per-ip", "anonymous"]))
        .build()
        .expect("route table");
    let (per_ip, per_user) = stack_limits();
    let auth = auth_builder(Key::hmac(SECRET).expect("key"), true)
        .routes(&table)
        .build()
        .expect("auth layer");
    let svc = ServiceBuilder::new()
        .layer(table.layer())
        .layer(per_ip)
        .layer(auth)
        .layer(per_user)
        .service(bytes_noop());
    case(svc, cookie_request(hs256_cookie()))
}

/// The example's own router (`examples/graphql.rs`), one GraphQL query with
/// a session cookie, on a current-thread runtime, with a Prometheus
/// recorder installed.
pub fn example(layers: &'static str) -> Case {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    tollgate::crypto::install_default_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let app = rt
        .block_on(example_app::graphql::app(
            &example_app::config(layers),
            recorder.handle(),
        ))
        .expect("app");
    // The first example case of a process installs its recorder; a second
    // one records into it.
    let _ = metrics::set_global_recorder(recorder);
    let cookie = example_app::cookie();
    warmed(Box::new(move || {
        rt.block_on(async {
            let res = app
                .clone()
                .oneshot(example_app::request(&cookie))
                .await
                .expect("infallible");
            assert_eq!(res.status(), 200);
            drop(black_box(res.into_body().collect().await.expect("body")));
        })
    }))
}

pub fn example_layers_off() -> Case {
    example("off")
}

pub fn example_layers_on() -> Case {
    example("on")
}

/// A decision of the Redis local-first store on a key whose claim this
/// replica holds (the common case: no round trip), through the limiter
/// layer. The sync task runs on its own worker thread, which callgrind does
/// not count.
pub fn redis_local_first() -> Case {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let layer = rt.block_on(async {
        let store = RedisStore::connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!("the local-first budget needs Redis at {url} (REDIS_URL): {e}")
            })
            .prefix(format!("tollgate-budget:{}", std::process::id()))
            // a long interval: the claim outlives the count, however slow
            // valgrind makes the set-up
            .local_first(Duration::from_secs(1));
        let layer = RateLimitLayer::builder("per-user", Quota::per_second(PER_SECOND).burst(BURST))
            .key(KeyBy::global())
            .headers(HeaderStyle::Off)
            .store(store)
            .build()
            .expect("layer");
        // New keys ask Redis until the replica count is confirmed.
        while layer.store().replicas().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        layer
    });
    let mut svc = layer.layer(axum_noop());
    // The first requests ask Redis (awaited) and take a claim; then the key
    // is decided here.
    rt.block_on(async {
        use tower::ServiceExt;
        for _ in 0..10 {
            let res = svc
                .ready()
                .await
                .expect("ready")
                .call(connect_info_request())
                .await
                .expect("infallible");
            assert_eq!(res.status(), 200);
        }
    });
    warmed(Box::new(move || {
        let _enter = rt.enter();
        let res = ready(svc.call(connect_info_request())).expect("infallible");
        assert_eq!(res.status(), 200);
        drop(black_box(res));
    }))
}

/// Builds a warmed case.
pub type MakeCase = fn() -> Case;

/// Every case by its name in `benches/budgets.txt`.
pub const ALL: &[(&str, MakeCase)] = &[
    ("auth_bare", auth_bare),
    ("auth_cache_hit", auth_cache_hit),
    ("auth_hs256_uncached", auth_hs256_uncached),
    ("auth_es256_uncached", auth_es256_uncached),
    ("jsonwebtoken_decode_hs256", jsonwebtoken_decode_hs256),
    ("stack_cache_hit", stack_cache_hit),
    ("routes_stack_cache_hit", routes_stack_cache_hit),
    ("limit_bare", limit_bare),
    ("limit_ietf_headers", limit_ietf_headers),
    ("limit_no_headers", limit_no_headers),
    ("lockout_pass", lockout_pass),
    ("concurrency_pass", concurrency_pass),
    ("cost_charged", cost_charged),
    ("tower_governor_no_headers", tower_governor_no_headers),
    ("tower_governor_headers", tower_governor_headers),
    ("redis_local_first", redis_local_first),
    ("example_layers_off", example_layers_off),
    ("example_layers_on", example_layers_on),
];
