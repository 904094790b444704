//! The Raft log as one append-only file (write-ahead log): every `Disk`
//! write appends its [`LogOp`]s as checksummed records, `sync` is one
//! `fdatasync`, and loading replays the records through
//! [`Persisted::apply`] (the same semantics as [`MemDisk`](super::MemDisk),
//! which the cluster simulation exercises). When the file has grown well
//! past what it describes, it is rewritten as a compact image (written to a
//! temporary file, synced, renamed over, directory synced).
//!
//! ```text
//! record  := len:u32le crc32:u32le payload[len]
//! payload := 1 n:varint (len:varint Entry)*n     Append
//!          | 2 HardState | 3 ConfState | 4 Snapshot (SaveSnapshot)
//!          | 5 Snapshot (InstallSnapshot) | 6 index:u64le (Compact)
//!          | 7 index:u64le term:u64le            (image: log truncated here)
//! ```
//!
//! A record cut short or failing its checksum at the end of the file is a
//! write a crash interrupted before its `fdatasync` returned (so never
//! acknowledged): it and anything after it are dropped on open.

use super::log::{Disk, DiskError, LogOp, Persisted};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "wal";
const TMP: &str = "wal.tmp";
/// Rewrite once the file is this many times the size of its image...
const REWRITE_RATIO: u64 = 4;
/// ...and at least this big.
const REWRITE_MIN: u64 = 64 << 20;

const T_APPEND: u8 = 1;
const T_HARD_STATE: u8 = 2;
const T_CONF_STATE: u8 = 3;
const T_SAVE_SNAPSHOT: u8 = 4;
const T_INSTALL_SNAPSHOT: u8 = 5;
const T_COMPACT: u8 = 6;
const T_BASE: u8 = 7;

pub struct WalDisk {
    dir: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Bytes of the last image written (rewrite threshold).
    image_len: u64,
    /// What the file holds.
    image: Persisted,
    /// Bytes dropped from the end of the file on open (torn write).
    dropped: u64,
    /// Never rewrite a file smaller than this.
    rewrite_min: u64,
}

impl WalDisk {
    /// Open (or create) the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self, DiskError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(FILE);
        let _ = std::fs::remove_file(dir.join(TMP));
        let fresh = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        if fresh {
            sync_dir(dir)?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (image, good) = replay(&bytes)?;
        let dropped = bytes.len() as u64 - good;
        if dropped > 0 {
            file.set_len(good).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(WalDisk {
            dir: dir.to_path_buf(),
            file,
            len: good,
            image_len: good,
            image,
            dropped,
            rewrite_min: REWRITE_MIN,
        })
    }

    /// Rewrite the file once it exceeds `bytes` (and 4x its live content)
    /// instead of 64 MiB (tests exercise rewrites with small logs).
    pub fn with_rewrite_min(mut self, bytes: u64) -> Self {
        self.rewrite_min = bytes;
        self
    }

    /// Create the log in `dir` holding `p` (migration from another store);
    /// fails if `dir` already holds a log.
    pub fn create_with(dir: &Path, p: &Persisted) -> Result<Self, DiskError> {
        if dir.join(FILE).exists() {
            return Err(DiskError::Inconsistent(format!(
                "{} already holds a Raft log",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io)?;
        write_image(dir, p)?;
        Self::open(dir)
    }

    /// Whether `dir` holds a log.
    pub fn exists(dir: &Path) -> bool {
        dir.join(FILE).exists()
    }

    /// Bytes dropped from the end of the file when it was opened (a write
    /// interrupted by a crash), for the log.
    pub fn dropped_on_open(&self) -> u64 {
        self.dropped
    }

    /// Bytes on disk (for metrics).
    pub fn size_on_disk(&self) -> u64 {
        self.len
    }

    fn rewrite(&mut self) -> Result<(), DiskError> {
        let len = write_image(&self.dir, &self.image)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.dir.join(FILE))
            .map_err(io)?;
        self.len = len;
        self.image_len = len;
        Ok(())
    }
}

impl Disk for WalDisk {
    fn load(&self) -> Result<Persisted, DiskError> {
        Ok(self.image.clone())
    }

    fn write(&mut self, ops: &[LogOp], sync: bool) -> Result<(), DiskError> {
        let mut buf = Vec::new();
        for op in ops {
            // Check against the image first: nothing invalid reaches the file.
            self.image.apply(op)?;
            record(&mut buf, op);
        }
        if !buf.is_empty() {
            self.file.write_all(&buf).map_err(io)?;
            self.len += buf.len() as u64;
        }
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        if self.len > self.rewrite_min.max(REWRITE_RATIO * self.image_len) {
            self.rewrite()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(io)
    }
}

fn io(e: std::io::Error) -> DiskError {
    DiskError::Io(e.to_string())
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Write `p` as a fresh file (temporary, synced, renamed over); its length.
fn write_image(dir: &Path, p: &Persisted) -> Result<u64, DiskError> {
    let mut buf = Vec::new();
    let mut payload = vec![T_BASE];
    payload.extend_from_slice(&p.truncated_index.to_le_bytes());
    payload.extend_from_slice(&p.truncated_term.to_le_bytes());
    frame(&mut buf, &payload);
    record(&mut buf, &LogOp::HardState(p.hard_state.clone()));
    record(&mut buf, &LogOp::ConfState(p.conf_state.clone()));
    if !p.snapshot.is_empty() {
        record(&mut buf, &LogOp::SaveSnapshot(p.snapshot.clone()));
    }
    if !p.entries.is_empty() {
        record(&mut buf, &LogOp::Append(p.entries.clone()));
    }
    let tmp = dir.join(TMP);
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&buf).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE)).map_err(io)?;
    sync_dir(dir)?;
    Ok(buf.len() as u64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn encode<M: protobuf::Message>(out: &mut Vec<u8>, m: &M) {
    // Encoding an in-memory protobuf message into a Vec cannot fail.
    let _ = m.write_to_vec(out);
}

fn record(out: &mut Vec<u8>, op: &LogOp) {
    let mut p = Vec::new();
    match op {
        LogOp::Append(ents) => {
            p.push(T_APPEND);
            put_varint(&mut p, ents.len() as u64);
            for e in ents {
                put_varint(&mut p, u64::from(e.compute_size()));
                encode(&mut p, e);
            }
        }
        LogOp::HardState(hs) => {
            p.push(T_HARD_STATE);
            encode(&mut p, hs);
        }
        LogOp::ConfState(cs) => {
            p.push(T_CONF_STATE);
            encode(&mut p, cs);
        }
        LogOp::SaveSnapshot(s) => {
            p.push(T_SAVE_SNAPSHOT);
            encode(&mut p, s);
        }
        LogOp::InstallSnapshot(s) => {
            p.push(T_INSTALL_SNAPSHOT);
            encode(&mut p, s);
        }
        LogOp::Compact(i) => {
            p.push(T_COMPACT);
            p.extend_from_slice(&i.to_le_bytes());
        }
    }
    frame(out, &p);
}

fn decode<M: protobuf::Message>(what: &'static str, b: &[u8]) -> Result<M, DiskError> {
    M::parse_from_bytes(b).map_err(|source| DiskError::Decode { what, source })
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let a: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(a))
}

fn bad(what: &str) -> DiskError {
    DiskError::Inconsistent(format!("write-ahead log record: {what}"))
}

fn varint(b: &mut &[u8]) -> Result<u64, DiskError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (x, rest) = b.split_first().ok_or_else(|| bad("truncated varint"))?;
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("varint overflows"))
}

/// Replay records into an image; returns it and the length of the good
/// prefix (a torn record at the end is not part of it).
fn replay(bytes: &[u8]) -> Result<(Persisted, u64), DiskError> {
    let mut p = Persisted::default();
    let mut at = 0usize;
    while let Some(hdr) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        let crc = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        if len == 0 {
            break; // zeros past the end of what was written
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32(payload) != crc {
            break;
        }
        let Some((&tag, body)) = payload.split_first() else {
            return Err(bad("empty"));
        };
        let op = match tag {
            T_APPEND => {
                let mut b = body;
                let n = varint(&mut b)?;
                let mut ents = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    let l = varint(&mut b)? as usize;
                    let e = b.get(..l).ok_or_else(|| bad("truncated entry"))?;
                    ents.push(decode::<Entry>("log entry", e)?);
                    b = &b[l..];
                }
                LogOp::Append(ents)
            }
            T_HARD_STATE => LogOp::HardState(decode::<HardState>("hard state", body)?),
            T_CONF_STATE => LogOp::ConfState(decode::<ConfState>("conf state", body)?),
            T_SAVE_SNAPSHOT => LogOp::SaveSnapshot(decode::<Snapshot>("snapshot", body)?),
            T_INSTALL_SNAPSHOT => LogOp::InstallSnapshot(decode::<Snapshot>("snapshot", body)?),
            T_COMPACT => LogOp::Compact(u64_at(body, 0).ok_or_else(|| bad("compact"))?),
            T_BASE => {
                let (Some(i), Some(t)) = (u64_at(body, 0), u64_at(body, 8)) else {
                    return Err(bad("image base"));
                };
                p.entries.clear();
                p.truncated_index = i;
                p.truncated_term = t;
                at += 8 + len;
                continue;
            }
            t => return Err(bad(&format!("unknown tag {t}"))),
        };
        p.apply(&op)?;
        at += 8 + len;
    }
    Ok((p, at as u64))
}

/// CRC-32 (IEEE), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..Default::default()
        }
    }

    fn same(a: &Persisted, b: &Persisted) {
        assert_eq!(a.hard_state, b.hard_state);
        assert_eq!(a.conf_state, b.conf_state);
        assert_eq!(a.snapshot, b.snapshot);
        assert_eq!(
            (a.truncated_index, a.truncated_term),
            (b.truncated_index, b.truncated_term)
        );
        assert_eq!(a.entries, b.entries);
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn reopening_replays_every_write_like_the_memory_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap = Snapshot {
            data: b"state".to_vec().into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 2;
        snap.mut_metadata().term = 1;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        let batches = vec![
            vec![LogOp::InstallSnapshot(snap.clone())],
            vec![
                LogOp::Append(vec![entry(3, 1, b"a"), entry(4, 1, b"b")]),
                LogOp::HardState(hs(1, 3)),
            ],
            // A new leader overwrites entry 4.
            vec![LogOp::Append(vec![entry(4, 2, b"c"), entry(5, 2, b"")])],
            vec![LogOp::SaveSnapshot(snap.clone()), LogOp::Compact(4)],
            vec![LogOp::HardState(hs(2, 5))],
        ];
        let mut mem = Persisted::default();
        let mut w = WalDisk::open(dir.path()).unwrap();
        for b in &batches {
            w.write(b, true).unwrap();
            for op in b {
                mem.apply(op).unwrap();
            }
        }
        same(&w.load().unwrap(), &mem);
        assert_eq!(mem.truncated_index, 3);
        assert_eq!(mem.entries.len(), 2);
        drop(w);
        let w = WalDisk::open(dir.path()).unwrap();
        same(&w.load().unwrap(), &mem);
        assert_eq!(w.dropped_on_open(), 0);
        // The compact image says the same.
        let mut w = w;
        w.rewrite().unwrap();
        drop(w);
        let mut w = WalDisk::open(dir.path()).unwrap();
        same(&w.load().unwrap(), &mem);
        // And later writes follow it.
        w.write(&[LogOp::Append(vec![entry(6, 2, b"d")])], true)
            .unwrap();
        mem.apply(&LogOp::Append(vec![entry(6, 2, b"d")])).unwrap();
        drop(w);
        same(&WalDisk::open(dir.path()).unwrap().load().unwrap(), &mem);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_earlier_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalDisk::open(dir.path()).unwrap();
        w.write(&[LogOp::Append(vec![entry(1, 1, b"a")])], true)
            .unwrap();
        let good = w.size_on_disk();
        w.write(&[LogOp::Append(vec![entry(2, 1, b"bbbb")])], true)
            .unwrap();
        let full = w.size_on_disk();
        drop(w);
        let path = dir.path().join(FILE);
        for cut in [full - 1, good + 3] {
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(cut).unwrap();
            drop(f);
            let w = WalDisk::open(dir.path()).unwrap();
            assert_eq!(w.dropped_on_open(), cut - good);
            let p = w.load().unwrap();
            assert_eq!(p.last_index(), 1);
            assert_eq!(w.size_on_disk(), good);
        }
        // A flipped byte in the last record: dropped too.
        let mut w = WalDisk::open(dir.path()).unwrap();
        w.write(&[LogOp::Append(vec![entry(2, 1, b"bbbb")])], true)
            .unwrap();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let w = WalDisk::open(dir.path()).unwrap();
        assert_eq!(w.load().unwrap().last_index(), 1);
    }

    #[test]
    fn an_invalid_write_is_refused_before_it_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalDisk::open(dir.path()).unwrap();
        assert!(w
            .write(&[LogOp::Append(vec![entry(5, 1, b"gap")])], true)
            .is_err());
        assert_eq!(w.size_on_disk(), 0);
    }

    #[test]
    fn migrating_writes_an_image_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Persisted::default();
        p.apply(&LogOp::Append(vec![entry(1, 1, b"x"), entry(2, 1, b"y")]))
            .unwrap();
        p.apply(&LogOp::HardState(hs(1, 2))).unwrap();
        let w = WalDisk::create_with(dir.path(), &p).unwrap();
        same(&w.load().unwrap(), &p);
        drop(w);
        same(&WalDisk::open(dir.path()).unwrap().load().unwrap(), &p);
        assert!(WalDisk::create_with(dir.path(), &p).is_err());
    }
}
