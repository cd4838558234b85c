//! Sliding refresh of cookie sessions: [`RefreshSessionLayer`], mounted
//! behind the auth layer and built from it.
//!
//! Without a gateway to re-mint the session cookie, a session would end at
//! its token's `exp` mid-use. With a [`RefreshSessionLayer`] behind the auth layer, a verified
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
//!   ([`SESSION_END_CLAIM`](crate::auth::SESSION_END_CLAIM): its start, `auth_time` or `iat`, plus
//!   [`Refresh::max_session`], default 7 days) into the successor, later
//!   ones copy it; no successor expires past it, and the layer refuses a
//!   token past it. A revoked `jti` is held until the session could end, so
//!   a logout refuses every successor (they keep the `jti`). The session's
//!   start goes along too ([`SESSION_START_CLAIM`](crate::auth::SESSION_START_CLAIM)): a logout everywhere
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
//! use tollgate::auth::{JwtAuthLayer, Key};
//! use tollgate::refresh::{Refresh, RefreshSessionLayer, SigningKey};
//! use tollgate::testing::Signer;
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let now = 1_700_000_000;
//! let auth = JwtAuthLayer::<serde_json::Value>::builder()
//!     .key(Key::hmac(secret)?)
//!     .cookie("da3")
//!     .clock(move || now)
//!     .build()?;
//! // Built from the auth layer: the signing key must verify under its keys.
//! let refresh = RefreshSessionLayer::new(
//!     &auth,
//!     Refresh::new(SigningKey::hmac(secret)?, Duration::from_secs(180)),
//! )?;
//! let svc = ServiceBuilder::new().layer(auth).layer(refresh).service(service_fn(|_req: Request<()>| async {
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
//! # Where it goes
//!
//! Behind the auth layer (with `ServiceBuilder`, after it; with axum's
//! `Router::layer`, before it). Building it from the auth layer checks the
//! signing key against that layer's keys and tells that layer (and its
//! clones) to hand the verified token on in the request's extensions — the
//! auth layer copies no token otherwise. A request the auth layer never
//! looked at, or one authenticated by another auth layer, is passed on
//! without a refresh and said once at `warn`.

mod layer;
mod mint;
mod once;
mod settings;
mod signing;

pub use layer::{RefreshSession, RefreshSessionLayer, ResponseFuture};
pub use settings::{DEFAULT_MAX_SESSION, DEFAULT_REFRESHED_CAPACITY, Refresh, SameSite};
pub use signing::SigningKey;
