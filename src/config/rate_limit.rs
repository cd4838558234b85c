//! The `[rate_limit]` table.

use serde::Deserialize;

use super::invalid;
use crate::error::ConfigError;
use crate::rate_limit::store::{AnyStore, LocalStore};
use crate::rate_limit::{
    ForwardedHeader, HeaderStyle, KeyBy, MissingKey, OnStoreError, Quota, RateLimitBuilder,
    RateLimitLayer, TrustedProxies,
};

/// What requests are counted by: see [`KeyBy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyByConfig {
    /// [`KeyBy::global`].
    Global,
    /// [`KeyBy::peer_ip`].
    PeerIp,
    /// [`KeyBy::client_ip`] with `trusted_proxies` or `trusted_hops`.
    ClientIp,
    /// [`KeyBy::subject_or_client_ip`] (the default).
    #[default]
    SubjectOrClientIp,
    /// [`KeyBy::header`] with `key_header`.
    Header,
}

/// Which forwarding header trusted proxies write: see [`ForwardedHeader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaderConfig {
    /// `x-forwarded-for` (the default).
    XForwardedFor,
    /// RFC 7239 `forwarded`.
    Forwarded,
}

/// Which rate-limit headers responses carry: see [`HeaderStyle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyleConfig {
    /// The IETF fields (the default).
    Ietf,
    /// `X-RateLimit-*`.
    Legacy,
    /// Both.
    Both,
    /// None.
    Off,
}

/// What to do with requests that have no key: see [`MissingKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingKeyConfig {
    /// One shared bucket (the default).
    SharedBucket,
    /// Unlimited.
    Allow,
}

/// What to do when the store fails: see [`OnStoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreErrorConfig {
    /// Allow the request (the default).
    FailOpen,
    /// Refuse it with 503.
    FailClosed,
}

/// A named quota: `name` and exactly one of `per_second`, `per_minute`,
/// `per_hour`, optionally `burst`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Policy name (an HTTP token).
    pub name: String,
    /// Requests per second.
    pub per_second: Option<u32>,
    /// Requests per minute.
    pub per_minute: Option<u32>,
    /// Requests per hour.
    pub per_hour: Option<u32>,
    /// Burst size (default: the count).
    pub burst: Option<u32>,
}

/// Redis settings (feature `redis`): see
/// [`RedisStore`](crate::rate_limit::store::RedisStore).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` (one server, or any node of a cluster),
    /// `redis+cluster://host:port,host:port` (a cluster's seed nodes), or
    /// `redis+sentinel://host:26379,host:26379/mymaster[/db]` (the primary
    /// Redis Sentinel names, followed through failovers).
    pub url: String,
    /// Key prefix (default `tollgate`).
    pub prefix: Option<String>,
    /// Per-decision timeout in milliseconds (default 50).
    pub timeout_ms: Option<u64>,
    /// The local deny cache of exact mode (default true).
    pub deny_cache: Option<bool>,
    /// Local-first mode, synced every this many milliseconds (at least 1);
    /// absent: exact mode, one round trip per decision.
    pub sync_interval_ms: Option<u64>,
}

/// The `[rate_limit]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `global`, `peer_ip`, `client_ip`, `subject_or_client_ip` (default) or `header`.
    #[serde(default)]
    pub key: KeyByConfig,
    /// The header for `key = "header"`.
    pub key_header: Option<String>,
    /// CIDRs of trusted proxies.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Number of trusted proxy hops (instead of CIDRs).
    pub trusted_hops: Option<usize>,
    /// `x-forwarded-for` (default) or `forwarded`.
    pub forwarded_header: Option<ForwardedHeaderConfig>,
    /// IPv6 prefix length sharing a bucket (default 64).
    pub v6_prefix: Option<u8>,
    /// `ietf` (default), `legacy`, `both` or `off`.
    pub headers: Option<HeaderStyleConfig>,
    /// The default policy.
    pub default: QuotaConfig,
    /// The policy for authenticated callers.
    pub authenticated: Option<QuotaConfig>,
    /// Cap on keys held in this process: the local store's, or the Redis
    /// store's in local-first mode.
    pub max_keys: Option<usize>,
    /// `shared_bucket` (default) or `allow`.
    pub on_missing_key: Option<MissingKeyConfig>,
    /// `fail_open` (default) or `fail_closed`.
    pub on_store_error: Option<OnStoreErrorConfig>,
    /// Shadow mode.
    #[serde(default)]
    pub shadow: bool,
    /// Requests are charged by cost: the handler charges through the
    /// request's `Cost`, each request at most this many units in all
    /// (`RateLimitBuilder::charged_by_handler`). Absent: one unit each.
    pub max_cost: Option<u32>,
    /// Keep state in Redis.
    pub redis: Option<RedisConfig>,
}

impl QuotaConfig {
    fn quota(&self, setting: &'static str) -> Result<Quota, ConfigError> {
        let quota = match (self.per_second, self.per_minute, self.per_hour) {
            (Some(n), None, None) => Quota::per_second(n),
            (None, Some(n), None) => Quota::per_minute(n),
            (None, None, Some(n)) => Quota::per_hour(n),
            _ => {
                return Err(invalid(
                    setting,
                    "give exactly one of per_second, per_minute, per_hour",
                ));
            }
        };
        let quota = match self.burst {
            Some(b) => quota.burst(b),
            None => quota,
        };
        quota
            .validate(&self.name)
            .map_err(|e| invalid(setting, e.reason().to_owned()))?;
        Ok(quota)
    }
}

impl RateLimitConfig {
    /// A builder with everything the file says; add tiers and exemptions,
    /// then `build()`. Async because a Redis store connects here.
    ///
    /// # Errors
    /// Invalid values, with the field named; Redis without the `redis`
    /// feature or unreachable.
    pub async fn builder(&self) -> Result<RateLimitBuilder<AnyStore>, ConfigError> {
        let mut proxies = match self.trusted_hops {
            Some(hops) if self.trusted_proxies.is_empty() => TrustedProxies::hops(hops),
            Some(_) => {
                return Err(invalid(
                    "rate_limit.trusted_hops",
                    "give trusted_proxies or trusted_hops, not both",
                ));
            }
            None => TrustedProxies::cidrs(&self.trusted_proxies)
                .map_err(|e| invalid("rate_limit.trusted_proxies", e.reason().to_owned()))?,
        };
        if let Some(header) = self.forwarded_header {
            proxies = proxies.header(match header {
                ForwardedHeaderConfig::XForwardedFor => ForwardedHeader::XForwardedFor,
                ForwardedHeaderConfig::Forwarded => ForwardedHeader::Forwarded,
            });
        }
        let mut key = match self.key {
            KeyByConfig::Global => KeyBy::global(),
            KeyByConfig::PeerIp => KeyBy::peer_ip(),
            KeyByConfig::ClientIp => KeyBy::client_ip(proxies),
            KeyByConfig::SubjectOrClientIp => KeyBy::subject_or_client_ip(proxies),
            KeyByConfig::Header => {
                let name = self.key_header.as_deref().ok_or_else(|| {
                    invalid("rate_limit.key_header", "key = \"header\" needs key_header")
                })?;
                let name = http::HeaderName::try_from(name).map_err(|_| {
                    invalid(
                        "rate_limit.key_header",
                        format!("{name:?} is not a header name"),
                    )
                })?;
                KeyBy::header(name)
            }
        };
        if let Some(prefix) = self.v6_prefix {
            key = key
                .v6_prefix(prefix)
                .map_err(|e| invalid("rate_limit.v6_prefix", e.reason().to_owned()))?;
        }
        let mut b = RateLimitLayer::builder(
            self.default.name.as_str(),
            self.default.quota("rate_limit.default")?,
        )
        .key(key);
        if let Some(auth) = &self.authenticated {
            b = b.authenticated(auth.name.as_str(), auth.quota("rate_limit.authenticated")?);
        }
        if let Some(style) = self.headers {
            b = b.headers(match style {
                HeaderStyleConfig::Ietf => HeaderStyle::Ietf,
                HeaderStyleConfig::Legacy => HeaderStyle::Legacy,
                HeaderStyleConfig::Both => HeaderStyle::Both,
                HeaderStyleConfig::Off => HeaderStyle::Off,
            });
        }
        if let Some(missing) = self.on_missing_key {
            b = b.on_missing_key(match missing {
                MissingKeyConfig::SharedBucket => MissingKey::SharedBucket,
                MissingKeyConfig::Allow => MissingKey::Allow,
            });
        }
        if let Some(on_error) = self.on_store_error {
            b = b.on_store_error(match on_error {
                OnStoreErrorConfig::FailOpen => OnStoreError::FailOpen,
                OnStoreErrorConfig::FailClosed => OnStoreError::FailClosed,
            });
        }
        b = b.shadow(self.shadow);
        if let Some(max_cost) = self.max_cost {
            b = b.charged_by_handler(max_cost);
        }
        let store = match &self.redis {
            None => {
                let mut local = LocalStore::new();
                if let Some(max) = self.max_keys {
                    local = local.max_keys(max);
                }
                AnyStore::Local(local)
            }
            #[cfg(feature = "redis")]
            Some(redis) => {
                let mut store = crate::rate_limit::store::RedisStore::connect(&redis.url).await?;
                if let Some(prefix) = &redis.prefix {
                    store = store.prefix(prefix.as_str());
                }
                if let Some(ms) = redis.timeout_ms {
                    store = store.timeout(std::time::Duration::from_millis(ms));
                }
                if let Some(on) = redis.deny_cache {
                    store = store.deny_cache(on);
                }
                if let Some(ms) = redis.sync_interval_ms {
                    if ms == 0 {
                        return Err(invalid(
                            "rate_limit.redis.sync_interval_ms",
                            "give at least 1 (milliseconds), or leave it out for exact mode",
                        ));
                    }
                    store = store.local_first(std::time::Duration::from_millis(ms));
                }
                if let Some(max) = self.max_keys {
                    store = store.max_local_keys(max);
                }
                AnyStore::Redis(store)
            }
            #[cfg(not(feature = "redis"))]
            Some(_) => {
                return Err(invalid(
                    "rate_limit.redis",
                    "a Redis store needs tollgate's `redis` feature",
                ));
            }
        };
        Ok(b.store(store))
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// As [`builder`](Self::builder) and [`RateLimitBuilder::build`].
    pub async fn layer(&self) -> Result<RateLimitLayer<AnyStore>, ConfigError> {
        self.builder().await?.build()
    }
}
