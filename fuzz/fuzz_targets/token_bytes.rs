#![no_main]
//! Arbitrary bytes as a Bearer token: refused, never a panic.

#[path = "common.rs"]
mod common;

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};

fuzz_target!(|token: &[u8]| {
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(token);
    let Ok(value) = HeaderValue::from_bytes(&value) else { return };
    let mut req = Request::new(());
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    let svc = common::auth().clone().layer(tower::service_fn(common::ok));
    let res = common::ready(svc.oneshot(req)).unwrap();
    assert!(matches!(res.status().as_u16(), 401 | 431), "{}", res.status());
});
