//! The CSRF guard, row by row.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use http::{HeaderValue, Method, Request, StatusCode, header};
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::csrf::CsrfGuardLayer;
use tower::{ServiceBuilder, ServiceExt};

enum By {
    Cookie,
    Bearer,
    Nobody,
}

async fn send(
    guard: CsrfGuardLayer,
    method: Method,
    by: By,
    headers: &[(&str, &str)],
) -> (StatusCode, usize) {
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap()
        .optional();
    let counter = Counter::default();
    let svc = ServiceBuilder::new()
        .layer(auth)
        .layer(guard)
        .service(counter.service());
    let token = mint(Algorithm::HS256, &good_claims());
    let mut req = Request::builder()
        .method(method)
        .uri("/api")
        .header(header::HOST, "api.example.com");
    req = match by {
        By::Cookie => req.header(header::COOKIE, format!("da3={token}")),
        By::Bearer => req.header(header::AUTHORIZATION, format!("Bearer {token}")),
        By::Nobody => req,
    };
    for (k, v) in headers {
        req = req.header(*k, HeaderValue::from_str(v).unwrap());
    }
    let res = svc.oneshot(req.body(()).unwrap()).await.unwrap();
    let status = res.status();
    if status == StatusCode::FORBIDDEN {
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "csrf");
    }
    (status, counter.calls())
}

const OK: (StatusCode, usize) = (StatusCode::OK, 1);
const REFUSED: (StatusCode, usize) = (StatusCode::FORBIDDEN, 0);

#[tokio::test]
async fn sec_fetch_site_decides_first() {
    let g = CsrfGuardLayer::new;
    assert_eq!(
        send(
            g(),
            Method::POST,
            By::Cookie,
            &[("sec-fetch-site", "same-origin")]
        )
        .await,
        OK
    );
    assert_eq!(
        send(g(), Method::POST, By::Cookie, &[("sec-fetch-site", "none")]).await,
        OK
    );
    assert_eq!(
        send(
            g(),
            Method::POST,
            By::Cookie,
            &[("sec-fetch-site", "cross-site")]
        )
        .await,
        REFUSED
    );
    assert_eq!(
        send(
            g(),
            Method::POST,
            By::Cookie,
            &[("sec-fetch-site", "same-site")]
        )
        .await,
        REFUSED
    );
    assert_eq!(
        send(
            g().allow_fetch_site("same-site"),
            Method::POST,
            By::Cookie,
            &[("sec-fetch-site", "same-site")]
        )
        .await,
        OK
    );
    // The header wins over a matching Origin.
    let both = [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://api.example.com"),
    ];
    assert_eq!(send(g(), Method::DELETE, By::Cookie, &both).await, REFUSED);
}

#[tokio::test]
async fn origin_when_sec_fetch_site_is_absent() {
    let g = CsrfGuardLayer::new;
    assert_eq!(
        send(
            g(),
            Method::POST,
            By::Cookie,
            &[("origin", "https://api.example.com")]
        )
        .await,
        OK
    );
    assert_eq!(
        send(
            g(),
            Method::POST,
            By::Cookie,
            &[("origin", "https://evil.example")]
        )
        .await,
        REFUSED
    );
    assert_eq!(
        send(
            g(),
            Method::POST,
            By::Cookie,
            &[("origin", "https://api.example.com.evil.example")]
        )
        .await,
        REFUSED
    );
    assert_eq!(
        send(g(), Method::POST, By::Cookie, &[("origin", "null")]).await,
        REFUSED
    );
    assert_eq!(
        send(
            g().allow_origin("https://app.example.com"),
            Method::PUT,
            By::Cookie,
            &[("origin", "https://app.example.com")]
        )
        .await,
        OK
    );
    assert_eq!(
        send(
            g().allow_origin("https://app.example.com"),
            Method::PUT,
            By::Cookie,
            &[("origin", "http://app.example.com")]
        )
        .await,
        REFUSED
    );
}

#[tokio::test]
async fn neither_header_is_a_non_browser_client() {
    assert_eq!(
        send(CsrfGuardLayer::new(), Method::POST, By::Cookie, &[]).await,
        OK
    );
}

#[tokio::test]
async fn safe_methods_bearer_tokens_and_anonymous_requests_are_not_checked() {
    let cross = [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ];
    for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
        assert_eq!(
            send(CsrfGuardLayer::new(), method, By::Cookie, &cross).await,
            OK
        );
    }
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        assert_eq!(
            send(CsrfGuardLayer::new(), method.clone(), By::Bearer, &cross).await,
            OK
        );
        assert_eq!(
            send(CsrfGuardLayer::new(), method.clone(), By::Nobody, &cross).await,
            OK
        );
        assert_eq!(
            send(CsrfGuardLayer::new(), method, By::Cookie, &cross).await,
            REFUSED
        );
    }
}
