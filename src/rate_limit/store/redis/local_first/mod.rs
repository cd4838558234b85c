//! Local-first decisions: GCRA per (policy, key) in this process, spending
//! claims that Redis granted, with the admissions since the last sync queued
//! for Redis, and the shared state pulled back into the local one when a sync
//! (or an ask) answers.
//!
//! A request for a key is decided here, at once, while the key's claim lasts
//! (a key far from its limit: the common case). A key whose claim is spent or
//! expired asks Redis (one awaited call, which also renews the claim): only
//! keys near their limit, shared by several replicas, pay it. While Redis is
//! unreachable, every key is decided here alone (degraded).
//!
//! Times are microseconds on the local monotonic clock. A key's local TAT
//! only ever moves forward: a sync can make it stricter (others' admissions),
//! never looser.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;

use super::clock::LocalClock;
use super::{Params, micros};
use crate::rate_limit::key::RateKey;
use crate::rate_limit::store::{Decision, StoreError};

/// foldhash, seeded per map: keys chosen by clients cannot be aimed at one
/// shard in advance.
type Hasher = foldhash::fast::RandomState;

/// How claims are timed; fixed when the store is built.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// How long Redis keeps a claim reserved (µs): max(4 s, 80 intervals).
    pub(super) claim_life_us: u64,
    /// The end of a claim the replica leaves unspent (µs): max(1 s, 20
    /// intervals), so that what it spent reaches Redis while the claim still
    /// covers it. It spends no claim while its sync lags half of this.
    pub(super) margin_us: u64,
}

impl Settings {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            claim_life_us: micros(interval.saturating_mul(80)).max(4_000_000),
            margin_us: micros(interval.saturating_mul(20)).max(1_000_000),
        }
    }

    fn claim_use_us(&self) -> u64 {
        self.claim_life_us.saturating_sub(self.margin_us)
    }
}

/// One key's local state.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// GCRA theoretical arrival time: the shared state as last synced, plus
    /// this replica's admissions since.
    tat: u64,
    /// The TAT of the admissions not yet merged, as a GCRA starting empty:
    /// where they begin (`batch_tat − unmerged × T`) tells Redis how long
    /// ago they started, so a steady stream is not charged as one burst.
    batch_tat: u64,
    /// This entry's id, unique in the process: Redis remembers how much of
    /// it it merged (never 0).
    id: u64,
    /// Admissions made here, ever, by this entry.
    total: u64,
    /// Of those, how many Redis confirmed merged.
    acked: u64,
    /// Requests this replica may still admit without asking Redis.
    claim: u32,
    /// Until when (local µs) the claim may be used.
    claim_until: u64,
    /// The claim is Redis's (false: the provisional allowance of a new key).
    claim_reserved: bool,
    /// When the report whose reply set the claim was made: an older reply,
    /// arriving late, does not replace it.
    claim_sent: u64,
    /// Admissions since the last report: what the next claim should cover.
    demand: u32,
    /// In a sync queue.
    queued: bool,
    /// In the urgent queue (it may be in the other one too).
    urgent: bool,
}

impl Entry {
    fn new(id: u64, now: u64, provisional: u32, settings: &Settings) -> Self {
        Self {
            tat: 0,
            batch_tat: 0,
            id,
            total: 0,
            acked: 0,
            claim: provisional,
            claim_until: now.saturating_add(settings.claim_use_us()),
            claim_reserved: false,
            claim_sent: 0,
            demand: 0,
            queued: false,
            urgent: false,
        }
    }

    fn unmerged(&self) -> u64 {
        self.total.saturating_sub(self.acked)
    }
}

/// A key's state as sent to Redis, by a sync or by an ask.
#[derive(Debug, Clone)]
pub(super) struct Report {
    pub(super) policy: usize,
    pub(super) key: RateKey,
    pub(super) entry: u64,
    pub(super) acked: u64,
    pub(super) total: u64,
    /// µs since the first of the admissions charged began.
    pub(super) age: u64,
    pub(super) want: u32,
    /// Local time it was made (claims are timed from it).
    pub(super) sent_at: u64,
    /// When the key was queued (sync lag).
    since: u64,
}

/// What Redis answered for one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reply {
    /// TAT − now on the server after the call (0: full).
    pub(super) ahead_us: u64,
    pub(super) claim: u32,
    /// An ask: whether the request was admitted, and when to retry if not.
    pub(super) admitted: bool,
    pub(super) remaining: u32,
    pub(super) retry_us: u64,
}

/// What the local state makes of a request.
#[derive(Debug)]
pub(super) enum Local {
    Decided(Decision),
    /// No claim left: ask Redis, which decides this request.
    Ask(Report),
    /// A charge of several units the claim does not cover: decided by Redis
    /// alone, exactly (the claims of every replica stay reserved).
    Exact,
}

#[derive(Debug)]
struct Queued {
    policy: usize,
    key: RateKey,
    since: u64,
}

/// Keys waiting for a sync: the urgent ones (near their limit) first, then
/// the rest, oldest first.
#[derive(Debug, Default)]
struct Queues {
    urgent: VecDeque<Queued>,
    normal: VecDeque<Queued>,
}

impl Queues {
    fn pop(&mut self) -> Option<Queued> {
        self.urgent.pop_front().or_else(|| self.normal.pop_front())
    }
}

/// The local state of every policy's keys, bounded in keys.
pub(super) struct LocalState {
    params: Vec<Params>,
    maps: Vec<DashMap<RateKey, Entry, Hasher>>,
    /// Keys held across policies, the overflow buckets excepted.
    len: AtomicUsize,
    cap: usize,
    overflowed: AtomicBool,
    queues: Mutex<Queues>,
    /// Keys in a queue (each once, though it may have two records).
    queued: AtomicUsize,
    /// Reports handed to a sync and not settled yet.
    in_flight: AtomicUsize,
    clock: LocalClock,
    settings: Settings,
    next_entry: AtomicU64,
    /// The last call to Redis failed: keys are decided here alone until one
    /// succeeds.
    degraded: AtomicBool,
    /// The oldest `since` among reports in flight (`u64::MAX`: none).
    oldest_in_flight: AtomicU64,
    /// Admissions never charged: forgiven after an outage.
    forgiven: AtomicU64,
    /// Replicas of this store seen live in Redis's registry (0: not known
    /// yet).
    replicas: AtomicU32,
    /// Registrations answered in a row (a provisional allowance needs two:
    /// replicas started together have all registered by the second).
    registrations: AtomicU32,
    /// The sync lags more than a quarter of a claim's life: claims are not
    /// spent (keys ask) until it catches up.
    lagging: AtomicBool,
    /// The oldest `since` among retried reports waiting in a queue
    /// (`u64::MAX`: none).
    oldest_retry: AtomicU64,
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
    pub(super) fn new(
        params: Vec<Params>,
        cap: usize,
        clock: LocalClock,
        settings: Settings,
    ) -> Self {
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
            queues: Mutex::new(Queues::default()),
            queued: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            clock,
            settings,
            next_entry: AtomicU64::new(1),
            degraded: AtomicBool::new(false),
            oldest_in_flight: AtomicU64::new(u64::MAX),
            forgiven: AtomicU64::new(0),
            replicas: AtomicU32::new(0),
            registrations: AtomicU32::new(0),
            lagging: AtomicBool::new(false),
            oldest_retry: AtomicU64::new(u64::MAX),
        }
    }

    /// How many replicas the registry counts (0: not known yet, or not
    /// confirmed by a second registration).
    pub(super) fn replicas(&self) -> u32 {
        if self.registrations.load(Ordering::Relaxed) < 2 {
            return 0;
        }
        self.replicas.load(Ordering::Relaxed)
    }

    /// Records how many replicas the registry counts (0: the registration
    /// failed, so the count is not known).
    pub(super) fn set_replicas(&self, replicas: u32) {
        self.replicas.store(replicas, Ordering::Relaxed);
        if replicas == 0 {
            self.registrations.store(0, Ordering::Relaxed);
        } else {
            self.registrations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether claims may be spent: not while the sync lags.
    pub(super) fn set_lagging(&self, lagging: bool) {
        self.lagging.store(lagging, Ordering::Relaxed);
    }

    /// What a key new to this replica may admit before Redis is asked:
    /// a quarter of the burst divided among the live replicas, so that all
    /// of them together, meeting one key at once, spend at most a quarter
    /// of its burst unasked (none while the count is unknown).
    fn provisional(&self, params: &Params) -> u32 {
        if self.registrations.load(Ordering::Relaxed) < 2 {
            return 0;
        }
        match self.replicas.load(Ordering::Relaxed) {
            0 => 0,
            replicas => params.burst / replicas.saturating_mul(4),
        }
    }

    pub(super) fn params(&self, policy: usize) -> Option<&Params> {
        self.params.get(policy)
    }

    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Keys held (overflow buckets excepted).
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Keys with admissions waiting for a sync or on their way to Redis.
    pub(super) fn pending_keys(&self) -> usize {
        self.queued.load(Ordering::Relaxed) + self.in_flight.load(Ordering::Relaxed)
    }

    /// How long the oldest key waiting for a sync has waited.
    pub(super) fn lag(&self) -> Duration {
        let now = self.now_us();
        let queues = self.lock_queues();
        let oldest = [queues.urgent.front(), queues.normal.front()]
            .into_iter()
            .flatten()
            .map(|q| q.since)
            .chain(Some(self.oldest_in_flight.load(Ordering::Relaxed)))
            .chain(Some(self.oldest_retry.load(Ordering::Relaxed)))
            .min()
            .filter(|&since| since != u64::MAX);
        from_us(oldest.map_or(0, |since| now.saturating_sub(since)))
    }

    /// Admissions forgiven (never charged in Redis) after an outage.
    pub(super) fn forgiven(&self) -> u64 {
        self.forgiven.load(Ordering::Relaxed)
    }

    /// Whether new keys were sent to the overflow bucket since the last
    /// clean-up.
    pub(super) fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Whether the last call to Redis succeeded (else keys are decided
    /// alone).
    pub(super) fn healthy(&self) -> bool {
        !self.degraded.load(Ordering::Relaxed)
    }

    /// Redis answered.
    pub(super) fn answered(&self) {
        self.degraded.store(false, Ordering::Relaxed);
    }

    /// Redis failed to answer: decide alone until it answers again.
    pub(super) fn unreachable(&self) {
        self.degraded.store(true, Ordering::Relaxed);
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request of `key` under `policy`, now: decided here while
    /// the key's claim lasts (or Redis is unreachable), else asked.
    pub(super) fn decide(&self, policy: usize, key: &RateKey) -> Result<Local, StoreError> {
        self.decide_with(policy, key, 1, !self.healthy())
    }

    /// Charges `units` of `key` under `policy` here, if its claim covers
    /// them (or Redis is unreachable); else [`Local::Exact`].
    pub(super) fn charge(
        &self,
        policy: usize,
        key: &RateKey,
        units: u32,
    ) -> Result<Local, StoreError> {
        self.decide_with(policy, key, units.max(1), !self.healthy())
    }

    /// Decides `key` here, claim or not (Redis did not answer an ask).
    pub(super) fn decide_alone(
        &self,
        policy: usize,
        key: &RateKey,
    ) -> Result<Decision, StoreError> {
        match self.decide_with(policy, key, 1, true)? {
            Local::Decided(decision) => Ok(decision),
            Local::Ask(_) | Local::Exact => Err(StoreError::new("a local decision asked Redis")),
        }
    }

    fn decide_with(
        &self,
        policy: usize,
        key: &RateKey,
        units: u32,
        alone: bool,
    ) -> Result<Local, StoreError> {
        let (Some(params), Some(map)) = (self.params.get(policy), self.maps.get(policy)) else {
            return Err(StoreError::new("policy not prepared"));
        };
        let now = self.clock.now_us();
        let mut key = key;
        let overflow_key;
        let mut entry = match map.get_mut(key) {
            Some(entry) => entry,
            None => {
                // A new key: reserve its place first, so the cap holds under
                // concurrency; at the cap, new keys share the overflow bucket.
                if self.len.fetch_add(1, Ordering::AcqRel) >= self.cap {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                    self.overflowed.store(true, Ordering::Relaxed);
                    overflow_key = RateKey::overflow();
                    key = &overflow_key;
                }
                let overflow = *key == RateKey::overflow();
                let mut inserted = false;
                let entry = map.entry(key.clone()).or_insert_with(|| {
                    inserted = true;
                    let id = self.next_entry.fetch_add(1, Ordering::Relaxed);
                    Entry::new(id, now, self.provisional(params), &self.settings)
                });
                if !inserted && !overflow {
                    self.len.fetch_sub(1, Ordering::AcqRel);
                }
                entry
            }
        };
        let tat = entry.tat.max(now);
        // The last of the units must fit: the first may come at tat − tau.
        let spent = u64::from(units).saturating_mul(params.t_us);
        let earliest = tat
            .saturating_add(spent - params.t_us)
            .saturating_sub(params.tau_us);
        if earliest > now {
            return Ok(Local::Decided(Decision::limited(
                params.burst,
                from_us(earliest - now),
            )));
        }
        let claimed = entry.claim >= units
            && now < entry.claim_until
            && !self.lagging.load(Ordering::Relaxed);
        if !claimed && !alone {
            if units > 1 {
                return Ok(Local::Exact);
            }
            let report = self.report(policy, key, &mut entry, params, now, 0);
            return Ok(Local::Ask(report));
        }
        if claimed {
            entry.claim -= units;
        }
        entry.tat = tat.saturating_add(spent);
        entry.batch_tat = entry.batch_tat.max(now).saturating_add(spent);
        entry.total = entry.total.saturating_add(u64::from(units));
        entry.demand = entry.demand.saturating_add(units);
        let headroom = now
            .saturating_add(params.tau_us)
            .saturating_add(params.t_us)
            .saturating_sub(entry.tat);
        let remaining = u32::try_from(headroom / params.t_us)
            .unwrap_or(u32::MAX)
            .min(params.burst);
        let decision = Decision::allowed(params.burst, remaining, from_us(entry.tat - now));
        // Near its limit, a key goes to the urgent queue, even if it waits
        // in the other one already (the later record finds nothing to send).
        let urgent = remaining < params.burst / 2 && !entry.urgent;
        let queue = !entry.queued || urgent;
        if !entry.queued {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        entry.queued = true;
        entry.urgent |= urgent;
        drop(entry);
        if queue {
            let queued = Queued {
                policy,
                key: key.clone(),
                since: now,
            };
            let mut queues = self.lock_queues();
            if urgent {
                queues.urgent.push_back(queued);
            } else {
                queues.normal.push_back(queued);
            }
        }
        Ok(Local::Decided(decision))
    }

    /// What Redis should learn of `entry` now; resets its demand.
    fn report(
        &self,
        policy: usize,
        key: &RateKey,
        entry: &mut Entry,
        params: &Params,
        now: u64,
        since: u64,
    ) -> Report {
        let charged = entry.unmerged().min(u64::from(params.max_merge));
        let start = entry
            .batch_tat
            .saturating_sub(charged.saturating_mul(params.t_us));
        let demand = entry.demand;
        entry.demand = 0;
        if !entry.claim_reserved {
            // Redis does not know the provisional allowance: what is left of
            // it is not spent while the reply is on its way.
            entry.claim = 0;
        }
        Report {
            policy,
            key: key.clone(),
            entry: entry.id,
            acked: entry.acked,
            total: entry.total,
            age: if charged == 0 {
                0
            } else {
                now.saturating_sub(start)
            },
            want: demand.saturating_mul(2).saturating_add(1).min(params.burst),
            sent_at: now,
            since,
        }
    }

    /// Hands up to `max` queued keys to a sync, the urgent ones first.
    pub(super) fn take(&self, max: usize) -> Vec<Report> {
        let now = self.now_us();
        let mut reports = Vec::new();
        while reports.len() < max {
            let Some(queued) = self.lock_queues().pop() else {
                self.oldest_retry.store(u64::MAX, Ordering::Relaxed);
                break;
            };
            let (Some(params), Some(map)) =
                (self.params.get(queued.policy), self.maps.get(queued.policy))
            else {
                continue;
            };
            let Some(mut entry) = map.get_mut(&queued.key) else {
                continue;
            };
            if entry.queued {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            entry.queued = false;
            entry.urgent = false;
            if entry.unmerged() == 0 {
                continue;
            }
            let report = self.report(
                queued.policy,
                &queued.key,
                &mut entry,
                params,
                now,
                queued.since,
            );
            drop(entry);
            reports.push(report);
        }
        if let Some(oldest) = reports.iter().map(|r| r.since).min() {
            self.oldest_in_flight.fetch_min(oldest, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(reports.len(), Ordering::Relaxed);
        reports
    }

    /// Applies what Redis answered to a sync's `report`, at local time `now`.
    pub(super) fn settle(&self, report: &Report, reply: Reply, now: u64) {
        self.landed();
        self.apply(report, reply, now);
    }

    /// A report in flight came back (settled or to retry).
    fn landed(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.oldest_in_flight.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// A sync's report did not reach Redis (or came back late): queued again,
    /// at the back of the urgent queue, to be sent again (Redis charges its
    /// admissions at most once).
    pub(super) fn retry(&self, report: Report) {
        self.landed();
        let Some(map) = self.maps.get(report.policy) else {
            return;
        };
        let Some(mut entry) = map.get_mut(&report.key) else {
            return;
        };
        if entry.id != report.entry || entry.urgent {
            return;
        }
        if !entry.queued {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        entry.queued = true;
        entry.urgent = true;
        drop(entry);
        // At the back: a key that keeps failing (its node down) does not
        // hold up the others.
        self.oldest_retry.fetch_min(report.since, Ordering::Relaxed);
        self.lock_queues().urgent.push_back(Queued {
            policy: report.policy,
            key: report.key,
            since: report.since,
        });
    }

    /// Applies what Redis answered to an ask or a sync, at local time `now`.
    pub(super) fn apply(&self, report: &Report, reply: Reply, now: u64) {
        self.answered();
        let (Some(params), Some(map)) =
            (self.params.get(report.policy), self.maps.get(report.policy))
        else {
            return;
        };
        let Some(mut entry) = map.get_mut(&report.key) else {
            return;
        };
        if entry.id != report.entry {
            return;
        }
        let t = params.t_us;
        entry.acked = entry.acked.max(report.total);
        // Admissions made while the call was on its way: part of what the
        // claim covered, and not in the shared state yet.
        let since = entry.total.saturating_sub(report.total);
        if report.sent_at >= entry.claim_sent {
            entry.claim = reply
                .claim
                .saturating_sub(u32::try_from(since).unwrap_or(u32::MAX));
            entry.claim_until = report.sent_at.saturating_add(self.settings.claim_use_us());
            entry.claim_reserved = true;
            entry.claim_sent = report.sent_at;
        }
        let since_us = since.saturating_mul(t);
        let shared = now.saturating_add(reply.ahead_us);
        let synced = shared
            .max(entry.batch_tat.saturating_sub(since_us))
            .saturating_add(since_us);
        entry.tat = entry.tat.max(synced);
        if !reply.admitted && reply.retry_us > 0 {
            // Refused: refuse here too until Redis said to retry.
            let until = now
                .saturating_add(reply.retry_us)
                .saturating_add(params.tau_us);
            entry.tat = entry.tat.max(until);
        }
        if entry.unmerged() == 0 {
            entry.batch_tat = 0;
        }
    }

    /// Removes keys that are full again and have nothing waiting for Redis
    /// (indistinguishable from new keys), and shrinks the maps. Admissions
    /// still unmerged so long after they were made that the key refilled
    /// since (one whole burst's time: Redis unreachable, or its node down)
    /// are forgiven, so that the cap does not fill with keys that can no
    /// longer change a decision here.
    pub(super) fn cleanup(&self) {
        let now = self.clock.now_us();
        for (policy, map) in self.maps.iter().enumerate() {
            let full_refill = self
                .params
                .get(policy)
                .map_or(0, |p| p.tau_us.saturating_add(p.t_us));
            map.retain(|key, entry| {
                if entry.unmerged() > 0
                    && entry.tat <= now
                    && entry.batch_tat.saturating_add(full_refill) <= now
                {
                    self.forgiven.fetch_add(entry.unmerged(), Ordering::Relaxed);
                    entry.acked = entry.total;
                }
                let keep = entry.tat > now || entry.unmerged() > 0;
                if !keep && entry.queued {
                    // Its queue records find nothing when taken.
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                }
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

#[cfg(test)]
mod tests;
