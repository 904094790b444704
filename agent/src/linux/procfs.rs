//! Reading `/proc`: process details for `process_start`, socket inodes of a
//! process's descriptors, the pid list, and clock conversions. Every read
//! tolerates the process vanishing half-way (returns `None`/empty, never panics).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use outflow_core::Timestamp;

/// What `/proc/PID` says about a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// `comm` (the kernel's 15-character name).
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub uid: Option<u32>,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22):
    /// with the pid it identifies a process across pid reuse.
    pub start_ticks: u64,
}

impl ProcInfo {
    /// The contract's `name`: the executable's basename, else `comm`.
    pub fn name(&self) -> String {
        match &self.exe {
            Some(e) => e.rsplit('/').next().unwrap_or(e).to_string(),
            None => self.comm.clone(),
        }
    }
}

/// Parses `/proc/PID/stat`: (comm, ppid, start_ticks). `comm` may hold spaces
/// and parentheses, so split at the last `)`.
pub fn parse_stat(s: &str) -> Option<(String, u32, u64)> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // rest[0] = state (field 3), ppid = field 4, starttime = field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

pub struct ProcFs {
    root: PathBuf,
    users: UserNames,
    clk_tck: i64,
}

impl Default for ProcFs {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> ProcFs {
        // SAFETY: sysconf has no memory-safety preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcFs {
            root: root.into(),
            users: UserNames::new("/etc/passwd"),
            clk_tck: if tck > 0 { tck as i64 } else { 100 },
        }
    }

    fn pid_path(&self, pid: u32, leaf: &str) -> PathBuf {
        let mut p = self.root.join(pid.to_string());
        if !leaf.is_empty() {
            p.push(leaf);
        }
        p
    }

    /// Reads just the stat line (cheap): (comm, ppid, start_ticks).
    pub fn stat(&self, pid: u32) -> Option<(String, u32, u64)> {
        let s = fs::read_to_string(self.pid_path(pid, "stat")).ok()?;
        parse_stat(&s)
    }

    /// Everything for a `process_start`; `None` when the process is gone.
    pub fn info(&self, pid: u32) -> Option<ProcInfo> {
        let (comm, ppid, start_ticks) = self.stat(pid)?;
        let exe = fs::read_link(self.pid_path(pid, "exe")).ok().map(|p| {
            let s = p.to_string_lossy().into_owned();
            s.strip_suffix(" (deleted)")
                .map(str::to_string)
                .unwrap_or(s)
        });
        let cmdline = fs::read(self.pid_path(pid, "cmdline")).ok().and_then(|b| {
            let s: String = String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            (!s.is_empty()).then_some(s)
        });
        let uid = fs::metadata(self.pid_path(pid, "")).ok().map(|m| m.uid());
        // The process may have exited and its pid been reused while we read:
        // the start time must not have changed.
        match self.stat(pid) {
            Some((_, _, st)) if st == start_ticks => {}
            _ => return None,
        }
        Some(ProcInfo {
            pid,
            ppid,
            comm,
            exe,
            cmdline,
            uid,
            start_ticks,
        })
    }

    pub fn user_name(&mut self, uid: u32) -> Option<String> {
        self.users.name(uid)
    }

    /// Every numeric entry of `/proc`.
    pub fn pids(&self) -> Vec<u32> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Socket inodes among a process's descriptors (empty when gone or denied).
    pub fn socket_inodes(&self, pid: u32, out: &mut Vec<u64>) {
        let Ok(rd) = fs::read_dir(self.pid_path(pid, "fd")) else {
            return;
        };
        let mut buf = [0u8; 64];
        for e in rd.flatten() {
            if let Some(ino) = read_socket_link(&e.path(), &mut buf) {
                out.push(ino);
            }
        }
    }

    /// Wall time of a start expressed in ticks since boot.
    pub fn ticks_to_wall(&self, ticks: u64) -> Timestamp {
        let since_boot_us = (ticks as i64).saturating_mul(1_000_000) / self.clk_tck;
        let boot = wall_us() - clock_us(libc::CLOCK_BOOTTIME);
        Timestamp(boot + since_boot_us)
    }
}

/// `socket:[12345]` → 12345, with one readlink(2) into a stack buffer.
fn read_socket_link(path: &Path, buf: &mut [u8; 64]) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: c is NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::readlink(
            c.as_ptr() as *const libc::c_char,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    let s = buf.get(..n as usize)?;
    let s = s.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(s).ok()?.parse().ok()
}

pub fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[allow(clippy::unnecessary_cast)] // time_t is not i64 everywhere
pub fn clock_us(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i64 * 1_000_000 + ts.tv_nsec as i64 / 1000
}

/// Converts a CLOCK_MONOTONIC nanosecond stamp (proc connector) to wall time.
pub fn monotonic_ns_to_wall(ns: u64) -> Timestamp {
    let now_mono = clock_us(libc::CLOCK_MONOTONIC);
    Timestamp(wall_us() - (now_mono - (ns / 1000) as i64))
}

/// uid → user name from `/etc/passwd`, reloaded when the file changes.
pub struct UserNames {
    path: PathBuf,
    mtime: Option<SystemTime>,
    map: HashMap<u32, String>,
}

impl UserNames {
    pub fn new(path: impl Into<PathBuf>) -> UserNames {
        UserNames {
            path: path.into(),
            mtime: None,
            map: HashMap::new(),
        }
    }

    pub fn name(&mut self, uid: u32) -> Option<String> {
        let mtime = fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if mtime != self.mtime {
            self.mtime = mtime;
            self.map = fs::read_to_string(&self.path)
                .map(|s| parse_passwd(&s))
                .unwrap_or_default();
        }
        self.map.get(&uid).cloned()
    }
}

pub fn parse_passwd(s: &str) -> HashMap<u32, String> {
    s.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let s = "1234 (my (odd) prog) S 77 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(
            parse_stat(s),
            Some(("my (odd) prog".to_string(), 77, 98765))
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn passwd() {
        let m = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n#c\nbad\nalice:x:1000:1000::/h:/bin/sh\n",
        );
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn reads_own_process_and_sockets() {
        let p = ProcFs::default();
        let me = std::process::id();
        let info = p.info(me).expect("own /proc entry");
        assert_eq!(info.pid, me);
        assert!(info.exe.is_some());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut inodes = Vec::new();
        p.socket_inodes(me, &mut inodes);
        assert!(!inodes.is_empty(), "a listening socket must show up");
        drop(l);
        // Start time converts to a wall time in the past.
        let t = p.ticks_to_wall(info.start_ticks);
        assert!(t.0 <= wall_us() + 1_000_000 && t.0 > wall_us() - 86_400_000_000 * 365);
        assert!(p.info(u32::MAX - 1).is_none());
    }
}
