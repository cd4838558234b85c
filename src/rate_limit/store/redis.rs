//! Rate-limit state in Redis, shared by every replica of a service.
//!
//! One atomic Lua script per decision (GCRA, the same semantics as the local
//! store): `EVALSHA`, reloaded on `NOSCRIPT`; time from Redis `TIME`, so the
//! replicas' clocks do not matter; one key per call (works on Redis Cluster);
//! each key expires when its bucket is full again, so nothing leaks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
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

type DenyCache = DashMap<(usize, RateKey), Instant, foldhash::fast::RandomState>;

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
    deny_cache_keys: usize,
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
    /// Connects to `url` (`redis://host:port/db`), with a multiplexed,
    /// auto-reconnecting connection.
    ///
    /// # Errors
    /// A URL that does not parse, or no Redis answering within the timeout.
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConfigError::new("redis", format!("bad Redis URL: {e}")))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| ConfigError::new("redis", format!("cannot connect to Redis: {e}")))?;
        Ok(Self::from_connection(conn))
    }

    /// A store on an existing connection manager.
    pub fn from_connection(conn: ConnectionManager) -> Self {
        Self {
            conn,
            script: Arc::new(Script::new(GCRA)),
            prefix: Arc::from("tollgate"),
            timeout: DEFAULT_TIMEOUT,
            deny_cache: Some(Arc::new(DenyCache::default())),
            deny_cache_keys: DEFAULT_DENY_CACHE_KEYS,
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
        self.deny_cache = on.then(|| Arc::new(DenyCache::default()));
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

    fn remember_denial(cache: &DenyCache, cap: usize, policy: usize, key: RateKey, until: Instant) {
        if cache.len() >= cap {
            let now = Instant::now();
            cache.retain(|_, until| *until > now);
            if cache.len() >= cap {
                return;
            }
        }
        cache.insert((policy, key), until);
    }
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
        if let Some(cache) = &self.deny_cache {
            let cache_key = (index, key.clone());
            if let Some(until) = cache.get(&cache_key).map(|u| *u) {
                let now = Instant::now();
                if now < until {
                    return Check::Ready(Ok(Decision::limited(params.burst, until - now)));
                }
                cache.remove(&cache_key);
            }
        }
        let redis_key = self.redis_key(index, key);
        let mut conn = self.conn.clone();
        let script = Arc::clone(&self.script);
        let timeout = self.timeout;
        let round_trips = Arc::clone(&self.round_trips);
        let deny = self
            .deny_cache
            .clone()
            .map(|c| (c, self.deny_cache_keys, key.clone()));
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
                if let Some((cache, cap, key)) = deny {
                    RedisStore::remember_denial(&cache, cap, index, key, Instant::now() + retry);
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
