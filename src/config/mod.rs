//! Configuration for the whole stack from a TOML file (feature `config`).
//!
//! ```toml
//! [auth]
//! cookie = "da3"                      # the session cookie
//! sources = ["cookie", "bearer"]      # tried in this order
//! mode = "lenient"                    # required | optional | lenient
//! issuers = ["https://auth.example.com"]
//! audiences = ["api"]
//! leeway_secs = 60
//! cache = 10000                       # verified-token cache entries (0: off)
//! # keys: inline (secrets from the environment), PEM files, or remote
//! keys = [{ type = "hmac", secret_env = "JWT_SECRET", kid = "k1" }]
//! # jwks_url = "https://auth.example.com/.well-known/jwks.json"
//! # oidc_issuer = "https://auth.example.com"
//!
//! # [auth.revocation]                 # refuse revoked tokens (JwtAuthLayer::revocations)
//! # redis_url = "redis://127.0.0.1:6379"  # shared by replicas (feature `redis`); absent: per process
//! # prefix = "myapi:revoked"
//! # max_token_lifetime_secs = 900
//!
//! # [auth.refresh]                    # sliding refresh of the session cookie
//! # within_secs = 180                 # re-mint with 3 minutes or less left (signed by the hmac key above)
//! # max_session_secs = 604800         # absolute session length (default 7 days), however often it slides
//! # same_site = "lax"                 # strict | lax | none; also http_only, secure, path, domain, max_age_secs
//!
//! [rate_limit]
//! key = "subject_or_client_ip"        # global | peer_ip | client_ip | subject_or_client_ip | header
//! trusted_proxies = ["10.0.0.0/8"]
//! headers = "ietf"                    # ietf | legacy | both | off
//! default = { name = "anonymous", per_minute = 60, burst = 20 }
//! authenticated = { name = "registered", per_minute = 600, burst = 100 }
//!
//! # [limits.per-ip]                   # more limits, by name: each the fields of [rate_limit]
//! # key = "client_ip"
//! # default = { name = "per-ip", per_minute = 1200, burst = 200 }
//!
//! # [lockouts.login]                 # failed logins (401, 403, LoginFailed) lock a client out
//! # failures = 5                     # within window_secs; then backoff_secs, doubling to max_backoff_secs
//! # window_secs = 300
//! # backoff_secs = 60
//!
//! # [concurrency.in-flight]          # requests in flight at once per caller
//! # max = 16
//!
//! # [rate_limit.redis]                # state shared by replicas (feature `redis`)
//! # url = "redis://127.0.0.1:6379"    # one server or any cluster node; redis+cluster://a:7000,b:7001
//! #                                   # or Sentinel: redis+sentinel://s1:26379,s2:26379/mymaster
//! # prefix = "myapi"
//! # timeout_ms = 50
//! # sync_interval_ms = 50             # local-first mode; leave out for exact mode
//! ```
//!
//! Claim-based tiers, exemptions and authorisation hooks are code: the
//! builders returned here take them.
//!
//! Every field with a fixed set of values is a serde enum: a typo is refused
//! at parse time with the line, the column and the accepted values.

mod auth;
mod concurrency;
mod lockout;
mod rate_limit;
mod routes;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ConfigError;

pub use auth::{
    AuthConfig, KeyConfig, ModeConfig, RefreshConfig, RevocationConfig, SameSiteConfig,
    SourceConfig,
};
pub use concurrency::{ConcurrencyConfig, ConcurrencyKeyConfig};
pub use lockout::{LockoutConfig, LockoutKeyConfig};
pub use rate_limit::{
    ForwardedHeaderConfig, HeaderStyleConfig, KeyByConfig, MissingKeyConfig, OnStoreErrorConfig,
    QuotaConfig, RateLimitConfig, RedisConfig,
};
pub use routes::{AccessConfig, NeedsConfig, RoutesConfig, RuleConfig};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TollgateConfig {
    /// The `[auth]` table.
    pub auth: Option<AuthConfig>,
    /// The `[rate_limit]` table.
    pub rate_limit: Option<RateLimitConfig>,
    /// More rate limits, by name: `[limits.per-ip]`, each table the same
    /// fields as `[rate_limit]` (see [`limit`](Self::limit)).
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, RateLimitConfig>,
    /// Failure-driven lockouts, by name: `[lockouts.login]` (see
    /// [`lockout`](Self::lockout)).
    #[serde(default)]
    pub lockouts: std::collections::BTreeMap<String, LockoutConfig>,
    /// Per-caller concurrency limits, by name: `[concurrency.in-flight]`
    /// (see [`concurrency`](Self::concurrency)).
    #[serde(default)]
    pub concurrency: std::collections::BTreeMap<String, ConcurrencyConfig>,
    /// The `[routes]` table: per-route rules ([`route_table`](Self::route_table)).
    pub routes: Option<RoutesConfig>,
    /// The text parsed, for line numbers in later errors.
    #[serde(skip)]
    source: std::sync::Arc<str>,
}

pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(setting, reason.into())
}

impl TollgateConfig {
    /// Parses TOML.
    ///
    /// # Errors
    /// Syntax errors and unknown or mistyped fields, with the field and line.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Self =
            toml::from_str(text).map_err(|e| invalid("config", e.to_string().trim().to_owned()))?;
        config.source = text.into();
        if let Some(routes) = &config.routes {
            // Patterns, shadowing and methods now, with their lines; limit
            // names once the service says which limits it mounts.
            routes.table(text, None)?;
        }
        Ok(config)
    }

    /// The `[routes]` table as a [`RouteTable`](crate::routes::RouteTable)
    /// (`None` without the table). Every name a rule's `limits` lists must
    /// be a policy of `[rate_limit]` or one of `other_limits` (the policy
    /// names of limits built in code).
    ///
    /// # Errors
    /// See [`RoutesConfig::table`]; errors name the rule and its line.
    pub fn route_table(
        &self,
        other_limits: &[&str],
    ) -> Result<Option<crate::routes::RouteTable>, ConfigError> {
        let Some(routes) = &self.routes else {
            return Ok(None);
        };
        let mut known: Vec<String> = other_limits.iter().map(|&n| n.to_owned()).collect();
        for limit in self.rate_limit.iter().chain(self.limits.values()) {
            known.push(limit.default.name.clone());
            known.extend(limit.authenticated.as_ref().map(|q| q.name.clone()));
        }
        routes.table(&self.source, Some(&known)).map(Some)
    }

    /// The `[limits.NAME]` table: build its layer with
    /// [`RateLimitConfig::layer`] (or [`builder`](RateLimitConfig::builder)
    /// to add tiers and exemptions). The file holds the limits; the order
    /// of the stack stays in code, where the compiler checks it: route
    /// rules, then limits keyed by client IP, then auth, the CSRF guard and
    /// the limits keyed by the caller.
    pub fn limit(&self, name: &str) -> Option<&RateLimitConfig> {
        self.limits.get(name)
    }

    /// The `[lockouts.NAME]` table: build its layer with
    /// [`LockoutConfig::layer`]`(name)`.
    pub fn lockout(&self, name: &str) -> Option<&LockoutConfig> {
        self.lockouts.get(name)
    }

    /// The `[concurrency.NAME]` table: build its layer with
    /// [`ConcurrencyConfig::layer`]`(name)`.
    pub fn concurrency(&self, name: &str) -> Option<&ConcurrencyConfig> {
        self.concurrency.get(name)
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// As [`from_toml`](Self::from_toml), or the file cannot be read.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("config", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }
}

/// Deserializes `T` from TOML, for applications that embed tollgate's
/// tables in their own configuration file.
///
/// # Errors
/// As [`TollgateConfig::from_toml`].
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| invalid("config", e.to_string().trim().to_owned()))
}
