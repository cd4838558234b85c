//! The tokens this replica has already re-minted, so that concurrent
//! requests carrying the same old cookie mint once.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

/// Shards of the set: a claim locks one shard only.
const SHARDS: usize = 16;

/// Digests of re-minted tokens, each kept until the old token expires (after
/// which it is refused anyway), bounded in entries.
///
/// Keyed by a keyed 64-bit digest of the token's signature, not by its
/// `jti`: the re-minted token keeps the `jti`, and must itself be refreshable
/// when its own window comes. A digest collision (odds ~2⁻⁶⁴ per pair) only
/// skips one refresh.
pub(crate) struct Refreshed {
    shards: [Mutex<HashMap<u64, u64>>; SHARDS],
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
}

fn lock(shard: &Mutex<HashMap<u64, u64>>) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Refreshed {
    /// Holds about `capacity` entries (at least one per shard).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// The digest of a token: of its signature segment, which differs
    /// between any two tokens this layer verified.
    pub(crate) fn digest(&self, token: &str) -> u64 {
        let signature = token.rsplit('.').next().unwrap_or(token);
        self.hasher.hash_one(signature)
    }

    fn shard(&self, digest: u64) -> &Mutex<HashMap<u64, u64>> {
        &self.shards[(digest as usize) % SHARDS]
    }

    /// Whether the token was re-minted already (and is not yet expired).
    pub(crate) fn contains(&self, digest: u64, now: u64) -> bool {
        lock(self.shard(digest))
            .get(&digest)
            .is_some_and(|until| now < *until)
    }

    /// Claims the token for this request: `true` for exactly one caller
    /// until `until` (unix seconds). A full shard first drops its expired
    /// entries, then, if still full, an arbitrary one (that token could
    /// then be re-minted twice, which is harmless).
    pub(crate) fn claim(&self, digest: u64, until: u64, now: u64) -> bool {
        let mut shard = lock(self.shard(digest));
        if let Some(held) = shard.get_mut(&digest) {
            if now < *held {
                return false;
            }
            *held = until;
            return true;
        }
        if shard.len() >= self.per_shard {
            shard.retain(|_, held| now < *held);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(digest, until);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_token_until_it_expires() {
        let set = Refreshed::new(100);
        let a = set.digest("h.p.sig-a");
        let b = set.digest("h.p.sig-b");
        assert_ne!(a, b);
        assert!(!set.contains(a, 10));
        assert!(set.claim(a, 20, 10));
        assert!(set.contains(a, 10));
        assert!(!set.claim(a, 20, 15), "second claim of the same token");
        assert!(set.claim(b, 20, 15), "another token");
        // Past `until` the old token is expired; a claim is allowed again.
        assert!(!set.contains(a, 20));
        assert!(set.claim(a, 40, 20));
    }

    #[test]
    fn bounded_in_entries() {
        let set = Refreshed::new(32);
        for i in 0..10_000_u64 {
            assert!(set.claim(set.digest(&format!("h.p.{i}")), u64::MAX, 0));
        }
        assert!(set.len() <= 32, "{}", set.len());
    }
}
