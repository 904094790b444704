//! `outflow replay --shards N`: the input's hosts split over N engines on N
//! threads, the way collectors split a fleet.
//!
//! A reader thread cuts the input into chunks of whole lines and hands chunk
//! `c` to worker `c % N`, which parses it and passes every other worker the
//! events of its hosts. Each worker therefore sees its own hosts' events in
//! input order, and parsing is shared too. Every `EXCHANGE_CHUNKS` chunks the
//! workers swap their local baselines (as collectors ship partials to the
//! aggregator) and judge against the sum: a shard's view of the others' hosts
//! is at most that many chunks old. Chunking, ownership and exchange points
//! depend only on the input, so for a given N the alerts are the same on
//! every run and machine, emitted in chunk order, then worker order.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use outflow_core::baseline::AppDayStats;
use outflow_core::baseline::FleetBaseline;
use outflow_core::telemetry::parse_line_bytes;
use outflow_core::{Alert, Engine, EngineStats, Event, Timestamp};

use crate::replay::ReplaySummary;

/// How the input is cut and how often shards swap baselines.
#[derive(Clone, Copy, Debug)]
pub struct ShardOptions {
    /// Lines per chunk.
    pub chunk_lines: usize,
    /// Chunks between baseline exchanges.
    pub exchange_chunks: u64,
}

impl Default for ShardOptions {
    fn default() -> Self {
        // ~250 k lines between exchanges.
        ShardOptions {
            chunk_lines: 4096,
            exchange_chunks: 64,
        }
    }
}
/// Messages in flight per channel: bounds memory.
const IN_FLIGHT: usize = 4;
/// Rejected-line examples kept.
const EXAMPLES: usize = 20;

struct RawChunk {
    /// Whole lines, newlines included.
    data: Vec<u8>,
    /// Line number of the chunk's first line (1-based).
    first_line: u64,
    /// Lines in the chunk (blank ones included).
    lines: u64,
}

/// What one worker sends another.
enum Part {
    /// The receiver's hosts' events of the sender's chunk.
    Events(Vec<Event>),
    /// The sender's local baseline at an exchange point.
    Partials(Arc<Vec<AppDayStats>>),
    /// The input ended at the chunk the receiver waits for.
    End,
}

/// What a worker tells the main thread after each chunk.
struct ChunkDone {
    alerts: Vec<Alert>,
    /// Input bytes of the chunk (owner only, else 0).
    bytes: u64,
}

#[derive(Default)]
struct WorkerTally {
    events: u64,
    rejected: u64,
    rejected_by_reason: BTreeMap<String, u64>,
    examples: Vec<(u64, String)>,
    lines: u64,
}

/// The shard of a host: FNV-1a of its name (stable across runs and builds).
pub fn shard_of(host: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Streams `input` through `engines` (one per shard, at least two).
pub fn run_sharded(
    input: &mut (dyn BufRead + Send),
    engines: Vec<Engine>,
    opts: ShardOptions,
    on_alert: &mut dyn FnMut(&Alert) -> io::Result<()>,
    on_progress: &mut dyn FnMut(u64),
) -> anyhow::Result<ReplaySummary> {
    let started = Instant::now();
    let n = engines.len();
    anyhow::ensure!(n >= 2, "sharded replay needs at least two engines");
    anyhow::ensure!(
        opts.chunk_lines > 0 && opts.exchange_chunks > 0,
        "chunk lines and exchange interval must be positive"
    );
    // Reader → owner of each chunk.
    let mut chunk_tx = Vec::new();
    let mut chunk_rx = Vec::new();
    for _ in 0..n {
        let (tx, rx) = sync_channel::<io::Result<RawChunk>>(IN_FLIGHT);
        chunk_tx.push(tx);
        chunk_rx.push(rx);
    }
    // Worker v → worker w: peer[v][w].
    let mut peer_tx: Vec<Vec<Option<SyncSender<Part>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut peer_rx: Vec<Vec<Option<Receiver<Part>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for v in 0..n {
        for w in 0..n {
            if v != w {
                let (tx, rx) = sync_channel::<Part>(IN_FLIGHT);
                peer_tx[v][w] = Some(tx);
                peer_rx[w][v] = Some(rx);
            }
        }
    }
    let mut done_tx = Vec::new();
    let mut done_rx = Vec::new();
    for _ in 0..n {
        let (tx, rx) = sync_channel::<ChunkDone>(IN_FLIGHT * 2);
        done_tx.push(tx);
        done_rx.push(rx);
    }

    let mut s = ReplaySummary::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(move || read_chunks(input, opts.chunk_lines, chunk_tx));
        let mut handles = Vec::new();
        let mut chunk_rx = chunk_rx.into_iter();
        let mut done_tx = done_tx.into_iter();
        for (w, (engine, (to, from))) in engines
            .into_iter()
            .zip(peer_tx.into_iter().zip(peer_rx))
            .enumerate()
        {
            let Some(chunks) = chunk_rx.next() else {
                break;
            };
            let Some(done) = done_tx.next() else {
                break;
            };
            let ex = opts.exchange_chunks;
            handles.push(scope.spawn(move || worker(w, n, ex, engine, chunks, to, from, done)));
        }
        // Alerts in chunk order, then worker order.
        let mut bytes = 0u64;
        'chunks: loop {
            for rx in &done_rx {
                match rx.recv() {
                    Ok(d) => {
                        bytes += d.bytes;
                        for a in &d.alerts {
                            s.alerts += 1;
                            on_alert(a)?;
                        }
                    }
                    Err(_) => break 'chunks,
                }
            }
            on_progress(bytes);
        }
        // Drain what the other workers sent for the last chunk, if anything.
        for rx in &done_rx {
            while let Ok(d) = rx.recv() {
                for a in &d.alerts {
                    s.alerts += 1;
                    on_alert(a)?;
                }
            }
        }
        drop(done_rx);
        let mut examples = Vec::new();
        let mut stats = EngineStats::default();
        for h in handles {
            let (tally, engine_stats, flushed) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a replay worker panicked"))??;
            for a in &flushed {
                s.alerts += 1;
                on_alert(a)?;
            }
            s.events += tally.events;
            s.rejected += tally.rejected;
            s.lines = s.lines.max(tally.lines);
            for (k, v) in tally.rejected_by_reason {
                *s.rejected_by_reason.entry(k).or_default() += v;
            }
            examples.extend(tally.examples);
            stats.add(&engine_stats);
        }
        examples.sort();
        s.rejected_examples = examples
            .into_iter()
            .take(EXAMPLES)
            .map(|(_, e)| e)
            .collect();
        s.engine = stats;
        Ok(())
    })?;
    s.seconds = started.elapsed().as_secs_f64();
    s.events_per_sec = if s.seconds > 0.0 {
        s.events as f64 / s.seconds
    } else {
        0.0
    };
    Ok(s)
}

fn read_chunks(
    input: &mut (dyn BufRead + Send),
    chunk_lines: usize,
    to: Vec<SyncSender<io::Result<RawChunk>>>,
) {
    let mut line_no = 0u64;
    for c in 0usize.. {
        let mut chunk = RawChunk {
            data: Vec::with_capacity(chunk_lines.min(1 << 16) * 200),
            first_line: line_no + 1,
            lines: 0,
        };
        while (chunk.lines as usize) < chunk_lines {
            match input.read_until(b'\n', &mut chunk.data) {
                Ok(0) => break,
                Ok(_) => {
                    chunk.lines += 1;
                    line_no += 1;
                }
                Err(e) => {
                    let _ = to[c % to.len()].send(Err(e));
                    return;
                }
            }
        }
        if chunk.lines == 0 || to[c % to.len()].send(Ok(chunk)).is_err() {
            // Dropping the senders tells each worker the input ended.
            return;
        }
    }
}

type WorkerResult = anyhow::Result<(WorkerTally, EngineStats, Vec<Alert>)>;

#[allow(clippy::too_many_arguments)]
fn worker(
    me: usize,
    n: usize,
    exchange_chunks: u64,
    mut engine: Engine,
    chunks: Receiver<io::Result<RawChunk>>,
    to: Vec<Option<SyncSender<Part>>>,
    from: Vec<Option<Receiver<Part>>>,
    done: SyncSender<ChunkDone>,
) -> WorkerResult {
    let mut tally = WorkerTally::default();
    let idle_us = engine.config().lateness_us() + engine.config().window_us() + 300_000_000;
    let send_all = |part: &dyn Fn() -> Part| {
        for tx in to.iter().flatten() {
            let _ = tx.send(part());
        }
    };
    for c in 0u64.. {
        let owner = (c % n as u64) as usize;
        let mut bytes = 0;
        let events = if owner == me {
            let chunk = match chunks.recv() {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => {
                    send_all(&|| Part::End);
                    return Err(e).context("reading input");
                }
                Err(_) => {
                    send_all(&|| Part::End);
                    break;
                }
            };
            bytes = chunk.data.len() as u64;
            let mut parts: Vec<Vec<Event>> = (0..n).map(|_| Vec::new()).collect();
            parse_chunk(&chunk, n, &mut parts, &mut tally);
            let mine = std::mem::take(&mut parts[me]);
            for (w, part) in parts.into_iter().enumerate() {
                if let Some(tx) = &to[w] {
                    let _ = tx.send(Part::Events(part));
                }
            }
            mine
        } else {
            match from[owner].as_ref().map(Receiver::recv) {
                Some(Ok(Part::Events(ev))) => ev,
                Some(Ok(Part::End)) | Some(Err(_)) | None => break,
                Some(Ok(Part::Partials(_))) => {
                    anyhow::bail!("replay worker {me}: baseline exchange out of step")
                }
            }
        };
        let mut alerts = Vec::new();
        for ev in &events {
            tally.events += 1;
            engine.ingest(ev);
            if engine.pending_alerts() > 0 {
                alerts.extend(engine.drain_alerts());
            }
        }
        let wm = Timestamp(engine.max_ts().0.saturating_sub(idle_us));
        engine.advance_to(wm);
        alerts.extend(engine.drain_alerts());
        if done.send(ChunkDone { alerts, bytes }).is_err() {
            break;
        }
        if (c + 1) % exchange_chunks == 0 {
            let mine = Arc::new(engine.local_partials());
            send_all(&|| Part::Partials(mine.clone()));
            let mut all: Vec<Arc<Vec<AppDayStats>>> = vec![mine.clone()];
            for rx in from.iter().flatten() {
                match rx.recv() {
                    Ok(Part::Partials(p)) => all.push(p),
                    Ok(Part::End) | Err(_) => {
                        anyhow::bail!("replay worker {me}: a peer stopped during an exchange")
                    }
                    Ok(Part::Events(_)) => {
                        anyhow::bail!("replay worker {me}: baseline exchange out of step")
                    }
                }
            }
            engine.set_fleet_baseline(FleetBaseline::from_partials(
                all.iter().flat_map(|p| p.iter()),
            ));
        }
    }
    drop(done);
    engine.flush();
    let flushed = engine.drain_alerts();
    Ok((tally, engine.stats(), flushed))
}

fn parse_chunk(chunk: &RawChunk, n: usize, parts: &mut [Vec<Event>], tally: &mut WorkerTally) {
    for (no, line) in (chunk.first_line..).zip(chunk.data.split_inclusive(|b| *b == b'\n')) {
        let mut end = line.len();
        while end > 0 && (line[end - 1] == b'\n' || line[end - 1] == b'\r') {
            end -= 1;
        }
        let line = &line[..end];
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line_bytes(line) {
            Ok(ev) => parts[shard_of(ev.host(), n)].push(ev),
            Err(error) => {
                tally.rejected += 1;
                *tally
                    .rejected_by_reason
                    .entry(error.reason_key().to_string())
                    .or_default() += 1;
                if tally.examples.len() < EXAMPLES {
                    tally.examples.push((no, format!("line {no}: {error}")));
                }
            }
        }
    }
    tally.lines = tally.lines.max(chunk.first_line + chunk.lines - 1);
}
