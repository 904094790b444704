//! Socket counters → per-(pid, destination) deltas. Pure bookkeeping, no I/O:
//! fed with socket records (from dumps and destroy notifications) and the pid
//! each belongs to, it emits `net` events whose bytes add up exactly to what
//! the kernel counted, each byte once.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use outflow_core::telemetry::{Event, NetRecord, Transport};
use outflow_core::Timestamp;

use super::sockdiag::SockRecord;
use crate::config::Cidr;

/// How many dumps a vanished socket is remembered, so that a destroy
/// notification arriving after the dump that missed it yields a delta, not
/// the socket's whole history a second time.
const GRACE_DUMPS: u64 = 8;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    pub pid: u32,
    pub proto: Transport,
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowDelta {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub sni: Option<String>,
}

#[derive(Debug)]
struct Tracked {
    pid: u32,
    local: SocketAddr,
    remote: SocketAddr,
    out: u64,
    inb: u64,
    last_seen: u64,
    sni: Option<String>,
}

#[derive(Default)]
pub struct FlowTracker {
    socks: HashMap<u64, Tracked>,
    generation: u64,
    baseline_done: bool,
    pending: BTreeMap<FlowKey, FlowDelta>,
    exclude: Vec<Cidr>,
    /// Names seen (ClientHello) before their socket was first dumped, with
    /// the generation they were seen at.
    early_names: HashMap<(SocketAddr, SocketAddr), (String, u64)>,
}

impl FlowTracker {
    pub fn new(exclude: Vec<Cidr>) -> FlowTracker {
        FlowTracker {
            exclude,
            ..Default::default()
        }
    }

    fn excluded(&self, ip: &IpAddr) -> bool {
        self.exclude.iter().any(|c| c.contains(ip))
    }

    /// Number of sockets currently tracked.
    pub fn tracked(&self) -> usize {
        self.socks.len()
    }

    /// The pid a socket (by cookie) was attributed to, if tracked.
    pub fn pid_of(&self, cookie: u64) -> Option<u32> {
        self.socks.get(&cookie).map(|t| t.pid)
    }

    pub fn begin_dump(&mut self) {
        self.generation += 1;
    }

    /// Ends a dump: the first dump becomes the baseline (sockets that existed
    /// before the agent started report only what they do from now on);
    /// sockets missing for `GRACE_DUMPS` dumps are forgotten.
    pub fn end_dump(&mut self) {
        self.baseline_done = true;
        let g = self.generation;
        self.socks
            .retain(|_, t| g.saturating_sub(t.last_seen) < GRACE_DUMPS);
        self.early_names
            .retain(|_, (_, seen)| g.saturating_sub(*seen) < GRACE_DUMPS);
    }

    /// Records one socket observation. `pid` 0 = owner unknown. `destroyed`:
    /// the record is a destroy notification with the final counters.
    pub fn observe(&mut self, r: &SockRecord, pid: u32, destroyed: bool) {
        if !r.has_info || self.excluded(&r.remote.ip()) {
            return;
        }
        let out = r.out_bytes();
        let inb = r.in_bytes();
        let (d_out, d_in, key_pid, remote, sni) = match self.socks.get_mut(&r.cookie) {
            Some(t) => {
                let d = (out.saturating_sub(t.out), inb.saturating_sub(t.inb));
                t.out = t.out.max(out);
                t.inb = t.inb.max(inb);
                t.last_seen = self.generation;
                if t.pid == 0 && pid != 0 {
                    t.pid = pid;
                }
                (d.0, d.1, t.pid, t.remote, t.sni.clone())
            }
            None => {
                let baseline = !self.baseline_done && !destroyed;
                let sni = self.early_names.remove(&(r.local, r.remote)).map(|n| n.0);
                self.socks.insert(
                    r.cookie,
                    Tracked {
                        pid,
                        local: r.local,
                        remote: r.remote,
                        out,
                        inb,
                        last_seen: self.generation,
                        sni: sni.clone(),
                    },
                );
                if baseline {
                    (0, 0, pid, r.remote, sni)
                } else {
                    (out, inb, pid, r.remote, sni)
                }
            }
        };
        if destroyed {
            self.socks.remove(&r.cookie);
        }
        self.add(key_pid, Transport::Tcp, remote, d_out, d_in, sni);
    }

    /// Names the TCP flow between `local` and `remote` (from a TLS ClientHello).
    pub fn set_sni(&mut self, local: SocketAddr, remote: SocketAddr, sni: &str) -> bool {
        let mut hit = false;
        for t in self.socks.values_mut() {
            if t.local == local && t.remote == remote {
                t.sni = Some(sni.to_string());
                hit = true;
            }
        }
        if !hit && self.early_names.len() < 65_536 {
            self.early_names
                .insert((local, remote), (sni.to_string(), self.generation));
        }
        hit
    }

    /// Adds bytes counted elsewhere (UDP from the capture).
    pub fn add(
        &mut self,
        pid: u32,
        proto: Transport,
        remote: SocketAddr,
        out: u64,
        inb: u64,
        sni: Option<String>,
    ) {
        if out == 0 && inb == 0 {
            return;
        }
        if self.excluded(&remote.ip()) {
            return;
        }
        let e = self
            .pending
            .entry(FlowKey {
                pid,
                proto,
                ip: remote.ip(),
                port: remote.port(),
            })
            .or_default();
        e.bytes_out += out;
        e.bytes_in += inb;
        if e.sni.is_none() {
            e.sni = sni;
        }
    }

    /// Emits the accumulated deltas as `net` events stamped `now`.
    pub fn flush(&mut self, now: Timestamp, host: &str, out: &mut Vec<Event>) {
        for (k, d) in std::mem::take(&mut self.pending) {
            out.push(Event::Net(NetRecord {
                ts: now,
                host: host.to_string(),
                pid: k.pid,
                proto: k.proto,
                dst_ip: k.ip,
                dst_port: k.port,
                bytes_out: d.bytes_out,
                bytes_in: d.bytes_in,
                sni: d.sni,
                domain: None,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cookie: u64, acked: u64, sent: u64, rcv: u64) -> SockRecord {
        SockRecord {
            protocol: 6,
            state: 1,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "1.2.3.4:443".parse().unwrap(),
            uid: 0,
            inode: 5,
            cookie,
            bytes_acked: acked,
            bytes_received: rcv,
            bytes_sent: Some(sent),
            has_info: true,
        }
    }

    fn nets(f: &mut FlowTracker) -> Vec<(u32, u64, u64)> {
        let mut v = Vec::new();
        f.flush(Timestamp(1), "h", &mut v);
        v.into_iter()
            .filter_map(|e| match e {
                Event::Net(n) => Some((n.pid, n.bytes_out, n.bytes_in)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn baseline_then_deltas_then_final_destroy_each_byte_once() {
        let mut f = FlowTracker::new(vec![]);
        f.begin_dump();
        f.observe(&rec(1, 1001, 1000, 50), 7, false); // pre-existing: baseline
        f.end_dump();
        assert!(nets(&mut f).is_empty());
        f.begin_dump();
        f.observe(&rec(1, 3001, 3000, 60), 7, false);
        f.observe(&rec(2, 101, 100, 0), 8, false); // new since last dump: all of it
        f.end_dump();
        assert_eq!(nets(&mut f), vec![(7, 2000, 10), (8, 100, 0)]);
        // Socket 1 vanishes from the next dump (destroyed in between), then its
        // destroy notification arrives: only the remainder is reported.
        f.begin_dump();
        f.end_dump();
        f.observe(&rec(1, 3502, 3500, 60), 0, true);
        assert_eq!(nets(&mut f), vec![(7, 500, 0)]);
        assert_eq!(f.pid_of(1), None);
        // A socket never dumped (opened and closed between polls).
        f.observe(&rec(3, 1_048_577, 1_048_576, 0), 0, true);
        assert_eq!(nets(&mut f), vec![(0, 1_048_576, 0)]);
    }

    #[test]
    fn same_destination_sums_and_exclusions_apply() {
        let mut f = FlowTracker::new(vec![Cidr::parse("1.2.3.0/24").unwrap()]);
        f.begin_dump();
        f.end_dump();
        f.begin_dump();
        f.observe(&rec(1, 11, 10, 0), 7, false);
        f.end_dump();
        assert!(nets(&mut f).is_empty(), "excluded destination");
        let mut f = FlowTracker::new(vec![]);
        f.begin_dump();
        f.end_dump();
        f.begin_dump();
        f.observe(&rec(1, 11, 10, 1), 7, false);
        f.observe(&rec(2, 21, 20, 2), 7, false);
        f.end_dump();
        assert_eq!(nets(&mut f), vec![(7, 30, 3)]);
    }

    #[test]
    fn counters_never_go_backwards() {
        let mut f = FlowTracker::new(vec![]);
        f.begin_dump();
        f.end_dump();
        f.begin_dump();
        f.observe(&rec(1, 101, 100, 0), 7, false);
        f.observe(&rec(1, 51, 50, 0), 7, false);
        f.observe(&rec(1, 151, 150, 0), 7, false);
        f.end_dump();
        assert_eq!(nets(&mut f), vec![(7, 150, 0)]);
    }
}
