//! The decision for one request: find the token, pick the issuer's keys,
//! consult the cache, verify, authorise — and what the layer does with the
//! outcome (pass, refuse, or wait for a key fetch).

use std::sync::Arc;

use http::HeaderMap;
use serde::de::DeserializeOwned;

use super::cache::{Lookup, TokenCache};
use super::claims_check;
use super::keys::provider::{self, ProviderState, Wait};
use super::revocation::Revocations;
use super::token::Source;
use super::verify::{self, Verified};
use crate::clock::WallClock;
use crate::error::{AuthError, AuthErrorKind};
use crate::identity::{Identity, TokenFacts, VerifiedToken};
use crate::observe::AuthMetrics;

/// What the layer does with requests that carry no valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMode {
    /// Missing or invalid token: refused (401).
    #[default]
    Required,
    /// Missing token: passed on as [`Anonymous`](super::Anonymous); invalid
    /// token: refused (401).
    Optional,
    /// Missing or invalid token: passed on as [`Anonymous`](super::Anonymous).
    /// An expired session cookie still gets the anonymous experience.
    Lenient,
}

pub(crate) type Exempt = Box<dyn Fn(&http::request::Parts) -> bool + Send + Sync>;

pub(crate) type Authorize<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

/// Everything a layer needs per request, built once and shared.
pub(crate) struct AuthState<T> {
    /// One per trusted issuer; key sets are read without locks.
    pub(crate) providers: Vec<ProviderState>,
    pub(crate) sources: Vec<Source>,
    pub(crate) max_token_len: usize,
    pub(crate) clock: Arc<dyn WallClock>,
    pub(crate) authorize: Option<Authorize<T>>,
    pub(crate) cache: Option<TokenCache<T>>,
    pub(crate) trace_subject: bool,
    /// Revoked tokens and subjects, checked on every request.
    pub(crate) revocations: Option<Revocations>,
    /// Whether the verified token goes into the request's extensions, for
    /// the layers behind this one that need its text (sliding refresh,
    /// forwarding): set when such a layer is built from this one.
    pub(crate) hand_on_token: std::sync::atomic::AtomicBool,
    /// Requests these select are let through as anonymous, unchecked.
    pub(crate) exempt: Vec<Exempt>,
    /// Metric handles, registered once.
    pub(crate) metrics: AuthMetrics,
    /// The route table the layer was built with, for requests that arrive
    /// without a rule (a misordered stack).
    pub(crate) routes: Option<crate::routes::RouteTable>,
    /// Whether verified-token cache hits are timed too.
    #[cfg_attr(not(feature = "metrics"), expect(dead_code))]
    pub(crate) time_cache_hits: bool,
}

pub(crate) struct Authenticated<T> {
    pub(crate) claims: Arc<T>,
    pub(crate) identity: Identity,
    /// The token itself, when a layer behind needs it.
    pub(crate) token: Option<VerifiedToken>,
    /// Roles and scopes, when route rules need them.
    pub(crate) grants: Option<Arc<crate::routes::Grants>>,
}

/// What [`AuthState::authenticate`] found.
pub(crate) enum Outcome<T> {
    Authenticated(Authenticated<T>),
    NoToken,
    Failed(AuthError),
    /// Unknown `kid` with remote keys: wait for this fetch, then try again.
    Retry(Wait),
}

impl<T> AuthState<T> {
    /// This state's identity, for the layers built from it: its address
    /// (it lives in an `Arc` for as long as any layer holds it).
    pub(crate) fn origin(&self) -> usize {
        std::ptr::from_ref(self).cast::<()>() as usize
    }

    /// For a layer built from this one: from now on the verified token is
    /// handed on, marked with this state's origin (returned).
    pub(crate) fn hand_on_token(&self) -> usize {
        self.hand_on_token
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.origin()
    }
}

impl<T: DeserializeOwned> AuthState<T> {
    pub(crate) fn authenticate(&self, headers: &HeaderMap, allow_fetch: bool) -> Outcome<T> {
        let found = match super::token::extract(headers, &self.sources, self.max_token_len) {
            Ok(Some(found)) => found,
            Ok(None) => return Outcome::NoToken,
            Err(e) => return Outcome::Failed(e),
        };
        #[cfg(feature = "metrics")]
        let mut timer = self.metrics.verify_timer();
        let (index, provider) = match provider::select(&self.providers, &found.token) {
            Ok(selected) => selected,
            Err(e) => return Outcome::Failed(e),
        };
        let rules = &provider.rules;
        let now = self.clock.unix_now();
        let keys = provider.keys.load();
        // Cache entries are valid for one provider's one key generation.
        let generation = keys.generation ^ ((index as u64) << 56);
        let verify = || verify::verify::<T>(&found.token, &keys, rules, now).map(Arc::new);
        let verified = match &self.cache {
            None => verify(),
            Some(cache) => match cache.get(&found.token, now, rules.leeway, generation) {
                Lookup::Hit(verified) => {
                    // Verification time is the cost of misses; a hit is timed
                    // only when asked (it is a look-up, and a histogram
                    // record costs more than it).
                    #[cfg(feature = "metrics")]
                    if !self.time_cache_hits {
                        timer.skip();
                    }
                    claims_check::check_not_before(verified.nbf, verified.iat, now, rules.leeway)
                        .and_then(|()| {
                            claims_check::check_session_end(verified.session_end, now, rules.leeway)
                        })
                        .map(|()| verified)
                }
                Lookup::Expired => Err(AuthError::new(
                    AuthErrorKind::Expired,
                    "the token has expired",
                )),
                Lookup::Miss => verify().inspect(|verified| {
                    cache.insert(
                        &found.token,
                        Arc::clone(verified),
                        now,
                        rules.leeway,
                        generation,
                    );
                }),
            },
        };
        let verified = match verified {
            Ok(verified) => verified,
            Err(e) if e.kind() == AuthErrorKind::UnknownKey && allow_fetch => {
                return match provider.keys.refresh_for_unknown_kid() {
                    Some(wait) => Outcome::Retry(wait),
                    None => Outcome::Failed(e),
                };
            }
            Err(e) => return Outcome::Failed(e),
        };
        let Verified {
            claims,
            subject,
            issuer,
            ..
        } = &*verified;
        // Cache hits included: a revocation takes effect on the next request.
        if let Some(revocations) = &self.revocations
            && revocations.check(
                issuer.as_deref(),
                subject.as_deref(),
                verified.jti.as_deref(),
                verified.sid.as_deref(),
                super::revocation::issue_time(verified.iat, verified.session_start),
                now,
            )
        {
            return Outcome::Failed(AuthError::new(
                AuthErrorKind::Revoked,
                "the token has been revoked",
            ));
        }
        if let Some(authorize) = &self.authorize
            && !authorize(claims)
        {
            return Outcome::Failed(AuthError::new(
                AuthErrorKind::Forbidden,
                "the token does not grant access to this resource",
            ));
        }
        let identity = Identity::verified(
            subject.clone(),
            issuer.clone(),
            found.source,
            TokenFacts {
                jti: verified.jti.clone(),
                iat: verified.iat,
                exp: verified.exp,
                session_end: verified.session_end,
                session_start: verified.session_start,
                sid: verified.sid.clone(),
            },
            verified.derived.clone(),
        );
        Outcome::Authenticated(Authenticated {
            claims: Arc::clone(claims),
            identity,
            grants: verified.grants.clone(),
            token: self
                .hand_on_token
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| VerifiedToken::new(&found.token, self.origin())),
        })
    }
}
