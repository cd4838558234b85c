//! A per-caller concurrency limit: [`ConcurrencyLimitLayer`] lets at most
//! `max` requests of one caller (the verified subject, the client IP for
//! anonymous callers, or any [`KeyBy`]) be in flight at once, and refuses
//! the next one with 429 until one ends.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::net::SocketAddr;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::concurrency::ConcurrencyLimitLayer;
//! use tollgate::rate_limit::{KeyBy, PeerAddr};
//!
//! let limit = ConcurrencyLimitLayer::builder(1)     // one request in flight per caller
//!     .key(KeyBy::peer_ip())
//!     .peer_addr_inserted(true)                     // this test inserts PeerAddr itself
//!     .build()?;
//! let mut svc = ServiceBuilder::new().layer(limit).service(service_fn(|_req: Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! }));
//! let from = || {
//!     let mut request = Request::new(());
//!     request.extensions_mut().insert(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40_000))));
//!     request
//! };
//! let first = svc.ready().await?.call(from()).await?;   // its body not read yet: in flight
//! assert_eq!(first.headers()["ratelimit-policy"], "\"concurrency\";q=1;qu=\"concurrent-requests\"");
//! let second = svc.ready().await?.call(from()).await?;
//! assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
//! drop(first);                                           // body dropped: the slot is free
//! assert_eq!(svc.ready().await?.call(from()).await?.status(), StatusCode::OK);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # When a slot is given back
//!
//! A request holds its slot from the decision until its response body has
//! ended (the last frame read) or is dropped — a streamed response counts
//! for as long as it streams. A request cancelled before its response (the
//! client went away, a timeout dropped the future) and a handler that
//! panicked give the slot back too: the slot lives in the response future
//! and then in the body. A protocol upgrade (a WebSocket's 101) ends its
//! empty body at once: the upgraded connection does not hold a slot — cap
//! those where the upgrade is served. Responses carry `RateLimit-Policy:
//! "name";q=N;qu="concurrent-requests"` and `RateLimit: "name";r=LEFT`
//! (draft-ietf-httpapi-ratelimit-headers-11); a refusal is 429 with
//! `Retry-After: 1`, the problem type `quota-exceeded` and `reason:
//! "too_many_in_flight"` (gRPC `RESOURCE_EXHAUSTED`).
//!
//! Behind the auth layer, key by [`KeyBy::subject_or_client_ip`]: a caller
//! cannot take another caller's slots, and an anonymous flood from one
//! address takes only that address's. Counts are per replica, or shared by
//! every replica with [`ConcurrencyLimitBuilder::shared`] (feature `redis`):
//! each slot is then a lease in Redis, renewed while its request lasts, so a
//! replica that dies leaks its slots for at most one lease (see
//! `SharedSlots`). A request without a key (no peer address) is not limited,
//! and the first one is said once at `warn`.
//!
//! Built on the [`middleware`](crate::middleware) skeleton: this file is the
//! layer and builder, `decide.rs` the decision, `shared.rs` the leases.

mod decide;
#[cfg(feature = "redis")]
mod shared;

use std::sync::Arc;

use tower_layer::Layer;

use crate::error::ConfigError;
use crate::middleware::Middleware;
use crate::rate_limit::KeyBy;
use crate::reject::DefaultResponder;
use decide::{ConcurrencyDecision, Shared};
#[cfg(feature = "redis")]
pub use shared::{DEFAULT_LEASE, DEFAULT_SLOTS_PREFIX, DEFAULT_SLOTS_TIMEOUT, SharedSlots};

/// At most `max` requests of one caller in flight; see the
/// [module docs](self).
#[derive(Clone)]
pub struct ConcurrencyLimitLayer<R = DefaultResponder> {
    shared: Arc<Shared>,
    responder: R,
}

impl<R: std::fmt::Debug> std::fmt::Debug for ConcurrencyLimitLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl ConcurrencyLimitLayer {
    /// At most `max` requests of one caller in flight (keyed by
    /// [`KeyBy::subject_or_client_ip`] without proxies unless
    /// [`key`](ConcurrencyLimitBuilder::key) says otherwise).
    pub fn builder(max: u32) -> ConcurrencyLimitBuilder {
        ConcurrencyLimitBuilder {
            name: "concurrency".to_owned(),
            max,
            key: KeyBy::subject_or_client_ip(crate::rate_limit::TrustedProxies::none()),
            peer_addr_inserted: false,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }
}

impl<R> ConcurrencyLimitLayer<R> {
    /// Replaces the responder that renders refusals.
    pub fn with_responder<R2>(self, responder: R2) -> ConcurrencyLimitLayer<R2> {
        ConcurrencyLimitLayer {
            shared: self.shared,
            responder,
        }
    }

    /// Requests of `key` in flight now.
    pub fn in_flight(&self, key: &crate::rate_limit::RateKey) -> u32 {
        self.shared.in_flight(key)
    }
}

/// Builds a [`ConcurrencyLimitLayer`].
#[derive(Debug)]
pub struct ConcurrencyLimitBuilder {
    name: String,
    max: u32,
    key: KeyBy,
    peer_addr_inserted: bool,
    #[cfg(feature = "redis")]
    shared: Option<SharedSlots>,
}

impl ConcurrencyLimitBuilder {
    /// The policy's name in the `RateLimit` headers (default `concurrency`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What a caller is (default: the verified subject, else the peer's
    /// address).
    #[must_use]
    pub fn key(mut self, key: KeyBy) -> Self {
        self.key = key;
        self
    }

    /// The service inserts [`PeerAddr`](crate::rate_limit::PeerAddr) itself
    /// (as for the rate limiter's builder).
    #[must_use]
    pub fn peer_addr_inserted(mut self, inserted: bool) -> Self {
        self.peer_addr_inserted = inserted;
        self
    }

    /// Holds the slots together with the other replicas, leased in Redis
    /// (feature `redis`); see [`SharedSlots`]. The layer must be built
    /// inside a tokio runtime (it renews its leases in the background).
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn shared(mut self, slots: SharedSlots) -> Self {
        self.shared = Some(slots);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// `max` of 0, a name that cannot be a header token, a key by client
    /// address in a build with no source of peer addresses, or shared slots
    /// outside a tokio runtime.
    pub fn build(self) -> Result<ConcurrencyLimitLayer, ConfigError> {
        if self.max == 0 {
            return Err(ConfigError::new(
                "concurrency.max",
                "at least 1 request must be allowed in flight",
            ));
        }
        let token = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if self.name.is_empty() || !self.name.bytes().all(token) {
            return Err(ConfigError::new(
                "concurrency.name",
                "letters, digits, - _ and . only (it is quoted in a header)",
            ));
        }
        self.key
            .check_peer_source(self.peer_addr_inserted, "concurrency.key")?;
        #[cfg_attr(not(feature = "redis"), expect(unused_mut))]
        let mut shared = Shared::new(&self.name, self.key, self.max);
        #[cfg(feature = "redis")]
        if let Some(slots) = self.shared {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                ConfigError::new(
                    "concurrency.shared",
                    "shared slots renew their leases in the background: build the layer inside \
                     a tokio runtime",
                )
            })?;
            shared::spawn_renewal(&runtime, Arc::downgrade(&slots.inner), slots.inner.lease);
            shared.slots = Some(slots.inner);
        }
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(shared),
            responder: DefaultResponder,
        })
    }
}

impl<S, R: Clone> Layer<S> for ConcurrencyLimitLayer<R> {
    type Service = ConcurrencyLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware::new(
            inner,
            ConcurrencyDecision {
                shared: Arc::clone(&self.shared),
                responder: self.responder.clone(),
            },
        )
    }
}

/// The service built by [`ConcurrencyLimitLayer`] (tollgate's one
/// [`Middleware`], with the concurrency limit's decision).
pub type ConcurrencyLimit<S, R = DefaultResponder> = Middleware<S, ConcurrencyDecision<R>>;

/// Response future of [`ConcurrencyLimit`].
pub type ResponseFuture<S, B, R = DefaultResponder> =
    crate::middleware::ResponseFuture<S, B, ConcurrencyDecision<R>>;
