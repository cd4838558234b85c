//! Statistics (feature `metrics`, on the `metrics` facade) and their names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tollgate_auth_requests_total` | counter | `outcome` (`authenticated`, `anonymous`, `refused`), `reason` (an [`AuthErrorKind::reason`](crate::auth::AuthErrorKind::reason), or `none`), `enforced` (`true`, or `false` in shadow mode) |
//! | `tollgate_auth_verify_seconds` | histogram | — (time to find and verify a token, cache hits included) |
//! | `tollgate_rate_limit_decisions_total` | counter | `policy`, `decision` (`allowed`, `limited`, `failed_open`, `failed_closed`), `enforced` |
//! | `tollgate_rate_limit_keys` | gauge | `layer` (the layer's default policy name) |
//!
//! No label carries a token, subject or address: their cardinality is
//! bounded by the configuration.

#[cfg(feature = "metrics")]
use std::sync::Arc;
#[cfg(feature = "metrics")]
use std::time::Duration;

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

/// Runs a closure when dropped (times a scope on every exit path).
#[cfg(feature = "metrics")]
pub(crate) struct OnDrop<F: FnMut()>(pub(crate) F);

#[cfg(feature = "metrics")]
impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
