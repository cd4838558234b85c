//! The in-process store: governor's GCRA over a capped, self-cleaning map.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use governor::RateLimiter;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

use super::{Check, Decision, RateLimitStore, StoreError};
use crate::error::ConfigError;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::quota::Policy;

/// Default cap on the number of keys a local store holds.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Fewest decisions between two clean-ups.
const MIN_CLEANUP_INTERVAL: u64 = 4096;

/// A clean-up runs after this many decisions per held key: it scans every
/// key, so this bounds its amortised cost to 1/4 key visit per decision.
const CLEANUP_EVERY_KEYS: u64 = 4;

/// Key count shared by the maps of all policies of one store.
#[derive(Debug)]
struct Budget {
    len: AtomicUsize,
    cap: usize,
    overflowed: AtomicBool,
}

/// One policy's keys: a DashMap of governor states that never holds more
/// keys (across all policies) than the budget allows.
/// foldhash: fast, and seeded per map so that keys an attacker chooses
/// (addresses, subjects) cannot be aimed at one bucket in advance.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct CappedMap {
    map: DashMap<RateKey, InMemoryState, Hasher>,
    budget: Arc<Budget>,
}

fn read(state: &InMemoryState) -> u64 {
    // `InMemoryState` exposes its value only through `measure_and_replace`:
    // a closure that refuses to write reads it.
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .map_or_else(|prev| prev.map_or(0, Nanos::as_u64), |()| 0)
}

impl StateStore for CappedMap {
    type Key = RateKey;

    fn measure_and_replace<T, F, E>(&self, key: &RateKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        // A new key: reserve a place in the budget first, so the cap holds
        // exactly under concurrency.
        let budget = &self.budget;
        if budget.len.fetch_add(1, Ordering::AcqRel) >= budget.cap {
            budget.len.fetch_sub(1, Ordering::AcqRel);
            budget.overflowed.store(true, Ordering::Relaxed);
            let state = self.map.entry(RateKey::overflow()).or_default();
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut inserted = false;
        let state = self.map.entry(key.clone()).or_insert_with(|| {
            inserted = true;
            InMemoryState::default()
        });
        if !inserted {
            budget.len.fetch_sub(1, Ordering::AcqRel);
        }
        state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<RateKey> for CappedMap {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        self.map.retain(|key, state| {
            let keep = read(state) > drop_below;
            if !keep && *key != RateKey::overflow() {
                self.budget.len.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Limiter<C> = RateLimiter<RateKey, CappedMap, C, StateInformationMiddleware>;

/// In-process rate-limit state (the default store).
///
/// - GCRA via governor, one limiter per policy;
/// - a monotonic clock by default ([`MonotonicClock`], `std::time::Instant`,
///   which never goes backwards across cores, unlike a raw TSC); any governor
///   clock can be injected, e.g. `FakeRelativeClock` in tests;
/// - bounded memory without background tasks: every `max(4096, 4 × keys)`
///   decisions, the deciding request removes the keys whose buckets are full
///   again (they are indistinguishable from new keys) and shrinks the map, so
///   the amortised cost is a quarter of a key visit per decision;
/// - a hard cap on keys ([`LocalStore::max_keys`], default 1,000,000): at the
///   cap, *new* keys share one overflow bucket per policy, which is limited
///   like a single key, while known keys keep their own buckets; a clean-up is
///   brought forward when that happens.
pub struct LocalStore<C: Clock = MonotonicClock> {
    clock: C,
    budget: Arc<Budget>,
    limiters: Vec<Limiter<C>>,
    decisions: AtomicU64,
    last_cleanup: AtomicU64,
    cleaning: Mutex<()>,
}

impl<C: Clock> std::fmt::Debug for LocalStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("keys", &self.budget.len.load(Ordering::Relaxed))
            .field("max_keys", &self.budget.cap)
            .field("policies", &self.limiters.len())
            .finish()
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalStore {
    /// A store on the monotonic clock.
    pub fn new() -> Self {
        Self::with_clock(MonotonicClock)
    }
}

impl<C: Clock + Clone> LocalStore<C> {
    /// A store on `clock`.
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            budget: Arc::new(Budget {
                len: AtomicUsize::new(0),
                cap: DEFAULT_MAX_KEYS,
                overflowed: AtomicBool::new(false),
            }),
            limiters: Vec::new(),
            decisions: AtomicU64::new(0),
            last_cleanup: AtomicU64::new(0),
            cleaning: Mutex::new(()),
        }
    }

    /// The most keys held at once, across all policies (default 1,000,000).
    #[must_use]
    pub fn max_keys(mut self, max: usize) -> Self {
        self.budget = Arc::new(Budget {
            len: AtomicUsize::new(0),
            cap: max,
            overflowed: AtomicBool::new(false),
        });
        self
    }

    /// Removes replenished keys now and shrinks the maps. The layer does this
    /// on its own; call it to measure or to free memory at a quiet time.
    pub fn cleanup(&self) {
        for limiter in &self.limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.budget.overflowed.store(false, Ordering::Relaxed);
    }

    fn housekeeping(&self, decision: u64) {
        let since = decision.saturating_sub(self.last_cleanup.load(Ordering::Relaxed));
        let due = since >= self.interval()
            || (self.budget.overflowed.load(Ordering::Relaxed)
                && since >= self.overflow_interval());
        if !due {
            return;
        }
        // One cleaner at a time; the others go on deciding.
        let Ok(_guard) = self.cleaning.try_lock() else {
            return;
        };
        self.cleanup();
        self.last_cleanup.store(decision, Ordering::Relaxed);
    }

    fn interval(&self) -> u64 {
        (self.budget.len.load(Ordering::Relaxed) as u64)
            .saturating_mul(CLEANUP_EVERY_KEYS)
            .max(MIN_CLEANUP_INTERVAL)
    }

    fn overflow_interval(&self) -> u64 {
        (self.budget.cap as u64 / 16).max(MIN_CLEANUP_INTERVAL)
    }
}

impl<C> RateLimitStore for LocalStore<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    type Future = std::future::Ready<Result<Decision, StoreError>>;

    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError> {
        self.limiters = policies
            .iter()
            .map(|policy| {
                let quota = policy.quota.to_governor().ok_or_else(|| {
                    ConfigError::new(
                        "quota",
                        format!("policy {:?} is not representable", policy.name()),
                    )
                })?;
                let map = CappedMap {
                    map: DashMap::with_hasher(Hasher::default()),
                    budget: Arc::clone(&self.budget),
                };
                Ok(RateLimiter::new(quota, map, self.clock.clone()))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(())
    }

    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future> {
        let decision = self.decisions.fetch_add(1, Ordering::Relaxed);
        self.housekeeping(decision);
        let Some(limiter) = self.limiters.get(policy.index) else {
            return Check::Ready(Err(StoreError::new("policy not prepared")));
        };
        let limit = policy.quota.burst_size();
        let interval = policy.quota.replenish_interval();
        Check::Ready(Ok(match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                // Exact to within one replenish interval (governor does not
                // expose the partial progress of the next request).
                Decision::allowed(limit, remaining, interval.saturating_mul(limit - remaining))
            }
            Err(not_until) => Decision::limited(limit, not_until.wait_time_from(self.clock.now())),
        }))
    }

    fn key_count(&self) -> usize {
        self.budget.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn store(
        quota: Quota,
        max_keys: usize,
    ) -> (LocalStore<FakeRelativeClock>, Policy, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let mut s = LocalStore::with_clock(clock.clone()).max_keys(max_keys);
        let policy = Policy::new("p", quota, 0).unwrap();
        s.prepare(std::slice::from_ref(&policy)).unwrap();
        (s, policy, clock)
    }

    fn decide(s: &LocalStore<FakeRelativeClock>, p: &Policy, k: &RateKey) -> Decision {
        match s.check(p, k) {
            Check::Ready(d) => d.unwrap(),
            Check::Pending(_) => unreachable!(),
        }
    }

    #[test]
    fn burst_then_replenish() {
        let (s, p, clock) = store(Quota::per_second(2).burst(3), 100);
        let k = RateKey::text("a");
        let remaining: Vec<u32> = (0..3).map(|_| decide(&s, &p, &k).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = decide(&s, &p, &k);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(500)));
        clock.advance(Duration::from_millis(499));
        assert!(!decide(&s, &p, &k).allowed);
        clock.advance(Duration::from_millis(1));
        assert!(decide(&s, &p, &k).allowed);
        assert!(!decide(&s, &p, &k).allowed);
    }

    #[test]
    fn cap_sends_new_keys_to_the_overflow_bucket() {
        let (s, p, _clock) = store(Quota::per_minute(1), 3);
        for i in 0..3 {
            assert!(decide(&s, &p, &RateKey::text(format!("k{i}"))).allowed);
        }
        assert_eq!(s.key_count(), 3);
        // Two new keys at the cap share one bucket of one request.
        assert!(decide(&s, &p, &RateKey::text("new1")).allowed);
        assert!(!decide(&s, &p, &RateKey::text("new2")).allowed);
        assert_eq!(s.key_count(), 3);
        // Known keys keep their own (spent) buckets.
        assert!(!decide(&s, &p, &RateKey::text("k0")).allowed);
    }

    #[test]
    fn cleanup_removes_replenished_keys() {
        let (s, p, clock) = store(Quota::per_second(10), 1000);
        for i in 0..100 {
            decide(&s, &p, &RateKey::text(format!("k{i}")));
        }
        assert_eq!(s.key_count(), 100);
        s.cleanup();
        assert_eq!(s.key_count(), 100, "nothing has replenished yet");
        clock.advance(Duration::from_secs(1));
        s.cleanup();
        assert_eq!(s.key_count(), 0);
    }
}
