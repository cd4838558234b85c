//! [`AnyStore`]: one store type for a choice made at run time.

use std::future::Future;
use std::pin::Pin;

use super::{Check, Decision, LocalStore, RateLimitStore, Spend, StoreError};
use crate::error::ConfigError;
use crate::rate_limit::key::RateKey;
use crate::rate_limit::quota::Policy;

/// A store chosen at run time: local, or Redis — what a configuration file
/// builds, and what a service that picks its store from the environment can
/// use as one type. Local decisions stay synchronous.
#[derive(Debug)]
pub enum AnyStore {
    /// In-process.
    Local(LocalStore),
    /// Redis (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(super::RedisStore),
}

impl RateLimitStore for AnyStore {
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

    fn spend(&self, policy: &Policy, key: &RateKey, spend: Spend) -> Check<Self::Future> {
        match self {
            Self::Local(s) => match s.spend(policy, key, spend) {
                Check::Ready(d) => Check::Ready(d),
                Check::Pending(f) => Check::Pending(Box::pin(f)),
            },
            #[cfg(feature = "redis")]
            Self::Redis(s) => s.spend(policy, key, spend),
        }
    }

    fn key_count(&self) -> usize {
        match self {
            Self::Local(s) => s.key_count(),
            #[cfg(feature = "redis")]
            Self::Redis(s) => s.key_count(),
        }
    }

    fn max_keys(&self) -> Option<usize> {
        match self {
            Self::Local(s) => s.max_keys_held(),
            #[cfg(feature = "redis")]
            Self::Redis(s) => RateLimitStore::max_keys(s),
        }
    }
}
