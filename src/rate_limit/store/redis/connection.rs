//! A store's link to Redis: the connection (`crate::redis`), the slot map
//! and its upkeep, the clocks; connecting checks the version of every
//! primary and samples their clocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisResult, Value};
use arc_swap::ArcSwap;

use super::clock::LocalClock;
use super::info::check_server_version;
use super::topology::{Node, Topology};
use crate::error::ConfigError;
use crate::redis::{Conn, SETUP_TIMEOUT, Target, cluster_enabled, kind_name, parse_target};

/// A cluster's slot map is read again this often, and at most this often
/// when replies say it changed.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(10);
pub(super) const TOPOLOGY_AT_MOST: Duration = Duration::from_secs(1);

/// What every part of a store shares: the connection, the slot map, the
/// local clock and the round-trip counter.
pub(super) struct Backend {
    pub(super) conn: Conn,
    pub(super) topology: ArcSwap<Topology>,
    pub(super) clock: LocalClock,
    /// Calls to Redis after connecting (a pipeline counts once).
    pub(super) round_trips: AtomicU64,
    /// A reply said the slot map changed (cluster only).
    refresh_wanted: AtomicBool,
    /// Local time of the last slot-map read.
    refreshed_at: AtomicU64,
}

impl Backend {
    fn new(conn: Conn, topology: Topology) -> Self {
        Self {
            conn,
            topology: ArcSwap::from_pointee(topology),
            clock: LocalClock::new(),
            round_trips: AtomicU64::new(0),
            refresh_wanted: AtomicBool::new(false),
            refreshed_at: AtomicU64::new(0),
        }
    }

    /// Asks for the slot map to be read again soon.
    pub(super) fn topology_changed(&self) {
        self.refresh_wanted.store(true, Ordering::Relaxed);
    }

    /// Reads the slot map again when it is old or said to have changed (at
    /// most once a second); nothing on a single server.
    pub(super) async fn upkeep(&self) {
        if !self.is_cluster() {
            return;
        }
        let now = self.clock.now_us();
        let since =
            Duration::from_micros(now.saturating_sub(self.refreshed_at.load(Ordering::Relaxed)));
        let wanted = self.refresh_wanted.load(Ordering::Relaxed);
        if since >= TOPOLOGY_EVERY || (wanted && since >= TOPOLOGY_AT_MOST) {
            self.refresh_wanted.store(false, Ordering::Relaxed);
            self.refreshed_at.store(now, Ordering::Relaxed);
            if let Err(error) = self.refresh_topology().await {
                tracing::debug!(%error, "tollgate: cannot read the Redis Cluster slot map");
                self.topology_changed();
            }
        }
    }

    /// A store on one server's connection manager, unchecked.
    pub(super) fn single(conn: ConnectionManager) -> Self {
        Self::new(Conn::Single(conn), Topology::single())
    }

    pub(super) fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Reads the slot map again (cluster only); nodes keep their clocks.
    pub(super) async fn refresh_topology(&self) -> Result<(), String> {
        let Conn::Cluster(conn) = &self.conn else {
            return Ok(());
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = conn.clone();
        let reply = ::redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut conn)
            .await
            .map_err(|e| format!("CLUSTER SLOTS: {}", kind_name(&e)))?;
        let old = self.topology.load();
        let next = Topology::from_cluster_slots(&reply, Some(&old))?;
        self.topology.store(Arc::new(next));
        Ok(())
    }

    /// Learns a node's clock from one `TIME`.
    async fn sample_clock(&self, node: &Node) {
        let mut conn = self.conn.clone();
        let Ok(reply) = with_timeout(conn.command_on(node.slot, ::redis::cmd("TIME"))).await else {
            return;
        };
        if let Ok((secs, micros)) = ::redis::from_redis_value::<(i64, i64)>(reply) {
            let server = secs.saturating_mul(1_000_000).saturating_add(micros);
            node.clock.record(server, self.clock.now_us());
        }
    }
}

async fn with_timeout<T>(call: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
    match tokio::time::timeout(SETUP_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(kind_name(&e)),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Connects as [`parse_target`] says and checks every primary's version.
pub(super) async fn connect(url: &str) -> Result<Backend, ConfigError> {
    match parse_target(url)? {
        Target::Cluster(seeds) => connect_cluster(&seeds).await,
        Target::Sentinel(sentinel) => {
            let mut conn = Conn::sentinel(&sentinel).await?;
            let info = read_info(&mut conn).await?;
            if cluster_enabled(&info) {
                return Err(ConfigError::new(
                    "redis",
                    "the primary Sentinel names is a Redis Cluster node: give a cluster URL \
                     (redis+cluster://host:port,...) instead",
                ));
            }
            check_server_version(&info)?;
            Ok(single_checked(conn).await)
        }
        Target::Detect(url) => {
            let mut conn = Conn::server(&url).await?;
            let info = read_info(&mut conn).await?;
            if cluster_enabled(&info) {
                drop(conn);
                return connect_cluster(&[url]).await;
            }
            check_server_version(&info)?;
            Ok(single_checked(conn).await)
        }
    }
}

/// `INFO` of one server, for its version and cluster mode.
async fn read_info(conn: &mut Conn) -> Result<String, ConfigError> {
    ::redis::cmd("INFO").query_async(conn).await.map_err(|e| {
        ConfigError::new(
            "redis",
            format!(
                "cannot read the Redis version (INFO: {e}); if INFO is blocked, \
                 build the store with RedisStore::from_connection, which skips the check"
            ),
        )
    })
}

/// A store's backend on one server already checked, its clock sampled.
async fn single_checked(conn: Conn) -> Backend {
    let backend = Backend::new(conn, Topology::single());
    let topology = backend.topology.load_full();
    if let Some(node) = topology.nodes.first() {
        backend.sample_clock(node).await;
    }
    backend
}

/// Connects to a cluster through `seeds`, reads its slot map, checks the
/// version of every primary and samples their clocks.
pub(super) async fn connect_cluster(seeds: &[String]) -> Result<Backend, ConfigError> {
    let conn = Conn::cluster(seeds).await?;
    let backend = Backend::new(conn, Topology::single());
    backend.refresh_topology().await.map_err(|e| {
        ConfigError::new("redis", format!("cannot read the cluster's slot map: {e}"))
    })?;
    backend.round_trips.store(0, Ordering::Relaxed);
    backend
        .refreshed_at
        .store(backend.clock.now_us(), Ordering::Relaxed);
    let topology = backend.topology.load_full();
    for node in &topology.nodes {
        let mut conn = backend.conn.clone();
        let info =
            with_timeout(conn.command_on(node.slot, ::redis::cmd("INFO").arg("server").to_owned()))
                .await
                .and_then(|reply| {
                    ::redis::from_redis_value::<String>(reply).map_err(|e| e.to_string())
                })
                .map_err(|e| {
                    ConfigError::new(
                        "redis",
                        format!(
                            "cannot read the Redis version of cluster node {} (INFO server: {e}); \
                         every primary must answer at connect",
                            node.id
                        ),
                    )
                })?;
        check_server_version(&info)?;
        backend.sample_clock(node).await;
    }
    Ok(backend)
}
