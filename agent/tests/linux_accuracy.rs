//! Accuracy of the Linux probes with real traffic on this machine: a client
//! process uploads N bytes to a local TCP server and must be reported with
//! its pid, app, destination and bytes out/in within 0.1 %; the same over a
//! veth pair into another network namespace (a real link: MTU-sized
//! segments, a non-loopback destination), exact; a connection that sends
//! 1 MiB and closes between two samples must still be reported
//! (socket-destroy notifications) and attributed to the process that closed
//! it (close tracepoint).
//!
//! Needs root (proc connector, destroy notifications); without it each test
//! says SKIPPED and returns. CI runs as root.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use outflow_agent::linux::LinuxSource;
use outflow_agent::source::{now, Source};
use outflow_agent::AgentConfig;
use outflow_core::telemetry::Event;

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "SKIPPED: needs root (CAP_NET_ADMIN for the proc connector and destroy notifications)"
        );
    }
    root && std::path::Path::new("/bin/bash").exists()
}

fn source() -> LinuxSource {
    let cfg = AgentConfig {
        capture: false,
        output: Some("-".into()),
        ..Default::default()
    };
    LinuxSource::new("test-host", &cfg).expect("linux source")
}

fn poll_for(src: &mut LinuxSource, d: Duration, every: Duration, out: &mut Vec<Event>) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        src.poll(now(), out).unwrap();
        std::thread::sleep(every);
    }
}

/// (bytes_out, bytes_in) of `pid` towards `port` on loopback.
fn sum(events: &[Event], pid: Option<u32>, port: u16) -> (u64, u64) {
    sum_to(events, pid, "127.0.0.1".parse().unwrap(), port)
}

/// (bytes_out, bytes_in) of `pid` towards `ip`:`port`.
fn sum_to(events: &[Event], pid: Option<u32>, ip: IpAddr, port: u16) -> (u64, u64) {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n)
                if n.dst_port == port && n.dst_ip == ip && pid.is_none_or(|p| p == n.pid) =>
            {
                Some((n.bytes_out, n.bytes_in))
            }
            _ => None,
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

#[test]
fn upload_is_attributed_to_the_right_process_with_exact_bytes() {
    if !privileged() {
        return;
    }
    const N: u64 = 5 * 1024 * 1024 + 1234;
    const M: u64 = 70_000;
    let mut src = source();
    let mut events = Vec::new();
    src.poll(now(), &mut events).unwrap();

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < N {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed early");
            got += n as u64;
        }
        s.write_all(&vec![b'r'; M as usize]).unwrap();
        // Drain until the client closes.
        while s.read(&mut buf).unwrap_or(0) > 0 {}
        (got, peer.port())
    });
    // The client: bash with /dev/tcp, alive across several samples.
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; head -c {N} /dev/zero >&3; head -c {M} <&3 >/dev/null; sleep 1.2; exec 3>&-"
    );
    let mut child = Command::new("/bin/bash")
        .arg("-c")
        .arg(&script)
        .spawn()
        .unwrap();
    let pid = child.id();
    poll_for(
        &mut src,
        Duration::from_millis(2500),
        Duration::from_millis(200),
        &mut events,
    );
    assert!(child.wait().unwrap().success());
    let (got, client_port) = server.join().unwrap();
    assert_eq!(got, N);
    poll_for(
        &mut src,
        Duration::from_millis(800),
        Duration::from_millis(200),
        &mut events,
    );

    let start = events.iter().find_map(|e| match e {
        Event::ProcessStart(p) if p.pid == pid => Some(p.clone()),
        _ => None,
    });
    let start = start.expect("process_start of the client");
    assert_eq!(start.name, "bash");
    assert!(start.cmdline.as_deref().unwrap_or("").contains("/dev/tcp"));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::ProcessEnd(p) if p.pid == pid)));

    let (out, inb) = sum(&events, Some(pid), port);
    eprintln!("client pid {pid}: reported out={out} (sent {N}), in={inb} (received {M})");
    for e in &events {
        match e {
            Event::Net(n) if n.dst_port == port => eprintln!("  net {:?}", n),
            Event::ProcessStart(p) if p.pid == pid || p.ppid == Some(pid) => {
                eprintln!("  start pid {} ppid {:?} {}", p.pid, p.ppid, p.name)
            }
            _ => {}
        }
    }
    let tol = N / 1000;
    assert!(out.abs_diff(N) <= tol, "bytes_out {out} vs {N}");
    assert!(inb.abs_diff(M) <= M / 1000 + 2, "bytes_in {inb} vs {M}");
    // Nothing of this connection went to another pid.
    let (all_out, _) = sum(&events, None, port);
    assert_eq!(all_out, out, "every byte attributed to the client");
    // The server side (this test process) sees the mirror image.
    let me = std::process::id();
    let (s_out, s_in) = sum(&events, Some(me), client_port);
    if (s_out, s_in) != (M, N) {
        for e in &events {
            if let Event::Net(n) = e {
                if n.dst_port == client_port || n.dst_port == port {
                    eprintln!("{}", e.to_json_line());
                }
            }
        }
    }
    assert_eq!((s_out, s_in), (M, N));
}

#[test]
fn short_lived_connection_is_reported_from_its_destroy_notification() {
    if !privileged() {
        return;
    }
    const N: u64 = 1024 * 1024;
    let mut src = source();
    let mut events = Vec::new();
    src.poll(now(), &mut events).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let t0 = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        (got, t0.elapsed())
    });
    let script = format!("head -c {N} /dev/zero > /dev/tcp/127.0.0.1/{port}");
    let mut child = Command::new("/bin/bash")
        .arg("-c")
        .arg(&script)
        .spawn()
        .unwrap();
    let bash = child.id();
    assert!(child.wait().unwrap().success());
    let (got, lifetime) = server.join().unwrap();
    assert_eq!(got, N);
    eprintln!("connection lived {lifetime:?} between two samples");
    assert!(
        lifetime < Duration::from_millis(50),
        "connection should be short-lived: {lifetime:?}"
    );
    // Let the socket be destroyed (FIN handshake), then sample once.
    std::thread::sleep(Duration::from_millis(200));
    src.poll(now(), &mut events).unwrap();
    let (out, _) = sum(&events, None, port);
    eprintln!("short-lived connection reported with {out} bytes out");
    assert!(out >= N, "reported {out} < {N}");
    assert!(out <= N + 2, "no double counting: {out}");
    // Never dumped, so no inode: attributed to the process that closed it
    // (the close tracepoint), which is bash or the child it ran `head` in.
    if src.stats().attributed_by_close == 0 && !close_trace_available() {
        eprintln!("SKIPPED attribution check: close tracepoint unavailable (pid 0 expected)");
        return;
    }
    let pids: std::collections::BTreeSet<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Net(n) if n.dst_port == port => Some(n.pid),
            _ => None,
        })
        .collect();
    eprintln!("short-lived connection attributed to {pids:?} (bash {bash})");
    assert_eq!(pids.len(), 1, "one owner: {pids:?}");
    let pid = *pids.iter().next().unwrap();
    assert_ne!(pid, 0, "attributed, not pid 0");
    let ours = pid == bash
        || events
            .iter()
            .any(|e| matches!(e, Event::ProcessStart(p) if p.pid == pid && p.ppid == Some(bash)));
    assert!(ours, "pid {pid} is bash ({bash}) or its child");
    assert!(src.stats().attributed_by_close >= 1);
}

fn close_trace_available() -> bool {
    outflow_agent::linux::closers::CloseTrace::open().is_ok()
}

/// A network namespace held by a sleeping `unshare -n` process, joined to
/// this one by a veth pair (`10.213.X.1` here, `10.213.X.2` there). Removed
/// with the holder (the veth pair goes with its namespace).
struct VethPeer {
    holder: std::process::Child,
    here: IpAddr,
    there: IpAddr,
}

impl VethPeer {
    fn create() -> Result<VethPeer, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let o = Command::new(args[0])
                .args(&args[1..])
                .output()
                .map_err(|e| format!("{}: {e}", args[0]))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        };
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "300"])
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let hp = holder.id().to_string();
        let peer = VethPeer {
            holder,
            here: IpAddr::from([10, 213, (std::process::id() % 250) as u8, 1]),
            there: IpAddr::from([10, 213, (std::process::id() % 250) as u8, 2]),
        };
        // Wait until the holder is in its own namespace.
        let mine = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
        for _ in 0..100 {
            if std::fs::read_link(format!("/proc/{hp}/ns/net")).is_ok_and(|n| n != mine) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (h, t) = (
            format!("ofv{}h", std::process::id() % 100_000),
            format!("ofv{}t", std::process::id() % 100_000),
        );
        let (here, there) = (format!("{}/24", peer.here), format!("{}/24", peer.there));
        run(&["ip", "link", "add", &h, "type", "veth", "peer", "name", &t])?;
        let r = (|| {
            run(&["ip", "link", "set", &t, "netns", &hp])?;
            run(&["ip", "addr", "add", &here, "dev", &h])?;
            run(&["ip", "link", "set", &h, "up"])?;
            let ns = ["nsenter", "-t", &hp, "-n", "ip"];
            run(&[&ns[..], &["addr", "add", &there, "dev", &t]].concat())?;
            run(&[&ns[..], &["link", "set", &t, "up"]].concat())?;
            run(&[&ns[..], &["link", "set", "lo", "up"]].concat())
        })();
        if let Err(e) = r {
            let _ = run(&["ip", "link", "del", &h]);
            return Err(e);
        }
        Ok(peer)
    }

    /// A listener on the far side (bound from a thread that joined the
    /// namespace; the socket stays there once the thread ends).
    fn listen(&self) -> TcpListener {
        let ns = format!("/proc/{}/ns/net", self.holder.id());
        let there = self.there;
        std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only, with a namespace fd we hold.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind((there, 0)).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for VethPeer {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[test]
fn upload_over_a_veth_pair_into_another_namespace_is_exact() {
    if !privileged() {
        return;
    }
    let peer = match VethPeer::create() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIPPED: cannot set up a network namespace with a veth pair: {e}");
            return;
        }
    };
    // Bigger than any segment or window: many MTU-sized (1500) packets
    // over a real link driver, not loopback's 64 KiB.
    const N: u64 = 3 * 1024 * 1024 + 777;
    const M: u64 = 50_000;
    let mut src = source();
    let mut events = Vec::new();
    src.poll(now(), &mut events).unwrap();
    let l = peer.listen();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < N {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "client closed early");
            got += n as u64;
        }
        s.write_all(&vec![b'r'; M as usize]).unwrap();
        while s.read(&mut buf).unwrap_or(0) > 0 {}
        got
    });
    let script = format!(
        "exec 3<>/dev/tcp/{}/{port}; head -c {N} /dev/zero >&3; head -c {M} <&3 >/dev/null; sleep 1.2; exec 3>&-",
        peer.there
    );
    let mut child = Command::new("/bin/bash")
        .arg("-c")
        .arg(&script)
        .spawn()
        .unwrap();
    let pid = child.id();
    poll_for(
        &mut src,
        Duration::from_millis(2500),
        Duration::from_millis(200),
        &mut events,
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(server.join().unwrap(), N);
    poll_for(
        &mut src,
        Duration::from_millis(800),
        Duration::from_millis(200),
        &mut events,
    );
    let (out, inb) = sum_to(&events, Some(pid), peer.there, port);
    eprintln!(
        "veth: client pid {pid} -> {}:{port}: reported out={out} (sent {N}), in={inb} (received {M})",
        peer.there
    );
    // Exact, but for the one byte a retransmitted SYN can add (see
    // docs/agent.md, byte accuracy).
    assert!(
        (N..=N + 1).contains(&out),
        "bytes out over the veth link: {out}"
    );
    assert!(inb.abs_diff(M) <= 1, "bytes in over the veth link: {inb}");
    let (all_out, _) = sum_to(&events, None, peer.there, port);
    assert_eq!(all_out, out, "every byte attributed to the client");
    // The far side lives in another namespace: invisible to this agent.
    let far = events
        .iter()
        .filter(|e| matches!(e, Event::Net(n) if n.dst_ip == peer.here))
        .count();
    assert_eq!(far, 0, "the server side is not this namespace's");
}
