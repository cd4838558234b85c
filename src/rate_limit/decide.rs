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
/// decision, or — charged by cost — of the last charge of its
/// [`Cost`](super::Cost). An enum, so that the plain limiter's response
/// future does not grow.
pub enum Stamped {
    Door(Option<Stamp>),
    Charged(super::cost::Cost),
}

impl Default for Stamped {
    fn default() -> Self {
        Self::Door(None)
    }
}

impl After for Stamped {
    #[inline]
    fn apply<B>(self, response: &mut Response<B>) -> Option<crate::body::BodyGuard> {
        let stamp = match self {
            Self::Door(stamp) => stamp,
            Self::Charged(cost) => cost.stamp(),
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
    #[inline]
    fn conclude<B, F, W>(
        &self,
        policy: usize,
        key: &RateKey,
        result: Result<Decision, StoreError>,
        parts: http::request::Parts,
        body: B,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Stamped, W, B> {
        if self.shared.cost.is_some() {
            return self.conclude_charged(policy, key, result, parts, body, call);
        }
        match self.shared.verdict(policy, result, &parts, &self.responder) {
            Ok(stamp) => {
                Verdict::Pass(call(Request::from_parts(parts, body)), Stamped::Door(stamp))
            }
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    /// [`conclude`](Self::conclude) for a layer charged by cost: a passing
    /// request gets its [`Cost`](super::Cost) in its extensions.
    #[inline(never)]
    fn conclude_charged<B, F, W>(
        &self,
        policy: usize,
        key: &RateKey,
        result: Result<Decision, StoreError>,
        mut parts: http::request::Parts,
        body: B,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Stamped, W, B> {
        let decision = result.as_ref().ok().copied().filter(|d| d.allowed);
        match self.shared.verdict(policy, result, &parts, &self.responder) {
            Ok(_) => {
                let cost = super::cost::Cost::new(
                    &self.shared,
                    &self.responder,
                    policy,
                    key.clone(),
                    &parts,
                    // Shadow mode lets a refused request through: no headers,
                    // as at the door.
                    decision,
                );
                parts.extensions.insert(cost.clone());
                Verdict::Pass(
                    call(Request::from_parts(parts, body)),
                    Stamped::Charged(cost),
                )
            }
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }
}

impl<St, R, B> Decide<B> for LimitDecision<St, R>
where
    St: RateLimitStore,
    R: Responder,
{
    type After = Stamped;
    type Wait = Checking<St::Future>;

    #[inline]
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
            Check::Ready(result) => self.conclude(policy, &key, result, parts, body, call),
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
    ) -> Verdict<F, Stamped, Infallible, B> {
        let (parts, body) = req.into_parts();
        // The key again, only for a handle (not kept while waiting: the
        // plain limiter's future stays as small as it was).
        let key = if self.shared.cost.is_some() {
            self.shared
                .classify(&parts)
                .map_or_else(RateKey::unkeyed, |(_, key)| key)
        } else {
            RateKey::unkeyed()
        };
        self.conclude(policy, &key, result, parts, body, call)
    }
}
