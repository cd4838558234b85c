//! # tollgate
//!
//! Tower layers that let a service do what its API gateway did — verify the
//! login JWT carried in a cookie (or `Authorization: Bearer`), rate-limit per
//! user or per client IP, refuse cross-site requests, and report statistics —
//! in-process, without a proxy hop.
//!
//! The layers are generic over request and response bodies and depend on no
//! web framework: one layer value mounts on an axum `Router` and on a tonic
//! `Server`. Refusals are rendered per request as HTTP
//! (`application/problem+json`) or gRPC (`grpc-status`); see [`reject`].
//!
//! # The path of one request
//!
//! ```text
//! client ─▶ RateLimit by client IP   coarse; refuses floods before any signature check
//!        ─▶ JwtAuth                  find token (cookie fields, Bearer) → verify → Identity / Anonymous / refuse
//!        ─▶ RefreshSession           re-mints a session cookie near its exp (optional; refresh)
//!        ─▶ ForwardScope             the caller's token for outbound calls (optional; forward)
//!        ─▶ CsrfGuard                cookie-authenticated unsafe methods and WebSocket upgrades
//!        ─▶ RateLimit by subject     per (issuer, subject); client IP for anonymous callers; tiers
//!        ─▶ your service (axum Router / tonic Server)
//! ```
//!
//! Each box is an independent layer; they meet only through request
//! extensions ([`Identity`], [`Claims`], [`Anonymous`]). The deciding ones
//! (auth, rate limit, CSRF) share one service and response future
//! ([`middleware`]). With
//! `ServiceBuilder` the first layer added is the outermost; with axum's
//! `Router::layer` the last call is. A layer that needs the auth layer in
//! front of it and sees a request the auth layer never looked at says so
//! (once, at `warn`) instead of quietly allowing.
//!
//! ```
//! # #[cfg(all(feature = "auth", feature = "rate-limit", feature = "csrf"))]
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::auth::{JwtAuthLayer, Key};
//! use tollgate::csrf::CsrfGuardLayer;
//! use tollgate::rate_limit::{KeyBy, Quota, RateLimitLayer, TrustedProxies};
//!
//! #[derive(serde::Deserialize)]
//! struct User { sub: String }
//!
//! let auth = JwtAuthLayer::<User>::builder()
//!     .key(Key::hmac(b"0123456789abcdef0123456789abcdef")?)
//!     .cookie("da3")
//!     .bearer()
//!     .build()?;
//! let per_user = RateLimitLayer::builder("anonymous", Quota::per_minute(60).burst(20))
//!     .authenticated("registered", Quota::per_minute(600).burst(100))
//!     .key(KeyBy::subject_or_client_ip(TrustedProxies::none()))
//!     .build()?;
//! let service = ServiceBuilder::new()
//!     .layer(auth)                  // outermost: runs first
//!     .layer(CsrfGuardLayer::new())
//!     .layer(per_user)
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, Infallible>(Response::new(Bytes::from("hello")))
//!     }));
//!
//! // No token: the auth layer answers 401 and the service is not called.
//! let response = service.oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Features
//!
//! | feature | default | what it gives |
//! |---|---|---|
//! | `auth` | yes | [`auth`]: `JwtAuthLayer` (jsonwebtoken, verified-token cache) |
//! | `rate-limit` | yes | [`rate_limit`]: `RateLimitLayer` (GCRA via governor, local store) |
//! | `csrf` | yes | [`csrf`]: `CsrfGuardLayer` |
//! | `aws-lc-rs` | yes | signature verification with aws-lc-rs |
//! | `rust-crypto` | no | signature verification with RustCrypto (used when `aws-lc-rs` is off) |
//! | `axum` | no | `Claims<T>`, `Option<Claims<T>>` and `Identity` extractors, on `axum-core` only |
//! | `axum-connect-info` | no | the peer address from axum's `ConnectInfo<SocketAddr>` |
//! | `tonic` | no | the peer address from tonic's `TcpConnectInfo` |
//! | `redis` | no | state shared by replicas on Redis, Redis Sentinel or Redis Cluster. With `rate-limit`: `RedisStore`, rate-limit state, exact or local-first; with `auth`: `RedisRevocations`, revocations |
//! | `jwks` | no | `RemoteKeys`: keys from a JWKS URL or an OIDC issuer |
//! | `backchannel-logout` | no | `BackChannelLogout`: the OpenID Connect back-channel logout endpoint |
//! | `metrics` | no | counters, histogram and gauge on the `metrics` facade ([`observe`]) |
//! | `config` | no | [`config`]: the whole stack from a TOML file |
//! | `test-util` | no | `testing`: claims, identities and signed tokens for tests |
//!
//! Enabling both crypto features is safe: tollgate verifies with aws-lc-rs and
//! installs it as jsonwebtoken's process default (see `crypto`).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "auth")]
pub mod auth;
pub mod body;
mod clock;
#[cfg(feature = "rate-limit")]
pub mod concurrency;
#[cfg(feature = "config")]
pub mod config;
// The configuration file describes the whole stack.
#[cfg(all(feature = "config", not(all(feature = "auth", feature = "rate-limit"))))]
compile_error!(
    "tollgate's `config` feature reads the whole stack from a file: enable `auth` and \
     `rate-limit` with it (both are default features)"
);
#[cfg(feature = "auth")]
pub mod crypto;
#[cfg(feature = "csrf")]
pub mod csrf;
mod error;
#[cfg(feature = "auth")]
pub mod forward;
pub mod identity;
#[cfg(feature = "rate-limit")]
pub mod lockout;
mod macros;
#[cfg(any(feature = "auth", feature = "rate-limit", feature = "csrf"))]
pub mod middleware;
pub mod observe;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
// Reaching Redis serves the rate-limit store and shared revocations.
#[cfg(all(feature = "redis", any(feature = "auth", feature = "rate-limit")))]
mod redis;
#[cfg(feature = "auth")]
pub mod refresh;
pub mod reject;
pub mod routes;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod trace;

#[cfg(feature = "auth")]
pub use auth::{Claims, JwtAuthLayer, Key};
pub use clock::{SystemClock, WallClock};
pub use error::{AuthError, AuthErrorKind, ConfigError};
pub use identity::{Anonymous, CredentialSource, Identity};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{KeyBy, Quota, RateLimitLayer, TrustedProxies};

// Guides, topic by topic (doc-only; their snippets are doc tests). They
// need every feature, as docs.rs builds them.
#[cfg(all(
    any(doc, doctest),
    feature = "axum",
    feature = "axum-connect-info",
    feature = "tonic",
    feature = "redis",
    feature = "jwks",
    feature = "config",
    feature = "metrics"
))]
pub mod guide;

/// The README's snippets, compiled (and where they need no network, run) as
/// doc tests, so that what users paste works.
#[cfg(all(
    doctest,
    feature = "axum",
    feature = "axum-connect-info",
    feature = "tonic",
    feature = "redis",
    feature = "jwks",
    feature = "config"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
