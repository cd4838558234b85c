//! OpenID Connect Back-Channel Logout 1.0, the receiving end: the identity
//! provider POSTs a signed `logout_token` when a session ends, and every
//! replica refuses that session's tokens from then on. See
//! [`BackChannelLogout`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::authenticate::AuthState;
use super::claims_check::Rules;
use super::keys::provider::{self, ProviderState};
use super::layer::JwtAuthLayer;
use super::revocation::Revocations;
use super::verify;
use crate::clock::WallClock;
use crate::error::{AuthErrorKind, ConfigError};

/// The event a logout token carries (Back-Channel Logout 1.0 §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = super::claims_check::BACKCHANNEL_LOGOUT_EVENT;

/// The `typ` a logout token is explicitly typed with (§2.4).
const LOGOUT_TYP: &str = "logout+jwt";

/// Default for [`BackChannelLogoutBuilder::max_age`].
pub const DEFAULT_LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(120);

/// The largest form body read: a logout token is well under this.
const DEFAULT_MAX_BODY: usize = 16 * 1024;

/// What the receiver reads from a verified logout token's claims.
#[derive(Deserialize)]
struct LogoutClaims {
    #[serde(default)]
    events: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    sid: Option<String>,
    /// `Some` when the claim is there at all, `null` included.
    #[serde(default, deserialize_with = "verify::present")]
    nonce: Option<IgnoredAny>,
}

/// The providers and clock of an auth layer, whatever its claims type.
trait Keys: Send + Sync {
    fn providers(&self) -> &[ProviderState];
    fn clock(&self) -> &Arc<dyn WallClock>;
}

impl<T: Send + Sync> Keys for AuthState<T> {
    fn providers(&self) -> &[ProviderState] {
        &self.providers
    }
    fn clock(&self) -> &Arc<dyn WallClock> {
        &self.clock
    }
}

/// A provider's rules for logout tokens: typed (`typ: logout+jwt`) and
/// untyped.
struct LogoutRules {
    typed: Rules,
    untyped: Rules,
}

struct Inner {
    keys: Arc<dyn Keys>,
    /// One per provider, in the layer's order.
    rules: Vec<LogoutRules>,
    revocations: Revocations,
    max_age: u64,
    max_body: usize,
}

/// Receives OpenID Connect Back-Channel Logout 1.0 requests: a tower
/// service to mount on the route registered with the identity provider as
/// the client's `backchannel_logout_uri`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::auth::{BackChannelLogout, JwtAuthLayer, Key, Provider, Revocations};
///
/// # fn main() -> Result<(), tollgate::ConfigError> {
/// let revocations = Revocations::new().max_token_lifetime(Duration::from_secs(15 * 60));
/// let auth = JwtAuthLayer::<serde_json::Value>::builder()
///     .provider(
///         Provider::new("https://id.example.com", [Key::hmac(b"0123456789abcdef0123456789abcdef")?])
///             .audience("my-client"),
///     )
///     .cookie("session")
///     .revocations(revocations.clone())
///     .build()?;
/// let logout = BackChannelLogout::builder(&auth).build()?;
/// // axum: Router::new().route_service("/backchannel-logout", logout)
/// # let _ = logout;
/// # Ok(()) }
/// ```
///
/// A `POST` with an `application/x-www-form-urlencoded` body holding one
/// `logout_token` is checked as the specification requires (§2.6): the
/// signature, with the keys and issuers of the auth layer it is built from
/// (a remote key set is fetched for an unknown `kid`, as for a request);
/// `iss`; `aud` naming this client; `exp`; `iat` no older than
/// [`max_age`](BackChannelLogoutBuilder::max_age) and not in the future
/// beyond the leeway; `typ`, when present, `logout+jwt` (or the generic
/// `JWT`, which some providers send); an `events` object
/// with the back-channel logout event; a `sid` or a `sub`; no `nonce`; a
/// `jti` not seen before. The replay set is kept with the layer's
/// [`Revocations`]: in Redis when the set is shared
/// ([`share`](Revocations::share)), so a token replayed to another
/// replica is refused too.
///
/// Then it revokes, on every replica sharing the set:
/// - with a `sid`, that session ([`Revocations::revoke_session`]): every
///   token carrying that `sid` from that issuer;
/// - with only a `sub`, every token of the subject issued up to the logout
///   token's `iat` ([`Revocations::revoke_subject`]).
///
/// Answers `200` with an empty body, or `400` with a JSON
/// `{"error": "invalid_request", "error_description": …}` (the description
/// never quotes the token), both with `Cache-Control: no-store`; `405` to
/// another method and `413` to a body over 16 KiB.
///
/// If Redis does not answer the replay check, the local set decides and
/// the logout goes ahead: a replayed logout only ends a session again.
///
/// The auth layer, for its part, refuses a token typed `logout+jwt` as a
/// credential when it is not configured for a `typ` of its own.
#[derive(Clone)]
pub struct BackChannelLogout {
    inner: Arc<Inner>,
}

impl fmt::Debug for BackChannelLogout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackChannelLogout")
            .field("providers", &self.inner.rules.len())
            .field("max_age_secs", &self.inner.max_age)
            .finish_non_exhaustive()
    }
}

/// Builds a [`BackChannelLogout`]: see [`BackChannelLogout::builder`].
pub struct BackChannelLogoutBuilder {
    keys: Arc<dyn Keys>,
    revocations: Option<Revocations>,
    audiences: Vec<String>,
    max_age: Duration,
}

impl fmt::Debug for BackChannelLogoutBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackChannelLogoutBuilder")
            .field("audiences", &self.audiences)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl BackChannelLogout {
    /// A receiver verifying with `auth`'s providers and keys, revoking in
    /// its [`Revocations`] set.
    pub fn builder<T: Send + Sync + 'static, R>(
        auth: &JwtAuthLayer<T, R>,
    ) -> BackChannelLogoutBuilder {
        BackChannelLogoutBuilder {
            keys: Arc::clone(&auth.state) as Arc<dyn Keys>,
            revocations: auth.state.revocations.clone(),
            audiences: Vec::new(),
            max_age: DEFAULT_LOGOUT_TOKEN_MAX_AGE,
        }
    }
}

impl BackChannelLogoutBuilder {
    /// The client id logout tokens are addressed to (their `aud`), instead
    /// of the providers' audiences. Call again to accept several.
    #[must_use]
    pub fn audience(mut self, client_id: impl Into<String>) -> Self {
        self.audiences.push(client_id.into());
        self
    }

    /// How old a logout token's `iat` may be (default 2 min).
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Revokes in this set instead of the layer's.
    #[must_use]
    pub fn revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// The receiver.
    ///
    /// # Errors
    /// No revocation set (give the auth layer one, or call
    /// [`revocations`](Self::revocations): the set the layer checks, or
    /// logouts would change nothing); a provider without an issuer or
    /// without an audience (the specification requires both checks); a
    /// zero `max_age`.
    pub fn build(self) -> Result<BackChannelLogout, ConfigError> {
        let error = |m: &str| ConfigError::new("backchannel_logout", m.to_owned());
        let revocations = self.revocations.ok_or_else(|| {
            error(
                "a back-channel logout revokes in a Revocations set: give the auth layer one \
                 (JwtAuthBuilder::revocations), the set its requests are checked against",
            )
        })?;
        if self.max_age.is_zero() {
            return Err(error("the logout token max_age cannot be zero"));
        }
        let mut rules = Vec::new();
        for provider in self.keys.providers() {
            let mut base = provider.rules.clone();
            if base.issuers.is_empty() {
                return Err(error(
                    "back-channel logout checks the logout token's iss: configure the auth \
                     layer's providers with their issuer",
                ));
            }
            if !self.audiences.is_empty() {
                base.audiences = self.audiences.iter().map(|a| a.as_str().into()).collect();
            }
            if base.audiences.is_empty() {
                return Err(error(
                    "back-channel logout checks that the logout token is addressed to this \
                     client: give the client id with BackChannelLogoutBuilder::audience",
                ));
            }
            base.require_exp = true;
            base.max_lifetime = None;
            base.required_claims = vec!["iat".into(), "jti".into()];
            base.accept_logout_events = true;
            let untyped = Rules {
                typ: None,
                ..base.clone()
            };
            let typed = Rules {
                typ: Some(LOGOUT_TYP.into()),
                ..base
            };
            rules.push(LogoutRules { typed, untyped });
        }
        Ok(BackChannelLogout {
            inner: Arc::new(Inner {
                keys: self.keys,
                rules,
                revocations,
                max_age: self.max_age.as_secs().max(1),
                max_body: DEFAULT_MAX_BODY,
            }),
        })
    }
}

/// Why a logout request is refused (the `error_description`; never token
/// content).
struct Refused(StatusCode, &'static str);

fn bad(description: &'static str) -> Refused {
    Refused(StatusCode::BAD_REQUEST, description)
}

fn respond(result: Result<(), Refused>) -> Response<Full<Bytes>> {
    let (status, body, json) = match result {
        Ok(()) => (StatusCode::OK, Bytes::new(), false),
        Err(Refused(status, description)) => {
            let body = serde_json::json!({
                "error": "invalid_request",
                "error_description": description,
            });
            (status, Bytes::from(body.to_string()), true)
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if json {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

impl Inner {
    async fn handle<B>(&self, request: Request<B>) -> Result<(), Refused>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.method() != Method::POST {
            return Err(Refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "a logout token is sent with POST",
            ));
        }
        let form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            return Err(bad("the body must be application/x-www-form-urlencoded"));
        }
        let body = Limited::new(request.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Refused(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large")
                } else {
                    bad("the body could not be read")
                }
            })?
            .to_bytes();
        let mut token = None;
        for (name, value) in form_urlencoded::parse(&body) {
            if name == "logout_token" {
                if token.is_some() {
                    return Err(bad("logout_token is given more than once"));
                }
                token = Some(value);
            }
        }
        let token = token.ok_or_else(|| bad("the request has no logout_token"))?;
        self.logout(&token).await
    }

    async fn logout(&self, token: &str) -> Result<(), Refused> {
        let providers = self.keys.providers();
        let (index, provider) = provider::select(providers, token)
            .map_err(|_| bad("the logout token's issuer is not trusted"))?;
        let rules = match verify::header_typ(token) {
            Ok(None) => &self.rules[index].untyped,
            Ok(Some(typ)) if verify::media_type_eq(&typ, LOGOUT_TYP) => &self.rules[index].typed,
            // The generic type, which identity providers that do not type
            // their logout tokens explicitly put there.
            Ok(Some(typ)) if verify::media_type_eq(&typ, "JWT") => &self.rules[index].untyped,
            Ok(Some(_)) => return Err(bad("the token's typ is not logout+jwt")),
            Err(_) => return Err(bad("the logout token is not a JWT")),
        };
        let now = self.keys.clock().unix_now();
        let attempt = || {
            let keys = provider.keys.load();
            verify::verify::<LogoutClaims>(token, &keys, rules, now)
        };
        let verified = match attempt() {
            Err(e) if e.kind() == AuthErrorKind::UnknownKey => {
                match provider.keys.refresh_for_unknown_kid() {
                    Some(wait) => {
                        wait.await;
                        attempt()
                    }
                    None => Err(e),
                }
            }
            other => other,
        };
        let verified = verified.map_err(|e| bad(describe(e.kind())))?;
        let claims = &verified.claims;
        let event = claims
            .events
            .as_ref()
            .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT));
        if !event.is_some_and(serde_json::Value::is_object) {
            return Err(bad(
                "the logout token has no events claim with the back-channel logout event",
            ));
        }
        if claims.nonce.is_some() {
            return Err(bad("a logout token must not have a nonce"));
        }
        if claims.sid.as_deref() == Some("") {
            return Err(bad("the logout token's sid is empty"));
        }
        let sid = claims.sid.as_deref();
        let subject = verified.subject.as_deref();
        if sid.is_none() && subject.is_none() {
            return Err(bad("the logout token has neither sid nor sub"));
        }
        let (Some(iat), Some(jti), Some(exp)) =
            (verified.iat, verified.jti.as_deref(), verified.exp)
        else {
            return Err(bad("the logout token needs iat, exp and jti"));
        };
        if iat.saturating_add(self.max_age) < now {
            return Err(bad("the logout token is too old (iat)"));
        }
        let leeway = rules.leeway;
        if iat > now.saturating_add(leeway) {
            return Err(bad("the logout token was issued in the future (iat)"));
        }
        let issuer = verified.issuer.as_deref();
        // Held until the token could no longer be accepted anyway.
        let until = exp
            .min(iat.saturating_add(self.max_age))
            .saturating_add(leeway)
            .max(now + 1);
        if !self.revocations.first_logout(issuer, jti, until).await {
            return Err(bad("the logout token has been used before (jti)"));
        }
        match sid {
            Some(sid) => self.revocations.revoke_session(issuer, sid),
            None => {
                if let Some(subject) = subject {
                    self.revocations.revoke_subject(issuer, subject, iat);
                }
            }
        }
        tracing::info!(
            by_session = sid.is_some(),
            "tollgate: back-channel logout accepted"
        );
        Ok(())
    }
}

/// The `error_description` for a verification failure.
fn describe(kind: AuthErrorKind) -> &'static str {
    match kind {
        AuthErrorKind::Expired => "the logout token has expired",
        AuthErrorKind::BadSignature | AuthErrorKind::UnknownKey => {
            "the logout token's signature does not verify with the provider's keys"
        }
        AuthErrorKind::UnsupportedAlgorithm => "the logout token's alg is not accepted",
        AuthErrorKind::InvalidHeader => "the logout token's header is not accepted",
        AuthErrorKind::InvalidClaim => {
            "the logout token's claims are not valid (iss, aud, iat, exp, jti, sub, sid)"
        }
        AuthErrorKind::NotYetValid => "the logout token is not valid yet (nbf)",
        _ => "the logout token is not a valid JWT",
    }
}

impl<B> tower_service::Service<Request<B>> for BackChannelLogout
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(respond(inner.handle(request).await)) })
    }
}
