//! Revocations shared by replicas through a real Redis (REDIS_URL, default
//! redis://127.0.0.1:6379, or a `redis-server` from PATH): each replica is a
//! `Revocations` behind its own `JwtAuthLayer`, sharing a prefix no other
//! test uses. Tests that stop the server or count its clients start their
//! own.
#![allow(clippy::unwrap_used)]

mod common;
mod redis_support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use common::{AUDIENCE, ISSUER, SECRET, mint};
use http::{Request, Response, StatusCode, header};
use jsonwebtoken::Algorithm;
use redis_support::faults::FaultProxy;
use redis_support::{Logs, Server, client_count, now, only_client_left, prefix, raw, shared_url};
use serde_json::{Value, json};
use tollgate::auth::{JwtAuthLayer, Key, RedisRevocations, Revocations};
use tower::{Layer, ServiceExt, service_fn};

/// Claims that pass the layer's rules at [`now`].
fn good_claims() -> Value {
    json!({
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now() - 10,
        "exp": now() + 3600,
    })
}

/// A replica's revocations, on the tests' fixed clock.
async fn replica(
    url: &str,
    prefix: &str,
    redis: impl FnOnce(RedisRevocations) -> RedisRevocations,
) -> Revocations {
    Revocations::new()
        .max_token_lifetime(Duration::from_secs(3600))
        .clock(now)
        .share(redis(RedisRevocations::new(url).prefix(prefix)))
        .await
        .unwrap()
}

fn layer(revocations: &Revocations) -> JwtAuthLayer<Value> {
    JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .bearer()
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(now)
        .cache(100)
        .revocations(revocations.clone())
        .build()
        .unwrap()
}

async fn status(layer: &JwtAuthLayer<Value>, token: &str) -> StatusCode {
    let service = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let req = Request::builder()
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap();
    service.oneshot(req).await.unwrap().status()
}

fn token(jti: &str, sub: &str, iat: u64) -> String {
    let mut claims = good_claims();
    claims["jti"] = json!(jti);
    claims["sub"] = json!(sub);
    claims["iat"] = json!(iat);
    mint(Algorithm::HS256, &claims)
}

fn exp() -> u64 {
    good_claims()["exp"].as_u64().unwrap()
}

/// Polls `refused` every millisecond for at most `limit`; the time it took.
async fn refused_within(
    limit: Duration,
    layer: &JwtAuthLayer<Value>,
    token: &str,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if status(layer, token).await == StatusCode::UNAUTHORIZED {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_is_refused_by_the_other_within_a_second() {
    let p = prefix("revoke-jti");
    let (a, b) = (
        replica(shared_url(), &p, |r| r).await,
        replica(shared_url(), &p, |r| r).await,
    );
    let (layer_a, layer_b) = (layer(&a), layer(&b));
    let t = token("session-1", "alice", now() - 10);
    let other = token("session-2", "alice", now() - 10);
    assert_eq!(status(&layer_b, &t).await, StatusCode::OK, "cached on B");
    a.revoke_token("session-1", exp());
    assert_eq!(
        status(&layer_a, &t).await,
        StatusCode::UNAUTHORIZED,
        "at once on A"
    );
    // B hears it by pub/sub; the periodic read (500 ms) is the fallback.
    let took = refused_within(Duration::from_secs(1), &layer_b, &t)
        .await
        .expect("B refuses the token within 1 s");
    eprintln!("jti revocation reached the other replica (pub/sub) in {took:?}");
    assert_eq!(
        status(&layer_b, &other).await,
        StatusCode::OK,
        "another session of alice"
    );
    assert_eq!(a.sync_failures() + b.sync_failures(), 0);
    assert_eq!(a.unsent(), 0);
}

#[tokio::test]
async fn a_subject_revoked_on_one_replica_refuses_its_older_tokens_on_the_other() {
    let p = prefix("revoke-sub");
    let (a, b) = (
        replica(shared_url(), &p, |r| r).await,
        replica(shared_url(), &p, |r| r).await,
    );
    let layer_b = layer(&b);
    let old = token("s1", "bob", now() - 100);
    let newer = token("s2", "bob", now());
    assert_eq!(status(&layer_b, &old).await, StatusCode::OK);
    a.revoke_subject(Some(ISSUER), "bob", now() - 1);
    // Explicit syncs instead of waiting: A's write, then B's read.
    a.sync_now().await.unwrap();
    b.sync_now().await.unwrap();
    assert_eq!(status(&layer_b, &old).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&layer_b, &newer).await,
        StatusCode::OK,
        "issued after the cut-off"
    );
    assert!(
        !b.is_revoked(Some("https://other"), Some("bob"), None, Some(1), now()),
        "another issuer"
    );
}

#[tokio::test]
async fn a_replica_started_after_the_revocation_refuses_at_its_first_request() {
    let p = prefix("restart");
    let a = replica(shared_url(), &p, |r| r).await;
    a.revoke_token("s1", exp());
    a.revoke_subject(Some(ISSUER), "carol", now() - 1);
    a.sync_now().await.unwrap();
    drop(a);
    // The restarted replica: `share` reads the set before returning.
    let b = replica(shared_url(), &p, |r| r.pubsub(false)).await;
    let layer_b = layer(&b);
    assert_eq!(
        status(&layer_b, &token("s1", "dave", now() - 10)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&layer_b, &token("s9", "carol", now() - 10)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&layer_b, &token("s8", "dave", now() - 10)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_pubsub_a_replica_converges_by_the_periodic_read() {
    let p = prefix("no-pubsub");
    let a = replica(shared_url(), &p, |r| r).await;
    let b = replica(shared_url(), &p, |r| {
        r.pubsub(false).sync_interval(Duration::from_millis(200))
    })
    .await;
    let layer_b = layer(&b);
    let t = token("s1", "erin", now() - 10);
    assert_eq!(status(&layer_b, &t).await, StatusCode::OK);
    a.revoke_token("s1", exp());
    a.sync_now().await.unwrap();
    let took = refused_within(Duration::from_secs(1), &layer_b, &t)
        .await
        .expect("the periodic read brings the revocation within one interval");
    eprintln!("jti revocation reached a replica without pub/sub in {took:?} (interval 200 ms)");
}

#[tokio::test]
async fn a_missed_message_is_caught_up_by_the_version_check() {
    let p = prefix("missed");
    let b = replica(shared_url(), &p, |r| {
        r.sync_interval(Duration::from_millis(50))
    })
    .await;
    let layer_b = layer(&b);
    let t = token("s1", "frank", now() - 10);
    // A revocation written to the set, its message lost (as if published
    // while B's subscription was down): the counter moves, nothing arrives.
    let mut conn = raw(shared_url()).await;
    let member = format!("{} [\"t\",\"s1\"]", exp() + 60);
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(format!("{p}:entries"))
        .arg(exp() + 60)
        .arg(&member)
        .cmd("INCR")
        .arg(format!("{p}:version"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        refused_within(Duration::from_secs(1), &layer_b, &t)
            .await
            .is_some()
    );
}

#[tokio::test]
async fn redis_down_revocations_still_apply_here_failures_are_counted_and_sent_on_recovery() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let mut server = Server::started();
    let url = server.url();
    let p = prefix("outage");
    let a = replica(&url, &p, |r| {
        r.sync_interval(Duration::from_millis(20))
            .timeout(Duration::from_millis(200))
    })
    .await;
    let layer_a = layer(&a);
    let t = token("s1", "gina", now() - 10);
    assert_eq!(status(&layer_a, &t).await, StatusCode::OK);
    server.stop();
    a.revoke_token("s1", exp());
    assert_eq!(
        status(&layer_a, &t).await,
        StatusCode::UNAUTHORIZED,
        "local at once"
    );
    let r = a.sync_now().await;
    assert!(r.is_err());
    // Several failed ticks.
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.sync_failures() < 5 {
        assert!(
            Instant::now() < deadline,
            "failures are counted: {}",
            a.sync_failures()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.unsent(), 1, "kept for when Redis answers");
    assert_eq!(
        logs.count("cannot sync revocations with Redis"),
        1,
        "one warning per 10 s: {}",
        logs.text()
    );
    assert!(!logs.text().contains(&t), "no token in the logs");
    // Redis back on the same port: the queued revocation is sent.
    let _server = Server::start_on(server.port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.sync_now().await.is_err() || a.unsent() > 0 {
        assert!(Instant::now() < deadline, "recovers");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        logs.count("revocations sync with Redis again"),
        1,
        "{}",
        logs.text()
    );
    let b = replica(&url, &p, |r| r).await;
    assert_eq!(
        status(&layer(&b), &t).await,
        StatusCode::UNAUTHORIZED,
        "made during the outage, known to a new replica"
    );
}

#[tokio::test]
async fn dropping_every_clone_ends_the_task_and_its_connections() {
    let server = Server::started();
    let conn = raw(&server.url()).await;
    let clients = || client_count(&conn);
    let a = replica(&server.url(), &prefix("drop"), |r| {
        r.sync_interval(Duration::from_millis(20))
    })
    .await;
    let layer_a = layer(&a);
    assert_eq!(
        clients().await,
        3,
        "this test's, the set's and its subscription"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(clients().await, 3, "the layer's clone keeps the set alive");
    drop(layer_a);
    only_client_left(&conn, "the set's connections outlived it").await;
}

#[test]
fn sharing_outside_a_runtime_is_a_config_error() {
    let future = Revocations::new().share(RedisRevocations::new(shared_url()));
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let std::task::Poll::Ready(Err(err)) = future.as_mut().poll(&mut cx) else {
        panic!("outside a runtime, share answers at once with an error");
    };
    assert_eq!(err.setting(), "revocation");
    assert!(err.reason().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn sharing_refuses_an_unreachable_redis_and_a_cluster_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Revocations::new()
        .share(RedisRevocations::new(format!("redis://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(err.reason().contains("cannot connect"), "{err}");
    let err = Revocations::new()
        .share(RedisRevocations::new(
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
        ))
        .await
        .unwrap_err();
    assert!(err.reason().contains("Cluster"), "{err}");
    let shared = replica(shared_url(), &prefix("twice"), |r| r).await;
    let err = shared
        .share(RedisRevocations::new(shared_url()))
        .await
        .unwrap_err();
    assert!(err.reason().contains("already shared"), "{err}");
}

#[tokio::test]
async fn the_configuration_file_shares_revocations_through_redis() {
    use tollgate::config::TollgateConfig;
    let p = prefix("config");
    let text = format!(
        "[auth]\nsources = [\"bearer\"]\nissuers = [\"{ISSUER}\"]\naudiences = [\"{AUDIENCE}\"]\n\
         keys = [{{ type = \"hmac\", secret = \"{}\" }}]\n\
         [auth.revocation]\nredis_url = \"{}\"\nprefix = \"{p}\"\nmax_token_lifetime_secs = 900\n",
        std::str::from_utf8(SECRET).unwrap(),
        shared_url()
    );
    let config = TollgateConfig::from_toml(&text).unwrap();
    let layer = config.auth.unwrap().layer::<Value>().await.unwrap();
    let revocations = layer
        .revocations()
        .expect("the table gives the layer revocations");
    assert!(revocations.is_shared());
    let other = replica(shared_url(), &p, |r| r).await;
    other.revoke_token("from-elsewhere", 4_000_000_000);
    other.sync_now().await.unwrap();
    revocations.sync_now().await.unwrap();
    assert!(revocations.is_revoked(None, None, Some("from-elsewhere"), None, now()));
}

/// Polls `done` every 5 ms for at most `limit`; the time it took.
async fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Issue 22: the write script trimmed the shared set by the writer's clock,
/// so a replica whose clock ran ahead dropped live revocations from Redis.
/// The set is trimmed by Redis's own clock (`TIME`).
#[tokio::test]
async fn a_replica_whose_clock_runs_ahead_does_not_trim_live_revocations() {
    let p = prefix("clock-ahead");
    let a = replica(shared_url(), &p, |r| r).await;
    a.revoke_token("live", exp());
    a.sync_now().await.unwrap();
    let ahead = Revocations::new()
        .clock(|| now() + 30 * 24 * 3600)
        .share(RedisRevocations::new(shared_url()).prefix(&p))
        .await
        .unwrap();
    ahead.revoke_token("later", now() + 60 * 24 * 3600);
    ahead.sync_now().await.unwrap();
    let fresh = replica(shared_url(), &p, |r| r).await;
    assert!(
        fresh.is_revoked(None, None, Some("live"), None, now()),
        "the live revocation is still in Redis"
    );
    assert!(fresh.is_revoked(None, None, Some("later"), None, now()));
}

/// Issue 22: the pub/sub channel ignored the database number, so stores on
/// two databases of one server applied each other's revocations. Channels
/// are scoped by database and prefix; the shared default prefix is warned
/// about once.
#[tokio::test]
async fn stores_on_two_databases_or_two_prefixes_do_not_see_each_others_revocations() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let server = Server::started();
    let db = |n: u8| format!("{}/{n}", server.url());
    let p = prefix("scoped");
    // Pub/sub only: the periodic read would not run during the test.
    let slow = |r: RedisRevocations| r.sync_interval(Duration::from_secs(3600));
    let db1 = replica(&db(1), &p, slow).await;
    let db2 = replica(&db(2), &p, slow).await;
    let db2_writer = replica(&db(2), &p, slow).await;
    let other = replica(&db(1), &format!("{p}-other"), slow).await;
    let other_writer = replica(&db(1), &format!("{p}-other"), slow).await;
    db1.revoke_token("db1-only", exp());
    db1.sync_now().await.unwrap();
    // Markers published after db 1's revocation: one connection delivers
    // messages in order, so once a marker is in, db 1's would be too.
    db2_writer.revoke_token("db2-marker", exp());
    db2_writer.sync_now().await.unwrap();
    other_writer.revoke_token("other-marker", exp());
    other_writer.sync_now().await.unwrap();
    let seen = |set: &Revocations, jti: &str| set.is_revoked(None, None, Some(jti), None, now());
    within(Duration::from_secs(2), || seen(&db2, "db2-marker"))
        .await
        .expect("db 2's own revocation arrives");
    within(Duration::from_secs(2), || seen(&other, "other-marker"))
        .await
        .expect("the other prefix's own revocation arrives");
    assert!(!seen(&db2, "db1-only"), "db 2 applied db 1's revocation");
    assert!(!seen(&other, "db1-only"), "another prefix applied it");
    other.sync_now().await.unwrap();
    assert!(!seen(&other, "db1-only"));
    assert!(seen(&db1, "db1-only"));
    // The default prefix, shared by every service on the server: a warning
    // when the set is shared.
    assert_eq!(logs.count("default revocation prefix"), 0);
    let _d = Revocations::new()
        .share(RedisRevocations::new(db(3)))
        .await
        .unwrap();
    assert_eq!(
        logs.count("default revocation prefix"),
        1,
        "{}",
        logs.text()
    );
}

/// Issue 22: after Redis lost its data the counter restarted below what
/// every replica had seen, so a revocation whose message a replica missed
/// was never applied there. Replica B misses it (its connections are
/// black-holed), Redis loses everything (`lose`), B's network comes back:
/// A, which still holds the revocation, writes it back, and B applies it.
/// Returns how long B took once its network was back.
async fn a_missed_revocation_survives(lose: impl FnOnce(&mut Server)) -> Duration {
    let mut server = Server::started();
    let proxy = FaultProxy::start(server.port);
    let p = prefix("lost");
    let fast = |r: RedisRevocations| {
        r.sync_interval(Duration::from_millis(50))
            .timeout(Duration::from_millis(200))
    };
    let a = replica(&server.url(), &p, fast).await;
    let b = replica(&proxy.url(), &p, fast).await;
    // B has seen a few revocations: its counter is ahead of an empty Redis.
    for i in 0..5 {
        a.revoke_token(&format!("seen-{i}"), exp());
    }
    within(Duration::from_secs(2), || {
        b.is_revoked(None, None, Some("seen-4"), None, now())
    })
    .await
    .expect("B is in sync");
    proxy.set_dropping(true);
    a.revoke_token("missed", exp());
    a.sync_now().await.unwrap();
    lose(&mut server);
    proxy.set_dropping(false);
    proxy.cut();
    let t = token("missed", "hana", now() - 10);
    refused_within(Duration::from_secs(5), &layer(&b), &t)
        .await
        .expect("the missed revocation reaches B after Redis lost it")
}

#[tokio::test]
async fn a_missed_revocation_is_applied_after_a_restart_without_persistence() {
    let took = a_missed_revocation_survives(Server::restart).await;
    eprintln!("missed revocation applied {took:?} after a restart (interval 50 ms)");
}

#[tokio::test]
async fn a_missed_revocation_is_applied_after_flushall() {
    let took = a_missed_revocation_survives(|server| server.flushall()).await;
    eprintln!("missed revocation applied {took:?} after FLUSHALL (interval 50 ms)");
}
