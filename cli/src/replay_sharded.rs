//! `outflow replay --shards N`: the input's hosts split over N engines on N
//! threads, the way collectors split a fleet.
//!
//! A reader thread cuts the input into chunks of whole lines and hands chunk
//! `c` to parser `c % N`, which parses it and sends each engine the events of
//! its hosts. Engine `w` takes chunk parts in chunk order (chunk `c` from
//! parser `c % N`), so it sees its hosts' events in input order while parsing
//! runs ahead on every parser. Every `exchange_chunks` chunks the engines swap
//! their local baselines (as collectors ship partials to the aggregator) and
//! judge against the sum: a shard's view of the others' hosts is at most that
//! many chunks old. Chunking, ownership and exchange points depend only on
//! the input, so for a given N the alerts are the same on every run and
//! machine, emitted in chunk order, then engine order.

use std::collections::BTreeMap;
use std::io::{self, BufRead};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use outflow_core::baseline::AppDayStats;
use outflow_core::baseline::FleetBaseline;
use outflow_core::telemetry::parse_line_bytes;
use outflow_core::{Alert, Engine, EngineStats, Event};

use crate::replay::{close_idle_hosts, find_newline, trim_newline, LineReader, ReplaySummary};

/// How the input is cut and how often shards swap baselines.
#[derive(Clone, Copy, Debug)]
pub struct ShardOptions {
    /// Lines per chunk.
    pub chunk_lines: usize,
    /// Chunks between baseline exchanges.
    pub exchange_chunks: u64,
}

/// Default lines per chunk.
pub const CHUNK_LINES: usize = 4096;
/// Default chunks between exchanges (~250 k lines).
pub const EXCHANGE_CHUNKS: u64 = 64;
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

/// An engine's local baseline at an exchange point.
type Partials = Arc<Vec<AppDayStats>>;

/// What a parser sends an engine: its hosts' events of one chunk.
struct Part {
    events: Vec<Event>,
    /// Input bytes of the chunk (engine 0's copy only, else 0).
    bytes: u64,
}

/// What an engine tells the main thread after each chunk.
struct ChunkDone {
    alerts: Vec<Alert>,
    bytes: u64,
}

#[derive(Default)]
struct ParseTally {
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
    // Reader → parser p (chunks c ≡ p mod n).
    let (chunk_tx, chunk_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<io::Result<RawChunk>>(IN_FLIGHT))
        .unzip();
    // Parser p → engine w: parts[p][w] / from_parser[w][p].
    let mut to_engine: Vec<Vec<SyncSender<Part>>> = (0..n).map(|_| Vec::new()).collect();
    let mut from_parser: Vec<Vec<Receiver<Part>>> = (0..n).map(|_| Vec::new()).collect();
    for senders in to_engine.iter_mut() {
        for receivers in from_parser.iter_mut() {
            let (tx, rx) = sync_channel::<Part>(IN_FLIGHT);
            senders.push(tx);
            receivers.push(rx);
        }
    }
    // Engine v → engine w, for baseline exchanges: peer[v][w].
    let mut peer_tx: Vec<Vec<Option<SyncSender<Partials>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut peer_rx: Vec<Vec<Option<Receiver<Partials>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for v in 0..n {
        for w in 0..n {
            if v != w {
                let (tx, rx) = sync_channel(1);
                peer_tx[v][w] = Some(tx);
                peer_rx[w][v] = Some(rx);
            }
        }
    }
    // Parsers → reader: chunk buffers to fill again (a fresh ~1 MiB buffer
    // per chunk costs page faults and zeroing in the kernel).
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(2 * n * IN_FLIGHT);
    // Engine → parser p: spent event vectors.
    let (spent_tx, spent_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<Vec<Event>>(2 * n * IN_FLIGHT))
        .unzip();
    let (done_tx, done_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<ChunkDone>(IN_FLIGHT * 2))
        .unzip();

    let mut s = ReplaySummary::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(move || read_chunks(input, opts.chunk_lines, chunk_tx, recycle_rx));
        let parsers: Vec<_> = chunk_rx
            .into_iter()
            .zip(to_engine)
            .zip(spent_rx)
            .map(|((chunks, to), spent)| {
                let recycle = recycle_tx.clone();
                scope.spawn(move || parse_chunks(chunks, to, spent, recycle))
            })
            .collect();
        drop(recycle_tx);
        let ex = opts.exchange_chunks;
        let engines: Vec<_> = engines
            .into_iter()
            .zip(from_parser)
            .zip(peer_tx.into_iter().zip(peer_rx))
            .zip(done_tx)
            .enumerate()
            .map(|(w, (((engine, parts), (to, from)), done))| {
                let spent = spent_tx.clone();
                scope.spawn(move || run_engine(w, n, ex, engine, parts, spent, to, from, done))
            })
            .collect();
        // Alerts in chunk order, then engine order.
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
        // What the other engines sent for the last chunk, if anything.
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
        for h in parsers {
            let tally = h
                .join()
                .map_err(|_| anyhow::anyhow!("a replay parser panicked"))??;
            s.rejected += tally.rejected;
            s.lines = s.lines.max(tally.lines);
            for (k, v) in tally.rejected_by_reason {
                *s.rejected_by_reason.entry(k).or_default() += v;
            }
            examples.extend(tally.examples);
        }
        let mut stats = EngineStats::default();
        for h in engines {
            let (events, engine_stats, flushed) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a replay engine panicked"))??;
            for a in &flushed {
                s.alerts += 1;
                on_alert(a)?;
            }
            s.events += events;
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
    recycled: Receiver<Vec<u8>>,
) {
    let mut reader = LineReader::new(input);
    let mut line_no = 0u64;
    for c in 0usize.. {
        let data = match recycled.try_recv() {
            Ok(mut d) => {
                d.clear();
                d
            }
            Err(_) => Vec::with_capacity(chunk_lines.min(1 << 16) * 200),
        };
        let mut chunk = RawChunk {
            data,
            first_line: line_no + 1,
            lines: 0,
        };
        match reader.read_lines(chunk_lines, &mut chunk.data) {
            Ok(n) => {
                chunk.lines = n as u64;
                line_no += n as u64;
            }
            Err(e) => {
                let _ = to[c % to.len()].send(Err(e));
                return;
            }
        }
        if chunk.lines == 0 || to[c % to.len()].send(Ok(chunk)).is_err() {
            // Dropping the senders tells every parser the input ended.
            return;
        }
    }
}

/// Parses its chunks and sends every engine its hosts' events of each.
/// Returning drops its senders: the engines learn the input ended.
fn parse_chunks(
    chunks: Receiver<io::Result<RawChunk>>,
    to: Vec<SyncSender<Part>>,
    spent: Receiver<Vec<Event>>,
    recycle: SyncSender<Vec<u8>>,
) -> anyhow::Result<ParseTally> {
    let mut tally = ParseTally::default();
    let n = to.len();
    let mut pool: Vec<Vec<Event>> = Vec::new();
    for chunk in chunks.iter() {
        let chunk = chunk.context("reading input")?;
        // Events the engines are done with are freed here, on the thread
        // that allocated them (cheaper), and their vectors reused.
        while let Ok(mut v) = spent.try_recv() {
            v.clear();
            if pool.len() < n * (IN_FLIGHT + 2) {
                pool.push(v);
            }
        }
        let mut parts: Vec<Vec<Event>> = (0..n).map(|_| pool.pop().unwrap_or_default()).collect();
        parse_chunk(&chunk, n, &mut parts, &mut tally);
        let chunk_bytes = chunk.data.len() as u64;
        // Back to the reader; dropped here if it has enough.
        let _ = recycle.try_send(chunk.data);
        for (w, (events, tx)) in parts.into_iter().zip(&to).enumerate() {
            let bytes = if w == 0 { chunk_bytes } else { 0 };
            if tx.send(Part { events, bytes }).is_err() {
                return Ok(tally);
            }
        }
    }
    Ok(tally)
}

type EngineResult = anyhow::Result<(u64, EngineStats, Vec<Alert>)>;

#[allow(clippy::too_many_arguments)]
fn run_engine(
    me: usize,
    n: usize,
    exchange_chunks: u64,
    mut engine: Engine,
    parts: Vec<Receiver<Part>>,
    spent: Vec<SyncSender<Vec<Event>>>,
    to: Vec<Option<SyncSender<Partials>>>,
    from: Vec<Option<Receiver<Partials>>>,
    done: SyncSender<ChunkDone>,
) -> EngineResult {
    let mut events = 0u64;
    for c in 0u64.. {
        // Chunk c comes from parser c mod n; a closed channel is the end.
        let p = (c % n as u64) as usize;
        let Ok(part) = parts[p].recv() else {
            break;
        };
        let mut alerts = Vec::new();
        for ev in &part.events {
            events += 1;
            engine.ingest(ev);
            if engine.pending_alerts() > 0 {
                alerts.extend(engine.drain_alerts());
            }
        }
        close_idle_hosts(&mut engine);
        alerts.extend(engine.drain_alerts());
        let bytes = part.bytes;
        // Back to its parser to be freed; dropped here if that is busy.
        let _ = spent[p].try_send(part.events);
        if done.send(ChunkDone { alerts, bytes }).is_err() {
            break;
        }
        if (c + 1) % exchange_chunks == 0 {
            let mine = Arc::new(engine.local_partials());
            for tx in to.iter().flatten() {
                let _ = tx.send(mine.clone());
            }
            let mut all = vec![mine];
            for rx in from.iter().flatten() {
                match rx.recv() {
                    Ok(p) => all.push(p),
                    Err(_) => {
                        anyhow::bail!("replay engine {me}: a peer stopped during an exchange")
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
    Ok((events, engine.stats(), flushed))
}

fn parse_chunk(chunk: &RawChunk, n: usize, parts: &mut [Vec<Event>], tally: &mut ParseTally) {
    let mut rest = chunk.data.as_slice();
    for no in chunk.first_line.. {
        if rest.is_empty() {
            break;
        }
        let end = find_newline(rest).map_or(rest.len(), |p| p + 1);
        let line = trim_newline(&rest[..end]);
        rest = &rest[end..];
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
