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
