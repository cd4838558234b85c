//! Soak and fault run against the GraphQL example, on loopback only, for a
//! bounded time. Run through `scripts/soak.sh [SECONDS]` (default 180), which
//! builds both binaries in release mode.
//!
//! The example is started with `127.0.0.1` as a trusted proxy, so that the
//! driver can present 1,000,000 rotating client addresses in
//! `X-Forwarded-For`. Traffic mixes anonymous requests, valid, expired and
//! garbage tokens, and clients that disconnect mid-request. Every few
//! seconds the driver samples the server's RSS and its limiter key count
//! (from `/metrics`). It fails if any response is a 5xx, if the key count
//! passes its bound, or if RSS keeps growing in the second half of the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

const SECRET: &str = "soak-test-secret-of-at-least-32-bytes!!";
const ADDR: &str = "127.0.0.1:4190";
const CLIENT_IPS: u64 = 1_000_000;
const WORKERS: u64 = 32;

#[derive(serde::Serialize)]
struct Claims {
    sub: String,
    iss: &'static str,
    aud: &'static str,
    exp: u64,
}

fn token(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: sub.into(),
            iss: "tollgate-example",
            aud: "tollgate-example",
            exp,
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    ok: AtomicU64,
    limited: AtomicU64,
    unauthorized: AtomicU64,
    server_errors: AtomicU64,
    other: AtomicU64,
    disconnects: AtomicU64,
    client_errors: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(180), |s| s.parse())?;
    let server_bin = std::env::current_exe()?.with_file_name("graphql");
    let mut server = std::process::Command::new(&server_bin)
        .env("TOLLGATE_ADDR", ADDR)
        .env("TOLLGATE_SECRET", SECRET)
        .env("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32")
        .env("TOLLGATE_ANON_PER_MIN", "60")
        .env("TOLLGATE_ANON_BURST", "5")
        .env("TOLLGATE_USER_PER_MIN", "6000")
        .env("TOLLGATE_USER_BURST", "100")
        // The request limits are what the soak measures: GraphQL costs
        // are not limited here.
        .env("TOLLGATE_COST_PER_MIN", "4000000000")
        .env("TOLLGATE_COST_BURST", "4000000000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e} (run scripts/soak.sh)",
                server_bin.display()
            )
        })?;
    let pid = server.id();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    for _ in 0..100 {
        if client
            .get(format!("http://{ADDR}/healthz").parse()?)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let valid: Arc<Vec<String>> = Arc::new(
        (0..50)
            .map(|i| token(&format!("user-{i}"), now + 3600))
            .collect(),
    );
    let expired = Arc::new(token("old-user", now - 3600));
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, stats, stop, valid, expired) = (
            client.clone(),
            stats.clone(),
            stop.clone(),
            valid.clone(),
            expired.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += WORKERS;
                let ip = i % CLIENT_IPS;
                let client_ip = format!("{}.{}.{}.{}", 11 + (ip >> 16) % 200, (ip >> 8) & 255, ip & 255, 1 + w % 200);
                if i % 20 == 0 {
                    // A client that goes away mid-request.
                    if let Ok(mut tcp) = tokio::net::TcpStream::connect(ADDR).await {
                        let partial = format!("POST /graphql HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {client_ip}\r\ncontent-length: 200\r\ncontent-type: application/json\r\n\r\n{{\"query\":");
                        let _ = tcp.write_all(partial.as_bytes()).await;
                        drop(tcp);
                    }
                    stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut req = Request::post(format!("http://{ADDR}/graphql"))
                    .header("content-type", "application/json")
                    .header("x-forwarded-for", client_ip);
                req = match i % 10 {
                    0..=3 => req,
                    4..=6 => req.header("cookie", format!("da3={}", valid[(i % 50) as usize])),
                    7 => req.header("cookie", format!("da3={expired}")),
                    8 => req.header("authorization", format!("Bearer garbage.{i}.token")),
                    _ => req.header("cookie", format!("da3=\"{}\"; da3=other", valid[0])),
                };
                let body = Full::new(Bytes::from_static(br#"{"query":"{ anonymousFeed(first: 1) { title } me { id } }"}"#));
                let Ok(req) = req.body(body) else { continue };
                stats.requests.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(res)) => {
                        let status = res.status().as_u16();
                        let _ = res.into_body().collect().await;
                        let counter = match status {
                            200 => &stats.ok,
                            429 => &stats.limited,
                            401 | 403 => &stats.unauthorized,
                            500..=599 => &stats.server_errors,
                            _ => &stats.other,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let metrics_url: http::Uri = format!("http://{ADDR}/metrics").parse()?;
    let mut samples = Vec::new();
    let mut max_keys = 0.0f64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let keys = match client.get(metrics_url.clone()).await {
            Ok(res) => {
                let text = String::from_utf8_lossy(&res.into_body().collect().await?.to_bytes())
                    .into_owned();
                text.lines()
                    .filter(|l| l.starts_with("tollgate_rate_limit_keys"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            }
            Err(_) => -1.0,
        };
        max_keys = max_keys.max(keys);
        let rss = rss_kib(pid);
        samples.push((started.elapsed().as_secs(), rss, keys));
        println!(
            "t={:>4}s requests={} ok={} 429={} 401/403={} 5xx={} disconnects={} rss={} KiB limiter_keys={keys}",
            started.elapsed().as_secs(),
            stats.requests.load(Ordering::Relaxed),
            stats.ok.load(Ordering::Relaxed),
            stats.limited.load(Ordering::Relaxed),
            stats.unauthorized.load(Ordering::Relaxed),
            stats.server_errors.load(Ordering::Relaxed),
            stats.disconnects.load(Ordering::Relaxed),
            rss
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let _ = server.kill();
    let _ = server.wait();

    let start_rss = samples.first().map_or(0, |s| s.1);
    let peak_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let end_rss = samples.last().map_or(0, |s| s.1);
    let half = samples.len() / 2;
    let mid_rss = samples.get(half).map_or(0, |s| s.1);
    println!(
        "summary: {} requests in {seconds} s, 5xx={}, client errors={}, disconnects={}, rss start={start_rss} KiB peak={peak_rss} KiB end={end_rss} KiB, max limiter keys={max_keys}",
        stats.requests.load(Ordering::Relaxed),
        stats.server_errors.load(Ordering::Relaxed),
        stats.client_errors.load(Ordering::Relaxed),
        stats.disconnects.load(Ordering::Relaxed),
    );
    let mut failed = false;
    if stats.server_errors.load(Ordering::Relaxed) > 0 {
        println!("FAIL: 5xx responses");
        failed = true;
    }
    if max_keys > 1_000_000.0 {
        println!("FAIL: limiter keys above the cap");
        failed = true;
    }
    // Levelled off: the second half grows by less than 20 % (or 8 MiB).
    if end_rss > mid_rss + (mid_rss / 5).max(8 * 1024) {
        println!("FAIL: RSS still growing in the second half ({mid_rss} -> {end_rss} KiB)");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    println!("PASS");
    Ok(())
}
