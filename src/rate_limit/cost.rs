//! Charging by cost: the [`Cost`] handle a handler charges its caller's
//! bucket through, when the layer was built with
//! [`charged_by_handler`](super::RateLimitBuilder::charged_by_handler).
//!
//! The layer charges one unit at the door, as always, and puts a [`Cost`]
//! in the request's extensions, bound to the policy and key it decided:
//! the handler can charge only the caller's own bucket. Before the work,
//! [`Cost::charge`] takes the estimate (all or nothing); after it,
//! [`Cost::settle`] sets what the request cost in all — the difference is
//! owed (even past the bucket: the caller is refused until it is paid) or
//! given back. The response's `RateLimit` header reports what is left after
//! the last charge.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::headers::{Stamp, ceil_secs};
use super::key::RateKey;
use super::limiter::{OnStoreError, Shared};
use super::store::{Check, Decision, RateLimitStore, Spend, StoreError};
use crate::observe::CostEvent;
use crate::reject::{GrpcCode, Head, Refusal, RefusalKind, Responder};

/// A store's answer to a charge, erased.
type Spending = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

/// What [`Cost`] needs of the layer, whatever its store and responder.
trait Account: Send + Sync {
    fn spend(&self, spend: Spend) -> Check<Spending>;
    fn max_cost(&self) -> u32;
    fn on_store_error(&self, error: &StoreError) -> OnStoreError;
    fn shadow(&self) -> bool;
    fn count(&self, event: CostEvent, units: u32);
    fn stamp(&self, decision: &Decision) -> Option<Stamp>;
    fn refuse(&self, kind: ChargeErrorKind, decision: Option<&Decision>) -> Response<Bytes>;
    fn policy(&self) -> &str;
}

/// One request's account with one policy of a layer.
struct Charges<St, R> {
    shared: Arc<Shared<St>>,
    responder: R,
    policy: usize,
    key: RateKey,
    /// For a refusal's response.
    head: Head,
}

impl<St: RateLimitStore, R: Responder> Account for Charges<St, R> {
    fn spend(&self, spend: Spend) -> Check<Spending> {
        match self
            .shared
            .store
            .spend(&self.shared.policies[self.policy], &self.key, spend)
        {
            Check::Ready(result) => Check::Ready(result),
            Check::Pending(future) => Check::Pending(Box::pin(future)),
        }
    }

    fn max_cost(&self) -> u32 {
        // Never more than the policy's burst: a full bucket must cover it.
        let burst = self.shared.policies[self.policy].quota.burst_size();
        self.shared
            .cost
            .as_ref()
            .map_or(1, |cost| cost.max_cost.min(burst))
    }

    fn on_store_error(&self, error: &StoreError) -> OnStoreError {
        self.shared.store_failed(error);
        self.shared.on_store_error
    }

    fn shadow(&self) -> bool {
        self.shared.shadow
    }

    fn count(&self, event: CostEvent, units: u32) {
        if let Some(metrics) = self
            .shared
            .cost
            .as_ref()
            .and_then(|cost| cost.metrics.get(self.policy))
        {
            metrics.add(event, u64::from(units));
        }
    }

    fn stamp(&self, decision: &Decision) -> Option<Stamp> {
        self.shared.stamp(self.policy, decision)
    }

    fn refuse(&self, kind: ChargeErrorKind, decision: Option<&Decision>) -> Response<Bytes> {
        let name = &self.shared.policies[self.policy].name;
        let refusal = match kind {
            ChargeErrorKind::Limited | ChargeErrorKind::TooCostly => {
                // The `RateLimit` fields come from the layer, on the way out:
                // what is left after the last charge that went through.
                let mut headers = HeaderMap::new();
                if let Some(decision) = decision.filter(|_| kind == ChargeErrorKind::Limited) {
                    let retry = decision.retry_after.map_or(1, |r| ceil_secs(r).max(1));
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
                }
                let (reason, detail) = if kind == ChargeErrorKind::Limited {
                    (
                        "rate_limited",
                        "this request costs more than the quota has left; retry later",
                    )
                } else {
                    (
                        "too_costly",
                        "this request costs more than any one request may; make it cheaper",
                    )
                };
                Refusal::new(
                    RefusalKind::RateLimited,
                    StatusCode::TOO_MANY_REQUESTS,
                    GrpcCode::ResourceExhausted,
                    reason,
                    detail,
                )
                .with_policy(name)
                .with_headers(headers)
            }
            ChargeErrorKind::Unavailable => Refusal::new(
                RefusalKind::LimiterUnavailable,
                match self.shared.on_store_error {
                    OnStoreError::FailClosedWith(status) => status,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                },
                GrpcCode::Unavailable,
                "rate_limit_unavailable",
                "the rate limiter is unavailable",
            )
            .with_policy(name),
        };
        self.head.respond(&self.responder, &refusal)
    }

    fn policy(&self) -> &str {
        &self.shared.policies[self.policy].name
    }
}

/// What the handle keeps of one request: one allocation, the account last
/// (unsized: the layer's store and responder are erased).
struct Inner<A: ?Sized> {
    /// Units charged so far, the door's one included.
    charged: AtomicU32,
    /// The store's last answer: what the response's headers report.
    last: Mutex<Option<Decision>>,
    account: A,
}

/// A request's account with the rate limit that admitted it: charge more
/// units before the work, settle what it cost after.
///
/// Found in the request extensions (axum: `Extension<Cost>`) when the layer
/// was built with
/// [`charged_by_handler`](super::RateLimitBuilder::charged_by_handler) and
/// limited the request (an exempt request has none). Cloning shares the
/// account. The handle names no key and takes none: it charges the bucket
/// the layer chose for the request, never another.
#[derive(Clone)]
pub struct Cost {
    inner: Arc<Inner<dyn Account>>,
}

impl fmt::Debug for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cost")
            .field("policy", &self.inner.account.policy())
            .field("charged", &self.charged())
            .finish_non_exhaustive()
    }
}

impl Cost {
    /// A handle for the request `parts` describes, after the door charged
    /// it one unit and the store answered `decision`.
    pub(crate) fn new<St: RateLimitStore, R: Responder>(
        shared: &Arc<Shared<St>>,
        responder: &R,
        policy: usize,
        key: RateKey,
        parts: &http::request::Parts,
        decision: Option<Decision>,
    ) -> Self {
        let inner: Arc<Inner<dyn Account>> = Arc::new(Inner {
            charged: AtomicU32::new(1),
            last: Mutex::new(decision),
            account: Charges {
                shared: Arc::clone(shared),
                responder: responder.clone(),
                policy,
                key,
                head: Head::of(parts),
            },
        });
        Self { inner }
    }

    /// Units charged to this request so far, the door's one included.
    pub fn charged(&self) -> u32 {
        self.inner.charged.load(Ordering::Relaxed)
    }

    /// The most units one request may cost in all (the layer's
    /// `charged_by_handler` setting).
    pub fn max_cost(&self) -> u32 {
        self.inner.account.max_cost()
    }

    /// Units the caller's bucket held after the last charge, if the store
    /// answered one.
    pub fn remaining(&self) -> Option<u32> {
        self.last().map(|decision| decision.remaining)
    }

    fn last(&self) -> Option<Decision> {
        *self
            .inner
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, decision: Decision) {
        *self
            .inner
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(decision);
    }

    /// Charges `units` more, before the work: all of them, or none while
    /// the bucket holds fewer. `Ok` gives the units left; charging 0 changes
    /// nothing.
    ///
    /// # Errors
    /// [`ChargeError`], whose [`into_http_response`](ChargeError::into_http_response)
    /// is the standard refusal: the bucket holds too few units now (429 with
    /// `Retry-After`); the request would cost more than
    /// [`max_cost`](Self::max_cost) in all (429, `reason: "too_costly"`,
    /// nothing charged); the store could not decide and the layer fails
    /// closed (503). A store failure with the layer failing open charges
    /// nothing and answers `Ok`.
    pub async fn charge(&self, units: u32) -> Result<u32, ChargeError> {
        let account = &self.inner.account;
        let Some(n) = NonZeroU32::new(units) else {
            return Ok(self.remaining().unwrap_or(0));
        };
        // Reserve the units against the request's maximum first, so that
        // concurrent charges of one request cannot pass it together.
        let max = account.max_cost();
        if self
            .inner
            .charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |charged| {
                charged.checked_add(units).filter(|total| *total <= max)
            })
            .is_err()
        {
            account.count(CostEvent::Refused, units);
            return Err(self.refused(ChargeErrorKind::TooCostly, self.last()));
        }
        let result = match account.spend(Spend::Take(n)) {
            Check::Ready(result) => result,
            Check::Pending(spending) => spending.await,
        };
        match result {
            Ok(decision) if decision.allowed => {
                account.count(CostEvent::Charged, units);
                self.remember(decision);
                Ok(decision.remaining)
            }
            Ok(decision) => {
                self.inner.charged.fetch_sub(units, Ordering::AcqRel);
                account.count(CostEvent::Refused, units);
                if account.shadow() {
                    return Ok(0);
                }
                Err(self.refused(ChargeErrorKind::Limited, Some(decision)))
            }
            Err(error) => {
                self.inner.charged.fetch_sub(units, Ordering::AcqRel);
                match account.on_store_error(&error) {
                    OnStoreError::FailOpen => Ok(self.remaining().unwrap_or(0)),
                    _ if account.shadow() => Ok(0),
                    _ => Err(self.refused(ChargeErrorKind::Unavailable, None)),
                }
            }
        }
    }

    /// After the work: the request cost `total` units in all (at least 1,
    /// at most [`max_cost`](Self::max_cost); outside that, clamped). What
    /// was charged beyond it is given back; what it falls short of is owed,
    /// even past what the bucket holds, so that the caller's next requests
    /// are refused until it is paid. Never refuses the request at hand. A
    /// store failure is counted and logged like any other, and the charge
    /// stays as it was.
    pub async fn settle(&self, total: u32) {
        let account = &self.inner.account;
        let total = total.clamp(1, account.max_cost().max(1));
        let before = self.inner.charged.swap(total, Ordering::AcqRel);
        let (units, event) = if total > before {
            (total - before, CostEvent::Owed)
        } else {
            (before - total, CostEvent::Refunded)
        };
        let Some(n) = NonZeroU32::new(units) else {
            return;
        };
        let spend = if event == CostEvent::Owed {
            Spend::Owe(n)
        } else {
            Spend::Refund(n)
        };
        let result = match account.spend(spend) {
            Check::Ready(result) => result,
            Check::Pending(spending) => spending.await,
        };
        match result {
            Ok(decision) => {
                account.count(event, units);
                self.remember(decision);
            }
            Err(error) => {
                // Not settled: the account keeps what it had.
                self.inner.charged.store(before, Ordering::Release);
                let _ = account.on_store_error(&error);
            }
        }
    }

    /// The headers the response gets: from the last charge's answer.
    pub(crate) fn stamp(&self) -> Option<Stamp> {
        self.last()
            .and_then(|decision| self.inner.account.stamp(&decision))
    }

    fn refused(&self, kind: ChargeErrorKind, decision: Option<Decision>) -> ChargeError {
        let retry_after = decision
            .as_ref()
            .filter(|_| kind == ChargeErrorKind::Limited)
            .and_then(|d| d.retry_after);
        ChargeError {
            kind,
            retry_after,
            response: Box::new(self.inner.account.refuse(kind, decision.as_ref())),
        }
    }
}

/// Why a [`Cost::charge`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChargeErrorKind {
    /// The bucket holds too few units now; retry later.
    Limited,
    /// The request would cost more than one request may in all.
    TooCostly,
    /// The store could not decide, and the layer fails closed.
    Unavailable,
}

/// A refused [`Cost::charge`]: nothing was charged. Its
/// [`into_http_response`](Self::into_http_response) is the layer's standard refusal
/// (rendered by the layer's responder: problem+json, or a gRPC status).
pub struct ChargeError {
    kind: ChargeErrorKind,
    retry_after: Option<Duration>,
    /// Boxed: the error stays small on the success path.
    response: Box<Response<Bytes>>,
}

impl fmt::Debug for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChargeError")
            .field("kind", &self.kind)
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            ChargeErrorKind::Limited => "the quota has too few units left for this request",
            ChargeErrorKind::TooCostly => "this request costs more than any one request may",
            ChargeErrorKind::Unavailable => "the rate limiter is unavailable",
        })
    }
}

impl std::error::Error for ChargeError {}

impl ChargeError {
    /// Why.
    pub fn kind(&self) -> ChargeErrorKind {
        self.kind
    }

    /// When the charge may succeed (for [`ChargeErrorKind::Limited`]).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The standard refusal: 429 with `Retry-After` and the `RateLimit`
    /// headers, or 503 (or the gRPC status). With feature `axum`, a handler
    /// can return the error itself (`IntoResponse`).
    pub fn into_http_response(self) -> Response<Bytes> {
        *self.response
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for ChargeError {
    fn into_response(self) -> axum_core::response::Response {
        self.response.map(axum_core::body::Body::from)
    }
}
