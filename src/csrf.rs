//! Cross-site request forgery guard for cookie-authenticated requests.
//!
//! A browser attaches cookies to requests that other sites make it send, so a
//! session in a cookie is a CSRF risk; a token in the `Authorization` header
//! is not (a browser never adds it by itself). Mount [`CsrfGuardLayer`]
//! *behind* [`JwtAuthLayer`](crate::auth::JwtAuthLayer): it reads the
//! [`Identity`] the auth layer inserted.
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
//! the *outer* one. A request the auth layer never saw (no [`Identity`], no
//! [`Anonymous`]) means the stack is misordered: the guard then refuses every
//! unsafe or upgrade request and logs one `warn`, rather than let a cookie
//! session through unchecked. With `ServiceBuilder` the first layer added is
//! the outermost; with axum's `Router::layer`, the *last* call is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::Respond;
use crate::identity::{Anonymous, CredentialSource, Identity};
use crate::macros::inner_accessors;
use crate::reject::{DefaultResponder, GrpcCode, Refusal, RefusalKind, Responder};

#[derive(Debug)]
struct Config {
    fetch_sites: Vec<String>,
    origins: Vec<String>,
    scheme: http::uri::Scheme,
    /// Set once the misordering warning has been logged.
    warned_unauthenticated: std::sync::atomic::AtomicBool,
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Self {
            fetch_sites: self.fetch_sites.clone(),
            origins: self.origins.clone(),
            scheme: self.scheme.clone(),
            warned_unauthenticated: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

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
        CsrfGuard {
            inner,
            config: Arc::clone(&self.config),
            responder: self.responder.clone(),
        }
    }
}

/// The service built by [`CsrfGuardLayer`].
#[derive(Debug, Clone)]
pub struct CsrfGuard<S, R = DefaultResponder> {
    inner: S,
    config: Arc<Config>,
    responder: R,
}

impl<S, R> CsrfGuard<S, R> {
    inner_accessors!(S);
}

/// Not among `http`'s standard names: a constant, so that no request parses
/// the name from a string.
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether the request can change state (or open a channel that can): an
/// unsafe method, or a protocol upgrade. An HTTP/2 WebSocket is an extended
/// `CONNECT`, which is not a safe method.
fn needs_check<B>(req: &Request<B>) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || req.headers().contains_key(header::UPGRADE)
}

/// The request's own authority: `Host`, or the URI's (HTTP/2 `:authority`).
fn own_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
}

impl Config {
    /// The auth layer never saw this request: the stack is misordered.
    fn warn_unauthenticated(&self) {
        if !self
            .warned_unauthenticated
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "tollgate: the CSRF guard saw a request that no JwtAuthLayer looked at; \
                 refusing unsafe and upgrade requests. Put JwtAuthLayer outside the guard \
                 (ServiceBuilder: add it first; axum Router::layer: add it last)"
            );
        }
    }

    fn allows<B>(&self, req: &Request<B>) -> bool {
        let headers: &HeaderMap = req.headers();
        if let Some(site) = headers.get(&SEC_FETCH_SITE) {
            return site.to_str().is_ok_and(|site| {
                self.fetch_sites
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(site.trim()))
            });
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            // Neither header: not a browser.
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim();
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return true;
        }
        // `null` and anything without a host are foreign.
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let own_scheme = req.uri().scheme().unwrap_or(&self.scheme);
        scheme.eq_ignore_ascii_case(own_scheme.as_str())
            && own_host(req).is_some_and(|host| host.eq_ignore_ascii_case(authority))
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for CsrfGuard<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: Responder,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // A route rule can turn the guard off for its routes.
        let off = req
            .extensions()
            .get::<crate::routes::MatchedRoute>()
            .is_some_and(|route| route.0.csrf_check() == Some(false));
        let pass = off
            || !needs_check(&req)
            || match req.extensions().get::<Identity>() {
                Some(identity) => {
                    identity.source() != CredentialSource::Cookie || self.config.allows(&req)
                }
                None if req.extensions().get::<Anonymous>().is_some() => true,
                None => {
                    self.config.warn_unauthenticated();
                    false
                }
            };
        if pass {
            return ResponseFuture {
                respond: Respond::inner(self.inner.call(req)),
            };
        }
        tracing::debug!(
            outcome = "refused",
            reason = "csrf",
            "tollgate: cross-site request refused"
        );
        let (parts, _body) = req.into_parts();
        let refusal = Refusal::new(
            RefusalKind::Csrf,
            StatusCode::FORBIDDEN,
            GrpcCode::PermissionDenied,
            "csrf",
            "cross-site request with a session cookie",
        );
        ResponseFuture {
            respond: Respond::refused(self.responder.respond(&refusal, &parts)),
        }
    }
}

pin_project! {
    /// Response future of [`CsrfGuard`].
    pub struct ResponseFuture<F> {
        #[pin]
        respond: Respond<F>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().respond.poll(cx)
    }
}
