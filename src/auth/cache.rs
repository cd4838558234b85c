//! A bounded cache of verified tokens.
//!
//! A browser sends the same session cookie on every request; verifying its
//! signature each time costs microseconds (more for RSA and EC). With the
//! cache, a repeat costs a hash lookup and a comparison of the full token.
//!
//! - keyed by the full token text, never by a hash alone;
//! - only tokens that passed every check are stored;
//! - an entry lives until the earlier of `exp` (plus leeway) and its TTL;
//!   `exp` is checked again on every hit, and so are `nbf` and `iat` (by the
//!   caller), so a wall clock stepped backwards serves nothing early;
//! - typed claims are shared (`Arc`), not parsed again;
//! - bounded in entries (quick_cache, S3-FIFO eviction): a flood of unique
//!   tokens evicts, it does not grow.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use quick_cache::Equivalent;
use quick_cache::sync::Cache;

use super::verify::Verified;

/// How many trailing bytes of a token are hashed: its signature. Entries are
/// compared on the whole token; hashing the tail keeps a lookup cheap for
/// long (RSA) tokens. Only verified tokens are stored, and their signatures
/// cannot be chosen by an attacker, so stored entries cannot be made to
/// collide.
const HASHED_TAIL: usize = 32;

fn tail(token: &str) -> &[u8] {
    let bytes = token.as_bytes();
    &bytes[bytes.len().saturating_sub(HASHED_TAIL)..]
}

/// A stored token.
#[derive(Clone, PartialEq, Eq)]
struct Stored(Arc<str>);

impl Hash for Stored {
    fn hash<H: Hasher>(&self, state: &mut H) {
        tail(&self.0).hash(state);
    }
}

/// A token being looked up.
#[derive(PartialEq, Eq)]
struct Probe<'a>(&'a str);

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        tail(self.0).hash(state);
    }
}

impl Equivalent<Stored> for Probe<'_> {
    fn equivalent(&self, key: &Stored) -> bool {
        *key.0 == *self.0
    }
}

struct Entry<T> {
    verified: Arc<Verified<T>>,
    /// Unix second from which the entry must not be used.
    deadline: u64,
    /// The key-set generation that verified it.
    generation: u64,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Self {
            verified: Arc::clone(&self.verified),
            deadline: self.deadline,
            generation: self.generation,
        }
    }
}

pub(crate) struct TokenCache<T> {
    entries: Cache<Stored, Entry<T>>,
    ttl: u64,
}

/// What a lookup found.
pub(crate) enum Lookup<T> {
    Hit(Arc<Verified<T>>),
    /// Cached, but its `exp` has passed: expired, no need to verify again.
    Expired,
    Miss,
}

impl<T> TokenCache<T> {
    pub(crate) fn new(capacity: usize, ttl: u64) -> Self {
        Self {
            entries: Cache::new(capacity),
            ttl,
        }
    }

    pub(crate) fn get(&self, token: &str, now: u64, leeway: u64, generation: u64) -> Lookup<T> {
        let key = Probe(token);
        let Some(entry) = self.entries.get(&key) else {
            return Lookup::Miss;
        };
        if entry.generation != generation {
            // The keys changed since: the token must verify against the new ones.
            self.entries.remove(&key);
            return Lookup::Miss;
        }
        if now < entry.deadline {
            return Lookup::Hit(entry.verified);
        }
        self.entries.remove(&key);
        match entry.verified.exp {
            Some(exp) if now >= exp.saturating_add(leeway) => Lookup::Expired,
            // The TTL ran out first: verify again.
            _ => Lookup::Miss,
        }
    }

    pub(crate) fn insert(
        &self,
        token: &str,
        verified: Arc<Verified<T>>,
        now: u64,
        leeway: u64,
        generation: u64,
    ) {
        let mut deadline = now.saturating_add(self.ttl);
        if let Some(exp) = verified.exp {
            deadline = deadline.min(exp.saturating_add(leeway));
        }
        if deadline > now {
            self.entries.insert(
                Stored(Arc::from(token)),
                Entry {
                    verified,
                    deadline,
                    generation,
                },
            );
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(exp: Option<u64>) -> Arc<Verified<()>> {
        Arc::new(Verified {
            claims: Arc::new(()),
            subject: None,
            issuer: None,
            jti: None,
            exp,
            nbf: None,
            iat: None,
            session_end: None,
            session_start: None,
            sid: None,
            grants: None,
            derived: crate::identity::Derived::default(),
        })
    }

    #[test]
    fn entries_expire_with_exp_and_ttl() {
        let cache = TokenCache::new(10, 300);
        cache.insert("a", verified(Some(1_000)), 900, 60, 0);
        assert!(matches!(cache.get("a", 1_059, 60, 0), Lookup::Hit(_)));
        assert!(matches!(cache.get("a", 1_060, 60, 0), Lookup::Expired));
        assert!(
            matches!(cache.get("a", 1_061, 60, 0), Lookup::Miss),
            "removed after expiry"
        );

        cache.insert("b", verified(Some(10_000)), 1_000, 60, 0);
        assert!(matches!(cache.get("b", 1_299, 60, 0), Lookup::Hit(_)));
        assert!(
            matches!(cache.get("b", 1_300, 60, 0), Lookup::Miss),
            "TTL passed: verify again"
        );
    }

    #[test]
    fn lookups_compare_the_whole_token() {
        let cache = TokenCache::new(10, 300);
        cache.insert("header.payload.sig", verified(None), 0, 0, 0);
        assert!(matches!(
            cache.get("header.payload.sig", 1, 0, 0),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            cache.get("header.payload.sih", 1, 0, 0),
            Lookup::Miss
        ));
        assert!(matches!(
            cache.get("header.payload.si", 1, 0, 0),
            Lookup::Miss
        ));
        // another key generation: verify again
        assert!(matches!(
            cache.get("header.payload.sig", 1, 0, 1),
            Lookup::Miss
        ));
    }

    #[test]
    fn bounded() {
        let cache = TokenCache::new(100, 300);
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), verified(None), 0, 0, 0);
        }
        assert!(cache.len() <= 100, "{}", cache.len());
    }
}
