#![no_main]
//! The whole stack (IP limit → auth → CSRF → user limit) with arbitrary
//! methods and headers: a standard status, never a panic.

#[path = "common.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;

use http::{HeaderName, HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use tollgate::csrf::CsrfGuardLayer;
use tollgate::rate_limit::{KeyBy, PeerAddr, Quota, RateLimitLayer, TrustedProxies};
use tower::{ServiceBuilder, ServiceExt};

fn limits() -> &'static (RateLimitLayer, RateLimitLayer) {
    static LIMITS: OnceLock<(RateLimitLayer, RateLimitLayer)> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let proxies = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
        (
            RateLimitLayer::builder("ip", Quota::per_second(1000)).key(KeyBy::client_ip(proxies.clone())).build().unwrap(),
            RateLimitLayer::builder("anon", Quota::per_second(1000))
                .authenticated("user", Quota::per_second(1000))
                .key(KeyBy::subject_or_client_ip(proxies))
                .build()
                .unwrap(),
        )
    })
}

fuzz_target!(|input: (u8, [u8; 4], Vec<(Vec<u8>, Vec<u8>)>)| {
    let (method, peer, headers) = input;
    let method = [Method::GET, Method::POST, Method::HEAD, Method::DELETE, Method::OPTIONS][usize::from(method % 5)].clone();
    let mut req = Request::builder().method(method).body(()).unwrap();
    req.extensions_mut().insert(PeerAddr(SocketAddr::from((peer, 4000))));
    for (name, value) in headers.iter().take(12) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) else { continue };
        req.headers_mut().append(name, value);
    }
    let (per_ip, per_user) = limits();
    let svc = ServiceBuilder::new()
        .layer(per_ip.clone())
        .layer(common::auth().clone().optional())
        .layer(CsrfGuardLayer::new())
        .layer(per_user.clone())
        .service(tower::service_fn(common::ok));
    let res = common::ready(svc.oneshot(req)).unwrap();
    common::check_status(res.status().as_u16());
});
