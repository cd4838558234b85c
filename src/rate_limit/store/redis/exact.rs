//! Exact mode: one script call per decision, on Redis's clock, with a
//! deadline so that a call the caller gave up on spends nothing; and the
//! deny cache that spares hot refused keys the round trip.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use redis::Script;

use super::Params;
use super::connection::Backend;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::store::{Check, Decision, Spend, StoreError};
use crate::redis::kind_name;

/// The future of an exact decision.
pub(super) type DecisionFuture = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

/// What an exact decision needs besides the key.
pub(super) struct Exact<'a> {
    pub(super) backend: &'a Arc<Backend>,
    pub(super) script: &'a Arc<Script>,
    pub(super) deny_cache: Option<&'a Arc<DenyCache>>,
    pub(super) timeout: Duration,
}

impl Exact<'_> {
    /// Decides `key` under `policy` (index `index`) in Redis at `redis_key`:
    /// one request ([`Spend`] `None`), or a charge by cost.
    pub(super) fn check(
        &self,
        index: usize,
        params: Params,
        key: &RateKey,
        spend: Option<Spend>,
        redis_key: impl FnOnce() -> String,
    ) -> Check<DecisionFuture> {
        let started = Instant::now();
        let (units, mode) = match spend {
            None => (1, "take"),
            Some(Spend::Take(n)) => (n.get(), "take"),
            Some(Spend::Owe(n)) => (n.get(), "owe"),
            Some(Spend::Refund(n)) => (n.get(), "refund"),
        };
        // A key refused one unit is refused more; debts and refunds always
        // reach Redis.
        let deny_cache = self.deny_cache.filter(|_| mode == "take");
        if let Some(retry) = deny_cache.and_then(|cache| cache.refused_for(index, key, started)) {
            return Check::Ready(Ok(Decision::limited(params.burst, retry)));
        }
        let redis_key = redis_key();
        let backend = Arc::clone(self.backend);
        // The caller waits until `deadline`; past it (on the node's clock, as
        // estimated from earlier replies) the script spends nothing.
        let local_now = backend.clock.now_us();
        let local_deadline =
            local_now.saturating_add(u64::try_from(self.timeout.as_micros()).unwrap_or(u64::MAX));
        let clock = {
            let topology = backend.topology.load();
            topology
                .node_of(redis_key.as_bytes())
                .and_then(|i| topology.nodes.get(i))
                .map(|node| Arc::clone(&node.clock))
        };
        let server_deadline = clock
            .as_ref()
            .and_then(|clock| clock.server_time(local_deadline, local_now))
            .unwrap_or(0)
            .max(0);
        let deadline = tokio::time::Instant::from_std(started + self.timeout);
        let script = Arc::clone(self.script);
        // Only a refused single unit says when the next request may come.
        let deny = deny_cache
            .filter(|_| units == 1)
            .map(|cache| (Arc::clone(cache), key.clone()));
        Check::Pending(Box::pin(async move {
            backend.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut conn = backend.conn.clone();
            let mut invocation = script.prepare_invoke();
            invocation
                .key(redis_key)
                .arg(params.t_us)
                .arg(params.tau_us)
                .arg(server_deadline)
                .arg(units)
                // No replica field: an exact store holds no claim.
                .arg("")
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(0)
                .arg(mode);
            let call = invocation.invoke_async::<(i64, i64, i64, i64, i64, i64)>(&mut conn);
            let (outcome, remaining, reset_us, retry_us, server_now, _claim) =
                match tokio::time::timeout_at(deadline, call).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => {
                        if e.is_cluster_error() || e.is_connection_dropped() {
                            backend.topology_changed();
                        }
                        return Err(StoreError::new(format!("redis: {}", kind_name(&e))));
                    }
                    Err(_) => return Err(StoreError::new("redis: timed out")),
                };
            if let Some(clock) = clock {
                clock.record(server_now, backend.clock.now_us());
            }
            let as_duration = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
            match outcome {
                1 => {
                    let remaining = u32::try_from(remaining).unwrap_or(0).min(params.burst);
                    Ok(Decision::allowed(
                        params.burst,
                        remaining,
                        as_duration(reset_us),
                    ))
                }
                0 => {
                    let retry = as_duration(retry_us);
                    if let Some((cache, key)) = deny {
                        cache.remember(index, key, Instant::now() + retry);
                    }
                    Ok(Decision::limited(params.burst, retry))
                }
                _ => Err(StoreError::new(
                    "redis: the call reached Redis after its deadline (nothing spent)",
                )),
            }
        }))
    }
}

/// Keys Redis refused, each with the instant Redis said it may retry.
///
/// Bounded in entries (quick_cache, scan-resistant eviction): a flood of distinct
/// denied keys evicts at O(1) amortised cost per insert, while keys that keep
/// being refused are hit and so kept. An entry past its deadline counts as
/// absent; it is removed when looked up, or evicted like any other.
pub(super) struct DenyCache {
    entries: Cache<(usize, RateKey), Instant>,
}

impl DenyCache {
    pub(super) fn new(capacity: usize) -> Self {
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
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {

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
}
