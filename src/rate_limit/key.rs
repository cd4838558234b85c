use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;

use super::client_ip::{TrustedProxies, canonical, peer_ip};
use crate::error::ConfigError;
use crate::identity::Identity;

/// The bucket a request is counted in.
///
/// Fixed-size (24 bytes, no heap) so that a million keys stay small whatever
/// clients send: addresses are stored as integers, IPv6 addresses already
/// masked to their prefix, and text (a subject, a header value) as a 128-bit
/// SHA-256 digest — a 64 KiB header value costs what a short one does, and
/// finding two texts that share a bucket takes about 2^64 work.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RateKey(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Global,
    /// Requests whose key could not be found share this bucket.
    Unkeyed,
    /// New keys beyond the store's cap share this bucket.
    Overflow,
    V4(u32),
    V6(u64, u64),
    /// SHA-256 of the length-prefixed parts, truncated to 128 bits.
    Digest([u8; 16]),
}

impl RateKey {
    /// The one bucket of a global limit.
    pub fn global() -> Self {
        Self(Repr::Global)
    }

    /// A key from text or bytes (an API key, a header value), stored as a
    /// fixed-size digest.
    pub fn text(text: impl AsRef<[u8]>) -> Self {
        Self::digest(b"text", &[text.as_ref()])
    }

    /// The key of a verified subject: `(issuer, subject)`, so that the same
    /// `sub` from two issuers counts in two buckets.
    pub fn subject(issuer: Option<&str>, subject: &str) -> Self {
        Self(Repr::Digest(subject_digest(issuer, subject)))
    }

    /// Each part is length-prefixed and the kind is a separate domain, so no
    /// choice of texts makes two different tuples hash the same input.
    fn digest(kind: &[u8], parts: &[&[u8]]) -> Self {
        Self(Repr::Digest(digest(kind, parts)))
    }

    /// A key from an address: IPv4-mapped IPv6 is IPv4, IPv6 is masked to
    /// `v6_prefix` bits (64 groups a typical end-user allocation).
    pub fn ip(ip: IpAddr, v6_prefix: u8) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self(Repr::V4(u32::from(v4))),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let prefix = u32::from(v6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                let masked = bits & mask;
                Self(Repr::V6((masked >> 64) as u64, masked as u64))
            }
        }
    }

    pub(crate) fn unkeyed() -> Self {
        Self(Repr::Unkeyed)
    }

    pub(crate) fn overflow() -> Self {
        Self(Repr::Overflow)
    }

    /// A stable text form, used by remote stores to build their keys. IP
    /// keys are printed as the masked address.
    pub fn to_store_key(&self) -> String {
        match &self.0 {
            Repr::Global => "global".into(),
            Repr::Unkeyed => "unkeyed".into(),
            Repr::Overflow => "overflow".into(),
            Repr::V4(v) => format!("ip:{}", std::net::Ipv4Addr::from(*v)),
            Repr::V6(hi, lo) => format!(
                "ip:{}",
                std::net::Ipv6Addr::from((u128::from(*hi) << 64) | u128::from(*lo))
            ),
            Repr::Digest(d) => {
                let mut out = String::with_capacity(2 + 32);
                out.push_str("k:");
                for byte in d {
                    out.push(char::from(HEX[usize::from(byte >> 4)]));
                    out.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
                out
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for RateKey {
    // Keys can be subjects or addresses: print only their kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Repr::Global => "global",
            Repr::Unkeyed => "unkeyed",
            Repr::Overflow => "overflow",
            Repr::V4(_) => "ipv4",
            Repr::V6(..) => "ipv6",
            Repr::Digest(_) => "text",
        };
        write!(f, "RateKey({kind})")
    }
}

type KeyFn = Arc<dyn Fn(&Parts) -> Option<RateKey> + Send + Sync>;

/// What a rate limit counts requests by.
#[derive(Clone)]
pub struct KeyBy(KeyKind);

#[derive(Clone)]
enum KeyKind {
    Global,
    ClientIp {
        proxies: TrustedProxies,
        v6_prefix: u8,
    },
    Subject {
        proxies: TrustedProxies,
        v6_prefix: u8,
    },
    Header(HeaderName),
    Custom(KeyFn),
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            KeyKind::Global => f.write_str("KeyBy::global"),
            KeyKind::ClientIp { proxies, v6_prefix } => f
                .debug_struct("KeyBy::client_ip")
                .field("proxies", proxies)
                .field("v6_prefix", v6_prefix)
                .finish(),
            KeyKind::Subject { proxies, v6_prefix } => f
                .debug_struct("KeyBy::subject")
                .field("fallback_proxies", proxies)
                .field("v6_prefix", v6_prefix)
                .finish(),
            KeyKind::Header(h) => write!(f, "KeyBy::header({h})"),
            KeyKind::Custom(_) => f.write_str("KeyBy::custom(..)"),
        }
    }
}

/// Default IPv6 prefix length that shares one bucket.
pub const DEFAULT_V6_PREFIX: u8 = 64;

impl KeyBy {
    /// One bucket for all requests.
    pub fn global() -> Self {
        Self(KeyKind::Global)
    }

    /// The direct peer's address (see [`PeerAddr`](super::PeerAddr) for
    /// where it is read from).
    pub fn peer_ip() -> Self {
        Self::client_ip(TrustedProxies::none())
    }

    /// The client's address, read from forwarding headers only when the peer
    /// is a trusted proxy.
    pub fn client_ip(proxies: TrustedProxies) -> Self {
        Self(KeyKind::ClientIp {
            proxies,
            v6_prefix: DEFAULT_V6_PREFIX,
        })
    }

    /// The verified subject ([`Identity`], set by
    /// [`JwtAuthLayer`](crate::auth::JwtAuthLayer) in front of this layer),
    /// together with its issuer: `alice` of one issuer does not spend the
    /// quota of `alice` of another. Anonymous callers are counted by client
    /// address.
    ///
    /// The auth layer must run first (be the outer layer): a request it never
    /// saw is counted by address, and the layer warns once.
    pub fn subject_or_client_ip(proxies: TrustedProxies) -> Self {
        Self(KeyKind::Subject {
            proxies,
            v6_prefix: DEFAULT_V6_PREFIX,
        })
    }

    /// The value of a request header (e.g. an API key). Requests without it
    /// have no key.
    ///
    /// The value is **not authenticated**: a client can send a new value on
    /// every request and get a fresh bucket each time, so a header key limits
    /// honest clients only. Put a limit by client IP in front of it, or key on
    /// a verified identity. Values are stored as fixed-size digests, so a
    /// long value costs no more memory than a short one.
    pub fn header(name: HeaderName) -> Self {
        Self(KeyKind::Header(name))
    }

    /// Any function of the request head.
    pub fn custom(f: impl Fn(&Parts) -> Option<RateKey> + Send + Sync + 'static) -> Self {
        Self(KeyKind::Custom(Arc::new(f)))
    }

    /// The IPv6 prefix length whose addresses share a bucket (default 64).
    ///
    /// # Errors
    /// A prefix over 128, or a key kind that has no address.
    pub fn v6_prefix(mut self, prefix: u8) -> Result<Self, ConfigError> {
        if prefix > 128 {
            return Err(ConfigError::new(
                "v6_prefix",
                "an IPv6 prefix is at most 128 bits",
            ));
        }
        match &mut self.0 {
            KeyKind::ClientIp { v6_prefix, .. } | KeyKind::Subject { v6_prefix, .. } => {
                *v6_prefix = prefix;
                Ok(self)
            }
            _ => Err(ConfigError::new(
                "v6_prefix",
                "only address keys have an IPv6 prefix",
            )),
        }
    }

    /// Whether this key reads the peer address (directly, or as the
    /// fallback for anonymous callers).
    pub(crate) fn needs_peer_addr(&self) -> bool {
        matches!(self.0, KeyKind::ClientIp { .. } | KeyKind::Subject { .. })
    }

    /// Whether this key reads the [`Identity`] set by the auth layer.
    pub(crate) fn needs_identity(&self) -> bool {
        matches!(self.0, KeyKind::Subject { .. })
    }

    /// The key of a request, or `None` when it has none.
    pub fn key(&self, parts: &Parts) -> Option<RateKey> {
        match &self.0 {
            KeyKind::Global => Some(RateKey::global()),
            KeyKind::ClientIp { proxies, v6_prefix } => client_key(parts, proxies, *v6_prefix),
            KeyKind::Subject { proxies, v6_prefix } => {
                let identity = parts.extensions.get::<Identity>();
                match identity.and_then(|i| Some((i, i.subject()?))) {
                    // computed once per verified token, shared by its cache hits
                    Some((identity, subject)) => {
                        Some(RateKey(Repr::Digest(identity.subject_digest(|| {
                            subject_digest(identity.issuer(), subject)
                        }))))
                    }
                    None => client_key(parts, proxies, *v6_prefix),
                }
            }
            KeyKind::Header(name) => parts.headers.get(name).map(|v| RateKey::text(v.as_bytes())),
            KeyKind::Custom(f) => f(parts),
        }
    }
}

/// SHA-256 of `kind` and the length-prefixed `parts`, truncated to 128 bits.
fn digest(kind: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update([u8::try_from(kind.len()).unwrap_or(u8::MAX)]);
    hasher.update(kind);
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let full = hasher.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The digest of a verified subject's key.
fn subject_digest(issuer: Option<&str>, subject: &str) -> [u8; 16] {
    match issuer {
        Some(issuer) => digest(b"iss+sub", &[issuer.as_bytes(), subject.as_bytes()]),
        None => digest(b"sub", &[subject.as_bytes()]),
    }
}

fn client_key(parts: &Parts, proxies: &TrustedProxies, v6_prefix: u8) -> Option<RateKey> {
    let peer = peer_ip(parts)?;
    Some(RateKey::ip(
        proxies.client_ip(peer, &parts.headers),
        v6_prefix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subject key a verified token's identity shares with its cache
    /// hits is the key of its (issuer, subject), for every identity that
    /// shares it, and not another subject's.
    #[test]
    fn a_shared_subject_key_is_the_subjects_key() {
        use crate::identity::{CredentialSource, Derived, Identity};
        let by_subject = KeyBy::subject_or_client_ip(TrustedProxies::none());
        let derived = Derived::default();
        let identity = |sub: &str| {
            Identity::new(
                Some(sub.into()),
                Some("https://a".into()),
                CredentialSource::Cookie,
            )
        };
        let key = |identity: Identity| {
            let mut req = http::Request::new(());
            req.extensions_mut().insert(identity);
            by_subject.key(&req.into_parts().0)
        };
        let alice = RateKey::subject(Some("https://a"), "alice");
        for _ in 0..2 {
            let shared = identity("alice").with_derived(derived.clone());
            assert_eq!(key(shared), Some(alice.clone()));
        }
        assert_eq!(key(identity("alice")), Some(alice.clone()));
        assert_ne!(key(identity("bob")), Some(alice));
    }

    #[test]
    fn key_is_compact() {
        assert!(std::mem::size_of::<RateKey>() <= 24);
    }

    #[test]
    fn v6_prefix_groups_and_mapped_v4_is_v4() {
        let a = RateKey::ip("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = RateKey::ip("2001:db8:1:2:ffff::9".parse().unwrap(), 64);
        let c = RateKey::ip("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            RateKey::ip("::ffff:1.2.3.4".parse().unwrap(), 64),
            RateKey::ip("1.2.3.4".parse().unwrap(), 64)
        );
        assert_ne!(
            RateKey::ip("2001:db8::1".parse().unwrap(), 128),
            RateKey::ip("2001:db8::2".parse().unwrap(), 128)
        );
        assert_eq!(
            RateKey::ip("2001:db8::1".parse().unwrap(), 0),
            RateKey::ip("ffff::2".parse().unwrap(), 0)
        );
        assert_eq!(
            RateKey::ip("2001:db8::1".parse().unwrap(), 64).to_store_key(),
            "ip:2001:db8::"
        );
    }

    #[test]
    fn text_keys_are_fixed_size_digests() {
        let long = "x".repeat(64 * 1024);
        assert_eq!(RateKey::text(&long).to_store_key().len(), 2 + 32);
        assert_eq!(RateKey::text(&long), RateKey::text(&long));
        assert_ne!(RateKey::text(&long), RateKey::text(&long[1..]));
        assert_eq!(
            RateKey::text("alice").to_store_key(),
            RateKey::text(b"alice").to_store_key()
        );
    }

    #[test]
    fn subjects_are_keyed_with_their_issuer_without_ambiguity() {
        // Regression: `sub` alone was the key, so alice of issuer B spent
        // alice of issuer A's quota.
        let a = RateKey::subject(Some("https://a"), "alice");
        let b = RateKey::subject(Some("https://b"), "alice");
        assert_ne!(a, b);
        assert_eq!(a, RateKey::subject(Some("https://a"), "alice"));
        // No concatenation collides: ("ab", "c") vs ("a", "bc"), and a
        // subject never shares a bucket with a header value or no issuer.
        assert_ne!(
            RateKey::subject(Some("ab"), "c"),
            RateKey::subject(Some("a"), "bc")
        );
        assert_ne!(RateKey::subject(None, "alice"), RateKey::text("alice"));
        assert_ne!(
            RateKey::subject(None, "alice"),
            RateKey::subject(Some(""), "alice")
        );
    }

    #[test]
    fn debug_does_not_print_the_key() {
        assert_eq!(format!("{:?}", RateKey::text("alice")), "RateKey(text)");
    }
}
