//! Who made the request and what tollgate decided, on the current span.
//!
//! With the gateway gone, each service's spans must say who called and why a
//! request was refused. The layers record into these fields of the span the
//! request runs in — when that span declares them (tracing records only
//! declared fields, so undeclared ones cost nothing but a look-up):
//!
//! | field | recorded by | value |
//! |---|---|---|
//! | `tollgate.auth.outcome` | auth | `authenticated`, `anonymous`, `refused` |
//! | `tollgate.auth.reason` | auth | `none` or the refusal reason (`expired`, `revoked`, ...) |
//! | `tollgate.auth.refresh` | auth, with a sliding refresh | `refreshed`, `vetoed`, `failed` (only when a refresh was due) |
//! | `enduser.id` | auth, with `.trace_subject(true)` | the verified subject (personal data: opt-in) |
//! | `tollgate.rate_limit.policy` | rate limit | the policy that decided (the innermost limiter's, or the one that refused) |
//! | `tollgate.rate_limit.decision` | rate limit | `allowed`, `limited`, `failed_open`, `failed_closed` |
//!
//! `enduser.id` is OpenTelemetry's semantic-convention name, so with
//! `tracing-opentelemetry` the subject becomes the span attribute tracing
//! back ends show as the end user. Declare the fields where the request span
//! is made, e.g. with tower-http's `TraceLayer::make_span_with`:
//!
//! ```
//! use tracing::field::Empty;
//!
//! let span = tracing::info_span!(
//!     "request",
//!     "tollgate.auth.outcome" = Empty,
//!     "tollgate.auth.reason" = Empty,
//!     "tollgate.auth.refresh" = Empty,
//!     "enduser.id" = Empty,
//!     "tollgate.rate_limit.policy" = Empty,
//!     "tollgate.rate_limit.decision" = Empty,
//! );
//! # let _ = span;
//! ```

#[cfg(any(feature = "auth", feature = "rate-limit"))]
use tracing::Span;

/// The field names, for declaring them on a span.
pub mod fields {
    /// The auth layer's outcome.
    pub const AUTH_OUTCOME: &str = "tollgate.auth.outcome";
    /// The auth layer's reason (`none` when authenticated).
    pub const AUTH_REASON: &str = "tollgate.auth.reason";
    /// What a due sliding refresh did.
    pub const AUTH_REFRESH: &str = "tollgate.auth.refresh";
    /// The verified subject (opt-in: `trace_subject(true)`).
    pub const END_USER: &str = "enduser.id";
    /// The rate-limit policy that decided.
    pub const RATE_LIMIT_POLICY: &str = "tollgate.rate_limit.policy";
    /// The rate-limit decision.
    pub const RATE_LIMIT_DECISION: &str = "tollgate.rate_limit.decision";
}

/// The request's span, if it declares any of `names`. A service whose spans
/// declare none of tollgate's fields (or that runs in no span) pays for one
/// look-up of the current span's metadata, not for a `Span` handle: making
/// one takes a reference on the subscriber's span and dropping it releases
/// it, on every request.
#[cfg(any(feature = "auth", feature = "rate-limit"))]
fn declaring(names: &[&str]) -> Option<Span> {
    let declared = tracing::dispatcher::get_default(|dispatch| {
        dispatch.current_span().metadata().is_some_and(|meta| {
            let fields = meta.fields();
            names.iter().any(|name| fields.field(name).is_some())
        })
    });
    declared.then(Span::current)
}

#[cfg(feature = "auth")]
pub(crate) fn auth(outcome: &'static str, reason: &'static str) {
    if let Some(span) = declaring(&[fields::AUTH_OUTCOME, fields::AUTH_REASON]) {
        span.record(fields::AUTH_OUTCOME, outcome);
        span.record(fields::AUTH_REASON, reason);
    }
}

#[cfg(feature = "auth")]
pub(crate) fn refresh(outcome: &'static str) {
    if let Some(span) = declaring(&[fields::AUTH_REFRESH]) {
        span.record(fields::AUTH_REFRESH, outcome);
    }
}

#[cfg(feature = "auth")]
pub(crate) fn end_user(subject: Option<&str>) {
    if let Some(subject) = subject
        && let Some(span) = declaring(&[fields::END_USER])
    {
        span.record(fields::END_USER, subject);
    }
}

#[cfg(feature = "rate-limit")]
pub(crate) fn rate_limit(policy: &str, decision: &'static str) {
    if let Some(span) = declaring(&[fields::RATE_LIMIT_POLICY, fields::RATE_LIMIT_DECISION]) {
        span.record(fields::RATE_LIMIT_POLICY, policy);
        span.record(fields::RATE_LIMIT_DECISION, decision);
    }
}
