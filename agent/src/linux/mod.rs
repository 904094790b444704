//! The Linux source: proc connector + `/proc` for processes, sock_diag dumps
//! and destroy notifications for TCP byte counters, AF_PACKET for names and
//! UDP/443. Each probe is optional: what is missing is logged once and the
//! rest keeps working.

pub mod capture;
pub mod closers;
pub mod connector;
pub mod flows;
pub mod inodes;
pub mod netlink;
pub mod procfs;
pub mod sockdiag;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use outflow_core::telemetry::{DnsRecord, Event, HostEvent, ProcessEnd, ProcessStart, Transport};
use outflow_core::Timestamp;

use crate::config::AgentConfig;
use crate::source::{ShedLevel, Source, SourceError, SourceStats};
use capture::{Capture, CaptureOutput};
use closers::{CloseTrace, Closers};
use connector::{ProcConnector, ProcEvent};
use flows::FlowTracker;
use inodes::InodeMap;
use procfs::{ProcFs, ProcInfo};
use sockdiag::{DestroyListener, SockDiag, SockRecord};

/// A process as the agent knows it.
struct Proc {
    info: ProcInfo,
    start: Timestamp,
    /// A `process_start` has been emitted for it.
    announced: bool,
}

pub struct LinuxSource {
    host: String,
    labels: std::collections::BTreeMap<String, String>,
    procfs: ProcFs,
    connector: Option<ProcConnector>,
    diag: Option<SockDiag>,
    destroy: Option<DestroyListener>,
    /// Who closed each TCP connection (attributes sockets never dumped).
    close_trace: Option<CloseTrace>,
    closers: Closers,
    capture: Option<Capture>,
    capture_wanted: bool,
    count_udp: bool,
    procs: HashMap<u32, Proc>,
    inodes: InodeMap,
    flows: FlowTracker,
    rescan_every: Duration,
    last_rescan: Option<Instant>,
    force_rescan: bool,
    host_announced: bool,
    first_poll: bool,
    shed: ShedLevel,
    polls: u64,
    stats: SourceStats,
    /// Recent DNS answers, to report each once (loopback shows packets twice).
    dns_seen: HashMap<(String, Vec<std::net::IpAddr>), Instant>,
}

/// Which probes work here (for `outflow-agent check` and start-up logs).
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to grant when it does not work.
    pub needs: &'static str,
}

pub fn check_probes() -> Vec<ProbeReport> {
    let mut v = Vec::new();
    let r = ProcConnector::start();
    v.push(ProbeReport {
        name: "proc connector (exec/exit events)",
        ok: r.is_ok(),
        detail: r
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "subscribed".into()),
        needs: "CAP_NET_ADMIN (else /proc is rescanned, short-lived processes can be missed)",
    });
    let d = SockDiag::open().and_then(|mut d| {
        let mut n = 0usize;
        let mut info = 0usize;
        d.dump_tcp(&mut |r| {
            n += 1;
            if r.has_info {
                info += 1;
            }
        })?;
        Ok((n, info))
    });
    v.push(ProbeReport {
        name: "sock_diag TCP counters (INET_DIAG_INFO)",
        ok: d.is_ok(),
        detail: match &d {
            Ok((n, i)) => format!("{n} sockets, {i} with tcp_info byte counters"),
            Err(e) => e.to_string(),
        },
        needs: "NETLINK_SOCK_DIAG (kernel with inet_diag/tcp_diag modules)",
    });
    let de = DestroyListener::open();
    v.push(ProbeReport {
        name: "socket destroy notifications",
        ok: de.is_ok(),
        detail: de
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "subscribed".into()),
        needs: "CAP_NET_ADMIN (else bytes of sockets closed between two samples are lost)",
    });
    let ct = CloseTrace::open();
    v.push(ProbeReport {
        name: "close tracepoint (owner of short-lived sockets)",
        ok: ct.is_ok(),
        detail: ct
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "sock:inet_sock_set_state on every CPU".into()),
        needs: "CAP_PERFMON and tracefs (else sockets closed between two samples are pid 0 / app unknown)",
    });
    let pf = ProcFs::default();
    let mut ino = Vec::new();
    pf.socket_inodes(1, &mut ino);
    let fd_ok = std::fs::read_dir("/proc/1/fd").is_ok();
    v.push(ProbeReport {
        name: "/proc/PID/fd of other users (socket owner)",
        ok: fd_ok,
        detail: if fd_ok {
            "readable".into()
        } else {
            "permission denied for pid 1".into()
        },
        needs: "CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (else other users' traffic is pid 0 / app unknown)",
    });
    let c = Capture::open();
    v.push(ProbeReport {
        name: "raw capture (DNS answers, TLS SNI, UDP/443 bytes)",
        ok: c.is_ok(),
        detail: c
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "AF_PACKET open, filter attached".into()),
        needs: "CAP_NET_RAW (else no destination names and no QUIC bytes)",
    });
    v
}

impl LinuxSource {
    pub fn new(host: &str, cfg: &AgentConfig) -> Result<LinuxSource, SourceError> {
        let exclude = cfg.exclude_cidrs().map_err(SourceError::Other)?;
        let connector = match ProcConnector::start() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(
                    "proc connector unavailable ({e}): grant CAP_NET_ADMIN; falling back to /proc rescans every sample"
                );
                None
            }
        };
        let diag = match SockDiag::open() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!("sock_diag unavailable ({e}): no TCP byte counters");
                None
            }
        };
        let destroy = match DestroyListener::open() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(
                    "socket destroy notifications unavailable ({e}): grant CAP_NET_ADMIN; bytes of sockets that close between two samples will be missed"
                );
                None
            }
        };
        let close_trace = match CloseTrace::open() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(
                    "close tracepoint unavailable ({e}): grant CAP_PERFMON and mount tracefs; connections that open and close between two samples will be reported with pid 0"
                );
                None
            }
        };
        let mut s = LinuxSource {
            host: host.to_string(),
            labels: cfg.labels.clone(),
            procfs: ProcFs::default(),
            connector,
            diag,
            destroy,
            close_trace,
            closers: Closers::default(),
            capture: None,
            capture_wanted: cfg.capture,
            count_udp: cfg.count_udp,
            procs: HashMap::new(),
            inodes: InodeMap::default(),
            flows: FlowTracker::new(exclude),
            rescan_every: Duration::from_secs(cfg.proc_rescan_secs),
            last_rescan: None,
            force_rescan: true,
            host_announced: false,
            first_poll: true,
            shed: ShedLevel::Normal,
            polls: 0,
            stats: SourceStats::default(),
            dns_seen: HashMap::new(),
        };
        s.open_capture();
        Ok(s)
    }

    fn open_capture(&mut self) {
        if !self.capture_wanted || self.capture.is_some() {
            return;
        }
        match Capture::open() {
            Ok(c) => self.capture = Some(c),
            Err(e) => {
                tracing::warn!(
                    "packet capture unavailable ({e}): running without destination names (DNS/SNI) and UDP/443 bytes; grant CAP_NET_RAW"
                );
                self.capture_wanted = false;
            }
        }
    }

    fn announce(&mut self, pid: u32, out: &mut Vec<Event>) {
        let host = self.host.clone();
        let Some(p) = self.procs.get(&pid) else {
            return;
        };
        if p.announced {
            return;
        }
        let parent_name = self.procs.get(&p.info.ppid).map(|pp| pp.info.name());
        let user = p.info.uid.and_then(|u| self.procfs.user_name(u));
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.announced = true;
        out.push(Event::ProcessStart(ProcessStart {
            ts: p.start,
            host,
            pid,
            name: p.info.name(),
            ppid: Some(p.info.ppid).filter(|pp| *pp != 0),
            exe: p.info.exe.clone(),
            cmdline: p.info.cmdline.clone(),
            user,
            parent_name,
        }));
    }

    fn end(&mut self, pid: u32, ts: Timestamp, out: &mut Vec<Event>) {
        if let Some(p) = self.procs.remove(&pid) {
            if p.announced {
                out.push(Event::ProcessEnd(ProcessEnd {
                    ts,
                    host: self.host.clone(),
                    pid,
                }));
            }
        }
        self.inodes.forget_pid(pid);
    }

    /// Full `/proc` walk: new processes, vanished ones, pid reuse.
    fn rescan(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        let pids = self.procfs.pids();
        let live: HashSet<u32> = pids.iter().copied().collect();
        let gone: Vec<u32> = self
            .procs
            .keys()
            .copied()
            .filter(|p| !live.contains(p))
            .collect();
        for pid in gone {
            self.end(pid, now, out);
        }
        for pid in pids {
            let known = self.procs.get(&pid).map(|p| p.info.start_ticks);
            let Some((_, _, ticks)) = self.procfs.stat(pid) else {
                continue; // vanished while we looked
            };
            if known == Some(ticks) {
                continue;
            }
            if known.is_some() {
                tracing::debug!(pid, "pid reused: ending the old process");
                self.end(pid, now, out);
            }
            let Some(info) = self.procfs.info(pid) else {
                continue;
            };
            let start = self.procfs.ticks_to_wall(info.start_ticks);
            self.procs.insert(
                pid,
                Proc {
                    info,
                    start,
                    announced: false,
                },
            );
            self.inodes.note_new_pid(pid);
            self.announce(pid, out);
        }
    }

    fn handle_proc_events(
        &mut self,
        evs: Vec<ProcEvent>,
        ends: &mut Vec<(u32, Timestamp)>,
        out: &mut Vec<Event>,
    ) {
        for ev in evs {
            match ev {
                ProcEvent::Exec { pid, ts, info } => match info {
                    Some(info) => {
                        if self
                            .procs
                            .get(&pid)
                            .is_some_and(|p| p.info.start_ticks != info.start_ticks)
                        {
                            // Missed exit: pid reused.
                            self.end(pid, ts, out);
                        }
                        self.procs.insert(
                            pid,
                            Proc {
                                info: *info,
                                start: ts,
                                announced: false,
                            },
                        );
                        self.inodes.note_new_pid(pid);
                        self.announce(pid, out);
                    }
                    None => {
                        self.stats.enrich_failed += 1;
                        tracing::debug!(pid, "process exited before it could be enriched");
                    }
                },
                ProcEvent::Fork { pid, ppid, ts } => {
                    // Runs its parent's image until it execs: announced only
                    // if it uses the network before that.
                    let info = match self.procs.get(&ppid) {
                        Some(parent) => {
                            let mut i = parent.info.clone();
                            i.pid = pid;
                            i.ppid = ppid;
                            // Start ticks are only needed for reuse checks.
                            i.start_ticks = self.procfs.stat(pid).map(|s| s.2).unwrap_or(0);
                            Some(i)
                        }
                        None => self.procfs.info(pid),
                    };
                    if let Some(info) = info {
                        self.procs.insert(
                            pid,
                            Proc {
                                info,
                                start: ts,
                                announced: false,
                            },
                        );
                        self.inodes.note_new_pid(pid);
                    }
                }
                ProcEvent::Exit { pid, ts } => ends.push((pid, ts)),
                ProcEvent::Overrun => {
                    self.stats.overruns += 1;
                    self.force_rescan = true;
                }
            }
        }
    }

    fn sample_sockets(&mut self, out: &mut Vec<Event>) {
        let Some(diag) = self.diag.as_mut() else {
            return;
        };
        let mut destroyed: Vec<SockRecord> = Vec::new();
        // Closes first: each precedes its socket's destroy notification.
        if let Some(t) = self.close_trace.as_mut() {
            let closers = &mut self.closers;
            let lost = t.lost;
            t.drain(&mut |c| closers.note(c));
            if t.lost > lost {
                self.stats.overruns += t.lost - lost;
                tracing::warn!(
                    lost = t.lost - lost,
                    "close tracepoint ring overran: some short-lived sockets may be reported with pid 0"
                );
            }
        }
        // First poll: dump before draining destroys (pre-existing sockets
        // become the baseline; see FlowTracker).
        if !self.first_poll {
            if let Some(d) = self.destroy.as_mut() {
                match d.drain(&mut |r| destroyed.push(r)) {
                    Ok(0) => {}
                    Ok(n) => {
                        self.stats.overruns += n;
                        tracing::warn!(lost = n, "socket destroy notifications overran: final bytes of some short-lived sockets lost");
                    }
                    Err(e) => tracing::warn!("reading destroy notifications: {e}"),
                }
            }
        }
        let mut records: Vec<SockRecord> = Vec::with_capacity(self.flows.tracked() + 16);
        if let Err(e) = diag.dump_tcp(&mut |r| records.push(r)) {
            tracing::warn!("sock_diag dump failed: {e}");
            return;
        }
        let wanted: Vec<u32> = records
            .iter()
            .chain(destroyed.iter())
            .filter(|r| r.inode != 0 && self.flows.pid_of(r.cookie).is_none_or(|p| p == 0))
            .map(|r| r.inode)
            .collect();
        if !wanted.is_empty() {
            let procfs = &self.procfs;
            self.inodes.resolve(&wanted, procfs, &mut || procfs.pids());
        }
        let alive: HashSet<u32> = records
            .iter()
            .map(|r| r.inode)
            .filter(|i| *i != 0)
            .collect();
        self.inodes.retain_alive(&alive);
        // Destroys first: they may complete sockets of the previous dump.
        for r in &destroyed {
            let pid = self.pid_for(r);
            self.flows.observe(r, pid, true);
        }
        self.flows.begin_dump();
        for r in &records {
            let pid = self.pid_for(r);
            self.flows.observe(r, pid, false);
        }
        self.flows.end_dump();
        // A destroy notification may be read a few polls after the close.
        self.closers.end_poll(16);
        if self.first_poll {
            if let Some(d) = self.destroy.as_mut() {
                // Everything destroyed so far belonged to the pre-start state.
                let _ = d.drain(&mut |_| {});
            }
        }
        let _ = out;
    }

    fn pid_for(&mut self, r: &SockRecord) -> u32 {
        let pid = self
            .flows
            .pid_of(r.cookie)
            .filter(|p| *p != 0)
            .or_else(|| self.inodes.get(r.inode))
            .unwrap_or(0);
        if pid != 0 {
            return pid;
        }
        // Never seen with an owner (closed before any dump, or its process
        // gone before the inode was resolved): whoever closed it.
        if let Some(p) = self.closers.pid(r.local, r.remote) {
            self.stats.attributed_by_close += 1;
            return p;
        }
        if r.inode != 0 {
            self.stats.unattributed_sockets += 1;
        }
        0
    }

    fn sample_capture(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        let Some(cap) = self.capture.as_mut() else {
            return;
        };
        let mut co = CaptureOutput::default();
        if let Err(e) = cap.drain(&mut co, 100_000) {
            tracing::warn!("packet capture read failed: {e}; capture disabled");
            self.capture = None;
            return;
        }
        for (local, remote, name) in co.sni {
            self.flows.set_sni(local, remote, &name);
        }
        let cutoff = Instant::now() - Duration::from_secs(30);
        self.dns_seen.retain(|_, t| *t > cutoff);
        for (query, answers) in co.dns {
            let key = (query.clone(), answers.clone());
            if self.dns_seen.insert(key, Instant::now()).is_some() {
                continue; // the same answer seen on two interfaces / copies
            }
            out.push(Event::Dns(DnsRecord {
                ts: now,
                host: self.host.clone(),
                query,
                answers,
                pid: None,
            }));
        }
        if self.count_udp && !co.udp.is_empty() {
            self.attribute_udp(co.udp);
        }
    }

    /// UDP/443 byte counts keyed by addresses → owning pid via a UDP dump.
    fn attribute_udp(&mut self, udp: HashMap<(SocketAddr, SocketAddr), (u64, u64)>) {
        let mut by_local: HashMap<u16, Vec<SockRecord>> = HashMap::new();
        if let Some(diag) = self.diag.as_mut() {
            let _ = diag.dump_udp(&mut |r| by_local.entry(r.local.port()).or_default().push(r));
        }
        let wanted: Vec<u32> = by_local.values().flatten().map(|r| r.inode).collect();
        let procfs = &self.procfs;
        self.inodes.resolve(&wanted, procfs, &mut || procfs.pids());
        for ((local, remote), (o, i)) in udp {
            let pid = by_local
                .get(&local.port())
                .and_then(|v| {
                    v.iter()
                        .find(|r| {
                            (r.local.ip() == local.ip() || r.local.ip().is_unspecified())
                                && (r.remote.port() == 0 || r.remote == remote)
                        })
                        .map(|r| r.inode)
                })
                .and_then(|ino| self.inodes.get(ino))
                .unwrap_or(0);
            self.flows.add(pid, Transport::Udp, remote, o, i, None);
        }
    }

    /// Announces processes that own traffic but were never announced
    /// (forked children that did not exec).
    fn announce_owners(&mut self, events: &mut Vec<Event>) {
        let pids: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                Event::Net(n) if n.pid != 0 => Some(n.pid),
                _ => None,
            })
            .filter(|p| self.procs.get(p).is_some_and(|pr| !pr.announced))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut starts = Vec::new();
        for pid in pids {
            self.announce(pid, &mut starts);
        }
        if !starts.is_empty() {
            starts.append(events);
            *events = starts;
        }
    }
}

impl Source for LinuxSource {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn poll(&mut self, now: Timestamp, out: &mut Vec<Event>) -> Result<(), SourceError> {
        self.polls += 1;
        let start_len = out.len();
        if !self.host_announced {
            self.host_announced = true;
            out.push(Event::Host(HostEvent {
                ts: now,
                host: self.host.clone(),
                os: Some(os_description()),
                labels: self.labels.clone(),
            }));
        }
        if self.connector.as_ref().is_some_and(|c| !c.alive()) {
            self.connector = None;
            self.force_rescan = true;
        }
        let mut ends = Vec::new();
        if let Some(c) = &self.connector {
            let mut evs = Vec::new();
            c.drain(&mut evs);
            self.handle_proc_events(evs, &mut ends, out);
        }
        let due = self.last_rescan.is_none_or(|t| {
            let every = if self.connector.is_some() {
                self.rescan_every
            } else {
                Duration::ZERO
            };
            t.elapsed() >= every
        });
        if self.force_rescan || due {
            self.force_rescan = false;
            self.last_rescan = Some(Instant::now());
            self.rescan(now, out);
        }
        // Capture first: a ClientHello seen now names a socket dumped next.
        self.sample_capture(now, out);
        let minimal = self.shed >= ShedLevel::Minimal;
        if !minimal || self.polls.is_multiple_of(4) || self.first_poll {
            self.sample_sockets(out);
        }
        let mut nets = Vec::new();
        self.flows.flush(now, &self.host, &mut nets);
        self.announce_owners(&mut nets);
        out.append(&mut nets);
        for (pid, ts) in ends {
            self.end(pid, ts, out);
        }
        self.first_poll = false;
        self.stats.events += (out.len() - start_len) as u64;
        Ok(())
    }

    fn stats(&self) -> SourceStats {
        self.stats.clone()
    }

    fn set_shed_level(&mut self, level: ShedLevel) {
        if level == self.shed {
            return;
        }
        self.shed = level;
        if level >= ShedLevel::NoCapture {
            if self.capture.take().is_some() {
                tracing::warn!("watchdog: packet capture disabled to stay within budget");
            }
        } else if self.capture_wanted {
            self.open_capture();
        }
    }
}

fn os_description() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match pretty {
        Some(p) => format!("linux {kernel} ({p})"),
        None => format!("linux {kernel}"),
    }
}

/// The kernel's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
