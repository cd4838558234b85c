//! The verified-token cache: hits, expiry, rotation, bounds, failures.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate::Claims;
use tollgate::auth::{JwtAuthLayer, Key};
use tower::{Layer, ServiceExt};

struct Clock(Arc<AtomicU64>);

impl Clock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(NOW)))
    }

    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    fn source(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let now = self.0.clone();
        move || now.load(Ordering::SeqCst)
    }
}

fn layer(clock: &Clock, capacity: usize) -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap().kid("a"))
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(clock.source())
        .cache(capacity)
        .build()
        .unwrap()
}

fn bearer(token: &str) -> Request<()> {
    let mut req = Request::new(());
    req.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    req
}

/// Status and reason (or the subject on success).
async fn call(layer: &JwtAuthLayer<Value>, token: &str) -> (StatusCode, String) {
    call_keeping(layer, token, &Arc::default()).await
}

/// As [`call`], keeping the claims the service was given in `kept`.
async fn call_keeping(
    layer: &JwtAuthLayer<Value>,
    token: &str,
    kept: &Arc<std::sync::Mutex<Vec<Claims<Value>>>>,
) -> (StatusCode, String) {
    let kept = kept.clone();
    let svc = layer.layer(tower::service_fn(move |req: Request<()>| {
        let kept = kept.clone();
        async move {
            let claims = req.extensions().get::<Claims<Value>>().unwrap().clone();
            let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
            kept.lock().unwrap().push(claims);
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from(sub),
            )))
        }
    }));
    let res = svc.oneshot(bearer(token)).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = if status == StatusCode::OK {
        String::from_utf8(body.to_vec()).unwrap()
    } else {
        serde_json::from_slice::<Value>(&body).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    (status, text)
}

fn token(kid: &str, claims: &Value) -> String {
    mint_with(
        json!({"alg": "HS256", "kid": kid}),
        Algorithm::HS256,
        claims,
    )
}

#[tokio::test]
async fn a_repeat_is_served_from_the_cache_with_shared_claims() {
    let clock = Clock::new();
    let layer = layer(&clock, 100);
    let t = token("a", &good_claims());
    let kept = Arc::default();
    assert_eq!(
        call_keeping(&layer, &t, &kept).await,
        (StatusCode::OK, "user-1".into())
    );
    assert_eq!(
        call_keeping(&layer, &t, &kept).await,
        (StatusCode::OK, "user-1".into())
    );
    {
        let kept = kept.lock().unwrap();
        assert!(
            Arc::ptr_eq(&kept[0].0, &kept[1].0),
            "a hit shares the claims parsed on the miss"
        );
    }
    assert_eq!(layer.cached_tokens(), 1);
    // Without the cache, every request parses its own claims.
    let uncached = self::layer(&clock, 0);
    let kept = Arc::default();
    call_keeping(&uncached, &t, &kept).await;
    call_keeping(&uncached, &t, &kept).await;
    let kept = kept.lock().unwrap();
    assert!(!Arc::ptr_eq(&kept[0].0, &kept[1].0));
    assert_eq!(uncached.cached_tokens(), 0);
}

#[tokio::test]
async fn an_expired_cached_token_is_refused() {
    let clock = Clock::new();
    let layer = layer(&clock, 100);
    let mut claims = good_claims();
    claims["exp"] = json!(NOW + 100);
    let t = token("a", &claims);
    assert_eq!(call(&layer, &t).await.0, StatusCode::OK);
    clock.advance(100 + 59);
    assert_eq!(
        call(&layer, &t).await.0,
        StatusCode::OK,
        "within the leeway"
    );
    clock.advance(1);
    assert_eq!(
        call(&layer, &t).await,
        (StatusCode::UNAUTHORIZED, "expired".into())
    );
    assert_eq!(
        call(&layer, &t).await,
        (StatusCode::UNAUTHORIZED, "expired".into())
    );
}

#[tokio::test]
async fn tokens_of_a_rotated_out_key_are_refused() {
    let clock = Clock::new();
    let layer = layer(&clock, 100);
    let old = token("a", &good_claims());
    assert_eq!(call(&layer, &old).await.0, StatusCode::OK);
    assert_eq!(layer.cached_tokens(), 1);

    let new_secret = b"the-next-hmac-secret-of-32-bytes-or-more";
    layer
        .rotate_keys([Key::hmac(new_secret).unwrap().kid("b")])
        .unwrap();
    assert_eq!(
        call(&layer, &old).await,
        (StatusCode::UNAUTHORIZED, "unknown_key".into())
    );
    let new = sign_raw(
        &json!({"alg": "HS256", "kid": "b"}),
        &serde_json::to_vec(&good_claims()).unwrap(),
        Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(new_secret),
    );
    assert_eq!(call(&layer, &new).await.0, StatusCode::OK);
    // A clone made before the rotation sees the new keys too.
    let clone = layer.clone().lenient();
    assert_eq!(call(&clone, &new).await.0, StatusCode::OK);
    // An invalid rotation keeps the current keys.
    assert!(layer.rotate_keys([]).is_err());
    assert_eq!(call(&layer, &new).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_unique_tokens_stays_within_the_bound() {
    let clock = Clock::new();
    let layer = layer(&clock, 64);
    for i in 0..1_000 {
        let mut claims = good_claims();
        claims["sub"] = json!(format!("user-{i}"));
        assert_eq!(call(&layer, &token("a", &claims)).await.0, StatusCode::OK);
    }
    assert!(layer.cached_tokens() <= 64, "{}", layer.cached_tokens());
}

#[tokio::test]
async fn failed_verifications_are_never_cached() {
    let clock = Clock::new();
    let layer = layer(&clock, 100);
    let mut expired = good_claims();
    expired["exp"] = json!(NOW - 1_000);
    let mut wrong_iss = good_claims();
    wrong_iss["iss"] = json!("https://evil.example");
    let good = token("a", &good_claims());
    let (msg, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{msg}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    for t in [token("a", &expired), token("a", &wrong_iss), forged.clone()] {
        for _ in 0..2 {
            assert_eq!(call(&layer, &t).await.0, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(layer.cached_tokens(), 0);
    // A cached good token does not make its forged sibling pass.
    assert_eq!(call(&layer, &good).await.0, StatusCode::OK);
    assert_eq!(
        call(&layer, &forged).await,
        (StatusCode::UNAUTHORIZED, "bad_signature".into())
    );
}
