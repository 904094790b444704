//! Passive capture (AF_PACKET, needs CAP_NET_RAW) of what the socket
//! counters cannot tell: DNS answers (IP → name), the SNI of TLS
//! ClientHellos (flow → name) and UDP port 443 (QUIC) byte counts, which the
//! kernel keeps for no UDP socket. A classic BPF filter in the kernel passes
//! only DNS responses, UDP/443 and TCP segments that start a TLS ClientHello,
//! so bulk TCP traffic never reaches user space.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SNAPLEN: u32 = 2048;
const PACKET_OUTGOING: u8 = 4;

/// What one drain of the capture produced.
#[derive(Default, Debug)]
pub struct CaptureOutput {
    /// (query, answers)
    pub dns: Vec<(String, Vec<IpAddr>)>,
    /// (local, remote, server name) of outgoing ClientHellos.
    pub sni: Vec<(SocketAddr, SocketAddr, String)>,
    /// (local, remote) → (bytes out, bytes in) of UDP port 443 payloads.
    pub udp: HashMap<(SocketAddr, SocketAddr), (u64, u64)>,
    pub packets: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// A tiny assembler for the filter: jumps name labels, resolved at the end.
enum Ins {
    Op(u16, u32),
    Jeq(u32, &'static str, &'static str),
    Label(&'static str),
}

const LD_B_ABS: u16 = 0x30;
const LD_H_ABS: u16 = 0x28;
const LD_B_IND: u16 = 0x50;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const ALU_RSH_K: u16 = 0x74;
const ALU_AND_K: u16 = 0x54;
const ALU_ADD_K: u16 = 0x04;
const ALU_ADD_X: u16 = 0x0c;
const MISC_TAX: u16 = 0x07;
const RET_K: u16 = 0x06;
const JEQ_K: u16 = 0x15;

/// "next" as a jump target means the following instruction.
fn filter_program() -> Vec<SockFilter> {
    use Ins::*;
    let prog = vec![
        Op(LD_B_ABS, 0),
        Op(ALU_RSH_K, 4),
        Jeq(4, "v4", "next"),
        Jeq(6, "v6", "drop"),
        Label("v4"),
        Op(LD_B_ABS, 9),
        Jeq(17, "udp4", "next"),
        Jeq(6, "tcp4", "drop"),
        Label("udp4"),
        Op(LDX_B_MSH, 0),
        Op(LD_H_IND, 0),
        Jeq(53, "accept", "next"),
        Jeq(443, "accept", "next"),
        Op(LD_H_IND, 2),
        Jeq(443, "accept", "drop"),
        Label("tcp4"),
        Op(LDX_B_MSH, 0),
        Op(LD_B_IND, 12),
        Op(ALU_AND_K, 0xf0),
        Op(ALU_RSH_K, 2),
        Op(ALU_ADD_X, 0),
        Op(MISC_TAX, 0),
        Op(LD_B_IND, 0),
        Jeq(0x16, "next", "drop"),
        Op(LD_B_IND, 5),
        Jeq(1, "accept", "drop"),
        Label("v6"),
        Op(LD_B_ABS, 6),
        Jeq(17, "udp6", "next"),
        Jeq(6, "tcp6", "drop"),
        Label("udp6"),
        Op(LD_H_ABS, 40),
        Jeq(53, "accept", "next"),
        Jeq(443, "accept", "next"),
        Op(LD_H_ABS, 42),
        Jeq(443, "accept", "drop"),
        Label("tcp6"),
        Op(LD_B_ABS, 52),
        Op(ALU_AND_K, 0xf0),
        Op(ALU_RSH_K, 2),
        Op(ALU_ADD_K, 40),
        Op(MISC_TAX, 0),
        Op(LD_B_IND, 0),
        Jeq(0x16, "next", "drop"),
        Op(LD_B_IND, 5),
        Jeq(1, "accept", "drop"),
        Label("accept"),
        Op(RET_K, SNAPLEN),
        Label("drop"),
        Op(RET_K, 0),
    ];
    let mut labels = HashMap::new();
    let mut n = 0usize;
    for i in &prog {
        match i {
            Label(l) => {
                labels.insert(*l, n);
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    for i in &prog {
        let pc = out.len();
        let rel = |l: &str| -> u8 {
            if l == "next" {
                0
            } else {
                // Labels are always forward; the program is far below 255.
                (labels[l] - pc - 1) as u8
            }
        };
        match i {
            Label(_) => {}
            Op(code, k) => out.push(SockFilter {
                code: *code,
                jt: 0,
                jf: 0,
                k: *k,
            }),
            Jeq(k, t, f) => out.push(SockFilter {
                code: JEQ_K,
                jt: rel(t),
                jf: rel(f),
                k: *k,
            }),
        }
    }
    out
}

pub struct Capture {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Capture {
    /// Opens the capture on every interface (needs CAP_NET_RAW).
    pub fn open() -> io::Result<Capture> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: socket(2); result checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                proto,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let prog = filter_program();
        let fprog = SockFprog {
            len: prog.len() as u16,
            filter: prog.as_ptr(),
        };
        // SAFETY: fprog points at `prog`, alive for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const SockFprog as *const libc::c_void,
                std::mem::size_of::<SockFprog>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let rcv: i32 = 4 * 1024 * 1024;
        // SAFETY: int option.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &rcv as *const i32 as *const libc::c_void,
                4,
            );
        }
        Ok(Capture {
            fd,
            buf: vec![0u8; SNAPLEN as usize],
        })
    }

    /// Reads every pending packet (at most `max`) into `out`.
    pub fn drain(&mut self, out: &mut CaptureOutput, max: usize) -> io::Result<()> {
        for _ in 0..max {
            // SAFETY: sockaddr_ll is POD.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut sl = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffers valid for the given lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                    &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut sl,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(()),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            out.packets += 1;
            let outgoing = sll.sll_pkttype == PACKET_OUTGOING;
            handle_packet(&self.buf[..n as usize], outgoing, out);
        }
        Ok(())
    }
}

struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload: &'a [u8],
}

fn parse_ip(p: &[u8]) -> Option<Ip<'_>> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
            if frag != 0 || ihl < 20 {
                return None;
            }
            let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
            let end = total.min(p.len());
            Some(Ip {
                src: IpAddr::V4(Ipv4Addr::from(src)),
                dst: IpAddr::V4(Ipv4Addr::from(dst)),
                proto: *p.get(9)?,
                payload: p.get(ihl..end)?,
            })
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
            let end = (40 + plen).min(p.len());
            Some(Ip {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                proto: *p.get(6)?,
                payload: p.get(40..end)?,
            })
        }
        _ => None,
    }
}

/// Classifies one captured IP packet. `outgoing`: sent by this host.
pub fn handle_packet(p: &[u8], outgoing: bool, out: &mut CaptureOutput) {
    let Some(ip) = parse_ip(p) else { return };
    let t = ip.payload;
    match ip.proto {
        17 if t.len() >= 8 => {
            let sport = u16::from_be_bytes([t[0], t[1]]);
            let dport = u16::from_be_bytes([t[2], t[3]]);
            let data = &t[8..];
            let src = SocketAddr::new(ip.src, sport);
            let dst = SocketAddr::new(ip.dst, dport);
            if sport == 53 && !outgoing {
                if let Some((q, answers)) = parse_dns_response(data) {
                    if !answers.is_empty() {
                        out.dns.push((q, answers));
                    }
                }
            }
            if dport == 443 || sport == 443 {
                // The original length: the capture may be truncated.
                let len = u64::from(u16::from_be_bytes([t[4], t[5]]).saturating_sub(8));
                if outgoing {
                    out.udp.entry((src, dst)).or_default().0 += len;
                } else {
                    out.udp.entry((dst, src)).or_default().1 += len;
                }
            }
        }
        6 if outgoing && t.len() >= 20 => {
            let sport = u16::from_be_bytes([t[0], t[1]]);
            let dport = u16::from_be_bytes([t[2], t[3]]);
            let off = usize::from(t[12] >> 4) * 4;
            if let Some(sni) = t.get(off..).and_then(parse_client_hello_sni) {
                out.sni.push((
                    SocketAddr::new(ip.src, sport),
                    SocketAddr::new(ip.dst, dport),
                    sni,
                ));
            }
        }
        _ => {}
    }
}

/// The server name of a TLS ClientHello record (first segment), if any.
pub fn parse_client_hello_sni(d: &[u8]) -> Option<String> {
    if *d.first()? != 0x16 || *d.get(5)? != 0x01 {
        return None;
    }
    let mut p = 5 + 4 + 2 + 32; // record hdr, handshake hdr, version, random
    let sid = usize::from(*d.get(p)?);
    p += 1 + sid;
    let cs = usize::from(u16::from_be_bytes([*d.get(p)?, *d.get(p + 1)?]));
    p += 2 + cs;
    let comp = usize::from(*d.get(p)?);
    p += 1 + comp;
    let ext_len = usize::from(u16::from_be_bytes([*d.get(p)?, *d.get(p + 1)?]));
    p += 2;
    let end = (p + ext_len).min(d.len());
    while p + 4 <= end {
        let ty = u16::from_be_bytes([d[p], d[p + 1]]);
        let len = usize::from(u16::from_be_bytes([d[p + 2], d[p + 3]]));
        p += 4;
        if ty == 0 {
            // server_name_list: u16 len, then (type u8, u16 len, name)
            let name_type = *d.get(p + 2)?;
            let nlen = usize::from(u16::from_be_bytes([*d.get(p + 3)?, *d.get(p + 4)?]));
            let name = d.get(p + 5..p + 5 + nlen)?;
            if name_type != 0 {
                return None;
            }
            let s = std::str::from_utf8(name).ok()?;
            if s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            {
                return None;
            }
            return Some(s.to_ascii_lowercase());
        }
        p += len;
    }
    None
}

fn dns_name(m: &[u8], mut p: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..64 {
        let len = *m.get(p)?;
        if len == 0 {
            return Some((name, end.unwrap_or(p + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = (usize::from(len & 0x3f) << 8) | usize::from(*m.get(p + 1)?);
            if end.is_none() {
                end = Some(p + 2);
            }
            p = ptr;
            continue;
        }
        let label = m.get(p + 1..p + 1 + usize::from(len))?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        p += 1 + usize::from(len);
    }
    None
}

/// (question name, A/AAAA answers) of a successful DNS response.
pub fn parse_dns_response(m: &[u8]) -> Option<(String, Vec<IpAddr>)> {
    if m.len() < 12 || m[2] & 0x80 == 0 || m[3] & 0x0f != 0 {
        return None;
    }
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    if qd != 1 {
        return None;
    }
    let (q, mut p) = dns_name(m, 12)?;
    p += 4;
    let mut answers = Vec::new();
    for _ in 0..an {
        let (_, np) = dns_name(m, p)?;
        p = np;
        let ty = u16::from_be_bytes([*m.get(p)?, *m.get(p + 1)?]);
        let rdlen = usize::from(u16::from_be_bytes([*m.get(p + 8)?, *m.get(p + 9)?]));
        let rd = m.get(p + 10..p + 10 + rdlen)?;
        match (ty, rdlen) {
            (1, 4) => answers.push(IpAddr::V4(Ipv4Addr::new(rd[0], rd[1], rd[2], rd[3]))),
            (28, 16) => {
                let a: [u8; 16] = rd.try_into().ok()?;
                answers.push(IpAddr::V6(Ipv6Addr::from(a)));
            }
            _ => {}
        }
        p += 10 + rdlen;
    }
    Some((q, answers))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal but well-formed TLS 1.2 ClientHello carrying `name`.
    pub fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        let n = name.as_bytes();
        sni.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(n.len() as u16).to_be_bytes());
        sni.extend_from_slice(n);
        let mut ext = Vec::new();
        ext.extend_from_slice(&[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]); // ec_point_formats
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xab; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    pub fn dns_answer(q: &str, ip: [u8; 4]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        for l in q.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&[0, 1, 0, 1]);
        // CNAME-free answer with a compression pointer to the question.
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&ip);
        m.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        m.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        m
    }

    #[test]
    fn sni_from_client_hello_and_refusals() {
        let ch = client_hello("Content.DropboxAPI.com");
        assert_eq!(
            parse_client_hello_sni(&ch).as_deref(),
            Some("content.dropboxapi.com")
        );
        assert_eq!(parse_client_hello_sni(&ch[..20]), None);
        assert_eq!(parse_client_hello_sni(b"GET / HTTP/1.1"), None);
        for cut in 0..ch.len() {
            let _ = parse_client_hello_sni(&ch[..cut]); // never panics
        }
    }

    #[test]
    fn dns_answers_with_compression() {
        let m = dns_answer("www.dropbox.com", [162, 125, 1, 1]);
        let (q, a) = parse_dns_response(&m).unwrap();
        assert_eq!(q, "www.dropbox.com");
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], "162.125.1.1".parse::<IpAddr>().unwrap());
        for cut in 0..m.len() {
            let _ = parse_dns_response(&m[..cut]);
        }
        // A pointer loop ends, no hang.
        let mut bad = m.clone();
        bad[12] = 0xc0;
        bad[13] = 12;
        let _ = parse_dns_response(&bad);
    }

    #[test]
    fn filter_assembles_with_forward_jumps() {
        let p = filter_program();
        assert!(p.len() > 20 && p.len() < 255);
        assert_eq!(p.last().map(|i| (i.code, i.k)), Some((RET_K, 0)));
    }

    #[test]
    fn captures_sni_and_udp_on_loopback_when_privileged() {
        let Ok(mut cap) = Capture::open() else {
            eprintln!("SKIPPED: AF_PACKET capture unavailable (needs CAP_NET_RAW)");
            return;
        };
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = c.local_addr().unwrap();
        c.write_all(&client_hello("upload.example.org")).unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let srv = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Port 443 needs no privilege to send to; nobody listens: fine.
        u.send_to(&[0u8; 1200], "127.0.0.1:443").unwrap();
        drop(srv);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut out = CaptureOutput::default();
        cap.drain(&mut out, 10_000).unwrap();
        assert!(
            out.sni
                .iter()
                .any(|(lo, re, n)| *lo == local && re.port() == port && n == "upload.example.org"),
            "{:?}",
            out.sni
        );
        let ul = u.local_addr().unwrap();
        let (o, _) = out
            .udp
            .get(&(ul, "127.0.0.1:443".parse().unwrap()))
            .copied()
            .unwrap_or_default();
        assert_eq!(o, 1200);
    }
}
