//! Socket inode → pid, kept incrementally. A full scan of every process's
//! descriptors each second costs about 2 % of a core, so only inodes not yet
//! known are resolved, scanning likely owners first (processes started since
//! the last resolution, then processes that already own sockets), stopping
//! as soon as every wanted inode is found. Inodes nobody owns (yet) are
//! retried with exponential backoff.

use std::collections::{HashMap, HashSet};

use super::procfs::ProcFs;

#[derive(Default)]
pub struct InodeMap {
    by_inode: HashMap<u32, u32>,
    /// Processes known to own sockets, with the generation they were last
    /// seen owning one (most recent first when scanning).
    owners: HashMap<u32, u64>,
    new_pids: Vec<u32>,
    /// inode → (failed attempts, generation of the next attempt)
    backoff: HashMap<u32, (u32, u64)>,
    generation: u64,
    /// Descriptor directories read (for the benchmark and `stats`).
    pub scans: u64,
    scratch: Vec<u64>,
}

impl InodeMap {
    pub fn get(&self, inode: u32) -> Option<u32> {
        self.by_inode.get(&inode).copied()
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_inode.is_empty()
    }

    /// A process that started since the last resolution: scanned first.
    pub fn note_new_pid(&mut self, pid: u32) {
        self.new_pids.push(pid);
    }

    /// A process exited: its inodes are forgotten (the sockets it leaves
    /// behind keep the pid they were attributed to in the flow tracker).
    pub fn forget_pid(&mut self, pid: u32) {
        self.owners.remove(&pid);
        self.by_inode.retain(|_, p| *p != pid);
    }

    /// Keeps only inodes still alive (those in the latest dump).
    pub fn retain_alive(&mut self, alive: &HashSet<u32>) {
        self.by_inode.retain(|i, _| alive.contains(i));
        self.backoff.retain(|i, _| alive.contains(i));
    }

    /// A socket held by several processes (a descriptor inherited across
    /// fork, as with a shell's redirection) belongs to the topmost holder
    /// along the parent chain, normally the process that opened it: which
    /// holder happened to be scanned first must not decide (a shell's
    /// `sleep` child once took a whole upload that way).
    fn lift_to_oldest_holders(&mut self, found: &[(u32, u32)], procfs: &ProcFs) {
        let mut held: HashMap<u32, Vec<u64>> = HashMap::new();
        for &(ino, pid) in found {
            let mut owner = pid;
            // Bounded: a parent chain is short, and pids can be reused.
            for _ in 0..16 {
                let Some((_, ppid, _)) = procfs.stat(owner) else {
                    break;
                };
                if ppid <= 1 || ppid == owner {
                    break;
                }
                let inodes = held.entry(ppid).or_insert_with(|| {
                    let mut v = Vec::new();
                    procfs.socket_inodes(ppid, &mut v);
                    self.scans += 1;
                    v
                });
                if !inodes.contains(&u64::from(ino)) {
                    break;
                }
                owner = ppid;
            }
            if owner != pid {
                self.by_inode.insert(ino, owner);
                self.owners.insert(owner, self.generation);
            }
        }
    }

    /// Resolves `wanted` inodes (0 is never resolvable and ignored).
    /// `all_pids` is called only if the likely owners did not have them all.
    pub fn resolve(
        &mut self,
        wanted: &[u32],
        procfs: &ProcFs,
        all_pids: &mut dyn FnMut() -> Vec<u32>,
    ) {
        self.generation += 1;
        let g = self.generation;
        let mut missing: HashSet<u32> = wanted
            .iter()
            .copied()
            .filter(|i| *i != 0 && !self.by_inode.contains_key(i))
            .filter(|i| self.backoff.get(i).is_none_or(|(_, next)| *next <= g))
            .collect();
        if missing.is_empty() {
            self.new_pids.clear();
            return;
        }
        let mut tried: HashSet<u32> = HashSet::new();
        // (inode, pid) found in this resolution.
        let mut found: Vec<(u32, u32)> = Vec::new();
        let mut order: Vec<u32> = std::mem::take(&mut self.new_pids);
        let mut owners: Vec<(u32, u64)> = self.owners.iter().map(|(p, g)| (*p, *g)).collect();
        owners.sort_by_key(|o| std::cmp::Reverse(o.1));
        order.extend(owners.into_iter().map(|(p, _)| p));
        let mut scan_list = |pids: Vec<u32>, this: &mut InodeMap, missing: &mut HashSet<u32>| {
            for pid in pids {
                if missing.is_empty() {
                    return;
                }
                if !tried.insert(pid) {
                    continue;
                }
                this.scratch.clear();
                procfs.socket_inodes(pid, &mut this.scratch);
                this.scans += 1;
                let mut owns = false;
                for ino in this.scratch.drain(..) {
                    let Ok(ino) = u32::try_from(ino) else {
                        continue;
                    };
                    owns = true;
                    this.by_inode.entry(ino).or_insert(pid);
                    if missing.remove(&ino) {
                        found.push((ino, pid));
                    }
                }
                if owns {
                    this.owners.insert(pid, g);
                }
            }
        };
        scan_list(order, self, &mut missing);
        if !missing.is_empty() {
            scan_list(all_pids(), self, &mut missing);
        }
        self.lift_to_oldest_holders(&found, procfs);
        for ino in missing {
            let e = self.backoff.entry(ino).or_insert((0, g));
            e.0 += 1;
            e.1 = g + (1u64 << e.0.min(6));
        }
        for ino in wanted {
            if self.by_inode.contains_key(ino) {
                self.backoff.remove(ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell opens a connection and forks a child that inherits it; the
    /// child is scanned first (it is new), yet the shell owns the socket.
    #[test]
    fn an_inherited_socket_belongs_to_the_process_that_opened_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 5 & echo $!; read -t 5 <&0; kill $! 2>/dev/null"
        );
        let mut shell = std::process::Command::new("/bin/bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _peer = l.accept().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(shell.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        let procfs = ProcFs::default();
        let mut shell_inodes = Vec::new();
        procfs.socket_inodes(shell.id(), &mut shell_inodes);
        let mut child_inodes = Vec::new();
        // The child may still be between fork and exec: wait for its fd.
        for _ in 0..100 {
            child_inodes.clear();
            procfs.socket_inodes(child, &mut child_inodes);
            if !child_inodes.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ino = *shell_inodes
            .iter()
            .find(|i| child_inodes.contains(i))
            .expect("the child holds the shell's socket");
        let ino = u32::try_from(ino).unwrap();
        let mut m = InodeMap::default();
        m.note_new_pid(child);
        m.resolve(&[ino], &procfs, &mut || panic!("found among new processes"));
        assert_eq!(m.get(ino), Some(shell.id()));
        drop(shell.stdin.take());
        let _ = shell.wait();
    }

    #[test]
    fn resolves_own_socket_and_backs_off_on_unknown() {
        let procfs = ProcFs::default();
        let me = std::process::id();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut inodes = Vec::new();
        procfs.socket_inodes(me, &mut inodes);
        let ino = u32::try_from(*inodes.last().unwrap()).unwrap();
        let mut m = InodeMap::default();
        m.note_new_pid(me);
        let mut full_scans = 0;
        m.resolve(&[ino], &procfs, &mut || {
            full_scans += 1;
            vec![]
        });
        assert_eq!(m.get(ino), Some(me));
        assert_eq!(full_scans, 0, "found among new pids, no full scan");
        // Unknown inode: one full scan, then backoff (no scan next time).
        let bogus = u32::MAX - 3;
        let mut calls = 0;
        m.resolve(&[bogus], &procfs, &mut || {
            calls += 1;
            vec![me]
        });
        m.resolve(&[bogus], &procfs, &mut || {
            calls += 1;
            vec![me]
        });
        assert_eq!(calls, 1);
        m.forget_pid(me);
        assert_eq!(m.get(ino), None);
        drop(l);
    }
}
