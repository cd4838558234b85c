//! Limits charged by the handler: the door's unit, an estimate taken before
//! the work (all or nothing), the actual cost settled after (owed past the
//! bucket, or given back), the headers after the last charge — on a fake
//! clock, so every figure is exact. And what a hostile caller cannot do:
//! charge another bucket, charge nothing for something, or charge more than
//! one request may.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use governor::clock::FakeRelativeClock;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tollgate::rate_limit::{
    ChargeErrorKind, Cost, KeyBy, LocalStore, PeerAddr, Quota, RateLimitLayer,
};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt, service_fn};

type Svc =
    BoxCloneService<Request<()>, Response<tollgate::body::ResponseBody<Full<Bytes>>>, Infallible>;

const A: &str = "192.0.2.1";
const B: &str = "192.0.2.2";

/// A handler that charges the `x-estimate` header before its work and
/// settles `x-actual` after; a refused charge answers the standard refusal.
async fn handler(req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    let number = |name: &str| -> Option<u32> {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let Some(cost) = req.extensions().get::<Cost>().cloned() else {
        return Ok(Response::new(Full::new(Bytes::from_static(
            b"no cost handle",
        ))));
    };
    if let Some(estimate) = number("x-estimate")
        && let Err(refused) = cost.charge(estimate).await
    {
        return Ok(refused.into_http_response().map(Full::new));
    }
    if let Some(actual) = number("x-actual") {
        cost.settle(actual).await;
    }
    Ok(Response::new(Full::new(Bytes::from(format!(
        "charged {}",
        cost.charged()
    )))))
}

/// 60 units a minute (one a second), burst 10; one request costs at most 8.
fn fixture(max_cost: u32) -> (Svc, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("cost", Quota::per_minute(60).burst(10))
        .key(KeyBy::peer_ip())
        .peer_addr_inserted(true)
        .charged_by_handler(max_cost)
        .store(LocalStore::with_clock(clock.clone()))
        .build()
        .expect("layer");
    (
        BoxCloneService::new(layer.layer(service_fn(handler))),
        clock,
    )
}

fn request(ip: &str, estimate: Option<u32>, actual: Option<u32>) -> Request<()> {
    let mut builder = Request::builder();
    if let Some(estimate) = estimate {
        builder = builder.header("x-estimate", estimate);
    }
    if let Some(actual) = actual {
        builder = builder.header("x-actual", actual);
    }
    let mut req = builder.body(()).expect("request");
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().expect("ip"), 40_000)));
    req
}

async fn send(svc: &mut Svc, req: Request<()>) -> (StatusCode, http::HeaderMap, String) {
    let res = svc
        .ready()
        .await
        .expect("ready")
        .call(req)
        .await
        .expect("call");
    let (parts, body) = res.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .expect("body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn ratelimit(headers: &http::HeaderMap) -> &str {
    headers["ratelimit"].to_str().expect("ascii")
}

#[tokio::test]
async fn the_estimate_is_taken_before_the_work_and_the_header_reports_what_is_left() {
    let (mut svc, _clock) = fixture(8);
    // Door 1 + estimate 4 = 5 of 10.
    let (status, headers, body) = send(&mut svc, request(A, Some(4), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "charged 5");
    // 5 left; the next unit is back in 1 s.
    assert_eq!(ratelimit(&headers), "\"cost\";r=5;t=1");
    // Door 1 + 4 = 5 more: the bucket is empty, but it fitted.
    let (status, headers, _) = send(&mut svc, request(A, Some(4), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ratelimit(&headers), "\"cost\";r=0;t=1");
    // Empty: the door refuses.
    let (status, _, _) = send(&mut svc, request(A, None, None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn an_estimate_the_bucket_cannot_cover_is_refused_whole_with_the_time_it_needs() {
    let (mut svc, clock) = fixture(8);
    // 1 + 6 = 7 of 10: 3 left.
    assert_eq!(
        send(&mut svc, request(A, Some(6), None)).await.0,
        StatusCode::OK
    );
    // The door takes 1 (2 left); 5 more do not fit: refused, nothing of the 5 taken.
    let (status, headers, body) = send(&mut svc, request(A, Some(5), None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // 2 left, 5 needed: 3 more units, one a second.
    assert_eq!(headers["retry-after"], "3");
    assert!(body.contains("quota-exceeded"), "{body}");
    assert!(body.contains("\"violated-policies\":[\"cost\"]"), "{body}");
    assert!(body.contains("\"reason\":\"rate_limited\""), "{body}");
    // Nothing of the refused 5 was spent: 2 are left for a cheap request
    // (door 1 + 1).
    let (status, headers, _) = send(&mut svc, request(A, Some(1), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ratelimit(&headers), "\"cost\";r=0;t=1");
    // Three seconds later three units are back: exactly enough for 1 + 2.
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        send(&mut svc, request(A, Some(2), None)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&mut svc, request(A, None, None)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn settling_gives_back_an_overestimate_and_makes_an_underestimate_owed() {
    let (mut svc, clock) = fixture(8);
    // Estimated 1 + 7 = 8, cost 2 in all: 6 given back, 8 left.
    let (status, headers, body) = send(&mut svc, request(A, Some(7), Some(2))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "charged 2");
    assert_eq!(ratelimit(&headers), "\"cost\";r=8;t=1");
    // Estimated 1, cost 8 in all: 7 owed → 8 − 8 = 0 left.
    let (_, headers, body) = send(&mut svc, request(A, None, Some(8))).await;
    assert_eq!(body, "charged 8");
    assert_eq!(ratelimit(&headers), "\"cost\";r=0;t=1");
    // Owed past the bucket: 1 + 7 estimated (fits 0? no: the door refuses).
    clock.advance(Duration::from_secs(2));
    // Two back: door 1, then cost 8 in all: 7 owed with 1 left → 6 in debt.
    let (status, headers, _) = send(&mut svc, request(A, None, Some(8))).await;
    assert_eq!(status, StatusCode::OK);
    // In debt by 6: the next unit is back in 7 s.
    assert_eq!(ratelimit(&headers), "\"cost\";r=0;t=7");
    clock.advance(Duration::from_secs(6));
    let (status, headers, _) = send(&mut svc, request(A, None, None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{headers:?}");
    assert_eq!(headers["retry-after"], "1");
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        send(&mut svc, request(A, None, None)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_caller_charges_only_its_own_bucket() {
    let (mut svc, _clock) = fixture(8);
    // A spends everything, by estimate and by debt.
    send(&mut svc, request(A, Some(7), None)).await;
    send(&mut svc, request(A, None, Some(8))).await;
    assert_eq!(
        send(&mut svc, request(A, None, None)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // B's bucket is whole: door 1 + 7.
    let (status, headers, _) = send(&mut svc, request(B, Some(7), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ratelimit(&headers), "\"cost\";r=2;t=1");
}

#[tokio::test]
async fn zero_huge_and_clamped_charges() {
    let (mut svc, _clock) = fixture(8);
    // A charge of 0 changes nothing: only the door's unit.
    let (status, headers, body) = send(&mut svc, request(A, Some(0), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "charged 1");
    assert_eq!(ratelimit(&headers), "\"cost\";r=9;t=1");
    // More than one request may cost in all (1 + 8 > 8): refused without
    // being tried, and marked as such.
    let (status, headers, body) = send(&mut svc, request(A, Some(8), None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("\"reason\":\"too_costly\""), "{body}");
    assert!(
        headers.get("retry-after").is_none(),
        "waiting does not help"
    );
    // u32::MAX: the same, no overflow.
    let (status, _, body) = send(&mut svc, request(A, Some(u32::MAX), None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("too_costly"), "{body}");
    // Nothing was spent by the refused charges: 3 doors so far.
    let (_, headers, _) = send(&mut svc, request(A, Some(0), None)).await;
    assert_eq!(ratelimit(&headers), "\"cost\";r=6;t=1");
    // A settlement past the maximum is counted as the maximum (8), and one
    // of 0 as the door's 1 (never a refund of the door).
    let (_, headers, body) = send(&mut svc, request(B, None, Some(u32::MAX))).await;
    assert_eq!(body, "charged 8");
    assert_eq!(ratelimit(&headers), "\"cost\";r=2;t=1");
    let (_, headers, body) = send(&mut svc, request(B, Some(1), Some(0))).await;
    assert_eq!(body, "charged 1");
    assert_eq!(ratelimit(&headers), "\"cost\";r=1;t=1");
}

#[tokio::test]
async fn the_maximum_is_never_more_than_the_burst_and_zero_is_refused_at_build() {
    // max_cost 50 with a burst of 10: one request costs at most 10.
    let (mut svc, _clock) = fixture(50);
    let (status, _, body) = send(&mut svc, request(A, Some(10), None)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.contains("too_costly"), "{body}");
    let (status, headers, _) = send(&mut svc, request(A, Some(8), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ratelimit(&headers), "\"cost\";r=0;t=1");
    let err = RateLimitLayer::builder("cost", Quota::per_minute(60))
        .key(KeyBy::global())
        .charged_by_handler(0)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_cost");
}

#[tokio::test]
async fn concurrent_charges_of_one_request_cannot_pass_its_maximum_together() {
    let clock = FakeRelativeClock::default();
    let layer = RateLimitLayer::builder("cost", Quota::per_minute(60).burst(10))
        .key(KeyBy::global())
        .charged_by_handler(6)
        .store(LocalStore::with_clock(clock))
        .build()
        .expect("layer");
    let mut svc = layer.layer(service_fn(|req: Request<()>| async move {
        let cost = req.extensions().get::<Cost>().cloned().expect("handle");
        // Five charges of 2 at once against a maximum of 6 (1 at the door):
        // two fit, three are refused as too costly.
        let (a, b, c, d, e) = tokio::join!(
            cost.charge(2),
            cost.charge(2),
            cost.charge(2),
            cost.charge(2),
            cost.charge(2)
        );
        let results = [a, b, c, d, e];
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let too_costly = results
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|e| e.kind() == ChargeErrorKind::TooCostly)
            })
            .count();
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
            "{ok} {too_costly} {}",
            cost.charged()
        )))))
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"2 3 5");
}

#[tokio::test]
async fn without_charged_by_handler_there_is_no_handle_and_exempt_requests_get_none() {
    let layer = RateLimitLayer::builder("plain", Quota::per_minute(60))
        .key(KeyBy::global())
        .build()
        .expect("layer");
    let mut svc = layer.layer(service_fn(handler));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"no cost handle");

    let layer = RateLimitLayer::builder("cost", Quota::per_minute(60))
        .key(KeyBy::global())
        .charged_by_handler(5)
        .exempt(|parts| parts.uri.path() == "/healthz")
        .build()
        .expect("layer");
    let mut svc = layer.layer(service_fn(handler));
    let req = Request::builder().uri("/healthz").body(()).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"no cost handle");
}

#[tokio::test]
async fn a_grpc_call_refused_by_cost_gets_resource_exhausted() {
    let (mut svc, _clock) = fixture(8);
    let grpc = |estimate: u32| {
        let mut req = request(A, Some(estimate), None);
        *req.method_mut() = http::Method::POST;
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        req
    };
    assert_eq!(send(&mut svc, grpc(7)).await.0, StatusCode::OK);
    let (status, headers, _) = send(&mut svc, grpc(7)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "gRPC refusals are trailers-only 200s"
    );
    assert_eq!(headers["grpc-status"], "8");
}

#[cfg(feature = "metrics")]
#[test]
fn units_are_counted_by_policy_and_event() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (mut svc, _clock) = fixture(8);
            // 3 charged, then 1 in all: 3 given back (9 left).
            send(&mut svc, request(A, Some(3), Some(1))).await;
            // The door's 1, then 5 in all: 4 owed (4 left).
            send(&mut svc, request(A, None, Some(5))).await;
            // The door's 1 (3 left): 7 more are refused.
            send(&mut svc, request(A, Some(7), None)).await;
        });
    });
    let mut units = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != tollgate::observe::names::RATE_LIMIT_COST_UNITS {
            continue;
        }
        let labels: Vec<_> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(n) = value {
            units.insert(labels.join(","), n);
        }
    }
    let expected: std::collections::BTreeMap<String, u64> = [
        ("policy=cost,event=charged", 3),
        ("policy=cost,event=refunded", 3),
        ("policy=cost,event=owed", 4),
        ("policy=cost,event=refused", 7),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(units, expected);
}
