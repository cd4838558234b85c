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
//! # Sliding refresh
//!
//! Without a gateway to re-mint the session cookie, a session would end at
//! its token's `exp` mid-use. With [`JwtAuthBuilder::refresh`], a verified
//! token that came from the cookie (never `Authorization: Bearer`: such a
//! client refreshes its own tokens) and has at most `within` left gets a
//! successor in a `Set-Cookie` on the response: the same claims (`jti`
//! included, so revoking either revokes both), a new `iat` and `exp` (the
//! original lifetime, or [`Refresh::lifetime`]), signed by a
//! [`SigningKey`] with its `kid`, checked at build to verify under the
//! layer's own keys.
//!
//! - Only on success: a response with a 2xx or 3xx status (and, for gRPC, no
//!   error `grpc-status` in its headers; one sent in trailers is not seen).
//!   Refusals by tollgate and 4xx/5xx answers of the inner service (a rate
//!   limit, a CSRF refusal, a failed handler) get no new cookie; a later
//!   request will.
//! - Once per token per replica: concurrent requests carrying the same old
//!   cookie mint one successor (a bounded set remembers re-minted tokens
//!   until they expire). Replicas do not share it, so with N replicas a
//!   token may be re-minted up to N times — each successor is valid.
//! - Never over the handler: a response that sets the cookie itself (a
//!   logout clearing it) keeps its own, and a token revoked while the
//!   request ran is not re-minted.
//! - Sessions end: the first refresh writes the session's absolute end
//!   ([`SESSION_END_CLAIM`]: its start, `auth_time` or `iat`, plus
//!   [`Refresh::max_session`], default 7 days) into the successor, later
//!   ones copy it; no successor expires past it, and the layer refuses a
//!   token past it. A revoked `jti` is held until the session could end, so
//!   a logout refuses every successor (they keep the `jti`). The session's
//!   start goes along too ([`SESSION_START_CLAIM`]): a logout everywhere
//!   compares it, so a successor minted after the cut-off (by a replica that
//!   had not heard of it yet) is refused as its session is.
//! - Safe behind caches: a response carrying a successor is made private
//!   (`Cache-Control` loses `public` and gains `private`, other directives
//!   kept) and gains `Vary: Cookie` (existing `Vary` values kept), so a
//!   shared cache never serves one user's session to another. The refresh
//!   is not skipped on a response marked public: the session would end.
//! - A [`Refresh::hook`] may adjust the claims or veto (never past the
//!   session's end).
//! - Cost: nothing when off; when on, one comparison of `exp − now` per
//!   cookie request until the window is reached. The claims are decoded
//!   again (as JSON) only to re-mint. Outcomes are counted in
//!   `tollgate_auth_refreshes_total` ([`observe`](crate::observe)).
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, header};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::auth::{JwtAuthLayer, Key, Refresh, SigningKey};
//! use tollgate::testing::Signer;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let now = 1_700_000_000;
//! let auth = JwtAuthLayer::<serde_json::Value>::builder()
//!     .key(Key::hmac(secret)?)
//!     .cookie("da3")
//!     .clock(move || now)
//!     .refresh(Refresh::new(SigningKey::hmac(secret)?, Duration::from_secs(180)))
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(auth).service(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//! }));
//!
//! // 2 minutes left of 15: the response re-mints the session.
//! let token = Signer::hmac(secret).sign(&serde_json::json!({
//!     "sub": "alice", "iat": now - 780, "exp": now + 120,
//! }))?;
//! let req = Request::builder().header(header::COOKIE, format!("da3={token}")).body(())?;
//! let res = svc.oneshot(req).await?;
//! let cookie = res.headers()[header::SET_COOKIE].to_str()?;
//! assert!(cookie.starts_with("da3=ey"));
//! assert!(cookie.ends_with("; Max-Age=900; Path=/; Secure; HttpOnly; SameSite=Lax"));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Forwarding the caller's identity
//!
//! With `.forward_identity(true)`, calls made while serving a request through
//! a client wrapped in [`ForwardIdentityLayer`] carry the request's verified
//! token, to the destinations that layer allows (https, http only to
//! loopback; an empty list is a build error): see [`forward`].
//!
//! # Rejections
//!
//! See [`DefaultResponder`] for the exact responses and [`AuthErrorKind`] for
//! the reasons. Replace the responder with [`JwtAuthLayer::with_responder`].

mod authenticate;
#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "backchannel-logout")]
mod backchannel;
mod builder;
mod cache;
mod claims;
pub(crate) mod claims_check;
pub mod forward;
mod future;
mod keys;
mod layer;
mod refresh;
mod revocation;
mod service;
mod token;
mod verify;

#[cfg(feature = "axum")]
pub use self::axum::{AuthRejection, AuthRejectionKind};
pub use authenticate::AuthMode;
#[cfg(feature = "backchannel-logout")]
pub use backchannel::{
    BACKCHANNEL_LOGOUT_EVENT, BackChannelLogout, BackChannelLogoutBuilder,
    DEFAULT_LOGOUT_TOKEN_MAX_AGE,
};
pub use builder::{DEFAULT_CACHE_TTL, DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_LEN, JwtAuthBuilder};
pub use claims::Claims;
pub use claims_check::{SESSION_END_CLAIM, SESSION_START_CLAIM};
pub use forward::{ForwardIdentity, ForwardIdentityBuilder, ForwardIdentityLayer, ForwardedToken};
pub use future::ResponseFuture;
#[cfg(feature = "jwks")]
pub use keys::jwks::{
    DEFAULT_MAX_BODY, DEFAULT_MAX_WAIT, DEFAULT_REFRESH, DEFAULT_UNKNOWN_KID_INTERVAL, RemoteKeys,
    RemoteKeysBuilder,
};
pub use keys::provider::Provider;
pub use keys::{Key, MIN_HMAC_SECRET_LEN};
pub use layer::JwtAuthLayer;
pub use refresh::{DEFAULT_MAX_SESSION, DEFAULT_REFRESHED_CAPACITY, Refresh, SameSite, SigningKey};
pub use revocation::{DEFAULT_MAX_TOKEN_LIFETIME, Revocations};
#[cfg(feature = "redis")]
pub use revocation::{
    DEFAULT_REVOCATION_PREFIX, DEFAULT_REVOCATION_SYNC_INTERVAL, RedisRevocations,
    RevocationSyncError,
};
pub use service::JwtAuth;

pub use crate::error::{AuthError, AuthErrorKind};
pub use crate::identity::{Anonymous, CredentialSource, Identity};
pub use crate::reject::{DefaultResponder, Responder};
/// jsonwebtoken's types that appear in tollgate's API, re-exported so that
/// users need not depend on a matching jsonwebtoken major.
pub use jsonwebtoken::{Algorithm, jwk::Jwk};
