//! The fast path: verified-token cache hits and misses per algorithm, the
//! full stack with the cache on and off, and cookie lookup.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use http::{Request, Response, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::{PeerAddr, Quota, RateLimitLayer};
use tollgate::refresh::{Refresh, RefreshSessionLayer, SigningKey};
use tower::{Layer, Service, ServiceBuilder};

use crate::fixtures::{SECRET, User, fixture, ready};

pub fn bench(c: &mut Criterion) {
    if !crate::selected("fast_path") {
        return;
    }
    tollgate::crypto::install_default_provider();
    let mut group = c.benchmark_group("fast_path");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);

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
    let cases = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(SECRET),
            Key::hmac(SECRET).expect("key"),
        ),
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("key"),
            Key::rsa_pem(fixture("rsa_public.pem")).expect("key"),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).expect("key"),
            Key::ec_pem(fixture("ec256_public.pem")).expect("key"),
        ),
    ];

    let mut bare = noop;
    let plain = || {
        Request::builder()
            .header(header::COOKIE, "theme=dark; lang=en; consent=yes")
            .body(())
            .expect("request")
    };
    group.bench_function("bare", |b| {
        b.iter_batched(plain, |req| ready(bare.call(req)), BatchSize::SmallInput)
    });

    // Cookie lookup when the token cookie is absent: optional mode, 3 cookies.
    let optional = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).expect("key"))
        .cookie("da3")
        .build()
        .expect("layer")
        .optional();
    let mut absent = optional.layer(noop);
    group.bench_function("cookie_absent", |b| {
        b.iter_batched(plain, |req| ready(absent.call(req)), BatchSize::SmallInput)
    });

    for (alg, encoding, key) in cases {
        let token = jsonwebtoken::encode(&Header::new(alg), &user, &encoding).expect("token");
        let cookie = format!("theme=dark; da3={token}; lang=en; consent=yes");
        let request = || {
            let mut req = Request::builder()
                .header(header::COOKIE, cookie.as_str())
                .body(())
                .expect("request");
            req.extensions_mut()
                .insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 40000))));
            req
        };
        for cached in [false, true] {
            let auth = JwtAuthLayer::<User>::builder()
                .key(key.clone())
                .cookie("da3")
                .issuer("https://auth.example")
                .audience("api")
                .cache(if cached { 10_000 } else { 0 })
                .build()
                .expect("layer");
            let label = if cached { "hit" } else { "miss" };
            let mut svc = auth.clone().layer(noop);
            group.bench_function(format!("{alg:?}/auth_{label}"), |b| {
                b.iter_batched(
                    request,
                    |req| {
                        let res = ready(svc.call(req)).expect("infallible");
                        assert_eq!(res.status(), 200);
                        res
                    },
                    BatchSize::SmallInput,
                )
            });
            let limit = || {
                RateLimitLayer::builder(
                    "anonymous",
                    Quota::per_second(1_000_000).burst(1_000_000_000),
                )
                .authenticated(
                    "registered",
                    Quota::per_second(1_000_000).burst(1_000_000_000),
                )
                .build()
                .expect("layer")
            };
            let mut stack = ServiceBuilder::new()
                .layer(limit())
                .layer(auth)
                .layer(limit())
                .service(noop);
            group.bench_function(format!("{alg:?}/stack_{label}"), |b| {
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
        }
    }

    // The revocation check on a cached HS256 request: none revoked (one
    // atomic load) and 10,000 revoked tokens and subjects (other sessions).
    let hs = EncodingKey::from_secret(SECRET);
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &user, &hs).expect("token");
    let cookie = format!("theme=dark; da3={token}; lang=en; consent=yes");
    let request = || {
        Request::builder()
            .header(header::COOKIE, cookie.as_str())
            .body(())
            .expect("request")
    };
    for revoked in [0_usize, 10_000] {
        let revocations = tollgate::auth::Revocations::new();
        for i in 0..revoked {
            if i % 2 == 0 {
                revocations.revoke_token(&format!("jti-{i}"), now + 3600);
            } else {
                revocations.revoke_subject(
                    Some("https://auth.example"),
                    &format!("other-{i}"),
                    now,
                );
            }
        }
        let auth = JwtAuthLayer::<User>::builder()
            .key(Key::hmac(SECRET).expect("key"))
            .cookie("da3")
            .issuer("https://auth.example")
            .audience("api")
            .cache(10_000)
            .revocations(revocations)
            .build()
            .expect("layer");
        let mut svc = auth.layer(noop);
        group.bench_function(format!("HS256/auth_hit_revoked_{revoked}"), |b| {
            b.iter_batched(
                request,
                |req| {
                    let res = ready(svc.call(req)).expect("infallible");
                    assert_eq!(res.status(), 200);
                    res
                },
                BatchSize::SmallInput,
            )
        });
    }

    // Sliding refresh on a cached HS256 cookie: outside the window (one
    // comparison; compare with HS256/auth_hit), and a request that mints
    // (each iteration a token the layer has not re-minted yet, so the
    // once-per-token set never short-cuts it).
    let refresh = || {
        Refresh::new(
            SigningKey::hmac(SECRET).expect("key"),
            Duration::from_secs(180),
        )
        .capacity(1_000_000)
    };
    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).expect("key"))
        .cookie("da3")
        .issuer("https://auth.example")
        .audience("api")
        .cache(10_000)
        .build()
        .expect("layer");
    let sliding = RefreshSessionLayer::new(&auth, refresh()).expect("refresh");
    let mut svc = auth.layer(sliding.layer(noop));
    group.bench_function("HS256/auth_hit_refresh_outside_window", |b| {
        b.iter_batched(
            request,
            |req| {
                let res = ready(svc.call(req)).expect("infallible");
                assert!(!res.headers().contains_key(header::SET_COOKIE));
                res
            },
            BatchSize::SmallInput,
        )
    });
    let near = |i: u64| {
        let claims = serde_json::json!({
            "sub": "user-1", "iss": "https://auth.example", "aud": "api",
            "iat": now - 800 - i % 100, "exp": now + 100, "jti": format!("j{i}"),
            "roles": ["reader"],
        });
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &hs).expect("token");
        Request::builder()
            .header(header::COOKIE, format!("theme=dark; da3={token}; lang=en"))
            .body(())
            .expect("request")
    };
    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).expect("key"))
        .cookie("da3")
        .issuer("https://auth.example")
        .audience("api")
        .build()
        .expect("layer");
    let sliding = RefreshSessionLayer::new(&auth, refresh()).expect("refresh");
    let mut svc = auth.layer(sliding.layer(noop));
    let mut i = 0_u64;
    group.bench_function("HS256/auth_miss_refresh_mint", |b| {
        b.iter_batched(
            || {
                i += 1;
                near(i)
            },
            |req| {
                let res = ready(svc.call(req)).expect("infallible");
                assert!(res.headers().contains_key(header::SET_COOKIE));
                res
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}
