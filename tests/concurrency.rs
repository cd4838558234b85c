//! The per-caller concurrency limit: at most N in flight, each slot given
//! back when the response body ends, is dropped, when the request is
//! cancelled and when the handler panics; callers do not share slots; the
//! draft-11 headers and the refusal.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tollgate::concurrency::{ConcurrencyLimitLayer, ResponseFuture};
use tollgate::rate_limit::{KeyBy, PeerAddr, RateKey};
use tower::{Layer, Service, ServiceExt};

/// What the handler does: answer at once, never answer, or panic.
#[derive(Clone, Copy)]
enum Handler {
    Answer,
    Hang,
    Panic,
}

impl Service<Request<()>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        match self {
            Self::Answer => {
                Box::pin(async { Ok(Response::new(Full::new(Bytes::from_static(b"hello")))) })
            }
            Self::Hang => Box::pin(std::future::pending()),
            Self::Panic => Box::pin(async { panic!("the handler failed") }),
        }
    }
}

fn from(ip: &str) -> Request<()> {
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().expect("ip"), 40_000)));
    request
}

fn key(ip: &str) -> RateKey {
    RateKey::ip(ip.parse().expect("ip"), 64)
}

fn layer(max: u32) -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::builder(max)
        .key(KeyBy::peer_ip())
        .name("per-caller")
        .peer_addr_inserted(true)
        .build()
        .expect("layer")
}

const A: &str = "192.0.2.1";
const B: &str = "192.0.2.2";

#[tokio::test]
async fn at_most_max_in_flight_each_slot_back_when_its_body_ends() {
    let limit = layer(2);
    let mut svc = limit.layer(Handler::Answer);
    let mut first = svc.ready().await.unwrap().call(from(A)).await.unwrap();
    assert_eq!(
        first.headers()["ratelimit-policy"],
        "\"per-caller\";q=2;qu=\"concurrent-requests\""
    );
    assert_eq!(first.headers()["ratelimit"], "\"per-caller\";r=1");
    let second = svc.ready().await.unwrap().call(from(A)).await.unwrap();
    assert_eq!(second.headers()["ratelimit"], "\"per-caller\";r=0");
    assert_eq!(limit.in_flight(&key(A)), 2);

    // The third is refused, before the handler.
    let refused = svc.ready().await.unwrap().call(from(A)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.headers()["ratelimit"], "\"per-caller\";r=0");
    let problem: serde_json::Value =
        serde_json::from_slice(&refused.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(problem["type"], tollgate::reject::QUOTA_EXCEEDED);
    assert_eq!(problem["reason"], "too_many_in_flight");
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["per-caller"])
    );
    // Another caller has its own slots.
    let other = svc.ready().await.unwrap().call(from(B)).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    // The first body read to its end (the body itself still held): its
    // slot is back.
    let body = first.body_mut();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "hello"
    );
    assert!(body.frame().await.is_none());
    assert_eq!(limit.in_flight(&key(A)), 1);
    // The second body dropped unread: its slot is back too.
    drop(second);
    assert_eq!(limit.in_flight(&key(A)), 0);
    let again = svc.ready().await.unwrap().call(from(A)).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    drop((first, other, again));
    assert_eq!(limit.in_flight(&key(A)) + limit.in_flight(&key(B)), 0);
}

#[tokio::test]
async fn a_cancelled_request_gives_its_slot_back() {
    let limit = layer(1);
    let mut svc = limit.layer(Handler::Hang);
    let future: ResponseFuture<Handler, (), _> = svc.ready().await.unwrap().call(from(A));
    let timed_out = tokio::time::timeout(std::time::Duration::from_millis(10), future).await;
    assert!(timed_out.is_err(), "the handler never answers");
    // The timeout dropped the future: the slot is free.
    assert_eq!(limit.in_flight(&key(A)), 0);
    let mut pending = Box::pin(svc.ready().await.unwrap().call(from(A)));
    assert!(futures_now(&mut pending).is_none());
    assert_eq!(limit.in_flight(&key(A)), 1);
    drop(pending);
    assert_eq!(limit.in_flight(&key(A)), 0);
}

/// Polls once.
fn futures_now<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    match Pin::new(future).poll(&mut Context::from_waker(waker)) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[tokio::test]
async fn a_panicking_handler_gives_its_slot_back() {
    let limit = layer(1);
    let mut svc = limit.layer(Handler::Panic);
    let future = svc.ready().await.unwrap().call(from(A));
    let joined = tokio::spawn(future).await;
    assert!(joined.expect_err("the handler panicked").is_panic());
    assert_eq!(limit.in_flight(&key(A)), 0);
    // And the caller is served again.
    let mut ok = layer(1).layer(Handler::Answer);
    assert_eq!(
        ok.ready()
            .await
            .unwrap()
            .call(from(A))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[test]
fn misconfigurations_fail_at_build() {
    let err = ConcurrencyLimitLayer::builder(0)
        .peer_addr_inserted(true)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "concurrency.max");
    let err = ConcurrencyLimitLayer::builder(1)
        .name("a b")
        .peer_addr_inserted(true)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "concurrency.name");
}

/// A `[concurrency.NAME]` table builds the same layer, and every admission
/// and refusal is counted under the limit's name.
#[test]
fn a_table_configures_it_and_its_events_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tollgate::config::TollgateConfig;
    let config =
        TollgateConfig::from_toml("[concurrency.in-flight]\nmax = 1\nkey = \"peer_ip\"\n").unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let limit = config
                    .concurrency("in-flight")
                    .unwrap()
                    .layer("in-flight")
                    .await
                    .unwrap();
                let mut svc = limit.layer(Handler::Answer);
                let held = svc.ready().await.unwrap().call(from(A)).await.unwrap();
                assert_eq!(
                    held.headers()["ratelimit-policy"],
                    "\"in-flight\";q=1;qu=\"concurrent-requests\""
                );
                let refused = svc.ready().await.unwrap().call(from(A)).await.unwrap();
                assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
                drop(held);
                let _ = svc
                    .ready()
                    .await
                    .unwrap()
                    .call(Request::new(()))
                    .await
                    .unwrap();
            });
    });
    let mut counted: Vec<(String, String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "tollgate_concurrency_events_total")
        .map(|(key, _, _, value)| {
            let label = |name: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let DebugValue::Counter(n) = value else {
                panic!("a counter")
            };
            (label("limit"), label("event"), n)
        })
        .collect();
    counted.sort();
    let expect = |event: &str, n| ("in-flight".to_owned(), event.to_owned(), n);
    assert_eq!(
        counted,
        [
            expect("admitted", 1),
            expect("refused", 1),
            expect("untracked", 1)
        ]
    );
    assert!(TollgateConfig::from_toml("[concurrency.x]\nmax = 1\nmaks = 2\n").is_err());
}
