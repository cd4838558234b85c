//! [`JwtAuthLayer`]: the configured layer, cheap to clone and re-mode.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::authenticate::{AuthMode, AuthState};
use super::cache::TokenCache;
use super::decide::AuthDecision;
use super::keys::provider::KeySource;
use super::keys::{Key, KeySet};
use super::revocation::Revocations;
use crate::error::ConfigError;
use crate::middleware::Middleware;
use crate::reject::DefaultResponder;

/// Verifies a JWT from a cookie or `Authorization: Bearer` and puts
/// [`Claims<T>`](super::Claims) and [`Identity`](crate::Identity) into the request extensions.
///
/// Build it with [`JwtAuthLayer::builder`]. The layer is cheap to clone and to
/// re-mode ([`JwtAuthLayer::mode`]): clones share one verification state, so a
/// router can mount a lenient copy on some routes and a required copy on
/// others. See the [module docs](crate::auth) for an example.
pub struct JwtAuthLayer<T, R = DefaultResponder> {
    pub(crate) state: Arc<AuthState<T>>,
    pub(crate) mode: AuthMode,
    pub(crate) shadow: bool,
    pub(crate) responder: R,
}

impl<T, R: Clone> Clone for JwtAuthLayer<T, R> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            mode: self.mode,
            shadow: self.shadow,
            responder: self.responder.clone(),
        }
    }
}

impl<T, R: fmt::Debug> fmt::Debug for JwtAuthLayer<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthLayer")
            .field("mode", &self.mode)
            .field("sources", &self.state.sources)
            .field("providers", &self.state.providers)
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl<T, R> JwtAuthLayer<T, R> {
    /// The same layer (same keys and rules) in another mode.
    #[must_use]
    pub fn mode(mut self, mode: AuthMode) -> Self {
        self.mode = mode;
        self
    }

    /// Shadow mode: every decision is computed, counted and logged, but none
    /// is enforced — a request that would be refused goes on as
    /// [`Anonymous`](super::Anonymous). For rolling out auth safely (Envoy's
    /// `filter_enforced`).
    #[must_use]
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Shorthand for `.mode(AuthMode::Required)`.
    #[must_use]
    pub fn required(self) -> Self {
        self.mode(AuthMode::Required)
    }

    /// Shorthand for `.mode(AuthMode::Optional)`.
    #[must_use]
    pub fn optional(self) -> Self {
        self.mode(AuthMode::Optional)
    }

    /// Shorthand for `.mode(AuthMode::Lenient)`.
    #[must_use]
    pub fn lenient(self) -> Self {
        self.mode(AuthMode::Lenient)
    }

    /// How many verified tokens are cached now (0 without a cache).
    pub fn cached_tokens(&self) -> usize {
        self.state.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// The revocations this layer checks, if any: for the handlers that
    /// revoke, when the layer was built from a configuration file.
    pub fn revocations(&self) -> Option<&Revocations> {
        self.state.revocations.as_ref()
    }

    /// Empties the verified-token cache.
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.state.cache {
            cache.clear();
        }
    }

    /// Replaces the verification keys of this layer and all its clones,
    /// atomically: requests in flight finish with the old set, later ones use
    /// the new one. Cached verifications by the old keys are not used again.
    ///
    /// # Errors
    /// An empty key set or duplicate `kid`s; the old keys then stay.
    /// Keys fetched by [`RemoteKeys`](super::RemoteKeys) rotate by
    /// themselves, and a layer with several providers cannot be rotated as a
    /// whole: both are errors.
    pub fn rotate_keys(&self, keys: impl IntoIterator<Item = Key>) -> Result<(), ConfigError> {
        let [provider] = self.state.providers.as_slice() else {
            return Err(ConfigError::new(
                "keys",
                "a layer with several providers has no single key set to rotate",
            ));
        };
        #[cfg_attr(not(feature = "jwks"), expect(irrefutable_let_patterns))]
        let KeySource::Static(cell) = &provider.keys else {
            return Err(ConfigError::new("keys", "remote keys rotate by themselves"));
        };
        let mut next = KeySet::new(keys.into_iter().collect())?;
        cell.rcu(|current| {
            next.generation = current.generation.wrapping_add(1);
            next.clone()
        });
        Ok(())
    }

    /// Replaces the responder that renders refusals.
    pub fn with_responder<R2>(self, responder: R2) -> JwtAuthLayer<T, R2> {
        JwtAuthLayer {
            state: self.state,
            mode: self.mode,
            shadow: self.shadow,
            responder,
        }
    }
}

impl<S, T, R: Clone> Layer<S> for JwtAuthLayer<T, R> {
    type Service = JwtAuth<S, T, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware::new(
            inner,
            AuthDecision {
                state: Arc::clone(&self.state),
                mode: self.mode,
                shadow: self.shadow,
                responder: self.responder.clone(),
            },
        )
    }
}

/// The service built by [`JwtAuthLayer`]: verifies, then calls `S` or
/// answers with a refusal (tollgate's one
/// [`Middleware`](crate::middleware::Middleware), with the auth layer's
/// decision).
pub type JwtAuth<S, T, R = DefaultResponder> = Middleware<S, AuthDecision<T, R>>;

/// Response future of [`JwtAuth`].
pub type ResponseFuture<S, B, T, R = DefaultResponder> =
    crate::middleware::ResponseFuture<S, B, AuthDecision<T, R>>;

#[cfg(test)]
mod tests {
    use crate::middleware::{ReadyService, assert_small};
    use crate::reject::DefaultResponder;

    #[test]
    fn the_future_is_the_inner_one_and_little_more() {
        assert_small::<super::ResponseFuture<ReadyService, (), serde_json::Value, DefaultResponder>>(
            "auth",
        );
    }
}
