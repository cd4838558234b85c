use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::limiter::Shared;
use super::store::{Check, RateLimitStore};
use crate::body::ResponseBody;
use crate::future::Verdict;
use crate::macros::inner_accessors;
use crate::reject::{DefaultResponder, Responder};

/// The service built by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, St, R = DefaultResponder> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
    pub(crate) responder: R,
}

impl<S, St, R> RateLimit<S, St, R> {
    inner_accessors!(S);
}

impl<S: Clone, St, R: Clone> Clone for RateLimit<S, St, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            responder: self.responder.clone(),
        }
    }
}

impl<S: fmt::Debug, St, R> fmt::Debug for RateLimit<S, St, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St, R, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: RateLimitStore,
    R: Responder,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>, St, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let Some((policy, key)) = self.shared.classify(&parts) else {
            return ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)), None);
        };
        match self.shared.store.check(&self.shared.policies[policy], &key) {
            Check::Ready(result) => {
                match self.shared.verdict(policy, result, &parts, &self.responder) {
                    Verdict::Pass(stamp) => {
                        let future = self.inner.call(Request::from_parts(parts, body));
                        ResponseFuture::inner(future, stamp)
                    }
                    Verdict::Refuse(response) => ResponseFuture::refused(response),
                    Verdict::Wait(never) => match never {},
                }
            }
            Check::Pending(check) => {
                // The decision comes later: the future takes the service that
                // was made ready and leaves a fresh clone here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::checking(
                    check,
                    inner,
                    Request::from_parts(parts, body),
                    policy,
                    Arc::clone(&self.shared),
                    self.responder.clone(),
                )
            }
        }
    }
}
