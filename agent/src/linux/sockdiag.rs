//! NETLINK_SOCK_DIAG: dumps of TCP (and UDP) sockets with their `tcp_info`
//! byte counters, and the multicast notifications sent when a socket is
//! destroyed (which carry its final counters).
//!
//! Layouts (linux/inet_diag.h, linux/tcp.h):
//! `inet_diag_req_v2` = family u8, protocol u8, ext u8, pad u8, states u32,
//! `inet_diag_sockid` (sport be16, dport be16, src 16 B, dst 16 B, if u32,
//! cookie 2×u32) — 56 bytes. `inet_diag_msg` = family, state, timer, retrans
//! (u8 each), sockid (48 B) at 4, expires, rqueue, wqueue, uid, inode (u32)
//! — 72 bytes, then attributes. In `tcp_info`: bytes_acked at 120,
//! bytes_received at 128, bytes_sent at 200 (kernel ≥ 4.19).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::netlink::{self, rd_be16, rd_u32, rd_u64, NetlinkSocket};

pub const NETLINK_SOCK_DIAG: i32 = 4;
pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub const INET_DIAG_INFO: u16 = 2;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Multicast groups (linux/sock_diag.h).
pub const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
pub const SKNLGRP_INET_UDP_DESTROY: u32 = 2;
pub const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;
pub const SKNLGRP_INET6_UDP_DESTROY: u32 = 4;

pub const TCP_LISTEN: u8 = 10;
pub const TCP_TIME_WAIT: u8 = 6;
/// Every TCP state but LISTEN and TIME_WAIT (no counters there).
pub const TCP_STATES_WITH_DATA: u32 = 0xfff & !(1 << TCP_LISTEN) & !(1 << TCP_TIME_WAIT);

const DIAG_MSG_LEN: usize = 72;
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_BYTES_SENT: usize = 200;

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockRecord {
    pub protocol: u8,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    /// 0 once the socket has no file (closed by its process, orphaned).
    pub inode: u32,
    pub cookie: u64,
    /// Payload bytes the peer acknowledged (the SYN counts one on the
    /// connecting side; `out_bytes()` corrects for it).
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_sent: Option<u64>,
    pub has_info: bool,
}

impl SockRecord {
    /// Bytes received, without the peer's FIN (which advances
    /// `bytes_received` by one): in CLOSE_WAIT, LAST_ACK, CLOSING and CLOSE
    /// (how destroyed sockets report) a FIN was (normally) received. A
    /// socket closed by a reset is under-counted by that one byte.
    pub fn in_bytes(&self) -> u64 {
        match self.state {
            7 | 8 | 9 | 11 => self.bytes_received.saturating_sub(1),
            _ => self.bytes_received,
        }
    }

    /// Bytes sent and acknowledged, without the SYN/FIN sequence numbers.
    /// `bytes_acked` counts every payload byte once, plus one for our SYN
    /// (connecting side) and one for our FIN once acknowledged (FIN_WAIT2,
    /// and CLOSE as destroyed sockets report); `bytes_sent` counts payload
    /// only but includes retransmissions. So: FIN removed by state, then the
    /// smaller of the two — exact without retransmissions, at most one byte
    /// (the SYN) over with them.
    pub fn out_bytes(&self) -> u64 {
        let fin = u64::from(matches!(self.state, 5 | 7));
        let acked = self.bytes_acked.saturating_sub(fin);
        match self.bytes_sent {
            Some(s) => acked.min(s),
            None => acked.saturating_sub(1),
        }
    }
}

fn addr(family: u8, b: &[u8]) -> Option<IpAddr> {
    if family == libc::AF_INET as u8 {
        let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
        Some(IpAddr::V4(Ipv4Addr::from(a)))
    } else {
        let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
        let v6 = Ipv6Addr::from(a);
        // Dual-stack sockets talking IPv4 show as ::ffff:a.b.c.d.
        Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        })
    }
}

/// Parses one `inet_diag_msg` with its attributes.
pub fn parse_diag_msg(protocol: u8, p: &[u8]) -> Option<SockRecord> {
    if p.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = p[0];
    let state = p[1];
    let sport = rd_be16(p, 4)?;
    let dport = rd_be16(p, 6)?;
    let src = addr(family, p.get(8..24)?)?;
    let dst = addr(family, p.get(24..40)?)?;
    let cookie = u64::from(rd_u32(p, 44)?) | (u64::from(rd_u32(p, 48)?) << 32);
    let uid = rd_u32(p, 64)?;
    let inode = rd_u32(p, 68)?;
    let mut r = SockRecord {
        protocol,
        state,
        local: SocketAddr::new(src, sport),
        remote: SocketAddr::new(dst, dport),
        uid,
        inode,
        cookie,
        bytes_acked: 0,
        bytes_received: 0,
        bytes_sent: None,
        has_info: false,
    };
    for (ty, data) in netlink::attributes(&p[DIAG_MSG_LEN..]) {
        if ty == INET_DIAG_INFO && protocol == IPPROTO_TCP {
            if let (Some(a), Some(rcv)) = (
                rd_u64(data, TCPI_BYTES_ACKED),
                rd_u64(data, TCPI_BYTES_RECEIVED),
            ) {
                r.bytes_acked = a;
                r.bytes_received = rcv;
                r.bytes_sent = rd_u64(data, TCPI_BYTES_SENT);
                r.has_info = true;
            }
        }
    }
    Some(r)
}

fn dump_request(family: u8, protocol: u8, states: u32, ext: u8) -> Vec<u8> {
    let mut req = vec![0u8; 56];
    req[0] = family;
    req[1] = protocol;
    req[2] = ext;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    req
}

/// A sock_diag query socket, reused across dumps.
pub struct SockDiag {
    sock: NetlinkSocket,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        let sock = NetlinkSocket::open(NETLINK_SOCK_DIAG, 0)?;
        sock.set_recv_timeout(std::time::Duration::from_secs(5));
        Ok(SockDiag {
            sock,
            buf: vec![0u8; 256 * 1024],
            seq: 0,
        })
    }

    /// Dumps every socket of (family, protocol) in `states`, calling `f` for each.
    pub fn dump(
        &mut self,
        family: u8,
        protocol: u8,
        states: u32,
        f: &mut dyn FnMut(SockRecord),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let ext = if protocol == IPPROTO_TCP {
            1 << (INET_DIAG_INFO - 1)
        } else {
            0
        };
        let req = netlink::build_msg(
            SOCK_DIAG_BY_FAMILY,
            netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP,
            self.seq,
            &dump_request(family, protocol, states, ext as u8),
        );
        self.sock.send(&req)?;
        loop {
            let n = self.sock.recv(&mut self.buf)?;
            if n == 0 {
                return Ok(());
            }
            for m in netlink::messages(&self.buf[..n]) {
                if m.seq != self.seq {
                    continue;
                }
                match m.ty {
                    netlink::NLMSG_DONE => return Ok(()),
                    netlink::NLMSG_ERROR => {
                        let errno = netlink::rd_i32(m.payload, 0).unwrap_or(0);
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some(r) = parse_diag_msg(protocol, m.payload) {
                            f(r);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// IPv4 and IPv6 TCP sockets that carry data counters.
    pub fn dump_tcp(&mut self, f: &mut dyn FnMut(SockRecord)) -> io::Result<()> {
        self.dump(libc::AF_INET as u8, IPPROTO_TCP, TCP_STATES_WITH_DATA, f)?;
        self.dump(libc::AF_INET6 as u8, IPPROTO_TCP, TCP_STATES_WITH_DATA, f)
    }

    /// IPv4 and IPv6 UDP sockets (no byte counters from the kernel).
    pub fn dump_udp(&mut self, f: &mut dyn FnMut(SockRecord)) -> io::Result<()> {
        self.dump(libc::AF_INET as u8, IPPROTO_UDP, u32::MAX, f)?;
        self.dump(libc::AF_INET6 as u8, IPPROTO_UDP, u32::MAX, f)
    }
}

/// Subscription to TCP socket-destroy notifications (needs CAP_NET_ADMIN).
pub struct DestroyListener {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

impl DestroyListener {
    pub fn open() -> io::Result<DestroyListener> {
        let groups = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1));
        let sock = NetlinkSocket::open(NETLINK_SOCK_DIAG, groups)?;
        sock.set_rcvbuf(8 * 1024 * 1024);
        sock.set_nonblocking(true)?;
        Ok(DestroyListener {
            sock,
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Hands every pending notification to `f`; returns how many overruns
    /// (lost notifications) the kernel reported.
    pub fn drain(&mut self, f: &mut dyn FnMut(SockRecord)) -> io::Result<u64> {
        let mut overruns = 0;
        loop {
            let n = match self.sock.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(overruns),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    overruns += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for m in netlink::messages(&self.buf[..n]) {
                if m.ty != SOCK_DIAG_BY_FAMILY {
                    continue;
                }
                // The protocol is not in inet_diag_msg; this group is TCP only.
                if let Some(r) = parse_diag_msg(IPPROTO_TCP, m.payload) {
                    f(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn dump_sees_own_connection_with_exact_counters() {
        let Ok(mut diag) = SockDiag::open() else {
            eprintln!("SKIPPED: NETLINK_SOCK_DIAG unavailable");
            return;
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[7u8; 5000]).unwrap();
        let mut got = vec![0u8; 5000];
        s.read_exact(&mut got).unwrap();
        s.write_all(&[1u8; 30]).unwrap();
        let mut back = [0u8; 30];
        c.read_exact(&mut back).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut found = Vec::new();
        diag.dump_tcp(&mut |r| {
            if r.remote.port() == port || r.local.port() == port {
                found.push(r);
            }
        })
        .unwrap();
        let client = found
            .iter()
            .find(|r| r.remote.port() == port)
            .expect("client socket");
        assert!(client.has_info);
        assert_eq!(client.out_bytes(), 5000);
        assert_eq!(client.bytes_received, 30);
        assert!(client.inode != 0 && client.cookie != 0);
        let server = found
            .iter()
            .find(|r| r.local.port() == port)
            .expect("server socket");
        assert_eq!(server.out_bytes(), 30);
        assert_eq!(server.bytes_received, 5000);
    }
}
