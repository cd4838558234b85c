//! The rate-limit layer: quotas on a fake clock, keys, proxies, tiers,
//! headers, the async store path and the recommended stack.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use governor::clock::FakeRelativeClock;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::store::{Check, Decision, StoreError};
use tollgate::rate_limit::{
    HeaderStyle, KeyBy, LocalStore, MissingKey, OnStoreError, PeerAddr, Policy, Quota, RateKey,
    RateLimitLayer, RateLimitStore, TrustedProxies,
};
use tollgate::{Claims, ConfigError};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Svc = tower::util::BoxCloneService<
    Request<()>,
    Response<tollgate::body::ResponseBody<Full<Bytes>>>,
    Infallible,
>;

fn ok_service()
-> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send {
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn limited(layer: RateLimitLayer<LocalStore<FakeRelativeClock>>) -> Svc {
    tower::util::BoxCloneService::new(layer.layer(ok_service()))
}

fn from(peer: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer.parse().unwrap(), 40000)));
    req
}

fn with_xff(mut req: Request<()>, fields: &[&str]) -> Request<()> {
    for f in fields {
        req.headers_mut()
            .append("x-forwarded-for", HeaderValue::from_str(f).unwrap());
    }
    req
}

async fn status(svc: &mut Svc, req: Request<()>) -> StatusCode {
    svc.ready().await.unwrap().call(req).await.unwrap().status()
}

fn fake(
    quota: Quota,
    key: KeyBy,
) -> (
    RateLimitLayer<LocalStore<FakeRelativeClock>>,
    FakeRelativeClock,
) {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("test", quota)
        .key(key)
        .store(LocalStore::with_clock(clock.clone()))
        .build()
        .unwrap();
    (layer, clock)
}

#[tokio::test]
async fn burst_then_429_then_exactly_one_per_interval() {
    let (layer, clock) = fake(Quota::per_minute(60).burst(5), KeyBy::peer_ip());
    let mut svc = limited(layer);
    let mut allowed = 0;
    let mut last = None;
    for _ in 0..6 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(from("192.0.2.1"))
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            allowed += 1;
        }
        last = Some(res);
    }
    assert_eq!(allowed, 5);
    let res = last.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    assert_eq!(res.headers()["ratelimit"], "\"test\";r=0;t=1");
    assert_eq!(res.headers()["ratelimit-policy"], "\"test\";q=5;w=5");
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["reason"], "rate_limited");
    assert_eq!(body["status"], 429);
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], serde_json::json!(["test"]));

    // Just before one interval: still refused. At exactly one: one more.
    clock.advance(Duration::from_millis(999));
    assert_eq!(
        status(&mut svc, from("192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(status(&mut svc, from("192.0.2.1")).await, StatusCode::OK);
    assert_eq!(
        status(&mut svc, from("192.0.2.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn retry_after_rounds_up_and_is_never_zero() {
    // One request per 2.5 s: the wait after a refusal is 2.5 s → 3.
    let (layer, clock) = fake(
        Quota::new(2, Duration::from_secs(5)).burst(1),
        KeyBy::global(),
    );
    let mut svc = limited(layer);
    assert_eq!(status(&mut svc, Request::new(())).await, StatusCode::OK);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.headers()[header::RETRY_AFTER], "3");
    // 1 ms left: rounds up to 1, never 0.
    clock.advance(Duration::from_millis(2499));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()[header::RETRY_AFTER], "1");
}

#[tokio::test]
async fn untrusted_peer_cannot_dodge_by_spoofing_xff() {
    let proxies = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
    let (layer, _clock) = fake(Quota::per_minute(3), KeyBy::client_ip(proxies));
    let mut svc = limited(layer);
    let mut ok = 0;
    for i in 0..20 {
        let req = with_xff(from("203.0.113.5"), &[&format!("198.51.100.{i}")]);
        if status(&mut svc, req).await == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 3, "spoofed X-Forwarded-For must not create new buckets");
}

#[tokio::test]
async fn trusted_proxy_keys_on_the_client_not_the_spoof() {
    let proxies = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
    let (layer, _clock) = fake(Quota::per_minute(2), KeyBy::client_ip(proxies));
    let mut svc = limited(layer);
    // The client rotates the spoofed leftmost entry; the proxy appends the
    // real client address. All of it is one bucket.
    for (i, expected) in [
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
    ]
    .into_iter()
    .enumerate()
    {
        let req = with_xff(from("10.0.0.1"), &[&format!("6.6.6.{i}, 198.51.100.7")]);
        assert_eq!(status(&mut svc, req).await, expected);
    }
    // Split across two fields (merged in order): still the same client.
    let req = with_xff(from("10.0.0.1"), &["6.6.6.9", "198.51.100.7"]);
    assert_eq!(status(&mut svc, req).await, StatusCode::TOO_MANY_REQUESTS);
    // Another real client behind the same proxy has its own bucket.
    let req = with_xff(from("10.0.0.1"), &["6.6.6.9, 198.51.100.8"]);
    assert_eq!(status(&mut svc, req).await, StatusCode::OK);
}

#[tokio::test]
async fn ipv6_slash64_shares_and_mapped_ipv4_is_ipv4() {
    let (layer, _clock) = fake(Quota::per_minute(2), KeyBy::peer_ip());
    let mut svc = limited(layer);
    assert_eq!(
        status(&mut svc, from("2001:db8:a:b::1")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut svc, from("2001:db8:a:b:ffff:1:2:3")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut svc, from("2001:db8:a:b::99")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(&mut svc, from("2001:db8:a:c::1")).await,
        StatusCode::OK
    );

    assert_eq!(status(&mut svc, from("1.2.3.4")).await, StatusCode::OK);
    assert_eq!(
        status(&mut svc, from("::ffff:1.2.3.4")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&mut svc, from("1.2.3.4")).await,
        StatusCode::TOO_MANY_REQUESTS
    );

    // A /128 prefix separates every address.
    let (layer, _clock) = fake(
        Quota::per_minute(1),
        KeyBy::peer_ip().v6_prefix(128).unwrap(),
    );
    let mut svc = limited(layer);
    assert_eq!(status(&mut svc, from("2001:db8::1")).await, StatusCode::OK);
    assert_eq!(status(&mut svc, from("2001:db8::2")).await, StatusCode::OK);
}

#[tokio::test]
async fn missing_key_is_a_shared_bucket_or_allowed_never_500() {
    let (layer, _clock) = fake(Quota::per_minute(2), KeyBy::peer_ip());
    let mut svc = limited(layer);
    let statuses: Vec<_> = [(); 3].iter().map(|_| Request::new(())).collect();
    let mut got = Vec::new();
    for req in statuses {
        got.push(status(&mut svc, req).await);
    }
    assert_eq!(
        got,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("h", Quota::per_minute(1))
        .key(KeyBy::header(http::HeaderName::from_static("x-api-key")))
        .on_missing_key(MissingKey::Allow)
        .store(LocalStore::with_clock(clock))
        .build()
        .unwrap();
    let mut svc = limited(layer);
    for _ in 0..3 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("ratelimit").is_none());
    }
    let keyed = || {
        Request::builder()
            .header("x-api-key", "k1")
            .body(())
            .unwrap()
    };
    assert_eq!(status(&mut svc, keyed()).await, StatusCode::OK);
    assert_eq!(
        status(&mut svc, keyed()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[test]
fn concurrent_hammering_admits_exactly_burst() {
    let (layer, _clock) = fake(Quota::per_minute(10).burst(10), KeyBy::global());
    let admitted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(64));
    std::thread::scope(|scope| {
        for _ in 0..64 {
            let (layer, admitted, barrier) = (layer.clone(), admitted.clone(), barrier.clone());
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let mut svc = limited(layer);
                barrier.wait();
                for _ in 0..4 {
                    if rt.block_on(status(&mut svc, Request::new(()))) == StatusCode::OK {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 10);
}

#[test]
fn a_million_keys_stay_under_the_cap() {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("ip", Quota::per_minute(10))
        .key(KeyBy::peer_ip())
        .store(LocalStore::with_clock(clock).max_keys(100_000))
        .build()
        .unwrap();
    let policy = layer.policies()[0].clone();
    let mut max_seen = 0;
    for i in 0..1_000_000u32 {
        let key = RateKey::ip(std::net::IpAddr::V4(i.into()), 64);
        match layer.store().check(&policy, &key) {
            Check::Ready(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
        if i % 50_000 == 0 {
            max_seen = max_seen.max(layer.key_count());
        }
    }
    max_seen = max_seen.max(layer.key_count());
    assert!(max_seen <= 100_000, "{max_seen} keys held");
    assert_eq!(layer.key_count(), 100_000);
}

#[tokio::test]
async fn replenished_keys_are_cleaned_without_any_task() {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("ip", Quota::per_second(100))
        .key(KeyBy::peer_ip())
        .store(LocalStore::with_clock(clock.clone()))
        .build()
        .unwrap();
    let mut svc = limited(layer.clone());
    for i in 0..5000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
        assert_eq!(status(&mut svc, from(&ip)).await, StatusCode::OK);
    }
    assert_eq!(layer.key_count(), 5000);
    // Time passes; ordinary traffic from one client triggers the clean-up
    // (due after 4 decisions per held key).
    clock.advance(Duration::from_secs(2));
    for _ in 0..4 * 5000 {
        svc.ready()
            .await
            .unwrap()
            .call(from("192.0.2.200"))
            .await
            .unwrap();
    }
    assert!(layer.key_count() < 10, "{} keys left", layer.key_count());
}

fn auth_layer() -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .mode(tollgate::auth::AuthMode::Optional)
        .build()
        .unwrap()
}

fn bearer_from(peer: &str, token: &str) -> Request<()> {
    let mut req = from(peer);
    req.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    req
}

#[tokio::test]
async fn tiers_authenticated_premium_and_exempt() {
    let clock = FakeRelativeClock::default();
    let limit = RateLimitLayer::builder("anon", Quota::per_minute(1))
        .key(KeyBy::subject_or_client_ip(TrustedProxies::none()))
        .authenticated("user", Quota::per_minute(2))
        .tier("premium", Quota::per_minute(3), |p| {
            p.extensions.get::<Claims<Value>>().is_some_and(|c| {
                c["roles"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("premium")))
            })
        })
        .exempt(|p| p.uri.path() == "/healthz")
        .store(LocalStore::with_clock(clock))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth_layer())
        .layer(limit)
        .service(ok_service());
    let count = |req_fn: &dyn Fn() -> Request<()>| {
        let svc = svc.clone();
        let reqs: Vec<_> = (0..6).map(|_| req_fn()).collect();
        async move {
            let mut ok = 0;
            let mut policy = String::new();
            for req in reqs {
                let res = svc.clone().oneshot(req).await.unwrap();
                if res.status() == StatusCode::OK {
                    ok += 1;
                }
                if let Some(p) = res.headers().get("ratelimit-policy") {
                    policy = p.to_str().unwrap().to_owned();
                }
            }
            (ok, policy)
        }
    };
    assert_eq!(
        count(&|| from("192.0.2.1")).await,
        (1, "\"anon\";q=1;w=60".into())
    );
    let user = mint(Algorithm::HS256, &good_claims());
    assert_eq!(
        count(&|| bearer_from("192.0.2.2", &user)).await,
        (2, "\"user\";q=2;w=60".into())
    );
    // The same user from another address: the same (spent) bucket.
    assert_eq!(count(&|| bearer_from("192.0.2.3", &user)).await.0, 0);
    let mut claims = good_claims();
    claims["sub"] = json!("user-2");
    claims["roles"] = json!(["premium"]);
    let premium = mint(Algorithm::HS256, &claims);
    assert_eq!(
        count(&|| bearer_from("192.0.2.4", &premium)).await,
        (3, "\"premium\";q=3;w=60".into())
    );
    let health = || {
        let mut r = from("192.0.2.1");
        *r.uri_mut() = "/healthz".parse().unwrap();
        r
    };
    assert_eq!(count(&health).await, (6, String::new()));
}

#[tokio::test]
async fn junk_token_flood_is_refused_before_verification() {
    let verifications = Arc::new(AtomicUsize::new(0));
    let counter = verifications.clone();
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        // the wall clock is read once per token that reaches verification
        .clock(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            NOW
        })
        .build()
        .unwrap();
    let clock = FakeRelativeClock::default();
    let per_ip = RateLimitLayer::builder("per-ip", Quota::per_minute(10))
        .key(KeyBy::peer_ip())
        .store(LocalStore::with_clock(clock))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(per_ip)
        .layer(auth)
        .service(ok_service());
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let res = svc
            .clone()
            .oneshot(bearer_from("203.0.113.66", &format!("junk.{i}.token")))
            .await
            .unwrap();
        *statuses.entry(res.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&401), Some(&10));
    assert_eq!(statuses.get(&429), Some(&990));
    assert_eq!(verifications.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn legacy_headers_head_and_grpc() {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("l", Quota::per_minute(60).burst(1))
        .key(KeyBy::global())
        .headers(HeaderStyle::Legacy)
        .store(LocalStore::with_clock(clock))
        .build()
        .unwrap();
    let mut svc = limited(layer);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "1");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(res.headers()["x-ratelimit-reset"], "1");
    assert!(res.headers().get("ratelimit").is_none());
    let head = Request::builder().method(Method::HEAD).body(()).unwrap();
    let res = svc.ready().await.unwrap().call(head).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    let grpc = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(())
        .unwrap();
    let res = svc.ready().await.unwrap().call(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
}

/// A store that answers later, through the async path of the seam.
struct SlowStore {
    inner: LocalStore<FakeRelativeClock>,
    fail: bool,
}

impl RateLimitStore for SlowStore {
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Decision, StoreError>> + Send>>;

    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError> {
        self.inner.prepare(policies)
    }

    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future> {
        let decided = match self.inner.check(policy, key) {
            Check::Ready(d) => d,
            Check::Pending(_) => unreachable!(),
        };
        let fail = self.fail;
        Check::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            if fail {
                Err(StoreError::new("down"))
            } else {
                decided
            }
        }))
    }

    fn key_count(&self) -> usize {
        self.inner.key_count()
    }
}

#[tokio::test]
async fn async_store_path_decides_and_fails_by_policy() {
    let store = SlowStore {
        inner: LocalStore::with_clock(FakeRelativeClock::default()),
        fail: false,
    };
    let layer = RateLimitLayer::builder("slow", Quota::per_minute(2))
        .key(KeyBy::global())
        .store(store)
        .build()
        .unwrap();
    let svc = layer.layer(ok_service());
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            svc.clone()
                .oneshot(Request::new(()))
                .await
                .unwrap()
                .status(),
        );
    }
    assert_eq!(
        got,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    for (on_error, expected) in [
        (OnStoreError::FailOpen, StatusCode::OK),
        (OnStoreError::FailClosed, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let store = SlowStore {
            inner: LocalStore::with_clock(FakeRelativeClock::default()),
            fail: true,
        };
        let layer = RateLimitLayer::builder("slow", Quota::per_minute(2))
            .key(KeyBy::global())
            .on_store_error(on_error)
            .store(store)
            .build()
            .unwrap();
        let res = layer
            .layer(ok_service())
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), expected);
        assert!(res.headers().get("ratelimit").is_none());
    }
}

#[test]
fn configuration_errors() {
    assert!(
        RateLimitLayer::builder("bad name", Quota::per_minute(1))
            .build()
            .is_err()
    );
    assert!(
        RateLimitLayer::builder("a", Quota::per_minute(0))
            .build()
            .is_err()
    );
    let e = RateLimitLayer::builder("a", Quota::per_minute(1))
        .authenticated("a", Quota::per_minute(2))
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "policy");
    assert!(KeyBy::global().v6_prefix(64).is_err());
    assert!(KeyBy::peer_ip().v6_prefix(129).is_err());
}

// --- Regressions from the outside audit (security round 2) ---

/// `sub: alice` of issuer B spent issuer A's alice into 429.
#[tokio::test]
async fn subject_buckets_are_per_issuer() {
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        .issuer("https://a.example")
        .issuer("https://b.example")
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let clock = FakeRelativeClock::default();
    let limit = RateLimitLayer::builder("per-user", Quota::per_hour(1))
        .key(KeyBy::subject_or_client_ip(TrustedProxies::none()))
        .store(LocalStore::with_clock(clock))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth)
        .layer(limit)
        .service(ok_service());
    let send = |req| {
        let svc = svc.clone();
        async move { svc.oneshot(req).await.unwrap().status() }
    };
    let alice_of = |iss: &str| {
        let claims = json!({"sub": "alice", "iss": iss, "aud": AUDIENCE, "exp": NOW + 60});
        bearer_from("192.0.2.1", &mint(Algorithm::HS256, &claims))
    };
    assert_eq!(send(alice_of("https://a.example")).await, StatusCode::OK);
    assert_eq!(
        send(alice_of("https://a.example")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(alice_of("https://b.example")).await, StatusCode::OK);
}

/// A long header value is one fixed-size key, not a 64 KiB one.
#[tokio::test]
async fn header_keys_of_any_length_are_counted() {
    let (layer, _clock) = fake(
        Quota::per_hour(1),
        KeyBy::header(http::HeaderName::from_static("x-api-key")),
    );
    let mut svc = limited(layer.clone());
    let long = "k".repeat(64 * 1024);
    let req = |v: &str| Request::builder().header("x-api-key", v).body(()).unwrap();
    assert_eq!(status(&mut svc, req(&long)).await, StatusCode::OK);
    assert_eq!(
        status(&mut svc, req(&long)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&mut svc, req(&long[1..])).await, StatusCode::OK);
    assert_eq!(layer.key_count(), 2);
}

/// With no peer address, every client shares one bucket: still limited,
/// but now said once at `warn`, naming the fix.
#[test]
fn missing_peer_address_warns_once_naming_the_fix() {
    let logs = capture_logs(|| {
        run(async {
            let (layer, _clock) = fake(Quota::per_hour(100), KeyBy::peer_ip());
            let mut svc = limited(layer);
            for _ in 0..5 {
                assert_eq!(status(&mut svc, Request::new(())).await, StatusCode::OK);
            }
            // Requests with an address are not warned about.
            assert_eq!(status(&mut svc, from("192.0.2.1")).await, StatusCode::OK);
        });
    });
    assert_eq!(logs.matches(" WARN ").count(), 1, "{logs}");
    assert!(
        logs.contains("into_make_service_with_connect_info"),
        "{logs}"
    );
    assert!(logs.contains("PeerAddr"), "{logs}");
}

/// A subject-keyed limiter with no auth layer in front counts signed-in
/// users as anonymous: said once at `warn`.
#[test]
fn subject_limit_without_auth_in_front_warns_once() {
    let token = mint(Algorithm::HS256, &good_claims());
    let misordered = capture_logs(|| {
        run(async {
            let clock = FakeRelativeClock::default();
            let limit = RateLimitLayer::builder("anon", Quota::per_hour(100))
                .authenticated("user", Quota::per_hour(100))
                .key(KeyBy::subject_or_client_ip(TrustedProxies::none()))
                .store(LocalStore::with_clock(clock))
                .build()
                .unwrap();
            // Misordered: the limiter is outside the auth layer.
            let svc = ServiceBuilder::new()
                .layer(limit)
                .layer(auth_layer())
                .service(ok_service());
            for _ in 0..3 {
                let res = svc
                    .clone()
                    .oneshot(bearer_from("192.0.2.1", &token))
                    .await
                    .unwrap();
                let policy = res.headers()["ratelimit-policy"].to_str().unwrap();
                assert!(policy.starts_with("\"anon\""), "{policy}");
            }
        });
    });
    assert_eq!(misordered.matches(" WARN ").count(), 1, "{misordered}");
    assert!(
        misordered.contains("no JwtAuthLayer looked at the request"),
        "{misordered}"
    );

    let ordered = capture_logs(|| {
        run(async {
            let limit = RateLimitLayer::builder("anon", Quota::per_hour(100))
                .authenticated("user", Quota::per_hour(100))
                .build()
                .unwrap();
            let svc = ServiceBuilder::new()
                .layer(auth_layer())
                .layer(limit)
                .service(ok_service());
            svc.clone()
                .oneshot(bearer_from("192.0.2.1", &token))
                .await
                .unwrap();
            svc.oneshot(from("192.0.2.1")).await.unwrap();
        });
    });
    assert!(!ordered.contains(" WARN "), "{ordered}");
}

/// The async store path hands the ready inner service to its future: an
/// inner `tower::Buffer` at capacity must not be called unready (it panics).
#[tokio::test]
async fn inner_buffer_at_capacity_is_never_called_unready() {
    let store = SlowStore {
        inner: LocalStore::with_clock(FakeRelativeClock::default()),
        fail: false,
    };
    let layer = RateLimitLayer::builder("slow", Quota::per_minute(100))
        .key(KeyBy::global())
        .store(store)
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let buffered = tower::buffer::Buffer::new(inner, 1);
    let mut svc = layer.layer(buffered);
    let mut pending = Vec::new();
    for _ in 0..8 {
        // Each call happens after `ready`, as a tower caller must do.
        let call = svc.ready().await.unwrap().call(Request::new(()));
        pending.push(tokio::spawn(call));
    }
    for call in pending {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

/// One responder trait for every layer: a closure replaces the 429, and the
/// default problem+json names the refusing policy.
#[tokio::test]
async fn refusals_name_the_policy_and_take_a_custom_responder() {
    let (layer, _clock) = fake(Quota::per_hour(1), KeyBy::global());
    let mut svc = limited(layer.clone());
    assert_eq!(status(&mut svc, Request::new(())).await, StatusCode::OK);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["policy"], "test");
    assert_eq!(json["reason"], "rate_limited");

    let custom = layer.with_responder(
        |refusal: &tollgate::reject::Refusal<'_>, request: &http::request::Parts| {
            assert_eq!(refusal.kind(), tollgate::reject::RefusalKind::RateLimited);
            assert_eq!(refusal.policy(), Some("test"));
            assert!(refusal.headers().contains_key(header::RETRY_AFTER));
            let mut res = refusal.render(request);
            res.headers_mut()
                .insert("x-custom", HeaderValue::from_static("yes"));
            res
        },
    );
    let res = custom
        .layer(ok_service())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["x-custom"], "yes");
}

#[tokio::test]
async fn t_is_the_time_until_more_quota_on_allowed_responses() {
    // One unit a second, five at most (draft-ietf-httpapi-ratelimit-headers-11).
    let (layer, clock) = fake(Quota::per_minute(60).burst(5), KeyBy::peer_ip());
    let mut svc = limited(layer);
    let ratelimit = |res: &Response<_>| res.headers()["ratelimit"].to_str().unwrap().to_owned();
    let mut last = String::new();
    for _ in 0..5 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(from("192.0.2.1"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        last = ratelimit(&res);
    }
    // Empty: the next unit in 1 s (the bucket is full again only in 5 s).
    assert_eq!(last, "\"test\";r=0;t=1");
    // 2.5 s later, two units are back and a third comes in 0.5 s; this
    // request spends one: one left, the next in 1 s (rounded up).
    clock.advance(Duration::from_millis(2_500));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(ratelimit(&res), "\"test\";r=1;t=1");
    // Left alone 10 s: full, so nothing more to come after this request's
    // unit, which is back in 1 s.
    clock.advance(Duration::from_secs(10));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(ratelimit(&res), "\"test\";r=4;t=1");
}
