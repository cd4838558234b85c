//! The in-process store: governor's GCRA over a capped, sharded map that
//! cleans itself one shard at a time.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use governor::RateLimiter;
use governor::clock::{Clock, MonotonicClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use hashbrown::HashTable;

use super::{Check, Decision, RateLimitStore, StoreError};
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
const KEYS_PER_SHARD: usize = 1_650;

/// Shard counts per policy: enough for small caps to spread lock contention;
/// past `MAX_SHARDS × KEYS_PER_SHARD` keys (27M), shards grow instead.
const MIN_SHARDS: usize = 16;
const MAX_SHARDS: usize = 16_384;

/// foldhash: fast, and seeded per map so that keys an attacker chooses
/// (addresses, subjects) cannot be aimed at one shard or slot in advance.
type Hasher = foldhash::fast::RandomState;

/// A key and its GCRA state, inline in the table: no pointer per key.
type Slot = (RateKey, InMemoryState);

/// Key count shared by the maps of all policies of one store, and when the
/// next clean-up step is due.
#[derive(Debug)]
struct Budget {
    len: AtomicUsize,
    cap: usize,
    overflowed: AtomicBool,
    /// The decision from which the next clean-up step is due.
    next_step: AtomicU64,
}

impl Budget {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            len: AtomicUsize::new(0),
            cap,
            overflowed: AtomicBool::new(false),
            next_step: AtomicU64::new(0),
        })
    }

    /// A new key found no room: clean-up speeds up, from the next decision.
    fn overflow(&self) {
        if !self.overflowed.load(Ordering::Relaxed)
            && !self.overflowed.swap(true, Ordering::Relaxed)
        {
            self.next_step.store(0, Ordering::Relaxed);
        }
    }

    /// Takes a place for one new key; never lets the count pass the cap,
    /// even for a moment.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |len| {
                (len < self.cap).then_some(len + 1)
            })
            .is_ok()
    }
}

/// One shard: a lock and a table, alone on a cache line so that two shards'
/// locks never share one.
#[repr(align(64))]
struct Shard {
    table: RwLock<HashTable<Slot>>,
    /// No key here has an arrival time below this (`u64::MAX` when empty),
    /// so while it is above the clean-up threshold the shard is skipped
    /// without being locked. Clean-up sets it exactly and inserts lower it;
    /// decisions only raise arrival times, so it stays true between them.
    floor: AtomicU64,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            table: RwLock::default(),
            floor: AtomicU64::new(u64::MAX),
        }
    }
}

// A panic under a lock (none is expected) cannot leave a table unsound
// (hashbrown is panic-safe), so a poisoned lock is still used: rate limiting
// must go on.
fn read(shard: &Shard) -> RwLockReadGuard<'_, HashTable<Slot>> {
    shard.table.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, HashTable<Slot>> {
    shard.table.write().unwrap_or_else(PoisonError::into_inner)
}

/// Slots hashbrown fills before a table of `buckets` slots (a power of two,
/// at least 16) grows: 7/8 of them.
fn usable_slots(buckets: usize) -> usize {
    buckets / 8 * 7
}

/// Whether a table that keys were just erased from should be rebuilt: when
/// a table of half the slots would hold its keys, or when tombstones (slots
/// erasing marked deleted, which inserts may reuse but growth counts as
/// taken) pass 1/32 of its slots. So a table is never below 7/16 full after
/// clean-up, and never doubles before it is 27/32 full. Tables of up to 16
/// slots are left alone.
fn needs_rebuild(table: &HashTable<Slot>) -> bool {
    let buckets = table.num_buckets();
    if buckets < 32 {
        return false;
    }
    let tombstones = usable_slots(buckets).saturating_sub(table.capacity());
    table.len() <= usable_slots(buckets / 2) || tombstones > buckets / 32
}

/// A state's theoretical arrival time, in nanoseconds since its limiter's
/// start (0 for a fresh state).
fn tat(state: &InMemoryState) -> u64 {
    // `InMemoryState` exposes its value only through `measure_and_replace`:
    // a closure that refuses to write reads it.
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .map_or_else(|prev| prev.map_or(0, Nanos::as_u64), |()| 0)
}

/// One policy's keys: shards of governor states that never hold more keys
/// (across all policies) than the budget allows.
struct Keys {
    shards: Box<[Shard]>,
    hasher: Hasher,
    budget: Arc<Budget>,
}

impl Keys {
    fn new(budget: Arc<Budget>) -> Self {
        let shards = budget
            .cap
            .div_ceil(KEYS_PER_SHARD)
            .clamp(MIN_SHARDS, MAX_SHARDS);
        Self {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            hasher: Hasher::default(),
            budget,
        }
    }

    /// The shard of a key's hash. hashbrown places a key by the low bits of
    /// its hash and tags it with the top 7, so the shard is taken from bits
    /// 25..57, used by neither (keys of one shard sharing their tags would
    /// make every probe compare keys).
    fn shard(&self, hash: u64) -> &Shard {
        let bits = (hash >> 25) & u64::from(u32::MAX);
        // Multiply-shift maps 32 bits onto 0..len evenly, for any len.
        #[allow(clippy::cast_possible_truncation)]
        let index = ((bits * self.shards.len() as u64) >> 32) as usize;
        &self.shards[index]
    }

    /// Runs `f` on the state of `key`, first inserting a fresh state if the
    /// key is new and `admit()` allows it; `None` if it did not.
    fn find_or_insert<R>(
        &self,
        key: &RateKey,
        admit: impl FnOnce() -> bool,
        f: impl FnOnce(&InMemoryState) -> R,
    ) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash);
        let same = |slot: &Slot| slot.0 == *key;
        // Known keys (nearly every decision) need only the shared lock: the
        // state is an atomic.
        if let Some((_, state)) = read(shard).find(hash, same) {
            return Some(f(state));
        }
        let mut table = write(shard);
        if let Some((_, state)) = table.find(hash, same) {
            return Some(f(state));
        }
        if !admit() {
            return None;
        }
        let hasher = &self.hasher;
        let slot = (key.clone(), InMemoryState::default());
        let entry = table.insert_unique(hash, slot, |slot| hasher.hash_one(&slot.0));
        let state = &entry.into_mut().1;
        let result = f(state);
        shard.floor.fetch_min(tat(state), Ordering::Relaxed);
        Some(result)
    }

    /// Whether shard `index` may hold keys replenished by `drop_below`.
    fn may_shed(&self, index: usize, drop_below: u64) -> bool {
        self.shards
            .get(index)
            .is_some_and(|shard| shard.floor.load(Ordering::Relaxed) <= drop_below)
    }

    /// Removes the replenished keys of shard `index` (those whose arrival
    /// time is at most `drop_below`); returns how many keys it visited, and
    /// whether the shard should now be rebuilt (a separate step, so that no
    /// step both scans and rebuilds).
    fn clean_shard(&self, index: usize, drop_below: u64) -> (usize, bool) {
        let Some(shard) = self.shards.get(index) else {
            return (0, false);
        };
        let overflow = RateKey::overflow();
        let mut table = write(shard);
        let visited = table.len();
        let (mut erased, mut counted, mut floor) = (0, 0, u64::MAX);
        table.retain(|(key, state)| {
            let tat = tat(state);
            let keep = tat > drop_below;
            if keep {
                floor = floor.min(tat);
            } else {
                erased += 1;
                // The overflow bucket takes no place in the budget.
                counted += usize::from(*key != overflow);
            }
            keep
        });
        shard.floor.store(floor, Ordering::Relaxed);
        let rebuild = erased > 0 && needs_rebuild(&table);
        drop(table);
        // Released only once the keys are gone: the count never runs below
        // the keys held, so the cap holds exactly.
        if counted > 0 {
            self.budget.len.fetch_sub(counted, Ordering::AcqRel);
        }
        (visited, rebuild)
    }

    /// Rebuilds shard `index` as the smallest table for its keys, without
    /// tombstones, if it still needs it; returns how many keys it moved.
    fn rebuild_shard(&self, index: usize) -> usize {
        let Some(shard) = self.shards.get(index) else {
            return 0;
        };
        let mut table = write(shard);
        if !needs_rebuild(&table) {
            return 0;
        }
        let moved = table.len();
        let hasher = |slot: &Slot| self.hasher.hash_one(&slot.0);
        let mut rebuilt = HashTable::with_capacity(moved);
        for slot in table.drain() {
            rebuilt.insert_unique(hasher(&slot), slot, hasher);
        }
        *table = rebuilt;
        moved
    }
}

/// The store governor's limiter sees: a handle on the keys, which the
/// clean-up reaches too.
struct SharedKeys(Arc<Keys>);

impl StateStore for SharedKeys {
    type Key = RateKey;

    fn measure_and_replace<T, F, E>(&self, key: &RateKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let keys = &self.0;
        let decide = |state: &InMemoryState| state.measure_and_replace(&NotKeyed::NonKey, &f);
        if let Some(result) = keys.find_or_insert(key, || keys.budget.reserve(), decide) {
            return result;
        }
        // At the cap: new keys share the overflow bucket, which is always
        // admitted (so the fallback below never runs).
        keys.budget.overflow();
        keys.find_or_insert(&RateKey::overflow(), || true, decide)
            .unwrap_or_else(|| decide(&InMemoryState::default()))
    }
}

type Limiter<C> = RateLimiter<RateKey, SharedKeys, C, StateInformationMiddleware>;

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
        let decision = self.decisions.fetch_add(1, Ordering::Relaxed);
        self.housekeeping(decision);
        let Some(keys) = self.policies.get(policy.index) else {
            return Check::Ready(Err(StoreError::new("policy not prepared")));
        };
        let limit = policy.quota.burst_size();
        let interval = policy.quota.replenish_interval();
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

    fn key_count(&self) -> usize {
        self.budget.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;
    use governor::clock::FakeRelativeClock;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    type Store = LocalStore<FakeRelativeClock>;

    fn store(quota: Quota, max_keys: usize) -> (Store, Policy, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let mut s = LocalStore::with_clock(clock.clone()).max_keys(max_keys);
        let policy = Policy::new("p", quota, 0).unwrap();
        s.prepare(std::slice::from_ref(&policy)).unwrap();
        (s, policy, clock)
    }

    fn decide(s: &Store, p: &Policy, k: &RateKey) -> Decision {
        match s.check(p, k) {
            Check::Ready(d) => d.unwrap(),
            Check::Pending(_) => unreachable!(),
        }
    }

    fn ip(i: u32) -> RateKey {
        RateKey::ip(IpAddr::V4(Ipv4Addr::from(i)), 64)
    }

    /// Slots per shard of the first policy, overflow bucket included.
    fn shard_lens(s: &Store) -> Vec<usize> {
        s.policies[0]
            .keys
            .shards
            .iter()
            .map(|shard| read(shard).len())
            .collect()
    }

    /// Keys held in all shards of all policies, overflow buckets excluded.
    fn held(s: &Store) -> usize {
        let overflow = RateKey::overflow();
        s.policies
            .iter()
            .flat_map(|p| p.keys.shards.iter())
            .map(|shard| read(shard).iter().filter(|(k, _)| *k != overflow).count())
            .sum()
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
    fn keys_are_decided_independently_across_shards() {
        let (s, p, _clock) = store(Quota::per_minute(2), 100_000);
        let keys: Vec<RateKey> = (0..5_000).map(ip).collect();
        for expected in [Some(1), Some(0), None] {
            for k in &keys {
                let d = decide(&s, &p, k);
                assert_eq!(d.allowed.then_some(d.remaining), expected);
            }
        }
        assert_eq!(s.key_count(), 5_000);
        let lens = shard_lens(&s);
        assert_eq!(lens.len(), 61, "100,000 keys / 1,650 a shard");
        assert!(
            lens.iter().all(|&n| n > 0),
            "every shard holds keys: {lens:?}"
        );
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
        assert_eq!(held(&s), 3);
        // Known keys keep their own (spent) buckets.
        assert!(!decide(&s, &p, &RateKey::text("k0")).allowed);
    }

    #[test]
    fn a_round_clears_the_overflow_flag_and_frees_room() {
        let (s, p, clock) = store(Quota::per_second(1), 3);
        for i in 0..4 {
            decide(&s, &p, &ip(i));
        }
        assert!(s.budget.overflowed.load(Ordering::Relaxed));
        clock.advance(Duration::from_secs(2));
        for _ in 0..s.shards {
            s.cleanup_step();
        }
        assert!(!s.budget.overflowed.load(Ordering::Relaxed));
        assert_eq!(s.key_count(), 0);
        assert_eq!(
            shard_lens(&s).iter().sum::<usize>(),
            0,
            "overflow bucket too"
        );
        for i in 10..13 {
            decide(&s, &p, &ip(i));
        }
        assert_eq!(held(&s), 3);
        assert!(!s.budget.overflowed.load(Ordering::Relaxed));
    }

    #[test]
    fn overflow_brings_the_rounds_forward() {
        assert_eq!(round_length(1_000_000, 1_000_000, false), 4_000_000);
        assert_eq!(round_length(1_000_000, 1_000_000, true), 62_500);
        assert_eq!(round_length(10, 1_000_000, false), MIN_ROUND);
        assert_eq!(round_length(100, 100, true), MIN_ROUND);
        // At the default cap, 607 shards: a step cleaning the next shard
        // every 103 decisions at the cap while overflowing, every 6,590
        // otherwise; passing over 32 shards counts as 32 shards' share.
        assert_eq!(step_spacing(1, 607, 62_500), 103);
        assert_eq!(step_spacing(1, 607, 4_000_000), 6_590);
        assert_eq!(step_spacing(32, 607, 4_096), 216);
        // At most one step a decision.
        assert_eq!(step_spacing(1, 16_384, MIN_ROUND), 1);
        assert_eq!(step_spacing(0, 607, 4_096), 1);
    }

    #[test]
    fn steps_pass_over_shards_with_nothing_replenished() {
        let (s, p, clock) = store(Quota::per_second(10), 100_000);
        for i in 0..1_000 {
            decide(&s, &p, &ip(i));
        }
        let start = s.cursor.lock().unwrap().next;
        // Nothing replenished: a step looks at 32 shards' floors (or up to
        // the end of the round), and locks none.
        assert_eq!(s.cleanup_step(), 0);
        let next = (start + 32).min(s.shards) % s.shards;
        assert_eq!(s.cursor.lock().unwrap().next, next);
        assert_eq!(s.key_count(), 1_000);
        // Once the keys are replenished, a step cleans the first shard.
        clock.advance(Duration::from_secs(1));
        let lens = shard_lens(&s);
        assert_eq!(s.cleanup_step(), lens[next]);
        assert_eq!(s.key_count(), 1_000 - lens[next]);
    }

    #[test]
    fn decisions_pace_the_steps_to_a_round_per_four_decisions_a_key() {
        // 16 shards; 2,000 keys: a round every 8,000 decisions.
        let (s, p, clock) = store(Quota::per_second(10), 10_000);
        for i in 0..2_000 {
            decide(&s, &p, &ip(i));
        }
        clock.advance(Duration::from_secs(1));
        let active = ip(9_999);
        let mut cleaning_decisions = 0;
        for n in 0..8_000 {
            let before = s.key_count();
            decide(&s, &p, &active);
            if s.key_count() < before {
                cleaning_decisions += 1;
            }
            if n < 400 {
                assert!(s.key_count() > 1_000, "spread over the round");
            }
        }
        assert_eq!(s.key_count(), 1, "only the active key is left");
        assert!(
            cleaning_decisions >= 15,
            "{cleaning_decisions} decisions cleaned"
        );
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

    #[test]
    fn each_step_cleans_one_shard_and_a_round_cleans_all() {
        let (s, p, clock) = store(Quota::per_second(10), 10_000);
        for i in 0..2_000 {
            decide(&s, &p, &ip(i));
        }
        clock.advance(Duration::from_secs(1));
        let lens = shard_lens(&s);
        assert_eq!(lens.len(), 16);
        assert_eq!(lens.iter().sum::<usize>(), 2_000);
        // The cursor went on during the 2,000 decisions; find where it is.
        let start = s.cursor.lock().unwrap().next;
        let capacity = |shard: usize| read(&s.policies[0].keys.shards[shard]).capacity();
        for n in 0..lens.len() {
            let shard = (start + n) % lens.len();
            let visited = s.cleanup_step();
            assert_eq!(visited, lens[shard], "step {n} visits shard {shard} only");
            assert_eq!(shard_lens(&s)[shard], 0, "and empties it");
            let left: usize = (1..lens.len() - n)
                .map(|m| lens[(shard + m) % lens.len()])
                .sum();
            assert_eq!(s.key_count(), left);
            // The next step gives the emptied shard's memory back, and does
            // nothing else.
            assert!(capacity(shard) > 0);
            assert_eq!(s.cleanup_step(), 0);
            assert_eq!(capacity(shard), 0);
            assert_eq!(s.key_count(), left);
        }
        assert_eq!(s.key_count(), 0);
    }

    #[test]
    fn shards_are_rebuilt_when_half_the_slots_would_do() {
        let hasher = Hasher::default();
        let hash = |slot: &Slot| hasher.hash_one(&slot.0);
        let mut table = HashTable::new();
        for i in 0..1_000 {
            let slot = (ip(i), InMemoryState::default());
            table.insert_unique(hash(&slot), slot, hash);
        }
        assert_eq!(table.num_buckets(), 2_048);
        assert!(!needs_rebuild(&table));
        let keep = |table: &mut HashTable<Slot>, n: usize| {
            let mut kept = 0;
            table.retain(|_| {
                kept += 1;
                kept <= n
            });
        };
        // 7/8 of 1,024 slots hold 896 keys.
        keep(&mut table, 897);
        assert!(!needs_rebuild(&table));
        keep(&mut table, 896);
        assert!(needs_rebuild(&table));
        // Small tables are left alone.
        keep(&mut table, 10);
        table.shrink_to_fit(hash);
        assert_eq!(table.num_buckets(), 16);
        keep(&mut table, 1);
        assert!(!needs_rebuild(&table));
    }

    #[test]
    fn a_round_removes_only_replenished_keys() {
        let (s, p, clock) = store(Quota::per_second(10), 10_000);
        for i in 0..1_000 {
            decide(&s, &p, &ip(i));
        }
        clock.advance(Duration::from_secs(1));
        for i in 1_000..2_000 {
            decide(&s, &p, &ip(i));
        }
        // A round, and a rebuild after each step.
        for _ in 0..2 * s.shards {
            s.cleanup_step();
        }
        assert_eq!(s.key_count(), 1_000);
        assert_eq!(held(&s), 1_000);
        // Each shard is rebuilt to the least size for what it keeps.
        for shard in s.policies[0].keys.shards.iter() {
            let table = read(shard);
            let least = HashTable::<Slot>::with_capacity(table.len()).capacity();
            assert_eq!(table.capacity(), least);
        }
        // The keys kept are the recent ones, with their state: a second
        // request leaves 8 of 10, not 9.
        for i in 1_000..2_000 {
            assert_eq!(decide(&s, &p, &ip(i)).remaining, 8);
        }
        assert_eq!(s.key_count(), 1_000);
    }

    #[test]
    fn decisions_clean_up_a_shard_at_a_time() {
        let (s, p, clock) = store(Quota::per_second(10), 10_000);
        for i in 0..1_000 {
            decide(&s, &p, &ip(i));
        }
        clock.advance(Duration::from_secs(1));
        let largest = shard_lens(&s).into_iter().max().unwrap();
        let active = ip(5_000);
        let mut cleaning_decisions = 0;
        // A round of 16 steps, each followed by a rebuild, at a step every
        // max(4096, 4 × 1,000) / 16 decisions.
        for _ in 0..2 * 4_096 + 256 {
            let before = s.key_count();
            decide(&s, &p, &active);
            let after = s.key_count();
            if after < before {
                cleaning_decisions += 1;
                assert!(before - after <= largest, "one shard per decision");
            }
        }
        assert_eq!(s.key_count(), 1, "only the active key is left");
        assert!(
            cleaning_decisions >= 15,
            "{cleaning_decisions} decisions cleaned"
        );
    }

    #[test]
    fn cap_is_exact_under_concurrency() {
        let (s, p, _clock) = store(Quota::per_second(1), 1_000);
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (s, p) = (&s, &p);
                scope.spawn(move || {
                    for i in 0..1_000 {
                        decide(s, p, &ip(t * 1_000 + i));
                        assert!(s.key_count() <= 1_000);
                    }
                });
            }
        });
        assert_eq!(s.key_count(), 1_000);
        assert_eq!(held(&s), 1_000);
        assert!(s.budget.overflowed.load(Ordering::Relaxed));
    }

    #[test]
    fn count_matches_keys_under_concurrent_clean_up() {
        let (s, p, clock) = store(Quota::per_second(1_000), 500);
        std::thread::scope(|scope| {
            for t in 0..3u32 {
                let (s, p) = (&s, &p);
                scope.spawn(move || {
                    for i in 0..20_000 {
                        decide(s, p, &ip(t * 700 + i % 1_500));
                        assert!(s.key_count() <= 500);
                    }
                });
            }
            let (s, clock) = (&s, &clock);
            scope.spawn(move || {
                for _ in 0..2_000 {
                    clock.advance(Duration::from_micros(500));
                    s.cleanup_step();
                }
            });
        });
        assert_eq!(s.key_count(), held(&s));
        clock.advance(Duration::from_secs(1));
        s.cleanup();
        assert_eq!(s.key_count(), 0);
        assert_eq!(held(&s), 0);
    }

    #[test]
    fn max_bytes_sets_the_cap_from_the_size_of_a_key() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(
            LocalStore::BYTES_PER_KEY,
            80,
            "a key's size changed: update the docs of BYTES_PER_KEY and max_bytes"
        );
        let s = LocalStore::new().max_bytes(80_000_000);
        assert_eq!(s.budget.cap, 80_000_000 / LocalStore::BYTES_PER_KEY);
        assert_eq!(LocalStore::new().max_bytes(10).budget.cap, 0);
    }
}
