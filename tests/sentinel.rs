//! Redis Sentinel against real processes this test starts on loopback: a
//! primary, its replica and one Sentinel (`redis-server <conf> --sentinel`).
//! Limits and revocations go through a `redis+sentinel://` URL; then the
//! primary is frozen (SIGSTOP), Sentinel fails over to the replica, and the
//! same stores must follow to the new primary and count and revoke again.
//! Skipped, with one line, when `redis-server` is not on PATH.
#![allow(clippy::unwrap_used)]

mod redis_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use redis_support::{ok_service, prefix, raw};
use tollgate::auth::{RedisRevocations, Revocations};
use tollgate::config::{RateLimitConfig, RevocationConfig, from_toml};
use tollgate::rate_limit::store::RedisStore;
use tollgate::rate_limit::{KeyBy, OnStoreError, Quota, RateLimitLayer};
use tower::{Layer, ServiceExt};

/// The name the Sentinel monitors the primary under.
const SERVICE: &str = "mymaster";

/// The longest the stores may take to reach the new primary, from the freeze
/// (Sentinel's own part: 1 s to call the primary down, then the failover).
const RECOVERY: Duration = Duration::from_secs(15);

/// A process this test started; killed (even if frozen) on drop.
struct Proc {
    child: Child,
    port: u16,
}

impl Proc {
    fn spawn(port: u16, args: &[&str]) -> Self {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server {args:?}: {e}"));
        let proc = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server {args:?} did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proc
    }

    /// A data node: no persistence; a replica of `primary` if given. A
    /// replica's copy of the primary's data goes to `dir`.
    fn server(primary: Option<u16>, dir: &Path) -> Self {
        let port = free_port();
        let port_arg = port.to_string();
        let dir = dir.to_str().unwrap();
        let mut args = vec![
            "--port",
            &port_arg,
            "--dir",
            dir,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // A replica syncs at once, not after the default 5 s wait.
            "--repl-diskless-sync-delay",
            "0",
        ];
        let of = primary.map(|p| format!("127.0.0.1 {p}"));
        if let Some(of) = &of {
            args.extend(["--replicaof", of]);
        }
        Self::spawn(port, &args)
    }

    /// A Sentinel watching `primary` alone (quorum 1), quick to call it down.
    fn sentinel(primary: u16, dir: &Path) -> Self {
        let port = free_port();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {SERVICE} 1000\n\
                 sentinel failover-timeout {SERVICE} 10000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        Self::spawn(port, &[conf.to_str().unwrap(), "--sentinel"])
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory, removed on drop (a failed test too).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` every 50 ms for at most `limit`.
async fn until<F: Future<Output = bool>>(limit: Duration, mut probe: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if probe().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn info(url: &str, section: &str) -> String {
    let mut conn = raw(url).await;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap_or_default()
}

/// The Sentinel's view of the replicas: one line per replica, its flags.
async fn sentinel_replicas(sentinel: &Proc) -> Vec<String> {
    let mut conn = raw(&sentinel.url()).await;
    let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(SERVICE)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    replicas
        .into_iter()
        .map(|r| r.get("flags").cloned().unwrap_or_default())
        .collect()
}

/// The primary's port, as the Sentinel names it.
async fn sentinel_primary(sentinel: &Proc) -> Option<u16> {
    let mut conn = raw(&sentinel.url()).await;
    let (_, port): (String, String) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(SERVICE)
        .query_async(&mut conn)
        .await
        .ok()?;
    port.parse().ok()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_millis(300))
        .deny_cache(false)
}

/// Fail-closed: a 503 says the store did not answer.
fn layer(store: RedisStore) -> RateLimitLayer<RedisStore> {
    RateLimitLayer::builder("p", Quota::per_hour(4))
        .key(KeyBy::header(http::HeaderName::from_static("x-key")))
        .store(store)
        .on_store_error(OnStoreError::FailClosed)
        .build()
        .unwrap()
}

async fn status<S: tollgate::rate_limit::RateLimitStore>(
    layer: &RateLimitLayer<S>,
    key: &str,
) -> StatusCode {
    let req = Request::builder().header("x-key", key).body(()).unwrap();
    layer
        .layer(ok_service())
        .oneshot(req)
        .await
        .unwrap()
        .status()
}

/// Sends ten requests of `key`, alternating replicas: how many went through.
async fn admitted(
    a: &RateLimitLayer<RedisStore>,
    b: &RateLimitLayer<RedisStore>,
    key: &str,
) -> usize {
    let mut ok = 0;
    for i in 0..10 {
        let status = status(if i % 2 == 0 { a } else { b }, key).await;
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE, "the store failed");
        ok += usize::from(status == StatusCode::OK);
    }
    ok
}

async fn replica(url: &str, prefix: &str) -> Revocations {
    Revocations::new()
        .max_token_lifetime(Duration::from_secs(3600))
        .share(
            RedisRevocations::new(url)
                .prefix(prefix)
                .sync_interval(Duration::from_millis(100))
                .timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap()
}

fn revoked(set: &Revocations, jti: &str) -> bool {
    set.is_revoked(None, None, Some(jti), None, now())
}

async fn keys_on(url: &str, pattern: &str) -> Vec<String> {
    let mut conn = raw(url).await;
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bad_sentinel_url_is_a_config_error_without_the_password() {
    for url in [
        "redis+sentinel://:hunter2@127.0.0.1:1",
        "redis+sentinel://:hunter2@127.0.0.1:1/m/x",
        "rediss+sentinel://:hunter2@127.0.0.1:1/m",
    ] {
        let store = RedisStore::connect(url).await.unwrap_err();
        let revocations = Revocations::new()
            .share(RedisRevocations::new(url))
            .await
            .unwrap_err();
        let file = from_toml::<RateLimitConfig>(&format!(
            "default = {{ name = \"p\", per_hour = 4 }}\nredis = {{ url = \"{url}\" }}\n"
        ))
        .unwrap()
        .layer()
        .await
        .unwrap_err();
        for err in [store, revocations, file] {
            let text = err.to_string();
            assert!(text.contains("Sentinel URL"), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{url}: {text}");
        }
    }
    // Well formed, but no Sentinel answers: refused within the lookup's bound.
    let started = Instant::now();
    let err = RedisStore::connect("redis+sentinel://127.0.0.1:1/mymaster")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no Redis Sentinel at 127.0.0.1:1"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_revocations_follow_a_sentinel_failover() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: this test starts redis-server, which is not on PATH");
        return;
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("tollgate-sentinel-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let dir = dir.0.as_path();
    let primary = Proc::server(None, dir);
    let replica_node = Proc::server(Some(primary.port), dir);
    assert!(
        until(Duration::from_secs(5), || async {
            info(&replica_node.url(), "replication")
                .await
                .contains("master_link_status:up")
        })
        .await,
        "the replica did not sync with the primary"
    );
    let sentinel = Proc::sentinel(primary.port, dir);
    assert!(
        until(Duration::from_secs(10), || async {
            sentinel_replicas(&sentinel)
                .await
                .iter()
                .any(|flags| flags == "slave")
        })
        .await,
        "the Sentinel did not discover the replica"
    );
    let url = format!("redis+sentinel://127.0.0.1:{}/{SERVICE}", sentinel.port);

    // Through Sentinel: two replicas of a service share one burst, on the primary.
    let p = prefix("sentinel");
    let (a, b) = (layer(store(&url, &p).await), layer(store(&url, &p).await));
    assert_eq!(admitted(&a, &b, "before").await, 4, "one shared burst of 4");
    assert_eq!(keys_on(&primary.url(), &format!("{p}:*")).await.len(), 1);

    // A layer built from a configuration file with the same URL shares it.
    let file = from_toml::<RateLimitConfig>(&format!(
        "key = \"header\"\nkey_header = \"x-key\"\non_store_error = \"fail_closed\"\n\
         default = {{ name = \"p\", per_hour = 4 }}\n\
         redis = {{ url = \"{url}\", prefix = \"{p}\", timeout_ms = 300, deny_cache = false }}\n"
    ))
    .unwrap()
    .layer()
    .await
    .unwrap();
    assert_eq!(status(&file, "before").await, StatusCode::TOO_MANY_REQUESTS);

    // Revocations through Sentinel reach the other replica, one built from a
    // configuration file too.
    let rp = prefix("sentinel-revoked");
    let (ra, rb) = (replica(&url, &rp).await, replica(&url, &rp).await);
    let rc = from_toml::<RevocationConfig>(&format!(
        "redis_url = \"{url}\"\nprefix = \"{rp}\"\nsync_interval_ms = 100\n"
    ))
    .unwrap()
    .revocations(Duration::ZERO)
    .await
    .unwrap();
    ra.revoke_token("before", now() + 600);
    ra.sync_now().await.unwrap();
    assert!(
        until(Duration::from_secs(2), || async {
            revoked(&rb, "before") && revoked(&rc, "before")
        })
        .await,
        "a revocation made through Sentinel reached the other replicas"
    );

    // The primary freezes: Sentinel calls it down after 1 s and promotes the
    // replica; the stores must find the new primary by asking again.
    let replicated = keys_on(&replica_node.url(), &format!("{p}:*")).await;
    let frozen = Instant::now();
    primary.signal("-STOP");
    assert!(
        until(RECOVERY, || async {
            sentinel_primary(&sentinel).await == Some(replica_node.port)
        })
        .await,
        "Sentinel did not fail over to the replica"
    );
    let failed_over = frozen.elapsed();
    assert!(
        until(RECOVERY, || async {
            status(&a, "probe").await != StatusCode::SERVICE_UNAVAILABLE
                && status(&b, "probe").await != StatusCode::SERVICE_UNAVAILABLE
        })
        .await,
        "the rate-limit stores did not reach the new primary"
    );
    let limits_back = frozen.elapsed();
    assert_eq!(
        admitted(&a, &b, "after").await,
        4,
        "after the failover the replicas share one burst again"
    );
    let mut written = keys_on(&replica_node.url(), &format!("{p}:*")).await;
    written.retain(|key| !replicated.contains(key));
    assert_eq!(
        written.len(),
        2,
        "the probe and the key after, counted on the new primary"
    );

    ra.revoke_token("after", now() + 600);
    assert!(
        until(RECOVERY, || async { ra.sync_now().await.is_ok() }).await,
        "the revocations did not reach the new primary"
    );
    assert!(
        until(Duration::from_secs(2), || async { revoked(&rb, "after") }).await,
        "a revocation made after the failover reached the other replica"
    );
    assert!(revoked(&rb, "before"), "the earlier revocation is kept");
    // Both replicas listen on the new primary again (the old one is frozen:
    // its subscribers would never hear another message).
    let channel = format!("{rp}:db0:events");
    assert!(
        until(Duration::from_secs(3), || async {
            let mut conn = raw(&replica_node.url()).await;
            let (_, listeners): (String, usize) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            listeners == 2
        })
        .await,
        "the replicas subscribed again on the new primary"
    );
    let revocations_back = frozen.elapsed();
    eprintln!(
        "failover: Sentinel switched after {failed_over:?}; limits back after \
         {limits_back:?}; revocations back after {revocations_back:?}"
    );
    assert!(limits_back < RECOVERY && revocations_back < RECOVERY + Duration::from_secs(2));
    drop((a, b, file, ra, rb, rc));
    drop((sentinel, replica_node, primary));
}
