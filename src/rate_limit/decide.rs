//! The rate limiter's decision for one request: classify → key → store →
//! pass (with the headers its response gets) or refuse; a remote store's
//! answer is waited for.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use super::headers::Stamp;
use super::limiter::Shared;
use super::store::{Check, Decision, RateLimitStore, StoreError};
use crate::middleware::{After, Decide, Verdict};
use crate::reject::Responder;

/// The decision of [`RateLimit`](super::RateLimit): the layer's shared
/// state and its responder.
pub struct LimitDecision<St, R> {
    pub(crate) shared: Arc<Shared<St>>,
    pub(crate) responder: R,
}

impl<St, R: Clone> Clone for LimitDecision<St, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            responder: self.responder.clone(),
        }
    }
}

impl<St, R: fmt::Debug> fmt::Debug for LimitDecision<St, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl After for Option<Stamp> {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) -> Option<crate::body::BodyGuard> {
        if let Some(stamp) = self {
            stamp.apply(response.headers_mut());
        }
        None
    }
}

/// A remote store's answer for the policy it was asked about. Boxed: only
/// a remote store's exact mode waits (one allocation next to a network
/// round trip).
pub struct Checking<C> {
    check: Pin<Box<C>>,
    policy: usize,
}

impl<C: Future<Output = Result<Decision, StoreError>>> Future for Checking<C> {
    type Output = (Result<Decision, StoreError>, usize);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let policy = self.policy;
        self.check.as_mut().poll(cx).map(|result| (result, policy))
    }
}

impl<St, R> LimitDecision<St, R>
where
    St: RateLimitStore,
    R: Responder,
{
    /// The store's answer made a verdict.
    fn conclude<B, F, W>(
        &self,
        policy: usize,
        result: Result<Decision, StoreError>,
        parts: http::request::Parts,
        body: B,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Option<Stamp>, W, B> {
        match self.shared.verdict(policy, result, &parts, &self.responder) {
            Ok(stamp) => Verdict::Pass(call(Request::from_parts(parts, body)), stamp),
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }
}

impl<St, R, B> Decide<B> for LimitDecision<St, R>
where
    St: RateLimitStore,
    R: Responder,
{
    type After = Option<Stamp>;
    type Wait = Checking<St::Future>;

    fn decide<F>(
        &self,
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Option<Stamp>, Self::Wait, B> {
        let (parts, body) = req.into_parts();
        let Some((policy, key)) = self.shared.classify(&parts) else {
            return Verdict::Pass(call(Request::from_parts(parts, body)), None);
        };
        match self.shared.store.check(&self.shared.policies[policy], &key) {
            Check::Ready(result) => self.conclude(policy, result, parts, body, call),
            Check::Pending(check) => Verdict::Wait(
                Checking {
                    check: Box::pin(check),
                    policy,
                },
                Request::from_parts(parts, body),
            ),
        }
    }

    fn resume<F>(
        &self,
        (result, policy): (Result<Decision, StoreError>, usize),
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Option<Stamp>, Infallible, B> {
        let (parts, body) = req.into_parts();
        self.conclude(policy, result, parts, body, call)
    }
}
