use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::limiter::{Shared, Verdict};
use super::store::{Decision, RateLimitStore};
use crate::body::ResponseBody;

type Stamp<St> = (Arc<Shared<St>>, (usize, Decision));

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, R, St>
    where
        S: Service<R>,
        St: RateLimitStore,
    {
        #[pin]
        state: State<S::Future, St::Future, S, R, St>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C, S, R, St> {
        Checking {
            #[pin]
            check: C,
            inner: Option<S>,
            request: Option<R>,
            policy: usize,
            shared: Arc<Shared<St>>,
        },
        Inner {
            #[pin]
            future: F,
            stamp: Option<Stamp<St>>,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<S, R, St> ResponseFuture<S, R, St>
where
    S: Service<R>,
    St: RateLimitStore,
{
    pub(crate) fn inner(future: S::Future, stamp: Option<Stamp<St>>) -> Self {
        Self {
            state: State::Inner { future, stamp },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    pub(crate) fn checking(
        check: St::Future,
        inner: S,
        request: R,
        policy: usize,
        shared: Arc<Shared<St>>,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                inner: Some(inner),
                request: Some(request),
                policy,
                shared,
            },
        }
    }
}

impl<S, ReqBody, ResBody, St> Future for ResponseFuture<S, Request<ReqBody>, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: RateLimitStore,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    inner,
                    request,
                    policy,
                    shared,
                } => {
                    let result = ready!(check.poll(cx));
                    let (Some(mut inner), Some(request)) = (inner.take(), request.take()) else {
                        return Poll::Ready(Ok(
                            crate::reject::polled_after_completion().map(ResponseBody::full)
                        ));
                    };
                    let (parts, body) = request.into_parts();
                    let next = match shared.verdict(*policy, result, &parts) {
                        Verdict::Pass(stamp) => State::Inner {
                            future: inner.call(Request::from_parts(parts, body)),
                            stamp: stamp.map(|s| (Arc::clone(shared), s)),
                        },
                        Verdict::Refuse(response) => State::Refused {
                            response: Some(response),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Inner { future, stamp } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((shared, (policy, decision))) = stamp.take() {
                        shared.stamp(policy, &decision, response.headers_mut());
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProj::Refused { response } => {
                    let response = response
                        .take()
                        .unwrap_or_else(crate::reject::polled_after_completion);
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}
