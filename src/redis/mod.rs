//! Reaching Redis (feature `redis`), for everything in tollgate that uses it:
//! the rate-limit store (with `rate-limit`) and shared revocations (with
//! `auth`). Nothing here knows either of them.
//!
//! Layout: `url` (what a URL points at: one server, a cluster's seeds
//! through `redis+cluster://`, Sentinels through `redis+sentinel://`),
//! `connection` (one server, Sentinel's primary or a cluster behind one type;
//! commands sent to the node owning a slot), `sentinel` (the Sentinel URL,
//! and a connection that asks the Sentinels again after a failover),
//! `standalone` (one server, not a cluster, for a caller that also
//! subscribes), `info` (what `INFO` says) and `error` (an error's category,
//! without reply content).
//!
//! Inside the crate this module is `crate::redis`, and redis-rs is `::redis`.

#[cfg(feature = "rate-limit")]
mod connection;
mod error;
mod info;
mod sentinel;
#[cfg(feature = "auth")]
mod standalone;
#[cfg(feature = "rate-limit")]
mod url;

#[cfg(feature = "rate-limit")]
pub(crate) use connection::{Conn, SETUP_TIMEOUT};
pub(crate) use error::kind_name;
pub(crate) use info::cluster_enabled;
#[cfg(feature = "auth")]
pub(crate) use standalone::Standalone;
#[cfg(feature = "rate-limit")]
pub(crate) use url::{Target, parse_target};

/// An id for this process's writes to Redis, unlikely to be any other
/// replica's: ids made from it (a failure, a lease) never collide.
#[cfg(feature = "rate-limit")]
pub(crate) fn replica_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
