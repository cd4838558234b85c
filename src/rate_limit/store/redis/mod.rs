//! Rate-limit state in Redis, shared by every replica of a service, on one
//! server or a Redis Cluster — in one of two modes.
//!
//! The modes, the over-admission bound of local-first mode and the cluster
//! support are documented on [`RedisStore`], the module's public face.
//!
//! Layout: `connection` (one server or a cluster, the version check, the slot
//! map's upkeep), `exact` (one script call per decision, the deny cache),
//! `local_first` (in-process state) and `sync` (its background task),
//! `scripts`, `topology` (slots to nodes), `clock` (local and Redis clocks).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::runtime::Handle;

use super::{Check, DEFAULT_MAX_KEYS, RateLimitStore};
use crate::error::ConfigError;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::quota::Policy;

mod clock;
mod connection;
pub(crate) use connection::kind_name;
mod exact;
mod info;
mod local_first;
mod scripts;
mod sync;
mod topology;

use connection::Backend;
use exact::{DecisionFuture, DenyCache, Exact};
use local_first::{Local, LocalState, Settings};
use sync::LocalFirst;

/// Default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// Default cap on keys remembered by the local deny cache.
pub const DEFAULT_DENY_CACHE_KEYS: usize = 100_000;

/// The shortest sync interval of local-first mode.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(1);

/// A policy in the units the scripts use.
#[derive(Debug, Clone, Copy, Default)]
struct Params {
    /// Emission interval T, µs.
    t_us: u64,
    /// T × (burst − 1), µs.
    tau_us: u64,
    burst: u32,
    /// Local-first: the most admissions of one key merged by one sync — what
    /// one interval (plus a sync timeout) can produce; see `Batch::to_send`.
    max_merge: u32,
}

impl Params {
    fn new(t_us: u64, burst: u32, interval: Duration, call_timeout: Duration) -> Self {
        let window = micros(interval.saturating_add(call_timeout));
        let refill = u32::try_from(window.div_ceil(t_us.max(1))).unwrap_or(u32::MAX);
        Self {
            t_us,
            tau_us: t_us.saturating_mul(u64::from(burst.saturating_sub(1))),
            burst,
            max_merge: burst.saturating_add(refill).saturating_add(1),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A [`RateLimitStore`] on Redis or Redis Cluster (feature `redis`), in one
/// of two modes: exact (the default) or local-first.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tollgate::rate_limit::{Quota, RateLimitLayer, store::RedisStore};
/// // Exact: one round trip per decision.
/// let exact = RedisStore::connect("redis://127.0.0.1:6379").await?.prefix("myapi");
/// // Local-first: no round trip on the request path; synced every 50 ms.
/// let fast = RedisStore::connect("redis://127.0.0.1:6379")
///     .await?
///     .prefix("myapi")
///     .local_first(Duration::from_millis(50));
/// let layer = RateLimitLayer::builder("per-user", Quota::per_minute(600).burst(100))
///     .store(fast)
///     .build()?;
/// # Ok(()) }
/// ```
///
/// - **Failures** (exact mode): each call has a timeout
///   ([`RedisStore::timeout`], default 50 ms). A timeout or an error is a
///   [`StoreError`](super::StoreError); the layer then fails open (default)
///   or closed, per
///   [`RateLimitBuilder::on_store_error`](crate::rate_limit::RateLimitBuilder::on_store_error).
///   Connections reconnect by themselves.
/// - **Hot keys** (exact mode): once Redis answers "limited for d", further
///   requests for that key are refused locally for d, without a round trip
///   (the deny cache, on by default). This never admits more than Redis
///   would: it only refuses, and only until the time Redis itself named.
///   The cache holds at most [`DEFAULT_DENY_CACHE_KEYS`] keys.
/// - **Keys**: `{prefix}:{policy}:{key}`, e.g. `tollgate:registered:k:alice`
///   or `tollgate:anonymous:ip:2001:db8::`, one per call; both modes use the
///   same keys and semantics. Put a hash tag in the prefix (`"{tenant-a}"`)
///   only if you want one tenant's keys on one cluster slot.
/// - **Background task**: local-first mode, and exact mode on a cluster (to
///   keep the slot map fresh), run one tokio task per store, started when the
///   layer is built and ended when the store is dropped.
///
/// # Exact mode (the default)
///
/// One atomic Lua script per decision (GCRA, the same semantics as the local
/// store): `EVALSHA`, reloaded on `NOSCRIPT`; time from Redis `TIME`, so the
/// replicas' clocks do not matter. Replicas together admit exactly the quota,
/// at the price of one network round trip on every request (a refused hot key
/// is answered from the local deny cache without one).
///
/// Each call carries the request's deadline translated to the server's clock
/// (the offset between this process's monotonic clock and `TIME` is learned
/// from earlier replies, as a lower bound, so the translated deadline is never
/// later than the real one). Past it the script does nothing: a request whose
/// call timed out (and was failed open or closed) never spends quota when a
/// stalled Redis catches up.
///
/// # Local-first mode
///
/// [`RedisStore::local_first`]: requests never wait on Redis; the store
/// answers at once ([`Check::Ready`]) from a GCRA state per (policy, key) in
/// this process. A background task syncs every interval: for all keys
/// admitted since the last sync, in **one pipelined call per node**, it merges
/// this replica's admissions into the shared state (the shared TAT advances by
/// T per admission, starting no earlier than they happened) and pulls the
/// shared state back, as "TAT − now" on the server's clock, so replica clocks
/// do not matter. A key's local state only moves forward: a sync can only
/// make it stricter.
///
/// **Over-admission bound.** With R replicas, a rate of r per second
/// (emission interval T = 1/r), a burst of b, and I the sync interval plus
/// one sync round trip, the replicas together admit in any window at most
///
/// > (R − 1) · (b + ⌊r·I⌋) requests more than one GCRA would (b + r·W in a window W).
///
/// Why: a replica decides from the shared state as of its last sync (at most I
/// old) plus its own admissions since. What it cannot see is what the others
/// admitted in that time, and within one interval each of them admits at most
/// what its own GCRA allows: a full burst plus the refill, b + ⌊r·I⌋. The
/// worst case is all replicas starting full at once (a key new to all of them,
/// or after an outage): each spends b + ⌊r·I⌋ before the first sync tells it
/// about the others. Everything admitted is merged into the shared TAT, which
/// then runs ahead of now, and every replica refuses until that debt is paid:
/// over windows much longer than I, the rate stays r. Example: 3 replicas,
/// 100/s, burst 10, 50 ms: at most 2 × (10 + 5) = 30 extra, 3 % of a 10-second
/// quota of 1,010.
///
/// Propagation: a replica's admissions reach Redis at its next sync. Once a
/// key is limited there, any other replica refuses it from its next sync on:
/// within one interval of its first request for the key (a replica syncs the
/// keys it admitted), having admitted at most b + ⌊r·I⌋ on its own until then.
///
/// Local state is bounded: keys whose bucket is full again and that have
/// nothing left to sync are removed every second, and at most
/// [`RedisStore::max_local_keys`] keys are held (beyond, new keys share one
/// overflow bucket per policy, as in the local store).
///
/// When Redis is unreachable, every replica goes on deciding alone (each then
/// enforces the whole quota by itself): the failures are counted
/// ([`RedisStore::sync_failures`]) and logged at `warn` — the first one, then
/// at most one line per 10 s — and the admissions are merged when Redis
/// answers again, at most one interval's worth per key (charging a whole
/// outage would lock keys out long after Redis returned).
///
/// # Redis Cluster
///
/// [`RedisStore::connect`] asks the server (`INFO`) whether it is a cluster
/// node; if so, it uses redis-rs's cluster client, which follows `MOVED` and
/// `ASK`, so a plain `redis://host:port` to any node works.
/// `redis+cluster://host:port,host:port` and `redis://host:port,host:port`
/// (seed nodes) are accepted too, as is [`RedisStore::connect_cluster`]. Every
/// call touches one key, so there is no `CROSSSLOT`; a local-first sync groups
/// its keys by the node that owns their slot (from `CLUSTER SLOTS`, read again
/// every 10 s and when a reply says the map changed). With a node down, the
/// keys it owns fail (exact mode: the layer's fail-open or fail-closed policy;
/// local-first: decided locally), and the others keep working as long as the
/// cluster serves them (`cluster-require-full-coverage no`).
///
/// # Redis version
///
/// The scripts read `TIME` and then write with `SET`. Redis allows a write
/// after such a non-deterministic command only when a script is replicated by
/// its effects rather than as source: opt-in per script from 3.2, the default
/// from 5.0 and the only mode from 7.0. Hence [`RedisStore::MIN_REDIS_VERSION`]
/// (on 5.x and 6.x, leave `lua-replicate-commands` at its default, `yes`),
/// checked at connect on every primary.
pub struct RedisStore {
    backend: Arc<Backend>,
    script: Arc<Script>,
    prefix: Arc<str>,
    timeout: Duration,
    deny_cache: Option<Arc<DenyCache>>,
    sync_interval: Option<Duration>,
    max_local_keys: usize,
    params: Vec<Params>,
    names: Vec<Arc<str>>,
    local: Option<Arc<LocalFirst>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("cluster", &self.backend.is_cluster())
            .field("timeout", &self.timeout)
            .field("sync_interval", &self.sync_interval)
            .field("deny_cache", &self.deny_cache.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The oldest Redis the store works with, as (major, minor, patch): 5.0,
    /// the first release that replicates scripts by their effects by default,
    /// which the scripts' `TIME` before `SET` needs.
    pub const MIN_REDIS_VERSION: (u32, u32, u32) = (5, 0, 0);

    /// Connects to `url` and checks the version of every primary.
    ///
    /// - `redis://host:port/db`: one server, or any node of a cluster
    ///   (detected with `INFO`: `cluster_enabled:1`);
    /// - `redis+cluster://host:port[,host:port…]` or
    ///   `redis://host:port,host:port…`: a cluster, from seed nodes.
    ///
    /// One server gets a multiplexed, auto-reconnecting connection; a cluster
    /// redis-rs's cluster client.
    ///
    /// # Errors
    /// A URL that does not parse, no Redis answering within 2 s, or a server
    /// older than [`MIN_REDIS_VERSION`](Self::MIN_REDIS_VERSION) or whose
    /// version `INFO` does not give.
    pub async fn connect(url: &str) -> Result<Self, ConfigError> {
        Ok(Self::new(connection::connect(url).await?))
    }

    /// Connects to a Redis Cluster through `seeds` (URLs of some of its
    /// nodes, e.g. `redis://10.0.0.1:7000`), reads its slot map and checks
    /// the version of every primary.
    ///
    /// # Errors
    /// No seed, a seed that does not parse, no node answering, or a primary
    /// too old or whose version cannot be read.
    pub async fn connect_cluster<I, S>(seeds: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let seeds: Vec<String> = seeds.into_iter().map(|s| s.as_ref().to_owned()).collect();
        if seeds.is_empty() {
            return Err(ConfigError::new(
                "redis",
                "connect_cluster needs at least one seed node URL",
            ));
        }
        Ok(Self::new(connection::connect_cluster(&seeds).await?))
    }

    /// A store on an existing connection manager to one server. Unlike
    /// [`connect`](Self::connect), this does not check the server's version.
    pub fn from_connection(conn: ConnectionManager) -> Self {
        Self::new(Backend::single(conn))
    }

    fn new(backend: Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            script: Arc::new(Script::new(scripts::SHARE)),
            prefix: Arc::from("tollgate"),
            timeout: DEFAULT_TIMEOUT,
            deny_cache: Some(Arc::new(DenyCache::new(DEFAULT_DENY_CACHE_KEYS))),
            sync_interval: None,
            max_local_keys: DEFAULT_MAX_KEYS,
            params: Vec::new(),
            names: Vec::new(),
            local: None,
        }
    }

    /// Prefix of every key (default `tollgate`): separate services or tenants
    /// sharing one Redis.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The longest a decision may take in exact mode, and a sync call in
    /// local-first mode (at least the sync interval there); default 50 ms.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Turns the local deny cache of exact mode on (default) or off.
    #[must_use]
    pub fn deny_cache(mut self, on: bool) -> Self {
        self.deny_cache = on.then(|| Arc::new(DenyCache::new(DEFAULT_DENY_CACHE_KEYS)));
        self
    }

    /// Local-first mode, synced with Redis every `sync_interval` (e.g.
    /// 50 ms): decisions never wait on Redis, and replicas together may admit
    /// up to (R − 1)(b + r·I) more than the quota in a window (see the
    /// [type docs](Self)). Named after what changes for requests; the
    /// argument is the trade-off: shorter means tighter limits and more
    /// (but never more than one per node) calls per interval.
    ///
    /// The sync runs on a tokio task started when the layer is built, on the
    /// runtime building it, and ended when the store is dropped. Building the
    /// layer outside a tokio runtime, or with an interval under 1 ms, is a
    /// [`ConfigError`].
    #[must_use]
    pub fn local_first(mut self, sync_interval: Duration) -> Self {
        self.sync_interval = Some(sync_interval);
        self
    }

    /// The most keys local-first mode holds in this process, across all
    /// policies (default 1,000,000, as the local store); beyond, new keys
    /// share one overflow bucket per policy until replenished keys are
    /// cleaned up.
    #[must_use]
    pub fn max_local_keys(mut self, max: usize) -> Self {
        self.max_local_keys = max;
        self
    }

    /// The sync interval, in local-first mode.
    pub fn sync_interval(&self) -> Option<Duration> {
        self.sync_interval
    }

    /// Whether the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.backend.is_cluster()
    }

    /// Network calls to Redis so far (a decision in exact mode, a pipeline
    /// to one node in local-first mode, a slot-map read on a cluster).
    pub fn round_trips(&self) -> u64 {
        self.backend.round_trips.load(Ordering::Relaxed)
    }

    /// Local-first syncs that failed so far, one per node call (timeouts,
    /// errors, a node down); 0 in exact mode.
    pub fn sync_failures(&self) -> u64 {
        self.local
            .as_ref()
            .map_or(0, |local| local.sync_failures.load(Ordering::Relaxed))
    }

    /// Local-first syncs so far that reached every node they had keys for
    /// (syncs with nothing to send are not counted); 0 in exact mode.
    pub fn syncs(&self) -> u64 {
        self.local
            .as_ref()
            .map_or(0, |local| local.syncs.load(Ordering::Relaxed))
    }

    /// Local-first keys with admissions not yet merged into Redis (queued
    /// or on their way); 0 in exact mode.
    pub fn pending_keys(&self) -> usize {
        self.local
            .as_ref()
            .map_or(0, |local| local.state.pending_keys())
    }

    /// The replicas of this local-first store (same Redis, same prefix) that
    /// registered within the last 10 s, this one included; `None` before the
    /// first registration answered, and in exact mode. Sizes what a key new
    /// to this replica may admit before asking Redis (see the type docs).
    pub fn replicas(&self) -> Option<u32> {
        self.local
            .as_ref()
            .map(|local| local.state.replicas())
            .filter(|&count| count > 0)
    }

    /// How long the oldest local-first key waiting for a sync has waited
    /// (zero when nothing waits, and in exact mode): the sync's lag.
    pub fn sync_lag(&self) -> Duration {
        self.local
            .as_ref()
            .map_or(Duration::ZERO, |local| local.state.lag())
    }

    /// Local-first admissions never charged in Redis: made during an outage,
    /// so long ago when it ended that the key had refilled since (see the
    /// type docs); 0 in exact mode.
    pub fn forgiven(&self) -> u64 {
        self.local
            .as_ref()
            .map_or(0, |local| local.state.forgiven())
    }

    fn redis_key(&self, policy: usize, key: &RateKey) -> String {
        format!(
            "{}:{}:{}",
            self.prefix,
            self.names[policy],
            key.to_store_key()
        )
    }

    /// The runtime of the background task: the one building the layer.
    fn runtime() -> Result<Handle, ConfigError> {
        Handle::try_current().map_err(|_| {
            ConfigError::new(
                "redis",
                "this Redis store runs a background task (local-first sync, or a cluster's \
                 slot map): build the layer inside a tokio runtime, e.g. in async main",
            )
        })
    }
}

impl RateLimitStore for RedisStore {
    type Future = DecisionFuture;

    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError> {
        let interval = self.sync_interval.unwrap_or_default();
        if self.sync_interval.is_some() && interval < MIN_SYNC_INTERVAL {
            return Err(ConfigError::new(
                "redis",
                format!(
                    "local_first: a sync interval of {interval:?} is too short; give at least 1 ms"
                ),
            ));
        }
        let call_timeout = self.timeout.max(interval);
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
                Ok(Params::new(
                    t_us,
                    p.quota.burst_size(),
                    interval,
                    call_timeout,
                ))
            })
            .collect::<Result<_, _>>()?;
        self.names = policies.iter().map(|p| Arc::clone(&p.name)).collect();
        if self.sync_interval.is_some() {
            let runtime = Self::runtime()?;
            let state = LocalState::new(
                self.params.clone(),
                self.max_local_keys,
                self.backend.clock.clone(),
                Settings {
                    // Long enough that a client's next request, seconds
                    // later, still finds its claim; short enough that an idle
                    // replica's claim is released soon for the others.
                    claim_life_us: micros(interval.saturating_mul(40)).max(2_000_000),
                },
            );
            let engine = Arc::new(LocalFirst::new(
                state,
                Arc::clone(&self.backend),
                Arc::clone(&self.prefix),
                self.names.clone(),
                interval,
                call_timeout,
            ));
            sync::spawn_sync(&runtime, &engine);
            self.local = Some(engine);
        } else if self.backend.is_cluster() {
            let runtime = Self::runtime()?;
            sync::spawn_upkeep(&runtime, Arc::downgrade(&self.backend));
        }
        Ok(())
    }

    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future> {
        let index = policy.index;
        if let Some(local) = &self.local {
            return match local.state.decide(index, key) {
                Ok(Local::Decided(decision)) => Check::Ready(Ok(decision)),
                Ok(Local::Ask(report)) => Check::Pending(local.ask(report)),
                Err(e) => Check::Ready(Err(e)),
            };
        }
        let Some(params) = self.params.get(index).copied() else {
            return Check::Ready(Err(super::StoreError::new("policy not prepared")));
        };
        Exact {
            backend: &self.backend,
            script: &self.script,
            deny_cache: self.deny_cache.as_ref(),
            timeout: self.timeout,
        }
        .check(index, params, key, || self.redis_key(index, key))
    }

    fn key_count(&self) -> usize {
        match &self.local {
            Some(local) => local.state.len(),
            // Keys live in Redis and expire there; counting them would cost a
            // SCAN. The deny cache is what this process holds.
            None => self.deny_cache.as_ref().map_or(0, |c| c.len()),
        }
    }

    fn max_keys(&self) -> Option<usize> {
        // Local-first state is capped; exact mode holds only denials.
        self.local.as_ref().map(|_| self.max_local_keys)
    }
}
