//! One type for every way to reach Redis: one server (an auto-reconnecting
//! multiplexed connection), the primary Redis Sentinel names (followed
//! through failovers) or a cluster (redis-rs's cluster client, which follows
//! `MOVED` and `ASK`); and commands sent to the node that owns a slot.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::sentinel::{SentinelConn, SentinelUrl};
use crate::error::ConfigError;

/// How long connecting (and each set-up command) may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to one server, to the primary Sentinel names, or to a
/// cluster; cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
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
    /// Connects to what `url` names: one server, a cluster
    /// (`redis+cluster://`) or Sentinels' primary (`redis+sentinel://`).
    ///
    /// # Errors
    /// A URL that does not parse, or no server answering.
    pub(crate) async fn any(url: &str) -> Result<Self, ConfigError> {
        match super::parse_target(url)? {
            super::Target::Detect(url) => Self::server(&url).await,
            super::Target::Cluster(seeds) => Self::cluster(&seeds).await,
            super::Target::Sentinel(sentinel) => Self::sentinel(&sentinel).await,
        }
    }

    /// Connects to the one server `url` names (it may turn out to be a
    /// cluster node: ask it with `INFO`).
    ///
    /// # Errors
    /// A URL that does not parse, no server accepting a connection.
    pub(crate) async fn server(url: &str) -> Result<Self, ConfigError> {
        let client = ::redis::Client::open(url)
            .map_err(|e| ConfigError::new("redis", format!("bad Redis URL: {e}")))?;
        let conn = ConnectionManager::new_with_config(client, single_config())
            .await
            .map_err(|e| ConfigError::new("redis", format!("cannot connect to Redis: {e}")))?;
        Ok(Self::Single(conn))
    }

    /// Connects to the primary the Sentinels of `url` name, and follows it
    /// through failovers.
    ///
    /// # Errors
    /// No tokio runtime, no Sentinel naming a primary that answers.
    pub(crate) async fn sentinel(url: &SentinelUrl) -> Result<Self, ConfigError> {
        let conn = SentinelConn::connect(url, single_config())
            .await
            .map_err(|e| ConfigError::new("redis", e))?;
        Ok(Self::Sentinel(conn))
    }

    /// Connects to a cluster through `seeds` (one URL each).
    ///
    /// # Errors
    /// A seed that does not parse, no node answering in time.
    pub(crate) async fn cluster(seeds: &[String]) -> Result<Self, ConfigError> {
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(SETUP_TIMEOUT)
            .response_timeout(SETUP_TIMEOUT)
            .retries(2)
            .build()
            .map_err(|e| ConfigError::new("redis", format!("bad Redis Cluster URL: {e}")))?;
        match tokio::time::timeout(2 * SETUP_TIMEOUT, client.get_async_connection()).await {
            Ok(Ok(conn)) => Ok(Self::Cluster(conn)),
            Ok(Err(e)) => Err(ConfigError::new(
                "redis",
                format!(
                    "cannot connect to the Redis Cluster at {}: {e}",
                    seeds.join(", ")
                ),
            )),
            Err(_) => Err(ConfigError::new(
                "redis",
                format!("no Redis Cluster node answered at {}", seeds.join(", ")),
            )),
        }
    }

    /// Whether this is a cluster connection.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Sends `pipeline` to the primary that owns `slot` (one server: the
    /// server) and returns one reply per command, errors included as
    /// [`Value::ServerError`] (the commands need not share a slot: Redis only
    /// asks that of multi-key commands and transactions).
    pub(crate) async fn pipeline_on(
        &mut self,
        slot: u16,
        pipeline: &Pipeline,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, 0, pipeline.len()).await,
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, 0, pipeline.len()).await,
            Self::Cluster(conn) => {
                conn.route_pipeline(pipeline.clone(), 0, pipeline.len(), route_to(slot))
                    .await
            }
        }
    }

    /// Sends `cmd` to the primary that owns `slot` (one server: the server).
    pub(crate) async fn command_on(&mut self, slot: u16, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(&cmd).await,
            Self::Sentinel(conn) => conn.req_packed_command(&cmd).await,
            Self::Cluster(conn) => {
                conn.route_command(cmd, RoutingInfo::SingleNode(route_to(slot)))
                    .await
            }
        }
    }
}

fn route_to(slot: u16) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
}

/// How a connection to one server (or Sentinel's primary) retries.
fn single_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(SETUP_TIMEOUT))
        .set_response_timeout(Some(SETUP_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
}
