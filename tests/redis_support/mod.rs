//! Real Redis servers for the Redis tests, on loopback: the shared server
//! (REDIS_URL, default redis://127.0.0.1:6379, or a `redis-server` from PATH
//! on a free port), dedicated servers a test may stop, and 3-primary Redis
//! Clusters built with `redis-cli --cluster create`. Every process a test
//! starts is killed when its handle drops.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;

pub mod faults;

pub fn ok_service() -> impl tower::Service<
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

/// Waits until something accepts connections on `port`, for at most 5 s.
fn wait_for_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A `redis-server` this test started.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn start_on(port: u16) -> Option<Self> {
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
        wait_for_port(port).then_some(server)
    }

    pub fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        Self::start_on(port)
    }

    /// Starts one or fails the test saying what to install.
    pub fn started() -> Self {
        Self::start().unwrap_or_else(|| {
            panic!(
                "this test starts its own redis-server: install Redis (apt-get install redis-server)"
            )
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn shared_url() -> &'static str {
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

/// Polls `done` every 10 ms for at most `limit`.
pub async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// A prefix no other test or run shares.
pub fn prefix(test: &str) -> String {
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

pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// How many clients the server behind `conn` has (`CLIENT LIST`), `conn`
/// included.
pub async fn client_count(conn: &redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    list.lines().count()
}

/// Waits up to 2 s until `conn` is the server's only client; fails with
/// `what` if another stays connected.
pub async fn only_client_left(conn: &redis::aio::MultiplexedConnection, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while client_count(conn).await > 1 {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port P such that P and P + 10,000 (its cluster bus) are free now;
/// distinct within this process.
fn cluster_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    for _ in 0..2_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// A Redis Cluster of three primaries on loopback, no replicas, with
/// `cluster-require-full-coverage no` (the other shards keep serving when a
/// node dies). Killed and its files removed on drop.
pub struct Cluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
}

impl Cluster {
    pub fn start() -> Self {
        for _attempt in 0..3 {
            if let Some(cluster) = Self::try_start() {
                return cluster;
            }
        }
        panic!(
            "cannot start a Redis Cluster on loopback: these tests need redis-server and \
             redis-cli 7 on PATH (apt-get install redis-server)"
        );
    }

    fn try_start() -> Option<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-cluster-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).ok()?;
        let mut cluster = Self {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            let port = cluster_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                .arg("--dir")
                .arg(&cluster.dir)
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-node-timeout", "2000"])
                .args(["--cluster-require-full-coverage", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            cluster.nodes.push((port, Some(child)));
        }
        for (port, _) in &cluster.nodes {
            if !wait_for_port(*port) {
                return None;
            }
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|(port, _)| format!("127.0.0.1:{port}")),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !created.success() {
            return None;
        }
        // Every node must see every slot served before tests start.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = cluster.nodes.iter().all(|(port, _)| {
                let info = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
                info.is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains("cluster_known_nodes:3")
                })
            });
            if ready {
                return Some(cluster);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].0
    }

    pub fn url(&self, node: usize) -> String {
        format!("redis://127.0.0.1:{}", self.port(node))
    }

    /// Kills one node (SIGKILL).
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The port of the node that owns `key`, as the cluster says.
    pub async fn owner(&self, key: &str) -> u16 {
        let mut conn = raw(&self.url(0)).await;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let slots: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Vec<redis::Value>>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|range| {
                let redis::Value::Array(items) = range else {
                    panic!("CLUSTER SLOTS: {range:?}")
                };
                let int = |v: &redis::Value| match v {
                    redis::Value::Int(n) => *n,
                    other => panic!("{other:?}"),
                };
                let redis::Value::Array(primary) = &items[2] else {
                    panic!("{items:?}")
                };
                (
                    int(&items[0]),
                    int(&items[1]),
                    (String::new(), int(&primary[1])),
                )
            })
            .collect();
        let (_, _, (_, port)) = slots
            .into_iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .unwrap();
        u16::try_from(port).unwrap()
    }

    /// The keys under `pattern` that node `node` holds.
    pub async fn keys_on(&self, node: usize, pattern: &str) -> Vec<String> {
        let mut conn = raw(&self.url(node)).await;
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Log lines, captured from the thread that runs the test (and, on a
/// current-thread runtime, its tasks).
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures `INFO` and above until the guard drops.
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Lines containing `text`.
    pub fn count(&self, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }

    /// Everything captured.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The tests' clock: the real time when the process started, fixed (Redis
/// trims shared sets by its own clock, `TIME`, so it must be near the truth).
pub fn now() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    })
}
