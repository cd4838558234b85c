//! What dropping the gateway saves: per-request latency over loopback,
//! keep-alive HTTP/1.1, of
//!
//! - (a) client → bare service;
//! - (b) client → service with tollgate's auth + rate limit in-process;
//! - (c) client → gateway (a minimal hyper reverse proxy that verifies the
//!   same JWT with the same layers and forwards over a pooled keep-alive
//!   connection) → bare service;
//! - (d) when `nginx` is on PATH: client → nginx `proxy_pass` (keep-alive
//!   upstream, no JWT check) → bare service.
//!
//! Not a criterion group: the paths are measured interleaved, one request
//! each in turn, 20,000 rounds (`TOLLGATE_HOP_ROUNDS`), and the report is the
//! median latency each path adds over (a) with a bootstrap 95 % interval
//! (1,000 resamples of whole rounds), and the ratio (c − a) / (b − a) with
//! its interval, or "not resolved" when the interval reaches zero or the
//! embedded layers' added latency is not above zero.
//! `scripts/hop.sh` compares CPU per request and latency of the example
//! behind a real nginx, in rounds of separate processes.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{EncodingKey, Header};
use tollgate::auth::{JwtAuthLayer, Key};
use tollgate::rate_limit::{KeyBy, Quota, RateLimitLayer};
use tower::ServiceBuilder;

use crate::fixtures::{SECRET, User};

const BODY: &str = r#"{"data":{"anonymousFeed":[{"title":"Break the gateway"}]}}"#;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn router() -> Router {
    Router::new().fallback(get(|| async {
        ([(header::CONTENT_TYPE, "application/json")], BODY)
    }))
}

fn tollgate_layers() -> (JwtAuthLayer<User>, RateLimitLayer) {
    let auth = JwtAuthLayer::<User>::builder()
        .key(Key::hmac(SECRET).expect("key"))
        .cookie("da3")
        .issuer("https://auth.example")
        .audience("api")
        // as the example: a session cookie is verified once, then cached
        .cache(10_000)
        .build()
        .expect("auth");
    let limit = RateLimitLayer::builder(
        "anonymous",
        Quota::per_second(1_000_000).burst(1_000_000_000),
    )
    .authenticated(
        "registered",
        Quota::per_second(1_000_000).burst(1_000_000_000),
    )
    .key(KeyBy::global())
    .build()
    .expect("limit");
    (auth, limit)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Body>,
    base: String,
}

async fn forward(State(up): State<Upstream>, req: Request<Body>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", up.base).parse() else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap_or_default();
    };
    parts.uri = uri;
    match up.client.request(Request::from_parts(parts, body)).await {
        Ok(res) => res.map(Body::new),
        Err(_) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap_or_default(),
    }
}

struct Nginx {
    child: Child,
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn args(&self) -> [String; 4] {
        [
            "-p".into(),
            self.dir.display().to_string(),
            "-c".into(),
            self.dir.join("nginx.conf").display().to_string(),
        ]
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `-s stop` makes the master stop its workers too; a plain kill of
        // the master would leave them behind.
        let _ = Command::new(&self.bin)
            .args(self.args())
            .args(["-s", "stop"])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_nginx(upstream: SocketAddr) -> Option<(Nginx, SocketAddr)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nginx"))
                    .find(|p| p.exists())
            })
        })?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = std::env::temp_dir().join(format!("tollgate-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).ok()?;
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/logs/error.log;\nevents {{ worker_connections 256; }}\n\
         http {{\n access_log off;\n client_body_temp_path {dir};\n proxy_temp_path {dir};\n fastcgi_temp_path {dir};\n uwsgi_temp_path {dir};\n scgi_temp_path {dir};\n\
         upstream bare {{ server {upstream}; keepalive 32; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://bare; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new(&nginx)
        .args([
            "-p",
            &dir.display().to_string(),
            "-c",
            &dir.join("nginx.conf").display().to_string(),
            "-g",
            "daemon off;",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let guard = Nginx {
        child,
        bin: nginx,
        dir,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some((guard, addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

async fn get_once(client: &HttpClient, url: &http::Uri, cookie: &str) {
    let req = Request::builder()
        .uri(url.clone())
        .header(header::COOKIE, cookie)
        .body(Empty::new())
        .expect("request");
    let res = client.request(req).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), BODY.len());
}

pub fn bench(c: &mut Criterion) {
    if !crate::selected("proxy_hop") {
        return;
    }
    // Servers on their own runtime (as separate processes would be), the
    // client on a single-threaded one.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let now = jsonwebtoken::get_current_timestamp();
    let user = User {
        sub: "user-1".into(),
        iss: "https://auth.example".into(),
        aud: "api".into(),
        exp: now + 3600,
        roles: vec!["reader".into()],
    };
    let token = jsonwebtoken::encode(&Header::default(), &user, &EncodingKey::from_secret(SECRET))
        .expect("token");
    let cookie = format!("theme=dark; da3={token}; lang=en");

    let (bare, embedded, gateway) = servers.block_on(async {
        let bare = serve(router()).await;
        let (auth, limit) = tollgate_layers();
        let embedded = serve(router().layer(ServiceBuilder::new().layer(auth).layer(limit))).await;
        let (auth, limit) = tollgate_layers();
        let upstream = Upstream {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(64)
                .build_http(),
            base: format!("http://{bare}"),
        };
        let proxy = Router::new()
            .fallback(forward)
            .with_state(upstream)
            .layer(ServiceBuilder::new().layer(auth).layer(limit));
        (bare, embedded, serve(proxy).await)
    });
    let nginx = start_nginx(bare);
    if nginx.is_none() {
        println!("proxy_hop: nginx not found on PATH, skipping the nginx path");
    }

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut paths: Vec<(&str, http::Uri)> = vec![
        (
            "a_bare",
            format!("http://{bare}/feed").parse().expect("uri"),
        ),
        (
            "b_embedded_tollgate",
            format!("http://{embedded}/feed").parse().expect("uri"),
        ),
        (
            "c_rust_gateway_hop",
            format!("http://{gateway}/feed").parse().expect("uri"),
        ),
    ];
    if let Some((_, addr)) = &nginx {
        paths.push((
            "d_nginx_hop",
            format!("http://{addr}/feed").parse().expect("uri"),
        ));
    }

    // Interleaved: one request per path in turn (a, b, c, d, a, b, ...), so
    // that whatever drifts (frequency, the other core's load, caches) drifts
    // for every path alike; sequential blocks per path drifted more than the
    // effect measured.
    let _ = c;
    let rounds: usize = std::env::var("TOLLGATE_HOP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let samples: Vec<Vec<f64>> = rt.block_on(async {
        for _ in 0..1_000 {
            for (_, url) in &paths {
                get_once(&client, url, &cookie).await;
            }
        }
        let mut samples = vec![Vec::with_capacity(rounds); paths.len()];
        for _ in 0..rounds {
            for ((_, url), samples) in paths.iter().zip(&mut samples) {
                let start = Instant::now();
                get_once(&client, url, &cookie).await;
                samples.push(micros(start.elapsed()));
            }
        }
        samples
    });
    let report = stats::Paired::new(samples, 1_000);
    for (i, (name, _)) in paths.iter().enumerate() {
        let (p50, p99) = report.percentiles(i);
        println!(
            "proxy_hop/{name}: p50 {p50:.1} µs, p99 {p99:.1} µs ({rounds} interleaved requests)"
        );
    }
    for (i, (name, _)) in paths.iter().enumerate().skip(1) {
        let (median, low, high) = report.added(i);
        println!(
            "proxy_hop/added/{name}: {median:.2} µs (95 % CI {low:.2} – {high:.2}) over a_bare"
        );
    }
    println!(
        "proxy_hop/ratio: {}",
        ratio_text(&report, 2, "the gateway hop")
    );
    if paths.len() > 3 {
        println!(
            "proxy_hop/ratio_nginx: {}",
            ratio_text(&report, 3, "an nginx hop")
        );
    }
    drop(nginx);
    drop(servers);
}

/// What path `num` adds over path 0 as a multiple of what the embedded
/// layers (path 1) add, or "not resolved" with the interval when that cannot
/// be told: the ratio's low bound at or below zero (or not finite), or an
/// added latency of the embedded layers whose interval is not above zero. A
/// difference of two medians does not resolve a microsecond on every
/// machine, and a ratio over such a difference means nothing.
fn ratio_text(report: &stats::Paired, num: usize, what: &str) -> String {
    let (_, den_low, den_high) = report.added(1);
    let (ratio, low, high) = report.ratio(num, 1);
    if den_low <= 0.0 || !low.is_finite() || low <= 0.0 || !ratio.is_finite() {
        format!(
            "not resolved (95 % CI {low:.1} – {high:.1}; embedded layers add {den_low:.2} – {den_high:.2} µs)"
        )
    } else {
        format!(
            "{what} adds {ratio:.1} × what the embedded layers add (95 % CI {low:.1} – {high:.1})"
        )
    }
}

/// Medians of paired latency samples and their bootstrap intervals.
mod stats {
    /// Samples in µs per path, index `i` of every path taken in the same
    /// round.
    pub struct Paired {
        samples: Vec<Vec<f64>>,
        /// Per resample: the median of each path.
        medians: Vec<Vec<f64>>,
    }

    /// A small deterministic generator (xorshift64*): the resamples are the
    /// same from run to run, so only the data varies.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            usize::try_from((u128::from(x) * n as u128) >> 64).unwrap_or(0)
        }
    }

    fn median(values: &mut [f64]) -> f64 {
        let mid = values.len() / 2;
        let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
        *m
    }

    /// The 2.5 % and 97.5 % points of `values`.
    fn interval(mut values: Vec<f64>) -> (f64, f64) {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        (at(0.025), at(0.975))
    }

    impl Paired {
        /// Resamples whole rounds (so each resample keeps the pairing) `n`
        /// times.
        pub fn new(samples: Vec<Vec<f64>>, n: usize) -> Self {
            let rounds = samples.first().map_or(0, Vec::len);
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut scratch = vec![0.0; rounds];
            let mut medians = Vec::with_capacity(n);
            let mut picks = vec![0; rounds];
            for _ in 0..n {
                for pick in &mut picks {
                    *pick = rng.below(rounds);
                }
                medians.push(
                    samples
                        .iter()
                        .map(|path| {
                            for (slot, &pick) in scratch.iter_mut().zip(&picks) {
                                *slot = path[pick];
                            }
                            median(&mut scratch)
                        })
                        .collect(),
                );
            }
            Self { samples, medians }
        }

        /// p50 and p99 of path `i`.
        pub fn percentiles(&self, i: usize) -> (f64, f64) {
            let mut sorted = self.samples[i].clone();
            sorted.sort_by(f64::total_cmp);
            (sorted[sorted.len() / 2], sorted[sorted.len() * 99 / 100])
        }

        fn point(&self, f: impl Fn(&[f64]) -> f64) -> f64 {
            let medians: Vec<f64> = self
                .samples
                .iter()
                .map(|path| median(&mut path.clone()))
                .collect();
            f(&medians)
        }

        /// Median added latency of path `i` over path 0, with its interval.
        pub fn added(&self, i: usize) -> (f64, f64, f64) {
            let f = |m: &[f64]| m[i] - m[0];
            let (low, high) = interval(self.medians.iter().map(|m| f(m)).collect());
            (self.point(f), low, high)
        }

        /// (path `num` − path 0) / (path `den` − path 0), with its interval.
        pub fn ratio(&self, num: usize, den: usize) -> (f64, f64, f64) {
            let f = |m: &[f64]| (m[num] - m[0]) / (m[den] - m[0]);
            let (low, high) = interval(self.medians.iter().map(|m| f(m)).collect());
            (self.point(f), low, high)
        }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
