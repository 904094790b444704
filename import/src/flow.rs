//! Flows: what captures and Zeek say about connections, before the join.

use std::collections::BTreeMap;
use std::net::IpAddr;

use outflow_core::telemetry::{DnsRecord, Transport};

/// Bytes that moved in one interval of a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Client → server payload bytes.
    pub out: u64,
    /// Server → client payload bytes.
    pub inb: u64,
    /// Event time (µs) of the last progress in this interval.
    pub last_us: i64,
}

/// Where a flow came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowOrigin {
    Pcap,
    Zeek,
}

/// One connection (TCP) or 5-tuple conversation (UDP), seen from the client:
/// `client` initiated it and `server` is the destination of the `net` records.
#[derive(Clone, Debug)]
pub struct Flow {
    pub proto: Transport,
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
    /// First and last packet (µs since the epoch, event time).
    pub first_us: i64,
    pub last_us: i64,
    /// Byte progress per interval index (`ts / interval`).
    pub buckets: BTreeMap<i64, Bucket>,
    /// TLS server name from the ClientHello (pcap) or ssl.log (Zeek).
    pub sni: Option<String>,
    pub origin: FlowOrigin,
    /// Which sensor saw it: the index of the `--zeek` source for Zeek flows
    /// (two sensors can log the same connection); 0 for captures, which are
    /// merged into one flow table anyway.
    pub sensor: u32,
}

impl Flow {
    pub fn new(
        proto: Transport,
        client: (IpAddr, u16),
        server: (IpAddr, u16),
        ts_us: i64,
        origin: FlowOrigin,
    ) -> Flow {
        Flow {
            proto,
            client,
            server,
            first_us: ts_us,
            last_us: ts_us,
            buckets: BTreeMap::new(),
            sni: None,
            origin,
            sensor: 0,
        }
    }

    /// Adds progress at `ts_us` to the interval holding it.
    pub fn add(&mut self, ts_us: i64, out: u64, inb: u64, interval_us: i64) {
        self.first_us = self.first_us.min(ts_us);
        self.last_us = self.last_us.max(ts_us);
        if out == 0 && inb == 0 {
            return;
        }
        let b = self
            .buckets
            .entry(ts_us.div_euclid(interval_us))
            .or_insert(Bucket {
                out: 0,
                inb: 0,
                last_us: ts_us,
            });
        b.out = b.out.saturating_add(out);
        b.inb = b.inb.saturating_add(inb);
        b.last_us = b.last_us.max(ts_us);
    }

    pub fn total_out(&self) -> u64 {
        self.buckets.values().map(|b| b.out).sum()
    }

    pub fn total_in(&self) -> u64 {
        self.buckets.values().map(|b| b.inb).sum()
    }
}

/// Everything the network sources produced.
#[derive(Clone, Debug, Default)]
pub struct NetworkData {
    pub flows: Vec<Flow>,
    /// DNS answers seen on the wire; `host` is the client's address for now
    /// (the join renames it to the Sysmon host name when it knows it).
    pub dns: Vec<DnsRecord>,
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; other addresses unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses an IP address as Sysmon, Zeek and captures write them (IPv4-mapped
/// IPv6 normalised to IPv4, an IPv6 zone suffix dropped).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s.split('%').next().unwrap_or(s);
    let s = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    s.parse::<IpAddr>().ok().map(canonical_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_by_interval() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut f = Flow::new(Transport::Tcp, (ip, 1000), (ip, 443), 0, FlowOrigin::Pcap);
        f.add(1_000_000, 10, 1, 60_000_000);
        f.add(59_000_000, 5, 0, 60_000_000);
        f.add(61_000_000, 7, 3, 60_000_000);
        assert_eq!(f.buckets.len(), 2);
        assert_eq!(f.buckets[&0].out, 15);
        assert_eq!(f.buckets[&0].last_us, 59_000_000);
        assert_eq!((f.total_out(), f.total_in()), (22, 4));
    }

    #[test]
    fn ip_forms() {
        assert_eq!(parse_ip("::ffff:172.18.39.6"), "172.18.39.6".parse().ok());
        assert_eq!(parse_ip("fe80::1%eth0"), "fe80::1".parse().ok());
        assert_eq!(parse_ip("nope"), None);
    }
}
