//! axum extractors (feature `axum`, on `axum-core` only).

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::{StatusCode, request::Parts};

use super::claims::Claims;
use crate::error::{AuthError, AuthErrorKind};
use crate::identity::{Anonymous, Identity};
use crate::reject::{Protocol, Refusal};

/// Why an extractor found no claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRejectionKind {
    /// The layer ran and the caller is anonymous: 401, rendered like the
    /// layer's own refusals.
    Unauthenticated,
    /// The layer did not run on this route, or its claims type differs from
    /// the extractor's: 500, a bug in the service.
    MissingLayer,
}

/// The rejection of tollgate's extractors.
///
/// An anonymous caller gets the response the auth layer itself would give
/// for the same reason — problem+json with `reason`, `WWW-Authenticate`, or a
/// gRPC status for gRPC calls — so a route answers one way whether the
/// layer or the extractor refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRejection {
    kind: AuthRejectionKind,
    /// Why a token that was present was ignored (lenient mode).
    rejected: Option<AuthErrorKind>,
    protocol: Protocol,
}

impl AuthRejection {
    /// What went wrong.
    pub fn kind(&self) -> AuthRejectionKind {
        self.kind
    }

    /// For an anonymous caller whose token the layer ignored (lenient mode):
    /// why. `None`: there was no token.
    pub fn token_rejected(&self) -> Option<AuthErrorKind> {
        self.rejected
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self.kind {
            AuthRejectionKind::Unauthenticated => {
                let error = match self.rejected {
                    None => AuthError::new(AuthErrorKind::Missing, "this resource needs a token"),
                    Some(kind) => AuthError::new(
                        kind,
                        "this resource needs a valid token; the one sent was not accepted",
                    ),
                };
                Refusal::auth(&error)
                    .render_as(self.protocol)
                    .map(axum_core::body::Body::from)
            }
            AuthRejectionKind::MissingLayer => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "tollgate: no claims in the request extensions: mount tollgate::auth::JwtAuthLayer \
                 on this route, with the same claims type as the extractor",
            )
                .into_response(),
        }
    }
}

impl std::fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            AuthRejectionKind::Unauthenticated => "the caller is anonymous",
            AuthRejectionKind::MissingLayer => {
                "JwtAuthLayer is not mounted on this route (or its claims type differs)"
            }
        })
    }
}

impl std::error::Error for AuthRejection {}

fn lookup<X: Clone + Send + Sync + 'static>(parts: &Parts) -> Result<X, AuthRejection> {
    if let Some(x) = parts.extensions.get::<X>() {
        return Ok(x.clone());
    }
    let anonymous = parts.extensions.get::<Anonymous>();
    Err(AuthRejection {
        kind: if anonymous.is_some() {
            AuthRejectionKind::Unauthenticated
        } else {
            AuthRejectionKind::MissingLayer
        },
        rejected: anonymous.and_then(Anonymous::rejected),
        protocol: Protocol::of(parts),
    })
}

/// `Option<X>`: `None` for an anonymous caller, the rejection only when the
/// layer is missing.
fn lookup_optional<X: Clone + Send + Sync + 'static>(
    parts: &Parts,
) -> Result<Option<X>, AuthRejection> {
    match lookup(parts) {
        Ok(x) => Ok(Some(x)),
        Err(e) if e.kind == AuthRejectionKind::Unauthenticated => Ok(None),
        Err(e) => Err(e),
    }
}

impl<S: Send + Sync, T: Send + Sync + 'static> FromRequestParts<S> for Claims<T> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        lookup::<Self>(parts)
    }
}

impl<S: Send + Sync, T: Send + Sync + 'static> OptionalFromRequestParts<S> for Claims<T> {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        lookup_optional::<Self>(parts)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        lookup::<Self>(parts)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        lookup_optional::<Self>(parts)
    }
}
