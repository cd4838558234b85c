//! OpenID Connect Back-Channel Logout: the receiver's checks (each
//! requirement of the specification refused on its own), the revocation it
//! makes, across two replicas through real HTTP and a real Redis, and with
//! tokens minted outside Rust (Node's crypto, when `node` is installed).
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use common::{AUDIENCE, ISSUER, mint, mint_with, serve};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;
use redis_support::now;
use serde_json::{Value, json};
use tollgate::auth::{
    BACKCHANNEL_LOGOUT_EVENT, BackChannelLogout, JwtAuthLayer, Key, Provider, RedisRevocations,
    Revocations,
};
use tower::{Layer, ServiceExt, service_fn};

fn layer(revocations: &Revocations) -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .provider(Provider::new(ISSUER, [Key::hmac(common::SECRET).unwrap()]).audience(AUDIENCE))
        .cookie("session")
        .clock(now)
        .revocations(revocations.clone())
        .build()
        .unwrap()
}

fn receiver(auth: &JwtAuthLayer<Value>) -> BackChannelLogout {
    BackChannelLogout::builder(auth).build().unwrap()
}

/// An access token of `sub` in session `sid`, issued `age` seconds ago.
fn access(sub: &str, sid: Option<&str>, age: u64) -> String {
    let mut claims = json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE,
        "iat": now() - age, "exp": now() + 3600,
    });
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    mint(Algorithm::HS256, &claims)
}

/// Logout token claims that pass every check.
fn logout_claims(sid: Option<&str>, sub: Option<&str>) -> Value {
    static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "iat": now() - 1, "exp": now() + 120,
        "jti": format!("logout-{}-{}", std::process::id(),
                       JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    });
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    claims
}

fn logout_token(claims: &Value) -> String {
    mint_with(
        json!({"alg": "HS256", "typ": "logout+jwt"}),
        Algorithm::HS256,
        claims,
    )
}

fn form(token: &str) -> String {
    format!("logout_token={}", urlencode(token))
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn post(body: impl Into<String>) -> Request<String> {
    Request::post("/backchannel-logout")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body.into())
        .unwrap()
}

/// Status, `Cache-Control`, body.
async fn send(
    logout: &BackChannelLogout,
    request: Request<String>,
) -> (StatusCode, String, String) {
    let response = logout.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache = response
        .headers()
        .get(header::CACHE_CONTROL)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, cache, String::from_utf8(body.to_vec()).unwrap())
}

/// What the auth layer answers to a request carrying `token` as its cookie.
async fn status_with(auth: &JwtAuthLayer<Value>, token: &str) -> StatusCode {
    let service = auth.layer(service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let request = Request::get("/")
        .header(header::COOKIE, format!("session={token}"))
        .body(String::new())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    if let Some(why) = response.headers().get(header::WWW_AUTHENTICATE) {
        eprintln!("refused: {why:?}");
    }
    response.status()
}

#[tokio::test]
async fn a_logout_by_sid_refuses_that_session_only() {
    let revocations = Revocations::new().clock(now);
    let auth = layer(&revocations);
    let logout = receiver(&auth);
    let ended = access("alice", Some("session-1"), 60);
    let other = access("alice", Some("session-2"), 60);
    assert_eq!(status_with(&auth, &ended).await, StatusCode::OK);

    let (status, cache, body) = send(
        &logout,
        post(form(&logout_token(&logout_claims(
            Some("session-1"),
            Some("alice"),
        )))),
    )
    .await;
    assert_eq!(
        (status, cache.as_str(), body.as_str()),
        (StatusCode::OK, "no-store", "")
    );

    assert_eq!(status_with(&auth, &ended).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_with(&auth, &other).await, StatusCode::OK);
    // A new token of the ended session (a refresh elsewhere) is refused too.
    assert_eq!(
        status_with(&auth, &access("alice", Some("session-1"), 0)).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(revocations.is_session_revoked(Some(ISSUER), "session-1", now()));
    assert!(!revocations.is_session_revoked(Some("https://other"), "session-1", now()));
}

#[tokio::test]
async fn a_logout_by_sub_alone_refuses_the_tokens_issued_before_it() {
    let revocations = Revocations::new().clock(now);
    let auth = layer(&revocations);
    let logout = receiver(&auth);
    let before = access("bob", None, 30);
    let mut claims = logout_claims(None, Some("bob"));
    claims["iat"] = json!(now() - 10);
    let (status, _, _) = send(&logout, post(form(&logout_token(&claims)))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(status_with(&auth, &before).await, StatusCode::UNAUTHORIZED);
    // Signed in again after the logout token was issued.
    assert_eq!(
        status_with(&auth, &access("bob", None, 5)).await,
        StatusCode::OK
    );
    assert_eq!(
        status_with(&auth, &access("carol", None, 30)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn every_requirement_of_the_specification_is_checked() {
    let revocations = Revocations::new().clock(now);
    let auth = layer(&revocations);
    let logout = receiver(&auth);
    let good = || logout_claims(Some("s"), Some("alice"));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut claims = good();
        f(&mut claims);
        logout_token(&claims)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "no events",
            with(&|c| drop(c.as_object_mut().unwrap().remove("events"))),
        ),
        (
            "another event",
            with(&|c| c["events"] = json!({"urn:other": {}})),
        ),
        (
            "event not an object",
            with(&|c| c["events"] = json!({BACKCHANNEL_LOGOUT_EVENT: "x"})),
        ),
        (
            "events not an object",
            with(&|c| c["events"] = json!([BACKCHANNEL_LOGOUT_EVENT])),
        ),
        ("a nonce", with(&|c| c["nonce"] = json!("n"))),
        ("a null nonce", with(&|c| c["nonce"] = json!(null))),
        ("an empty sid", with(&|c| c["sid"] = json!(""))),
        (
            "neither sid nor sub",
            with(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sid");
                o.remove("sub");
            }),
        ),
        (
            "no jti",
            with(&|c| drop(c.as_object_mut().unwrap().remove("jti"))),
        ),
        (
            "no iat",
            with(&|c| drop(c.as_object_mut().unwrap().remove("iat"))),
        ),
        (
            "no exp",
            with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
        ),
        ("iat too old", with(&|c| c["iat"] = json!(now() - 600))),
        (
            "iat in the future",
            with(&|c| c["iat"] = json!(now() + 600)),
        ),
        ("expired", with(&|c| c["exp"] = json!(now() - 600))),
        (
            "another audience",
            with(&|c| c["aud"] = json!("someone-else")),
        ),
        (
            "another issuer",
            with(&|c| c["iss"] = json!("https://evil.example")),
        ),
        ("sid not a string", with(&|c| c["sid"] = json!(7))),
        (
            "typ of an access token",
            mint_with(
                json!({"alg": "HS256", "typ": "at+jwt"}),
                Algorithm::HS256,
                &good(),
            ),
        ),
        ("bad signature", {
            let token = logout_token(&good());
            let (rest, sig) = token.rsplit_once('.').unwrap();
            let flipped = if sig.starts_with('A') { "B" } else { "A" };
            format!("{rest}.{flipped}{}", &sig[1..])
        }),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    for (case, token) in cases {
        let (status, cache, body) = send(&logout, post(form(&token))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(cache, "no-store", "{case}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "invalid_request", "{case}");
        assert!(
            json["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{case}"
        );
        // Never quotes the token.
        let payload = token.split('.').nth(1).unwrap_or(&token);
        assert!(!body.contains(payload), "{case} echoes the token");
    }
    // None of them revoked anything.
    assert!(revocations.is_empty());
    assert_eq!(
        status_with(&auth, &access("alice", Some("s"), 60)).await,
        StatusCode::OK
    );

    // An explicitly typed and an untyped (`JWT`, or none) token both pass.
    for header in [
        json!({"alg": "HS256"}),
        json!({"alg": "HS256", "typ": "JWT"}),
    ] {
        let token = mint_with(header, Algorithm::HS256, &good());
        assert_eq!(send(&logout, post(form(&token))).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn the_request_itself_is_checked() {
    let auth = layer(&Revocations::new().clock(now));
    let logout = receiver(&auth);
    let token = logout_token(&logout_claims(Some("s"), None));

    let get = Request::get("/").body(String::new()).unwrap();
    let response = logout.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "POST");

    let json_body = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/json")
        .body(format!("{{\"logout_token\":\"{token}\"}}"))
        .unwrap();
    assert_eq!(send(&logout, json_body).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(&logout, post("other=1")).await.0,
        StatusCode::BAD_REQUEST
    );
    let twice = format!("{}&{}", form(&token), form(&token));
    assert_eq!(send(&logout, post(twice)).await.0, StatusCode::BAD_REQUEST);
    let huge = format!("{}&pad={}", form(&token), "a".repeat(20_000));
    assert_eq!(
        send(&logout, post(huge)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Content-Type parameters are allowed.
    let with_charset = Request::post("/")
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(form(&token))
        .unwrap();
    assert_eq!(send(&logout, with_charset).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_replayed_logout_token_is_refused() {
    let auth = layer(&Revocations::new().clock(now));
    let logout = receiver(&auth);
    let token = logout_token(&logout_claims(Some("s"), None));
    assert_eq!(send(&logout, post(form(&token))).await.0, StatusCode::OK);
    let (status, _, body) = send(&logout, post(form(&token))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("jti"), "{body}");
}

#[tokio::test]
async fn a_logout_token_is_not_a_credential() {
    let auth = layer(&Revocations::new().clock(now));
    let token = logout_token(&logout_claims(Some("s"), Some("alice")));
    assert_eq!(status_with(&auth, &token).await, StatusCode::UNAUTHORIZED);
    // Typed `JWT` or untyped, its back-channel logout event gives it away.
    let untyped = mint(Algorithm::HS256, &logout_claims(Some("s"), Some("alice")));
    assert_eq!(status_with(&auth, &untyped).await, StatusCode::UNAUTHORIZED);
    let bare = mint_with(
        json!({"alg": "HS256"}),
        Algorithm::HS256,
        &logout_claims(Some("s"), Some("alice")),
    );
    assert_eq!(status_with(&auth, &bare).await, StatusCode::UNAUTHORIZED);
    // Another event is no logout token.
    let mut claims = logout_claims(Some("s"), Some("alice"));
    claims["events"] = json!({"urn:example:other": {}});
    assert_eq!(
        status_with(&auth, &mint(Algorithm::HS256, &claims)).await,
        StatusCode::OK
    );
}

#[test]
fn a_receiver_that_could_not_work_is_not_built() {
    let no_set = JwtAuthLayer::<Value>::builder()
        .provider(Provider::new(ISSUER, [Key::hmac(common::SECRET).unwrap()]).audience(AUDIENCE))
        .cookie("session")
        .build()
        .unwrap();
    let error = BackChannelLogout::builder(&no_set).build().unwrap_err();
    assert!(error.to_string().contains("Revocations"), "{error}");

    let no_audience = JwtAuthLayer::<Value>::builder()
        .provider(Provider::new(ISSUER, [Key::hmac(common::SECRET).unwrap()]))
        .cookie("session")
        .revocations(Revocations::new())
        .build()
        .unwrap();
    let error = BackChannelLogout::builder(&no_audience)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("audience"), "{error}");
    assert!(
        BackChannelLogout::builder(&no_audience)
            .audience("client")
            .build()
            .is_ok()
    );

    let no_issuer = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(common::SECRET).unwrap())
        .audience(AUDIENCE)
        .cookie("session")
        .revocations(Revocations::new())
        .build()
        .unwrap();
    let error = BackChannelLogout::builder(&no_issuer).build().unwrap_err();
    assert!(error.to_string().contains("iss"), "{error}");
}

/// A replica: an axum app on loopback with the auth layer on `/me` and the
/// receiver on `/backchannel-logout`, sharing revocations through Redis.
async fn replica(url: &str, prefix: &str) -> (String, Revocations) {
    let revocations = Revocations::new()
        .max_token_lifetime(Duration::from_secs(3600))
        .clock(now)
        .share(RedisRevocations::new(url).prefix(prefix))
        .await
        .unwrap();
    let auth = layer(&revocations);
    let app = axum::Router::new()
        .route(
            "/me",
            axum::routing::get(|| async { "me" }).layer(auth.clone()),
        )
        .route_service("/backchannel-logout", receiver(&auth));
    let base = serve(app).await;
    (base, revocations)
}

async fn http_logout(client: &reqwest::Client, base: &str, token: &str) -> (u16, String, String) {
    let response = client
        .post(format!("{base}/backchannel-logout"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(token))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get(header::CACHE_CONTROL)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, cache, response.text().await.unwrap())
}

async fn http_me(client: &reqwest::Client, base: &str, token: &str) -> u16 {
    client
        .get(format!("{base}/me"))
        .header(header::COOKIE, format!("session={token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_sent_to_one_replica_ends_the_session_on_another() {
    let url = redis_support::shared_url();
    let prefix = redis_support::prefix("backchannel");
    let (a, _) = replica(url, &prefix).await;
    let (b, b_set) = replica(url, &prefix).await;
    let client = reqwest::Client::new();
    let session = access("alice", Some("sid-42"), 60);
    let other = access("alice", Some("sid-43"), 60);
    assert_eq!(http_me(&client, &b, &session).await, 200);

    let token = logout_token(&logout_claims(Some("sid-42"), Some("alice")));
    let sent = Instant::now();
    let (status, cache, body) = http_logout(&client, &a, &token).await;
    assert_eq!(
        (status, cache.as_str(), body.as_str()),
        (200, "no-store", "")
    );
    // Within the pub/sub delay (the periodic read, 500 ms, is the fallback).
    assert!(
        redis_support::eventually(Duration::from_secs(2), || b_set.is_session_revoked(
            Some(ISSUER),
            "sid-42",
            now()
        ))
        .await,
        "replica B never learnt of the logout"
    );
    let learnt = sent.elapsed();
    assert_eq!(http_me(&client, &b, &session).await, 401);
    assert_eq!(http_me(&client, &a, &session).await, 401);
    assert_eq!(http_me(&client, &b, &other).await, 200);
    assert!(
        learnt < Duration::from_millis(400),
        "took {learnt:?}: pub/sub did not carry it"
    );

    // The replay set is shared: the same token sent to B is refused.
    let (status, _, body) = http_logout(&client, &b, &token).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("jti"), "{body}");
    // And kept in Redis with a bounded lifetime.
    let mut raw = redis_support::raw(url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:logout:*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((1..=200).contains(&ttl), "ttl {ttl}");
}

/// Node's script: a P-256 key, its public JWK, and tokens it signs.
const NODE_IDP: &str = r#"
const crypto = require('node:crypto');
const [iss, aud, nowText] = process.argv.slice(-3);
const now = Number(nowText);
const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...publicKey.export({ format: 'jwk' }), kid: 'node-1', alg: 'ES256', use: 'sig' };
const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const sign = (header, claims) => {
  const input = b64(header) + '.' + b64(claims);
  const sig = crypto.sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' });
  return input + '.' + sig.toString('base64url');
};
const access = sign({ alg: 'ES256', typ: 'JWT', kid: 'node-1' },
  { iss, aud, sub: 'node-user', sid: 'node-session', iat: now - 60, exp: now + 3600 });
const logout = sign({ alg: 'ES256', typ: 'logout+jwt', kid: 'node-1' },
  { iss, aud, sub: 'node-user', sid: 'node-session', iat: now, exp: now + 120,
    jti: crypto.randomUUID(),
    events: { 'http://schemas.openid.net/event/backchannel-logout': {} } });
process.stdout.write(JSON.stringify({ jwk, access, logout }));
"#;

/// What an outside identity provider minted (`jwk`, `access`, `logout`),
/// checked here through a JWKS server on loopback: the access token passes,
/// the logout token ends its session (`sid`), the access token is refused.
async fn check_outside_tokens(minted: &Value, sid: &str) {
    let keys = json!({"keys": [minted["jwk"]]});
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys) }
        }),
    );
    let jwks = format!("{}/jwks.json", serve(app).await);

    let revocations = Revocations::new().clock(now);
    let remote = tollgate::auth::RemoteKeys::jwks(jwks)
        .start()
        .await
        .unwrap();
    let auth = JwtAuthLayer::<Value>::builder()
        .provider(Provider::remote(ISSUER, remote).audience(AUDIENCE))
        .cookie("session")
        .clock(now)
        .revocations(revocations.clone())
        .build()
        .unwrap();
    let logout = receiver(&auth);
    let session = minted["access"].as_str().unwrap();
    assert_eq!(status_with(&auth, session).await, StatusCode::OK);
    let (status, cache, body) = send(&logout, post(form(minted["logout"].as_str().unwrap()))).await;
    assert_eq!(
        (status, cache.as_str()),
        (StatusCode::OK, "no-store"),
        "{body}"
    );
    assert_eq!(status_with(&auth, session).await, StatusCode::UNAUTHORIZED);
    assert!(revocations.is_session_revoked(Some(ISSUER), sid, now()));
    // The logout token is no credential either.
    assert_eq!(
        status_with(&auth, minted["logout"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_by_node_are_verified_through_a_jwks_server() {
    let output = match std::process::Command::new("node")
        .args(["-e", NODE_IDP, ISSUER, AUDIENCE, &now().to_string()])
        .output()
    {
        Ok(output) if output.status.success() => output,
        Ok(output) => panic!("node failed: {}", String::from_utf8_lossy(&output.stderr)),
        Err(_) => {
            eprintln!("skipped: node is not installed (apt-get install nodejs)");
            return;
        }
    };
    let minted: Value = serde_json::from_slice(&output.stdout).unwrap();
    check_outside_tokens(&minted, "node-session").await;
}

/// The `jose` library (panva/jose, the JOSE implementation most Node OIDC
/// providers use): a key pair of `alg`, its public JWK, and tokens it signs.
const JOSE_IDP: &str = r#"
import * as jose from 'jose';
const [alg, iss, aud, nowText] = process.argv.slice(-4);
const now = Number(nowText);
const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true });
const jwk = { ...(await jose.exportJWK(publicKey)), kid: 'jose-1', alg, use: 'sig' };
const access = await new jose.SignJWT({ sid: 'jose-session' })
  .setProtectedHeader({ alg, typ: 'JWT', kid: 'jose-1' })
  .setIssuer(iss).setAudience(aud).setSubject('jose-user')
  .setIssuedAt(now - 60).setExpirationTime(now + 3600)
  .sign(privateKey);
const logout = await new jose.SignJWT({
    sid: 'jose-session',
    events: { 'http://schemas.openid.net/event/backchannel-logout': {} },
  })
  .setProtectedHeader({ alg, typ: 'logout+jwt', kid: 'jose-1' })
  .setIssuer(iss).setAudience(aud).setSubject('jose-user')
  .setIssuedAt(now).setExpirationTime(now + 120).setJti(crypto.randomUUID())
  .sign(privateKey);
process.stdout.write(JSON.stringify({ jwk, access, logout }));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_minted_by_the_jose_library_are_verified_through_a_jwks_server() {
    // .ci/run installs it: npm install --prefix target/node jose@6
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node");
    if !dir.join("node_modules/jose").is_dir() {
        eprintln!(
            "skipped: the jose library is not installed (npm install --prefix target/node jose@6)"
        );
        return;
    }
    for alg in ["ES256", "RS256", "EdDSA"] {
        let output = std::process::Command::new("node")
            .current_dir(&dir)
            .args(["--input-type=module", "-e", JOSE_IDP, alg, ISSUER, AUDIENCE])
            .arg(now().to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "node (jose, {alg}) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let minted: Value = serde_json::from_slice(&output.stdout).unwrap();
        check_outside_tokens(&minted, "jose-session").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_received_while_redis_is_down_reaches_the_other_replica_once_it_is_back() {
    let mut server = redis_support::Server::started();
    let url = server.url();
    let prefix = redis_support::prefix("backchannel-down");
    let (a, a_set) = replica(&url, &prefix).await;
    let (_, b_set) = replica(&url, &prefix).await;
    let client = reqwest::Client::new();
    let session = access("dora", Some("sid-down"), 60);

    server.stop();
    let token = logout_token(&logout_claims(Some("sid-down"), None));
    let started = Instant::now();
    let (status, _, body) = http_logout(&client, &a, &token).await;
    // The replay check cannot reach Redis: this replica's record decides,
    // within the call timeout (1 s), and the logout goes ahead.
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(http_me(&client, &a, &session).await, 401);
    assert!(!b_set.is_session_revoked(Some(ISSUER), "sid-down", now()));
    // Replayed to the same replica meanwhile: refused by its own record.
    assert_eq!(http_logout(&client, &a, &token).await.0, 400);

    // Back, empty (no persistence): A sends what it holds, B reads it.
    let _server = redis_support::Server::start_on(server.port).unwrap();
    assert!(
        redis_support::eventually(Duration::from_secs(10), || b_set.is_session_revoked(
            Some(ISSUER),
            "sid-down",
            now()
        ))
        .await,
        "the logout made during the outage never reached replica B"
    );
    assert!(a_set.sync_failures() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_or_flushed_redis_delays_no_logout_beyond_the_call_timeout() {
    let mut server = redis_support::Server::started();
    let url = server.url();
    let prefix = redis_support::prefix("backchannel-freeze");
    let (a, _) = replica(&url, &prefix).await;
    let (b, b_set) = replica(&url, &prefix).await;
    let client = reqwest::Client::new();

    // Frozen (SIGSTOP): connections stay open and nothing answers. The
    // replay check gives up after the call timeout (1 s) and the logout goes
    // ahead on this replica's record.
    server.freeze();
    let token = logout_token(&logout_claims(Some("sid-frozen"), None));
    let started = Instant::now();
    let (status, _, body) = http_logout(&client, &a, &token).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_millis(2_500), "took {took:?}");
    assert_eq!(
        http_me(&client, &a, &access("eve", Some("sid-frozen"), 60)).await,
        401
    );
    // Thawed: the other replica learns of it.
    server.thaw();
    assert!(
        redis_support::eventually(Duration::from_secs(10), || b_set.is_session_revoked(
            Some(ISSUER),
            "sid-frozen",
            now()
        ))
        .await,
        "the logout made while Redis was frozen never reached replica B"
    );
    assert_eq!(
        http_me(&client, &b, &access("eve", Some("sid-frozen"), 60)).await,
        401
    );

    // FLUSHALL: the revocation comes back from the replicas that hold it
    // (nothing lost), and a replay to the replica that took the token is
    // still refused by its own record.
    server.flushall();
    assert!(
        redis_support::eventually(Duration::from_secs(10), || {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("ZRANGE")
                .arg(format!("{prefix}:entries"))
                .arg(0)
                .arg(-1)
                .query::<Vec<String>>(&mut conn)
                .unwrap_or_default()
                .iter()
                .any(|member| member.contains("\"sid-frozen\""))
        })
        .await,
        "the session revocation was not written back after FLUSHALL"
    );
    assert_eq!(http_logout(&client, &a, &token).await.0, 400);
    // `server` is stopped when dropped.
    server.restart();
}
