//! One layer value, two frameworks: a real axum server (HTTP/1.1 and h2c) and
//! a real tonic server, on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::{Claims, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn auth() -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap()
}

async fn me(claims: Claims<Value>) -> String {
    claims["sub"].as_str().unwrap_or_default().to_owned()
}

async fn feed(claims: Option<Claims<Value>>) -> String {
    match claims {
        Some(c) => format!("feed for {}", c["sub"].as_str().unwrap_or_default()),
        None => "anonymous feed".to_owned(),
    }
}

async fn who(identity: Identity) -> String {
    identity.subject().unwrap_or_default().to_owned()
}

async fn serve_axum() -> SocketAddr {
    let auth = auth();
    let app = Router::new()
        .route("/me", get(me).route_layer(auth.clone().required()))
        .route("/who", get(who).route_layer(auth.clone().required()))
        .route("/feed", get(feed).route_layer(auth.clone().lenient()))
        // a lenient layer with a required extractor: the extractor refuses
        .route("/me-lenient", get(me).route_layer(auth.lenient()))
        .route("/forgot-the-layer", get(me));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn get_with(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    header: Option<(&str, String)>,
) -> (StatusCode, Version, http::HeaderMap, String) {
    let mut req = Request::builder().uri(format!("http://{addr}{path}"));
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (parts.status, parts.version, parts.headers, body)
}

#[tokio::test]
async fn axum_over_http1_and_http2() {
    let addr = serve_axum().await;
    let token = mint(Algorithm::HS256, &good_claims());
    for (client, version) in [
        (
            Client::builder(TokioExecutor::new()).build_http(),
            Version::HTTP_11,
        ),
        (
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            Version::HTTP_2,
        ),
    ] {
        let (status, v, headers, _) = get_with(&client, addr, "/me", None).await;
        assert_eq!((status, v), (StatusCode::UNAUTHORIZED, version));
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");

        let (status, _, _, body) = get_with(
            &client,
            addr,
            "/me",
            Some(("cookie", format!("theme=dark; da3={token}"))),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "user-1"));
        let (status, _, _, body) = get_with(
            &client,
            addr,
            "/who",
            Some(("authorization", format!("Bearer {token}"))),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "user-1"));

        let (status, _, _, body) = get_with(&client, addr, "/feed", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous feed"));
        let (status, _, _, body) = get_with(
            &client,
            addr,
            "/feed",
            Some(("cookie", "da3=expired.or.junk".to_owned())),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "anonymous feed"));
        let (status, _, _, body) = get_with(
            &client,
            addr,
            "/feed",
            Some(("cookie", format!("da3={token}"))),
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "feed for user-1"));

        // The extractor's 401 is the layer's 401: problem+json, the reason
        // the token was ignored, and the RFC 6750 challenge.
        let (status, _, headers, body) = get_with(&client, addr, "/me-lenient", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["reason"], "missing");
        let (status, _, headers, body) = get_with(
            &client,
            addr,
            "/me-lenient",
            Some(("cookie", "da3=expired.or.junk".to_owned())),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer error=\"invalid_token\""),
            "{headers:?}"
        );
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["reason"], "malformed");

        let (status, _, _, body) = get_with(&client, addr, "/forgot-the-layer", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("JwtAuthLayer"), "{body}");
    }
}

#[tokio::test]
async fn axum_http2_cookies_split_across_fields() {
    let addr = serve_axum().await;
    let token = mint(Algorithm::HS256, &good_claims());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::builder()
        .uri(format!("http://{addr}/me"))
        .header("cookie", "theme=dark")
        .header("cookie", format!("da3={token}"))
        .header("cookie", "lang=en")
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.version(), Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
}

async fn serve_tonic() -> SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(auth())
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    addr
}

#[tokio::test]
async fn tonic_unauthenticated_without_token_ok_with_cookie_or_bearer() {
    let addr = serve_tonic().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);

    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let token = mint(Algorithm::HS256, &good_claims());
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut()
        .insert("cookie", format!("da3={token}").parse().unwrap());
    client.check(req).await.unwrap();

    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.check(req).await.unwrap();

    let expired = mint(
        Algorithm::HS256,
        &serde_json::json!({"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW - 1000}),
    );
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {expired}").parse().unwrap(),
    );
    let status = client.check(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "the token has expired");
}

mod rate_limited {
    use super::*;
    use tollgate::rate_limit::{KeyBy, MissingKey, Quota, RateLimitLayer};

    #[tokio::test]
    async fn axum_per_route_quotas_keyed_by_connect_info() {
        let search = RateLimitLayer::builder("search", Quota::per_minute(1))
            .key(KeyBy::peer_ip())
            .on_missing_key(MissingKey::Allow)
            .build()
            .unwrap();
        let feed_limit = RateLimitLayer::builder("feed", Quota::per_minute(3))
            .key(KeyBy::peer_ip())
            .on_missing_key(MissingKey::Allow)
            .build()
            .unwrap();
        let app = Router::new()
            .route(
                "/search",
                get(|| async { "results" }).route_layer(search.clone()),
            )
            .route(
                "/feed",
                get(|| async { "feed" }).route_layer(feed_limit.clone()),
            )
            .route("/healthz", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut seen = Vec::new();
        for path in [
            "/search", "/search", "/feed", "/feed", "/feed", "/feed", "/healthz", "/healthz",
        ] {
            let (status, _, headers, _) = get_with(&client, addr, path, None).await;
            seen.push((
                path,
                status.as_u16(),
                headers
                    .get("ratelimit")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ));
        }
        assert_eq!(
            seen[0],
            ("/search", 200, Some("\"search\";r=0;t=60".into()))
        );
        assert_eq!(seen[1].1, 429);
        assert_eq!(seen[2], ("/feed", 200, Some("\"feed\";r=2;t=20".into())));
        assert_eq!(seen[5].1, 429);
        assert_eq!(seen[6], ("/healthz", 200, None));
        // Keyless requests would pass unlimited (MissingKey::Allow): the
        // limit held, so the peer address came from ConnectInfo.
        assert_eq!(search.key_count(), 1);
        assert_eq!(feed_limit.key_count(), 1);
    }

    #[tokio::test]
    async fn tonic_resource_exhausted_past_the_quota() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = RateLimitLayer::builder("grpc", Quota::per_minute(2))
            .key(KeyBy::subject_or_client_ip(Default::default()))
            .on_missing_key(MissingKey::Allow)
            .build()
            .unwrap();
        let keys = limit.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(
                    tower::ServiceBuilder::new()
                        .layer(auth().optional())
                        .layer(limit),
                )
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let token = mint(Algorithm::HS256, &good_claims());
        let call = |with_token: bool| {
            let mut req = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            if with_token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            req
        };
        // Anonymous: keyed by the peer address (tonic's TcpConnectInfo);
        // without it, MissingKey::Allow would let every call through.
        client.check(call(false)).await.unwrap();
        client.check(call(false)).await.unwrap();
        let status = client.check(call(false)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        // The verified user has a bucket of their own.
        client.check(call(true)).await.unwrap();
        client.check(call(true)).await.unwrap();
        assert_eq!(
            client.check(call(true)).await.unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(keys.key_count(), 2);
    }
}

/// Handler tests without keys: the testing kit puts in the request what the
/// auth layer would, and axum's extractors read it.
#[tokio::test]
async fn handlers_are_testable_without_keys() {
    use tower::ServiceExt;
    let app = Router::new()
        .route("/me", get(me))
        .route("/feed", get(feed));
    let mut req = Request::builder()
        .uri("/me")
        .body(axum::body::Body::empty())
        .unwrap();
    tollgate::testing::authenticate(
        &mut req,
        serde_json::json!({"sub": "alice"}),
        tollgate::testing::identity("alice"),
    );
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "alice");

    let mut req = Request::builder()
        .uri("/feed")
        .body(axum::body::Body::empty())
        .unwrap();
    tollgate::testing::anonymous(&mut req);
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "anonymous feed"
    );

    let mut req = Request::builder()
        .uri("/me")
        .body(axum::body::Body::empty())
        .unwrap();
    tollgate::testing::anonymous_rejected(&mut req, tollgate::AuthErrorKind::Expired);
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["reason"], "expired");
}
