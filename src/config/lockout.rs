//! `[lockouts.NAME]` tables: failure-driven lockouts
//! ([`LockoutLayer`](crate::lockout::LockoutLayer)).

use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;

use super::invalid;
use crate::error::ConfigError;
use crate::lockout::{LockoutBuilder, LockoutLayer};
use crate::rate_limit::{KeyBy, TrustedProxies};

/// What a lockout keys on.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LockoutKeyConfig {
    /// The client address, through trusted proxies (default).
    #[default]
    ClientIp,
    /// The peer address of the connection.
    PeerIp,
}

/// A `[lockouts.NAME]` table; every field but the key has the builder's
/// default.
///
/// ```toml
/// [lockouts.login]
/// key = "client_ip"             # or peer_ip
/// trusted_proxies = ["10.0.0.0/8"]
/// failures = 5                  # failures within window_secs lock the client out
/// window_secs = 300
/// backoff_secs = 60             # the first lockout; each further one doubles
/// max_backoff_secs = 3600
/// statuses = [401, 403]         # what counts as a failure (besides LoginFailed)
/// per_account = true           # handlers name the account (AccountGuard)
/// # redis_url = "redis://127.0.0.1:6379"   # replicas count together (feature `redis`)
/// # prefix = "myapi"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockoutConfig {
    /// `client_ip` (default) or `peer_ip`.
    #[serde(default)]
    pub key: LockoutKeyConfig,
    /// CIDRs of trusted proxies (for `client_ip`).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Failures within the window that lock a key out.
    pub failures: Option<u32>,
    /// The window in seconds.
    pub window_secs: Option<u64>,
    /// The first lockout in seconds.
    pub backoff_secs: Option<u64>,
    /// The longest lockout in seconds.
    pub max_backoff_secs: Option<u64>,
    /// Response statuses counted as failures (400–599).
    pub statuses: Option<Vec<u16>>,
    /// The most keys counted at once.
    pub max_keys: Option<usize>,
    /// Whether a `LoginSucceeded` response clears the key's failures
    /// (default false; see `LockoutBuilder::clear_on_success`).
    #[serde(default)]
    pub clear_on_success: bool,
    /// Whether handlers name the account a login targets
    /// (`LockoutBuilder::per_account`; default false).
    #[serde(default)]
    pub per_account: bool,
    /// How long a client that logged into an account stays known to it, in
    /// seconds (default 30 days).
    pub known_for_secs: Option<u64>,
    /// The Redis the replicas count failures in (feature `redis`); absent,
    /// each replica counts alone.
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys (default `tollgate`).
    pub prefix: Option<String>,
}

impl LockoutConfig {
    /// A builder with what the table says, named `name`; async because a
    /// `redis_url` is connected to here.
    ///
    /// # Errors
    /// Invalid proxies or statuses, with the field named; a Redis that does
    /// not answer, or `redis_url` without the `redis` feature.
    pub async fn builder(&self, name: &str) -> Result<LockoutBuilder, ConfigError> {
        let proxies = TrustedProxies::cidrs(&self.trusted_proxies)
            .map_err(|e| invalid("lockouts.trusted_proxies", e.reason().to_owned()))?;
        let key = match self.key {
            LockoutKeyConfig::ClientIp => KeyBy::client_ip(proxies),
            LockoutKeyConfig::PeerIp => KeyBy::peer_ip(),
        };
        let mut b = LockoutLayer::builder(key).name(name);
        if let Some(failures) = self.failures {
            b = b.failures(failures);
        }
        if let Some(secs) = self.window_secs {
            b = b.window(Duration::from_secs(secs));
        }
        if let Some(secs) = self.backoff_secs {
            b = b.backoff(Duration::from_secs(secs));
        }
        if let Some(secs) = self.max_backoff_secs {
            b = b.max_backoff(Duration::from_secs(secs));
        }
        b = b.per_account(self.per_account);
        if let Some(secs) = self.known_for_secs {
            b = b.known_clients_for(Duration::from_secs(secs));
        }
        if let Some(statuses) = &self.statuses {
            let statuses = statuses
                .iter()
                .map(|&code| {
                    StatusCode::from_u16(code)
                        .ok()
                        .filter(|s| s.is_client_error() || s.is_server_error())
                        .ok_or_else(|| {
                            invalid(
                                "lockouts.statuses",
                                format!("{code} is not an error status (400–599)"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            b = b.statuses(statuses);
        }
        if let Some(max) = self.max_keys {
            b = b.max_keys(max);
        }
        b = b.clear_on_success(self.clear_on_success);
        match &self.redis_url {
            None => Ok(b),
            #[cfg(feature = "redis")]
            Some(url) => {
                let mut shared = crate::lockout::SharedLockouts::connect(url).await?;
                if let Some(prefix) = &self.prefix {
                    shared = shared.prefix(prefix);
                }
                Ok(b.shared(shared))
            }
            #[cfg(not(feature = "redis"))]
            Some(_) => Err(invalid(
                "lockouts.redis_url",
                "sharing lockouts through Redis needs tollgate's `redis` feature",
            )),
        }
    }

    /// Builds the layer, named `name`.
    ///
    /// # Errors
    /// As [`builder`](Self::builder) and [`LockoutBuilder::build`].
    pub async fn layer(&self, name: &str) -> Result<LockoutLayer, ConfigError> {
        self.builder(name).await?.build()
    }
}
