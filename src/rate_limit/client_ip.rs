//! The client's IP address, behind trusted proxies only.
//!
//! `X-Forwarded-For` and `Forwarded` are written by whoever sends the request,
//! so they are read only when the direct peer is a proxy we trust, and then
//! from the right: each trusted proxy appended the address it received the
//! request from, and the first address from the right that is not a trusted
//! proxy is the client. The leftmost entry, which the client controls, is
//! never taken unless every hop to its right is trusted.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;
use http::request::Parts;
use ipnet::IpNet;

use crate::error::ConfigError;

/// The direct peer's socket address, for servers that do not record it in a
/// way tollgate knows. Insert it into the request extensions.
///
/// tollgate also reads axum's `ConnectInfo<SocketAddr>` (feature
/// `axum-connect-info`) and tonic's `TcpConnectInfo` (feature `tonic`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's address from the request extensions.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = parts.extensions.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum-connect-info")]
    if let Some(axum::extract::ConnectInfo(addr)) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(addr.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = parts
        .extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
    {
        return info.remote_addr().map(|a| a.ip());
    }
    None
}

/// Which forwarding header trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Trust {
    /// Peers within these networks are proxies.
    Cidrs(Vec<IpNet>),
    /// Exactly this many proxies stand in front of the service; the direct
    /// peer is the last one. With networks, only a peer within them is
    /// taken for that proxy.
    Hops(usize, Vec<IpNet>),
}

/// Which peers may tell us the client's address.
///
/// With no trusted proxies ([`TrustedProxies::none`], the default) the
/// client is the direct peer, and forwarding headers are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    trust: Trust,
    header: ForwardedHeader,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::none()
    }
}

impl TrustedProxies {
    /// Trust no proxy: the peer address is the client.
    pub fn none() -> Self {
        Self {
            trust: Trust::Cidrs(Vec::new()),
            header: ForwardedHeader::default(),
        }
    }

    /// Trust peers within these networks (`"10.0.0.0/8"`, `"::1/128"`, or a
    /// bare address).
    ///
    /// # Errors
    /// A string that is neither a CIDR nor an address.
    pub fn cidrs<I, S>(cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self {
            trust: Trust::Cidrs(parse_nets(cidrs)?),
            header: ForwardedHeader::default(),
        })
    }

    /// Exactly `hops` proxies stand in front of the service (e.g. 1 for a
    /// single load balancer): the client is the `hops`-th address from the
    /// right of the forwarding header.
    ///
    /// On its own this trusts **any** direct peer to be the last proxy: a
    /// client that can reach the service without passing the proxies (a pod
    /// IP, a node port) chooses its own address. Add
    /// [`peer_in`](Self::peer_in) with the proxies' networks so that only
    /// they are believed; other peers are the client themselves.
    pub fn hops(hops: usize) -> Self {
        Self {
            trust: Trust::Hops(hops, Vec::new()),
            header: ForwardedHeader::default(),
        }
    }

    /// With [`hops`](Self::hops): believe the forwarding header only when
    /// the direct peer is within these networks (`"10.0.0.0/8"`, or a bare
    /// address), i.e. is the last proxy.
    ///
    /// # Errors
    /// A string that is neither a CIDR nor an address, no network at all, or
    /// a `TrustedProxies` built from [`cidrs`](Self::cidrs) (which already
    /// checks every hop).
    pub fn peer_in<I, S>(mut self, cidrs: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = parse_nets(cidrs)?;
        match &mut self.trust {
            Trust::Hops(_, peers) if !nets.is_empty() => {
                peers.extend(nets);
                Ok(self)
            }
            Trust::Hops(..) => Err(ConfigError::new(
                "trusted_proxies",
                "peer_in needs at least one network",
            )),
            Trust::Cidrs(_) => Err(ConfigError::new(
                "trusted_proxies",
                "peer_in applies to TrustedProxies::hops; cidrs already checks every hop",
            )),
        }
    }

    /// Reads this forwarding header (default `X-Forwarded-For`).
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        match &self.trust {
            Trust::Cidrs(nets) => nets.iter().any(|n| n.contains(&ip)),
            Trust::Hops(n, peers) => {
                *n > 0 && (peers.is_empty() || peers.iter().any(|p| p.contains(&ip)))
            }
        }
    }

    /// The client address for a request from `peer`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops = forwarded_for(headers, self.header);
        match &self.trust {
            Trust::Hops(n, _) => {
                // The peer is proxy n; proxies n..2 appended n-1 entries after
                // the client's. Fewer entries than that: the chain is not what
                // was configured, so the peer is all we know.
                let len = hops.len();
                if len < *n {
                    return peer;
                }
                match hops[len - n] {
                    Some(ip) => ip,
                    None => peer,
                }
            }
            Trust::Cidrs(_) => {
                let mut last_trusted = peer;
                for hop in hops.iter().rev() {
                    match hop {
                        Some(ip) if self.trusts(*ip) => last_trusted = *ip,
                        Some(ip) => return *ip,
                        // Unreadable: whoever is left of here is unknown; the
                        // trusted hop that reported it stands in for them.
                        None => return last_trusted,
                    }
                }
                last_trusted
            }
        }
    }
}

fn parse_nets<I, S>(cidrs: I) -> Result<Vec<IpNet>, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut nets = Vec::new();
    for cidr in cidrs {
        let cidr = cidr.as_ref().trim();
        if cidr.is_empty() {
            continue;
        }
        let net = IpNet::from_str(cidr)
            .or_else(|_| IpAddr::from_str(cidr).map(IpNet::from))
            .map_err(|_| {
                ConfigError::new(
                    "trusted_proxies",
                    format!("{cidr:?} is not a CIDR (10.0.0.0/8) or an IP address"),
                )
            })?;
        nets.push(net.trunc());
    }
    Ok(nets)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Every entry of every field of the header, in order; `None` for entries
/// that are not an address (`unknown`, obfuscated identifiers, garbage).
fn forwarded_for(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    for field in headers.get_all(name) {
        let Ok(text) = std::str::from_utf8(field.as_bytes()) else {
            out.push(None);
            continue;
        };
        for element in text.split(',') {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            let node = match header {
                ForwardedHeader::XForwardedFor => Some(element),
                ForwardedHeader::Forwarded => element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
                }),
            };
            out.push(node.and_then(parse_node).map(canonical));
        }
    }
    out
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`, optionally quoted.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = IpAddr::from_str(node) {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return Ipv6Addr::from_str(ip).ok().map(IpAddr::V6);
    }
    SocketAddr::from_str(node).ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(fields: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append("x-forwarded-for", HeaderValue::from_str(f).unwrap());
        }
        h
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_says() {
        let t = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            t.client_ip(ip("203.0.113.9"), &xff(&["1.1.1.1"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            TrustedProxies::none().client_ip(ip("203.0.113.9"), &xff(&["1.1.1.1"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn walks_from_the_right_past_trusted_hops() {
        let t = TrustedProxies::cidrs(["10.0.0.0/8", "192.168.0.0/16"]).unwrap();
        let h = xff(&["6.6.6.6, 198.51.100.7, 192.168.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // fields are merged in order
        let h = xff(&["6.6.6.6", "198.51.100.7", "192.168.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // no header: the proxy itself
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // garbage right of the boundary: the reporting proxy
        let h = xff(&["6.6.6.6, garbage, 192.168.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("192.168.1.1"));
        // all trusted: the leftmost trusted one
        let h = xff(&["10.9.9.9, 192.168.1.1"]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn hop_count_with_peer_networks_believes_only_the_proxy() {
        // Regression: hops(n) alone trusts any direct peer, so a client that
        // reaches the service around the load balancer picks its own address.
        let h = xff(&["6.6.6.6"]);
        assert_eq!(
            TrustedProxies::hops(1).client_ip(ip("203.0.113.9"), &h),
            ip("6.6.6.6")
        );
        let t = TrustedProxies::hops(1).peer_in(["10.0.0.0/8"]).unwrap();
        assert_eq!(t.client_ip(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(t.client_ip(ip("10.1.2.3"), &h), ip("6.6.6.6"));
        assert_eq!(t.client_ip(ip("::ffff:10.1.2.3"), &h), ip("6.6.6.6"));
        assert!(TrustedProxies::hops(1).peer_in(["nope"]).is_err());
        assert!(TrustedProxies::hops(1).peer_in([""; 0]).is_err());
        assert!(TrustedProxies::none().peer_in(["10.0.0.0/8"]).is_err());
    }

    #[test]
    fn hop_count() {
        let t = TrustedProxies::hops(2);
        let h = xff(&["6.6.6.6, 198.51.100.7, 172.16.0.5"]);
        assert_eq!(t.client_ip(ip("172.16.0.9"), &h), ip("198.51.100.7"));
        let h = xff(&["172.16.0.5"]);
        assert_eq!(t.client_ip(ip("172.16.0.9"), &h), ip("172.16.0.9"));
        assert_eq!(
            TrustedProxies::hops(0).client_ip(ip("1.2.3.4"), &xff(&["5.5.5.5"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_header() {
        let t = TrustedProxies::cidrs(["10.0.0.0/8"])
            .unwrap()
            .header(ForwardedHeader::Forwarded);
        let mut h = HeaderMap::new();
        h.append(
            "forwarded",
            HeaderValue::from_static("for=6.6.6.6, For=\"[2001:db8::1]:4711\";proto=https"),
        );
        h.append(
            "forwarded",
            HeaderValue::from_static("for=10.1.1.1;by=10.0.0.1"),
        );
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("2001:db8::1"));
        let mut h = HeaderMap::new();
        h.append("forwarded", HeaderValue::from_static("for=unknown"));
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn nodes_with_ports_and_mapped_addresses() {
        assert_eq!(parse_node("1.2.3.4:80"), Some(ip("1.2.3.4")));
        assert_eq!(parse_node("[::1]:80"), Some(ip("::1")));
        assert_eq!(parse_node("\"[::1]\""), Some(ip("::1")));
        assert_eq!(parse_node("_hidden"), None);
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        let t = TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap();
        assert_eq!(
            t.client_ip(ip("::ffff:10.0.0.1"), &xff(&["::ffff:8.8.8.8"])),
            ip("8.8.8.8")
        );
    }

    #[test]
    fn ipv6_entries_in_any_case() {
        // Fuzz regression (client_ip, crash-eb9fcb17): an upper-case IPv6
        // entry is the same address as its canonical lower-case form.
        let t = TrustedProxies::cidrs(["0.0.0.0/0", "::/0"]).unwrap();
        assert_eq!(t.client_ip(ip("10.0.0.1"), &xff(&["Aa::"])), ip("aa::"));
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), &xff(&["2001:DB8:0:0::1"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn bad_cidr_is_a_config_error() {
        assert!(TrustedProxies::cidrs(["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::cidrs(["nope"]).is_err());
        assert!(TrustedProxies::cidrs(["10.0.0.1", " ", "::1/128"]).is_ok());
    }
}
