//! Statistics (feature `metrics`, on the `metrics` facade) and their names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tollgate_auth_requests_total` | counter | `outcome` (`authenticated`, `anonymous`, `refused`), `reason` (an [`AuthErrorKind::reason`](crate::auth::AuthErrorKind::reason), or `none`), `enforced` (`true`, or `false` in shadow mode) |
//! | `tollgate_auth_verify_seconds` | histogram | — (time to find and verify a token, cache hits included) |
//! | `tollgate_rate_limit_decisions_total` | counter | `policy`, `decision` (`allowed`, `limited`, `failed_open`, `failed_closed`), `enforced` |
//! | `tollgate_rate_limit_keys` | gauge | `layer` (the layer's default policy name) |
//! | `tollgate_revocation_sync_failures_total` | counter | — (failed calls of revocations shared through Redis) |
//!
//! No label carries a token, subject or address: their cardinality is
//! bounded by the configuration.

#[cfg(feature = "metrics")]
use std::sync::Arc;
#[cfg(feature = "rate-limit")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "metrics")]
use std::time::Duration;
#[cfg(feature = "rate-limit")]
use std::time::Instant;

/// Metric names, for dashboards and tests.
pub mod names {
    /// Counter of authentication outcomes.
    pub const AUTH_REQUESTS: &str = "tollgate_auth_requests_total";
    /// Histogram of token verification time in seconds.
    pub const AUTH_VERIFY_SECONDS: &str = "tollgate_auth_verify_seconds";
    /// Counter of rate-limit decisions.
    pub const RATE_LIMIT_DECISIONS: &str = "tollgate_rate_limit_decisions_total";
    /// Gauge of keys held by a rate limiter's store.
    pub const RATE_LIMIT_KEYS: &str = "tollgate_rate_limit_keys";
    /// Counter of failed calls to Redis by shared revocations.
    pub const REVOCATION_SYNC_FAILURES: &str = "tollgate_revocation_sync_failures_total";
}

fn enforced_label(enforced: bool) -> &'static str {
    if enforced { "true" } else { "false" }
}

#[cfg(feature = "metrics")]
pub(crate) fn auth_outcome(outcome: &'static str, reason: &'static str, enforced: bool) {
    metrics::counter!(names::AUTH_REQUESTS, "outcome" => outcome, "reason" => reason, "enforced" => enforced_label(enforced))
        .increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline]
pub(crate) fn auth_outcome(_outcome: &'static str, _reason: &'static str, enforced: bool) {
    let _ = enforced_label(enforced);
}

#[cfg(feature = "metrics")]
pub(crate) fn verify_time(elapsed: Duration) {
    metrics::histogram!(names::AUTH_VERIFY_SECONDS).record(elapsed.as_secs_f64());
}

#[cfg(feature = "metrics")]
pub(crate) fn rate_decision(policy: &Arc<str>, decision: &'static str, enforced: bool) {
    metrics::counter!(
        names::RATE_LIMIT_DECISIONS,
        "policy" => metrics::SharedString::from(Arc::clone(policy)),
        "decision" => decision,
        "enforced" => enforced_label(enforced)
    )
    .increment(1);
}

#[cfg(not(feature = "metrics"))]
#[inline]
pub(crate) fn rate_decision(
    _policy: &std::sync::Arc<str>,
    _decision: &'static str,
    _enforced: bool,
) {
}

#[cfg(feature = "metrics")]
pub(crate) fn rate_keys(layer: &Arc<str>, keys: usize) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(names::RATE_LIMIT_KEYS, "layer" => metrics::SharedString::from(Arc::clone(layer))).set(keys as f64);
}

#[cfg(all(feature = "metrics", feature = "auth", feature = "redis"))]
pub(crate) fn revocation_sync_failure() {
    metrics::counter!(names::REVOCATION_SYNC_FAILURES).increment(1);
}

#[cfg(all(not(feature = "metrics"), feature = "auth", feature = "redis"))]
#[inline]
pub(crate) fn revocation_sync_failure() {}

/// Lets a repeated warning through the first time and then at most once per
/// period, so an outage logs a line every 10 s rather than one per request.
#[cfg(feature = "rate-limit")]
#[derive(Debug)]
pub(crate) struct WarnEvery {
    created: Instant,
    period_secs: u64,
    /// Seconds since `created`, plus one period, of the last warning let
    /// through (0: none yet).
    last: AtomicU64,
}

#[cfg(feature = "rate-limit")]
impl WarnEvery {
    /// At most one warning per `period_secs` (at least 1).
    pub(crate) fn new(period_secs: u64) -> Self {
        Self {
            created: Instant::now(),
            period_secs: period_secs.max(1),
            last: AtomicU64::new(0),
        }
    }

    /// Whether to log now; true for one caller per period.
    pub(crate) fn due(&self) -> bool {
        let now = self.created.elapsed().as_secs() + self.period_secs;
        let last = self.last.load(Ordering::Relaxed);
        now >= last + self.period_secs
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Runs a closure when dropped (times a scope on every exit path).
#[cfg(feature = "metrics")]
pub(crate) struct OnDrop<F: FnMut()>(pub(crate) F);

#[cfg(feature = "metrics")]
impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
