use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::claims::{Anonymous, Claims};
use super::error::{AuthError, AuthErrorKind};
use super::future::ResponseFuture;
use super::layer::{AuthMode, AuthState, Authenticated, Outcome};
use super::provider::Wait;
use super::responder::{AuthResponder, DefaultResponder};
use crate::body::ResponseBody;
use crate::observe;

/// The service built by [`JwtAuthLayer`](super::JwtAuthLayer): verifies, then calls `S` or answers
/// with a refusal.
pub struct JwtAuth<S, T, R = DefaultResponder> {
    pub(crate) inner: S,
    pub(crate) state: Arc<AuthState<T>>,
    pub(crate) mode: AuthMode,
    pub(crate) shadow: bool,
    pub(crate) responder: R,
}

impl<S, T, R> JwtAuth<S, T, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, T, R: Clone> Clone for JwtAuth<S, T, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
            mode: self.mode,
            shadow: self.shadow,
            responder: self.responder.clone(),
        }
    }
}

impl<S: fmt::Debug, T, R: fmt::Debug> fmt::Debug for JwtAuth<S, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .field("mode", &self.mode)
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

/// What to do with a request once authentication has looked at it.
pub(crate) enum Step<B> {
    Pass(Request<B>),
    Refuse(Response<Bytes>),
    Wait(Wait, Request<B>),
}

/// The per-request decision, shared by `call` and the retry after a key fetch.
///
/// In shadow mode a refusal is computed, counted and logged, and the request
/// goes on as anonymous.
pub(crate) fn step<T, R, B>(
    state: &AuthState<T>,
    mode: AuthMode,
    shadow: bool,
    responder: &R,
    mut req: Request<B>,
    allow_refresh: bool,
) -> Step<B>
where
    T: DeserializeOwned + Send + Sync + 'static,
    R: AuthResponder,
{
    let error = match state.authenticate(req.headers(), allow_refresh) {
        Outcome::Authenticated(Authenticated { claims, identity }) => {
            observe::auth_outcome("authenticated", "none", true);
            if state.trace_subject {
                tracing::trace!(
                    outcome = "authenticated",
                    subject = identity.subject(),
                    "tollgate: auth"
                );
            } else {
                tracing::trace!(outcome = "authenticated", "tollgate: auth");
            }
            let extensions = req.extensions_mut();
            extensions.insert(Claims(claims));
            extensions.insert(identity);
            return Step::Pass(req);
        }
        Outcome::Retry(wait) => return Step::Wait(wait, req),
        Outcome::NoToken if mode == AuthMode::Required => {
            AuthError::new(AuthErrorKind::Missing, "this resource needs a token")
        }
        Outcome::NoToken => {
            observe::auth_outcome("anonymous", AuthErrorKind::Missing.reason(), true);
            tracing::trace!(outcome = "anonymous", reason = "missing", "tollgate: auth");
            req.extensions_mut().insert(Anonymous::new(None));
            return Step::Pass(req);
        }
        Outcome::Failed(e) if mode == AuthMode::Lenient && e.kind() != AuthErrorKind::Forbidden => {
            observe::auth_outcome("anonymous", e.kind().reason(), true);
            tracing::debug!(
                outcome = "anonymous",
                reason = e.kind().reason(),
                "tollgate: token ignored (lenient)"
            );
            req.extensions_mut().insert(Anonymous::new(Some(e.kind())));
            return Step::Pass(req);
        }
        Outcome::Failed(e) => e,
    };
    let reason = error.kind().reason();
    observe::auth_outcome("refused", reason, !shadow);
    if shadow {
        tracing::debug!(
            outcome = "refused",
            reason,
            detail = error.detail(),
            enforced = false,
            "tollgate: would refuse (shadow mode)"
        );
        req.extensions_mut()
            .insert(Anonymous::new(Some(error.kind())));
        return Step::Pass(req);
    }
    tracing::debug!(
        outcome = "refused",
        reason,
        detail = error.detail(),
        "tollgate: request refused"
    );
    let (parts, _body) = req.into_parts();
    Step::Refuse(responder.respond(&error, &parts))
}

impl<S, T, R, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S, T, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    T: DeserializeOwned + Send + Sync + 'static,
    R: AuthResponder,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, T, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match step(
            &self.state,
            self.mode,
            self.shadow,
            &self.responder,
            req,
            true,
        ) {
            Step::Pass(req) => ResponseFuture::inner(self.inner.call(req)),
            Step::Refuse(response) => ResponseFuture::refused(response),
            Step::Wait(wait, req) => {
                // The request waits for a key fetch: the future takes the
                // service that was made ready and leaves a clone here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(
                    wait,
                    req,
                    inner,
                    Arc::clone(&self.state),
                    self.mode,
                    self.shadow,
                    self.responder.clone(),
                )
            }
        }
    }
}
