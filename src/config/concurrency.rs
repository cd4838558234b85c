//! `[concurrency.NAME]` tables: per-caller concurrency limits
//! ([`ConcurrencyLimitLayer`](crate::concurrency::ConcurrencyLimitLayer)).

use serde::Deserialize;

use super::invalid;
use crate::concurrency::{ConcurrencyLimitBuilder, ConcurrencyLimitLayer};
use crate::error::ConfigError;
use crate::rate_limit::{KeyBy, TrustedProxies};

/// What a concurrency limit keys on.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyKeyConfig {
    /// The verified subject, the client address for anonymous callers
    /// (default; mount the layer behind the auth layer).
    #[default]
    SubjectOrClientIp,
    /// The client address, through trusted proxies.
    ClientIp,
    /// The peer address of the connection.
    PeerIp,
}

/// A `[concurrency.NAME]` table.
///
/// ```toml
/// [concurrency.in-flight]
/// max = 16                       # requests in flight at once per caller
/// key = "subject_or_client_ip"   # or client_ip, peer_ip
/// trusted_proxies = []
/// # redis_url = "redis://127.0.0.1:6379"   # replicas lease slots together (feature `redis`)
/// # prefix = "myapi"
/// # lease_ms = 10000              # how long a dead replica's slots stay taken
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// Requests in flight at once per caller.
    pub max: u32,
    /// `subject_or_client_ip` (default), `client_ip` or `peer_ip`.
    #[serde(default)]
    pub key: ConcurrencyKeyConfig,
    /// CIDRs of trusted proxies.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The Redis the replicas lease their slots in (feature `redis`);
    /// absent, each replica counts alone.
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys (default `tollgate`).
    pub prefix: Option<String>,
    /// How long a lease lasts unless renewed, in milliseconds (default
    /// 10,000).
    pub lease_ms: Option<u64>,
    /// How long an acquisition may take before the replica decides alone,
    /// in milliseconds (default 100).
    pub timeout_ms: Option<u64>,
}

impl ConcurrencyConfig {
    /// A builder with what the table says; the policy is named `name`.
    /// Async because a `redis_url` is connected to here.
    ///
    /// # Errors
    /// Invalid proxies, with the field named; a Redis that does not answer,
    /// or `redis_url` without the `redis` feature.
    pub async fn builder(&self, name: &str) -> Result<ConcurrencyLimitBuilder, ConfigError> {
        let proxies = TrustedProxies::cidrs(&self.trusted_proxies)
            .map_err(|e| invalid("concurrency.trusted_proxies", e.reason().to_owned()))?;
        let key = match self.key {
            ConcurrencyKeyConfig::SubjectOrClientIp => KeyBy::subject_or_client_ip(proxies),
            ConcurrencyKeyConfig::ClientIp => KeyBy::client_ip(proxies),
            ConcurrencyKeyConfig::PeerIp => KeyBy::peer_ip(),
        };
        let b = ConcurrencyLimitLayer::builder(self.max).name(name).key(key);
        match &self.redis_url {
            None => Ok(b),
            #[cfg(feature = "redis")]
            Some(url) => {
                let mut slots = crate::concurrency::SharedSlots::connect(url).await?;
                if let Some(prefix) = &self.prefix {
                    slots = slots.prefix(prefix);
                }
                if let Some(ms) = self.lease_ms {
                    slots = slots.lease(std::time::Duration::from_millis(ms));
                }
                if let Some(ms) = self.timeout_ms {
                    slots = slots.timeout(std::time::Duration::from_millis(ms));
                }
                Ok(b.shared(slots))
            }
            #[cfg(not(feature = "redis"))]
            Some(_) => Err(invalid(
                "concurrency.redis_url",
                "sharing concurrency slots through Redis needs tollgate's `redis` feature",
            )),
        }
    }

    /// Builds the layer; the policy is named `name`.
    ///
    /// # Errors
    /// As [`builder`](Self::builder) and [`ConcurrencyLimitBuilder::build`].
    pub async fn layer(&self, name: &str) -> Result<ConcurrencyLimitLayer, ConfigError> {
        self.builder(name).await?.build()
    }
}
