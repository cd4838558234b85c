//! Identity forwarding between real services on loopback: an axum service
//! behind tollgate calls, while serving a request, a tonic service (through
//! a `Channel`) and another axum service (through a hyper-util client), both
//! behind their own `JwtAuthLayer`, with `ForwardIdentityLayer` on the
//! clients, each allowed to send tokens to named destinations only: the
//! tonic `Channel`'s requests carry only a path, so its layer is built for
//! the channel's origin; the hyper-util client's carry absolute URIs.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tollgate::Identity;
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::forward::{ForwardIdentity, ForwardIdentityLayer, ForwardScopeLayer, ForwardedToken};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceBuilder, ServiceExt};

fn auth() -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .cache(100)
        .build()
        .unwrap()
}

type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A tonic health service behind tollgate; records the subject each call
/// it lets through was made by.
async fn serve_tonic() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = Arc::clone(&seen);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let stack = ServiceBuilder::new()
        .layer(auth())
        .map_request(move |req: http::Request<tonic::body::Body>| {
            let subject = req
                .extensions()
                .get::<Identity>()
                .and_then(|i| i.subject().map(str::to_owned));
            record.lock().unwrap().push(subject);
            req
        })
        .into_inner();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    (addr, seen)
}

async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn check(client: &mut HealthClient<ForwardIdentity<Channel>>) -> tonic::Code {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match client.check(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

type Forwarding = HealthClient<ForwardIdentity<Channel>>;

/// Where the front service's scope layer comes from.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// No scope layer.
    None,
    /// Built from the front's auth layer and mounted behind it.
    Built,
    /// Built from another auth layer (a misconfiguration).
    OtherAuth,
}

/// The front service: `/grpc` calls the tonic service in the handler, from a
/// spawned task, and from a spawned task carrying the scope; `/http` calls
/// the second axum service (allowed), then a third one (not allowed).
async fn serve_front(
    scope: Scope,
    grpc_client: Forwarding,
    http_to: SocketAddr,
    other_to: SocketAddr,
) -> SocketAddr {
    #[derive(Clone)]
    struct Clients {
        grpc: Forwarding,
        http: ForwardIdentity<Client<HttpConnector, Empty<Bytes>>>,
        http_to: SocketAddr,
        other_to: SocketAddr,
    }
    async fn grpc(State(clients): State<Clients>) -> String {
        let mut client = clients.grpc.clone();
        let in_handler = check(&mut client).await;
        let mut spawned_client = clients.grpc.clone();
        let spawned = tokio::spawn(async move { check(&mut spawned_client).await })
            .await
            .unwrap();
        let mut carried_client = clients.grpc.clone();
        let carried = match ForwardedToken::current() {
            Some(token) => {
                tokio::spawn(token.scope(async move { check(&mut carried_client).await }))
                    .await
                    .unwrap()
            }
            None => tonic::Code::Unknown,
        };
        format!("{in_handler:?} {spawned:?} {carried:?}")
    }
    async fn http(State(clients): State<Clients>) -> String {
        let mut client = clients.http.clone();
        let uri = format!("http://{}/who", clients.http_to);
        let forwarded = client
            .ready()
            .await
            .unwrap()
            .call(Request::get(&uri).body(Empty::new()).unwrap())
            .await
            .unwrap();
        // The client's own credentials win.
        let own = Request::get(&uri)
            .header(header::AUTHORIZATION, "Bearer not-a-token")
            .body(Empty::new())
            .unwrap();
        let own = client.ready().await.unwrap().call(own).await.unwrap();
        // A service not on the allow-list: no token.
        let other = Request::get(format!("http://{}/who", clients.other_to))
            .body(Empty::new())
            .unwrap();
        let other = client.ready().await.unwrap().call(other).await.unwrap();
        let body = forwarded.into_body().collect().await.unwrap().to_bytes();
        format!(
            "{} {} {}",
            String::from_utf8_lossy(&body),
            own.status().as_u16(),
            other.status().as_u16()
        )
    }
    let allowed = ForwardIdentityLayer::builder()
        .allow(format!("http://{http_to}"))
        .build()
        .unwrap();
    let http_client = ServiceBuilder::new()
        .layer(allowed)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let clients = Clients {
        grpc: grpc_client,
        http: http_client,
        http_to,
        other_to,
    };
    let auth = auth();
    let mut app = Router::new()
        .route("/grpc", get(grpc))
        .route("/http", get(http));
    match scope {
        Scope::None => {}
        // axum: the last route_layer is the outermost, so the scope runs
        // behind the auth layer.
        Scope::Built => app = app.route_layer(ForwardScopeLayer::new(&auth)),
        Scope::OtherAuth => app = app.route_layer(ForwardScopeLayer::new(&self::auth())),
    }
    let app = app.route_layer(auth.required()).with_state(clients);
    serve(app).await
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The second axum service: who called.
async fn serve_who() -> SocketAddr {
    async fn who(identity: Identity) -> String {
        identity.subject().unwrap_or_default().to_owned()
    }
    serve(
        Router::new()
            .route("/who", get(who))
            .route_layer(auth().required()),
    )
    .await
}

async fn get_with_cookie(addr: SocketAddr, path: &str, token: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(format!("http://{addr}{path}"))
        .header(header::COOKIE, format!("da3={token}"))
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// A tonic client of the service at `addr`, its layer built for that origin.
async fn forwarding_client(addr: SocketAddr) -> Forwarding {
    let origin = format!("http://{addr}");
    let layer = ForwardIdentityLayer::builder()
        .allow(origin.as_str())
        .origin(origin.as_str())
        .build()
        .unwrap();
    HealthClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(channel(addr).await),
    )
}

#[tokio::test]
async fn a_handler_calls_a_tonic_service_as_its_caller() {
    let (grpc_addr, seen) = serve_tonic().await;
    let client = forwarding_client(grpc_addr).await;
    let front = serve_front(
        Scope::Built,
        client.clone(),
        serve_who().await,
        serve_who().await,
    )
    .await;
    let mut claims = good_claims();
    claims["sub"] = "alice".into();
    let token = mint(Algorithm::HS256, &claims);

    let (status, body) = get_with_cookie(front, "/grpc", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "Ok Unauthenticated Ok",
        "in the handler: forwarded; from a spawned task: nothing; with the scope carried: forwarded"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("alice".to_owned()), Some("alice".to_owned())],
        "the tonic service saw the same subject (the refused call never reached it)"
    );

    // Outside any request (here, the test's main task): nothing is sent.
    let mut outside = client;
    assert_eq!(check(&mut outside).await, tonic::Code::Unauthenticated);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_handler_calls_an_http_service_as_its_caller_unless_the_call_has_credentials() {
    let (grpc_addr, _seen) = serve_tonic().await;
    let client = forwarding_client(grpc_addr).await;
    let front = serve_front(Scope::Built, client, serve_who().await, serve_who().await).await;
    let mut claims = good_claims();
    claims["sub"] = "bob".into();
    let (status, body) = get_with_cookie(front, "/http", &mint(Algorithm::HS256, &claims)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "bob 401 401",
        "forwarded as bearer; an own Authorization is kept; a destination not allowed gets nothing"
    );
}

#[tokio::test]
async fn a_scope_built_from_another_auth_layer_forwards_nothing() {
    let (grpc_addr, seen) = serve_tonic().await;
    let client = forwarding_client(grpc_addr).await;
    let front = serve_front(
        Scope::OtherAuth,
        client,
        serve_who().await,
        serve_who().await,
    )
    .await;
    let token = mint(Algorithm::HS256, &good_claims());
    let (status, body) = get_with_cookie(front, "/grpc", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Unauthenticated Unauthenticated Unknown");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn without_forward_identity_nothing_is_forwarded() {
    let (grpc_addr, seen) = serve_tonic().await;
    let client = forwarding_client(grpc_addr).await;
    let front = serve_front(Scope::None, client, serve_who().await, serve_who().await).await;
    let token = mint(Algorithm::HS256, &good_claims());
    let (status, body) = get_with_cookie(front, "/grpc", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Unauthenticated Unauthenticated Unknown");
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_channel_client_not_built_for_its_origin_or_built_for_another_gets_nothing() {
    let (grpc_addr, seen) = serve_tonic().await;
    let (other_addr, _) = serve_tonic().await;
    let mut claims = good_claims();
    claims["sub"] = "carol".into();
    let token = mint(Algorithm::HS256, &claims);
    // The Channel's requests carry only a path: a layer built without the
    // channel's origin cannot tell where they go, and sends no token.
    let no_origin = ForwardIdentityLayer::builder()
        .allow(format!("http://{grpc_addr}"))
        .build()
        .unwrap();
    let client = HealthClient::new(
        ServiceBuilder::new()
            .layer(no_origin)
            .service(channel(grpc_addr).await),
    );
    let front = serve_front(Scope::Built, client, serve_who().await, serve_who().await).await;
    let (status, body) = get_with_cookie(front, "/grpc", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "Unauthenticated Unauthenticated Unauthenticated");
    assert!(seen.lock().unwrap().is_empty());
    // An origin that is not on the allow-list is refused at build.
    assert!(
        ForwardIdentityLayer::builder()
            .allow(format!("http://{grpc_addr}"))
            .origin(format!("http://{other_addr}"))
            .build()
            .is_err()
    );
}
