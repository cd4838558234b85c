//! Concurrency slots leased in Redis, against a `redis-server` this test
//! starts on a free port: replicas hold at most `max` of a caller together,
//! a slot given back on one replica is free on the other, a replica that
//! dies leaks its slots for at most one lease, Redis frozen makes each
//! replica decide alone without holding a request past the timeout, and
//! leases Redis lost are written back by their holders.

mod redis_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use redis_support::Server;
use tollgate::body::ResponseBody;
use tollgate::concurrency::{ConcurrencyLimitLayer, SharedSlots};
use tollgate::rate_limit::{KeyBy, PeerAddr};
use tower::{Layer, ServiceExt, service_fn};

const IP: &str = "192.0.2.61";

/// One replica: its own connection, its own local table.
async fn replica(
    url: &str,
    prefix: &str,
    lease: Duration,
    timeout: Duration,
) -> ConcurrencyLimitLayer {
    let slots = SharedSlots::connect(url)
        .await
        .expect("redis")
        .prefix(prefix)
        .lease(lease)
        .timeout(timeout);
    ConcurrencyLimitLayer::builder(2)
        .name("in-flight")
        .key(KeyBy::peer_ip())
        .peer_addr_inserted(true)
        .shared(slots)
        .build()
        .expect("layer")
}

/// A request of `IP`: its response, whose unread body holds the slot.
async fn call(layer: &ConcurrencyLimitLayer) -> Response<ResponseBody<Full<Bytes>>> {
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(IP.parse().expect("ip"), 50_000)));
    svc.oneshot(request).await.expect("infallible")
}

/// Polls (at most 5 s) until a request through `layer` is let in; the
/// response holding its slot.
async fn admitted_within(
    layer: &ConcurrencyLimitLayer,
    limit: Duration,
) -> Option<(Response<ResponseBody<Full<Bytes>>>, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let response = call(layer).await;
        if response.status() == StatusCode::OK {
            return Some((response, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn replicas_hold_at_most_max_of_a_caller_together() {
    let server = Server::started();
    let url = server.url();
    let a = replica(
        &url,
        "together",
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
    let b = replica(
        &url,
        "together",
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
    let first = call(&a).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = call(&b).await;
    assert_eq!(second.status(), StatusCode::OK);
    // Counted together: b's response says none is left.
    let left: Vec<_> = second.headers().get_all("ratelimit").iter().collect();
    assert_eq!(left, ["\"in-flight\";r=0"]);
    // Each replica holds one, below its own max of 2: Redis refuses both.
    for layer in [&a, &b] {
        let refused = call(layer).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "1");
    }
    // The slot a gives back (its body dropped) is free on b.
    drop(first);
    let (third, _) = admitted_within(&b, Duration::from_secs(5))
        .await
        .expect("b admits once a's slot is back");
    drop((second, third));
}

/// A replica that dies (its runtime gone: no renewal, no release) leaks
/// its slots for at most one lease.
#[test]
fn a_dead_replicas_slots_come_back_after_one_lease() {
    let server = Server::started();
    let url = server.url();
    let lease = Duration::from_millis(600);
    // The doomed replica, on a runtime of its own that is then dropped,
    // with its two responses leaked (never released).
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let doomed = replica(&url, "dead", lease, Duration::from_secs(1)).await;
            for _ in 0..2 {
                let response = call(&doomed).await;
                assert_eq!(response.status(), StatusCode::OK);
                std::mem::forget(response);
            }
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let survivor = replica(&url, "dead", lease, Duration::from_secs(1)).await;
        assert_eq!(
            call(&survivor).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let (response, waited) = admitted_within(&survivor, Duration::from_secs(5))
            .await
            .expect("the dead replica's slots came back");
        // One lease (600 ms) from the last renewal or acquisition, plus
        // polling.
        assert!(waited <= lease + Duration::from_millis(400), "{waited:?}");
        drop(response);
    });
}

/// Redis frozen: each replica decides alone (at most max of a caller
/// itself), no request waits longer than the timeout; thawed, the leases
/// are shared again.
#[tokio::test]
async fn a_frozen_redis_holds_no_request_and_each_replica_decides_alone() {
    let server = Server::started();
    let url = server.url();
    let timeout = Duration::from_millis(150);
    let a = replica(&url, "frozen", Duration::from_secs(10), timeout).await;
    let held = call(&a).await;
    assert_eq!(held.status(), StatusCode::OK);
    server.freeze();
    let started = Instant::now();
    let alone = call(&a).await;
    assert_eq!(alone.status(), StatusCode::OK, "decided alone");
    // The local table still holds the line: a third is refused at once.
    let refused = call(&a).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() < timeout + Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    server.thaw();
    drop((held, alone));
    // Thawed: shared again (b sees a's new lease).
    let b = replica(
        &url,
        "frozen",
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
    let (one, _) = admitted_within(&a, Duration::from_secs(5))
        .await
        .expect("a");
    let (two, _) = admitted_within(&b, Duration::from_secs(5))
        .await
        .expect("b");
    assert_eq!(call(&b).await.status(), StatusCode::TOO_MANY_REQUESTS);
    drop((one, two));
}

/// Redis restarted without persistence: every lease is lost, and the
/// replicas holding slots write theirs back with their next renewal (a
/// third of a lease), after which the caller is full again.
#[tokio::test]
async fn leases_redis_lost_are_written_back_by_their_holders() {
    let mut server = Server::started();
    let url = server.url();
    let lease = Duration::from_millis(900);
    let a = replica(&url, "restart", lease, Duration::from_secs(1)).await;
    let one = call(&a).await;
    let two = call(&a).await;
    assert_eq!(
        (one.status(), two.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    server.restart();
    let b = replica(&url, "restart", lease, Duration::from_secs(1)).await;
    // Within a lease, a's renewals put both leases back: b is refused.
    let started = Instant::now();
    let mut refused = false;
    while started.elapsed() < lease * 3 {
        let response = call(&b).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = true;
            break;
        }
        // Admitted while Redis held nothing: give it back at once.
        drop(response);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "a's leases were not written back");
    drop((one, two));
}

/// A `[concurrency.NAME]` table with `redis_url`: two layers built from it
/// (two replicas) share the caller's slots.
#[cfg(feature = "config")]
#[tokio::test]
async fn a_table_with_redis_url_builds_shared_slots() {
    let server = Server::started();
    let toml = format!(
        "[concurrency.in-flight]\nmax = 1\nkey = \"peer_ip\"\nredis_url = \"{}\"\n\
         prefix = \"table\"\nlease_ms = 5000\ntimeout_ms = 500\n",
        server.url()
    );
    let config = tollgate::config::TollgateConfig::from_toml(&toml).expect("config");
    let table = config.concurrency("in-flight").expect("table");
    let a = table.layer("in-flight").await.expect("a");
    let b = table.layer("in-flight").await.expect("b");
    let held = call(&a).await;
    assert_eq!(held.status(), StatusCode::OK);
    assert_eq!(call(&b).await.status(), StatusCode::TOO_MANY_REQUESTS);
    drop(held);
    assert!(admitted_within(&b, Duration::from_secs(5)).await.is_some());
}
