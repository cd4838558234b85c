//! The full stack (per-IP limit → cached auth → per-subject limit) driven
//! from 1, 2, … tokio worker threads (up to the cores there are), each with
//! its own user and address: throughput per thread count. What the threads
//! share — counters, lock shards, reference counts — shows up as throughput
//! that does not grow with the threads.
//!
//! `cargo bench --bench tollgate -- multicore`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http::{Request, Response, header};
use jsonwebtoken::{EncodingKey, Header};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::{KeyBy, PeerAddr, Quota, RateLimitLayer, TrustedProxies};
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::fixtures::{SECRET, User};

pub fn bench(c: &mut Criterion) {
    if !crate::selected("multicore") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let mut group = c.benchmark_group("multicore");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));

    let never = Quota::per_second(1_000_000).burst(1_000_000_000);
    let per_ip = RateLimitLayer::builder("per-ip", never)
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
    let per_user = RateLimitLayer::builder("anon", never)
        .authenticated("user", never)
        .build()
        .expect("layer");
    let stack = ServiceBuilder::new()
        .layer(per_ip)
        .layer(auth)
        .layer(per_user)
        .service(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Bytes::new()))
        }));

    let now = jsonwebtoken::get_current_timestamp();
    let cookies: Vec<String> = (0..cores)
        .map(|i| {
            let user = User {
                sub: format!("user-{i}"),
                iss: "https://auth.example".into(),
                aud: "api".into(),
                exp: now + 3600,
                roles: vec!["reader".into()],
            };
            let token =
                jsonwebtoken::encode(&Header::default(), &user, &EncodingKey::from_secret(SECRET))
                    .expect("token");
            format!("theme=dark; da3={token}; lang=en")
        })
        .collect();

    for threads in 1..=cores {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .build()
            .expect("runtime");
        group.bench_function(format!("threads/{threads}"), |b| {
            b.iter_custom(|iters| {
                let per_task = iters.div_ceil(threads as u64);
                runtime.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..threads)
                        .map(|t| {
                            let mut stack = stack.clone();
                            let cookie = cookies[t].clone();
                            let peer = PeerAddr(SocketAddr::from((
                                [192, 0, 2, u8::try_from(t + 1).unwrap_or(1)],
                                40000,
                            )));
                            tokio::spawn(async move {
                                for _ in 0..per_task {
                                    let mut req = Request::builder()
                                        .header(header::COOKIE, cookie.as_str())
                                        .body(())
                                        .expect("request");
                                    req.extensions_mut().insert(peer);
                                    let svc = stack.ready().await.expect("ready");
                                    let res = svc.call(req).await.expect("infallible");
                                    assert_eq!(res.status(), 200);
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                    // Wall time for `iters` requests in all: criterion's
                    // elements per second are then the total throughput.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * threads as u64) as f64)
                })
            })
        });
    }
    group.finish();
}
