//! Rate-limit state in Redis, shared by every replica of a service, on one
//! server, the primary Redis Sentinel names or a Redis Cluster — in one of
//! two modes.
//!
//! The modes, the over-admission bound of local-first mode and the cluster
//! and Sentinel support are documented on [`RedisStore`], the module's
//! public face.
//!
//! Layout: `connection` (the link to Redis, reached through `crate::redis`:
//! one server, Sentinel's primary or a cluster; the version check, the slot
//! map's upkeep), `info` (the version in `INFO`), `exact` (one script call
//! per decision, the deny cache), `local_first`
//! (in-process state) and `sync` (its background task), `scripts`,
//! `topology` (slots to nodes), `clock` (local and Redis clocks).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::Script;
use ::redis::aio::ConnectionManager;
use tokio::runtime::Handle;

use super::{Check, DEFAULT_MAX_KEYS, RateLimitStore, Spend};
use crate::error::ConfigError;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::quota::Policy;

mod clock;
mod connection;
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
/// [`RedisStore::local_first`]: a key far from its limit is decided in this
/// process, at once ([`Check::Ready`]), from a GCRA state per (policy, key);
/// only a key near its limit waits for Redis. What lets a replica decide
/// alone is a **claim**: a number of requests Redis reserved for it out of
/// the key's shared bucket.
///
/// - Every sync interval a background task sends, for the keys admitted
///   since their last sync, this replica's running total of admissions per
///   key. Redis charges what it has not merged yet (placed when it happened,
///   so a steady stream costs no extra debt), and answers with the shared
///   state ("TAT − now" on the server's clock, so replica clocks do not
///   matter) and a renewed claim. A sync that timed out (and may or may not
///   have run) is sent again as it was and **charged once**.
/// - A claim is at most a fair share: the tokens left that no other live
///   claim reserves, divided among the replicas holding one. While more than
///   half the burst is left, it is at least half that share (a busy key far
///   from its limit never waits); below, at most twice what the replica
///   admitted in the last interval, plus one (so a replica that stopped
///   using a key near its limit reserves little of it). What the replica may
///   still spend of its previous claim while a call is on its way stays
///   reserved in the new one. Exact decisions and new claims only see the
///   tokens that no live claim reserves.
/// - A claim lives L = max(4 s, 80 intervals) in Redis. The replica spends it
///   until a margin M = max(1 s, 20 intervals) before that (counted from when
///   it asked), and not at all while its sync lags more than M/2, so that
///   what it spent is merged while the claim still covers it. A key idle on
///   a replica longer than L − M asks once when it comes back.
/// - A request whose key has no claim left **asks** Redis: one awaited call
///   that merges, decides this request exactly and renews the claim. Only
///   keys near their limit, shared by several replicas, pay it.
/// - A key new to this replica may admit ⌊b / (4·R)⌋ requests before its
///   first answer (b the burst, R the replicas registered under this prefix in
///   the last 10 s, once two registrations a second apart confirmed it, so
///   that replicas started together count each other; none before, nor after
///   a registration failed).
///
/// **Over-admission bound**, with Redis answering and the sync within M/2:
/// in any window, the replicas together admit at most what one GCRA admits
/// (b + r·W in a window W), plus at most **⌊b / 4⌋ per key each time it
/// becomes active on replicas that had let it go** (at most once per refill
/// time b/r, since a replica lets a key go only once it is full again there),
/// whatever the number of replicas: the provisional allowances of the
/// replicas meeting it while it is spent elsewhere (R × ⌊b / (4R)⌋). Claims
/// do not over-admit: they are reserved before they are spent and stay
/// reserved until what was spent of them is merged. Outside these conditions
/// (Redis unreachable, or a sync more than M behind), each replica decides
/// alone, below. Replica clocks never matter; the Redis primary's clock does
/// (claims expire by its `TIME`: a step forward by more than M, or a failover
/// to a primary whose clock runs ahead, releases claims early).
/// Measured (one key hammered round-robin, 600/min, burst 20, sync 50 ms,
/// 6 s; one GCRA admits 80): 79 admitted at 3, 6 and 12 replicas
/// (`tests/redis.rs`, separate stores on one Redis) and at 1 to 96 replicas
/// in the simulation of `local_first/tests.rs`; 0.2 admitted (by the outside review's measurement) 1.52× the quota
/// at 6. `benches/shared_state.rs` measures the same with replica processes.
///
/// The price is under-use and round trips, not over-admission: a claim a
/// replica holds but does not use is unavailable to the others until it
/// expires (at most one claim life), and a key at its limit asks Redis on
/// every request a replica cannot refuse locally (the local state refuses
/// until the time Redis named, without a call).
///
/// **Syncs always make progress.** Keys go to Redis in batches whose size
/// adapts (halved when a batch times out, doubled while batches answer in
/// under half the timeout; 16 to 10,000 keys, up to 4 batches in flight),
/// keys near their limit first, then the oldest; each batch carries a deadline
/// on the server's clock, so a late batch does nothing. One tick starts no
/// new round after one interval, so a backlog of any size (an outage, a flood of new
/// clients) drains at the rate Redis answers: 100,000 keys in a few seconds on
/// loopback (`tests/redis_faults.rs`). Its health is visible:
/// [`pending_keys`](RedisStore::pending_keys), [`sync_lag`](RedisStore::sync_lag),
/// [`sync_failures`](RedisStore::sync_failures) and the metrics
/// `tollgate_rate_limit_sync_{pending_keys,lag_seconds,failures_total}`; a
/// sync more than ten intervals behind logs one `warn`, and one `info` when it
/// caught up.
///
/// Local state is bounded: keys whose bucket is full again and that have
/// nothing left to sync are removed every second, and at most
/// [`RedisStore::max_local_keys`] keys are held (beyond, new keys share one
/// overflow bucket per policy, as in the local store).
///
/// **When Redis fails** (a call times out or errors), every key is decided in
/// this process alone until a call succeeds again (each replica then enforces
/// the whole quota by itself: up to R times the quota while it lasts; one
/// flag per replica, so on a cluster with one node down, a key of that node
/// whose claim is spent waits up to the timeout before it is decided alone). The
/// failures are counted and logged at `warn` — the first one, then at most
/// one line per 10 s. The admissions are merged when Redis answers again, at
/// most b + ⌈r·(I + timeout)⌉ + 1 per key and call of a replica (charging a
/// whole outage would lock keys out long after Redis returned; the rest is
/// not counted), and admissions so old that their key
/// has refilled since are forgiven ([`forgiven`](RedisStore::forgiven)) so
/// that an outage does not fill the key cap. `SECURITY.md` lists what each
/// fault can over-admit, with the test that shows it.
///
/// **Keys in Redis** are hashes: field `t` holds the TAT, and each
/// local-first replica that touched the key keeps one field (its merged total
/// and its claim). A key lives until its bucket is full again and, while a
/// replica holds a field in it, at least a claim life plus 2 s. 0.2 stored
/// strings under the same names: this version takes such a key over (keeping
/// its TAT), and 0.2 replicas then fail on it, so give a 0.3 deployment its
/// own prefix while 0.2 replicas still run.
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
/// # Redis Sentinel
///
/// `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/service[/db]`
/// names Sentinels (port 26379 by default) and the name they monitor the
/// primary under; `?sentinel_username=…&sentinel_password=…` authenticate to
/// the Sentinels themselves, the user information to the primary. The store
/// asks the Sentinels for the primary (redis-rs's Sentinel client, which
/// checks its `ROLE`) and checks its version. When a call fails as a failover
/// makes it fail (connection lost, timeout, `READONLY`, `MASTERDOWN`), a
/// background task asks the Sentinels again, at most every 250 ms (and every
/// 5 s regardless), and switches to the new primary; until then calls fail
/// as against a Redis that is down.
///
/// # Redis version
///
/// The scripts read `TIME` and then write. Redis allows a write
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
    ///   `redis://host:port,host:port…`: a cluster, from seed nodes;
    /// - `redis+sentinel://host:port[,host:port…]/service[/db]`: the primary
    ///   Redis Sentinel names, followed through failovers (see
    ///   [Redis Sentinel](Self#redis-sentinel)).
    ///
    /// One server gets a multiplexed, auto-reconnecting connection; a cluster
    /// redis-rs's cluster client.
    ///
    /// # Errors
    /// A URL that does not parse, no Redis answering within 2 s (through
    /// Sentinel: no Sentinel naming a primary that answers), or a server
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
    /// 50 ms): a key far from its limit is decided without waiting on Redis,
    /// a key near it asks Redis, and replicas together admit at most ⌊b/4⌋
    /// per key more than the quota, at any replica count (see the
    /// [type docs](Self)). Named after what changes for requests; the
    /// argument is the trade-off: shorter means fresher claims and more calls
    /// per interval.
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

    /// Local-first calls to Redis that failed so far: a batch to one node
    /// (a timeout, an error, a node down, a late reply) or an ask; 0 in
    /// exact mode.
    pub fn sync_failures(&self) -> u64 {
        self.local
            .as_ref()
            .map_or(0, |local| local.sync_failures.load(Ordering::Relaxed))
    }

    /// Local-first sync batches so far that reached every node they had keys
    /// for (a tick with nothing to send sends none); 0 in exact mode.
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
    /// registered within the last 10 s, this one included; `None` in exact
    /// mode and until two registrations (one a second) answered in a row, so
    /// that replicas started together count each other. Sizes what a key new
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

    /// One call of the script for `key`, on Redis's clock.
    fn exact(&self, policy: &Policy, key: &RateKey, spend: Option<Spend>) -> Check<DecisionFuture> {
        let index = policy.index;
        let Some(params) = self.params.get(index).copied() else {
            return Check::Ready(Err(super::StoreError::new("policy not prepared")));
        };
        Exact {
            backend: &self.backend,
            script: &self.script,
            deny_cache: self.deny_cache.as_ref(),
            timeout: self.timeout,
        }
        .check(index, params, key, spend, || self.redis_key(index, key))
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
                Settings::new(interval),
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
                Ok(Local::Exact) => self.exact(policy, key, None),
                Err(e) => Check::Ready(Err(e)),
            };
        }
        self.exact(policy, key, None)
    }

    /// A charge by cost. Local-first: units the key's claim covers are
    /// charged here (and merged by the next sync, like single requests);
    /// more, debts and refunds go to Redis at once, exactly. The replica's
    /// own view learns of those with the key's next sync.
    fn spend(&self, policy: &Policy, key: &RateKey, spend: Spend) -> Check<Self::Future> {
        if let (Some(local), Spend::Take(units)) = (&self.local, spend) {
            match local.state.charge(policy.index, key, units.get()) {
                Ok(Local::Decided(decision)) => return Check::Ready(Ok(decision)),
                Ok(Local::Ask(report)) => return Check::Pending(local.ask(report)),
                Ok(Local::Exact) => {}
                Err(e) => return Check::Ready(Err(e)),
            }
        }
        self.exact(policy, key, Some(spend))
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
