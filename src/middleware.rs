//! The one service and response future that every deciding layer of
//! tollgate is built on.
//!
//! A deciding layer (the auth layer, the rate limiter, the CSRF guard) is
//! its layer, its builder and one *decision*: for each
//! request, pass it on (with what the response needs afterwards), refuse it
//! with a response made now, or wait — for a key fetch, a remote store — and
//! decide then. [`Middleware`] runs a decision in front of the inner service
//! and [`ResponseFuture`] carries it through to the response; the public
//! names ([`JwtAuth`](crate::auth::JwtAuth),
//! [`RateLimit`](crate::rate_limit::RateLimit),
//! [`CsrfGuard`](crate::csrf::CsrfGuard)) are these two types with their
//! decision filled in.
//!
//! Layers that never refuse (the sliding refresh, the forwarding scope, the
//! route rules) keep the inner service's response type and are plain
//! services.
//!
//! ```text
//! call ─▶ decide ──pass──────────────────────────▶ inner.call ─▶ response ─▶ after
//!            ├─────refuse ─▶ response (the inner service is not called)
//!            └─────wait ───▶ (key fetch, store) ─▶ resume ─▶ pass / refuse
//! ```
//!
//! The response body is [`ResponseBody`]: the inner service's, or a
//! refusal's bytes, so every layer stays generic over body types.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::macros::inner_accessors;

pub(crate) use decide::{After, Decide, Verdict};

/// The decision trait, public in name only (it is not reachable from
/// outside the crate): the layers' decisions implement it, users name the
/// services through their aliases.
mod decide {
    use std::convert::Infallible;
    use std::future::Future;

    use bytes::Bytes;
    use http::{Request, Response};

    /// One request's decision: gone on (the inner service's future `F`, and
    /// what the response needs), a refusal now, or a wait before deciding
    /// again (the request kept meanwhile).
    pub enum Verdict<F, A, W, B> {
        Pass(F, A),
        Refuse(Response<Bytes>),
        Wait(W, Request<B>),
    }

    /// What a deciding layer does per request.
    pub trait Decide<B>: Clone {
        /// What a passed request leaves for its response (headers to add, a
        /// cookie to re-mint); `()` for nothing.
        type After: After;
        /// What a request may wait for before its decision; [`Never`] for a
        /// layer that decides at once.
        type Wait: Future + Unpin;

        /// Decides for a request; a request that goes on is handed to `call`
        /// (the inner service's `call`) right where it is rebuilt, so that it
        /// is not moved through the verdict.
        fn decide<F>(
            &self,
            req: Request<B>,
            call: impl FnOnce(Request<B>) -> F,
        ) -> Verdict<F, Self::After, Self::Wait, B>;

        /// Decides again once the wait is over; no second wait.
        fn resume<F>(
            &self,
            waited: <Self::Wait as Future>::Output,
            req: Request<B>,
            call: impl FnOnce(Request<B>) -> F,
        ) -> Verdict<F, Self::After, Infallible, B> {
            // Only a layer that never waits keeps this: it is never called.
            let _ = (waited, req, call);
            Verdict::Refuse(crate::reject::polled_after_completion())
        }
    }

    /// What the response of a passed request gets, once it is there; what
    /// `apply` returns lives until the response body has ended.
    pub trait After: Default {
        fn apply<B>(self, response: &mut Response<B>) -> Option<crate::body::BodyGuard>;
    }

    impl After for () {
        #[inline]
        fn apply<B>(self, _: &mut Response<B>) -> Option<crate::body::BodyGuard> {
            None
        }
    }

    /// The wait of a layer that never waits.
    #[cfg(any(feature = "csrf", feature = "rate-limit"))]
    pub enum Never {}

    #[cfg(any(feature = "csrf", feature = "rate-limit"))]
    impl Future for Never {
        type Output = Infallible;

        fn poll(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Infallible> {
            match *self {}
        }
    }
}

#[cfg(any(feature = "csrf", feature = "rate-limit"))]
pub(crate) use decide::Never;

/// A layer's service: its decision `D` in front of the inner service `S`.
/// Named through each layer's alias (`JwtAuth`, `RateLimit`, `CsrfGuard`);
/// see the [module docs](self).
pub struct Middleware<S, D> {
    inner: S,
    decide: D,
}

impl<S, D> Middleware<S, D> {
    pub(crate) fn new(inner: S, decide: D) -> Self {
        Self { inner, decide }
    }

    inner_accessors!(S);
}

impl<S: Clone, D: Clone> Clone for Middleware<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            decide: self.decide.clone(),
        }
    }
}

impl<S: fmt::Debug, D: fmt::Debug> fmt::Debug for Middleware<S, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Middleware")
            .field("decision", &self.decide)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, D, B, ResBody> Service<Request<B>> for Middleware<S, D>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    D: Decide<B>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, D>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let inner = &mut self.inner;
        let state = match self.decide.decide(req, |req| inner.call(req)) {
            Verdict::Pass(future, after) => State::Inner { future, after },
            Verdict::Refuse(response) => State::Refused {
                response: Some(response),
            },
            Verdict::Wait(wait, request) => {
                // The request waits: the future takes the service that was
                // made ready and leaves a clone here.
                let clone = self.inner.clone();
                State::Waiting {
                    wait,
                    parked: Some(Box::new(Parked {
                        inner: std::mem::replace(&mut self.inner, clone),
                        request,
                        decide: self.decide.clone(),
                    })),
                }
            }
        };
        ResponseFuture { state }
    }
}

/// A request parked while its layer waits. Boxed: only a request whose
/// decision waits (a key fetch, a remote store's round trip) gets here, and
/// the future every other request moves stays the inner one's size plus
/// little.
struct Parked<S, B, D> {
    inner: S,
    request: Request<B>,
    decide: D,
}

pin_project! {
    /// Response future of [`Middleware`]: the inner service's future (and
    /// what its response gets afterwards), a refusal ready at once, or a
    /// request waiting for its decision.
    pub struct ResponseFuture<S, B, D>
    where
        S: Service<Request<B>>,
        D: Decide<B>,
    {
        #[pin]
        state: State<S::Future, D::After, D::Wait, Box<Parked<S, B, D>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, A, W, P> {
        Inner { #[pin] future: F, after: A },
        Refused { response: Option<Response<Bytes>> },
        Waiting { wait: W, parked: Option<P> },
    }
}

impl<S, B, D, ResBody> Future for ResponseFuture<S, B, D>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    D: Decide<B>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let next = match state.as_mut().project() {
                StateProj::Inner { future, after } => {
                    let mut response = ready!(future.poll(cx))?;
                    let guard = std::mem::take(after).apply(&mut response);
                    return Poll::Ready(
                        Ok(response.map(|body| ResponseBody::guarded(body, guard))),
                    );
                }
                StateProj::Refused { response } => {
                    // Polled again after completion: an empty 500, not a panic.
                    let response = response
                        .take()
                        .unwrap_or_else(crate::reject::polled_after_completion);
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
                StateProj::Waiting { wait, parked } => {
                    let waited = ready!(Pin::new(wait).poll(cx));
                    let Some(parked) = parked.take() else {
                        let response = crate::reject::polled_after_completion();
                        return Poll::Ready(Ok(response.map(ResponseBody::full)));
                    };
                    let Parked {
                        mut inner,
                        request,
                        decide,
                    } = *parked;
                    match decide.resume(waited, request, |request| inner.call(request)) {
                        Verdict::Pass(future, after) => State::Inner { future, after },
                        Verdict::Refuse(response) => State::Refused {
                            response: Some(response),
                        },
                        Verdict::Wait(never, _) => match never {},
                    }
                }
            };
            state.set(next);
        }
    }
}

/// An inner service whose future is ready at once, for tests that look at
/// the layers' futures.
#[cfg(test)]
#[derive(Clone)]
pub(crate) struct ReadyService;

#[cfg(test)]
impl Service<Request<()>> for ReadyService {
    type Response = Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<()>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

/// Every request moves its layer's future (into axum's box, into the
/// executor): a request parked while its decision waits, which holds the
/// whole request, must not make it the size of one. For the layers' tests.
#[cfg(test)]
pub(crate) fn assert_small<F>(what: &str) {
    use std::mem::size_of;
    let inner = size_of::<<ReadyService as Service<Request<()>>>::Future>();
    assert!(
        size_of::<F>() <= inner + 64,
        "{what}: {} bytes for an inner future of {inner}",
        size_of::<F>()
    );
    assert!(size_of::<F>() < size_of::<Request<()>>(), "{what}");
}
