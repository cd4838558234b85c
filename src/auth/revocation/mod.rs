//! Revoked tokens and sessions: see [`Revocations`].
//!
//! Layout: this file holds the set each process checks; `redis` (feature
//! `redis`) shares it between replicas — the settings, the wire format and
//! the calls — and `sync` is its background task.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::clock::{SystemClock, WallClock};
use crate::identity::Identity;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod sync;
#[cfg(test)]
mod tests;

#[cfg(feature = "redis")]
pub use self::redis::{
    DEFAULT_REVOCATION_PREFIX, DEFAULT_REVOCATION_SYNC_INTERVAL, RedisRevocations,
    RevocationSyncError,
};

/// Default bound on how long a token lives, for subject revocations.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The time a subject revocation compares: the earliest of the token's
/// `iat` and its session's start (`auth_time`, `session_start`). `None`
/// (unknown) when the token has neither.
pub(crate) fn issue_time(iat: Option<u64>, session_start: Option<u64>) -> Option<u64> {
    match (iat, session_start) {
        (Some(iat), Some(start)) => Some(iat.min(start)),
        (iat, start) => iat.or(start),
    }
}

/// Shards of the revocation maps: a revocation write-locks one shard only.
const SHARDS: usize = 16;

/// A revoked subject of one issuer: tokens issued at or before `before` are
/// refused until `until`.
#[derive(Debug, Clone)]
struct Cut {
    issuer: Option<Box<str>>,
    before: u64,
    until: u64,
}

/// A revoked session of one issuer.
#[derive(Debug, Clone)]
struct SessionCut {
    issuer: Option<Box<str>>,
    /// When it was revoked (sent along, so that each replica holds it by
    /// its own settings, and written back if Redis loses it).
    at: u64,
    until: u64,
}

#[derive(Default)]
struct Shard {
    /// `jti` → keep until (unix seconds).
    tokens: HashMap<Box<str>, u64>,
    /// subject → its cuts, one per issuer (looked up by `&str`, without
    /// allocating).
    subjects: HashMap<Box<str>, Vec<Cut>>,
    /// session id (`sid`) → (issuer, keep until), one per issuer.
    sessions: HashMap<Box<str>, Vec<SessionCut>>,
}

struct Inner {
    shards: [RwLock<Shard>; SHARDS],
    /// Entries held, across shards: 0 makes the check one load.
    count: AtomicUsize,
    /// Where the next clean-up slice runs.
    cursor: AtomicUsize,
    hasher: std::collections::hash_map::RandomState,
    /// Settings, in seconds; read when revoking, never when checking.
    max_lifetime: AtomicU64,
    leeway: AtomicU64,
    /// The longest session a refresh slides (0: no refresh attached): a
    /// `jti` is held at least this long past its revocation.
    max_session: AtomicU64,
    clock: RwLock<Arc<dyn WallClock>>,
    /// Logout tokens seen (`[issuer, jti]` → keep until), for replays.
    logouts: std::sync::Mutex<HashMap<Box<str>, u64>>,
    /// Entries the clean-up has looked at, for the tests that pin its cost.
    #[cfg(test)]
    swept: AtomicUsize,
    /// The link to Redis, once shared.
    #[cfg(feature = "redis")]
    link: std::sync::OnceLock<self::redis::Link>,
}

/// Revoked tokens and sessions: logout for stateless tokens.
///
/// A JWT stays valid until its `exp` wherever it is verified. [`Revocations`]
/// lets a service refuse one token (by `jti`) or every token of a subject
/// issued up to a time (logout everywhere, password change), checked by the
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
/// Shared by every clone and every layer given a clone; shared by the
/// replicas of a service through Redis with [`share`](Revocations::share)
/// (feature `redis`, see `RedisRevocations`).
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Revocations");
        f.field("entries", &self.len()).field(
            "max_token_lifetime_secs",
            &self.inner.max_lifetime.load(Ordering::Relaxed),
        );
        #[cfg(feature = "redis")]
        f.field("shared", &self.inner.link.get().is_some());
        f.finish_non_exhaustive()
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
        Self {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| RwLock::new(Shard::default())),
                count: AtomicUsize::new(0),
                cursor: AtomicUsize::new(0),
                hasher: std::collections::hash_map::RandomState::new(),
                max_lifetime: AtomicU64::new(DEFAULT_MAX_TOKEN_LIFETIME.as_secs()),
                leeway: AtomicU64::new(crate::auth::claims_check::DEFAULT_LEEWAY.as_secs()),
                max_session: AtomicU64::new(0),
                clock: RwLock::new(Arc::new(SystemClock)),
                logouts: std::sync::Mutex::new(HashMap::new()),
                #[cfg(test)]
                swept: AtomicUsize::new(0),
                #[cfg(feature = "redis")]
                link: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The longest lifetime (`exp − iat`) of the tokens this service
    /// accepts (default 24 h; set it to the issuer's session length): a
    /// subject revocation is kept that long, after which every token it
    /// could affect has expired. A setting of the set, which clones share:
    /// configure it before handing out clones.
    #[must_use]
    pub fn max_token_lifetime(self, lifetime: Duration) -> Self {
        self.inner
            .max_lifetime
            .store(lifetime.as_secs(), Ordering::Relaxed);
        self
    }

    /// The clock-skew allowance added to how long entries are kept (default
    /// 60 s, the auth layer's default leeway). An auth layer given this set
    /// ([`JwtAuthBuilder::revocations`](crate::auth::JwtAuthBuilder::revocations))
    /// raises it to its own leeway at build, so that a revoked token is held
    /// for as long as the layer would accept it.
    #[must_use]
    pub fn leeway(self, leeway: Duration) -> Self {
        self.inner.leeway.store(leeway.as_secs(), Ordering::Relaxed);
        self
    }

    /// Holds entries at least `leeway` past their end: called by every auth
    /// layer the set is attached to, with the layer's leeway.
    pub(crate) fn cover_leeway(&self, leeway: Duration) {
        self.inner
            .leeway
            .fetch_max(leeway.as_secs(), Ordering::Relaxed);
    }

    /// Holds `jti` revocations for sessions that slide up to `max_session`:
    /// called when a refresh layer is built, with its
    /// [`max_session`](crate::refresh::Refresh::max_session).
    pub(crate) fn cover_session(&self, max_session: Duration) {
        self.inner
            .max_session
            .fetch_max(max_session.as_secs(), Ordering::Relaxed);
    }

    /// The wall clock that expires entries (default: the system clock).
    #[must_use]
    pub fn clock(self, clock: impl WallClock) -> Self {
        *self
            .inner
            .clock
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(clock);
        self
    }

    /// Now, on the set's clock (unix seconds).
    fn now(&self) -> u64 {
        self.inner
            .clock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .unix_now()
    }

    /// Until when a token revocation is kept: past its `exp` and, with a
    /// sliding refresh, past the end of any session it can belong to (the
    /// session started before now), since successors keep the `jti`.
    fn token_until(&self, expires_at: u64) -> u64 {
        let session = self.inner.max_session.load(Ordering::Relaxed);
        let end = if session == 0 {
            expires_at
        } else {
            expires_at.max(self.now().saturating_add(session))
        };
        end.saturating_add(self.inner.leeway.load(Ordering::Relaxed))
    }

    /// Until when a subject revocation is kept: until every token it
    /// covers has expired — the longest token issued at the cut-off and,
    /// with a sliding refresh, every successor of a session begun before
    /// it (those end by the session's start plus `max_session`).
    fn subject_until(&self, issued_until: u64) -> u64 {
        let lifetime = self.inner.max_lifetime.load(Ordering::Relaxed);
        let session = self.inner.max_session.load(Ordering::Relaxed);
        issued_until
            .saturating_add(lifetime.max(session))
            .saturating_add(self.inner.leeway.load(Ordering::Relaxed))
    }

    fn shard(&self, key: &str) -> &RwLock<Shard> {
        use std::hash::BuildHasher;
        let hash = self.inner.hasher.hash_one(key);
        &self.inner.shards[(hash as usize) % SHARDS]
    }

    /// Refuses the token whose `jti` is `jti` until `expires_at` (its `exp`,
    /// unix seconds) plus the leeway, after which it is expired anyway. With
    /// a sliding refresh on an attached layer, until the session could end
    /// (now plus [`Refresh::max_session`](crate::refresh::Refresh::max_session)):
    /// the refreshed successors keep the `jti`.
    ///
    /// A shared set (see [`RedisRevocations`](crate::auth::RedisRevocations))
    /// also sends the revocation to the other replicas, in the background.
    pub fn revoke_token(&self, jti: &str, expires_at: u64) {
        let until = self.token_until(expires_at);
        self.insert_token(jti, until);
        #[cfg(feature = "redis")]
        if let Some(link) = self.inner.link.get() {
            link.publish(&self::redis::Entry::Token { jti }, until, self.now());
        }
    }

    /// Holds a token revocation until `until`; a longer hold wins. Cleans
    /// one shard.
    fn insert_token(&self, jti: &str, until: u64) {
        let added = self.hold_token(jti, until);
        self.added(added);
    }

    /// Holds a token revocation, without cleaning: whether it is new.
    fn hold_token(&self, jti: &str, until: u64) -> bool {
        let mut shard = write(self.shard(jti));
        let added = match shard.tokens.get_mut(jti) {
            Some(held) => {
                *held = (*held).max(until);
                false
            }
            None => {
                shard.tokens.insert(jti.into(), until);
                true
            }
        };
        drop(shard);
        added
    }

    /// Refuses every token of `subject` (from `issuer`, as
    /// [`Identity::issuer`] reports it) issued up to and including
    /// `issued_until` (unix seconds; pass the time of the logout): logout
    /// everywhere. A token issued in that same second is refused too — a
    /// new login right after the logout may have to wait for the next
    /// second. Tokens without `iat` are refused too: their issue time is
    /// unknown. A token's issue time is the earliest of its `iat`,
    /// `auth_time` and [`session_start`](crate::auth::SESSION_START_CLAIM):
    /// a refreshed successor of a session begun before the cut-off, or a
    /// token issued later for an authentication made before it, is
    /// refused (the user signs in again).
    ///
    /// A shared set also sends the revocation to the other replicas.
    pub fn revoke_subject(&self, issuer: Option<&str>, subject: &str, issued_until: u64) {
        let until = self.subject_until(issued_until);
        self.insert_subject(issuer, subject, issued_until, until);
        #[cfg(feature = "redis")]
        if let Some(link) = self.inner.link.get() {
            let entry = self::redis::Entry::Subject {
                issuer,
                subject,
                before: issued_until,
            };
            link.publish(&entry, until, self.now());
        }
    }

    /// Holds a subject revocation until `until`; later cut-offs and longer
    /// holds win. Cleans one shard.
    fn insert_subject(&self, issuer: Option<&str>, subject: &str, issued_before: u64, until: u64) {
        let added = self.hold_subject(issuer, subject, issued_before, until);
        self.added(added);
    }

    /// Holds a subject revocation, without cleaning: whether it is new.
    fn hold_subject(
        &self,
        issuer: Option<&str>,
        subject: &str,
        issued_before: u64,
        until: u64,
    ) -> bool {
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
        added
    }

    /// Refuses every token of the session `sid` (the `sid` claim, from
    /// `issuer` as [`Identity::issuer`] reports it), whenever issued: the
    /// session ended at the identity provider (OpenID Connect back-channel
    /// logout, see `BackChannelLogout`). Held as long as any token of a
    /// session that ended now can live: [`max_token_lifetime`](Self::max_token_lifetime)
    /// or, with a sliding refresh, its longest session (successors keep the
    /// `sid`), plus the leeway.
    ///
    /// A shared set also sends the revocation to the other replicas.
    pub fn revoke_session(&self, issuer: Option<&str>, sid: &str) {
        let at = self.now();
        let until = self.subject_until(at);
        let added = self.hold_session(issuer, sid, at, until);
        self.added(added);
        #[cfg(feature = "redis")]
        if let Some(link) = self.inner.link.get() {
            link.publish(
                &self::redis::Entry::Session { issuer, sid, at },
                until,
                self.now(),
            );
        }
    }

    /// Holds a session revocation, without cleaning: whether it is new.
    fn hold_session(&self, issuer: Option<&str>, sid: &str, at: u64, until: u64) -> bool {
        let mut shard = write(self.shard(sid));
        let cuts = shard.sessions.entry(sid.into()).or_default();
        let added = match cuts.iter_mut().find(|cut| cut.issuer.as_deref() == issuer) {
            Some(cut) => {
                cut.at = cut.at.max(at);
                cut.until = cut.until.max(until);
                false
            }
            None => {
                cuts.push(SessionCut {
                    issuer: issuer.map(Into::into),
                    at,
                    until,
                });
                true
            }
        };
        drop(shard);
        added
    }

    /// Revokes the caller's session (by its `sid` claim), as
    /// [`revoke_session`](Self::revoke_session). Returns whether the token
    /// had a `sid`.
    pub fn revoke_session_of(&self, identity: &Identity) -> bool {
        let Some(sid) = identity.session_id() else {
            return false;
        };
        self.revoke_session(identity.issuer(), sid);
        true
    }

    /// Revokes the token the caller presented (by its `jti`; a token without
    /// one cannot be revoked alone — use [`revoke_subject_of`](Self::revoke_subject_of)).
    /// Returns whether there was a `jti` to revoke.
    pub fn revoke_token_of(&self, identity: &Identity) -> bool {
        let (Some(jti), Some(exp)) = (identity.token_id(), identity.expires_at()) else {
            return false;
        };
        // Successors keep the jti: held until the session's end, if known.
        self.revoke_token(jti, exp.max(identity.session_ends_at().unwrap_or(0)));
        true
    }

    /// Revokes every token of the caller's subject issued up to and
    /// including `issued_until` (unix seconds), as
    /// [`revoke_subject`](Self::revoke_subject). Returns whether the
    /// identity had a subject.
    pub fn revoke_subject_of(&self, identity: &Identity, issued_until: u64) -> bool {
        let Some(subject) = identity.subject() else {
            return false;
        };
        self.revoke_subject(identity.issuer(), subject, issued_until);
        true
    }

    /// Whether a token with these claims is revoked at `now`. `iat` is the
    /// token's issue time for subject revocations: the earliest of its
    /// `iat`, `auth_time` and `session_start` (the auth layer passes that).
    pub fn is_revoked(
        &self,
        issuer: Option<&str>,
        subject: Option<&str>,
        jti: Option<&str>,
        iat: Option<u64>,
        now: u64,
    ) -> bool {
        self.check(issuer, subject, jti, None, iat, now)
    }

    /// Whether the session `sid` of `issuer` is revoked at `now` (see
    /// [`revoke_session`](Self::revoke_session)).
    pub fn is_session_revoked(&self, issuer: Option<&str>, sid: &str, now: u64) -> bool {
        self.check(issuer, None, None, Some(sid), None, now)
    }

    /// Every dimension at once, as the auth layer asks on each request: one
    /// atomic load while nothing is revoked.
    pub(crate) fn check(
        &self,
        issuer: Option<&str>,
        subject: Option<&str>,
        jti: Option<&str>,
        sid: Option<&str>,
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
        if let Some(sid) = sid {
            let shard = read(self.shard(sid));
            if !shard.sessions.is_empty()
                && shard.sessions.get(sid).is_some_and(|cuts| {
                    cuts.iter()
                        .any(|cut| cut.issuer.as_deref() == issuer && now < cut.until)
                })
            {
                return true;
            }
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
                    && iat.is_none_or(|iat| iat <= cut.before)
            })
        })
    }

    /// Records the logout token `jti` of `issuer`, kept until `until`:
    /// whether it is the first time (a replay is refused). Shared sets ask
    /// Redis, so a token replayed to another replica is caught; if Redis
    /// does not answer, this replica's own record decides.
    #[cfg_attr(not(feature = "backchannel-logout"), expect(dead_code))]
    pub(crate) async fn first_logout(&self, issuer: Option<&str>, jti: &str, until: u64) -> bool {
        let key = serde_json::to_string(&(issuer, jti)).unwrap_or_default();
        let now = self.now();
        let local = {
            let mut seen = self
                .inner
                .logouts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Expired records go when the set doubles past 1024 (amortised:
            // not a full scan per logout once it holds 1024 live ones).
            if seen.len() >= 1024 && seen.len().is_power_of_two() {
                seen.retain(|_, held| now < *held);
            }
            match seen.get_mut(key.as_str()) {
                Some(held) if now < *held => false,
                Some(held) => {
                    *held = until;
                    true
                }
                None => {
                    seen.insert(key.as_str().into(), until);
                    true
                }
            }
        };
        #[cfg(feature = "redis")]
        if local && let Some(link) = self.inner.link.get() {
            return link
                .first_use(&key, until.saturating_sub(now).max(1), local)
                .await;
        }
        local
    }

    /// How many revocations are held (tokens, subjects and sessions).
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
        self.clean(next, self.now());
    }

    /// Removes the expired entries of one shard.
    fn clean(&self, shard: usize, now: u64) {
        let mut shard = write(&self.inner.shards[shard]);
        let held = |shard: &Shard| {
            shard.tokens.len()
                + shard.subjects.values().map(Vec::len).sum::<usize>()
                + shard.sessions.values().map(Vec::len).sum::<usize>()
        };
        let before = held(&shard);
        #[cfg(test)]
        self.inner.swept.fetch_add(before, Ordering::Relaxed);
        shard.tokens.retain(|_, until| now < *until);
        shard.subjects.retain(|_, cuts| {
            cuts.retain(|cut| now < cut.until);
            !cuts.is_empty()
        });
        shard.sessions.retain(|_, cuts| {
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
        let now = self.now();
        for shard in 0..SHARDS {
            self.clean(shard, now);
        }
    }
}
