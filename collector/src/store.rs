//! The collector's storage: the batch log (append-only segment files, see
//! [`crate::batchlog`]) is the source of truth for received telemetry; sled
//! holds the indexed state, in three trees with prefixed keys:
//!
//! * `ingest`: `H<host>` → the highest sequence accepted for the host (dedup,
//!   survives restarts and log compaction); `I<host>\0<max_ts><idx>` →
//!   `<min_ts><idx>…`, an index for evidence by host and time (one entry per
//!   host, log segment and index write: the positions of that host's batches,
//!   `idx` the first; `max_ts`/`min_ts` span them all); `W` → the log
//!   position indexed so far. These are written after the batches are
//!   durable in the log, off the acknowledgement path, and repaired from the
//!   log on start.
//! * `alerts`: `A<id>` → the alert JSON (dedup by stable id, evidence);
//!   `T<window_end><id>` (for compaction); `O<sink>\0<idx>` → alert JSON, one
//!   durable outbox per sink, deleted only after a confirmed delivery.
//! * `meta`: counters (partials epoch).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use outflow_proto::pb;
use prost::Message;

use crate::batchlog::{BatchLog, LogEntry, LogError, LogRecord};

/// Segment size of the batch log.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled database at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// One batch as stored in the log.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub idx: u64,
    pub arrival_ms: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub batch: pb::Batch,
}

impl StoredBatch {
    fn decode(r: LogRecord) -> Result<StoredBatch, StoreError> {
        let batch = pb::Batch::decode(r.bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            key: format!("log {}", r.idx),
            reason: e.to_string(),
        })?;
        Ok(StoredBatch {
            idx: r.idx,
            arrival_ms: r.arrival_ms,
            min_ts: r.min_ts,
            max_ts: r.max_ts,
            batch,
        })
    }
}

/// A batch to append: its host and sequence, the event-time span and the
/// encoded prost bytes (as received: no copy, no re-encoding).
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub host: String,
    pub sequence: u64,
    pub arrival_ms: i64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub bytes: Bytes,
}

/// What the index keeps of a durable batch.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub idx: u64,
    pub host: String,
    pub sequence: u64,
    pub min_ts: i64,
    pub max_ts: i64,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    log: BatchLog,
    ingest: sled::Tree,
    alerts: sled::Tree,
    meta: sled::Tree,
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

/// Order-preserving encoding of an i64 (sign bit flipped, big endian).
fn ord_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ord_i64(b: &[u8]) -> Option<i64> {
    let a: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(a) ^ (1 << 63)) as i64)
}

fn read_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn hwm_key(host: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + host.len());
    k.push(b'H');
    k.extend_from_slice(host.as_bytes());
    k
}

fn index_key(host: &str, max_ts: i64, idx: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(18 + host.len());
    k.push(b'I');
    k.extend_from_slice(host.as_bytes());
    k.push(0);
    k.extend_from_slice(&ord_i64(max_ts));
    k.extend_from_slice(&be(idx));
    k
}

const INDEXED_KEY: &[u8] = b"W";

fn outbox_prefix(sink: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + sink.len());
    k.push(b'O');
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k
}

impl Store {
    /// Opens the store in `path`: sled there, the batch log in
    /// `path/batches` (a torn tail is truncated, with a log line).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SEGMENT_BYTES)
    }

    /// [`open`](Self::open) with a given log segment size (tests).
    pub fn open_with(path: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 << 20)
            // The batch log makes batches durable; sled's state (index,
            // marks) is repaired from the log on start, so a lazy periodic
            // flush is enough for it. Outboxes flush explicitly.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let log = BatchLog::open(&path.join("batches"), segment_bytes)?;
        Ok(Store {
            ingest: db.open_tree("ingest")?,
            alerts: db.open_tree("alerts")?,
            meta: db.open_tree("meta")?,
            log,
            db,
        })
    }

    /// Makes sled's state durable (outboxes, alerts, index).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Makes every batch appended so far durable: one `fdatasync` for all
    /// writers (the group commit). Blocking.
    pub fn sync_log(&self) -> Result<(), StoreError> {
        Ok(self.log.sync()?)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.log.size_on_disk()
    }

    /// The highest accepted sequence of every host, as indexed (the log
    /// replay adds what the index has not caught up with).
    pub fn load_high_water(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.ingest.scan_prefix(b"H") {
            let (k, v) = kv?;
            let host = String::from_utf8_lossy(&k[1..]).into_owned();
            let seq = read_u64(&v).ok_or_else(|| StoreError::Corrupt {
                key: format!("H{host}"),
                reason: "sequence is not 8 bytes".into(),
            })?;
            out.insert(host, seq);
        }
        Ok(out)
    }

    /// Appends batches to the log (not yet durable: call
    /// [`sync_log`](Self::sync_log)); returns their positions. Blocking.
    pub fn append(&self, batches: &[NewBatch]) -> Result<Vec<u64>, StoreError> {
        let entries: Vec<LogEntry<'_>> = batches
            .iter()
            .map(|b| LogEntry {
                host: &b.host,
                sequence: b.sequence,
                arrival_ms: b.arrival_ms,
                min_ts: b.min_ts,
                max_ts: b.max_ts,
                bytes: &b.bytes,
            })
            .collect();
        Ok(self.log.append(&entries)?)
    }

    /// Records durable batches in the index: evidence entries, the hosts'
    /// high-water marks and the indexed position, atomically. Only ever
    /// called for batches already durable in the log.
    pub fn index(&self, entries: &[IndexEntry]) -> Result<(), StoreError> {
        let mut wb = sled::Batch::default();
        let mut hwm: HashMap<&str, u64> = HashMap::new();
        // One entry per (host, segment): a few sled writes per group commit
        // instead of one per batch.
        let mut groups: HashMap<(&str, u64), (i64, i64, Vec<u64>)> = HashMap::new();
        let mut top = None;
        for e in entries {
            let g = groups
                .entry((e.host.as_str(), crate::batchlog::segment_of(e.idx)))
                .or_insert((i64::MAX, i64::MIN, Vec::new()));
            g.0 = g.0.min(e.min_ts);
            g.1 = g.1.max(e.max_ts);
            g.2.push(e.idx);
            let h = hwm.entry(e.host.as_str()).or_insert(0);
            *h = (*h).max(e.sequence);
            top = top.max(Some(e.idx));
        }
        for ((host, _), (min_ts, max_ts, idxs)) in groups {
            let mut v = Vec::with_capacity(8 + 8 * idxs.len());
            v.extend_from_slice(&ord_i64(min_ts));
            for i in &idxs {
                v.extend_from_slice(&be(*i));
            }
            wb.insert(index_key(host, max_ts, idxs[0]), v);
        }
        for (host, seq) in hwm {
            wb.insert(hwm_key(host), be(seq).to_vec());
        }
        if let Some(t) = top {
            if Some(t) > self.indexed_through()? {
                wb.insert(INDEXED_KEY, be(t).to_vec());
            }
        }
        self.ingest.apply_batch(wb)?;
        Ok(())
    }

    /// The highest log position recorded in the index.
    pub fn indexed_through(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.ingest.get(INDEXED_KEY)?.as_deref().and_then(read_u64))
    }

    /// Every stored batch in arrival order (replay on start).
    pub fn iter_log(&self) -> impl Iterator<Item = Result<StoredBatch, StoreError>> + '_ {
        self.log
            .iter()
            .map(|r| r.map_err(StoreError::from).and_then(StoredBatch::decode))
    }

    pub fn log_len(&self) -> usize {
        self.log.iter().count()
    }

    /// The batches of `host` whose events may fall in `[start, end]`
    /// (event time, microseconds).
    pub fn batches_of_host(
        &self,
        host: &str,
        start: i64,
        end: i64,
    ) -> Result<Vec<StoredBatch>, StoreError> {
        let from = index_key(host, start, 0);
        let mut to = Vec::with_capacity(2 + host.len());
        to.push(b'I');
        to.extend_from_slice(host.as_bytes());
        to.push(1);
        let mut out = Vec::new();
        for kv in self.ingest.range(from..to) {
            let (k, v) = kv?;
            let Some(min_ts) = from_ord_i64(&v) else {
                continue;
            };
            if min_ts > end {
                continue;
            }
            let Some(first) = read_u64(&k[k.len() - 8..]) else {
                continue;
            };
            let idxs: Vec<u64> = if v.len() > 8 {
                v[8..].chunks_exact(8).filter_map(read_u64).collect()
            } else {
                vec![first]
            };
            for idx in idxs {
                if let Some(r) = self.log.read(idx)? {
                    out.push(StoredBatch::decode(r)?);
                }
            }
        }
        Ok(out)
    }

    /// Deletes log segments whose batches all arrived before `cutoff_ms`
    /// and alerts whose window ended before `cutoff_us`. High-water marks
    /// stay (dedup): the index covering a segment is made durable before
    /// the segment goes. Returns (batches, alerts) removed.
    pub fn compact(&self, cutoff_ms: i64, cutoff_us: i64) -> Result<(u64, u64), StoreError> {
        let mut batches = 0;
        let indexed = self.indexed_through()?;
        if let (Some(end), Some(indexed)) = (self.log.expired_before(cutoff_ms), indexed) {
            if indexed >= end.saturating_sub(1) {
                let mut wb = sled::Batch::default();
                for kv in self.ingest.scan_prefix(b"I") {
                    let (k, _) = kv?;
                    if read_u64(&k[k.len() - 8..]).is_some_and(|i| i < end) {
                        wb.remove(k);
                    }
                }
                self.ingest.apply_batch(wb)?;
                self.db.flush()?;
                batches = self.log.remove_before(end)?;
            }
        }
        let mut wb = sled::Batch::default();
        let mut alerts = 0;
        let mut to = vec![b'T'];
        to.extend_from_slice(&ord_i64(cutoff_us));
        for kv in self.alerts.range(b"T".to_vec()..to) {
            let (k, _) = kv?;
            wb.remove(k.clone());
            let mut ak = vec![b'A'];
            ak.extend_from_slice(&k[9..]);
            wb.remove(ak);
            alerts += 1;
        }
        self.alerts.apply_batch(wb)?;
        Ok((batches, alerts))
    }

    /// Whether an alert with this id was already raised.
    pub fn has_alert(&self, id: &str) -> Result<bool, StoreError> {
        let mut k = vec![b'A'];
        k.extend_from_slice(id.as_bytes());
        Ok(self.alerts.contains_key(k)?)
    }

    /// The JSON of a raised alert.
    pub fn alert_json(&self, id: &str) -> Result<Option<String>, StoreError> {
        let mut k = vec![b'A'];
        k.extend_from_slice(id.as_bytes());
        Ok(self
            .alerts
            .get(k)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records a new alert and queues it in every sink's outbox, atomically.
    /// Returns false (and writes nothing) when the id is already known.
    pub fn raise_alert(
        &self,
        id: &str,
        window_end_us: i64,
        json: &str,
        sinks: &[&str],
    ) -> Result<bool, StoreError> {
        if self.has_alert(id)? {
            return Ok(false);
        }
        let mut wb = sled::Batch::default();
        let mut k = vec![b'A'];
        k.extend_from_slice(id.as_bytes());
        wb.insert(k, json.as_bytes());
        let mut t = vec![b'T'];
        t.extend_from_slice(&ord_i64(window_end_us));
        t.extend_from_slice(id.as_bytes());
        wb.insert(t, &[][..]);
        for s in sinks {
            let mut o = outbox_prefix(s);
            o.extend_from_slice(&be(self.db.generate_id()?));
            wb.insert(o, json.as_bytes());
        }
        self.alerts.apply_batch(wb)?;
        Ok(true)
    }

    /// Up to `max` queued alerts of a sink, oldest first: (key, json).
    pub fn outbox_peek(
        &self,
        sink: &str,
        max: usize,
    ) -> Result<Vec<(sled::IVec, String)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.alerts.scan_prefix(outbox_prefix(sink)).take(max) {
            let (k, v) = kv?;
            out.push((k, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Removes delivered entries and makes the removal durable.
    pub async fn outbox_ack(&self, keys: &[sled::IVec]) -> Result<(), StoreError> {
        let mut wb = sled::Batch::default();
        for k in keys {
            wb.remove(k.clone());
        }
        self.alerts.apply_batch(wb)?;
        self.flush().await
    }

    pub fn outbox_len(&self, sink: &str) -> usize {
        self.alerts.scan_prefix(outbox_prefix(sink)).count()
    }

    /// Next partials epoch: strictly increasing, also across restarts (the
    /// counter is not flushed on its own, so it is also never below the wall
    /// clock in milliseconds).
    pub fn next_epoch(&self) -> Result<u64, StoreError> {
        let now_ms = u64::try_from(crate::ingest::now_ms()).unwrap_or(0);
        let v = self.meta.update_and_fetch(b"epoch", |old| {
            let n = (old.and_then(read_u64).unwrap_or(0) + 1).max(now_ms);
            Some(be(n).to_vec())
        })?;
        Ok(v.as_deref().and_then(read_u64).unwrap_or(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nb(host: &str, seq: u64, arrival_ms: i64, ts: i64) -> NewBatch {
        let b = pb::Batch {
            host_id: host.into(),
            sequence: seq,
            ..Default::default()
        };
        NewBatch {
            host: host.into(),
            sequence: seq,
            arrival_ms,
            min_ts: ts,
            max_ts: ts + 1_000_000,
            bytes: b.encode_to_vec().into(),
        }
    }

    /// Appends, makes durable, then indexes (what ingest does).
    fn commit(s: &Store, batches: &[NewBatch]) {
        let idxs = s.append(batches).unwrap();
        s.sync_log().unwrap();
        let entries: Vec<IndexEntry> = batches
            .iter()
            .zip(idxs)
            .map(|(b, idx)| IndexEntry {
                idx,
                host: b.host.clone(),
                sequence: b.sequence,
                min_ts: b.min_ts,
                max_ts: b.max_ts,
            })
            .collect();
        s.index(&entries).unwrap();
    }

    #[tokio::test]
    async fn log_high_water_and_index_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        {
            // One-byte segments: each group of appends starts a segment.
            let s = Store::open_with(tmp.path(), 1).unwrap();
            commit(&s, &[nb("a", 1, 10, 0), nb("b", 1, 11, 0)]);
            commit(&s, &[nb("a", 2, 12, 60_000_000)]);
            s.flush().await.unwrap();
        }
        let s = Store::open_with(tmp.path(), 1).unwrap();
        let hwm = s.load_high_water().unwrap();
        assert_eq!(hwm.get("a"), Some(&2));
        assert_eq!(hwm.get("b"), Some(&1));
        let order: Vec<(String, u64)> = s
            .iter_log()
            .map(|b| {
                let b = b.unwrap();
                (b.batch.host_id, b.batch.sequence)
            })
            .collect();
        assert_eq!(
            order,
            vec![("a".into(), 1), ("b".into(), 1), ("a".into(), 2)]
        );
        let found = s.batches_of_host("a", 50_000_000, 70_000_000).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].batch.sequence, 2);
        assert!(s.batches_of_host("c", 0, i64::MAX).unwrap().is_empty());
        // Compaction removes whole old segments, keeps the high-water marks.
        assert_eq!(s.compact(11, 0).unwrap().0, 0);
        let (b, _) = s.compact(12, 0).unwrap();
        assert_eq!(b, 2);
        assert_eq!(s.log_len(), 1);
        assert_eq!(s.load_high_water().unwrap().get("b"), Some(&1));
        assert!(s.batches_of_host("a", 0, 10_000_000).unwrap().is_empty());
    }

    #[test]
    fn one_index_entry_covers_a_hosts_batches_of_a_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        commit(
            &s,
            &[
                nb("d", 1, 10, 0),
                nb("e", 1, 10, 0),
                nb("d", 2, 11, 100_000_000),
            ],
        );
        let entries = s.ingest.scan_prefix(b"Id").count();
        assert_eq!(entries, 1);
        let seqs: Vec<u64> = s
            .batches_of_host("d", 0, 200_000_000)
            .unwrap()
            .iter()
            .map(|b| b.batch.sequence)
            .collect();
        assert_eq!(seqs, vec![1, 2]);
        // The entry spans event time 0..101 s: nothing after it.
        assert!(s
            .batches_of_host("d", 150_000_000, 300_000_000)
            .unwrap()
            .is_empty());
        assert_eq!(s.batches_of_host("e", 0, 1).unwrap().len(), 1);
        assert_eq!(s.load_high_water().unwrap().get("d"), Some(&2));
    }

    #[tokio::test]
    async fn alerts_are_raised_once_and_outboxes_drain() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        assert!(s
            .raise_alert("x1", 100, "{\"id\":\"x1\"}", &["otlp", "file"])
            .unwrap());
        assert!(!s
            .raise_alert("x1", 100, "{\"id\":\"x1\"}", &["otlp", "file"])
            .unwrap());
        assert!(s
            .raise_alert("x2", 200, "{\"id\":\"x2\"}", &["otlp"])
            .unwrap());
        assert_eq!(s.outbox_len("otlp"), 2);
        assert_eq!(s.outbox_len("file"), 1);
        let peek = s.outbox_peek("otlp", 10).unwrap();
        assert_eq!(peek[0].1, "{\"id\":\"x1\"}");
        s.outbox_ack(&[peek[0].0.clone()]).await.unwrap();
        assert_eq!(s.outbox_len("otlp"), 1);
        assert_eq!(s.outbox_len("file"), 1);
        let (_, a) = s.compact(0, 150).unwrap();
        assert_eq!(a, 1);
        assert!(!s.has_alert("x1").unwrap());
        assert!(s.has_alert("x2").unwrap());
        let e1 = s.next_epoch().unwrap();
        let e2 = s.next_epoch().unwrap();
        assert!(e2 > e1 && e1 > 1_700_000_000_000, "{e1} {e2}");
    }
}
