//! [`SigningKey`]: the private key a refresh re-mints with.

use jsonwebtoken::{Algorithm, EncodingKey};

use crate::auth::MIN_HMAC_SECRET_LEN;
use crate::error::ConfigError;

/// The kind of key, which bounds the algorithms it may sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// An HMAC secret of this many bytes.
    Hmac(usize),
    Rsa,
    Ec,
    Ed,
}

/// A private key that signs re-minted session tokens, with the `kid` put in
/// their header.
///
/// The layer checks at build time that a token signed by it verifies under
/// the layer's own keys, so a refresh never hands out a cookie the service
/// would refuse.
#[derive(Clone)]
pub struct SigningKey {
    pub(crate) key: EncodingKey,
    pub(crate) algorithm: Algorithm,
    pub(crate) kid: Option<Box<str>>,
    family: Family,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn signing_error(reason: impl Into<std::borrow::Cow<'static, str>>) -> ConfigError {
    ConfigError::new("refresh.key", reason)
}

impl SigningKey {
    /// An HMAC secret, signing with HS256 (choose HS384 or HS512 with
    /// [`algorithm`](Self::algorithm)).
    ///
    /// # Errors
    /// A secret shorter than 32 bytes.
    pub fn hmac(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(signing_error(format!(
                "an HMAC secret needs at least {MIN_HMAC_SECRET_LEN} bytes, this one has {}",
                secret.len()
            )));
        }
        Ok(Self::new(
            EncodingKey::from_secret(secret),
            Algorithm::HS256,
            Family::Hmac(secret.len()),
        ))
    }

    /// An RSA private key in PEM (PKCS#1 or PKCS#8), signing with RS256
    /// (RS384/512 and PS256/384/512 with [`algorithm`](Self::algorithm)).
    ///
    /// # Errors
    /// The PEM is not an RSA private key.
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_rsa_pem(pem.as_ref())
            .map_err(|_| signing_error("not an RSA private key in PEM"))?;
        Ok(Self::new(key, Algorithm::RS256, Family::Rsa))
    }

    /// An EC private key in PEM (PKCS#8), signing with ES256; a P-384 key
    /// needs `.algorithm(Algorithm::ES384)` (the layer's build checks that
    /// the pair signs).
    ///
    /// # Errors
    /// The PEM is not an EC private key.
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_ec_pem(pem.as_ref())
            .map_err(|_| signing_error("not an EC private key in PEM (PKCS#8)"))?;
        Ok(Self::new(key, Algorithm::ES256, Family::Ec))
    }

    /// An Ed25519 private key in PEM (PKCS#8), signing with EdDSA.
    ///
    /// # Errors
    /// The PEM is not an Ed25519 private key.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = EncodingKey::from_ed_pem(pem.as_ref())
            .map_err(|_| signing_error("not an Ed25519 private key in PEM (PKCS#8)"))?;
        Ok(Self::new(key, Algorithm::EdDSA, Family::Ed))
    }

    fn new(key: EncodingKey, algorithm: Algorithm, family: Family) -> Self {
        Self {
            key,
            algorithm,
            kid: None,
            family,
        }
    }

    /// Signs with `algorithm` instead of the key's default.
    ///
    /// # Errors
    /// An algorithm of another key family (`RS256` for an HMAC secret), or
    /// HS384 / HS512 with a secret shorter than the hash (48 / 64 bytes).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Result<Self, ConfigError> {
        use Algorithm::{
            ES256, ES384, EdDSA, HS256, HS384, HS512, PS256, PS384, PS512, RS256, RS384, RS512,
        };
        let fits = match (self.family, algorithm) {
            (Family::Hmac(_), HS256) => true,
            (Family::Hmac(len), HS384) => len >= 48,
            (Family::Hmac(len), HS512) => len >= 64,
            (Family::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => true,
            (Family::Ec, ES256 | ES384) => true,
            (Family::Ed, EdDSA) => true,
            _ => false,
        };
        if !fits {
            return Err(signing_error(format!(
                "{algorithm:?} does not suit this {:?} key{}",
                self.family,
                if matches!(self.family, Family::Hmac(_)) {
                    " (HS384 needs a 48-byte secret, HS512 a 64-byte one)"
                } else {
                    ""
                }
            )));
        }
        self.algorithm = algorithm;
        Ok(self)
    }

    /// Puts this `kid` in the header of re-minted tokens (it should name the
    /// matching verification key).
    #[must_use]
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into().into_boxed_str());
        self
    }

    /// The `kid` re-minted tokens carry, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm re-minted tokens are signed with.
    pub fn signing_algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_secrets_and_algorithms_are_checked() {
        assert!(SigningKey::hmac([1u8; 31]).is_err());
        let key = SigningKey::hmac([1u8; 32]).unwrap();
        assert_eq!(key.signing_algorithm(), Algorithm::HS256);
        assert!(key.clone().algorithm(Algorithm::HS384).is_err());
        assert!(key.clone().algorithm(Algorithm::RS256).is_err());
        let long = SigningKey::hmac([1u8; 64]).unwrap();
        assert_eq!(
            long.algorithm(Algorithm::HS512)
                .unwrap()
                .signing_algorithm(),
            Algorithm::HS512
        );
    }

    #[test]
    fn debug_hides_material() {
        let key = SigningKey::hmac(b"super-secret-super-secret-super-secret")
            .unwrap()
            .kid("k1");
        let shown = format!("{key:?}");
        assert!(!shown.contains("super"), "{shown}");
        assert!(shown.contains("k1"), "{shown}");
    }
}
