//! [`SharedSlots`]: a concurrency limit's slots leased in Redis, so that the
//! replicas of a service hold at most `max` requests of one caller in flight
//! together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ::redis::Script;

use crate::error::ConfigError;
use crate::redis::Conn;

/// Default prefix of the Redis keys.
pub const DEFAULT_SLOTS_PREFIX: &str = "tollgate";
/// Default time a lease lasts without renewal: how long the slots of a
/// replica that died stay taken.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default time an acquisition may take before the replica decides alone.
pub const DEFAULT_SLOTS_TIMEOUT: Duration = Duration::from_millis(100);

/// Takes a slot: drops the expired leases of the caller, then adds lease
/// `id` (until now + lease, on Redis's clock) if fewer than `max` are held.
/// An id already held is renewed and counts as taken (a retried call
/// changes nothing). KEYS[1]: the caller's leases (a sorted set of ids by
/// expiry). ARGV: id, lease ms, max. Returns `{taken, held}`.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if held >= tonumber(ARGV[3]) then
    return {0, held}
  end
  held = held + 1
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return {1, held}
";

/// Renews the leases `ARGV[2..]` of one caller (adding back any that Redis
/// lost: a restart without persistence, a failover, a FLUSHALL), except
/// those released meanwhile. KEYS[1]: the caller's leases; KEYS[2]: its
/// released ids (by expiry). ARGV: lease ms, ids.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return renewed
";

/// Gives lease `ARGV[1]` back, and remembers it as released for one lease,
/// so that a renewal already on its way does not add it back. KEYS[1]: the
/// caller's leases; KEYS[2]: its released ids. ARGV: id, lease ms.
const RELEASE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[2], lease)
return 1
";

/// Concurrency slots shared by the replicas through Redis (one server,
/// Sentinel's primary or a Cluster; feature `redis`); give it to
/// [`ConcurrencyLimitBuilder::shared`](super::ConcurrencyLimitBuilder::shared).
/// Cheap to clone.
///
/// A request let through locally (a replica never holds more than `max`
/// of one caller) then takes a *lease* in Redis: an id in the caller's
/// sorted set, expiring after [`lease`](Self::lease) (10 s) unless renewed.
/// The replica renews its live leases every third of the lease, re-adding
/// any Redis lost, and gives a slot back (`ZREM`) when the response body
/// ends or is dropped. So:
///
/// - replicas together hold at most `max` leases of a caller;
/// - a replica that dies leaks its slots for at most one lease;
/// - Redis losing its data (restart without persistence, failover) frees
///   the slots for at most a third of a lease, until the holders renew;
/// - Redis not answering within the [`timeout`](Self::timeout) (100 ms):
///   the replica decides alone, holding at most `max` of a caller itself,
///   and says so at `warn` at most every 10 s. No request waits longer;
/// - a request cancelled while its lease is being taken leaves that lease
///   unrenewed: it expires within one lease.
///
/// Acquisitions are idempotent (a retried one renews its id); releases
/// and renewals are too.
#[derive(Clone)]
pub struct SharedSlots {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for SharedSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSlots")
            .field("prefix", &self.inner.prefix)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    conn: Conn,
    acquire: Script,
    renew: Script,
    release: Script,
    prefix: Box<str>,
    pub(super) lease: Duration,
    pub(super) timeout: Duration,
    replica: u64,
    next_id: AtomicU64,
    /// The leases this replica holds: Redis key → ids.
    held: Mutex<HashMap<String, Vec<String>>>,
    pub(super) warn: crate::observe::WarnEvery,
}

impl SharedSlots {
    /// Connects to the Redis `url` names: `redis://host:port/db`,
    /// `redis+cluster://a:7000,b:7001` or
    /// `redis+sentinel://s1:26379,s2:26379/service`.
    ///
    /// # Errors
    /// A URL that does not parse, or no server answering.
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        let conn = Conn::any(url).await?;
        Ok(Self::from_conn(
            conn,
            DEFAULT_SLOTS_PREFIX,
            DEFAULT_LEASE,
            DEFAULT_SLOTS_TIMEOUT,
        ))
    }

    fn from_conn(conn: Conn, prefix: &str, lease: Duration, timeout: Duration) -> Self {
        // One id space per replica: lease ids never collide.
        let replica = crate::redis::replica_id();
        Self {
            inner: Arc::new(Inner {
                conn,
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                prefix: prefix.into(),
                lease,
                timeout,
                replica,
                next_id: AtomicU64::new(0),
                held: Mutex::new(HashMap::new()),
                warn: crate::observe::WarnEvery::new(10),
            }),
        }
    }

    /// Prefix of the Redis keys (default `tollgate`).
    #[must_use]
    pub fn prefix(self, prefix: &str) -> Self {
        let inner = &self.inner;
        Self::from_conn(inner.conn.clone(), prefix, inner.lease, inner.timeout)
    }

    /// How long a lease lasts unless renewed (default 10 s; at least 300
    /// ms): how long a dead replica's slots stay taken.
    #[must_use]
    pub fn lease(self, lease: Duration) -> Self {
        let inner = &self.inner;
        let lease = lease.max(Duration::from_millis(300));
        Self::from_conn(inner.conn.clone(), &inner.prefix, lease, inner.timeout)
    }

    /// How long an acquisition may take before the replica decides alone
    /// (default 100 ms).
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        let inner = &self.inner;
        Self::from_conn(inner.conn.clone(), &inner.prefix, inner.lease, timeout)
    }
}

/// What an acquisition came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Taken: the caller's leases held now, this one included.
    Taken(u32),
    /// Refused: `max` leases are held.
    Full,
    /// Redis did not answer: decided by this replica alone.
    Alone,
}

impl Inner {
    fn redis_key(&self, name: &str, key: &str) -> String {
        format!("{}:concurrency:{{{name}:{key}}}", self.prefix)
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a lease for the caller `key` of the limit `name`; the lease's
    /// Redis key and id, for its release.
    pub(super) async fn acquire(&self, name: &str, key: &str, max: u32) -> (Acquired, Lease) {
        let redis_key = self.redis_key(name, key);
        let id = format!(
            "{:016x}:{}",
            self.replica,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self.conn.clone();
        let mut invocation = self.acquire.key(&redis_key);
        invocation.arg(&id).arg(self.lease_ms()).arg(max);
        let reply = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(u32, u32)>(&mut conn),
        )
        .await;
        let acquired = match reply {
            Ok(Ok((1, held))) => Acquired::Taken(held),
            Ok(Ok(_)) => Acquired::Full,
            Ok(Err(e)) => {
                self.alone(&crate::redis::kind_name(&e));
                Acquired::Alone
            }
            Err(_) => {
                self.alone("timed out");
                Acquired::Alone
            }
        };
        // Held (or perhaps taken by a call that timed out after Redis ran
        // it): renewed until released, and released either way.
        if acquired != Acquired::Full {
            self.held_leases()
                .entry(redis_key.clone())
                .or_default()
                .push(id.clone());
        }
        (acquired, Lease { redis_key, id })
    }

    fn alone(&self, why: &str) {
        if self.warn.due() {
            tracing::warn!(
                error = why,
                "tollgate: the concurrency limit could not reach Redis; this replica decides \
                 alone meanwhile"
            );
        }
    }

    fn held_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops renewing a lease (it expires within one lease unless
    /// [`release`](Self::release)d).
    pub(super) fn forget(&self, lease: &Lease) {
        let mut held = self.held_leases();
        if let Some(ids) = held.get_mut(&lease.redis_key) {
            ids.retain(|id| *id != lease.id);
            if ids.is_empty() {
                held.remove(&lease.redis_key);
            }
        }
    }

    /// Removes a forgotten lease from Redis (idempotent; if Redis does not
    /// answer, the lease expires).
    pub(super) async fn release(&self, lease: &Lease) {
        let mut conn = self.conn.clone();
        let mut invocation = self.release.key(&lease.redis_key);
        invocation
            .key(released_key(&lease.redis_key))
            .arg(&lease.id)
            .arg(self.lease_ms());
        let call = invocation.invoke_async::<u64>(&mut conn);
        let _ = tokio::time::timeout(self.timeout, call).await;
    }

    /// Renews every lease held, one call per caller, all at once (a slow
    /// Redis delays a round by one timeout, not by one per caller).
    async fn renew_all(self: Arc<Self>) {
        let held: Vec<(String, Vec<String>)> = self
            .held_leases()
            .iter()
            .map(|(key, ids)| (key.clone(), ids.clone()))
            .collect();
        let mut calls = tokio::task::JoinSet::new();
        for (redis_key, ids) in held {
            let this = Arc::clone(&self);
            calls.spawn(async move {
                let mut conn = this.conn.clone();
                let mut invocation = this.renew.key(&redis_key);
                invocation
                    .key(released_key(&redis_key))
                    .arg(this.lease_ms());
                for id in &ids {
                    invocation.arg(id);
                }
                let call = invocation.invoke_async::<u64>(&mut conn);
                match tokio::time::timeout(this.timeout, call).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => this.alone(&crate::redis::kind_name(&e)),
                    Err(_) => this.alone("timed out"),
                }
            });
        }
        while calls.join_next().await.is_some() {}
    }
}

/// The key of a caller's released ids (the same hash tag as its leases).
fn released_key(leases: &str) -> String {
    format!("{leases}:released")
}

/// A lease to give back.
#[derive(Debug)]
pub struct Lease {
    redis_key: String,
    id: String,
}

/// Renews the leases of `slots` every third of a lease, until the layer
/// (and every response holding a slot) is gone.
pub(super) fn spawn_renewal(runtime: &tokio::runtime::Handle, slots: Weak<Inner>, lease: Duration) {
    runtime.spawn(async move {
        let mut every = tokio::time::interval(lease / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Some(slots) = slots.upgrade() else {
                return;
            };
            slots.renew_all().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A renewal that reaches Redis after the lease was released does not
    /// add it back; one for a lease Redis lost does. Against the Redis at
    /// REDIS_URL (default redis://127.0.0.1:6379).
    #[tokio::test]
    async fn a_late_renewal_does_not_bring_a_released_lease_back() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let slots = SharedSlots::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("this test needs Redis at {url} (set REDIS_URL): {e}"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let slots = slots.prefix(&format!("tollgate-test:slots:{nanos}"));
        let inner = &slots.inner;
        let held = |inner: &Inner, key: String| {
            let mut conn = inner.conn.clone();
            async move {
                let mut zcard = ::redis::cmd("ZCARD");
                zcard.arg(key);
                zcard
                    .query_async::<u64>(&mut conn)
                    .await
                    .unwrap_or(u64::MAX)
            }
        };
        let (first, lease) = inner.acquire("cap", "k", 2).await;
        assert_eq!(first, Acquired::Taken(1));
        let (second, kept) = inner.acquire("cap", "k", 2).await;
        assert_eq!(second, Acquired::Taken(2));
        assert_eq!(inner.acquire("cap", "k", 2).await.0, Acquired::Full);
        // Released while a renewal of both is on its way.
        inner.forget(&lease);
        inner.release(&lease).await;
        assert_eq!(held(inner, lease.redis_key.clone()).await, 1);
        let mut conn = inner.conn.clone();
        let mut late = inner.renew.key(&lease.redis_key);
        late.key(released_key(&lease.redis_key))
            .arg(inner.lease_ms())
            .arg(&lease.id)
            .arg(&kept.id);
        let renewed: u64 = late.invoke_async(&mut conn).await.expect("renew");
        assert_eq!(renewed, 1, "only the lease still held is renewed");
        assert_eq!(held(inner, lease.redis_key.clone()).await, 1);
        // Redis lost the leases: the holder's renewal writes its own back.
        let mut del = ::redis::cmd("DEL");
        del.arg(&kept.redis_key);
        del.query_async::<()>(&mut conn).await.expect("DEL");
        Arc::clone(inner).renew_all().await;
        assert_eq!(held(inner, kept.redis_key.clone()).await, 1);
    }
}
