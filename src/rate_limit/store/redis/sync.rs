//! The background task: every sync interval, one pipeline per node carries
//! the admissions since the last sync of every key that had some, and brings
//! back the shared state; on a cluster it also keeps the slot map fresh. It
//! holds the store only weakly and ends once the store is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use redis::{ServerErrorKind, Value};
use tokio::runtime::Handle;
use tokio::time::MissedTickBehavior;

use super::connection::{Backend, kind_name};
use super::local_first::{Batch, LocalState, Settled};
use super::scripts::MERGE;
use super::topology::Node;
use crate::observe::WarnEvery;
use crate::rate_limit::key::RateKey;

/// Keys per pipeline: more than this per node and interval take several.
const MAX_PIPELINE: usize = 10_000;

/// Replenished keys are removed this often.
const CLEANUP_EVERY: Duration = Duration::from_secs(1);

/// A local-first store's shared part: the local state, what a sync needs,
/// and its counters.
pub(super) struct LocalFirst {
    pub(super) state: LocalState,
    backend: Arc<Backend>,
    prefix: Arc<str>,
    names: Vec<Arc<str>>,
    pub(super) interval: Duration,
    call_timeout: Duration,
    sha: String,
    /// Send `SCRIPT LOAD` ahead of the next pipelines (first sync, or a
    /// server answered `NOSCRIPT`).
    needs_load: AtomicBool,
    pub(super) syncs: AtomicU64,
    pub(super) sync_failures: AtomicU64,
    warnings: WarnEvery,
    failing: AtomicBool,
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
            prefix,
            names,
            interval,
            call_timeout,
            sha: redis::Script::new(MERGE).get_hash().to_owned(),
            needs_load: AtomicBool::new(true),
            syncs: AtomicU64::new(0),
            sync_failures: AtomicU64::new(0),
            warnings: WarnEvery::new(10),
            failing: AtomicBool::new(false),
        }
    }

    fn redis_key(&self, policy: usize, key: &RateKey) -> String {
        let name = self.names.get(policy).map_or("", |name| &**name);
        format!("{}:{}:{}", self.prefix, name, key.to_store_key())
    }

    /// One sync: every node with keys to sync gets one pipeline (per
    /// 10,000 keys), all at once; what fails goes back in the queue.
    pub(super) async fn sync_once(&self) {
        let batches = self.state.take();
        if batches.is_empty() {
            return;
        }
        let topology = self.backend.topology.load_full();
        let mut groups: Vec<Vec<(Batch, String)>> =
            topology.nodes.iter().map(|_| Vec::new()).collect();
        let mut unowned = 0;
        let now = self.state.now_us();
        for batch in batches {
            let key = self.redis_key(batch.policy, &batch.key);
            match topology
                .node_of(key.as_bytes())
                .and_then(|i| groups.get_mut(i))
            {
                Some(group) => group.push((batch, key)),
                None => {
                    unowned += 1;
                    self.state.settle(batch, Settled::Retry, now);
                }
            }
        }
        if unowned > 0 {
            self.backend.topology_changed();
            self.failed("some keys' slots have no node in the slot map", "cluster");
        }
        let load = self.needs_load.swap(false, Ordering::Relaxed);
        let mut calls = Vec::new();
        for (node, group) in topology.nodes.iter().zip(groups) {
            let mut group = group;
            while !group.is_empty() {
                let rest = group.split_off(group.len().min(MAX_PIPELINE));
                calls.push(self.sync_node(node, group, load));
                group = rest;
            }
        }
        let mut failed_nodes = 0;
        for (node, reason) in join_all(calls).await.into_iter().flatten() {
            failed_nodes += 1;
            self.failed(&reason, &node);
        }
        if failed_nodes == 0 && unowned == 0 {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if self.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    "tollgate: Redis sync recovered; local-first limits are shared again"
                );
            }
        }
    }

    /// Syncs `group` with `node`; `Some((node, reason))` if any key failed.
    async fn sync_node(
        &self,
        node: &Node,
        group: Vec<(Batch, String)>,
        load: bool,
    ) -> Option<(String, String)> {
        let now = self.state.now_us();
        let timeout_us = u64::try_from(self.call_timeout.as_micros()).unwrap_or(u64::MAX);
        let deadline = node
            .clock
            .server_time(now.saturating_add(timeout_us), now)
            .unwrap_or(0)
            .max(0);
        let mut pipeline = redis::pipe();
        if load {
            pipeline.cmd("SCRIPT").arg("LOAD").arg(MERGE);
        }
        for (batch, key) in &group {
            let params = self.state.params(batch.policy).copied().unwrap_or_default();
            let (n, age) = batch.to_send(&params, now);
            pipeline
                .cmd("EVALSHA")
                .arg(&self.sha)
                .arg(1)
                .arg(key)
                .arg(params.t_us)
                .arg(n)
                .arg(age)
                .arg(deadline);
        }
        self.backend.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.backend.conn.clone();
        let reply =
            tokio::time::timeout(self.call_timeout, conn.pipeline_on(node, &pipeline)).await;
        let settled_at = self.state.now_us();
        let mut replies = match reply {
            Ok(Ok(replies)) => replies.into_iter(),
            Ok(Err(e)) => {
                if e.is_cluster_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                    self.backend.topology_changed();
                }
                self.retry_all(group, settled_at);
                if load {
                    self.needs_load.store(true, Ordering::Relaxed);
                }
                return Some((node.id.clone(), format!("redis: {}", kind_name(&e))));
            }
            Err(_) => {
                self.retry_all(group, settled_at);
                if load {
                    self.needs_load.store(true, Ordering::Relaxed);
                }
                return Some((node.id.clone(), "redis: timed out".to_owned()));
            }
        };
        if load
            && !matches!(
                replies.next(),
                Some(Value::BulkString(_) | Value::SimpleString(_))
            )
        {
            self.needs_load.store(true, Ordering::Relaxed);
        }
        let mut failure = None;
        for (batch, _) in group {
            let settled = match replies.next() {
                Some(Value::Array(items)) => match items.as_slice() {
                    [Value::Int(1), Value::Int(ahead), Value::Int(server_now)] => {
                        node.clock.record(*server_now, settled_at);
                        Settled::Merged {
                            ahead_us: u64::try_from(*ahead).unwrap_or(0),
                        }
                    }
                    [Value::Int(_), _, Value::Int(server_now)] => {
                        node.clock.record(*server_now, settled_at);
                        failure.get_or_insert("redis: the sync reached Redis after its deadline");
                        Settled::Retry
                    }
                    _ => {
                        failure.get_or_insert("redis: unexpected reply to the sync script");
                        Settled::Retry
                    }
                },
                Some(Value::ServerError(error)) => {
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
                    failure.get_or_insert("redis: the sync script failed");
                    Settled::Retry
                }
                _ => {
                    failure.get_or_insert("redis: unexpected reply to the sync");
                    Settled::Retry
                }
            };
            self.state.settle(batch, settled, settled_at);
        }
        failure.map(|reason| (node.id.clone(), reason.to_owned()))
    }

    fn retry_all(&self, group: Vec<(Batch, String)>, now: u64) {
        for (batch, _) in group {
            self.state.settle(batch, Settled::Retry, now);
        }
    }

    /// Counts a failed sync and logs it at most every 10 s.
    fn failed(&self, reason: &str, node: &str) {
        let failures = self.sync_failures.fetch_add(1, Ordering::Relaxed) + 1;
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

/// Starts the sync task of a local-first store: every interval, a sync, and
/// the clean-up and slot-map upkeep when due.
pub(super) fn spawn_sync(runtime: &Handle, engine: &Arc<LocalFirst>) {
    let weak = Arc::downgrade(engine);
    let interval = engine.interval;
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_cleanup = tokio::time::Instant::now();
        loop {
            ticker.tick().await;
            let Some(engine) = weak.upgrade() else {
                return;
            };
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
