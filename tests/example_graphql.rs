//! Smoke test of `examples/graphql.rs`: start the built example on a loopback
//! port and check its documented interface over HTTP.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const SECRET: &str = "smoke-test-secret-of-at-least-32-bytes";

/// `cargo test` builds examples next to the test binaries' `deps` folder.
fn example_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("graphql")
}

fn command() -> Command {
    let mut cmd = Command::new(example_path());
    cmd.env("TOLLGATE_SECRET", SECRET)
        .env("TOLLGATE_ADDR", "127.0.0.1:0")
        .env("TOLLGATE_ANON_PER_MIN", "60")
        .env("TOLLGATE_ANON_BURST", "5")
        .env("TOLLGATE_USER_PER_MIN", "600")
        .env("TOLLGATE_USER_BURST", "50")
        .env_remove("TOLLGATE_TRUSTED_PROXIES")
        .env_remove("TOLLGATE_LAYERS");
    cmd
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (Running, String) {
    let mut child = command().stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| {
        panic!("could not start {}: {e} (`cargo test --all-features` builds examples; `--test example_graphql` alone does not)", example_path().display())
    });
    // Read the first line, then keep draining stdout so that the example's
    // later output never meets a closed pipe.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {}
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the example prints its address");
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    assert!(first.contains("tollgate layers on"), "{first}");
    (Running(child), addr)
}

fn mint(subject: &str) -> String {
    let out = command().args(["mint", subject]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Http {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: String,
}

impl Http {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request(req.body(body).unwrap()),
        )
        .await
        .expect("the example answers within 10 s")
        .unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn graphql(
        &self,
        query: &str,
        headers: &[(&str, String)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        self.send(
            Method::POST,
            "/graphql",
            headers,
            Some(json!({ "query": query })),
        )
        .await
    }
}

#[tokio::test]
async fn graphql_example_interface() {
    let (_child, addr) = start();
    let http = Http {
        client: Client::builder(TokioExecutor::new()).build_http(),
        addr,
    };
    let token = mint("smoke-user");
    let cookie = vec![("cookie", format!("theme=dark; da3={token}"))];

    // Registered: data from `feed` and `me` (bearer works too).
    let (status, headers, body) = http
        .graphql(
            "{ me { id } feed(first: 2) { title personalized } }",
            &cookie,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["me"]["id"], "smoke-user");
    assert_eq!(body["data"]["feed"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"]["feed"][0]["personalized"], true);
    assert_eq!(headers["ratelimit-policy"], "\"registered\";q=50;w=5");
    let (status, _, body) = http
        .send(
            Method::GET,
            "/me",
            &[("authorization", format!("Bearer {token}"))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sub"], "smoke-user");

    // A cross-site POST carrying the session cookie is refused (CSRF).
    let mut cross = cookie.clone();
    cross.push(("sec-fetch-site", "cross-site".to_owned()));
    let (status, _, body) = http.graphql("{ me { id } }", &cross).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "csrf");

    // /me without a token: 401.
    let (status, headers, body) = http.send(Method::GET, "/me", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(body["reason"], "missing");

    // /healthz is never limited.
    for _ in 0..10 {
        assert_eq!(
            http.send(Method::GET, "/healthz", &[], None).await.0,
            StatusCode::OK
        );
    }

    // Anonymous (no token, or a bad one in lenient mode): the public feed
    // works, `feed` is UNAUTHENTICATED; the anonymous burst is 5.
    let (status, headers, body) = http
        .graphql("{ anonymousFeed(first: 1) { title } }", &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["anonymousFeed"].as_array().unwrap().len(), 1);
    assert_eq!(headers["ratelimit-policy"], "\"anonymous\";q=5;w=5");
    let (status, _, body) = http.graphql("{ feed { title } }", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let (_, _, body) = http
        .graphql(
            "{ feed { title } }",
            &[("cookie", "da3=expired.or.forged".to_owned())],
        )
        .await;
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, headers, body) = http.graphql("{ anonymousFeed { title } }", &[]).await;
        statuses.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
            assert_eq!(body["reason"], "rate_limited");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(*statuses.last().unwrap(), StatusCode::TOO_MANY_REQUESTS);

    // The registered user is not affected by the anonymous bucket.
    let (status, _, _) = http.graphql("{ me { id } }", &cookie).await;
    assert_eq!(status, StatusCode::OK);
}
