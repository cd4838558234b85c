//! Verification keys, each bound to the algorithms it may verify.

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::error::ConfigError;

#[cfg(feature = "jwks")]
pub(crate) mod jwks;
pub(crate) mod provider;

/// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// One verification key and the algorithms it may verify.
///
/// A token's `alg` only chooses among the algorithms of the key it selects,
/// so an HMAC secret never verifies an `RS256` token and a public RSA key is
/// never used as an HMAC secret (algorithm confusion). `none` is never
/// accepted.
#[derive(Clone)]
pub struct Key {
    pub(crate) kid: Option<Box<str>>,
    pub(crate) key: DecodingKey,
    pub(crate) algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn key_error(reason: impl Into<std::borrow::Cow<'static, str>>) -> ConfigError {
    ConfigError::new("key", reason)
}

impl Key {
    /// An HMAC secret. Allows HS256, plus HS384 from 48 bytes and HS512 from
    /// 64 bytes (a secret shorter than the hash weakens it).
    ///
    /// # Errors
    /// A secret shorter than 32 bytes.
    pub fn hmac(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(key_error(format!(
                "an HMAC secret needs at least {MIN_HMAC_SECRET_LEN} bytes, this one has {}",
                secret.len()
            )));
        }
        let mut algorithms = vec![Algorithm::HS256];
        if secret.len() >= 48 {
            algorithms.push(Algorithm::HS384);
        }
        if secret.len() >= 64 {
            algorithms.push(Algorithm::HS512);
        }
        Ok(Self {
            kid: None,
            key: DecodingKey::from_secret(secret),
            algorithms,
        })
    }

    /// An RSA public key in PEM (PKCS#1 or SPKI). Allows RS256/384/512 and
    /// PS256/384/512.
    ///
    /// # Errors
    /// The PEM is not an RSA public key.
    pub fn rsa_pem(pem: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = DecodingKey::from_rsa_pem(pem.as_ref()).map_err(|_| {
            key_error("not an RSA public key in PEM (BEGIN PUBLIC KEY / BEGIN RSA PUBLIC KEY)")
        })?;
        Ok(Self::with_family(key, AlgorithmFamily::Rsa))
    }

    /// An EC public key (P-256 or P-384) in PEM (SPKI). Allows ES256 for P-256
    /// and ES384 for P-384.
    ///
    /// # Errors
    /// The PEM is not a P-256 or P-384 public key.
    pub fn ec_pem(pem: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = DecodingKey::from_ec_pem(pem.as_ref())
            .map_err(|_| key_error("not an EC public key in PEM (BEGIN PUBLIC KEY)"))?;
        // The key holds the uncompressed point: 0x04 || x || y.
        let algorithm = match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => Algorithm::ES256,
            Ok(97) => Algorithm::ES384,
            _ => return Err(key_error("only P-256 and P-384 EC keys are supported")),
        };
        Ok(Self {
            kid: None,
            key,
            algorithms: vec![algorithm],
        })
    }

    /// An Ed25519 public key in PEM (SPKI). Allows EdDSA.
    ///
    /// # Errors
    /// The PEM is not an Ed25519 public key.
    pub fn ed_pem(pem: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = DecodingKey::from_ed_pem(pem.as_ref())
            .map_err(|_| key_error("not an Ed25519 public key in PEM (BEGIN PUBLIC KEY)"))?;
        if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
            return Err(key_error("only Ed25519 keys are supported for EdDSA"));
        }
        Ok(Self::with_family(key, AlgorithmFamily::Ed))
    }

    /// An RSA public key in DER (SubjectPublicKeyInfo, as `openssl pkey
    /// -pubout -outform DER` writes it).
    ///
    /// # Errors
    /// As [`Key::rsa_pem`].
    pub fn rsa_der(der: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Self::rsa_pem(spki_der_to_pem(der.as_ref()))
    }

    /// An EC public key in DER (SubjectPublicKeyInfo).
    ///
    /// # Errors
    /// As [`Key::ec_pem`].
    pub fn ec_der(der: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Self::ec_pem(spki_der_to_pem(der.as_ref()))
    }

    /// An Ed25519 public key in DER (SubjectPublicKeyInfo).
    ///
    /// # Errors
    /// As [`Key::ed_pem`].
    pub fn ed_der(der: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Self::ed_pem(spki_der_to_pem(der.as_ref()))
    }

    /// A key from a JWK. Its `kid` becomes the key's id; its `alg`, when
    /// present, is the only algorithm allowed.
    ///
    /// # Errors
    /// An encryption key (`use: "enc"` or an encryption `alg`), an unsupported
    /// key type or curve, an HMAC secret under 32 bytes, or bad parameters.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, ConfigError> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err(key_error("the JWK is an encryption key (use: enc)"));
        }
        let mut key = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(params) => {
                let algorithm = match params.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => return Err(key_error("only P-256 and P-384 EC JWKs are supported")),
                };
                let key = DecodingKey::from_ec_components(&params.x, &params.y)
                    .map_err(|_| key_error("the EC JWK has bad x/y parameters"))?;
                Self {
                    kid: None,
                    key,
                    algorithms: vec![algorithm],
                }
            }
            AlgorithmParameters::OctetKeyPair(params) => {
                if params.curve != EllipticCurve::Ed25519 {
                    return Err(key_error("only Ed25519 OKP JWKs are supported"));
                }
                let key = DecodingKey::from_ed_components(&params.x)
                    .map_err(|_| key_error("the OKP JWK has a bad x parameter"))?;
                Self::with_family(key, AlgorithmFamily::Ed)
            }
            AlgorithmParameters::RSA(params) => {
                let key = DecodingKey::from_rsa_components(&params.n, &params.e)
                    .map_err(|_| key_error("the RSA JWK has bad n/e parameters"))?;
                Self::with_family(key, AlgorithmFamily::Rsa)
            }
            AlgorithmParameters::OctetKey(params) => {
                let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(params.value.trim_end_matches('='))
                    .map_err(|_| key_error("the oct JWK's k is not base64url"))?;
                Self::hmac(secret)?
            }
            _ => return Err(key_error("unsupported JWK key type")),
        };
        if let Some(alg) = jwk.common.key_algorithm {
            let alg = signing_algorithm(alg)
                .ok_or_else(|| key_error("the JWK's alg is not a signature algorithm"))?;
            key = key.algorithms([alg])?;
        }
        if let Some(kid) = &jwk.common.key_id {
            key = key.kid(kid.as_str());
        }
        Ok(key)
    }

    fn with_family(key: DecodingKey, family: AlgorithmFamily) -> Self {
        Self {
            kid: None,
            key,
            algorithms: family.algorithms().to_vec(),
        }
    }

    /// Names the key: a token whose header carries this `kid` is verified with
    /// this key only.
    pub fn kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into().into_boxed_str());
        self
    }

    /// Narrows the algorithms this key may verify.
    ///
    /// # Errors
    /// An empty list, or an algorithm this key cannot verify (e.g. `RS256` for
    /// an HMAC secret).
    pub fn algorithms(
        mut self,
        algorithms: impl IntoIterator<Item = Algorithm>,
    ) -> Result<Self, ConfigError> {
        let wanted: Vec<Algorithm> = algorithms.into_iter().collect();
        if wanted.is_empty() {
            return Err(key_error("a key needs at least one algorithm"));
        }
        if let Some(bad) = wanted.iter().find(|a| !self.algorithms.contains(a)) {
            return Err(key_error(format!(
                "{bad:?} is not allowed for this key (it allows {:?})",
                self.algorithms
            )));
        }
        self.algorithms = wanted;
        Ok(self)
    }

    /// The key's id, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key may verify.
    pub fn allowed_algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn spki_der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// The keys a layer verifies with. Built once, shared behind an `Arc`, and
/// replaced whole on rotation.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
    /// Changes on every rotation; cached verifications of another generation
    /// are not used.
    pub(crate) generation: u64,
}

impl KeySet {
    pub(crate) fn new(keys: Vec<Key>) -> Result<Self, ConfigError> {
        if keys.is_empty() {
            return Err(key_error(
                "no verification key: add one with .key(Key::hmac(..)) or a public key",
            ));
        }
        for (i, key) in keys.iter().enumerate() {
            if let Some(kid) = &key.kid
                && keys[..i].iter().any(|k| k.kid.as_ref() == Some(kid))
            {
                return Err(key_error("two keys share one kid"));
            }
        }
        Ok(Self {
            keys,
            generation: 0,
        })
    }

    /// No keys yet: every token is refused (remote keys before their first
    /// successful fetch).
    #[cfg(feature = "jwks")]
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether there are keys and every one has a `kid`.
    pub(crate) fn all_named(&self) -> bool {
        !self.keys.is_empty() && self.keys.iter().all(|k| k.kid.is_some())
    }

    /// Keys that may verify `alg`, for tokens without a `kid`.
    pub(crate) fn allowing(&self, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hmac_secret_is_refused() {
        let err = Key::hmac([7u8; 31]).unwrap_err();
        assert_eq!(err.setting(), "key");
        assert!(err.reason().contains("32 bytes"), "{err}");
    }

    #[test]
    fn hmac_algorithms_follow_secret_length() {
        assert_eq!(
            Key::hmac([1u8; 32]).unwrap().allowed_algorithms(),
            [Algorithm::HS256]
        );
        assert_eq!(
            Key::hmac([1u8; 64]).unwrap().allowed_algorithms(),
            [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
        );
    }

    #[test]
    fn cross_family_algorithms_are_refused() {
        let err = Key::hmac([1u8; 32])
            .unwrap()
            .algorithms([Algorithm::RS256])
            .unwrap_err();
        assert!(err.reason().contains("RS256"), "{err}");
    }

    #[test]
    fn duplicate_kids_are_refused() {
        let a = Key::hmac([1u8; 32]).unwrap().kid("k");
        let b = Key::hmac([2u8; 32]).unwrap().kid("k");
        assert!(KeySet::new(vec![a, b]).is_err());
        assert!(KeySet::new(vec![]).is_err());
    }

    #[test]
    fn debug_hides_material() {
        let k = Key::hmac(b"super-secret-super-secret-super-secret").unwrap();
        assert!(!format!("{k:?}").contains("super"));
    }
}
