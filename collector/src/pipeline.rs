//! The engine task: the one owner of the [`Engine`]. It replays the durable
//! log on start, then takes durable batches, wall-clock ticks and feed
//! updates, and turns the engine's alerts into durable outbox entries.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use outflow_core::alert::Alert;
use outflow_core::baseline::AppDayStats;
use outflow_core::engine::Engine;
use outflow_core::Timestamp;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::fleet::FeedView;
use crate::ingest::DurableBatch;
use crate::metrics::Metrics;
use crate::store::{IndexEntry, Store, StoreError};

/// Messages to an engine task besides batches.
pub enum Control {
    Feed(FeedView),
    Partials(oneshot::Sender<Vec<AppDayStats>>),
    Hosts(oneshot::Sender<u64>),
}

/// Which engine shard a host belongs to (FNV-1a: stable across restarts).
pub fn shard_of(host: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The engine shards of a collector: hosts are split over several engine
/// tasks (each a single-threaded [`Engine`]) so scoring uses several cores.
/// Hosts never move between shards, so per-host windows stay whole; the
/// shards' partials are merged per (app, day) before they are shipped, and
/// every shard scores against the same fleet baseline.
#[derive(Clone)]
pub struct EngineShards {
    pub batches: Vec<mpsc::Sender<DurableBatch>>,
    pub control: Vec<mpsc::Sender<Control>>,
}

impl EngineShards {
    /// Hands a durable batch of `host` to its shard (waits when it is full:
    /// backpressure). Err when the engine has stopped.
    pub async fn send(&self, host: &str, batch: DurableBatch) -> Result<(), ()> {
        let i = shard_of(host, self.batches.len());
        self.batches[i].send(batch).await.map_err(|_| ())
    }

    pub async fn feed(&self, view: FeedView) -> Result<(), ()> {
        for c in &self.control {
            c.send(Control::Feed(view.clone())).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Every shard's contributions, merged per (app, day).
    pub async fn partials(&self) -> Result<Vec<AppDayStats>, ()> {
        let mut merged: std::collections::BTreeMap<(String, i64), AppDayStats> =
            std::collections::BTreeMap::new();
        for c in &self.control {
            let (tx, rx) = oneshot::channel();
            c.send(Control::Partials(tx)).await.map_err(|_| ())?;
            for p in rx.await.map_err(|_| ())? {
                match merged.get_mut(&(p.app.clone(), p.day)) {
                    Some(m) => m.merge(&p),
                    None => {
                        merged.insert((p.app.clone(), p.day), p);
                    }
                }
            }
        }
        Ok(merged.into_values().collect())
    }

    pub async fn hosts(&self) -> Result<u64, ()> {
        let mut n = 0;
        for c in &self.control {
            let (tx, rx) = oneshot::channel();
            c.send(Control::Hosts(tx)).await.map_err(|_| ())?;
            n += rx.await.map_err(|_| ())?;
        }
        Ok(n)
    }
}

/// Turns engine alerts into durable outbox entries (once per alert id).
pub struct AlertRaiser {
    pub store: Store,
    pub sinks: Vec<&'static str>,
    pub metrics: Arc<Metrics>,
    pub notify: Arc<Notify>,
}

impl AlertRaiser {
    pub fn raise(&self, alerts: Vec<Alert>) -> Result<usize, StoreError> {
        let mut n = 0;
        for a in alerts {
            let end = Timestamp::parse_rfc3339(&a.window_end)
                .map(|t| t.as_micros())
                .unwrap_or(0);
            if self
                .store
                .raise_alert(&a.id, end, &a.to_json(), &self.sinks)?
            {
                n += 1;
                tracing::info!(alert = %a.id, host = %a.host, app = %a.app, severity = %a.severity, "{}", a.summary());
            }
        }
        if n > 0 {
            self.metrics.alerts.fetch_add(n as u64, Ordering::Relaxed);
            self.notify.notify_waiters();
        }
        Ok(n)
    }
}

/// Rebuilds the engine from the batch log; returns the highest sequence per
/// host found in the log (to repair high-water marks), and indexes the
/// batches a crash kept out of the sled index.
pub fn replay(
    engines: &mut [Engine],
    store: &Store,
    raiser: &AlertRaiser,
    metrics: &Metrics,
) -> Result<std::collections::HashMap<String, u64>, StoreError> {
    let mut seen = std::collections::HashMap::new();
    let mut n = 0u64;
    let indexed = store.indexed_through()?;
    let mut to_index = Vec::new();
    for sb in store.iter_log() {
        let sb = sb?;
        if indexed.is_none_or(|i| sb.idx > i) {
            to_index.push(IndexEntry {
                idx: sb.idx,
                host: sb.batch.host_id.clone(),
                sequence: sb.batch.sequence,
                min_ts: sb.min_ts,
                max_ts: sb.max_ts,
            });
            if to_index.len() >= 4096 {
                store.index(&std::mem::take(&mut to_index))?;
            }
        }
        let host = sb.batch.host_id.clone();
        let seq = sb.batch.sequence;
        let e = seen.entry(host.clone()).or_insert(0u64);
        *e = (*e).max(seq);
        let shard = shard_of(&host, engines.len());
        let engine = &mut engines[shard];
        match crate::ingest::batch_events(sb.batch) {
            Ok(events) => {
                for ev in &events {
                    engine.ingest(ev);
                }
                metrics
                    .engine_events
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(host = %host, sequence = seq, error = %e, "stored batch no longer converts; skipped")
            }
        }
        n += 1;
        if n.is_multiple_of(1024) {
            raiser.raise(engine.drain_alerts())?;
        }
    }
    if !to_index.is_empty() {
        store.index(&to_index)?;
    }
    for engine in engines.iter_mut() {
        raiser.raise(engine.drain_alerts())?;
    }
    metrics.replayed_batches.fetch_add(n, Ordering::Relaxed);
    Ok(seen)
}

/// Estimates "now" in event time: the newest event time seen, advanced by
/// the wall-clock time since it last advanced. Live agents: ≈ wall clock.
/// Historic data streamed fast: windows still close as data flows, and idle
/// hosts' windows close once the stream pauses for `lateness`.
struct EventClock {
    max_ts: Timestamp,
    at: Instant,
}

impl EventClock {
    fn now(&mut self, engine_max: Timestamp) -> Timestamp {
        if engine_max > self.max_ts {
            self.max_ts = engine_max;
            self.at = Instant::now();
        }
        if self.max_ts == Timestamp::MIN {
            return Timestamp::MIN;
        }
        let elapsed = self.at.elapsed().as_micros().min(i64::MAX as u128) as i64;
        self.max_ts.saturating_add_us(elapsed)
    }
}

/// Runs the engine until the batch channel closes.
pub async fn run_engine(
    mut engine: Engine,
    mut batches: mpsc::Receiver<DurableBatch>,
    mut control: mpsc::Receiver<Control>,
    raiser: Arc<AlertRaiser>,
    metrics: Arc<Metrics>,
    tick: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = EventClock {
        max_ts: Timestamp::MIN,
        at: Instant::now(),
    };
    let lateness = engine.config().lateness_us();
    let mut control_open = true;
    loop {
        tokio::select! {
            b = batches.recv() => {
                let Some(b) = b else { break };
                metrics.engine_queue.fetch_sub(1, Ordering::Relaxed);
                for ev in &b.events {
                    engine.ingest(ev);
                }
                metrics.engine_events.fetch_add(b.events.len() as u64, Ordering::Relaxed);
                let alerts = engine.drain_alerts();
                if !alerts.is_empty() {
                    if let Err(e) = raiser.raise(alerts) {
                        tracing::error!(error = %e, "cannot store alerts");
                    }
                }
            }
            c = control.recv(), if control_open => {
                match c {
                    Some(Control::Feed(f)) => {
                        if let Some((_, b)) = f.baseline {
                            engine.set_fleet_baseline(b);
                        }
                        if let Some((v, p)) = f.policy {
                            tracing::debug!(version = v, "policy applied");
                            engine.set_policy(p);
                        }
                        metrics.feed_updates.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Control::Partials(tx)) => {
                        let _ = tx.send(engine.local_partials());
                    }
                    Some(Control::Hosts(tx)) => {
                        let _ = tx.send(engine.stats().hosts);
                    }
                    None => control_open = false,
                }
            }
            _ = ticker.tick() => {
                let now = clock.now(engine.max_ts());
                if now != Timestamp::MIN {
                    engine.advance_to(now.saturating_sub_us(lateness));
                }
                let st = engine.stats();
                metrics.windows_closed.store(st.windows_closed, Ordering::Relaxed);
                metrics.late_records.store(st.late_records, Ordering::Relaxed);
                let alerts = engine.drain_alerts();
                if !alerts.is_empty() {
                    if let Err(e) = raiser.raise(alerts) {
                        tracing::error!(error = %e, "cannot store alerts");
                    }
                }
            }
        }
    }
}
