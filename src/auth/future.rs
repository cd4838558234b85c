use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::authenticate::{AuthState, Step, step};
use super::keys::provider::Wait;
use super::layer::AuthMode;
use super::responder::AuthResponder;
use crate::body::ResponseBody;

/// A request parked while keys are fetched for its unknown `kid`.
struct Parked<S, B, T, R> {
    inner: S,
    request: Request<B>,
    state: Arc<AuthState<T>>,
    mode: AuthMode,
    shadow: bool,
    responder: R,
}

pin_project! {
    /// Response future of [`JwtAuth`](super::JwtAuth): the inner service's
    /// future, a refusal that is ready at once, or a request waiting for a key
    /// fetch.
    pub struct ResponseFuture<S, B, T, R>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        kind: Kind<S::Future, S, B, T, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, B, T, R> {
        Inner { #[pin] future: F },
        Refused { response: Option<Response<Bytes>> },
        Waiting { wait: Wait, parked: Option<Parked<S, B, T, R>> },
    }
}

impl<S, B, T, R> ResponseFuture<S, B, T, R>
where
    S: Service<Request<B>>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Refused {
                response: Some(response),
            },
        }
    }

    pub(crate) fn waiting(
        wait: Wait,
        request: Request<B>,
        inner: S,
        state: Arc<AuthState<T>>,
        mode: AuthMode,
        shadow: bool,
        responder: R,
    ) -> Self {
        Self {
            kind: Kind::Waiting {
                wait,
                parked: Some(Parked {
                    inner,
                    request,
                    state,
                    mode,
                    shadow,
                    responder,
                }),
            },
        }
    }
}

impl<S, B, T, R, ResBody> Future for ResponseFuture<S, B, T, R>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    T: DeserializeOwned + Send + Sync + 'static,
    R: AuthResponder,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.kind.as_mut().project() {
                KindProj::Inner { future } => {
                    return future
                        .poll(cx)
                        .map(|r| r.map(|res| res.map(ResponseBody::inner)));
                }
                KindProj::Refused { response } => {
                    // Polled again after completion: an empty 500 rather than a panic.
                    let response = response
                        .take()
                        .unwrap_or_else(crate::reject::polled_after_completion);
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
                KindProj::Waiting { wait, parked } => {
                    ready!(wait.as_mut().poll(cx));
                    let Some(Parked {
                        mut inner,
                        request,
                        state,
                        mode,
                        shadow,
                        responder,
                    }) = parked.take()
                    else {
                        return Poll::Ready(Ok(
                            crate::reject::polled_after_completion().map(ResponseBody::full)
                        ));
                    };
                    // Second and last try: no further fetch.
                    let next = match step(&state, mode, shadow, &responder, request, false) {
                        Step::Pass(request) => Kind::Inner {
                            future: inner.call(request),
                        },
                        Step::Refuse(response) => Kind::Refused {
                            response: Some(response),
                        },
                        // `step` does not ask to wait when refresh is not allowed.
                        Step::Wait(..) => Kind::Refused {
                            response: Some(crate::reject::polled_after_completion()),
                        },
                    };
                    this.kind.set(next);
                }
            }
        }
    }
}
