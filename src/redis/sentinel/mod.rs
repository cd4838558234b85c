//! Redis Sentinel: the `redis+sentinel://` URL (`url`) and a connection to
//! the primary the Sentinels name that follows a failover (`primary`).

mod primary;
mod url;

pub(crate) use primary::SentinelConn;
#[cfg(feature = "rate-limit")]
pub(crate) use url::SentinelUrl;
pub(crate) use url::parse;
