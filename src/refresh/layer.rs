//! [`RefreshSessionLayer`]: the layer, its service and its response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::mint::{self, Due, Refresher};
use super::settings::Refresh;
use crate::auth::JwtAuthLayer;
use crate::error::ConfigError;
use crate::identity::{Anonymous, CredentialSource, Identity, VerifiedToken};
use crate::macros::inner_accessors;

/// Slides cookie sessions: a verified cookie token near its `exp` gets a
/// re-minted successor in a `Set-Cookie` on a successful response. See the
/// [module docs](super).
#[derive(Clone)]
pub struct RefreshSessionLayer {
    refresher: Arc<Refresher>,
    /// The auth layer it was built from.
    origin: usize,
}

impl fmt::Debug for RefreshSessionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshSessionLayer")
            .finish_non_exhaustive()
    }
}

impl RefreshSessionLayer {
    /// A refresh for the sessions `auth` verifies, to mount behind it.
    ///
    /// # Errors
    /// Not exactly one cookie source on `auth`, invalid cookie attributes, a
    /// lifetime not longer than `within` (or longer than the auth layer's
    /// `max_lifetime`), or a signing key whose tokens the auth layer's
    /// static keys would refuse.
    pub fn new<T, R>(auth: &JwtAuthLayer<T, R>, refresh: Refresh) -> Result<Self, ConfigError> {
        let state = &auth.state;
        let rules = state.providers.first().map(|provider| &provider.rules);
        let max_session = refresh.max_session;
        let refresher = refresh.build(&mint::Context {
            sources: &state.sources,
            providers: &state.providers,
            clock: &state.clock,
            revocations: state.revocations.as_ref(),
            leeway: rules.map_or(0, |rules| rules.leeway),
            max_lifetime: rules.and_then(|rules| rules.max_lifetime),
        })?;
        if let Some(revocations) = &state.revocations {
            // Successors keep the jti: a revocation outlives the session.
            revocations.cover_session(max_session);
        }
        Ok(Self {
            refresher: Arc::new(refresher),
            origin: state.hand_on_token(),
        })
    }
}

impl<S> Layer<S> for RefreshSessionLayer {
    type Service = RefreshSession<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RefreshSession {
            inner,
            refresher: Arc::clone(&self.refresher),
            origin: self.origin,
        }
    }
}

/// The service built by [`RefreshSessionLayer`].
#[derive(Clone)]
pub struct RefreshSession<S> {
    inner: S,
    refresher: Arc<Refresher>,
    origin: usize,
}

impl<S> RefreshSession<S> {
    inner_accessors!(S);
}

impl<S: fmt::Debug> fmt::Debug for RefreshSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshSession")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Says once at `warn` that the layer is not where it can work.
fn misplaced(why: &'static str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!("tollgate: RefreshSessionLayer {why}; sessions do not slide");
    }
}

impl Refresher {
    /// The re-mint this request may get: a verified token from the cookie
    /// inside the window.
    fn for_request<B>(self: &Arc<Self>, req: &Request<B>, origin: usize) -> Option<Box<Due>> {
        let extensions = req.extensions();
        let Some(identity) = extensions.get::<Identity>() else {
            if extensions.get::<Anonymous>().is_none() {
                misplaced(
                    "saw a request the auth layer never looked at: mount it behind the auth \
                     layer (ServiceBuilder: after it; axum Router::layer: before it)",
                );
            }
            return None;
        };
        // Cookies only: a bearer token belongs to a client that refreshes
        // it itself.
        if identity.source() != CredentialSource::Cookie {
            return None;
        }
        let Some(token) = extensions
            .get::<VerifiedToken>()
            .and_then(|token| token.from(origin))
        else {
            misplaced(
                "saw a token verified by an auth layer it was not built from: build it with \
                 RefreshSessionLayer::new(&auth, ..) from the layer in front of it",
            );
            return None;
        };
        self.due(token, identity.expires_at(), self.now(), identity)
    }
}

impl<S, B, ResBody> Service<Request<B>> for RefreshSession<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let due = self.refresher.for_request(&req, self.origin);
        ResponseFuture {
            future: self.inner.call(req),
            due,
        }
    }
}

pin_project! {
    /// Response future of [`RefreshSession`]: the inner future, and the
    /// re-mint due for its response.
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        due: Option<Box<Due>>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut output = ready!(this.future.poll(cx));
        if let Some(due) = this.due.take()
            && let Ok(response) = &mut output
        {
            due.apply(response.status(), response.headers_mut());
        }
        Poll::Ready(output)
    }
}
