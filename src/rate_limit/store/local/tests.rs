//! The local store: decisions, the cap, and the incremental clean-up, on a
//! fake clock.

use super::keys::*;
use super::*;
use crate::rate_limit::quota::Quota;
use governor::clock::FakeRelativeClock;
use governor::state::InMemoryState;
use hashbrown::HashTable;
use std::hash::BuildHasher;
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
    // Decisions are counted by a per-thread random draw: on a fresh thread
    // the draws are the same every run (the harness may reuse its threads).
    std::thread::spawn(|| {
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
    })
    .join()
    .unwrap();
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

#[test]
fn decisions_are_counted_in_proportion_whatever_the_interleaving() {
    // Two stores decided alternately on one thread: a counter bumped every
    // 16th decision of the thread would credit one store only, and the
    // other would never clean up.
    let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
    for _ in 0..32_000 {
        let _ = super::count_decision(&a);
        let _ = super::count_decision(&b);
    }
    for counted in [a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)] {
        assert!(
            (25_600..=38_400).contains(&counted),
            "{counted} counted for 32,000 decisions"
        );
    }
}
