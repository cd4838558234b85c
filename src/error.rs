//! The crate's error types: [`ConfigError`] (what to fix before a layer can
//! be built) and [`AuthError`] (why a request was not authenticated).

use std::borrow::Cow;
use std::fmt;

/// A layer, key or quota could not be built from the configuration it was given.
///
/// The message names the setting and says what to change; it never contains key
/// material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    setting: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    pub(crate) fn new(setting: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting that is wrong, e.g. `"key"` or `"cookie"`.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why it is wrong and what to do about it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why a request was not authenticated or not authorised.
///
/// Opaque on purpose: match on [`AuthError::kind`], which may grow variants.
/// The message never contains token bytes or key material, so it is safe to
/// log and to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    kind: AuthErrorKind,
    detail: Cow<'static, str>,
}

/// The kind of an [`AuthError`]; [`AuthErrorKind::reason`] is its stable,
/// machine-readable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// No token in any configured source (`missing`).
    Missing,
    /// The token is longer than the configured cap (`too_large`); rejected
    /// before any decoding.
    TooLarge,
    /// Not a well-formed compact JWS: segments, base64url, header JSON, or
    /// several `Authorization` fields (`malformed`).
    Malformed,
    /// The token cookie appears more than once with different values, a sign
    /// of cookie tossing (`ambiguous_cookie`).
    AmbiguousCookie,
    /// `alg` is `none`, unknown, or not allowed for the selected key
    /// (`unsupported_algorithm`).
    UnsupportedAlgorithm,
    /// No configured key has the token's `kid` (`unknown_key`).
    UnknownKey,
    /// The signature does not verify (`bad_signature`).
    BadSignature,
    /// `exp` is in the past, beyond the leeway (`expired`).
    Expired,
    /// `nbf` is in the future, beyond the leeway (`not_yet_valid`).
    NotYetValid,
    /// A claim is missing, of the wrong type or has the wrong value: `iss`,
    /// `aud`, `exp`, lifetime, required claims, or the claims type
    /// (`invalid_claim`).
    InvalidClaim,
    /// A header parameter is unacceptable: `typ` mismatch or an unknown
    /// `crit` extension (`invalid_header`).
    InvalidHeader,
    /// The token is valid but the authorisation hook refused it
    /// (`insufficient_scope`).
    Forbidden,
    /// The token was revoked: by its `jti`, or as one of its subject's
    /// tokens issued before a logout everywhere (`revoked`).
    Revoked,
}

impl AuthErrorKind {
    /// Stable machine-readable name, used in problem+json `reason` and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::AmbiguousCookie => "ambiguous_cookie",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::InvalidClaim => "invalid_claim",
            Self::InvalidHeader => "invalid_header",
            Self::Forbidden => "insufficient_scope",
            Self::Revoked => "revoked",
        }
    }
}

impl AuthError {
    #[cfg(feature = "auth")]
    pub(crate) fn new(kind: AuthErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> AuthErrorKind {
        self.kind
    }

    /// A human-readable explanation (no token content).
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.reason(), self.detail)
    }
}

impl std::error::Error for AuthError {}
