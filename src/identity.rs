//! Who the caller is: the seam between the auth layer and the layers behind
//! it. [`JwtAuthLayer`](crate::auth::JwtAuthLayer) inserts an [`Identity`]
//! (a verified token) or [`Anonymous`] (no token, or one ignored in lenient
//! mode) into every request it lets through; rate limiting and the CSRF guard
//! read them, and take a request carrying neither as a sign that the auth
//! layer is not in front of them.

use std::sync::Arc;

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
}

impl Identity {
    pub(crate) fn new(
        subject: Option<Arc<str>>,
        issuer: Option<Arc<str>>,
        source: CredentialSource,
    ) -> Self {
        Self {
            subject,
            issuer,
            source,
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
    pub(crate) fn new(rejected: Option<AuthErrorKind>) -> Self {
        Self { rejected }
    }

    /// Why a token that was present was not accepted (lenient mode), e.g. so
    /// a handler can clear an expired cookie. `None`: there was no token.
    pub fn rejected(&self) -> Option<AuthErrorKind> {
        self.rejected
    }
}
