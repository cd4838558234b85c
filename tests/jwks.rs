//! Remote keys against a real JWKS server on loopback (an axum app).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use http::{HeaderValue, Request, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tollgate::auth::{JwtAuthLayer, Key, Provider, RemoteKeys};
use tower::{Layer, ServiceExt};

const HS_SECRET: &[u8] = b"jwks-test-hmac-secret-32-bytes-long!!";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Serve,
    Error500,
    Slow,
    Garbage,
    Huge,
    /// Holds the response until [`release`].
    Hang,
}

struct Jwks {
    mode: Mode,
    keys: Value,
    fetches: AtomicUsize,
    base: String,
    /// Served as the discovery document instead of the default one.
    discovery: Option<Value>,
    /// Where `/jwks.json` redirects to, if anywhere.
    redirect: Option<String>,
    /// Wakes the requests held by `Mode::Hang`.
    gate: Arc<Notify>,
}

type Shared = Arc<Mutex<Jwks>>;

fn ec_jwk(kid: &str) -> Value {
    let point = DecodingKey::from_ec_pem(EC256_PUBLIC).unwrap();
    let point = point.try_get_as_bytes().unwrap();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
}

fn oct_jwk(kid: &str) -> Value {
    json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)})
}

async fn jwks(State(state): State<Shared>) -> Response {
    let (mode, keys, redirect, gate) = {
        let s = state.lock().unwrap();
        s.fetches.fetch_add(1, Ordering::SeqCst);
        (s.mode, s.keys.clone(), s.redirect.clone(), s.gate.clone())
    };
    if let Some(to) = redirect {
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response();
    }
    match mode {
        Mode::Serve => (
            [(header::CACHE_CONTROL, "max-age=3600")],
            axum::Json(json!({"keys": keys})),
        )
            .into_response(),
        Mode::Error500 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Slow => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            axum::Json(json!({"keys": keys})).into_response()
        }
        Mode::Garbage => "<html>not json</html>".into_response(),
        Mode::Huge => vec![b' '; 10 * 1024 * 1024].into_response(),
        Mode::Hang => {
            gate.notified().await;
            axum::Json(json!({"keys": keys})).into_response()
        }
    }
}

async fn discovery(State(state): State<Shared>) -> Response {
    let s = state.lock().unwrap();
    let base = &s.base;
    let doc = s
        .discovery
        .clone()
        .unwrap_or_else(|| json!({"issuer": base, "jwks_uri": format!("{base}/jwks.json")}));
    axum::Json(doc).into_response()
}

/// A same-origin redirect to the key set.
async fn moved(State(state): State<Shared>) -> Response {
    state.lock().unwrap().fetches.fetch_add(1, Ordering::SeqCst);
    (StatusCode::FOUND, [(header::LOCATION, "/jwks.json")]).into_response()
}

/// A redirect to itself, forever.
async fn endless(State(state): State<Shared>) -> Response {
    state.lock().unwrap().fetches.fetch_add(1, Ordering::SeqCst);
    (StatusCode::FOUND, [(header::LOCATION, "/loop")]).into_response()
}

async fn jwks_server(keys: Value) -> (Shared, String) {
    jwks_server_on("127.0.0.1", keys).await
}

/// A key server on `ip` (any address in 127.0.0.0/8 works on Linux).
async fn jwks_server_on(ip: &str, keys: Value) -> (Shared, String) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let state = Arc::new(Mutex::new(Jwks {
        mode: Mode::Serve,
        keys,
        fetches: AtomicUsize::new(0),
        base: base.clone(),
        discovery: None,
        redirect: None,
        gate: Arc::new(Notify::new()),
    }));
    let app = Router::new()
        .route("/jwks.json", get(jwks))
        .route("/moved", get(moved))
        .route("/loop", get(endless))
        .route("/.well-known/openid-configuration", get(discovery))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, base)
}

fn set(state: &Shared, mode: Mode, keys: Option<Value>) {
    let mut s = state.lock().unwrap();
    s.mode = mode;
    if let Some(keys) = keys {
        s.keys = keys;
    }
}

fn fetches(state: &Shared) -> usize {
    state.lock().unwrap().fetches.load(Ordering::SeqCst)
}

/// Lets the requests held by `Mode::Hang` answer.
fn release(state: &Shared) {
    state.lock().unwrap().gate.notify_waiters();
}

fn ec_token(kid: &str, claims: &Value) -> String {
    sign_raw(
        &json!({"alg": "ES256", "kid": kid}),
        &serde_json::to_vec(claims).unwrap(),
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(EC256_PRIVATE).unwrap(),
    )
}

fn hs_token(kid: &str, claims: &Value) -> String {
    sign_raw(
        &json!({"alg": "HS256", "kid": kid}),
        &serde_json::to_vec(claims).unwrap(),
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_SECRET),
    )
}

fn layer(remote: RemoteKeys) -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .remote_keys(remote)
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .cache(100)
        .build()
        .unwrap()
}

async fn call(layer: &JwtAuthLayer<Value>, token: &str) -> (StatusCode, String) {
    let mut req = Request::new(());
    req.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let res = layer
        .layer(Counter::default().service())
        .oneshot(req)
        .await
        .unwrap();
    let status = res.status();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let reason = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned));
    (
        status,
        reason.unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
    )
}

#[tokio::test]
async fn keys_rotate_without_a_restart() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let interval = Duration::from_millis(500);
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .unknown_kid_interval(interval)
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let layer = layer(remote.clone());
    let old = ec_token("ec1", &good_claims());
    assert_eq!(call(&layer, &old).await, (StatusCode::OK, "user-1".into()));

    // The issuer rotates: ec1 out, hs2 in, right after the start-up fetch. The
    // first token with the new kid waits for the next fetch the interval
    // allows, and is accepted.
    set(&server, Mode::Serve, Some(json!([oct_jwk("hs2")])));
    let new = hs_token("hs2", &good_claims());
    assert_eq!(call(&layer, &new).await, (StatusCode::OK, "user-1".into()));
    assert_eq!(fetches(&server), 2);
    // The interval held: the fetch did not start before it had passed.
    assert!(
        started.elapsed() >= interval - Duration::from_millis(100),
        "fetched again after {:?}",
        started.elapsed()
    );

    // The removed kid is refused (its cached verification is not used), after
    // one more fetch.
    assert_eq!(
        call(&layer, &old).await,
        (StatusCode::UNAUTHORIZED, "unknown_key".into())
    );
    assert_eq!(fetches(&server), 3);
    assert_eq!(remote.key_count(), 1);
}

/// Issue 25: a provider publishes a key and at once signs with it, seconds or
/// milliseconds after the service's last fetch; the first token is accepted,
/// with one fetch during its request, each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_token_of_a_new_key_is_accepted_however_recent_the_last_fetch() {
    let (server, base) = jwks_server(json!([oct_jwk("hs1")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    let layer = layer(remote.clone());
    // Gaps after the previous fetch: under the default interval (1 s), and
    // over it.
    for (round, gap) in [0_u64, 300, 1_200, 50].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let kid = format!("hs{}", round + 2);
        set(&server, Mode::Serve, Some(json!([oct_jwk(&kid)])));
        let before = fetches(&server);
        let got = call(&layer, &hs_token(&kid, &good_claims())).await;
        assert_eq!(
            got,
            (StatusCode::OK, "user-1".into()),
            "round {round}, gap {gap} ms"
        );
        assert_eq!(fetches(&server), before + 1, "round {round}: one fetch");
    }
}

/// With `max_wait` shorter than what is left of the interval, the request is
/// refused at once, but the fetch it asked for still comes, so the token is
/// accepted once it has.
#[tokio::test]
async fn a_fetch_too_late_for_the_request_still_comes() {
    let (server, base) = jwks_server(json!([oct_jwk("hs1")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .unknown_kid_interval(Duration::from_millis(800))
        .max_wait(Duration::from_millis(100))
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    let layer = layer(remote.clone());
    set(&server, Mode::Serve, Some(json!([oct_jwk("hs2")])));
    let token = hs_token("hs2", &good_claims());
    let asked = Instant::now();
    assert_eq!(
        call(&layer, &token).await,
        (StatusCode::UNAUTHORIZED, "unknown_key".into())
    );
    assert!(
        asked.elapsed() < Duration::from_millis(400),
        "refused at once"
    );
    assert_eq!(fetches(&server), 1);
    // More refusals in the meantime schedule nothing more.
    assert_eq!(call(&layer, &token).await.0, StatusCode::UNAUTHORIZED);
    let deadline = Instant::now() + Duration::from_secs(5);
    while fetches(&server) < 2 {
        assert!(Instant::now() < deadline, "the scheduled fetch never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetches(&server), 2, "one fetch for both refusals");
    assert_eq!(
        call(&layer, &token).await,
        (StatusCode::OK, "user-1".into())
    );
}

#[tokio::test]
async fn background_refresh_honours_max_age_bounds() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    // The server says max-age=3600; the upper bound cuts it to 200 ms.
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .max_age_bounds(Duration::from_millis(100), Duration::from_millis(200))
        .unknown_kid_interval(Duration::from_secs(3600))
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    let layer = layer(remote);
    let old = ec_token("ec1", &good_claims());
    assert_eq!(call(&layer, &old).await.0, StatusCode::OK);
    set(&server, Mode::Serve, Some(json!([oct_jwk("hs2")])));
    let deadline = Instant::now() + Duration::from_secs(5);
    while fetches(&server) < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fetch has reached the server; the new set is in place once its
    // response is read (an unknown kid fetches nothing here: the interval is
    // an hour).
    let new = hs_token("hs2", &good_claims());
    while call(&layer, &new).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the refreshed set never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&layer, &old).await,
        (StatusCode::UNAUTHORIZED, "unknown_key".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_kids_cannot_cause_a_fetch_storm() {
    let (server, base) = jwks_server(json!([oct_jwk("hs2")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .unknown_kid_interval(Duration::from_millis(200))
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    let layer = layer(remote);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let layer = layer.clone();
        let token = hs_token(
            &format!("random-{i:x}-{}", i.wrapping_mul(2_654_435_761)),
            &good_claims(),
        );
        tasks.spawn(async move { call(&layer, &token).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(
            result.unwrap(),
            (StatusCode::UNAUTHORIZED, "unknown_key".into())
        );
    }
    let elapsed = started.elapsed();
    let allowed = 1 + 1 + (elapsed.as_millis() / 200) as usize;
    assert!(
        fetches(&server) <= allowed,
        "{} fetches in {elapsed:?}",
        fetches(&server)
    );
}

#[tokio::test]
async fn failed_fetches_keep_the_old_keys_and_are_counted() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .timeouts(Duration::from_millis(300), Duration::from_millis(300))
        .max_body(64 * 1024)
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    let layer = layer(remote.clone());
    let token = ec_token("ec1", &good_claims());
    for (i, mode) in [Mode::Error500, Mode::Slow, Mode::Garbage, Mode::Huge]
        .into_iter()
        .enumerate()
    {
        set(&server, mode, None);
        let started = Instant::now();
        assert!(remote.refresh().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(remote.failures(), i as u64 + 1);
        assert_eq!(
            call(&layer, &token).await.0,
            StatusCode::OK,
            "old keys still serve"
        );
    }
    // An empty or unusable set is a failure too; usable keys come back.
    set(
        &server,
        Mode::Serve,
        Some(json!([{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"}])),
    );
    assert!(remote.refresh().await.is_err());
    assert_eq!(remote.skipped_keys(), 1);
    set(
        &server,
        Mode::Serve,
        Some(
            json!([ec_jwk("ec1"), oct_jwk("hs2"), {"kty": "oct", "k": "c2hvcnQ", "kid": "short"}]),
        ),
    );
    remote.refresh().await.unwrap();
    assert_eq!(remote.key_count(), 2);
    assert_eq!(
        call(&layer, &hs_token("hs2", &good_claims())).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn startup_fails_fast_or_keeps_retrying() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    set(&server, Mode::Error500, None);
    assert!(
        RemoteKeys::jwks(format!("{base}/jwks.json"))
            .start()
            .await
            .is_err()
    );
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .fail_fast(false)
        .start()
        .await
        .unwrap();
    let layer = layer(remote.clone());
    let token = ec_token("ec1", &good_claims());
    assert_eq!(call(&layer, &token).await.0, StatusCode::UNAUTHORIZED);
    set(&server, Mode::Serve, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while remote.key_count() == 0 {
        assert!(Instant::now() < deadline, "no retry after a failed start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(&layer, &token).await.0, StatusCode::OK);
}

#[tokio::test]
async fn oidc_discovery() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let remote = RemoteKeys::oidc_issuer(&base).start().await.unwrap();
    let layer = JwtAuthLayer::<Value>::builder()
        .remote_keys(remote)
        .bearer()
        .issuer(&base)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap();
    let mut claims = good_claims();
    claims["iss"] = json!(base);
    assert_eq!(
        call(&layer, &ec_token("ec1", &claims)).await.0,
        StatusCode::OK
    );
    assert_eq!(fetches(&server), 1);
}

#[tokio::test]
async fn two_issuers_side_by_side() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .unknown_kid_interval(Duration::ZERO)
        .start()
        .await
        .unwrap();
    let layer = JwtAuthLayer::<Value>::builder()
        .provider(Provider::remote("https://idp-a.example", remote).audience("api-a"))
        .provider(
            Provider::new(
                "https://idp-b.example",
                [Key::hmac(HS_SECRET).unwrap().kid("hs2")],
            )
            .audience("api-b"),
        )
        .bearer()
        .clock(|| NOW)
        .build()
        .unwrap();
    let claims = |iss: &str, aud: &str| {
        let mut c = good_claims();
        c["iss"] = json!(iss);
        c["aud"] = json!(aud);
        c
    };
    assert_eq!(
        call(
            &layer,
            &ec_token("ec1", &claims("https://idp-a.example", "api-a"))
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &layer,
            &hs_token("hs2", &claims("https://idp-b.example", "api-b"))
        )
        .await
        .0,
        StatusCode::OK
    );
    // Each issuer's rules: B's audience is not A's.
    assert_eq!(
        call(
            &layer,
            &hs_token("hs2", &claims("https://idp-b.example", "api-a"))
        )
        .await
        .1,
        "invalid_claim"
    );
    // A's issuer with B's key: A's keys do not have it (and A's fetch finds none).
    assert_eq!(
        call(
            &layer,
            &hs_token("hs2", &claims("https://idp-a.example", "api-a"))
        )
        .await
        .1,
        "unknown_key"
    );
    // An unknown issuer is refused before any fetch.
    let before = fetches(&server);
    for _ in 0..20 {
        assert_eq!(
            call(
                &layer,
                &ec_token("nope", &claims("https://evil.example", "api-a"))
            )
            .await
            .1,
            "invalid_claim"
        );
    }
    assert_eq!(fetches(&server), before);
    // Misconfigurations are refused.
    assert!(
        JwtAuthLayer::<Value>::builder()
            .provider(Provider::new("https://x", [Key::hmac(HS_SECRET).unwrap()]))
            .key(Key::hmac(HS_SECRET).unwrap())
            .bearer()
            .build()
            .is_err()
    );
}

fn short(keys: tollgate::auth::RemoteKeysBuilder) -> tollgate::auth::RemoteKeysBuilder {
    keys.timeouts(Duration::from_millis(300), Duration::from_millis(300))
}

#[tokio::test]
async fn plain_http_is_refused_unless_loopback() {
    for url in [
        "http://example.com/jwks.json",
        "http://10.0.0.1/jwks.json",
        "http://[::2]/jwks.json",
        "http://[::ffff:127.0.0.1]/jwks.json",
        "http://localhost.example/jwks.json",
        "http://127.0.0.1.example/jwks.json",
        "ftp://127.0.0.1/jwks.json",
        "/jwks.json",
    ] {
        // Refused as configuration, even when a failed first fetch would
        // not stop the start.
        let err = short(RemoteKeys::jwks(url))
            .fail_fast(false)
            .start()
            .await
            .expect_err(url);
        assert_eq!(err.setting(), "jwks");
        assert!(
            err.reason().contains(url) && err.reason().contains("must be an https URL"),
            "{err}"
        );
    }
    let err = short(RemoteKeys::oidc_issuer("http://idp.example"))
        .fail_fast(false)
        .start()
        .await
        .unwrap_err();
    assert!(err.reason().contains("must be an https URL"), "{err}");
    // https anywhere, http to loopback (nothing listens on port 1: the first
    // fetch fails, the start does not).
    for url in [
        "https://127.0.0.1:1/jwks.json",
        "http://127.0.0.1:1/jwks.json",
        "http://127.0.0.2:1/jwks.json",
        "http://localhost:1/jwks.json",
        "http://LOCALHOST:1/jwks.json",
        "http://[::1]:1/jwks.json",
    ] {
        let remote = short(RemoteKeys::jwks(url))
            .fail_fast(false)
            .start()
            .await
            .unwrap();
        assert_eq!(remote.failures(), 1, "{url}");
    }
}

#[tokio::test]
async fn discovered_jwks_uri_must_be_https_too() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    server.lock().unwrap().discovery =
        Some(json!({"issuer": base, "jwks_uri": "http://example.invalid/jwks.json"}));
    let err = short(RemoteKeys::oidc_issuer(&base))
        .start()
        .await
        .unwrap_err();
    assert!(
        err.reason().contains("jwks_uri") && err.reason().contains("must be an https URL"),
        "{err}"
    );
    let remote = short(RemoteKeys::oidc_issuer(&base))
        .fail_fast(false)
        .start()
        .await
        .unwrap();
    assert_eq!((remote.failures(), remote.key_count()), (1, 0));
}

#[tokio::test]
async fn redirects_to_another_host_are_refused() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let (other, other_base) = jwks_server_on("127.0.0.2", json!([ec_jwk("ec2")])).await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .start()
        .await
        .unwrap();
    let layer = layer(remote.clone());
    let token = ec_token("ec1", &good_claims());
    for (i, to) in [
        format!("{other_base}/jwks.json"),
        // Same port, another host name for the same server.
        format!("http://localhost:{port}/jwks.json"),
    ]
    .into_iter()
    .enumerate()
    {
        server.lock().unwrap().redirect = Some(to.clone());
        let err = remote.refresh().await.expect_err(&to);
        assert!(
            err.reason().contains("another scheme, host or port"),
            "{err}"
        );
        assert_eq!(remote.failures(), i as u64 + 1);
        assert_eq!(fetches(&other), 0, "followed the redirect to {to}");
        assert_eq!(remote.key_count(), 1);
        assert_eq!(
            call(&layer, &token).await.0,
            StatusCode::OK,
            "old keys still serve"
        );
        assert!(
            RemoteKeys::jwks(format!("{base}/jwks.json"))
                .start()
                .await
                .is_err()
        );
    }
    assert_eq!(fetches(&other), 0);
}

#[tokio::test]
async fn same_origin_redirects_are_followed_a_few_times() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/moved"))
        .start()
        .await
        .unwrap();
    assert_eq!(remote.key_count(), 1);
    assert_eq!(fetches(&server), 2);
    let err = RemoteKeys::jwks(format!("{base}/loop"))
        .start()
        .await
        .unwrap_err();
    assert!(err.reason().contains("more than 3 redirects"), "{err}");
    // The first request and three redirects followed.
    assert_eq!(fetches(&server), 2 + 4);
}

#[tokio::test]
async fn symmetric_keys_are_skipped_unless_allowed() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1"), oct_jwk("hs2")])).await;
    let url = format!("{base}/jwks.json");
    let remote = RemoteKeys::jwks(&url).start().await.unwrap();
    assert_eq!((remote.key_count(), remote.skipped_keys()), (1, 1));
    // Whoever read the published secret cannot mint a token with it.
    let strict = layer(remote);
    assert_eq!(
        call(&strict, &hs_token("hs2", &good_claims())).await,
        (StatusCode::UNAUTHORIZED, "unknown_key".into())
    );
    assert_eq!(
        call(&strict, &ec_token("ec1", &good_claims())).await.0,
        StatusCode::OK
    );
    // A set of nothing but secrets is a failure that says why.
    set(&server, Mode::Serve, Some(json!([oct_jwk("hs2")])));
    let err = RemoteKeys::jwks(&url).start().await.unwrap_err();
    assert!(err.reason().contains("allow_symmetric_keys"), "{err}");
    // Allowed explicitly: the secret verifies.
    set(
        &server,
        Mode::Serve,
        Some(json!([ec_jwk("ec1"), oct_jwk("hs2")])),
    );
    let remote = RemoteKeys::jwks(&url)
        .allow_symmetric_keys(true)
        .start()
        .await
        .unwrap();
    assert_eq!((remote.key_count(), remote.skipped_keys()), (2, 0));
    assert_eq!(
        call(&layer(remote), &hs_token("hs2", &good_claims()))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn discovery_issuer_must_be_identical() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let jwks_uri = format!("{base}/jwks.json");
    let upper = base.replace("http://", "HTTP://");
    for (configured, doc) in [
        (
            base.clone(),
            json!({"issuer": format!("{base}/"), "jwks_uri": jwks_uri}),
        ),
        (
            format!("{base}/"),
            json!({"issuer": base, "jwks_uri": jwks_uri}),
        ),
        (base.clone(), json!({"issuer": upper, "jwks_uri": jwks_uri})),
        (base.clone(), json!({"jwks_uri": jwks_uri})),
        (
            base.clone(),
            json!({"issuer": "https://idp.example", "jwks_uri": jwks_uri}),
        ),
    ] {
        server.lock().unwrap().discovery = Some(doc.clone());
        let err = RemoteKeys::oidc_issuer(&configured)
            .start()
            .await
            .expect_err(&doc.to_string());
        assert!(
            err.reason()
                .contains("not identical to the configured issuer"),
            "{err}"
        );
        let remote = RemoteKeys::oidc_issuer(&configured)
            .fail_fast(false)
            .start()
            .await
            .unwrap();
        assert_eq!((remote.failures(), remote.key_count()), (1, 0));
        assert_eq!(fetches(&server), 0, "used the jwks_uri of {doc}");
    }
}

/// Regression: dropping `refresh()` mid-fetch left the fetch slot claimed
/// forever, so no later refresh or unknown-`kid` fetch ever ran.
#[tokio::test]
async fn a_cancelled_refresh_frees_the_fetch_slot() {
    let (server, base) = jwks_server(json!([ec_jwk("ec1")])).await;
    let remote = RemoteKeys::jwks(format!("{base}/jwks.json"))
        .unknown_kid_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let layer = layer(remote.clone());
    set(&server, Mode::Hang, None);
    {
        // Poll the refresh until the server holds its request, then drop it.
        let refresh = remote.refresh();
        tokio::pin!(refresh);
        let deadline = Instant::now() + Duration::from_secs(2);
        while fetches(&server) < 2 {
            assert!(
                Instant::now() < deadline,
                "the refresh never reached the server"
            );
            tokio::select! {
                _ = &mut refresh => panic!("the refresh ended while the server held it"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
    set(
        &server,
        Mode::Serve,
        Some(json!([ec_jwk("ec1"), ec_jwk("ec2")])),
    );
    release(&server);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // An unknown kid fetches the new set.
    assert_eq!(
        call(&layer, &ec_token("ec2", &good_claims())).await,
        (StatusCode::OK, "user-1".into())
    );
    assert_eq!(fetches(&server), 3);
    // An explicit refresh fetches too, rather than waiting for the dropped one.
    tokio::time::timeout(Duration::from_secs(2), remote.refresh())
        .await
        .expect("refresh() waits for a fetch nobody runs")
        .unwrap();
    assert_eq!(fetches(&server), 4);
    assert_eq!(remote.failures(), 0);
}
