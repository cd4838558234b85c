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
//! [rate_limit]
//! key = "subject_or_client_ip"        # global | peer_ip | client_ip | subject_or_client_ip | header
//! trusted_proxies = ["10.0.0.0/8"]
//! headers = "ietf"                    # ietf | legacy | both | off
//! default = { name = "anonymous", per_minute = 60, burst = 20 }
//! authenticated = { name = "registered", per_minute = 600, burst = 100 }
//! # redis = { url = "redis://127.0.0.1:6379", prefix = "myapi", timeout_ms = 50 }
//! ```
//!
//! Claim-based tiers, exemptions and authorisation hooks are code: the
//! builders returned here take them.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::{AuthMode, JwtAuthBuilder, JwtAuthLayer, Key};
use crate::error::ConfigError;
use crate::rate_limit::store::{Check, Decision, LocalStore, RateLimitStore, StoreError};
use crate::rate_limit::{
    ForwardedHeader, HeaderStyle, KeyBy, MissingKey, OnStoreError, Policy, Quota, RateKey,
    RateLimitBuilder, RateLimitLayer, TrustedProxies,
};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TollgateConfig {
    /// The `[auth]` table.
    pub auth: Option<AuthConfig>,
    /// The `[rate_limit]` table.
    pub rate_limit: Option<RateLimitConfig>,
}

/// Where a token is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    /// The cookie named by `cookie`.
    Cookie,
    /// `Authorization: Bearer`.
    Bearer,
}

/// A verification key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyConfig {
    /// An HMAC secret, from an environment variable (preferred) or inline.
    Hmac {
        /// Environment variable holding the secret.
        secret_env: Option<String>,
        /// The secret itself (keep files with secrets out of version control).
        secret: Option<String>,
        /// Key id.
        kid: Option<String>,
    },
    /// An RSA public key in a PEM file.
    RsaPem {
        /// Path of the PEM file.
        path: String,
        /// Key id.
        kid: Option<String>,
    },
    /// An EC (P-256, P-384) public key in a PEM file.
    EcPem {
        /// Path of the PEM file.
        path: String,
        /// Key id.
        kid: Option<String>,
    },
    /// An Ed25519 public key in a PEM file.
    EdPem {
        /// Path of the PEM file.
        path: String,
        /// Key id.
        kid: Option<String>,
    },
}

/// The `[auth]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Name of the session cookie.
    pub cookie: Option<String>,
    /// Token sources in order (default: the cookie if named, then bearer).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// `required` (default), `optional` or `lenient`.
    pub mode: Option<String>,
    /// Trusted issuers (`iss`, exact).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock-skew allowance in seconds (default 60).
    pub leeway_secs: Option<u64>,
    /// Whether `exp` is required (default true).
    pub require_exp: Option<bool>,
    /// Required header `typ`.
    pub typ: Option<String>,
    /// Maximum `exp - iat` in seconds.
    pub max_lifetime_secs: Option<u64>,
    /// Claims that must be present.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Token length cap in bytes (default 8192).
    pub max_token_len: Option<usize>,
    /// Verified-token cache entries (default 0: off).
    pub cache: Option<usize>,
    /// Verified-token cache TTL in seconds (default 300).
    pub cache_ttl_secs: Option<u64>,
    /// Shadow mode: decide and count, never refuse.
    #[serde(default)]
    pub shadow: bool,
    /// Static keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS URL (feature `jwks`).
    pub jwks_url: Option<String>,
    /// An OIDC issuer whose discovery document names the JWKS (feature `jwks`).
    pub oidc_issuer: Option<String>,
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

/// Redis settings (feature `redis`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Key prefix (default `tollgate`).
    pub prefix: Option<String>,
    /// Per-decision timeout in milliseconds (default 50).
    pub timeout_ms: Option<u64>,
    /// The local deny cache (default true).
    pub deny_cache: Option<bool>,
}

/// The `[rate_limit]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `global`, `peer_ip`, `client_ip`, `subject_or_client_ip` (default) or `header`.
    pub key: Option<String>,
    /// The header for `key = "header"`.
    pub key_header: Option<String>,
    /// CIDRs of trusted proxies.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Number of trusted proxy hops (instead of CIDRs).
    pub trusted_hops: Option<usize>,
    /// `x-forwarded-for` (default) or `forwarded`.
    pub forwarded_header: Option<String>,
    /// IPv6 prefix length sharing a bucket (default 64).
    pub v6_prefix: Option<u8>,
    /// `ietf` (default), `legacy`, `both` or `off`.
    pub headers: Option<String>,
    /// The default policy.
    pub default: QuotaConfig,
    /// The policy for authenticated callers.
    pub authenticated: Option<QuotaConfig>,
    /// Local store key cap.
    pub max_keys: Option<usize>,
    /// `shared_bucket` (default) or `allow`.
    pub on_missing_key: Option<String>,
    /// `fail_open` (default) or `fail_closed`.
    pub on_store_error: Option<String>,
    /// Shadow mode.
    #[serde(default)]
    pub shadow: bool,
    /// Keep state in Redis.
    pub redis: Option<RedisConfig>,
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(setting, reason.into())
}

impl TollgateConfig {
    /// Parses TOML.
    ///
    /// # Errors
    /// Syntax errors and unknown or mistyped fields, with the field and line.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| invalid("config", e.to_string().trim().to_owned()))
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

fn read_pem(path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid("auth.keys", format!("cannot read {path}: {e}")))
}

impl KeyConfig {
    fn key(&self) -> Result<Key, ConfigError> {
        let (key, kid) = match self {
            Self::Hmac {
                secret_env,
                secret,
                kid,
            } => {
                let secret = match (secret_env, secret) {
                    (Some(var), None) => std::env::var(var).map_err(|_| {
                        invalid(
                            "auth.keys",
                            format!("environment variable {var} is not set"),
                        )
                    })?,
                    (None, Some(secret)) => secret.clone(),
                    _ => {
                        return Err(invalid(
                            "auth.keys",
                            "an hmac key needs exactly one of secret_env, secret",
                        ));
                    }
                };
                (Key::hmac(secret)?, kid)
            }
            Self::RsaPem { path, kid } => (Key::rsa_pem(read_pem(path)?)?, kid),
            Self::EcPem { path, kid } => (Key::ec_pem(read_pem(path)?)?, kid),
            Self::EdPem { path, kid } => (Key::ed_pem(read_pem(path)?)?, kid),
        };
        Ok(match kid {
            Some(kid) => key.kid(kid.as_str()),
            None => key,
        })
    }
}

impl AuthConfig {
    /// A builder with everything the file says; add hooks, then `build()`.
    /// Async because remote keys are fetched once here.
    ///
    /// # Errors
    /// Invalid values, with the field named; unreadable key files; remote
    /// keys without the `jwks` feature or unreachable.
    pub async fn builder<T>(&self) -> Result<JwtAuthBuilder<T>, ConfigError> {
        let mut b = JwtAuthLayer::<T>::builder();
        let sources = if self.sources.is_empty() {
            let mut s = Vec::new();
            if self.cookie.is_some() {
                s.push(SourceConfig::Cookie);
            }
            s.push(SourceConfig::Bearer);
            s
        } else {
            self.sources.clone()
        };
        for source in sources {
            b = match source {
                SourceConfig::Cookie => {
                    let name = self.cookie.as_ref().ok_or_else(|| {
                        invalid(
                            "auth.sources",
                            "\"cookie\" is listed but auth.cookie names no cookie",
                        )
                    })?;
                    b.cookie(name.as_str())
                }
                SourceConfig::Bearer => b.bearer(),
            };
        }
        if let Some(mode) = &self.mode {
            b = b.mode(match mode.as_str() {
                "required" => AuthMode::Required,
                "optional" => AuthMode::Optional,
                "lenient" => AuthMode::Lenient,
                other => {
                    return Err(invalid(
                        "auth.mode",
                        format!("{other:?}: use required, optional or lenient"),
                    ));
                }
            });
        }
        for issuer in &self.issuers {
            b = b.issuer(issuer.as_str());
        }
        for audience in &self.audiences {
            b = b.audience(audience.as_str());
        }
        if let Some(secs) = self.leeway_secs {
            b = b.leeway(Duration::from_secs(secs));
        }
        if let Some(require) = self.require_exp {
            b = b.require_exp(require);
        }
        if let Some(typ) = &self.typ {
            b = b.typ(typ.as_str());
        }
        if let Some(secs) = self.max_lifetime_secs {
            b = b.max_lifetime(Duration::from_secs(secs));
        }
        for claim in &self.required_claims {
            b = b.require_claim(claim.as_str());
        }
        if let Some(len) = self.max_token_len {
            b = b.max_token_len(len);
        }
        if let Some(entries) = self.cache {
            b = b.cache(entries);
        }
        if let Some(secs) = self.cache_ttl_secs {
            b = b.cache_ttl(Duration::from_secs(secs));
        }
        b = b.shadow(self.shadow);
        for key in &self.keys {
            b = b.key(key.key()?);
        }
        match (&self.jwks_url, &self.oidc_issuer) {
            (None, None) => {}
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth.jwks_url",
                    "give jwks_url or oidc_issuer, not both",
                ));
            }
            #[cfg(feature = "jwks")]
            (Some(url), None) => {
                b = b.remote_keys(crate::auth::RemoteKeys::jwks(url.as_str()).start().await?)
            }
            #[cfg(feature = "jwks")]
            (None, Some(issuer)) => {
                b = b.remote_keys(
                    crate::auth::RemoteKeys::oidc_issuer(issuer.as_str())
                        .start()
                        .await?,
                )
            }
            #[cfg(not(feature = "jwks"))]
            _ => {
                return Err(invalid(
                    "auth.jwks_url",
                    "remote keys need tollgate's `jwks` feature",
                ));
            }
        }
        Ok(b)
    }

    /// Builds the layer.
    ///
    /// # Errors
    /// As [`builder`](Self::builder) and [`JwtAuthBuilder::build`].
    pub async fn layer<T>(&self) -> Result<JwtAuthLayer<T>, ConfigError> {
        self.builder::<T>().await?.build()
    }
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

/// The store a configuration file chose: local, or Redis.
#[derive(Debug)]
pub enum ConfiguredStore {
    /// In-process.
    Local(LocalStore),
    /// Redis (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(crate::rate_limit::store::RedisStore),
}

impl RateLimitStore for ConfiguredStore {
    type Future = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>;

    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError> {
        match self {
            Self::Local(s) => s.prepare(policies),
            #[cfg(feature = "redis")]
            Self::Redis(s) => s.prepare(policies),
        }
    }

    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future> {
        match self {
            // Local decisions are always ready: the boxed type is never built.
            Self::Local(s) => match s.check(policy, key) {
                Check::Ready(d) => Check::Ready(d),
                Check::Pending(f) => Check::Pending(Box::pin(f)),
            },
            #[cfg(feature = "redis")]
            Self::Redis(s) => s.check(policy, key),
        }
    }

    fn key_count(&self) -> usize {
        match self {
            Self::Local(s) => s.key_count(),
            #[cfg(feature = "redis")]
            Self::Redis(s) => s.key_count(),
        }
    }
}

impl RateLimitConfig {
    /// A builder with everything the file says; add tiers and exemptions,
    /// then `build()`. Async because a Redis store connects here.
    ///
    /// # Errors
    /// Invalid values, with the field named; Redis without the `redis`
    /// feature or unreachable.
    pub async fn builder(&self) -> Result<RateLimitBuilder<ConfiguredStore>, ConfigError> {
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
        if let Some(header) = &self.forwarded_header {
            proxies = proxies.header(match header.as_str() {
                "x-forwarded-for" => ForwardedHeader::XForwardedFor,
                "forwarded" => ForwardedHeader::Forwarded,
                other => {
                    return Err(invalid(
                        "rate_limit.forwarded_header",
                        format!("{other:?}: use x-forwarded-for or forwarded"),
                    ));
                }
            });
        }
        let mut key = match self.key.as_deref().unwrap_or("subject_or_client_ip") {
            "global" => KeyBy::global(),
            "peer_ip" => KeyBy::peer_ip(),
            "client_ip" => KeyBy::client_ip(proxies),
            "subject_or_client_ip" => KeyBy::subject_or_client_ip(proxies),
            "header" => {
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
            other => {
                return Err(invalid(
                    "rate_limit.key",
                    format!(
                        "{other:?}: use global, peer_ip, client_ip, subject_or_client_ip or header"
                    ),
                ));
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
        if let Some(style) = &self.headers {
            b = b.headers(match style.as_str() {
                "ietf" => HeaderStyle::Ietf,
                "legacy" => HeaderStyle::Legacy,
                "both" => HeaderStyle::Both,
                "off" => HeaderStyle::Off,
                other => {
                    return Err(invalid(
                        "rate_limit.headers",
                        format!("{other:?}: use ietf, legacy, both or off"),
                    ));
                }
            });
        }
        if let Some(missing) = &self.on_missing_key {
            b = b.on_missing_key(match missing.as_str() {
                "shared_bucket" => MissingKey::SharedBucket,
                "allow" => MissingKey::Allow,
                other => {
                    return Err(invalid(
                        "rate_limit.on_missing_key",
                        format!("{other:?}: use shared_bucket or allow"),
                    ));
                }
            });
        }
        if let Some(on_error) = &self.on_store_error {
            b = b.on_store_error(match on_error.as_str() {
                "fail_open" => OnStoreError::FailOpen,
                "fail_closed" => OnStoreError::FailClosed,
                other => {
                    return Err(invalid(
                        "rate_limit.on_store_error",
                        format!("{other:?}: use fail_open or fail_closed"),
                    ));
                }
            });
        }
        b = b.shadow(self.shadow);
        let store = match &self.redis {
            None => {
                let mut local = LocalStore::new();
                if let Some(max) = self.max_keys {
                    local = local.max_keys(max);
                }
                ConfiguredStore::Local(local)
            }
            #[cfg(feature = "redis")]
            Some(redis) => {
                let mut store = crate::rate_limit::store::RedisStore::connect(&redis.url).await?;
                if let Some(prefix) = &redis.prefix {
                    store = store.prefix(prefix.as_str());
                }
                if let Some(ms) = redis.timeout_ms {
                    store = store.timeout(Duration::from_millis(ms));
                }
                if let Some(on) = redis.deny_cache {
                    store = store.deny_cache(on);
                }
                ConfiguredStore::Redis(store)
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
    pub async fn layer(&self) -> Result<RateLimitLayer<ConfiguredStore>, ConfigError> {
        self.builder().await?.build()
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
