//! The `[auth]` table.

use std::time::Duration;

use serde::Deserialize;

use super::invalid;
use crate::auth::{AuthMode, JwtAuthBuilder, JwtAuthLayer, Key, Revocations};
use crate::error::ConfigError;
use crate::refresh::{Refresh, RefreshSessionLayer, SameSite, SigningKey};

/// `required` (default), `optional` or `lenient`: see [`AuthMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeConfig {
    /// [`AuthMode::Required`].
    Required,
    /// [`AuthMode::Optional`].
    Optional,
    /// [`AuthMode::Lenient`].
    Lenient,
}

impl From<ModeConfig> for AuthMode {
    fn from(mode: ModeConfig) -> Self {
        match mode {
            ModeConfig::Required => Self::Required,
            ModeConfig::Optional => Self::Optional,
            ModeConfig::Lenient => Self::Lenient,
        }
    }
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

/// `strict`, `lax` (default) or `none`: see [`SameSite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSiteConfig {
    /// [`SameSite::Strict`].
    Strict,
    /// [`SameSite::Lax`].
    Lax,
    /// [`SameSite::None`] (needs `secure`).
    None,
}

impl From<SameSiteConfig> for SameSite {
    fn from(same_site: SameSiteConfig) -> Self {
        match same_site {
            SameSiteConfig::Strict => Self::Strict,
            SameSiteConfig::Lax => Self::Lax,
            SameSiteConfig::None => Self::None,
        }
    }
}

/// The `[auth.refresh]` table: sliding refresh of the session cookie (see
/// [`Refresh`]). The signing key is not here: [`AuthConfig::refresh_layer`]
/// re-mints with the single `hmac` key of `auth.keys`; for any other key,
/// take the table out of the config and call [`RefreshConfig::refresh`]
/// with a [`SigningKey`] in code.
///
/// ```toml
/// [auth.refresh]
/// within_secs = 180             # re-mint with 3 minutes or less left
/// max_session_secs = 604800     # no session slides past its start + 7 days
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RefreshTable")]
pub struct RefreshConfig {
    /// Re-mint when the cookie's token has at most this many seconds left.
    pub within_secs: u64,
    /// Lifetime of re-minted tokens (default: the original's `exp - iat`).
    pub lifetime_secs: Option<u64>,
    /// The absolute length of a session in seconds, however often it slides
    /// (default 7 days): see [`Refresh::max_session`]. More than 0 and more
    /// than `within_secs`; checked at parse time.
    pub max_session_secs: Option<u64>,
    /// `HttpOnly` (default true).
    pub http_only: Option<bool>,
    /// `Secure` (default true).
    pub secure: Option<bool>,
    /// `strict`, `lax` (default) or `none`.
    pub same_site: Option<SameSiteConfig>,
    /// `Path` (default `/`).
    pub path: Option<String>,
    /// `Domain` (default none).
    pub domain: Option<String>,
    /// `Max-Age` in seconds (default: the new token's lifetime).
    pub max_age_secs: Option<u64>,
    /// Re-minted tokens remembered, so one old cookie mints once (default 10000).
    pub capacity: Option<usize>,
}

/// `[auth.refresh]` as written, checked into a [`RefreshConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshTable {
    within_secs: u64,
    lifetime_secs: Option<u64>,
    #[serde(default, deserialize_with = "positive_secs")]
    max_session_secs: Option<u64>,
    http_only: Option<bool>,
    secure: Option<bool>,
    same_site: Option<SameSiteConfig>,
    path: Option<String>,
    domain: Option<String>,
    max_age_secs: Option<u64>,
    capacity: Option<usize>,
}

/// A number of seconds that must be more than 0 (refused where it is
/// written, so the error names its line).
fn positive_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(serde::de::Error::custom(
            "max_session_secs must be more than 0 (and more than within_secs): the session's \
             absolute length in seconds, e.g. 604800 for 7 days",
        )),
        secs => Ok(Some(secs)),
    }
}

impl TryFrom<RefreshTable> for RefreshConfig {
    type Error = String;

    fn try_from(t: RefreshTable) -> Result<Self, String> {
        if let Some(max_session) = t.max_session_secs
            && max_session <= t.within_secs
        {
            return Err(format!(
                "max_session_secs ({max_session}) must be more than within_secs ({}), or a \
                 session could never slide",
                t.within_secs
            ));
        }
        Ok(Self {
            within_secs: t.within_secs,
            lifetime_secs: t.lifetime_secs,
            max_session_secs: t.max_session_secs,
            http_only: t.http_only,
            secure: t.secure,
            same_site: t.same_site,
            path: t.path,
            domain: t.domain,
            max_age_secs: t.max_age_secs,
            capacity: t.capacity,
        })
    }
}

impl RefreshConfig {
    /// The refresh this table describes, signing with `key`.
    pub fn refresh(&self, key: SigningKey) -> Refresh {
        let mut refresh = Refresh::new(key, Duration::from_secs(self.within_secs));
        if let Some(secs) = self.lifetime_secs {
            refresh = refresh.lifetime(Duration::from_secs(secs));
        }
        if let Some(secs) = self.max_session_secs {
            refresh = refresh.max_session(Duration::from_secs(secs));
        }
        if let Some(on) = self.http_only {
            refresh = refresh.http_only(on);
        }
        if let Some(on) = self.secure {
            refresh = refresh.secure(on);
        }
        if let Some(same_site) = self.same_site {
            refresh = refresh.same_site(same_site.into());
        }
        if let Some(path) = &self.path {
            refresh = refresh.path(path.as_str());
        }
        if let Some(domain) = &self.domain {
            refresh = refresh.domain(domain.as_str());
        }
        if let Some(secs) = self.max_age_secs {
            refresh = refresh.max_age(Duration::from_secs(secs));
        }
        if let Some(capacity) = self.capacity {
            refresh = refresh.capacity(capacity);
        }
        refresh
    }
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
    pub mode: Option<ModeConfig>,
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
    /// Accept symmetric (`oct`) keys from the remote set (default false: a
    /// published HMAC secret lets anyone mint tokens).
    #[serde(default)]
    pub jwks_allow_symmetric_keys: bool,
    /// Sliding refresh of the session cookie (`[auth.refresh]`).
    pub refresh: Option<RefreshConfig>,
    /// The `[auth.revocation]` table: the layer refuses revoked tokens
    /// (reach the set with [`JwtAuthLayer::revocations`]).
    pub revocation: Option<RevocationConfig>,
}

/// The `[auth.revocation]` table: revoked tokens, per process or shared by
/// the replicas through Redis. See [`Revocations`] and
/// [`RedisRevocations`](crate::auth::RedisRevocations).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// The Redis server shared by the replicas (feature `redis`):
    /// `redis://host:port/db`, or
    /// `redis+sentinel://host:26379,host:26379/mymaster[/db]` for the primary
    /// Redis Sentinel names; absent, revocations are per process.
    pub redis_url: Option<String>,
    /// Prefix of the Redis keys and channel (default `tollgate:revoked`).
    pub prefix: Option<String>,
    /// The longest lifetime of the tokens accepted, in seconds (default
    /// 86,400): how long a subject revocation is kept.
    pub max_token_lifetime_secs: Option<u64>,
    /// How often each replica checks it has seen every revocation, in
    /// milliseconds (default 500, at least 10).
    pub sync_interval_ms: Option<u64>,
    /// Whether revocations also arrive by pub/sub (default true).
    pub pubsub: Option<bool>,
}

impl RevocationConfig {
    /// The set the table describes, shared through Redis when `redis_url`
    /// is given (connected, subscribed and read here).
    ///
    /// # Errors
    /// Redis settings without `redis_url`; `redis_url` without the `redis`
    /// feature; the errors of [`Revocations::share`].
    pub async fn revocations(&self, leeway: Duration) -> Result<Revocations, ConfigError> {
        let mut revocations = Revocations::new().leeway(leeway);
        if let Some(secs) = self.max_token_lifetime_secs {
            revocations = revocations.max_token_lifetime(Duration::from_secs(secs));
        }
        let Some(url) = &self.redis_url else {
            if self.prefix.is_some() || self.sync_interval_ms.is_some() || self.pubsub.is_some() {
                return Err(invalid(
                    "auth.revocation",
                    "prefix, sync_interval_ms and pubsub configure sharing through Redis: \
                     give redis_url too",
                ));
            }
            return Ok(revocations);
        };
        #[cfg(feature = "redis")]
        {
            let mut redis = crate::auth::RedisRevocations::new(url.as_str());
            if let Some(prefix) = &self.prefix {
                redis = redis.prefix(prefix.as_str());
            }
            if let Some(ms) = self.sync_interval_ms {
                redis = redis.sync_interval(Duration::from_millis(ms));
            }
            if let Some(on) = self.pubsub {
                redis = redis.pubsub(on);
            }
            revocations
                .share(redis)
                .await
                .map_err(|e| invalid("auth.revocation", e.reason().to_owned()))
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = url;
            Err(invalid(
                "auth.revocation.redis_url",
                "revocations shared through Redis need tollgate's `redis` feature",
            ))
        }
    }
}

fn read_pem(path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid("auth.keys", format!("cannot read {path}: {e}")))
}

fn hmac_secret(
    secret_env: Option<&String>,
    secret: Option<&String>,
) -> Result<String, ConfigError> {
    match (secret_env, secret) {
        (Some(var), None) => std::env::var(var).map_err(|_| {
            invalid(
                "auth.keys",
                format!("environment variable {var} is not set"),
            )
        }),
        (None, Some(secret)) => Ok(secret.clone()),
        _ => Err(invalid(
            "auth.keys",
            "an hmac key needs exactly one of secret_env, secret",
        )),
    }
}

impl KeyConfig {
    fn key(&self) -> Result<Key, ConfigError> {
        let (key, kid) = match self {
            Self::Hmac {
                secret_env,
                secret,
                kid,
            } => (
                Key::hmac(hmac_secret(secret_env.as_ref(), secret.as_ref())?)?,
                kid,
            ),
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
    /// The signing key of `[auth.refresh]`: the single hmac key of `keys`.
    fn refresh_key(&self) -> Result<SigningKey, ConfigError> {
        let mut hmac = self.keys.iter().filter_map(|key| match key {
            KeyConfig::Hmac {
                secret_env,
                secret,
                kid,
            } => Some((secret_env, secret, kid)),
            _ => None,
        });
        let (Some((secret_env, secret, kid)), None) = (hmac.next(), hmac.next()) else {
            return Err(invalid(
                "auth.refresh",
                "re-minting needs one hmac key in auth.keys to sign with; for other keys leave \
                 [auth.refresh] to code: RefreshConfig::refresh(signing_key)",
            ));
        };
        let key = SigningKey::hmac(hmac_secret(secret_env.as_ref(), secret.as_ref())?)?;
        Ok(match kid {
            Some(kid) => key.kid(kid.as_str()),
            None => key,
        })
    }

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
        if let Some(mode) = self.mode {
            b = b.mode(mode.into());
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
        if let Some(revocation) = &self.revocation {
            let leeway = self
                .leeway_secs
                .map_or(crate::auth::DEFAULT_LEEWAY, Duration::from_secs);
            b = b.revocations(revocation.revocations(leeway).await?);
        }
        for key in &self.keys {
            b = b.key(key.key()?);
        }
        if self.refresh.is_some() {
            // Its layer is built by refresh_layer; a missing key is said here,
            // with the rest of the file's errors.
            self.refresh_key()?;
        }
        match (&self.jwks_url, &self.oidc_issuer) {
            (None, None) if self.keys.is_empty() => {
                return Err(invalid(
                    "auth.keys",
                    "no verification key: give `keys = [{ type = \"hmac\", secret_env = \"…\" }]` \
                     (or an RSA / EC / Ed25519 public key), `jwks_url` or `oidc_issuer`",
                ));
            }
            (None, None) => {}
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth.jwks_url",
                    "give jwks_url or oidc_issuer, not both",
                ));
            }
            #[cfg(feature = "jwks")]
            (Some(url), None) => {
                let keys = crate::auth::RemoteKeys::jwks(url.as_str())
                    .allow_symmetric_keys(self.jwks_allow_symmetric_keys);
                b = b.remote_keys(keys.start().await?);
            }
            #[cfg(feature = "jwks")]
            (None, Some(issuer)) => {
                let keys = crate::auth::RemoteKeys::oidc_issuer(issuer.as_str())
                    .allow_symmetric_keys(self.jwks_allow_symmetric_keys);
                b = b.remote_keys(keys.start().await?);
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

    /// Builds the layer. `[auth.refresh]` is a layer of its own, behind
    /// this one: [`refresh_layer`](Self::refresh_layer).
    ///
    /// # Errors
    /// As [`builder`](Self::builder) and [`JwtAuthBuilder::build`].
    pub async fn layer<T>(&self) -> Result<JwtAuthLayer<T>, ConfigError> {
        self.builder::<T>().await?.build()
    }

    /// The sliding refresh `[auth.refresh]` describes, built from `auth` (the
    /// layer this table built), signing with the single `hmac` key of
    /// `auth.keys`; `None` without the table. Mount it behind `auth`.
    ///
    /// # Errors
    /// No single hmac key to sign with, and as [`RefreshSessionLayer::new`].
    pub fn refresh_layer<T, R>(
        &self,
        auth: &JwtAuthLayer<T, R>,
    ) -> Result<Option<RefreshSessionLayer>, ConfigError> {
        let Some(refresh) = &self.refresh else {
            return Ok(None);
        };
        RefreshSessionLayer::new(auth, refresh.refresh(self.refresh_key()?)).map(Some)
    }
}
