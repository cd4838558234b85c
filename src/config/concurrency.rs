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
}

impl ConcurrencyConfig {
    /// A builder with what the table says; the policy is named `name`.
    ///
    /// # Errors
    /// Invalid proxies, with the field named.
    pub fn builder(&self, name: &str) -> Result<ConcurrencyLimitBuilder, ConfigError> {
        let proxies = TrustedProxies::cidrs(&self.trusted_proxies)
            .map_err(|e| invalid("concurrency.trusted_proxies", e.reason().to_owned()))?;
        let key = match self.key {
            ConcurrencyKeyConfig::SubjectOrClientIp => KeyBy::subject_or_client_ip(proxies),
            ConcurrencyKeyConfig::ClientIp => KeyBy::client_ip(proxies),
            ConcurrencyKeyConfig::PeerIp => KeyBy::peer_ip(),
        };
        Ok(ConcurrencyLimitLayer::builder(self.max).name(name).key(key))
    }

    /// Builds the layer; the policy is named `name`.
    ///
    /// # Errors
    /// As [`builder`](Self::builder) and [`ConcurrencyLimitBuilder::build`].
    pub fn layer(&self, name: &str) -> Result<ConcurrencyLimitLayer, ConfigError> {
        self.builder(name)?.build()
    }
}
