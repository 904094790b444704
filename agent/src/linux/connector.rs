//! The netlink proc connector: exec/fork/exit notifications from the kernel.
//! A dedicated thread blocks on the socket and reads `/proc/PID` right at
//! exec, so even processes that live a few milliseconds are usually enriched.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use outflow_core::Timestamp;

use super::netlink::{self, rd_u32, rd_u64, NetlinkSocket};
use super::procfs::{monotonic_ns_to_wall, ProcFs, ProcInfo};

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// Size of `struct cn_msg` (the proc event follows it).
const CN_MSG_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub enum ProcEvent {
    /// A new program image; `info` is `None` when the process was gone before
    /// `/proc` could be read.
    Exec {
        pid: u32,
        ts: Timestamp,
        info: Option<Box<ProcInfo>>,
    },
    /// A new process (not a thread) that still runs its parent's image.
    Fork { pid: u32, ppid: u32, ts: Timestamp },
    /// A process (thread-group leader) exited.
    Exit { pid: u32, ts: Timestamp },
    /// The kernel dropped notifications (socket buffer overrun): rescan /proc.
    Overrun,
}

pub struct ProcConnector {
    rx: Receiver<ProcEvent>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// Decodes one proc connector message payload (after the netlink header).
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u32, u32, u32, u32)> {
    let p = CN_MSG_LEN;
    let what = rd_u32(payload, p)?;
    let ts = rd_u64(payload, p + 8)?;
    let d = p + 16;
    Some((
        what,
        ts,
        rd_u32(payload, d).unwrap_or(0),
        rd_u32(payload, d + 4).unwrap_or(0),
        rd_u32(payload, d + 8).unwrap_or(0),
        rd_u32(payload, d + 12).unwrap_or(0),
    ))
}

fn subscribe_msg(op: u32) -> Vec<u8> {
    let mut cn = Vec::with_capacity(CN_MSG_LEN + 4);
    cn.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    cn.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    cn.extend_from_slice(&0u32.to_ne_bytes()); // seq
    cn.extend_from_slice(&0u32.to_ne_bytes()); // ack
    cn.extend_from_slice(&4u16.to_ne_bytes()); // len
    cn.extend_from_slice(&0u16.to_ne_bytes()); // flags
    cn.extend_from_slice(&op.to_ne_bytes());
    netlink::build_msg(netlink::NLMSG_DONE, 0, 0, &cn)
}

impl ProcConnector {
    /// Subscribes (needs CAP_NET_ADMIN) and starts the reader thread.
    pub fn start() -> io::Result<ProcConnector> {
        let sock = NetlinkSocket::open(NETLINK_CONNECTOR, CN_IDX_PROC)?;
        sock.set_rcvbuf(4 * 1024 * 1024);
        sock.send(&subscribe_msg(PROC_CN_MCAST_LISTEN))?;
        sock.set_recv_timeout(Duration::from_millis(250));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("proc-connector".into())
            .spawn(move || reader(sock, tx, stop2))?;
        Ok(ProcConnector {
            rx,
            stop,
            handle: Some(handle),
        })
    }

    /// Everything received since the last call.
    pub fn drain(&self, out: &mut Vec<ProcEvent>) {
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
    }

    /// False once the reader thread has stopped (socket error).
    pub fn alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for ProcConnector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn reader(sock: NetlinkSocket, tx: Sender<ProcEvent>, stop: Arc<AtomicBool>) {
    let procfs = ProcFs::default();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::warn!("proc connector overrun: events lost, a /proc rescan will catch up");
                if tx.send(ProcEvent::Overrun).is_err() {
                    break;
                }
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::error!("proc connector stopped: {e}; falling back to /proc rescans");
                break;
            }
        };
        for m in netlink::messages(&buf[..n]) {
            let Some((what, ts_ns, a, b, c, d)) = decode(m.payload) else {
                continue;
            };
            let ts = monotonic_ns_to_wall(ts_ns);
            let ev = match what {
                PROC_EVENT_EXEC if a == b => {
                    let info = procfs.info(a).map(Box::new);
                    ProcEvent::Exec { pid: a, ts, info }
                }
                // fork: parent_pid, parent_tgid, child_pid, child_tgid
                PROC_EVENT_FORK if c == d => ProcEvent::Fork {
                    pid: c,
                    ppid: b,
                    ts,
                },
                PROC_EVENT_EXIT if a == b => ProcEvent::Exit { pid: a, ts },
                _ => continue,
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    }
    let _ = sock.send(&subscribe_msg(PROC_CN_MCAST_IGNORE));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_exec_payload() {
        let mut p = vec![0u8; CN_MSG_LEN];
        p.extend_from_slice(&PROC_EVENT_EXEC.to_ne_bytes());
        p.extend_from_slice(&3u32.to_ne_bytes());
        p.extend_from_slice(&123_456_789u64.to_ne_bytes());
        p.extend_from_slice(&42u32.to_ne_bytes());
        p.extend_from_slice(&42u32.to_ne_bytes());
        let (what, ts, a, b, _, _) = decode(&p).unwrap();
        assert_eq!((what, ts, a, b), (PROC_EVENT_EXEC, 123_456_789, 42, 42));
        assert!(decode(&p[..10]).is_none());
    }

    #[test]
    fn sees_a_child_exec_and_exit_when_privileged() {
        let Ok(conn) = ProcConnector::start() else {
            eprintln!("SKIPPED: proc connector unavailable (needs CAP_NET_ADMIN)");
            return;
        };
        std::thread::sleep(Duration::from_millis(100));
        let child = std::process::Command::new("/bin/sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        std::thread::sleep(Duration::from_millis(300));
        let mut evs = Vec::new();
        conn.drain(&mut evs);
        let exec = evs.iter().find_map(|e| match e {
            ProcEvent::Exec { pid: p, info, .. } if *p == pid => Some(info.clone()),
            _ => None,
        });
        let exec = exec.expect("exec event for the child");
        let info = exec.expect("enriched at exec");
        assert_eq!(
            info.exe.as_deref().map(|e| e.ends_with("sleep")),
            Some(true)
        );
        assert!(evs
            .iter()
            .any(|e| matches!(e, ProcEvent::Exit { pid: p, .. } if *p == pid)));
    }
}
