//! Reaching Redis: one server (an auto-reconnecting multiplexed connection),
//! the primary Redis Sentinel names (followed through failovers) or a cluster
//! (redis-rs's cluster client, which follows `MOVED` and `ASK`), detected at
//! connect; the version check on every primary; the slot map.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::clock::LocalClock;
use super::info::{check_server_version, cluster_enabled};
use super::sentinel::{self, SentinelConn, SentinelUrl};
use super::topology::{Node, Topology};
use crate::error::ConfigError;

/// How long connecting (and each set-up command) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A cluster's slot map is read again this often, and at most this often
/// when replies say it changed.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(10);
pub(super) const TOPOLOGY_AT_MOST: Duration = Duration::from_secs(1);

/// Where a URL points.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// One address: a standalone server or any node of a cluster (asked).
    Detect(String),
    /// Seed nodes of a cluster, as one URL each.
    Cluster(Vec<String>),
    /// The primary some Sentinels name.
    Sentinel(SentinelUrl),
}

/// Reads `redis://host:port/db` (one node: standalone or cluster, detected),
/// `redis+cluster://host:port[,host:port…]` (a cluster, from its seeds),
/// `redis://host:port,host:port` (several seeds: a cluster) and
/// `redis+sentinel://host:port[,host:port…]/service[/db]` (the primary
/// Sentinel names). Other schemes (`unix://`, `redis+unix://`,
/// `rediss://…`) go to redis-rs as they are.
///
/// # Errors
/// A cluster URL with an empty host in its list; a Sentinel URL that does
/// not parse.
pub(super) fn parse_target(url: &str) -> Result<Target, ConfigError> {
    if let Some(sentinel) = sentinel::parse(url)
        .map_err(|e| ConfigError::new("redis", format!("bad Redis Sentinel URL: {e}")))?
    {
        return Ok(Target::Sentinel(sentinel));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Target::Detect(url.to_owned()));
    };
    let (base, forced) = match scheme.strip_suffix("+cluster") {
        Some(base) => (base, true),
        None => (scheme, false),
    };
    if !matches!(base, "redis" | "rediss" | "valkey" | "valkeys") {
        if forced {
            return Err(ConfigError::new(
                "redis",
                format!(
                    "unsupported scheme {scheme:?}: a cluster URL is redis+cluster://host:port[,host:port...]"
                ),
            ));
        }
        return Ok(Target::Detect(url.to_owned()));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').collect();
    if hosts.len() == 1 && !forced {
        return Ok(Target::Detect(url.to_owned()));
    }
    if hosts.iter().any(|host| host.trim().is_empty()) {
        return Err(ConfigError::new(
            "redis",
            "a cluster URL lists an empty host: give host:port[,host:port...]",
        ));
    }
    let seeds = hosts
        .iter()
        .map(|host| match userinfo {
            Some(userinfo) => format!("{base}://{userinfo}@{}{tail}", host.trim()),
            None => format!("{base}://{}{tail}", host.trim()),
        })
        .collect();
    Ok(Target::Cluster(seeds))
}

/// A connection to one server, to the primary Sentinel names, or to a
/// cluster; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Sentinel(SentinelConn),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

impl Conn {
    /// Sends `pipeline` to `node` and returns one reply per command, errors
    /// included as [`Value::ServerError`] (the commands need not share a
    /// slot: Redis only asks that of multi-key commands and transactions).
    pub(super) async fn pipeline_on(
        &mut self,
        node: &Node,
        pipeline: &Pipeline,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, 0, pipeline.len()).await,
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, 0, pipeline.len()).await,
            Self::Cluster(conn) => {
                conn.route_pipeline(pipeline.clone(), 0, pipeline.len(), route_to(node))
                    .await
            }
        }
    }

    /// Sends `cmd` to `node`.
    pub(super) async fn command_on(&mut self, node: &Node, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(&cmd).await,
            Self::Sentinel(conn) => conn.req_packed_command(&cmd).await,
            Self::Cluster(conn) => {
                conn.route_command(cmd, RoutingInfo::SingleNode(route_to(node)))
                    .await
            }
        }
    }
}

fn route_to(node: &Node) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::new(node.slot, SlotAddr::Master))
}

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
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Reads the slot map again (cluster only); nodes keep their clocks.
    pub(super) async fn refresh_topology(&self) -> Result<(), String> {
        let Conn::Cluster(conn) = &self.conn else {
            return Ok(());
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut conn = conn.clone();
        let reply = redis::cmd("CLUSTER")
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
        let Ok(reply) = with_timeout(conn.command_on(node, redis::cmd("TIME"))).await else {
            return;
        };
        if let Ok((secs, micros)) = redis::from_redis_value::<(i64, i64)>(reply) {
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

/// How a store's connection to one server (or Sentinel's primary) retries.
fn single_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(SETUP_TIMEOUT))
        .set_response_timeout(Some(SETUP_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}

/// Connects as [`parse_target`] says and checks every primary's version.
pub(super) async fn connect(url: &str) -> Result<Backend, ConfigError> {
    match parse_target(url)? {
        Target::Cluster(seeds) => connect_cluster(&seeds).await,
        Target::Sentinel(sentinel) => {
            let conn = SentinelConn::connect(&sentinel, single_config())
                .await
                .map_err(|e| ConfigError::new("redis", e))?;
            let mut conn = Conn::Sentinel(conn);
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
            let client = redis::Client::open(url.as_str())
                .map_err(|e| ConfigError::new("redis", format!("bad Redis URL: {e}")))?;
            let conn = ConnectionManager::new_with_config(client, single_config())
                .await
                .map_err(|e| ConfigError::new("redis", format!("cannot connect to Redis: {e}")))?;
            let mut conn = Conn::Single(conn);
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
    redis::cmd("INFO").query_async(conn).await.map_err(|e| {
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
    let client = ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(SETUP_TIMEOUT)
        .response_timeout(SETUP_TIMEOUT)
        .retries(2)
        .build()
        .map_err(|e| ConfigError::new("redis", format!("bad Redis Cluster URL: {e}")))?;
    let conn = match tokio::time::timeout(2 * SETUP_TIMEOUT, client.get_async_connection()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return Err(ConfigError::new(
                "redis",
                format!(
                    "cannot connect to the Redis Cluster at {}: {e}",
                    seeds.join(", ")
                ),
            ));
        }
        Err(_) => {
            return Err(ConfigError::new(
                "redis",
                format!("no Redis Cluster node answered at {}", seeds.join(", ")),
            ));
        }
    };
    let backend = Backend::new(Conn::Cluster(conn), Topology::single());
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
        let info = with_timeout(conn.command_on(node, redis::cmd("INFO").arg("server").to_owned()))
            .await
            .and_then(|reply| redis::from_redis_value::<String>(reply).map_err(|e| e.to_string()))
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

/// A redis-rs error's category, without any reply content.
pub(crate) fn kind_name(error: &redis::RedisError) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connection_dropped() || error.is_connection_refusal() {
        "connection lost".into()
    } else {
        format!("{:?}", error.kind())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cluster(seeds: &[&str]) -> Target {
        Target::Cluster(seeds.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn one_host_is_detected_at_connect() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://:secret@redis:6379/2",
            "rediss://redis",
            "unix:///run/redis.sock",
            "redis+unix:///run/redis.sock",
            "not a url",
        ] {
            assert_eq!(parse_target(url).unwrap(), Target::Detect(url.to_owned()));
        }
    }

    #[test]
    fn cluster_urls_become_one_seed_url_each() {
        assert_eq!(
            parse_target("redis+cluster://10.0.0.1:7000").unwrap(),
            cluster(&["redis://10.0.0.1:7000"])
        );
        assert_eq!(
            parse_target("redis+cluster://user:pw@a:7000,b:7001/?protocol=resp2").unwrap(),
            cluster(&[
                "redis://user:pw@a:7000/?protocol=resp2",
                "redis://user:pw@b:7001/?protocol=resp2"
            ])
        );
        assert_eq!(
            parse_target("redis://a:7000, b:7001,[::1]:7002").unwrap(),
            cluster(&["redis://a:7000", "redis://b:7001", "redis://[::1]:7002"])
        );
        assert_eq!(
            parse_target("rediss+cluster://a,b").unwrap(),
            cluster(&["rediss://a", "rediss://b"])
        );
    }

    #[test]
    fn bad_cluster_urls_are_refused_with_the_fix() {
        for url in [
            "redis+cluster://a:1,,b:2",
            "redis://a:1,",
            "redis+cluster://",
            "unix+cluster:///x",
        ] {
            let err = parse_target(url).unwrap_err();
            assert_eq!(err.setting(), "redis", "{url}");
            assert!(err.reason().contains("host:port"), "{url}: {err}");
        }
    }

    #[test]
    fn sentinel_urls_name_their_sentinels_and_service() {
        let Target::Sentinel(url) =
            parse_target("redis+sentinel://:pw@a,b:26380/mymaster/2").unwrap()
        else {
            panic!("not a Sentinel target");
        };
        assert_eq!(
            url.sentinels,
            [("a".to_owned(), 26_379), ("b".to_owned(), 26_380)]
        );
        assert_eq!((url.service.as_str(), url.db), ("mymaster", 2));
        let err = parse_target("redis+sentinel://:hunter2@a,b").unwrap_err();
        assert_eq!(err.setting(), "redis");
        assert!(err.reason().contains("mymaster"), "{err}");
        assert!(!err.reason().contains("hunter2"), "{err}");
    }
}
