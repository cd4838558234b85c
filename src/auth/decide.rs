//! The auth layer's decision for one request: exempt, route rule, then
//! authenticate — pass (with `Claims`, `Identity` or `Anonymous` in the
//! extensions), refuse, or wait for a key fetch and decide again.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use http::Request;
use serde::de::DeserializeOwned;

use super::authenticate::{AuthMode, AuthState, Authenticated, Outcome};
use super::claims::Claims;
use super::keys::provider::Wait;
use crate::error::{AuthError, AuthErrorKind};
use crate::identity::Anonymous;
use crate::middleware::{Decide, Verdict};
use crate::reject::{Refusal, Responder};
use crate::routes::{Access, MatchedRoute, Route};
use crate::trace;

/// The decision of [`JwtAuth`](super::JwtAuth): the layer's shared state,
/// its mode and its responder.
pub struct AuthDecision<T, R> {
    pub(crate) state: Arc<AuthState<T>>,
    pub(crate) mode: AuthMode,
    pub(crate) shadow: bool,
    pub(crate) responder: R,
}

impl<T, R: Clone> Clone for AuthDecision<T, R> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            mode: self.mode,
            shadow: self.shadow,
            responder: self.responder.clone(),
        }
    }
}

impl<T, R: fmt::Debug> fmt::Debug for AuthDecision<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field("mode", &self.mode)
            .field("shadow", &self.shadow)
            .field("responder", &self.responder)
            .finish_non_exhaustive()
    }
}

impl<T, R> AuthDecision<T, R>
where
    T: DeserializeOwned + Send + Sync + 'static,
    R: Responder,
{
    fn step<B>(&self, req: Request<B>, allow_fetch: bool) -> Step<B> {
        step(
            &self.state,
            self.mode,
            self.shadow,
            &self.responder,
            req,
            allow_fetch,
        )
    }
}

impl<T, R, B> Decide<B> for AuthDecision<T, R>
where
    T: DeserializeOwned + Send + Sync + 'static,
    R: Responder,
{
    type After = ();
    type Wait = Wait;

    fn decide<F>(
        &self,
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, (), Wait, B> {
        match self.step(req, true) {
            Step::Pass(req) => Verdict::Pass(call(req), ()),
            Step::Refuse(response) => Verdict::Refuse(response),
            Step::Wait(wait, req) => Verdict::Wait(wait, req),
        }
    }

    fn resume<F>(
        &self,
        (): (),
        req: Request<B>,
        call: impl FnOnce(Request<B>) -> F,
    ) -> Verdict<F, (), Infallible, B> {
        // Second and last try: no further fetch.
        match self.step(req, false) {
            Step::Pass(req) => Verdict::Pass(call(req), ()),
            Step::Refuse(response) => Verdict::Refuse(response),
            // `step` does not ask to wait when fetching is not allowed.
            Step::Wait(..) => Verdict::Refuse(crate::reject::polled_after_completion()),
        }
    }
}

/// What `step` decided.
enum Step<B> {
    Pass(Request<B>),
    Refuse(http::Response<bytes::Bytes>),
    Wait(Wait, Request<B>),
}

/// Whether a token's grants meet a route's needs. No grants read (the layer
/// was not given the table): refused, with one `warn`.
fn granted(route: &crate::routes::Route, grants: Option<&crate::routes::Grants>) -> bool {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if route.denies() {
        return false;
    }
    match grants {
        Some(grants) => route.granted(grants),
        None => {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    route = route.pattern(),
                    "tollgate: a route needs roles or scopes but the auth layer does not read \
                     them: build it with JwtAuthBuilder::routes(&table). Refusing (403)"
                );
            }
            false
        }
    }
}

/// The per-request decision, shared by `call` and the retry after a key fetch.
///
/// In shadow mode a refusal is computed, counted and logged, and the request
/// goes on as anonymous.
fn step<T, R, B>(
    state: &AuthState<T>,
    mode: AuthMode,
    shadow: bool,
    responder: &R,
    mut req: Request<B>,
    allow_fetch: bool,
) -> Step<B>
where
    T: DeserializeOwned + Send + Sync + 'static,
    R: Responder,
{
    if !state.exempt.is_empty() {
        let (parts, body) = req.into_parts();
        let exempt = state.exempt.iter().any(|exempt| exempt(&parts));
        req = Request::from_parts(parts, body);
        if exempt {
            // Later layers see that the auth layer looked: anonymous.
            req.extensions_mut().insert(Anonymous::new(None));
            return Step::Pass(req);
        }
    }
    // Route rules, when a RouteRulesLayer outside put the request's rule
    // here: its access replaces the layer's mode.
    // Borrowed, not cloned: only a route that needs grants is kept (an `Arc`
    // clone) past this point.
    let route = match req.extensions().get::<MatchedRoute>() {
        Some(MatchedRoute(route)) => Some(route),
        None => state.routes.as_ref().map(|table| {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "tollgate: the auth layer was built with route rules but a request \
                     reached it without its rule: mount RouteRulesLayer outside the auth \
                     layer (ServiceBuilder: first; axum Router::layer: last). The auth layer \
                     matches the route itself meanwhile; rate limits and the CSRF guard \
                     apply to every route"
                );
            }
            table.matched(req.method(), req.uri().path())
        }),
    };
    let (mode, needs) = match route {
        None => (Some(mode), None),
        Some(route) => {
            let mode = match route.access_mode() {
                Access::Off => None,
                Access::Optional => Some(AuthMode::Optional),
                Access::Lenient => Some(AuthMode::Lenient),
                _ => Some(AuthMode::Required),
            };
            (mode, route.needs_grants().then(|| Arc::clone(route)))
        }
    };
    let Some(mode) = mode else {
        // Access off: the token is not looked at.
        req.extensions_mut().insert(Anonymous::new(None));
        return Step::Pass(req);
    };
    let error = match state.authenticate(req.headers(), allow_fetch) {
        Outcome::Authenticated(authenticated)
            if needs
                .as_deref()
                .is_some_and(|route| !granted(route, authenticated.grants.as_deref())) =>
        {
            let detail = if needs.as_deref().is_some_and(Route::denies) {
                "the request path is not in canonical form (an empty, '.' or '..' segment, or \
                 an encoded '.', '/' or '\\')"
            } else {
                "the token lacks the roles or scopes this route needs"
            };
            AuthError::new(AuthErrorKind::Forbidden, detail)
        }
        Outcome::Authenticated(Authenticated {
            claims,
            identity,
            token,
            ..
        }) => {
            state.metrics.authenticated();
            trace::auth("authenticated", "none");
            if state.trace_subject {
                trace::end_user(identity.subject());
                tracing::trace!(
                    outcome = "authenticated",
                    subject = identity.subject(),
                    "tollgate: auth"
                );
            } else {
                tracing::trace!(outcome = "authenticated", "tollgate: auth");
            }
            let extensions = req.extensions_mut();
            extensions.insert(Claims(claims));
            extensions.insert(identity);
            if let Some(token) = token {
                extensions.insert(token);
            }
            return Step::Pass(req);
        }
        Outcome::Retry(wait) => return Step::Wait(wait, req),
        Outcome::NoToken if mode == AuthMode::Required => {
            AuthError::new(AuthErrorKind::Missing, "this resource needs a token")
        }
        Outcome::NoToken => {
            state.metrics.anonymous(AuthErrorKind::Missing);
            trace::auth("anonymous", AuthErrorKind::Missing.reason());
            tracing::trace!(outcome = "anonymous", reason = "missing", "tollgate: auth");
            req.extensions_mut().insert(Anonymous::new(None));
            return Step::Pass(req);
        }
        Outcome::Failed(e) if mode == AuthMode::Lenient && e.kind() != AuthErrorKind::Forbidden => {
            state.metrics.anonymous(e.kind());
            trace::auth("anonymous", e.kind().reason());
            tracing::debug!(
                outcome = "anonymous",
                reason = e.kind().reason(),
                "tollgate: token ignored (lenient)"
            );
            req.extensions_mut().insert(Anonymous::new(Some(e.kind())));
            return Step::Pass(req);
        }
        Outcome::Failed(e) => e,
    };
    let reason = error.kind().reason();
    state.metrics.refused(error.kind(), !shadow);
    trace::auth("refused", reason);
    if shadow {
        tracing::debug!(
            outcome = "refused",
            reason,
            detail = error.detail(),
            enforced = false,
            "tollgate: would refuse (shadow mode)"
        );
        req.extensions_mut()
            .insert(Anonymous::new(Some(error.kind())));
        return Step::Pass(req);
    }
    tracing::debug!(
        outcome = "refused",
        reason,
        detail = error.detail(),
        "tollgate: request refused"
    );
    let (parts, _body) = req.into_parts();
    Step::Refuse(responder.respond(&Refusal::auth(&error), &parts))
}
