//! The join: flows (bytes, no process) meet Sysmon EventID 3 (process, no
//! bytes) on the 5-tuple, within the clock-skew tolerance; the output is the
//! contract's events, sorted by `ts`.
//!
//! - A flow is matched to an `Initiated=true` EventID 3 of the same protocol
//!   and 5-tuple logged between `first packet - skew` and `last packet +
//!   skew`; the closest in time wins. If the capture could not tell client
//!   from server (no SYN seen), the mirrored 5-tuple is tried too.
//! - `net` records are per (host, pid, proto, destination) per interval: the
//!   payload bytes that moved in that interval (deltas, section 2), `ts` the
//!   time of the last progress in it. A flow with no payload still gives one
//!   zero-byte record: a connection is evidence too.
//! - Unmatched flows keep `pid` 0 (app `unknown`); their host is the Sysmon
//!   host name of the client address when Sysmon logs showed it, else the
//!   client address itself (network-only mode).
//! - An EventID 3 that matched no flow gives one zero-byte record: the
//!   process connected, bytes unknown.
//! - pids: the record's `ProcessId`, else the pid any other Sysmon record
//!   paired with the same ProcessGuid, else a synthetic stable pid derived
//!   from the GUID (top bit set; see [`crate::sysmon::synthetic_pid`]).
//! - A process that sent traffic but whose EventID 1 is not in the log
//!   (started before it) gets a `process_start` made from what its other
//!   events say (image, user), dated at the start time encoded in its GUID.
//! - A `process_start` is never later than the first event of its GUID
//!   (Sysmon sometimes logs EventID 3 or 22 just before EventID 1).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use outflow_core::telemetry::{
    DnsRecord, Event, HostEvent, NetRecord, ProcessEnd, ProcessStart, Transport,
};
use outflow_core::Timestamp;

use crate::config::ImportConfig;
use crate::flow::{Flow, FlowOrigin, NetworkData};
use crate::report::ImportReport;
use crate::sysmon::{guid_start_time, synthetic_pid, SysmonLog};

/// The basename of a Windows or Unix path.
pub fn basename(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

struct Pids<'a> {
    known: &'a HashMap<String, u32>,
    synthetic: HashSet<String>,
}

impl Pids<'_> {
    fn of(&mut self, guid: &str, explicit: Option<u32>) -> u32 {
        if let Some(p) = explicit.filter(|p| *p != 0) {
            return p;
        }
        if let Some(p) = self.known.get(guid) {
            return *p;
        }
        if !self.synthetic.contains(guid) {
            self.synthetic.insert(guid.to_string());
        }
        synthetic_pid(guid)
    }
}

struct NetAcc {
    out: u64,
    inb: u64,
    last_us: i64,
    sni: Option<String>,
    domain: Option<String>,
}

/// (protocol, one end, the other end).
type FiveTuple = (Transport, (IpAddr, u16), (IpAddr, u16));

/// (host id, pid, protocol, destination address, port, interval index).
impl NetAcc {
    fn empty() -> NetAcc {
        NetAcc {
            out: 0,
            inb: 0,
            last_us: i64::MIN,
            sni: None,
            domain: None,
        }
    }
}

type NetKey = (u32, u32, Transport, IpAddr, u16, i64);

fn kind_rank(e: &Event) -> u8 {
    match e {
        Event::Host(_) => 0,
        Event::ProcessStart(_) => 1,
        Event::Dns(_) => 2,
        Event::Net(_) => 3,
        Event::ProcessEnd(_) => 4,
    }
}

fn swap(f: &mut Flow) {
    std::mem::swap(&mut f.client, &mut f.server);
    for b in f.buckets.values_mut() {
        std::mem::swap(&mut b.out, &mut b.inb);
    }
}

fn canonical(f: &Flow) -> FiveTuple {
    if f.client <= f.server {
        (f.proto, f.client, f.server)
    } else {
        (f.proto, f.server, f.client)
    }
}

fn overlaps(a: &Flow, b: &Flow, skew_us: i64) -> bool {
    a.first_us <= b.last_us + skew_us && b.first_us <= a.last_us + skew_us
}

/// Counts each connection once when several sources saw it:
/// - a Zeek flow that a capture also saw (same 5-tuple either way round,
///   overlapping in time within the skew) is dropped: the capture's byte
///   counts win;
/// - of Zeek flows from *different* `--zeek` sources (two sensors on one
///   path) that overlap the same way, the one with more bytes is kept.
fn dedup_flows(flows: &mut Vec<Flow>, skew_us: i64, report: &mut ImportReport) {
    let mut groups: HashMap<FiveTuple, Vec<usize>> = HashMap::new();
    for (i, f) in flows.iter().enumerate() {
        groups.entry(canonical(f)).or_default().push(i);
    }
    let mut drop = vec![false; flows.len()];
    for idx in groups.values().filter(|v| v.len() > 1) {
        for (n, &i) in idx.iter().enumerate() {
            let a = &flows[i];
            if a.origin != FlowOrigin::Zeek {
                continue;
            }
            for &j in &idx[n + 1..] {
                let b = &flows[j];
                if drop[i] || drop[j] || !overlaps(a, b, skew_us) {
                    continue;
                }
                match b.origin {
                    FlowOrigin::Pcap => drop[i] = true,
                    FlowOrigin::Zeek if b.sensor != a.sensor => {
                        let (ta, tb) = (a.total_out() + a.total_in(), b.total_out() + b.total_in());
                        if ta >= tb {
                            drop[j] = true;
                        } else {
                            drop[i] = true;
                        }
                    }
                    FlowOrigin::Zeek => {}
                }
            }
            // A capture flow listed before this Zeek flow.
            if !drop[i]
                && idx[..n].iter().any(|&j| {
                    flows[j].origin == FlowOrigin::Pcap && overlaps(a, &flows[j], skew_us)
                })
            {
                drop[i] = true;
            }
        }
    }
    let before = flows.len();
    let mut k = 0;
    flows.retain(|_| {
        k += 1;
        !drop[k - 1]
    });
    report.duplicates += (before - flows.len()) as u64;
}

/// Host names interned to small integers (the accumulator's key), with the
/// name of each client address looked up once.
#[derive(Default)]
struct HostTable {
    ids: HashMap<String, u32>,
    names: Vec<String>,
    by_ip: HashMap<IpAddr, u32>,
}

impl HostTable {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        id
    }

    /// The Sysmon host name of `ip` if Sysmon showed it, else the address.
    fn id_of_ip(&mut self, ip: IpAddr, ip_host: &HashMap<IpAddr, String>) -> u32 {
        if let Some(id) = self.by_ip.get(&ip) {
            return *id;
        }
        let id = match ip_host.get(&ip) {
            Some(name) => self.id(name),
            None => self.id(&ip.to_string()),
        };
        self.by_ip.insert(ip, id);
        id
    }
}

/// Joins Sysmon and network data into sorted contract events.
pub fn join(
    log: SysmonLog,
    mut net: NetworkData,
    cfg: &ImportConfig,
    report: &mut ImportReport,
) -> Vec<Event> {
    let skew = cfg.skew_us();
    let interval = cfg.interval_us();
    let mut events: Vec<Event> = Vec::new();
    let mut pids = Pids {
        known: &log.guid_pid,
        synthetic: HashSet::new(),
    };

    // Host name of each local address Sysmon showed (the most frequent one).
    let ip_host: HashMap<IpAddr, String> = log
        .ip_hosts
        .iter()
        .filter_map(|(ip, names)| {
            names
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(h, _)| (*ip, h.clone()))
        })
        .collect();
    let host_of_ip = |ip: &IpAddr| ip_host.get(ip).cloned().unwrap_or_else(|| ip.to_string());

    // Hosts that sent Sysmon logs run Windows.
    for (host, ts) in &log.hosts {
        events.push(Event::Host(HostEvent {
            ts: *ts,
            host: host.clone(),
            os: Some("windows".into()),
            labels: Default::default(),
        }));
        report.hosts += 1;
    }

    // Processes.
    let mut started: HashSet<&str> = HashSet::new();
    for s in &log.starts {
        started.insert(&s.guid);
        let pid = pids.of(&s.guid, s.pid);
        let ppid = match (&s.parent_pid, &s.parent_guid) {
            (Some(p), _) => Some(*p),
            (None, Some(g)) => Some(pids.of(g, None)),
            (None, None) => None,
        };
        // Sysmon can log a process's first connection or query a fraction
        // of a second before its EventID 1: the process existed by then.
        let ts = log
            .procs
            .get(&s.guid)
            .map_or(s.ts, |p| p.first_seen.min(s.ts));
        events.push(Event::ProcessStart(ProcessStart {
            ts,
            host: s.host.clone(),
            pid,
            name: basename(&s.image).to_string(),
            ppid,
            exe: Some(s.image.clone()),
            cmdline: s.cmdline.clone(),
            user: s.user.clone(),
            parent_name: s.parent_image.as_deref().map(|p| basename(p).to_string()),
        }));
        report.process_starts += 1;
    }
    for e in &log.ends {
        events.push(Event::ProcessEnd(ProcessEnd {
            ts: e.ts,
            host: e.host.clone(),
            pid: pids.of(&e.guid, e.pid),
        }));
        report.process_ends += 1;
    }
    let mut need_start: HashSet<String> = HashSet::new();
    for d in &log.dns {
        if d.answers.is_empty() {
            continue;
        }
        let pid = d.guid.as_deref().map(|g| pids.of(g, d.pid)).or(d.pid);
        events.push(Event::Dns(DnsRecord {
            ts: d.ts,
            host: d.host.clone(),
            query: d.query.clone(),
            answers: d.answers.clone(),
            pid,
        }));
        report.dns_records += 1;
    }
    for mut d in std::mem::take(&mut net.dns) {
        if let Ok(ip) = d.host.parse::<IpAddr>() {
            d.host = host_of_ip(&ip);
        }
        events.push(Event::Dns(d));
        report.dns_records += 1;
    }

    // Flows meet connections.
    dedup_flows(&mut net.flows, skew, report);
    let mut index: HashMap<FiveTuple, Vec<usize>> = HashMap::new();
    for (i, c) in log.conns.iter().enumerate() {
        if c.initiated {
            report.sysmon_connections += 1;
            index.entry((c.proto, c.src, c.dst)).or_default().push(i);
        }
    }
    let find = |f: &Flow, client: (IpAddr, u16), server: (IpAddr, u16)| -> Option<usize> {
        index.get(&(f.proto, client, server)).and_then(|cands| {
            cands
                .iter()
                .copied()
                .filter(|&i| {
                    let t = log.conns[i].ts.as_micros();
                    t >= f.first_us - skew && t <= f.last_us + skew
                })
                .min_by_key(|&i| (log.conns[i].ts.as_micros() - f.first_us).abs())
        })
    };
    let mut joined_conns: HashSet<usize> = HashSet::new();
    let mut acc: HashMap<NetKey, NetAcc> = HashMap::new();
    // Host names interned: the accumulator is keyed by a small integer.
    let mut hosts = HostTable::default();
    report.flows = net.flows.len() as u64;
    for mut f in net.flows {
        let mut hit = find(&f, f.client, f.server);
        if hit.is_none() {
            if let Some(i) = find(&f, f.server, f.client) {
                swap(&mut f);
                hit = Some(i);
            }
        }
        let domain = hit.and_then(|i| log.conns[i].dst_hostname.clone());
        let (host, pid) = match hit {
            Some(i) => {
                let c = &log.conns[i];
                joined_conns.insert(i);
                report.flows_joined += 1;
                if !started.contains(c.guid.as_str()) {
                    need_start.insert(c.guid.clone());
                }
                (hosts.id(&c.host), pids.of(&c.guid, c.pid))
            }
            None => {
                report.flows_unmatched += 1;
                if ip_host.contains_key(&f.client.0) {
                    report.flows_unmatched_on_sysmon_hosts += 1;
                }
                (hosts.id_of_ip(f.client.0, &ip_host), 0)
            }
        };
        if f.buckets.is_empty() {
            // No payload: still one zero-byte record, at the last packet.
            let at = f.last_us.div_euclid(interval);
            f.buckets.entry(at).or_default().last_us = f.last_us;
        }
        for (idx, b) in &f.buckets {
            let a = acc
                .entry((host, pid, f.proto, f.server.0, f.server.1, *idx))
                .or_insert_with(NetAcc::empty);
            a.out += b.out;
            a.inb += b.inb;
            a.last_us = a.last_us.max(b.last_us);
            if a.sni.is_none() {
                a.sni = f.sni.clone();
            }
            if a.domain.is_none() {
                a.domain = domain.clone();
            }
        }
    }
    report.sysmon_connections_joined = joined_conns.len() as u64;
    // Connections no flow explained: the process connected, bytes unknown.
    for (i, c) in log.conns.iter().enumerate() {
        if !c.initiated || joined_conns.contains(&i) {
            continue;
        }
        if !started.contains(c.guid.as_str()) {
            need_start.insert(c.guid.clone());
        }
        let pid = pids.of(&c.guid, c.pid);
        let t = c.ts.as_micros();
        let host = hosts.id(&c.host);
        let a = acc
            .entry((host, pid, c.proto, c.dst.0, c.dst.1, t.div_euclid(interval)))
            .or_insert_with(NetAcc::empty);
        a.last_us = a.last_us.max(t);
        if a.domain.is_none() {
            a.domain = c.dst_hostname.clone();
        }
    }
    // A deterministic order (the final sort is stable): by time, then key.
    let mut acc: Vec<(NetKey, NetAcc)> = acc.into_iter().collect();
    acc.sort_unstable_by(|(ka, a), (kb, b)| (a.last_us, ka).cmp(&(b.last_us, kb)));
    events.reserve(acc.len());
    for ((host, pid, proto, dst_ip, dst_port, _), a) in acc {
        events.push(Event::Net(NetRecord {
            ts: Timestamp(a.last_us),
            host: hosts.names[host as usize].clone(),
            pid,
            proto,
            dst_ip,
            dst_port,
            bytes_out: a.out,
            bytes_in: a.inb,
            sni: a.sni,
            domain: a.domain,
        }));
        report.net_records += 1;
    }

    // Processes that talked but started before the log did.
    let mut need: Vec<&String> = need_start.iter().collect();
    need.sort();
    for guid in need {
        let Some(info) = log.procs.get(guid.as_str()) else {
            continue;
        };
        let Some(image) = &info.image else {
            continue;
        };
        let ts = match guid_start_time(guid) {
            Some(t) if t <= info.first_seen => t,
            _ => info.first_seen,
        };
        events.push(Event::ProcessStart(ProcessStart {
            ts,
            host: info.host.clone(),
            pid: pids.of(guid, None),
            name: basename(image).to_string(),
            ppid: None,
            exe: Some(image.clone()),
            cmdline: None,
            user: info.user.clone(),
            parent_name: None,
        }));
        report.process_starts += 1;
        report.synthesized_starts += 1;
    }
    report.synthetic_pids = pids.synthetic.len() as u64;
    events.sort_by_key(|e| (e.ts(), kind_rank(e)));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(origin: FlowOrigin, sensor: u32, first_s: i64, out: u64, reversed: bool) -> Flow {
        let a: (IpAddr, u16) = ("10.0.0.5".parse().unwrap(), 50_000);
        let b: (IpAddr, u16) = ("162.125.1.14".parse().unwrap(), 443);
        let (c, s) = if reversed { (b, a) } else { (a, b) };
        let mut f = Flow::new(Transport::Tcp, c, s, first_s * 1_000_000, origin);
        f.sensor = sensor;
        f.add(first_s * 1_000_000 + 5_000_000, out, 10, 60_000_000);
        f
    }

    #[test]
    fn each_connection_counted_once_across_sources() {
        let mut flows = vec![
            flow(FlowOrigin::Zeek, 0, 100, 900, false),
            flow(FlowOrigin::Zeek, 1, 101, 1000, false), // second sensor, more bytes: kept
            flow(FlowOrigin::Zeek, 0, 5000, 7, false), // same 5-tuple much later: another connection
            flow(FlowOrigin::Zeek, 2, 9000, 5, true),  // seen mirrored by a third sensor
            flow(FlowOrigin::Pcap, 0, 9001, 6, false), // and by a capture: the capture wins
        ];
        let mut report = ImportReport::default();
        dedup_flows(&mut flows, 60_000_000, &mut report);
        let kept: Vec<(FlowOrigin, u32, u64)> = flows
            .iter()
            .map(|f| (f.origin, f.sensor, f.total_out()))
            .collect();
        assert_eq!(
            kept,
            vec![
                (FlowOrigin::Zeek, 1, 1000),
                (FlowOrigin::Zeek, 0, 7),
                (FlowOrigin::Pcap, 0, 6),
            ]
        );
        assert_eq!(report.duplicates, 2);
    }

    #[test]
    fn basenames() {
        assert_eq!(
            basename("C:\\Windows\\System32\\WINWORD.EXE"),
            "WINWORD.EXE"
        );
        assert_eq!(basename("/usr/bin/python3"), "python3");
        assert_eq!(basename("cmd.exe"), "cmd.exe");
    }
}
