//! The built refresh ([`Refresher`]) and one request's pending re-mint
//! ([`Due`]): decided in `call` with one comparison, minted when the
//! response is known to be a success.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

use super::once::Refreshed;
use super::settings::{Hook, Refresh, SameSite};
use super::signing::SigningKey;
use crate::auth::claims_check::{SESSION_END_CLAIM, SESSION_START_CLAIM};
use crate::auth::keys::provider::{KeySource, ProviderState};
use crate::auth::revocation::Revocations;
use crate::auth::token::Source;
use crate::auth::verify;
use crate::clock::WallClock;
use crate::error::ConfigError;
use crate::identity::Identity;
use crate::{observe, trace};

/// A refresh ready for requests, shared by the layer's clones.
pub(crate) struct Refresher {
    key: SigningKey,
    within: u64,
    lifetime: Option<u64>,
    max_session: u64,
    max_age: Option<u64>,
    cookie: Box<str>,
    /// `; Path=/; Secure; HttpOnly; SameSite=Lax`, rendered once.
    attributes: Box<str>,
    refreshed: Refreshed,
    leeway: u64,
    hook: Option<Hook>,
    clock: Arc<dyn WallClock>,
    revocations: Option<Revocations>,
}

/// What the layer knows when it builds the refresh.
pub(crate) struct Context<'a> {
    pub(crate) sources: &'a [Source],
    pub(crate) providers: &'a [ProviderState],
    pub(crate) clock: &'a Arc<dyn WallClock>,
    pub(crate) revocations: Option<&'a Revocations>,
    pub(crate) leeway: u64,
    pub(crate) max_lifetime: Option<u64>,
}

fn refresh_error(reason: impl Into<std::borrow::Cow<'static, str>>) -> ConfigError {
    ConfigError::new("refresh", reason)
}

/// An attribute value: visible ASCII and spaces, no `;` (RFC 6265 av-octet).
fn attribute_ok(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b';')
}

impl Refresh {
    pub(crate) fn build(self, cx: &Context<'_>) -> Result<Refresher, ConfigError> {
        let mut cookies = cx.sources.iter().filter_map(|source| match source {
            Source::Cookie(cookie) => Some(cookie.name()),
            Source::Bearer => None,
        });
        let cookie = match (cookies.next(), cookies.next()) {
            (Some(name), None) => name,
            (None, _) => {
                return Err(refresh_error(
                    "refresh re-mints cookie sessions: add .cookie(name) as a token source",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(refresh_error(
                    "refresh writes one cookie: configure a single .cookie(name) source",
                ));
            }
        };
        let within = self.within.as_secs();
        if within == 0 {
            return Err(refresh_error("within must be at least 1 second"));
        }
        let lifetime = self.lifetime.map(|l| l.as_secs());
        if let Some(lifetime) = lifetime {
            if lifetime <= within {
                return Err(refresh_error(
                    "the lifetime of re-minted tokens must be longer than within, or every request would re-mint",
                ));
            }
            if cx.max_lifetime.is_some_and(|max| lifetime > max) {
                return Err(refresh_error(
                    "the lifetime of re-minted tokens exceeds the layer's max_lifetime: the layer would refuse them",
                ));
            }
        }
        let max_session = self.max_session.as_secs();
        if max_session <= within {
            return Err(refresh_error(
                "max_session must be longer than within, or a session could never slide",
            ));
        }
        if self.capacity == 0 {
            return Err(refresh_error("capacity must be at least 1"));
        }
        if self.same_site == SameSite::None && !self.secure {
            return Err(refresh_error(
                "SameSite=None needs Secure (browsers drop the cookie otherwise)",
            ));
        }
        if !self.path.starts_with('/') || !attribute_ok(&self.path) {
            return Err(refresh_error(
                "the cookie path must start with / and hold no ; or control characters",
            ));
        }
        if let Some(domain) = &self.domain {
            let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
            if domain.is_empty() || !domain.bytes().all(ok) {
                return Err(refresh_error(
                    "the cookie domain must be a host name (letters, digits, - and .)",
                ));
            }
        }
        if cookie.starts_with("__Secure-") && !self.secure {
            return Err(refresh_error("a __Secure- cookie needs Secure"));
        }
        if cookie.starts_with("__Host-")
            && (!self.secure || self.path != "/" || self.domain.is_some())
        {
            return Err(refresh_error(
                "a __Host- cookie needs Secure, Path=/ and no Domain",
            ));
        }
        check_key(&self.key, cx.providers)?;

        let mut attributes = format!("; Path={}", self.path);
        if let Some(domain) = &self.domain {
            attributes.push_str("; Domain=");
            attributes.push_str(domain);
        }
        if self.secure {
            attributes.push_str("; Secure");
        }
        if self.http_only {
            attributes.push_str("; HttpOnly");
        }
        attributes.push_str("; SameSite=");
        attributes.push_str(self.same_site.as_str());
        Ok(Refresher {
            key: self.key,
            within,
            lifetime,
            max_session,
            max_age: self.max_age.map(|d| d.as_secs()),
            cookie: cookie.into(),
            attributes: attributes.into_boxed_str(),
            refreshed: Refreshed::new(self.capacity),
            leeway: cx.leeway,
            hook: self.hook,
            clock: Arc::clone(cx.clock),
            revocations: cx.revocations.cloned(),
        })
    }
}

/// Signs a probe and checks that the layer's keys accept it: a refresh must
/// never hand out a cookie the service itself would refuse.
fn check_key(key: &SigningKey, providers: &[ProviderState]) -> Result<(), ConfigError> {
    let header = header_json(key, Some("JWT"));
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(b"{}")
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.key, key.algorithm)
        .map_err(|_| {
            ConfigError::new(
                "refresh.key",
                format!(
                    "cannot sign with this key as {:?} (a P-384 EC key needs .algorithm(Algorithm::ES384))",
                    key.algorithm
                ),
            )
        })?;
    let probe = format!("{message}.{signature}");
    for provider in providers {
        let Err(e) = verify::signature_accepted(&probe, &provider.keys.load()) else {
            continue;
        };
        let whose = provider
            .issuer
            .as_deref()
            .map(|iss| format!(" of issuer {iss:?}"))
            .unwrap_or_default();
        match provider.keys {
            KeySource::Static(_) => {
                return Err(ConfigError::new(
                    "refresh.key",
                    format!(
                        "a token signed by the refresh key would be refused by the layer's keys{whose} ({}): add the matching verification key with the same kid",
                        e.detail()
                    ),
                ));
            }
            #[cfg(feature = "jwks")]
            KeySource::Remote(_) => tracing::warn!(
                kid = key.key_id(),
                reason = e.detail(),
                "tollgate: the refresh key does not verify under the remote keys{whose} fetched so far; re-minted cookies will be refused until it does"
            ),
        }
    }
    Ok(())
}

fn header_json(key: &SigningKey, typ: Option<&str>) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("alg".into(), serde_json::json!(key.algorithm));
    if let Some(typ) = typ {
        header.insert("typ".into(), Value::from(typ));
    }
    if let Some(kid) = key.key_id() {
        header.insert("kid".into(), Value::from(kid));
    }
    serde_json::to_vec(&Value::Object(header)).unwrap_or_default()
}

/// A re-mint one request may get, decided before the inner service runs.
pub(crate) struct Due {
    refresher: Arc<Refresher>,
    token: Box<str>,
    digest: u64,
    identity: Identity,
}

impl std::fmt::Debug for Due {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Due").finish_non_exhaustive()
    }
}

/// Why a re-mint failed (logged at debug, never with the token).
type Failure = &'static str;

/// What a re-mint gave.
enum Minted {
    /// The new token and the cookie's `Max-Age`.
    Token(String, u64),
    /// The hook vetoed.
    Vetoed,
    /// The session's absolute end leaves nothing to gain.
    SessionEnded,
}

impl Refresher {
    /// Now, on the auth layer's clock.
    pub(crate) fn now(&self) -> u64 {
        self.clock.unix_now()
    }

    /// Whether a verified cookie token with `exp` is inside the window:
    /// one comparison until it is.
    #[inline]
    pub(crate) fn due(
        self: &Arc<Self>,
        token: &str,
        exp: Option<u64>,
        now: u64,
        identity: &Identity,
    ) -> Option<Box<Due>> {
        let exp = exp?;
        if exp.saturating_sub(now) > self.within {
            return None;
        }
        self.due_slow(token, now, identity)
    }

    #[cold]
    fn due_slow(self: &Arc<Self>, token: &str, now: u64, identity: &Identity) -> Option<Box<Due>> {
        let digest = self.refreshed.digest(token);
        if self.refreshed.contains(digest, now) {
            return None;
        }
        Some(Box::new(Due {
            refresher: Arc::clone(self),
            token: token.into(),
            digest,
            identity: identity.clone(),
        }))
    }

    /// The new token and the cookie's `Max-Age`, unless the hook vetoed or
    /// the session ends before the new token would gain anything.
    fn mint(&self, token: &str, identity: &Identity, now: u64) -> Result<Minted, Failure> {
        let lifetime = match (self.lifetime, identity.issued_at(), identity.expires_at()) {
            (Some(lifetime), _, _) => lifetime,
            (None, Some(iat), Some(exp)) if exp > iat => exp - iat,
            _ => {
                return Err(
                    "the token has no iat to take its lifetime from: set Refresh::lifetime",
                );
            }
        };
        if lifetime <= self.within {
            return Err("the token's lifetime is not longer than the refresh window");
        }
        let mut segments = token.split('.');
        let (Some(header_b64), Some(payload_b64)) = (segments.next(), segments.next()) else {
            return Err("the token is not a JWS");
        };
        #[derive(serde::Deserialize)]
        struct Typ {
            #[serde(default)]
            typ: Option<String>,
        }
        let typ = URL_SAFE_NO_PAD
            .decode(header_b64)
            .ok()
            .and_then(|json| serde_json::from_slice::<Typ>(&json).ok())
            .ok_or("the token's header does not decode")?
            .typ;
        let mut claims: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or("the token's claims do not decode")?;
        // The session's start (its authentication, else the first token's
        // issue) and absolute end: carried unchanged once set, set by the
        // first refresh. The start keeps successors inside a subject
        // revocation whose cut-off precedes their own `iat`.
        let session_start = identity
            .session_started_at()
            .or(identity.issued_at())
            .unwrap_or(now)
            .min(now);
        let session_end = match claims.get(SESSION_END_CLAIM).and_then(Value::as_u64) {
            Some(end) => end,
            None => session_start.saturating_add(self.max_session),
        };
        let old_exp = identity.expires_at().unwrap_or(0);
        let exp = now.saturating_add(lifetime).min(session_end);
        if exp <= old_exp {
            return Ok(Minted::SessionEnded);
        }
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(exp));
        claims.insert(SESSION_END_CLAIM.into(), Value::from(session_end));
        claims.insert(SESSION_START_CLAIM.into(), Value::from(session_start));
        if let Some(hook) = &self.hook
            && !hook(&mut claims)
        {
            return Ok(Minted::Vetoed);
        }
        // Never past the session's end, whatever the hook wrote.
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or(exp)
            .min(session_end);
        claims.insert("exp".into(), Value::from(exp));
        claims.insert(SESSION_END_CLAIM.into(), Value::from(session_end));
        claims.insert(SESSION_START_CLAIM.into(), Value::from(session_start));
        let payload = serde_json::to_vec(&claims).map_err(|_| "the claims do not serialize")?;
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json(&self.key, typ.as_deref())),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.key.key, self.key.algorithm)
                .map_err(|_| "signing failed")?;
        let max_age = self.max_age.unwrap_or_else(|| exp.saturating_sub(now));
        Ok(Minted::Token(format!("{message}.{signature}"), max_age))
    }

    /// Whether the response already sets the session cookie (the handler
    /// logged the user out or in: its word wins).
    fn response_sets_cookie(&self, headers: &HeaderMap) -> bool {
        headers.get_all(header::SET_COOKIE).iter().any(|value| {
            value
                .as_bytes()
                .strip_prefix(self.cookie.as_bytes())
                .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"="))
        })
    }
}

/// A response carrying a session must not be stored by a shared cache and
/// served to someone else: `Cache-Control` loses `public` and gains
/// `private` (other directives kept; `no-store` is enough on its own), and
/// `Vary` gains `Cookie` (existing values kept).
fn keep_private(headers: &mut HeaderMap) {
    let mut directives: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.eq_ignore_ascii_case("public"))
        .map(str::to_owned)
        .collect();
    let private = directives
        .iter()
        .any(|d| d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store"));
    if !private {
        directives.insert(0, "private".to_owned());
    }
    if let Ok(value) = HeaderValue::try_from(directives.join(", ")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    let varies = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|v| v == "*" || v.eq_ignore_ascii_case("cookie"));
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("Cookie"));
    }
}

fn outcome(outcome: &'static str) {
    observe::auth_refresh(outcome);
    trace::refresh(outcome);
}

impl Due {
    /// Adds the re-minted cookie to a successful response (2xx/3xx, and no
    /// gRPC error status in its headers), once per token per replica.
    pub(crate) fn apply(&self, status: StatusCode, headers: &mut HeaderMap) {
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        // A gRPC error answered with HTTP 200 (trailers-only response).
        if headers
            .get("grpc-status")
            .is_some_and(|code| code.as_bytes() != b"0")
        {
            return;
        }
        let refresher = &*self.refresher;
        if refresher.response_sets_cookie(headers) {
            outcome("vetoed");
            tracing::debug!("tollgate: refresh skipped, the response sets the session cookie");
            return;
        }
        let now = refresher.clock.unix_now();
        let identity = &self.identity;
        // Revoked while the request ran (its own logout): no new token.
        if let Some(revocations) = &refresher.revocations
            && revocations.is_revoked(
                identity.issuer(),
                identity.subject(),
                identity.token_id(),
                crate::auth::revocation::issue_time(
                    identity.issued_at(),
                    identity.session_started_at(),
                ),
                now,
            )
        {
            outcome("vetoed");
            tracing::debug!("tollgate: refresh skipped, the token was revoked");
            return;
        }
        let until = identity
            .expires_at()
            .unwrap_or(now)
            .saturating_add(refresher.leeway);
        if !refresher.refreshed.claim(self.digest, until, now) {
            // Another request carrying the same cookie minted already.
            return;
        }
        let (token, max_age) = match refresher.mint(&self.token, identity, now) {
            Ok(Minted::Token(token, max_age)) => (token, max_age),
            Ok(Minted::Vetoed) => {
                outcome("vetoed");
                tracing::debug!("tollgate: refresh vetoed by the hook");
                return;
            }
            Ok(Minted::SessionEnded) => {
                outcome("session_ended");
                tracing::debug!("tollgate: refresh skipped, the session's absolute end is reached");
                return;
            }
            Err(reason) => {
                outcome("failed");
                tracing::debug!(reason, "tollgate: refresh failed");
                return;
            }
        };
        let cookie = format!(
            "{}={token}; Max-Age={max_age}{}",
            refresher.cookie, refresher.attributes
        );
        match HeaderValue::try_from(cookie) {
            Ok(value) => {
                headers.append(header::SET_COOKIE, value);
                keep_private(headers);
                outcome("refreshed");
                tracing::trace!("tollgate: session cookie refreshed");
            }
            Err(_) => {
                outcome("failed");
                tracing::debug!(
                    reason = "the cookie is not a header value",
                    "tollgate: refresh failed"
                );
            }
        }
    }
}
