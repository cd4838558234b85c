//! A connection to the primary that Redis Sentinel names, which follows a
//! failover: a background task asks the Sentinels again when a call fails
//! the way a demoted or vanished primary makes it fail, and every few
//! seconds regardless, and swaps in a connection to the new primary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::sentinel::SentinelClient;
use ::redis::{Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::url::SentinelUrl;
use crate::redis::kind_name;

/// How long asking the Sentinels (and checking the primary they name with
/// `ROLE`) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to a primary may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// The Sentinels are asked this often even when every call succeeds (a
/// primary cut off from the Sentinels but not from this process).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// ...and at most this often when calls fail.
const CHECK_AT_MOST: Duration = Duration::from_millis(250);

/// The primary now in use.
struct Primary {
    /// `host:port`, as the Sentinels give it (no credentials).
    addr: String,
    #[cfg_attr(
        not(feature = "auth"),
        expect(dead_code, reason = "pub/sub connections of shared revocations")
    )]
    client: Client,
    conn: ConnectionManager,
}

struct Shared {
    primary: ArcSwap<Primary>,
    /// Wakes the task that asks the Sentinels.
    wake: Arc<Notify>,
    db: i64,
    /// Primaries switched to since connecting.
    switches: AtomicU64,
}

/// A connection to the primary the Sentinels of a [`SentinelUrl`] name;
/// cheap to clone. Calls go to the primary known now; one that fails with a
/// lost connection, a timeout, `READONLY` or `MASTERDOWN`, or that is dropped
/// before its reply (a caller's timeout), has the Sentinels asked again, at
/// most every 250 ms. While no primary answers, calls fail as they would
/// against a Redis that is down.
#[derive(Clone)]
pub(crate) struct SentinelConn {
    shared: Arc<Shared>,
}

impl SentinelConn {
    /// Asks the Sentinels for the primary, connects to it and starts the task
    /// that follows failovers (on the current tokio runtime; it ends once
    /// every clone of this connection is dropped).
    ///
    /// # Errors
    /// No tokio runtime; no Sentinel answering or naming a primary that
    /// confirms its role; the primary not accepting a connection.
    pub(crate) async fn connect(
        url: &SentinelUrl,
        config: ConnectionManagerConfig,
    ) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            "connecting through Redis Sentinel needs a tokio runtime (e.g. async main)".to_owned()
        })?;
        let mut sentinel = url.client()?;
        let client = lookup(&mut sentinel).await.map_err(|e| {
            format!(
                "no Redis Sentinel at {} named a primary for {:?}: {e}",
                url.sentinels
                    .iter()
                    .map(|(host, port)| format!("{host}:{port}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                url.service
            )
        })?;
        let primary = open(client, &config)
            .await
            .map_err(|e| format!("cannot connect to the primary Sentinel named: {e}"))?;
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            primary: ArcSwap::from_pointee(primary),
            wake: Arc::clone(&wake),
            db: url.db,
            switches: AtomicU64::new(0),
        });
        runtime.spawn(follow(Arc::downgrade(&shared), wake, sentinel, config));
        Ok(Self { shared })
    }

    /// A client for the primary known now (for pub/sub connections).
    #[cfg(feature = "auth")]
    pub(crate) fn client(&self) -> Client {
        self.shared.primary.load().client.clone()
    }

    /// How many times another primary was switched to since connecting (a
    /// subscriber on the old one hears nothing more).
    #[cfg(feature = "auth")]
    pub(crate) fn switches(&self) -> u64 {
        self.shared.switches.load(Ordering::Relaxed)
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.shared.primary.load().conn.clone();
        let watch = Watch(Some(&self.shared.wake));
        Box::pin(async move {
            let result = conn.req_packed_command(cmd).await;
            watch.settle(result.as_ref().err(), &[]);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.shared.primary.load().conn.clone();
        let watch = Watch(Some(&self.shared.wake));
        Box::pin(async move {
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            match &result {
                Ok(replies) => watch.settle(None, replies),
                Err(e) => watch.settle(Some(e), &[]),
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}

/// Has the Sentinels asked again unless the call it watches ends well.
struct Watch<'a>(Option<&'a Notify>);

impl Watch<'_> {
    /// The call ended with `error`, or with `replies` (a pipeline's, whose
    /// errors come as values).
    fn settle(mut self, error: Option<&RedisError>, replies: &[Value]) {
        let demoted = |reply: &Value| {
            matches!(reply, Value::ServerError(e)
                if matches!(e.kind(), Some(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)))
        };
        if !error.is_some_and(points_elsewhere) && !replies.iter().any(demoted) {
            self.0 = None;
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(wake) = self.0 {
            wake.notify_one();
        }
    }
}

/// An error saying the primary may have moved.
fn points_elsewhere(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Asks the Sentinels for the primary (redis-rs checks its `ROLE`).
async fn lookup(sentinel: &mut SentinelClient) -> Result<Client, String> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, sentinel.async_get_client()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) if e.kind() == ErrorKind::MasterNameNotFoundBySentinel => {
            Err("none knows a primary by that name that is up and confirms its role".to_owned())
        }
        Ok(Err(e)) => Err(kind_name(&e)),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Connects to the primary `client` points at.
async fn open(client: Client, config: &ConnectionManagerConfig) -> Result<Primary, String> {
    let addr = client.get_connection_info().addr().to_string();
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client.clone(), config.clone()),
    )
    .await
    .map_err(|_| format!("{addr}: timed out"))?
    .map_err(|e| format!("{addr}: {}", kind_name(&e)))?;
    Ok(Primary { addr, client, conn })
}

/// The task: asks the Sentinels when woken or every 5 s, and switches to the
/// primary they name when it is another.
async fn follow(
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    mut sentinel: SentinelClient,
    config: ConnectionManagerConfig,
) {
    loop {
        let _ = tokio::time::timeout(CHECK_EVERY, wake.notified()).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.check(&mut sentinel, &config).await;
        drop(shared);
        tokio::time::sleep(CHECK_AT_MOST).await;
    }
}

impl Shared {
    async fn check(&self, sentinel: &mut SentinelClient, config: &ConnectionManagerConfig) {
        let client = match lookup(sentinel).await {
            Ok(client) => client,
            Err(error) => {
                tracing::debug!(%error, "tollgate: cannot ask Redis Sentinel for the primary");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let from = self.primary.load().addr.clone();
        if addr == from {
            return;
        }
        match open(client, config).await {
            Ok(primary) => {
                self.primary.store(Arc::new(primary));
                self.switches.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    from = %from,
                    to = %addr,
                    "tollgate: Redis Sentinel names another primary; switched to it"
                );
            }
            Err(error) => {
                tracing::debug!(%error, "tollgate: cannot connect to the primary Sentinel names");
            }
        }
    }
}
