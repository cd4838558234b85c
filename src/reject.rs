//! Refusals: one description ([`Refusal`]) and one customisation point
//! ([`Responder`]) shared by every layer, rendered as HTTP or gRPC per request.
//!
//! HTTP refusals carry an `application/problem+json` body (RFC 9457) with a
//! stable machine-readable `reason` (and the `policy` that refused, for rate
//! limits); `HEAD` refusals carry the same headers and no body. gRPC calls —
//! `POST` requests whose `content-type` starts with `application/grpc` — are
//! answered the way gRPC servers answer: HTTP 200, `content-type:
//! application/grpc` and the outcome in `grpc-status` / `grpc-message`
//! ("trailers-only" response). Any other request that merely claims a gRPC
//! content type (a `GET`, say) gets the HTTP refusal, so a refusal is never a
//! cacheable `200`. Every refusal carries `Cache-Control: no-store`.
//!
//! Replace the rendering of any layer with `with_responder`, given a type
//! implementing [`Responder`] or a closure:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Response, StatusCode, request::Parts};
//! use tollgate::reject::{Refusal, RefusalKind};
//!
//! // Keep the standard response, add a header to rate-limit refusals.
//! let responder = |refusal: &Refusal<'_>, request: &Parts| -> Response<Bytes> {
//!     let mut response = refusal.render(request);
//!     if refusal.kind() == RefusalKind::RateLimited {
//!         response.headers_mut().insert("x-slow-down", "1".parse().unwrap());
//!     }
//!     response
//! };
//! # let _ = responder;
//! ```

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header, request::Parts};

#[cfg(feature = "auth")]
use crate::error::AuthError;
use crate::error::AuthErrorKind;

/// gRPC status codes used by tollgate's refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrpcCode {
    /// 7: the caller is known but may not do this.
    PermissionDenied,
    /// 8: a quota is spent.
    ResourceExhausted,
    /// 14: a dependency (e.g. the rate-limit store) is down.
    Unavailable,
    /// 16: no valid credentials.
    Unauthenticated,
}

impl GrpcCode {
    /// The numeric code sent in `grpc-status`.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::Unavailable => 14,
            Self::Unauthenticated => 16,
        }
    }
}

// How an auth refusal is answered lives with the answers (here), not with
// the error: `error` depends on nothing of the crate's.
impl AuthErrorKind {
    /// The HTTP status of the default response: 401, 403 for
    /// [`Forbidden`](Self::Forbidden), 431 for [`TooLarge`](Self::TooLarge).
    pub fn status(self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The gRPC status of the default response.
    pub fn grpc_code(self) -> GrpcCode {
        match self {
            Self::Forbidden => GrpcCode::PermissionDenied,
            _ => GrpcCode::Unauthenticated,
        }
    }
}

/// Which layer refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalKind {
    /// The auth layer: no valid token, or the authorisation hook said no.
    Auth(AuthErrorKind),
    /// A rate limit is spent (429).
    RateLimited,
    /// The rate-limit store could not decide and the layer fails closed (503).
    LimiterUnavailable,
    /// The CSRF guard: a cross-site request with a session cookie (403).
    Csrf,
    /// The lockout: a client whose requests kept failing (429).
    AbnormalUsage,
}

/// Why a layer refused a request: what every [`Responder`] is given.
///
/// Its text never contains token bytes or key material.
#[derive(Clone)]
pub struct Refusal<'a> {
    kind: RefusalKind,
    status: StatusCode,
    grpc: GrpcCode,
    reason: &'static str,
    detail: Cow<'a, str>,
    policy: Option<&'a str>,
    headers: HeaderMap,
}

impl fmt::Debug for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refusal")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<'a> Refusal<'a> {
    #[cfg(any(feature = "auth", feature = "rate-limit", feature = "csrf"))]
    pub(crate) fn new(
        kind: RefusalKind,
        status: StatusCode,
        grpc: GrpcCode,
        reason: &'static str,
        detail: impl Into<Cow<'a, str>>,
    ) -> Self {
        Self {
            kind,
            status,
            grpc,
            reason,
            detail: detail.into(),
            policy: None,
            headers: HeaderMap::new(),
        }
    }

    /// The refusal of the auth layer for `error`, with its RFC 6750
    /// `WWW-Authenticate` challenge.
    #[cfg(feature = "auth")]
    pub(crate) fn auth(error: &'a AuthError) -> Self {
        let kind = error.kind();
        let mut refusal = Self::new(
            RefusalKind::Auth(kind),
            kind.status(),
            kind.grpc_code(),
            kind.reason(),
            error.detail(),
        );
        let challenge = match kind {
            AuthErrorKind::Missing => Some(Cow::Borrowed("Bearer")),
            AuthErrorKind::TooLarge => None,
            AuthErrorKind::Forbidden => Some(Cow::Owned(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                quoted(error.detail())
            ))),
            _ => Some(Cow::Owned(format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted(error.detail())
            ))),
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::try_from(c.as_ref()).ok()) {
            refusal.headers.insert(header::WWW_AUTHENTICATE, value);
        }
        refusal
    }

    /// Names the policy that refused (rate limits).
    #[cfg(feature = "rate-limit")]
    pub(crate) fn with_policy(mut self, policy: &'a str) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Adds the standard headers of the refusal (`Retry-After`, `RateLimit`).
    #[cfg(feature = "rate-limit")]
    pub(crate) fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    /// Which layer refused, and why.
    pub fn kind(&self) -> RefusalKind {
        self.kind
    }

    /// The HTTP status of the default response.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The gRPC status of the default response to a gRPC call.
    pub fn grpc_code(&self) -> GrpcCode {
        self.grpc
    }

    /// The stable, machine-readable reason (`expired`, `rate_limited`,
    /// `csrf`, ...), as in the problem+json `reason` member.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// A human-readable explanation (no token content).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The rate-limit policy that refused, if a rate limit did.
    pub fn policy(&self) -> Option<&str> {
        self.policy
    }

    /// The standard headers the default response carries
    /// (`WWW-Authenticate`, `Retry-After`, `RateLimit`, ...).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The default response for this refusal to `request`: problem+json, or
    /// a gRPC status for a gRPC call.
    pub fn render(&self, request: &Parts) -> Response<Bytes> {
        self.render_as(Protocol::of(request))
    }

    pub(crate) fn render_as(&self, protocol: Protocol) -> Response<Bytes> {
        let headers = self.headers.clone();
        let head = match protocol {
            Protocol::Grpc => return self.render_grpc(headers),
            Protocol::Http { head } => head,
        };
        let body = if head {
            Bytes::new()
        } else {
            self.problem_json()
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let out = response.headers_mut();
        *out = headers;
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn render_grpc(&self, mut headers: HeaderMap) -> Response<Bytes> {
        // HTTP-only headers mean nothing to a gRPC client.
        headers.remove(header::WWW_AUTHENTICATE);
        headers.remove(header::RETRY_AFTER);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc.as_u8())),
        );
        if let Ok(message) = HeaderValue::try_from(grpc_percent_encode(&self.detail)) {
            headers.insert("grpc-message", message);
        }
        let mut response = Response::new(Bytes::new());
        *response.headers_mut() = headers;
        response
    }

    fn problem_json(&self) -> Bytes {
        // The problem types of draft-ietf-httpapi-ratelimit-headers-11 §4
        // for a spent quota and a limiter that cannot decide; `about:blank`
        // (the status says it all) for the rest.
        let (kind, title) = match self.kind {
            RefusalKind::RateLimited => (
                QUOTA_EXCEEDED,
                "Request cannot be satisfied as assigned quota has been exceeded",
            ),
            RefusalKind::LimiterUnavailable => (
                TEMPORARY_REDUCED_CAPACITY,
                "Request cannot be satisfied due to temporary reduced capacity",
            ),
            RefusalKind::AbnormalUsage => (
                ABNORMAL_USAGE_DETECTED,
                "Request not satisfied due to detection of abnormal request pattern",
            ),
            _ => (
                "about:blank",
                self.status.canonical_reason().unwrap_or("Error"),
            ),
        };
        let violated = self
            .policy
            .filter(|_| self.kind == RefusalKind::RateLimited)
            .map(|policy| [policy]);
        let body = ProblemBody {
            kind,
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            reason: self.reason,
            policy: self.policy,
            violated_policies: violated.as_ref().map(<[&str; 1]>::as_slice),
        };
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(&body).map_or_else(|_| Bytes::new(), Bytes::from)
    }
}

/// Renders a [`Refusal`] into the response the client sees.
///
/// [`DefaultResponder`] gives the standard responses; closures
/// `Fn(&Refusal<'_>, &Parts) -> Response<Bytes>` implement the trait, and
/// [`Refusal::render`] gives them the default to start from.
pub trait Responder: Clone + Send + Sync + 'static {
    /// The response for `refusal` of the request described by `request`.
    fn respond(&self, refusal: &Refusal<'_>, request: &Parts) -> Response<Bytes>;
}

impl<F> Responder for F
where
    F: Fn(&Refusal<'_>, &Parts) -> Response<Bytes> + Clone + Send + Sync + 'static,
{
    fn respond(&self, refusal: &Refusal<'_>, request: &Parts) -> Response<Bytes> {
        self(refusal, request)
    }
}

/// The standard responses: RFC 6750 / RFC 9457 for HTTP, a gRPC status for
/// gRPC calls ([`Refusal::render`]).
///
/// | refusal | HTTP | gRPC |
/// |---|---|---|
/// | no token | 401, `WWW-Authenticate: Bearer` | 16 |
/// | bad token | 401, `WWW-Authenticate: Bearer error="invalid_token", …` | 16 |
/// | token over the size cap | 431 | 16 |
/// | authorisation hook refused | 403, `error="insufficient_scope"` | 7 |
/// | rate limited | 429, `Retry-After`, `RateLimit` | 8 |
/// | limiter store down, failing closed | 503 (or the configured status) | 14 |
/// | CSRF | 403 | 7 |
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResponder;

impl Responder for DefaultResponder {
    fn respond(&self, refusal: &Refusal<'_>, request: &Parts) -> Response<Bytes> {
        refusal.render(request)
    }
}

/// How a request wants its refusal rendered, captured from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http { head: bool },
    Grpc,
}

impl Protocol {
    pub(crate) fn of(parts: &Parts) -> Self {
        if is_grpc(parts) {
            Self::Grpc
        } else {
            Self::Http {
                head: parts.method == Method::HEAD,
            }
        }
    }
}

/// As much of a request's head as a responder needs (method, URI, content
/// type), kept by a handle that a handler may call to refuse after the
/// layer let the request through (a charge by cost, an account's lockout);
/// the head is rebuilt only for a refusal.
#[cfg(feature = "rate-limit")]
#[derive(Debug, Clone)]
pub(crate) struct Head {
    method: Method,
    uri: http::Uri,
    content_type: Option<HeaderValue>,
}

#[cfg(feature = "rate-limit")]
impl Head {
    pub(crate) fn of(parts: &Parts) -> Self {
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        }
    }

    /// `responder`'s response for `refusal` of the request.
    pub(crate) fn respond(
        &self,
        responder: &impl Responder,
        refusal: &Refusal<'_>,
    ) -> Response<Bytes> {
        let mut head = http::Request::new(()).into_parts().0;
        head.method = self.method.clone();
        head.uri = self.uri.clone();
        if let Some(content_type) = &self.content_type {
            head.headers
                .insert(header::CONTENT_TYPE, content_type.clone());
        }
        responder.respond(refusal, &head)
    }
}

/// An empty 500, for a response future polled again after it completed
/// (a caller bug; answering beats panicking).
#[cfg(any(feature = "auth", feature = "rate-limit", feature = "csrf"))]
pub(crate) fn polled_after_completion() -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// Whether the request is a gRPC call: `POST` with a content type of
/// `application/grpc`, `application/grpc+proto`, `application/grpc-web`, ...
/// (gRPC and gRPC-Web calls are always `POST`).
pub fn is_grpc(parts: &Parts) -> bool {
    parts.method == Method::POST
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[derive(serde::Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    /// draft-ietf-httpapi-ratelimit-headers-11's extension member of
    /// `quota-exceeded`: the policies whose quota is spent.
    #[serde(rename = "violated-policies", skip_serializing_if = "Option::is_none")]
    violated_policies: Option<&'a [&'a str]>,
}

/// The problem type of a client locked out after repeated failures
/// (draft-ietf-httpapi-ratelimit-headers-11).
pub const ABNORMAL_USAGE_DETECTED: &str =
    "https://iana.org/assignments/http-problem-types#abnormal-usage-detected";

/// The problem type of a spent quota (draft-ietf-httpapi-ratelimit-headers-11).
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// The problem type of a service that sheds load because it cannot decide
/// (draft-ietf-httpapi-ratelimit-headers-11): the rate-limit store failing
/// closed.
pub const TEMPORARY_REDUCED_CAPACITY: &str =
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity";

/// RFC 6750 limits `error_description` to printable ASCII without `"` and `\`.
#[cfg(feature = "auth")]
fn quoted(detail: &str) -> String {
    detail
        .chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect()
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, every
/// other byte as `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: Method, content_type: Option<&'static str>) -> Parts {
        let mut builder = Request::builder().method(method).uri("/");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn expired() -> AuthError {
        AuthError::new(AuthErrorKind::Expired, "the token has expired")
    }

    #[test]
    fn http_problem_json() {
        let error = expired();
        let res = Refusal::auth(&error).render(&parts(Method::GET, None));
        assert_eq!(res.status(), 401);
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["status"], 401);
        assert_eq!(v["reason"], "expired");
        assert_eq!(v["title"], "Unauthorized");
        assert_eq!(v["type"], "about:blank");
        assert!(v.get("policy").is_none());
    }

    #[test]
    fn rate_limit_refusals_name_their_policy() {
        let refusal = Refusal::new(
            RefusalKind::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            GrpcCode::ResourceExhausted,
            "rate_limited",
            "too many requests",
        )
        .with_policy("per-ip");
        let res = refusal.render(&parts(Method::GET, None));
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["policy"], "per-ip");
        // draft-ietf-httpapi-ratelimit-headers-11's problem type, beside
        // tollgate's own members.
        assert_eq!(v["type"], QUOTA_EXCEEDED);
        assert_eq!(v["violated-policies"], serde_json::json!(["per-ip"]));
        assert_eq!(v["reason"], "rate_limited");
        assert_eq!(v["status"], 429);
    }

    #[test]
    fn a_limiter_failing_closed_reports_reduced_capacity() {
        let refusal = Refusal::new(
            RefusalKind::LimiterUnavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unavailable,
            "limiter_unavailable",
            "the rate limiter cannot decide",
        )
        .with_policy("per-ip");
        let res = refusal.render(&parts(Method::GET, None));
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["type"], TEMPORARY_REDUCED_CAPACITY);
        assert!(v.get("violated-policies").is_none());
        assert_eq!(v["status"], 503);
    }

    #[test]
    fn head_has_no_body() {
        let error = expired();
        let res = Refusal::auth(&error).render(&parts(Method::HEAD, None));
        assert_eq!(res.status(), 401);
        assert!(res.body().is_empty());
    }

    #[test]
    fn grpc_trailers_only() {
        let error = expired();
        let res =
            Refusal::auth(&error).render(&parts(Method::POST, Some("application/grpc+proto")));
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "16");
        assert_eq!(res.headers()["grpc-message"], "the token has expired");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        assert!(res.headers().get(header::WWW_AUTHENTICATE).is_none());
        assert!(res.body().is_empty());
    }

    #[test]
    fn grpc_content_type_on_a_get_is_an_http_refusal() {
        // Regression: rendering was chosen by content type alone, so a GET
        // claiming gRPC got a cacheable-looking 200.
        let error = expired();
        for method in [Method::GET, Method::HEAD, Method::PUT] {
            let res =
                Refusal::auth(&error).render(&parts(method.clone(), Some("application/grpc")));
            assert_eq!(res.status(), 401, "{method}");
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert!(res.headers().get("grpc-status").is_none(), "{method}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("50% off\né"), "50%25 off%0A%C3%A9");
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let www = |kind, detail: &'static str| {
            let error = AuthError::new(kind, detail);
            Refusal::auth(&error)
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(www(AuthErrorKind::Missing, "x").as_deref(), Some("Bearer"));
        assert_eq!(
            www(AuthErrorKind::Expired, "the \"token\" expired").as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"the token expired\"")
        );
        assert!(www(AuthErrorKind::TooLarge, "x").is_none());
    }
}
