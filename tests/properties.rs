//! Property tests over hostile input: cookies, tokens, forwarding chains and
//! limiter sequences.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use governor::clock::FakeRelativeClock;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use proptest::prelude::*;
use serde_json::Value;
use tollgate::auth::{Anonymous, AuthErrorKind, JwtAuthLayer, Key};
use tollgate::rate_limit::store::Check;
use tollgate::rate_limit::{
    KeyBy, LocalStore, Quota, RateKey, RateLimitLayer, RateLimitStore, TrustedProxies,
};
use tower::{Layer, ServiceExt};

/// What the layer made of the cookie fields: no token, an ambiguous cookie,
/// or some token (which then failed or passed verification).
#[derive(Debug, PartialEq)]
enum Seen {
    Nothing,
    Ambiguous,
    TooLarge,
    Token,
}

fn seen_by_layer(fields: &[Vec<u8>]) -> Seen {
    let layer = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .cookie("da3")
        .clock(|| NOW)
        .build()
        .unwrap()
        .lenient();
    let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        let seen = match req.extensions().get::<Anonymous>().map(Anonymous::rejected) {
            Some(None) => "nothing",
            Some(Some(AuthErrorKind::AmbiguousCookie)) => "ambiguous",
            Some(Some(AuthErrorKind::TooLarge)) => "too_large",
            _ => "token",
        };
        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
            seen,
        ))))
    }));
    let mut req = Request::new(());
    for f in fields {
        req.headers_mut()
            .append(header::COOKIE, HeaderValue::from_bytes(f).unwrap());
    }
    let res = run(svc.oneshot(req)).unwrap();
    let body = run(http_body_util::BodyExt::collect(res.into_body()))
        .unwrap()
        .to_bytes();
    match &body[..] {
        b"nothing" => Seen::Nothing,
        b"ambiguous" => Seen::Ambiguous,
        b"too_large" => Seen::TooLarge,
        _ => Seen::Token,
    }
}

/// A plain reading of RFC 6265 `Cookie` fields, as a reference.
fn reference(fields: &[Vec<u8>]) -> Seen {
    let mut value: Option<String> = None;
    for field in fields {
        let text = String::from_utf8_lossy(field);
        for pair in text.split(';') {
            let Some((name, v)) = pair.split_once('=') else {
                continue;
            };
            // HTTP's OWS: spaces and tabs only, never Unicode whitespace.
            let ows = |s: &str| s.trim_matches([' ', '\t']).to_owned();
            if ows(name) != "da3" {
                continue;
            }
            let v = ows(v);
            let v = v.as_str();
            let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                &v[1..v.len() - 1]
            } else {
                v
            };
            if v.is_empty() {
                continue;
            }
            match &value {
                None => value = Some(v.to_owned()),
                Some(existing) if existing == v => {}
                Some(_) => return Seen::Ambiguous,
            }
        }
    }
    match value {
        None => Seen::Nothing,
        Some(v) if v.len() > 8192 => Seen::TooLarge,
        Some(_) => Seen::Token,
    }
}

fn cookie_field() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("da3"),
        Just("da"),
        Just("da33"),
        Just("x"),
        Just(" da3"),
        Just("da3 "),
        Just("\u{a0}da3"),
        Just("da3\u{3000}"),
        Just("xda3")
    ];
    let value = prop_oneof![
        "[A-Za-z0-9._-]{0,12}".prop_map(|s| s.into_bytes()),
        "\"[A-Za-z0-9.]{0,6}\"?".prop_map(|s| s.into_bytes()),
        proptest::collection::vec(
            prop_oneof![
                Just(b'a'),
                Just(b'='),
                Just(b' '),
                Just(b'"'),
                Just(0xff_u8),
                Just(0xc3),
                Just(0xa9),
                // U+00A0, U+0085, U+3000: whitespace to `str::trim`, not to HTTP
                Just(0xc2),
                Just(0xa0),
                Just(0x85),
                Just(0xe3),
                Just(0x80)
            ],
            0..8
        ),
        "[ \u{a0}\u{85}\u{3000}]{0,2}\"?[a-z.]{0,4}\"?[ \u{a0}\u{3000}]{0,2}"
            .prop_map(|s| s.into_bytes()),
    ];
    let pair = (name, value).prop_map(|(n, v)| {
        let mut p = n.as_bytes().to_vec();
        p.push(b'=');
        p.extend(v);
        p
    });
    let garbage = proptest::collection::vec(
        prop_oneof![Just(b'a'), Just(b'='), Just(b' '), Just(b'\t'), Just(b';')],
        0..6,
    );
    proptest::collection::vec(prop_oneof![4 => pair, 1 => garbage], 0..5)
        .prop_map(|pairs| pairs.join(&b"; "[..]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn cookie_extraction_agrees_with_a_reference_parser(fields in proptest::collection::vec(cookie_field(), 0..4)) {
        prop_assert_eq!(seen_by_layer(&fields), reference(&fields));
    }

    #[test]
    fn arbitrary_bytes_are_never_accepted(token in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut headers = HeaderMap::new();
        let mut value = b"Bearer ".to_vec();
        value.extend(&token);
        let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        headers.insert(header::AUTHORIZATION, value);
        prop_assert!(refused(headers));
    }

    #[test]
    fn arbitrary_jws_shapes_are_never_accepted(token in "[A-Za-z0-9_-]{0,40}(\\.[A-Za-z0-9_=-]{0,200}){0,5}") {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::try_from(format!("Bearer {token}")).unwrap());
        prop_assert!(refused(headers));
    }
}

/// The inner service is not called and the answer is a 401 or 431.
fn refused(headers: HeaderMap) -> bool {
    let layer = JwtAuthLayer::<Value>::builder()
        .key(Key::hmac(SECRET).unwrap())
        .key(Key::rsa_pem(RSA_PUBLIC).unwrap().kid("rsa"))
        .bearer()
        .clock(|| NOW)
        .build()
        .unwrap();
    let counter = Counter::default();
    let mut req = Request::new(());
    *req.headers_mut() = headers;
    let res = run(layer.layer(counter.service()).oneshot(req)).unwrap();
    counter.calls() == 0 && matches!(res.status().as_u16(), 401 | 431)
}

fn trusted_ip() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 3]>().prop_map(|b| IpAddr::V4(Ipv4Addr::new(10, b[0], b[1], b[2])))
}

fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..=9, any::<[u8; 3]>())
            .prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::new(a, b[0], b[1], b[2]))),
        any::<[u16; 8]>()
            .prop_filter("not 10/8-mapped", |s| s[0] != 0)
            .prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_client_never_comes_from_left_of_the_trust_boundary(
        spoofed in proptest::collection::vec(prop_oneof![untrusted_ip().prop_map(|ip| ip.to_string()), Just("garbage".to_owned()), trusted_ip().prop_map(|ip| ip.to_string())], 0..4),
        client in untrusted_ip(),
        proxies in proptest::collection::vec(trusted_ip(), 1..4),
        split in any::<bool>(),
    ) {
        // The client may write anything; each trusted proxy appends the
        // address it received the request from.
        let mut chain: Vec<String> = spoofed;
        chain.push(client.to_string());
        for hop in &proxies[..proxies.len() - 1] {
            chain.push(hop.to_string());
        }
        let peer = *proxies.last().unwrap();
        let mut headers = HeaderMap::new();
        if split {
            for entry in &chain {
                headers.append("x-forwarded-for", HeaderValue::try_from(entry.as_str()).unwrap());
            }
        } else {
            headers.insert("x-forwarded-for", HeaderValue::try_from(chain.join(", ")).unwrap());
        }
        let trusted = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
        prop_assert_eq!(trusted.client_ip(peer, &headers), client);
        // An untrusted peer is its own client, whatever the header says.
        prop_assert_eq!(trusted.client_ip(client, &headers), client);
    }

    #[test]
    fn ipv6_masking_and_mapped_ipv4(a in any::<u128>(), b in any::<u128>(), prefix in 0u8..=128, v4 in any::<u32>()) {
        let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
        let same_prefix = (a & mask) == (b & mask);
        let not_mapped = |x: u128| Ipv6Addr::from(x).to_ipv4_mapped().is_none();
        if not_mapped(a) && not_mapped(b) {
            prop_assert_eq!(
                RateKey::ip(IpAddr::V6(Ipv6Addr::from(a)), prefix) == RateKey::ip(IpAddr::V6(Ipv6Addr::from(b)), prefix),
                same_prefix
            );
        }
        let v4 = Ipv4Addr::from(v4);
        prop_assert_eq!(RateKey::ip(IpAddr::V6(v4.to_ipv6_mapped()), prefix), RateKey::ip(IpAddr::V4(v4), prefix));
    }

    #[test]
    fn the_limiter_admits_what_the_quota_allows_no_more_no_less(
        per_sec in 1u32..50,
        burst in 1u32..20,
        steps in proptest::collection::vec((0u64..400, 0u32..6), 1..60),
    ) {
        let quota = Quota::per_second(per_sec).burst(burst);
        let clock = FakeRelativeClock::default();
        let layer = RateLimitLayer::builder("p", quota).key(KeyBy::global()).store(LocalStore::with_clock(clock.clone())).build().unwrap();
        let policy = layer.policies()[0].clone();
        let t = quota.replenish_interval().as_nanos() as u64;
        let tau = t * u64::from(burst - 1);
        // Reference GCRA on integer nanoseconds.
        let mut tat: u64 = 0;
        let (mut now, mut admitted, mut expected) = (0u64, 0u64, 0u64);
        for (advance_ms, requests) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            now += advance_ms * 1_000_000;
            for _ in 0..requests {
                let allowed = match layer.store().check(&policy, &RateKey::global()) {
                    Check::Ready(Ok(d)) => d.allowed,
                    other => panic!("{other:?}"),
                };
                admitted += u64::from(allowed);
                let base = tat.max(now);
                if now + tau >= base {
                    tat = base + t;
                    expected += 1;
                }
            }
            prop_assert!(admitted <= u64::from(burst) + now / t, "over the quota");
        }
        prop_assert_eq!(admitted, expected);
    }
}

#[test]
fn reference_parser_sanity() {
    let f = |s: &str| vec![s.as_bytes().to_vec()];
    assert_eq!(reference(&f("da3=x")), Seen::Token);
    assert_eq!(reference(&f("da3=x; da3=y")), Seen::Ambiguous);
    assert_eq!(reference(&f("da3=; x=1")), Seen::Nothing);
}
