//! [`JwtAuthBuilder`]: every setting of the auth layer, checked at `build`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::authenticate::{AuthMode, AuthState, Authorize, Exempt};
use super::cache::TokenCache;
use super::claims_check::{DEFAULT_LEEWAY, Rules};
use super::keys::Key;
use super::keys::provider::{Provider, ProviderKeys, ProviderState};
use super::layer::JwtAuthLayer;
use super::revocation::Revocations;
use super::token::{CookieName, Source};
use crate::clock::{SystemClock, WallClock};
use crate::error::ConfigError;
use crate::observe::AuthMetrics;
use crate::reject::DefaultResponder;

/// Default cap on a token's length, checked before any decoding.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// Default longest time a verified token stays cached.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

impl<T> JwtAuthLayer<T> {
    /// Starts configuring a layer whose claims deserialize into `T`.
    pub fn builder() -> JwtAuthBuilder<T> {
        JwtAuthBuilder::new()
    }
}

/// Configures a [`JwtAuthLayer`]. Every setter takes and returns `self`;
/// [`build`](Self::build) checks the whole and says what to fix.
pub struct JwtAuthBuilder<T> {
    keys: Vec<Key>,
    #[cfg(feature = "jwks")]
    remote: Option<super::keys::jwks::RemoteKeys>,
    providers: Vec<Provider>,
    sources: Vec<Result<Source, ConfigError>>,
    issuers: Vec<Arc<str>>,
    audiences: Vec<Box<str>>,
    leeway: Duration,
    require_exp: bool,
    typ: Option<Box<str>>,
    understood_crit: Vec<Box<str>>,
    max_lifetime: Option<Duration>,
    required_claims: Vec<Box<str>>,
    max_token_len: usize,
    mode: AuthMode,
    clock: Arc<dyn WallClock>,
    authorize: Option<Authorize<T>>,
    cache_capacity: usize,
    cache_ttl: Duration,
    trace_subject: bool,
    shadow: bool,
    exempt: Vec<Exempt>,
    revocations: Option<Revocations>,
    time_cache_hits: bool,
    grants: Option<crate::routes::GrantClaims>,
    routes: Option<crate::routes::RouteTable>,
    _claims: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for JwtAuthBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthBuilder")
            .field("keys", &self.keys)
            .field("sources", &self.sources)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<T> JwtAuthBuilder<T> {
    pub(crate) fn new() -> Self {
        Self {
            keys: Vec::new(),
            #[cfg(feature = "jwks")]
            remote: None,
            providers: Vec::new(),
            sources: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            require_exp: true,
            typ: None,
            understood_crit: Vec::new(),
            max_lifetime: None,
            required_claims: Vec::new(),
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            mode: AuthMode::Required,
            clock: Arc::new(SystemClock),
            authorize: None,
            cache_capacity: 0,
            cache_ttl: DEFAULT_CACHE_TTL,
            trace_subject: false,
            shadow: false,
            exempt: Vec::new(),
            revocations: None,
            time_cache_hits: false,
            grants: None,
            routes: None,
            _claims: PhantomData,
        }
    }

    /// Adds a verification key. Several keys are chosen between by `kid`.
    pub fn key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds several verification keys.
    pub fn keys(mut self, keys: impl IntoIterator<Item = Key>) -> Self {
        self.keys.extend(keys);
        self
    }

    /// Verifies with keys fetched from a JWKS URL or an OIDC issuer, kept
    /// fresh in the background (feature `jwks`). Not combinable with
    /// [`key`](Self::key).
    #[cfg(feature = "jwks")]
    pub fn remote_keys(mut self, keys: super::keys::jwks::RemoteKeys) -> Self {
        self.remote = Some(keys);
        self
    }

    /// Trusts one more issuer with its own keys and audiences. With
    /// providers, a token's `iss` selects the keys; don't combine with
    /// [`key`](Self::key) or [`issuer`](Self::issuer).
    pub fn provider(mut self, provider: Provider) -> Self {
        self.providers.push(provider);
        self
    }

    /// Reads the token from the cookie `name` (daily.dev's is `da3`). Sources
    /// are tried in the order they are added.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.sources
            .push(CookieName::new(&name.into()).map(|c| Source::Cookie(Box::new(c))));
        self
    }

    /// Reads the token from `Authorization: Bearer`.
    pub fn bearer(mut self) -> Self {
        self.sources.push(Ok(Source::Bearer));
        self
    }

    /// Accepts tokens whose `iss` equals `issuer` exactly. Call again to trust
    /// several issuers. Without any, `iss` is not checked.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuers.push(Arc::from(issuer.into()));
        self
    }

    /// Accepts tokens whose `aud` (string or array) names `audience`. Call
    /// again to accept several. Without any, tokens that carry an `aud` are
    /// refused (RFC 7519 §4.1.3: a service must identify itself in `aud`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into().into_boxed_str());
        self
    }

    /// Clock-skew allowance for `exp` and `nbf` (default 60 s).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Whether tokens without `exp` are refused (default `true`).
    pub fn require_exp(mut self, require: bool) -> Self {
        self.require_exp = require;
        self
    }

    /// Requires the header `typ` to be this media type (case-insensitive,
    /// `application/` optional), e.g. `"JWT"` or `"at+jwt"`.
    pub fn typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(typ.into().into_boxed_str());
        self
    }

    /// Declares a `crit` header extension as understood. Tokens naming any
    /// other critical extension are refused (RFC 7515 §4.1.11); by default
    /// none is understood.
    pub fn understood_crit(mut self, name: impl Into<String>) -> Self {
        self.understood_crit.push(name.into().into_boxed_str());
        self
    }

    /// Refuses tokens whose `exp - iat` exceeds `max`; tokens then need both.
    pub fn max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = Some(max);
        self
    }

    /// Refuses tokens without the claim `name` (any value).
    pub fn require_claim(mut self, name: impl Into<String>) -> Self {
        self.required_claims.push(name.into().into_boxed_str());
        self
    }

    /// Cap on the token's length in bytes (default 8 KiB), checked before any
    /// decoding.
    pub fn max_token_len(mut self, max: usize) -> Self {
        self.max_token_len = max;
        self
    }

    /// The mode of the built layer (default [`AuthMode::Required`]).
    pub fn mode(mut self, mode: AuthMode) -> Self {
        self.mode = mode;
        self
    }

    /// The wall clock for `exp` / `nbf` (default: the system clock).
    pub fn clock(mut self, clock: impl WallClock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// An authorisation check on verified claims (roles, scopes). A token it
    /// refuses gets 403 `insufficient_scope` in every mode.
    pub fn authorize(mut self, check: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.authorize = Some(Box::new(check));
        self
    }

    /// Keeps up to `capacity` verified tokens, so that a repeat of the same
    /// token (a browser's session cookie) skips signature verification.
    /// Off (0) by default; see the [`auth`](crate::auth) module docs for what
    /// is cached and for how long.
    pub fn cache(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// The longest a verified token stays cached (default 5 minutes); it
    /// never outlives its `exp`.
    pub fn cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Whether tracing events record the verified subject (default `false`:
    /// subjects are personal data).
    pub fn trace_subject(mut self, record: bool) -> Self {
        self.trace_subject = record;
        self
    }

    /// Requests `exempt` selects are not authenticated: they go on as
    /// [`Anonymous`](crate::Anonymous) without any token being read, and are
    /// never refused — a health check, a public asset, or a whole gRPC
    /// service: `|req| req.uri.path().starts_with("/grpc.health.v1.Health/")`.
    /// Layers behind see the request as anonymous (the CSRF guard lets safe
    /// and anonymous requests through; a subject-keyed limit counts it by
    /// client address).
    pub fn exempt(
        mut self,
        exempt: impl Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.exempt.push(Box::new(exempt));
        self
    }

    /// Reads the roles and scopes the rules of `table` need from each
    /// verified token (once per token: cache hits reuse them). Route rules
    /// reach the layer per request from
    /// [`RouteRulesLayer`](crate::routes::RouteRulesLayer), which goes
    /// outside it; a request that arrives without one (the route layer
    /// missing or inside this one) is matched here against `table`, with
    /// one `warn`, so that its rule's access and roles still hold. Without
    /// this call, a route that needs roles or scopes is refused (403) and a
    /// `warn` says why.
    #[must_use]
    pub fn routes(mut self, table: &crate::routes::RouteTable) -> Self {
        self.grants = table.grant_claims();
        self.routes = Some(table.clone());
        self
    }

    /// Refuses revoked tokens (`revoked`, 401): by `jti`, or every token of
    /// a subject issued before a time. Checked on every request, cache hits
    /// included; keep a clone of `revocations` to revoke from handlers. The
    /// set's leeway is raised to this layer's
    /// ([`leeway`](Self::leeway)) at build.
    pub fn revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Whether verified-token cache hits are timed in
    /// `tollgate_auth_verify_seconds` (feature `metrics`; default off: the
    /// histogram shows what verification costs, and a hit is a look-up that
    /// costs less than recording it).
    pub fn time_cache_hits(mut self, timed: bool) -> Self {
        self.time_cache_hits = timed;
        self
    }

    /// Builds the layer in shadow mode (see [`JwtAuthLayer::shadow`]).
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// Checks the configuration and builds the layer.
    ///
    /// Also installs tollgate's crypto provider as jsonwebtoken's process
    /// default (see [`crate::crypto`]).
    ///
    /// # Errors
    /// No key, no token source, an invalid cookie name, an empty issuer or
    /// audience, or more than 64 required claims.
    pub fn build(self) -> Result<JwtAuthLayer<T>, ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::new(
                "sources",
                "no token source: add .cookie(name) and/or .bearer()",
            ));
        }
        let sources = self.sources.into_iter().collect::<Result<Vec<_>, _>>()?;
        if self.issuers.iter().any(|i| i.is_empty()) {
            return Err(ConfigError::new("issuer", "an issuer cannot be empty"));
        }
        if self.audiences.iter().any(|a| a.is_empty()) {
            return Err(ConfigError::new("audience", "an audience cannot be empty"));
        }
        if self.required_claims.len() > 64 {
            return Err(ConfigError::new(
                "require_claim",
                "at most 64 required claims",
            ));
        }
        if self.max_token_len == 0 {
            return Err(ConfigError::new("max_token_len", "must be at least 1 byte"));
        }
        crate::crypto::install_default_provider();
        if let Some(revocations) = &self.revocations {
            // A revoked token is held for as long as this layer accepts it.
            revocations.cover_leeway(self.leeway);
        }
        let rules = Rules {
            issuers: self.issuers,
            audiences: self.audiences,
            leeway: self.leeway.as_secs(),
            require_exp: self.require_exp,
            typ: self.typ,
            understood_crit: self.understood_crit,
            max_lifetime: self.max_lifetime.map(|d| d.as_secs()),
            required_claims: self.required_claims,
            grants: self.grants.map(Arc::new),
            accept_logout_events: false,
        };
        #[cfg(feature = "jwks")]
        let remote = self.remote;
        #[cfg(not(feature = "jwks"))]
        let remote: Option<std::convert::Infallible> = None;
        let providers = if self.providers.is_empty() {
            let keys = match remote {
                None => ProviderKeys::Static(self.keys),
                Some(_) if !self.keys.is_empty() => {
                    return Err(ConfigError::new(
                        "key",
                        "use either .key(..) or .remote_keys(..), not both",
                    ));
                }
                #[cfg(feature = "jwks")]
                Some(remote) => ProviderKeys::Remote(remote),
                #[cfg(not(feature = "jwks"))]
                Some(never) => match never {},
            };
            vec![ProviderState {
                issuer: None,
                keys: keys.into_source()?,
                rules,
            }]
        } else {
            if !self.keys.is_empty() || remote.is_some() || !rules.issuers.is_empty() {
                return Err(ConfigError::new(
                    "provider",
                    "with providers, give each its keys and issuer: no .key(..), .remote_keys(..) or .issuer(..)",
                ));
            }
            let mut states = Vec::with_capacity(self.providers.len());
            for provider in self.providers {
                if provider.issuer.is_empty() {
                    return Err(ConfigError::new(
                        "provider",
                        "a provider's issuer cannot be empty",
                    ));
                }
                if states
                    .iter()
                    .any(|s: &ProviderState| s.issuer.as_deref() == Some(provider.issuer.as_str()))
                {
                    return Err(ConfigError::new(
                        "provider",
                        format!("two providers for issuer {:?}", provider.issuer),
                    ));
                }
                let issuer: Arc<str> = Arc::from(provider.issuer);
                let mut rules = rules.clone();
                rules.issuers = vec![Arc::clone(&issuer)];
                if !provider.audiences.is_empty() {
                    rules.audiences = provider
                        .audiences
                        .into_iter()
                        .map(String::into_boxed_str)
                        .collect();
                }
                states.push(ProviderState {
                    issuer: Some(issuer),
                    keys: provider.keys.into_source()?,
                    rules,
                });
            }
            states
        };
        Ok(JwtAuthLayer {
            state: Arc::new(AuthState {
                providers,
                sources,
                max_token_len: self.max_token_len,
                clock: self.clock,
                authorize: self.authorize,
                cache: (self.cache_capacity > 0)
                    .then(|| TokenCache::new(self.cache_capacity, self.cache_ttl.as_secs())),
                trace_subject: self.trace_subject,
                exempt: self.exempt,
                revocations: self.revocations,
                metrics: AuthMetrics::new(),
                time_cache_hits: self.time_cache_hits,
                hand_on_token: std::sync::atomic::AtomicBool::new(false),
                routes: self.routes,
            }),
            mode: self.mode,
            shadow: self.shadow,
            responder: DefaultResponder,
        })
    }
}
