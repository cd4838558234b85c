//! A testing kit (feature `test-util`): what the auth layer would put in a
//! request, without keys, and signed tokens for integration tests, without
//! depending on a matching jsonwebtoken major.
//!
//! Handler tests — a handler taking `Claims<User>`, `Option<Claims<User>>` or
//! `Identity` answers as if the layer had run:
//!
//! ```
//! use http::Request;
//! use tollgate::{Claims, Identity, testing};
//!
//! #[derive(Clone, serde::Deserialize)]
//! struct User { sub: String }
//!
//! let mut request = Request::new(());
//! testing::authenticate(&mut request, User { sub: "alice".into() }, testing::identity("alice"));
//! assert_eq!(request.extensions().get::<Claims<User>>().unwrap().sub, "alice");
//! assert_eq!(request.extensions().get::<Identity>().unwrap().subject(), Some("alice"));
//!
//! let mut anonymous = Request::new(());
//! testing::anonymous(&mut anonymous);
//! assert!(anonymous.extensions().get::<Claims<User>>().is_none());
//! ```
//!
//! Integration tests — real tokens through the real layer:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::testing::{Signer, claims};
//!
//! let signer = Signer::hmac(b"0123456789abcdef0123456789abcdef").kid("k1");
//! let token = signer.sign(&claims("alice", "https://auth.example", "api", Duration::from_secs(600)))?;
//! assert_eq!(token.split('.').count(), 3);
//! # Ok::<_, tollgate::ConfigError>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::auth::Claims;
use crate::error::{AuthErrorKind, ConfigError};
use crate::identity::{Anonymous, CredentialSource, Identity};

/// An identity for `subject`, as a session cookie would give (no issuer).
pub fn identity(subject: impl Into<String>) -> Identity {
    identity_with(subject, None, CredentialSource::Cookie)
}

/// An identity with every field chosen.
pub fn identity_with(
    subject: impl Into<String>,
    issuer: Option<&str>,
    source: CredentialSource,
) -> Identity {
    Identity::new(
        Some(Arc::from(subject.into())),
        issuer.map(Arc::from),
        source,
    )
}

/// Puts `claims` and `identity` into the request, as the auth layer does for
/// a verified token.
pub fn authenticate<B, T: Send + Sync + 'static>(
    request: &mut Request<B>,
    claims: T,
    identity: Identity,
) {
    let extensions = request.extensions_mut();
    extensions.insert(Claims(Arc::new(claims)));
    extensions.insert(identity);
}

/// Marks the request anonymous, as the auth layer does when there is no
/// token (optional and lenient modes).
pub fn anonymous<B>(request: &mut Request<B>) {
    request.extensions_mut().insert(Anonymous::new(None));
}

/// Marks the request anonymous because its token was refused for `reason`
/// (lenient mode).
pub fn anonymous_rejected<B>(request: &mut Request<B>, reason: AuthErrorKind) {
    request
        .extensions_mut()
        .insert(Anonymous::new(Some(reason)));
}

/// Claims for `subject` from `issuer` to `audience`, issued now and valid
/// for `lifetime`: `sub`, `iss`, `aud`, `iat`, `exp`.
pub fn claims(
    subject: &str,
    issuer: &str,
    audience: &str,
    lifetime: Duration,
) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now.saturating_add(lifetime.as_secs()),
    })
}

/// Signs tokens with a test key: HS256 by default for HMAC, RS256 for RSA,
/// ES256 or ES384 for EC (choose with [`algorithm`](Self::algorithm)),
/// EdDSA for Ed25519.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn pem_error(what: &'static str) -> impl FnOnce(jsonwebtoken::errors::Error) -> ConfigError {
    move |_| ConfigError::new("signer", format!("not a PEM {what} private key"))
}

impl Signer {
    /// An HMAC secret (HS256).
    pub fn hmac(secret: impl AsRef<[u8]>) -> Self {
        Self::new(EncodingKey::from_secret(secret.as_ref()), Algorithm::HS256)
    }

    /// An RSA private key in PEM (RS256).
    ///
    /// # Errors
    /// Not a PEM RSA private key.
    pub fn rsa_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(pem_error("RSA"))?;
        Ok(Self::new(key, Algorithm::RS256))
    }

    /// An EC private key in PEM (ES256; call `.algorithm(Algorithm::ES384)`
    /// for a P-384 key).
    ///
    /// # Errors
    /// Not a PEM EC private key.
    pub fn ec_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(pem_error("EC"))?;
        Ok(Self::new(key, Algorithm::ES256))
    }

    /// An Ed25519 private key in PEM (EdDSA).
    ///
    /// # Errors
    /// Not a PEM Ed25519 private key.
    pub fn ed_pem(pem: &[u8]) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_ed_pem(pem).map_err(pem_error("Ed25519"))?;
        Ok(Self::new(key, Algorithm::EdDSA))
    }

    fn new(key: EncodingKey, algorithm: Algorithm) -> Self {
        Self {
            key,
            algorithm,
            kid: None,
        }
    }

    /// Signs with this algorithm (it must suit the key).
    #[must_use]
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Puts this `kid` in the token header.
    #[must_use]
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// A compact JWS of `claims` (header `typ: JWT`).
    ///
    /// # Errors
    /// The claims do not serialize, or the algorithm does not suit the key.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, ConfigError> {
        crate::crypto::install_default_provider();
        let mut header = Header::new(self.algorithm);
        header.kid.clone_from(&self.kid);
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| ConfigError::new("signer", format!("cannot sign: {e}")))
    }
}
