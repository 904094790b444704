//! Loopback ports for test servers. Also included by path from other crates'
//! tests (`#[path = ".../tests/src/ports.rs"]`): one copy of the rule.

use std::sync::atomic::{AtomicU32, Ordering};

/// Ports handed out come from 20000..32000, below Linux's default ephemeral
/// range (32768..60999).
const LOW: u32 = 20_000;
const SPAN: u32 = 12_000;

/// A TCP port on 127.0.0.1 that a test server binds a moment later.
///
/// Asking the kernel for port 0 and letting it go races: that port lies in
/// the ephemeral range, and any outgoing connection (another test's client,
/// in the same binary or not) may take it before the server binds it. These
/// ports lie below that range, differ within the process, start at a place
/// that depends on the process id (binaries that run together start apart),
/// and are checked free.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(613);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + start.wrapping_add(n) % SPAN;
        let port = u16::try_from(port).expect("below 32000");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}
