//! Sliding refresh of cookie sessions: who gets a re-minted cookie, what it
//! holds, and that the layer accepts it — on a fake clock.

#![allow(clippy::unwrap_used)]
mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate::ConfigError;
use tollgate::Identity;
use tollgate::auth::{JwtAuthBuilder, JwtAuthLayer, Key, Revocations};
use tollgate::refresh::{Refresh, RefreshSessionLayer, SameSite, SigningKey};
use tower::layer::util::Stack;
use tower::{Layer, Service, ServiceExt};

/// The auth layer with a refresh layer behind it.
type Sliding = Stack<RefreshSessionLayer, JwtAuthLayer<Value>>;

/// An auth builder and the refresh to build from its layer.
struct Pending(JwtAuthBuilder<Value>, Refresh);

impl Pending {
    fn build(self) -> Result<Sliding, ConfigError> {
        let auth = self.0.build()?;
        let refresh = RefreshSessionLayer::new(&auth, self.1)?;
        Ok(Stack::new(refresh, auth))
    }
}

/// `builder.refresh(r)`: the two layers, built together.
trait WithRefresh {
    fn refresh(self, refresh: Refresh) -> Pending;
}

impl WithRefresh for JwtAuthBuilder<Value> {
    fn refresh(self, refresh: Refresh) -> Pending {
        Pending(self, refresh)
    }
}

const WITHIN: Duration = Duration::from_secs(180);

/// A clock the test moves.
#[derive(Clone)]
struct Clock(Arc<AtomicU64>);

impl Clock {
    fn at(now: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now)))
    }
    fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
    fn now(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let at = Arc::clone(&self.0);
        move || at.load(Ordering::SeqCst)
    }
}

fn hs_key() -> SigningKey {
    SigningKey::hmac(SECRET).unwrap().kid("hs1")
}

fn builder(clock: &Clock) -> JwtAuthBuilder<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap().kid("hs1"))
        .key(Key::ec_pem(EC256_PUBLIC).unwrap().kid("ec256"))
        .key(Key::ed_pem(ED_PUBLIC).unwrap().kid("ed"))
        .key(Key::rsa_pem(RSA_PUBLIC).unwrap().kid("rsa"))
        .cookie("da3")
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(clock.now())
}

fn layer(clock: &Clock, refresh: Refresh) -> Sliding {
    builder(clock).refresh(refresh).build().unwrap()
}

/// A session token of 15 minutes with `left` seconds to go at `NOW`.
fn session(left: u64) -> Value {
    json!({
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "jti": "session-1",
        "iat": NOW + left - 900,
        "exp": NOW + left,
        "roles": ["reader"],
    })
}

fn token(alg: Algorithm, kid: &str, claims: &Value) -> String {
    mint_with(
        json!({"alg": format!("{alg:?}"), "typ": "JWT", "kid": kid}),
        alg,
        claims,
    )
}

fn hs(claims: &Value) -> String {
    token(Algorithm::HS256, "hs1", claims)
}

fn cookie(token: &str) -> Request<()> {
    Request::builder()
        .header(header::COOKIE, format!("theme=dark; da3={token}"))
        .body(())
        .unwrap()
}

fn bearer(token: &str) -> Request<()> {
    Request::builder()
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
}

/// What the inner service answers: a status, and optionally its own
/// `Set-Cookie`.
#[derive(Clone)]
struct Answer {
    status: StatusCode,
    set_cookie: Option<&'static str>,
}

fn answering(
    answer: Answer,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone {
    tower::service_fn(move |req: Request<()>| {
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = answer.status;
        if let Some(value) = answer.set_cookie {
            res.headers_mut()
                .insert(header::SET_COOKIE, header::HeaderValue::from_static(value));
        }
        assert!(req.extensions().get::<Identity>().is_some());
        std::future::ready(Ok(res))
    })
}

const OK: Answer = Answer {
    status: StatusCode::OK,
    set_cookie: None,
};

/// Sends through `layer` to an inner service answering `answer`; returns the
/// status and every `Set-Cookie`.
async fn send_to(layer: &Sliding, answer: Answer, req: Request<()>) -> (StatusCode, Vec<String>) {
    let res = layer.layer(answering(answer)).oneshot(req).await.unwrap();
    let cookies = res
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    (res.status(), cookies)
}

async fn send(layer: &Sliding, req: Request<()>) -> (StatusCode, Vec<String>) {
    send_to(layer, OK, req).await
}

/// The token and the attributes of a `da3` Set-Cookie.
fn parse(set_cookie: &str) -> (String, String) {
    let (pair, attributes) = set_cookie.split_once("; ").unwrap();
    let token = pair.strip_prefix("da3=").unwrap().to_owned();
    (token, attributes.to_owned())
}

fn segment(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_cookie_token_in_the_window_gets_a_successor_the_layer_accepts() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let old = hs(&session(120));
    let (status, cookies) = send(&auth, cookie(&old)).await;
    assert_eq!(status, StatusCode::OK);
    let [set_cookie] = cookies.as_slice() else {
        panic!("one Set-Cookie expected: {cookies:?}")
    };
    let (new, attributes) = parse(set_cookie);
    assert_eq!(
        attributes,
        "Max-Age=900; Path=/; Secure; HttpOnly; SameSite=Lax"
    );
    assert_ne!(new, old);

    let header = segment(&new, 0);
    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT", "kid": "hs1"}));
    let claims = segment(&new, 1);
    let mut expected = session(120);
    expected["iat"] = json!(NOW);
    expected["exp"] = json!(NOW + 900);
    // The session's absolute end: its start (the first iat) + 7 days.
    expected["session_end"] = json!(NOW + 120 - 900 + 7 * 24 * 3600);
    expected["session_start"] = json!(NOW + 120 - 900);
    assert_eq!(
        claims, expected,
        "same claims, new iat and exp (same lifetime), and the session's start and end"
    );

    // The layer accepts its successor, which is outside the window.
    let (status, cookies) = send(&auth, cookie(&new)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookies.is_empty(), "{cookies:?}");
}

#[tokio::test]
async fn only_tokens_inside_the_window_are_refreshed() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    assert!(send(&auth, cookie(&hs(&session(181)))).await.1.is_empty());
    assert!(send(&auth, cookie(&hs(&session(3600)))).await.1.is_empty());
    assert_eq!(send(&auth, cookie(&hs(&session(180)))).await.1.len(), 1);
    // Expired but within the leeway: still accepted, and refreshed.
    let mut late = session(0);
    late["exp"] = json!(NOW - 30);
    assert_eq!(send(&auth, cookie(&hs(&late))).await.1.len(), 1);
}

#[tokio::test]
async fn bearer_tokens_are_never_refreshed() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let (status, cookies) = send(&auth, bearer(&hs(&session(60)))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookies.is_empty(), "{cookies:?}");
}

#[tokio::test]
async fn refused_and_failed_requests_get_no_cookie_and_keep_the_refresh_for_later() {
    let clock = Clock::at(NOW);
    let old = hs(&session(60));
    // Refused by tollgate (authorisation hook: 403).
    let forbidding = builder(&clock)
        .authorize(|_| false)
        .refresh(Refresh::new(hs_key(), WITHIN))
        .build()
        .unwrap();
    let (status, cookies) = send(&forbidding, cookie(&old)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(cookies.is_empty(), "{cookies:?}");

    // 4xx and 5xx from the inner service: no cookie, and no slot spent.
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    for status in [
        StatusCode::BAD_REQUEST,
        StatusCode::FORBIDDEN,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        let answer = Answer {
            status,
            set_cookie: None,
        };
        let (got, cookies) = send_to(&auth, answer, cookie(&old)).await;
        assert_eq!(got, status);
        assert!(cookies.is_empty(), "{status}: {cookies:?}");
    }
    // A redirect is a success: the next good response carries it.
    let redirect = Answer {
        status: StatusCode::SEE_OTHER,
        set_cookie: None,
    };
    assert_eq!(send_to(&auth, redirect, cookie(&old)).await.1.len(), 1);
}

#[tokio::test]
async fn the_same_old_token_is_reminted_once_per_layer() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let old = hs(&session(60));
    assert_eq!(send(&auth, cookie(&old)).await.1.len(), 1);
    assert!(
        send(&auth, cookie(&old)).await.1.is_empty(),
        "second request"
    );
    // A clone of the layer shares the set.
    assert!(send(&auth.clone(), cookie(&old)).await.1.is_empty());

    // Concurrent: both requests pass auth before either answers; one mints.
    let other = hs(&json!({
        "sub": "user-2", "iss": ISSUER, "aud": AUDIENCE,
        "iat": NOW - 800, "exp": NOW + 100,
    }));
    let mut a = auth.layer(answering(OK));
    let mut b = auth.layer(answering(OK));
    let first = a.call(cookie(&other));
    let second = b.call(cookie(&other));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    let minted = [first, second]
        .iter()
        .filter(|res| res.headers().contains_key(header::SET_COOKIE))
        .count();
    assert_eq!(minted, 1);
}

#[tokio::test]
async fn a_successor_is_refreshed_again_when_its_own_window_comes() {
    // Keyed by the token, not its jti (which the successor keeps).
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let (_, cookies) = send(&auth, cookie(&hs(&session(120)))).await;
    let (second, _) = parse(&cookies[0]);
    clock.set(NOW + 900 - 100);
    let (status, cookies) = send(&auth, cookie(&second)).await;
    assert_eq!(status, StatusCode::OK);
    let (third, _) = parse(&cookies[0]);
    assert_eq!(segment(&third, 1)["exp"], json!(NOW + 800 + 900));
    assert_eq!(segment(&third, 1)["jti"], "session-1");
}

#[tokio::test]
async fn the_hook_can_veto() {
    let clock = Clock::at(NOW);
    let auth = layer(
        &clock,
        Refresh::new(hs_key(), WITHIN).hook(|claims| claims["sub"] != "user-1"),
    );
    let (status, cookies) = send(&auth, cookie(&hs(&session(60)))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookies.is_empty(), "{cookies:?}");
}

#[tokio::test]
async fn the_hook_can_adjust_claims_and_cap_exp() {
    let clock = Clock::at(NOW);
    let auth = layer(
        &clock,
        Refresh::new(hs_key(), WITHIN).hook(|claims| {
            claims.insert("roles".into(), json!(["reader", "writer"]));
            // An absolute session end: never past NOW + 300.
            claims.insert("exp".into(), json!(NOW + 300));
            true
        }),
    );
    let (_, cookies) = send(&auth, cookie(&hs(&session(60)))).await;
    let (new, attributes) = parse(&cookies[0]);
    let claims = segment(&new, 1);
    assert_eq!(claims["roles"], json!(["reader", "writer"]));
    assert_eq!(claims["exp"], json!(NOW + 300));
    assert!(attributes.starts_with("Max-Age=300;"), "{attributes}");
    assert_eq!(send(&auth, cookie(&new)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn cookie_attributes_and_lifetime_are_configurable() {
    let clock = Clock::at(NOW);
    let auth = layer(
        &clock,
        Refresh::new(hs_key(), WITHIN)
            .lifetime(Duration::from_secs(600))
            .http_only(false)
            .secure(false)
            .same_site(SameSite::Strict)
            .path("/app")
            .domain("example.com")
            .max_age(Duration::from_secs(3600)),
    );
    let (_, cookies) = send(&auth, cookie(&hs(&session(60)))).await;
    let (new, attributes) = parse(&cookies[0]);
    assert_eq!(
        attributes,
        "Max-Age=3600; Path=/app; Domain=example.com; SameSite=Strict"
    );
    assert_eq!(segment(&new, 1)["exp"], json!(NOW + 600));
}

#[tokio::test]
async fn a_token_without_iat_needs_a_configured_lifetime() {
    let clock = Clock::at(NOW);
    let mut claims = session(60);
    claims.as_object_mut().unwrap().remove("iat");
    let token = hs(&claims);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    assert!(send(&auth, cookie(&token)).await.1.is_empty());
    let auth = layer(
        &clock,
        Refresh::new(hs_key(), WITHIN).lifetime(Duration::from_secs(600)),
    );
    let (_, cookies) = send(&auth, cookie(&token)).await;
    assert_eq!(segment(&parse(&cookies[0]).0, 1)["iat"], json!(NOW));
}

#[tokio::test]
async fn a_response_that_sets_the_cookie_keeps_its_own() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let logout = Answer {
        status: StatusCode::NO_CONTENT,
        set_cookie: Some("da3=; Max-Age=0; Path=/"),
    };
    let (_, cookies) = send_to(&auth, logout, cookie(&hs(&session(60)))).await;
    assert_eq!(cookies, ["da3=; Max-Age=0; Path=/"]);
    // Another cookie's name that starts like it does not count.
    let other = Answer {
        status: StatusCode::OK,
        set_cookie: Some("da3x=1"),
    };
    assert_eq!(
        send_to(&auth, other, cookie(&hs(&session(60))))
            .await
            .1
            .len(),
        2
    );
}

#[tokio::test]
async fn a_token_revoked_while_the_request_runs_is_not_reminted() {
    let clock = Clock::at(NOW);
    let revocations = Revocations::new().clock(clock.now());
    let auth = builder(&clock)
        .revocations(revocations.clone())
        .refresh(Refresh::new(hs_key(), WITHIN))
        .build()
        .unwrap();
    // A logout handler: revokes the caller's token, answers 204.
    let logout = tower::service_fn(move |req: Request<()>| {
        let identity = req.extensions().get::<Identity>().unwrap();
        assert!(revocations.revoke_token_of(identity));
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::NO_CONTENT;
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let old = hs(&session(60));
    let res = auth.layer(logout).oneshot(cookie(&old)).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(!res.headers().contains_key(header::SET_COOKIE));
    assert_eq!(send(&auth, cookie(&old)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn every_algorithm_family_signs_with_its_kid() {
    let cases = [
        (
            SigningKey::ec_pem(EC256_PRIVATE).unwrap().kid("ec256"),
            Algorithm::ES256,
            "ec256",
        ),
        (
            SigningKey::ed_pem(ED_PRIVATE).unwrap().kid("ed"),
            Algorithm::EdDSA,
            "ed",
        ),
        (
            SigningKey::rsa_pem(RSA_PRIVATE).unwrap().kid("rsa"),
            Algorithm::RS256,
            "rsa",
        ),
        (
            SigningKey::rsa_pem(RSA_PRIVATE)
                .unwrap()
                .algorithm(Algorithm::PS384)
                .unwrap()
                .kid("rsa"),
            Algorithm::PS384,
            "rsa",
        ),
        (hs_key(), Algorithm::HS256, "hs1"),
    ];
    for (key, alg, kid) in cases {
        let clock = Clock::at(NOW);
        let auth = layer(&clock, Refresh::new(key, WITHIN));
        // The original may be signed by another key of the layer.
        let old = token(Algorithm::ES256, "ec256", &session(60));
        let (status, cookies) = send(&auth, cookie(&old)).await;
        assert_eq!(status, StatusCode::OK);
        let (new, _) = parse(&cookies[0]);
        assert_eq!(segment(&new, 0)["alg"], format!("{alg:?}"), "{alg:?}");
        assert_eq!(segment(&new, 0)["kid"], kid, "{alg:?}");
        assert_eq!(segment(&new, 1)["sub"], "user-1");
        let (status, cookies) = send(&auth, cookie(&new)).await;
        assert_eq!(status, StatusCode::OK, "{alg:?}: the layer accepts it");
        assert!(cookies.is_empty());
    }
}

#[test]
fn misconfigurations_fail_at_build() {
    let clock = Clock::at(NOW);
    let fails = |b: Pending, setting: &str, words: &str| {
        let err = b.build().unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.reason().contains(words), "{err}");
    };
    let base = || {
        JwtAuthLayer::<Value>::builder()
            .key(Key::hmac(SECRET).unwrap().kid("hs1"))
            .clock(clock.now())
    };
    let refresh = || Refresh::new(hs_key(), WITHIN);
    fails(
        base().bearer().refresh(refresh()),
        "refresh",
        ".cookie(name)",
    );
    fails(
        base().cookie("a").cookie("b").refresh(refresh()),
        "refresh",
        "single",
    );
    // A key the layer would refuse: another secret, an unknown kid.
    let other = SigningKey::hmac([7u8; 32]).unwrap().kid("hs1");
    fails(
        base().cookie("da3").refresh(Refresh::new(other, WITHIN)),
        "refresh.key",
        "refused",
    );
    let unknown = SigningKey::hmac(SECRET).unwrap().kid("nope");
    fails(
        base().cookie("da3").refresh(Refresh::new(unknown, WITHIN)),
        "refresh.key",
        "kid",
    );
    // A P-384 key signing as ES256.
    fails(
        base()
            .key(Key::ec_pem(EC384_PUBLIC).unwrap().kid("ec384"))
            .cookie("da3")
            .refresh(Refresh::new(
                SigningKey::ec_pem(EC384_PRIVATE).unwrap().kid("ec384"),
                WITHIN,
            )),
        "refresh.key",
        "ES384",
    );
    fails(
        base().cookie("da3").refresh(refresh().lifetime(WITHIN)),
        "refresh",
        "longer than within",
    );
    fails(
        base()
            .cookie("da3")
            .max_lifetime(Duration::from_secs(600))
            .refresh(refresh().lifetime(Duration::from_secs(900))),
        "refresh",
        "max_lifetime",
    );
    fails(
        base()
            .cookie("da3")
            .refresh(refresh().same_site(SameSite::None).secure(false)),
        "refresh",
        "Secure",
    );
    fails(
        base()
            .cookie("__Host-s")
            .refresh(refresh().domain("example.com")),
        "refresh",
        "__Host-",
    );
    fails(
        base().cookie("da3").refresh(refresh().path("/a;b")),
        "refresh",
        "path",
    );
    fails(
        base().cookie("da3").refresh(refresh().domain("a b")),
        "refresh",
        "domain",
    );
    fails(
        base()
            .cookie("da3")
            .refresh(Refresh::new(hs_key(), Duration::ZERO)),
        "refresh",
        "within",
    );
    // The P-384 pair signs once the algorithm says so.
    base()
        .key(Key::ec_pem(EC384_PUBLIC).unwrap().kid("ec384"))
        .cookie("da3")
        .refresh(Refresh::new(
            SigningKey::ec_pem(EC384_PRIVATE)
                .unwrap()
                .kid("ec384")
                .algorithm(Algorithm::ES384)
                .unwrap(),
            WITHIN,
        ))
        .build()
        .unwrap();
}

#[test]
fn outcomes_are_counted_and_tokens_never_logged() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = Clock::at(NOW);
    let old = hs(&session(60));
    let logs = capture_logs(|| {
        metrics::with_local_recorder(&recorder, || {
            run(async {
                let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
                let (_, cookies) = send(&auth, cookie(&old)).await;
                assert_eq!(cookies.len(), 1);
                let veto = layer(&clock, Refresh::new(hs_key(), WITHIN).hook(|_| false));
                assert!(send(&veto, cookie(&old)).await.1.is_empty());
                let mut claims = session(60);
                claims.as_object_mut().unwrap().remove("iat");
                assert!(send(&auth, cookie(&hs(&claims))).await.1.is_empty());
            });
        });
    });
    let mut counted: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "tollgate_auth_refreshes_total")
        .map(|(key, _, _, value)| {
            let outcome = key
                .key()
                .labels()
                .find(|l| l.key() == "outcome")
                .unwrap()
                .value()
                .to_owned();
            let DebugValue::Counter(n) = value else {
                panic!("a counter")
            };
            (outcome, n)
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        [
            ("failed".to_owned(), 1),
            ("refreshed".to_owned(), 1),
            ("vetoed".to_owned(), 1)
        ]
    );
    assert!(logs.contains("refresh"), "{logs}");
    let signature = old.rsplit('.').next().unwrap();
    assert!(!logs.contains(signature), "a token was logged: {logs}");
    assert!(!logs.contains("eyJ"), "a token was logged: {logs}");
}

#[tokio::test]
async fn the_auth_refresh_table_configures_it_with_the_hmac_key() {
    use tollgate::config::TollgateConfig;
    let secret = std::str::from_utf8(SECRET).unwrap();
    let text = format!(
        r#"
[auth]
cookie = "da3"
issuers = ["{ISSUER}"]
audiences = ["{AUDIENCE}"]
keys = [{{ type = "hmac", secret = "{secret}", kid = "hs1" }}]

[auth.refresh]
within_secs = 180
same_site = "strict"
domain = "example.com"
max_age_secs = 1200
"#
    );
    let config = TollgateConfig::from_toml(&text).unwrap();
    let clock = Clock::at(NOW);
    let table = config.auth.as_ref().unwrap();
    let auth = table
        .builder::<Value>()
        .await
        .unwrap()
        .clock(clock.now())
        .build()
        .unwrap();
    let refresh = table.refresh_layer(&auth).unwrap().unwrap();
    let auth = Stack::new(refresh, auth);
    let (_, cookies) = send(&auth, cookie(&hs(&session(60)))).await;
    let (new, attributes) = parse(&cookies[0]);
    assert_eq!(
        attributes,
        "Max-Age=1200; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Strict"
    );
    assert_eq!(segment(&new, 0)["kid"], "hs1");

    // A typo lists the accepted values; a table without an hmac key to
    // sign with names the table.
    let typo = text.replace("\"strict\"", "\"relaxed\"");
    let err = TollgateConfig::from_toml(&typo).unwrap_err().to_string();
    assert!(
        err.contains("unknown variant `relaxed`, expected one of `strict`, `lax`, `none`"),
        "{err}"
    );
    let ec_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ec256_public.pem"
    );
    let no_hmac = text.replace(
        &format!("{{ type = \"hmac\", secret = \"{secret}\", kid = \"hs1\" }}"),
        &format!("{{ type = \"ec_pem\", path = \"{ec_path}\" }}"),
    );
    let config = TollgateConfig::from_toml(&no_hmac).unwrap();
    let err = config
        .auth
        .as_ref()
        .unwrap()
        .builder::<Value>()
        .await
        .unwrap_err();
    assert_eq!(err.setting(), "auth.refresh", "{err}");
}

/// `[auth.refresh]` sets the absolute session length; a bad value is
/// refused at parse time, naming its line.
#[tokio::test]
async fn the_auth_refresh_table_sets_max_session() {
    use tollgate::config::TollgateConfig;
    let secret = std::str::from_utf8(SECRET).unwrap();
    let text = format!(
        r#"[auth]
cookie = "da3"
issuers = ["{ISSUER}"]
audiences = ["{AUDIENCE}"]
keys = [{{ type = "hmac", secret = "{secret}", kid = "hs1" }}]

[auth.refresh]
within_secs = 180
max_session_secs = 3600
"#
    );
    let config = TollgateConfig::from_toml(&text).unwrap();
    let clock = Clock::at(NOW);
    let table = config.auth.as_ref().unwrap();
    let auth = table
        .builder::<Value>()
        .await
        .unwrap()
        .clock(clock.now())
        .build()
        .unwrap();
    let auth = Stack::new(table.refresh_layer(&auth).unwrap().unwrap(), auth);
    let first = session(60);
    let (_, cookies) = send(&auth, cookie(&hs(&first))).await;
    let (new, _) = parse(&cookies[0]);
    assert_eq!(
        segment(&new, 1)["session_end"],
        json!(first["iat"].as_u64().unwrap() + 3600)
    );

    for bad in ["0", "-1", "\"7 days\""] {
        let text = text.replace(
            "max_session_secs = 3600",
            &format!("max_session_secs = {bad}"),
        );
        let err = TollgateConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("line 9"), "{bad}: {err}");
        assert!(
            err.contains("max_session_secs") || err.contains("integer"),
            "{bad}: {err}"
        );
    }
    // Not longer than within_secs: the table's line, naming both keys.
    let short = text.replace("max_session_secs = 3600", "max_session_secs = 180");
    let err = TollgateConfig::from_toml(&short).unwrap_err().to_string();
    assert!(err.contains("line 7"), "{err}");
    assert!(
        err.contains("max_session_secs (180) must be more than within_secs (180)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_grpc_error_in_the_headers_gets_no_cookie() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let svc = auth.layer(tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(Full::new(Bytes::new()));
        res.headers_mut()
            .insert("grpc-status", header::HeaderValue::from_static("16"));
        Ok::<_, Infallible>(res)
    }));
    let res = svc.oneshot(cookie(&hs(&session(60)))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key(header::SET_COOKIE));
}

/// Issue 22: a revocation of a `jti` lived until the presented token's
/// exp + leeway, but the refreshed successor keeps the `jti` with a later
/// `exp`: once the old token's time was up, the successor was accepted again
/// (and kept sliding). A revoked `jti` now stays revoked until the session's
/// absolute end.
#[tokio::test]
async fn a_revoked_jti_stays_revoked_for_every_successor() {
    let clock = Clock::at(NOW);
    let revocations = Revocations::new().clock(clock.now());
    let auth = builder(&clock)
        .revocations(revocations.clone())
        .refresh(Refresh::new(hs_key(), WITHIN).max_session(Duration::from_secs(4 * 3600)))
        .build()
        .unwrap();
    let old = hs(&session(60));
    let (_, cookies) = send(&auth, cookie(&old)).await;
    let (successor, _) = parse(&cookies[0]);
    // Logout with the old token (a tab that still had it).
    revocations.revoke_token("session-1", NOW + 60);
    assert_eq!(
        send(&auth, cookie(&successor)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Past the old token's exp + leeway, within the successor's life.
    clock.set(NOW + 60 + 61);
    revocations.cleanup();
    let (status, cookies) = send(&auth, cookie(&successor)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the successor came back");
    assert!(cookies.is_empty());
    // In the successor's own window: still refused, never re-minted.
    clock.set(NOW + 900 - 60);
    let (status, cookies) = send(&auth, cookie(&successor)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(cookies.is_empty());
}

/// Logout by the successor's identity and logout everywhere (by subject)
/// refuse every token of the session, whichever was presented.
#[tokio::test]
async fn revocation_by_session_and_by_subject_works_through_refresh() {
    let clock = Clock::at(NOW);
    let revocations = Revocations::new().clock(clock.now());
    let auth = builder(&clock)
        .revocations(revocations.clone())
        .refresh(Refresh::new(hs_key(), WITHIN).max_session(Duration::from_secs(4 * 3600)))
        .build()
        .unwrap();
    let logout = |by_subject: bool| {
        let revocations = revocations.clone();
        tower::service_fn(move |req: Request<()>| {
            let identity = req.extensions().get::<Identity>().unwrap();
            if by_subject {
                assert!(revocations.revoke_subject_of(identity, NOW + 1));
            } else {
                assert!(revocations.revoke_token_of(identity));
            }
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))))
        })
    };
    // By session, with the successor: the old token and later ones too.
    let old = hs(&session(60));
    let (_, cookies) = send(&auth, cookie(&old)).await;
    let (successor, _) = parse(&cookies[0]);
    auth.layer(logout(false))
        .oneshot(cookie(&successor))
        .await
        .unwrap();
    for at in [NOW, NOW + 200, NOW + 900 - 60] {
        clock.set(at);
        assert_eq!(send(&auth, cookie(&old)).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            send(&auth, cookie(&successor)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // By subject: another session of the same user, refreshed before.
    clock.set(NOW);
    let mut other = session(60);
    other["jti"] = json!("session-2");
    let other = hs(&other);
    let (_, cookies) = send(&auth, cookie(&other)).await;
    let (other_successor, _) = parse(&cookies[0]);
    auth.layer(logout(true))
        .oneshot(cookie(&other_successor))
        .await
        .unwrap();
    for at in [NOW, NOW + 900 - 60] {
        clock.set(at);
        let (status, cookies) = send(&auth, cookie(&other_successor)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(cookies.is_empty());
    }
}

/// Issue 26: a replica that has not yet heard of a logout everywhere
/// refreshes a session started before it; the successor's `iat` is after
/// the cut, yet it belongs to the logged-out session: it is refused once the
/// revocation arrives (its session start, `session_start`, is compared). So
/// is a token whose `auth_time` precedes the cut. A new session is not.
#[tokio::test]
async fn a_successor_minted_before_a_logout_everywhere_arrived_stays_revoked() {
    let clock = Clock::at(NOW);
    let revocations = Revocations::new().clock(clock.now());
    let auth = builder(&clock)
        .revocations(revocations.clone())
        .refresh(Refresh::new(hs_key(), WITHIN))
        .build()
        .unwrap();
    let old = hs(&session(60));
    let started = NOW + 60 - 900;
    let (_, cookies) = send(&auth, cookie(&old)).await;
    let (successor, _) = parse(&cookies[0]);
    assert_eq!(segment(&successor, 1)["iat"], json!(NOW));
    assert_eq!(segment(&successor, 1)["session_start"], json!(started));
    // The logout everywhere, made elsewhere at NOW - 1, arrives.
    revocations.revoke_subject(Some(ISSUER), "user-1", NOW - 1);
    clock.set(NOW + 1);
    assert_eq!(
        send(&auth, cookie(&successor)).await.0,
        StatusCode::UNAUTHORIZED,
        "the successor of a logged-out session"
    );
    let mut reauthenticated = session(60);
    reauthenticated["jti"] = json!("session-2");
    reauthenticated["iat"] = json!(NOW);
    reauthenticated["auth_time"] = json!(NOW - 600);
    assert_eq!(
        send(&auth, cookie(&hs(&reauthenticated))).await.0,
        StatusCode::UNAUTHORIZED,
        "issued after the cut for an authentication before it"
    );
    let mut fresh = session(60);
    fresh["jti"] = json!("session-3");
    fresh["iat"] = json!(NOW);
    assert_eq!(
        send(&auth, cookie(&hs(&fresh))).await.0,
        StatusCode::OK,
        "a session started after the cut"
    );
}

/// Issue 22: an absolute session end, carried in the token: the first
/// refresh sets `session_end` (the session's start, `auth_time` or the
/// token's `iat`, plus `max_session`), later ones copy it; no successor
/// expires past it, and the layer refuses a token past it.
#[tokio::test]
async fn a_session_slides_until_its_absolute_end_and_no_further() {
    let clock = Clock::at(NOW);
    let auth = layer(
        &clock,
        Refresh::new(hs_key(), WITHIN).max_session(Duration::from_secs(3600)),
    );
    let first = session(60);
    let start = first["iat"].as_u64().unwrap();
    let end = start + 3600;
    let mut token = hs(&first);
    let mut exp = NOW + 60;
    let mut refreshes = 0;
    loop {
        clock.set(exp - 60);
        let (status, cookies) = send(&auth, cookie(&token)).await;
        assert_eq!(status, StatusCode::OK);
        let Some(set) = cookies.first() else { break };
        let (next, _) = parse(set);
        let claims = segment(&next, 1);
        assert_eq!(claims["session_end"], json!(end), "copied unchanged");
        let next_exp = claims["exp"].as_u64().unwrap();
        assert!(next_exp <= end, "minted past the session's end");
        assert!(next_exp > exp);
        (token, exp) = (next, next_exp);
        refreshes += 1;
        assert!(refreshes < 10, "the session never ends");
    }
    assert_eq!(exp, end, "the last successor ends with the session");
    // The layer refuses past the end (plus leeway), whatever exp says.
    let mut forged_on = session(60);
    forged_on["session_end"] = json!(NOW + 30);
    forged_on["exp"] = json!(NOW + 900);
    let token = hs(&forged_on);
    clock.set(NOW + 30 + 60);
    assert_eq!(
        send(&auth, cookie(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    clock.set(NOW + 30);
    let (status, cookies) = send(&auth, cookie(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookies.is_empty(), "nothing to gain past the session's end");
}

/// Issue 22: a refreshed `Set-Cookie` went out on a `Cache-Control: public`
/// response with no `private` and no `Vary: Cookie`: a shared cache could
/// hand one user's session to the next. Such a response is made private and
/// varies by cookie (other directives and `Vary` values kept).
#[tokio::test]
async fn a_response_carrying_a_refreshed_session_is_private_and_varies_by_cookie() {
    let clock = Clock::at(NOW);
    let auth = layer(&clock, Refresh::new(hs_key(), WITHIN));
    let public = tower::service_fn(|_req: Request<()>| {
        let mut res = Response::new(Full::new(Bytes::new()));
        let headers = res.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("public, max-age=60"),
        );
        headers.insert(
            header::VARY,
            header::HeaderValue::from_static("Accept-Encoding"),
        );
        std::future::ready(Ok::<_, Infallible>(res))
    });
    let res = auth
        .layer(public)
        .oneshot(cookie(&hs(&session(60))))
        .await
        .unwrap();
    assert!(res.headers().contains_key(header::SET_COOKIE));
    assert_eq!(res.headers()[header::CACHE_CONTROL], "private, max-age=60");
    let vary: Vec<_> = res.headers().get_all(header::VARY).iter().collect();
    assert_eq!(vary, ["Accept-Encoding", "Cookie"]);
    // A response without Cache-Control gets `private` too.
    let res = auth
        .layer(answering(OK))
        .oneshot(cookie(&hs(&session(50))))
        .await
        .unwrap();
    assert!(res.headers().contains_key(header::SET_COOKIE));
    assert_eq!(res.headers()[header::CACHE_CONTROL], "private");
    assert_eq!(res.headers()[header::VARY], "Cookie");
    // No refresh: headers untouched.
    let res = auth
        .layer(answering(OK))
        .oneshot(cookie(&hs(&session(600))))
        .await
        .unwrap();
    assert!(!res.headers().contains_key(header::CACHE_CONTROL));
}

/// The refresh layer needs the auth layer in front of it, and the token
/// that layer hands on: mounted in front, or built from another auth layer,
/// it re-mints nothing (and says so once at `warn`), while the same layers
/// in the right order do.
#[tokio::test]
async fn a_refresh_in_front_of_its_auth_layer_or_built_from_another_refreshes_nothing() {
    let clock = Clock::at(NOW);
    let near = || cookie(&hs(&session(60)));
    let cookies = |res: &Response<_>| res.headers().get_all(header::SET_COOKIE).iter().count();

    let auth = builder(&clock).build().unwrap();
    let refresh = RefreshSessionLayer::new(&auth, Refresh::new(hs_key(), WITHIN)).unwrap();
    // Stack::new(inner, outer): the refresh outside, in front of the auth layer.
    let in_front = Stack::new(auth.clone(), refresh.clone()).layer(answering(OK));
    let res = in_front.oneshot(near()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(cookies(&res), 0);

    let other = builder(&clock).build().unwrap();
    let from_other = RefreshSessionLayer::new(&other, Refresh::new(hs_key(), WITHIN)).unwrap();
    // The auth layer in front hands its tokens on too (for its own
    // forwarding scope): still not the layer the refresh was built from.
    let front = builder(&clock).build().unwrap();
    let _scope = tollgate::forward::ForwardScopeLayer::new(&front);
    let res = Stack::new(from_other, front)
        .layer(answering(OK))
        .oneshot(near())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(cookies(&res), 0);

    // The same two layers, the refresh behind the auth layer: a successor.
    let res = Stack::new(refresh, auth)
        .layer(answering(OK))
        .oneshot(near())
        .await
        .unwrap();
    assert_eq!(cookies(&res), 1);
}
