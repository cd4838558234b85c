//! Cross-site request forgery guard for cookie-authenticated requests.
//!
//! A browser attaches cookies to requests that other sites make it send, so a
//! session in a cookie is a CSRF risk; a token in the `Authorization` header
//! is not (a browser never adds it by itself). Mount [`CsrfGuardLayer`]
//! *behind* [`JwtAuthLayer`](crate::auth::JwtAuthLayer): it reads the
//! [`Identity`](crate::Identity) the auth layer inserted.
//!
//! For requests whose token came from a cookie and that have an unsafe
//! method (anything but `GET`, `HEAD`, `OPTIONS`) **or ask for a protocol
//! upgrade** (a WebSocket handshake: HTTP/1.1 `GET` with `Upgrade`, or
//! HTTP/2 extended `CONNECT`) — a cross-site WebSocket carries the session
//! cookie just like a cross-site form does:
//!
//! | request | result |
//! |---|---|
//! | `Sec-Fetch-Site: same-origin` or `none` (or an allowed value) | allowed |
//! | another `Sec-Fetch-Site` (`cross-site`, `same-site`) | 403 |
//! | no `Sec-Fetch-Site`, `Origin` equal to the request's own origin (scheme and host) or allowed | allowed |
//! | no `Sec-Fetch-Site`, another `Origin` (including `null`, or `http://` for an `https` service) | 403 |
//! | neither header (not a browser) | allowed |
//!
//! The request's own scheme is the one its URI carries (HTTP/2) or else
//! [`CsrfGuardLayer::scheme`] (default `https`).
//!
//! Safe requests, anonymous requests and requests authenticated by the
//! `Authorization` header pass untouched. Refusals are 403 with
//! `application/problem+json` and `reason: "csrf"` (gRPC: PERMISSION_DENIED).
//!
//! # Order matters
//!
//! The guard reads what the auth layer decided, so the auth layer must be
//! the *outer* one. A request the auth layer never saw (no [`Identity`](crate::Identity), no
//! [`Anonymous`](crate::Anonymous)) means the stack is misordered: the guard then refuses every
//! unsafe or upgrade request and logs one `warn`, rather than let a cookie
//! session through unchecked. With `ServiceBuilder` the first layer added is
//! the outermost; with axum's `Router::layer`, the *last* call is.

mod decide;

use std::sync::Arc;

use tower_layer::Layer;

use crate::middleware::Middleware;
use crate::reject::DefaultResponder;
use decide::{Config, CsrfDecision};

/// Refuses cross-site unsafe requests authenticated by a cookie. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct CsrfGuardLayer<R = DefaultResponder> {
    config: Arc<Config>,
    responder: R,
}

impl Default for CsrfGuardLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CsrfGuardLayer {
    /// Allows `Sec-Fetch-Site: same-origin` and `none`, and an `Origin` equal
    /// to the request's host.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                fetch_sites: vec!["same-origin".into(), "none".into()],
                origins: Vec::new(),
                scheme: http::uri::Scheme::HTTPS,
                warned_unauthenticated: std::sync::atomic::AtomicBool::new(false),
            }),
            responder: DefaultResponder,
        }
    }
}

impl<R> CsrfGuardLayer<R> {
    /// Also allows this `Sec-Fetch-Site` value (e.g. `same-site` for a
    /// front end on a sibling subdomain).
    #[must_use]
    pub fn allow_fetch_site(mut self, value: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config)
            .fetch_sites
            .push(value.into().to_ascii_lowercase());
        self
    }

    /// Also allows this exact origin (`https://app.example.com`), for
    /// browsers that send `Origin` but not `Sec-Fetch-Site`.
    #[must_use]
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.config)
            .origins
            .push(origin.into().to_ascii_lowercase());
        self
    }
}

impl<R> CsrfGuardLayer<R> {
    /// Replaces the responder that renders refusals (see [`crate::reject`]).
    pub fn with_responder<R2>(self, responder: R2) -> CsrfGuardLayer<R2> {
        CsrfGuardLayer {
            config: self.config,
            responder,
        }
    }

    /// The scheme browsers reach this service at, for requests whose URI
    /// does not say (HTTP/1.1): an `Origin` must have this scheme to count as
    /// the service's own. Default `https`; set `Scheme::HTTP` only for a
    /// plain-HTTP deployment such as local development.
    #[must_use]
    pub fn scheme(mut self, scheme: http::uri::Scheme) -> Self {
        Arc::make_mut(&mut self.config).scheme = scheme;
        self
    }
}

impl<S, R: Clone> Layer<S> for CsrfGuardLayer<R> {
    type Service = CsrfGuard<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware::new(
            inner,
            CsrfDecision {
                config: Arc::clone(&self.config),
                responder: self.responder.clone(),
            },
        )
    }
}

/// The service built by [`CsrfGuardLayer`] (tollgate's one
/// [`Middleware`], with the guard's
/// decision).
pub type CsrfGuard<S, R = DefaultResponder> = Middleware<S, CsrfDecision<R>>;

/// Response future of [`CsrfGuard`].
pub type ResponseFuture<S, B, R = DefaultResponder> =
    crate::middleware::ResponseFuture<S, B, CsrfDecision<R>>;

#[cfg(test)]
mod tests {
    use crate::middleware::{ReadyService, assert_small};
    use crate::reject::DefaultResponder;

    #[test]
    fn the_future_is_the_inner_one_and_little_more() {
        assert_small::<
            crate::middleware::ResponseFuture<
                ReadyService,
                (),
                super::decide::CsrfDecision<DefaultResponder>,
            >,
        >("csrf");
    }
}
