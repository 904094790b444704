//! Raft log storage: raft-rs's `Storage` trait over an in-memory cache of the
//! log, written through to a [`Disk`] (sled in production, memory in the
//! cluster simulation). Reads never touch the disk; every write reaches the
//! disk before the cache, and `sync` writes are durable when they return.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::sync::{Arc, Mutex, RwLock};

/// A storage failure; the node stops rather than diverge.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("raft storage I/O error: {0}")]
    Sled(#[from] sled::Error),
    #[error("raft log file I/O error: {0}")]
    Io(String),
    #[error("raft storage holds an undecodable {what}: {source}")]
    Decode {
        what: &'static str,
        source: protobuf::ProtobufError,
    },
    #[error("raft storage is inconsistent: {0}")]
    Inconsistent(String),
}

/// One mutation of the persisted log, applied in order.
#[derive(Debug, Clone)]
pub enum LogOp {
    /// A snapshot from the leader: replaces the whole log.
    InstallSnapshot(Snapshot),
    /// A snapshot this node took of its own state; the log stays.
    SaveSnapshot(Snapshot),
    /// Entries to append; any existing entries from the first index on are
    /// replaced (a new leader overwrote them).
    Append(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    /// Drop entries below this index.
    Compact(u64),
}

/// Everything the log persists.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The latest snapshot (empty until the first one).
    pub snapshot: Snapshot,
    /// Index and term of the last entry dropped from the log (0, 0 if none).
    pub truncated_index: u64,
    pub truncated_term: u64,
    /// Contiguous entries after `truncated_index`.
    pub entries: Vec<Entry>,
}

impl Persisted {
    pub fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.truncated_index, |e| e.index)
    }

    pub fn term(&self, idx: u64) -> Option<u64> {
        if idx == self.truncated_index {
            return Some(self.truncated_term);
        }
        if idx < self.first_index() || idx > self.last_index() {
            return None;
        }
        self.entries
            .get((idx - self.first_index()) as usize)
            .map(|e| e.term)
    }

    /// Apply one mutation to this in-memory image.
    pub fn apply(&mut self, op: &LogOp) -> Result<(), DiskError> {
        match op {
            LogOp::InstallSnapshot(s) => {
                let m = s.get_metadata();
                self.entries.clear();
                self.truncated_index = m.index;
                self.truncated_term = m.term;
                self.hard_state.term = self.hard_state.term.max(m.term);
                self.hard_state.commit = self.hard_state.commit.max(m.index);
                self.conf_state = m.get_conf_state().clone();
                self.snapshot = s.clone();
            }
            LogOp::SaveSnapshot(s) => self.snapshot = s.clone(),
            LogOp::Append(ents) => {
                let Some(first) = ents.first() else {
                    return Ok(());
                };
                if first.index <= self.truncated_index {
                    return Err(DiskError::Inconsistent(format!(
                        "append at {} overwrites the compacted log (truncated at {})",
                        first.index, self.truncated_index
                    )));
                }
                if first.index > self.last_index() + 1 {
                    return Err(DiskError::Inconsistent(format!(
                        "append at {} leaves a gap after {}",
                        first.index,
                        self.last_index()
                    )));
                }
                let keep = (first.index - self.first_index()) as usize;
                self.entries.truncate(keep);
                self.entries.extend_from_slice(ents);
            }
            LogOp::HardState(hs) => self.hard_state = hs.clone(),
            LogOp::ConfState(cs) => self.conf_state = cs.clone(),
            LogOp::Compact(idx) => {
                let idx = (*idx).min(self.last_index() + 1);
                if idx <= self.first_index() {
                    return Ok(());
                }
                let term = self.term(idx - 1).unwrap_or(self.truncated_term);
                let drop = (idx - self.first_index()) as usize;
                self.entries.drain(..drop);
                self.truncated_index = idx - 1;
                self.truncated_term = term;
            }
        }
        Ok(())
    }
}

/// Where the log is persisted.
pub trait Disk: Send + Sync + 'static {
    /// Everything persisted so far (on start and after a crash).
    fn load(&self) -> Result<Persisted, DiskError>;
    /// Apply `ops` atomically; with `sync`, durably before returning.
    fn write(&mut self, ops: &[LogOp], sync: bool) -> Result<(), DiskError>;
    /// Make every earlier write durable.
    fn sync(&mut self) -> Result<(), DiskError>;
}

/// A disk in memory, shared by clones: the cluster simulation keeps one
/// across a node's crash and restart, like a real disk.
#[derive(Clone, Default)]
pub struct MemDisk {
    inner: Arc<Mutex<Persisted>>,
}

impl MemDisk {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Disk for MemDisk {
    fn load(&self) -> Result<Persisted, DiskError> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.clone())
    }

    fn write(&mut self, ops: &[LogOp], _sync: bool) -> Result<(), DiskError> {
        let mut p = self.inner.lock().map_err(|_| poisoned())?;
        for op in ops {
            p.apply(op)?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
}

fn poisoned() -> DiskError {
    DiskError::Inconsistent("a thread panicked while holding the log".into())
}

/// The log in a sled tree: `e` + big-endian index → entry, plus hard state,
/// conf state, snapshot and truncation point under fixed keys.
pub struct SledDisk {
    db: sled::Db,
    tree: sled::Tree,
    first: u64,
    last: u64,
}

const K_HS: &[u8] = b"m/hs";
const K_CS: &[u8] = b"m/cs";
const K_SNAP: &[u8] = b"m/snap";
const K_TRUNC: &[u8] = b"m/trunc";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn decode<M: protobuf::Message>(what: &'static str, bytes: &[u8]) -> Result<M, DiskError> {
    M::parse_from_bytes(bytes).map_err(|source| DiskError::Decode { what, source })
}

fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Encoding an in-memory protobuf message into a Vec cannot fail.
    m.write_to_bytes().unwrap_or_default()
}

impl SledDisk {
    /// Open (or create) the log under `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self, DiskError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            .open()?;
        let tree = db.open_tree("raft")?;
        let mut d = SledDisk {
            db,
            tree,
            first: 1,
            last: 0,
        };
        let p = d.load()?;
        d.first = p.first_index();
        d.last = p.last_index();
        Ok(d)
    }

    /// Bytes on disk (for metrics).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl Disk for SledDisk {
    fn load(&self) -> Result<Persisted, DiskError> {
        let mut p = Persisted::default();
        if let Some(v) = self.tree.get(K_HS)? {
            p.hard_state = decode("hard state", &v)?;
        }
        if let Some(v) = self.tree.get(K_CS)? {
            p.conf_state = decode("conf state", &v)?;
        }
        if let Some(v) = self.tree.get(K_SNAP)? {
            p.snapshot = decode("snapshot", &v)?;
        }
        if let Some(v) = self.tree.get(K_TRUNC)? {
            if v.len() != 16 {
                return Err(DiskError::Inconsistent(
                    "truncation marker is not 16 bytes".into(),
                ));
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&v[..8]);
            p.truncated_index = u64::from_be_bytes(a);
            a.copy_from_slice(&v[8..]);
            p.truncated_term = u64::from_be_bytes(a);
        }
        for kv in self.tree.range(entry_key(0)..=entry_key(u64::MAX)) {
            let (_, v) = kv?;
            let e: Entry = decode("log entry", &v)?;
            if e.index <= p.truncated_index {
                continue; // left over from a compaction cut short
            }
            let expected = p.last_index() + 1;
            if e.index != expected {
                return Err(DiskError::Inconsistent(format!(
                    "log entry {} found where {} was expected",
                    e.index, expected
                )));
            }
            p.entries.push(e);
        }
        Ok(p)
    }

    fn write(&mut self, ops: &[LogOp], sync: bool) -> Result<(), DiskError> {
        let mut batch = sled::Batch::default();
        let (mut first, mut last) = (self.first, self.last);
        let trunc = |b: &mut sled::Batch, index: u64, term: u64| {
            let mut v = Vec::with_capacity(16);
            v.extend_from_slice(&index.to_be_bytes());
            v.extend_from_slice(&term.to_be_bytes());
            b.insert(K_TRUNC, v);
        };
        for op in ops {
            match op {
                LogOp::InstallSnapshot(s) => {
                    for i in first..=last {
                        batch.remove(&entry_key(i));
                    }
                    let m = s.get_metadata();
                    batch.insert(K_SNAP, encode(s));
                    batch.insert(K_CS, encode(m.get_conf_state()));
                    trunc(&mut batch, m.index, m.term);
                    first = m.index + 1;
                    last = m.index;
                }
                LogOp::SaveSnapshot(s) => batch.insert(K_SNAP, encode(s)),
                LogOp::Append(ents) => {
                    let Some(f) = ents.first() else { continue };
                    for i in f.index..=last {
                        batch.remove(&entry_key(i));
                    }
                    for e in ents {
                        batch.insert(&entry_key(e.index), encode(e));
                    }
                    last = ents.last().map_or(last, |e| e.index);
                }
                LogOp::HardState(hs) => batch.insert(K_HS, encode(hs)),
                LogOp::ConfState(cs) => batch.insert(K_CS, encode(cs)),
                LogOp::Compact(idx) => {
                    let idx = (*idx).min(last + 1);
                    if idx <= first {
                        continue;
                    }
                    let term = match self.tree.get(entry_key(idx - 1))? {
                        Some(v) => decode::<Entry>("log entry", &v)?.term,
                        None => {
                            return Err(DiskError::Inconsistent(format!(
                                "cannot compact to {idx}: entry {} is missing",
                                idx - 1
                            )))
                        }
                    };
                    for i in first..idx {
                        batch.remove(&entry_key(i));
                    }
                    trunc(&mut batch, idx - 1, term);
                    first = idx;
                }
            }
        }
        self.tree.apply_batch(batch)?;
        if sync {
            self.tree.flush()?;
        }
        self.first = first;
        self.last = last;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.tree.flush()?;
        Ok(())
    }
}

/// raft-rs `Storage` over the cached log; clones share one log. Writes are
/// staged into the cache first (raft-rs reads entries back from storage as
/// soon as a ready is advanced) and reach the disk later, in the same order,
/// from the log writer; the cache and the disk have separate locks so a slow
/// fsync never blocks raft-rs's reads.
pub struct RaftLog<D: Disk> {
    cache: Arc<RwLock<Persisted>>,
    disk: Arc<Mutex<D>>,
    wanted: Arc<SnapshotWanted>,
}

impl<D: Disk> Clone for RaftLog<D> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            disk: self.disk.clone(),
            wanted: self.wanted.clone(),
        }
    }
}

/// Set when raft-rs asked for a snapshot the log does not have (none yet, or
/// one whose configuration lacks the receiving node): the replica then takes
/// a fresh one and raft-rs asks again.
#[derive(Default)]
pub struct SnapshotWanted(std::sync::atomic::AtomicBool);

impl SnapshotWanted {
    pub fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

impl<D: Disk> RaftLog<D> {
    /// Load the log from `disk`.
    pub fn open(disk: D) -> Result<Self, DiskError> {
        let cache = disk.load()?;
        Ok(Self {
            cache: Arc::new(RwLock::new(cache)),
            disk: Arc::new(Mutex::new(disk)),
            wanted: Arc::default(),
        })
    }

    /// Stage `ops` into the cache (what raft-rs reads); `persist` them later.
    pub fn stage(&self, ops: &[LogOp]) -> Result<(), DiskError> {
        let mut g = self.cache.write().map_err(|_| poisoned())?;
        for op in ops {
            g.apply(op)?;
        }
        Ok(())
    }

    /// Write staged `ops` to the disk (in staging order).
    pub fn persist(&self, ops: &[LogOp], sync: bool) -> Result<(), DiskError> {
        if ops.is_empty() && !sync {
            return Ok(());
        }
        let mut d = self.disk.lock().map_err(|_| poisoned())?;
        if ops.is_empty() {
            return d.sync();
        }
        d.write(ops, sync)
    }

    /// Stage and persist at once.
    pub fn write(&self, ops: &[LogOp], sync: bool) -> Result<(), DiskError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.persist(ops, sync)?;
        self.stage(ops)
    }

    /// Make every earlier write durable (one fsync for a group of writes).
    pub fn sync(&self) -> Result<(), DiskError> {
        self.persist(&[], true)
    }

    /// Whether raft-rs asked for a snapshot this log could not give.
    pub fn snapshot_wanted(&self) -> &SnapshotWanted {
        &self.wanted
    }

    /// Read the cached log.
    pub fn with<R>(&self, f: impl FnOnce(&Persisted) -> R) -> R {
        match self.cache.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// Run `f` on the disk (metrics).
    pub fn with_disk<R>(&self, f: impl FnOnce(&D) -> R) -> R {
        match self.disk.lock() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl<D: Disk> raft::Storage for RaftLog<D> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.with(|p| RaftState::new(p.hard_state.clone(), p.conf_state.clone())))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        self.with(|p| {
            if low < p.first_index() {
                return Err(store_err(StorageError::Compacted));
            }
            if high > p.last_index() + 1 || low > high {
                return Err(store_err(StorageError::Unavailable));
            }
            let off = p.first_index();
            let mut ents = p.entries[(low - off) as usize..(high - off) as usize].to_vec();
            raft::util::limit_size(&mut ents, max_size);
            Ok(ents)
        })
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.with(|p| {
            if idx < p.truncated_index {
                return Err(store_err(StorageError::Compacted));
            }
            p.term(idx)
                .ok_or_else(|| store_err(StorageError::Unavailable))
        })
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.with(|p| p.first_index()))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.with(|p| p.last_index()))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.with(|p| {
            let m = p.snapshot.get_metadata();
            let cs = m.get_conf_state();
            let knows_to = cs.voters.contains(&to)
                || cs.learners.contains(&to)
                || cs.voters_outgoing.contains(&to)
                || cs.learners_next.contains(&to);
            if p.snapshot.is_empty() || m.index < request_index || !knows_to {
                self.wanted
                    .0
                    .store(true, std::sync::atomic::Ordering::Release);
                Err(store_err(StorageError::SnapshotTemporarilyUnavailable))
            } else {
                Ok(p.snapshot.clone())
            }
        })
    }
}
