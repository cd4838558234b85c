//! Failure-driven lockout (brute-force protection): [`LockoutLayer`] counts
//! the requests of one key (a client IP, by default) that *ended badly* —
//! a 401 or 403, or a response the handler marked [`LoginFailed`] — and
//! refuses that key for a growing back-off once it failed too often.
//! Successful requests are never charged; a response marked
//! [`LoginSucceeded`] clears the key's failures only when asked to
//! ([`LockoutBuilder::clear_on_success`]). At most `failures` requests of
//! one key are let through at once before their outcomes are counted, so a
//! burst of parallel guesses is refused too.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tollgate::lockout::LockoutLayer;
//! use tollgate::rate_limit::{KeyBy, PeerAddr, TrustedProxies};
//!
//! let lockout = LockoutLayer::builder(KeyBy::client_ip(TrustedProxies::none()))
//!     .failures(3)                         // three failures within the window...
//!     .window(Duration::from_secs(60))
//!     .backoff(Duration::from_secs(30))    // ...lock the key out 30 s, then 60 s, 120 s...
//!     .max_backoff(Duration::from_secs(3600))
//!     .peer_addr_inserted(true)            // this test inserts PeerAddr itself
//!     .build()?;
//! let login = ServiceBuilder::new().layer(lockout).service(service_fn(|_req: Request<()>| async {
//!     let mut response = Response::new(String::new());
//!     *response.status_mut() = StatusCode::UNAUTHORIZED; // a wrong password
//!     Ok::<_, std::convert::Infallible>(response)
//! }));
//! let from = |ip: &str| {
//!     let mut request = Request::new(());
//!     request.extensions_mut().insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 40_000)));
//!     request
//! };
//! for _ in 0..3 {
//!     assert_eq!(login.clone().oneshot(from("192.0.2.7")).await?.status(), StatusCode::UNAUTHORIZED);
//! }
//! // Locked out: refused before the handler runs, with the draft's problem type.
//! let refused = login.clone().oneshot(from("192.0.2.7")).await?;
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "30");
//! // Another address is not.
//! assert_eq!(login.oneshot(from("192.0.2.8")).await?.status(), StatusCode::UNAUTHORIZED);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! # What it protects, and what not yet
//!
//! - A refusal is 429 with `Retry-After` and the problem type
//!   [`ABNORMAL_USAGE_DETECTED`](crate::reject::ABNORMAL_USAGE_DETECTED) of
//!   draft-ietf-httpapi-ratelimit-headers-11 (`reason: "locked_out"`, or
//!   `"too_many_attempts"` for a burst over the limit; gRPC
//!   `RESOURCE_EXHAUSTED`). The handler is not called.
//! - Keyed by client address, an attacker locks out only the addresses it
//!   sends from: a victim elsewhere keeps logging in. The back-off doubles
//!   with each lockout up to [`max_backoff`](LockoutBuilder::max_backoff),
//!   and the count of lockouts is forgotten once a key stays quiet for
//!   `max_backoff`.
//! - A request without a key (no peer address) is not counted, and the
//!   first one is said once at `warn`: counting every such request in one
//!   shared key would let one client lock out all of them.
//! - Counts are per replica unless the replicas share them through Redis
//!   ([`LockoutBuilder::shared`], feature `redis`: see `SharedLockouts` for
//!   what a client can get before every replica refuses it, and what
//!   happens while Redis is down). Each replica holds at most
//!   [`max_keys`](LockoutBuilder::max_keys) keys (default 100,000): when
//!   full, expired keys are dropped, and a new key is not counted (said once
//!   at `warn`) rather than evicting a locked one.
//! - Counted in `tollgate_lockout_events_total` ([`observe`](crate::observe)),
//!   configured in code or by a `[lockouts.NAME]` table
//!   ([`TollgateConfig::lockout`](crate::config::TollgateConfig::lockout),
//!   feature `config`).
//! - Per account, with [`LockoutBuilder::per_account`]: the handler names
//!   the account a login targets through the request's [`AccountGuard`]
//!   before it checks the password, and failures count against the account
//!   as well as the address, so that guesses spread over many addresses
//!   lock the account. What protects the account's owner: a locked account
//!   refuses only clients that have not logged into it lately (the 4 latest,
//!   for [`known_clients_for`](LockoutBuilder::known_clients_for), 30 days by
//!   default), a successful login clears its failures, and its back-off is
//!   bounded like any other. An attacker can keep an account locked against
//!   new addresses, not against its owner's. With [`SharedLockouts`], an
//!   account's failures are counted in Redis like an address's, and a login
//!   is shared with the other replicas: a replica that learns an account's
//!   lockout learns with it the clients the account knows.
//!
//! The layer is built on tollgate's [`middleware`](crate::middleware)
//! skeleton: this file is its layer and builder, `decide.rs` its decision.

mod decide;
#[cfg(feature = "redis")]
mod shared;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tower_layer::Layer;

use crate::clock::{SystemClock, WallClock};
use crate::error::ConfigError;
use crate::middleware::Middleware;
use crate::rate_limit::KeyBy;
use crate::reject::DefaultResponder;
pub use decide::{AccountGuard, AccountLockedOut, LoginFailed, LoginSucceeded};
use decide::{LockoutDecision, Settings, Shared};
#[cfg(feature = "redis")]
pub use shared::{
    DEFAULT_LOCKOUT_PREFIX, DEFAULT_LOCKOUT_TIMEOUT, MAX_REPORTS_IN_FLIGHT, SharedLockouts,
};

/// Default number of failures within the window that locks a key out.
pub const DEFAULT_FAILURES: u32 = 5;
/// Default window in which failures are counted.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Default first lockout; each further one doubles it.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);
/// Default longest lockout.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Default bound on the keys counted.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Default time a client that logged into an account stays known to it.
pub const DEFAULT_KNOWN_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// Locks out keys whose requests keep failing; see the [module docs](self).
#[derive(Clone)]
pub struct LockoutLayer<R = DefaultResponder> {
    shared: Arc<Shared>,
    responder: R,
}

impl<R: std::fmt::Debug> std::fmt::Debug for LockoutLayer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockoutLayer")
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl LockoutLayer {
    /// A builder that keys requests by `key` (usually
    /// [`KeyBy::client_ip`](crate::rate_limit::KeyBy::client_ip)).
    pub fn builder(key: KeyBy) -> LockoutBuilder {
        LockoutBuilder {
            name: "lockout".into(),
            key,
            failures: DEFAULT_FAILURES,
            window: DEFAULT_WINDOW,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            statuses: vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
            max_keys: DEFAULT_MAX_KEYS,
            clock: Arc::new(SystemClock),
            peer_addr_inserted: false,
            clear_on_success: false,
            per_account: false,
            known_for: DEFAULT_KNOWN_FOR,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }
}

impl<R> LockoutLayer<R> {
    /// Replaces the responder that renders refusals.
    pub fn with_responder<R2>(self, responder: R2) -> LockoutLayer<R2> {
        LockoutLayer {
            shared: self.shared,
            responder,
        }
    }

    /// Whether `key` is locked out now (for a login page that says so).
    pub fn is_locked(&self, key: &crate::rate_limit::RateKey) -> bool {
        self.shared.locked_for(key).is_some()
    }
}

/// Builds a [`LockoutLayer`].
pub struct LockoutBuilder {
    name: String,
    key: KeyBy,
    failures: u32,
    window: Duration,
    backoff: Duration,
    max_backoff: Duration,
    statuses: Vec<StatusCode>,
    max_keys: usize,
    clock: Arc<dyn WallClock>,
    peer_addr_inserted: bool,
    clear_on_success: bool,
    per_account: bool,
    known_for: Duration,
    #[cfg(feature = "redis")]
    shared: Option<SharedLockouts>,
}

impl std::fmt::Debug for LockoutBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockoutBuilder")
            .field("failures", &self.failures)
            .field("window", &self.window)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .finish_non_exhaustive()
    }
}

impl LockoutBuilder {
    /// The lockout's name, in its metrics' `lockout` label (default
    /// `lockout`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Failures within [`window`](Self::window) that lock a key out
    /// (default 5).
    #[must_use]
    pub fn failures(mut self, failures: u32) -> Self {
        self.failures = failures;
        self
    }

    /// How long failures are counted from the first (default 5 minutes).
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The first lockout (default 1 minute); each further one doubles it.
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest lockout (default 1 hour).
    #[must_use]
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// The response statuses that count as failures (default 401 and 403).
    #[must_use]
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// The most keys counted at once (default 100,000).
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The wall clock (default the system clock); tests pass a fake one.
    #[must_use]
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The service inserts [`PeerAddr`](crate::rate_limit::PeerAddr) itself,
    /// in a build without `axum-connect-info` or `tonic` (as for
    /// [`RateLimitBuilder::peer_addr_inserted`](crate::rate_limit::RateLimitBuilder::peer_addr_inserted)).
    #[must_use]
    pub fn peer_addr_inserted(mut self, inserted: bool) -> Self {
        self.peer_addr_inserted = inserted;
        self
    }

    /// Whether a response marked [`LoginSucceeded`] clears the key's
    /// failures (default `false`). Keep it off while the key is a client
    /// address: an attacker who owns one account could log into it between
    /// guesses at another's and never be locked out. A lockout in force and
    /// the doubling of the next one are never cleared.
    #[must_use]
    pub fn clear_on_success(mut self, clear: bool) -> Self {
        self.clear_on_success = clear;
        self
    }

    /// Lets handlers name the account a login targets (default `false`):
    /// the layer puts an [`AccountGuard`] in each request's extensions;
    /// failures then count against the account too, and a locked account
    /// refuses every client that has not logged into it lately. See
    /// [`AccountGuard`] for what protects the account's owner.
    #[must_use]
    pub fn per_account(mut self, on: bool) -> Self {
        self.per_account = on;
        self
    }

    /// How long a client that logged into an account stays known to it, so
    /// that the account's lockout does not refuse it (default 30 days).
    #[must_use]
    pub fn known_clients_for(mut self, known_for: Duration) -> Self {
        self.known_for = known_for;
        self
    }

    /// Counts failures and lockouts together with the other replicas, in
    /// Redis (feature `redis`); see [`SharedLockouts`].
    #[cfg(feature = "redis")]
    #[must_use]
    pub fn shared(mut self, shared: SharedLockouts) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// No failures, an empty window or back-off, a back-off longer than its
    /// maximum, no failure status, no keys, or a key by client address in a
    /// build with no source of peer addresses.
    pub fn build(self) -> Result<LockoutLayer, ConfigError> {
        let fail = |setting, reason: &str| Err(ConfigError::new(setting, reason.to_owned()));
        if self.failures == 0 {
            return fail("lockout.failures", "at least 1 failure must lock a key out");
        }
        if self.window.as_secs() == 0 || self.backoff.as_secs() == 0 {
            return fail(
                "lockout.window",
                "the window and the back-off must be at least 1 second",
            );
        }
        if self.max_backoff < self.backoff {
            return fail(
                "lockout.max_backoff",
                "the longest lockout cannot be shorter than the first",
            );
        }
        if self.statuses.is_empty() {
            return fail(
                "lockout.statuses",
                "no status counts as a failure: the layer would never lock out",
            );
        }
        if self.max_keys == 0 {
            return fail("lockout.max_keys", "must be at least 1");
        }
        self.key
            .check_peer_source(self.peer_addr_inserted, "lockout.key")?;
        let settings = Settings {
            failures: self.failures,
            window: self.window.as_secs(),
            backoff: self.backoff.as_secs(),
            max_backoff: self.max_backoff.as_secs(),
            statuses: self.statuses,
            max_keys: self.max_keys,
            clear_on_success: self.clear_on_success,
            per_account: self.per_account,
            known_for: self.known_for.as_secs(),
        };
        let shared = Shared::new(self.name.into(), self.key, settings, self.clock);
        #[cfg(feature = "redis")]
        let shared = shared.with_store(self.shared);
        Ok(LockoutLayer {
            shared: Arc::new(shared),
            responder: DefaultResponder,
        })
    }
}

impl<S, R: Clone> Layer<S> for LockoutLayer<R> {
    type Service = Lockout<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware::new(
            inner,
            LockoutDecision {
                shared: Arc::clone(&self.shared),
                responder: self.responder.clone(),
            },
        )
    }
}

/// The service built by [`LockoutLayer`] (tollgate's one
/// [`Middleware`], with the lockout's
/// decision).
pub type Lockout<S, R = DefaultResponder> = Middleware<S, LockoutDecision<R>>;

/// Response future of [`Lockout`].
pub type ResponseFuture<S, B, R = DefaultResponder> =
    crate::middleware::ResponseFuture<S, B, LockoutDecision<R>>;
