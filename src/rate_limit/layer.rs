//! [`RateLimitLayer`]: the built layer; its state is shared by every clone.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tower_layer::Layer;

use super::decide::LimitDecision;
use super::limiter::Shared;
use super::quota::Policy;
use super::store::{LocalStore, RateLimitStore};
use crate::middleware::Middleware;
use crate::reject::DefaultResponder;

/// Limits requests per key (client IP, verified subject, header, ...) with
/// GCRA quotas, adds rate-limit headers, and answers 429 (or gRPC
/// RESOURCE_EXHAUSTED) past the quota.
///
/// Build it with [`RateLimitLayer::builder`]. State is shared by all clones
/// (an axum router clones its layers per route), and the decision is made in
/// `call`, never in `poll_ready`. See the [module docs](crate::rate_limit).
pub struct RateLimitLayer<St = LocalStore, R = DefaultResponder> {
    pub(crate) shared: Arc<Shared<St>>,
    pub(crate) responder: R,
}

impl<St, R: Clone> Clone for RateLimitLayer<St, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            responder: self.responder.clone(),
        }
    }
}

impl<St: fmt::Debug, R> fmt::Debug for RateLimitLayer<St, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("key", &self.shared.key)
            .field("policies", &self.shared.policies)
            .field("store", &self.shared.store)
            .finish_non_exhaustive()
    }
}

impl<St, R> RateLimitLayer<St, R> {
    /// Replaces the responder that renders refusals (see [`crate::reject`]);
    /// clones share the limiter state either way.
    pub fn with_responder<R2>(self, responder: R2) -> RateLimitLayer<St, R2> {
        RateLimitLayer {
            shared: self.shared,
            responder,
        }
    }
}

impl<St: RateLimitStore, R> RateLimitLayer<St, R> {
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

impl<S, St, R: Clone> Layer<S> for RateLimitLayer<St, R> {
    type Service = RateLimit<S, St, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware::new(
            inner,
            LimitDecision {
                shared: Arc::clone(&self.shared),
                responder: self.responder.clone(),
            },
        )
    }
}

/// The service built by [`RateLimitLayer`]: counts the request against its
/// policy's quota, then calls `S` or answers 429 (tollgate's one
/// [`Middleware`](crate::middleware::Middleware), with the rate limiter's
/// decision).
pub type RateLimit<S, St, R = DefaultResponder> = Middleware<S, LimitDecision<St, R>>;

/// Response future of [`RateLimit`].
pub type ResponseFuture<S, B, St, R = DefaultResponder> =
    crate::middleware::ResponseFuture<S, B, LimitDecision<St, R>>;

#[cfg(test)]
mod tests {
    use crate::middleware::{ReadyService, assert_small};
    use crate::rate_limit::store::LocalStore;
    use crate::reject::DefaultResponder;

    #[test]
    fn the_future_is_the_inner_one_plus_a_stamp() {
        assert_small::<super::ResponseFuture<ReadyService, (), LocalStore, DefaultResponder>>(
            "rate limit",
        );
    }
}
