//! The Redis store against a real Redis: REDIS_URL (default
//! redis://127.0.0.1:6379); if nothing answers there, a `redis-server` from
//! PATH on a free loopback port. The outage test always starts its own server;
//! the version tests talk to a stand-in that reports whatever version they set.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tollgate::rate_limit::store::RedisStore;
use tollgate::rate_limit::{KeyBy, OnStoreError, Quota, RateLimitLayer};
use tower::{Layer, ServiceExt};

fn ok_service() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start_on(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        Self::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn shared_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let answers = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok();
        if answers {
            return url;
        }
        let server = Server::start().unwrap_or_else(|| {
            panic!("no Redis at {url} and no redis-server on PATH: install Redis (apt-get install redis-server) or set REDIS_URL")
        });
        let url = server.url();
        // Kept running for the rest of the test process.
        std::mem::forget(server);
        url
    })
}

/// A prefix no other test or run shares.
fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "tollgate-test:{test}:{nanos}:{}",
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_millis(500))
}

async fn status(layer: &RateLimitLayer<RedisStore>) -> (StatusCode, bool) {
    let res = layer
        .layer(ok_service())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    (res.status(), res.headers().contains_key("ratelimit"))
}

fn layer(store: RedisStore, quota: Quota) -> RateLimitLayer<RedisStore> {
    RateLimitLayer::builder("p", quota)
        .key(KeyBy::global())
        .store(store)
        .build()
        .unwrap()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_replicas_share_one_burst() {
    let p = prefix("replicas");
    let a = layer(store(shared_url(), &p).await, Quota::per_hour(5));
    let b = layer(store(shared_url(), &p).await, Quota::per_hour(5));
    let mut ok = 0;
    for i in 0..12 {
        let replica = if i % 2 == 0 { &a } else { &b };
        if status(replica).await.0 == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 5, "two replicas together admit exactly the burst");
}

#[tokio::test]
async fn replenishes_over_time() {
    let p = prefix("replenish");
    let store = store(shared_url(), &p).await.deny_cache(false);
    let layer = layer(store, Quota::per_second(10).burst(2));
    assert_eq!(status(&layer).await.0, StatusCode::OK);
    assert_eq!(status(&layer).await.0, StatusCode::OK);
    let res = layer
        .layer(ok_service())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    // One interval is 100 ms: wait for it (Redis keeps the time).
    tokio::time::sleep(Duration::from_millis(130)).await;
    assert_eq!(status(&layer).await.0, StatusCode::OK);
    assert_eq!(status(&layer).await.0, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn every_key_has_a_ttl_equal_to_its_time_to_full() {
    let p = prefix("ttl");
    let layer = RateLimitLayer::builder("p", Quota::per_minute(6).burst(3))
        .key(KeyBy::header(http::HeaderName::from_static("x-key")))
        .store(store(shared_url(), &p).await)
        .build()
        .unwrap();
    for i in 0..5 {
        for _ in 0..=i % 3 {
            let req = Request::builder()
                .header("x-key", format!("user{i}"))
                .body(())
                .unwrap();
            layer.layer(ok_service()).oneshot(req).await.unwrap();
        }
    }
    let mut conn = raw(shared_url()).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{p}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 5, "{keys:?}");
    for key in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // one request per 10 s; at most 3 spent: full again within 30 s
        assert!(ttl > 0 && ttl <= 30_000, "{key}: {ttl}");
    }
}

#[tokio::test]
async fn script_flush_mid_run_recovers_through_noscript() {
    let p = prefix("flush");
    let layer = layer(store(shared_url(), &p).await, Quota::per_hour(100));
    assert_eq!(status(&layer).await, (StatusCode::OK, true));
    let mut conn = raw(shared_url()).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status(&layer).await, (StatusCode::OK, true));
    assert_eq!(layer.store_failures(), 0);
}

#[tokio::test]
async fn prefixes_isolate_tenants() {
    let a = layer(
        store(shared_url(), &prefix("tenant-a")).await,
        Quota::per_hour(1),
    );
    let b = layer(
        store(shared_url(), &prefix("tenant-b")).await,
        Quota::per_hour(1),
    );
    assert_eq!(status(&a).await.0, StatusCode::OK);
    assert_eq!(status(&a).await.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status(&b).await.0, StatusCode::OK);
}

#[tokio::test]
async fn deny_cache_refuses_locally_until_redis_said() {
    let p = prefix("deny");
    let store = store(shared_url(), &p).await;
    let layer = layer(store, Quota::per_hour(2));
    for _ in 0..3 {
        status(&layer).await;
    }
    let before = layer.store().round_trips();
    for _ in 0..100 {
        assert_eq!(status(&layer).await.0, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(
        layer.store().round_trips(),
        before,
        "refusals came from the deny cache"
    );
    assert_eq!(layer.key_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_requests_admit_no_more_than_the_quota() {
    let p = prefix("flood");
    let a = layer(
        store(shared_url(), &p)
            .await
            .timeout(Duration::from_secs(5)),
        Quota::per_hour(100),
    );
    let b = layer(
        store(shared_url(), &p)
            .await
            .timeout(Duration::from_secs(5)),
        Quota::per_hour(100),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        let layer = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            layer
                .layer(ok_service())
                .oneshot(Request::new(()))
                .await
                .unwrap()
                .status()
        });
    }
    let mut ok = 0;
    let mut limited = 0;
    while let Some(status) = tasks.join_next().await {
        match status.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 100);
    assert_eq!(limited, 9_900);
    assert_eq!(a.store_failures() + b.store_failures(), 0);
}

#[tokio::test]
async fn redis_down_follows_the_policy_within_the_timeout_and_recovers() {
    let Some(mut server) = Server::start() else {
        panic!(
            "this test starts its own redis-server: install Redis (apt-get install redis-server)"
        );
    };
    let port = server.port;
    let p = prefix("outage");
    let open = layer(
        RedisStore::connect(&server.url())
            .await
            .unwrap()
            .prefix(&p)
            .timeout(Duration::from_millis(50)),
        Quota::per_hour(1000),
    );
    let closed = RateLimitLayer::builder("p", Quota::per_hour(1000))
        .key(KeyBy::global())
        .on_store_error(OnStoreError::FailClosed)
        .store(
            RedisStore::connect(&server.url())
                .await
                .unwrap()
                .prefix(&p)
                .timeout(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    assert_eq!(status(&open).await, (StatusCode::OK, true));
    assert_eq!(status(&closed).await, (StatusCode::OK, true));

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            status(&open).await,
            (StatusCode::OK, false),
            "fail open: allowed, no headers"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert_eq!(
            status(&closed).await,
            (StatusCode::SERVICE_UNAVAILABLE, false)
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    assert!(open.store_failures() >= 3);
    assert!(closed.store_failures() >= 3);

    let _server = Server::start_on(port).expect("restart redis-server on the same port");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if status(&open).await == (StatusCode::OK, true)
            && status(&closed).await == (StatusCode::OK, true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 10 s of Redis returning"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stand-in server on a free loopback port that answers `INFO` with `info`
/// and every other command with `+OK`: enough for `RedisStore::connect` to
/// meet a server of any version.
async fn fake_server(info: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = answer(socket, info).await;
            });
        }
    });
    url
}

/// Reads commands (arrays of bulk strings) and answers each; `None` when the
/// client hangs up or sends something else.
async fn answer(socket: tokio::net::TcpStream, info: &str) -> Option<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        read.read_line(&mut line).await.ok()?;
        let args: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
        let mut name = Vec::new();
        for i in 0..args {
            line.clear();
            read.read_line(&mut line).await.ok()?;
            let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
            let mut arg = vec![0; len + 2];
            read.read_exact(&mut arg).await.ok()?;
            if i == 0 {
                arg.truncate(len);
                name = arg;
            }
        }
        let reply = if name.eq_ignore_ascii_case(b"INFO") {
            format!("${}\r\n{info}\r\n", info.len())
        } else {
            "+OK\r\n".to_owned()
        };
        write.write_all(reply.as_bytes()).await.ok()?;
    }
}

#[tokio::test]
async fn connect_accepts_the_installed_redis() {
    let connected = RedisStore::connect(shared_url()).await;
    assert!(connected.is_ok(), "{:?}", connected.err());
    let mut conn = raw(shared_url()).await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .unwrap();
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(
        (parts[0], parts[1], parts[2]) >= RedisStore::MIN_REDIS_VERSION,
        "the installed Redis {version} is older than the minimum"
    );
}

#[tokio::test]
async fn connect_accepts_a_server_reporting_a_supported_version() {
    let url = fake_server("# Server\r\nredis_version:8.0.0\r\nredis_mode:standalone\r\n").await;
    let connected = RedisStore::connect(&url).await;
    assert!(connected.is_ok(), "{:?}", connected.err());
}

#[tokio::test]
async fn connect_refuses_redis_older_than_the_minimum() {
    let url = fake_server("# Server\r\nredis_version:4.0.14\r\nredis_mode:standalone\r\n").await;
    let err = RedisStore::connect(&url).await.unwrap_err();
    assert_eq!(err.setting(), "redis");
    assert!(err.reason().contains("4.0.14"), "{err}");
    assert!(err.reason().contains("5.0.0"), "{err}");
}

#[tokio::test]
async fn connect_refuses_a_server_whose_version_is_unreadable() {
    let url = fake_server("# Server\r\nredis_version:unknown\r\n").await;
    let err = RedisStore::connect(&url).await.unwrap_err();
    assert_eq!(err.setting(), "redis");
    assert!(err.reason().contains("redis_version"), "{err}");
    assert!(err.reason().contains("5.0.0"), "{err}");
}
