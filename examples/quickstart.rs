//! A small axum service behind tollgate's JWT layer.
//!
//! Run: `cargo run --example quickstart`
//!
//! It prints curl commands with a freshly minted dev token. Environment:
//! `TOLLGATE_ADDR` (default `127.0.0.1:4000`), `TOLLGATE_SECRET` (HS256
//! secret of at least 32 bytes; a dev secret otherwise).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tollgate::Claims;
use tollgate::auth::{JwtAuthLayer, Key};

const DEV_SECRET: &str = "tollgate-dev-secret-change-me-in-production";

#[derive(Debug, Serialize, Deserialize)]
struct User {
    sub: String,
    iss: String,
    aud: String,
    exp: u64,
}

async fn me(Claims(user): Claims<User>) -> String {
    format!("hello, {}\n", user.sub)
}

async fn feed(user: Option<Claims<User>>) -> String {
    match user {
        Some(user) => format!("your personal feed, {}\n", user.sub),
        None => "the anonymous feed\n".to_owned(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:4000".into());
    let (secret, dev) = match std::env::var("TOLLGATE_SECRET") {
        Ok(s) => (s, false),
        Err(_) => (DEV_SECRET.to_owned(), true),
    };

    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(&secret)?)
        .cookie("da3")
        .bearer()
        .issuer("tollgate-example")
        .audience("tollgate-example")
        .build()?;

    let app = Router::new()
        .route("/me", get(me).route_layer(auth.clone().required()))
        .route("/feed", get(feed).route_layer(auth.lenient()));

    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = User {
        sub: "dev-user".into(),
        iss: "tollgate-example".into(),
        aud: "tollgate-example".into(),
        exp,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "tollgate quickstart listening on http://{addr}{}",
        if dev {
            " (TOLLGATE_SECRET unset: using the dev secret)"
        } else {
            ""
        }
    );
    println!("  curl -i http://{addr}/me                          # 401");
    println!("  curl -i http://{addr}/feed                        # anonymous feed");
    println!("  curl -i --cookie 'da3={token}' http://{addr}/me");
    axum::serve(listener, app).await?;
    Ok(())
}
