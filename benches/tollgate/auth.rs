//! The auth layer in front of a no-op service, against the bare service and
//! against `jsonwebtoken::decode` alone on the same token.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use http::{Request, Response, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tollgate::auth::{JwtAuthLayer, Key};
use tower::{Layer, Service};

use crate::fixtures::{SECRET, User, fixture, ready};

struct Case {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    key: Key,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(SECRET),
            decoding: DecodingKey::from_secret(SECRET),
            key: Key::hmac(SECRET).expect("key"),
        },
        Case {
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("key"),
            decoding: DecodingKey::from_rsa_pem(&fixture("rsa_public.pem")).expect("key"),
            key: Key::rsa_pem(fixture("rsa_public.pem")).expect("key"),
        },
        Case {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(&fixture("ec256_private.pem")).expect("key"),
            decoding: DecodingKey::from_ec_pem(&fixture("ec256_public.pem")).expect("key"),
            key: Key::ec_pem(fixture("ec256_public.pem")).expect("key"),
        },
        Case {
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).expect("key"),
            decoding: DecodingKey::from_ed_pem(&fixture("ed25519_public.pem")).expect("key"),
            key: Key::ed_pem(fixture("ed25519_public.pem")).expect("key"),
        },
    ]
}

pub fn bench(c: &mut Criterion) {
    if !crate::selected("auth") {
        return;
    }
    tollgate::crypto::install_default_provider();
    let now = jsonwebtoken::get_current_timestamp();
    let user = User {
        sub: "user-1".into(),
        iss: "https://auth.example".into(),
        aud: "api".into(),
        exp: now + 3600,
        roles: vec!["reader".into()],
    };
    let noop = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Bytes::new()))
    });

    let mut group = c.benchmark_group("auth");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(30);
    for case in cases() {
        let name = format!("{:?}", case.alg);
        let token =
            jsonwebtoken::encode(&Header::new(case.alg), &user, &case.encoding).expect("token");
        let cookie = format!("theme=dark; da3={token}; lang=en");
        let request = || {
            Request::builder()
                .header(header::COOKIE, cookie.as_str())
                .body(())
                .expect("request")
        };

        let mut bare = noop;
        group.bench_function(format!("{name}/bare"), |b| {
            b.iter_batched(request, |req| ready(bare.call(req)), BatchSize::SmallInput)
        });

        let mut validation = Validation::new(case.alg);
        validation.set_issuer(&["https://auth.example"]);
        validation.set_audience(&["api"]);
        group.bench_function(format!("{name}/jsonwebtoken_decode"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<User>(black_box(&token), &case.decoding, &validation)
                    .expect("valid")
            })
        });

        let layer = JwtAuthLayer::<User>::builder()
            .key(case.key)
            .cookie("da3")
            .issuer("https://auth.example")
            .audience("api")
            .build()
            .expect("layer");
        let mut svc = layer.layer(noop);
        group.bench_function(format!("{name}/layer"), |b| {
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
    group.finish();
}
