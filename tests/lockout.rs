//! Failure-driven lockout on a fake clock: failures lock a client out with
//! a growing back-off, successes are never charged, a marked success clears,
//! one client cannot lock out another, and the refusal is the draft's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tollgate::lockout::{LockoutLayer, LoginFailed, LoginSucceeded};
use tollgate::rate_limit::{KeyBy, PeerAddr, TrustedProxies};
use tower::{Layer, Service, ServiceExt};

const NOW: u64 = 1_700_000_000;

/// What the handler answers, and how often it ran.
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
}

fn request(ip: &str, answer: &str) -> Request<String> {
    let mut request = Request::new(answer.to_owned());
    let ip = ip.parse().expect("ip");
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip, 40_000)));
    request
}

impl Service<Request<String>> for Handler {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// The request body says what to answer: `ok`, `401`, `failed` (200
    /// marked as a failed login) or `login` (200 marked as a success).
    fn call(&mut self, req: Request<String>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(String::new());
        match req.body().as_str() {
            "401" => *response.status_mut() = StatusCode::UNAUTHORIZED,
            "failed" => {
                response.extensions_mut().insert(LoginFailed);
            }
            "login" => {
                response.extensions_mut().insert(LoginSucceeded);
            }
            _ => {}
        }
        std::future::ready(Ok(response))
    }
}

struct Setup {
    clock: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
    layer: LockoutLayer,
}

fn setup() -> Setup {
    setup_with(|b| b)
}

fn setup_with(
    adjust: impl FnOnce(tollgate::lockout::LockoutBuilder) -> tollgate::lockout::LockoutBuilder,
) -> Setup {
    let clock = Arc::new(AtomicU64::new(NOW));
    let now = Arc::clone(&clock);
    let builder = LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
        .failures(3)
        .window(Duration::from_secs(60))
        .backoff(Duration::from_secs(30))
        .max_backoff(Duration::from_secs(100))
        .peer_addr_inserted(true)
        .clock(move || now.load(Ordering::SeqCst));
    let layer = adjust(builder).build().expect("layer");
    Setup {
        clock,
        calls: Arc::new(AtomicUsize::new(0)),
        layer,
    }
}

impl Setup {
    async fn send(&self, ip: &str, answer: &str) -> Response<tollgate::body::ResponseBody<String>> {
        let handler = Handler {
            calls: Arc::clone(&self.calls),
        };
        self.layer
            .layer(handler)
            .oneshot(request(ip, answer))
            .await
            .expect("infallible")
    }

    fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }
}

async fn body_json(response: Response<tollgate::body::ResponseBody<String>>) -> serde_json::Value {
    use http_body_util::BodyExt;
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test]
async fn failures_lock_a_client_out_with_a_growing_backoff() {
    let s = setup();
    for _ in 0..3 {
        assert_eq!(
            s.send("192.0.2.1", "401").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let calls = s.calls.load(Ordering::SeqCst);
    let refused = s.send("192.0.2.1", "ok").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body = body_json(refused).await;
    assert_eq!(body["type"], tollgate::reject::ABNORMAL_USAGE_DETECTED);
    assert_eq!(body["reason"], "locked_out");
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        calls,
        "the handler is not called"
    );

    // Ten seconds before the end: still refused, with what is left.
    s.advance(20);
    assert_eq!(
        s.send("192.0.2.1", "ok").await.headers()["retry-after"],
        "10"
    );
    // The lockout is over: served again.
    s.advance(10);
    assert_eq!(s.send("192.0.2.1", "ok").await.status(), StatusCode::OK);
    // Three more failures: the second lockout is twice as long, the third
    // capped at max_backoff (100 s, not 120 s).
    for expected in ["60", "100"] {
        for _ in 0..3 {
            s.send("192.0.2.1", "401").await;
        }
        let refused = s.send("192.0.2.1", "ok").await;
        assert_eq!(refused.headers()["retry-after"], expected);
        s.advance(expected.parse().expect("secs"));
    }
    // Quiet for max_backoff after the last lockout: the back-off starts over.
    s.advance(100);
    for _ in 0..3 {
        s.send("192.0.2.1", "401").await;
    }
    assert_eq!(
        s.send("192.0.2.1", "ok").await.headers()["retry-after"],
        "30"
    );
}

#[tokio::test]
async fn successes_are_never_charged_and_failures_outside_the_window_do_not_add_up() {
    let s = setup();
    for _ in 0..1_000 {
        assert_eq!(s.send("192.0.2.2", "ok").await.status(), StatusCode::OK);
    }
    // Two failures, then the window passes: two more do not lock out.
    s.send("192.0.2.2", "401").await;
    s.send("192.0.2.2", "401").await;
    s.advance(60);
    s.send("192.0.2.2", "401").await;
    s.send("192.0.2.2", "401").await;
    assert_eq!(s.send("192.0.2.2", "ok").await.status(), StatusCode::OK);
    // A third inside the new window does.
    s.send("192.0.2.2", "401").await;
    assert_eq!(
        s.send("192.0.2.2", "ok").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn handler_marks_count_and_a_marked_success_clears_the_failures() {
    let s = setup_with(|b| b.clear_on_success(true));
    // A failed login answered 200 counts; a successful one clears.
    s.send("192.0.2.3", "failed").await;
    s.send("192.0.2.3", "failed").await;
    s.send("192.0.2.3", "login").await;
    s.send("192.0.2.3", "failed").await;
    s.send("192.0.2.3", "failed").await;
    assert_eq!(s.send("192.0.2.3", "ok").await.status(), StatusCode::OK);
    s.send("192.0.2.3", "failed").await;
    assert_eq!(
        s.send("192.0.2.3", "ok").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Hostile: a client locks out only itself; another address (the account
/// owner elsewhere) keeps being served, and requests without an address
/// are not counted in one shared key that anyone could fill.
#[tokio::test]
async fn one_client_cannot_lock_out_another_nor_the_keyless() {
    let s = setup();
    for _ in 0..30 {
        s.send("192.0.2.66", "401").await;
    }
    assert_eq!(
        s.send("192.0.2.66", "ok").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(s.send("198.51.100.9", "ok").await.status(), StatusCode::OK);
    assert_eq!(s.send("2001:db8::1", "ok").await.status(), StatusCode::OK);

    let keyless = || Request::new("401".to_owned());
    let handler = Handler {
        calls: Arc::clone(&s.calls),
    };
    let mut service = s.layer.layer(handler);
    for _ in 0..10 {
        let status = service
            .ready()
            .await
            .expect("ready")
            .call(keyless())
            .await
            .expect("infallible")
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[test]
fn misconfigurations_fail_at_build() {
    let base =
        || LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none())).peer_addr_inserted(true);
    let err = |b: tollgate::lockout::LockoutBuilder| b.build().expect_err("refused");
    assert_eq!(err(base().failures(0)).setting(), "lockout.failures");
    assert_eq!(
        err(base()
            .backoff(Duration::from_secs(60))
            .max_backoff(Duration::from_secs(10)))
        .setting(),
        "lockout.max_backoff"
    );
    assert_eq!(err(base().statuses([])).setting(), "lockout.statuses");
    assert_eq!(
        err(base().window(Duration::ZERO)).setting(),
        "lockout.window"
    );
}

/// A `[lockouts.NAME]` table builds the same layer; bad values name their
/// field.
#[tokio::test]
async fn a_lockouts_table_configures_it() {
    use tollgate::config::TollgateConfig;
    let text = r#"
[lockouts.login]
key = "client_ip"
failures = 2
window_secs = 60
backoff_secs = 10
max_backoff_secs = 40
statuses = [401]
"#;
    let config = TollgateConfig::from_toml(text).expect("config");
    assert!(config.lockout("other").is_none());
    let layer = config
        .lockout("login")
        .expect("table")
        .layer("login")
        .await
        .expect("layer");
    let calls = Arc::new(AtomicUsize::new(0));
    let send = |answer: &str| {
        let handler = Handler {
            calls: Arc::clone(&calls),
        };
        layer.layer(handler).oneshot(request("203.0.113.5", answer))
    };
    // 403 is not in `statuses`: not counted.
    send("ok").await.expect("ok");
    for _ in 0..2 {
        assert_eq!(
            send("401").await.expect("ok").status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = send("ok").await.expect("ok");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "10");

    let bad = text.replace("statuses = [401]", "statuses = [200]");
    let config = TollgateConfig::from_toml(&bad).expect("parses");
    let err = config
        .lockout("login")
        .expect("table")
        .layer("login")
        .await
        .expect_err("refused");
    assert_eq!(err.setting(), "lockouts.statuses");
    let typo = text.replace("failures = 2", "failure = 2");
    assert!(TollgateConfig::from_toml(&typo).is_err());
}

/// Every event is counted under the lockout's name.
#[test]
fn events_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(async {
                let s = setup();
                for _ in 0..3 {
                    s.send("192.0.2.9", "401").await;
                }
                s.send("192.0.2.9", "ok").await;
                s.send("192.0.2.10", "login").await;
                s.send("192.0.2.10", "failed").await;
                s.send("192.0.2.10", "login").await;
            });
    });
    let mut counted: Vec<(String, String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "tollgate_lockout_events_total")
        .map(|(key, _, _, value)| {
            let label = |name: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let DebugValue::Counter(n) = value else {
                panic!("a counter")
            };
            (label("lockout"), label("event"), n)
        })
        .collect();
    counted.sort();
    let expect = |event: &str, n| ("lockout".to_owned(), event.to_owned(), n);
    assert_eq!(
        counted,
        [
            expect("failure", 4),
            expect("locked_out", 1),
            expect("refused", 1)
        ]
    );
}

/// Hostile: an attacker with an account of their own logs into it between
/// guesses at someone else's. By default a success clears nothing (the key
/// is the address, shared by both accounts): the guesses still lock out.
#[tokio::test]
async fn logging_into_ones_own_account_between_guesses_does_not_reset_the_count() {
    let s = setup();
    for _ in 0..3 {
        s.send("192.0.2.77", "failed").await;
        s.send("192.0.2.77", "login").await;
    }
    assert_eq!(
        s.send("192.0.2.77", "ok").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Hostile: a burst of parallel guesses, each slower than the burst. No
/// more attempts than the limit are let through before their outcomes are
/// counted; a cancelled attempt frees its place.
#[tokio::test]
async fn parallel_guesses_beyond_the_limit_are_refused_before_any_fails() {
    let s = setup();
    let (release, wait) = tokio::sync::watch::channel(false);
    let slow = tower::service_fn(move |_req: Request<String>| {
        let mut wait = wait.clone();
        async move {
            let _ = wait.wait_for(|go| *go).await;
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok::<_, Infallible>(response)
        }
    });
    let mut in_flight = Vec::new();
    for _ in 0..3 {
        in_flight.push(tokio::spawn(
            s.layer
                .layer(slow.clone())
                .oneshot(request("192.0.2.88", "x")),
        ));
    }
    tokio::task::yield_now().await;
    // The 4th, while three are in flight and none has failed yet.
    let refused = s
        .layer
        .layer(slow.clone())
        .oneshot(request("192.0.2.88", "x"))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(body_json(refused).await["reason"], "too_many_attempts");
    // One cancelled: its place is free again.
    in_flight.pop().expect("one").abort();
    tokio::task::yield_now().await;
    let fourth = tokio::spawn(
        s.layer
            .layer(slow.clone())
            .oneshot(request("192.0.2.88", "x")),
    );
    tokio::task::yield_now().await;
    release.send(true).expect("receivers");
    assert_eq!(
        fourth.await.expect("task").expect("ok").status(),
        StatusCode::UNAUTHORIZED
    );
    for task in in_flight {
        assert_eq!(
            task.await.expect("task").expect("ok").status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // Three failures counted: locked out.
    assert_eq!(
        s.send("192.0.2.88", "ok").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Every request creates a record (its attempt is pending): once
/// `max_keys` clients have come and gone, a new client's failures are still
/// counted — the records that no longer matter make room.
#[tokio::test]
async fn a_full_table_makes_room_for_new_clients() {
    let s = setup_with(|b| b.max_keys(2));
    assert_eq!(s.send("198.51.100.1", "ok").await.status(), StatusCode::OK);
    assert_eq!(s.send("198.51.100.2", "ok").await.status(), StatusCode::OK);
    s.advance(1);
    for _ in 0..3 {
        s.send("198.51.100.3", "401").await;
    }
    assert_eq!(
        s.send("198.51.100.3", "ok").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A login handler that names its account: the body is `account outcome`
/// (`401` or `login`); a locked account answers the guard's refusal.
#[derive(Clone)]
struct AccountLogin;

impl Service<Request<String>> for AccountLogin {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        let (account, outcome) = req.body().split_once(' ').expect("account outcome");
        let guard = req
            .extensions()
            .get::<tollgate::lockout::AccountGuard>()
            .expect("per_account puts a guard in the request");
        if let Err(locked) = guard.check(account) {
            let response = locked.into_http_response();
            let (parts, body) = response.into_parts();
            return std::future::ready(Ok(Response::from_parts(
                parts,
                String::from_utf8_lossy(&body).into_owned(),
            )));
        }
        let mut response = Response::new(String::new());
        if outcome == "login" {
            response.extensions_mut().insert(LoginSucceeded);
        } else {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        std::future::ready(Ok(response))
    }
}

/// Failures from many addresses, each below its own limit, lock the account
/// they name; the locked account refuses new addresses, but not the ones
/// its owner logged in from, and the owner's login clears it.
#[tokio::test]
async fn failures_against_one_account_from_many_addresses_lock_the_account_not_its_owner() {
    let clock = Arc::new(AtomicU64::new(NOW));
    let now = Arc::clone(&clock);
    let layer = LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
        .failures(3)
        .window(Duration::from_secs(60))
        .backoff(Duration::from_secs(30))
        .max_backoff(Duration::from_secs(100))
        .per_account(true)
        .peer_addr_inserted(true)
        .clock(move || now.load(Ordering::SeqCst))
        .build()
        .expect("layer");
    let svc = layer.layer(AccountLogin);
    let login = |ip: &'static str, body: &'static str| {
        let svc = svc.clone();
        async move {
            use http_body_util::BodyExt;
            let res = svc.oneshot(request(ip, body)).await.expect("infallible");
            let (parts, body) = res.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            (
                parts.status,
                parts.headers,
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        }
    };
    // The owner logs in from home once: the address is known to the account.
    assert_eq!(login("198.51.100.1", "alice login").await.0, StatusCode::OK);
    // Three attackers, one wrong password each (no address reaches its own
    // limit of 3): the account is locked for 30 s.
    for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        assert_eq!(login(ip, "alice 401").await.0, StatusCode::UNAUTHORIZED);
    }
    // A fourth address is refused before the password is looked at.
    let (status, headers, body) = login("203.0.113.4", "alice 401").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "30");
    assert!(body.contains("abnormal-usage-detected"), "{body}");
    assert!(body.contains("\"reason\":\"account_locked_out\""), "{body}");
    // Another account, from the same address, is not locked.
    assert_eq!(
        login("203.0.113.4", "bob 401").await.0,
        StatusCode::UNAUTHORIZED
    );
    // The owner, from the address it logged in from, is not refused, and
    // its login clears the account's failures.
    assert_eq!(login("198.51.100.1", "alice login").await.0, StatusCode::OK);
    // The lockout in force stays for new addresses until it ends ...
    assert_eq!(
        login("203.0.113.5", "alice 401").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.fetch_add(30, Ordering::SeqCst);
    // ... then the count starts over: two failures do not lock it again.
    for ip in ["203.0.113.6", "203.0.113.7"] {
        assert_eq!(login(ip, "alice 401").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login("203.0.113.8", "alice 401").await.0,
        StatusCode::UNAUTHORIZED
    );
    // The third did: the second lockout doubles (60 s).
    let (status, headers, _) = login("203.0.113.9", "alice 401").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "60");
    // A known address stops being known after known_clients_for (30 days).
    clock.fetch_add(30 * 24 * 3600, Ordering::SeqCst);
    for ip in ["203.0.113.10", "203.0.113.11", "203.0.113.12"] {
        assert_eq!(login(ip, "alice 401").await.0, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login("198.51.100.1", "alice 401").await.0,
        StatusCode::TOO_MANY_REQUESTS,
        "an address known 30 days ago is not known any more"
    );
}

/// The account's lockout is bounded like any other: the back-off stops at
/// max_backoff, and an address keeps its own, separate count.
#[tokio::test]
async fn an_account_lockout_is_bounded_and_without_per_account_there_is_no_guard() {
    let clock = Arc::new(AtomicU64::new(NOW));
    let now = Arc::clone(&clock);
    let layer = LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
        .failures(1)
        .window(Duration::from_secs(60))
        .backoff(Duration::from_secs(30))
        .max_backoff(Duration::from_secs(100))
        .per_account(true)
        .peer_addr_inserted(true)
        .clock(move || now.load(Ordering::SeqCst))
        .build()
        .expect("layer");
    let svc = layer.layer(AccountLogin);
    let mut octet = 0;
    let mut lockouts = Vec::new();
    for _ in 0..5 {
        // One failure from a fresh address locks the account (failures 1) ...
        octet += 1;
        let ip: &'static str = Box::leak(format!("203.0.113.{octet}").into_boxed_str());
        let res = svc.clone().oneshot(request(ip, "carol 401")).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        // ... and the next fresh address is told for how long.
        octet += 1;
        let ip: &'static str = Box::leak(format!("203.0.113.{octet}").into_boxed_str());
        let res = svc.clone().oneshot(request(ip, "carol 401")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let secs: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        lockouts.push(secs);
        clock.fetch_add(secs, Ordering::SeqCst);
    }
    assert_eq!(lockouts, [30, 60, 100, 100, 100]);

    // Without per_account, the handler finds no guard.
    let layer = LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
        .peer_addr_inserted(true)
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|req: Request<String>| async move {
        let guard = req
            .extensions()
            .get::<tollgate::lockout::AccountGuard>()
            .is_some();
        Ok::<_, Infallible>(Response::new(guard.to_string()))
    }));
    let res = svc.oneshot(request("192.0.2.1", "")).await.unwrap();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&bytes[..], b"false");
}
