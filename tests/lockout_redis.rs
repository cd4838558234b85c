//! Lockouts shared by replicas through Redis, against a `redis-server` this
//! test starts on a free port: failures counted together, the bound a
//! client gets past it, and faults (frozen, restarted without persistence)
//! that never hold a request and fall back to counting per replica.

mod redis_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use redis_support::Server;
use tollgate::lockout::{LockoutLayer, SharedLockouts};
use tollgate::rate_limit::{KeyBy, PeerAddr, RateKey, TrustedProxies};
use tower::{Layer, ServiceExt};

const IP: &str = "192.0.2.44";
const OTHER_IP: &str = "192.0.2.45";
const FAILURES: u32 = 4;

/// One replica: its own connection to Redis and its own local state.
async fn replica(url: &str, prefix: &str, timeout: Duration) -> LockoutLayer {
    let shared = SharedLockouts::connect(url)
        .await
        .expect("redis")
        .prefix(prefix)
        .timeout(timeout);
    LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
        .name("login")
        .failures(FAILURES)
        .window(Duration::from_secs(60))
        .backoff(Duration::from_secs(30))
        .peer_addr_inserted(true)
        .shared(shared)
        .build()
        .expect("layer")
}

/// A failed login from `IP` through `layer`: its status.
async fn fail(layer: &LockoutLayer) -> StatusCode {
    fail_from(layer, IP).await
}

/// A failed login from `ip` through `layer`: its status.
async fn fail_from(layer: &LockoutLayer, ip: &str) -> StatusCode {
    let handler = tower::service_fn(|_req: Request<()>| async {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().expect("ip"), 50_000)));
    layer
        .layer(handler)
        .oneshot(request)
        .await
        .expect("infallible")
        .status()
}

/// How many failures of `ip` Redis holds now.
async fn in_redis(url: &str, prefix: &str, ip: &str) -> u64 {
    let key = RateKey::ip(ip.parse().expect("ip"), 64).to_store_key();
    let mut conn = redis_support::raw(url).await;
    redis::cmd("ZCARD")
        .arg(format!("{prefix}:lockout:{{login:{key}}}:f"))
        .query_async(&mut conn)
        .await
        .expect("ZCARD")
}

fn prefix(test: &str) -> String {
    redis_support::prefix(test)
}

#[tokio::test]
async fn replicas_count_a_clients_failures_together() {
    let server = Server::started();
    let url = server.url();
    let prefix = prefix("lockout-together");
    let a = replica(&url, &prefix, Duration::from_secs(2)).await;
    let b = replica(&url, &prefix, Duration::from_secs(2)).await;
    // Alternating replicas: per replica, 4 failures each would be needed
    // (8 attempts); together, the 4th locks the client out.
    for n in 1..FAILURES {
        let layer = if n % 2 == 1 { &a } else { &b };
        assert_eq!(fail(layer).await, StatusCode::UNAUTHORIZED);
        assert!(
            wait_count(&url, &prefix, IP, u64::from(n)).await,
            "failure {n} reached Redis"
        );
    }
    // The 4th, on b: Redis answers that the client is locked out.
    assert_eq!(fail(&b).await, StatusCode::UNAUTHORIZED);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = fail(&b).await;
    while status != StatusCode::TOO_MANY_REQUESTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = fail(&b).await;
    }
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "b refuses");
    // a learns it with its own next failure: at most one more attempt there.
    assert_eq!(fail(&a).await, StatusCode::UNAUTHORIZED);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = StatusCode::UNAUTHORIZED;
    let mut extra = 0;
    while status != StatusCode::TOO_MANY_REQUESTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = fail(&a).await;
        if status != StatusCode::TOO_MANY_REQUESTS {
            extra += 1;
        }
    }
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "a refuses");
    // Reports are asynchronous: a request sent before the previous report
    // landed may pass too (the in-flight allowance); here they are polled.
    assert!(extra <= 2, "{extra} extra attempts on a");
}

/// Polls Redis (for at most 5 s) until it holds `n` failures of `ip`.
async fn wait_count(url: &str, prefix: &str, ip: &str, n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if in_redis(url, prefix, ip).await == n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Redis frozen (SIGSTOP): no request waits for it, the replica counts the
/// failures itself and still locks the client out; thawed, failures reach
/// Redis again. Restarted without persistence, a lockout the replica
/// learned still holds.
#[tokio::test]
async fn a_frozen_or_emptied_redis_never_holds_a_request_and_the_lockout_still_works() {
    let mut server = Server::started();
    let url = server.url();
    let prefix = prefix("lockout-faults");
    let timeout = Duration::from_millis(200);
    let a = replica(&url, &prefix, timeout).await;

    server.freeze();
    for _ in 0..FAILURES {
        let started = Instant::now();
        assert_eq!(fail(&a).await, StatusCode::UNAUTHORIZED);
        // The report runs after the response, off the request's path.
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    }
    // Each report times out and is counted on this replica instead.
    let mut locked = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !locked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        locked = a.is_locked(&RateKey::ip(IP.parse().expect("ip"), 64));
    }
    assert!(locked, "counted locally while Redis was frozen");
    let started = Instant::now();
    assert_eq!(fail(&a).await, StatusCode::TOO_MANY_REQUESTS);
    assert!(started.elapsed() < timeout);
    server.thaw();

    // Thawed: another client's failure on the same replica reaches Redis
    // again, within 5 s.
    assert_eq!(fail_from(&a, OTHER_IP).await, StatusCode::UNAUTHORIZED);
    let mut reached = wait_count(&url, &prefix, OTHER_IP, 1).await;
    if !reached {
        // The first report after the thaw may still have timed out while
        // the connection recovered: one more failure must get through.
        assert_eq!(fail_from(&a, OTHER_IP).await, StatusCode::UNAUTHORIZED);
        reached = wait_count(&url, &prefix, OTHER_IP, 1).await;
    }
    assert!(reached, "failures reach Redis again after the thaw");

    // Restart without persistence: every key gone, and the lockout `a`
    // learned still refuses the client on `a`.
    server.restart();
    assert_eq!(fail(&a).await, StatusCode::TOO_MANY_REQUESTS);
}

/// Per-account failures from many addresses, spread over two replicas, are
/// counted together in Redis: the account is locked on both (each replica
/// learns it with its own next failure of the account), while no address
/// reached its own limit.
#[tokio::test]
async fn replicas_count_an_accounts_failures_together() {
    use tollgate::lockout::AccountGuard;
    let server = Server::started();
    let url = server.url();
    let prefix = prefix("lockout-account");
    let replica = |url: String, prefix: String| async move {
        let shared = SharedLockouts::connect(&url)
            .await
            .expect("redis")
            .prefix(&prefix)
            .timeout(Duration::from_secs(2));
        LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
            .name("login")
            .failures(FAILURES)
            .window(Duration::from_secs(60))
            .backoff(Duration::from_secs(30))
            .per_account(true)
            .peer_addr_inserted(true)
            .shared(shared)
            .build()
            .expect("layer")
    };
    let a = replica(url.clone(), prefix.clone()).await;
    let b = replica(url.clone(), prefix.clone()).await;
    // A login naming "target" from `ip`: 401, or the guard's 429.
    let attempt = |layer: &LockoutLayer, ip: String| {
        let handler = tower::service_fn(|req: Request<()>| async move {
            let guard = req.extensions().get::<AccountGuard>().expect("guard");
            let mut response = Response::new(String::new());
            *response.status_mut() = match guard.check("target") {
                Ok(()) => StatusCode::UNAUTHORIZED,
                Err(locked) => locked.into_http_response().status(),
            };
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip.parse().expect("ip"), 50_000)));
        let svc = layer.layer(handler);
        async move { svc.oneshot(request).await.expect("infallible").status() }
    };
    let mut octet = 0;
    let mut next_ip = || {
        octet += 1;
        format!("203.0.113.{octet}")
    };
    // FAILURES failures, one per address, alternating replicas.
    for n in 0..FAILURES {
        let layer = if n % 2 == 0 { &a } else { &b };
        assert_eq!(attempt(layer, next_ip()).await, StatusCode::UNAUTHORIZED);
    }
    // Both replicas end up refusing new addresses for the account, each
    // after at most two more attempts (its own report learns the lockout).
    for (name, layer) in [("a", &a), ("b", &b)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut extra = 0;
        loop {
            if attempt(layer, next_ip()).await == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            extra += 1;
            assert!(
                Instant::now() < deadline,
                "{name} never refused the account"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(extra <= 2, "{extra} extra attempts on {name}");
    }
}

/// The owner's login on one replica is known to the others: a replica that
/// learns the account's lockout from Redis learns with it where the owner
/// logged in from, and lets the owner in there too.
#[tokio::test]
async fn the_owners_login_on_one_replica_is_known_to_the_others() {
    use tollgate::lockout::{AccountGuard, LoginSucceeded};
    let server = Server::started();
    let url = server.url();
    let prefix = prefix("lockout-known");
    let replica = |url: String, prefix: String| async move {
        let shared = SharedLockouts::connect(&url)
            .await
            .expect("redis")
            .prefix(&prefix)
            .timeout(Duration::from_secs(2));
        LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
            .name("login")
            .failures(FAILURES)
            .window(Duration::from_secs(60))
            .backoff(Duration::from_secs(30))
            .per_account(true)
            .peer_addr_inserted(true)
            .shared(shared)
            .build()
            .expect("layer")
    };
    let a = replica(url.clone(), prefix.clone()).await;
    let b = replica(url.clone(), prefix.clone()).await;
    // A login naming "owned" from `ip`: 204 on success, 401 on failure, the
    // guard's status when the account is locked for this address.
    let attempt = |layer: &LockoutLayer, ip: &str, succeed: bool| {
        let handler = tower::service_fn(move |req: Request<()>| async move {
            let guard = req.extensions().get::<AccountGuard>().expect("guard");
            let mut response = Response::new(String::new());
            match guard.check("owned") {
                Err(locked) => *response.status_mut() = locked.into_http_response().status(),
                Ok(()) if succeed => {
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    response.extensions_mut().insert(LoginSucceeded);
                }
                Ok(()) => *response.status_mut() = StatusCode::UNAUTHORIZED,
            }
            Ok::<_, std::convert::Infallible>(response)
        });
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(PeerAddr(SocketAddr::new(ip.parse().expect("ip"), 50_000)));
        let svc = layer.layer(handler);
        async move { svc.oneshot(request).await.expect("infallible").status() }
    };
    const OWNER: &str = "198.51.100.20";
    // The owner logs in through a; the login reaches Redis off the path.
    assert_eq!(attempt(&a, OWNER, true).await, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Attackers through b only, one address each, until b refuses a new one.
    let mut locked = false;
    for i in 1..=(FAILURES + 4) {
        let ip = format!("203.0.113.{i}");
        if attempt(&b, &ip, false).await == StatusCode::TOO_MANY_REQUESTS {
            locked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(locked, "b never refused the account");
    // b never saw the owner log in, yet lets the owner in.
    assert_eq!(attempt(&b, OWNER, true).await, StatusCode::NO_CONTENT);
    assert_eq!(
        attempt(&b, "203.0.113.99", true).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
