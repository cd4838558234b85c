//! Guides: how to put the layers to work, topic by topic. Doc-only: nothing
//! here is code. Each page is also a file under `docs/guide/` in the
//! repository, and its snippets are compiled (and, where they need no
//! network, run) as doc tests, so that what users paste works.
//!
//! - [`authentication`]: tonic quick start, keys from an identity provider,
//!   the verified-token cache, refusals.
//! - [`sessions`]: logout and logout everywhere, revocations shared between
//!   replicas, sliding refresh, forwarding the caller's identity.
//! - [`rate_limiting`]: rate limiting, and limits across replicas in Redis.
//! - [`routes`]: per-route rules (access, roles and scopes, limits, CSRF)
//!   declared in TOML.
//! - [`operations`]: statistics, tracing, shadow mode, configuration files,
//!   alerts, hardening, testing your service.

#[doc = include_str!("../docs/guide/authentication.md")]
pub mod authentication {}

#[doc = include_str!("../docs/guide/sessions.md")]
pub mod sessions {}

#[doc = include_str!("../docs/guide/rate-limiting.md")]
pub mod rate_limiting {}

#[doc = include_str!("../docs/guide/routes.md")]
pub mod routes {}

#[doc = include_str!("../docs/guide/operations.md")]
pub mod operations {}
