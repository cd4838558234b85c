//! Local-first decisions: GCRA per (policy, key) in this process, with the
//! admissions since the last sync queued for Redis, and the shared state
//! pulled back into the local one when a sync answers.
//!
//! Times are microseconds on the local monotonic clock. A key's local TAT
//! only ever moves forward: a sync can make it stricter (others' admissions),
//! never looser.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;

use super::Params;
use super::clock::LocalClock;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::store::{Decision, StoreError};

/// foldhash, seeded per map: keys chosen by clients cannot be aimed at one
/// shard in advance.
type Hasher = foldhash::fast::RandomState;

/// One key's local state.
#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    /// GCRA theoretical arrival time: the shared state as last synced, plus
    /// this replica's admissions since.
    tat: u64,
    /// Admissions not yet handed to a sync.
    pending: u32,
    /// The TAT of those admissions alone, as a GCRA starting empty: where
    /// they begin (`batch_tat − pending × T`) tells Redis how long ago they
    /// started, so a steady stream is not charged as one burst.
    batch_tat: u64,
    /// In the dirty list, waiting for the next sync.
    queued: bool,
}

/// Admissions of one key handed to a sync.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) policy: usize,
    pub(super) key: RateKey,
    n: u32,
    batch_tat: u64,
}

impl Batch {
    /// What to send at local time `now`: (admissions, µs since they began).
    /// At most `params.max_merge` admissions (the most recent ones): more
    /// than one interval can produce only after syncs failed, and charging
    /// an outage's worth would lock the key out on every replica long after
    /// Redis returned.
    pub(super) fn to_send(&self, params: &Params, now: u64) -> (u32, u64) {
        let n = self.n.min(params.max_merge);
        let start = self
            .batch_tat
            .saturating_sub(u64::from(n).saturating_mul(params.t_us));
        (n, now.saturating_sub(start))
    }
}

/// What a sync made of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// Merged; the shared TAT is `ahead_us` past Redis's now (0: full).
    Merged { ahead_us: u64 },
    /// Not merged (error, timeout, late): back in the queue.
    Retry,
}

/// The local state of every policy's keys, bounded in keys.
pub(super) struct LocalState {
    params: Vec<Params>,
    maps: Vec<DashMap<RateKey, Entry, Hasher>>,
    /// Keys held across policies, the overflow buckets excepted.
    len: AtomicUsize,
    cap: usize,
    overflowed: AtomicBool,
    dirty: Mutex<Vec<(usize, RateKey)>>,
    clock: LocalClock,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState")
            .field("keys", &self.len())
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

fn from_us(us: u64) -> Duration {
    Duration::from_micros(us)
}

impl LocalState {
    pub(super) fn new(params: Vec<Params>, cap: usize, clock: LocalClock) -> Self {
        let maps = params
            .iter()
            .map(|_| DashMap::with_hasher(Hasher::default()))
            .collect();
        Self {
            params,
            maps,
            len: AtomicUsize::new(0),
            cap,
            overflowed: AtomicBool::new(false),
            dirty: Mutex::new(Vec::new()),
            clock,
        }
    }

    pub(super) fn params(&self, policy: usize) -> Option<&Params> {
        self.params.get(policy)
    }

    pub(super) fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Keys held (overflow buckets excepted).
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether new keys were sent to the overflow bucket since the last
    /// clean-up.
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Counts one request of `key` under `policy`, now, without waiting.
    pub(super) fn decide(&self, policy: usize, key: &RateKey) -> Result<Decision, StoreError> {
        let (Some(params), Some(map)) = (self.params.get(policy), self.maps.get(policy)) else {
            return Err(StoreError::new("policy not prepared"));
        };
        let now = self.clock.now_us();
        if let Some(mut entry) = map.get_mut(key) {
            let (decision, queue) = step(&mut entry, params, now);
            drop(entry);
            if queue {
                self.queue(policy, key.clone());
            }
            return Ok(decision);
        }
        // A new key: reserve its place first, so the cap holds under
        // concurrency; at the cap, new keys share the overflow bucket.
        let key = if self.len.fetch_add(1, Ordering::AcqRel) < self.cap {
            key.clone()
        } else {
            self.len.fetch_sub(1, Ordering::AcqRel);
            self.overflowed.store(true, Ordering::Relaxed);
            RateKey::overflow()
        };
        let overflow = key == RateKey::overflow();
        let mut inserted = false;
        let mut entry = map.entry(key.clone()).or_insert_with(|| {
            inserted = true;
            Entry::default()
        });
        if !inserted && !overflow {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        let (decision, queue) = step(&mut entry, params, now);
        drop(entry);
        if queue {
            self.queue(policy, key);
        }
        Ok(decision)
    }

    fn queue(&self, policy: usize, key: RateKey) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((policy, key));
    }

    /// Hands every key admitted since the last sync to a new one.
    pub(super) fn take(&self) -> Vec<Batch> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        let mut batches = Vec::with_capacity(dirty.len());
        for (policy, key) in dirty {
            let Some(mut entry) = self.maps.get(policy).and_then(|map| map.get_mut(&key)) else {
                continue;
            };
            entry.queued = false;
            if entry.pending == 0 {
                continue;
            }
            let batch = Batch {
                policy,
                key: key.clone(),
                n: entry.pending,
                batch_tat: entry.batch_tat,
            };
            entry.pending = 0;
            entry.batch_tat = 0;
            drop(entry);
            batches.push(batch);
        }
        batches
    }

    /// Applies what a sync made of `batch`, at local time `now`.
    pub(super) fn settle(&self, batch: Batch, settled: Settled, now: u64) {
        let (Some(params), Some(map)) =
            (self.params.get(batch.policy), self.maps.get(batch.policy))
        else {
            return;
        };
        let Some(mut entry) = map.get_mut(&batch.key) else {
            return;
        };
        let t = params.t_us;
        // Admissions made while the sync was on its way, as a GCRA batch.
        let since = u64::from(entry.pending).saturating_mul(t);
        match settled {
            Settled::Merged { ahead_us } => {
                // The shared state, then this replica's admissions since.
                let shared = now.saturating_add(ahead_us);
                let synced = shared
                    .max(entry.batch_tat.saturating_sub(since))
                    .saturating_add(since);
                entry.tat = entry.tat.max(synced);
            }
            Settled::Retry => {
                // Put the batch back in front of what came since.
                entry.batch_tat = batch
                    .batch_tat
                    .max(entry.batch_tat.saturating_sub(since))
                    .saturating_add(since);
                entry.pending = entry.pending.saturating_add(batch.n);
                if !entry.queued {
                    entry.queued = true;
                    drop(entry);
                    self.queue(batch.policy, batch.key);
                }
            }
        }
    }

    /// Removes keys that are full again and have nothing waiting for Redis
    /// (indistinguishable from new keys), and shrinks the maps.
    pub(super) fn cleanup(&self) {
        let now = self.clock.now_us();
        for map in &self.maps {
            map.retain(|key, entry| {
                let keep = entry.tat > now || entry.pending > 0 || entry.queued;
                if !keep && *key != RateKey::overflow() {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                }
                keep
            });
            map.shrink_to_fit();
        }
        self.overflowed.store(false, Ordering::Relaxed);
    }
}

/// One GCRA step; returns the decision and whether the key must be queued
/// for the next sync.
fn step(entry: &mut Entry, params: &Params, now: u64) -> (Decision, bool) {
    let tat = entry.tat.max(now);
    let earliest = tat.saturating_sub(params.tau_us);
    if earliest > now {
        return (
            Decision::limited(params.burst, from_us(earliest - now)),
            false,
        );
    }
    entry.tat = tat.saturating_add(params.t_us);
    entry.batch_tat = entry.batch_tat.max(now).saturating_add(params.t_us);
    entry.pending = entry.pending.saturating_add(1);
    let queue = !entry.queued;
    entry.queued = true;
    let headroom = now
        .saturating_add(params.tau_us)
        .saturating_add(params.t_us)
        .saturating_sub(entry.tat);
    let remaining = u32::try_from(headroom / params.t_us)
        .unwrap_or(u32::MAX)
        .min(params.burst);
    (
        Decision::allowed(params.burst, remaining, from_us(entry.tat - now)),
        queue,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    const MS: u64 = 1_000;
    const SEC: u64 = 1_000_000;

    /// r per second, burst b, synced every `interval`.
    fn params(r: u64, b: u32, interval: u64) -> Params {
        Params::new(SEC / r, b, from_us(interval), Duration::ZERO)
    }

    struct Replica {
        state: LocalState,
    }

    /// Replicas on one manual clock, and Redis's shared TATs (kept on a
    /// clock far ahead of theirs: only relative times cross the wire).
    struct World {
        now: Arc<AtomicU64>,
        replicas: Vec<Replica>,
        shared: HashMap<(usize, RateKey), u64>,
        redis_offset: u64,
    }

    impl World {
        fn new(count: usize, params: Params, cap: usize) -> Self {
            let now = Arc::new(AtomicU64::new(SEC));
            let replicas = (0..count)
                .map(|_| Replica {
                    state: LocalState::new(vec![params], cap, LocalClock::Manual(Arc::clone(&now))),
                })
                .collect();
            Self {
                now,
                replicas,
                shared: HashMap::new(),
                redis_offset: 1_700_000_000 * SEC,
            }
        }

        fn set(&self, t: u64) {
            self.now.store(t, Ordering::Relaxed);
        }

        fn decide(&self, replica: usize, key: &RateKey) -> Decision {
            self.replicas[replica].state.decide(0, key).unwrap()
        }

        /// What the MERGE script does, for one replica's whole sync.
        fn sync(&mut self, replica: usize) {
            let state = &self.replicas[replica].state;
            let now = state.now_us();
            let server_now = now + self.redis_offset;
            for batch in state.take() {
                let params = *state.params(batch.policy).unwrap();
                let (n, age) = batch.to_send(&params, now);
                let tat = self
                    .shared
                    .entry((batch.policy, batch.key.clone()))
                    .or_insert(0);
                if n > 0 {
                    *tat = (*tat).max(server_now - age) + u64::from(n) * params.t_us;
                }
                let ahead = tat.saturating_sub(server_now);
                state.settle(batch, Settled::Merged { ahead_us: ahead }, now);
            }
        }

        fn fail_sync(&self, replica: usize) {
            let state = &self.replicas[replica].state;
            let now = state.now_us();
            for batch in state.take() {
                state.settle(batch, Settled::Retry, now);
            }
        }
    }

    #[test]
    fn alone_it_is_the_local_gcra() {
        let mut world = World::new(1, params(10, 3, 50 * MS), 100);
        let key = RateKey::text("k");
        let remaining: Vec<u32> = (0..3).map(|_| world.decide(0, &key).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = world.decide(0, &key);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        world.sync(0);
        // Syncing its own admissions changes nothing.
        assert_eq!(
            world.decide(0, &key).retry_after,
            Some(Duration::from_millis(100))
        );
        world.set(SEC + 100 * MS);
        assert!(world.decide(0, &key).allowed);
        assert!(!world.decide(0, &key).allowed);
    }

    #[test]
    fn a_limit_reached_on_one_replica_refuses_on_the_other_after_its_sync() {
        let mut world = World::new(2, params(1, 100, 50 * MS), 100);
        let key = RateKey::text("k");
        for _ in 0..100 {
            assert!(world.decide(0, &key).allowed);
        }
        assert!(!world.decide(0, &key).allowed);
        world.sync(0);
        // Replica 1 never saw the key: it admits on its fresh state until it
        // syncs, once.
        assert!(world.decide(1, &key).allowed);
        world.sync(1);
        let refused = world.decide(1, &key);
        assert!(!refused.allowed);
        // 101 admissions of a burst of 100 at 1/s: the next one in 2 s.
        let retry = refused.retry_after.unwrap();
        assert_eq!(retry, Duration::from_secs(2));
    }

    #[test]
    fn a_failed_sync_keeps_the_admissions_for_the_next_one() {
        let mut world = World::new(2, params(1, 10, 50 * MS), 100);
        let key = RateKey::text("k");
        for _ in 0..6 {
            assert!(world.decide(0, &key).allowed);
        }
        world.fail_sync(0);
        world.fail_sync(0);
        for _ in 0..4 {
            assert!(world.decide(0, &key).allowed);
        }
        world.sync(0);
        assert!(world.decide(1, &key).allowed);
        world.sync(1);
        assert!(!world.decide(1, &key).allowed, "all 10 (+1) reached Redis");
    }

    #[test]
    fn an_outage_is_forgiven_beyond_one_interval_of_admissions() {
        // 10/s, burst 5, 50 ms interval: at most 5 + 1 + 1 merged per sync.
        let p = params(10, 5, 50 * MS);
        assert_eq!(p.max_merge, 7);
        let mut world = World::new(2, p, 100);
        let key = RateKey::text("k");
        let mut t = SEC;
        for _ in 0..600 {
            // A minute of outage, both replicas admitting 10/s on their own.
            world.set(t);
            assert!(world.decide(0, &key).allowed);
            assert!(world.decide(1, &key).allowed);
            world.fail_sync(0);
            world.fail_sync(1);
            t += 100 * MS;
        }
        world.sync(0);
        world.sync(1);
        // Charged in full, the minute of double admissions would refuse the
        // key for another minute; capped, it is free again within a second.
        world.set(t + SEC);
        assert!(world.decide(1, &key).allowed);
    }

    #[test]
    fn a_steady_stream_at_the_rate_is_never_refused_across_replicas() {
        // Two replicas share 100/s with burst 1, each sending 50/s: the merge
        // places admissions when they happened, so nobody pays extra debt.
        let mut world = World::new(2, params(100, 1, 50 * MS), 100);
        let key = RateKey::text("k");
        let mut refused = 0;
        for tick in 0..2_000u64 {
            let t = SEC + tick * 10 * MS; // every 10 ms, alternating
            world.set(t);
            if !world.decide((tick % 2) as usize, &key).allowed {
                refused += 1;
            }
            if tick.is_multiple_of(5) {
                world.sync(0);
            }
            if tick % 5 == 2 {
                world.sync(1);
            }
        }
        assert!(
            refused <= 2,
            "{refused} of 2000 refused at exactly the rate"
        );
    }

    /// The bound of the `RedisStore` docs: in any window, replicas admit at most
    /// (R − 1)(b + r·I) more than one GCRA would; repaid as debt over time.
    #[test]
    fn three_replicas_at_ten_times_the_rate_stay_within_the_bound() {
        let (r, b, interval) = (100u64, 10u32, 50 * MS);
        let mut world = World::new(3, params(r, b, interval), 100);
        let key = RateKey::text("hot");
        let mut admitted = Vec::new();
        let duration = 10 * SEC;
        // Each replica gets a request every 3 ms (10× the rate in total);
        // syncs are staggered by a third of the interval.
        let step = 250; // µs
        let mut t = 0;
        while t < duration {
            world.set(SEC + t);
            for replica in 0..3u64 {
                if (t + replica * MS).is_multiple_of(3 * MS)
                    && world.decide(replica as usize, &key).allowed
                {
                    admitted.push(t);
                }
                if (t + replica * 16_750).is_multiple_of(interval) {
                    world.sync(replica as usize);
                }
            }
            t += step;
        }
        let extra = 2 * (u64::from(b) + r * interval / SEC);
        let quota = u64::from(b) + r * duration / SEC;
        let total = admitted.len() as u64;
        assert!(total <= quota + extra, "{total} > {quota} + {extra}");
        assert!(total * 10 >= quota * 9, "{total}: starved");
        // Every window, not just the whole run.
        for (i, &start) in admitted.iter().enumerate() {
            for (j, &end) in admitted.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                let allowed = u64::from(b) + (end - start) * r / SEC + extra;
                assert!(count <= allowed, "{count} in [{start}, {end}] > {allowed}");
                if end - start > 2 * SEC {
                    break;
                }
            }
        }
    }

    #[test]
    fn replenished_keys_are_cleaned_up_and_the_cap_holds() {
        let world = World::new(1, params(10, 2, 50 * MS), 3);
        let state = &world.replicas[0].state;
        for i in 0..3 {
            assert!(world.decide(0, &RateKey::text(format!("k{i}"))).allowed);
        }
        assert_eq!(state.len(), 3);
        // At the cap, new keys share one bucket of the policy's burst.
        assert!(world.decide(0, &RateKey::text("new1")).allowed);
        assert!(world.decide(0, &RateKey::text("new2")).allowed);
        assert!(!world.decide(0, &RateKey::text("new3")).allowed);
        assert!(state.overflowed());
        assert_eq!(state.len(), 3);
        // Queued keys stay until synced, even when full again.
        world.set(10 * SEC);
        state.cleanup();
        assert_eq!(state.len(), 3);
        let batches = state.take();
        assert_eq!(batches.len(), 4, "three keys and the overflow bucket");
        for batch in batches {
            state.settle(batch, Settled::Merged { ahead_us: 0 }, 10 * SEC);
        }
        state.cleanup();
        assert_eq!(state.len(), 0);
        assert!(!state.overflowed());
        assert!(world.decide(0, &RateKey::text("new3")).allowed);
        assert_eq!(state.len(), 1);
    }
}
