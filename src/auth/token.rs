//! Finding the token in a request: named cookie or `Authorization: Bearer`.

use std::borrow::Cow;

use http::{HeaderMap, header};

use crate::error::ConfigError;
use crate::error::{AuthError, AuthErrorKind};
use crate::identity::CredentialSource;

/// Where a token may come from, tried in the configured order.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Cookie(Box<CookieName>),
    Bearer,
}

/// A cookie name and a prebuilt SIMD searcher for it.
#[derive(Debug, Clone)]
pub(crate) struct CookieName {
    name: Box<str>,
    finder: memchr::memmem::Finder<'static>,
}

impl CookieName {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn new(name: &str) -> Result<Self, ConfigError> {
        validate_cookie_name(name)?;
        Ok(Self {
            name: name.into(),
            finder: memchr::memmem::Finder::new(name.as_bytes()).into_owned(),
        })
    }
}

/// A token found in a request, borrowed from its headers where possible.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    pub(crate) token: Cow<'a, str>,
    pub(crate) source: CredentialSource,
}

pub(crate) fn validate_cookie_name(name: &str) -> Result<(), ConfigError> {
    // RFC 6265 cookie-name is an RFC 7230 token.
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(ConfigError::new(
            "cookie",
            "a cookie name must be a non-empty HTTP token (letters, digits, !#$%&'*+-.^_`|~)",
        ));
    }
    Ok(())
}

/// Tries each source in order; the first one that holds a token wins.
///
/// `Ok(None)`: no source holds a token. `max_len` caps the token's length
/// before anything decodes it.
pub(crate) fn extract<'a>(
    headers: &'a HeaderMap,
    sources: &[Source],
    max_len: usize,
) -> Result<Option<Found<'a>>, AuthError> {
    for source in sources {
        let found = match source {
            Source::Cookie(cookie) => from_cookies(headers, cookie)?.map(|token| Found {
                token,
                source: CredentialSource::Cookie,
            }),
            Source::Bearer => from_bearer(headers)?.map(|token| Found {
                token: Cow::Borrowed(token),
                source: CredentialSource::AuthorizationHeader,
            }),
        };
        if let Some(found) = found {
            if found.token.len() > max_len {
                return Err(AuthError::new(
                    AuthErrorKind::TooLarge,
                    "the token is larger than this service accepts",
                ));
            }
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The value of cookie `name` across every `Cookie` field (HTTP/2 clients send
/// one field per cookie).
///
/// One rule, whatever the bytes (RFC 6265 §5.4 with HTTP's OWS):
/// - a field is a list of `name=value` pairs separated by `;`; the name and
///   the value are trimmed of spaces and tabs only (never of Unicode
///   whitespace such as U+00A0), and the name is compared byte for byte;
/// - empty values are ignored (a cleared cookie is no cookie);
/// - a value in double quotes is unquoted;
/// - the same name with two different values is refused (cookie tossing: a
///   sibling domain can plant a second cookie of the same name);
/// - a value that is not UTF-8 is read lossily: a token with replaced bytes
///   never verifies.
///
/// The name is found by a SIMD search that borrows from the header and
/// allocates nothing (a non-UTF-8 value is the only copy).
fn from_cookies<'a>(
    headers: &'a HeaderMap,
    cookie: &CookieName,
) -> Result<Option<Cow<'a, str>>, AuthError> {
    let name_len = cookie.name.len();
    let mut found: Option<Cow<'a, str>> = None;
    for field in headers.get_all(header::COOKIE) {
        let bytes = field.as_bytes();
        let mut from = 0;
        while let Some(offset) = cookie.finder.find(&bytes[from..]) {
            let start = from + offset;
            from = start + name_len;
            // The name must begin a pair: at the start of the field or after
            // a `;` (and optional whitespace), not inside another value.
            let before = trim_ows_end(&bytes[..start]);
            if !(before.is_empty() || before.ends_with(b";")) {
                continue;
            }
            let Some(value) = trim_ows_start(&bytes[from..]).strip_prefix(b"=") else {
                continue;
            };
            let end = memchr::memchr(b';', value).unwrap_or(value.len());
            from = bytes.len() - value.len() + end;
            let value = unquote(trim_ows_end(trim_ows_start(&value[..end])));
            let value = match std::str::from_utf8(value) {
                Ok(value) => Cow::Borrowed(value),
                Err(_) => Cow::Owned(String::from_utf8_lossy(value).into_owned()),
            };
            merge(&mut found, value)?;
        }
    }
    Ok(found)
}

/// HTTP's optional whitespace: spaces and tabs, nothing else.
fn is_ows(b: &u8) -> bool {
    matches!(b, b' ' | b'\t')
}

fn trim_ows_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| is_ows(b)).count();
    &bytes[skip..]
}

fn trim_ows_end(bytes: &[u8]) -> &[u8] {
    let keep = bytes.len() - bytes.iter().rev().take_while(|b| is_ows(b)).count();
    &bytes[..keep]
}

fn merge<'a>(slot: &mut Option<Cow<'a, str>>, value: Cow<'a, str>) -> Result<(), AuthError> {
    if value.is_empty() {
        return Ok(());
    }
    match slot {
        None => *slot = Some(value),
        Some(existing) if *existing == value => {}
        Some(_) => {
            return Err(AuthError::new(
                AuthErrorKind::AmbiguousCookie,
                "the token cookie was sent twice with different values",
            ));
        }
    }
    Ok(())
}

fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// The token of `Authorization: Bearer <token>`. Other schemes are not ours
/// and count as absent; several `Authorization` fields are refused.
fn from_bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut fields = headers.get_all(header::AUTHORIZATION).iter();
    let Some(field) = fields.next() else {
        return Ok(None);
    };
    if fields.next().is_some() {
        return Err(AuthError::new(
            AuthErrorKind::Malformed,
            "several Authorization fields",
        ));
    }
    let bytes = field.as_bytes();
    let Some((scheme, rest)) = split_scheme(bytes) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return Err(AuthError::new(
            AuthErrorKind::Malformed,
            "empty Bearer token",
        ));
    }
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| AuthError::new(AuthErrorKind::Malformed, "the Bearer token is not ASCII"))
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let value = value.trim_ascii_start();
    let space = value.iter().position(|&b| b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cookies(fields: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(header::COOKIE, HeaderValue::from_bytes(f).unwrap());
        }
        h
    }

    fn cookie_token(h: &HeaderMap) -> Result<Option<String>, AuthErrorKind> {
        extract(
            h,
            &[Source::Cookie(Box::new(CookieName::new("da3").unwrap()))],
            8192,
        )
        .map(|f| f.map(|f| f.token.into_owned()))
        .map_err(|e| e.kind())
    }

    #[test]
    fn finds_cookie_among_others_and_across_fields() {
        let h = cookies(&[b"a=1; b=2", b"c=3; da3=tok.en.sig; d=4"]);
        assert_eq!(cookie_token(&h), Ok(Some("tok.en.sig".into())));
    }

    #[test]
    fn name_must_match_exactly() {
        let h = cookies(&[b"xda3=nope; da33=nope; DA3=nope"]);
        assert_eq!(cookie_token(&h), Ok(None));
    }

    #[test]
    fn duplicate_with_different_values_is_refused() {
        let h = cookies(&[b"da3=one", b"da3=two"]);
        assert_eq!(cookie_token(&h), Err(AuthErrorKind::AmbiguousCookie));
        let h = cookies(&[b"da3=one; da3=two"]);
        assert_eq!(cookie_token(&h), Err(AuthErrorKind::AmbiguousCookie));
    }

    #[test]
    fn duplicate_with_same_value_is_fine() {
        let h = cookies(&[b"da3=one", b"x=1; da3=one"]);
        assert_eq!(cookie_token(&h), Ok(Some("one".into())));
    }

    #[test]
    fn quoted_value_is_unquoted() {
        let h = cookies(&[b"da3=\"a.b.c\""]);
        assert_eq!(cookie_token(&h), Ok(Some("a.b.c".into())));
        // a lone quote is part of the value (and will not verify)
        let h = cookies(&[b"da3=\"a.b.c"]);
        assert_eq!(cookie_token(&h), Ok(Some("\"a.b.c".into())));
    }

    #[test]
    fn empty_value_is_absent() {
        assert_eq!(cookie_token(&cookies(&[b"da3="])), Ok(None));
        assert_eq!(
            cookie_token(&cookies(&[b"da3=; da3=tok"])),
            Ok(Some("tok".into()))
        );
    }

    #[test]
    fn non_utf8_field_is_read_lossily() {
        let h = cookies(&[b"other=\xff\xfe; da3=tok"]);
        assert_eq!(cookie_token(&h), Ok(Some("tok".into())));
        let h = cookies(&[b"da3=t\xffk"]);
        assert_eq!(cookie_token(&h), Ok(Some("t\u{fffd}k".into())));
    }

    /// A plain reading of the rule in [`from_cookies`]' docs: split, trim
    /// spaces and tabs, compare, unquote. The token *value* must agree.
    fn reference(fields: &[Vec<u8>]) -> Result<Option<String>, AuthErrorKind> {
        let ows = |s: &str| s.trim_matches([' ', '\t']).to_owned();
        let mut found: Option<String> = None;
        for field in fields {
            let text = String::from_utf8_lossy(field);
            for pair in text.split(';') {
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                if ows(name) != "da3" {
                    continue;
                }
                let value = ows(value);
                let value = match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    Some(inner) => inner.to_owned(),
                    None => value,
                };
                if value.is_empty() {
                    continue;
                }
                match &found {
                    None => found = Some(value),
                    Some(existing) if *existing == value => {}
                    Some(_) => return Err(AuthErrorKind::AmbiguousCookie),
                }
            }
        }
        Ok(found)
    }

    #[test]
    fn unicode_whitespace_is_part_of_the_value() {
        // Regression: the cookie-crate fallback trimmed Unicode whitespace,
        // the fast path ASCII only, so quoting changed the decision.
        for (field, expected) in [
            ("da3=\u{a0}tok", Some("\u{a0}tok")),
            ("da3=\"\u{a0}tok\"", Some("\u{a0}tok")),
            ("da3=\u{3000}", Some("\u{3000}")),
            ("da3=\"\u{3000}\"", Some("\u{3000}")),
            ("da3\u{a0}=tok", None),
            ("\u{85}da3=tok", None),
            ("da3=\"\"", None),
            ("da3=\t\"a.b\" ", Some("a.b")),
        ] {
            let h = cookies(&[field.as_bytes()]);
            assert_eq!(
                cookie_token(&h),
                Ok(expected.map(str::to_owned)),
                "{field:?}"
            );
        }
    }

    fn field() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just(&b"da3"[..]),
            Just(&b"da"[..]),
            Just(&b"x"[..]),
            Just(&b"="[..]),
            Just(&b";"[..]),
            Just(&b" "[..]),
            Just(&b"\t"[..]),
            Just(&b"\""[..]),
            Just(&b"a.b"[..]),
            Just("\u{a0}".as_bytes()),
            Just("\u{85}".as_bytes()),
            Just("\u{3000}".as_bytes()),
            Just(&b"\xff"[..]),
            Just(&b"\xc3"[..]),
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn finds_the_value_the_reference_finds(fields in proptest::collection::vec(field(), 0..3)) {
            let h = cookies(&fields.iter().map(Vec::as_slice).collect::<Vec<_>>());
            proptest::prop_assert_eq!(cookie_token(&h), reference(&fields));
        }
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let long = format!("da3={}", "a".repeat(9000));
        let h = cookies(&[long.as_bytes()]);
        assert_eq!(cookie_token(&h), Err(AuthErrorKind::TooLarge));
    }

    fn bearer(h: &HeaderMap) -> Result<Option<String>, AuthErrorKind> {
        extract(h, &[Source::Bearer], 8192)
            .map(|f| f.map(|f| f.token.into_owned()))
            .map_err(|e| e.kind())
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR  abc "),
        );
        assert_eq!(bearer(&h), Ok(Some("abc".into())));
    }

    #[test]
    fn other_schemes_are_absent_and_duplicates_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        assert_eq!(bearer(&h), Ok(None));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(bearer(&h), Err(AuthErrorKind::Malformed));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), Err(AuthErrorKind::Malformed));
    }

    #[test]
    fn sources_are_tried_in_order() {
        let mut h = cookies(&[b"da3=from-cookie"]);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        let order = [
            Source::Bearer,
            Source::Cookie(Box::new(CookieName::new("da3").unwrap())),
        ];
        let found = extract(&h, &order, 8192).unwrap().unwrap();
        assert_eq!(found.token, "from-header");
        assert_eq!(found.source, CredentialSource::AuthorizationHeader);
        let order = [
            Source::Cookie(Box::new(CookieName::new("da3").unwrap())),
            Source::Bearer,
        ];
        let found = extract(&h, &order, 8192).unwrap().unwrap();
        assert_eq!(found.token, "from-cookie");
        assert_eq!(found.source, CredentialSource::Cookie);
    }

    #[test]
    fn cookie_names_are_validated() {
        assert!(validate_cookie_name("da3").is_ok());
        assert!(validate_cookie_name("__Host-session").is_ok());
        assert!(validate_cookie_name("").is_err());
        assert!(validate_cookie_name("a b").is_err());
        assert!(validate_cookie_name("a=b").is_err());
    }
}
