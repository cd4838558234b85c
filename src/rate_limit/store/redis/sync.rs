//! The background task of a local-first store, and its asks.
//!
//! Every sync interval it sends the keys admitted since their last sync, in
//! bounded batches (one pipeline per node per batch), the keys near their
//! limit first, then the oldest; each batch carries a server-side deadline
//! inside the call's timeout. A batch that times out is sent again, as it
//! was, next time: Redis charges each admission at most once, whether or not
//! the first attempt ran. The batch size adapts (halved on a timeout, grown
//! while batches answer quickly), and the work of one tick is bounded by the
//! interval, so a backlog of any size drains at the rate Redis answers and
//! never wedges the sync. It also keeps this replica in the store's registry
//! (how many replicas share the keys) and, on a cluster, the slot map fresh.
//! It holds the store only weakly and ends once the store is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use redis::{ServerErrorKind, Value};
use tokio::runtime::Handle;
use tokio::time::MissedTickBehavior;

use super::connection::Backend;
use super::exact::DecisionFuture;
use super::local_first::{LocalState, Reply, Report};
use super::micros;
use super::scripts::{REGISTER, SHARE, SHARE_MANY};
use super::topology::{Node, key_slot};
use crate::observe::WarnEvery;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::store::Decision;
use crate::redis::kind_name;

/// Batches sent at once (pipelined on one connection): a slow link carries
/// several while the first is answered.
const IN_FLIGHT: usize = 4;

/// Keys per script call of a sync (Redis's per-call cost is paid once for
/// them).
const KEYS_PER_CALL: usize = 64;

/// Keys per batch: where a sync starts, and its bounds.
const FIRST_BATCH: usize = 1_000;
const MIN_BATCH: usize = 16;
const MAX_BATCH: usize = 10_000;

/// Replenished keys are removed this often.
const CLEANUP_EVERY: Duration = Duration::from_secs(1);

/// A replica that has not registered for this long is no longer counted.
const REGISTRY_WINDOW_MS: u64 = 10_000;

/// A local-first store's shared part: the local state, what a sync needs,
/// and its counters.
pub(super) struct LocalFirst {
    pub(super) state: LocalState,
    backend: Arc<Backend>,
    prefix: Arc<str>,
    names: Vec<Arc<str>>,
    pub(super) interval: Duration,
    call_timeout: Duration,
    script: redis::Script,
    many: redis::Script,
    /// This replica's field in every key it touches.
    replica: String,
    /// Send `SCRIPT LOAD` ahead of the next pipelines (first sync, or a
    /// server answered `NOSCRIPT`).
    needs_load: AtomicBool,
    batch: AtomicUsize,
    pub(super) syncs: AtomicU64,
    pub(super) sync_failures: AtomicU64,
    warnings: WarnEvery,
    failing: AtomicBool,
    behind: AtomicBool,
    #[cfg(feature = "metrics")]
    metrics: SyncMetrics,
}

/// The sync's health, as metrics labelled by the store's prefix.
#[cfg(feature = "metrics")]
struct SyncMetrics {
    pending: metrics::Gauge,
    lag: metrics::Gauge,
    failures: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl SyncMetrics {
    fn new(prefix: &Arc<str>) -> Self {
        use crate::observe::names;
        let store = metrics::SharedString::from(Arc::clone(prefix));
        Self {
            pending: metrics::gauge!(names::RATE_LIMIT_SYNC_PENDING_KEYS, "store" => store.clone()),
            lag: metrics::gauge!(names::RATE_LIMIT_SYNC_LAG_SECONDS, "store" => store.clone()),
            failures: metrics::counter!(names::RATE_LIMIT_SYNC_FAILURES, "store" => store),
        }
    }
}

impl LocalFirst {
    pub(super) fn new(
        state: LocalState,
        backend: Arc<Backend>,
        prefix: Arc<str>,
        names: Vec<Arc<str>>,
        interval: Duration,
        call_timeout: Duration,
    ) -> Self {
        Self {
            state,
            backend,
            names,
            interval,
            call_timeout,
            script: redis::Script::new(SHARE),
            many: redis::Script::new(SHARE_MANY),
            replica: replica_id(),
            needs_load: AtomicBool::new(true),
            batch: AtomicUsize::new(FIRST_BATCH),
            syncs: AtomicU64::new(0),
            sync_failures: AtomicU64::new(0),
            warnings: WarnEvery::new(10),
            failing: AtomicBool::new(false),
            behind: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            metrics: SyncMetrics::new(&prefix),
            prefix,
        }
    }

    fn redis_key(&self, policy: usize, key: &RateKey) -> String {
        let name = self.names.get(policy).map_or("", |name| &**name);
        format!("{}:{}:{}", self.prefix, name, key.to_store_key())
    }

    /// The script's arguments after the key, for `report`: four numbers,
    /// this replica's id, eight numbers.
    fn args(&self, report: &Report, deadline: i64, admit: bool) -> ([u64; 4], [u64; 8]) {
        let params = self
            .state
            .params(report.policy)
            .copied()
            .unwrap_or_default();
        let life_ms = self.state.settings().claim_life_us / 1_000;
        (
            [
                params.t_us,
                params.tau_us,
                u64::try_from(deadline).unwrap_or(0),
                u64::from(admit),
            ],
            [
                report.entry,
                report.acked,
                report.total,
                u64::from(params.max_merge),
                report.age,
                u64::from(report.want),
                life_ms,
                life_ms + 2_000,
            ],
        )
    }

    /// The request's deadline on `node`'s clock (0: unknown).
    fn deadline(&self, node: Option<&Node>, now: u64) -> i64 {
        node.and_then(|node| {
            node.clock
                .server_time(now.saturating_add(micros(self.call_timeout)), now)
        })
        .unwrap_or(0)
        .max(0)
    }

    /// Asks Redis to decide a request of a key whose claim is spent: the
    /// call merges what this replica admitted, decides the request and
    /// renews the claim. If Redis does not answer in time, the request is
    /// decided here alone, and so are the next ones until Redis answers.
    pub(super) fn ask(self: &Arc<Self>, report: Report) -> DecisionFuture {
        let engine = Arc::clone(self);
        Box::pin(async move {
            let redis_key = engine.redis_key(report.policy, &report.key);
            let topology = engine.backend.topology.load_full();
            let node = topology
                .node_of(redis_key.as_bytes())
                .and_then(|i| topology.nodes.get(i));
            let now = engine.state.now_us();
            let mut invocation = engine.script.prepare_invoke();
            invocation.key(&redis_key);
            let (head, tail) = engine.args(&report, engine.deadline(node, now), true);
            for arg in head {
                invocation.arg(arg);
            }
            invocation.arg(&engine.replica);
            for arg in tail {
                invocation.arg(arg);
            }
            engine.backend.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = engine.backend.conn.clone();
            let call = invocation.invoke_async::<Value>(&mut conn);
            let reply = tokio::time::timeout(engine.call_timeout, call).await;
            let settled_at = engine.state.now_us();
            let params = engine
                .state
                .params(report.policy)
                .copied()
                .unwrap_or_default();
            match reply.ok().and_then(Result::ok).and_then(|value| {
                parse(&value).map(|(outcome, reply, server_now)| {
                    if let Some(node) = node {
                        node.clock.record(server_now, settled_at);
                    }
                    (outcome, reply)
                })
            }) {
                Some((0 | 1, reply)) => {
                    engine.state.apply(&report, reply, settled_at);
                    Ok(if reply.admitted {
                        Decision::allowed(
                            params.burst,
                            reply.remaining.min(params.burst),
                            Duration::from_micros(reply.ahead_us),
                        )
                    } else {
                        Decision::limited(params.burst, Duration::from_micros(reply.retry_us))
                    })
                }
                _ => {
                    engine.state.unreachable();
                    engine.failed("redis: an ask was not answered in time", "ask");
                    engine.state.decide_alone(report.policy, &report.key)
                }
            }
        })
    }

    /// One tick: a round of up to [`IN_FLIGHT`] batches at once; more rounds
    /// while there is a backlog (every batch full), until a batch fails or
    /// the interval is used up.
    pub(super) async fn sync_once(&self) {
        let started = self.state.now_us();
        let budget = micros(self.interval);
        loop {
            let size = self.batch.load(Ordering::Relaxed);
            let batches: Vec<Vec<Report>> = (0..IN_FLIGHT)
                .map(|_| self.state.take(size))
                .take_while(|reports| !reports.is_empty())
                .collect();
            if batches.is_empty() {
                break;
            }
            // Another round this tick only for a backlog (a full batch).
            let backlog =
                batches.iter().all(|batch| batch.len() == size) && batches.len() == IN_FLIGHT;
            let sent = self.state.now_us();
            let results = join_all(batches.into_iter().map(|b| self.sync_batch(b)).collect()).await;
            let took = self.state.now_us().saturating_sub(sent);
            if results.contains(&false) {
                self.batch
                    .store((size / 2).max(MIN_BATCH), Ordering::Relaxed);
                // Keys of a failing node went to the back; the others may go
                // on, unless nothing got through.
                if !results.contains(&true) {
                    break;
                }
            }
            if took < micros(self.call_timeout) / 2 {
                self.batch
                    .store((size * 2).min(MAX_BATCH), Ordering::Relaxed);
            }
            if !backlog || self.state.now_us().saturating_sub(started) >= budget {
                break;
            }
        }
        self.watch_lag();
    }

    /// Warns once when the sync falls behind (the oldest key waited more
    /// than ten intervals), and says when it caught up.
    fn watch_lag(&self) {
        let lag = self.state.lag();
        // Claims stop being spent before what was spent of them could
        // outlive them in Redis unmerged.
        self.state
            .set_lagging(lag > Duration::from_micros(self.state.settings().margin_us / 2));
        #[cfg(feature = "metrics")]
        {
            #[expect(clippy::cast_precision_loss, reason = "a gauge of key counts")]
            self.metrics.pending.set(self.state.pending_keys() as f64);
            self.metrics.lag.set(lag.as_secs_f64());
        }
        let behind = lag > self.interval * 10;
        if behind && !self.behind.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pending_keys = self.state.pending_keys(),
                lag_ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
                "tollgate: the Redis sync is behind; limits are shared late until it catches up"
            );
        } else if !behind && lag <= self.interval * 2 && self.behind.swap(false, Ordering::Relaxed)
        {
            tracing::info!("tollgate: the Redis sync caught up");
        }
    }

    /// Syncs one batch, one pipeline per node; whether every key was
    /// answered.
    async fn sync_batch(&self, reports: Vec<Report>) -> bool {
        let topology = self.backend.topology.load_full();
        let mut groups: Vec<Vec<(Report, String)>> =
            topology.nodes.iter().map(|_| Vec::new()).collect();
        let mut unowned = 0;
        for report in reports {
            let key = self.redis_key(report.policy, &report.key);
            match topology
                .node_of(key.as_bytes())
                .and_then(|i| groups.get_mut(i))
            {
                Some(group) => group.push((report, key)),
                None => {
                    unowned += 1;
                    self.state.retry(report);
                }
            }
        }
        if unowned > 0 {
            self.backend.topology_changed();
            self.failed("some keys' slots have no node in the slot map", "cluster");
        }
        let load = self.needs_load.swap(false, Ordering::Relaxed);
        let calls = topology
            .nodes
            .iter()
            .zip(groups)
            .filter(|(_, group)| !group.is_empty())
            .map(|(node, group)| self.sync_node(node, group, load));
        let mut failed_nodes = 0;
        for (node, reason) in join_all(calls.collect()).await.into_iter().flatten() {
            failed_nodes += 1;
            self.failed(&reason, &node);
        }
        let ok = failed_nodes == 0 && unowned == 0;
        if ok {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if self.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    "tollgate: Redis sync recovered; local-first limits are shared again"
                );
            }
        }
        ok
    }

    /// Syncs `group` with `node`: one pipeline of calls of up to
    /// [`KEYS_PER_CALL`] keys each (on a cluster, keys of one slot);
    /// `Some((node, reason))` if any key failed.
    async fn sync_node(
        &self,
        node: &Node,
        mut group: Vec<(Report, String)>,
        load: bool,
    ) -> Option<(String, String)> {
        let now = self.state.now_us();
        let deadline = u64::try_from(self.deadline(Some(node), now)).unwrap_or(0);
        let life_ms = self.state.settings().claim_life_us / 1_000;
        let cluster = self.backend.is_cluster();
        if cluster {
            group.sort_by_key(|(_, key)| key_slot(key.as_bytes()));
        }
        let mut calls: Vec<Vec<(Report, String)>> = Vec::new();
        for item in group {
            let same_call = calls.last().is_some_and(|call| {
                call.len() < KEYS_PER_CALL
                    && (!cluster
                        || call.first().is_some_and(|(_, first)| {
                            key_slot(first.as_bytes()) == key_slot(item.1.as_bytes())
                        }))
            });
            match calls.last_mut() {
                Some(call) if same_call => call.push(item),
                _ => calls.push(vec![item]),
            }
        }
        let mut pipeline = redis::pipe();
        if load {
            pipeline.cmd("SCRIPT").arg("LOAD").arg(SHARE_MANY);
        }
        for call in &calls {
            let cmd = pipeline
                .cmd("EVALSHA")
                .arg(self.many.get_hash())
                .arg(call.len());
            for (_, key) in call {
                cmd.arg(key);
            }
            cmd.arg(deadline)
                .arg(&self.replica)
                .arg(life_ms)
                .arg(life_ms + 2_000);
            for (report, _) in call {
                let params = self
                    .state
                    .params(report.policy)
                    .copied()
                    .unwrap_or_default();
                cmd.arg(params.t_us)
                    .arg(params.tau_us)
                    .arg(report.entry)
                    .arg(report.acked)
                    .arg(report.total)
                    .arg(params.max_merge)
                    .arg(report.age)
                    .arg(report.want);
            }
        }
        self.backend.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.backend.conn.clone();
        let reply =
            tokio::time::timeout(self.call_timeout, conn.pipeline_on(node.slot, &pipeline)).await;
        let settled_at = self.state.now_us();
        let reason = match reply {
            Ok(Ok(replies)) => {
                return self.settle_all(node, calls, replies, load, settled_at);
            }
            Ok(Err(e)) => {
                if e.is_cluster_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.backend.topology_changed();
                }
                format!("redis: {}", kind_name(&e))
            }
            Err(_) => "redis: timed out".to_owned(),
        };
        self.state.unreachable();
        // Back in the queue, in their order.
        for (report, _) in calls.into_iter().flatten() {
            self.state.retry(report);
        }
        if load {
            self.needs_load.store(true, Ordering::Relaxed);
        }
        Some((node.id.clone(), reason))
    }

    fn settle_all(
        &self,
        node: &Node,
        calls: Vec<Vec<(Report, String)>>,
        replies: Vec<Value>,
        load: bool,
        settled_at: u64,
    ) -> Option<(String, String)> {
        let mut replies = replies.into_iter();
        if load
            && !matches!(
                replies.next(),
                Some(Value::BulkString(_) | Value::SimpleString(_))
            )
        {
            self.needs_load.store(true, Ordering::Relaxed);
        }
        let mut failure = None;
        for call in calls {
            let value = replies.next();
            let items = match &value {
                Some(Value::Array(items)) => items.as_slice(),
                _ => &[],
            };
            let int = |i: usize| match items.get(i) {
                Some(Value::Int(n)) => Some(*n),
                _ => None,
            };
            match (int(0), int(1)) {
                (Some(server_now), Some(0)) if items.len() == 2 + 3 * call.len() => {
                    node.clock.record(server_now, settled_at);
                    for (k, (report, _)) in call.into_iter().enumerate() {
                        let at = 2 + 3 * k;
                        let reply = Reply {
                            ahead_us: int(at + 1).and_then(|v| u64::try_from(v).ok()).unwrap_or(0),
                            claim: int(at + 2).and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                            admitted: true,
                            remaining: int(at).and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
                            retry_us: 0,
                        };
                        self.state.settle(&report, reply, settled_at);
                    }
                    continue;
                }
                (Some(server_now), Some(_)) => {
                    node.clock.record(server_now, settled_at);
                    failure.get_or_insert("redis: the sync reached Redis after its deadline");
                }
                _ => {
                    if let Some(Value::ServerError(error)) = &value {
                        match error.kind() {
                            Some(ServerErrorKind::NoScript) => {
                                self.needs_load.store(true, Ordering::Relaxed);
                            }
                            Some(
                                ServerErrorKind::Moved
                                | ServerErrorKind::Ask
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown,
                            ) => self.backend.topology_changed(),
                            _ => {}
                        }
                    }
                    failure.get_or_insert("redis: unexpected reply to the sync script");
                }
            }
            for (report, _) in call {
                self.state.retry(report);
            }
        }
        failure.map(|reason| (node.id.clone(), reason.to_owned()))
    }

    /// Counts a failed call and logs it at most every 10 s.
    fn failed(&self, reason: &str, node: &str) {
        let failures = self.sync_failures.fetch_add(1, Ordering::Relaxed) + 1;
        #[cfg(feature = "metrics")]
        self.metrics.failures.increment(1);
        self.failing.store(true, Ordering::Relaxed);
        if self.warnings.due() {
            tracing::warn!(
                error = reason,
                node,
                sync_failures = failures,
                "tollgate: Redis sync failed; local-first limits are decided per replica until it recovers"
            );
        }
    }

    /// Keeps this replica in the registry and reads how many are live.
    async fn register(&self) {
        let key = format!("{}:replicas", self.prefix);
        let topology = self.backend.topology.load_full();
        let Some(node) = topology
            .node_of(key.as_bytes())
            .and_then(|i| topology.nodes.get(i))
        else {
            return;
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(REGISTER)
            .arg(1)
            .arg(&key)
            .arg(&self.replica)
            .arg(REGISTRY_WINDOW_MS);
        let mut conn = self.backend.conn.clone();
        if let Ok(Ok(Value::Int(count))) =
            tokio::time::timeout(self.call_timeout, conn.command_on(node.slot, cmd)).await
        {
            self.state.answered();
            self.state
                .set_replicas(u32::try_from(count).unwrap_or(u32::MAX).max(1));
        } else {
            // Unknown again: new keys ask until two registrations answer.
            self.state.set_replicas(0);
        }
    }
}

/// `{outcome, remaining, ahead_us, retry_us, now_us, claim}`.
fn parse(value: &Value) -> Option<(i64, Reply, i64)> {
    let Value::Array(items) = value else {
        return None;
    };
    let int = |i: usize| match items.get(i) {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    let (outcome, remaining, ahead, retry, now, claim) =
        (int(0)?, int(1)?, int(2)?, int(3)?, int(4)?, int(5)?);
    let reply = Reply {
        ahead_us: u64::try_from(ahead).unwrap_or(0),
        claim: u32::try_from(claim).unwrap_or(0),
        admitted: outcome == 1,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        retry_us: u64::try_from(retry).unwrap_or(0),
    };
    Some((outcome, reply, now))
}

/// A random id for this replica's fields (hex, 16 digits).
fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

/// Runs every future to completion, concurrently, on the current task.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Starts the sync task of a local-first store: every interval, a sync, the
/// registry, and the clean-up and slot-map upkeep when due.
pub(super) fn spawn_sync(runtime: &Handle, engine: &Arc<LocalFirst>) {
    let weak = Arc::downgrade(engine);
    let interval = engine.interval;
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_cleanup = tokio::time::Instant::now();
        let mut last_register: Option<tokio::time::Instant> = None;
        loop {
            ticker.tick().await;
            let Some(engine) = weak.upgrade() else {
                return;
            };
            if last_register.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                engine.register().await;
                last_register = Some(tokio::time::Instant::now());
            }
            engine.sync_once().await;
            if last_cleanup.elapsed() >= CLEANUP_EVERY || engine.state.overflowed() {
                engine.state.cleanup();
                last_cleanup = tokio::time::Instant::now();
            }
            engine.backend.upkeep().await;
        }
    });
}

/// Starts the slot-map upkeep of an exact store on a cluster.
pub(super) fn spawn_upkeep(runtime: &Handle, backend: Weak<Backend>) {
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(super::connection::TOPOLOGY_AT_MOST);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(backend) = backend.upgrade() else {
                return;
            };
            backend.upkeep().await;
        }
    });
}
