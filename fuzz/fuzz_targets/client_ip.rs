#![no_main]
//! Arbitrary forwarding headers: the client address is the peer or one of
//! the header's entries, never a panic.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate::rate_limit::{ForwardedHeader, TrustedProxies};

fuzz_target!(|input: (Vec<Vec<u8>>, [u8; 4], bool, u8)| {
    let (fields, peer, forwarded, hops) = input;
    let peer = IpAddr::from(peer);
    let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
    let mut headers = HeaderMap::new();
    let mut text = String::new();
    for field in fields.iter().take(8) {
        if let Ok(value) = HeaderValue::from_bytes(field) {
            text.push_str(&String::from_utf8_lossy(field));
            text.push(',');
            headers.append(name, value);
        }
    }
    let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
    for trust in [
        TrustedProxies::cidrs(["0.0.0.0/0", "::/0"]).unwrap(),
        TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap(),
        TrustedProxies::hops(usize::from(hops % 5)),
    ] {
        let client = trust.header(header).client_ip(peer, &headers);
        if client != peer {
            // It came from the header: some address-like word of it must
            // parse to it (IPv6 in any case or compression, IPv4 with a port,
            // IPv4-mapped IPv6 as IPv4).
            assert!(addresses(&text).contains(&client), "{client} not in {text:?}");
        }
    }
});

/// Every address spelled in `text`, canonical (mapped IPv6 as IPv4).
fn addresses(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':')) {
        let candidates = [Some(word), word.rsplit_once(':').map(|(ip, _)| ip)];
        for candidate in candidates.into_iter().flatten() {
            if let Ok(ip) = candidate.parse::<IpAddr>() {
                out.push(match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                });
            }
        }
    }
    out
}
