//! Remote keys: a JWKS URL or an OIDC issuer's discovery document (feature
//! `jwks`).
//!
//! - Keys are fetched only from the configured URL (or the `jwks_uri` of the
//!   configured issuer's discovery document), never from a URL a token names
//!   (`jku`, `x5u`).
//! - The request path reads the current key set without locks (`arc-swap`);
//!   a refresh swaps in a whole new set.
//! - A background task refreshes every `refresh_interval` (default 10 min),
//!   or as the response's `Cache-Control: max-age` says, within bounds.
//! - A token with an unknown `kid` triggers at most one fetch at a time, no
//!   more often than `unknown_kid_interval` (default 1 s): at once if that
//!   long has passed since the last fetch, otherwise as soon as it has. The
//!   request waits for that fetch to start if it starts within `max_wait`
//!   (default 1 s), then at most `max_wait` for it to end; so with the
//!   defaults the first token signed with a newly published key is accepted
//!   however recent the last fetch was.
//! - A failed fetch (error status, timeout, garbage, oversized body) keeps the
//!   old keys serving; failures are counted and logged.
//! - JWKs with an unsupported `kty`/`alg`/curve or `use: "enc"` are skipped; a
//!   JWK's `alg` restricts its key to that algorithm. Symmetric (`oct`) JWKs
//!   are skipped too unless
//!   [`allow_symmetric_keys`](RemoteKeysBuilder::allow_symmetric_keys) says
//!   otherwise.
//! - URLs must be `https`; plain `http` is allowed only to a loopback host
//!   (`127.0.0.0/8`, `[::1]`, `localhost`), for tests and sidecars. This holds
//!   for the configured URL or issuer and for the `jwks_uri` that discovery
//!   returns.
//! - Redirects are followed only within the same origin (scheme, host and
//!   port), at most three in a row.
//! - A discovery document is used only if its `issuer` is identical to the
//!   configured issuer (OpenID Connect Discovery 1.0 §4.3).
//! - Dropping a [`RemoteKeys::refresh`] future mid-fetch frees the fetch slot,
//!   so later refreshes and unknown-`kid` fetches still happen.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use tokio::sync::watch;

mod rules;

use rules::{check_url, parse_max_age, same_origin_redirects, send_failure};

use super::{Key, KeySet};
use crate::error::ConfigError;

/// Default interval between background refreshes.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
/// Default shortest time between two fetches caused by unknown `kid`s.
pub const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(1);
/// Default longest time a request waits for a fetch its `kid` caused.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);
/// Default cap on a JWKS or discovery response body.
pub const DEFAULT_MAX_BODY: usize = 512 * 1024;
/// Most redirects one fetch follows (each within the same origin).
pub(crate) const MAX_REDIRECTS: usize = 3;

pub(crate) type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug)]
enum Location {
    Jwks(String),
    Discovery {
        issuer: String,
        jwks_uri: Mutex<Option<String>>,
    },
}

#[derive(Debug, Clone)]
struct Settings {
    refresh: Duration,
    min_max_age: Duration,
    max_max_age: Duration,
    unknown_kid_interval: Duration,
    max_wait: Duration,
    max_body: usize,
    timeout: Duration,
    connect_timeout: Duration,
    fail_fast: bool,
    allow_symmetric: bool,
}

struct Inner {
    keys: ArcSwap<KeySet>,
    location: Location,
    client: reqwest::Client,
    settings: Settings,
    epoch: Instant,
    fetching: AtomicBool,
    /// A fetch for an unknown `kid` is scheduled for when the interval
    /// since the last one has passed.
    scheduled: AtomicBool,
    /// Warned that a request off any tokio runtime cannot fetch keys.
    warned_no_runtime: AtomicBool,
    /// Milliseconds since `epoch` of the last fetch started (+1, 0 = never).
    last_fetch: AtomicU64,
    done: watch::Sender<u64>,
    fetches: AtomicU64,
    failures: AtomicU64,
    skipped: AtomicU64,
}

/// A key set fetched from a JWKS URL or an OIDC issuer, kept fresh in the
/// background. Give it to [`JwtAuthBuilder::remote_keys`](crate::auth::JwtAuthBuilder::remote_keys)
/// or a [`Provider`](crate::auth::Provider).
///
/// Cloning shares the set and its refresher; the refresher stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct RemoteKeys {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("location", &self.inner.location)
            .field("keys", &self.inner.keys.load().len())
            .field("fetches", &self.fetches())
            .field("failures", &self.failures())
            .finish()
    }
}

/// Configures [`RemoteKeys`].
#[derive(Debug)]
pub struct RemoteKeysBuilder {
    location: Location,
    settings: Settings,
}

impl RemoteKeys {
    /// Keys from a JWKS document at `url`.
    pub fn jwks(url: impl Into<String>) -> RemoteKeysBuilder {
        RemoteKeysBuilder::new(Location::Jwks(url.into()))
    }

    /// Keys from the `jwks_uri` of `issuer`'s
    /// `/.well-known/openid-configuration`.
    pub fn oidc_issuer(issuer: impl Into<String>) -> RemoteKeysBuilder {
        RemoteKeysBuilder::new(Location::Discovery {
            issuer: issuer.into(),
            jwks_uri: Mutex::new(None),
        })
    }

    /// Fetches attempted so far.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Fetches that failed (the previous keys stayed in use).
    pub fn failures(&self) -> u64 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    /// JWKs skipped as unusable (encryption keys, unsupported types, and
    /// symmetric keys unless allowed).
    pub fn skipped_keys(&self) -> u64 {
        self.inner.skipped.load(Ordering::Relaxed)
    }

    /// How many keys are in use now.
    pub fn key_count(&self) -> usize {
        self.inner.keys.load().len()
    }

    /// Fetches now (waits for a fetch already under way instead).
    ///
    /// Cancel-safe: dropping the future before it completes abandons the
    /// fetch and frees the slot for the next one.
    ///
    /// # Errors
    /// The fetch failed; the previous keys stay in use.
    pub async fn refresh(&self) -> Result<(), ConfigError> {
        // Subscribe before trying the slot: a fetch that ends between a lost
        // claim and a later subscription would go unseen, and the wait would
        // last until some other fetch.
        let mut rx = self.inner.done.subscribe();
        match FetchSlot::claim(&self.inner) {
            Some(slot) => slot.fetch().await.map(|_| ()),
            None => {
                let _ = rx.changed().await;
                Ok(())
            }
        }
    }

    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.inner.keys.load()
    }

    /// Asks for a fetch for an unknown `kid`, and returns a future that
    /// resolves when a fetch completes or the wait is over.
    ///
    /// A fetch starts at once when `unknown_kid_interval` has passed since
    /// the last one; otherwise one fetch is scheduled for the moment it has
    /// (however many requests ask). The request waits for the fetch to start
    /// if that is within `max_wait`, then at most `max_wait` for it to end.
    /// `None`: the scheduled fetch starts too late for this request (or
    /// there is no runtime to fetch on): refuse at once.
    pub(crate) fn refresh_for_unknown_kid(&self) -> Option<Wait> {
        let inner = &self.inner;
        let rx = inner.done.subscribe();
        let max_wait = inner.settings.max_wait;
        let wait = move |start: Duration| -> Wait {
            let mut rx = rx;
            Box::pin(async move {
                let _ = tokio::time::timeout(start + max_wait, rx.changed()).await;
            })
        };
        if inner.fetching.load(Ordering::Acquire) {
            return Some(wait(Duration::ZERO));
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            if !inner.warned_no_runtime.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "tollgate: a token names an unknown kid, but the request is not served on a                      tokio runtime, so no key fetch can start: such tokens are refused"
                );
            }
            return None;
        };
        let last = inner.last_fetch.load(Ordering::Relaxed);
        let now = inner.now_ms() + 1;
        let due = match last {
            0 => now,
            last => last.saturating_add(millis(inner.settings.unknown_kid_interval)),
        };
        if due <= now {
            if let Some(slot) = FetchSlot::claim(inner) {
                handle.spawn(slot.fetch());
            }
            return Some(wait(Duration::ZERO));
        }
        let delay = Duration::from_millis(due - now);
        if !inner.scheduled.swap(true, Ordering::AcqRel) {
            let inner = Arc::downgrade(inner);
            handle.spawn(async move {
                tokio::time::sleep(delay).await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                inner.scheduled.store(false, Ordering::Release);
                // A fetch that started since (or is under way) serves the
                // kid as well as this one would.
                if inner.last_fetch.load(Ordering::Relaxed) == last
                    && let Some(slot) = FetchSlot::claim(&inner)
                {
                    let _ = slot.fetch().await;
                }
            });
        }
        (delay <= max_wait).then(|| wait(delay))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RemoteKeysBuilder {
    fn new(location: Location) -> Self {
        Self {
            location,
            settings: Settings {
                refresh: DEFAULT_REFRESH,
                min_max_age: Duration::from_secs(60),
                max_max_age: Duration::from_secs(24 * 3600),
                unknown_kid_interval: DEFAULT_UNKNOWN_KID_INTERVAL,
                max_wait: DEFAULT_MAX_WAIT,
                max_body: DEFAULT_MAX_BODY,
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                fail_fast: true,
                allow_symmetric: false,
            },
        }
    }

    /// Background refresh interval when the response has no usable
    /// `Cache-Control: max-age` (default 10 min).
    pub fn refresh_interval(mut self, every: Duration) -> Self {
        self.settings.refresh = every;
        self
    }

    /// Bounds on an honoured `max-age` (default 1 min to 24 h).
    pub fn max_age_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.settings.min_max_age = min;
        self.settings.max_max_age = max.max(min);
        self
    }

    /// Shortest time between two fetches caused by unknown `kid`s (default 1 s).
    pub fn unknown_kid_interval(mut self, interval: Duration) -> Self {
        self.settings.unknown_kid_interval = interval;
        self
    }

    /// Longest a request waits for the fetch its unknown `kid` caused to
    /// start, and then to end (default 1 s each). A fetch that cannot start
    /// within it (because `unknown_kid_interval` has not passed) is still
    /// scheduled, but the request is refused at once.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.max_wait = wait;
        self
    }

    /// Cap on a response body (default 512 KiB).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.settings.max_body = bytes;
        self
    }

    /// Whole-request and connect timeouts (default 5 s and 2 s).
    pub fn timeouts(mut self, request: Duration, connect: Duration) -> Self {
        self.settings.timeout = request;
        self.settings.connect_timeout = connect;
        self
    }

    /// `true` (default): [`start`](Self::start) fails when the first fetch
    /// fails. `false`: start with no keys (every token is refused) and keep
    /// retrying in the background.
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.settings.fail_fast = fail_fast;
        self
    }

    /// Whether symmetric (`kty: "oct"`) JWKs in the fetched set are used
    /// (default `false`: they are skipped and counted in
    /// [`RemoteKeys::skipped_keys`]).
    ///
    /// A JWK set is normally public, and an HMAC secret in it lets anyone who
    /// can read it mint tokens that verify. Allow this only when the URL is
    /// reachable by this service alone.
    pub fn allow_symmetric_keys(mut self, allow: bool) -> Self {
        self.settings.allow_symmetric = allow;
        self
    }

    /// Fetches the keys once and starts the background refresh (on the
    /// current tokio runtime).
    ///
    /// # Errors
    /// The URL or issuer is not `https` (plain `http` is allowed only to a
    /// loopback host), whatever `fail_fast` says; with `fail_fast` (the
    /// default), a first fetch that fails; a client that cannot be built; no
    /// tokio runtime.
    pub async fn start(self) -> Result<RemoteKeys, ConfigError> {
        match &self.location {
            Location::Jwks(url) => check_url("the JWKS URL", url)?,
            Location::Discovery { issuer, .. } => check_url("the OIDC issuer", issuer)?,
        }
        let client = reqwest::Client::builder()
            .timeout(self.settings.timeout)
            .connect_timeout(self.settings.connect_timeout)
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| ConfigError::new("jwks", format!("cannot build the HTTP client: {e}")))?;
        let (done, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            keys: ArcSwap::from_pointee(KeySet::empty()),
            location: self.location,
            client,
            settings: self.settings,
            epoch: Instant::now(),
            fetching: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            warned_no_runtime: AtomicBool::new(false),
            last_fetch: AtomicU64::new(0),
            done,
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        });
        let slot = FetchSlot::claim(&inner)
            .ok_or_else(|| ConfigError::new("jwks", "the first fetch found its slot taken"))?;
        let first = slot.fetch().await;
        let next = match &first {
            Ok(max_age) => inner.next_refresh(*max_age),
            Err(e) if inner.settings.fail_fast => return Err(e.clone()),
            Err(_) => Duration::from_secs(1),
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("jwks", "RemoteKeys::start needs a tokio runtime"))?;
        handle.spawn(refresh_loop(Arc::downgrade(&inner), next));
        Ok(RemoteKeys { inner })
    }
}

async fn refresh_loop(inner: Weak<Inner>, mut delay: Duration) {
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::time::sleep(delay).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(slot) = FetchSlot::claim(&inner) else {
            delay = Duration::from_millis(100);
            continue;
        };
        delay = match slot.fetch().await {
            Ok(max_age) => {
                backoff = Duration::from_secs(1);
                inner.next_refresh(max_age)
            }
            Err(_) => {
                let d = backoff.min(inner.settings.refresh);
                backoff = (backoff * 2).min(inner.settings.refresh);
                d
            }
        };
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        let s = &self.settings;
        max_age.map_or(s.refresh, |age| age.clamp(s.min_max_age, s.max_max_age))
    }

    /// One fetch; the caller holds the slot.
    async fn fetch(&self) -> Result<Option<Duration>, ConfigError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_keys().await;
        match &result {
            Ok(_) => {}
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "tollgate: key fetch failed, keeping the previous keys");
            }
        }
        result
    }

    async fn fetch_keys(&self) -> Result<Option<Duration>, ConfigError> {
        let url = match &self.location {
            Location::Jwks(url) => url.clone(),
            Location::Discovery { issuer, jwks_uri } => {
                let known = jwks_uri.lock().ok().and_then(|u| u.clone());
                match known {
                    Some(url) => url,
                    None => {
                        let url = self.discover(issuer).await?;
                        if let Ok(mut slot) = jwks_uri.lock() {
                            *slot = Some(url.clone());
                        }
                        url
                    }
                }
            }
        };
        let (body, max_age) = self.get(&url).await?;
        let set: JwkSet = serde_json::from_slice(&body)
            .map_err(|_| ConfigError::new("jwks", "the JWKS response is not a JWK set"))?;
        let mut keys: Vec<Key> = Vec::new();
        let mut symmetric = 0_u64;
        for jwk in &set.keys {
            if !self.settings.allow_symmetric
                && matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            {
                symmetric += 1;
                self.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match Key::from_jwk(jwk) {
                Ok(key) if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(key) => keys.push(key),
                Err(_) => {
                    self.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if symmetric > 0 {
            tracing::warn!(
                symmetric,
                "tollgate: skipped symmetric (oct) keys in the JWK set: a published HMAC secret \
                 lets anyone mint tokens (see RemoteKeysBuilder::allow_symmetric_keys)"
            );
        }
        let mut next = KeySet::new(keys).map_err(|_| {
            ConfigError::new(
                "jwks",
                if symmetric > 0 {
                    "the JWK set has no usable signature key (its symmetric `oct` keys are \
                     skipped unless allow_symmetric_keys(true))"
                } else {
                    "the JWK set has no usable signature key"
                },
            )
        })?;
        self.keys.rcu(|current| {
            next.generation = current.generation.wrapping_add(1);
            next.clone()
        });
        Ok(max_age)
    }

    async fn discover(&self, issuer: &str) -> Result<String, ConfigError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let (body, _) = self.get(&url).await?;
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: Option<String>,
            jwks_uri: Option<String>,
        }
        let doc: Discovery = serde_json::from_slice(&body).map_err(|_| {
            ConfigError::new(
                "jwks",
                "the discovery document is not JSON with string issuer and jwks_uri",
            )
        })?;
        // OpenID Connect Discovery 1.0 §4.3: the issuer returned must be
        // identical to the one used to build the discovery URL, or a document
        // served by (or for) another issuer would pick our keys.
        if doc.issuer.as_deref() != Some(issuer) {
            return Err(ConfigError::new(
                "jwks",
                format!(
                    "the discovery document's issuer is not identical to the configured \
                     issuer `{issuer}` (OpenID Connect Discovery §4.3); configure the issuer \
                     exactly as the document spells it, trailing slash included"
                ),
            ));
        }
        let jwks_uri = doc
            .jwks_uri
            .ok_or_else(|| ConfigError::new("jwks", "the discovery document has no jwks_uri"))?;
        check_url("the discovery document's jwks_uri", &jwks_uri)?;
        Ok(jwks_uri)
    }

    /// GET with the size cap; returns the body and `Cache-Control: max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), ConfigError> {
        let fail = |what: &str| ConfigError::new("jwks", format!("GET {url}: {what}"));
        let mut response = self
            .client
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(send_failure(&e)))?;
        if !response.status().is_success() {
            return Err(fail(&format!("status {}", response.status().as_u16())));
        }
        let cap = self.settings.max_body;
        if response
            .content_length()
            .is_some_and(|len| len > cap as u64)
        {
            return Err(fail("response too large"));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            fail(if e.is_timeout() {
                "timed out"
            } else {
                "body failed"
            })
        })? {
            if body.len() + chunk.len() > cap {
                return Err(fail("response too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// The single fetch slot. Dropping it, when the fetch ends or when its
/// future is dropped mid-way, frees the slot and wakes the waiters, so a
/// cancelled fetch cannot stall the refresher or unknown-`kid` fetches.
struct FetchSlot {
    inner: Arc<Inner>,
}

impl FetchSlot {
    /// Claims the slot, or `None` when a fetch is under way.
    fn claim(inner: &Arc<Inner>) -> Option<Self> {
        inner
            .fetching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        inner
            .last_fetch
            .store(inner.now_ms() + 1, Ordering::Relaxed);
        Some(Self {
            inner: Arc::clone(inner),
        })
    }

    /// One fetch; the slot is freed when it ends or is dropped.
    async fn fetch(self) -> Result<Option<Duration>, ConfigError> {
        self.inner.fetch().await
    }
}

impl Drop for FetchSlot {
    fn drop(&mut self) {
        self.inner.fetching.store(false, Ordering::Release);
        self.inner.done.send_modify(|n| *n += 1);
    }
}
