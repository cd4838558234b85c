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
use super::key::RateKey;
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

/// What a passing request's response gets: the headers of the door's
/// decision, or of the last charge of its [`Cost`](super::Cost).
#[derive(Default)]
pub struct Stamped {
    stamp: Option<Stamp>,
    cost: Option<super::cost::Cost>,
}

impl After for Stamped {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) -> Option<crate::body::BodyGuard> {
        let stamp = match self.cost {
            None => self.stamp,
            Some(cost) => cost.stamp().or(self.stamp),
        };
        if let Some(stamp) = stamp {
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
    key: RateKey,
}

impl<C: Future<Output = Result<Decision, StoreError>>> Future for Checking<C> {
    type Output = (Result<Decision, StoreError>, usize, RateKey);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let policy = self.policy;
        let result = std::task::ready!(self.check.as_mut().poll(cx));
        Poll::Ready((
            result,
            policy,
            std::mem::replace(&mut self.key, RateKey::unkeyed()),
        ))
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
        key: RateKey,
        result: Result<Decision, StoreError>,
        parts: http::request::Parts,
        body: B,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Stamped, W, B> {
        let decision = result.as_ref().ok().copied();
        match self.shared.verdict(policy, result, &parts, &self.responder) {
            Ok(stamp) => {
                let mut parts = parts;
                let cost = self
                    .shared
                    .cost
                    .is_some()
                    .then(|| self.handle(policy, key, &mut parts, decision));
                Verdict::Pass(
                    call(Request::from_parts(parts, body)),
                    Stamped { stamp, cost },
                )
            }
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    /// The request's [`Cost`](super::Cost), in its extensions.
    #[cold]
    fn handle(
        &self,
        policy: usize,
        key: RateKey,
        parts: &mut http::request::Parts,
        decision: Option<Decision>,
    ) -> super::cost::Cost {
        let cost = super::cost::Cost::new(
            &self.shared,
            &self.responder,
            policy,
            key,
            parts,
            decision.filter(|d| d.allowed),
        );
        parts.extensions.insert(cost.clone());
        cost
    }
}

impl<St, R, B> Decide<B> for LimitDecision<St, R>
where
    St: RateLimitStore,
    R: Responder,
{
    type After = Stamped;
    type Wait = Checking<St::Future>;

    fn decide<F>(
        &self,
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Stamped, Self::Wait, B> {
        let (parts, body) = req.into_parts();
        let Some((policy, key)) = self.shared.classify(&parts) else {
            return Verdict::Pass(call(Request::from_parts(parts, body)), Stamped::default());
        };
        match self.shared.store.check(&self.shared.policies[policy], &key) {
            Check::Ready(result) => self.conclude(policy, key, result, parts, body, call),
            Check::Pending(check) => Verdict::Wait(
                Checking {
                    check: Box::pin(check),
                    policy,
                    key,
                },
                Request::from_parts(parts, body),
            ),
        }
    }

    fn resume<F>(
        &self,
        (result, policy, key): (Result<Decision, StoreError>, usize, RateKey),
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Stamped, Infallible, B> {
        let (parts, body) = req.into_parts();
        self.conclude(policy, key, result, parts, body, call)
    }
}
