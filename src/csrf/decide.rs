//! The CSRF guard's decision for one request: pass, or refuse a
//! cookie-authenticated unsafe or upgrade request from another site.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Request, StatusCode, header};

use crate::identity::{Anonymous, CredentialSource, Identity};
use crate::middleware::{Decide, Never, Verdict};
use crate::reject::{GrpcCode, Refusal, RefusalKind, Responder};

/// The guard's settings, shared by the layer's clones.
#[derive(Debug)]
pub(super) struct Config {
    pub(super) fetch_sites: Vec<String>,
    pub(super) origins: Vec<String>,
    pub(super) scheme: http::uri::Scheme,
    /// Set once the misordering warning has been logged.
    pub(super) warned_unauthenticated: std::sync::atomic::AtomicBool,
}

impl Clone for Config {
    fn clone(&self) -> Self {
        Self {
            fetch_sites: self.fetch_sites.clone(),
            origins: self.origins.clone(),
            scheme: self.scheme.clone(),
            warned_unauthenticated: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The decision of [`CsrfGuard`](super::CsrfGuard): the guard's settings and
/// its responder.
#[derive(Clone)]
pub struct CsrfDecision<R> {
    pub(super) config: Arc<Config>,
    pub(super) responder: R,
}

impl<R: fmt::Debug> fmt::Debug for CsrfDecision<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsrfGuard")
            .field("config", &self.config)
            .field("responder", &self.responder)
            .finish()
    }
}

/// Not among `http`'s standard names: a constant, so that no request parses
/// the name from a string.
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether the request can change state (or open a channel that can): an
/// unsafe method, or a protocol upgrade. An HTTP/2 WebSocket is an extended
/// `CONNECT`, which is not a safe method.
fn needs_check<B>(req: &Request<B>) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        || req.headers().contains_key(header::UPGRADE)
}

/// The request's own authority: `Host`, or the URI's (HTTP/2 `:authority`).
fn own_host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
}

impl Config {
    /// The auth layer never saw this request: the stack is misordered.
    fn warn_unauthenticated(&self) {
        if !self
            .warned_unauthenticated
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "tollgate: the CSRF guard saw a request that no JwtAuthLayer looked at; \
                 refusing unsafe and upgrade requests. Put JwtAuthLayer outside the guard \
                 (ServiceBuilder: add it first; axum Router::layer: add it last)"
            );
        }
    }

    fn allows<B>(&self, req: &Request<B>) -> bool {
        let headers: &HeaderMap = req.headers();
        if let Some(site) = headers.get(&SEC_FETCH_SITE) {
            return site.to_str().is_ok_and(|site| {
                self.fetch_sites
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(site.trim()))
            });
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            // Neither header: not a browser.
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim();
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return true;
        }
        // `null` and anything without a host are foreign.
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let own_scheme = req.uri().scheme().unwrap_or(&self.scheme);
        scheme.eq_ignore_ascii_case(own_scheme.as_str())
            && own_host(req).is_some_and(|host| host.eq_ignore_ascii_case(authority))
    }
}

impl<R, B> Decide<B> for CsrfDecision<R>
where
    R: Responder,
{
    type After = ();
    type Wait = Never;

    fn decide<F>(
        &self,
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, (), Never, B> {
        // A route rule can turn the guard off for its routes.
        let off = req
            .extensions()
            .get::<crate::routes::MatchedRoute>()
            .is_some_and(|route| route.0.csrf_check() == Some(false));
        let pass = off
            || !needs_check(&req)
            || match req.extensions().get::<Identity>() {
                Some(identity) => {
                    identity.source() != CredentialSource::Cookie || self.config.allows(&req)
                }
                None if req.extensions().get::<Anonymous>().is_some() => true,
                None => {
                    self.config.warn_unauthenticated();
                    false
                }
            };
        if pass {
            return Verdict::Pass(call(req), ());
        }
        tracing::debug!(
            outcome = "refused",
            reason = "csrf",
            "tollgate: cross-site request refused"
        );
        let (parts, _body) = req.into_parts();
        let refusal = Refusal::new(
            RefusalKind::Csrf,
            StatusCode::FORBIDDEN,
            GrpcCode::PermissionDenied,
            "csrf",
            "cross-site request with a session cookie",
        );
        Verdict::Refuse(self.responder.respond(&refusal, &parts))
    }
}
