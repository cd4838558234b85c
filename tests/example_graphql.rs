//! Smoke test of `examples/graphql.rs`: start the built example on a loopback
//! port and check its documented interface over HTTP.
#![allow(clippy::unwrap_used)]

mod example_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const SECRET: &str = "smoke-test-secret-of-at-least-32-bytes";

fn command() -> Command {
    let mut cmd = example_support::command(SECRET);
    cmd.env("TOLLGATE_ANON_PER_MIN", "1")
        .env("TOLLGATE_ANON_BURST", "5")
        .env("TOLLGATE_USER_PER_MIN", "600")
        .env("TOLLGATE_USER_BURST", "50");
    cmd
}

struct Running {
    child: Child,
    /// Everything the example printed, once it has stopped.
    output: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Running {
    /// Stops the example and returns every line it printed.
    fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.output.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> (Running, String) {
    start_with(command())
}

fn start_with(mut cmd: Command) -> (Running, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| {
        panic!("could not start {}: {e} (`cargo test --all-features` builds examples; `--test example_graphql` alone does not)", example_support::path().display())
    });
    // Hand over the first line, and keep reading stdout so that the
    // example's later output never meets a closed pipe.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let output = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if all.is_empty() {
                let _ = tx.send(line.clone());
            }
            all.push(line);
        }
        all
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
    (
        Running {
            child,
            output: Some(output),
        },
        addr,
    )
}

fn mint(subject: &str) -> String {
    example_support::mint(SECRET, subject)
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
    // Every limit that looked at the request reports, innermost first
    // (IETF lists compose): the in-flight cap, the GraphQL cost limit, the
    // per-caller and the per-IP rate limits.
    let policies: Vec<_> = headers
        .get_all("ratelimit-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        policies,
        [
            "\"in-flight\";q=16;qu=\"concurrent-requests\"",
            "\"graphql-cost\";q=120;w=12",
            "\"registered\";q=50;w=5",
            "\"per-ip\";q=200;w=10"
        ]
    );
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
    // works, `feed` is UNAUTHENTICATED; the anonymous burst is 5,
    // then one a minute (no token comes back while the test runs).
    let (status, headers, body) = http
        .graphql("{ anonymousFeed(first: 1) { title } }", &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["anonymousFeed"].as_array().unwrap().len(), 1);
    let policies: Vec<_> = headers.get_all("ratelimit-policy").iter().collect();
    assert_eq!(policies[2], "\"anonymous\";q=5;w=300", "{policies:?}");
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

fn http(addr: String) -> Http {
    Http {
        client: Client::builder(TokioExecutor::new()).build_http(),
        addr,
    }
}

/// Junk tokens are refused by the coarse per-IP limit before verification:
/// a flood ends in 429, not in an endless stream of 401s.
#[tokio::test]
async fn per_ip_limit_comes_before_token_verification() {
    let mut cmd = command();
    // One token a minute after the burst: however slow the machine, no
    // token comes back while the 80 requests below run.
    cmd.env("TOLLGATE_IP_BURST", "30")
        .env("TOLLGATE_IP_PER_MIN", "1");
    let (_child, addr) = start_with(cmd);
    let http = http(addr);
    for path in ["/me", "/graphql"] {
        let mut statuses = Vec::new();
        for i in 0..40 {
            let junk = vec![("authorization", format!("Bearer junk.{i}.token"))];
            let (status, _, _) = if path == "/me" {
                http.send(Method::GET, path, &junk, None).await
            } else {
                http.graphql("{ me { id } }", &junk).await
            };
            statuses.push(status);
        }
        let limited = statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count();
        assert!(limited >= 10, "{path}: {statuses:?}");
        assert_eq!(
            *statuses.last().unwrap(),
            StatusCode::TOO_MANY_REQUESTS,
            "{path}"
        );
    }
    // /healthz stays exempt.
    assert_eq!(
        http.send(Method::GET, "/healthz", &[], None).await.0,
        StatusCode::OK
    );
}

/// A valid token is printed at start-up only for the built-in dev secret.
#[tokio::test]
async fn dev_token_is_printed_only_with_the_dev_secret() {
    for (secret, expect_token) in [(Some(SECRET), false), (None, true)] {
        let mut cmd = command();
        if secret.is_none() {
            cmd.env_remove("TOLLGATE_SECRET");
        }
        let (running, addr) = start_with(cmd);
        // Once it answers, everything it printed before serving is out.
        let http = http(addr);
        assert_eq!(
            http.send(Method::GET, "/healthz", &[], None).await.0,
            StatusCode::OK
        );
        let output = running.stop().join("\n");
        assert!(output.contains("GraphiQL"), "{output}");
        assert_eq!(output.contains("da3=ey"), expect_token, "{output}");
    }
}

/// RFC 7519 allows `aud` as an array; the example's claims type reads both.
#[tokio::test]
async fn audience_array_is_accepted() {
    let (_child, addr) = start();
    let http = http(addr);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tollgate::crypto::install_default_provider();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({
            "sub": "array-user",
            "iss": "tollgate-example",
            "aud": ["other-api", "tollgate-example"],
            "exp": now + 600,
        }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, _, body) = http
        .send(
            Method::GET,
            "/me",
            &[("authorization", format!("Bearer {token}"))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], "array-user");
}

/// A token signed with the smoke-test secret, with chosen claims.
fn token_with(subject: &str, jti: &str, iat: u64, exp: u64) -> String {
    tollgate::crypto::install_default_provider();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({
            "sub": subject,
            "iss": "tollgate-example",
            "aud": "tollgate-example",
            "jti": jti,
            "iat": iat,
            "exp": exp,
        }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn da3(token: &str) -> Vec<(&'static str, String)> {
    vec![("cookie", format!("da3={token}"))]
}

/// `POST /logout` revokes the caller's token; `/logout-everywhere` every
/// token of the subject issued until then, not later ones; both need a
/// token and are behind the CSRF guard.
#[tokio::test]
async fn logout_and_logout_everywhere() {
    let (_child, addr) = start();
    let http = http(addr);
    let now = unix_now();

    // Anonymous: 401.
    for path in ["/logout", "/logout-everywhere"] {
        let (status, _, body) = http.send(Method::POST, path, &[], None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(body["reason"], "missing");
    }

    // Cross-site POST with the session cookie: refused by CSRF, not revoked.
    let session = mint("logout-user");
    let mut cross = da3(&session);
    cross.push(("sec-fetch-site", "cross-site".to_owned()));
    let (status, _, body) = http.send(Method::POST, "/logout", &cross, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["reason"], "csrf");
    assert_eq!(
        http.send(Method::GET, "/me", &da3(&session), None).await.0,
        StatusCode::OK
    );

    // Logout: 204, the cookie is cleared, and the same token is refused.
    let other_session = mint("logout-user");
    let (status, headers, _) = http
        .send(Method::POST, "/logout", &da3(&session), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers["set-cookie"].to_str().unwrap().starts_with("da3=;"),
        "{headers:?}"
    );
    let (status, _, body) = http.send(Method::GET, "/me", &da3(&session), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["reason"], "revoked");
    // Another session of the same user is untouched.
    assert_eq!(
        http.send(Method::GET, "/me", &da3(&other_session), None)
            .await
            .0,
        StatusCode::OK
    );

    // Logout everywhere: a token issued earlier is refused, one issued
    // later (iat in the next seconds, within the leeway) is not.
    let earlier = token_with("everywhere-user", "e1", now - 100, now + 3000);
    let caller = token_with("everywhere-user", "e2", now - 50, now + 3000);
    let later = token_with("everywhere-user", "e3", now + 5, now + 3600);
    // Issued in the second of the logout, or before it (issue 26).
    let just_before = token_with("everywhere-user", "e4", unix_now(), unix_now() + 3000);
    let (status, _, _) = http
        .send(Method::POST, "/logout-everywhere", &da3(&caller), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in [&earlier, &caller, &just_before] {
        let (status, _, body) = http.send(Method::GET, "/me", &da3(token), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["reason"], "revoked");
    }
    let (status, _, body) = http.send(Method::GET, "/me", &da3(&later), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], "everywhere-user");
}

/// With `TOLLGATE_REFRESH_WITHIN_SECS`, a session cookie near its `exp`
/// gets a successor; without it, never.
#[tokio::test]
async fn near_expiry_cookie_is_refreshed_when_configured() {
    let now = unix_now();
    let near = token_with("sliding-user", "s1", now - 3500, now + 100);
    for (within, expect) in [(None, false), (Some("300"), true)] {
        let mut cmd = command();
        match within {
            Some(secs) => cmd.env("TOLLGATE_REFRESH_WITHIN_SECS", secs),
            None => cmd.env_remove("TOLLGATE_REFRESH_WITHIN_SECS"),
        };
        let (_child, addr) = start_with(cmd);
        let http = http(addr);
        let (status, headers, _) = http.send(Method::GET, "/me", &da3(&near), None).await;
        assert_eq!(status, StatusCode::OK);
        let set_cookie = headers.get("set-cookie");
        assert_eq!(set_cookie.is_some(), expect, "{within:?}: {headers:?}");
        let Some(set_cookie) = set_cookie else {
            continue;
        };
        let set_cookie = set_cookie.to_str().unwrap();
        assert!(
            set_cookie.ends_with("; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"),
            "{set_cookie}"
        );
        let successor = set_cookie
            .strip_prefix("da3=")
            .and_then(|rest| rest.split(';').next())
            .unwrap();
        // The successor works, carries the same subject and is not refreshed.
        let (status, headers, body) = http.send(Method::GET, "/me", &da3(successor), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["sub"], "sliding-user");
        assert_eq!(body["jti"], "s1");
        assert!(body["exp"].as_u64().unwrap() >= now + 3600);
        assert!(headers.get("set-cookie").is_none());
        // A bearer token near expiry is not refreshed.
        let (status, headers, _) = http
            .send(
                Method::GET,
                "/me",
                &[("authorization", format!("Bearer {near}"))],
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("set-cookie").is_none());
    }
}

/// Issue 26: the example serves plain http, and its CSRF guard checked
/// `Origin` against `https`: a same-origin POST without `Sec-Fetch-Site`
/// (a browser that sends only `Origin`) was refused, and an `https` Origin
/// accepted. It now compares with the scheme it is reached at.
#[tokio::test]
async fn the_csrf_guard_knows_the_example_is_served_over_http() {
    let (_child, addr) = start();
    let http = http(addr.clone());
    let session = mint("scheme-user");
    let with_origin = |origin: String| {
        let mut headers = da3(&session);
        headers.push(("origin", origin));
        headers
    };
    let host = addr.trim_start_matches("http://").to_owned();
    let (status, _, body) = http
        .send(
            Method::POST,
            "/graphql",
            &with_origin(format!("https://{host}")),
            Some(json!({"query": "{ me { id } }"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["reason"], "csrf");
    let (status, _, body) = http
        .send(
            Method::POST,
            "/graphql",
            &with_origin(format!("http://{host}")),
            Some(json!({"query": "{ me { id } }"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Issue 26: a configuration error came out as one `Debug`-escaped line;
/// a multi-line TOML error must read as written.
#[test]
fn a_configuration_error_is_printed_as_written() {
    let dir = std::env::temp_dir().join(format!("tollgate-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[auth]\nissuer = \"x\"\nleeway_secs = \"soon\"\n").unwrap();
    let out = command().env("TOLLGATE_CONFIG", &file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(!stderr.contains("\\n"), "escaped newlines: {stderr}");
    assert!(stderr.lines().count() > 1, "one line: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `POST /login`: the right password sets a session cookie the service
/// accepts; five wrong ones lock the client address out (429,
/// `abnormal-usage-detected`, `Retry-After`), and then even the right
/// password is refused until the lockout ends.
#[tokio::test]
async fn failed_logins_lock_the_client_out() {
    let mut cmd = command();
    cmd.env("TOLLGATE_LOGIN_PASSWORD", "right-password");
    let (_child, addr) = start_with(cmd);
    let http = http(addr);
    let login = |password: &str| json!({ "subject": "alice", "password": password });

    let (status, headers, _) = http
        .send(Method::POST, "/login", &[], Some(login("right-password")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let cookie = headers["set-cookie"].to_str().unwrap();
    let token = cookie
        .strip_prefix("da3=")
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    let (status, _, me) = http.send(Method::GET, "/me", &da3(token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["sub"], "alice", "{me}");

    for _ in 0..5 {
        let (status, headers, _) = http
            .send(Method::POST, "/login", &[], Some(login("guess")))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!headers.contains_key("set-cookie"));
    }
    let (status, headers, body) = http
        .send(Method::POST, "/login", &[], Some(login("right-password")))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#abnormal-usage-detected"
    );
    assert_eq!(body["reason"], "locked_out");
    assert!(!headers.contains_key("set-cookie"));
    // The lockout guards /login only: the session still works.
    let (status, _, _) = http.send(Method::GET, "/me", &da3(token), None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every response carries the in-flight cap's policy next to the rate
/// limits' (draft-11 fields, one per policy), counting this request.
#[tokio::test]
async fn responses_carry_the_in_flight_cap() {
    let mut cmd = command();
    cmd.env("TOLLGATE_IN_FLIGHT", "3");
    let (_child, addr) = start_with(cmd);
    let http = http(addr);
    let (status, headers, _) = http
        .send(Method::GET, "/me", &da3(&mint("carol")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    let policies = all("ratelimit-policy");
    assert!(
        policies.contains(&"\"in-flight\";q=3;qu=\"concurrent-requests\"".to_owned()),
        "{policies:?}"
    );
    assert!(
        policies.iter().any(|p| p.starts_with("\"registered\";")),
        "{policies:?}"
    );
    let remaining = all("ratelimit");
    assert!(
        remaining.contains(&"\"in-flight\";r=2".to_owned()),
        "{remaining:?}"
    );
}

/// GraphQL queries are charged by cost (the example's cost table): 1 unit
/// at the door plus the query's complexity before it runs, what a feed did
/// not return given back after; the `graphql-cost` field reports what is
/// left; a query the bucket cannot cover is refused with the standard 429,
/// and one that costs more than any query may with `too_costly`.
#[tokio::test]
async fn graphql_queries_are_charged_by_cost() {
    let mut cmd = command();
    // One unit a minute back: nothing replenishes during the test.
    cmd.env("TOLLGATE_COST_PER_MIN", "1")
        .env("TOLLGATE_COST_BURST", "40")
        .env("TOLLGATE_MAX_COST", "25");
    let (_child, addr) = start_with(cmd);
    let http = http(addr);
    let left = |headers: &http::HeaderMap| -> Option<String> {
        headers
            .get_all("ratelimit")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with("\"graphql-cost\";"))
    };
    let feed = "{ feed(first: 5) { id title } }";
    let dave = da3(&mint("dave"));
    // 1 + 5 posts × 2 fields = 11 of 40.
    let (status, headers, body) = http.graphql(feed, &dave).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["feed"].as_array().unwrap().len(), 5);
    let policies: Vec<_> = headers
        .get_all("ratelimit-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        policies.contains(&"\"graphql-cost\";q=40;w=2400".to_owned()),
        "{policies:?}"
    );
    assert_eq!(left(&headers).unwrap(), "\"graphql-cost\";r=29;t=60");
    // A cheap query: 1 + me (1) + id (1) = 3.
    let (status, headers, _) = http.graphql("{ me { id } }", &dave).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(left(&headers).unwrap(), "\"graphql-cost\";r=26;t=60");
    // An anonymous caller (its own bucket, by address) asks for the
    // personal feed: refused, so the 10 units of posts are given back.
    let (status, headers, body) = http.graphql(feed, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(left(&headers).unwrap(), "\"graphql-cost\";r=39;t=60");
    // Two more feeds: 26 → 15 → 4.
    for expected in ["r=15", "r=4"] {
        let (status, headers, _) = http.graphql(feed, &dave).await;
        assert_eq!(status, StatusCode::OK);
        assert!(left(&headers).unwrap().contains(expected), "{headers:?}");
    }
    // The door takes 1 (3 left); the feed's 10 do not fit: 429, nothing of
    // the 10 spent, and the time 7 more units take.
    let (status, headers, body) = http.graphql(feed, &dave).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["violated-policies"], json!(["graphql-cost"]));
    assert_eq!(body["reason"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((415..=420).contains(&retry), "retry-after {retry}");
    // One field per policy: what is left after the door (3), not a second
    // one for the refused charge.
    let fields: Vec<_> = headers
        .get_all("ratelimit")
        .iter()
        .filter(|v| v.to_str().unwrap().starts_with("\"graphql-cost\";"))
        .collect();
    assert_eq!(fields, ["\"graphql-cost\";r=3;t=60"], "{headers:?}");
    // A query that costs more than any one query may (1 + 3 × 10 > 25):
    // refused as too costly, whatever is left.
    let erin = da3(&mint("erin"));
    let (status, headers, body) = http
        .graphql(
            "{ a: feed(first: 5) { id title } b: feed(first: 5) { id title } \
             c: feed(first: 5) { id title } }",
            &erin,
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "too_costly");
    assert!(headers.get("retry-after").is_none());
    // Only the door's unit was spent.
    assert!(left(&headers).unwrap().contains("r=39"), "{headers:?}");
}

/// Failed logins against one account from many addresses (each below its
/// own limit) lock the account: a new address is refused before its
/// password is looked at, while the owner, from the address it logged in
/// from, still gets in.
#[tokio::test]
async fn failed_logins_from_many_addresses_lock_the_account_not_its_owner() {
    let mut cmd = command();
    cmd.env("TOLLGATE_LOGIN_PASSWORD", "right-password")
        // The test is the proxy: its X-Forwarded-For names the client.
        .env("TOLLGATE_TRUSTED_PROXIES", "127.0.0.1/32");
    let (_child, addr) = start_with(cmd);
    let http = http(addr);
    let login = |password: &str| json!({ "subject": "victim", "password": password });
    let from = |ip: String| vec![("x-forwarded-for", ip)];

    // The owner logs in from home.
    let (status, _, _) = http
        .send(
            Method::POST,
            "/login",
            &from("198.51.100.7".into()),
            Some(login("right-password")),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Five attackers, one guess each: no address is locked, the account is.
    for i in 1..=5 {
        let (status, _, _) = http
            .send(
                Method::POST,
                "/login",
                &from(format!("203.0.113.{i}")),
                Some(login("guess")),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // A sixth address, even with the right password: refused.
    let (status, headers, body) = http
        .send(
            Method::POST,
            "/login",
            &from("203.0.113.6".into()),
            Some(login("right-password")),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#abnormal-usage-detected"
    );
    assert_eq!(body["reason"], "account_locked_out");
    assert!(!headers.contains_key("set-cookie"));
    // Another account from that address is not locked.
    let (status, _, _) = http
        .send(
            Method::POST,
            "/login",
            &from("203.0.113.6".into()),
            Some(json!({ "subject": "someone-else", "password": "right-password" })),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The owner, from home: let in.
    let (status, headers, _) = http
        .send(
            Method::POST,
            "/login",
            &from("198.51.100.7".into()),
            Some(login("right-password")),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(headers.contains_key("set-cookie"));
}

/// The in-flight cap through real HTTP: two slow queries of one user hold
/// both of its slots; a third request of that user is refused at once with
/// the draft's fields, another user is not, and the slots come back when
/// the slow responses have been sent.
#[tokio::test]
async fn slow_queries_hold_the_callers_in_flight_slots() {
    let mut cmd = command();
    cmd.env("TOLLGATE_IN_FLIGHT", "2");
    let (_child, addr) = start_with(cmd);
    let http = std::sync::Arc::new(http(addr));
    let frank = da3(&mint("frank"));
    let slow = "{ slowFeed(first: 1, delayMs: 1500) { id } }";
    let started = std::time::Instant::now();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let http = std::sync::Arc::clone(&http);
            let frank = frank.clone();
            tokio::spawn(async move { http.graphql(slow, &frank).await })
        })
        .collect();
    // Wait until both are in flight: the server has them once a third
    // request is refused (at most 1 s of polling).
    let mut refused = None;
    while started.elapsed() < Duration::from_secs(1) {
        let (status, headers, body) = http.graphql("{ me { id } }", &frank).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((headers, body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (headers, body) = refused.expect("a third request refused while two are in flight");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["reason"], "too_many_in_flight");
    assert_eq!(body["violated-policies"], json!(["in-flight"]));
    let fields: Vec<_> = headers
        .get_all("ratelimit-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        fields.contains(&"\"in-flight\";q=2;qu=\"concurrent-requests\"".to_owned()),
        "{fields:?}"
    );
    // Another user has slots of its own.
    let (status, _, _) = http.graphql("{ me { id } }", &da3(&mint("grace"))).await;
    assert_eq!(status, StatusCode::OK);
    for slow in held {
        let (status, _, body) = slow.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["data"]["slowFeed"].as_array().unwrap().len(), 1);
    }
    // Sent: both slots are back.
    let (status, headers, _) = http.graphql("{ me { id } }", &frank).await;
    assert_eq!(status, StatusCode::OK);
    let left: Vec<_> = headers
        .get_all("ratelimit")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(left.contains(&"\"in-flight\";r=1".to_owned()), "{left:?}");
}

/// The estimate reads what the document says: `first` from a variable,
/// fields through fragments; a document nested past any sense is too
/// costly before it is validated.
#[tokio::test]
async fn the_cost_estimate_follows_variables_and_fragments() {
    let mut cmd = command();
    cmd.env("TOLLGATE_COST_PER_MIN", "1")
        .env("TOLLGATE_COST_BURST", "40")
        .env("TOLLGATE_MAX_COST", "25");
    let (_child, addr) = start_with(cmd);
    let http = http(addr);
    let hank = da3(&mint("hank"));
    let left = |headers: &http::HeaderMap| -> String {
        headers
            .get_all("ratelimit")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|v| v.starts_with("\"graphql-cost\";"))
            .unwrap()
    };
    // 1 + 2 posts × 2 fields, `first` from a variable.
    let (status, headers, body) = http
        .send(
            Method::POST,
            "/graphql",
            &hank,
            Some(json!({
                "query": "query($n: Int) { feed(first: $n) { id title } }",
                "variables": { "n": 2 }
            })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["feed"].as_array().unwrap().len(), 2);
    assert_eq!(left(&headers), "\"graphql-cost\";r=35;t=60");
    // 1 + me (1) + id (1) through a fragment.
    let (status, headers, body) = http
        .graphql("{ ...Who } fragment Who on Query { me { id } }", &hank)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["me"]["id"], "hank");
    assert_eq!(left(&headers), "\"graphql-cost\";r=32;t=60");
    // Fragments spreading each other without end: too costly, refused
    // before validation would have said so (only the door's unit spent).
    let (status, headers, body) = http
        .graphql(
            "{ ...A } fragment A on Query { me { id } ...B } fragment B on Query { ...A }",
            &hank,
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "too_costly");
    assert_eq!(left(&headers), "\"graphql-cost\";r=31;t=60");
    // Fragments spreading the next one twice, 30 deep: 2^30 paths, walked
    // no further than the estimate's visit budget (the answer comes at once).
    let mut document = String::from("{ ...F0 }");
    for i in 0..30 {
        document.push_str(&format!(
            " fragment F{i} on Query {{ ...F{next} ...F{next} }}",
            next = i + 1
        ));
    }
    document.push_str(" fragment F30 on Query { me { id } }");
    let started = std::time::Instant::now();
    let (status, _, body) = http.graphql(&document, &hank).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "too_costly");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
