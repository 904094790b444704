//! The shard map: which collector owns which host. Consistent hashing with
//! virtual nodes, so a collector joining or leaving moves only its share of
//! hosts. Pure and deterministic: every collector and aggregator replica
//! computes the same owner.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    pub collector_id: String,
    /// Where agents reach this collector (`https://host:port`).
    pub endpoint: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub version: u64,
    /// Sorted by collector id.
    pub members: Vec<Member>,
    pub vnodes_per_member: u32,
    #[serde(skip)]
    ring: Vec<(u64, usize)>,
}

pub const DEFAULT_VNODES: u32 = 128;

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

impl Default for ShardMap {
    fn default() -> Self {
        ShardMap::new(0, Vec::new(), DEFAULT_VNODES)
    }
}

impl ShardMap {
    pub fn new(version: u64, mut members: Vec<Member>, vnodes_per_member: u32) -> Self {
        members.sort();
        members.dedup_by(|a, b| a.collector_id == b.collector_id);
        let mut ring = Vec::with_capacity(members.len() * vnodes_per_member as usize);
        for (i, m) in members.iter().enumerate() {
            for v in 0..vnodes_per_member {
                ring.push((hash64(&[m.collector_id.as_bytes(), &v.to_le_bytes()]), i));
            }
        }
        ring.sort_unstable();
        ShardMap {
            version,
            members,
            vnodes_per_member,
            ring,
        }
    }

    /// Rebuilds the ring after deserialisation.
    pub fn rebuilt(self) -> Self {
        ShardMap::new(self.version, self.members, self.vnodes_per_member)
    }

    /// The collector that owns `host`, if any collector exists.
    pub fn owner(&self, host: &str) -> Option<&Member> {
        if self.ring.is_empty() {
            return None;
        }
        let h = hash64(&[host.as_bytes()]);
        let i = self.ring.partition_point(|(p, _)| *p < h);
        let (_, m) = self.ring[if i == self.ring.len() { 0 } else { i }];
        self.members.get(m)
    }

    pub fn member(&self, collector_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.collector_id == collector_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                collector_id: format!("c{i}"),
                endpoint: format!("https://127.0.0.1:{}", 7200 + i),
            })
            .collect()
    }

    #[test]
    fn balanced_and_order_independent() {
        let a = ShardMap::new(1, members(4), DEFAULT_VNODES);
        let mut rev = members(4);
        rev.reverse();
        let b = ShardMap::new(1, rev, DEFAULT_VNODES);
        let mut counts = [0usize; 4];
        for h in 0..4000 {
            let host = format!("ws-{h:04}");
            let o = a.owner(&host).unwrap();
            assert_eq!(o, b.owner(&host).unwrap());
            counts[o.collector_id[1..].parse::<usize>().unwrap()] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "{counts:?}");
        }
        assert!(ShardMap::default().owner("x").is_none());
    }

    #[test]
    fn losing_a_member_moves_only_its_hosts() {
        let before = ShardMap::new(1, members(3), DEFAULT_VNODES);
        let after = ShardMap::new(2, members(2), DEFAULT_VNODES);
        for h in 0..2000 {
            let host = format!("h{h}");
            let o1 = before.owner(&host).unwrap();
            let o2 = after.owner(&host).unwrap();
            if o1.collector_id != "c2" {
                assert_eq!(o1, o2, "{host} moved without cause");
            }
        }
        let json = serde_json::to_string(&before).unwrap();
        let back: ShardMap = serde_json::from_str::<ShardMap>(&json).unwrap().rebuilt();
        assert_eq!(back.owner("h1"), before.owner("h1"));
    }
}
