//! JWT verification from a cookie or `Authorization: Bearer`.
//!
//! [`JwtAuthLayer`] finds the token (cookie fields first or the header first,
//! as configured), verifies it against keys bound to their algorithms, checks
//! the claims, and inserts [`Claims<T>`] and [`Identity`] into the request
//! extensions. A refusal is a response (401/403/431 with problem+json, or a
//! gRPC status), never an error, and the inner service is not called.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::auth::{Claims, JwtAuthLayer, Key};
//!
//! #[derive(serde::Deserialize)]
//! struct User { sub: String }
//!
//! # tokio_test_block_on(async {
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let auth = JwtAuthLayer::<User>::builder()
//!     .key(Key::hmac(secret)?)
//!     .cookie("da3")
//!     .bearer()
//!     .issuer("https://auth.example")
//!     .build()?;
//!
//! let svc = ServiceBuilder::new().layer(auth).service(service_fn(|req: Request<()>| async move {
//!     let user = req.extensions().get::<Claims<User>>().expect("the layer ran");
//!     Ok::<_, Infallible>(Response::new(Bytes::from(user.sub.clone())))
//! }));
//!
//! // No token: 401 with `WWW-Authenticate: Bearer`, the handler is not called.
//! let res = svc.oneshot(Request::new(())).await?;
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(res.headers()["www-authenticate"], "Bearer");
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! # Modes, per route
//!
//! Clones of a layer share one verification state, so one configuration can
//! be mounted leniently on a public route and strictly on a private one (axum
//! `route_layer`):
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::get};
//! use tollgate::auth::{JwtAuthLayer, Key};
//! # #[derive(serde::Deserialize)] struct User { sub: String }
//! # async fn graphql() {}
//! # async fn me() {}
//! # let auth = JwtAuthLayer::<User>::builder()
//! #     .key(Key::hmac(b"0123456789abcdef0123456789abcdef").unwrap()).bearer().build().unwrap();
//! let app: Router = Router::new()
//!     .route("/graphql", get(graphql).route_layer(auth.clone().lenient()))
//!     .route("/me", get(me).route_layer(auth.required()));
//! # }
//! ```
//!
//! # Verified-token cache
//!
//! `.cache(capacity)` keeps verified tokens so that a repeat of the same token
//! skips signature verification: keyed by the full token text (never a hash
//! alone), only successful verifications, each entry kept until the earlier of
//! `exp` + leeway and `.cache_ttl(..)` (default 5 minutes), `exp` checked again
//! on every hit, claims shared through `Arc`, bounded in entries. It is off by
//! default: it holds up to `capacity` tokens (each at most the token cap) in
//! memory, and a service with static keys gains most from it. Call
//! [`JwtAuthLayer::clear_cache`] after changing keys.
//!
//! # Behind the auth layer
//!
//! The auth layer decides; what builds on its decision is a layer of its
//! own, mounted behind it and built from it:
//! [`RefreshSessionLayer`](crate::refresh::RefreshSessionLayer) slides
//! cookie sessions, [`ForwardScopeLayer`](crate::forward::ForwardScopeLayer)
//! forwards the caller's token to the services this one calls.
//!
//! # Rejections
//!
//! See [`DefaultResponder`] for the exact responses and [`AuthErrorKind`] for
//! the reasons. Replace the responder with [`JwtAuthLayer::with_responder`].

pub(crate) mod authenticate;
#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "backchannel-logout")]
mod backchannel;
mod builder;
mod cache;
mod claims;
pub(crate) mod claims_check;
mod decide;
pub(crate) mod keys;
mod layer;
pub(crate) mod revocation;
pub(crate) mod token;
pub(crate) mod verify;

#[cfg(feature = "axum")]
pub use self::axum::{AuthRejection, AuthRejectionKind};
pub use authenticate::AuthMode;
#[cfg(feature = "backchannel-logout")]
pub use backchannel::{
    BACKCHANNEL_LOGOUT_EVENT, BackChannelLogout, BackChannelLogoutBuilder,
    DEFAULT_LOGOUT_TOKEN_MAX_AGE,
};
pub use builder::{DEFAULT_CACHE_TTL, DEFAULT_MAX_TOKEN_LEN, JwtAuthBuilder};
pub use claims::Claims;
pub use claims_check::{DEFAULT_LEEWAY, SESSION_END_CLAIM, SESSION_START_CLAIM};
#[cfg(feature = "jwks")]
pub use keys::jwks::{
    DEFAULT_MAX_BODY, DEFAULT_MAX_WAIT, DEFAULT_REFRESH, DEFAULT_UNKNOWN_KID_INTERVAL, RemoteKeys,
    RemoteKeysBuilder,
};
pub use keys::provider::Provider;
pub use keys::{Key, MIN_HMAC_SECRET_LEN};
pub use layer::{JwtAuth, JwtAuthLayer, ResponseFuture};
pub use revocation::{DEFAULT_MAX_TOKEN_LIFETIME, Revocations};
#[cfg(feature = "redis")]
pub use revocation::{
    DEFAULT_REVOCATION_PREFIX, DEFAULT_REVOCATION_SYNC_INTERVAL, RedisRevocations,
    RevocationSyncError,
};

pub use crate::error::{AuthError, AuthErrorKind};
pub use crate::identity::{Anonymous, CredentialSource, Identity};
pub use crate::reject::{DefaultResponder, Responder};
/// jsonwebtoken's types that appear in tollgate's API, re-exported so that
/// users need not depend on a matching jsonwebtoken major.
pub use jsonwebtoken::{Algorithm, jwk::Jwk};
