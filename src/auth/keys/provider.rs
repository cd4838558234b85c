//! Issuers and where their keys come from.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{Key, KeySet};
use crate::auth::claims_check::Rules;
use crate::error::{AuthError, AuthErrorKind, ConfigError};

/// A future a request waits on while keys are fetched.
pub(crate) type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The keys of one issuer: fixed (rotated by hand) or fetched.
pub(crate) enum KeySource {
    Static(ArcSwap<KeySet>),
    #[cfg(feature = "jwks")]
    Remote(super::jwks::RemoteKeys),
}

impl KeySource {
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<KeySet>> {
        match self {
            Self::Static(keys) => keys.load(),
            #[cfg(feature = "jwks")]
            Self::Remote(remote) => remote.load(),
        }
    }

    /// For remote keys, a fetch an unknown `kid` may trigger.
    pub(crate) fn refresh_for_unknown_kid(&self) -> Option<Wait> {
        match self {
            Self::Static(_) => None,
            #[cfg(feature = "jwks")]
            Self::Remote(remote) => remote.refresh_for_unknown_kid(),
        }
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(keys) => f.debug_tuple("Static").field(&keys.load().len()).finish(),
            #[cfg(feature = "jwks")]
            Self::Remote(remote) => f.debug_tuple("Remote").field(remote).finish(),
        }
    }
}

pub(crate) enum ProviderKeys {
    Static(Vec<Key>),
    #[cfg(feature = "jwks")]
    Remote(super::jwks::RemoteKeys),
}

impl ProviderKeys {
    pub(crate) fn into_source(self) -> Result<KeySource, ConfigError> {
        Ok(match self {
            Self::Static(keys) => KeySource::Static(ArcSwap::from_pointee(KeySet::new(keys)?)),
            #[cfg(feature = "jwks")]
            Self::Remote(remote) => KeySource::Remote(remote),
        })
    }
}

/// One trusted issuer (Envoy's "provider"): the `iss` its tokens carry, the
/// keys that sign them, and the audiences they must name.
///
/// With several providers, a token's `iss` selects its provider before any
/// key is looked up; a token from an unknown issuer is refused without any
/// fetch.
pub struct Provider {
    pub(crate) issuer: String,
    pub(crate) keys: ProviderKeys,
    pub(crate) audiences: Vec<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// An issuer whose tokens are signed by `keys`.
    pub fn new(issuer: impl Into<String>, keys: impl IntoIterator<Item = Key>) -> Self {
        Self {
            issuer: issuer.into(),
            keys: ProviderKeys::Static(keys.into_iter().collect()),
            audiences: Vec::new(),
        }
    }

    /// An issuer whose keys are fetched (feature `jwks`).
    #[cfg(feature = "jwks")]
    pub fn remote(issuer: impl Into<String>, keys: super::jwks::RemoteKeys) -> Self {
        Self {
            issuer: issuer.into(),
            keys: ProviderKeys::Remote(keys),
            audiences: Vec::new(),
        }
    }

    /// An audience this issuer's tokens must name (instead of the builder's).
    #[must_use]
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }
}

/// A provider ready for requests.
#[derive(Debug)]
pub(crate) struct ProviderState {
    pub(crate) issuer: Option<Arc<str>>,
    pub(crate) keys: KeySource,
    pub(crate) rules: Rules,
}

/// Picks the provider of a token: the only one, or the one its `iss` names.
/// The `iss` is read before the signature is checked, only to choose keys;
/// the chosen provider's rules check it again after verification.
pub(crate) fn select<'p>(
    providers: &'p [ProviderState],
    token: &str,
) -> Result<(usize, &'p ProviderState), AuthError> {
    if let [only] = providers {
        return Ok((0, only));
    }
    let untrusted = || {
        AuthError::new(
            AuthErrorKind::InvalidClaim,
            "the token's issuer is not trusted here",
        )
    };
    let payload = token.split('.').nth(1).ok_or_else(|| {
        AuthError::new(
            AuthErrorKind::Malformed,
            "a JWT has three dot-separated segments",
        )
    })?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::new(AuthErrorKind::Malformed, "the payload is not base64url"))?;
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        iss: Option<Cow<'a, str>>,
    }
    let peek: Peek<'_> = serde_json::from_slice(&json).map_err(|_| untrusted())?;
    let iss = peek.iss.ok_or_else(untrusted)?;
    providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.issuer.as_deref() == Some(&*iss))
        .ok_or_else(untrusted)
}
