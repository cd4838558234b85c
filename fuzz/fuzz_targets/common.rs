//! Shared by the fuzz targets: a layer stack and a synchronous driver.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use serde_json::Value;
use tollgate::auth::{JwtAuthLayer, Key};

pub const SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes!!";
pub const NOW: u64 = 1_700_000_000;

/// Polls a future that completes without waiting (every service here does).
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the layers answered asynchronously"),
    }
}

pub fn auth() -> &'static JwtAuthLayer<Value> {
    static AUTH: OnceLock<JwtAuthLayer<Value>> = OnceLock::new();
    AUTH.get_or_init(|| {
        JwtAuthLayer::<Value>::builder()
            .key(Key::hmac(SECRET).unwrap())
            .cookie("da3")
            .bearer()
            .issuer("https://issuer")
            .audience("api")
            .require_claim("roles")
            .max_lifetime(std::time::Duration::from_secs(86_400))
            .clock(|| NOW)
            .cache(64)
            .build()
            .unwrap()
    })
}

pub fn ok(_req: Request<()>) -> std::future::Ready<Result<Response<http_body_util::Full<Bytes>>, Infallible>> {
    std::future::ready(Ok(Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")))))
}

/// A response must be a success the inner service gave, or a refusal with a
/// standard status.
pub fn check_status(status: u16) {
    assert!(matches!(status, 200 | 401 | 403 | 429 | 431), "unexpected status {status}");
}
