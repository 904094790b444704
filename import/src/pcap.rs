//! Packet captures (pcap and pcapng, plain or in zips) into flows.
//!
//! Bytes per direction come from TCP sequence numbers, not from summing
//! segment sizes: the highest sequence number sent (and the highest one the
//! peer acknowledged) minus the initial one. So retransmissions count once,
//! segments the capture missed still count (the peer's ACK covers them), and
//! a sender-side capture with segmentation offload (one 64 KB "packet", IP
//! length 0) gives the same answer as a wire capture. Packets of every
//! capture are merged in time order into one flow table, so a connection seen
//! by two captures (both ends, or a tap and a host) is counted once; UDP has
//! no sequence numbers, so a datagram seen again in another capture within
//! `duplicate_window_ms` (same flow, length and payload hash) is dropped.
//! Also read: the server name of TLS ClientHellos, and DNS answers (UDP).

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, TcpSlice};
use outflow_core::telemetry::{DnsRecord, Transport};
use outflow_core::Timestamp;
use pcap_parser::data::{get_packetdata, PacketData};
use pcap_parser::pcapng::Block;
use pcap_parser::{create_reader, Linktype, PcapBlockOwned, PcapError};

use crate::config::ImportConfig;
use crate::flow::{canonical_ip, Flow, FlowOrigin, NetworkData};
use crate::report::{ImportReport, SourceKind};
use crate::source::for_each_input;
use crate::tls::{client_hello, Hello, MAX_HELLO};

const SYN: u8 = 1;
const ACK: u8 = 2;
const FIN: u8 = 4;
const RST: u8 = 8;

/// (source, destination) of a packet.
type Direction = ((IpAddr, u16), (IpAddr, u16));

/// What we keep of one packet until all captures are merged.
#[derive(Clone, Debug)]
struct Packet {
    ts_us: i64,
    capture: u32,
    proto: Transport,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    /// Payload length from the IP/transport headers (the wire size).
    len: u32,
    /// The captured payload, kept only where it is needed (the first bytes of
    /// a TCP direction for the ClientHello; DNS).
    payload: Option<Box<[u8]>>,
    /// UDP: hash of the payload, to recognise the same datagram in two captures.
    hash: u64,
    /// Packet number in its capture (a stable sort key).
    number: u64,
}

/// Captures being read; packets are merged and turned into flows by
/// [`CaptureSet::finish`].
#[derive(Default)]
pub struct CaptureSet {
    packets: Vec<Packet>,
    names: Vec<String>,
}

/// Reads every capture in `paths` (zips included) and adds its flows and DNS
/// answers to `net`.
pub fn read_paths(
    paths: &[PathBuf],
    cfg: &ImportConfig,
    net: &mut NetworkData,
    report: &mut ImportReport,
) {
    let mut set = CaptureSet::default();
    for p in paths {
        for_each_input(p, SourceKind::Pcap, report, |name, reader, report| {
            set.add_reader(name, reader, report);
        });
    }
    set.finish(cfg, net, report);
}

/// Per-interface decoding parameters (pcapng).
#[derive(Clone, Copy)]
struct Iface {
    linktype: Linktype,
    /// Timestamp units per second.
    resolution: u64,
    offset_secs: i64,
}

impl CaptureSet {
    /// Decodes one capture stream; `name` locates errors.
    pub fn add_reader(&mut self, name: &str, reader: &mut dyn Read, report: &mut ImportReport) {
        let capture = self.names.len() as u32;
        self.names.push(name.to_string());
        let mut rdr = match create_reader(1 << 20, reader) {
            Ok(r) => r,
            Err(PcapError::Eof) => {
                report.reject(SourceKind::Pcap, name, "not_a_capture", "empty file");
                return;
            }
            Err(e) => {
                report.reject(
                    SourceKind::Pcap,
                    name,
                    "not_a_capture",
                    format!("not a pcap or pcapng capture: {e:?}"),
                );
                return;
            }
        };
        let mut legacy: Option<(Linktype, bool)> = None;
        let mut ifaces: Vec<Iface> = Vec::new();
        let mut number = 0u64;
        let mut last_ts = 0i64;
        let mut kept: HashMap<Direction, usize> = HashMap::new();
        loop {
            match rdr.next() {
                Ok((offset, block)) => {
                    let frame: Option<(i64, Linktype, &[u8], u32)> = match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            legacy = Some((h.network, h.is_nanosecond_precision()));
                            None
                        }
                        PcapBlockOwned::Legacy(b) => {
                            let (lt, nanos) = legacy.unwrap_or((Linktype::ETHERNET, false));
                            let frac = if nanos {
                                i64::from(b.ts_usec) / 1000
                            } else {
                                i64::from(b.ts_usec)
                            };
                            let ts = i64::from(b.ts_sec) * 1_000_000 + frac;
                            Some((ts, lt, b.data, b.origlen))
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            ifaces.clear();
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            ifaces.push(Iface {
                                linktype: idb.linktype,
                                resolution: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                                offset_secs: idb.ts_offset(),
                            });
                            None
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            match ifaces.get(epb.if_id as usize) {
                                Some(i) => {
                                    let raw =
                                        (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                    let us = (u128::from(raw) * 1_000_000
                                        / u128::from(i.resolution))
                                    .min(i64::MAX as u128 / 2)
                                        as i64;
                                    let ts =
                                        us.saturating_add(i.offset_secs.saturating_mul(1_000_000));
                                    Some((ts, i.linktype, epb.data, epb.origlen))
                                }
                                None => {
                                    number += 1;
                                    report.pcap.records += 1;
                                    report.reject(
                                        SourceKind::Pcap,
                                        format!("{name}: packet {number}"),
                                        "corrupt_capture",
                                        format!(
                                            "packet names interface {} that was never described",
                                            epb.if_id
                                        ),
                                    );
                                    None
                                }
                            }
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                            let lt = ifaces
                                .first()
                                .map(|i| i.linktype)
                                .unwrap_or(Linktype::ETHERNET);
                            Some((last_ts, lt, spb.data, spb.origlen))
                        }
                        PcapBlockOwned::NG(_) => None,
                    };
                    if let Some((ts, lt, data, origlen)) = frame {
                        number += 1;
                        last_ts = ts;
                        report.pcap.records += 1;
                        let caplen = data.len().min(origlen as usize);
                        match decode(ts, lt, &data[..caplen], capture, number) {
                            Ok(mut p) => {
                                keep_payload(&mut p, data, lt, &mut kept);
                                report.pcap.used += 1;
                                self.packets.push(p);
                            }
                            Err(Skip::Bad(detail)) => report.reject(
                                SourceKind::Pcap,
                                format!("{name}: packet {number}"),
                                "bad_packet",
                                detail,
                            ),
                            Err(Skip::Other(why)) => report.skip(SourceKind::Pcap, why),
                        }
                    }
                    rdr.consume(offset);
                }
                Err(PcapError::Eof) => break,
                Err(PcapError::Incomplete(_)) => {
                    if let Err(e) = rdr.refill() {
                        report.reject(
                            SourceKind::Pcap,
                            format!("{name}: after packet {number}"),
                            "read_error",
                            format!("read failed (packets before it were imported): {e:?}"),
                        );
                        break;
                    }
                }
                Err(PcapError::UnexpectedEof) => {
                    report.reject(
                        SourceKind::Pcap,
                        format!("{name}: after packet {number}"),
                        "truncated",
                        "capture ends in the middle of a packet (the packets before it were imported)",
                    );
                    break;
                }
                Err(e) => {
                    report.reject(
                        SourceKind::Pcap,
                        format!("{name}: after packet {number}"),
                        "corrupt_capture",
                        format!(
                            "unreadable block, rest of this capture skipped: {}",
                            short_err(&e)
                        ),
                    );
                    break;
                }
            }
        }
    }

    /// Merges all captures in time order and builds the flows.
    pub fn finish(mut self, cfg: &ImportConfig, net: &mut NetworkData, report: &mut ImportReport) {
        self.packets.sort_by_key(|p| (p.ts_us, p.capture, p.number));
        let mut table = FlowTable {
            interval_us: cfg.interval_us(),
            dup_window_us: cfg.duplicate_window_ms as i64 * 1000,
            ..FlowTable::default()
        };
        for p in &self.packets {
            table.packet(p, net, report);
        }
        for f in table.tcp {
            net.flows.push(f.flow);
        }
        for f in table.udp {
            net.flows.push(f.flow);
        }
    }
}

fn short_err<I>(e: &PcapError<I>) -> String {
    match e {
        PcapError::NomError(_, k) => format!("parse error {k:?}"),
        PcapError::OwnedNomError(_, k) => format!("parse error {k:?}"),
        PcapError::BufferTooSmall => "a block larger than 1 MiB".into(),
        PcapError::HeaderNotRecognized => "header not recognised".into(),
        PcapError::ReadError => "read error".into(),
        PcapError::Eof | PcapError::UnexpectedEof => "unexpected end".into(),
        PcapError::Incomplete(n) => format!("incomplete ({n} more bytes needed)"),
    }
}

enum Skip {
    Bad(String),
    Other(&'static str),
}

/// Decodes link, IP and TCP/UDP headers.
fn decode(
    ts_us: i64,
    lt: Linktype,
    data: &[u8],
    capture: u32,
    number: u64,
) -> Result<Packet, Skip> {
    let sliced = match get_packetdata(data, lt, data.len()) {
        Some(PacketData::L2(d)) => LaxSlicedPacket::from_ethernet(d)
            .map_err(|e| Skip::Bad(format!("truncated Ethernet frame: {e}")))?,
        Some(PacketData::L3(et, d)) => LaxSlicedPacket::from_ether_type(EtherType(et), d),
        Some(_) => return Err(Skip::Other("unsupported link type")),
        None => return Err(Skip::Bad(format!("undecodable frame for link type {lt}"))),
    };
    let Some(net) = sliced.net else {
        return Err(Skip::Other("not IP"));
    };
    let (src, dst, pl, declared) = match &net {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            let pl = v4.payload();
            let declared = if !pl.incomplete {
                pl.payload.len()
            } else {
                let total = usize::from(h.total_len());
                let hl = usize::from(h.ihl()) * 4;
                if total > hl {
                    total - hl
                } else {
                    pl.payload.len()
                }
            };
            if h.fragments_offset().value() != 0 {
                return Err(Skip::Other("IP fragment"));
            }
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                pl,
                declared,
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            let pl = v6.payload();
            let declared = if !pl.incomplete {
                pl.payload.len()
            } else {
                usize::from(h.payload_length()).saturating_sub(v6.extensions().slice().len())
            };
            if pl.fragmented {
                return Err(Skip::Other("IP fragment"));
            }
            (
                canonical_ip(IpAddr::V6(h.source_addr())),
                canonical_ip(IpAddr::V6(h.destination_addr())),
                pl,
                declared,
            )
        }
    };
    let body = pl.payload;
    let mut p = Packet {
        ts_us,
        capture,
        proto: Transport::Tcp,
        src: (src, 0),
        dst: (dst, 0),
        flags: 0,
        seq: 0,
        ack: 0,
        len: 0,
        payload: None,
        hash: 0,
        number,
    };
    match pl.ip_number.0 {
        6 => {
            let tcp = TcpSlice::from_slice(body)
                .map_err(|e| Skip::Bad(format!("bad or truncated TCP header: {e}")))?;
            let hl = usize::from(tcp.data_offset()) * 4;
            p.src.1 = tcp.source_port();
            p.dst.1 = tcp.destination_port();
            p.seq = tcp.sequence_number();
            p.ack = tcp.acknowledgment_number();
            p.flags = (u8::from(tcp.syn()) * SYN)
                | (u8::from(tcp.ack()) * ACK)
                | (u8::from(tcp.fin()) * FIN)
                | (u8::from(tcp.rst()) * RST);
            let wire = declared.saturating_sub(hl).max(tcp.payload().len());
            p.len = u32::try_from(wire).unwrap_or(u32::MAX);
        }
        17 => {
            let Some(h) = body.get(..8) else {
                return Err(Skip::Bad("truncated UDP header".into()));
            };
            p.proto = Transport::Udp;
            p.src.1 = u16::from_be_bytes([h[0], h[1]]);
            p.dst.1 = u16::from_be_bytes([h[2], h[3]]);
            let wire = declared.saturating_sub(8);
            p.len = u32::try_from(wire).unwrap_or(u32::MAX);
            p.hash = fnv64(&body[8..]) ^ u64::from(p.len);
        }
        _ => return Err(Skip::Other("not TCP or UDP")),
    }
    Ok(p)
}

/// Keeps the payload bytes the flow pass needs: the first `MAX_HELLO` bytes
/// of each TCP direction (for the ClientHello) and DNS messages.
fn keep_payload(p: &mut Packet, frame: &[u8], lt: Linktype, kept: &mut HashMap<Direction, usize>) {
    if p.len == 0 {
        return;
    }
    let is_dns = p.proto == Transport::Udp && (p.src.1 == 53 || p.dst.1 == 53);
    if p.proto == Transport::Udp && !is_dns {
        return;
    }
    let k = kept.entry((p.src, p.dst)).or_default();
    if p.proto == Transport::Tcp && *k >= MAX_HELLO {
        return;
    }
    // Re-slice to find the payload; cheap compared with keeping every frame.
    let Some(payload) = transport_payload(frame, lt) else {
        return;
    };
    *k += payload.len();
    p.payload = Some(payload.into());
}

fn transport_payload(frame: &[u8], lt: Linktype) -> Option<&[u8]> {
    let sliced = match get_packetdata(frame, lt, frame.len())? {
        PacketData::L2(d) => LaxSlicedPacket::from_ethernet(d).ok()?,
        PacketData::L3(et, d) => LaxSlicedPacket::from_ether_type(EtherType(et), d),
        _ => return None,
    };
    let body = match sliced.net? {
        LaxNetSlice::Ipv4(v4) => v4.payload().payload,
        LaxNetSlice::Ipv6(v6) => v6.payload().payload,
    };
    match sliced.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => Some(t.payload()),
        Some(etherparse::TransportSlice::Udp(u)) => Some(u.payload()),
        _ => match body.first() {
            // A TCP header whose payload etherparse did not slice (truncated).
            Some(_) => TcpSlice::from_slice(body).ok().map(|t| t.payload()),
            None => None,
        },
    }
}

fn fnv64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b.iter().take(256) {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Progress of one TCP direction, in sequence space.
#[derive(Clone, Copy, Debug, Default)]
struct Dir {
    /// Sequence number of the first payload byte (ISN + 1), or the first
    /// sequence number seen when the SYN was missed.
    base: Option<u32>,
    /// Payload bytes counted so far.
    bytes: u64,
    /// `base + bytes`, modulo 2^32.
    high: u32,
    /// Sequence number just after the last payload byte, when FIN was seen.
    fin: Option<u32>,
}

impl Dir {
    fn start(&mut self, first_payload_seq: u32) {
        if self.base.is_none() {
            self.base = Some(first_payload_seq);
            self.high = first_payload_seq;
        }
    }

    /// Moves the high-water mark to `end` if it is ahead; returns the new bytes.
    fn advance(&mut self, end: u32) -> u64 {
        let delta = end.wrapping_sub(self.high) as i32;
        // Ahead by less than 1 GiB: progress. Behind: a retransmission or
        // an old ACK. Further ahead: not plausibly the same stream.
        if delta > 0 && delta < (1 << 30) {
            self.high = end;
            self.bytes += delta as u64;
            delta as u64
        } else {
            0
        }
    }
}

#[derive(Default)]
struct HelloState {
    buf: Vec<u8>,
    next: Option<u32>,
    done: bool,
}

struct TcpFlow {
    flow: Flow,
    /// 0: client → server, 1: server → client.
    dir: [Dir; 2],
    client_isn: Option<u32>,
    closed: bool,
    hello: HelloState,
}

struct UdpFlow {
    flow: Flow,
    recent: VecDeque<(u32, i64, u32, u64)>,
}

type Key = (Transport, (IpAddr, u16), (IpAddr, u16));

fn key(p: &Packet) -> Key {
    if p.src <= p.dst {
        (p.proto, p.src, p.dst)
    } else {
        (p.proto, p.dst, p.src)
    }
}

/// Which end of a conversation first seen mid-stream is the client: the
/// ephemeral or higher port talks to the well-known or lower one.
fn src_is_client(src: u16, dst: u16) -> bool {
    let well_known = |p: u16| p < 1024;
    let ephemeral = |p: u16| p >= 49152;
    if well_known(src) != well_known(dst) {
        return well_known(dst);
    }
    if ephemeral(src) != ephemeral(dst) {
        return ephemeral(src);
    }
    src >= dst
}

#[derive(Default)]
struct FlowTable {
    interval_us: i64,
    dup_window_us: i64,
    tcp: Vec<TcpFlow>,
    udp: Vec<UdpFlow>,
    current: HashMap<Key, usize>,
}

impl FlowTable {
    fn packet(&mut self, p: &Packet, net: &mut NetworkData, report: &mut ImportReport) {
        match p.proto {
            Transport::Tcp => self.tcp_packet(p),
            Transport::Udp => self.udp_packet(p, net, report),
        }
    }

    fn tcp_packet(&mut self, p: &Packet) {
        let k = key(p);
        let pure_syn = p.flags & SYN != 0 && p.flags & ACK == 0;
        let existing = self.current.get(&k).copied();
        let idx = match existing {
            Some(i) => {
                let f = &self.tcp[i];
                let same_syn = f.client_isn == Some(p.seq) && f.flow.client == p.src;
                if pure_syn
                    && !same_syn
                    && (f.closed
                        || f.client_isn.is_some()
                        || f.dir[0].bytes > 0
                        || f.dir[1].bytes > 0)
                {
                    self.new_tcp(p, &k, true)
                } else {
                    i
                }
            }
            None => {
                let client_is_src = if p.flags & SYN != 0 {
                    p.flags & ACK == 0
                } else {
                    src_is_client(p.src.1, p.dst.1)
                };
                self.new_tcp(p, &k, client_is_src)
            }
        };
        let interval = self.interval_us;
        let f = &mut self.tcp[idx];
        let from_client = p.src == f.flow.client;
        let (me, other) = if from_client { (0, 1) } else { (1, 0) };
        if p.flags & SYN != 0 {
            if from_client && f.client_isn.is_none() {
                f.client_isn = Some(p.seq);
            }
            f.dir[me].start(p.seq.wrapping_add(1));
        } else if p.len > 0 || p.flags & FIN != 0 {
            f.dir[me].start(p.seq);
        }
        let mut out_in = [0u64; 2];
        if p.len > 0 {
            let begin = if p.flags & SYN != 0 {
                p.seq.wrapping_add(1)
            } else {
                p.seq
            };
            out_in[me] += f.dir[me].advance(begin.wrapping_add(p.len));
        }
        if p.flags & FIN != 0 {
            let begin = if p.flags & SYN != 0 {
                p.seq.wrapping_add(1)
            } else {
                p.seq
            };
            f.dir[me].fin = Some(begin.wrapping_add(p.len));
        }
        if p.flags & RST != 0 {
            f.closed = true;
        }
        if f.dir[0].fin.is_some() && f.dir[1].fin.is_some() {
            f.closed = true;
        }
        // The peer's ACK proves bytes arrived even if we missed them.
        if p.flags & ACK != 0 && p.flags & RST == 0 && f.dir[other].base.is_some() {
            let mut acked = p.ack;
            if let Some(fin) = f.dir[other].fin {
                if acked == fin.wrapping_add(1) {
                    acked = fin;
                }
            }
            out_in[other] += f.dir[other].advance(acked);
        }
        // ClientHello: the client's first contiguous bytes.
        if from_client && !f.hello.done && p.len > 0 {
            let begin = if p.flags & SYN != 0 {
                p.seq.wrapping_add(1)
            } else {
                p.seq
            };
            let expected = *f.hello.next.get_or_insert(f.dir[0].base.unwrap_or(begin));
            if begin == expected {
                match &p.payload {
                    Some(data) => {
                        f.hello.buf.extend_from_slice(data);
                        f.hello.next = Some(begin.wrapping_add(p.len));
                        let cut_short = data.len() < p.len as usize;
                        match client_hello(&f.hello.buf) {
                            Hello::Sni(s) => {
                                f.flow.sni = Some(s);
                                f.hello.done = true;
                            }
                            Hello::NeedMore if !cut_short && f.hello.buf.len() < MAX_HELLO => {}
                            _ => f.hello.done = true,
                        }
                    }
                    None => f.hello.done = true,
                }
                if f.hello.done {
                    f.hello.buf = Vec::new();
                }
            } else if (begin.wrapping_sub(expected) as i32) > 0 {
                // A gap before the hello completed: give up on it.
                f.hello.done = true;
                f.hello.buf = Vec::new();
            }
        }
        f.flow.add(p.ts_us, out_in[0], out_in[1], interval);
    }

    fn new_tcp(&mut self, p: &Packet, k: &Key, client_is_src: bool) -> usize {
        let (client, server) = if client_is_src {
            (p.src, p.dst)
        } else {
            (p.dst, p.src)
        };
        let flow = Flow::new(Transport::Tcp, client, server, p.ts_us, FlowOrigin::Pcap);
        self.tcp.push(TcpFlow {
            flow,
            dir: [Dir::default(); 2],
            client_isn: None,
            closed: false,
            hello: HelloState::default(),
        });
        let i = self.tcp.len() - 1;
        self.current.insert(*k, i);
        i
    }

    fn udp_packet(&mut self, p: &Packet, net: &mut NetworkData, report: &mut ImportReport) {
        let k = key(p);
        let idx = match self.current.get(&k) {
            Some(&i) => i,
            None => {
                let (client, server) = if src_is_client(p.src.1, p.dst.1) {
                    (p.src, p.dst)
                } else {
                    (p.dst, p.src)
                };
                let flow = Flow::new(Transport::Udp, client, server, p.ts_us, FlowOrigin::Pcap);
                self.udp.push(UdpFlow {
                    flow,
                    recent: VecDeque::new(),
                });
                let i = self.udp.len() - 1;
                self.current.insert(k, i);
                i
            }
        };
        let window = self.dup_window_us;
        let interval = self.interval_us;
        let f = &mut self.udp[idx];
        let dup = f.recent.iter().any(|&(cap, ts, len, hash)| {
            cap != p.capture && (p.ts_us - ts).abs() <= window && len == p.len && hash == p.hash
        });
        if dup {
            report.duplicates += 1;
            return;
        }
        if f.recent.len() >= 64 {
            f.recent.pop_front();
        }
        f.recent.push_back((p.capture, p.ts_us, p.len, p.hash));
        let from_client = p.src == f.flow.client;
        let (o, i) = if from_client {
            (u64::from(p.len), 0)
        } else {
            (0, u64::from(p.len))
        };
        f.flow.add(p.ts_us, o, i, interval);
        if p.src.1 == 53 {
            if let Some(a) = p.payload.as_deref().and_then(crate::dns::parse_response) {
                if !a.answers.is_empty() {
                    net.dns.push(DnsRecord {
                        ts: Timestamp(p.ts_us),
                        host: p.dst.0.to_string(),
                        query: a.query,
                        answers: a.answers,
                        pid: None,
                    });
                }
            }
        }
    }
}

/// Writes a classic pcap (Ethernet, microseconds) from `(ts_us, frame)` pairs.
pub fn write_pcap(frames: &[(i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (ts, f) in frames {
        out.extend_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Builds Ethernet/IPv4/TCP frames (tests and synthetic captures).
pub mod synth {
    use etherparse::PacketBuilder;
    use std::net::Ipv4Addr;

    pub const SYN: u8 = super::SYN;
    pub const ACK: u8 = super::ACK;
    pub const FIN: u8 = super::FIN;

    /// One TCP segment.
    pub fn tcp(
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .tcp(src.1, dst.1, seq, 65535);
        if flags & SYN != 0 {
            b = b.syn();
        }
        if flags & ACK != 0 {
            b = b.ack(ack);
        }
        if flags & FIN != 0 {
            b = b.fin();
        }
        let mut out = Vec::with_capacity(b.size(payload.len()));
        // Writing into a Vec cannot fail.
        let _ = b.write(&mut out, payload);
        out
    }

    /// One UDP datagram.
    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src.0.octets(), dst.0.octets(), 64)
            .udp(src.1, dst.1);
        let mut out = Vec::with_capacity(b.size(payload.len()));
        let _ = b.write(&mut out, payload);
        out
    }
}

#[cfg(test)]
mod tests;
