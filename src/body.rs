//! The response body of tollgate's services: the inner service's body, or a
//! refusal rendered by tollgate.
//!
//! Wrapping keeps every layer generic over the inner body type: a refusal can
//! carry a problem+json body whatever body type axum, tonic or hyper uses.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or a refusal's bytes.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

/// Something a layer keeps alive until the response body has ended or is
/// dropped (a concurrency limit's slot).
pub struct BodyGuard(
    #[expect(
        dead_code,
        reason = "held, never read: dropping it releases what it holds"
    )]
    Box<dyn Send + Sync>,
);

impl BodyGuard {
    #[cfg(feature = "rate-limit")]
    pub(crate) fn new(held: impl Send + Sync + 'static) -> Self {
        Self(Box::new(held))
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // The inner body and what must live until it has ended (a
        // concurrency slot). A variant of its own: no larger than `Full`
        // for a boxed body, and the other bodies do not carry it.
        Guarded { #[pin] body: B, guard: Option<BodyGuard> },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// Wraps the inner service's body, holding `guard` until it ends.
    #[cfg(any(feature = "auth", feature = "rate-limit", feature = "csrf"))]
    #[inline]
    pub(crate) fn guarded(body: B, guard: Option<BodyGuard>) -> Self {
        match guard {
            None => Self::inner(body),
            guard => Self {
                kind: Kind::Guarded { body, guard },
            },
        }
    }

    /// A complete body of `data` (empty bytes make an empty body).
    pub fn full(data: Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: Kind::Full { data },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Guarded { body, guard } => {
                let frame = body.poll_frame(cx);
                if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
                    // The body ended (or failed): what it held goes now,
                    // not when the server drops it.
                    *guard = None;
                }
                frame
            }
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } | Kind::Guarded { body, .. } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } | Kind::Guarded { body, .. } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner { .. } | Kind::Guarded { .. } => f.write_str("ResponseBody::Inner"),
            Kind::Full { data } => f
                .debug_struct("ResponseBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}
