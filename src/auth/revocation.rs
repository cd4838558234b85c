//! Revoked tokens and sessions: see [`Revocations`].

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::clock::{SystemClock, WallClock};
use crate::identity::Identity;

/// Default bound on how long a token lives, for subject revocations.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Shards of the revocation maps: a revocation write-locks one shard only.
const SHARDS: usize = 16;

/// A revoked subject of one issuer: tokens issued before `before` are
/// refused until `until`.
#[derive(Debug, Clone)]
struct Cut {
    issuer: Option<Box<str>>,
    before: u64,
    until: u64,
}

#[derive(Default)]
struct Shard {
    /// `jti` → keep until (unix seconds).
    tokens: HashMap<Box<str>, u64>,
    /// subject → its cuts, one per issuer (looked up by `&str`, without
    /// allocating).
    subjects: HashMap<Box<str>, Vec<Cut>>,
}

struct Inner {
    shards: [RwLock<Shard>; SHARDS],
    /// Entries held, across shards: 0 makes the check one load.
    count: AtomicUsize,
    /// Where the next clean-up slice runs.
    cursor: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
    max_lifetime: u64,
    leeway: u64,
    clock: Arc<dyn WallClock>,
}

/// Revoked tokens and sessions: logout for stateless tokens.
///
/// A JWT stays valid until its `exp` wherever it is verified. [`Revocations`]
/// lets a service refuse one token (by `jti`) or every token of a subject
/// issued before a time (logout everywhere, password change), checked by the
/// auth layer on every request — verified-token cache hits included.
///
/// ```
/// use std::time::Duration;
/// use tollgate::auth::{JwtAuthLayer, Key, Revocations};
///
/// # fn main() -> Result<(), tollgate::ConfigError> {
/// let revocations = Revocations::new().max_token_lifetime(Duration::from_secs(15 * 60));
/// let auth = JwtAuthLayer::<serde_json::Value>::builder()
///     .key(Key::hmac(b"0123456789abcdef0123456789abcdef")?)
///     .cookie("da3")
///     .revocations(revocations.clone())
///     .build()?;
///
/// // In a logout handler, with the caller's `Identity`:
/// // revocations.revoke_token_of(&identity);           // this session
/// // revocations.revoke_subject_of(&identity, now);    // every session
/// revocations.revoke_token("a-jti", 1_900_000_000);
/// assert!(revocations.is_revoked(None, Some("alice"), Some("a-jti"), Some(1), 1_800_000_000));
/// # let _ = auth;
/// # Ok(()) }
/// ```
///
/// Memory is bounded by time: a revoked `jti` is kept until the token would
/// have expired anyway (its `exp` plus the leeway), a revoked subject until
/// the longest token it can affect would have expired (the time given plus
/// [`max_token_lifetime`](Revocations::max_token_lifetime)). Expired entries
/// are removed a shard at a time as revocations are added.
///
/// With no revocations at all the check is one atomic load.
///
/// Shared by every clone and every layer given a clone.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocations")
            .field("entries", &self.len())
            .field("max_token_lifetime_secs", &self.inner.max_lifetime)
            .finish_non_exhaustive()
    }
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

fn read(shard: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &RwLock<Shard>) -> std::sync::RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

impl Revocations {
    /// No revocations yet, on the system clock.
    pub fn new() -> Self {
        Self::build(
            DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
            crate::auth::DEFAULT_LEEWAY.as_secs(),
            Arc::new(SystemClock),
        )
    }

    fn build(max_lifetime: u64, leeway: u64, clock: Arc<dyn WallClock>) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| RwLock::new(Shard::default())),
                count: AtomicUsize::new(0),
                cursor: AtomicUsize::new(0),
                hasher: std::collections::hash_map::RandomState::new(),
                max_lifetime,
                leeway,
                clock,
            }),
        }
    }

    fn rebuild(&self, max_lifetime: u64, leeway: u64, clock: Arc<dyn WallClock>) -> Self {
        // Settings are chosen before any revocation is added; a set that
        // already holds entries keeps them.
        let fresh = Self::build(max_lifetime, leeway, clock);
        for (from, to) in self.inner.shards.iter().zip(&fresh.inner.shards) {
            let from = read(from);
            let mut to = write(to);
            to.tokens.clone_from(&from.tokens);
            to.subjects.clone_from(&from.subjects);
        }
        fresh.inner.count.store(self.len(), Ordering::Relaxed);
        fresh
    }

    /// The longest lifetime (`exp − iat`) of the tokens this service
    /// accepts (default 24 h; set it to the issuer's session length): a
    /// subject revocation is kept that long, after which every token it
    /// could affect has expired. Configure before sharing the set.
    #[must_use]
    pub fn max_token_lifetime(self, lifetime: Duration) -> Self {
        let (leeway, clock) = (self.inner.leeway, Arc::clone(&self.inner.clock));
        self.rebuild(lifetime.as_secs(), leeway, clock)
    }

    /// The clock-skew allowance added to how long entries are kept (default
    /// 60 s, the auth layer's default leeway).
    #[must_use]
    pub fn leeway(self, leeway: Duration) -> Self {
        let (max, clock) = (self.inner.max_lifetime, Arc::clone(&self.inner.clock));
        self.rebuild(max, leeway.as_secs(), clock)
    }

    /// The wall clock that expires entries (default: the system clock).
    #[must_use]
    pub fn clock(self, clock: impl WallClock) -> Self {
        let (max, leeway) = (self.inner.max_lifetime, self.inner.leeway);
        self.rebuild(max, leeway, Arc::new(clock))
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        use std::hash::BuildHasher;
        let hash = self.inner.hasher.hash_one(key);
        #[allow(clippy::cast_possible_truncation)]
        &self.inner.shards[(hash as usize) % SHARDS]
    }

    /// Refuses the token whose `jti` is `jti` until `expires_at` (its `exp`,
    /// unix seconds) plus the leeway, after which it is expired anyway.
    pub fn revoke_token(&self, jti: &str, expires_at: u64) {
        let until = expires_at.saturating_add(self.inner.leeway);
        let added = write(self.shard(jti))
            .tokens
            .insert(jti.into(), until)
            .is_none();
        self.added(added);
    }

    /// Refuses every token of `subject` (from `issuer`, as
    /// [`Identity::issuer`] reports it) issued before `issued_before` (unix
    /// seconds): logout everywhere. Tokens without `iat` are refused too:
    /// their issue time is unknown.
    pub fn revoke_subject(&self, issuer: Option<&str>, subject: &str, issued_before: u64) {
        let until = issued_before
            .saturating_add(self.inner.max_lifetime)
            .saturating_add(self.inner.leeway);
        let mut shard = write(self.shard(subject));
        let cuts = shard.subjects.entry(subject.into()).or_default();
        let added = match cuts.iter_mut().find(|cut| cut.issuer.as_deref() == issuer) {
            Some(cut) => {
                // A later revocation of the same subject covers more tokens.
                cut.before = cut.before.max(issued_before);
                cut.until = cut.until.max(until);
                false
            }
            None => {
                cuts.push(Cut {
                    issuer: issuer.map(Into::into),
                    before: issued_before,
                    until,
                });
                true
            }
        };
        drop(shard);
        self.added(added);
    }

    /// Revokes the token the caller presented (by its `jti`; a token without
    /// one cannot be revoked alone — use [`revoke_subject_of`](Self::revoke_subject_of)).
    /// Returns whether there was a `jti` to revoke.
    pub fn revoke_token_of(&self, identity: &Identity) -> bool {
        let (Some(jti), Some(exp)) = (identity.token_id(), identity.expires_at()) else {
            return false;
        };
        self.revoke_token(jti, exp);
        true
    }

    /// Revokes every token of the caller's subject issued before
    /// `issued_before` (unix seconds). Returns whether the identity had a
    /// subject.
    pub fn revoke_subject_of(&self, identity: &Identity, issued_before: u64) -> bool {
        let Some(subject) = identity.subject() else {
            return false;
        };
        self.revoke_subject(identity.issuer(), subject, issued_before);
        true
    }

    /// Whether a token with these claims is revoked at `now`.
    pub fn is_revoked(
        &self,
        issuer: Option<&str>,
        subject: Option<&str>,
        jti: Option<&str>,
        iat: Option<u64>,
        now: u64,
    ) -> bool {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        if let Some(jti) = jti
            && read(self.shard(jti))
                .tokens
                .get(jti)
                .is_some_and(|until| now < *until)
        {
            return true;
        }
        let Some(subject) = subject else {
            return false;
        };
        let shard = read(self.shard(subject));
        if shard.subjects.is_empty() {
            return false;
        }
        shard.subjects.get(subject).is_some_and(|cuts| {
            cuts.iter().any(|cut| {
                cut.issuer.as_deref() == issuer
                    && now < cut.until
                    && iat.is_none_or(|iat| iat < cut.before)
            })
        })
    }

    /// How many revocations are held (tokens and subjects).
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Whether no revocation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a new entry and cleans one shard of expired ones.
    fn added(&self, added: bool) {
        if added {
            self.inner.count.fetch_add(1, Ordering::Relaxed);
        }
        let next = self.inner.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.clean(next, self.inner.clock.unix_now());
    }

    /// Removes the expired entries of one shard.
    fn clean(&self, shard: usize, now: u64) {
        let mut shard = write(&self.inner.shards[shard]);
        let held = |shard: &Shard| {
            shard.tokens.len() + shard.subjects.values().map(Vec::len).sum::<usize>()
        };
        let before = held(&shard);
        shard.tokens.retain(|_, until| now < *until);
        shard.subjects.retain(|_, cuts| {
            cuts.retain(|cut| now < cut.until);
            !cuts.is_empty()
        });
        let removed = before - held(&shard);
        if removed > 0 {
            self.inner.count.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    /// Removes every expired entry now (the set also does this by itself, a
    /// shard per revocation added).
    pub fn cleanup(&self) {
        let now = self.inner.clock.unix_now();
        for shard in 0..SHARDS {
            self.clean(shard, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn at(now: &Arc<AtomicU64>) -> Revocations {
        let clock = Arc::clone(now);
        Revocations::new()
            .max_token_lifetime(Duration::from_secs(900))
            .leeway(Duration::from_secs(60))
            .clock(move || clock.load(Ordering::SeqCst))
    }

    #[test]
    fn a_revoked_jti_is_refused_until_its_token_expires() {
        let now = Arc::new(AtomicU64::new(1_000));
        let r = at(&now);
        assert!(!r.is_revoked(None, Some("alice"), Some("t1"), Some(900), 1_000));
        r.revoke_token("t1", 1_500);
        assert!(r.is_revoked(None, Some("alice"), Some("t1"), Some(900), 1_000));
        assert!(!r.is_revoked(None, Some("alice"), Some("t2"), Some(900), 1_000));
        // Kept through exp + leeway, then dropped by the clean-up.
        assert!(r.is_revoked(None, None, Some("t1"), None, 1_559));
        assert!(!r.is_revoked(None, None, Some("t1"), None, 1_560));
        now.store(1_560, Ordering::SeqCst);
        r.cleanup();
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_revoked_subject_refuses_older_tokens_of_that_issuer_only() {
        let now = Arc::new(AtomicU64::new(1_000));
        let r = at(&now);
        r.revoke_subject(Some("https://a"), "alice", 1_000);
        let revoked = |iss, sub, iat| r.is_revoked(iss, Some(sub), None, iat, 1_000);
        assert!(revoked(Some("https://a"), "alice", Some(999)));
        assert!(
            !revoked(Some("https://a"), "alice", Some(1_000)),
            "issued at or after: valid"
        );
        assert!(
            revoked(Some("https://a"), "alice", None),
            "unknown issue time: refused"
        );
        assert!(
            !revoked(Some("https://b"), "alice", Some(999)),
            "another issuer"
        );
        assert!(
            !revoked(Some("https://a"), "bob", Some(999)),
            "another subject"
        );
        // A later revocation covers more; an earlier one does not undo it.
        r.revoke_subject(Some("https://a"), "alice", 1_100);
        r.revoke_subject(Some("https://a"), "alice", 500);
        assert!(revoked(Some("https://a"), "alice", Some(1_050)));
        assert_eq!(r.len(), 1);
        // Kept for max lifetime + leeway after the latest cut-off.
        assert!(r.is_revoked(Some("https://a"), Some("alice"), None, Some(1), 2_059));
        assert!(!r.is_revoked(Some("https://a"), Some("alice"), None, Some(1), 2_060));
    }

    #[test]
    fn memory_is_bounded_by_time() {
        let now = Arc::new(AtomicU64::new(0));
        let r = at(&now);
        for i in 0..10_000 {
            now.store(i, Ordering::SeqCst);
            r.revoke_token(&format!("t{i}"), i + 10);
        }
        // Every entry lives 70 s (exp + leeway); a revocation cleans one of
        // 16 shards, so a shard is visited every 16 revocations: what is
        // held stays near 70 + 16 entries, not 10,000.
        assert!(r.len() < 200, "{}", r.len());
    }

    #[test]
    fn identity_helpers_need_what_they_revoke_by() {
        let r = Revocations::new();
        let bare = Identity::new(None, None, crate::identity::CredentialSource::Cookie);
        assert!(!r.revoke_token_of(&bare));
        assert!(!r.revoke_subject_of(&bare, 10));
        assert!(r.is_empty());
    }
}
