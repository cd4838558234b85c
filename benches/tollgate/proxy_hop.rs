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
//! After the criterion groups, a fixed run of sequential requests per path
//! prints p50 / p99 and the ratio (c − a) / (b − a).

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

    let mut group = c.benchmark_group("proxy_hop");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);
    for (name, url) in &paths {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| get_once(&client, url, &cookie))
        });
    }
    group.finish();

    // A fixed sequential run for percentiles and the ratio.
    let mut p50s = Vec::new();
    for (name, url) in &paths {
        let mut samples: Vec<Duration> = rt.block_on(async {
            for _ in 0..500 {
                get_once(&client, url, &cookie).await;
            }
            let mut samples = Vec::with_capacity(5000);
            for _ in 0..5000 {
                let start = Instant::now();
                get_once(&client, url, &cookie).await;
                samples.push(start.elapsed());
            }
            samples
        });
        samples.sort();
        let p50 = samples[samples.len() / 2];
        let p99 = samples[samples.len() * 99 / 100];
        println!(
            "proxy_hop/{name}: p50 {:.1} µs, p99 {:.1} µs (5000 sequential requests)",
            micros(p50),
            micros(p99)
        );
        p50s.push(p50);
    }
    let (a, b, cc) = (micros(p50s[0]), micros(p50s[1]), micros(p50s[2]));
    println!(
        "proxy_hop: embedded adds {:.1} µs, the gateway hop adds {:.1} µs; (c − a) / (b − a) = {:.1}",
        b - a,
        cc - a,
        (cc - a) / (b - a)
    );
    if let Some(d) = p50s.get(3) {
        println!(
            "proxy_hop: an nginx keep-alive hop adds {:.1} µs at p50",
            micros(*d) - a
        );
    }
    drop(nginx);
    drop(servers);
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
