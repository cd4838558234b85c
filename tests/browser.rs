//! `examples/graphql.rs` in a real browser: headless Chromium, driven over
//! WebDriver (chromedriver), decides for itself which `Origin`,
//! `Sec-Fetch-*` headers and cookies it sends; a recording proxy in front of
//! the example writes down what arrived and what the example answered, and
//! the test asserts on that record.
//!
//! - The GraphiQL page (`GET /graphql`) loads, and `anonymousFeed` runs from
//!   it; a screenshot goes to `target/browser/graphiql.png`.
//! - With the session cookie set on the API's origin, a same-origin `fetch`
//!   of `feed` is personalised.
//! - Pages on other origins — `http://localhost:<port>` (another site) and
//!   `http://127.0.0.1:<other port>` (the same site, another origin) — send a
//!   credentialed POST and open a WebSocket to the API: the CSRF guard
//!   refuses both (403, `reason: "csrf"`) with the cookie on them.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`, so
//! `cargo test --all-features` reports it as ignored (with that reason) and
//! `cargo test --all-features --test browser -- --ignored` runs it: `.ci/run`
//! installs the packages and does. Run so, it fails without them, naming
//! them, unless `TOLLGATE_SKIP_BROWSER=1`.
//! The browser allows third-party cookies, as Chrome does by default, so that
//! the cross-site cookie reaches the guard rather than being dropped by the
//! browser; Chromium otherwise blocks them in a fresh profile.
#![allow(clippy::unwrap_used)]

mod example_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{Html, Response};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const SECRET: &str = "browser-test-secret-of-at-least-32-bytes";
const SUBJECT: &str = "browser-user";
/// Bound on every WebDriver command and every wait.
const STEP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Processes: chromedriver and the example.

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Spawns `cmd` and waits (bounded) for a stdout line containing `ready`;
/// returns the process and that line. Later output keeps being read.
fn spawn_until(mut cmd: Command, ready: &'static str, what: &str) -> (Process, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(ready) {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(STEP)
        .unwrap_or_else(|_| panic!("{what} did not print {ready:?} within {STEP:?}"));
    (process, line)
}

fn example() -> Command {
    example_support::command(SECRET)
}

fn mint(subject: &str) -> String {
    example_support::mint(SECRET, subject)
}

// ---------------------------------------------------------------------------
// A WebDriver client: the few W3C WebDriver commands the test needs, as JSON
// over HTTP to chromedriver on loopback.

struct Browser {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    session: String,
    version: String,
}

impl Browser {
    async fn call(
        http: &Client<HttpConnector, Full<Bytes>>,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Value {
        let request = Request::builder()
            .method(method.clone())
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = tokio::time::timeout(STEP, async {
            let response = http.request(request).await?;
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(bytes)
        })
        .await
        .unwrap_or_else(|_| panic!("WebDriver {method} {url}: no answer within {STEP:?}"))
        .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
        let value: Value = serde_json::from_slice(&response).unwrap();
        let value = value["value"].clone();
        if let Some(error) = value.get("error") {
            panic!("WebDriver {method} {url}: {error}: {}", value["message"]);
        }
        value
    }

    async fn start(driver_port: u16) -> Self {
        let http = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://127.0.0.1:{driver_port}");
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find("chromium").unwrap(),
                "args": [
                    "--headless=new",
                    // CI runs as root, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,800",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    // Loopback only: every other host name fails at once.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                ],
                // Chrome's default: third-party cookies allowed.
                "prefs": { "profile.cookie_controls_mode": 0 },
            },
        }}});
        let value = Self::call(
            &http,
            Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await;
        let session = value["sessionId"].as_str().unwrap().to_owned();
        let version = value["capabilities"]["browserVersion"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        let browser = Self {
            http,
            base,
            session,
            version,
        };
        let ms = u64::try_from(STEP.as_millis()).unwrap();
        browser
            .command(
                Method::POST,
                "timeouts",
                json!({ "script": ms, "pageLoad": ms, "implicit": 0 }),
            )
            .await;
        browser
    }

    async fn command(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let body = (method == Method::POST).then_some(body);
        Self::call(&self.http, method, &url, body).await
    }

    async fn goto(&self, url: &str) {
        self.command(Method::POST, "url", json!({ "url": url }))
            .await;
    }

    /// Runs `body` as an async function in the page: it ends by calling
    /// `done(result)`.
    async fn run(&self, body: &str, args: Value) -> Value {
        let script = format!("const done = arguments[arguments.length - 1];\n{body}");
        self.command(
            Method::POST,
            "execute/async",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    async fn eval(&self, expression: &str) -> Value {
        self.command(
            Method::POST,
            "execute/sync",
            json!({ "script": format!("return {expression};"), "args": [] }),
        )
        .await
    }

    async fn add_cookie(&self, cookie: Value) {
        self.command(Method::POST, "cookie", json!({ "cookie": cookie }))
            .await;
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.command(Method::GET, "screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// Ends the session, closing the browser, also when the test fails: killing
/// chromedriver alone would leave Chromium running. A blocking call, bounded.
impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let host = self.base.trim_start_matches("http://");
        let Ok(mut stream) = std::net::TcpStream::connect(host) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(STEP));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return;
        }
        // Until the whole answer is in: chromedriver keeps the connection.
        let mut answer = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The recording proxy in front of the example, and the other origin's page.

/// What one request carried when it reached the API, and the answer.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    origin: Option<String>,
    sec_fetch_site: Option<String>,
    sec_fetch_mode: Option<String>,
    upgrade: Option<String>,
    /// Names of the cookies sent (values stay out of the log).
    cookies: Vec<String>,
    status: u16,
    /// `reason` of a refusal's problem+json body.
    reason: Option<String>,
}

impl Seen {
    fn has_session(&self) -> bool {
        self.cookies.iter().any(|c| c == "da3")
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        write!(
            f,
            "{} {} | Origin: {} | Sec-Fetch-Site: {} | Sec-Fetch-Mode: {} | Upgrade: {} | cookies: [{}] -> {} {}",
            self.method,
            self.path,
            o(&self.origin),
            o(&self.sec_fetch_site),
            o(&self.sec_fetch_mode),
            o(&self.upgrade),
            self.cookies.join(", "),
            self.status,
            o(&self.reason),
        )
    }
}

#[derive(Clone)]
struct Proxy {
    upstream: SocketAddr,
    client: Client<HttpConnector, Body>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn header(request: &Request<Body>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// The names of the cookies in every `Cookie` field.
fn cookie_names(headers: &http::HeaderMap) -> Vec<String> {
    let mut names = Vec::new();
    for field in headers.get_all("cookie") {
        for pair in String::from_utf8_lossy(field.as_bytes()).split(';') {
            let name = pair.split('=').next().unwrap_or("").trim();
            if !name.is_empty() {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// Forwards the request as the browser sent it (headers, `Host` included)
/// and records it with the example's answer.
async fn forward(State(proxy): State<Proxy>, request: Request<Body>) -> Response {
    let mut seen = Seen {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        origin: header(&request, "origin"),
        sec_fetch_site: header(&request, "sec-fetch-site"),
        sec_fetch_mode: header(&request, "sec-fetch-mode"),
        upgrade: header(&request, "upgrade"),
        cookies: cookie_names(request.headers()),
        status: 0,
        reason: None,
    };
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{}{path}", proxy.upstream).parse().unwrap();
    let answer = proxy
        .client
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    let (parts, body) = answer.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    seen.status = parts.status.as_u16();
    if !parts.status.is_success() {
        seen.reason = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned));
    }
    proxy.seen.lock().unwrap().push(seen);
    Response::from_parts(parts, Body::from(bytes))
}

async fn serve(router: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

/// Waits (bounded) until the proxy has seen a request matching `pick`.
async fn wait_seen(seen: &Mutex<Vec<Seen>>, what: &str, pick: impl Fn(&Seen) -> bool) -> Seen {
    let found = tokio::time::timeout(STEP, async {
        loop {
            if let Some(s) = seen.lock().unwrap().iter().find(|s| pick(s)) {
                return s.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "no {what} reached the API within {STEP:?}; it saw:\n{}",
            seen.lock()
                .unwrap()
                .iter()
                .map(|s| format!("  {s}\n"))
                .collect::<String>()
        )
    })
}

/// The attack from another origin: a credentialed POST (a CORS "simple"
/// request, sent without a preflight, as a form would), then a WebSocket.
/// Returns what the page itself saw of the two.
const CROSS_ORIGIN: &str = r#"
const api = arguments[0];
const out = {};
fetch(api + '/graphql', {
  method: 'POST',
  credentials: 'include',
  headers: { 'content-type': 'text/plain' },
  body: JSON.stringify({ query: '{ me { id } }' }),
})
  .then(r => { out.post = 'status ' + r.status; }, e => { out.post = String(e); })
  .then(() => {
    const ws = new WebSocket(api.replace('http:', 'ws:') + '/graphql');
    ws.onopen = () => { out.ws = 'open'; ws.close(); };
    ws.onclose = e => { out.ws_close = e.code; done(out); };
  });
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver on PATH: run with `--ignored` (.ci/run installs them and does)"]
async fn the_example_in_headless_chromium() {
    let (Some(_), Some(chromedriver)) = (find("chromium"), find("chromedriver")) else {
        if std::env::var("TOLLGATE_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("TOLLGATE_SKIP_BROWSER=1: no chromium/chromedriver, browser test skipped");
            return;
        }
        panic!(
            "chromium and chromedriver are not on PATH: install the Debian packages `chromium` and \
             `chromium-driver` (.ci/run does), or set TOLLGATE_SKIP_BROWSER=1 to skip this test"
        );
    };

    // The example, on a loopback port of its own choosing.
    let (_example, first) = spawn_until(example(), "tollgate graphql example on", "the example");
    assert!(first.contains("tollgate layers on"), "{first}");
    let upstream: SocketAddr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let token = mint(SUBJECT);

    // The API as the browser sees it: the recording proxy.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let proxy = Proxy {
        upstream,
        client: Client::builder(TokioExecutor::new()).build_http(),
        seen: Arc::clone(&seen),
    };
    let api_port = serve(Router::new().fallback(forward).with_state(proxy)).await;
    let api = format!("http://127.0.0.1:{api_port}");
    // Another origin: one page, reachable as localhost (another site) and as
    // 127.0.0.1 on its own port (the same site, another origin).
    let other_port = serve(Router::new().route(
        "/",
        axum::routing::get(|| async {
            Html("<!doctype html><title>another origin</title><p>another origin</p>")
        }),
    ))
    .await;

    // chromedriver on a loopback port of its own choosing.
    let mut cmd = Command::new(chromedriver);
    cmd.arg("--port=0");
    let (_driver, started) = spawn_until(cmd, "started successfully on port", "chromedriver");
    let driver_port: u16 = started
        .rsplit(' ')
        .next()
        .and_then(|port| port.trim_end_matches('.').parse().ok())
        .unwrap_or_else(|| panic!("unexpected chromedriver line: {started:?}"));
    let browser = Browser::start(driver_port).await;
    println!("browser: Chromium {}", browser.version);

    // 1. The GraphiQL page loads through the whole stack, and anonymousFeed
    //    runs from it, as GraphiQL's own fetcher would send it.
    browser.goto(&format!("{api}/graphql")).await;
    let title = browser.eval("document.title").await;
    assert_eq!(title, "GraphiQL IDE");
    let page = wait_seen(&seen, "GraphiQL page", |s| {
        s.method == "GET" && s.path == "/graphql"
    })
    .await;
    assert_eq!(page.status, 200, "{page}");
    assert_eq!(page.sec_fetch_mode.as_deref(), Some("navigate"), "{page}");
    let result = browser
        .run(
            "fetch('/graphql', { method: 'POST', credentials: 'same-origin', \
               headers: { 'content-type': 'application/json' }, \
               body: JSON.stringify({ query: '{ anonymousFeed(first: 3) { id title personalized } }' }) }) \
             .then(r => r.json()).then(done, e => done(String(e)));",
            json!([]),
        )
        .await;
    let feed = result["data"]["anonymousFeed"]
        .as_array()
        .unwrap_or_else(|| panic!("{result}"));
    assert_eq!(feed.len(), 3, "{result}");
    assert_eq!(feed[0]["title"], "Break the gateway");
    assert_eq!(feed[0]["personalized"], false);
    // GraphiQL's own scripts come from a CDN, which the browser may not
    // reach (loopback only): the page then stays at "Loading...". The
    // screenshot shows what rendered.
    let rendered = browser.eval("typeof GraphiQL !== 'undefined'").await == true;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("browser")
        .join("graphiql.png");
    browser.screenshot(&shot).await;
    println!(
        "GraphiQL page: {} ({}); screenshot {}",
        page,
        if rendered {
            "GraphiQL UI rendered"
        } else {
            "GraphiQL UI not rendered: its scripts are on a CDN, out of the browser's reach"
        },
        shot.display()
    );

    // 2. The session cookie, as an auth service would set it on the API's
    //    origin; a same-origin query to `feed` is personalised.
    browser
        .add_cookie(json!({
            "name": "da3", "value": token, "path": "/",
            "httpOnly": true, "secure": true, "sameSite": "None",
        }))
        .await;
    let result = browser
        .run(
            "fetch('/graphql', { method: 'POST', credentials: 'include', \
               headers: { 'content-type': 'application/json' }, \
               body: JSON.stringify({ query: '{ me { id } feed(first: 2) { title personalized } }' }) }) \
             .then(r => r.json()).then(done, e => done(String(e)));",
            json!([]),
        )
        .await;
    assert_eq!(result["data"]["me"]["id"], SUBJECT, "{result}");
    assert_eq!(result["data"]["feed"][0]["personalized"], true, "{result}");
    let same_origin = wait_seen(&seen, "same-origin POST", |s| {
        s.method == "POST" && s.has_session()
    })
    .await;
    println!("same-origin POST: {same_origin}");
    assert_eq!(
        same_origin.sec_fetch_site.as_deref(),
        Some("same-origin"),
        "{same_origin}"
    );
    assert_eq!(
        same_origin.origin.as_deref(),
        Some(api.as_str()),
        "{same_origin}"
    );
    assert_eq!(same_origin.status, 200, "{same_origin}");

    // 3. Pages on other origins attack with the cookie the browser holds.
    for (case, origin, site) in [
        (
            "cross-site",
            format!("http://localhost:{other_port}"),
            "cross-site",
        ),
        (
            "same-site, other port",
            format!("http://127.0.0.1:{other_port}"),
            "same-site",
        ),
    ] {
        browser.goto(&format!("{origin}/")).await;
        let page_saw = browser.run(CROSS_ORIGIN, json!([api])).await;
        let from = |s: &Seen| s.origin.as_deref() == Some(origin.as_str());
        let post = wait_seen(&seen, &format!("{case} POST"), |s| {
            s.method == "POST" && from(s)
        })
        .await;
        let ws = wait_seen(&seen, &format!("{case} WebSocket handshake"), |s| {
            s.upgrade.is_some() && from(s)
        })
        .await;
        println!("{case} POST from {origin}: {post}");
        println!("{case} WebSocket from {origin}: {ws}");
        println!("{case}: the page saw {page_saw}");
        // What the browser sent: the cookie, and a Sec-Fetch-Site for the
        // POST (Chromium sends none on a WebSocket handshake: the guard
        // compares its Origin).
        assert!(
            post.has_session(),
            "the browser sent no session cookie: {post}"
        );
        assert_eq!(post.sec_fetch_site.as_deref(), Some(site), "{post}");
        assert_eq!(post.sec_fetch_mode.as_deref(), Some("cors"), "{post}");
        assert!(ws.has_session(), "the browser sent no session cookie: {ws}");
        assert_eq!(ws.method, "GET", "{ws}");
        assert_eq!(ws.upgrade.as_deref(), Some("websocket"), "{ws}");
        // Refused by the CSRF guard, not by anything else.
        assert_eq!(
            (post.status, post.reason.as_deref()),
            (403, Some("csrf")),
            "{post}"
        );
        assert_eq!(
            (ws.status, ws.reason.as_deref()),
            (403, Some("csrf")),
            "{ws}"
        );
        assert_eq!(page_saw["ws_close"], 1006, "{page_saw}");
        assert!(page_saw.get("ws").is_none(), "{page_saw}");
    }

    println!("everything the API saw:");
    for s in seen.lock().unwrap().iter() {
        println!("  {s}");
    }
    drop(browser);
}
