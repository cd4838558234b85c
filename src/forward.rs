//! Identity forwarding: the verified token of the request being served,
//! attached to the calls made while serving it.
//!
//! Two layers. [`ForwardScopeLayer`], on the server behind the auth layer
//! and built from it, runs the inner service's `call` and polls its future
//! inside a scope holding the request's verified token;
//! [`ForwardIdentityLayer`], put on an outbound client (a tonic `Channel`, a
//! hyper-util client, any `Service<http::Request<B>>`), reads that scope when
//! the client is called and adds `Authorization: Bearer <token>` — only to
//! requests bound for the destinations it was built with.
//!
//! ```
//! # #[cfg(feature = "test-util")]
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::convert::Infallible;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::auth::{JwtAuthLayer, Key};
//! use tollgate::forward::{ForwardIdentityLayer, ForwardScopeLayer};
//!
//! // The client of another service; here it answers with the header it got.
//! let forward = ForwardIdentityLayer::builder().allow("https://b.internal").build()?;
//! let client = ServiceBuilder::new().layer(forward).service(service_fn(
//!     |req: Request<()>| async move {
//!         Ok::<_, Infallible>(req.headers().get(AUTHORIZATION).cloned())
//!     },
//! ));
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let auth = JwtAuthLayer::<serde_json::Value>::builder()
//!     .key(Key::hmac(secret)?)
//!     .bearer()
//!     .build()?;
//! // Behind the auth layer, built from it.
//! let scope = ForwardScopeLayer::new(&auth);
//! let outbound = client.clone();
//! let service = ServiceBuilder::new().layer(auth).layer(scope).service(service_fn(move |_req: Request<()>| {
//!     let client = outbound.clone();
//!     // Called while serving the request: carries the caller's token, to
//!     // the allowed destination only.
//!     async move {
//!         let mut response = Response::new(());
//!         let to = |uri: &'static str| {
//!             let mut request = Request::new(());
//!             *request.uri_mut() = http::Uri::from_static(uri);
//!             request
//!         };
//!         if let Some(seen) = client.clone().oneshot(to("https://b.internal/who")).await? {
//!             response.headers_mut().insert("x-seen", seen);
//!         }
//!         assert_eq!(client.oneshot(to("https://elsewhere.example/")).await?, None);
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
//! assert_eq!(client.oneshot(Request::get("https://b.internal/").body(())?).await?, None);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # Where tokens go
//!
//! A forwarded token lets its receiver act as the user until it expires, so
//! the layer sends it only where it was told to:
//!
//! - **An allow-list of destinations**, `scheme://host[:port]`
//!   ([`ForwardIdentityBuilder::allow`]). `https` only; plain `http` only to
//!   loopback (`localhost`, `127.0.0.0/8`, `[::1]`). An empty list is a
//!   [`ConfigError`] at build that names the fix.
//! - **A request bound elsewhere gets no token**, and the first such request
//!   is logged once at `warn` (the destination, never the token). The
//!   request itself still goes out, without `Authorization`.
//! - **Clients whose requests carry only a path** (a tonic `Channel` adds its
//!   endpoint's scheme and host itself) are built for their one destination
//!   with [`ForwardIdentityBuilder::origin`], which must be on the list;
//!   without it such a request gets no token. A request naming a scheme and
//!   host is always checked by them (an HTTP client with absolute URIs).
//! - **The opt-out**, [`ForwardIdentityBuilder::allow_any_destination`],
//!   sends the token wherever the client goes; read its documentation first.
//!
//! ```
//! use tollgate::forward::ForwardIdentityLayer;
//!
//! // A tonic client of https://b.internal:50051 (its URIs carry only a path):
//! let grpc = ForwardIdentityLayer::builder()
//!     .allow("https://b.internal:50051")
//!     .origin("https://b.internal:50051")
//!     .build()?;
//! // Nothing allowed: refused at build, saying what to add.
//! let error = ForwardIdentityLayer::builder().build().unwrap_err();
//! assert!(error.reason().contains(".allow("));
//! // Plain http off loopback: refused.
//! assert!(ForwardIdentityLayer::builder().allow("http://b.internal").build().is_err());
//! # let _ = grpc;
//! # Ok::<_, tollgate::ConfigError>(())
//! ```
//!
//! # Scope
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
//! - **Never logged**: `Debug` prints `<redacted>` and the header value is
//!   marked sensitive (HTTP/2 does not index it).
//!
//! - **Misplaced**: a request the auth layer never looked at, or one
//!   verified by an auth layer the scope was not built from, carries
//!   nothing, and the first one is said once at `warn`.
//!
//! Without a [`ForwardScopeLayer`], the auth layer opens no scope and copies
//! no token.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::JwtAuthLayer;
use crate::error::ConfigError;
use crate::identity::{Anonymous, Identity, VerifiedToken};
use crate::macros::inner_accessors;

thread_local! {
    /// The token of the request whose future this thread is polling.
    static CURRENT: Cell<Option<ForwardedToken>> = const { Cell::new(None) };
}

/// The verified token of a request, ready to be sent as
/// `Authorization: Bearer <token>` (see the [module docs](self)).
///
/// [`ForwardScopeLayer`] also puts it in the request's extensions. Its
/// `Debug` output is redacted.
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

    /// The token of the request being served by the current task, if a
    /// [`ForwardScopeLayer`] runs and the request was authenticated.
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
    /// A future run with a forwarded token current: the future of
    /// [`ForwardScope`], or one made by [`ForwardedToken::scope`].
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

/// Runs the inner service in the scope of the request's verified token, for
/// clients wrapped in [`ForwardIdentityLayer`]; see the [module docs](self).
/// Mount it behind the auth layer it is built from.
#[derive(Debug, Clone)]
pub struct ForwardScopeLayer {
    /// The auth layer it was built from.
    origin: usize,
}

impl ForwardScopeLayer {
    /// A scope for the tokens `auth` verifies: building it tells `auth` (and
    /// its clones) to hand the verified token on to the layers behind it.
    pub fn new<T, R>(auth: &JwtAuthLayer<T, R>) -> Self {
        Self {
            origin: auth.state.hand_on_token(),
        }
    }
}

impl<S> Layer<S> for ForwardScopeLayer {
    type Service = ForwardScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardScope {
            inner,
            origin: self.origin,
        }
    }
}

/// The service built by [`ForwardScopeLayer`].
#[derive(Debug, Clone)]
pub struct ForwardScope<S> {
    inner: S,
    origin: usize,
}

impl<S> ForwardScope<S> {
    inner_accessors!(S);
}

/// The token a request carries to its scope, and into its extensions.
fn token_of<B>(req: &mut Request<B>, origin: usize) -> Option<ForwardedToken> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let warn = |why: &str| {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!("tollgate: ForwardScopeLayer {why}; no identity is forwarded");
        }
    };
    let extensions = req.extensions_mut();
    let Some(token) = extensions
        .get::<VerifiedToken>()
        .and_then(|token| token.from(origin))
    else {
        if extensions.get::<Identity>().is_some() {
            warn(
                "saw a token verified by an auth layer it was not built from: build it with \
                 ForwardScopeLayer::new(&auth) from the layer in front of it",
            );
        } else if extensions.get::<Anonymous>().is_none() {
            warn(
                "saw a request the auth layer never looked at: mount it behind the auth layer \
                 (ServiceBuilder: after it; axum Router::layer: before it)",
            );
        }
        return None;
    };
    let token = ForwardedToken::bearer(token)?;
    extensions.insert(token.clone());
    Some(token)
}

impl<S, B> Service<Request<B>> for ForwardScope<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Forwarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut token = token_of(&mut req, self.origin);
        let future = enter(&mut token, || self.inner.call(req));
        Forwarded { token, future }
    }
}

/// Adds the current request's verified token to outbound requests bound for
/// allowed destinations; see the [module docs](self). Built with
/// [`ForwardIdentityLayer::builder`].
#[derive(Debug, Clone)]
pub struct ForwardIdentityLayer {
    policy: Arc<Policy>,
}

impl ForwardIdentityLayer {
    /// A builder: name the destinations with
    /// [`allow`](ForwardIdentityBuilder::allow), then
    /// [`build`](ForwardIdentityBuilder::build).
    pub fn builder() -> ForwardIdentityBuilder {
        ForwardIdentityBuilder::default()
    }
}

impl<S> Layer<S> for ForwardIdentityLayer {
    type Service = ForwardIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardIdentity {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// Where a [`ForwardIdentityLayer`] may send tokens (see the
/// [module docs](self#where-tokens-go)).
#[derive(Debug, Clone, Default)]
pub struct ForwardIdentityBuilder {
    allowed: Vec<String>,
    origin: Option<String>,
    any: bool,
}

impl ForwardIdentityBuilder {
    /// Allows a destination: `scheme://host[:port]`, nothing else (no path,
    /// no credentials). `https` only, except loopback hosts (`localhost`,
    /// `127.0.0.0/8`, `[::1]`), which may be `http`. Without a port, the
    /// scheme's default (443, 80) is meant. Hosts compare case-insensitively.
    #[must_use]
    pub fn allow(mut self, destination: impl Into<String>) -> Self {
        self.allowed.push(destination.into());
        self
    }

    /// The one origin (`scheme://host[:port]`) this client sends every
    /// request to, for clients whose requests carry only a path — a tonic
    /// `Channel`, which adds its endpoint's scheme and host itself. Must be
    /// an allowed destination (checked by [`build`](Self::build)). A request
    /// that does name a scheme and host is still checked against the
    /// allowed destinations; without `origin`, a request that names none
    /// gets no token.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// **Opt-out: sends the token to every destination**, any host, plain
    /// `http` included, and to requests that name none. Every service this
    /// client can reach — including one a URL taken from a request, a
    /// redirect or a misconfiguration points it at — then receives users'
    /// tokens and can act as them until they expire. Use only when the
    /// client itself is pinned to trusted services (for instance a channel
    /// whose endpoint is fixed in code, on a trusted network) and naming
    /// them is impossible; prefer [`allow`](Self::allow). Logged at `warn`
    /// when the layer is built.
    #[must_use]
    pub fn allow_any_destination(mut self) -> Self {
        self.any = true;
        self
    }

    /// The layer.
    ///
    /// # Errors
    /// No destination allowed (and no
    /// [`allow_any_destination`](Self::allow_any_destination)); a destination
    /// or the [`origin`](Self::origin) that is not `scheme://host[:port]`, is
    /// plain `http` to a host that is not loopback, or (the origin) is not
    /// allowed.
    pub fn build(self) -> Result<ForwardIdentityLayer, ConfigError> {
        let allowed = self
            .allowed
            .iter()
            .map(|destination| Destination::parse(destination, "forward_identity.allow"))
            .collect::<Result<Vec<_>, _>>()?;
        if allowed.is_empty() && !self.any {
            return Err(ConfigError::new(
                "forward_identity.allow",
                "no destination is allowed, so no token would ever be forwarded: name each \
                 service meant to see users' tokens with \
                 ForwardIdentityLayer::builder().allow(\"https://service.internal\") \
                 (http only to loopback), or open it to any destination with \
                 .allow_any_destination() (read its documentation first)",
            ));
        }
        let origin = match &self.origin {
            Some(origin) => {
                let origin = Destination::parse(origin, "forward_identity.origin")?;
                if !self.any && !allowed.contains(&origin) {
                    return Err(ConfigError::new(
                        "forward_identity.origin",
                        format!(
                            "{origin} is not an allowed destination: add .allow(\"{origin}\") \
                             if its service is meant to see users' tokens"
                        ),
                    ));
                }
                Some(origin)
            }
            None => None,
        };
        if self.any {
            tracing::warn!(
                "tollgate: identity forwarding is open to any destination \
                 (allow_any_destination): every service this client reaches gets users' tokens"
            );
        }
        Ok(ForwardIdentityLayer {
            policy: Arc::new(Policy {
                allowed,
                origin,
                any: self.any,
                warned: AtomicBool::new(false),
            }),
        })
    }
}

/// Where tokens may go, shared by every service the layer builds.
#[derive(Debug)]
struct Policy {
    allowed: Vec<Destination>,
    /// Where requests naming no destination go.
    origin: Option<Destination>,
    any: bool,
    /// A refused destination was logged.
    warned: AtomicBool,
}

impl Policy {
    /// Whether `uri`'s destination may receive a token; logs the first
    /// refusal.
    fn permits(&self, uri: &Uri) -> bool {
        if self.any {
            return true;
        }
        match uri.authority() {
            Some(_) => match Destination::of(uri) {
                Some(destination) if self.allowed.contains(&destination) => true,
                Some(destination) => {
                    self.warn_once(format_args!("{destination} is not an allowed destination"));
                    false
                }
                None => {
                    self.warn_once(format_args!(
                        "the request's destination is not an http(s) origin"
                    ));
                    false
                }
            },
            None if self.origin.is_some() => true,
            None => {
                self.warn_once(format_args!(
                    "the request names no destination (only a path): build the layer with \
                     .origin(\"https://host:port\") for this client"
                ));
                false
            }
        }
    }

    fn warn_once(&self, why: fmt::Arguments<'_>) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("tollgate: a forwarded token was not sent: {why} (logged once)");
        }
    }
}

/// An allowed destination: scheme, lower-case host, port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Destination {
    https: bool,
    host: Box<str>,
    port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Destination {
    /// The destination of a request URI that names one (`None` for a
    /// scheme other than http(s)).
    fn of(uri: &Uri) -> Option<Self> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let authority = uri.authority()?;
        let default = if https { 443 } else { 80 };
        Some(Self {
            https,
            host: authority.host().to_ascii_lowercase().into(),
            port: authority.port_u16().unwrap_or(default),
        })
    }

    /// A configured destination, `scheme://host[:port]`.
    fn parse(text: &str, setting: &'static str) -> Result<Self, ConfigError> {
        let fix = "give scheme://host[:port], e.g. https://service.internal:8443";
        let uri: Uri = text
            .parse()
            .map_err(|_| ConfigError::new(setting, format!("not a URI: {fix}")))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // Not echoed: it holds credentials.
            return Err(ConfigError::new(
                setting,
                "a destination carries no credentials (user@): give scheme://host[:port]",
            ));
        }
        let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
        let destination = match Self::of(&uri) {
            Some(destination) if bare => destination,
            _ => return Err(ConfigError::new(setting, format!("{text:?}: {fix}"))),
        };
        if !destination.https && !is_loopback(&destination.host) {
            return Err(ConfigError::new(
                setting,
                format!(
                    "{text:?}: plain http would send users' tokens in the clear; use https \
                     (http is accepted only for loopback: localhost, 127.0.0.0/8, [::1])"
                ),
            ));
        }
        Ok(destination)
    }
}

/// `localhost`, `127.0.0.0/8` or `::1` (as `[::1]`, or IPv4-mapped).
fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// The service built by [`ForwardIdentityLayer`]: an outbound client that
/// sends the current request's verified token along, to allowed
/// destinations.
#[derive(Debug, Clone)]
pub struct ForwardIdentity<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> ForwardIdentity<S> {
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
            && self.policy.permits(req.uri())
        {
            req.headers_mut().insert(AUTHORIZATION, token.0);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {

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

    type Seen = std::future::Ready<Result<Option<HeaderValue>, std::convert::Infallible>>;

    /// A client answering with the `Authorization` it was sent.
    fn echo(req: Request<()>) -> Seen {
        std::future::ready(Ok(req.headers().get(AUTHORIZATION).cloned()))
    }

    type Echo = tower::util::ServiceFn<fn(Request<()>) -> Seen>;

    fn client(layer: &ForwardIdentityLayer) -> ForwardIdentity<Echo> {
        layer.layer(tower::service_fn(echo as fn(Request<()>) -> Seen))
    }

    /// What `uri` is sent with, inside a request holding token `t`.
    fn sent(layer: &ForwardIdentityLayer, uri: &str) -> Option<String> {
        let mut client = client(layer);
        let mut request = Request::new(());
        *request.uri_mut() = uri.parse().unwrap();
        let mut t = Some(token("t"));
        let future = enter(&mut t, || client.call(request));
        let seen = futures_now(future);
        seen.map(|v| v.to_str().unwrap().to_owned())
    }

    fn futures_now(future: Seen) -> Option<HeaderValue> {
        match future.into_inner() {
            Ok(seen) => seen,
            Err(never) => match never {},
        }
    }

    fn layer(allowed: &[&str]) -> ForwardIdentityLayer {
        allowed
            .iter()
            .fold(ForwardIdentityLayer::builder(), |b, d| b.allow(*d))
            .build()
            .unwrap()
    }

    #[test]
    fn only_allowed_destinations_get_the_token() {
        let l = layer(&[
            "https://b.internal",
            "http://127.0.0.1:8080",
            "HTTPS://C.Internal:8443",
        ]);
        let yes = Some("Bearer t".to_owned());
        assert_eq!(sent(&l, "https://b.internal/x"), yes);
        assert_eq!(
            sent(&l, "https://B.INTERNAL:443/x?y"),
            yes,
            "default port, any case"
        );
        assert_eq!(sent(&l, "http://127.0.0.1:8080/"), yes);
        assert_eq!(sent(&l, "https://c.internal:8443/"), yes);
        assert_eq!(
            sent(&l, "http://b.internal/x"),
            None,
            "plain http to an https destination"
        );
        assert_eq!(sent(&l, "https://b.internal:8443/x"), None, "another port");
        assert_eq!(sent(&l, "https://c.internal/"), None, "another port");
        assert_eq!(sent(&l, "https://b.internal.evil.example/"), None);
        assert_eq!(sent(&l, "https://evil.example/"), None);
        assert_eq!(sent(&l, "http://127.0.0.1:8081/"), None);
        assert_eq!(sent(&l, "/only/a/path"), None, "no destination, no origin");
    }

    #[test]
    fn a_client_built_for_one_origin_sends_path_only_requests_there() {
        let l = ForwardIdentityLayer::builder()
            .allow("http://[::1]:50051")
            .origin("http://[::1]:50051/")
            .build()
            .unwrap();
        assert_eq!(
            sent(&l, "/grpc.health.v1.Health/Check").as_deref(),
            Some("Bearer t")
        );
        assert_eq!(
            sent(&l, "https://elsewhere.example/grpc.health.v1.Health/Check"),
            None,
            "an absolute URI is still checked"
        );
    }

    #[test]
    fn the_opt_out_sends_everywhere() {
        let l = ForwardIdentityLayer::builder()
            .allow_any_destination()
            .build()
            .unwrap();
        assert_eq!(
            sent(&l, "http://anything.example/").as_deref(),
            Some("Bearer t")
        );
        assert_eq!(sent(&l, "/path").as_deref(), Some("Bearer t"));
    }

    #[test]
    fn bad_allow_lists_are_refused_at_build_saying_what_to_do() {
        let error = ForwardIdentityLayer::builder().build().unwrap_err();
        assert_eq!(error.setting(), "forward_identity.allow");
        assert!(error.reason().contains(".allow(\"https://"), "{error}");
        assert!(error.reason().contains("allow_any_destination"), "{error}");
        let refused = |d: &str| {
            ForwardIdentityLayer::builder()
                .allow(d)
                .build()
                .unwrap_err()
        };
        assert!(refused("http://b.internal").reason().contains("use https"));
        assert!(refused("http://10.0.0.1:80").reason().contains("use https"));
        assert!(
            refused("http://localhost.evil.example")
                .reason()
                .contains("use https")
        );
        assert!(
            refused("https://b.internal/api")
                .reason()
                .contains("scheme://host")
        );
        assert!(
            refused("https://b.internal?x")
                .reason()
                .contains("scheme://host")
        );
        assert!(refused("b.internal").reason().contains("scheme://host"));
        assert!(
            refused("ftp://b.internal")
                .reason()
                .contains("scheme://host")
        );
        let secret = refused("https://user:hunter2@b.internal");
        assert!(!secret.to_string().contains("hunter2"), "{secret}");
        for loopback in [
            "http://localhost:1",
            "http://127.9.0.1",
            "http://[::1]:8080",
            "http://[::ffff:127.0.0.1]",
        ] {
            assert!(
                ForwardIdentityLayer::builder()
                    .allow(loopback)
                    .build()
                    .is_ok(),
                "{loopback}"
            );
        }
        let origin = ForwardIdentityLayer::builder()
            .allow("https://b.internal")
            .origin("https://c.internal")
            .build()
            .unwrap_err();
        assert_eq!(origin.setting(), "forward_identity.origin");
        assert!(
            origin
                .reason()
                .contains(".allow(\"https://c.internal:443\")"),
            "{origin}"
        );
    }

    #[test]
    fn a_refused_destination_is_logged_once_without_the_token() {
        use std::io::Write;
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let l = layer(&["https://b.internal"]);
        tracing::subscriber::with_default(subscriber, || {
            let secret = ForwardedToken::bearer("secret.token.value").unwrap();
            let mut client = client(&l);
            for uri in [
                "https://evil.example/a",
                "https://evil.example/b",
                "http://other.example/",
            ] {
                let mut request = Request::new(());
                *request.uri_mut() = Uri::from_static(uri);
                let mut t = Some(secret.clone());
                assert_eq!(futures_now(enter(&mut t, || client.call(request))), None);
            }
        });
        let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            logs.matches("forwarded token was not sent").count(),
            1,
            "{logs}"
        );
        assert!(logs.contains("https://evil.example:443"), "{logs}");
        assert!(!logs.contains("secret"), "{logs}");
    }
}
