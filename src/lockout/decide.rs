//! The lockout's decision for one request: a key locked out is refused; any
//! other request passes, and its response is looked at afterwards — a
//! failure is counted, a marked success clears the key.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};

use crate::clock::WallClock;
use crate::middleware::{After, Decide, Never, Verdict};
use crate::observe::{EventMetrics, LockoutEvent, names};
use crate::rate_limit::{KeyBy, RateKey};
use crate::reject::{GrpcCode, Refusal, RefusalKind, Responder};

mod account;
pub use account::{AccountGuard, AccountLockedOut};

/// Put into a response's extensions by a handler: a failed login, counted
/// whatever the response's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailed;

/// Put into a response's extensions by a handler: a successful login, which
/// clears the key's failures (not a lockout in force).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginSucceeded;

/// One key's failures and lockouts (unix seconds).
#[derive(Debug, Clone, Copy, Default)]
struct Record {
    failures: u32,
    window_start: u64,
    locked_until: u64,
    lockouts: u32,
    /// Requests let through whose outcome is not counted yet: together with
    /// the failures they may not exceed the limit, so that a burst of
    /// parallel guesses cannot all pass before the first one fails.
    pending: u32,
}

/// A lockout's settings, checked by its builder (times in seconds).
pub(super) struct Settings {
    pub(super) failures: u32,
    pub(super) window: u64,
    pub(super) backoff: u64,
    pub(super) max_backoff: u64,
    pub(super) statuses: Vec<StatusCode>,
    pub(super) max_keys: usize,
    /// Whether a marked success clears the key's failures.
    pub(super) clear_on_success: bool,
    /// Whether handlers may name the account a login targets
    /// ([`AccountGuard`]).
    pub(super) per_account: bool,
    /// How long a client that logged into an account stays known to it.
    pub(super) known_for: u64,
}

/// The state every clone of a layer shares.
pub struct Shared {
    #[cfg(feature = "redis")]
    name: Arc<str>,
    key: KeyBy,
    settings: Settings,
    clock: Arc<dyn WallClock>,
    records: Mutex<HashMap<RateKey, Record>>,
    /// Per account: the clients that logged into it lately (their store
    /// keys, as Redis holds them too), and until when they are known (unix
    /// seconds; its lockout does not refuse them).
    known: Mutex<HashMap<RateKey, Vec<(String, u64)>>>,
    /// Where the replicas count failures together, if anywhere.
    #[cfg(feature = "redis")]
    store: Option<super::shared::SharedLockouts>,
    metrics: EventMetrics,
    warned_no_key: AtomicBool,
    warned_full: AtomicBool,
    /// When the table was last swept for room (unix seconds).
    last_sweep: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(super) fn new(
        name: Arc<str>,
        key: KeyBy,
        settings: Settings,
        clock: Arc<dyn WallClock>,
    ) -> Self {
        Self {
            #[cfg(feature = "redis")]
            name: Arc::clone(&name),
            key,
            settings,
            clock,
            records: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            #[cfg(feature = "redis")]
            store: None,
            metrics: EventMetrics::new(names::LOCKOUT_EVENTS, "lockout", name),
            warned_no_key: AtomicBool::new(false),
            warned_full: AtomicBool::new(false),
            last_sweep: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Shares the counts through `store`.
    #[cfg(feature = "redis")]
    pub(super) fn with_store(mut self, store: Option<super::shared::SharedLockouts>) -> Self {
        self.store = store;
        self
    }

    /// Whether a new key fits: when the table is full, what no longer
    /// matters is dropped first (no attempt pending, no lockout in force or
    /// to remember, no failure in a live window) — at most once a second,
    /// so that a table full of live keys is not swept on every request.
    /// No room: counted as untracked, said once at `warn`.
    fn make_room(&self, records: &mut HashMap<RateKey, Record>, now: u64) -> bool {
        let Settings {
            window,
            max_backoff,
            max_keys,
            ..
        } = self.settings;
        if records.len() < max_keys {
            return true;
        }
        if self.last_sweep.swap(now, Ordering::Relaxed) != now {
            records.retain(|_, r| {
                r.pending > 0
                    || r.locked_until.saturating_add(max_backoff) > now
                    || r.window_start.saturating_add(window) > now
            });
            if records.len() < max_keys {
                return true;
            }
        }
        self.metrics.event(LockoutEvent::Untracked);
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_keys,
                "tollgate: the lockout follows as many keys as it may; requests of new keys \
                 are not counted until some expire (raise max_keys)"
            );
        }
        false
    }

    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<RateKey, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seconds left of the key's lockout, if it is locked out now.
    pub(super) fn locked_for(&self, key: &RateKey) -> Option<u64> {
        let now = self.clock.unix_now();
        let until = self.records().get(key)?.locked_until;
        (until > now).then(|| until - now)
    }

    /// What a request of `key` may do now: pass (an attempt taken), or be
    /// refused for the seconds given and why.
    fn admit(self: &Arc<Self>, key: RateKey) -> Result<Option<Attempt>, (u64, &'static str)> {
        let now = self.clock.unix_now();
        let mut records = self.records();
        if let Some(record) = records.get_mut(&key) {
            if record.locked_until > now {
                return Err((record.locked_until - now, "locked_out"));
            }
            let counted = if record.window_start.saturating_add(self.settings.window) <= now {
                0
            } else {
                record.failures
            };
            if counted.saturating_add(record.pending) >= self.settings.failures {
                return Err((1, "too_many_attempts"));
            }
            record.pending += 1;
        } else if !self.make_room(&mut records, now) {
            // No room to follow it: let it through uncounted.
            return Ok(None);
        } else {
            records.insert(
                key.clone(),
                Record {
                    pending: 1,
                    ..Record::default()
                },
            );
        }
        drop(records);
        Ok(Some(Attempt {
            shared: Arc::clone(self),
            key,
        }))
    }

    /// Counts a failure of `key`: in Redis when the replicas share the
    /// counts (off the request's path, this replica's own count when Redis
    /// does not answer), here otherwise. The attempt stays pending until
    /// its failure is counted.
    fn failed(self: &Arc<Self>, key: RateKey, attempt: Option<Attempt>) {
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inner = &store.inner;
            if inner.in_flight.fetch_add(1, Ordering::Relaxed)
                < super::shared::MAX_REPORTS_IN_FLIGHT
            {
                let this = Arc::clone(self);
                let store = store.clone();
                runtime.spawn(async move {
                    let _attempt = attempt;
                    let limits = super::shared::Limits {
                        window_ms: this.settings.window.saturating_mul(1000),
                        failures: this.settings.failures,
                        backoff_ms: this.settings.backoff.saturating_mul(1000),
                        max_backoff_ms: this.settings.max_backoff.saturating_mul(1000),
                    };
                    let reported = store
                        .inner
                        .report(&this.name, &key.to_store_key(), &limits)
                        .await;
                    store.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
                    match reported {
                        Ok(reported) => {
                            this.metrics.event(LockoutEvent::Failure);
                            if reported.left_ms > 0 {
                                this.learned_known(&key, reported.known);
                                this.learned_lockout(key, reported.left_ms);
                            }
                        }
                        Err(why) => {
                            if store.inner.warn.due() {
                                tracing::warn!(
                                    error = %why,
                                    "tollgate: the lockout could not report a failure to Redis; \
                                     this replica counts it alone meanwhile"
                                );
                            }
                            this.count_here(key);
                        }
                    }
                });
                return;
            }
            inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        self.count_here(key);
        drop(attempt);
    }

    /// Remembers a lockout Redis reported (`left_ms` to go), for this
    /// replica's own decisions.
    #[cfg(feature = "redis")]
    fn learned_lockout(&self, key: RateKey, left_ms: u64) {
        let now = self.clock.unix_now();
        let until = now.saturating_add(left_ms.div_ceil(1000));
        let mut records = self.records();
        if !records.contains_key(&key) && !self.make_room(&mut records, now) {
            return;
        }
        let record = records.entry(key).or_default();
        if record.locked_until <= now {
            self.metrics.event(LockoutEvent::LockedOut);
        }
        record.locked_until = record.locked_until.max(until);
        record.failures = 0;
    }

    /// Counts a failure of `key` on this replica; locks it out when it
    /// failed too often.
    fn count_here(&self, key: RateKey) {
        let now = self.clock.unix_now();
        let mut records = self.records();
        if !records.contains_key(&key) && !self.make_room(&mut records, now) {
            return;
        }
        let record = records.entry(key).or_default();
        // A key quiet for max_backoff after its last lockout starts over.
        if record.lockouts > 0
            && record
                .locked_until
                .saturating_add(self.settings.max_backoff)
                <= now
        {
            record.lockouts = 0;
        }
        if record.failures == 0 || record.window_start.saturating_add(self.settings.window) <= now {
            record.failures = 0;
            record.window_start = now;
        }
        record.failures += 1;
        self.metrics.event(LockoutEvent::Failure);
        if record.failures >= self.settings.failures {
            let doubling = 1_u64.checked_shl(record.lockouts).unwrap_or(u64::MAX);
            let lockout = self
                .settings
                .backoff
                .saturating_mul(doubling)
                .min(self.settings.max_backoff);
            record.locked_until = now.saturating_add(lockout);
            record.lockouts = record.lockouts.saturating_add(1);
            record.failures = 0;
            self.metrics.event(LockoutEvent::LockedOut);
            tracing::debug!(
                lockout_secs = lockout,
                "tollgate: a key is locked out after repeated failures"
            );
        }
    }

    /// A success clears the key's failures (in Redis too, when shared), if
    /// the layer was told to; a lockout in force and the count of lockouts
    /// stay.
    fn succeeded(&self, key: &RateKey) {
        if self.settings.clear_on_success {
            self.clear(key);
        }
    }

    /// Clears `key`'s failures, here and in Redis when shared.
    fn clear(&self, key: &RateKey) {
        #[cfg(feature = "redis")]
        if let Some(store) = &self.store
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inner = &store.inner;
            if inner.in_flight.fetch_add(1, Ordering::Relaxed)
                < super::shared::MAX_REPORTS_IN_FLIGHT
            {
                let store = store.clone();
                let (name, key) = (Arc::clone(&self.name), key.to_store_key());
                runtime.spawn(async move {
                    let cleared = store.inner.clear(&name, &key).await;
                    store.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if let Err(why) = cleared
                        && store.inner.warn.due()
                    {
                        tracing::warn!(error = %why, "tollgate: the lockout could not clear a key's failures in Redis");
                    }
                });
            } else {
                inner.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Some(record) = self.records().get_mut(key) {
            self.metrics.event(LockoutEvent::Cleared);
            record.failures = 0;
        }
    }
}

/// The decision of [`Lockout`](super::Lockout): the shared counts and the
/// responder.
pub struct LockoutDecision<R> {
    pub(super) shared: Arc<Shared>,
    pub(super) responder: R,
}

impl<R: Clone> Clone for LockoutDecision<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            responder: self.responder.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for LockoutDecision<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lockout")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

/// A request let through and not counted yet: pending for its key until
/// dropped (its outcome counted, or the request cancelled).
pub struct Attempt {
    shared: Arc<Shared>,
    key: RateKey,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(record) = self.shared.records().get_mut(&self.key) {
            record.pending = record.pending.saturating_sub(1);
        }
    }
}

/// What a passed request's response is looked at for: the lockout, and
/// the request's attempt (none: its failures are not counted).
#[derive(Default)]
pub struct Outcome(Option<(Arc<Shared>, Option<Attempt>)>, Option<AccountGuard>);

impl After for Outcome {
    fn apply<B>(self, response: &mut Response<B>) -> Option<crate::body::BodyGuard> {
        let (shared, attempt) = self.0?;
        let extensions = response.extensions();
        let succeeded = extensions.get::<LoginSucceeded>().is_some();
        let failed = !succeeded
            && (extensions.get::<LoginFailed>().is_some()
                || shared.settings.statuses.contains(&response.status()));
        // The account the handler named, whatever became of the address.
        if let Some(guard) = self.1 {
            guard.concluded(&shared, succeeded, failed);
        }
        match attempt {
            Some(attempt) if succeeded => shared.succeeded(&attempt.key),
            Some(attempt) if failed => shared.failed(attempt.key.clone(), Some(attempt)),
            None if failed => shared.metrics.event(LockoutEvent::Untracked),
            _ => {}
        }
        None
    }
}

impl<R: Responder> LockoutDecision<R> {
    /// With per-account keys: the request's [`AccountGuard`], in its
    /// extensions.
    #[inline]
    fn guard(
        &self,
        parts: &mut http::request::Parts,
        client: Option<&RateKey>,
    ) -> Option<AccountGuard> {
        if !self.shared.settings.per_account {
            return None;
        }
        Some(self.insert_guard(parts, client))
    }

    #[inline(never)]
    fn insert_guard(
        &self,
        parts: &mut http::request::Parts,
        client: Option<&RateKey>,
    ) -> AccountGuard {
        let guard = AccountGuard::new(&self.shared, client.cloned(), &self.responder, parts);
        parts.extensions.insert(guard.clone());
        guard
    }
}

impl<R, B> Decide<B> for LockoutDecision<R>
where
    R: Responder,
{
    type After = Outcome;
    type Wait = Never;

    #[inline]
    fn decide<F>(
        &self,
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, Outcome, Never, B> {
        let (parts, body) = req.into_parts();
        let Some(key) = self.shared.key.key(&parts) else {
            if !self.shared.warned_no_key.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "tollgate: the lockout saw a request without a key (no peer address?); \
                     such requests are not counted"
                );
            }
            let mut parts = parts;
            let guard = self.guard(&mut parts, None);
            let outcome = Outcome(Some((Arc::clone(&self.shared), None)), guard);
            return Verdict::Pass(call(Request::from_parts(parts, body)), outcome);
        };
        let attempt = match self.shared.admit(key) {
            Ok(attempt) => attempt,
            Err((left, reason)) => {
                self.shared.metrics.event(LockoutEvent::Refused);
                tracing::debug!(outcome = reason, "tollgate: request refused");
                let mut headers = HeaderMap::new();
                headers.insert(header::RETRY_AFTER, HeaderValue::from(left));
                let detail = if reason == "locked_out" {
                    "too many failed requests from this client; retry later"
                } else {
                    "too many attempts from this client at once; retry when one has ended"
                };
                let refusal = Refusal::new(
                    RefusalKind::AbnormalUsage,
                    StatusCode::TOO_MANY_REQUESTS,
                    GrpcCode::ResourceExhausted,
                    reason,
                    detail,
                )
                .with_headers(headers);
                return Verdict::Refuse(self.responder.respond(&refusal, &parts));
            }
        };
        let mut parts = parts;
        let guard = self.guard(&mut parts, attempt.as_ref().map(|a| &a.key));
        let outcome = Outcome(Some((Arc::clone(&self.shared), attempt)), guard);
        Verdict::Pass(call(Request::from_parts(parts, body)), outcome)
    }
}
