use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::authenticate::AuthMode;
use super::authenticate::{AuthState, step};
use super::keys::provider::Wait;
use crate::body::ResponseBody;
use crate::future::Respond;
use crate::future::Verdict;
use crate::reject::Responder;

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
        Ready { #[pin] respond: Respond<F> },
        // Boxed: only a token whose key is being fetched waits here, and
        // the future every other request moves stays small.
        Waiting { wait: Wait, parked: Option<Box<Parked<S, B, T, R>>> },
    }
}

impl<S, B, T, R> ResponseFuture<S, B, T, R>
where
    S: Service<Request<B>>,
{
    pub(crate) fn inner(future: S::Future) -> Self {
        Self {
            kind: Kind::Ready {
                respond: Respond::inner(future),
            },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Ready {
                respond: Respond::refused(response),
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
                parked: Some(Box::new(Parked {
                    inner,
                    request,
                    state,
                    mode,
                    shadow,
                    responder,
                })),
            },
        }
    }
}

impl<S, B, T, R, ResBody> Future for ResponseFuture<S, B, T, R>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    T: DeserializeOwned + Send + Sync + 'static,
    R: Responder,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.kind.as_mut().project() {
                KindProj::Ready { respond } => return respond.poll(cx),
                KindProj::Waiting { wait, parked } => {
                    ready!(wait.as_mut().poll(cx));
                    let Some(parked) = parked.take() else {
                        let response = crate::reject::polled_after_completion();
                        return Poll::Ready(Ok(response.map(ResponseBody::full)));
                    };
                    let Parked {
                        mut inner,
                        request,
                        state,
                        mode,
                        shadow,
                        responder,
                    } = *parked;
                    // Second and last try: no further fetch.
                    let respond = match step(&state, mode, shadow, &responder, request, false) {
                        Verdict::Pass(request) => Respond::inner(inner.call(request)),
                        Verdict::Refuse(response) => Respond::refused(response),
                        // `step` does not ask to wait when refresh is not allowed.
                        Verdict::Wait(_) => {
                            Respond::refused(crate::reject::polled_after_completion())
                        }
                    };
                    let next = Kind::Ready { respond };
                    this.kind.set(next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use http::Request;
    use serde_json::Value;
    use tower_service::Service;

    use super::ResponseFuture;
    use crate::future::ReadyService;
    use crate::reject::DefaultResponder;

    /// Every request moves this future: a request parked for a key fetch,
    /// which holds the whole request, must not make it the size of one.
    #[test]
    fn the_future_is_the_inner_one_and_little_more() {
        type Future = ResponseFuture<ReadyService, (), Value, DefaultResponder>;
        let inner = size_of::<<ReadyService as Service<Request<()>>>::Future>();
        assert!(
            size_of::<Future>() <= inner + 64,
            "{} bytes for an inner future of {inner}",
            size_of::<Future>()
        );
        assert!(size_of::<Future>() < size_of::<Request<()>>());
    }
}
