//! Where rate-limit state lives: the seam between the layer and its backend.
//!
//! The layer asks a [`RateLimitStore`] for a [`Decision`] per request. A
//! local store answers at once ([`Check::Ready`]), and the layer then calls
//! the inner service in the same `call`, paying nothing for the existence of
//! remote stores; a remote store answers later ([`Check::Pending`]).

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use super::key::RateKey;
use super::quota::Policy;
use crate::error::ConfigError;

mod any;
mod local;
#[cfg(feature = "redis")]
mod redis;

pub use any::AnyStore;
pub use local::{DEFAULT_MAX_KEYS, LocalStore};
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_DENY_CACHE_KEYS, DEFAULT_TIMEOUT, RedisStore};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The burst size of the policy (the `q` / `X-RateLimit-Limit` value).
    pub limit: u32,
    /// Requests the key may still send at once.
    pub remaining: u32,
    /// Time until the key's burst is fully replenished.
    pub reset_after: Duration,
    /// For a refused request: time until one more request is allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// An allowed request.
    pub fn allowed(limit: u32, remaining: u32, reset_after: Duration) -> Self {
        Self {
            allowed: true,
            limit,
            remaining,
            reset_after,
            retry_after: None,
        }
    }

    /// A refused request that may retry after `retry_after`.
    pub fn limited(limit: u32, retry_after: Duration) -> Self {
        Self {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: retry_after,
            retry_after: Some(retry_after),
        }
    }
}

/// A store could not decide (a remote store timed out or is down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit store failed: {message}")]
pub struct StoreError {
    message: String,
}

impl StoreError {
    /// A failure described by `message` (no key or token content).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What a charge by cost asks of a store ([`RateLimitStore::spend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spend {
    /// `n` units now, all or nothing: refused (nothing spent) while the
    /// bucket holds fewer.
    Take(NonZeroU32),
    /// `n` units after the fact, even past what the bucket holds: the key is
    /// in debt, and refused until it has paid it back.
    Owe(NonZeroU32),
    /// `n` units back, for a charge estimated too high (never more than a
    /// full bucket).
    Refund(NonZeroU32),
}

/// A decision now, or a future one.
#[derive(Debug)]
pub enum Check<F> {
    /// Decided synchronously (local stores).
    Ready(Result<Decision, StoreError>),
    /// To be awaited (remote stores).
    Pending(F),
}

/// Keeps per-key state for a [`RateLimitLayer`](super::RateLimitLayer).
pub trait RateLimitStore: Send + Sync + 'static {
    /// The future of a [`Check::Pending`] decision.
    type Future: Future<Output = Result<Decision, StoreError>> + Send + 'static;

    /// Called once when the layer is built, with every policy it may ask
    /// about (`policy.index()` runs from 0).
    ///
    /// # Errors
    /// A policy the store cannot represent.
    fn prepare(&mut self, policies: &[Policy]) -> Result<(), ConfigError>;

    /// Counts one request of `key` under `policy`.
    fn check(&self, policy: &Policy, key: &RateKey) -> Check<Self::Future>;

    /// Charges `key` under `policy` by cost ([`Spend`]); what the handle
    /// of a layer built with
    /// [`charged_by_handler`](super::RateLimitBuilder::charged_by_handler)
    /// asks. The decision says what is left after it.
    ///
    /// The default answers with an error: a store that cannot charge more
    /// than one unit at a time says so rather than guessing.
    fn spend(&self, policy: &Policy, key: &RateKey, spend: Spend) -> Check<Self::Future> {
        let _ = (policy, key, spend);
        Check::Ready(Err(StoreError::new("this store cannot charge by cost")))
    }

    /// How many keys the store holds now (approximate for remote stores).
    fn key_count(&self) -> usize;

    /// The most keys the store holds at once, if it is capped (exported as
    /// `tollgate_rate_limit_max_keys`, so that an alert can compare).
    fn max_keys(&self) -> Option<usize> {
        None
    }
}
