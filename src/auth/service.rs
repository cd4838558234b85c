use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::authenticate::{AuthState, Step, step};
use super::future::ResponseFuture;
use super::layer::AuthMode;
use super::responder::{AuthResponder, DefaultResponder};
use crate::body::ResponseBody;

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
