//! Who the caller is: the seam between the auth layer and the layers behind
//! it. [`JwtAuthLayer`](crate::auth::JwtAuthLayer) inserts an [`Identity`]
//! (a verified token) or [`Anonymous`] (no token, or one ignored in lenient
//! mode) into every request it lets through; rate limiting and the CSRF guard
//! read them, and take a request carrying neither as a sign that the auth
//! layer is not in front of them.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::error::AuthErrorKind;

/// Where the token of an authenticated request came from.
///
/// The CSRF guard uses it: a cookie is sent by the browser on its own, an
/// `Authorization` header is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialSource {
    /// A cookie.
    Cookie,
    /// The `Authorization: Bearer` header.
    AuthorizationHeader,
}

/// Who the caller is, without knowing the claims type: what later layers
/// (rate limiting, CSRF) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    subject: Option<Arc<str>>,
    issuer: Option<Arc<str>>,
    source: CredentialSource,
    token: TokenFacts,
    derived: Option<Derived>,
}

/// What later layers derive from a verified token, computed once and shared
/// by every request that carries the same token (through the auth layer's
/// cache): the rate limiter's subject key, a SHA-256 it would otherwise
/// compute on every request. Not part of the identity's equality.
#[derive(Clone, Default)]
pub(crate) struct Derived(
    #[cfg_attr(
        not(feature = "rate-limit"),
        expect(dead_code, reason = "read by the rate limiter's subject key")
    )]
    Arc<OnceLock<[u8; 16]>>,
);

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

impl fmt::Debug for Derived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Derived")
    }
}

/// What a handler needs to revoke the token it was called with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TokenFacts {
    pub(crate) jti: Option<Arc<str>>,
    pub(crate) iat: Option<u64>,
    pub(crate) exp: Option<u64>,
    pub(crate) session_end: Option<u64>,
    pub(crate) session_start: Option<u64>,
    /// The identity provider's session id (`sid`), for session revocation.
    pub(crate) sid: Option<Arc<str>>,
}

impl Identity {
    #[cfg(any(test, feature = "test-util"))]
    pub(crate) fn new(
        subject: Option<Arc<str>>,
        issuer: Option<Arc<str>>,
        source: CredentialSource,
    ) -> Self {
        Self {
            subject,
            issuer,
            source,
            token: TokenFacts::default(),
            derived: None,
        }
    }

    /// The identity of a verified token, built in one go (no builder
    /// chain: each step would move the whole identity).
    #[cfg(feature = "auth")]
    pub(crate) fn verified(
        subject: Option<Arc<str>>,
        issuer: Option<Arc<str>>,
        source: CredentialSource,
        token: TokenFacts,
        derived: Derived,
    ) -> Self {
        Self {
            subject,
            issuer,
            source,
            token,
            derived: Some(derived),
        }
    }

    /// Shares `derived` (the verified token's) with this identity.
    #[cfg(test)]
    pub(crate) fn with_derived(mut self, derived: Derived) -> Self {
        self.derived = Some(derived);
        self
    }

    /// The subject's rate-limit key digest: computed by `compute` once per
    /// verified token when the identity came from one, else every time.
    #[cfg(feature = "rate-limit")]
    pub(crate) fn subject_digest(&self, compute: impl FnOnce() -> [u8; 16]) -> [u8; 16] {
        match &self.derived {
            Some(derived) => *derived.0.get_or_init(compute),
            None => compute(),
        }
    }

    /// The token's `sub`, if it had one.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The token's `iss`, when the layer was configured with issuers.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Where the token came from.
    pub fn source(&self) -> CredentialSource {
        self.source
    }

    /// The identity provider's session id (the token's `sid` claim, as
    /// OpenID Connect sets it), if it had one: what a back-channel logout
    /// names.
    pub fn session_id(&self) -> Option<&str> {
        self.token.sid.as_deref()
    }

    /// The token's `jti`, if it had one (to revoke just this token).
    pub fn token_id(&self) -> Option<&str> {
        self.token.jti.as_deref()
    }

    /// The token's `iat`, in seconds since the Unix epoch.
    pub fn issued_at(&self) -> Option<u64> {
        self.token.iat
    }

    /// The token's `exp`, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> Option<u64> {
        self.token.exp
    }

    /// The session's absolute end (the token's `session_end` claim, set by
    /// a sliding refresh with [`Refresh::max_session`](crate::refresh::Refresh::max_session)),
    /// in seconds since the Unix epoch: no successor of the token lives
    /// past it.
    pub fn session_ends_at(&self) -> Option<u64> {
        self.token.session_end
    }

    /// When the token's session began: the earlier of its `auth_time` and
    /// its [`session_start`](crate::auth::SESSION_START_CLAIM) claim (set by
    /// a sliding refresh), in seconds since the Unix epoch. A revocation by
    /// subject refuses the token if this, or its `iat`, is at or before the
    /// cut-off.
    pub fn session_started_at(&self) -> Option<u64> {
        self.token.session_start
    }
}

/// Marks a request the layer let through without an identity: no token
/// (optional and lenient modes), or a bad token (lenient mode).
///
/// Its presence tells extractors that the layer ran, so a missing
/// `Claims` means "anonymous" rather than "layer not mounted".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anonymous {
    rejected: Option<AuthErrorKind>,
}

impl Anonymous {
    #[cfg(feature = "auth")]
    pub(crate) fn new(rejected: Option<AuthErrorKind>) -> Self {
        Self { rejected }
    }

    /// Why a token that was present was not accepted (lenient mode), e.g. so
    /// a handler can clear an expired cookie. `None`: there was no token.
    pub fn rejected(&self) -> Option<AuthErrorKind> {
        self.rejected
    }
}

/// The text of a request's verified token, put into its extensions by the
/// auth layer only when a layer behind it needs the token itself (sliding
/// refresh, forwarding) and was built from it. Crate-private: handlers see
/// [`Identity`] and never the token.
#[cfg(feature = "auth")]
#[derive(Clone)]
pub(crate) struct VerifiedToken {
    token: Box<str>,
    /// Which auth layer verified it (the address of its shared state): a
    /// layer built from another auth layer does not use it.
    origin: usize,
}

#[cfg(feature = "auth")]
impl VerifiedToken {
    pub(crate) fn new(token: &str, origin: usize) -> Self {
        Self {
            token: token.into(),
            origin,
        }
    }

    /// The token, if the auth layer `origin` verified it.
    pub(crate) fn from(&self, origin: usize) -> Option<&str> {
        (self.origin == origin).then_some(&*self.token)
    }
}

#[cfg(feature = "auth")]
impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.write_str("VerifiedToken(<redacted>)")
    }
}
