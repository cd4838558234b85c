use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::authenticate::AuthMode;
use super::authenticate::{AuthState, step};
use super::future::ResponseFuture;
use crate::body::ResponseBody;
use crate::future::Verdict;
use crate::macros::inner_accessors;
use crate::reject::{DefaultResponder, Responder};

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
    inner_accessors!(S);
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
    R: Responder,
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
            Verdict::Pass(req) => ResponseFuture::inner(self.inner.call(req)),
            Verdict::Refuse(response) => ResponseFuture::refused(response),
            Verdict::Wait((wait, req)) => {
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
