//! One place that renders a refusal, as HTTP or as gRPC, chosen per request.
//!
//! HTTP refusals carry an `application/problem+json` body (RFC 9457) with a
//! stable machine-readable `reason`; `HEAD` refusals carry the same headers and
//! no body. gRPC calls — `POST` requests whose `content-type` starts with
//! `application/grpc` — are answered the way gRPC servers answer: HTTP 200,
//! `content-type: application/grpc` and the outcome in `grpc-status` /
//! `grpc-message` ("trailers-only" response). Any other request that merely
//! claims a gRPC content type (a `GET`, say) gets the HTTP refusal, so a
//! refusal is never a cacheable `200`. Every refusal carries
//! `Cache-Control: no-store`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header, request::Parts};

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

/// What a refusal says, independent of the protocol it is rendered in.
#[derive(Debug, Clone)]
pub struct Problem<'a> {
    /// HTTP status for non-gRPC requests.
    pub status: StatusCode,
    /// gRPC status for gRPC requests.
    pub grpc: GrpcCode,
    /// Stable machine-readable reason, e.g. `"expired"`.
    pub reason: &'static str,
    /// Human-readable explanation. Never token or key material.
    pub detail: &'a str,
}

/// An empty 500, for a response future polled again after it completed
/// (a caller bug; answering beats panicking).
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

/// Renders `problem` for the request described by `parts`, with `headers`
/// added (e.g. `WWW-Authenticate`, `Retry-After`).
pub fn render(problem: &Problem<'_>, parts: &Parts, headers: HeaderMap) -> Response<Bytes> {
    if is_grpc(parts) {
        return render_grpc(problem, headers);
    }
    let body = if parts.method == Method::HEAD {
        Bytes::new()
    } else {
        problem_json(problem)
    };
    let mut response = Response::new(body);
    *response.status_mut() = problem.status;
    let out = response.headers_mut();
    *out = headers;
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn render_grpc(problem: &Problem<'_>, mut headers: HeaderMap) -> Response<Bytes> {
    // HTTP-only headers mean nothing to a gRPC client.
    headers.remove(header::WWW_AUTHENTICATE);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(problem.grpc.as_u8())),
    );
    if let Ok(message) = HeaderValue::try_from(grpc_percent_encode(problem.detail)) {
        headers.insert("grpc-message", message);
    }
    let mut response = Response::new(Bytes::new());
    *response.headers_mut() = headers;
    response
}

#[derive(serde::Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    reason: &'static str,
}

fn problem_json(problem: &Problem<'_>) -> Bytes {
    let body = ProblemBody {
        kind: "about:blank",
        title: problem.status.canonical_reason().unwrap_or("Error"),
        status: problem.status.as_u16(),
        detail: problem.detail,
        reason: problem.reason,
    };
    // Serialising a struct of strings and integers cannot fail.
    serde_json::to_vec(&body).map_or_else(|_| Bytes::new(), Bytes::from)
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, every
/// other byte as `%XX`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
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

    const PROBLEM: Problem<'static> = Problem {
        status: StatusCode::UNAUTHORIZED,
        grpc: GrpcCode::Unauthenticated,
        reason: "expired",
        detail: "the token has expired",
    };

    #[test]
    fn http_problem_json() {
        let res = render(&PROBLEM, &parts(Method::GET, None), HeaderMap::new());
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
    }

    #[test]
    fn head_has_no_body() {
        let res = render(&PROBLEM, &parts(Method::HEAD, None), HeaderMap::new());
        assert_eq!(res.status(), 401);
        assert!(res.body().is_empty());
    }

    #[test]
    fn grpc_trailers_only() {
        let mut extra = HeaderMap::new();
        extra.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        let res = render(
            &PROBLEM,
            &parts(Method::POST, Some("application/grpc+proto")),
            extra,
        );
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
        for method in [Method::GET, Method::HEAD, Method::PUT] {
            let res = render(
                &PROBLEM,
                &parts(method.clone(), Some("application/grpc")),
                HeaderMap::new(),
            );
            assert_eq!(res.status(), 401, "{method}");
            assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
            assert!(res.headers().get("grpc-status").is_none(), "{method}");
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(grpc_percent_encode("50% off\né"), "50%25 off%0A%C3%A9");
    }
}
