use std::ops::Deref;
use std::sync::Arc;

use super::error::AuthErrorKind;
use super::token::CredentialSource;

/// The verified claims of the request's token, as the service's own type.
///
/// Inserted into the request extensions by [`JwtAuthLayer`](super::JwtAuthLayer)
/// when a token verifies. Shared, not copied: cloning is an `Arc` clone. With
/// the `axum` feature, `Claims<T>` and `Option<Claims<T>>` are extractors;
/// tonic handlers read `request.extensions().get::<Claims<T>>()`.
#[derive(Debug)]
pub struct Claims<T>(pub Arc<T>);

impl<T> Clone for Claims<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T> Deref for Claims<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
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
/// [`Claims`] means "anonymous" rather than "layer not mounted".
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
