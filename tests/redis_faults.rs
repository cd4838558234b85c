//! The fault harness itself (a test that trusts a freeze or a restart must
//! know they happen), then the local-first store under those faults.
#![allow(clippy::unwrap_used)]

mod redis_support;

use std::time::{Duration, Instant};

use redis_support::Server;
use redis_support::faults::FaultProxy;

async fn ping(url: &str, within: Duration) -> bool {
    let attempt = async {
        let client = redis::Client::open(url).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(tokio::time::timeout(within, attempt).await, Ok(Some(_)))
}

#[tokio::test]
async fn the_harness_restarts_flushes_freezes_and_slows_a_server() {
    let mut server = Server::started();
    let mut conn = redis_support::raw(&server.url()).await;
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    server.flushall();
    let gone: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None, "FLUSHALL emptied the server");

    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    server.restart();
    let mut conn = redis_support::raw(&server.url()).await;
    let gone: Option<String> = redis::cmd("GET")
        .arg("k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None, "a restart without persistence loses every key");

    server.freeze();
    assert!(
        !ping(&server.url(), Duration::from_millis(300)).await,
        "a frozen server answers nothing"
    );
    server.thaw();
    assert!(
        ping(&server.url(), Duration::from_secs(2)).await,
        "a thawed server answers again"
    );

    let proxy = FaultProxy::start(server.port);
    assert!(ping(&proxy.url(), Duration::from_secs(2)).await);
    proxy.set_delay(Duration::from_millis(150));
    let started = Instant::now();
    assert!(ping(&proxy.url(), Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the proxy delays"
    );
    proxy.set_delay(Duration::ZERO);
    proxy.set_blackhole(true);
    assert!(
        !ping(&proxy.url(), Duration::from_millis(300)).await,
        "a black hole answers nothing"
    );
}
