//! The same tollgate layers in front of a tonic gRPC server.
//!
//! Run: `cargo run --example grpc`
//!
//! It starts a gRPC health service on loopback behind JWT auth and a
//! per-user rate limit (3 calls per minute), then calls it as a client:
//! UNAUTHENTICATED without a token, OK with one (as `authorization` or
//! `cookie` metadata), RESOURCE_EXHAUSTED past the quota.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::{KeyBy, Quota, RateLimitLayer, TrustedProxies};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

const SECRET: &str = "tollgate-grpc-example-secret-32-bytes-or-more";

#[derive(Serialize, Deserialize)]
struct User {
    sub: String,
    exp: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET)?)
        .bearer()
        .cookie("da3")
        .build()?;
    let limit = RateLimitLayer::builder("grpc-user", Quota::per_minute(3))
        .key(KeyBy::subject_or_client_ip(TrustedProxies::none()))
        .build()?;

    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(ServiceBuilder::new().layer(auth).layer(limit))
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    println!("gRPC health service behind tollgate on {addr}");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &User {
            sub: "grpc-user-1".into(),
            exp: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 600,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;

    let request = |metadata: Option<(&'static str, String)>| {
        let mut req = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        if let Some((key, value)) = metadata
            && let Ok(value) = value.parse()
        {
            req.metadata_mut().insert(key, value);
        }
        req
    };
    let show = |label: &str, result: Result<tonic::Response<_>, tonic::Status>| match result {
        Ok(_) => println!("{label:<40} -> OK"),
        Err(status) => println!("{label:<40} -> {:?}: {}", status.code(), status.message()),
    };

    show("no token", client.check(request(None)).await);
    show(
        "authorization: Bearer <token>",
        client
            .check(request(Some(("authorization", format!("Bearer {token}")))))
            .await,
    );
    for i in 2..=4 {
        show(
            &format!("cookie: da3=<token> (call {i} of a 3/min quota)"),
            client
                .check(request(Some(("cookie", format!("da3={token}")))))
                .await,
        );
    }
    Ok(())
}
