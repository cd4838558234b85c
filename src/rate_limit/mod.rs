//! Rate limiting per client IP, verified user, header or any key.
//!
//! [`RateLimitLayer`] counts each request against a [`Quota`] (GCRA, via
//! governor) in the bucket of its key, adds the IETF `RateLimit` /
//! `RateLimit-Policy` headers (or the legacy `X-RateLimit-*`), and answers
//! `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up,
//! never 0) and a problem+json body past the quota — or, for gRPC requests,
//! `grpc-status: 8` (RESOURCE_EXHAUSTED).
//!
//! ```
//! use std::convert::Infallible;
//! use std::net::SocketAddr;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tollgate::rate_limit::{KeyBy, PeerAddr, Quota, RateLimitLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let limit = RateLimitLayer::builder("per-ip", Quota::per_minute(60).burst(2))
//!     .key(KeyBy::peer_ip())
//!     .build()?;
//! let mut svc = limit.layer(service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(Bytes::new()))
//! }));
//!
//! let from = |ip: &str| {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 1234)));
//!     req
//! };
//! let ok = svc.ready().await?.call(from("192.0.2.1")).await?;
//! assert_eq!(ok.headers()["ratelimit"], "\"per-ip\";r=1;t=1");
//! svc.ready().await?.call(from("192.0.2.1")).await?;
//! let limited = svc.ready().await?.call(from("192.0.2.1")).await?;
//! assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(limited.headers()["retry-after"], "1");
//! // another client has its own bucket
//! let other = svc.ready().await?.call(from("192.0.2.2")).await?;
//! assert_eq!(other.status(), StatusCode::OK);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # The recommended stack
//!
//! ```text
//! RateLimit by client IP (coarse)  →  JwtAuth  →  RateLimit by subject (per user)  →  service
//! ```
//!
//! The coarse per-IP limit in front refuses a flood of junk tokens from one
//! address before any signature is checked; the per-user limit behind auth
//! keys on the *verified* subject, falling back to the client IP for
//! anonymous callers. With `ServiceBuilder` the first layer added is the
//! outermost.
//!
//! # Keys and proxies
//!
//! See [`KeyBy`]. Forwarding headers are trusted only from configured proxies
//! ([`TrustedProxies`]); IPv6 clients are grouped by /64 by default;
//! IPv4-mapped IPv6 addresses count as IPv4. A request without a key (no peer
//! address recorded, no keying header) goes to a shared bucket by default
//! ([`MissingKey`]), never a 500.
//!
//! # Charged by cost
//!
//! With [`RateLimitBuilder::charged_by_handler`] a quota counts units, not
//! requests: the layer charges one at the door and hands the handler a
//! [`Cost`] (in the request extensions) to charge its estimate before the
//! work and settle the actual cost after, against the caller's own bucket;
//! see [`Cost`] and the [guide](crate::guide::rate_limiting).
//!
//! # Memory
//!
//! The default [`LocalStore`] cleans itself as requests arrive and holds at
//! most `max_keys` keys; see its docs for the behaviour at the cap.

mod builder;
mod client_ip;
mod cost;
mod decide;
mod headers;
mod key;
mod layer;
mod limiter;
mod quota;
pub mod store;

pub use builder::RateLimitBuilder;
pub use client_ip::{ForwardedHeader, PeerAddr, TrustedProxies, peer_ip};
pub use cost::{ChargeError, ChargeErrorKind, Cost};
pub use headers::HeaderStyle;
pub use key::{DEFAULT_V6_PREFIX, KeyBy, RateKey};
pub use layer::{RateLimit, RateLimitLayer, ResponseFuture};
pub use limiter::{MissingKey, OnStoreError};
pub use quota::{Policy, Quota};

pub use store::{LocalStore, RateLimitStore};
