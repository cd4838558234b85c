//! Identity forwarding: the verified token of the request being served,
//! attached to the calls made while serving it.
//!
//! Turned on with [`JwtAuthBuilder::forward_identity`](super::JwtAuthBuilder::forward_identity):
//! the auth layer then polls the inner service's future (and runs its
//! `call`) inside a scope holding the request's token, and
//! [`ForwardIdentityLayer`], put on an outbound client (a tonic `Channel`, a
//! hyper-util client, any `Service<http::Request<B>>`), reads that scope when
//! the client is called and adds `Authorization: Bearer <token>`.
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::convert::Infallible;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::auth::{ForwardIdentityLayer, JwtAuthLayer, Key};
//!
//! // The client of another service; here it answers with the header it got.
//! let client = ServiceBuilder::new().layer(ForwardIdentityLayer::new()).service(service_fn(
//!     |req: Request<()>| async move {
//!         Ok::<_, Infallible>(req.headers().get(AUTHORIZATION).cloned())
//!     },
//! ));
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let auth = JwtAuthLayer::<serde_json::Value>::builder()
//!     .key(Key::hmac(secret)?)
//!     .bearer()
//!     .forward_identity(true)
//!     .build()?;
//! let outbound = client.clone();
//! let service = ServiceBuilder::new().layer(auth).service(service_fn(move |_req: Request<()>| {
//!     let client = outbound.clone();
//!     // Called while serving the request: carries the caller's token.
//!     async move {
//!         let mut response = Response::new(());
//!         if let Some(seen) = client.oneshot(Request::new(())).await? {
//!             response.headers_mut().insert("x-seen", seen);
//!         }
//!         Ok::<_, Infallible>(response)
//!     }
//! }));
//!
//! let token = tollgate::testing::Signer::hmac(secret)
//!     .sign(&serde_json::json!({ "sub": "alice", "exp": 4_000_000_000_u64 }))?;
//! let request = Request::builder()
//!     .header(AUTHORIZATION, format!("Bearer {token}"))
//!     .body(())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.headers()["x-seen"], format!("Bearer {token}").as_str());
//! // Outside any request: nothing.
//! assert_eq!(client.oneshot(Request::new(())).await?, None);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! - **Only verified tokens** are forwarded: an anonymous request, a refused
//!   one, an exempt one or one let through in shadow mode carries nothing. A
//!   cookie token is forwarded as a bearer token: the service called must
//!   accept `Authorization: Bearer`.
//! - **Outside a request** (in `main`, a background job) a call carries
//!   nothing, and a request that already has an `Authorization` header
//!   keeps it: the client's own credentials win.
//! - **Spawned tasks do not inherit the scope**: a future given to
//!   `tokio::spawn` runs outside the request's. Carry it explicitly with
//!   [`ForwardedToken::current`] and [`ForwardedToken::scope`]
//!   (`tokio::spawn(token.scope(async { .. }))`).
//! - **Where it goes**: the token goes to whatever the layer's client calls —
//!   put the layer only on clients of services that are meant to see the
//!   user's token, over TLS outside a trusted network. It is never logged:
//!   `Debug` prints `<redacted>` and the header value is marked sensitive
//!   (HTTP/2 does not index it).
//!
//! Off, the auth layer opens no scope and copies no token.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::macros::inner_accessors;

thread_local! {
    /// The token of the request whose future this thread is polling.
    static CURRENT: Cell<Option<ForwardedToken>> = const { Cell::new(None) };
}

/// The verified token of a request, ready to be sent as
/// `Authorization: Bearer <token>` (see the [module docs](self)).
///
/// With forwarding on, the auth layer also puts it in the request's
/// extensions. Its `Debug` output is redacted.
#[derive(Clone)]
pub struct ForwardedToken(HeaderValue);

impl fmt::Debug for ForwardedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ForwardedToken(<redacted>)")
    }
}

impl ForwardedToken {
    /// `Bearer <token>`; `None` if it cannot be a header value.
    pub(crate) fn bearer(token: &str) -> Option<Self> {
        let mut value = String::with_capacity(7 + token.len());
        value.push_str("Bearer ");
        value.push_str(token);
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(value)).ok()?;
        value.set_sensitive(true);
        Some(Self(value))
    }

    /// The token of the request being served by the current task, if the
    /// auth layer forwards identities and the request was authenticated.
    pub fn current() -> Option<Self> {
        CURRENT
            .try_with(|current| {
                let token = current.take();
                let copy = token.clone();
                current.set(token);
                copy
            })
            .ok()
            .flatten()
    }

    /// Runs `future` with this token as the current one: for work spawned
    /// from a handler (`tokio::spawn(token.scope(async { .. }))`).
    pub fn scope<F: Future>(self, future: F) -> Forwarded<F> {
        Forwarded {
            token: Some(self),
            future,
        }
    }

    /// The header value, `Bearer <token>` (marked sensitive).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// Moves `slot`'s token into the thread's current one until dropped, then
/// moves it back and restores the previous one (also when the code inside
/// panics). No copy of the token is made.
struct Entered<'a> {
    slot: &'a mut Option<ForwardedToken>,
    previous: Option<ForwardedToken>,
}

impl<'a> Entered<'a> {
    fn new(slot: &'a mut Option<ForwardedToken>) -> Option<Self> {
        slot.as_ref()?;
        let mut token = slot.take();
        match CURRENT.try_with(|current| current.replace(token.take())) {
            Ok(previous) => Some(Self { slot, previous }),
            // The thread is shutting down: no scope.
            Err(_) => {
                *slot = token;
                None
            }
        }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        if let Ok(mine) = CURRENT.try_with(|current| current.replace(previous)) {
            *self.slot = mine;
        }
    }
}

/// Runs `f` with `token` current (nothing is set for `None`).
fn enter<R>(token: &mut Option<ForwardedToken>, f: impl FnOnce() -> R) -> R {
    let _entered = Entered::new(token);
    f()
}

pin_project! {
    /// A future run with a forwarded token current: the auth layer's inner
    /// future, or one made by [`ForwardedToken::scope`].
    pub struct Forwarded<F> {
        token: Option<ForwardedToken>,
        #[pin]
        future: F,
    }
}

impl<F: fmt::Debug> fmt::Debug for Forwarded<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarded")
            .field("token", &self.token)
            .field("future", &self.future)
            .finish()
    }
}

impl<F: Future> Future for Forwarded<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.token.is_none() {
            return this.future.poll(cx);
        }
        enter(this.token, || this.future.poll(cx))
    }
}

/// The auth layer's call of its inner service: in the request's scope when
/// forwarding is on, as it is otherwise.
pub(crate) fn call<S, B>(forward: bool, inner: &mut S, req: Request<B>) -> Forwarded<S::Future>
where
    S: Service<Request<B>>,
{
    let mut token = if forward {
        req.extensions().get::<ForwardedToken>().cloned()
    } else {
        None
    };
    let future = enter(&mut token, || inner.call(req));
    Forwarded { token, future }
}

/// Adds the current request's verified token to outbound requests; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardIdentityLayer {
    _private: (),
}

impl ForwardIdentityLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ForwardIdentityLayer {
    type Service = ForwardIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardIdentity { inner }
    }
}

/// The service built by [`ForwardIdentityLayer`]: an outbound client that
/// sends the current request's verified token along.
#[derive(Debug, Clone)]
pub struct ForwardIdentity<S> {
    inner: S,
}

impl<S> ForwardIdentity<S> {
    /// Wraps a client.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// Shorthand for [`ForwardIdentityLayer::new`].
    pub fn layer() -> ForwardIdentityLayer {
        ForwardIdentityLayer::new()
    }

    inner_accessors!(S);
}

impl<S, B> Service<Request<B>> for ForwardIdentity<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !req.headers().contains_key(AUTHORIZATION)
            && let Some(token) = ForwardedToken::current()
        {
            req.headers_mut().insert(AUTHORIZATION, token.0);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn token(text: &str) -> ForwardedToken {
        ForwardedToken::bearer(text).unwrap()
    }

    fn current() -> Option<String> {
        ForwardedToken::current().map(|t| t.header_value().to_str().unwrap().to_owned())
    }

    #[test]
    fn scopes_nest_and_restore() {
        assert_eq!(current(), None);
        let mut outer = Some(token("a"));
        enter(&mut outer, || {
            assert_eq!(current().as_deref(), Some("Bearer a"));
            let mut inner = Some(token("b"));
            enter(&mut inner, || {
                assert_eq!(current().as_deref(), Some("Bearer b"));
            });
            let mut none = None;
            enter(&mut none, || {
                assert_eq!(
                    current().as_deref(),
                    Some("Bearer a"),
                    "None opens no scope"
                );
            });
            assert_eq!(current().as_deref(), Some("Bearer a"));
        });
        assert_eq!(current(), None);
        assert!(outer.is_some(), "the token stays with its future");
    }

    #[test]
    fn a_panic_inside_a_scope_restores_the_outer_one() {
        let result = std::panic::catch_unwind(|| {
            let mut t = Some(token("a"));
            enter(&mut t, || panic!("boom"));
        });
        assert!(result.is_err());
        assert_eq!(current(), None);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = token("secret.token.value");
        assert_eq!(format!("{t:?}"), "ForwardedToken(<redacted>)");
        assert!(t.header_value().is_sensitive());
        let f = t.scope(std::future::ready(()));
        assert!(!format!("{f:?}").contains("secret"));
        assert!(ForwardedToken::bearer("bad\ntoken").is_none());
    }
}
