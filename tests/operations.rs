//! Operations: metrics, tracing, shadow mode, configuration from a file.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, Response, header};
use jsonwebtoken::Algorithm;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::{Value, json};
use tollgate::auth::{AuthMode, JwtAuthLayer, Key};
use tollgate::config::TollgateConfig;
use tollgate::rate_limit::{
    KeyBy, PeerAddr, Quota, RateLimitLayer, RateLimitStore, TrustedProxies,
};
use tower::{Service, ServiceBuilder, ServiceExt};

fn request(peer: &str, token: Option<&str>) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer.parse().unwrap(), 1)));
    if let Some(token) = token {
        req.headers_mut().insert(
            header::COOKIE,
            HeaderValue::try_from(format!("da3={token}")).unwrap(),
        );
    }
    req
}

fn expired() -> String {
    let mut c = good_claims();
    c["exp"] = json!(NOW - 1000);
    mint(Algorithm::HS256, &c)
}

type Entry = (
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

/// (name, labels, value) of every counter in a snapshot (taking a snapshot
/// resets the debugging recorder's counters: take one per test).
/// A counter: name, labels, value.
type Counted = (String, Vec<(String, String)>, u64);

fn counters(snapshot: &[Entry]) -> Vec<Counted> {
    snapshot
        .iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                let n = *n;
                let labels = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                Some((key.key().name().to_owned(), labels, n))
            }
            _ => None,
        })
        .collect()
}

fn count(all: &[Counted], name: &str, want: &[(&str, &str)]) -> u64 {
    all.iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, n)| n)
        .sum()
}

fn stack(
    auth_shadow: bool,
    limit_shadow: bool,
) -> impl Service<Request<()>, Response = Response<impl Send>, Error = std::convert::Infallible> + Clone
{
    let auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .clock(|| NOW)
        .build()
        .unwrap()
        .mode(AuthMode::Optional)
        .shadow(auth_shadow);
    let limit = RateLimitLayer::builder("anonymous", Quota::per_hour(2))
        .authenticated("registered", Quota::per_hour(3))
        .shadow(limit_shadow)
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(auth)
        .layer(limit)
        .service(Counter::default().service())
}

#[test]
fn metrics_count_outcomes_by_reason_and_policy_without_personal_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let token = mint(Algorithm::HS256, &good_claims());
    let statuses = metrics::with_local_recorder(&recorder, || {
        run(async {
            let svc = stack(false, false);
            let mut statuses = Vec::new();
            for req in [
                request("192.0.2.1", None),
                request("192.0.2.1", None),
                request("192.0.2.1", None),
                request("192.0.2.2", Some(&token)),
                request("192.0.2.3", Some(&expired())),
                request("192.0.2.4", Some("junk")),
            ] {
                statuses.push(svc.clone().oneshot(req).await.unwrap().status().as_u16());
            }
            statuses
        })
    });
    assert_eq!(statuses, [200, 200, 429, 200, 401, 401]);
    let snapshot = snapshotter.snapshot().into_vec();
    let all = counters(&snapshot);
    assert_eq!(
        count(
            &all,
            "tollgate_auth_requests_total",
            &[("outcome", "anonymous"), ("reason", "missing")]
        ),
        3
    );
    assert_eq!(
        count(
            &all,
            "tollgate_auth_requests_total",
            &[("outcome", "authenticated")]
        ),
        1
    );
    assert_eq!(
        count(
            &all,
            "tollgate_auth_requests_total",
            &[
                ("outcome", "refused"),
                ("reason", "expired"),
                ("enforced", "true")
            ]
        ),
        1
    );
    assert_eq!(
        count(
            &all,
            "tollgate_auth_requests_total",
            &[("outcome", "refused"), ("reason", "malformed")]
        ),
        1
    );
    assert_eq!(
        count(
            &all,
            "tollgate_rate_limit_decisions_total",
            &[("policy", "anonymous"), ("decision", "allowed")]
        ),
        2
    );
    assert_eq!(
        count(
            &all,
            "tollgate_rate_limit_decisions_total",
            &[("policy", "anonymous"), ("decision", "limited")]
        ),
        1
    );
    assert_eq!(
        count(
            &all,
            "tollgate_rate_limit_decisions_total",
            &[("policy", "registered"), ("decision", "allowed")]
        ),
        1
    );
    let histogram = snapshot
        .iter()
        .find(|(k, _, _, _)| k.key().name() == "tollgate_auth_verify_seconds");
    assert!(
        matches!(histogram, Some((_, _, _, DebugValue::Histogram(v))) if v.len() == 3),
        "one sample per token seen"
    );
    assert!(
        snapshot
            .iter()
            .any(|(k, _, _, v)| k.key().name() == "tollgate_rate_limit_keys"
                && matches!(v, DebugValue::Gauge(_)))
    );
    // The cap, for an alert to compare the count with (LocalStore default).
    assert!(snapshot.iter().any(|(k, _, _, v)| {
        k.key().name() == "tollgate_rate_limit_max_keys"
            && matches!(v, DebugValue::Gauge(g) if g.into_inner() == 1_000_000.0)
    }));
    // Labels never carry tokens, subjects or addresses.
    let rendered = format!("{snapshot:?}");
    for secret in ["user-1", "192.0.2", &token[..20]] {
        assert!(!rendered.contains(secret), "{secret} in metrics");
    }
}

#[test]
fn cache_hits_are_timed_only_when_asked() {
    // The verification histogram shows what verification costs: a cache hit
    // is a look-up, recorded only with `time_cache_hits(true)`.
    let token = mint(Algorithm::HS256, &good_claims());
    for (timed, samples) in [(false, 1), (true, 3)] {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            run(async {
                let auth = JwtAuthLayer::<Value>::builder()
                    .key(Key::hmac(SECRET).unwrap())
                    .cookie("da3")
                    .issuer(ISSUER)
                    .audience(AUDIENCE)
                    .clock(|| NOW)
                    .cache(100)
                    .time_cache_hits(timed)
                    .build()
                    .unwrap();
                let svc = ServiceBuilder::new()
                    .layer(auth)
                    .service(Counter::default().service());
                for _ in 0..3 {
                    let res = svc
                        .clone()
                        .oneshot(request("192.0.2.1", Some(&token)))
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                }
            })
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let histogram = snapshot
            .iter()
            .find(|(k, _, _, _)| k.key().name() == "tollgate_auth_verify_seconds");
        assert!(
            matches!(histogram, Some((_, _, _, DebugValue::Histogram(v))) if v.len() == samples),
            "time_cache_hits({timed}): {samples} samples expected, got {histogram:?}"
        );
        let all = counters(&snapshot);
        assert_eq!(
            count(
                &all,
                "tollgate_auth_requests_total",
                &[("outcome", "authenticated")]
            ),
            3,
            "every request is counted, hit or miss"
        );
    }
}

#[test]
fn shadow_mode_decides_counts_and_never_enforces() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let statuses = metrics::with_local_recorder(&recorder, || {
        run(async {
            let svc = stack(true, true);
            let mut statuses = Vec::new();
            for req in [
                request("192.0.2.1", None),
                request("192.0.2.1", None),
                request("192.0.2.1", None),
                request("192.0.2.1", Some(&expired())),
            ] {
                let res = svc.clone().oneshot(req).await.unwrap();
                assert!(res.headers().get("ratelimit").is_none() || res.status() == 200);
                statuses.push(res.status().as_u16());
            }
            statuses
        })
    });
    assert_eq!(statuses, [200, 200, 200, 200], "nothing enforced");
    let all = counters(&snapshotter.snapshot().into_vec());
    assert_eq!(
        count(
            &all,
            "tollgate_rate_limit_decisions_total",
            &[("decision", "limited"), ("enforced", "false")]
        ),
        2
    );
    assert_eq!(
        count(
            &all,
            "tollgate_auth_requests_total",
            &[
                ("outcome", "refused"),
                ("reason", "expired"),
                ("enforced", "false")
            ]
        ),
        1
    );
}

fn logs(trace_subject: bool, token: &str) -> String {
    capture_logs(|| {
        run(async {
            let auth = JwtAuthLayer::<Value>::builder()
                .key(Key::hmac(SECRET).unwrap())
                .cookie("da3")
                .issuer(ISSUER)
                .audience(AUDIENCE)
                .clock(|| NOW)
                .trace_subject(trace_subject)
                .build()
                .unwrap();
            let limit = RateLimitLayer::builder("p", Quota::per_hour(1))
                .key(KeyBy::global())
                .build()
                .unwrap();
            let svc = ServiceBuilder::new()
                .layer(auth)
                .layer(limit)
                .service(Counter::default().service());
            for req in [
                request("192.0.2.9", Some(token)),
                request("192.0.2.9", Some(token)),
                request("192.0.2.9", Some(&expired())),
            ] {
                svc.clone().oneshot(req).await.unwrap();
            }
        });
    })
}

#[test]
fn tracing_events_name_policy_outcome_reason_and_the_subject_only_on_request() {
    let token = mint(Algorithm::HS256, &good_claims());
    let quiet = logs(false, &token);
    assert!(quiet.contains("outcome=\"authenticated\""), "{quiet}");
    assert!(
        quiet.contains("policy=p") && quiet.contains("outcome=\"limited\""),
        "{quiet}"
    );
    assert!(quiet.contains("reason=\"expired\""), "{quiet}");
    assert!(
        !quiet.contains("user-1"),
        "subject logged without trace_subject"
    );
    let verbose = logs(true, &token);
    assert!(verbose.contains("subject=\"user-1\""), "{verbose}");
    for log in [quiet, verbose] {
        for part in token.split('.') {
            assert!(!log.contains(part), "token content in logs");
        }
    }
}

const CONFIG: &str = r#"
[auth]
cookie = "da3"
sources = ["cookie", "bearer"]
mode = "optional"
issuers = ["https://auth.example"]
audiences = ["api"]
leeway_secs = 60
cache = 100
keys = [{ type = "hmac", secret = "SECRET", kid = "k1" }]

[rate_limit]
key = "subject_or_client_ip"
trusted_proxies = ["10.0.0.0/8"]
headers = "both"
default = { name = "anonymous", per_hour = 2 }
authenticated = { name = "registered", per_hour = 3, burst = 3 }
"#;

async fn sequence<S>(svc: S) -> Vec<(u16, Option<String>, Option<String>)>
where
    S: Service<Request<()>, Error = std::convert::Infallible> + Clone,
    S::Response: Into<
        Response<
            tollgate::body::ResponseBody<tollgate::body::ResponseBody<http_body_util::Full<Bytes>>>,
        >,
    >,
{
    // Both stacks run on the system clock: tokens minted for now.
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = good_claims();
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 3600);
    let token = mint_with(
        json!({"alg": "HS256", "kid": "k1"}),
        Algorithm::HS256,
        &claims,
    );
    let mut out = Vec::new();
    let mut reqs = Vec::new();
    for _ in 0..3 {
        reqs.push(request("192.0.2.1", None));
    }
    for _ in 0..4 {
        reqs.push(request("192.0.2.2", Some(&token)));
    }
    let mut spoofed = request("10.0.0.1", None);
    spoofed.headers_mut().insert(
        "x-forwarded-for",
        HeaderValue::from_static("6.6.6.6, 192.0.2.1"),
    );
    reqs.push(spoofed);
    reqs.push(request("192.0.2.3", Some(&expired())));
    for req in reqs {
        let res: Response<_> = svc.clone().oneshot(req).await.unwrap().into();
        let h = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        out.push((
            res.status().as_u16(),
            h("ratelimit"),
            h("x-ratelimit-remaining"),
        ));
    }
    out
}

#[tokio::test]
async fn file_built_and_code_built_stacks_behave_the_same() {
    let text = CONFIG.replace(
        "\"SECRET\"",
        &format!("{:?}", std::str::from_utf8(SECRET).unwrap()),
    );
    let config = TollgateConfig::from_toml(&text).unwrap();
    let file_auth = config
        .auth
        .as_ref()
        .unwrap()
        .layer::<Value>()
        .await
        .unwrap();
    let file_limit = config.rate_limit.as_ref().unwrap().layer().await.unwrap();
    let file = ServiceBuilder::new()
        .layer(file_auth)
        .layer(file_limit.clone())
        .service(Counter::default().service());

    let proxies = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
    let code_auth = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap().kid("k1"))
        .cookie("da3")
        .bearer()
        .mode(AuthMode::Optional)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .cache(100)
        .build()
        .unwrap();
    let code_limit = RateLimitLayer::builder("anonymous", Quota::per_hour(2))
        .key(KeyBy::subject_or_client_ip(proxies))
        .authenticated("registered", Quota::per_hour(3).burst(3))
        .headers(tollgate::rate_limit::HeaderStyle::Both)
        .build()
        .unwrap();
    let code = ServiceBuilder::new()
        .layer(code_auth)
        .layer(code_limit)
        .service(Counter::default().service());

    let from_file = sequence(file).await;
    let from_code = sequence(code).await;
    assert_eq!(from_file, from_code);
    let statuses: Vec<u16> = from_file.iter().map(|(s, _, _)| *s).collect();
    // anonymous ×3 (burst 2), the user ×4 (burst 3), the anonymous client
    // again behind a trusted proxy (its bucket is spent), an expired token.
    assert_eq!(statuses, [200, 200, 429, 200, 200, 200, 429, 429, 401]);
    assert_eq!(from_file[3].1.as_deref(), Some("\"registered\";r=2;t=1200"));
    assert_eq!(file_limit.store().key_count(), 2);
}

#[test]
fn invalid_files_name_the_field_and_the_reason() {
    let cases = [
        ("[auth]\nmod = \"lenient\"\n", "mod"),
        ("[auth]\nmode = 5\n", "mode"),
        (
            "[rate_limit]\ndefault = { name = \"a\", per_minute = 1, per_hour = 2 }\n",
            "rate_limit.default",
        ),
        (
            "[rate_limit]\ndefault = { name = \"a\", per_minute = 0 }\n",
            "rate_limit.default",
        ),
        (
            "[rate_limit]\nkey = \"ip\"\ndefault = { name = \"a\", per_minute = 1 }\n",
            "unknown variant `ip`, expected one of `global`, `peer_ip`",
        ),
        (
            "[rate_limit]\ntrusted_proxies = [\"10.0.0.0/33\"]\ndefault = { name = \"a\", per_minute = 1 }\n",
            "rate_limit.trusted_proxies",
        ),
        (
            "[auth]\nmode = \"strict\"\n",
            "unknown variant `strict`, expected one of `required`, `optional`, `lenient`",
        ),
        (
            "[rate_limit]\nheaders = \"ietf2\"\ndefault = { name = \"a\", per_minute = 1 }\n",
            "line 2",
        ),
        ("[auth]\nsources = [\"cookie\"]\n", "auth.sources"),
        (
            "[auth.revocation]\nredis = \"redis://127.0.0.1\"\n",
            "unknown field `redis`, expected one of `redis_url`, `prefix`, `max_token_lifetime_secs`, `sync_interval_ms`, `pubsub`",
        ),
        ("[auth.revocation]\nprefix = \"p\"\n", "auth.revocation"),
    ];
    for (text, field) in cases {
        let error = match TollgateConfig::from_toml(text) {
            Err(e) => e,
            Ok(config) => run(async {
                if let Some(auth) = &config.auth
                    && let Err(e) = auth.layer::<Value>().await
                {
                    return e;
                }
                config
                    .rate_limit
                    .as_ref()
                    .unwrap()
                    .layer()
                    .await
                    .err()
                    .unwrap()
            }),
        };
        let message = error.to_string();
        assert!(message.contains(field), "{text:?}: {message}");
    }
}

/// The decision and (opt-in) the subject are recorded on the request's span
/// when it declares the fields; the refusing policy is the one named.
#[test]
fn decisions_and_the_subject_are_recorded_on_the_current_span() {
    use tracing::field::Empty;
    let token = mint(Algorithm::HS256, &good_claims());
    for trace_subject in [false, true] {
        let logs = capture_logs(|| {
            run(async {
                let auth = JwtAuthLayer::<Value>::builder()
                    .key(Key::hmac(SECRET).unwrap())
                    .cookie("da3")
                    .issuer(ISSUER)
                    .audience(AUDIENCE)
                    .clock(|| NOW)
                    .trace_subject(trace_subject)
                    .build()
                    .unwrap();
                let limit = RateLimitLayer::builder("per-user", Quota::per_hour(1))
                    .key(KeyBy::global())
                    .build()
                    .unwrap();
                let svc = ServiceBuilder::new()
                    .layer(auth)
                    .layer(limit)
                    .service(Counter::default().service());
                for _ in 0..2 {
                    let span = tracing::info_span!(
                        "request",
                        "tollgate.auth.outcome" = Empty,
                        "tollgate.auth.reason" = Empty,
                        "enduser.id" = Empty,
                        "tollgate.rate_limit.policy" = Empty,
                        "tollgate.rate_limit.decision" = Empty,
                    );
                    let _entered = span.enter();
                    svc.clone()
                        .oneshot(request("192.0.2.9", Some(&token)))
                        .await
                        .unwrap();
                    tracing::info!("request done");
                }
            });
        });
        let done: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("request done"))
            .collect();
        assert_eq!(done.len(), 2, "{logs}");
        assert!(
            done[0].contains("tollgate.auth.outcome=\"authenticated\""),
            "{logs}"
        );
        assert!(
            done[0].contains("tollgate.rate_limit.policy=\"per-user\""),
            "{logs}"
        );
        assert!(
            done[0].contains("tollgate.rate_limit.decision=\"allowed\""),
            "{logs}"
        );
        assert!(
            done[1].contains("tollgate.rate_limit.decision=\"limited\""),
            "{logs}"
        );
        assert_eq!(
            done[0].contains("enduser.id=\"user-1\""),
            trace_subject,
            "{logs}"
        );
    }
}

/// Issue 26: an `[auth]` table with no key gave the code hint
/// `.key(Key::hmac(..))`; the error names the file's setting instead.
#[tokio::test]
async fn an_auth_table_without_keys_names_the_setting_to_add() {
    let config = TollgateConfig::from_toml("[auth]\ncookie = \"da3\"\n").unwrap();
    let error = config
        .auth
        .as_ref()
        .unwrap()
        .layer::<Value>()
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("auth.keys"), "{error}");
    assert!(error.contains("jwks_url"), "{error}");
    assert!(!error.contains(".key("), "{error}");
}
