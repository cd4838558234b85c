//! The in-process store: governor's GCRA over a capped, sharded map that
//! cleans itself one shard at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use governor::RateLimiter;
use governor::clock::{Clock, MonotonicClock, Reference};
use governor::nanos::Nanos;

use super::{Check, Decision, RateLimitStore, Spend, StoreError};
use crate::error::ConfigError;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::quota::Policy;

/// Default cap on the number of keys a local store holds.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Fewest decisions between the starts of two clean-up rounds.
const MIN_ROUND: u64 = 4096;

/// A clean-up round takes this many decisions per held key: a round visits
/// every key at most once (only shards with replenished keys are visited),
/// so the amortised cost is at most a quarter of a key visit per decision.
const ROUND_EVERY_KEYS: u64 = 4;

/// At the cap (new keys overflowing), a round takes at most `cap / 16`
/// decisions, so that room for new keys is found sooner.
const OVERFLOW_ROUND_DIVISOR: u64 = 16;

/// Decisions are counted in batches of this many (see [`count_decision`]).
const BATCH: u64 = 16;

/// Counts a decision in `decisions` now and then, so that the counter that
/// paces the clean-up is not written by every thread on every decision (one
/// cache line bouncing between all cores). Each decision adds [`BATCH`] with
/// probability 1 / `BATCH`, drawn from a per-thread generator: the count
/// stays proportional to each store's own decisions, however a thread's
/// decisions interleave between stores. Returns the count before the add,
/// when there was one.
fn count_decision(decisions: &AtomicU64) -> Option<u64> {
    use std::cell::Cell;
    thread_local! {
        static DRAW: Cell<u32> = const { Cell::new(0x9E37_79B9) };
    }
    let counted = DRAW
        .try_with(|draw| {
            // xorshift32
            let mut x = draw.get();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            draw.set(x);
            u64::from(x).is_multiple_of(BATCH)
        })
        .unwrap_or(true);
    counted.then(|| decisions.fetch_add(BATCH, Ordering::Relaxed))
}

/// Most shards one step passes over because nothing in them is replenished
/// yet (a load each, no lock), so that such steps stay cheap.
const MAX_SKIP: usize = 32;

/// Keys per shard at the cap. A hashbrown table grows when it is 7/8 full:
/// 1,650 keys fill a table of 2,048 slots (66 KiB, under the size from which
/// glibc maps and unmaps each allocation) to 81 %, three and a half standard
/// deviations below its growth point, so that at the cap nearly every shard
/// is a table of 2,048 slots rather than half of one of 4,096. A clean-up
/// step visits one shard (under 10 µs) or rebuilds one (about 15 µs at half
/// its size). Much smaller shards make decisions dearer: a hot set of keys
/// then spans more shards' locks and tables (more cache lines and TLB
/// entries).
pub(super) const KEYS_PER_SHARD: usize = 1_650;

/// Shard counts per policy: enough for small caps to spread lock contention;
/// past `MAX_SHARDS × KEYS_PER_SHARD` keys (27M), shards grow instead.
pub(super) const MIN_SHARDS: usize = 16;
pub(super) const MAX_SHARDS: usize = 16_384;

mod keys;
#[cfg(test)]
mod tests;

use governor::state::StateStore;
use keys::{Budget, Keys, Limiter, SharedKeys, Slot};

/// A policy's limiter, its keys, and what the clean-up needs to tell a
/// replenished key.
struct PolicyKeys<C: Clock> {
    limiter: Limiter<C>,
    keys: Arc<Keys>,
    /// The clock read just after the limiter was made: governor keeps its
    /// own start private, and this one is no earlier, so thresholds from it
    /// err towards keeping keys.
    start: C::Instant,
    /// GCRA's emission interval (one request's replenish time).
    interval: Nanos,
}

impl<C: Clock> PolicyKeys<C> {
    /// The arrival time at or below which a key is replenished, as governor
    /// computes it in `RateLimiter::retain_recent`: such a key cannot be told
    /// from a new one.
    fn drop_below(&self, now: C::Instant) -> u64 {
        now.duration_since(self.start)
            .saturating_sub(self.interval)
            .as_u64()
    }
}

/// Decisions per clean-up round with `keys` held: `max(4096, 4 × keys)`,
/// and at most `max(4096, cap / 16)` while new keys overflow.
fn round_length(keys: usize, cap: usize, overflowed: bool) -> u64 {
    let normal = (keys as u64)
        .saturating_mul(ROUND_EVERY_KEYS)
        .max(MIN_ROUND);
    if overflowed {
        normal.min((cap as u64 / OVERFLOW_ROUND_DIVISOR).max(MIN_ROUND))
    } else {
        normal
    }
}

/// Decisions until the next step, after a step that moved the cursor over
/// `advanced` of `shards` shards, when a round should take `round`
/// decisions: each shard's share of the round.
fn step_spacing(advanced: usize, shards: usize, round: u64) -> u64 {
    (advanced as u64)
        .saturating_mul(round)
        .div_ceil(shards.max(1) as u64)
        .max(1)
}

/// Where the incremental clean-up is, over the shards of all policies.
#[derive(Debug, Default)]
struct Cursor {
    /// The next shard to look at.
    next: usize,
    /// A shard the last step cleaned that the next step rebuilds, and how
    /// many shards that last step moved over.
    rebuild: Option<(usize, usize)>,
}

/// In-process rate-limit state (the default store).
///
/// - GCRA via governor, one limiter per policy;
/// - a monotonic clock by default ([`MonotonicClock`], `std::time::Instant`,
///   which never goes backwards across cores, unlike a raw TSC); any governor
///   clock can be injected, e.g. `FakeRelativeClock` in tests;
/// - keys in shards of about 1,650 (at the cap), each a hash table under
///   its own lock, with the GCRA state inline: known keys take a shared lock
///   and an atomic update;
/// - bounded memory without background tasks, and without pauses: keys
///   whose buckets are full again (they are indistinguishable from new keys)
///   are removed one shard at a time, each shard then shrunk if it can be.
///   Now and then (every 6,590 decisions with a million keys at the default
///   cap), the deciding request cleans the next shard (tens of microseconds
///   at most, during which that shard's other requests wait), passing over
///   shards where nothing is replenished yet, or shrinks the shard the step
///   before left too sparse. A round over all shards takes
///   `max(4096, 4 × keys)` decisions, so the amortised cost is at most a
///   quarter of a key visit per decision;
/// - a hard cap on keys ([`LocalStore::max_keys`], default 1,000,000, or
///   [`LocalStore::max_bytes`]): at the cap, *new* keys share one overflow
///   bucket per policy, which is limited like a single key, while known keys
///   keep their own buckets; the clean-up then speeds up to a round every
///   `max(4096, max_keys / 16)` decisions.
pub struct LocalStore<C: Clock = MonotonicClock> {
    clock: C,
    budget: Arc<Budget>,
    policies: Vec<PolicyKeys<C>>,
    /// Shards per policy.
    shards: usize,
    decisions: AtomicU64,
    /// Where the clean-up is; held by the one cleaner.
    cursor: Mutex<Cursor>,
}

impl<C: Clock> std::fmt::Debug for LocalStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("keys", &self.budget.len.load(Ordering::Relaxed))
            .field("max_keys", &self.budget.cap)
            .field("policies", &self.policies.len())
            .field("shards_per_policy", &self.shards)
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

    /// Heap bytes one key costs at most: its slot (key and GCRA state) and
    /// control byte, over the lowest load of a shard's hash table (27/64,
    /// just after it doubled), rounded up to 8 bytes: 80 bytes on 64-bit
    /// targets. At the cap, a key costs about 45 bytes (measured). Each
    /// shard adds at most about 600 bytes (its lock, and a table of up to 16
    /// slots), 0.2 bytes a key at the cap; and the one shard a clean-up step
    /// has just left too sparse keeps its table (66 KiB at most at the
    /// default cap) until the next step shrinks it.
    pub const BYTES_PER_KEY: usize = ((std::mem::size_of::<Slot>() + 1) * 64)
        .div_ceil(27)
        .next_multiple_of(8);
}

impl<C: Clock> LocalStore<C> {
    /// The cap on keys held (see [`max_keys`](LocalStore::max_keys)).
    pub(crate) fn max_keys_held(&self) -> Option<usize> {
        Some(self.budget.cap)
    }
}

impl<C: Clock + Clone> LocalStore<C> {
    /// A store on `clock`.
    pub fn with_clock(clock: C) -> Self {
        Self {
            clock,
            budget: Budget::new(DEFAULT_MAX_KEYS),
            policies: Vec::new(),
            shards: 0,
            decisions: AtomicU64::new(0),
            cursor: Mutex::new(Cursor::default()),
        }
    }

    /// The most keys held at once, across all policies (default 1,000,000).
    #[must_use]
    pub fn max_keys(mut self, max: usize) -> Self {
        self.budget = Budget::new(max);
        self
    }

    /// Caps the keys so that their state takes at most about `bytes` of
    /// memory: [`max_keys`](Self::max_keys) of `bytes /`
    /// [`BYTES_PER_KEY`](LocalStore::BYTES_PER_KEY) (80 bytes on 64-bit targets,
    /// so 80 MB hold 1,000,000 keys). Of `max_keys` and `max_bytes`, the last
    /// one set applies.
    #[must_use]
    pub fn max_bytes(self, bytes: usize) -> Self {
        self.max_keys(bytes / LocalStore::BYTES_PER_KEY)
    }

    /// Removes replenished keys now, from every shard, and shrinks the
    /// shards: a full sweep, visiting every key. The layer does this on its
    /// own, a shard at a time; call it to measure or to free memory at a
    /// quiet time.
    pub fn cleanup(&self) {
        for policy in &self.policies {
            let drop_below = policy.drop_below(self.clock.now());
            for index in 0..self.shards {
                if policy.keys.clean_shard(index, drop_below).1 {
                    policy.keys.rebuild_shard(index);
                }
            }
        }
        self.budget.overflowed.store(false, Ordering::Relaxed);
    }

    /// Runs one step of the incremental clean-up now: removes the replenished
    /// keys of the next shard that has some (passing over up to 32 that have
    /// none), or shrinks the shard the step before left with too few keys for
    /// its table. Returns how many keys the step visited or moved. The layer
    /// runs these steps on its own; this is for measuring.
    pub fn cleanup_step(&self) -> usize {
        let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        self.step(&mut cursor).1
    }

    /// One step: how many shards it moved the cursor over, and how many keys
    /// it visited (or moved, for a rebuild).
    fn step(&self, cursor: &mut Cursor) -> (usize, usize) {
        let steps = self.policies.len() * self.shards;
        let locate = |position: usize| {
            let policy = self.policies.get(position / self.shards.max(1))?;
            Some((policy, position % self.shards.max(1)))
        };
        if let Some((position, _)) = cursor.rebuild.take() {
            let moved = locate(position).map_or(0, |(p, index)| p.keys.rebuild_shard(index));
            return (0, moved);
        }
        let now = self.clock.now();
        for advanced in 1..=MAX_SKIP.min(steps) {
            let position = cursor.next % steps;
            cursor.next = (position + 1) % steps;
            let Some((policy, index)) = locate(position) else {
                break;
            };
            let drop_below = policy.drop_below(now);
            let cleaned = policy.keys.may_shed(index, drop_below).then(|| {
                let (visited, rebuild) = policy.keys.clean_shard(index, drop_below);
                if rebuild {
                    cursor.rebuild = Some((position, advanced));
                }
                visited
            });
            if cursor.next == 0 {
                // A whole round since the flag was last cleared: if new keys
                // still overflow, the next one sets it again.
                self.budget.overflowed.store(false, Ordering::Relaxed);
            }
            if let Some(visited) = cleaned {
                return (advanced, visited);
            }
            if cursor.next == 0 {
                return (advanced, 0);
            }
        }
        (MAX_SKIP.min(steps), 0)
    }

    fn housekeeping(&self, decision: u64) {
        let next_step = &self.budget.next_step;
        if decision < next_step.load(Ordering::Relaxed) {
            return;
        }
        // One cleaner at a time; the others go on deciding.
        let mut cursor = match self.cursor.try_lock() {
            Ok(cursor) => cursor,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        // Another request may have just taken the step.
        if decision < next_step.load(Ordering::Relaxed) {
            return;
        }
        let rebuilt = cursor.rebuild.map(|(_, advanced)| advanced);
        let (advanced, _) = self.step(&mut cursor);
        let spacing = if cursor.rebuild.is_some() {
            // The rebuild comes at once; the pause after it.
            1
        } else {
            let round = round_length(
                self.budget.len.load(Ordering::Relaxed),
                self.budget.cap,
                self.budget.overflowed.load(Ordering::Relaxed),
            );
            let shards = self.policies.len() * self.shards;
            step_spacing(rebuilt.unwrap_or(advanced), shards, round)
        };
        next_step.store(decision.saturating_add(spacing), Ordering::Relaxed);
    }
}

impl<C> RateLimitStore for LocalStore<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    type Future = std::future::Ready<Result<Decision, StoreError>>;

    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError> {
        // Fresh maps, so a fresh count.
        self.budget = Budget::new(self.budget.cap);
        self.policies = policies
            .iter()
            .map(|policy| {
                let quota = policy.quota.to_governor().ok_or_else(|| {
                    ConfigError::new(
                        "quota",
                        format!("policy {:?} is not representable", policy.name()),
                    )
                })?;
                let keys = Arc::new(Keys::new(Arc::clone(&self.budget)));
                let limiter =
                    RateLimiter::new(quota, SharedKeys(Arc::clone(&keys)), self.clock.clone());
                Ok(PolicyKeys {
                    limiter,
                    keys,
                    start: self.clock.now(),
                    interval: Nanos::from(policy.quota.replenish_interval()),
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        self.shards = self.policies.first().map_or(0, |p| p.keys.shards.len());
        *self
            .cursor
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = Cursor::default();
        Ok(())
    }

    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future> {
        if let Some(decision) = count_decision(&self.decisions) {
            self.housekeeping(decision);
        }
        let Some(keys) = self.policies.get(policy.index) else {
            return Check::Ready(Err(StoreError::new("policy not prepared")));
        };
        let limit = policy.quota.burst_size();
        // Computed when the policy was prepared: no division per decision.
        let interval = std::time::Duration::from(keys.interval);
        Check::Ready(Ok(match keys.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(limit);
                // Exact to within one replenish interval (governor does not
                // expose the partial progress of the next request).
                Decision::allowed(limit, remaining, interval.saturating_mul(limit - remaining))
            }
            Err(not_until) => Decision::limited(limit, not_until.wait_time_from(self.clock.now())),
        }))
    }

    fn spend(&self, policy: &Policy, key: &RateKey, spend: Spend) -> Check<Self::Future> {
        let Some(keys) = self.policies.get(policy.index) else {
            return Check::Ready(Err(StoreError::new("policy not prepared")));
        };
        let limit = policy.quota.burst_size();
        let interval = keys.interval.as_u64().max(1);
        let units = match spend {
            Spend::Take(n) => {
                return Check::Ready(Ok(match keys.limiter.check_key_n(key, n) {
                    Ok(Ok(snapshot)) => {
                        let remaining = snapshot.remaining_burst_capacity().min(limit);
                        Decision::allowed(
                            limit,
                            remaining,
                            std::time::Duration::from(keys.interval)
                                .saturating_mul(limit - remaining),
                        )
                    }
                    // Governor's time is when all n fit.
                    Ok(Err(not_until)) => {
                        Decision::limited(limit, not_until.wait_time_from(self.clock.now()))
                    }
                    // More than a full bucket: never affordable.
                    Err(_) => {
                        Decision::limited(limit, std::time::Duration::from_secs(u32::MAX.into()))
                    }
                }));
            }
            Spend::Owe(n) => i128::from(n.get()),
            Spend::Refund(n) => -i128::from(n.get()),
        };
        // Governor's arrival times count from its own start, which is at or
        // just before `keys.start`: `now` here errs a few nanoseconds early.
        let now = self.clock.now().duration_since(keys.start).as_u64();
        let tau = interval.saturating_mul(u64::from(limit) - 1);
        let shift = u64::try_from(units.unsigned_abs())
            .unwrap_or(u64::MAX)
            .saturating_mul(interval);
        let moved: Result<u64, std::convert::Infallible> = SharedKeys(Arc::clone(&keys.keys))
            .measure_and_replace(key, |tat| {
                let tat = tat.map_or(0, Nanos::as_u64);
                let tat = if units > 0 {
                    tat.max(now).saturating_add(shift)
                } else {
                    // Never below now: a refund fills at most the bucket.
                    tat.saturating_sub(shift).max(now)
                };
                Ok((tat, Nanos::new(tat)))
            });
        let tat = moved.unwrap_or(now);
        // What is left: the units that fit between the arrival time and
        // now + tau (none while in debt).
        let headroom = now.saturating_add(tau).saturating_add(interval);
        let remaining = u32::try_from(headroom.saturating_sub(tat.max(now)) / interval)
            .unwrap_or(u32::MAX)
            .min(limit);
        let reset = std::time::Duration::from_nanos(tat.saturating_sub(now));
        // In debt, the headers' `t` (the reset less the missing units but
        // one) is the time until the next unit is back.
        Check::Ready(Ok(Decision::allowed(limit, remaining, reset)))
    }

    fn key_count(&self) -> usize {
        self.budget.len.load(Ordering::Relaxed)
    }

    fn max_keys(&self) -> Option<usize> {
        self.max_keys_held()
    }
}
