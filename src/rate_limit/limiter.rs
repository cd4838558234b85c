//! The decision for one request: classify (exemptions, tiers, the policy) →
//! key → store → verdict (pass with headers to stamp, or a refusal) — and the
//! state every clone of a layer shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use super::headers::{HeaderStyle, PolicyHeaders, Stamp, ceil_secs};
use super::key::{KeyBy, RateKey};
use super::quota::Policy;
use super::store::{Decision, RateLimitStore, StoreError};
use crate::identity::{Anonymous, Identity};
use crate::observe::{self, RateDecision, RateMetrics};
use crate::reject::{GrpcCode, Refusal, RefusalKind, Responder};
use crate::trace;

/// What to do with a request whose key cannot be found (e.g. no peer
/// address was recorded, or the keying header is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Count all such requests in one shared bucket of the policy (default):
    /// still limited, never a 500.
    #[default]
    SharedBucket,
    /// Let them through unlimited, without rate-limit headers.
    Allow,
}

/// What to do when the store cannot decide (a remote store is slow or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Let the request through, without rate-limit headers (default).
    #[default]
    FailOpen,
    /// Refuse it with 503 (gRPC 14, UNAVAILABLE).
    FailClosed,
    /// Refuse it with this status (gRPC 14, UNAVAILABLE).
    FailClosedWith(http::StatusCode),
}

pub(crate) type Predicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) key: KeyBy,
    pub(crate) policies: Vec<Policy>,
    /// Each policy's header text.
    pub(crate) headers: Vec<&'static PolicyHeaders>,
    pub(crate) tiers: Vec<(usize, Predicate)>,
    pub(crate) authenticated: Option<usize>,
    pub(crate) exempt: Vec<Predicate>,
    /// The key or a policy reads the auth layer's [`Identity`].
    pub(crate) needs_auth: bool,
    pub(crate) style: HeaderStyle,
    pub(crate) missing_key: MissingKey,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) store_failures: AtomicU64,
    pub(crate) shadow: bool,
    pub(crate) metrics: RateMetrics,
    /// Store failures are logged at most every 10 s.
    pub(crate) store_warnings: observe::WarnEvery,
    /// Each misconfiguration seen at run time is logged once per layer.
    pub(crate) warned_no_peer: AtomicBool,
    pub(crate) warned_no_auth: AtomicBool,
    /// Set by `charged_by_handler`: requests get a [`Cost`](super::Cost).
    pub(crate) cost: Option<CostSettings>,
}

/// The cost settings of a layer built with `charged_by_handler`.
pub(crate) struct CostSettings {
    pub(crate) max_cost: u32,
    /// Units by event, per policy.
    pub(crate) metrics: Vec<observe::EventMetrics>,
}

/// Where a peer address can come from in this build.
pub(crate) const PEER_SOURCES: &[&str] = &[
    #[cfg(feature = "axum-connect-info")]
    "axum-connect-info",
    #[cfg(feature = "tonic")]
    "tonic",
];

/// Logs `message` at `warn` the first time `flag` is raised.
fn warn_once(flag: &AtomicBool, policy: &str, message: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!(policy, "tollgate: {message}");
    }
}

impl<St> Shared<St> {
    /// Counts a store failure; logs a warning at most every 10 s.
    pub(crate) fn store_failed(&self, error: &super::store::StoreError) {
        let failures = self.store_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.store_warnings.due() {
            tracing::warn!(%error, failures, on_error = ?self.on_store_error, "tollgate: rate-limit store failed");
        }
    }

    /// The policy and key of a request; `None`: not limited.
    pub(crate) fn classify(&self, parts: &Parts) -> Option<(usize, RateKey)> {
        if self.exempt.iter().any(|exempt| exempt(parts)) {
            return None;
        }
        // A route rule names the limits that count its requests.
        if let Some(crate::routes::MatchedRoute(route)) = parts.extensions.get()
            && !route.limited_by(self.policies.iter().map(|p| &*p.name))
        {
            return None;
        }
        // Only a policy or key that reads the identity looks for it.
        let identified = self.needs_auth && parts.extensions.get::<Identity>().is_some();
        if self.needs_auth && !identified && parts.extensions.get::<Anonymous>().is_none() {
            warn_once(
                &self.warned_no_auth,
                &self.policies[0].name,
                "this rate limit keys on or tiers by the verified identity, but no JwtAuthLayer \
                 looked at the request: every caller is counted as anonymous. Put JwtAuthLayer \
                 outside this layer (ServiceBuilder: add it first; axum Router::layer: add it last)",
            );
        }
        let policy = self
            .tiers
            .iter()
            .find(|(_, applies)| applies(parts))
            .map(|(i, _)| *i)
            .or_else(|| self.authenticated.filter(|_| identified))
            .unwrap_or(0);
        let key = match self.key.key(parts) {
            Some(key) => key,
            None => {
                if self.key.needs_peer_addr() {
                    warn_once(
                        &self.warned_no_peer,
                        &self.policies[policy].name,
                        "a request carried no peer address, so this IP-keyed rate limit counts \
                         every such request in ONE shared bucket. Serve axum with \
                         `into_make_service_with_connect_info::<SocketAddr>()` (feature \
                         `axum-connect-info`), use tonic's Server (feature `tonic`), or insert \
                         `tollgate::rate_limit::PeerAddr` into the request extensions",
                    );
                }
                match self.missing_key {
                    MissingKey::SharedBucket => RateKey::unkeyed(),
                    MissingKey::Allow => return None,
                }
            }
        };
        Some((policy, key))
    }
}

/// Decisions on this thread, to sample the key-count gauge now and then
/// without a counter that every thread writes.
#[cfg(feature = "metrics")]
fn sample_keys() -> bool {
    use std::cell::Cell;
    thread_local! {
        static DECISIONS: Cell<u32> = const { Cell::new(0) };
    }
    DECISIONS
        .try_with(|decisions| {
            let n = decisions.get().wrapping_add(1);
            decisions.set(n);
            n.is_multiple_of(1024)
        })
        .unwrap_or(false)
}

impl<St: RateLimitStore> Shared<St> {
    /// What the store's answer means for the request: pass, with the
    /// headers its response gets, or the refusal.
    #[expect(
        clippy::result_large_err,
        reason = "the refusal goes straight into the response future; boxing it would allocate per refusal"
    )]
    pub(crate) fn verdict(
        &self,
        policy: usize,
        result: Result<Decision, StoreError>,
        parts: &Parts,
        responder: &impl Responder,
    ) -> Result<Option<Stamp>, Response<Bytes>> {
        #[cfg(feature = "metrics")]
        if sample_keys() || self.metrics.keys_unset() {
            self.metrics
                .keys(self.store.key_count(), self.store.max_keys());
        }
        let name = &self.policies[policy].name;
        let refusal = match result {
            Ok(decision) if decision.allowed => {
                self.metrics.decision(policy, RateDecision::Allowed, true);
                trace::rate_limit(name, "allowed");
                tracing::trace!(policy = %name, outcome = "allowed", remaining = decision.remaining, "tollgate: rate limit");
                return Ok(self.stamp(policy, &decision));
            }
            Ok(decision) => {
                self.metrics
                    .decision(policy, RateDecision::Limited, !self.shadow);
                trace::rate_limit(name, "limited");
                if self.shadow {
                    tracing::debug!(policy = %name, outcome = "limited", enforced = false, "tollgate: would limit (shadow mode)");
                    return Ok(None);
                }
                tracing::debug!(policy = %name, outcome = "limited", "tollgate: rate limited");
                let mut headers = HeaderMap::new();
                let retry = decision.retry_after.map_or(1, |r| ceil_secs(r).max(1));
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
                if let Some(stamp) = self.stamp(policy, &decision) {
                    stamp.apply(&mut headers);
                }
                let refusal = Refusal::new(
                    RefusalKind::RateLimited,
                    StatusCode::TOO_MANY_REQUESTS,
                    GrpcCode::ResourceExhausted,
                    "rate_limited",
                    "too many requests for this quota; retry later",
                )
                .with_policy(name)
                .with_headers(headers);
                return Err(responder.respond(&refusal, parts));
            }
            Err(error) => {
                self.store_failed(&error);
                match self.on_store_error {
                    OnStoreError::FailOpen => {
                        self.metrics
                            .decision(policy, RateDecision::FailedOpen, true);
                        trace::rate_limit(name, "failed_open");
                        return Ok(None);
                    }
                    OnStoreError::FailClosed => StatusCode::SERVICE_UNAVAILABLE,
                    OnStoreError::FailClosedWith(status) => status,
                }
            }
        };
        self.metrics
            .decision(policy, RateDecision::FailedClosed, !self.shadow);
        trace::rate_limit(name, "failed_closed");
        if self.shadow {
            return Ok(None);
        }
        let refusal = Refusal::new(
            RefusalKind::LimiterUnavailable,
            refusal,
            GrpcCode::Unavailable,
            "rate_limit_unavailable",
            "the rate limiter is unavailable",
        )
        .with_policy(name);
        Err(responder.respond(&refusal, parts))
    }
}

impl<St> Shared<St> {
    /// The headers `decision` puts on the response, if any.
    pub(crate) fn stamp(&self, policy: usize, decision: &Decision) -> Option<Stamp> {
        Stamp::new(self.style, self.headers.get(policy).copied()?, decision)
    }
}
