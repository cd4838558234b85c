//! Test helpers: key fixtures, token minting, a counting inner service.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

pub const NOW: u64 = 1_700_000_000;
pub const SECRET: &[u8] = b"an-hmac-secret-of-at-least-32-bytes!";
pub const ISSUER: &str = "https://auth.example";
pub const AUDIENCE: &str = "api";

pub const RSA_PRIVATE: &[u8] = include_bytes!("../fixtures/rsa_private.pem");
pub const RSA_PUBLIC: &[u8] = include_bytes!("../fixtures/rsa_public.pem");
pub const RSA_PUBLIC_DER: &[u8] = include_bytes!("../fixtures/rsa_public.der");
pub const EC256_PRIVATE: &[u8] = include_bytes!("../fixtures/ec256_private.pem");
pub const EC256_PUBLIC: &[u8] = include_bytes!("../fixtures/ec256_public.pem");
pub const EC256_PUBLIC_DER: &[u8] = include_bytes!("../fixtures/ec256_public.der");
pub const EC384_PRIVATE: &[u8] = include_bytes!("../fixtures/ec384_private.pem");
pub const EC384_PUBLIC: &[u8] = include_bytes!("../fixtures/ec384_public.pem");
pub const ED_PRIVATE: &[u8] = include_bytes!("../fixtures/ed25519_private.pem");
pub const ED_PUBLIC: &[u8] = include_bytes!("../fixtures/ed25519_public.pem");

/// Claims that pass the default test rules at [`NOW`].
pub fn good_claims() -> Value {
    json!({
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": NOW - 10,
        "exp": NOW + 3600,
        "roles": ["reader"],
    })
}

pub fn encoding_key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(SECRET),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC256_PRIVATE).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(EC384_PRIVATE).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_PRIVATE).unwrap(),
        other => panic!("no fixture for {other:?}"),
    }
}

/// Signs `header` and `claims` exactly as given (any JSON, any header
/// parameter), with the key of `alg`.
pub fn sign_raw(header: &Value, claims: &[u8], alg: Algorithm, key: &EncodingKey) -> String {
    tollgate::crypto::install_default_provider();
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
    let p = URL_SAFE_NO_PAD.encode(claims);
    let message = format!("{h}.{p}");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{sig}")
}

/// A token for `claims`, signed with the fixture key of `alg`.
pub fn mint(alg: Algorithm, claims: &Value) -> String {
    mint_with(
        json!({"alg": format!("{alg:?}"), "typ": "JWT"}),
        alg,
        claims,
    )
}

pub fn mint_with(header: Value, alg: Algorithm, claims: &Value) -> String {
    sign_raw(
        &header,
        &serde_json::to_vec(claims).unwrap(),
        alg,
        &encoding_key(alg),
    )
}

/// Builds `header.payload.signature` from raw segments (no signing).
pub fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap()),
        signature
    )
}

/// An inner service that counts its calls and answers 200 with the
/// authenticated subject (or `anonymous`).
#[derive(Clone, Default)]
pub struct Counter(pub Arc<AtomicUsize>);

impl Counter {
    pub fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// The counting inner service.
    pub fn service(&self) -> CountingService {
        CountingService(self.0.clone())
    }
}

/// Counts calls; answers 200 with the authenticated subject or `anonymous`.
#[derive(Clone)]
pub struct CountingService(Arc<AtomicUsize>);

impl<B> tower::Service<Request<B>> for CountingService {
    type Response = Response<http_body_util::Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let who = req
            .extensions()
            .get::<tollgate::Identity>()
            .and_then(|i| i.subject().map(str::to_owned))
            .unwrap_or_else(|| "anonymous".to_owned());
        std::future::ready(Ok(Response::new(http_body_util::Full::new(Bytes::from(
            who,
        )))))
    }
}

/// Runs `f` on a fresh current-thread runtime.
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A log sink for a capturing subscriber.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with a subscriber that records every event (TRACE and up) and
/// returns what was logged.
pub fn capture_logs(f: impl FnOnce()) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
}

/// Serves `app` on a free loopback port for the rest of the test; its base
/// URL (`http://127.0.0.1:port`).
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}
