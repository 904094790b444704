//! Who closed a TCP connection: the `sock:inet_sock_set_state` tracepoint,
//! read through `perf_event_open` (no eBPF), filtered in the kernel to the
//! two transitions a process makes itself when it calls `close()` or
//! `shutdown()`: ESTABLISHED → FIN_WAIT1 (active close) and CLOSE_WAIT →
//! LAST_ACK (passive close). Both run in the closing task's context
//! (`tcp_close` / `tcp_shutdown` → `tcp_close_state`), so the sample's pid
//! is the process that owned the socket, and the record carries the full
//! 4-tuple.
//!
//! This closes the gap of sockets that open and close between two
//! sock_diag dumps: their destroy notification carries no inode (the socket
//! has no file any more), but its 4-tuple matches the closer recorded here.
//! Not covered: a connection torn down by a reset the process never closed
//! (no FIN transition in process context), and a SYN_SENT socket (the local
//! port is chosen after the state change, and it has no bytes anyway).
//!
//! Needs: tracefs (`/sys/kernel/tracing` or `/sys/kernel/debug/tracing`)
//! readable for the tracepoint id and layout, and CAP_PERFMON (or
//! CAP_SYS_ADMIN) for system-wide per-CPU events.
//!
//! Layouts: `perf_event_attr` (linux/perf_event.h) — type u32 @0, size u32
//! @4, config u64 @8, sample_period @16, sample_type @24, flags @40 (bit 0
//! `disabled`, bit 14 `watermark`), wakeup_watermark u32 @48. The first page of the mmap'd ring is `perf_event_mmap_page`:
//! data_head u64 @1024, data_tail @1032, data_offset @1040, data_size @1048.
//! A PERF_RECORD_SAMPLE with TID|RAW is header (type u32, misc u16, size
//! u16), pid u32, tid u32, raw size u32, raw bytes; the raw layout is read
//! from the tracepoint's `format` file.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_SAMPLE_TID: u64 = 1 << 1;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_SAMPLE: u32 = 9;
/// `_IO('$', 0)` and `_IOW('$', 6, char *)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_FILTER: libc::c_ulong = 0x4008_2406;
const ATTR_SIZE: usize = 128;
/// Data pages per CPU (a power of two): 512 KiB, the most that is not
/// charged to the locked-memory limit (`perf_event_mlock_kb`), ~5,000
/// closes. A reader thread empties the rings whenever one is half full.
const RING_PAGES: usize = 128;
/// Closes waiting for the source's next poll, at most (then counted lost).
const MAX_QUEUED: usize = 1 << 20;

const TCP_FIN_WAIT1: i32 = 4;
const TCP_LAST_ACK: i32 = 9;
/// Only the transitions a process makes itself, TCP only.
const FILTER: &str = "protocol == 6 && (newstate == 4 || newstate == 9)";

/// One close: the process that closed `local` → `remote`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    pub pid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Where the fields of the tracepoint record are (from its `format`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    fields: HashMap<String, (usize, usize)>,
}

impl Layout {
    /// Parses a tracefs `format` file.
    pub fn parse(format: &str) -> Option<Layout> {
        let mut fields = HashMap::new();
        for line in format.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next()?;
            let name = decl
                .rsplit(' ')
                .next()?
                .split('[')
                .next()?
                .trim_start_matches('*')
                .to_string();
            let mut off = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    off = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            fields.insert(name, (off?, size?));
        }
        let l = Layout { fields };
        for f in [
            "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr", "daddr",
            "saddr_v6", "daddr_v6",
        ] {
            l.fields.get(f)?;
        }
        Some(l)
    }

    fn bytes<'a>(&self, raw: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let (o, s) = *self.fields.get(name)?;
        raw.get(o..o + s)
    }

    fn uint(&self, raw: &[u8], name: &str) -> Option<u64> {
        let b = self.bytes(raw, name)?;
        Some(match b.len() {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_ne_bytes(b.try_into().ok()?)),
            4 => u64::from(u32::from_ne_bytes(b.try_into().ok()?)),
            8 => u64::from_ne_bytes(b.try_into().ok()?),
            _ => return None,
        })
    }

    /// Decodes one raw record; `None` if it is not a close by a process.
    pub fn decode(&self, pid: u32, raw: &[u8]) -> Option<Close> {
        let new = self.uint(raw, "newstate")? as i32;
        if (new != TCP_FIN_WAIT1 && new != TCP_LAST_ACK) || self.uint(raw, "protocol")? != 6 {
            return None;
        }
        let family = self.uint(raw, "family")? as i32;
        let (src, dst) = if family == libc::AF_INET {
            let s: [u8; 4] = self.bytes(raw, "saddr")?.try_into().ok()?;
            let d: [u8; 4] = self.bytes(raw, "daddr")?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))
        } else if family == libc::AF_INET6 {
            let s: [u8; 16] = self.bytes(raw, "saddr_v6")?.try_into().ok()?;
            let d: [u8; 16] = self.bytes(raw, "daddr_v6")?.try_into().ok()?;
            // As sock_diag reports them: IPv4 over a dual-stack socket as IPv4.
            let v = |a: [u8; 16]| {
                let v6 = Ipv6Addr::from(a);
                v6.to_ipv4_mapped()
                    .map(IpAddr::V4)
                    .unwrap_or(IpAddr::V6(v6))
            };
            (v(s), v(d))
        } else {
            return None;
        };
        // The tracepoint stores the ports in host order.
        let sport = self.uint(raw, "sport")? as u16;
        let dport = self.uint(raw, "dport")? as u16;
        Some(Close {
            pid,
            local: SocketAddr::new(src, sport),
            remote: SocketAddr::new(dst, dport),
        })
    }
}

/// Walks the records between `tail` and `head` of a ring of `data`
/// (`data.len()` a power of two), calling `f(type, body)` with each
/// record's bytes after its 8-byte header (copied when it wraps).
pub fn walk_ring(data: &[u8], mut tail: u64, head: u64, f: &mut dyn FnMut(u32, &[u8])) -> u64 {
    let size = data.len() as u64;
    let mut rec = Vec::new();
    while tail + 8 <= head {
        let at = |i: u64| data[((tail + i) % size) as usize];
        let hdr: Vec<u8> = (0..8).map(at).collect();
        let ty = u32::from_ne_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let len = u64::from(u16::from_ne_bytes([hdr[6], hdr[7]]));
        if len < 8 || tail + len > head {
            // Torn or corrupt: skip to the head.
            return head;
        }
        rec.clear();
        rec.extend((8..len).map(at));
        f(ty, &rec);
        tail += len;
    }
    tail
}

struct Ring {
    fd: OwnedFd,
    base: *mut libc::c_void,
    len: usize,
    page: usize,
}

// SAFETY: the mapping is owned by this value and only used through &mut self.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len are the mapping created in `open_cpu`.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

fn tracefs() -> Option<std::path::PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.join("events/sock/inet_sock_set_state/id").exists())
}

fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut v = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
            v.extend(a..=b);
        }
    }
    if v.is_empty() {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
        v.extend(0..n as i32);
    }
    v
}

fn open_cpu(id: u64, cpu: i32, page: usize) -> io::Result<Ring> {
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
    attr[24..32].copy_from_slice(&(PERF_SAMPLE_TID | PERF_SAMPLE_RAW).to_ne_bytes());
    // Flags: disabled (bit 0) until filtered; watermark (bit 14): wake the
    // reader when `wakeup_watermark` bytes are waiting.
    attr[40..48].copy_from_slice(&(1u64 | 1 << 14).to_ne_bytes());
    attr[48..52].copy_from_slice(&((page * RING_PAGES / 2) as u32).to_ne_bytes());
    // SAFETY: attr is a zero-initialised perf_event_attr of the size it
    // declares; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            cpu,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let filter = std::ffi::CString::new(FILTER).expect("no NUL");
    // SAFETY: ioctls on our perf descriptor; the filter is a valid C string.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_FILTER, filter.as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let len = page * (1 + RING_PAGES);
    // SAFETY: maps the perf ring of our descriptor, checked below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ring = Ring {
        fd,
        base,
        len,
        page,
    };
    // SAFETY: enabling our own event.
    if unsafe { libc::ioctl(ring.fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ring)
}

/// Reads every CPU's ring.
struct Reader {
    rings: Vec<Ring>,
    layout: Layout,
    lost: u64,
}

impl Reader {
    fn drain(&mut self, f: &mut dyn FnMut(Close)) {
        for r in &mut self.rings {
            let base = r.base as *mut u8;
            // SAFETY: the header page is mapped; data_head/data_tail are
            // u64 fields the kernel and we share (acquire/release as the
            // perf ABI requires).
            let (head_p, tail_p, off, size) = unsafe {
                let off = std::ptr::read_volatile(base.add(1040) as *const u64) as usize;
                let size = std::ptr::read_volatile(base.add(1048) as *const u64) as usize;
                (
                    &*(base.add(1024) as *const AtomicU64),
                    &*(base.add(1032) as *const AtomicU64),
                    off,
                    size,
                )
            };
            // Kernels before 4.1 leave offset/size zero.
            let (off, size) = if size == 0 {
                (r.page, r.page * RING_PAGES)
            } else {
                (off, size)
            };
            let head = head_p.load(Ordering::Acquire);
            let tail = tail_p.load(Ordering::Relaxed);
            // SAFETY: [off, off + size) lies inside the mapping.
            let data = unsafe { std::slice::from_raw_parts(base.add(off), size) };
            let layout = &self.layout;
            let lost = &mut self.lost;
            let new_tail = walk_ring(data, tail, head, &mut |ty, body| match ty {
                PERF_RECORD_SAMPLE => {
                    let word = |i: usize| {
                        body.get(i..i + 4)
                            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    };
                    if let (Some(pid), Some(n)) = (word(0), word(8)) {
                        let raw = body.get(12..12 + n as usize);
                        if let Some(c) = raw.and_then(|raw| layout.decode(pid, raw)) {
                            f(c);
                        }
                    }
                }
                PERF_RECORD_LOST => {
                    if let Some(b) = body.get(8..16) {
                        let mut w = [0u8; 8];
                        w.copy_from_slice(b);
                        *lost += u64::from_ne_bytes(w);
                    }
                }
                _ => {}
            });
            tail_p.store(new_tail, Ordering::Release);
        }
    }

    fn fds(&self) -> Vec<libc::pollfd> {
        self.rings
            .iter()
            .map(|r| libc::pollfd {
                fd: r.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect()
    }
}

#[derive(Default)]
struct Queue {
    closes: Vec<Close>,
    lost: u64,
}

/// The per-CPU tracepoint rings and the thread that empties them.
pub struct CloseTrace {
    /// Shared with the thread; the source also drains it directly so that
    /// a close made just before a poll is seen in that poll.
    reader: Arc<Mutex<Reader>>,
    queue: Arc<Mutex<Queue>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Closes lost so far (rings or queue full).
    pub lost: u64,
}

impl CloseTrace {
    pub fn open() -> io::Result<CloseTrace> {
        let dir = tracefs().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "tracepoint sock:inet_sock_set_state not found (is tracefs mounted at /sys/kernel/tracing?)",
            )
        })?;
        let ev = dir.join("events/sock/inet_sock_set_state");
        let id: u64 = std::fs::read_to_string(ev.join("id"))?
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad tracepoint id"))?;
        let layout =
            Layout::parse(&std::fs::read_to_string(ev.join("format"))?).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "unexpected tracepoint format")
            })?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let rings = online_cpus()
            .into_iter()
            .map(|cpu| open_cpu(id, cpu, page))
            .collect::<io::Result<Vec<_>>>()?;
        let reader = Arc::new(Mutex::new(Reader {
            rings,
            layout,
            lost: 0,
        }));
        let queue = Arc::new(Mutex::new(Queue::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let reader = reader.clone();
            let queue = queue.clone();
            let stop = stop.clone();
            let mut fds = lock(&reader).fds();
            std::thread::Builder::new()
                .name("close-trace".into())
                .spawn(move || {
                    let mut batch = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        // SAFETY: fds is a valid pollfd array; the
                        // descriptors live as long as `reader`, which this
                        // thread holds.
                        unsafe {
                            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100);
                        }
                        // Reader, then queue (the order `drain` takes them):
                        // nothing drained is out of the queue while a poll
                        // looks.
                        let mut r = lock(&reader);
                        r.drain(&mut |c| batch.push(c));
                        let mut q = lock(&queue);
                        q.lost += std::mem::take(&mut r.lost);
                        let room = MAX_QUEUED.saturating_sub(q.closes.len());
                        if batch.len() > room {
                            q.lost += (batch.len() - room) as u64;
                            batch.truncate(room);
                        }
                        q.closes.append(&mut batch);
                    }
                })?
        };
        Ok(CloseTrace {
            reader,
            queue,
            stop,
            thread: Some(thread),
            lost: 0,
        })
    }

    /// Every close recorded since the last call.
    pub fn drain(&mut self, f: &mut dyn FnMut(Close)) {
        // What the thread collected first (older), then the rings now.
        let mut r = lock(&self.reader);
        let (closes, lost) = {
            let mut q = lock(&self.queue);
            (std::mem::take(&mut q.closes), std::mem::take(&mut q.lost))
        };
        self.lost += lost;
        for c in closes {
            f(c);
        }
        r.drain(f);
        self.lost += std::mem::take(&mut r.lost);
    }
}

impl Drop for CloseTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Recent closes by 4-tuple, kept for `keep` polls so a destroy notification
/// read a little later still finds its closer.
#[derive(Default)]
pub struct Closers {
    by_tuple: HashMap<(SocketAddr, SocketAddr), (u32, u64)>,
    poll: u64,
}

impl Closers {
    pub fn note(&mut self, c: Close) {
        self.by_tuple
            .insert((c.local, c.remote), (c.pid, self.poll));
    }

    pub fn pid(&self, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
        self.by_tuple.get(&(local, remote)).map(|x| x.0)
    }

    /// Ends a poll; forgets closes older than `keep` polls.
    pub fn end_poll(&mut self, keep: u64) {
        self.poll += 1;
        let cutoff = self.poll.saturating_sub(keep);
        self.by_tuple.retain(|_, (_, p)| *p >= cutoff);
    }

    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s ...\"
";

    fn raw(family: u16, new: i32, proto: u16) -> Vec<u8> {
        let mut r = vec![0u8; 72];
        r[16..20].copy_from_slice(&1i32.to_ne_bytes());
        r[20..24].copy_from_slice(&new.to_ne_bytes());
        r[24..26].copy_from_slice(&40000u16.to_ne_bytes());
        r[26..28].copy_from_slice(&443u16.to_ne_bytes());
        r[28..30].copy_from_slice(&family.to_ne_bytes());
        r[30..32].copy_from_slice(&proto.to_ne_bytes());
        r[32..36].copy_from_slice(&[10, 0, 0, 5]);
        r[36..40].copy_from_slice(&[1, 2, 3, 4]);
        let mut s6 = [0u8; 16];
        s6[10] = 0xff;
        s6[11] = 0xff;
        s6[12..].copy_from_slice(&[10, 0, 0, 5]);
        r[40..56].copy_from_slice(&s6);
        let d6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        r[56..72].copy_from_slice(&d6.octets());
        r
    }

    #[test]
    fn decodes_closes_from_the_format_layout() {
        let l = Layout::parse(FORMAT).unwrap();
        let c = l.decode(77, &raw(2, TCP_FIN_WAIT1, 6)).unwrap();
        assert_eq!(
            c,
            Close {
                pid: 77,
                local: "10.0.0.5:40000".parse().unwrap(),
                remote: "1.2.3.4:443".parse().unwrap()
            }
        );
        // IPv6 family: v4-mapped source shown as IPv4, like sock_diag.
        let c = l.decode(78, &raw(10, TCP_LAST_ACK, 6)).unwrap();
        assert_eq!(c.local, "10.0.0.5:40000".parse().unwrap());
        assert_eq!(c.remote, "[2001:db8::1]:443".parse().unwrap());
        // Other transitions, other protocols, truncated records: ignored.
        assert!(l.decode(1, &raw(2, 1, 6)).is_none());
        assert!(l.decode(1, &raw(2, TCP_FIN_WAIT1, 132)).is_none());
        assert!(l.decode(1, &raw(2, TCP_FIN_WAIT1, 6)[..30]).is_none());
        // A format without the needed fields is refused.
        assert!(Layout::parse("format:\n\tfield:int x;\toffset:0;\tsize:4;\n").is_none());
    }

    #[test]
    fn ring_records_are_walked_across_the_wrap() {
        // Two records in a 32-byte ring, the second wrapping around.
        let mut data = vec![0u8; 32];
        let put = |data: &mut Vec<u8>, at: u64, ty: u32, body: &[u8]| {
            let mut rec = Vec::new();
            rec.extend_from_slice(&ty.to_ne_bytes());
            rec.extend_from_slice(&0u16.to_ne_bytes());
            rec.extend_from_slice(&((8 + body.len()) as u16).to_ne_bytes());
            rec.extend_from_slice(body);
            for (i, b) in rec.iter().enumerate() {
                let n = data.len() as u64;
                data[((at + i as u64) % n) as usize] = *b;
            }
            8 + body.len() as u64
        };
        let t0 = 16u64;
        let n1 = put(&mut data, t0, 9, &[1, 2, 3, 4]);
        let n2 = put(&mut data, t0 + n1, 2, &[5, 6, 7, 8, 9, 10, 11, 12]);
        let mut seen = Vec::new();
        let end = walk_ring(&data, t0, t0 + n1 + n2, &mut |ty, b| {
            seen.push((ty, b.to_vec()))
        });
        assert_eq!(end, t0 + n1 + n2);
        assert_eq!(
            seen,
            vec![(9, vec![1, 2, 3, 4]), (2, vec![5, 6, 7, 8, 9, 10, 11, 12])]
        );
        // A record claiming to run past the head is skipped up to the head.
        let mut n = 0;
        let end = walk_ring(&data, t0, t0 + n1 + 10, &mut |_, _| n += 1);
        assert_eq!((end, n), (t0 + n1 + 10, 1));
    }

    #[test]
    fn closers_are_forgotten_after_a_while() {
        let mut c = Closers::default();
        let a: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        let b: SocketAddr = "1.2.3.4:443".parse().unwrap();
        c.note(Close {
            pid: 9,
            local: a,
            remote: b,
        });
        c.end_poll(3);
        assert_eq!(c.pid(a, b), Some(9));
        assert_eq!(c.pid(b, a), None);
        for _ in 0..3 {
            c.end_poll(3);
        }
        assert!(c.is_empty());
    }

    #[test]
    fn live_close_is_attributed_to_the_closing_process() {
        let mut t = match CloseTrace::open() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIPPED: close tracepoint unavailable: {e}");
                return;
            }
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let local = s.local_addr().unwrap();
        let (srv, _) = l.accept().unwrap();
        drop(s); // ESTABLISHED → FIN_WAIT1 in this process
        drop(srv);
        let mut seen = Vec::new();
        for _ in 0..50 {
            t.drain(&mut |c| seen.push(c));
            if seen.iter().any(|c| c.local == local) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let me = std::process::id();
        let mine = seen
            .iter()
            .find(|c| c.local == local)
            .unwrap_or_else(|| panic!("no close of {local} in {seen:?}"));
        assert_eq!(mine.pid, me);
        assert_eq!(mine.remote.port(), port);
        // The server side's close (CLOSE_WAIT → LAST_ACK) is ours too.
        assert!(seen
            .iter()
            .any(|c| c.local.port() == port && c.remote == local && c.pid == me));
    }
}
