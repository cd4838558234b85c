//! [`SharedLockouts`]: a lockout's failures and lockouts kept in Redis, so
//! that the replicas of a service count one client's failures together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::Script;

use crate::error::ConfigError;
use crate::redis::Conn;

/// Default prefix of the Redis keys.
pub const DEFAULT_LOCKOUT_PREFIX: &str = "tollgate";
/// Default time a report to Redis may take before the replica counts the
/// failure itself.
pub const DEFAULT_LOCKOUT_TIMEOUT: Duration = Duration::from_millis(250);
/// The most reports to Redis in flight at once; beyond, failures are counted
/// by the replica itself (bounded memory and tasks while Redis is slow).
pub const MAX_REPORTS_IN_FLIGHT: usize = 1_024;

/// Records one failure of a key, by its id (a retried report finds its id
/// and changes nothing), on Redis's clock. Returns the milliseconds left of
/// the key's lockout (0 when it is not locked out) and, when it is, the
/// clients known to the key (an account) with when each stops being known
/// (server ms).
///
/// KEYS[1]: the key's failures (a sorted set of ids by time); KEYS[2]: its
/// lockout (`until`, `lockouts`); KEYS[3]: its known clients (a sorted set
/// by expiry). ARGV: id, window ms, failures, back-off ms, longest back-off
/// ms.
const REPORT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local longest = tonumber(ARGV[5])
local function locked(left)
  local reply = {left}
  local known = redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf', 'WITHSCORES')
  for i = 1, #known do
    reply[#reply + 1] = known[i]
  end
  return reply
end
local lock = redis.call('HMGET', KEYS[2], 'until', 'lockouts')
local locked_until = tonumber(lock[1]) or 0
if locked_until > now then
  return locked(locked_until - now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  return {0}
end
local lockouts = tonumber(lock[2]) or 0
if locked_until > 0 and locked_until + longest <= now then
  lockouts = 0
end
local span = math.min(tonumber(ARGV[4]) * (2 ^ math.min(lockouts, 40)), longest)
redis.call('HSET', KEYS[2], 'until', now + span, 'lockouts', lockouts + 1)
redis.call('PEXPIRE', KEYS[2], span + longest)
redis.call('DEL', KEYS[1])
return locked(span)
";

/// Remembers that a client logged into an account, for every replica: its
/// id in the account's known set until now + `ARGV[2]` ms, the latest
/// `ARGV[3]` kept (idempotent). KEYS[1]: the known clients. ARGV: client,
/// known for ms, most kept.
const KNOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + life, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
redis.call('PEXPIRE', KEYS[1], life)
return 1
";

/// Failure counts and lockouts shared by the replicas through Redis (one
/// server, Sentinel's primary or a Cluster; feature `redis`); give it to
/// [`LockoutBuilder::shared`](super::LockoutBuilder::shared). Cheap to
/// clone.
///
/// Each failure is reported after its response, off the request's path,
/// with a unique id (a retried report counts once); Redis answers whether
/// the key is now locked out, and the replica remembers the lockout for its
/// own decisions. A replica learns of a lockout another one caused with its
/// own next failure of that key, so a client gets at most `failures` plus
/// one attempt per other replica (plus the reports in flight) before every
/// replica refuses it. When Redis does not answer within the timeout, the
/// replica counts the failure itself (as without Redis) and says so at
/// `warn` (at most every 10 s); requests never wait for Redis. A report
/// that timed out after Redis had run it is counted twice (in Redis and on
/// the replica): with Redis that slow, a client is locked out sooner, never
/// later. A request's attempt stays pending (see the parallel bound in the
/// [module docs](super)) until its report is answered.
#[derive(Clone)]
pub struct SharedLockouts {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    conn: Conn,
    script: Script,
    know: Script,
    prefix: Box<str>,
    pub(super) timeout: Duration,
    replica: u64,
    next_id: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    pub(super) warn: crate::observe::WarnEvery,
}

impl std::fmt::Debug for SharedLockouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLockouts")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl SharedLockouts {
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
            DEFAULT_LOCKOUT_PREFIX,
            DEFAULT_LOCKOUT_TIMEOUT,
        ))
    }

    fn from_conn(conn: Conn, prefix: &str, timeout: Duration) -> Self {
        // One id space per replica (and per set): failure ids never collide.
        let replica = crate::redis::replica_id();
        Self {
            inner: Arc::new(Inner {
                conn,
                script: Script::new(REPORT),
                know: Script::new(KNOW),
                prefix: prefix.into(),
                timeout,
                replica,
                next_id: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                warn: crate::observe::WarnEvery::new(10),
            }),
        }
    }

    /// Prefix of the Redis keys (default `tollgate`).
    #[must_use]
    pub fn prefix(self, prefix: &str) -> Self {
        let inner = &self.inner;
        Self::from_conn(inner.conn.clone(), prefix, inner.timeout)
    }

    /// How long a report may take before the replica counts the failure
    /// itself (default 250 ms).
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        let inner = &self.inner;
        Self::from_conn(inner.conn.clone(), &inner.prefix, timeout)
    }
}

/// What Redis answered to a failure's report.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reported {
    /// Milliseconds left of the key's lockout (0: not locked out).
    pub(super) left_ms: u64,
    /// For a locked account: the clients known to it (their store keys)
    /// and until when (unix ms on Redis's clock).
    pub(super) known: Vec<(String, u64)>,
}

/// A lockout's limits, in milliseconds, as the script takes them.
pub(super) struct Limits {
    pub(super) window_ms: u64,
    pub(super) failures: u32,
    pub(super) backoff_ms: u64,
    pub(super) max_backoff_ms: u64,
}

impl Inner {
    fn keys(&self, name: &str, key: &str) -> (String, String) {
        let base = self.base(name, key);
        (format!("{base}:f"), format!("{base}:l"))
    }

    /// One hash tag: every key of a client (or account) lives on one
    /// Cluster slot.
    fn base(&self, name: &str, key: &str) -> String {
        format!("{}:lockout:{{{name}:{key}}}", self.prefix)
    }

    /// Reports one failure; the milliseconds left of the key's lockout.
    pub(super) async fn report(
        &self,
        name: &str,
        key: &str,
        limits: &Limits,
    ) -> Result<Reported, String> {
        let id = format!(
            "{:016x}:{}",
            self.replica,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        self.report_as(name, key, &id, limits).await
    }

    /// Reports the failure `id` (the same id twice counts once).
    async fn report_as(
        &self,
        name: &str,
        key: &str,
        id: &str,
        limits: &Limits,
    ) -> Result<Reported, String> {
        let (failures, lock) = self.keys(name, key);
        let known = format!("{}:k", self.base(name, key));
        let mut conn = self.conn.clone();
        let mut invocation = self.script.key(failures);
        invocation
            .key(lock)
            .key(known)
            .arg(id)
            .arg(limits.window_ms)
            .arg(limits.failures)
            .arg(limits.backoff_ms)
            .arg(limits.max_backoff_ms);
        let call = invocation.invoke_async::<Vec<String>>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => {
                let mut reply = reply.into_iter();
                let left_ms = reply.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut known = Vec::new();
                while let (Some(client), Some(until)) = (reply.next(), reply.next()) {
                    if let Ok(until) = until.parse::<f64>() {
                        known.push((client, until as u64));
                    }
                }
                Ok(Reported { left_ms, known })
            }
            Ok(Err(e)) => Err(crate::redis::kind_name(&e)),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Remembers, for every replica, that `client` logged into the
    /// account `key` (for `known_ms`; the latest `most` kept).
    pub(super) async fn know(
        &self,
        name: &str,
        key: &str,
        client: &str,
        known_ms: u64,
        most: usize,
    ) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let mut invocation = self.know.key(format!("{}:k", self.base(name, key)));
        invocation.arg(client).arg(known_ms).arg(most);
        let call = invocation.invoke_async::<u64>(&mut conn);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(crate::redis::kind_name(&e)),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    /// Forgets the key's failures (a successful login); a lockout in force
    /// stays.
    pub(super) async fn clear(&self, name: &str, key: &str) -> Result<(), String> {
        let (failures, _) = self.keys(name, key);
        let mut conn = self.conn.clone();
        let mut del = ::redis::cmd("DEL");
        del.arg(failures);
        match tokio::time::timeout(self.timeout, del.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::redis::kind_name(&e)),
            Err(_) => Err("timed out".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report retried (a reconnect resending the script) finds its id and
    /// changes nothing; a new id counts, and the last one locks out.
    /// Against the Redis at REDIS_URL (default redis://127.0.0.1:6379).
    #[tokio::test]
    async fn a_retried_report_counts_once() {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let shared = SharedLockouts::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("this test needs Redis at {url} (set REDIS_URL): {e}"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let shared = shared.prefix(&format!("tollgate-test:lockout:{nanos}"));
        let inner = &shared.inner;
        let limits = Limits {
            window_ms: 60_000,
            failures: 3,
            backoff_ms: 30_000,
            max_backoff_ms: 60_000,
        };
        let count = |inner: &Inner| {
            let (failures, _) = inner.keys("login", "k");
            let mut conn = inner.conn.clone();
            async move {
                let mut zcard = ::redis::cmd("ZCARD");
                zcard.arg(failures);
                zcard
                    .query_async::<u64>(&mut conn)
                    .await
                    .unwrap_or(u64::MAX)
            }
        };
        for _ in 0..3 {
            assert_eq!(
                inner.report_as("login", "k", "a", &limits).await,
                Ok(Reported::default())
            );
        }
        assert_eq!(count(inner).await, 1);
        assert_eq!(
            inner.report_as("login", "k", "b", &limits).await,
            Ok(Reported::default())
        );
        assert_eq!(count(inner).await, 2);
        let left = inner
            .report_as("login", "k", "c", &limits)
            .await
            .map_or(0, |r| r.left_ms);
        assert!((29_000..=30_000).contains(&left), "{left}");
        // Locked: a retry of "c" or a new failure changes nothing.
        let again = inner
            .report_as("login", "k", "c", &limits)
            .await
            .map_or(0, |r| r.left_ms);
        assert!(again <= left && again > 29_000, "{again}");
        assert_eq!(count(inner).await, 0);
    }
}
