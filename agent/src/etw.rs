//! ETW payload decoding and aggregation for the Windows source, kept free of
//! Windows APIs so it is unit-tested on every platform (the live session is
//! in `windows/`).
//!
//! Providers: Microsoft-Windows-Kernel-Process (event 1 ProcessStart,
//! 2 ProcessStop) and Microsoft-Windows-Kernel-Network (TCP send/receive
//! IPv4 10/11, IPv6 26/27; UDP 42/43, 58/59). Network bytes are attributed
//! to the `PID` field of the **payload**: the header's process id is the
//! context the kernel happened to run in (often 4 = System, or 0).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use outflow_core::telemetry::{Event, NetRecord, ProcessEnd, ProcessStart, Transport};
use outflow_core::Timestamp;

pub const KERNEL_PROCESS: u128 = 0x22fb2cd6_0e7b_422b_a0c7_2fad1fd0e716;
pub const KERNEL_NETWORK: u128 = 0x7dd42a49_5329_4832_8dfd_43d979153a88;
/// Kernel-Process keyword WINEVENT_KEYWORD_PROCESS.
pub const KW_PROCESS: u64 = 0x10;
/// Kernel-Network keywords IPv4 | IPv6.
pub const KW_NET: u64 = 0x10 | 0x20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtwEvent {
    ProcStart {
        pid: u32,
        ppid: u32,
        image: String,
        ts: Timestamp,
    },
    ProcStop {
        pid: u32,
        ts: Timestamp,
    },
    Net {
        pid: u32,
        proto: Transport,
        remote: SocketAddr,
        out: u64,
        inb: u64,
    },
}

/// FILETIME (100 ns since 1601) → Unix microseconds.
pub fn filetime_to_ts(ft: i64) -> Timestamp {
    Timestamp((ft - 116_444_736_000_000_000) / 10)
}

fn u16le(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?))
}
fn u32le(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
}

/// A NUL-terminated UTF-16LE string at `o`.
fn utf16z(d: &[u8], o: usize) -> Option<String> {
    let mut units = Vec::new();
    let mut i = o;
    loop {
        let u = u16le(d, i)?;
        if u == 0 {
            break;
        }
        units.push(u);
        i += 2;
    }
    Some(String::from_utf16_lossy(&units))
}

/// Decodes one event's user data. `ts` is the event header's time.
pub fn decode(provider: u128, id: u16, version: u8, ts: Timestamp, d: &[u8]) -> Option<EtwEvent> {
    match provider {
        KERNEL_PROCESS => match id {
            // ProcessID u32, CreateTime FILETIME, ParentProcessID u32,
            // SessionID u32, [Flags u32 from version 1], ImageName wstring
            1 => {
                let pid = u32le(d, 0)?;
                let ppid = u32le(d, 12)?;
                let name_at = if version >= 1 { 24 } else { 20 };
                Some(EtwEvent::ProcStart {
                    pid,
                    ppid,
                    image: utf16z(d, name_at)?,
                    ts,
                })
            }
            2 => Some(EtwEvent::ProcStop {
                pid: u32le(d, 0)?,
                ts,
            }),
            _ => None,
        },
        KERNEL_NETWORK => {
            // PID u32, size u32, daddr, saddr, dport u16 (network order), sport
            let (v6, send, proto) = match id {
                10 => (false, true, Transport::Tcp),
                11 => (false, false, Transport::Tcp),
                26 => (true, true, Transport::Tcp),
                27 => (true, false, Transport::Tcp),
                42 => (false, true, Transport::Udp),
                43 => (false, false, Transport::Udp),
                58 => (true, true, Transport::Udp),
                59 => (true, false, Transport::Udp),
                _ => return None,
            };
            let pid = u32le(d, 0)?;
            let size = u64::from(u32le(d, 4)?);
            let (ip, port_at) = if v6 {
                let a: [u8; 16] = d.get(8..24)?.try_into().ok()?;
                (IpAddr::V6(Ipv6Addr::from(a)), 40)
            } else {
                let a: [u8; 4] = d.get(8..12)?.try_into().ok()?;
                (IpAddr::V4(Ipv4Addr::from(a)), 16)
            };
            let port = u16::from_be_bytes(d.get(port_at..port_at + 2)?.try_into().ok()?);
            Some(EtwEvent::Net {
                pid,
                proto,
                remote: SocketAddr::new(ip, port),
                out: if send { size } else { 0 },
                inb: if send { 0 } else { size },
            })
        }
        _ => None,
    }
}

/// Turns decoded ETW events into contract events: process starts/ends as
/// they come, network bytes summed per (pid, destination) until `drain`.
#[derive(Default)]
pub struct EtwAggregator {
    host: String,
    images: HashMap<u32, String>,
    events: Vec<Event>,
    flows: BTreeMap<(u32, Transport, SocketAddr), (u64, u64)>,
    pub decoded: u64,
}

/// `C:\Windows\System32\WINWORD.EXE` or `\Device\HarddiskVolume3\...` → basename.
pub fn image_name(image: &str) -> String {
    image
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(image)
        .to_string()
}

impl EtwAggregator {
    pub fn new(host: &str) -> EtwAggregator {
        EtwAggregator {
            host: host.to_string(),
            ..Default::default()
        }
    }

    /// A process that existed before the session started.
    pub fn known_process(&mut self, pid: u32, ppid: u32, image: &str, ts: Timestamp) {
        self.push(EtwEvent::ProcStart {
            pid,
            ppid,
            image: image.to_string(),
            ts,
        });
    }

    pub fn push(&mut self, e: EtwEvent) {
        self.decoded += 1;
        match e {
            EtwEvent::ProcStart {
                pid,
                ppid,
                image,
                ts,
            } => {
                let parent_name = self.images.get(&ppid).map(|i| image_name(i));
                self.images.insert(pid, image.clone());
                self.events.push(Event::ProcessStart(ProcessStart {
                    ts,
                    host: self.host.clone(),
                    pid,
                    name: image_name(&image),
                    ppid: Some(ppid).filter(|p| *p != 0),
                    exe: Some(image).filter(|i| i.contains(['\\', '/'])),
                    cmdline: None,
                    user: None,
                    parent_name,
                }));
            }
            EtwEvent::ProcStop { pid, ts } => {
                self.images.remove(&pid);
                self.events.push(Event::ProcessEnd(ProcessEnd {
                    ts,
                    host: self.host.clone(),
                    pid,
                }));
            }
            EtwEvent::Net {
                pid,
                proto,
                remote,
                out,
                inb,
            } => {
                let e = self.flows.entry((pid, proto, remote)).or_default();
                e.0 += out;
                e.1 += inb;
            }
        }
    }

    /// Process events so far, then one `net` delta per flow, stamped `now`.
    pub fn drain(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        out.append(&mut self.events);
        for ((pid, proto, remote), (o, i)) in std::mem::take(&mut self.flows) {
            out.push(Event::Net(NetRecord {
                ts: now,
                host: self.host.clone(),
                pid,
                proto,
                dst_ip: remote.ip(),
                dst_port: remote.port(),
                bytes_out: o,
                bytes_in: i,
                sni: None,
                domain: None,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(s: &str) -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|u| u.to_le_bytes())
            .collect()
    }

    #[test]
    fn decodes_process_start_and_tcp_send_with_payload_pid() {
        let mut d = Vec::new();
        d.extend_from_slice(&4242u32.to_le_bytes());
        d.extend_from_slice(&0i64.to_le_bytes());
        d.extend_from_slice(&100u32.to_le_bytes());
        d.extend_from_slice(&1u32.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes()); // flags (v1)
        d.extend(wide(
            "\\Device\\HarddiskVolume3\\Program Files\\Office\\WINWORD.EXE",
        ));
        let e = decode(KERNEL_PROCESS, 1, 1, Timestamp(5), &d).unwrap();
        let mut agg = EtwAggregator::new("win-1");
        agg.push(e);
        // TCP send IPv4: payload pid 4242 (the header pid would be 4).
        let mut n = Vec::new();
        n.extend_from_slice(&4242u32.to_le_bytes());
        n.extend_from_slice(&1500u32.to_le_bytes());
        n.extend_from_slice(&[162, 125, 1, 1]);
        n.extend_from_slice(&[10, 0, 0, 5]);
        n.extend_from_slice(&443u16.to_be_bytes());
        n.extend_from_slice(&50000u16.to_be_bytes());
        for _ in 0..3 {
            agg.push(decode(KERNEL_NETWORK, 10, 0, Timestamp(6), &n).unwrap());
        }
        agg.push(decode(KERNEL_NETWORK, 11, 0, Timestamp(6), &n).unwrap());
        let mut out = Vec::new();
        agg.drain(Timestamp(7), &mut out);
        match &out[0] {
            Event::ProcessStart(p) => {
                assert_eq!(p.name, "WINWORD.EXE");
                assert_eq!(p.pid, 4242);
            }
            e => panic!("{e:?}"),
        }
        match &out[1] {
            Event::Net(r) => {
                assert_eq!(
                    (r.pid, r.bytes_out, r.bytes_in, r.dst_port),
                    (4242, 4500, 1500, 443)
                );
                assert_eq!(r.dst_ip, "162.125.1.1".parse::<IpAddr>().unwrap());
            }
            e => panic!("{e:?}"),
        }
        // Truncated payloads are refused, not panicked on.
        for cut in 0..n.len() {
            let _ = decode(KERNEL_NETWORK, 10, 0, Timestamp(0), &n[..cut]);
        }
        assert!(decode(KERNEL_NETWORK, 10, 0, Timestamp(0), &n[..10]).is_none());
        assert_eq!(filetime_to_ts(116_444_736_000_000_000 + 10), Timestamp(1));
    }
}
