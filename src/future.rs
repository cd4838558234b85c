//! What every layer's `call` decides ([`Verdict`]) and the response-future
//! arms they share ([`Respond`]): the inner service's future, or a refusal
//! that is ready at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;

/// A layer's decision for one request: go on (with what the layer needs
/// afterwards), answer with a refusal now, or wait (a key fetch, a remote
/// store) and decide then.
pub(crate) enum Verdict<P, W = std::convert::Infallible> {
    Pass(P),
    Refuse(Response<Bytes>),
    Wait(W),
}

pin_project! {
    /// Either the inner future or a ready refusal.
    #[project = RespondProj]
    pub(crate) enum Respond<F> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<Bytes>> },
    }
}

impl<F> Respond<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self::Inner { future }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self::Refused {
            response: Some(response),
        }
    }
}

impl<F, B, E> Future for Respond<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RespondProj::Inner { future } => future
                .poll(cx)
                .map(|r| r.map(|res| res.map(ResponseBody::inner))),
            RespondProj::Refused { response } => {
                // Polled again after completion: an empty 500 rather than a panic.
                let response = response
                    .take()
                    .unwrap_or_else(crate::reject::polled_after_completion);
                Poll::Ready(Ok(response.map(ResponseBody::full)))
            }
        }
    }
}

/// An inner service whose future is ready at once, for tests that look at
/// the layers' futures.
#[cfg(test)]
pub(crate) struct ReadyService;

#[cfg(test)]
impl tower_service::Service<http::Request<()>> for ReadyService {
    type Response = Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<()>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}
