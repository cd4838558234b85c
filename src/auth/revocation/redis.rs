//! Sharing a [`Revocations`] set between replicas through Redis: the
//! settings ([`RedisRevocations`]), the link a shared set keeps, and the
//! format of what it writes.
//!
//! In Redis, under a prefix `P` (default `tollgate:revoked`), in the
//! database the URL names:
//! - `P:entries`, a sorted set: one member per revocation, scored by when it
//!   may be dropped (unix seconds). A member is `"{until} {json}"`, the JSON
//!   being `["t", jti]`, `["s", issuer or null, subject, issued_before]` or
//!   `["i", issuer or null, sid, revoked_at]` (a session).
//!   Expired members are dropped by Redis's own clock (`TIME`), never a
//!   replica's.
//! - `P:version`, a counter incremented once per revocation written.
//! - `P:epoch`, a random value written (`SET NX`) by the first replica that
//!   finds none: it changes when Redis loses the set.
//! - `P:logout:{json}`, one key per back-channel logout token received
//!   (`[issuer, jti]`), set once (`SET NX`) with the token's remaining
//!   validity as its TTL: a replay to any replica is refused.
//! - `P:db{n}:events`, a pub/sub channel: `"{version} {member}"` per
//!   revocation (pub/sub ignores databases, so the channel names its own).
//!
//! A revocation is written, counted and published by one script, so the
//! messages carry consecutive versions. A replica applies what it receives
//! and remembers the version up to which it has seen every revocation; every
//! sync interval it reads the epoch and the counter, and if the counter
//! moved (a message was missed, pub/sub is down or off) it reads the whole
//! set again. If the epoch changed or the counter went backwards, Redis lost
//! the set (a restart without persistence, FLUSHALL, a failover to an empty
//! replica): the replica reads it again, counts from the new start, and
//! writes back every live revocation it holds, so a revocation survives as
//! long as one replica holds it. A replica starting reads the set before
//! its first request.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManagerConfig, PubSubStream};
use ::redis::{RedisError, Script};
use tokio::sync::Notify;

use super::Revocations;
use crate::error::ConfigError;
use crate::observe::WarnEvery;
use crate::redis::{Standalone as RedisStandalone, cluster_enabled, kind_name};

/// Default prefix of the keys and the channel.
pub const DEFAULT_REVOCATION_PREFIX: &str = "tollgate:revoked";

/// Default interval of the periodic read.
pub const DEFAULT_REVOCATION_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest sync interval accepted.
const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// How long connecting may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Revocations waiting to reach Redis, at most (an outage's backlog).
const MAX_UNSENT: usize = 100_000;

/// Revocations per script call.
const BATCH: usize = 1_000;

/// Writes, counts and publishes revocations; drops expired ones by Redis's
/// own clock (a replica whose clock runs ahead must not drop live ones).
/// `KEYS`: entries, version. `ARGV`: channel, members.
const WRITE: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local version = 0
for i = 2, #ARGV do
  local member = ARGV[i]
  local expiry = string.match(member, '^%d+')
  if expiry then
    version = redis.call('INCR', KEYS[2])
    redis.call('ZADD', KEYS[1], expiry, member)
    redis.call('PUBLISH', ARGV[1], version .. ' ' .. member)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', redis.call('TIME')[1])
return version
";

/// The epoch (created if missing) and the counter. `KEYS`: epoch, version.
/// `ARGV`: a fresh epoch, kept only if none is there.
const CHECK: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2]) or '0'}
";

/// Drops expired entries (Redis's clock), then returns the epoch (created if
/// missing), the counter and every entry. `KEYS`: entries, version, epoch.
/// `ARGV`: a fresh epoch.
const READ: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', redis.call('TIME')[1])
redis.call('SET', KEYS[3], ARGV[1], 'NX')
return {redis.call('GET', KEYS[3]), redis.call('GET', KEYS[2]) or '0',
  redis.call('ZRANGE', KEYS[1], 0, -1)}
";

/// Records a logout token's id once. `KEYS`: the record. `ARGV`: this
/// attempt's unique value, seconds to keep it. 1 when this attempt holds it
/// (a retried call finds its own value: idempotent), 0 for a replay.
const FIRST_USE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
";

/// A random 128-bit epoch, in hex: std's hasher keys are random per process
/// and per `RandomState`.
fn fresh_epoch() -> String {
    use std::hash::BuildHasher;
    let draw = || {
        std::collections::hash_map::RandomState::new()
            .hash_one((std::time::SystemTime::now(), std::process::id()))
    };
    format!("{:016x}{:016x}", draw(), draw())
}

/// Shares a [`Revocations`] set between the replicas of a service through
/// Redis (feature `redis`): a revocation made on one replica refuses the
/// token on every other within a second.
///
/// ```no_run
/// # async fn run() -> Result<(), tollgate::ConfigError> {
/// use std::time::Duration;
/// use tollgate::auth::{RedisRevocations, Revocations};
///
/// let revocations = Revocations::new()
///     .max_token_lifetime(Duration::from_secs(15 * 60))
///     .share(RedisRevocations::new("redis://127.0.0.1:6379").prefix("myapi:revoked"))
///     .await?;
/// // Give `revocations.clone()` to the auth layer's builder and revoke from
/// // handlers as with a local set.
/// # Ok(()) }
/// ```
///
/// - **Speed**: a revocation is written to Redis and published on a pub/sub
///   channel at once, in the background; the other replicas apply it when
///   the message arrives (a millisecond or two on a local network).
/// - **Nothing lost**: every revocation is also kept in a sorted set, scored
///   by when it may be dropped. Each replica reads a counter every
///   [`sync_interval`](Self::sync_interval) (default 500 ms) and reads the
///   set again when it missed something, and a replica reads the whole set
///   when it starts, before [`share`](Revocations::share) returns. So a lost
///   message, pub/sub being off ([`pubsub`](Self::pubsub)) or a replica's
///   restart costs at most one interval.
/// - **Redis losing its data** (a restart without persistence, `FLUSHALL`,
///   a failover to an empty replica) is detected by an epoch key stored next
///   to the counter, or by the counter going backwards: every replica reads
///   the set again and writes back the live revocations it holds, so one
///   replica holding a revocation is enough (about two intervals).
/// - **Redis unavailable**: every check stays local, and revocations made
///   meanwhile are refused here at once and sent when Redis answers again
///   (up to 100,000 waiting). Failures are counted
///   ([`Revocations::sync_failures`], and the metric
///   `tollgate_revocation_sync_failures_total`) and logged at `warn`, the
///   first then at most one line per 10 s, with one `info` line on recovery.
/// - **Bounded**: entries expire in Redis as locally (the scripts drop
///   expired members, by Redis's clock); the counter and the epoch are a key
///   each.
/// - **Background task**: one tokio task per shared set, on the runtime
///   that called `share`; it holds the set weakly and ends once every clone
///   of it is dropped.
///
/// Redis Cluster is not supported here: the write touches two keys and the
/// replicas listen on one channel; point `url` at a standalone server (or a
/// primary with replicas), or at the Sentinels that watch a primary
/// (`redis+sentinel://…`: after a failover the set is written to and read
/// from the new primary, and read again in full if it lost revocations).
///
/// **Scope**: keys live in the URL's database and the channel names it, so
/// stores on two databases never see each other's revocations. Services
/// sharing one database need distinct prefixes: sharing with the default
/// prefix logs a `warn` when the set is shared (it is not refused, so that
/// existing deployments keep working).
#[derive(Clone)]
pub struct RedisRevocations {
    url: String,
    prefix: String,
    sync_interval: Duration,
    timeout: Duration,
    pubsub: bool,
}

impl fmt::Debug for RedisRevocations {
    // The URL may hold a password: not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRevocations")
            .field("prefix", &self.prefix)
            .field("sync_interval", &self.sync_interval)
            .field("timeout", &self.timeout)
            .field("pubsub", &self.pubsub)
            .finish_non_exhaustive()
    }
}

impl RedisRevocations {
    /// Shares through the Redis server at `url` (`redis://host:port/db`,
    /// `rediss://…`, `unix://…`), or through the primary Redis Sentinel
    /// names (`redis+sentinel://host:26379[,host:port…]/mymaster[/db]`,
    /// followed through failovers). Nothing connects until
    /// [`Revocations::share`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_REVOCATION_PREFIX.to_owned(),
            sync_interval: DEFAULT_REVOCATION_SYNC_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            pubsub: true,
        }
    }

    /// Prefix of the keys and the channel (default `tollgate:revoked`, which
    /// logs a `warn`: every service on the database would share it). Give
    /// each service its own; its replicas use the same one.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often a replica checks that it has seen every revocation (default
    /// 500 ms, at least 10 ms): the longest a revocation takes to reach it
    /// when pub/sub fails.
    #[must_use]
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }

    /// The longest one call to Redis may take (default 1 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether to listen on the pub/sub channel (default `true`). Off,
    /// revocations arrive by the periodic read only, within one sync
    /// interval: for a Redis that does not allow `SUBSCRIBE`.
    #[must_use]
    pub fn pubsub(mut self, on: bool) -> Self {
        self.pubsub = on;
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.prefix.is_empty() {
            return Err(ConfigError::new(
                "revocation",
                "the Redis prefix cannot be empty",
            ));
        }
        if self.sync_interval < MIN_SYNC_INTERVAL {
            return Err(ConfigError::new(
                "revocation",
                format!(
                    "a sync interval of {:?} is too short; give at least 10 ms",
                    self.sync_interval
                ),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "revocation",
                "the Redis timeout cannot be zero",
            ));
        }
        let scheme = self.url.split_once("://").map_or("", |(scheme, _)| scheme);
        let authority = self.url.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or_default()
        });
        // A Sentinel URL lists several Sentinels, for one primary.
        let sentinel = scheme.ends_with("+sentinel");
        if scheme.ends_with("+cluster") || (authority.contains(',') && !sentinel) {
            return Err(ConfigError::new(
                "revocation",
                "shared revocations need a standalone Redis (or a primary), not a Redis Cluster",
            ));
        }
        Ok(())
    }
}

/// A sync with Redis that did not complete: the revocations not yet sent are
/// kept and sent later, and local checks go on.
#[derive(Debug, Clone)]
pub struct RevocationSyncError {
    reason: String,
}

impl RevocationSyncError {
    fn new(what: &str, error: &RedisError) -> Self {
        Self {
            reason: format!("{what}: {}", kind_name(error)),
        }
    }

    pub(super) fn lost(what: &str) -> Self {
        Self {
            reason: format!("{what}: connection lost"),
        }
    }

    fn timed_out(what: &str) -> Self {
        Self {
            reason: format!("{what}: timed out"),
        }
    }

    /// What failed (the step and the error's category; never reply content).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for RevocationSyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revocations not synced with Redis: {}", self.reason)
    }
}

impl std::error::Error for RevocationSyncError {}

/// One revocation as it travels.
pub(super) enum Entry<'a> {
    Token {
        jti: &'a str,
    },
    Subject {
        issuer: Option<&'a str>,
        subject: &'a str,
        before: u64,
    },
    Session {
        issuer: Option<&'a str>,
        sid: &'a str,
        /// When the session was revoked: each replica holds it for as long
        /// as its own settings say.
        at: u64,
    },
}

impl Entry<'_> {
    /// `"{until} {json}"`.
    fn encode(&self, until: u64) -> Option<String> {
        let json = match self {
            Self::Token { jti } => serde_json::to_string(&("t", jti)),
            Self::Subject {
                issuer,
                subject,
                before,
            } => serde_json::to_string(&("s", issuer, subject, before)),
            Self::Session { issuer, sid, at } => serde_json::to_string(&("i", issuer, sid, at)),
        };
        json.ok().map(|json| format!("{until} {json}"))
    }
}

impl Revocations {
    /// Applies one member received from another replica; false if it does
    /// not parse. Cleans one shard, as a revocation made here does.
    fn apply_member(&self, member: &str, now: u64) -> bool {
        match self.hold_member(member, now) {
            Some(added) => {
                self.added(added);
                true
            }
            None => false,
        }
    }

    /// Applies members read from Redis (a full read); how many did not
    /// parse. Linear: each member is held without cleaning, then the
    /// expired entries go in one pass over the shards.
    pub(super) fn apply_members<'m>(
        &self,
        members: impl Iterator<Item = &'m str>,
        now: u64,
    ) -> usize {
        let mut unreadable = 0;
        let mut added = 0;
        for member in members {
            match self.hold_member(member, now) {
                Some(new) => added += usize::from(new),
                None => unreadable += 1,
            }
        }
        self.inner.count.fetch_add(added, Ordering::Relaxed);
        if added > 0 {
            self.cleanup();
        }
        unreadable
    }

    /// Holds one member read from Redis, without cleaning: `None` if it
    /// does not parse, else whether it is a new entry.
    fn hold_member(&self, member: &str, now: u64) -> Option<bool> {
        use serde_json::Value;
        let (until, json) = member.split_once(' ')?;
        let until = until.parse::<u64>().ok()?;
        let fields = serde_json::from_str::<Vec<Value>>(json).ok()?;
        if until <= now {
            return Some(false);
        }
        match fields.as_slice() {
            [Value::String(tag), Value::String(jti)] if tag == "t" => {
                Some(self.hold_token(jti, until))
            }
            [Value::String(tag), issuer, Value::String(subject), before] if tag == "s" => {
                let issuer = match issuer {
                    Value::Null => None,
                    Value::String(issuer) => Some(issuer.as_str()),
                    _ => return None,
                };
                let before = before.as_u64()?;
                // This replica's own bound may be longer than the sender's.
                let until = until.max(self.subject_until(before));
                Some(self.hold_subject(issuer, subject, before, until))
            }
            [Value::String(tag), issuer, Value::String(sid), at] if tag == "i" => {
                let issuer = match issuer {
                    Value::Null => None,
                    Value::String(issuer) => Some(issuer.as_str()),
                    _ => return None,
                };
                // This replica's own bound may be longer than the sender's.
                let at = at.as_u64()?;
                let until = until.max(self.subject_until(at));
                Some(self.hold_session(issuer, sid, at, until))
            }
            _ => None,
        }
    }

    /// Shares this set with every replica given the same Redis and prefix
    /// (feature `redis`; see [`RedisRevocations`]): connects, subscribes,
    /// reads every revocation already made, and starts the background task.
    /// Revocations already held here are sent too.
    ///
    /// # Errors
    /// Called outside a tokio runtime; a set already shared; an empty
    /// prefix, a sync interval under 10 ms or a zero timeout; a URL that does
    /// not parse or names a Redis Cluster; Redis not answering within 2 s
    /// (through Sentinel: no Sentinel naming a primary that answers), or
    /// refusing `SUBSCRIBE` (turn [`pubsub`](RedisRevocations::pubsub)
    /// off) or the first read.
    pub async fn share(self, redis: RedisRevocations) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "revocation",
                "shared revocations run a background task: share them inside a tokio \
                 runtime, e.g. in async main",
            )
        })?;
        if self.inner.link.get().is_some() {
            return Err(ConfigError::new(
                "revocation",
                "this set is already shared through Redis",
            ));
        }
        redis.check()?;
        if redis.prefix == DEFAULT_REVOCATION_PREFIX {
            // Once, when the set is shared (not per revocation).
            tracing::warn!(
                prefix = DEFAULT_REVOCATION_PREFIX,
                "tollgate: shared revocations use the default revocation prefix, which every \
                 service on this Redis database shares: they apply each other's revocations. \
                 Give each service its own with RedisRevocations::prefix"
            );
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(SETUP_TIMEOUT))
            .set_response_timeout(Some(redis.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut conn = RedisStandalone::connect(&redis.url, config)
            .await
            .map_err(|e| ConfigError::new("revocation", e))?;
        // A cluster node would answer MOVED to half the calls: refused now.
        // (INFO may be forbidden by an ACL; then nothing is known.)
        if let Ok(Ok(info)) = tokio::time::timeout(
            SETUP_TIMEOUT,
            ::redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut conn),
        )
        .await
            && cluster_enabled(&info)
        {
            return Err(ConfigError::new(
                "revocation",
                "shared revocations need a standalone Redis (or a primary), not a Redis Cluster",
            ));
        }
        let link = Link::new(conn, &redis);
        let stream = if redis.pubsub {
            // Subscribed before the first read: nothing falls in between.
            Some(link.subscribe().await.map_err(|e| {
                ConfigError::new(
                    "revocation",
                    format!(
                        "cannot subscribe to the revocation channel ({}); if SUBSCRIBE is not \
                         allowed, turn pubsub off",
                        e.reason()
                    ),
                )
            })?)
        } else {
            None
        };
        link.read(&self)
            .await
            .map_err(|e| ConfigError::new("revocation", format!("first read: {}", e.reason())))?;
        // What this set already holds goes to the others too.
        let held = self.encode_all();
        link.enqueue(held, self.now());
        let wake = Arc::clone(&link.wake);
        let interval = link.interval;
        if self.inner.link.set(link).is_err() {
            return Err(ConfigError::new(
                "revocation",
                "this set is already shared through Redis",
            ));
        }
        super::sync::spawn(
            &runtime,
            Arc::downgrade(&self.inner),
            wake,
            stream,
            interval,
        );
        Ok(self)
    }

    /// Every entry held, encoded for Redis.
    fn encode_all(&self) -> Vec<String> {
        let mut members = Vec::new();
        for shard in &self.inner.shards {
            let shard = super::read(shard);
            for (jti, until) in &shard.tokens {
                members.extend(Entry::Token { jti }.encode(*until));
            }
            for (subject, cuts) in &shard.subjects {
                for cut in cuts {
                    let entry = Entry::Subject {
                        issuer: cut.issuer.as_deref(),
                        subject,
                        before: cut.before,
                    };
                    members.extend(entry.encode(cut.until));
                }
            }
            for (sid, cuts) in &shard.sessions {
                for cut in cuts {
                    let entry = Entry::Session {
                        issuer: cut.issuer.as_deref(),
                        sid,
                        at: cut.at,
                    };
                    members.extend(entry.encode(cut.until));
                }
            }
        }
        members
    }

    /// Sends the revocations waiting for Redis and reads every revocation
    /// there now, without waiting for the background task: for a logout
    /// handler that must know the others were told, and for tests. Does
    /// nothing on a set that is not shared.
    ///
    /// # Errors
    /// Redis did not answer (the revocations not sent stay queued).
    pub async fn sync_now(&self) -> Result<(), RevocationSyncError> {
        let Some(link) = self.inner.link.get() else {
            return Ok(());
        };
        let result = async {
            link.push(self).await?;
            link.read(self).await
        }
        .await;
        match &result {
            Ok(()) => link.recovered(),
            Err(e) => link.failed(e),
        }
        result
    }

    /// Whether this set is shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.inner.link.get().is_some()
    }

    /// Failed calls to Redis so far (writes, reads, subscriptions); 0 for a
    /// set that is not shared.
    pub fn sync_failures(&self) -> u64 {
        self.inner
            .link
            .get()
            .map_or(0, |link| link.failures.load(Ordering::Relaxed))
    }

    /// Revocations made here that have not reached Redis yet (queued or
    /// being sent).
    pub fn unsent(&self) -> usize {
        self.inner.link.get().map_or(0, |link| {
            let queued = link
                .unsent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            queued + link.in_flight.load(Ordering::Relaxed)
        })
    }
}

/// What a shared set keeps: the connections, the queue of revocations not yet
/// in Redis, what it has seen, its counters.
pub(super) struct Link {
    /// One server or Sentinel's primary; also opens the pub/sub connections.
    conn: RedisStandalone,
    /// The connection's generation when the channel was last subscribed.
    subscribed_on: AtomicU64,
    entries: String,
    version: String,
    /// `{prefix}:logout`: the logout tokens seen (back-channel logout).
    logouts: String,
    /// `{prefix}:epoch`: a random value that changes when Redis loses the
    /// set (restart without persistence, FLUSHALL, an empty replica
    /// promoted).
    epoch_key: String,
    channel: String,
    pub(super) interval: Duration,
    timeout: Duration,
    pub(super) pubsub: bool,
    script: Script,
    check_script: Script,
    read_script: Script,
    first_use_script: Script,
    /// The epoch this replica has read the set under.
    epoch: Mutex<Option<String>>,
    /// The epoch this replica writes when it finds none.
    candidate: String,
    /// Encoded members not yet written.
    unsent: Mutex<Vec<String>>,
    /// Members being written now.
    in_flight: AtomicUsize,
    /// Wakes the task when something is queued.
    pub(super) wake: Arc<Notify>,
    /// Every revocation up to this version has been applied here.
    seen: AtomicU64,
    failures: AtomicU64,
    warnings: WarnEvery,
    failing: AtomicBool,
}

impl Link {
    fn new(conn: RedisStandalone, settings: &RedisRevocations) -> Self {
        let prefix = &settings.prefix;
        // Pub/sub ignores the database number: the channel names it.
        let db = conn.db();
        Self {
            conn,
            subscribed_on: AtomicU64::new(0),
            entries: format!("{prefix}:entries"),
            version: format!("{prefix}:version"),
            logouts: format!("{prefix}:logout"),
            epoch_key: format!("{prefix}:epoch"),
            channel: format!("{prefix}:db{db}:events"),
            interval: settings.sync_interval,
            timeout: settings.timeout,
            pubsub: settings.pubsub,
            script: Script::new(WRITE),
            check_script: Script::new(CHECK),
            read_script: Script::new(READ),
            first_use_script: Script::new(FIRST_USE),
            epoch: Mutex::new(None),
            candidate: fresh_epoch(),
            unsent: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            seen: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            warnings: WarnEvery::new(10),
            failing: AtomicBool::new(false),
        }
    }

    /// Queues a revocation made here and wakes the task to send it.
    pub(super) fn publish(&self, entry: &Entry<'_>, until: u64, now: u64) {
        if let Some(member) = entry.encode(until) {
            self.enqueue(vec![member], now);
        }
    }

    /// Queues members; past the cap, expired ones go first, then the oldest.
    fn enqueue(&self, members: Vec<String>, now: u64) {
        if members.is_empty() {
            return;
        }
        let mut unsent = self.unsent.lock().unwrap_or_else(PoisonError::into_inner);
        unsent.extend(members);
        trim(&mut unsent, now);
        drop(unsent);
        self.wake.notify_one();
    }

    /// Sends what is queued. What is not sent (a failure, or the caller
    /// dropping this future) goes back in the queue.
    pub(super) async fn push(&self, set: &Revocations) -> Result<(), RevocationSyncError> {
        let taken =
            std::mem::take(&mut *self.unsent.lock().unwrap_or_else(PoisonError::into_inner));
        if taken.is_empty() {
            return Ok(());
        }
        let now = set.now();
        let members: Vec<String> = taken
            .into_iter()
            .filter(|member| until_of(member) > now)
            .collect();
        let mut flight = InFlight::new(self, members, now);
        while flight.sent < flight.members.len() {
            let end = flight.members.len().min(flight.sent + BATCH);
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(&self.entries)
                .key(&self.version)
                .arg(&self.channel);
            for member in &flight.members[flight.sent..end] {
                invocation.arg(member);
            }
            let mut conn = self.conn.clone();
            let reply =
                tokio::time::timeout(self.timeout, invocation.invoke_async::<u64>(&mut conn)).await;
            match reply {
                Ok(Ok(_)) => flight.sent = end,
                Ok(Err(e)) => return Err(RevocationSyncError::new("write", &e)),
                Err(_) => return Err(RevocationSyncError::timed_out("write")),
            }
        }
        Ok(())
    }

    /// Reads the epoch and the counter and, when this replica missed
    /// something or Redis lost the set, reads the set.
    pub(super) async fn check(&self, set: &Revocations) -> Result<(), RevocationSyncError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.check_script.prepare_invoke();
        invocation
            .key(&self.epoch_key)
            .key(&self.version)
            .arg(&self.candidate);
        let (epoch, version) = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(String, u64)>(&mut conn),
        )
        .await
        .map_err(|_| RevocationSyncError::timed_out("read"))?
        .map_err(|e| RevocationSyncError::new("read", &e))?;
        let known = self
            .epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if known.as_deref() != Some(epoch.as_str()) || version != self.seen.load(Ordering::Relaxed)
        {
            self.read(set).await?;
        }
        Ok(())
    }

    /// Reads every live revocation, the counter and the epoch, atomically.
    /// When the epoch changed or the counter went backwards, Redis lost the
    /// set: what this replica still holds is written back.
    pub(super) async fn read(&self, set: &Revocations) -> Result<(), RevocationSyncError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.read_script.prepare_invoke();
        invocation
            .key(&self.entries)
            .key(&self.version)
            .key(&self.epoch_key)
            .arg(&self.candidate);
        // Before the call: any version seen so far was written before it.
        let seen = self.seen.load(Ordering::Relaxed);
        let (epoch, version, members) = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(String, u64, Vec<String>)>(&mut conn),
        )
        .await
        .map_err(|_| RevocationSyncError::timed_out("read"))?
        .map_err(|e| RevocationSyncError::new("read", &e))?;
        let now = set.now();
        let unreadable = set.apply_members(members.iter().map(String::as_str), now);
        if unreadable > 0 {
            tracing::debug!(
                unreadable,
                "tollgate: Redis holds revocation entries this version cannot read"
            );
        }
        let known = self
            .epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(epoch.clone());
        let lost = known.is_some_and(|known| known != epoch) || version < seen;
        if lost {
            // Counted from the new start; what Redis lost and this replica
            // holds goes back (a revocation only ever refuses: writing one
            // back cannot let a token in).
            self.seen.store(version, Ordering::Relaxed);
            let held = set.encode_all();
            tracing::warn!(
                written_back = held.len(),
                "tollgate: Redis lost the shared revocations (a restart without persistence, \
                 FLUSHALL or a failover); read them again and writing back those held here"
            );
            self.enqueue(held, now);
        } else {
            self.seen.fetch_max(version, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Applies one pub/sub message.
    pub(super) fn receive(&self, set: &Revocations, payload: &[u8]) {
        let Some((version, member)) = std::str::from_utf8(payload)
            .ok()
            .and_then(|text| text.split_once(' '))
        else {
            return;
        };
        let Ok(version) = version.parse::<u64>() else {
            return;
        };
        if set.apply_member(member, set.now()) {
            // In order: the next one. Otherwise the periodic check notices
            // the gap and reads the set.
            let _ = self.seen.compare_exchange(
                version.saturating_sub(1),
                version,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether the subscription is on a server no longer used (Sentinel
    /// named another primary): then it is made again.
    pub(super) fn subscribed_elsewhere(&self) -> bool {
        self.conn.generation() != self.subscribed_on.load(Ordering::Relaxed)
    }

    /// A new pub/sub connection, subscribed to the channel.
    pub(super) async fn subscribe(&self) -> Result<PubSubStream, RevocationSyncError> {
        let generation = self.conn.generation();
        let connect = async {
            let mut pubsub = self.conn.pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, RedisError>(pubsub.into_on_message())
        };
        let stream = tokio::time::timeout(self.timeout.max(SETUP_TIMEOUT), connect)
            .await
            .map_err(|_| RevocationSyncError::timed_out("subscribe"))?
            .map_err(|e| RevocationSyncError::new("subscribe", &e))?;
        self.subscribed_on.store(generation, Ordering::Relaxed);
        Ok(stream)
    }

    /// Whether the logout token `key` (`[issuer, jti]`) is used for the
    /// first time across the replicas, recorded for `ttl` seconds. If Redis
    /// does not answer, `local` (this replica's record) decides.
    pub(super) async fn first_use(&self, key: &str, ttl: u64, local: bool) -> bool {
        let record = format!("{}:{key}", self.logouts);
        let mut invocation = self.first_use_script.prepare_invoke();
        invocation.key(&record).arg(fresh_epoch()).arg(ttl);
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<u8>(&mut conn)).await {
            Ok(Ok(first)) => first == 1,
            Ok(Err(e)) => {
                self.failed(&RevocationSyncError::new("logout replay check", &e));
                local
            }
            Err(_) => {
                self.failed(&RevocationSyncError::timed_out("logout replay check"));
                local
            }
        }
    }

    /// Counts a failure and logs it at most every 10 s.
    pub(super) fn failed(&self, error: &RevocationSyncError) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        self.failing.store(true, Ordering::Relaxed);
        crate::observe::revocation_sync_failure();
        if self.warnings.due() {
            tracing::warn!(
                error = error.reason(),
                sync_failures = failures,
                "tollgate: cannot sync revocations with Redis; revocations made here still \
                 apply here and are sent once it answers"
            );
        }
    }

    /// Logs the recovery once, after failures.
    pub(super) fn recovered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("tollgate: revocations sync with Redis again");
        }
    }
}

/// Revocations taken from the queue to be sent; those not sent when this is
/// dropped go back to its front.
struct InFlight<'a> {
    link: &'a Link,
    members: Vec<String>,
    sent: usize,
    now: u64,
}

impl<'a> InFlight<'a> {
    fn new(link: &'a Link, members: Vec<String>, now: u64) -> Self {
        link.in_flight.fetch_add(members.len(), Ordering::Relaxed);
        Self {
            link,
            members,
            sent: 0,
            now,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.link
            .in_flight
            .fetch_sub(self.members.len(), Ordering::Relaxed);
        let rest = self.members.split_off(self.sent.min(self.members.len()));
        if rest.is_empty() {
            return;
        }
        let mut unsent = self
            .link
            .unsent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newer = std::mem::replace(&mut *unsent, rest);
        unsent.extend(newer);
        trim(&mut unsent, self.now);
    }
}

/// Caps the queue: past it, expired members go first, then the oldest.
fn trim(unsent: &mut Vec<String>, now: u64) {
    if unsent.len() <= MAX_UNSENT {
        return;
    }
    unsent.retain(|member| until_of(member) > now);
    let excess = unsent.len().saturating_sub(MAX_UNSENT);
    if excess > 0 {
        unsent.drain(..excess);
        tracing::warn!(
            dropped = excess,
            "tollgate: too many revocations waiting for Redis; the oldest are kept only in \
             this process"
        );
    }
}

/// The `until` a member starts with (0 if unreadable: dropped as expired).
fn until_of(member: &str) -> u64 {
    member
        .split_once(' ')
        .and_then(|(until, _)| until.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn entries_round_trip_through_their_encoding() {
        let set = Revocations::new().clock(|| 100);
        let token = Entry::Token { jti: "a \"jti\" " }.encode(500).unwrap();
        assert_eq!(token, r#"500 ["t","a \"jti\" "]"#);
        let subject = Entry::Subject {
            issuer: None,
            subject: "alice bob",
            before: 90,
        }
        .encode(400)
        .unwrap();
        assert!(set.apply_member(&token, 100));
        assert!(set.apply_member(&subject, 100));
        assert!(set.is_revoked(None, None, Some("a \"jti\" "), None, 100));
        assert!(set.is_revoked(None, Some("alice bob"), None, Some(80), 100));
        assert!(!set.is_revoked(Some("x"), Some("alice bob"), None, Some(80), 100));
        // Expired on arrival: ignored. Garbage: refused, nothing applied.
        assert!(set.apply_member(r#"50 ["t","old"]"#, 100));
        assert!(!set.is_revoked(None, None, Some("old"), None, 60));
        for bad in [
            "",
            "x",
            "500",
            "500 []",
            r#"500 ["t",1]"#,
            r#"500 ["s",1,"a",1]"#,
        ] {
            assert!(!set.apply_member(bad, 100), "{bad}");
        }
        assert_eq!(set.len(), 2);
    }

    /// Issue 22: a full read of 160k entries took 1.4 s of CPU, each entry
    /// cleaning a shard (a sixteenth of the set) as it was added.
    #[test]
    fn a_full_read_is_linear_in_the_entries() {
        const N: usize = 100_000;
        let set = Revocations::new().clock(|| 1_000);
        let members: Vec<String> = (0..N).map(|i| format!(r#"2000 ["t","j{i}"]"#)).collect();
        let unreadable = set.apply_members(members.iter().map(String::as_str), 1_000);
        assert_eq!(unreadable, 0);
        assert_eq!(set.len(), N);
        // The clean-up looks at each entry a bounded number of times, not
        // once per entry added after it.
        let swept = set.inner.swept.load(Ordering::Relaxed);
        assert!(swept <= 2 * N, "{swept} entries swept to apply {N}");
    }

    #[test]
    fn cluster_and_bad_settings_are_refused_with_the_fix() {
        for url in ["redis+cluster://a:1", "redis://a:1,b:2"] {
            let err = RedisRevocations::new(url).check().unwrap_err();
            assert!(err.reason().contains("Cluster"), "{err}");
        }
        assert!(
            RedisRevocations::new("redis+sentinel://a:26379,b:26379/mymaster")
                .check()
                .is_ok()
        );
        let err = RedisRevocations::new("redis://a")
            .sync_interval(Duration::from_millis(1))
            .check()
            .unwrap_err();
        assert!(err.reason().contains("10 ms"), "{err}");
        assert!(
            RedisRevocations::new("redis://a")
                .prefix("")
                .check()
                .is_err()
        );
        assert!(RedisRevocations::new("redis://:pw@a/2").check().is_ok());
        let debug = format!("{:?}", RedisRevocations::new("redis://:hunter2@a"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
