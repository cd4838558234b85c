//! Statistics (feature `metrics`, on the `metrics` facade) and their names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tollgate_auth_requests_total` | counter | `outcome` (`authenticated`, `anonymous`, `refused`), `reason` (an [`AuthErrorKind::reason`](crate::auth::AuthErrorKind::reason), or `none`), `enforced` (`true`, or `false` in shadow mode) |
//! | `tollgate_auth_refreshes_total` | counter | `outcome` (`refreshed`, `vetoed` by the hook, the handler or a revocation, `session_ended`, `failed`): sliding refreshes of cookie sessions |
//! | `tollgate_auth_verify_seconds` | histogram | — (time to find and verify a token; cache hits only with `time_cache_hits(true)`) |
//! | `tollgate_rate_limit_decisions_total` | counter | `policy`, `decision` (`allowed`, `limited`, `failed_open`, `failed_closed`), `enforced` |
//! | `tollgate_rate_limit_keys` | gauge | `layer` (the layer's default policy name); sampled every 1,024 decisions of a thread |
//! | `tollgate_rate_limit_max_keys` | gauge | `layer`; the store's cap (stores without one: absent) |
//! | `tollgate_rate_limit_sync_pending_keys` | gauge | `store` (the Redis store's prefix): local-first keys whose admissions have not reached Redis yet |
//! | `tollgate_rate_limit_sync_lag_seconds` | gauge | `store`: how long the oldest of those has waited |
//! | `tollgate_rate_limit_sync_failures_total` | counter | `store`: local-first calls to Redis that failed (a batch, an ask) |
//! | `tollgate_revocation_sync_failures_total` | counter | — (failed calls of revocations shared through Redis) |
//! | `tollgate_concurrency_events_total` | counter | `limit` (the layer's name), `event` (`admitted`, `refused`: over its limit, `untracked`: no key) |
//! | `tollgate_lockout_events_total` | counter | `lockout` (the layer's name), `event` (`refused`: a request of a locked-out key; `failure`: a failure counted; `locked_out`: a lockout began; `cleared`: a marked success cleared the failures; `untracked`: a request or failure not counted, no key or no room) |
//!
//! No label carries a token, subject or address: their cardinality is
//! bounded by the configuration.

#[cfg(any(feature = "rate-limit", all(feature = "auth", feature = "redis")))]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(any(feature = "rate-limit", all(feature = "auth", feature = "redis")))]
use std::time::Instant;

/// Metric names, for dashboards and tests.
pub mod names {
    /// Counter of authentication outcomes.
    pub const AUTH_REQUESTS: &str = "tollgate_auth_requests_total";
    /// Counter of sliding cookie refreshes, by outcome.
    pub const AUTH_REFRESHES: &str = "tollgate_auth_refreshes_total";
    /// Histogram of token verification time in seconds.
    pub const AUTH_VERIFY_SECONDS: &str = "tollgate_auth_verify_seconds";
    /// Counter of rate-limit decisions.
    pub const RATE_LIMIT_DECISIONS: &str = "tollgate_rate_limit_decisions_total";
    /// Gauge of keys held by a rate limiter's store.
    pub const RATE_LIMIT_KEYS: &str = "tollgate_rate_limit_keys";
    /// Gauge of the most keys a rate limiter's store holds (its cap).
    pub const RATE_LIMIT_MAX_KEYS: &str = "tollgate_rate_limit_max_keys";
    /// Gauge of local-first keys waiting to reach Redis.
    pub const RATE_LIMIT_SYNC_PENDING_KEYS: &str = "tollgate_rate_limit_sync_pending_keys";
    /// Gauge of the local-first sync's lag, in seconds.
    pub const RATE_LIMIT_SYNC_LAG_SECONDS: &str = "tollgate_rate_limit_sync_lag_seconds";
    /// Counter of failed local-first calls to Redis.
    pub const RATE_LIMIT_SYNC_FAILURES: &str = "tollgate_rate_limit_sync_failures_total";
    /// Counter of failed calls to Redis by shared revocations.
    pub const REVOCATION_SYNC_FAILURES: &str = "tollgate_revocation_sync_failures_total";
    /// Counter of units charged by cost, by policy and event (charged,
    /// refused, owed, refunded).
    pub const RATE_LIMIT_COST_UNITS: &str = "tollgate_rate_limit_cost_units_total";
    /// Counter of a lockout's events (refusals, failures, lockouts).
    pub const LOCKOUT_EVENTS: &str = "tollgate_lockout_events_total";
    /// Counter of a concurrency limit's events (admissions, refusals).
    pub const CONCURRENCY_EVENTS: &str = "tollgate_concurrency_events_total";
}

#[cfg(all(feature = "metrics", feature = "rate-limit"))]
pub(crate) use handles::EventMetrics;
#[cfg(all(not(feature = "metrics"), feature = "rate-limit"))]
pub(crate) use noop::EventMetrics;

/// An event a layer counts under one counter, by its `event` label.
#[cfg(feature = "rate-limit")]
pub(crate) trait Event: Copy {
    /// Its slot among the layer's handles (below 5).
    #[cfg_attr(not(feature = "metrics"), expect(dead_code))]
    fn index(self) -> usize;
    /// The `event` label.
    #[cfg_attr(not(feature = "metrics"), expect(dead_code))]
    fn label(self) -> &'static str;
}

/// What a charge by cost counts, in units, as the `event` label says it.
#[cfg(feature = "rate-limit")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CostEvent {
    /// Taken before the work (the handler's estimate).
    Charged,
    /// Asked for and refused (nothing taken).
    Refused,
    /// Added after the work, even past the bucket.
    Owed,
    /// Given back after the work.
    Refunded,
}

#[cfg(feature = "rate-limit")]
impl Event for CostEvent {
    fn index(self) -> usize {
        self as usize
    }
    fn label(self) -> &'static str {
        match self {
            Self::Charged => "charged",
            Self::Refused => "refused",
            Self::Owed => "owed",
            Self::Refunded => "refunded",
        }
    }
}

/// What a concurrency limit counts, as the `event` label says it.
#[cfg(feature = "rate-limit")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConcurrencyEvent {
    Admitted,
    Refused,
    Untracked,
    /// Admitted by the replica alone: Redis did not answer.
    #[cfg_attr(not(feature = "redis"), expect(dead_code))]
    Alone,
}

#[cfg(feature = "rate-limit")]
impl Event for ConcurrencyEvent {
    fn index(self) -> usize {
        self as usize
    }
    fn label(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Refused => "refused",
            Self::Untracked => "untracked",
            Self::Alone => "alone",
        }
    }
}

/// What a lockout counts, as the `event` label says it.
#[cfg(feature = "rate-limit")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockoutEvent {
    Refused,
    Failure,
    LockedOut,
    Cleared,
    Untracked,
}

#[cfg(feature = "rate-limit")]
impl Event for LockoutEvent {
    fn index(self) -> usize {
        self as usize
    }
    fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Failure => "failure",
            Self::LockedOut => "locked_out",
            Self::Cleared => "cleared",
            Self::Untracked => "untracked",
        }
    }
}

#[cfg(all(feature = "metrics", feature = "auth"))]
pub(crate) use handles::AuthMetrics;
#[cfg(all(feature = "metrics", feature = "rate-limit"))]
pub(crate) use handles::RateMetrics;
#[cfg(all(not(feature = "metrics"), feature = "auth"))]
pub(crate) use noop::AuthMetrics;
#[cfg(all(not(feature = "metrics"), feature = "rate-limit"))]
pub(crate) use noop::RateMetrics;

/// A rate-limit decision, as the `decision` label counts it.
#[cfg(feature = "rate-limit")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateDecision {
    Allowed,
    Limited,
    FailedOpen,
    FailedClosed,
}

/// The label values, for the metric handles registered up front.
#[cfg(all(feature = "rate-limit", feature = "metrics"))]
impl RateDecision {
    pub(crate) const ALL: [Self; 4] = [
        Self::Allowed,
        Self::Limited,
        Self::FailedOpen,
        Self::FailedClosed,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::FailedOpen => "failed_open",
            Self::FailedClosed => "failed_closed",
        }
    }
}

/// Without the `metrics` feature: the same calls, doing nothing.
#[cfg(not(feature = "metrics"))]
mod noop {
    #[cfg(feature = "auth")]
    pub(crate) struct AuthMetrics;

    #[cfg(feature = "auth")]
    impl AuthMetrics {
        pub(crate) fn new() -> Self {
            Self
        }
        #[inline]
        pub(crate) fn authenticated(&self) {}
        #[inline]
        pub(crate) fn anonymous(&self, _reason: crate::error::AuthErrorKind) {}
        #[inline]
        pub(crate) fn refused(&self, _reason: crate::error::AuthErrorKind, _enforced: bool) {}
    }

    #[cfg(feature = "rate-limit")]
    pub(crate) struct RateMetrics;

    #[cfg(feature = "rate-limit")]
    pub(crate) struct EventMetrics;

    #[cfg(feature = "rate-limit")]
    impl EventMetrics {
        pub(crate) fn new(
            _metric: &'static str,
            _layer_label: &'static str,
            _name: std::sync::Arc<str>,
        ) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn event(&self, _event: impl super::Event) {}
        #[inline]
        pub(crate) fn add(&self, _event: impl super::Event, _n: u64) {}
    }

    #[cfg(feature = "rate-limit")]
    impl RateMetrics {
        pub(crate) fn new(_names: Vec<std::sync::Arc<str>>) -> Self {
            Self
        }
        #[inline]
        pub(crate) fn decision(
            &self,
            _policy: usize,
            _decision: super::RateDecision,
            _enforced: bool,
        ) {
        }
    }
}

/// Metric handles, registered once per layer and label set.
///
/// The `metrics` macros look the metric up in the recorder's registry on
/// every call (hashing the name and labels, cloning label values). A layer
/// instead keeps the handle of each label set it can use, registered the
/// first time that label set occurs — with the recorder installed at that
/// moment, so install the recorder before serving (as every exporter's
/// set-up does). An increment is then one atomic add on the recorder's
/// counter.
#[cfg(feature = "metrics")]
mod handles {
    use std::sync::{Arc, OnceLock};
    #[cfg(feature = "auth")]
    use std::time::Instant;

    use metrics::{Counter, Gauge, Histogram, SharedString};

    use super::names;
    #[cfg(feature = "auth")]
    use crate::error::AuthErrorKind;

    fn enforced_label(enforced: bool) -> &'static str {
        if enforced { "true" } else { "false" }
    }

    /// Room for every [`AuthErrorKind`] (a kind past it is counted through
    /// the registry instead).
    #[cfg(feature = "auth")]
    const REASONS: usize = 16;

    /// The auth layer's handles.
    #[cfg(feature = "auth")]
    #[derive(Default)]
    pub(crate) struct AuthMetrics {
        authenticated: OnceLock<Counter>,
        verify: OnceLock<Histogram>,
        /// `[outcome (anonymous, refused)][enforced][reason]`.
        by_reason: [[[OnceLock<Counter>; REASONS]; 2]; 2],
    }

    #[cfg(feature = "auth")]
    impl AuthMetrics {
        pub(crate) fn new() -> Self {
            Self::default()
        }

        pub(crate) fn authenticated(&self) {
            self.authenticated
                .get_or_init(|| counter("authenticated", "none", true))
                .increment(1);
        }

        pub(crate) fn anonymous(&self, reason: AuthErrorKind) {
            self.with_reason(0, reason, true);
        }

        pub(crate) fn refused(&self, reason: AuthErrorKind, enforced: bool) {
            self.with_reason(1, reason, enforced);
        }

        fn with_reason(&self, outcome: usize, reason: AuthErrorKind, enforced: bool) {
            let name = if outcome == 0 { "anonymous" } else { "refused" };
            match self.by_reason[outcome][usize::from(enforced)].get(reason as usize) {
                Some(slot) => slot
                    .get_or_init(|| counter(name, reason.reason(), enforced))
                    .increment(1),
                None => counter(name, reason.reason(), enforced).increment(1),
            }
        }

        /// Times a verification until dropped, unless
        /// [`skip`](VerifyTimer::skip)ped.
        pub(crate) fn verify_timer(&self) -> VerifyTimer<'_> {
            VerifyTimer {
                metrics: self,
                started: Some(Instant::now()),
            }
        }
    }

    /// Records the time from its creation to its drop in the verification
    /// histogram (every exit of a verification, failures included).
    #[cfg(feature = "auth")]
    pub(crate) struct VerifyTimer<'a> {
        metrics: &'a AuthMetrics,
        started: Option<Instant>,
    }

    #[cfg(feature = "auth")]
    impl VerifyTimer<'_> {
        /// Records nothing after all.
        pub(crate) fn skip(&mut self) {
            self.started = None;
        }
    }

    #[cfg(feature = "auth")]
    impl Drop for VerifyTimer<'_> {
        fn drop(&mut self) {
            if let Some(started) = self.started {
                self.metrics
                    .verify
                    .get_or_init(|| metrics::histogram!(names::AUTH_VERIFY_SECONDS))
                    .record(started.elapsed().as_secs_f64());
            }
        }
    }

    #[cfg(feature = "auth")]
    fn counter(outcome: &'static str, reason: &'static str, enforced: bool) -> Counter {
        metrics::counter!(
            names::AUTH_REQUESTS,
            "outcome" => outcome,
            "reason" => reason,
            "enforced" => enforced_label(enforced)
        )
    }

    #[cfg(feature = "rate-limit")]
    use super::RateDecision;

    /// One policy's decision counters: `[decision][enforced]`.
    #[cfg(feature = "rate-limit")]
    type PolicyCounters = [[OnceLock<Counter>; 2]; RateDecision::ALL.len()];

    /// A rate-limit layer's handles.
    #[cfg(feature = "rate-limit")]
    pub(crate) struct RateMetrics {
        names: Vec<Arc<str>>,
        decisions: Box<[PolicyCounters]>,
        keys: OnceLock<Gauge>,
    }

    #[cfg(feature = "rate-limit")]
    impl RateMetrics {
        pub(crate) fn new(names: Vec<Arc<str>>) -> Self {
            let decisions = names.iter().map(|_| Default::default()).collect();
            Self {
                names,
                decisions,
                keys: OnceLock::new(),
            }
        }

        /// Counts `decision` under `policy`.
        pub(crate) fn decision(&self, policy: usize, decision: RateDecision, enforced: bool) {
            let (Some(counters), Some(name)) = (self.decisions.get(policy), self.names.get(policy))
            else {
                return;
            };
            counters[decision as usize][usize::from(enforced)]
                .get_or_init(|| {
                    metrics::counter!(
                        names::RATE_LIMIT_DECISIONS,
                        "policy" => SharedString::from(Arc::clone(name)),
                        "decision" => decision.label(),
                        "enforced" => enforced_label(enforced)
                    )
                })
                .increment(1);
        }

        /// Sets the key-count gauge (and, the first time, the cap's).
        pub(crate) fn keys(&self, keys: usize, max: Option<usize>) {
            self.keys
                .get_or_init(|| {
                    let layer = self.names.first().cloned().unwrap_or_else(|| Arc::from(""));
                    if let Some(max) = max {
                        metrics::gauge!(
                            names::RATE_LIMIT_MAX_KEYS,
                            "layer" => SharedString::from(Arc::clone(&layer))
                        )
                        .set(max as f64);
                    }
                    metrics::gauge!(names::RATE_LIMIT_KEYS, "layer" => SharedString::from(layer))
                })
                .set(keys as f64);
        }

        /// Whether the gauge has never been set.
        pub(crate) fn keys_unset(&self) -> bool {
            self.keys.get().is_none()
        }
    }

    /// The handles of a layer that counts its events under one counter
    /// (the lockout, the concurrency limit), labelled by the layer's name.
    #[cfg(feature = "rate-limit")]
    pub(crate) struct EventMetrics {
        metric: &'static str,
        layer_label: &'static str,
        name: Arc<str>,
        events: [OnceLock<Counter>; 5],
    }

    #[cfg(feature = "rate-limit")]
    impl EventMetrics {
        pub(crate) fn new(metric: &'static str, layer_label: &'static str, name: Arc<str>) -> Self {
            Self {
                metric,
                layer_label,
                name,
                events: Default::default(),
            }
        }

        /// Counts `event`.
        pub(crate) fn event(&self, event: impl super::Event) {
            self.add(event, 1);
        }

        /// Counts `event` `n` times (units of a charge).
        pub(crate) fn add(&self, event: impl super::Event, n: u64) {
            let Some(handle) = self.events.get(event.index()) else {
                return;
            };
            handle
                .get_or_init(|| {
                    metrics::counter!(
                        self.metric,
                        self.layer_label => SharedString::from(Arc::clone(&self.name)),
                        "event" => event.label()
                    )
                })
                .increment(n);
        }
    }
}

#[cfg(all(feature = "metrics", feature = "auth", feature = "redis"))]
pub(crate) fn revocation_sync_failure() {
    metrics::counter!(names::REVOCATION_SYNC_FAILURES).increment(1);
}

#[cfg(all(not(feature = "metrics"), feature = "auth", feature = "redis"))]
#[inline]
pub(crate) fn revocation_sync_failure() {}

#[cfg(all(feature = "metrics", feature = "auth"))]
pub(crate) fn auth_refresh(outcome: &'static str) {
    metrics::counter!(names::AUTH_REFRESHES, "outcome" => outcome).increment(1);
}

#[cfg(all(not(feature = "metrics"), feature = "auth"))]
#[inline]
pub(crate) fn auth_refresh(_outcome: &'static str) {}

/// Lets a repeated warning through the first time and then at most once per
/// period, so an outage logs a line every 10 s rather than one per request.
#[cfg(any(feature = "rate-limit", all(feature = "auth", feature = "redis")))]
#[derive(Debug)]
pub(crate) struct WarnEvery {
    created: Instant,
    period_secs: u64,
    /// Seconds since `created`, plus one period, of the last warning let
    /// through (0: none yet).
    last: AtomicU64,
}

#[cfg(any(feature = "rate-limit", all(feature = "auth", feature = "redis")))]
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
