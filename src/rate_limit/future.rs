use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::headers::Stamp;
use super::limiter::Shared;
use super::store::RateLimitStore;
use crate::body::ResponseBody;
use crate::future::{Respond, Verdict};
use crate::reject::{self, Responder};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, Req, St, R>
    where
        S: Service<Req>,
        St: RateLimitStore,
    {
        #[pin]
        state: State<S::Future, St::Future, S, Req, St, R>,
    }
}

/// A request parked while a remote store decides.
struct Parked<S, Req, St, R> {
    inner: S,
    request: Req,
    policy: usize,
    shared: Arc<Shared<St>>,
    responder: R,
}

pin_project! {
    #[project = StateProj]
    enum State<F, C, S, Req, St, R> {
        // Boxed: only a remote store's exact mode waits here (one allocation
        // next to a network round trip), and the future every local decision
        // moves around stays the size of the inner one plus a stamp.
        Checking {
            check: Pin<Box<C>>,
            parked: Option<Box<Parked<S, Req, St, R>>>,
        },
        Ready {
            #[pin]
            respond: Respond<F>,
            stamp: Option<Stamp>,
        },
    }
}

impl<S, Req, St, R> ResponseFuture<S, Req, St, R>
where
    S: Service<Req>,
    St: RateLimitStore,
{
    pub(crate) fn inner(future: S::Future, stamp: Option<Stamp>) -> Self {
        Self {
            state: State::Ready {
                respond: Respond::inner(future),
                stamp,
            },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self {
            state: State::Ready {
                respond: Respond::refused(response),
                stamp: None,
            },
        }
    }

    pub(crate) fn checking(
        check: St::Future,
        inner: S,
        request: Req,
        policy: usize,
        shared: Arc<Shared<St>>,
        responder: R,
    ) -> Self {
        Self {
            state: State::Checking {
                check: Box::pin(check),
                parked: Some(Box::new(Parked {
                    inner,
                    request,
                    policy,
                    shared,
                    responder,
                })),
            },
        }
    }
}

impl<S, ReqBody, ResBody, St, R> Future for ResponseFuture<S, Request<ReqBody>, St, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: RateLimitStore,
    R: Responder,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Checking { check, parked } => {
                    let result = ready!(check.as_mut().poll(cx));
                    let Some(parked) = parked.take() else {
                        let response = reject::polled_after_completion();
                        return Poll::Ready(Ok(response.map(ResponseBody::full)));
                    };
                    let Parked {
                        mut inner,
                        request,
                        policy,
                        shared,
                        responder,
                    } = *parked;
                    let (parts, body) = request.into_parts();
                    let next = match shared.verdict(policy, result, &parts, &responder) {
                        Verdict::Pass(stamp) => State::Ready {
                            respond: Respond::inner(inner.call(Request::from_parts(parts, body))),
                            stamp,
                        },
                        Verdict::Refuse(response) => State::Ready {
                            respond: Respond::refused(response),
                            stamp: None,
                        },
                        Verdict::Wait(never) => match never {},
                    };
                    this.state.set(next);
                }
                StateProj::Ready { respond, stamp } => {
                    let mut response = ready!(respond.poll(cx))?;
                    if let Some(stamp) = stamp.take() {
                        stamp.apply(response.headers_mut());
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use http::Request;
    use tower_service::Service;

    use super::ResponseFuture;
    use crate::future::ReadyService;
    use crate::rate_limit::LocalStore;
    use crate::reject::DefaultResponder;

    /// Every decision moves this future (into axum's box, into the
    /// executor): the state of a remote check, which holds the whole request,
    /// must not make it the size of a request.
    #[test]
    fn the_future_is_the_inner_one_plus_a_stamp() {
        type Future = ResponseFuture<ReadyService, Request<()>, LocalStore, DefaultResponder>;
        let inner = size_of::<<ReadyService as Service<Request<()>>>::Future>();
        assert!(
            size_of::<Future>() <= inner + 64,
            "{} bytes for an inner future of {inner}",
            size_of::<Future>()
        );
        assert!(size_of::<Future>() < size_of::<Request<()>>());
    }
}
