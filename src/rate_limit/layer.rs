use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use http::HeaderValue;
use http::request::Parts;
use tower_layer::Layer;

use super::client_ip::TrustedProxies;
use super::headers::{self, HeaderStyle};
use super::key::{KeyBy, RateKey};
use super::quota::{Policy, Quota};
use super::service::RateLimit;
use super::store::{LocalStore, RateLimitStore};
use crate::error::ConfigError;
use crate::identity::{Anonymous, Identity};

type Predicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// What to do with a request whose key cannot be found (e.g. no peer
/// address was recorded, or the keying header is absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Count all such requests in one shared bucket of the policy (default):
    /// still limited, never a 500.
    #[default]
    SharedBucket,
    /// Let them through unlimited, without rate-limit headers.
    Allow,
}

/// What to do when the store cannot decide (a remote store is slow or down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnStoreError {
    /// Let the request through, without rate-limit headers (default).
    #[default]
    FailOpen,
    /// Refuse it with 503 (gRPC 14, UNAVAILABLE).
    FailClosed,
    /// Refuse it with this status (gRPC 14, UNAVAILABLE).
    FailClosedWith(http::StatusCode),
}

pub(crate) struct Shared<St> {
    pub(crate) store: St,
    pub(crate) key: KeyBy,
    pub(crate) policies: Vec<Policy>,
    pub(crate) policy_values: Vec<HeaderValue>,
    tiers: Vec<(usize, Predicate)>,
    authenticated: Option<usize>,
    exempt: Vec<Predicate>,
    /// The key or a policy reads the auth layer's [`Identity`].
    needs_auth: bool,
    pub(crate) style: HeaderStyle,
    missing_key: MissingKey,
    pub(crate) on_store_error: OnStoreError,
    pub(crate) store_failures: AtomicU64,
    pub(crate) shadow: bool,
    pub(crate) decisions: AtomicU64,
    /// Seconds (since `created`) of the last store warning logged.
    last_warning: AtomicU64,
    created: Instant,
    /// Each misconfiguration seen at run time is logged once per layer.
    warned_no_peer: AtomicBool,
    warned_no_auth: AtomicBool,
}

/// Where a peer address can come from in this build.
const PEER_SOURCES: &[&str] = &[
    #[cfg(feature = "axum-connect-info")]
    "axum-connect-info",
    #[cfg(feature = "tonic")]
    "tonic",
];

/// Logs `message` at `warn` the first time `flag` is raised.
fn warn_once(flag: &AtomicBool, policy: &str, message: &str) {
    if !flag.swap(true, Ordering::Relaxed) {
        tracing::warn!(policy, "tollgate: {message}");
    }
}

/// At most one store-failure warning per this many seconds.
const WARN_EVERY_SECS: u64 = 10;

impl<St> Shared<St> {
    /// Counts a store failure; logs a warning at most every 10 s.
    pub(crate) fn store_failed(&self, error: &super::store::StoreError) {
        let failures = self.store_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.created.elapsed().as_secs() + WARN_EVERY_SECS;
        let last = self.last_warning.load(Ordering::Relaxed);
        if now >= last + WARN_EVERY_SECS
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%error, failures, on_error = ?self.on_store_error, "tollgate: rate-limit store failed");
        }
    }

    /// The policy and key of a request; `None`: not limited.
    pub(crate) fn classify(&self, parts: &Parts) -> Option<(usize, RateKey)> {
        if self.exempt.iter().any(|exempt| exempt(parts)) {
            return None;
        }
        let identified = parts.extensions.get::<Identity>().is_some();
        if self.needs_auth && !identified && parts.extensions.get::<Anonymous>().is_none() {
            warn_once(
                &self.warned_no_auth,
                &self.policies[0].name,
                "this rate limit keys on or tiers by the verified identity, but no JwtAuthLayer \
                 looked at the request: every caller is counted as anonymous. Put JwtAuthLayer \
                 outside this layer (ServiceBuilder: add it first; axum Router::layer: add it last)",
            );
        }
        let policy = self
            .tiers
            .iter()
            .find(|(_, applies)| applies(parts))
            .map(|(i, _)| *i)
            .or_else(|| self.authenticated.filter(|_| identified))
            .unwrap_or(0);
        let key = match self.key.key(parts) {
            Some(key) => key,
            None => {
                if self.key.needs_peer_addr() {
                    warn_once(
                        &self.warned_no_peer,
                        &self.policies[policy].name,
                        "a request carried no peer address, so this IP-keyed rate limit counts \
                         every such request in ONE shared bucket. Serve axum with \
                         `into_make_service_with_connect_info::<SocketAddr>()` (feature \
                         `axum-connect-info`), use tonic's Server (feature `tonic`), or insert \
                         `tollgate::rate_limit::PeerAddr` into the request extensions",
                    );
                }
                match self.missing_key {
                    MissingKey::SharedBucket => RateKey::unkeyed(),
                    MissingKey::Allow => return None,
                }
            }
        };
        Some((policy, key))
    }
}

/// Limits requests per key (client IP, verified subject, header, ...) with
/// GCRA quotas, adds rate-limit headers, and answers 429 (or gRPC
/// RESOURCE_EXHAUSTED) past the quota.
///
/// Build it with [`RateLimitLayer::builder`]. State is shared by all clones
/// (an axum router clones its layers per route), and the decision is made in
/// `call`, never in `poll_ready`. See the [module docs](crate::rate_limit).
pub struct RateLimitLayer<St = LocalStore> {
    pub(crate) shared: Arc<Shared<St>>,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("key", &self.shared.key)
            .field("policies", &self.shared.policies)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a layer whose default policy is `name` with `quota`.
    pub fn builder(name: impl Into<String>, quota: Quota) -> RateLimitBuilder<LocalStore> {
        RateLimitBuilder {
            store: LocalStore::new(),
            key: KeyBy::subject_or_client_ip(TrustedProxies::none()),
            policies: vec![(name.into(), quota)],
            tiers: Vec::new(),
            authenticated: None,
            exempt: Vec::new(),
            style: HeaderStyle::default(),
            missing_key: MissingKey::default(),
            on_store_error: OnStoreError::default(),
            shadow: false,
            peer_addr_inserted: false,
        }
    }
}

impl<St: RateLimitStore> RateLimitLayer<St> {
    /// The store (e.g. to read its key count or clean it).
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// How many keys the store holds now.
    pub fn key_count(&self) -> usize {
        self.shared.store.key_count()
    }

    /// How many decisions the store failed to make (timeouts, errors).
    pub fn store_failures(&self) -> u64 {
        self.shared.store_failures.load(Ordering::Relaxed)
    }

    /// The layer's policies; index 0 is the default one.
    pub fn policies(&self) -> &[Policy] {
        &self.shared.policies
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Configures a [`RateLimitLayer`].
pub struct RateLimitBuilder<St> {
    store: St,
    key: KeyBy,
    policies: Vec<(String, Quota)>,
    tiers: Vec<(usize, Predicate)>,
    authenticated: Option<usize>,
    exempt: Vec<Predicate>,
    style: HeaderStyle,
    missing_key: MissingKey,
    on_store_error: OnStoreError,
    shadow: bool,
    peer_addr_inserted: bool,
}

impl<St: fmt::Debug> fmt::Debug for RateLimitBuilder<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("store", &self.store)
            .field("key", &self.key)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

impl<St> RateLimitBuilder<St> {
    /// What requests are counted by (default: the verified subject, else the
    /// peer address).
    pub fn key(mut self, key: KeyBy) -> Self {
        self.key = key;
        self
    }

    /// The policy for requests that carry an [`Identity`] (set by
    /// [`JwtAuthLayer`](crate::auth::JwtAuthLayer) in front): a separate
    /// quota for registered callers.
    pub fn authenticated(mut self, name: impl Into<String>, quota: Quota) -> Self {
        self.policies.push((name.into(), quota));
        self.authenticated = Some(self.policies.len() - 1);
        self
    }

    /// A policy for requests `applies` selects, e.g. by claims:
    /// `|p| p.extensions.get::<Claims<User>>().is_some_and(|c| c.premium)`.
    /// Tiers are tried in the order added, before the authenticated and
    /// default policies.
    pub fn tier(
        mut self,
        name: impl Into<String>,
        quota: Quota,
        applies: impl Fn(&Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.policies.push((name.into(), quota));
        self.tiers
            .push((self.policies.len() - 1, Arc::new(applies)));
        self
    }

    /// Requests `exempt` selects are not limited and carry no headers.
    pub fn exempt(mut self, exempt: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.exempt.push(Arc::new(exempt));
        self
    }

    /// Which rate-limit headers responses carry (default IETF).
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// What to do with requests that have no key (default: a shared bucket).
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.missing_key = missing;
        self
    }

    /// What to do when the store fails (default: fail open).
    pub fn on_store_error(mut self, on_error: OnStoreError) -> Self {
        self.on_store_error = on_error;
        self
    }

    /// Shadow mode: decisions are computed, counted and logged but never
    /// enforced (no 429, no rate-limit headers) — to roll out a new limit
    /// and watch what it would do (nginx's `limit_req_dry_run`).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Declares that something in front of this layer inserts
    /// [`PeerAddr`](super::PeerAddr) into every request (a custom server,
    /// a test). Without it, [`build`](Self::build) refuses an address-keyed
    /// limit in a build that has no way to learn the peer address (neither
    /// feature `axum-connect-info` nor `tonic`): every client would share
    /// one bucket.
    pub fn peer_addr_inserted(mut self, inserted: bool) -> Self {
        self.peer_addr_inserted = inserted;
        self
    }

    /// Keeps state in `store` instead of a default [`LocalStore`].
    pub fn store<St2: RateLimitStore>(self, store: St2) -> RateLimitBuilder<St2> {
        RateLimitBuilder {
            store,
            key: self.key,
            policies: self.policies,
            tiers: self.tiers,
            authenticated: self.authenticated,
            exempt: self.exempt,
            style: self.style,
            missing_key: self.missing_key,
            on_store_error: self.on_store_error,
            shadow: self.shadow,
            peer_addr_inserted: self.peer_addr_inserted,
        }
    }
}

impl<St: RateLimitStore> RateLimitBuilder<St> {
    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    /// A policy name that is not an HTTP token or is used twice, a quota of
    /// zero, a store that cannot represent a policy, or an address-keyed
    /// limit in a build with no source of peer addresses (see
    /// [`peer_addr_inserted`](Self::peer_addr_inserted)).
    pub fn build(mut self) -> Result<RateLimitLayer<St>, ConfigError> {
        check_peer_source(&self.key, PEER_SOURCES, self.peer_addr_inserted)?;
        let mut policies = Vec::with_capacity(self.policies.len());
        for (index, (name, quota)) in self.policies.iter().enumerate() {
            if self.policies[..index].iter().any(|(n, _)| n == name) {
                return Err(ConfigError::new(
                    "policy",
                    format!("two policies are named {name:?}"),
                ));
            }
            policies.push(Policy::new(name, *quota, index)?);
        }
        self.store.prepare(&policies)?;
        let policy_values = policies.iter().map(headers::policy_value).collect();
        let needs_auth = self.key.needs_identity() || self.authenticated.is_some();
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                store: self.store,
                key: self.key,
                policies,
                policy_values,
                tiers: self.tiers,
                authenticated: self.authenticated,
                exempt: self.exempt,
                style: self.style,
                missing_key: self.missing_key,
                needs_auth,
                on_store_error: self.on_store_error,
                store_failures: AtomicU64::new(0),
                shadow: self.shadow,
                decisions: AtomicU64::new(0),
                last_warning: AtomicU64::new(0),
                created: Instant::now(),
                warned_no_peer: AtomicBool::new(false),
                warned_no_auth: AtomicBool::new(false),
            }),
        })
    }
}

/// An address-keyed limit needs a peer address; a build that cannot learn
/// one would put every client in one bucket.
fn check_peer_source(key: &KeyBy, sources: &[&str], inserted: bool) -> Result<(), ConfigError> {
    if key.needs_peer_addr() && sources.is_empty() && !inserted {
        return Err(ConfigError::new(
            "key",
            "this limit keys on the client address, but this build has no source of peer \
             addresses: enable feature `axum-connect-info` (and serve with \
             `into_make_service_with_connect_info::<SocketAddr>()`) or `tonic`, or insert \
             `PeerAddr` yourself and call `.peer_addr_inserted(true)`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_need_a_peer_source() {
        // Regression: with only feature `axum`, every client silently shared
        // one bucket.
        let ip = KeyBy::peer_ip();
        let err = check_peer_source(&ip, &[], false).unwrap_err();
        assert_eq!(err.setting(), "key");
        assert!(err.reason().contains("axum-connect-info"), "{err}");
        assert!(check_peer_source(&ip, &[], true).is_ok());
        assert!(check_peer_source(&ip, &["tonic"], false).is_ok());
        assert!(
            check_peer_source(
                &KeyBy::subject_or_client_ip(TrustedProxies::none()),
                &[],
                false
            )
            .is_err()
        );
        assert!(check_peer_source(&KeyBy::global(), &[], false).is_ok());
        assert!(check_peer_source(&KeyBy::header(http::header::HOST), &[], false).is_ok());
    }
}
