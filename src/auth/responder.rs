use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header, request::Parts};

use crate::error::{AuthError, AuthErrorKind};
use crate::reject::{self, Problem};

/// Turns an [`AuthError`] into the response the client sees.
///
/// The default, [`DefaultResponder`], answers like Envoy or an RFC 6750
/// resource server would. Replace it with
/// [`JwtAuthLayer::with_responder`](super::JwtAuthLayer::with_responder);
/// closures `Fn(&AuthError, &Parts) -> Response<Bytes>` implement it.
pub trait AuthResponder: Clone + Send + Sync + 'static {
    /// The response for `error` on the request described by `request`.
    fn respond(&self, error: &AuthError, request: &Parts) -> Response<Bytes>;
}

impl<F> AuthResponder for F
where
    F: Fn(&AuthError, &Parts) -> Response<Bytes> + Clone + Send + Sync + 'static,
{
    fn respond(&self, error: &AuthError, request: &Parts) -> Response<Bytes> {
        self(error, request)
    }
}

/// RFC 6750 and RFC 9457 responses, or gRPC status for gRPC requests.
///
/// - no token: 401, `WWW-Authenticate: Bearer`;
/// - a bad token: 401, `WWW-Authenticate: Bearer error="invalid_token",
///   error_description="..."` (431 when it is over the size cap);
/// - the authorisation hook refused: 403, `error="insufficient_scope"`;
/// - body: `application/problem+json` with a stable `reason`; `HEAD`: no body;
/// - gRPC: `grpc-status` 16 (UNAUTHENTICATED) or 7 (PERMISSION_DENIED).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResponder;

impl AuthResponder for DefaultResponder {
    fn respond(&self, error: &AuthError, request: &Parts) -> Response<Bytes> {
        let kind = error.kind();
        let mut headers = HeaderMap::new();
        let challenge = match kind {
            AuthErrorKind::Missing => Some("Bearer".to_owned()),
            AuthErrorKind::Forbidden => Some(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                quoted(error.detail())
            )),
            AuthErrorKind::TooLarge => None,
            _ => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted(error.detail())
            )),
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        let problem = Problem {
            status: kind.status(),
            grpc: kind.grpc_code(),
            reason: kind.reason(),
            detail: error.detail(),
        };
        reject::render(&problem, request, headers)
    }
}

/// RFC 6750 limits `error_description` to printable ASCII without `"` and `\`.
fn quoted(detail: &str) -> String {
    detail
        .chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect()
}
