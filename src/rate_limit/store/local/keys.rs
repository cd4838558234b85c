//! The key table of one policy: shards of hashbrown tables with each key's
//! GCRA state inline, under a key budget shared by all policies.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use hashbrown::HashTable;

use super::{KEYS_PER_SHARD, MAX_SHARDS, MIN_SHARDS};
use crate::rate_limit::key::RateKey;

/// foldhash: fast, and seeded per map so that keys an attacker chooses
/// (addresses, subjects) cannot be aimed at one shard or slot in advance.
pub(super) type Hasher = foldhash::fast::RandomState;

/// A key and its GCRA state, inline in the table: no pointer per key.
pub(super) type Slot = (RateKey, InMemoryState);

/// Key count shared by the maps of all policies of one store, and when the
/// next clean-up step is due.
#[derive(Debug)]
pub(super) struct Budget {
    pub(super) len: AtomicUsize,
    pub(super) cap: usize,
    pub(super) overflowed: AtomicBool,
    /// The decision from which the next clean-up step is due.
    pub(super) next_step: AtomicU64,
}

impl Budget {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            len: AtomicUsize::new(0),
            cap,
            overflowed: AtomicBool::new(false),
            next_step: AtomicU64::new(0),
        })
    }

    /// A new key found no room: clean-up speeds up, from the next decision.
    pub(super) fn overflow(&self) {
        if !self.overflowed.load(Ordering::Relaxed)
            && !self.overflowed.swap(true, Ordering::Relaxed)
        {
            self.next_step.store(0, Ordering::Relaxed);
        }
    }

    /// Takes a place for one new key; never lets the count pass the cap,
    /// even for a moment.
    pub(super) fn reserve(&self) -> bool {
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
pub(super) struct Shard {
    pub(super) table: RwLock<HashTable<Slot>>,
    /// No key here has an arrival time below this (`u64::MAX` when empty),
    /// so while it is above the clean-up threshold the shard is skipped
    /// without being locked. Clean-up sets it exactly and inserts lower it;
    /// decisions only raise arrival times, so it stays true between them.
    pub(super) floor: AtomicU64,
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
pub(super) fn read(shard: &Shard) -> RwLockReadGuard<'_, HashTable<Slot>> {
    shard.table.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write(shard: &Shard) -> RwLockWriteGuard<'_, HashTable<Slot>> {
    shard.table.write().unwrap_or_else(PoisonError::into_inner)
}

/// Slots hashbrown fills before a table of `buckets` slots (a power of two,
/// at least 16) grows: 7/8 of them.
pub(super) fn usable_slots(buckets: usize) -> usize {
    buckets / 8 * 7
}

/// Whether a table that keys were just erased from should be rebuilt: when
/// a table of half the slots would hold its keys, or when tombstones (slots
/// erasing marked deleted, which inserts may reuse but growth counts as
/// taken) pass 1/32 of its slots. So a table is never below 7/16 full after
/// clean-up, and never doubles before it is 27/32 full. Tables of up to 16
/// slots are left alone.
pub(super) fn needs_rebuild(table: &HashTable<Slot>) -> bool {
    let buckets = table.num_buckets();
    if buckets < 32 {
        return false;
    }
    let tombstones = usable_slots(buckets).saturating_sub(table.capacity());
    table.len() <= usable_slots(buckets / 2) || tombstones > buckets / 32
}

/// A state's theoretical arrival time, in nanoseconds since its limiter's
/// start (0 for a fresh state).
pub(super) fn tat(state: &InMemoryState) -> u64 {
    // `InMemoryState` exposes its value only through `measure_and_replace`:
    // a closure that refuses to write reads it.
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .map_or_else(|prev| prev.map_or(0, Nanos::as_u64), |()| 0)
}

/// One policy's keys: shards of governor states that never hold more keys
/// (across all policies) than the budget allows.
pub(super) struct Keys {
    pub(super) shards: Box<[Shard]>,
    pub(super) hasher: Hasher,
    pub(super) budget: Arc<Budget>,
}

impl Keys {
    pub(super) fn new(budget: Arc<Budget>) -> Self {
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
    pub(super) fn shard(&self, hash: u64) -> &Shard {
        let bits = (hash >> 25) & u64::from(u32::MAX);
        // Multiply-shift maps 32 bits onto 0..len evenly, for any len.
        let index = ((bits * self.shards.len() as u64) >> 32) as usize;
        &self.shards[index]
    }

    /// Runs `f` on the state of `key`, first inserting a fresh state if the
    /// key is new and `admit()` allows it; `None` if it did not.
    pub(super) fn find_or_insert<R>(
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
    pub(super) fn may_shed(&self, index: usize, drop_below: u64) -> bool {
        self.shards
            .get(index)
            .is_some_and(|shard| shard.floor.load(Ordering::Relaxed) <= drop_below)
    }

    /// Removes the replenished keys of shard `index` (those whose arrival
    /// time is at most `drop_below`); returns how many keys it visited, and
    /// whether the shard should now be rebuilt (a separate step, so that no
    /// step both scans and rebuilds).
    pub(super) fn clean_shard(&self, index: usize, drop_below: u64) -> (usize, bool) {
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
    pub(super) fn rebuild_shard(&self, index: usize) -> usize {
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
pub(super) struct SharedKeys(pub(super) Arc<Keys>);

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

pub(super) type Limiter<C> =
    governor::RateLimiter<RateKey, SharedKeys, C, governor::middleware::StateInformationMiddleware>;
