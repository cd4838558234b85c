//! Limits charged by cost, shared by replicas through Redis, against a
//! `redis-server` this test starts on a free port: exact mode spends
//! exactly the bucket across replicas, refunds and debts reach the other
//! replicas, local-first replicas together never spend more than the
//! bucket, a frozen Redis holds no charge past the timeout, and charges
//! recover after a restart.

mod redis_support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use redis_support::Server;
use tollgate::rate_limit::store::RedisStore;
use tollgate::rate_limit::{ChargeErrorKind, Cost, KeyBy, OnStoreError, Quota, RateLimitLayer};
use tower::{Layer, ServiceExt, service_fn};

/// What the handler did with its charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The door refused (the handler never ran).
    Door,
    /// The estimate was charged.
    Charged,
    /// The estimate was refused.
    Refused(ChargeErrorKind),
}

/// One request through `layer`: the door's unit, then `estimate` more,
/// then (if given) settled at `actual` in all.
async fn spend(layer: &RateLimitLayer<RedisStore>, estimate: u32, actual: Option<u32>) -> Outcome {
    let svc = layer.layer(service_fn(move |req: Request<()>| async move {
        let cost = req.extensions().get::<Cost>().cloned().expect("handle");
        let status = match cost.charge(estimate).await {
            Ok(_) => {
                if let Some(actual) = actual {
                    cost.settle(actual).await;
                }
                "charged".to_owned()
            }
            Err(e) => format!("{:?}", e.kind()),
        };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(status))))
    }));
    let res = svc.oneshot(Request::new(())).await.expect("call");
    if res.status() == StatusCode::TOO_MANY_REQUESTS {
        return Outcome::Door;
    }
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    match &body[..] {
        b"charged" => Outcome::Charged,
        b"Limited" => Outcome::Refused(ChargeErrorKind::Limited),
        b"TooCostly" => Outcome::Refused(ChargeErrorKind::TooCostly),
        b"Unavailable" => Outcome::Refused(ChargeErrorKind::Unavailable),
        other => panic!("unexpected body {other:?}"),
    }
}

fn layer(store: RedisStore, burst: u32, on_error: OnStoreError) -> RateLimitLayer<RedisStore> {
    // No replenishment within a test: every unit counts.
    RateLimitLayer::builder("cost", Quota::per_hour(burst).burst(burst))
        .key(KeyBy::global())
        .charged_by_handler(burst)
        .on_store_error(on_error)
        .store(store)
        .build()
        .expect("layer")
}

async fn exact(url: &str, prefix: &str, timeout: Duration) -> RedisStore {
    RedisStore::connect(url)
        .await
        .expect("redis")
        .prefix(prefix)
        .timeout(timeout)
}

#[tokio::test]
async fn exact_replicas_spend_exactly_the_bucket_refunds_and_debts_included() {
    let server = Server::started();
    let url = server.url();
    let timeout = Duration::from_secs(2);
    let a = layer(
        exact(&url, "exact", timeout).await,
        20,
        OnStoreError::FailClosed,
    );
    let b = layer(
        exact(&url, "exact", timeout).await,
        20,
        OnStoreError::FailClosed,
    );
    // a: 1 + 5 = 6 (14 left); b: 1 + 5 = 6 (8 left).
    assert_eq!(spend(&a, 5, None).await, Outcome::Charged);
    assert_eq!(spend(&b, 5, None).await, Outcome::Charged);
    // a: 1 + 9 does not fit 8 (door: 7 left, 9 refused; nothing of it spent).
    assert_eq!(
        spend(&a, 9, None).await,
        Outcome::Refused(ChargeErrorKind::Limited)
    );
    // b: estimated 1 + 6, cost 2 in all: 5 back (7 − 7 + 5 = 5 left).
    assert_eq!(spend(&b, 6, Some(2)).await, Outcome::Charged);
    // a sees b's refund: 1 + 4 = 5 fits exactly.
    assert_eq!(spend(&a, 4, None).await, Outcome::Charged);
    assert_eq!(spend(&b, 0, None).await, Outcome::Door);
    assert_eq!(spend(&a, 0, None).await, Outcome::Door);
}

#[tokio::test]
async fn a_debt_settled_on_one_replica_is_refused_on_the_other() {
    let server = Server::started();
    let url = server.url();
    let timeout = Duration::from_secs(2);
    let a = layer(
        exact(&url, "debt", timeout).await,
        10,
        OnStoreError::FailClosed,
    );
    let b = layer(
        exact(&url, "debt", timeout).await,
        10,
        OnStoreError::FailClosed,
    );
    // a: 1 + 6 = 7 (3 left), then 10 in all: 3 owed (0 left).
    assert_eq!(spend(&a, 6, Some(10)).await, Outcome::Charged);
    // Another request that costs 10 in all: 1 at the door is refused.
    assert_eq!(spend(&b, 0, None).await, Outcome::Door);
    // The key's TTL covers the debt: Redis keeps it as long as it matters.
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("debt:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("pttl");
    // 10 units of 6 minutes each: about an hour (a bucket's refill).
    assert!(ttl > 3_500_000, "ttl {ttl} ms");
}

#[tokio::test]
async fn local_first_replicas_together_never_spend_more_than_the_bucket() {
    let server = Server::started();
    let url = server.url();
    let local_first = || async {
        RedisStore::connect(&url)
            .await
            .expect("redis")
            .prefix("local-first")
            .timeout(Duration::from_millis(500))
            .local_first(Duration::from_millis(20))
    };
    let replicas = [
        layer(local_first().await, 60, OnStoreError::FailClosed),
        layer(local_first().await, 60, OnStoreError::FailClosed),
        layer(local_first().await, 60, OnStoreError::FailClosed),
    ];
    // Charges of 1 + 0..3 units in turn, until every replica is refused at
    // the door or the charge three times running.
    let mut spent = 0;
    let mut refused_in_a_row = 0;
    for i in 0..400u32 {
        let estimate = i % 4;
        match spend(&replicas[i as usize % 3], estimate, None).await {
            Outcome::Charged => {
                spent += 1 + estimate;
                refused_in_a_row = 0;
            }
            Outcome::Refused(ChargeErrorKind::Limited) => {
                spent += 1;
                refused_in_a_row += 1;
            }
            Outcome::Door => refused_in_a_row += 1,
            other => panic!("{other:?}"),
        }
        if refused_in_a_row >= 6 {
            break;
        }
        if i % 10 == 0 {
            // Let syncs run.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eprintln!("three local-first replicas spent {spent} of 60 units");
    assert!(
        spent <= 60,
        "three local-first replicas spent {spent} units of a bucket of 60"
    );
    // And they did not give most of it away by refusing early.
    assert!(spent >= 45, "only {spent} of 60 units spent");
}

#[tokio::test]
async fn a_frozen_redis_holds_no_charge_past_the_timeout_and_charges_recover_after_a_restart() {
    let mut server = Server::started();
    let url = server.url();
    let timeout = Duration::from_millis(200);
    let closed = layer(
        exact(&url, "frozen", timeout).await,
        10,
        OnStoreError::FailClosed,
    );
    let open = layer(
        exact(&url, "frozen", timeout).await,
        10,
        OnStoreError::FailOpen,
    );
    assert_eq!(spend(&closed, 3, None).await, Outcome::Charged);
    server.freeze();
    let started = Instant::now();
    // The door itself fails closed (503) or open; a charge behind an open
    // door follows the same policy.
    assert_eq!(spend(&open, 3, None).await, Outcome::Charged);
    let waited = started.elapsed();
    // Two calls (the door's and the charge's), each given up at the timeout.
    assert!(
        waited < timeout * 2 + Duration::from_millis(150),
        "a frozen Redis held the request {waited:?}"
    );
    server.thaw();
    // Thawed: 10 − 4 = 6 left; what failed open was never spent.
    assert_eq!(spend(&closed, 5, None).await, Outcome::Charged);
    assert_eq!(spend(&closed, 0, None).await, Outcome::Door);
    // A restart without persistence forgets the bucket: once the
    // connection is back, charges are decided again (`closed` still holds
    // Redis's last denial in its deny cache until the time Redis gave; a
    // replica that was never refused asks Redis at once).
    server.restart();
    let mut charged = false;
    for _ in 0..50 {
        if spend(&open, 5, None).await == Outcome::Charged {
            charged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(charged, "charges did not recover after the restart");
    assert_eq!(spend(&closed, 0, None).await, Outcome::Door);
}
