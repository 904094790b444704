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
use std::path::Path;

use outflow_proto::pb;
use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: cannot open: {source} (is another agent using it? is the disk full or read-only?)")]
    Open { path: String, source: sled::Error },
    #[error("spool write failed: {0} (disk full?); the batch's events are counted as dropped")]
    Write(sled::Error),
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
}

pub struct Spool {
    db: sled::Db,
    max_bytes: u64,
    bytes: u64,
    /// Per host: next sequence number to assign.
    next_seq: BTreeMap<String, u64>,
    /// Per batch key: stored size and event count (for accounting).
    index: BTreeMap<(String, u64), (u64, u64)>,
    /// Dropped events not yet reported in a sealed batch.
    unreported_drops: u64,
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

fn parse_batch_key(k: &[u8]) -> Option<(String, u64)> {
    let rest = k.strip_prefix(b"b/")?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let host = std::str::from_utf8(&rest[..nul]).ok()?.to_string();
    let seq = u64::from_be_bytes(rest.get(nul + 1..)?.try_into().ok()?);
    Some((host, seq))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, resuming whatever it holds.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(8 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .map_err(|source| SpoolError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let mut s = Spool {
            db,
            max_bytes,
            bytes: 0,
            next_seq: BTreeMap::new(),
            index: BTreeMap::new(),
            unreported_drops: 0,
            stats: SpoolStats::default(),
        };
        let mut corrupt = Vec::new();
        for kv in s.db.scan_prefix(b"b/") {
            let Ok((k, v)) = kv else { continue };
            let parsed = parse_batch_key(&k).zip(pb::Batch::decode(v.as_ref()).ok());
            match parsed {
                Some(((host, seq), b)) => {
                    s.bytes += v.len() as u64;
                    s.index
                        .insert((host, seq), (v.len() as u64, b.events.len() as u64));
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
            let _ = s.db.remove(k);
        }
        for kv in s.db.scan_prefix(b"s/") {
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
        if let Ok(Some(v)) = s.db.get(b"d") {
            if let Ok(b) = <[u8; 8]>::try_from(v.as_ref()) {
                s.unreported_drops = u64::from_be_bytes(b);
            }
        }
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
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats.clone()
    }

    /// Events lost before they reached the spool (e.g. a full in-memory
    /// queue): reported in the next sealed batch.
    pub fn note_dropped(&mut self, events: u64) {
        self.unreported_drops += events;
        self.stats.dropped_events += events;
        let _ = self.db.insert(b"d", &self.unreported_drops.to_be_bytes());
    }

    /// Events dropped and not yet reported in a batch.
    pub fn unreported_drops(&self) -> u64 {
        self.unreported_drops
    }

    /// Seals `events` of `host` into the next batch, stores it durably and
    /// returns its sequence number. Dropped-but-unreported events ride along
    /// in `dropped_events`. On a write failure (disk full) the events are
    /// counted as dropped and an error returned; the agent keeps running.
    pub fn append(
        &mut self,
        host: &str,
        events: Vec<pb::TelemetryEvent>,
        agent_version: &str,
        sealed_unix_ms: i64,
    ) -> Result<u64, SpoolError> {
        let seq = *self.next_seq.get(host).unwrap_or(&1);
        let n_events = events.len() as u64;
        let batch = pb::Batch {
            host_id: host.to_string(),
            sequence: seq,
            sealed_unix_ms,
            events,
            dropped_events: self.unreported_drops,
            agent_version: agent_version.to_string(),
        };
        let bytes = batch.encode_to_vec();
        let size = bytes.len() as u64;
        // Make room: drop the oldest batches (explicit, counted policy).
        while self.bytes + size > self.max_bytes {
            let Some(((h, s), (sz, ev))) = self.index.iter().next().map(|(k, v)| (k.clone(), *v))
            else {
                break;
            };
            let carried = self
                .db
                .get(batch_key(&h, s))
                .ok()
                .flatten()
                .and_then(|v| pb::Batch::decode(v.as_ref()).ok())
                .map(|b| b.dropped_events)
                .unwrap_or(0);
            let _ = self.db.remove(batch_key(&h, s));
            self.index.remove(&(h.clone(), s));
            self.bytes -= sz;
            self.stats.dropped_batches += 1;
            self.stats.dropped_events += ev;
            self.unreported_drops += ev + carried;
            tracing::warn!(
                host = %h,
                seq = s,
                events = ev,
                "spool full: dropped the oldest unacknowledged batch (reported to the collector in the next batch)"
            );
        }
        // The batch carries the drops known when it was sealed, including
        // those just made.
        let batch = pb::Batch {
            dropped_events: self.unreported_drops,
            ..batch
        };
        let bytes = batch.encode_to_vec();
        let mut tx = sled::Batch::default();
        tx.insert(batch_key(host, seq), bytes.as_slice());
        let mut sk = b"s/".to_vec();
        sk.extend_from_slice(host.as_bytes());
        tx.insert(sk, &(seq + 1).to_be_bytes());
        tx.insert(b"d".as_slice(), &0u64.to_be_bytes());
        let res = self
            .db
            .apply_batch(tx)
            .and_then(|_| self.db.flush().map(|_| ()));
        if let Err(e) = res {
            self.stats.write_errors += 1;
            self.stats.dropped_events += n_events;
            self.unreported_drops += n_events;
            let _ = self.db.remove(batch_key(host, seq));
            return Err(SpoolError::Write(e));
        }
        self.next_seq.insert(host.to_string(), seq + 1);
        self.index
            .insert((host.to_string(), seq), (bytes.len() as u64, n_events));
        self.bytes += bytes.len() as u64;
        self.unreported_drops = 0;
        self.refresh_stats();
        Ok(seq)
    }

    /// Unacknowledged batches of `host` with sequence > `after`, oldest
    /// first, at most `limit`.
    pub fn pending(&self, host: &str, after: u64, limit: usize) -> Vec<pb::Batch> {
        let start = batch_key(host, after.saturating_add(1));
        let end = batch_key(host, u64::MAX);
        self.db
            .range(start..=end)
            .filter_map(|kv| kv.ok())
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
            if let Some((sz, _)) = self.index.remove(&(h.clone(), *s)) {
                self.bytes -= sz;
            }
        }
        if !done.is_empty() {
            if let Err(e) = self.db.apply_batch(tx) {
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
        let pending = self.pending(host, 0, usize::MAX);
        let mut next = known_through + 1;
        let mut tx = sled::Batch::default();
        let mut new_index = Vec::new();
        for mut b in pending {
            let old = b.sequence;
            tx.remove(batch_key(host, old));
            self.index.remove(&(host.to_string(), old));
            b.sequence = next;
            let bytes = b.encode_to_vec();
            new_index.push((
                (host.to_string(), next),
                (bytes.len() as u64, b.events.len() as u64),
            ));
            tx.insert(batch_key(host, next), bytes);
            next += 1;
        }
        let mut sk = b"s/".to_vec();
        sk.extend_from_slice(host.as_bytes());
        tx.insert(sk, &next.to_be_bytes());
        self.db.apply_batch(tx).map_err(SpoolError::Write)?;
        self.db.flush().map_err(SpoolError::Write)?;
        self.index.extend(new_index);
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
