//! # tollgate
//!
//! Tower layers that let a service do what its API gateway did: verify the
//! login JWT carried in a cookie (or `Authorization: Bearer`) and refuse bad
//! requests with the standard responses, in-process, without a proxy hop.
//!
//! The layers are generic over request and response bodies and depend on no
//! web framework: one layer value mounts on an axum `Router` and on a tonic
//! `Server`. Refusals are rendered per request as HTTP (`application/problem+json`)
//! or gRPC (`grpc-status`).
//!
//! See [`auth`] for the JWT layer.
//!
//! # Features
//!
//! | feature | default | what it gives |
//! |---|---|---|
//! | `aws-lc-rs` | yes | signature verification with aws-lc-rs |
//! | `rust-crypto` | no | signature verification with RustCrypto (used when `aws-lc-rs` is off) |
//! | `axum` | no | `Claims<T>`, `Option<Claims<T>>` and `Identity` extractors, on `axum-core` only |
//!
//! Enabling both crypto features is safe: tollgate verifies with aws-lc-rs and
//! installs it as jsonwebtoken's process default (see [`crypto`]).
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod auth;
pub mod body;
mod clock;
#[cfg(feature = "config")]
pub mod config;
pub mod crypto;
pub mod csrf;
mod error;
mod future;
pub mod identity;
mod macros;
pub mod observe;
pub mod rate_limit;
pub mod reject;

pub use auth::{Claims, JwtAuthLayer, Key};
pub use clock::{SystemClock, WallClock};
pub use error::ConfigError;
pub use error::{AuthError, AuthErrorKind};
pub use identity::{Anonymous, CredentialSource, Identity};
pub use rate_limit::{KeyBy, Quota, RateLimitLayer, TrustedProxies};
