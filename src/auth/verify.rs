//! Verifying one compact JWS: structure, header, key and signature. Only a
//! token whose signature verifies reaches the claims checks
//! ([`claims_check`](super::claims_check)), which yield a [`Verified`].
//!
//! jsonwebtoken's `decode` is not used as a whole: it ignores `crit`, rebuilds
//! nothing we need, and parses the payload twice into generic values. Here the
//! header is read into a borrowed struct and the signature is checked with the
//! configured crypto provider.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned};

use super::claims_check::{self, Rules};
use super::keys::{Key, KeySet};
use crate::error::{AuthError, AuthErrorKind};

/// What a verified token yields, shared between requests (and cached).
pub(crate) struct Verified<T> {
    pub(crate) claims: Arc<T>,
    pub(crate) subject: Option<Arc<str>>,
    pub(crate) issuer: Option<Arc<str>>,
    /// The token's id, for revocation by `jti`.
    pub(crate) jti: Option<Arc<str>>,
    pub(crate) exp: Option<u64>,
    /// Checked again on every cache hit, with `iat`: the wall clock may
    /// have stepped back since the token was verified.
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    /// The session's absolute end, checked again on every cache hit.
    pub(crate) session_end: Option<u64>,
    /// The session's start (`auth_time`, `session_start`), for revocations.
    pub(crate) session_start: Option<u64>,
    /// The identity provider's session id (`sid`), for revocations.
    pub(crate) sid: Option<Arc<str>>,
    /// Roles and scopes, for route rules that need them.
    pub(crate) grants: Option<Arc<crate::routes::Grants>>,
    /// What later layers derive from the token, shared by its cache hits.
    pub(crate) derived: crate::identity::Derived,
}

fn err(kind: AuthErrorKind, detail: &'static str) -> AuthError {
    AuthError::new(kind, detail)
}

fn malformed(detail: &'static str) -> AuthError {
    err(AuthErrorKind::Malformed, detail)
}

fn b64(segment: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| malformed(what))
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    typ: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    cty: Option<Cow<'a, str>>,
    /// `None`: absent; `Some(None)`: present as `null` (refused).
    #[serde(default, borrow, deserialize_with = "present")]
    crit: Option<Option<Vec<Cow<'a, str>>>>,
}

/// Tells a parameter that is present (even as `null`) from one that is absent.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Reads the JOSE header: a JSON object only (serde would also read a struct
/// from an array such as `["HS256"]`).
fn parse_header(json: &[u8]) -> Result<Header<'_>, AuthError> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(malformed("the header is not a JSON object with an alg"));
    }
    serde_json::from_slice(json)
        .map_err(|_| malformed("the header is not a JSON object with an alg"))
}

/// Verifies `token` and returns its claims.
pub(crate) fn verify<T: DeserializeOwned>(
    token: &str,
    keys: &KeySet,
    rules: &Rules,
    now: u64,
) -> Result<Verified<T>, AuthError> {
    // Structure: exactly three segments. `find` keeps this linear in the
    // token's length, however many dots it holds.
    let (header_b64, rest) = token
        .split_once('.')
        .ok_or_else(|| malformed("a JWT has three dot-separated segments"))?;
    let (payload_b64, signature_b64) = rest
        .split_once('.')
        .ok_or_else(|| malformed("a JWT has three dot-separated segments"))?;
    if signature_b64.contains('.') {
        return Err(malformed("a JWT has three dot-separated segments"));
    }
    if header_b64.is_empty() || signature_b64.is_empty() {
        return Err(malformed("empty JWT segment"));
    }

    let header_json = b64(header_b64, "the header is not base64url")?;
    let header = parse_header(&header_json)?;
    let alg = Algorithm::from_str(&header.alg).map_err(|_| {
        err(
            AuthErrorKind::UnsupportedAlgorithm,
            "the token's alg is not a supported signature algorithm",
        )
    })?;
    let understood = |c: &Cow<'_, str>| rules.understood_crit.iter().any(|u| **u == **c);
    match &header.crit {
        None => {}
        Some(Some(crit)) if !crit.is_empty() && crit.iter().all(understood) => {}
        // `null`, `[]`, or an extension this service does not know (RFC 7515 §4.1.11).
        Some(_) => {
            return Err(err(
                AuthErrorKind::InvalidHeader,
                "the token's crit is not a non-empty list of extensions this service understands",
            ));
        }
    }
    if header
        .cty
        .as_deref()
        .is_some_and(|cty| media_type_eq(cty, "JWT"))
    {
        // A nested JWT (RFC 7519 §5.2): its inner token would go unverified.
        return Err(err(
            AuthErrorKind::InvalidHeader,
            "nested JWTs (cty: JWT) are not accepted",
        ));
    }
    if let Some(expected) = &rules.typ {
        let ok = header
            .typ
            .as_deref()
            .is_some_and(|typ| media_type_eq(typ, expected));
        if !ok {
            return Err(err(
                AuthErrorKind::InvalidHeader,
                "the token's typ is not accepted here",
            ));
        }
    } else if header
        .typ
        .as_deref()
        .is_some_and(|typ| media_type_eq(typ, "logout+jwt"))
    {
        // An identity provider's logout token (OpenID Connect back-channel
        // logout) ends a session: it never opens one.
        return Err(err(
            AuthErrorKind::InvalidHeader,
            "a logout token is not a credential",
        ));
    }

    let signature = b64(signature_b64, "the signature is not base64url")?;
    let message = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    check_signed(header.kid.as_deref(), alg, keys, message, &signature)?;

    // Only now, with the signature good, look at the claims.
    let payload = b64(payload_b64, "the payload is not base64url")?;
    let checked = claims_check::check(&payload, rules, now)?;
    let claims = serde_json::from_slice::<T>(&payload).map_err(|_| {
        err(
            AuthErrorKind::InvalidClaim,
            "the claims do not match the service's claims type",
        )
    })?;
    Ok(Verified {
        claims: Arc::new(claims),
        subject: checked.subject,
        issuer: checked.issuer,
        jti: checked.jti,
        exp: checked.exp,
        nbf: checked.nbf,
        iat: checked.iat,
        session_end: checked.session_end,
        session_start: checked.session_start,
        sid: checked.sid,
        grants: checked.grants,
        derived: crate::identity::Derived::default(),
    })
}

/// Checks the signature of `message` with the key `kid` names, or with each
/// key allowing `alg` when the token names none.
fn check_signed(
    kid: Option<&str>,
    alg: Algorithm,
    keys: &KeySet,
    message: &[u8],
    signature: &[u8],
) -> Result<(), AuthError> {
    match kid {
        Some(kid) => {
            let key = keys
                .by_kid(kid)
                .ok_or_else(|| err(AuthErrorKind::UnknownKey, "no key matches the token's kid"))?;
            if !key.algorithms.contains(&alg) {
                return Err(err(
                    AuthErrorKind::UnsupportedAlgorithm,
                    "the token's alg is not allowed for its key",
                ));
            }
            check_signature(key, alg, message, signature)?;
        }
        None if keys.all_named() => {
            // Every key has a kid: a token without one names no key, and
            // trying each key in turn only multiplies the work of a forgery.
            return Err(err(
                AuthErrorKind::InvalidHeader,
                "the token has no kid and every key of this service has one",
            ));
        }
        None => {
            let mut candidates = keys.allowing(alg).peekable();
            if candidates.peek().is_none() {
                return Err(err(
                    AuthErrorKind::UnsupportedAlgorithm,
                    "no key allows the token's alg",
                ));
            }
            if !candidates.any(|key| check_signature(key, alg, message, signature).is_ok()) {
                return Err(bad_signature());
            }
        }
    }
    Ok(())
}

/// Whether `keys` would accept the signature of `token` (its header's `alg`
/// and `kid`), claims aside: the refresh's build-time check of its signing
/// key.
pub(crate) fn signature_accepted(token: &str, keys: &KeySet) -> Result<(), AuthError> {
    let (message, signature_b64) = token
        .rsplit_once('.')
        .ok_or_else(|| malformed("a JWT has three dot-separated segments"))?;
    let header_b64 = message.split('.').next().unwrap_or_default();
    let header_json = b64(header_b64, "the header is not base64url")?;
    let header = parse_header(&header_json)?;
    let alg = Algorithm::from_str(&header.alg).map_err(|_| {
        err(
            AuthErrorKind::UnsupportedAlgorithm,
            "the token's alg is not a supported signature algorithm",
        )
    })?;
    let signature = b64(signature_b64, "the signature is not base64url")?;
    check_signed(
        header.kid.as_deref(),
        alg,
        keys,
        message.as_bytes(),
        &signature,
    )
}

fn bad_signature() -> AuthError {
    err(AuthErrorKind::BadSignature, "the signature does not verify")
}

fn check_signature(
    key: &Key,
    alg: Algorithm,
    message: &[u8],
    signature: &[u8],
) -> Result<(), AuthError> {
    let verifier = (crate::crypto::provider().verifier_factory)(&alg, &key.key)
        .map_err(|_| bad_signature())?;
    verifier
        .verify(message, &signature.to_vec())
        .map_err(|_| bad_signature())
}

/// `typ` is a media type: compared case-insensitively, with the optional
/// `application/` prefix (RFC 7515 §4.1.9).
/// The `typ` of a token's header, if it has one (the token unverified: only
/// to choose which rules verify it).
#[cfg(feature = "backchannel-logout")]
pub(crate) fn header_typ(token: &str) -> Result<Option<String>, AuthError> {
    let header_b64 = token
        .split_once('.')
        .map(|(header, _)| header)
        .ok_or_else(|| malformed("a JWT has three dot-separated segments"))?;
    let json = b64(header_b64, "the header is not base64url")?;
    Ok(parse_header(&json)?.typ.map(std::borrow::Cow::into_owned))
}

pub(crate) fn media_type_eq(actual: &str, expected: &str) -> bool {
    fn strip(s: &str) -> &str {
        match s.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => &s[12..],
            _ => s,
        }
    }
    strip(actual).eq_ignore_ascii_case(strip(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_compare_loosely() {
        assert!(media_type_eq("JWT", "jwt"));
        assert!(media_type_eq("application/at+jwt", "at+JWT"));
        assert!(!media_type_eq("at+jwt", "jwt"));
        assert!(!media_type_eq("é", "jwt"));
    }
}
