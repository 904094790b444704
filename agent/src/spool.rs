//! The durable spool: every sealed batch is written to sled under
//! (host id, sequence number) before it is sent, and removed only when the
//! collector acknowledges it as durable. A restarted agent resends what is
//! left. The spool is bounded: when full, the oldest batches are dropped, and
//! the number of events lost is counted and reported in the next sealed batch
//! (`dropped_events`), so loss is explicit and visible at the collector.
//!
//! Keys: `b/<host>\0<seq u64 BE>` → prost-encoded `pb::Batch`;
//! `s/<host>` → next sequence number; `d` → dropped events not yet reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outflow_proto::pb;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: cannot open: {source} (is another agent using it? is the disk full or read-only?)")]
    Open { path: String, source: sled::Error },
    #[error("spool write failed: {0} (disk full?); the batch's events are counted as dropped")]
    Write(sled::Error),
    #[error("spool {path}: no space left on the device: free space there; until then every batch's events are counted as dropped and reported to the collector once the spool can write again")]
    DiskFull { path: String },
    #[error("spool entry {key} is corrupt: {reason}; it was removed")]
    Corrupt { key: String, reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Batches waiting for an acknowledgement.
    pub pending_batches: u64,
    pub pending_bytes: u64,
    /// Since this process started.
    pub dropped_batches: u64,
    pub dropped_events: u64,
    pub write_errors: u64,
    /// The spool could not write and has not recovered yet.
    pub unwritable: bool,
}

/// What the spool keeps in memory about a stored batch.
#[derive(Clone, Copy, Debug)]
struct Stored {
    bytes: u64,
    events: u64,
    /// The `dropped_events` the batch itself reports.
    carried: u64,
}

pub struct Spool {
    dir: PathBuf,
    /// `None` while the spool cannot write (see [`Spool::append`]).
    db: Option<sled::Db>,
    max_bytes: u64,
    bytes: u64,
    /// Per host: next sequence number to assign.
    next_seq: BTreeMap<String, u64>,
    /// Every batch stored durably and not yet acknowledged. Only these are
    /// ever sent: after a failed write, sled may still hold the failed batch
    /// in memory.
    index: BTreeMap<(String, u64), Stored>,
    /// Dropped events not yet reported in a sealed batch.
    unreported_drops: u64,
    /// Events lost since the spool last wrote successfully.
    lost_while_unwritable: u64,
    stats: SpoolStats,
}

fn batch_key(host: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(host.len() + 11);
    k.extend_from_slice(b"b/");
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn seq_key(host: &str) -> Vec<u8> {
    let mut k = b"s/".to_vec();
    k.extend_from_slice(host.as_bytes());
    k
}

fn parse_batch_key(k: &[u8]) -> Option<(String, u64)> {
    let rest = k.strip_prefix(b"b/")?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let host = std::str::from_utf8(&rest[..nul]).ok()?.to_string();
    let seq = u64::from_be_bytes(rest.get(nul + 1..)?.try_into().ok()?);
    Some((host, seq))
}

fn is_disk_full(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

fn open_db(dir: &Path) -> Result<sled::Db, SpoolError> {
    // A database just closed (reopening after a write failure) may still be
    // held for a moment by sled's own threads, which keep its directory
    // lock until they finish: wait for them rather than fail.
    let mut waited = Duration::ZERO;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(None)
            .open();
        match opened {
            // sled reports it as `Other` with this text (sled 0.34).
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock") && waited < LOCK_WAIT =>
            {
                std::thread::sleep(LOCK_RETRY);
                waited += LOCK_RETRY;
            }
            other => {
                return other.map_err(|source| SpoolError::Open {
                    path: dir.display().to_string(),
                    source,
                })
            }
        }
    }
}

/// How long opening waits for a directory lock still held by the spool's
/// previous, just-closed database, and how often it tries.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY: Duration = Duration::from_millis(10);

impl Spool {
    /// Opens (or creates) the spool in `dir`, resuming whatever it holds.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let db = open_db(dir)?;
        let mut s = Spool {
            dir: dir.to_path_buf(),
            db: None,
            max_bytes,
            bytes: 0,
            next_seq: BTreeMap::new(),
            index: BTreeMap::new(),
            unreported_drops: 0,
            lost_while_unwritable: 0,
            stats: SpoolStats::default(),
        };
        let mut corrupt = Vec::new();
        for kv in db.scan_prefix(b"b/") {
            let Ok((k, v)) = kv else { continue };
            let parsed = parse_batch_key(&k).zip(pb::Batch::decode(v.as_ref()).ok());
            match parsed {
                Some(((host, seq), b)) => {
                    s.bytes += v.len() as u64;
                    s.index.insert(
                        (host, seq),
                        Stored {
                            bytes: v.len() as u64,
                            events: b.events.len() as u64,
                            carried: b.dropped_events,
                        },
                    );
                }
                None => corrupt.push(k),
            }
        }
        for k in corrupt {
            tracing::error!(
                "{}",
                SpoolError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    reason: "undecodable".into()
                }
            );
            let _ = db.remove(k);
        }
        for kv in db.scan_prefix(b"s/") {
            let Ok((k, v)) = kv else { continue };
            let host = String::from_utf8_lossy(&k[2..]).into_owned();
            if let Ok(b) = <[u8; 8]>::try_from(v.as_ref()) {
                s.next_seq.insert(host, u64::from_be_bytes(b));
            }
        }
        // A sequence counter can never be behind a stored batch.
        for (host, seq) in s.index.keys() {
            let n = s.next_seq.entry(host.clone()).or_insert(1);
            if *n <= *seq {
                *n = seq + 1;
            }
        }
        if let Ok(Some(v)) = db.get(b"d") {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_ref()) {
                s.unreported_drops = u64::from_be_bytes(b);
            }
        }
        s.db = Some(db);
        if !s.index.is_empty() {
            tracing::info!(
                batches = s.index.len(),
                bytes = s.bytes,
                "spool resumed: unacknowledged batches will be resent"
            );
        }
        s.refresh_stats();
        Ok(s)
    }

    fn refresh_stats(&mut self) {
        self.stats.pending_batches = self.index.len() as u64;
        self.stats.pending_bytes = self.bytes;
        self.stats.unwritable = self.db.is_none();
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats.clone()
    }

    /// Events lost before they reached the spool (e.g. a full in-memory
    /// queue): reported in the next sealed batch.
    pub fn note_dropped(&mut self, events: u64) {
        self.unreported_drops += events;
        self.stats.dropped_events += events;
        if let Some(db) = &self.db {
            let _ = db.insert(b"d", &self.unreported_drops.to_be_bytes());
        }
    }

    /// Events dropped and not yet reported in a batch.
    pub fn unreported_drops(&self) -> u64 {
        self.unreported_drops
    }

    /// After a failed write sled refuses every later write (it keeps the
    /// error), even once space is back: the database is closed and opened
    /// again, and brought in line with what the spool knows is durable.
    fn reopen(&mut self) -> Result<(), SpoolError> {
        // Close first: sled holds a lock on its directory.
        self.db = None;
        let db = open_db(&self.dir)?;
        let mut tx = sled::Batch::default();
        let mut on_disk = std::collections::BTreeSet::new();
        for kv in db.scan_prefix(b"b/") {
            let Ok((k, _)) = kv else { continue };
            match parse_batch_key(&k) {
                // Acknowledged while unwritable, or a write that failed but
                // reached the disk anyway (it was counted as dropped).
                Some(key) if !self.index.contains_key(&key) => tx.remove(k),
                Some(key) => {
                    on_disk.insert(key);
                }
                None => tx.remove(k),
            }
        }
        for (host, next) in &self.next_seq {
            tx.insert(seq_key(host), &next.to_be_bytes());
        }
        tx.insert(b"d".as_slice(), &self.unreported_drops.to_be_bytes());
        db.apply_batch(tx).map_err(SpoolError::Write)?;
        db.flush().map_err(SpoolError::Write)?;
        // Batches known durable but gone from the disk cannot be sent.
        let vanished: Vec<(String, u64)> = self
            .index
            .keys()
            .filter(|k| !on_disk.contains(*k))
            .cloned()
            .collect();
        for k in vanished {
            if let Some(st) = self.index.remove(&k) {
                tracing::error!(host = %k.0, seq = k.1, "spool: a stored batch is missing after reopening; counted as dropped");
                self.bytes -= st.bytes;
                self.stats.dropped_batches += 1;
                self.stats.dropped_events += st.events;
                self.unreported_drops += st.events + st.carried;
            }
        }
        self.db = Some(db);
        Ok(())
    }

    /// Counts a batch lost to a write failure and says so: the first
    /// failure at error level with what to do, the following ones (until the
    /// spool writes again) at debug level.
    fn count_loss(&mut self, e: sled::Error, events: u64) -> SpoolError {
        self.stats.write_errors += 1;
        self.stats.dropped_events += events;
        self.unreported_drops += events;
        let first = self.lost_while_unwritable == 0;
        self.lost_while_unwritable += events;
        let err = if is_disk_full(&e) {
            SpoolError::DiskFull {
                path: self.dir.display().to_string(),
            }
        } else {
            SpoolError::Write(e)
        };
        if first {
            tracing::error!("{err}");
        } else {
            tracing::debug!(
                lost = self.lost_while_unwritable,
                "spool still cannot write: {err}"
            );
        }
        err
    }

    fn write_failed(&mut self, e: sled::Error, events: u64) -> SpoolError {
        let err = self.count_loss(e, events);
        // Try at once (a transient error); else at the next append.
        if let Err(e) = self.reopen() {
            tracing::debug!("spool: reopening failed: {e}");
            self.db = None;
        }
        self.refresh_stats();
        err
    }

    /// Seals `events` of `host` into the next batch, stores it durably and
    /// returns its sequence number. Dropped-but-unreported events ride along
    /// in `dropped_events`. On a write failure (disk full) the events are
    /// counted as dropped and an error returned; the agent keeps running,
    /// and the spool recovers by itself when it can write again.
    pub fn append(
        &mut self,
        host: &str,
        events: Vec<pb::TelemetryEvent>,
        agent_version: &str,
        sealed_unix_ms: i64,
    ) -> Result<u64, SpoolError> {
        let n_events = events.len() as u64;
        if self.db.is_none() {
            if let Err(e) = self.reopen() {
                self.db = None;
                let e = match e {
                    SpoolError::Write(e) | SpoolError::Open { source: e, .. } => e,
                    other => sled::Error::Unsupported(other.to_string()),
                };
                let err = self.count_loss(e, n_events);
                self.refresh_stats();
                return Err(err);
            }
        }
        // Sequence numbers of failed writes are not reused: the collector
        // sees a gap, never two different batches under one number.
        let seq = *self.next_seq.get(host).unwrap_or(&1);
        self.next_seq.insert(host.to_string(), seq + 1);
        let mut batch = pb::Batch {
            host_id: host.to_string(),
            sequence: seq,
            sealed_unix_ms,
            events,
            dropped_events: 0,
            agent_version: agent_version.to_string(),
        };
        let size = batch.encoded_len() as u64 + 10;
        // Make room: drop the oldest batches (explicit, counted policy).
        let mut evicted = sled::Batch::default();
        while self.bytes + size > self.max_bytes {
            let Some(((h, s), st)) = self.index.pop_first() else {
                break;
            };
            evicted.remove(batch_key(&h, s));
            self.bytes -= st.bytes;
            self.stats.dropped_batches += 1;
            self.stats.dropped_events += st.events;
            self.unreported_drops += st.events + st.carried;
            tracing::warn!(
                host = %h,
                seq = s,
                events = st.events,
                "spool full: dropped the oldest unacknowledged batch (reported to the collector in the next batch)"
            );
        }
        // The batch carries the drops known when it was sealed, including
        // those just made.
        batch.dropped_events = self.unreported_drops;
        let carried = batch.dropped_events;
        let bytes = batch.encode_to_vec();
        let mut tx = evicted;
        tx.insert(batch_key(host, seq), bytes.as_slice());
        tx.insert(seq_key(host), &(seq + 1).to_be_bytes());
        tx.insert(b"d".as_slice(), &0u64.to_be_bytes());
        let res = match &self.db {
            Some(db) => db.apply_batch(tx).and_then(|_| db.flush().map(|_| ())),
            None => Err(sled::Error::Unsupported("spool closed".into())),
        };
        if let Err(e) = res {
            return Err(self.write_failed(e, n_events));
        }
        if self.lost_while_unwritable > 0 {
            tracing::info!(
                lost = self.lost_while_unwritable,
                seq,
                "spool writable again: events lost meanwhile are reported to the collector in this batch"
            );
            self.lost_while_unwritable = 0;
        }
        self.index.insert(
            (host.to_string(), seq),
            Stored {
                bytes: bytes.len() as u64,
                events: n_events,
                carried,
            },
        );
        self.bytes += bytes.len() as u64;
        self.unreported_drops = 0;
        self.refresh_stats();
        Ok(seq)
    }

    /// Unacknowledged batches of `host` with sequence > `after`, oldest
    /// first, at most `limit`.
    pub fn pending(&self, host: &str, after: u64, limit: usize) -> Vec<pb::Batch> {
        let Some(db) = &self.db else {
            return Vec::new();
        };
        let start = batch_key(host, after.saturating_add(1));
        let end = batch_key(host, u64::MAX);
        db.range(start..=end)
            .filter_map(|kv| kv.ok())
            .filter(|(k, _)| parse_batch_key(k).is_some_and(|key| self.index.contains_key(&key)))
            .filter_map(|(_, v)| pb::Batch::decode(v.as_ref()).ok())
            .take(limit)
            .collect()
    }

    /// Hosts with unacknowledged batches.
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = self.index.keys().map(|(h, _)| h.clone()).collect();
        h.dedup();
        h
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The highest sequence number ever assigned for `host` (0 = none).
    pub fn last_seq(&self, host: &str) -> u64 {
        self.next_seq.get(host).map(|n| n - 1).unwrap_or(0)
    }

    /// The collector made every batch of `host` up to `through` durable.
    /// Returns how many batches were released.
    pub fn ack(&mut self, host: &str, through: u64) -> usize {
        let done: Vec<(String, u64)> = self
            .index
            .range((host.to_string(), 0)..=(host.to_string(), through))
            .map(|(k, _)| k.clone())
            .collect();
        let mut tx = sled::Batch::default();
        for (h, s) in &done {
            tx.remove(batch_key(h, *s));
            if let Some(st) = self.index.remove(&(h.clone(), *s)) {
                self.bytes -= st.bytes;
            }
        }
        if !done.is_empty() {
            // Without a database (unwritable) the entries are removed when
            // it is reopened.
            if let Some(Err(e)) = self.db.as_ref().map(|db| db.apply_batch(tx)) {
                // Harmless: the batches are resent and deduplicated.
                tracing::warn!("spool: could not release acknowledged batches: {e}");
            }
            // Released entries need no fsync of their own (the next append's
            // flush persists them): at worst they are resent after a crash,
            // and the collector deduplicates them.
        }
        self.refresh_stats();
        done.len()
    }

    /// The collector knows sequence numbers of `host` beyond ours (the spool
    /// was lost or reset): renumber our unacknowledged batches after
    /// `known_through` so they are not mistaken for duplicates.
    pub fn resequence_after(&mut self, host: &str, known_through: u64) -> Result<(), SpoolError> {
        let Some(db) = &self.db else {
            return Err(SpoolError::Write(sled::Error::Unsupported(
                "the spool cannot write at the moment".into(),
            )));
        };
        let pending = self.pending(host, 0, usize::MAX);
        let mut next = known_through + 1;
        let mut tx = sled::Batch::default();
        let mut new_index = Vec::new();
        for mut b in pending {
            let old = b.sequence;
            tx.remove(batch_key(host, old));
            b.sequence = next;
            let bytes = b.encode_to_vec();
            new_index.push((
                (host.to_string(), old),
                (host.to_string(), next),
                bytes.len() as u64,
            ));
            tx.insert(batch_key(host, next), bytes);
            next += 1;
        }
        tx.insert(seq_key(host), &next.to_be_bytes());
        db.apply_batch(tx).map_err(SpoolError::Write)?;
        db.flush().map_err(SpoolError::Write)?;
        for (old, new, len) in new_index {
            if let Some(st) = self.index.remove(&old) {
                self.bytes = self.bytes - st.bytes + len;
                self.index.insert(new, Stored { bytes: len, ..st });
            }
        }
        self.next_seq.insert(host.to_string(), next);
        self.refresh_stats();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> Vec<pb::TelemetryEvent> {
        (0..n)
            .map(|i| pb::TelemetryEvent {
                kind: Some(pb::telemetry_event::Kind::ProcessEnd(pb::ProcessEnd {
                    ts_us: i as i64,
                    pid: i as u32,
                })),
            })
            .collect()
    }

    #[test]
    fn sequences_ack_and_resume_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(s.append("h1", ev(3), "t", 0).unwrap(), 1);
            assert_eq!(s.append("h1", ev(3), "t", 0).unwrap(), 2);
            assert_eq!(s.append("h2", ev(1), "t", 0).unwrap(), 1);
            assert_eq!(s.append("h1", ev(3), "t", 0).unwrap(), 3);
            assert_eq!(s.ack("h1", 2), 2);
            let p = s.pending("h1", 0, 10);
            assert_eq!(p.iter().map(|b| b.sequence).collect::<Vec<_>>(), vec![3]);
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.stats().pending_batches, 2);
        assert_eq!(s.hosts(), vec!["h1".to_string(), "h2".to_string()]);
        assert_eq!(
            s.append("h1", ev(1), "t", 0).unwrap(),
            4,
            "numbering resumes"
        );
        assert_eq!(s.pending("h1", 3, 10).len(), 1);
        s.ack("h1", 4);
        s.ack("h2", 1);
        assert!(s.is_empty());
        assert_eq!(s.stats().pending_bytes, 0);
    }

    #[test]
    fn full_spool_drops_oldest_counts_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.max_bytes = 2000;
        let mut seqs = Vec::new();
        for _ in 0..20 {
            seqs.push(s.append("h", ev(20), "t", 0).unwrap());
        }
        let st = s.stats();
        assert!(st.pending_bytes <= 2000, "{st:?}");
        assert!(st.dropped_batches > 0);
        assert_eq!(st.dropped_events, st.dropped_batches * 20);
        // Every dropped event is reported exactly once: in a pending batch,
        // or (if the batch carrying the report was dropped too) carried on.
        let reported: u64 = s
            .pending("h", 0, 100)
            .iter()
            .map(|b| b.dropped_events)
            .sum();
        assert_eq!(reported + s.unreported_drops(), st.dropped_events);
        let first_kept = s.pending("h", 0, 100)[0].sequence;
        assert_eq!(first_kept, 1 + st.dropped_batches);
        assert_eq!(s.unreported_drops(), 0);
    }

    #[test]
    fn resequencing_moves_pending_batches_past_the_collectors_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append("h", ev(1), "t", 0).unwrap();
        s.append("h", ev(2), "t", 0).unwrap();
        s.resequence_after("h", 100).unwrap();
        let p = s.pending("h", 0, 10);
        assert_eq!(
            p.iter().map(|b| b.sequence).collect::<Vec<_>>(),
            vec![101, 102]
        );
        assert_eq!(s.append("h", ev(1), "t", 0).unwrap(), 103);
    }
}
