//! Finding the token in a request: named cookie or `Authorization: Bearer`.

use std::borrow::Cow;

use cookie::Cookie;
use http::{HeaderMap, header};

use super::error::{AuthError, AuthErrorKind};
use crate::error::ConfigError;

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
    pub(crate) fn new(name: &str) -> Result<Self, ConfigError> {
        validate_cookie_name(name)?;
        Ok(Self {
            name: name.into(),
            finder: memchr::memmem::Finder::new(name.as_bytes()).into_owned(),
        })
    }
}

/// Where the token of an authenticated request came from.
///
/// The CSRF guard uses it: a cookie is sent by the browser on its own, an
/// `Authorization` header is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialSource {
    /// A cookie.
    Cookie,
    /// The `Authorization: Bearer` header.
    AuthorizationHeader,
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
/// - empty values are ignored (a cleared cookie is no cookie);
/// - a value in double quotes is unquoted;
/// - the same name with two different values is refused (cookie tossing: a
///   sibling domain can plant a second cookie of the same name);
/// - a field that is not UTF-8 is read lossily: a token with replaced bytes
///   never verifies.
///
/// Plain values (every real JWT) are found by a SIMD search for the name
/// that borrows from the header and allocates nothing; a quoted or non-UTF-8
/// value of the token cookie sends the whole lookup to the `cookie` crate.
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
            let before = bytes[..start].trim_ascii_end();
            if !(before.is_empty() || before.ends_with(b";")) {
                continue;
            }
            let rest = &bytes[from..];
            let Some(value) = rest.trim_ascii_start().strip_prefix(b"=") else {
                continue;
            };
            let end = memchr::memchr(b';', value).unwrap_or(value.len());
            from = bytes.len() - value.len() + end;
            let value = value[..end].trim_ascii();
            match std::str::from_utf8(value) {
                Ok(value) if !value.starts_with('"') => merge(&mut found, Cow::Borrowed(value))?,
                // Quoted, or not UTF-8: the cookie crate decides.
                _ => return from_cookies_parsed(headers, &cookie.name),
            }
        }
    }
    Ok(found)
}

/// The general path, through the `cookie` crate.
fn from_cookies_parsed<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<Cow<'a, str>>, AuthError> {
    let mut found: Option<Cow<'a, str>> = None;
    for field in headers.get_all(header::COOKIE) {
        let text: Cow<'a, str> = String::from_utf8_lossy(field.as_bytes());
        match text {
            Cow::Borrowed(text) => {
                for cookie in Cookie::split_parse(text).flatten() {
                    if cookie.name_raw() == Some(name)
                        && let Some(raw) = cookie.value_raw()
                    {
                        merge(&mut found, Cow::Borrowed(unquote(raw)))?;
                    }
                }
            }
            Cow::Owned(text) => {
                for cookie in Cookie::split_parse(text.as_str()).flatten() {
                    if cookie.name() == name {
                        merge(&mut found, Cow::Owned(cookie.value_trimmed().to_owned()))?;
                    }
                }
            }
        }
    }
    Ok(found)
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

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
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

    #[test]
    fn fast_scan_agrees_with_the_cookie_crate() {
        let cases: &[&[&[u8]]] = &[
            &[b"da3=a.b.c"],
            &[b" da3 = a.b.c ; x=1"],
            &[b"x=1;da3=a.b.c;y=2"],
            &[b"da3x=1; xda3=2"],
            &[b"da3"],
            &[b"da3=; other=1"],
            &[b"=da3; da3==x"],
            &[b"a=1", b"da3=t", b"da3=t"],
            &[b"da3=one", b"da3=two"],
            &[b"da3=a=b"],
            &[b";;;da3=v;;"],
            &[b"x=da3=1; da3=2"],
            &[b"x=a da3=1"],
            &[b"da3da3=1; da3=2"],
            &[b"x=1;  da3 =  v  "],
            &[b"da3=\xc3\xa9t\xc3\xa9"],
            &[b"da3=\"quoted\"; x=1"],
            &[b"da3=a\xffb"],
        ];
        for fields in cases {
            let h = cookies(fields);
            let fast = from_cookies(&h, &CookieName::new("da3").unwrap()).map_err(|e| e.kind());
            let parsed = from_cookies_parsed(&h, "da3").map_err(|e| e.kind());
            assert_eq!(fast, parsed, "{fields:?}");
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
