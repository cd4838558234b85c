//! Rate-limit state in Redis, shared by every replica of a service.
//!
//! One atomic Lua script per decision (GCRA, the same semantics as the local
//! store): `EVALSHA`, reloaded on `NOSCRIPT`; time from Redis `TIME`, so the
//! replicas' clocks do not matter; one key per call (works on Redis Cluster);
//! each key expires when its bucket is full again, so nothing leaks.
//!
//! The script reads `TIME` and then writes with `SET`. Redis allows a write
//! after such a non-deterministic command only when a script is replicated by
//! its effects rather than as source: opt-in per script from 3.2, the default
//! from 5.0 and the only mode from 7.0. Hence [`RedisStore::MIN_REDIS_VERSION`]
//! (on 5.x and 6.x, leave `lua-replicate-commands` at its default, `yes`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{Check, Decision, RateLimitStore, StoreError};
use crate::error::ConfigError;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::quota::Policy;

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Default cap on keys remembered by the local deny cache.
pub const DEFAULT_DENY_CACHE_KEYS: usize = 100_000;

/// A Redis version as (major, minor, patch); tuples compare in that order.
type Version = (u32, u32, u32);

/// GCRA in microseconds. KEYS[1]: the key. ARGV[1]: emission interval T,
/// ARGV[2]: tau = T × (burst − 1). Returns {allowed, remaining,
/// reset_after_us, retry_after_us}.
const GCRA: &str = r"
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  tat = math.max(tonumber(stored), now)
end
local earliest = tat - tau
if now < earliest then
  return {0, 0, tat - now, earliest - now}
end
local new_tat = tat + t
local full_in = new_tat - now
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(full_in / 1000))
return {1, math.floor((now + tau + t - new_tat) / t), full_in, 0}
";

#[derive(Debug, Clone, Copy)]
struct Params {
    t_us: u64,
    tau_us: u64,
    burst: u32,
}

/// Keys Redis refused, each with the instant Redis said it may retry.
///
/// Bounded in entries (quick_cache, scan-resistant eviction): a flood of distinct
/// denied keys evicts at O(1) amortised cost per insert, while keys that keep
/// being refused are hit and so kept. An entry past its deadline counts as
/// absent; it is removed when looked up, or evicted like any other.
struct DenyCache {
    entries: Cache<(usize, RateKey), Instant>,
}

impl DenyCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: Cache::new(capacity),
        }
    }

    /// Remembers that Redis refuses `key` under `policy` until `until`.
    fn remember(&self, policy: usize, key: RateKey, until: Instant) {
        self.entries.insert((policy, key), until);
    }

    /// How much longer `key` is refused under `policy`, as of `now`.
    fn refused_for(&self, policy: usize, key: &RateKey, now: Instant) -> Option<Duration> {
        let cache_key = (policy, key.clone());
        let until = self.entries.get(&cache_key)?;
        if now < until {
            return Some(until - now);
        }
        // Expired; keep a newer denial stored since the lookup.
        self.entries.remove_if(&cache_key, |until| *until <= now);
        None
    }

    /// Entries held, expired ones not yet evicted included.
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// A [`RateLimitStore`] on Redis (feature `redis`).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate::rate_limit::{Quota, RateLimitLayer, store::RedisStore};
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.prefix("myapi");
/// let layer = RateLimitLayer::builder("per-user", Quota::per_minute(600).burst(100))
///     .store(store)
///     .build()?;
/// # Ok(()) }
/// ```
///
/// - **Failures**: each call has a timeout ([`RedisStore::timeout`], default
///   50 ms). A timeout or an error is a [`StoreError`]; the layer then fails
///   open (default) or closed, per
///   [`RateLimitBuilder::on_store_error`](crate::rate_limit::RateLimitBuilder::on_store_error).
///   The connection reconnects by itself (redis-rs `ConnectionManager`).
/// - **Hot keys**: once Redis answers "limited for d", further requests for
///   that key are refused locally for d, without a round trip (the deny
///   cache, on by default). This never admits more than Redis would: it only
///   refuses, and only until the time Redis itself named.
///   The cache holds at most [`DEFAULT_DENY_CACHE_KEYS`] keys; a flood of
///   distinct refused keys evicts the coldest, at constant cost per refusal.
/// - **Redis version**: [`RedisStore::MIN_REDIS_VERSION`] (5.0) or newer, for
///   the script's effects replication (see the module docs).
///   [`connect`](RedisStore::connect) reads `redis_version` from `INFO server`
///   and refuses older servers; [`from_connection`](RedisStore::from_connection)
///   does not check.
/// - **Keys**: `{prefix}:{policy}:{key}`, e.g. `tollgate:registered:k:alice`
///   or `tollgate:anonymous:ip:2001:db8::`. Each call touches one key, so the
///   store works on Redis Cluster as is; put a hash tag in the prefix
///   (`"{tenant-a}"`) only if you want one tenant's keys on one slot.
pub struct RedisStore {
    conn: ConnectionManager,
    script: Arc<Script>,
    prefix: Arc<str>,
    timeout: Duration,
    deny_cache: Option<Arc<DenyCache>>,
    params: Vec<Params>,
    names: Vec<Arc<str>>,
    round_trips: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("deny_cache", &self.deny_cache.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The oldest Redis the store works with, as (major, minor, patch): 5.0,
    /// the first release that replicates scripts by their effects by default,
    /// which the script's `TIME` before `SET` needs.
    pub const MIN_REDIS_VERSION: (u32, u32, u32) = (5, 0, 0);

    /// Connects to `url` (`redis://host:port/db`), with a multiplexed,
    /// auto-reconnecting connection, and checks the server's version.
    ///
    /// # Errors
    /// A URL that does not parse, no Redis answering within the timeout, or
    /// a server older than [`MIN_REDIS_VERSION`](Self::MIN_REDIS_VERSION) or
    /// whose version `INFO server` does not give.
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new("redis", format!("bad Redis URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| ConfigError::new("redis", format!("cannot connect to Redis: {e}")))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                ConfigError::new(
                    "redis",
                    format!(
                        "cannot read the Redis version (INFO server: {e}); if INFO is blocked, \
                         build the store with RedisStore::from_connection, which skips the check"
                    ),
                )
            })?;
        check_server_version(&info)?;
        Ok(Self::from_connection(conn))
    }

    /// A store on an existing connection manager. Unlike
    /// [`connect`](Self::connect), this does not check the server's version.
    pub fn from_connection(conn: ConnectionManager) -> Self {
        Self {
            conn,
            script: Arc::new(Script::new(GCRA)),
            prefix: Arc::from("tollgate"),
            timeout: DEFAULT_TIMEOUT,
            deny_cache: Some(Arc::new(DenyCache::new(DEFAULT_DENY_CACHE_KEYS))),
            params: Vec::new(),
            names: Vec::new(),
            round_trips: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Prefix of every key (default `tollgate`): separate services or tenants
    /// sharing one Redis.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The longest a decision may take (default 50 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Turns the local deny cache on (default) or off.
    #[must_use]
    pub fn deny_cache(mut self, on: bool) -> Self {
        self.deny_cache = on.then(|| Arc::new(DenyCache::new(DEFAULT_DENY_CACHE_KEYS)));
        self
    }

    /// Round trips to Redis so far (for measuring the deny cache).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn redis_key(&self, policy: usize, key: &RateKey) -> String {
        format!(
            "{}:{}:{}",
            self.prefix,
            self.names[policy],
            key.to_store_key()
        )
    }
}

/// The `redis_version` of an `INFO server` reply. `None` when the line is
/// missing or its value is not `major.minor[.patch]` (a suffix such as
/// `-rc1` is ignored).
fn server_version(info: &str) -> Option<Version> {
    let value = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))?;
    let end = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let mut parts = value[..end].split('.').map(|part| part.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().unwrap_or(Some(0))?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

fn version_text((major, minor, patch): Version) -> String {
    format!("{major}.{minor}.{patch}")
}

/// Refuses a server older than [`RedisStore::MIN_REDIS_VERSION`], or one
/// whose version cannot be read.
fn check_server_version(info: &str) -> Result<(), ConfigError> {
    let required = version_text(RedisStore::MIN_REDIS_VERSION);
    let Some(found) = server_version(info) else {
        return Err(ConfigError::new(
            "redis",
            format!(
                "cannot read the Redis version: INFO server has no usable redis_version \
                 line; the store needs Redis {required} or newer (RedisStore::from_connection \
                 skips this check)"
            ),
        ));
    };
    if found < RedisStore::MIN_REDIS_VERSION {
        return Err(ConfigError::new(
            "redis",
            format!(
                "Redis {} is too old: the store needs Redis {required} or newer, \
                 which replicates scripts by their effects; upgrade the server",
                version_text(found)
            ),
        ));
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RateLimitStore for RedisStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError> {
        self.params = policies
            .iter()
            .map(|p| {
                let t_us = micros(p.quota.replenish_interval());
                if t_us == 0 {
                    return Err(ConfigError::new(
                        "quota",
                        format!(
                            "policy {:?}: Redis keeps microseconds; the interval is shorter",
                            p.name()
                        ),
                    ));
                }
                let burst = p.quota.burst_size();
                Ok(Params {
                    t_us,
                    tau_us: t_us.saturating_mul(u64::from(burst - 1)),
                    burst,
                })
            })
            .collect::<Result<_, _>>()?;
        self.names = policies.iter().map(|p| Arc::clone(&p.name)).collect();
        Ok(())
    }

    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future> {
        let index = policy.index;
        let Some(params) = self.params.get(index).copied() else {
            return Check::Ready(Err(StoreError::new("policy not prepared")));
        };
        if let Some(retry) = self
            .deny_cache
            .as_ref()
            .and_then(|cache| cache.refused_for(index, key, Instant::now()))
        {
            return Check::Ready(Ok(Decision::limited(params.burst, retry)));
        }
        let redis_key = self.redis_key(index, key);
        let mut conn = self.conn.clone();
        let script = Arc::clone(&self.script);
        let timeout = self.timeout;
        let round_trips = Arc::clone(&self.round_trips);
        let deny = self.deny_cache.clone().map(|c| (c, key.clone()));
        Check::Pending(Box::pin(async move {
            round_trips.fetch_add(1, Ordering::Relaxed);
            let mut invocation = script.prepare_invoke();
            invocation
                .key(redis_key)
                .arg(params.t_us)
                .arg(params.tau_us);
            let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut conn);
            let (allowed, remaining, reset_us, retry_us) =
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => return Err(StoreError::new(format!("redis: {}", e.kind_name()))),
                    Err(_) => return Err(StoreError::new("redis: timed out")),
                };
            let as_duration = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
            if allowed == 1 {
                let remaining = u32::try_from(remaining).unwrap_or(0).min(params.burst);
                Ok(Decision::allowed(
                    params.burst,
                    remaining,
                    as_duration(reset_us),
                ))
            } else {
                let retry = as_duration(retry_us);
                if let Some((cache, key)) = deny {
                    cache.remember(index, key, Instant::now() + retry);
                }
                Ok(Decision::limited(params.burst, retry))
            }
        }))
    }

    fn key_count(&self) -> usize {
        // Keys live in Redis and expire there; counting them would cost a
        // SCAN. The deny cache is what this process holds.
        self.deny_cache.as_ref().map_or(0, |c| c.len())
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    /// The error's category, without any reply content.
    fn kind_name(&self) -> String {
        if self.is_timeout() {
            "timeout".into()
        } else if self.is_connection_dropped() || self.is_connection_refusal() {
            "connection lost".into()
        } else {
            format!("{:?}", self.kind())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CAP: usize = 1_000;

    /// Regression: the old cache swept every entry on each denial once full,
    /// and then dropped the new denial when all entries were still valid.
    #[test]
    fn deny_cache_stays_bounded_and_keeps_fresh_denials_under_a_flood() {
        let cache = DenyCache::new(CAP);
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        let hot = RateKey::text("hot");
        cache.remember(0, hot.clone(), later);
        for i in 0..50 * CAP {
            cache.remember(0, RateKey::text(format!("flood-{i}")), later);
            if i % 100 == 0 {
                assert!(
                    cache.refused_for(0, &hot, now).is_some(),
                    "hot key lost at {i}"
                );
            }
        }
        let capacity = usize::try_from(cache.entries.capacity()).unwrap();
        assert!(capacity < 2 * CAP, "{capacity}");
        assert!(cache.len() <= capacity, "{} > {capacity}", cache.len());

        let fresh = RateKey::text("fresh");
        cache.remember(0, fresh.clone(), later);
        assert_eq!(
            cache.refused_for(0, &fresh, now),
            Some(Duration::from_secs(3600))
        );
        assert!(cache.refused_for(0, &hot, now).is_some());
        assert!(cache.len() <= capacity);
    }

    #[test]
    fn deny_cache_does_not_serve_an_expired_denial() {
        let cache = DenyCache::new(CAP);
        let now = Instant::now();
        let key = RateKey::text("k");
        cache.remember(0, key.clone(), now + Duration::from_secs(1));
        assert_eq!(cache.refused_for(1, &key, now), None, "other policy");
        assert_eq!(
            cache.refused_for(0, &key, now + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(
            cache.refused_for(0, &key, now + Duration::from_secs(1)),
            None
        );
        assert_eq!(cache.len(), 0, "an expired entry is removed when looked up");
        assert_eq!(cache.refused_for(0, &key, now), None);
    }

    fn info(version: &str) -> String {
        format!(
            "# Server\r\nredis_git_sha1:00000000\r\nredis_version:{version}\r\nredis_mode:standalone\r\n"
        )
    }

    #[test]
    fn redis_version_is_read_from_info_server() {
        assert_eq!(server_version(&info("7.0.15")), Some((7, 0, 15)));
        assert_eq!(server_version(&info("7.2")), Some((7, 2, 0)));
        assert_eq!(server_version(&info("7.2.4-rc1")), Some((7, 2, 4)));
        assert_eq!(server_version("redis_version:6.2.0"), Some((6, 2, 0)));
        // Valkey reports the Redis version it is compatible with.
        assert_eq!(
            server_version("valkey_version:8.0.1\nredis_version:7.2.4\n"),
            Some((7, 2, 4))
        );
    }

    #[test]
    fn redis_version_garbage_is_unreadable_without_panicking() {
        for text in [
            String::new(),
            "# Server\r\n".to_owned(),
            "redis_version:".to_owned(),
            "redis_version".to_owned(),
            "xredis_version:7.0.0".to_owned(),
            info(""),
            info("abc"),
            info("7"),
            info("7."),
            info(".7.0"),
            info("7..0"),
            info("7.0.0.1"),
            info("-7.0.0"),
            info("+7.0.0"),
            info("99999999999.0.0"),
            info("７.0.0"),
            info("é"),
        ] {
            assert_eq!(server_version(&text), None, "{text:?}");
            let err = check_server_version(&text).unwrap_err();
            assert_eq!(err.setting(), "redis");
            assert!(err.reason().contains("5.0.0"), "{err}");
        }
    }

    #[test]
    fn redis_older_than_the_minimum_is_refused_naming_both_versions() {
        for old in ["4.0.14", "3.2.12", "2.8.24", "4.99.99"] {
            let err = check_server_version(&info(old)).unwrap_err();
            assert!(err.reason().contains(old), "{err}");
            assert!(err.reason().contains("5.0.0"), "{err}");
        }
        for new in ["5.0.0", "6.2.0", "7.0.15", "7.4.1", "8.0.0", "255.255.255"] {
            assert_eq!(check_server_version(&info(new)), Ok(()), "{new}");
        }
    }
}
