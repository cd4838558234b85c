//! The CSRF guard, row by row.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

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

/// A guard, a method, request headers, and the expected outcome.
type Case = (
    CsrfGuardLayer,
    Method,
    Vec<(&'static str, &'static str)>,
    (StatusCode, usize),
);

/// The guard's table (module docs), row by row, for a cookie-authenticated
/// POST to `https://api.example.com`.
#[tokio::test]
async fn the_decision_table() {
    let g = CsrfGuardLayer::new;
    let same_site = || g().allow_fetch_site("same-site");
    let app_origin = || g().allow_origin("https://app.example.com");
    let cases: Vec<Case> = vec![
        // Sec-Fetch-Site decides first
        (
            g(),
            Method::POST,
            vec![("sec-fetch-site", "same-origin")],
            OK,
        ),
        (g(), Method::POST, vec![("sec-fetch-site", "none")], OK),
        (
            g(),
            Method::POST,
            vec![("sec-fetch-site", "cross-site")],
            REFUSED,
        ),
        (
            g(),
            Method::POST,
            vec![("sec-fetch-site", "same-site")],
            REFUSED,
        ),
        (
            same_site(),
            Method::POST,
            vec![("sec-fetch-site", "same-site")],
            OK,
        ),
        // the header wins over a matching Origin
        (
            g(),
            Method::DELETE,
            vec![
                ("sec-fetch-site", "cross-site"),
                ("origin", "https://api.example.com"),
            ],
            REFUSED,
        ),
        // no Sec-Fetch-Site: Origin against the request's own origin
        (
            g(),
            Method::POST,
            vec![("origin", "https://api.example.com")],
            OK,
        ),
        (
            g(),
            Method::POST,
            vec![("origin", "https://evil.example")],
            REFUSED,
        ),
        (
            g(),
            Method::POST,
            vec![("origin", "https://api.example.com.evil.example")],
            REFUSED,
        ),
        (g(), Method::POST, vec![("origin", "null")], REFUSED),
        (
            app_origin(),
            Method::PUT,
            vec![("origin", "https://app.example.com")],
            OK,
        ),
        (
            app_origin(),
            Method::PUT,
            vec![("origin", "http://app.example.com")],
            REFUSED,
        ),
    ];
    for (guard, method, headers, expected) in cases {
        assert_eq!(
            send(guard, method.clone(), By::Cookie, &headers).await,
            expected,
            "{method} {headers:?}"
        );
    }
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

// --- Regressions from the outside audit (security round 2) ---

/// A cross-site WebSocket upgrade rode the session cookie: GET was "safe".
#[tokio::test]
async fn upgrade_requests_are_checked_like_unsafe_methods() {
    let upgrade = |extra: &[(&'static str, &'static str)]| {
        let mut h = vec![("upgrade", "websocket"), ("connection", "Upgrade")];
        h.extend_from_slice(extra);
        h
    };
    let g = CsrfGuardLayer::new;
    for (headers, by, expected) in [
        (
            upgrade(&[("sec-fetch-site", "cross-site")]),
            By::Cookie,
            REFUSED,
        ),
        (
            upgrade(&[("origin", "https://evil.example")]),
            By::Cookie,
            REFUSED,
        ),
        (
            upgrade(&[("origin", "https://api.example.com")]),
            By::Cookie,
            OK,
        ),
        (
            upgrade(&[("sec-fetch-site", "same-origin")]),
            By::Cookie,
            OK,
        ),
        (
            upgrade(&[("origin", "https://evil.example")]),
            By::Bearer,
            OK,
        ),
        (
            upgrade(&[("origin", "https://evil.example")]),
            By::Nobody,
            OK,
        ),
        (upgrade(&[]), By::Cookie, OK),
    ] {
        assert_eq!(
            send(g(), Method::GET, by, &headers).await,
            expected,
            "{headers:?}"
        );
    }
    // HTTP/2 WebSockets are an extended CONNECT: not a safe method.
    assert_eq!(
        send(
            g(),
            Method::CONNECT,
            By::Cookie,
            &[("origin", "https://evil.example")]
        )
        .await,
        REFUSED
    );
}

#[tokio::test]
async fn origin_scheme_must_match_too() {
    let g = CsrfGuardLayer::new;
    // The service is https by default: an http page on the same host is
    // another origin (a network attacker can inject it).
    for (guard, origin, expected) in [
        (g(), "http://api.example.com", REFUSED),
        (g(), "https://api.example.com", OK),
        (g(), "HTTPS://API.example.com", OK),
        (g(), "wss://api.example.com", REFUSED),
        (
            g().scheme(http::uri::Scheme::HTTP),
            "http://api.example.com",
            OK,
        ),
        (
            g().scheme(http::uri::Scheme::HTTP),
            "https://api.example.com",
            REFUSED,
        ),
    ] {
        assert_eq!(
            send(guard, Method::POST, By::Cookie, &[("origin", origin)]).await,
            expected,
            "{origin}"
        );
    }
}

#[tokio::test]
async fn an_absolute_uri_scheme_decides_over_the_default() {
    // HTTP/2 requests carry :scheme; the guard compares with it.
    let counter = Counter::default();
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(auth)
        .layer(CsrfGuardLayer::new())
        .service(counter.service());
    let token = mint(Algorithm::HS256, &good_claims());
    for (uri, origin, expected) in [
        (
            "http://api.example.com/x",
            "http://api.example.com",
            StatusCode::OK,
        ),
        (
            "http://api.example.com/x",
            "https://api.example.com",
            StatusCode::FORBIDDEN,
        ),
        (
            "https://api.example.com/x",
            "https://api.example.com",
            StatusCode::OK,
        ),
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::COOKIE, format!("da3={token}"))
            .header(header::ORIGIN, origin)
            .body(())
            .unwrap();
        assert_eq!(
            svc.clone().oneshot(req).await.unwrap().status(),
            expected,
            "{uri} {origin}"
        );
    }
}

/// A guard with no auth layer in front allowed everything.
#[test]
fn guard_without_auth_in_front_refuses_unsafe_requests_and_warns_once() {
    let logs = capture_logs(|| {
        run(async {
            let counter = Counter::default();
            // Misordered: the guard is outside the auth layer.
            let auth = JwtAuthLayer::<Value>::builder()
                .key(Key::hmac(SECRET).unwrap())
                .cookie("da3")
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .clock(|| NOW)
                .build()
                .unwrap();
            let svc = ServiceBuilder::new()
                .layer(CsrfGuardLayer::new())
                .layer(auth)
                .service(counter.service());
            let token = mint(Algorithm::HS256, &good_claims());
            let req = |method: Method, extra: Option<(&str, &str)>| {
                let mut r = Request::builder()
                    .method(method)
                    .uri("/api")
                    .header(header::HOST, "api.example.com")
                    .header(header::COOKIE, format!("da3={token}"))
                    .header("sec-fetch-site", "cross-site");
                if let Some((k, v)) = extra {
                    r = r.header(k, v);
                }
                r.body(()).unwrap()
            };
            for _ in 0..3 {
                let res = svc.clone().oneshot(req(Method::POST, None)).await.unwrap();
                assert_eq!(res.status(), StatusCode::FORBIDDEN);
            }
            let res = svc
                .clone()
                .oneshot(req(Method::GET, Some(("upgrade", "websocket"))))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            // Safe requests still go through (to the auth layer, which decides).
            let res = svc.clone().oneshot(req(Method::GET, None)).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(counter.calls(), 1);
        })
    });
    assert_eq!(logs.matches("WARN").count(), 1, "{logs}");
    assert!(logs.contains("no JwtAuthLayer looked at"), "{logs}");
}

/// A real axum WebSocket route: a cross-site handshake with the session
/// cookie gets 403, a same-origin one gets 101.
#[tokio::test]
async fn cross_site_websocket_handshake_is_refused_by_a_real_axum_route() {
    use axum::extract::ws::{WebSocket, WebSocketUpgrade};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    async fn talk(mut socket: WebSocket) {
        let _ = socket
            .send(axum::extract::ws::Message::Text("secret data".into()))
            .await;
    }
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::any(|ws: WebSocketUpgrade| async move { ws.on_upgrade(talk) }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(auth)
                .layer(CsrfGuardLayer::new()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let token = mint(Algorithm::HS256, &good_claims());

    let handshake = |site: &str, origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: {origin}\r\nSec-Fetch-Site: {site}\r\nCookie: da3={token}\r\n\r\n"
        )
    };
    let status_of = |request: String| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        head.split(' ').nth(1).unwrap_or("").to_owned()
    };
    assert_eq!(
        status_of(handshake("cross-site", "https://evil.example")).await,
        "403"
    );
    assert_eq!(
        status_of(handshake("same-origin", &format!("http://{addr}"))).await,
        "101"
    );
    server.abort();
}

#[tokio::test]
async fn csrf_refusals_take_a_custom_responder() {
    let guard = CsrfGuardLayer::new().with_responder(
        |refusal: &tollgate::reject::Refusal<'_>, request: &http::request::Parts| {
            assert_eq!(refusal.kind(), tollgate::reject::RefusalKind::Csrf);
            let mut res = refusal.render(request);
            *res.status_mut() = StatusCode::IM_A_TEAPOT;
            res
        },
    );
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let counter = Counter::default();
    let svc = ServiceBuilder::new()
        .layer(auth)
        .layer(guard)
        .service(counter.service());
    let req = Request::builder()
        .method(Method::POST)
        .header(
            header::COOKIE,
            format!("da3={}", mint(Algorithm::HS256, &good_claims())),
        )
        .header("sec-fetch-site", "cross-site")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(counter.calls(), 0);
}
