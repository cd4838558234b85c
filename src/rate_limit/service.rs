use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::limiter::{Shared, Verdict};
use super::store::{Check, RateLimitStore};
use crate::body::ResponseBody;

/// The service built by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, St> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared<St>>,
}

impl<S, St> RateLimit<S, St> {
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

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: RateLimitStore,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let Some((policy, key)) = self.shared.classify(&parts) else {
            return ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)), None);
        };
        match self.shared.store.check(&self.shared.policies[policy], &key) {
            Check::Ready(result) => match self.shared.verdict(policy, result, &parts) {
                Verdict::Pass(stamp) => {
                    let stamp = stamp.map(|s| (Arc::clone(&self.shared), s));
                    ResponseFuture::inner(self.inner.call(Request::from_parts(parts, body)), stamp)
                }
                Verdict::Refuse(response) => ResponseFuture::refused(response),
            },
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
                )
            }
        }
    }
}
