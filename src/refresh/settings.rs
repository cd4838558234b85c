//! [`Refresh`]: what a sliding refresh re-mints and how the cookie is set.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::SigningKey;

/// Default absolute length of a sliding session: 7 days from its start.
pub const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Default bound on the tokens remembered as re-minted, per layer.
pub const DEFAULT_REFRESHED_CAPACITY: usize = 10_000;

/// The `SameSite` attribute of the refreshed cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SameSite {
    /// Sent on same-site requests only.
    Strict,
    /// Sent on same-site requests and top-level navigations (the default).
    #[default]
    Lax,
    /// Sent on cross-site requests too; needs `Secure`.
    None,
}

impl SameSite {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

pub(crate) type Hook = Box<dyn Fn(&mut Map<String, Value>) -> bool + Send + Sync>;

/// Sliding refresh of cookie sessions, for a
/// [`RefreshSessionLayer`](super::RefreshSessionLayer): when a
/// verified token from the session cookie has at most `within` left before
/// its `exp`, the response carries a `Set-Cookie` with the same claims under
/// a new `iat` / `exp`, signed by `key`. See the [module docs](super).
///
/// ```
/// use std::time::Duration;
/// use tollgate::auth::{JwtAuthLayer, Key};
/// use tollgate::refresh::{Refresh, RefreshSessionLayer, SameSite, SigningKey};
///
/// # fn main() -> Result<(), tollgate::ConfigError> {
/// let secret = b"0123456789abcdef0123456789abcdef";
/// let auth = JwtAuthLayer::<serde_json::Value>::builder()
///     .key(Key::hmac(secret)?.kid("s1"))
///     .cookie("da3")
///     .build()?;
/// let refresh = RefreshSessionLayer::new(
///     &auth,
///     Refresh::new(SigningKey::hmac(secret)?.kid("s1"), Duration::from_secs(3 * 60))
///         .same_site(SameSite::Strict)
///         .domain("example.com"),
/// )?;
/// # let _ = (auth, refresh);
/// # Ok(()) }
/// ```
pub struct Refresh {
    pub(crate) key: SigningKey,
    pub(crate) within: Duration,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) max_session: Duration,
    pub(crate) http_only: bool,
    pub(crate) secure: bool,
    pub(crate) same_site: SameSite,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) capacity: usize,
    pub(crate) hook: Option<Hook>,
}

impl fmt::Debug for Refresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresh")
            .field("key", &self.key)
            .field("within", &self.within)
            .field("lifetime", &self.lifetime)
            .field("max_session", &self.max_session)
            .field("http_only", &self.http_only)
            .field("secure", &self.secure)
            .field("same_site", &self.same_site)
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("max_age", &self.max_age)
            .field("capacity", &self.capacity)
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

impl Refresh {
    /// Re-mints cookie tokens with at most `within` left, signed by `key`.
    /// Cookie defaults: `HttpOnly`, `Secure`, `SameSite=Lax`, `Path=/`, no
    /// `Domain`, `Max-Age` = the new token's lifetime.
    pub fn new(key: SigningKey, within: Duration) -> Self {
        Self {
            key,
            within,
            lifetime: None,
            max_session: DEFAULT_MAX_SESSION,
            http_only: true,
            secure: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
            domain: None,
            max_age: None,
            capacity: DEFAULT_REFRESHED_CAPACITY,
            hook: None,
        }
    }

    /// The lifetime (`exp − iat`) of re-minted tokens. Default: the
    /// original token's own `exp − iat` (a token without `iat` is then not
    /// refreshed). Must be longer than `within`.
    #[must_use]
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// The absolute length of a session (default 7 days): however often it
    /// slides, no successor expires later than the session's start plus
    /// this. The first refresh writes the end into the token's
    /// [`session_end`](crate::auth::SESSION_END_CLAIM) claim (the start
    /// being the token's `auth_time`, else its `iat`), later refreshes copy
    /// it unchanged, so every replica agrees; the layer refuses a token
    /// past it. Revoking a token's `jti` holds the revocation until its
    /// session could end, so no successor outlives a logout.
    #[must_use]
    pub fn max_session(mut self, max_session: Duration) -> Self {
        self.max_session = max_session;
        self
    }

    /// The `HttpOnly` attribute (default on: scripts cannot read the session).
    #[must_use]
    pub fn http_only(mut self, on: bool) -> Self {
        self.http_only = on;
        self
    }

    /// The `Secure` attribute (default on: HTTPS only).
    #[must_use]
    pub fn secure(mut self, on: bool) -> Self {
        self.secure = on;
        self
    }

    /// The `SameSite` attribute (default `Lax`).
    #[must_use]
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// The `Path` attribute (default `/`).
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The `Domain` attribute (default none: the cookie goes to this host
    /// only).
    #[must_use]
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The `Max-Age` attribute (default: what the new token has left, its
    /// lifetime).
    #[must_use]
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// How many re-minted tokens this layer remembers, so that requests
    /// carrying the same old cookie mint once (default 10,000; each entry
    /// is kept until the old token expires).
    #[must_use]
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Called with the claims about to be signed (the original ones with
    /// the new `iat` and `exp`): it may change them (cap `exp` at an
    /// absolute session end, update a claim), or return `false` to veto the
    /// refresh. Called at most once per token per replica.
    #[must_use]
    pub fn hook(
        mut self,
        hook: impl Fn(&mut Map<String, Value>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }
}
