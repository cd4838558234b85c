//! The registered claims of a verified token, read in one pass without
//! copying the payload and without ever echoing token content into an error:
//! `exp`, `nbf`, `iat` (NumericDate type and range), `iss`, `aud`, `sub`,
//! required claims, duplicates, nesting depth.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::error::{AuthError, AuthErrorKind};

/// Latest accepted NumericDate: 9999-12-31T23:59:59Z. Anything later is a
/// forged "never expires" (`1e300`), not a date.
const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Default clock-skew allowance for `exp` and `nbf`.
pub const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(60);

/// Claim rules, built once per layer.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) issuers: Vec<Arc<str>>,
    pub(crate) audiences: Vec<Box<str>>,
    pub(crate) leeway: u64,
    pub(crate) require_exp: bool,
    pub(crate) typ: Option<Box<str>>,
    pub(crate) understood_crit: Vec<Box<str>>,
    pub(crate) max_lifetime: Option<u64>,
    pub(crate) required_claims: Vec<Box<str>>,
    /// Where roles and scopes are read, when route rules need them.
    pub(crate) grants: Option<Arc<crate::routes::GrantClaims>>,
    /// Whether a token with the back-channel logout event is accepted (the
    /// logout receiver only: as a credential, a logout token is refused).
    pub(crate) accept_logout_events: bool,
}

/// The event a logout token carries (OpenID Connect Back-Channel Logout
/// 1.0 §2.4).
pub(crate) const BACKCHANNEL_LOGOUT_EVENT: &str =
    "http://schemas.openid.net/event/backchannel-logout";

fn err(kind: AuthErrorKind, detail: &'static str) -> AuthError {
    AuthError::new(kind, detail)
}

/// What the claims checks yield about a token.
pub(crate) struct Checked {
    pub(crate) subject: Option<Arc<str>>,
    pub(crate) jti: Option<Arc<str>>,
    /// The configured issuer the token's `iss` matched.
    pub(crate) issuer: Option<Arc<str>>,
    pub(crate) exp: Option<u64>,
    pub(crate) nbf: Option<u64>,
    pub(crate) iat: Option<u64>,
    pub(crate) session_end: Option<u64>,
    /// When the session began: the earlier of `auth_time` and
    /// [`SESSION_START_CLAIM`], if either is present.
    pub(crate) session_start: Option<u64>,
    /// The identity provider's session id.
    pub(crate) sid: Option<Arc<str>>,
    /// Roles and scopes, when the rules read them.
    pub(crate) grants: Option<Arc<crate::routes::Grants>>,
}

/// The claim holding the start of a session that a sliding refresh carries
/// on (a NumericDate): set by the first refresh to the session's start
/// (`auth_time`, else the token's `iat`), copied by later ones. A
/// revocation by subject compares it (and `auth_time`), not the successor's
/// own `iat`, so a refreshed token of a session begun before the cut-off
/// stays revoked.
pub const SESSION_START_CLAIM: &str = "session_start";

/// The claim holding a session's absolute end (a NumericDate): set by the
/// first sliding refresh, copied by the next ones; a token past it is
/// refused as expired.
pub const SESSION_END_CLAIM: &str = "session_end";

/// Reads and checks the claims of a payload whose signature verified.
pub(crate) fn check(payload: &[u8], rules: &Rules, now: u64) -> Result<Checked, AuthError> {
    let registered = read_registered(payload, rules)?;
    let issuer = check_claims(&registered, rules, now)?;
    Ok(Checked {
        subject: registered.sub,
        jti: registered.jti,
        sid: registered.sid,
        grants: rules
            .grants
            .as_ref()
            .map(|claims| Arc::new(claims.read(&registered.captured))),
        issuer,
        exp: registered.exp,
        nbf: registered.nbf,
        iat: registered.iat,
        session_end: registered.session_end,
        session_start: match (registered.auth_time, registered.session_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    })
}

fn check_claims(r: &Registered, rules: &Rules, now: u64) -> Result<Option<Arc<str>>, AuthError> {
    let claim = |detail| err(AuthErrorKind::InvalidClaim, detail);
    if r.logout_event {
        return Err(claim(
            "a logout token (back-channel logout event) is not a credential",
        ));
    }
    match r.exp {
        Some(exp) if now >= exp.saturating_add(rules.leeway) => {
            return Err(err(AuthErrorKind::Expired, "the token has expired"));
        }
        None if rules.require_exp => return Err(claim("the token has no exp claim")),
        _ => {}
    }
    check_session_end(r.session_end, now, rules.leeway)?;
    check_not_before(r.nbf, r.iat, now, rules.leeway)?;
    if let (Some(iat), Some(exp)) = (r.iat, r.exp)
        && iat > exp
    {
        return Err(claim("the token was issued after it expires (iat > exp)"));
    }
    if let Some(max) = rules.max_lifetime {
        match (r.iat, r.exp) {
            (Some(iat), Some(exp)) if exp.saturating_sub(iat) <= max => {}
            (Some(_), Some(_)) => {
                return Err(claim("the token's lifetime (exp - iat) is too long"));
            }
            _ => {
                return Err(claim(
                    "a maximum lifetime is set: the token needs iat and exp",
                ));
            }
        }
    }
    let issuer = if rules.issuers.is_empty() {
        None
    } else {
        match r.iss {
            Some(i) => Some(rules.issuers[i].clone()),
            None => return Err(claim("the token's iss is missing or not trusted")),
        }
    };
    if r.aud_present {
        if !r.aud_matched {
            return Err(claim("the token's aud does not name this service"));
        }
    } else if !rules.audiences.is_empty() {
        return Err(claim("the token has no aud claim"));
    }
    if r.required_seen.count_ones() as usize != rules.required_claims.len().min(64) {
        return Err(claim("a required claim is missing"));
    }
    Ok(issuer)
}

/// A session past its absolute end (plus `leeway`) is over, whatever the
/// token's `exp` says. Also run on every verified-token cache hit.
pub(crate) fn check_session_end(
    session_end: Option<u64>,
    now: u64,
    leeway: u64,
) -> Result<(), AuthError> {
    if session_end.is_some_and(|end| now >= end.saturating_add(leeway)) {
        return Err(err(AuthErrorKind::Expired, "the session has ended"));
    }
    Ok(())
}

/// `nbf` and `iat` against `now`: a token is not accepted before its `nbf`,
/// nor before the time it says it was issued (a future `iat` comes from a
/// misbehaving issuer or a forged clock). Both allow `leeway`. Also run on
/// every verified-token cache hit: a wall clock stepped backwards must not
/// serve a token that is not valid yet.
pub(crate) fn check_not_before(
    nbf: Option<u64>,
    iat: Option<u64>,
    now: u64,
    leeway: u64,
) -> Result<(), AuthError> {
    let later = now.saturating_add(leeway);
    if nbf.is_some_and(|nbf| later < nbf) {
        return Err(err(
            AuthErrorKind::NotYetValid,
            "the token is not valid yet (nbf)",
        ));
    }
    if iat.is_some_and(|iat| later < iat) {
        return Err(err(
            AuthErrorKind::NotYetValid,
            "the token was issued in the future (iat)",
        ));
    }
    Ok(())
}

/// The registered claims, read in one pass without copying the payload.
#[derive(Default)]
struct Registered {
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    session_end: Option<u64>,
    auth_time: Option<u64>,
    session_start: Option<u64>,
    /// Index of the matching configured issuer.
    iss: Option<usize>,
    aud_present: bool,
    aud_matched: bool,
    sub: Option<Arc<str>>,
    jti: Option<Arc<str>>,
    sid: Option<Arc<str>>,
    /// Top-level claims holding roles or scopes (only when asked).
    captured: Vec<(Box<str>, serde_json::Value)>,
    /// The token's `events` hold the back-channel logout event.
    logout_event: bool,
    /// Bit i set: required claim i is present.
    required_seen: u64,
}

fn read_registered(payload: &[u8], rules: &Rules) -> Result<Registered, AuthError> {
    let current = Cell::new("");
    let mut de = serde_json::Deserializer::from_slice(payload);
    let result = ClaimsSeed {
        rules,
        current: &current,
    }
    .deserialize(&mut de)
    .and_then(|r| de.end().map(|()| r));
    result.map_err(|e| {
        if e.is_data() {
            let detail = match current.get() {
                "exp" => "the exp claim is not a valid NumericDate",
                "nbf" => "the nbf claim is not a valid NumericDate",
                "iat" => "the iat claim is not a valid NumericDate",
                SESSION_END_CLAIM => "the session_end claim is not a valid NumericDate",
                SESSION_START_CLAIM => "the session_start claim is not a valid NumericDate",
                "auth_time" => "the auth_time claim is not a valid NumericDate",
                "iss" => "the iss claim is not a string",
                "aud" => "the aud claim is not a string or an array of strings",
                "sub" => "the sub claim is not a string",
                "jti" => "the jti claim is not a string",
                "sid" => "the sid claim is not a string",
                "duplicate" => "a registered claim appears twice",
                "depth" => "a claim nests deeper than 64 levels",
                _ => "the claims are not a JSON object",
            };
            err(AuthErrorKind::InvalidClaim, detail)
        } else {
            err(AuthErrorKind::Malformed, "the payload is not valid JSON")
        }
    })
}

struct ClaimsSeed<'r> {
    rules: &'r Rules,
    current: &'r Cell<&'static str>,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Registered;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Registered, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Registered;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Registered, A::Error> {
        let mut r = Registered::default();
        let mut iss_seen = false;
        let mut sub_seen = false;
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            if let Some(i) = self.rules.required_claims.iter().position(|c| **c == *name)
                && i < 64
            {
                r.required_seen |= 1 << i;
            }
            let duplicate = |seen: bool| {
                if seen {
                    self.current.set("duplicate");
                    Err(de::Error::custom("duplicate claim"))
                } else {
                    Ok(())
                }
            };
            match &*name {
                "exp" => {
                    duplicate(r.exp.is_some())?;
                    self.current.set("exp");
                    r.exp = Some(map.next_value::<NumericDate>()?.0);
                }
                "nbf" => {
                    duplicate(r.nbf.is_some())?;
                    self.current.set("nbf");
                    r.nbf = Some(map.next_value::<NumericDate>()?.0);
                }
                "iat" => {
                    duplicate(r.iat.is_some())?;
                    self.current.set("iat");
                    r.iat = Some(map.next_value::<NumericDate>()?.0);
                }
                SESSION_END_CLAIM => {
                    duplicate(r.session_end.is_some())?;
                    self.current.set(SESSION_END_CLAIM);
                    r.session_end = Some(map.next_value::<NumericDate>()?.0);
                }
                SESSION_START_CLAIM => {
                    duplicate(r.session_start.is_some())?;
                    self.current.set(SESSION_START_CLAIM);
                    r.session_start = Some(map.next_value::<NumericDate>()?.0);
                }
                "auth_time" => {
                    duplicate(r.auth_time.is_some())?;
                    self.current.set("auth_time");
                    r.auth_time = Some(map.next_value::<NumericDate>()?.0);
                }
                "iss" => {
                    duplicate(iss_seen)?;
                    iss_seen = true;
                    self.current.set("iss");
                    let Name(iss) = map.next_value::<Name<'de>>()?;
                    r.iss = self.rules.issuers.iter().position(|i| **i == *iss);
                }
                "sub" => {
                    duplicate(sub_seen)?;
                    sub_seen = true;
                    self.current.set("sub");
                    let Name(sub) = map.next_value::<Name<'de>>()?;
                    r.sub = Some(Arc::from(&*sub));
                }
                "jti" => {
                    duplicate(r.jti.is_some())?;
                    self.current.set("jti");
                    let Name(jti) = map.next_value::<Name<'de>>()?;
                    r.jti = Some(Arc::from(&*jti));
                }
                "sid" => {
                    duplicate(r.sid.is_some())?;
                    self.current.set("sid");
                    let Name(sid) = map.next_value::<Name<'de>>()?;
                    r.sid = Some(Arc::from(&*sid));
                }
                "aud" => {
                    duplicate(r.aud_present)?;
                    r.aud_present = true;
                    self.current.set("aud");
                    r.aud_matched = map.next_value_seed(AudSeed(&self.rules.audiences))?;
                }
                "events" if !self.rules.accept_logout_events => {
                    self.current.set("depth");
                    r.logout_event |= map.next_value_seed(LogoutEvent)?;
                }
                other if self.rules.grants.as_ref().is_some_and(|g| g.wants(other)) => {
                    if r.captured.iter().any(|(name, _)| **name == *other) {
                        // The route check and the claims type would read
                        // different values.
                        self.current.set("duplicate");
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    self.current.set("depth");
                    let value = map.next_value::<serde_json::Value>()?;
                    r.captured.push((other.into(), value));
                }
                _ => {
                    self.current.set("depth");
                    map.next_value_seed(Shallow(MAX_CLAIM_DEPTH))?;
                }
            }
            self.current.set("");
        }
        Ok(r)
    }
}

/// Whether an `events` claim holds the back-channel logout event (any other
/// shape is skipped, depth-limited).
struct LogoutEvent;

impl<'de> DeserializeSeed<'de> for LogoutEvent {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LogoutEvent {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element_seed(Shallow(MAX_CLAIM_DEPTH))?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(Name(key)) = map.next_key::<Name<'de>>()? {
            found |= key == BACKCHANNEL_LOGOUT_EVENT;
            map.next_value_seed(Shallow(MAX_CLAIM_DEPTH))?;
        }
        Ok(found)
    }
}

/// How deep a claim's value may nest. Real claims nest a few levels; a
/// signed token nesting thousands deep would otherwise reach the claims
/// type, whose own limits depend on how it is written.
const MAX_CLAIM_DEPTH: u32 = 64;

/// Skips a value, refusing one that nests deeper than its depth allows.
struct Shallow(u32);

impl<'de> DeserializeSeed<'de> for Shallow {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shallow {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self
            .0
            .checked_sub(1)
            .ok_or_else(|| de::Error::custom("too deep"))?;
        while seq.next_element_seed(Shallow(inner))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self
            .0
            .checked_sub(1)
            .ok_or_else(|| de::Error::custom("too deep"))?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(Shallow(inner))?;
        }
        Ok(())
    }
}

/// A JSON string, borrowed when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional.
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumericDate, E> {
                if v <= MAX_NUMERIC_DATE {
                    Ok(NumericDate(v))
                } else {
                    Err(E::custom("date out of range"))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("negative date"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if v.is_finite() && (0.0..=MAX_NUMERIC_DATE as f64).contains(&v) {
                    Ok(NumericDate(v.floor() as u64))
                } else {
                    Err(E::custom("date out of range"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads `aud` (a string or an array of strings) and says whether any entry
/// names a configured audience.
struct AudSeed<'r>(&'r [Box<str>]);

impl<'de> DeserializeSeed<'de> for AudSeed<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AudSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(self.0.iter().any(|a| **a == *v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut matched = false;
        while let Some(Name(aud)) = seq.next_element::<Name<'de>>()? {
            matched |= self.0.iter().any(|a| **a == *aud);
        }
        Ok(matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            issuers: vec![Arc::from("https://issuer")],
            audiences: vec!["api".into()],
            leeway: 60,
            require_exp: true,
            typ: None,
            understood_crit: vec![],
            max_lifetime: None,
            required_claims: vec!["roles".into()],
            grants: None,
            accept_logout_events: false,
        }
    }

    fn read(json: &str) -> Result<Registered, AuthError> {
        read_registered(json.as_bytes(), &rules())
    }

    #[test]
    fn reads_registered_claims() {
        let r = read(r#"{"exp":10,"nbf":5.9,"iat":1,"iss":"https://issuer","aud":["x","api"],"sub":"u1","roles":[],"z":{"a":[1,2]}}"#).unwrap();
        assert_eq!(
            (r.exp, r.nbf, r.iat, r.iss),
            (Some(10), Some(5), Some(1), Some(0))
        );
        assert!(r.aud_present && r.aud_matched);
        assert_eq!(r.sub.as_deref(), Some("u1"));
        assert_eq!(r.required_seen, 1);
    }

    #[test]
    fn wrong_types_are_invalid_claims_without_echo() {
        for (json, needle) in [
            (r#"{"exp":"99999999999"}"#, "exp"),
            (r#"{"exp":1e300}"#, "exp"),
            (r#"{"exp":-1}"#, "exp"),
            (r#"{"exp":null}"#, "exp"),
            (r#"{"iss":7}"#, "iss"),
            (r#"{"aud":[1]}"#, "aud"),
            (r#"{"sub":{"x":"secretvalue"}}"#, "sub"),
            (r#"{"exp":1,"exp":2}"#, "twice"),
            (r#"{"auth_time":"yesterday"}"#, "auth_time"),
            (r#"{"session_start":-5}"#, "session_start"),
            (r#"{"session_start":1,"session_start":2}"#, "twice"),
            (r#"[1,2]"#, "object"),
            (r#""str""#, "object"),
        ] {
            let e = read(json)
                .err()
                .unwrap_or_else(|| panic!("{json} accepted"));
            assert_eq!(e.kind(), AuthErrorKind::InvalidClaim, "{json}");
            assert!(e.detail().contains(needle), "{json}: {e}");
            assert!(!e.detail().contains("secretvalue"));
        }
    }

    #[test]
    fn the_session_start_is_the_earlier_of_auth_time_and_session_start() {
        let start = |json: &str| {
            check(
                json.as_bytes(),
                &Rules {
                    required_claims: vec![],
                    audiences: vec![],
                    issuers: vec![],
                    ..rules()
                },
                100,
            )
            .map(|c| c.session_start)
            .ok()
            .flatten()
        };
        assert_eq!(start(r#"{"exp":1000}"#), None);
        assert_eq!(start(r#"{"exp":1000,"auth_time":50}"#), Some(50));
        assert_eq!(start(r#"{"exp":1000,"session_start":40}"#), Some(40));
        assert_eq!(
            start(r#"{"exp":1000,"auth_time":50,"session_start":60}"#),
            Some(50)
        );
    }

    #[test]
    fn syntax_errors_are_malformed() {
        assert_eq!(read("{").err().unwrap().kind(), AuthErrorKind::Malformed);
        assert_eq!(read("{} x").err().unwrap().kind(), AuthErrorKind::Malformed);
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        // Unknown claims are skipped to a bounded depth, whatever the
        // claims type would do with them.
        let json = format!(r#"{{"x":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
        let e = read(&json).err().map(|e| (e.kind(), e.detail().to_owned()));
        assert_eq!(
            e,
            Some((
                AuthErrorKind::InvalidClaim,
                "a claim nests deeper than 64 levels".to_owned()
            ))
        );
        let json = format!(r#"{{"x":{}1{}}}"#, "[{\"a\":".repeat(31), "}]".repeat(31));
        assert!(read(&json).is_ok(), "62 levels are fine");
        let json = format!(r#"{{"aud":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
        assert_eq!(
            read(&json).err().map(|e| e.kind()),
            Some(AuthErrorKind::InvalidClaim)
        );
    }
}
