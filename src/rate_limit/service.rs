use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use tower_service::Service;

use super::future::ResponseFuture;
use super::headers::{self, ceil_secs};
use super::layer::{OnStoreError, Shared};
use super::store::{Check, Decision, RateLimitStore, StoreError};
use crate::body::ResponseBody;
use crate::observe;
use crate::reject::{self, GrpcCode, Problem};
use std::sync::atomic::Ordering;

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

/// What happens to a request once its decision is known.
pub(crate) enum Verdict {
    /// Call the inner service; stamp headers of this decision on the response.
    Pass(Option<(usize, Decision)>),
    /// Answer with this response.
    Refuse(Response<Bytes>),
}

impl<St: RateLimitStore> Shared<St> {
    pub(crate) fn verdict(
        &self,
        policy: usize,
        result: Result<Decision, StoreError>,
        parts: &Parts,
    ) -> Verdict {
        let name = &self.policies[policy].name;
        if self
            .decisions
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1024)
        {
            #[cfg(feature = "metrics")]
            observe::rate_keys(&self.policies[0].name, self.store.key_count());
        }
        let refusal = match result {
            Ok(decision) if decision.allowed => {
                observe::rate_decision(name, "allowed", true);
                tracing::trace!(policy = %name, outcome = "allowed", remaining = decision.remaining, "tollgate: rate limit");
                return Verdict::Pass(Some((policy, decision)));
            }
            Ok(decision) => {
                observe::rate_decision(name, "limited", !self.shadow);
                if self.shadow {
                    tracing::debug!(policy = %name, outcome = "limited", enforced = false, "tollgate: would limit (shadow mode)");
                    return Verdict::Pass(None);
                }
                tracing::debug!(policy = %name, outcome = "limited", "tollgate: rate limited");
                let mut headers = HeaderMap::new();
                let retry = decision.retry_after.map_or(1, |r| ceil_secs(r).max(1));
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
                self.stamp(policy, &decision, &mut headers);
                let problem = Problem {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    grpc: GrpcCode::ResourceExhausted,
                    reason: "rate_limited",
                    detail: "too many requests for this quota; retry later",
                };
                return Verdict::Refuse(reject::render(&problem, parts, headers));
            }
            Err(error) => {
                self.store_failed(&error);
                match self.on_store_error {
                    OnStoreError::FailOpen => {
                        observe::rate_decision(name, "failed_open", true);
                        return Verdict::Pass(None);
                    }
                    OnStoreError::FailClosed => StatusCode::SERVICE_UNAVAILABLE,
                    OnStoreError::FailClosedWith(status) => status,
                }
            }
        };
        observe::rate_decision(name, "failed_closed", !self.shadow);
        if self.shadow {
            return Verdict::Pass(None);
        }
        let problem = Problem {
            status: refusal,
            grpc: GrpcCode::Unavailable,
            reason: "rate_limit_unavailable",
            detail: "the rate limiter is unavailable",
        };
        Verdict::Refuse(reject::render(&problem, parts, HeaderMap::new()))
    }
}

impl<St> Shared<St> {
    pub(crate) fn stamp(&self, policy: usize, decision: &Decision, headers: &mut HeaderMap) {
        headers::apply(
            headers,
            self.style,
            &self.policies[policy],
            &self.policy_values[policy],
            decision,
        );
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
