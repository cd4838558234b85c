//! The concurrency limit's decision for one request: refuse a caller with
//! `max` requests in flight; otherwise take a slot, held by the response
//! until its body ends or is dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};

use crate::body::BodyGuard;
#[cfg(not(feature = "redis"))]
use crate::middleware::Never;
use crate::middleware::{After, Decide, Verdict};
use crate::observe::{ConcurrencyEvent, EventMetrics, names};
use crate::rate_limit::{KeyBy, RateKey};
use crate::reject::{GrpcCode, Refusal, RefusalKind, Responder};

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The state every clone of a layer shares.
pub struct Shared {
    key: KeyBy,
    max: u32,
    /// Where the replicas lease their slots, if anywhere.
    #[cfg(feature = "redis")]
    pub(super) slots: Option<Arc<super::shared::Inner>>,
    in_flight: Mutex<HashMap<RateKey, u32>>,
    /// `"name";q=N;qu="concurrent-requests"`, rendered once.
    policy: HeaderValue,
    /// `"name";r=LEFT` for every LEFT up to 4,096, rendered once (a
    /// response clones one instead of formatting it).
    remaining: Vec<HeaderValue>,
    name: Arc<str>,
    metrics: EventMetrics,
    warned_no_key: AtomicBool,
}

impl Shared {
    pub(super) fn new(name: &str, key: KeyBy, max: u32) -> Self {
        let policy =
            HeaderValue::try_from(format!("\"{name}\";q={max};qu=\"concurrent-requests\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"concurrency\""));
        let render = |left: u32| {
            HeaderValue::try_from(format!("\"{name}\";r={left}"))
                .unwrap_or_else(|_| HeaderValue::from_static("\"concurrency\";r=0"))
        };
        Self {
            key,
            max,
            #[cfg(feature = "redis")]
            slots: None,
            in_flight: Mutex::new(HashMap::new()),
            policy,
            remaining: (0..=max.min(4_096)).map(render).collect(),
            name: name.into(),
            metrics: EventMetrics::new(names::CONCURRENCY_EVENTS, "limit", name.into()),
            warned_no_key: AtomicBool::new(false),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<RateKey, u32>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests of `key` in flight now.
    pub(super) fn in_flight(&self, key: &RateKey) -> u32 {
        self.table().get(key).copied().unwrap_or(0)
    }

    /// `RateLimit: "name";r=N`.
    fn remaining(&self, in_flight: u32) -> HeaderValue {
        let left = self.max.saturating_sub(in_flight);
        match self.remaining.get(left as usize) {
            Some(value) => value.clone(),
            None => HeaderValue::try_from(format!("\"{}\";r={left}", self.name))
                .unwrap_or_else(|_| HeaderValue::from_static("\"concurrency\";r=0")),
        }
    }
}

/// A request's slot: given back when dropped (the response body ended or
/// was dropped, the request was cancelled, the handler panicked).
pub struct Permit {
    shared: Arc<Shared>,
    key: RateKey,
    /// The key's requests in flight with this one, when it was let in.
    in_flight: u32,
    /// Its lease in Redis, when the replicas share the slots (boxed: the
    /// unshared permit stays small).
    #[cfg(feature = "redis")]
    lease: Option<Box<super::shared::Lease>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        #[cfg(feature = "redis")]
        if let (Some(lease), Some(slots)) = (self.lease.take(), &self.shared.slots) {
            // Not renewed any more, whatever happens next; removed from
            // Redis now when a runtime is at hand (else it expires).
            slots.forget(&lease);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let slots = Arc::clone(slots);
                runtime.spawn(async move { slots.release(&lease).await });
            }
        }
        let mut table = self.shared.table();
        if let Some(n) = table.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

/// What a passed request's response gets: the headers, and the slot to
/// hold until the body ends.
#[derive(Default)]
pub struct Slot(Option<Permit>);

impl After for Slot {
    fn apply<B>(self, response: &mut Response<B>) -> Option<BodyGuard> {
        let permit = self.0?;
        let headers = response.headers_mut();
        headers.append(&RATELIMIT_POLICY, permit.shared.policy.clone());
        headers.append(&RATELIMIT, permit.shared.remaining(permit.in_flight));
        Some(BodyGuard::new(permit))
    }
}

/// The decision of [`ConcurrencyLimit`](super::ConcurrencyLimit).
pub struct ConcurrencyDecision<R> {
    pub(super) shared: Arc<Shared>,
    pub(super) responder: R,
}

impl<R: Clone> Clone for ConcurrencyDecision<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            responder: self.responder.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for ConcurrencyDecision<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("max", &self.shared.max)
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl<R: Responder> ConcurrencyDecision<R> {
    /// The refusal of a caller with `max` requests in flight.
    fn refuse(&self, parts: &http::request::Parts) -> http::Response<bytes::Bytes> {
        self.shared.metrics.event(ConcurrencyEvent::Refused);
        tracing::debug!(outcome = "limited", "tollgate: too many requests in flight");
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.append(&RATELIMIT_POLICY, self.shared.policy.clone());
        headers.append(&RATELIMIT, self.shared.remaining(self.shared.max));
        let refusal = Refusal::new(
            RefusalKind::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            GrpcCode::ResourceExhausted,
            "too_many_in_flight",
            "too many requests in flight for this caller; retry when one ends",
        )
        .with_policy(&self.shared.name)
        .with_headers(headers);
        self.responder.respond(&refusal, parts)
    }
}

/// A lease being taken in Redis, with the request's local slot.
#[cfg(feature = "redis")]
pub type Leasing = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (super::shared::Acquired, super::shared::Lease, Permit)>
            + Send,
    >,
>;

impl<R, B> Decide<B> for ConcurrencyDecision<R>
where
    R: Responder,
{
    type After = Slot;
    #[cfg(feature = "redis")]
    type Wait = Leasing;
    #[cfg(not(feature = "redis"))]
    type Wait = Never;

    fn decide<F>(
        &self,
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Slot, Self::Wait, B> {
        let (parts, body) = req.into_parts();
        let Some(key) = self.shared.key.key(&parts) else {
            if !self.shared.warned_no_key.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "tollgate: the concurrency limit saw a request without a key (no peer \
                     address?); such requests are not limited"
                );
            }
            self.shared.metrics.event(ConcurrencyEvent::Untracked);
            return Verdict::Pass(call(Request::from_parts(parts, body)), Slot(None));
        };
        // One look-up; the key is cloned only for a caller new to the table.
        let mut table = self.shared.table();
        let admitted = match table.get_mut(&key) {
            Some(n) if *n >= self.shared.max => None,
            Some(n) => {
                *n += 1;
                Some(*n)
            }
            None => {
                table.insert(key.clone(), 1);
                Some(1)
            }
        };
        let Some(in_flight) = admitted else {
            drop(table);
            return Verdict::Refuse(self.refuse(&parts));
        };
        drop(table);
        let permit = Permit {
            shared: Arc::clone(&self.shared),
            key,
            in_flight,
            #[cfg(feature = "redis")]
            lease: None,
        };
        // Shared: the lease in Redis decides (the local slot is held
        // meanwhile, so a replica never holds more than `max` itself).
        #[cfg(feature = "redis")]
        if let Some(slots) = &self.shared.slots {
            let slots = Arc::clone(slots);
            let (name, key, max) = (
                Arc::clone(&self.shared.name),
                permit.key.to_store_key(),
                self.shared.max,
            );
            let leasing: Leasing = Box::pin(async move {
                let (acquired, lease) = slots.acquire(&name, &key, max).await;
                (acquired, lease, permit)
            });
            return Verdict::Wait(leasing, Request::from_parts(parts, body));
        }
        self.shared.metrics.event(ConcurrencyEvent::Admitted);
        Verdict::Pass(call(Request::from_parts(parts, body)), Slot(Some(permit)))
    }

    #[cfg(feature = "redis")]
    fn resume<F>(
        &self,
        (acquired, lease, mut permit): (super::shared::Acquired, super::shared::Lease, Permit),
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Slot, std::convert::Infallible, B> {
        use super::shared::Acquired;
        match acquired {
            Acquired::Full => {
                drop(permit);
                let (parts, _) = req.into_parts();
                Verdict::Refuse(self.refuse(&parts))
            }
            Acquired::Taken(held) => {
                permit.in_flight = held;
                permit.lease = Some(Box::new(lease));
                self.shared.metrics.event(ConcurrencyEvent::Admitted);
                Verdict::Pass(call(req), Slot(Some(permit)))
            }
            Acquired::Alone => {
                permit.lease = Some(Box::new(lease));
                self.shared.metrics.event(ConcurrencyEvent::Alone);
                Verdict::Pass(call(req), Slot(Some(permit)))
            }
        }
    }
}
