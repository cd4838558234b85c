//! axum extractors (feature `axum`, on `axum-core` only).

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header, request::Parts};

use super::claims::Claims;
use crate::identity::{Anonymous, Identity};

/// Why an extractor found no claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRejection {
    /// The layer ran and the caller is anonymous: 401.
    Unauthenticated,
    /// The layer did not run on this route, or its claims type differs from
    /// the extractor's: 500, a bug in the service.
    MissingLayer,
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthenticated => {
                let mut res = (
                    StatusCode::UNAUTHORIZED,
                    "this resource needs a valid token",
                )
                    .into_response();
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                res
            }
            Self::MissingLayer => (
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
        f.write_str(match self {
            Self::Unauthenticated => "the caller is anonymous",
            Self::MissingLayer => {
                "JwtAuthLayer is not mounted on this route (or its claims type differs)"
            }
        })
    }
}

impl std::error::Error for AuthRejection {}

fn lookup<X: Clone + Send + Sync + 'static>(parts: &Parts) -> Result<Option<X>, AuthRejection> {
    if let Some(x) = parts.extensions.get::<X>() {
        return Ok(Some(x.clone()));
    }
    if parts.extensions.get::<Anonymous>().is_some() {
        return Ok(None);
    }
    Err(AuthRejection::MissingLayer)
}

impl<S: Send + Sync, T: Send + Sync + 'static> FromRequestParts<S> for Claims<T> {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        lookup::<Self>(parts)?.ok_or(AuthRejection::Unauthenticated)
    }
}

impl<S: Send + Sync, T: Send + Sync + 'static> OptionalFromRequestParts<S> for Claims<T> {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        lookup::<Self>(parts)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        lookup::<Self>(parts)?.ok_or(AuthRejection::Unauthenticated)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Identity {
    type Rejection = AuthRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        lookup::<Self>(parts)
    }
}
