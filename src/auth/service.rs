use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use serde::de::DeserializeOwned;
use tower_service::Service;

use super::claims::{Anonymous, Claims};
use super::error::{AuthError, AuthErrorKind};
use super::future::ResponseFuture;
use super::layer::{AuthMode, AuthState, Authenticated};
use super::responder::{AuthResponder, DefaultResponder};
use crate::body::ResponseBody;

/// The service built by [`JwtAuthLayer`](super::JwtAuthLayer): verifies, then calls `S` or answers
/// with a refusal.
pub struct JwtAuth<S, T, R = DefaultResponder> {
    pub(crate) inner: S,
    pub(crate) state: Arc<AuthState<T>>,
    pub(crate) mode: AuthMode,
    pub(crate) responder: R,
}

impl<S, T, R> JwtAuth<S, T, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, T, R: Clone> Clone for JwtAuth<S, T, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
            mode: self.mode,
            responder: self.responder.clone(),
        }
    }
}

impl<S: fmt::Debug, T, R: fmt::Debug> fmt::Debug for JwtAuth<S, T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("inner", &self.inner)
            .field("mode", &self.mode)
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl<S, T, R, ReqBody, ResBody> Service<Request<ReqBody>> for JwtAuth<S, T, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    T: DeserializeOwned + Send + Sync + 'static,
    R: AuthResponder,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let outcome = self.state.authenticate(req.headers());
        let anonymous = match outcome {
            Ok(Some(Authenticated { claims, identity })) => {
                let extensions = req.extensions_mut();
                extensions.insert(Claims(claims));
                extensions.insert(identity);
                return ResponseFuture::inner(self.inner.call(req));
            }
            Ok(None) if self.mode == AuthMode::Required => Err(AuthError::new(
                AuthErrorKind::Missing,
                "this resource needs a token",
            )),
            Ok(None) => Ok(Anonymous::new(None)),
            Err(e) if self.mode == AuthMode::Lenient && e.kind() != AuthErrorKind::Forbidden => {
                tracing::debug!(
                    reason = e.kind().reason(),
                    "tollgate: token ignored (lenient)"
                );
                Ok(Anonymous::new(Some(e.kind())))
            }
            Err(e) => Err(e),
        };
        match anonymous {
            Ok(marker) => {
                req.extensions_mut().insert(marker);
                ResponseFuture::inner(self.inner.call(req))
            }
            Err(error) => {
                tracing::debug!(
                    reason = error.kind().reason(),
                    detail = error.detail(),
                    "tollgate: request refused"
                );
                let (parts, _body) = req.into_parts();
                ResponseFuture::refused(self.responder.respond(&error, &parts))
            }
        }
    }
}
