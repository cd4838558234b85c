//! Which node owns which key: Redis Cluster's 16,384 hash slots, read from
//! `CLUSTER SLOTS`, so that a sync sends one pipeline per node and a deadline
//! is translated with the right node's clock.

use std::sync::Arc;

use redis::Value;

use super::clock::RedisClock;

/// Hash slots of a Redis Cluster.
pub(super) const SLOTS: usize = 16_384;

/// Marks a slot no node serves (a cluster being resharded or broken).
const UNOWNED: u16 = u16::MAX;

/// One primary: its identity, a slot it owns (to route commands to it), and
/// its clock.
#[derive(Debug)]
pub(super) struct Node {
    /// The node ID, or `host:port` when the server gives none.
    pub(super) id: String,
    /// A slot the node owns.
    pub(super) slot: u16,
    pub(super) clock: Arc<RedisClock>,
}

/// The nodes and, on a cluster, the owner of every slot.
#[derive(Debug)]
pub(super) struct Topology {
    pub(super) nodes: Vec<Node>,
    /// `None`: one server owns everything.
    owners: Option<Box<[u16]>>,
}

impl Topology {
    /// A single server.
    pub(super) fn single() -> Self {
        Self {
            nodes: vec![Node {
                id: "server".to_owned(),
                slot: 0,
                clock: Arc::default(),
            }],
            owners: None,
        }
    }

    /// The index in `nodes` of the node that owns `key`; `None` if no node
    /// owns its slot.
    pub(super) fn node_of(&self, key: &[u8]) -> Option<usize> {
        match &self.owners {
            None => Some(0),
            Some(owners) => {
                let owner = *owners.get(usize::from(key_slot(key)))?;
                (owner != UNOWNED).then_some(usize::from(owner))
            }
        }
    }

    /// A topology from a `CLUSTER SLOTS` reply. Nodes already known (by ID)
    /// keep their clocks.
    ///
    /// # Errors
    /// A reply of an unexpected shape, described.
    pub(super) fn from_cluster_slots(reply: &Value, old: Option<&Self>) -> Result<Self, String> {
        let Value::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS did not answer an array".to_owned());
        };
        let mut owners = vec![UNOWNED; SLOTS].into_boxed_slice();
        let mut nodes: Vec<Node> = Vec::new();
        for range in ranges {
            let Value::Array(items) = range else {
                return Err("a CLUSTER SLOTS range is not an array".to_owned());
            };
            let (Some(start), Some(end), Some(Value::Array(primary))) = (
                items.first().and_then(int),
                items.get(1).and_then(int),
                items.get(2),
            ) else {
                return Err("a CLUSTER SLOTS range lacks its slots or primary".to_owned());
            };
            let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
                return Err("a CLUSTER SLOTS range has a negative slot".to_owned());
            };
            if start > end || end >= SLOTS {
                return Err(format!(
                    "CLUSTER SLOTS range {start}-{end} is out of bounds"
                ));
            }
            let id = match primary.get(2).and_then(text).filter(|id| !id.is_empty()) {
                Some(id) => id,
                None => format!(
                    "{}:{}",
                    primary.first().and_then(text).unwrap_or_default(),
                    primary.get(1).and_then(int).unwrap_or_default()
                ),
            };
            let index = match nodes.iter().position(|node| node.id == id) {
                Some(index) => index,
                None => {
                    let clock = old
                        .and_then(|old| old.nodes.iter().find(|node| node.id == id))
                        .map_or_else(Arc::default, |node| Arc::clone(&node.clock));
                    nodes.push(Node {
                        id,
                        // start < SLOTS = 16,384 fits.
                        slot: u16::try_from(start).unwrap_or(0),
                        clock,
                    });
                    nodes.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| "too many nodes".to_owned())?;
            owners[start..=end].fill(index);
        }
        if nodes.is_empty() {
            return Err(
                "CLUSTER SLOTS lists no node: the cluster has no slots assigned".to_owned(),
            );
        }
        Ok(Self {
            nodes,
            owners: Some(owners),
        })
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The hash slot of a key, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key, or of its hash tag (the text between the first `{` and the next
/// `}`, if not empty), modulo 16,384.
pub(super) fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % 16_384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12_182);
        assert_eq!(key_slot(b"bar"), 5_061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(
            key_slot(b"foo{}{bar}"),
            key_slot(b"bar"),
            "empty tag: whole key"
        );
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b""), 0);
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn range(start: i64, end: i64, port: i64, id: &str) -> Value {
        Value::Array(vec![
            Value::Int(start),
            Value::Int(end),
            Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk(id)]),
        ])
    }

    #[test]
    fn cluster_slots_map_every_slot_to_its_primary() {
        let reply = Value::Array(vec![
            range(0, 5460, 7000, "a"),
            range(5461, 10922, 7001, "b"),
            range(10923, 16383, 7002, "c"),
        ]);
        let topology = Topology::from_cluster_slots(&reply, None).unwrap();
        assert_eq!(topology.nodes.len(), 3);
        assert_eq!(topology.node_of(b"bar"), Some(0)); // slot 5061
        assert_eq!(topology.node_of(b"foo"), Some(2)); // slot 12182
        assert_eq!(topology.nodes[1].slot, 5461);

        // A second range of a known node; a node already known keeps its clock.
        topology.nodes[2].clock.record(42, 0);
        let reply = Value::Array(vec![range(0, 99, 7002, "c"), range(100, 16383, 7000, "a")]);
        let next = Topology::from_cluster_slots(&reply, Some(&topology)).unwrap();
        assert_eq!(next.nodes.len(), 2);
        assert_eq!(next.nodes[0].id, "c");
        assert_eq!(next.nodes[0].clock.server_time(0, 0), Some(42));
        assert_eq!(next.nodes[1].clock.server_time(0, 0), None);
    }

    #[test]
    fn uncovered_slots_have_no_owner() {
        let reply = Value::Array(vec![range(0, 100, 7000, "")]);
        let topology = Topology::from_cluster_slots(&reply, None).unwrap();
        assert_eq!(topology.nodes[0].id, "127.0.0.1:7000");
        assert_eq!(topology.node_of(b"foo"), None);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0)])]),
            Value::Array(vec![range(-1, 5, 7000, "a")]),
            Value::Array(vec![range(5, 4, 7000, "a")]),
            Value::Array(vec![range(0, 16_384, 7000, "a")]),
        ] {
            assert!(
                Topology::from_cluster_slots(&reply, None).is_err(),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn a_single_server_owns_every_key() {
        let topology = Topology::single();
        assert_eq!(topology.node_of(b"anything"), Some(0));
    }
}
