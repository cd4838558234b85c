//! [`RateLimitBuilder`]: policies, keys, tiers and failure behaviour,
//! checked at `build`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use http::request::Parts;

use super::client_ip::TrustedProxies;
use super::headers::{self, HeaderStyle};
use super::key::KeyBy;
use super::layer::RateLimitLayer;
use super::limiter::{MissingKey, OnStoreError, PEER_SOURCES, Predicate, Shared};
use super::quota::{Policy, Quota};
use super::store::{LocalStore, RateLimitStore};
use crate::error::ConfigError;
use crate::observe::RateMetrics;
use crate::reject::DefaultResponder;

impl RateLimitLayer {
    /// Starts a layer whose default policy is `name` with `quota`.
    pub fn builder(name: impl Into<String>, quota: Quota) -> RateLimitBuilder<LocalStore> {
        RateLimitBuilder::new(name.into(), quota)
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
    max_cost: Option<u32>,
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

impl RateLimitBuilder<LocalStore> {
    pub(crate) fn new(name: String, quota: Quota) -> Self {
        Self {
            store: LocalStore::new(),
            key: KeyBy::subject_or_client_ip(TrustedProxies::none()),
            policies: vec![(name, quota)],
            tiers: Vec::new(),
            authenticated: None,
            exempt: Vec::new(),
            style: HeaderStyle::default(),
            missing_key: MissingKey::default(),
            on_store_error: OnStoreError::default(),
            shadow: false,
            peer_addr_inserted: false,
            max_cost: None,
        }
    }
}

impl<St> RateLimitBuilder<St> {
    /// What requests are counted by (default: the verified subject, else the
    /// peer address).
    pub fn key(mut self, key: KeyBy) -> Self {
        self.key = key;
        self
    }

    /// The policy for requests that carry an [`Identity`](crate::Identity) (set by
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

    /// Lets the handler charge each request by cost: the layer charges one
    /// unit at the door, as always, and puts a [`Cost`](super::Cost) in the
    /// request's extensions for the handler to charge its estimate before
    /// the work and settle the actual cost after, against the same bucket.
    /// One request costs at most `max_cost` units in all (and at most the
    /// policy's burst): a larger charge is refused without being tried.
    ///
    /// Quotas then count units, not requests: `Quota::per_minute(1000)`
    /// with this is a thousand units a minute. The response's `RateLimit`
    /// header reports what is left after the last charge. Every store
    /// charges by cost: the local one exactly, Redis exactly in one script
    /// call, local-first Redis from the key's claim when it covers the
    /// charge and in Redis otherwise (see
    /// [`RateLimitStore::spend`](super::RateLimitStore::spend)).
    ///
    /// `max_cost` 0 is refused by [`build`](Self::build).
    pub fn charged_by_handler(mut self, max_cost: u32) -> Self {
        self.max_cost = Some(max_cost);
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
            max_cost: self.max_cost,
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
        if self.max_cost == Some(0) {
            return Err(ConfigError::new(
                "max_cost",
                "a request charged by cost costs at least its one unit at the door: max_cost must \
                 be 1 or more",
            ));
        }
        self.store.prepare(&policies)?;
        let cost = self.max_cost.map(|max_cost| super::limiter::CostSettings {
            max_cost,
            metrics: policies
                .iter()
                .map(|p| {
                    crate::observe::EventMetrics::new(
                        crate::observe::names::RATE_LIMIT_COST_UNITS,
                        "policy",
                        Arc::clone(&p.name),
                    )
                })
                .collect(),
        });
        let policy_headers = policies.iter().map(headers::policy_headers).collect();
        let metrics = RateMetrics::new(policies.iter().map(|p| Arc::clone(&p.name)).collect());
        let needs_auth = self.key.needs_identity() || self.authenticated.is_some();
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                store: self.store,
                key: self.key,
                policies,
                headers: policy_headers,
                tiers: self.tiers,
                authenticated: self.authenticated,
                exempt: self.exempt,
                style: self.style,
                missing_key: self.missing_key,
                needs_auth,
                on_store_error: self.on_store_error,
                store_failures: AtomicU64::new(0),
                shadow: self.shadow,
                metrics,
                store_warnings: crate::observe::WarnEvery::new(10),
                warned_no_peer: AtomicBool::new(false),
                warned_no_auth: AtomicBool::new(false),
                cost,
            }),
            responder: DefaultResponder,
        })
    }
}

impl KeyBy {
    /// For the other layers that key by client (the lockout): the same check
    /// as a rate limit's, naming `setting`.
    pub(crate) fn check_peer_source(
        &self,
        inserted: bool,
        setting: &'static str,
    ) -> Result<(), ConfigError> {
        check_peer_source(self, PEER_SOURCES, inserted)
            .map_err(|e| ConfigError::new(setting, e.reason().to_owned()))
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
