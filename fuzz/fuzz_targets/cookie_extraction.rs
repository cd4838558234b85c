#![no_main]
//! Arbitrary `Cookie` fields: extraction never panics, and a token it finds
//! never verifies (it was not signed).

#[path = "common.rs"]
mod common;

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};

fuzz_target!(|fields: Vec<Vec<u8>>| {
    let mut req = Request::new(());
    for field in fields.iter().take(8) {
        if let Ok(value) = HeaderValue::from_bytes(field) {
            req.headers_mut().append(http::header::COOKIE, value);
        }
    }
    let svc = common::auth().clone().layer(tower::service_fn(common::ok));
    let res = common::ready(svc.oneshot(req)).unwrap();
    // Nothing here is signed: never authenticated.
    assert_ne!(res.status(), 200);
    common::check_status(res.status().as_u16());
});
