//! One Redis server, not a cluster, reached directly or through Sentinel,
//! for a caller that both sends commands and subscribes: the shared
//! revocations.

use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::sentinel::{self, SentinelConn};

/// How long connecting to a server named directly may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection to one server; cheap to clone.
#[derive(Clone)]
pub(crate) enum Standalone {
    /// `redis://…`, `unix://…`: the server the URL names.
    Direct {
        client: Arc<Client>,
        conn: ConnectionManager,
    },
    /// `redis+sentinel://…`: the primary the Sentinels name, followed
    /// through failovers.
    Sentinel(SentinelConn),
}

impl Standalone {
    /// Connects to `url` with `config`.
    ///
    /// # Errors
    /// What went wrong, for a [`ConfigError`](crate::ConfigError): a URL that
    /// does not parse, no server (or no Sentinel) answering in time.
    pub(crate) async fn connect(
        url: &str,
        config: ConnectionManagerConfig,
    ) -> Result<Self, String> {
        if let Some(sentinel) =
            sentinel::parse(url).map_err(|e| format!("bad Redis Sentinel URL: {e}"))?
        {
            return Ok(Self::Sentinel(
                SentinelConn::connect(&sentinel, config).await?,
            ));
        }
        let client = Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| "no Redis answered within 4 s".to_owned())?
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        Ok(Self::Direct {
            client: Arc::new(client),
            conn,
        })
    }

    /// The database the connection uses.
    pub(crate) fn db(&self) -> i64 {
        self.get_db()
    }

    /// Changes when the server changes (another primary named by Sentinel):
    /// a pub/sub connection opened before hears nothing more.
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Self::Direct { .. } => 0,
            Self::Sentinel(conn) => conn.switches(),
        }
    }

    /// A new pub/sub connection to the server (through Sentinel: to the
    /// primary known now).
    pub(crate) async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Self::Direct { client, .. } => client.get_async_pubsub().await,
            Self::Sentinel(conn) => conn.client().get_async_pubsub().await,
        }
    }
}

impl ConnectionLike for Standalone {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Direct { conn, .. } => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Direct { conn, .. } => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Direct { client, .. } => client.get_connection_info().redis_settings().db(),
            Self::Sentinel(conn) => conn.get_db(),
        }
    }
}
