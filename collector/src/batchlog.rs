//! The batch log: the source of truth for received telemetry. Append-only
//! segment files of checksummed records, one `fdatasync` per group commit.
//!
//! A segment is `<data>/batches/<segment number, 20 digits>.seg`; a record is
//!
//! ```text
//! len u32 LE | crc32c(payload) u32 LE | payload (len bytes)
//! payload = arrival_ms i64 | min_ts i64 | max_ts i64 | sequence u64
//!         | host_len u16 | host | prost `Batch` bytes   (all LE)
//! ```
//!
//! A record's position `(segment << 40) | offset` is its `idx`: increasing in
//! arrival order and enough to read it back. On open every segment is checked
//! record by record; the first record that is short or fails its checksum (a
//! write torn by a crash: it was never acknowledged, since acknowledgement
//! waits for the `fdatasync` covering it) ends the log: that segment is
//! truncated there, later segments are removed, and both are logged.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const HEADER: usize = 8;
const FIXED: usize = 8 * 4 + 2;
const OFFSET_BITS: u32 = 40;

/// Errors of the batch log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("batch log {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("batch log record {idx}: {reason}")]
    Corrupt { idx: u64, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One record to append.
pub struct LogEntry<'a> {
    pub host: &'a str,
    pub sequence: u64,
    pub arrival_ms: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub bytes: &'a [u8],
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub idx: u64,
    pub host: String,
    pub sequence: u64,
    pub arrival_ms: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub bytes: Vec<u8>,
}

struct Segment {
    number: u64,
    path: PathBuf,
    /// Newest arrival time in the segment (compaction).
    last_arrival_ms: i64,
}

struct Writer {
    /// Closed segments, oldest first.
    closed: Vec<Segment>,
    current: Segment,
    file: Arc<File>,
    len: u64,
    /// Files written since the last sync (a rolled segment and the current).
    unsynced: Vec<Arc<File>>,
    /// The directory gained a file since the last sync.
    dir_dirty: bool,
    buf: Vec<u8>,
}

/// The segment-file batch log. Cheap to clone.
#[derive(Clone)]
pub struct BatchLog {
    dir: PathBuf,
    segment_bytes: u64,
    w: Arc<Mutex<Writer>>,
}

fn seg_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.seg"))
}

/// Position of a record.
pub fn idx_of(segment: u64, offset: u64) -> u64 {
    (segment << OFFSET_BITS) | offset
}

/// The segment a record is in.
pub fn segment_of(idx: u64) -> u64 {
    idx >> OFFSET_BITS
}

fn split_idx(idx: u64) -> (u64, u64) {
    (idx >> OFFSET_BITS, idx & ((1 << OFFSET_BITS) - 1))
}

fn parse_payload(idx: u64, p: &[u8], with_bytes: bool) -> Result<LogRecord, LogError> {
    let corrupt = |reason: &str| LogError::Corrupt {
        idx,
        reason: reason.into(),
    };
    if p.len() < FIXED {
        return Err(corrupt("short payload"));
    }
    let i64_at = |o: usize| i64::from_le_bytes(p[o..o + 8].try_into().unwrap_or([0; 8]));
    let host_len = usize::from(u16::from_le_bytes([p[32], p[33]]));
    let host = p
        .get(FIXED..FIXED + host_len)
        .ok_or_else(|| corrupt("host past the end"))?;
    let host = std::str::from_utf8(host)
        .map_err(|_| corrupt("host is not UTF-8"))?
        .to_string();
    Ok(LogRecord {
        idx,
        host,
        arrival_ms: i64_at(0),
        min_ts: i64_at(8),
        max_ts: i64_at(16),
        sequence: i64_at(24) as u64,
        bytes: if with_bytes {
            p[FIXED + host_len..].to_vec()
        } else {
            Vec::new()
        },
    })
}

/// Reads the valid records of one segment file (their batch bytes too when
/// `with_bytes`); returns them, the length of the valid prefix (shorter than
/// the file when its tail is torn) and the file's length.
fn scan_segment(
    number: u64,
    path: &Path,
    with_bytes: bool,
) -> Result<(Vec<LogRecord>, u64, u64), LogError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + HEADER <= data.len() {
        let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
        let crc = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap_or([0; 4]));
        let Some(p) = data.get(off + HEADER..off + HEADER + len) else {
            break;
        };
        if len < FIXED || crc32c(p) != crc {
            break;
        }
        out.push(parse_payload(idx_of(number, off as u64), p, with_bytes)?);
        off += HEADER + len;
    }
    Ok((out, off as u64, data.len() as u64))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl BatchLog {
    /// Opens (or creates) the log in `dir`, checking every record and
    /// repairing a torn tail; new records go to the last segment until it
    /// holds `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<BatchLog, LogError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut numbers: Vec<u64> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        numbers.sort_unstable();
        let mut segments = Vec::new();
        let mut torn = false;
        for n in numbers {
            let path = seg_path(dir, n);
            if torn {
                tracing::warn!(segment = %path.display(), "batch log: segment after a torn record removed (never acknowledged)");
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let (records, valid, len) = scan_segment(n, &path, false)?;
            if valid < len {
                torn = true;
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = valid,
                    dropped_bytes = len - valid,
                    "batch log: torn tail truncated (a write cut by a crash, never acknowledged)"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(valid).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
            }
            segments.push(Segment {
                number: n,
                path,
                last_arrival_ms: records.last().map(|r| r.arrival_ms).unwrap_or(i64::MIN),
            });
        }
        let (current, dir_dirty) = match segments.pop() {
            Some(s) => (s, false),
            None => {
                let n = 1;
                (
                    Segment {
                        number: n,
                        path: seg_path(dir, n),
                        last_arrival_ms: i64::MIN,
                    },
                    true,
                )
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current.path)
            .map_err(io(&current.path))?;
        let len = file.metadata().map_err(io(&current.path))?.len();
        if dir_dirty {
            sync_dir(dir)?;
        }
        Ok(BatchLog {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            w: Arc::new(Mutex::new(Writer {
                closed: segments,
                current,
                file: Arc::new(file),
                len,
                unsynced: Vec::new(),
                dir_dirty: false,
                buf: Vec::new(),
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.w.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends records (written, not yet durable: call [`sync`](Self::sync)).
    /// Returns each record's idx.
    pub fn append(&self, entries: &[LogEntry<'_>]) -> Result<Vec<u64>, LogError> {
        let mut w = self.lock();
        let w = &mut *w;
        if w.len >= self.segment_bytes {
            let n = w.current.number + 1;
            let path = seg_path(&self.dir, n);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            let old = std::mem::replace(
                &mut w.current,
                Segment {
                    number: n,
                    path,
                    last_arrival_ms: i64::MIN,
                },
            );
            w.closed.push(old);
            let old_file = std::mem::replace(&mut w.file, Arc::new(file));
            w.unsynced.push(old_file);
            w.len = 0;
            w.dir_dirty = true;
        }
        let mut idxs = Vec::with_capacity(entries.len());
        w.buf.clear();
        for e in entries {
            let host = e.host.as_bytes();
            let host_len = u16::try_from(host.len()).map_err(|_| LogError::Corrupt {
                idx: 0,
                reason: format!("host id of {} bytes is too long", host.len()),
            })?;
            let len = FIXED + host.len() + e.bytes.len();
            let len32 = u32::try_from(len).map_err(|_| LogError::Corrupt {
                idx: 0,
                reason: format!("batch of {len} bytes is too large"),
            })?;
            idxs.push(idx_of(w.current.number, w.len + w.buf.len() as u64));
            let start = w.buf.len();
            w.buf.extend_from_slice(&len32.to_le_bytes());
            w.buf.extend_from_slice(&[0; 4]);
            w.buf.extend_from_slice(&e.arrival_ms.to_le_bytes());
            w.buf.extend_from_slice(&e.min_ts.to_le_bytes());
            w.buf.extend_from_slice(&e.max_ts.to_le_bytes());
            w.buf.extend_from_slice(&e.sequence.to_le_bytes());
            w.buf.extend_from_slice(&host_len.to_le_bytes());
            w.buf.extend_from_slice(host);
            w.buf.extend_from_slice(e.bytes);
            let crc = crc32c(&w.buf[start + HEADER..]);
            w.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            w.current.last_arrival_ms = w.current.last_arrival_ms.max(e.arrival_ms);
        }
        let path = &w.current.path;
        if let Err(e) = (&*w.file).write_all(&w.buf) {
            // A partial write leaves a torn record: cut it off so the next
            // append does not follow garbage.
            let _ = w.file.set_len(w.len);
            return Err(io(path)(e));
        }
        w.len += w.buf.len() as u64;
        if w.buf.capacity() > 64 << 20 {
            w.buf = Vec::new();
        }
        Ok(idxs)
    }

    /// Makes everything appended so far durable: `fdatasync` of the files
    /// written since the last sync (and of the directory when a segment was
    /// added). Runs without holding the append lock.
    pub fn sync(&self) -> Result<(), LogError> {
        let (files, dir_dirty) = {
            let mut w = self.lock();
            let mut files = std::mem::take(&mut w.unsynced);
            files.push(w.file.clone());
            (files, std::mem::take(&mut w.dir_dirty))
        };
        for f in &files {
            if let Err(e) = f.sync_data() {
                // Not durable: sync them again next time.
                let mut w = self.lock();
                w.unsynced.extend(files.iter().cloned());
                w.dir_dirty |= dir_dirty;
                return Err(io(&self.dir)(e));
            }
        }
        if dir_dirty {
            if let Err(e) = sync_dir(&self.dir) {
                self.lock().dir_dirty = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Every record in arrival order (replay on start).
    pub fn iter(&self) -> impl Iterator<Item = Result<LogRecord, LogError>> + '_ {
        let segs: Vec<(u64, PathBuf)> = {
            let w = self.lock();
            w.closed
                .iter()
                .chain(std::iter::once(&w.current))
                .map(|s| (s.number, s.path.clone()))
                .collect()
        };
        segs.into_iter().flat_map(|(n, p)| {
            let r: Vec<Result<LogRecord, LogError>> = match scan_segment(n, &p, true) {
                Ok((recs, _, _)) => recs.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            r
        })
    }

    /// Reads the record at `idx` (None when its segment was compacted away).
    pub fn read(&self, idx: u64) -> Result<Option<LogRecord>, LogError> {
        let (n, off) = split_idx(idx);
        let path = seg_path(&self.dir, n);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut head = [0u8; HEADER];
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut head))
            .map_err(io(&path))?;
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or([0; 4])) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().unwrap_or([0; 4]));
        let mut p = vec![0u8; len];
        f.read_exact(&mut p).map_err(io(&path))?;
        if crc32c(&p) != crc {
            return Err(LogError::Corrupt {
                idx,
                reason: "checksum mismatch".into(),
            });
        }
        parse_payload(idx, &p, true).map(Some)
    }

    /// The idx at which the closed segments whose newest record arrived
    /// before `cutoff_ms` end: everything below it may be removed by
    /// [`remove_before`](Self::remove_before). None: nothing to remove.
    pub fn expired_before(&self, cutoff_ms: i64) -> Option<u64> {
        let w = self.lock();
        let mut end = None;
        for s in &w.closed {
            if s.last_arrival_ms >= cutoff_ms {
                break;
            }
            end = Some(idx_of(s.number + 1, 0));
        }
        end
    }

    /// Removes the closed segments below `idx` (from
    /// [`expired_before`](Self::expired_before)); returns how many records
    /// they held.
    pub fn remove_before(&self, idx: u64) -> Result<u64, LogError> {
        let (limit, _) = split_idx(idx);
        let gone: Vec<Segment> = {
            let mut w = self.lock();
            let keep = w.closed.iter().position(|s| s.number >= limit);
            let keep = keep.unwrap_or(w.closed.len());
            w.closed.drain(..keep).collect()
        };
        let mut n = 0;
        for s in gone {
            n += scan_segment(s.number, &s.path, false)
                .map(|(r, _, _)| r.len() as u64)
                .unwrap_or(0);
            fs::remove_file(&s.path).map_err(io(&s.path))?;
        }
        Ok(n)
    }

    /// Bytes in the log's files.
    pub fn size_on_disk(&self) -> u64 {
        let w = self.lock();
        w.closed
            .iter()
            .chain(std::iter::once(&w.current))
            .filter_map(|s| fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// CRC-32C (Castagnoli): the SSE 4.2 instruction where the CPU has it, else
/// a table.
pub fn crc32c(data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE 4.2 (checked just above).
            return unsafe { crc32c_sse42(data) };
        }
    }
    crc32c_table(data)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut crc: u64 = 0xffff_ffff;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        crc = _mm_crc32_u64(crc, v);
    }
    let mut crc = crc as u32;
    for b in chunks.remainder() {
        crc = _mm_crc32_u8(crc, *b);
    }
    !crc
}

fn crc32c_table(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82f6_3b78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc = t[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(host: &'a str, seq: u64, arrival: i64, bytes: &'a [u8]) -> LogEntry<'a> {
        LogEntry {
            host,
            sequence: seq,
            arrival_ms: arrival,
            min_ts: 1,
            max_ts: 2,
            bytes,
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_table(b"123456789"), 0xe306_9283);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        assert_eq!(crc32c(&long), crc32c_table(&long));
    }

    #[test]
    fn records_survive_reopen_and_segments_roll() {
        let tmp = tempfile::tempdir().unwrap();
        let idxs = {
            let log = BatchLog::open(tmp.path(), 50).unwrap();
            let mut idxs = log
                .append(&[entry("a", 1, 10, b"one"), entry("b", 1, 11, b"two")])
                .unwrap();
            idxs.extend(log.append(&[entry("a", 2, 20, b"three")]).unwrap());
            log.sync().unwrap();
            idxs
        };
        let log = BatchLog::open(tmp.path(), 50).unwrap();
        let all: Vec<LogRecord> = log.iter().map(|r| r.unwrap()).collect();
        let keys: Vec<(&str, u64, &[u8])> = all
            .iter()
            .map(|r| (r.host.as_str(), r.sequence, r.bytes.as_slice()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a", 1, &b"one"[..]),
                ("b", 1, &b"two"[..]),
                ("a", 2, &b"three"[..])
            ]
        );
        assert!(split_idx(idxs[2]).0 > split_idx(idxs[0]).0, "{idxs:?}");
        assert_eq!(log.read(idxs[1]).unwrap().unwrap().bytes, b"two");
        // The first segment's newest arrival is 11: expired before 15.
        assert_eq!(log.expired_before(10), None);
        let end = log.expired_before(15).unwrap();
        assert_eq!(log.remove_before(end).unwrap(), 2);
        assert!(log.read(idxs[0]).unwrap().is_none());
        assert_eq!(log.iter().count(), 1);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_later_segments_removed() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let log = BatchLog::open(tmp.path(), 1 << 20).unwrap();
            log.append(&[entry("a", 1, 10, b"kept"), entry("a", 2, 11, b"torn")])
                .unwrap();
            log.sync().unwrap();
        }
        let seg = seg_path(tmp.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        // A later segment (written after the torn record, never acknowledged).
        fs::write(seg_path(tmp.path(), 2), b"garbage").unwrap();
        let log = BatchLog::open(tmp.path(), 1 << 20).unwrap();
        let all: Vec<LogRecord> = log.iter().map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].bytes, b"kept");
        assert!(!seg_path(tmp.path(), 2).exists());
        // Appends continue after the valid prefix.
        log.append(&[entry("a", 2, 12, b"again")]).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = BatchLog::open(tmp.path(), 1 << 20).unwrap();
        let seqs: Vec<u64> = log.iter().map(|r| r.unwrap().sequence).collect();
        assert_eq!(seqs, vec![1, 2]);
    }
}
