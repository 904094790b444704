//! `outflow replay --shards N`: the input's hosts split over N engines on N
//! threads, the way collectors split a fleet.
//!
//! A reader thread cuts the input into chunks of whole lines and hands chunk
//! `c` to router `c % N`, which reads each line's host and sends each engine
//! the places of its hosts' lines in the shared chunk. Engine `w` takes chunk
//! parts in chunk order (chunk `c` from router `c % N`), so it sees its hosts'
//! events in input order, and parses its lines itself: an event is built,
//! used and freed on one thread, and never crosses between cores. Every `exchange_chunks` chunks the engines swap
//! their local baselines (as collectors ship partials to the aggregator) and
//! judge against the sum: a shard's view of the others' hosts is at most that
//! many chunks old. Chunking, ownership and exchange points depend only on
//! the input, so for a given N the alerts are the same on every run and
//! machine, emitted in chunk order, then engine order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use outflow_core::baseline::AppDayStats;
use outflow_core::baseline::FleetBaseline;
use outflow_core::telemetry::{parse_line_bytes, parse_line_bytes_ref, ParseError};
use outflow_core::{Alert, Engine, EngineStats};

use crate::replay::{close_idle_hosts, trim_newline, ReplaySummary};

/// How the input is cut and how often shards swap baselines.
#[derive(Clone, Copy, Debug)]
pub struct ShardOptions {
    /// Lines per chunk.
    pub chunk_lines: usize,
    /// Chunks between baseline exchanges.
    pub exchange_chunks: u64,
}

/// Default lines per chunk (~190 KiB of telemetry: a chunk is still in
/// cache when its engines parse it).
pub const CHUNK_LINES: usize = 1024;
/// Default chunks between exchanges (262,144 lines, as with the earlier
/// 64 chunks of 4096: the same exchange points, so the same alerts).
pub const EXCHANGE_CHUNKS: u64 = 256;
/// Input read at a time: more than the input's own buffer (1 MiB, see
/// `open_input`), so it is read straight into the block its chunks share.
const BLOCK: usize = 2 << 20;
/// Lines between looks for idle hosts to close.
const IDLE_LINES: usize = 4096;
/// Messages in flight per channel: bounds memory.
const IN_FLIGHT: usize = 4;
/// Lines an engine parses before ingesting them together.
const PARSE_GROUP: usize = 16;
/// Rejected-line examples kept.
const EXAMPLES: usize = 20;

/// Input that chunks share: a block read from a stream, or a whole file
/// mapped into memory.
pub enum Bytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Read(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// Where sharded replay reads its lines.
pub enum Source<'a> {
    Stream(&'a mut (dyn BufRead + Send)),
    /// A regular file (see `mappable`), mapped a window at a time: chunks
    /// are cut from a window in place, with no copy.
    File(File),
}

/// `path` opened for mapping, if it is a non-empty regular file. The
/// kernel's copy of every block into the reader's buffer is the reader's
/// main cost; a mapped window has its lines read in place.
pub fn mappable(path: &str) -> Option<File> {
    if path == "-" {
        return None;
    }
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && meta.len() > 0).then_some(file)
}

/// Bytes of a file mapped at a time (more for a chunk that does not fit).
/// A window is unmapped when the last of its chunks is done, so at most a
/// few windows are resident.
const MAP_WINDOW: usize = 4 << 20;

/// Windows start at multiples of this (a multiple of any page size).
const MAP_ALIGN: u64 = 1 << 16;

/// Whole lines, newlines included: `block[start..end]`. The chunks cut from
/// one block of input share it.
struct RawChunk {
    block: Arc<Bytes>,
    start: usize,
    end: usize,
    /// Line number of the chunk's first line (1-based).
    first_line: u64,
    /// Lines in the chunk (blank ones included).
    lines: u64,
}

impl RawChunk {
    fn data(&self) -> &[u8] {
        &self.block[self.start..self.end]
    }
}

/// An engine's local baseline at an exchange point.
type Partials = Arc<Vec<AppDayStats>>;

/// A line of a chunk: `data[start..end]` (newline trimmed), line number `no`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LineRef {
    start: usize,
    end: usize,
    no: u64,
}

/// What a router sends an engine: where its hosts' lines of one chunk are.
struct Part {
    chunk: Arc<RawChunk>,
    lines: Vec<LineRef>,
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
}

/// The shard of a host: FNV-1a of its name (stable across runs and builds).
pub fn shard_of(host: &str, shards: usize) -> usize {
    shard_of_bytes(host.as_bytes(), shards)
}

fn shard_of_bytes(host: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Streams `input` through `engines` (one per shard, at least two).
pub fn run_sharded(
    input: Source<'_>,
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
    // Reader → router p (chunks c ≡ p mod n).
    let (chunk_tx, chunk_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<io::Result<RawChunk>>(IN_FLIGHT))
        .unzip();
    // Router p → engine w: parts[p][w] / from_router[w][p].
    let mut to_engine: Vec<Vec<SyncSender<Part>>> = (0..n).map(|_| Vec::new()).collect();
    let mut from_router: Vec<Vec<Receiver<Part>>> = (0..n).map(|_| Vec::new()).collect();
    for senders in to_engine.iter_mut() {
        for receivers in from_router.iter_mut() {
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
    // Engines → reader: blocks to fill again, sent by the last engine done
    // with a block's chunks (a fresh block costs page faults and zeroing in
    // the kernel).
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(2 * n * IN_FLIGHT);
    // Engine → router p: spent line lists.
    let (spent_tx, spent_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<Vec<LineRef>>(2 * n * IN_FLIGHT))
        .unzip();
    let (done_tx, done_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<ChunkDone>(IN_FLIGHT * 2))
        .unzip();

    let mut s = ReplaySummary::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(move || match input {
            Source::Stream(input) => {
                read_chunks(input, opts.chunk_lines, BLOCK, chunk_tx, recycle_rx)
            }
            Source::File(file) => {
                if let Err(file) = cut_mapped(&file, MAP_WINDOW, opts.chunk_lines, &chunk_tx) {
                    // Not mappable after all: read it.
                    let mut input = io::BufReader::with_capacity(1 << 20, file);
                    read_chunks(&mut input, opts.chunk_lines, BLOCK, chunk_tx, recycle_rx)
                }
            }
        });
        let routers: Vec<_> = chunk_rx
            .into_iter()
            .zip(to_engine)
            .zip(spent_rx)
            .map(|((chunks, to), spent)| scope.spawn(move || route_chunks(chunks, to, spent)))
            .collect();
        let engines: Vec<_> = engines
            .into_iter()
            .zip(from_router)
            .zip(peer_tx.into_iter().zip(peer_rx))
            .zip(done_tx)
            .enumerate()
            .map(|(w, (((engine, parts), (to, from)), done))| {
                let back = Recycle {
                    lines: spent_tx.clone(),
                    chunks: recycle_tx.clone(),
                };
                scope.spawn(move || run_engine(w, n, opts, engine, parts, back, to, from, done))
            })
            .collect();
        drop(recycle_tx);
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
        for h in routers {
            let lines = h
                .join()
                .map_err(|_| anyhow::anyhow!("a replay router panicked"))??;
            s.lines = s.lines.max(lines);
        }
        let mut examples = Vec::new();
        let mut stats = EngineStats::default();
        for h in engines {
            let (events, engine_stats, flushed, tally) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a replay engine panicked"))??;
            for a in &flushed {
                s.alerts += 1;
                on_alert(a)?;
            }
            s.events += events;
            stats.add(&engine_stats);
            s.rejected += tally.rejected;
            for (k, v) in tally.rejected_by_reason {
                *s.rejected_by_reason.entry(k).or_default() += v;
            }
            examples.extend(tally.examples);
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

/// Cuts the input into chunks of `chunk_lines` lines (the last may have
/// fewer), read `block_size` bytes at a time into blocks that the chunks
/// share; chunk `c` goes to `to[c % to.len()]`.
fn read_chunks(
    input: &mut (dyn BufRead + Send),
    chunk_lines: usize,
    block_size: usize,
    to: Vec<SyncSender<io::Result<RawChunk>>>,
    recycled: Receiver<Vec<u8>>,
) {
    let mut out = ChunkSender::new(&to);
    // `block[..filled]`: input not yet in a chunk, from a line start.
    let mut block = vec![0u8; block_size];
    let mut filled = 0;
    let mut eof = false;
    loop {
        while !eof && filled < block.len() {
            match input.read(&mut block[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.send(Err(e));
                    return;
                }
            }
        }
        let (cuts, from) = cut_lines(&block[..filled], 0, chunk_lines, eof);
        if cuts.is_empty() {
            if eof {
                return;
            }
            // Lines too long for a chunk to fit: a bigger block.
            block.resize(block.len() * 2, 0);
            continue;
        }
        // What is left starts the next block.
        let mut next = recycled.try_recv().unwrap_or_default();
        let left = filled - from;
        let want = (left + block_size / 2).max(block_size);
        if next.len() < want {
            next.resize(want, 0);
        }
        next[..left].copy_from_slice(&block[from..filled]);
        filled = left;
        let shared = Arc::new(Bytes::Read(std::mem::replace(&mut block, next)));
        if !out.send_cuts(&shared, cuts) {
            return;
        }
        if eof && filled == 0 {
            // Dropping the senders tells every router the input ended.
            return;
        }
    }
}

/// Chunks of `chunk_lines` lines in `data[from..]`, `from` a line start:
/// (start, end, lines) each, and where the rest starts. At the end of the
/// input (`at_end`) the rest is a last chunk (a last line without a newline
/// counts).
fn cut_lines(
    data: &[u8],
    from: usize,
    chunk_lines: usize,
    at_end: bool,
) -> (Vec<(usize, usize, u64)>, usize) {
    let chunk_lines = chunk_lines as u64;
    let start = from;
    let (mut from, mut lines) = (from, 0u64);
    let mut cuts = Vec::new();
    for p in memchr::memchr_iter(b'\n', &data[start..]) {
        lines += 1;
        if lines == chunk_lines {
            let end = start + p + 1;
            cuts.push((from, end, lines));
            (from, lines) = (end, 0);
        }
    }
    if at_end && from < data.len() {
        let unterminated = data[data.len() - 1] != b'\n';
        cuts.push((from, data.len(), lines + u64::from(unterminated)));
        from = data.len();
    }
    (cuts, from)
}

/// Sends chunks to the routers in turn, numbering their lines on.
struct ChunkSender<'a> {
    to: &'a [SyncSender<io::Result<RawChunk>>],
    next: usize,
    line_no: u64,
}

impl<'a> ChunkSender<'a> {
    fn new(to: &'a [SyncSender<io::Result<RawChunk>>]) -> Self {
        ChunkSender {
            to,
            next: 0,
            line_no: 0,
        }
    }

    /// False once the routers are gone.
    fn send(&mut self, chunk: io::Result<RawChunk>) -> bool {
        let sent = self.to[self.next % self.to.len()].send(chunk).is_ok();
        self.next += 1;
        sent
    }

    /// Sends the chunks of `block` at `cuts`; false once the routers are gone.
    fn send_cuts(&mut self, block: &Arc<Bytes>, cuts: Vec<(usize, usize, u64)>) -> bool {
        for (start, end, lines) in cuts {
            let chunk = RawChunk {
                block: block.clone(),
                start,
                end,
                first_line: self.line_no + 1,
                lines,
            };
            self.line_no += lines;
            if !self.send(Ok(chunk)) {
                return false;
            }
        }
        true
    }
}

/// `read_chunks` of a regular file, mapped `window` bytes at a time: the
/// same chunks, cut in place. `Err` (with nothing sent) if the file cannot
/// be mapped at all.
fn cut_mapped<'f>(
    file: &'f File,
    window: usize,
    chunk_lines: usize,
    to: &[SyncSender<io::Result<RawChunk>>],
) -> Result<(), &'f File> {
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return Err(file),
    };
    let mut out = ChunkSender::new(to);
    // `pos`: where the input not yet in a chunk starts (a line start).
    let (mut pos, mut size) = (0u64, window);
    while pos < len {
        let base = pos - pos % MAP_ALIGN;
        let map_len = (size as u64).min(len - base);
        let at_end = base + map_len == len;
        // SAFETY: the mapping is only read. The file may change under it;
        // a change makes lines wrong (as reading a changing file would), and
        // a truncation ends the process with SIGBUS when a lost page is read
        // (documented with `--input`).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(base)
                .len(map_len as usize)
                .map(file)
        };
        let map = match map {
            Ok(m) => m,
            Err(_) if pos == 0 => return Err(file),
            Err(e) => {
                out.send(Err(e));
                return Ok(());
            }
        };
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let map = Arc::new(Bytes::Mapped(map));
        let (cuts, from) = cut_lines(&map, (pos - base) as usize, chunk_lines, at_end);
        if cuts.is_empty() {
            // No whole chunk fits: a bigger window.
            size = size.saturating_mul(2);
            continue;
        }
        size = window;
        if !out.send_cuts(&map, cuts) {
            return Ok(());
        }
        // What is left starts the next window.
        pos = base + from as u64;
    }
    Ok(())
}

/// Routes its chunks: sends every engine the places of its hosts' lines of
/// each. Returns the last line number seen; returning drops its senders, so
/// the engines learn the input ended.
fn route_chunks(
    chunks: Receiver<io::Result<RawChunk>>,
    to: Vec<SyncSender<Part>>,
    spent: Receiver<Vec<LineRef>>,
) -> anyhow::Result<u64> {
    let n = to.len();
    let router = Router::new();
    let mut last_line = 0;
    let mut pool: Vec<Vec<LineRef>> = Vec::new();
    for chunk in chunks.iter() {
        let chunk = Arc::new(chunk.context("reading input")?);
        while let Ok(mut v) = spent.try_recv() {
            v.clear();
            if pool.len() < n * (IN_FLIGHT + 2) {
                pool.push(v);
            }
        }
        let mut parts: Vec<Vec<LineRef>> = (0..n).map(|_| pool.pop().unwrap_or_default()).collect();
        router.route_chunk(&chunk, &mut parts);
        last_line = last_line.max(chunk.first_line + chunk.lines - 1);
        let chunk_bytes = chunk.data().len() as u64;
        for (w, (lines, tx)) in parts.into_iter().zip(&to).enumerate() {
            let bytes = if w == 0 { chunk_bytes } else { 0 };
            let part = Part {
                chunk: chunk.clone(),
                lines,
                bytes,
            };
            if tx.send(part).is_err() {
                return Ok(last_line);
            }
        }
    }
    Ok(last_line)
}

/// Where an engine sends what it is done with.
struct Recycle {
    /// Line lists, to router p.
    lines: Vec<SyncSender<Vec<LineRef>>>,
    /// Chunk buffers, to the reader (by the last engine to let go).
    chunks: SyncSender<Vec<u8>>,
}

type EngineResult = anyhow::Result<(u64, EngineStats, Vec<Alert>, ParseTally)>;

#[allow(clippy::too_many_arguments)]
fn run_engine(
    me: usize,
    n: usize,
    opts: ShardOptions,
    mut engine: Engine,
    parts: Vec<Receiver<Part>>,
    back: Recycle,
    to: Vec<Option<SyncSender<Partials>>>,
    from: Vec<Option<Receiver<Partials>>>,
    done: SyncSender<ChunkDone>,
) -> EngineResult {
    let mut events = 0u64;
    let mut tally = ParseTally::default();
    let exchange_chunks = opts.exchange_chunks;
    // Idle hosts are looked for every IDLE_LINES lines, whatever the chunk
    // size (the look visits every host).
    let idle_chunks = (IDLE_LINES / opts.chunk_lines).max(1) as u64;
    for c in 0u64.. {
        // Chunk c comes from router c mod n; a closed channel is the end.
        let p = (c % n as u64) as usize;
        let Ok(part) = parts[p].recv() else {
            break;
        };
        let data = part.chunk.data();
        // Lines are parsed a group at a time and the group ingested at once:
        // the engine asks for the memory of a group's records before
        // ingesting the first (`Engine::ingest_batch`).
        let mut group = Vec::with_capacity(PARSE_GROUP);
        for (g, lines) in part.lines.chunks(PARSE_GROUP).enumerate() {
            // The next group's lines start loading while this one is parsed
            // and ingested (a router on another core read them last).
            let next = part.lines.get((g + 1) * PARSE_GROUP..).unwrap_or_default();
            for l in next.iter().take(PARSE_GROUP) {
                outflow_core::hint::prefetch(&data[l.start..l.end]);
            }
            for l in lines {
                match parse_line_bytes_ref(&data[l.start..l.end]) {
                    Ok(ev) => {
                        debug_assert_eq!(shard_of(ev.host(), n), me, "line {} routed", l.no);
                        group.push(ev);
                    }
                    Err(error) => tally.reject(l.no, &error),
                }
            }
            events += group.len() as u64;
            engine.ingest_batch(&group);
            group.clear();
        }
        let mut alerts = engine.drain_alerts();
        if (c + 1) % idle_chunks == 0 {
            close_idle_hosts(&mut engine);
            alerts.extend(engine.drain_alerts());
        }
        let Part {
            chunk,
            lines,
            bytes,
        } = part;
        // Back to be reused; dropped here if the other side has enough.
        let _ = back.lines[p].try_send(lines);
        // The last user of a block sends it back to the reader.
        if let Some(Bytes::Read(block)) =
            Arc::into_inner(chunk).and_then(|c| Arc::into_inner(c.block))
        {
            let _ = back.chunks.try_send(block);
        }
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
    Ok((events, engine.stats(), flushed, tally))
}

impl ParseTally {
    fn reject(&mut self, no: u64, error: &ParseError) {
        self.rejected += 1;
        *self
            .rejected_by_reason
            .entry(error.reason_key().to_string())
            .or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push((no, format!("line {no}: {error}")));
        }
    }
}

/// Finds the engine of a line from its host.
struct Router {
    host_key: memchr::memmem::Finder<'static>,
}

impl Router {
    fn new() -> Self {
        Router {
            host_key: memchr::memmem::Finder::new(b"\"host\":\""),
        }
    }

    /// Every line that is not blank, with the engine that owns its host.
    fn route_chunk(&self, chunk: &RawChunk, parts: &mut [Vec<LineRef>]) {
        let n = parts.len();
        let data = chunk.data();
        let mut start = 0;
        let mut no = chunk.first_line;
        while start < data.len() {
            let end = memchr::memchr(b'\n', &data[start..]).map_or(data.len(), |p| start + p);
            let line = trim_newline(&data[start..end]);
            if !line.iter().all(u8::is_ascii_whitespace) {
                parts[self.engine_of(line, n)].push(LineRef {
                    start,
                    end: start + line.len(),
                    no,
                });
            }
            start = end + 1;
            no += 1;
        }
    }

    /// The engine of a line: `shard_of` its host, or engine 0 for a line
    /// without one (its engine reports why it is rejected).
    fn engine_of(&self, line: &[u8], n: usize) -> usize {
        match self.quick_host(line) {
            Some(host) => shard_of_bytes(host, n),
            None => parse_line_bytes(line).map_or(0, |ev| shard_of(ev.host(), n)),
        }
    }

    /// The host of a line read without parsing it, when that cannot differ
    /// from what the parser reads: `"host":"` occurs once, no object is
    /// nested in the line (a `{` anywhere but one, even in a string, and
    /// this gives up), and the value holds no escape. Otherwise `None`, and
    /// the line is parsed to route it.
    fn quick_host<'l>(&self, line: &'l [u8]) -> Option<&'l [u8]> {
        let at = self.host_key.find(line)? + self.host_key.needle().len();
        let rest = &line[at..];
        if self.host_key.find(rest).is_some() || memchr::memchr_iter(b'{', line).nth(1).is_some() {
            return None;
        }
        let value = &rest[..memchr::memchr2(b'"', b'\\', rest)?];
        (rest[value.len()] == b'"').then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line routed without parsing goes where its parsed host says.
    #[test]
    fn quick_routing_agrees_with_the_parser() {
        let r = Router::new();
        let base = r#""ts":"2024-05-01T12:00:00Z","pid":1"#;
        let lines = [
            format!(r#"{{"type":"process_end",{base},"host":"ws-1"}}"#),
            format!(r#"{{"type":"process_end","host":"h\u0041",{base}}}"#),
            format!(r#"{{"type":"process_end","host" : "spaced",{base}}}"#),
            format!(r#"{{"type":"host","labels":{{"host":"decoy"}},"host":"real",{base}}}"#),
            format!(r#"{{"type":"host","host":"real","labels":{{"host":"decoy"}},{base}}}"#),
            format!(
                r#"{{"type":"process_start","name":"x","cmdline":"echo \"host\":\"decoy\"","host":"real",{base}}}"#
            ),
            format!(r#"{{"type":"process_start","name":"x","cmdline":"{{a}}","host":"b",{base}}}"#),
            format!(r#"{{"type":"process_end","host":"first","host":"second",{base}}}"#),
            format!(r#"{{"type":"process_end","host":"",{base}}}"#),
            r#"{"type":"process_end","host":"unterminated"#.to_string(),
            "not json".to_string(),
        ];
        for n in 2..6 {
            for l in &lines {
                let got = r.engine_of(l.as_bytes(), n);
                // A line that will be rejected may go to any engine.
                let want = parse_line_bytes(l.as_bytes()).map_or(got, |ev| shard_of(ev.host(), n));
                assert!(got < n);
                assert_eq!(got, want, "{n} shards: {l}");
            }
        }
        // The plain case is read without parsing; the unsure ones are not.
        assert_eq!(r.quick_host(lines[0].as_bytes()), Some(&b"ws-1"[..]));
        // An escaped quote cannot start the key: the decoy is not taken.
        assert_eq!(r.quick_host(lines[5].as_bytes()), Some(&b"real"[..]));
        for l in lines[1..5].iter().chain(&lines[6..8]) {
            assert_eq!(r.quick_host(l.as_bytes()), None, "{l}");
        }
    }

    /// Chunks hold `chunk_lines` whole lines (the last may hold fewer), are
    /// numbered on, and together are the input byte for byte, whatever the
    /// block size: lines across blocks, lines longer than a block, a last
    /// line without a newline.
    #[test]
    fn chunks_are_whole_lines_in_order() {
        let long = "z".repeat(100);
        let inputs: Vec<String> = vec![
            String::new(),
            "a".into(),
            "a\n".into(),
            "a\nb".into(),
            (0..50).map(|i| format!("line {i}\n")).collect(),
            (0..50)
                .map(|i| format!("{i}{}\n", &long[..i]))
                .collect::<String>()
                + "end",
        ];
        for input in &inputs {
            for block in [4, 16, 1000, 1 << 20] {
                for chunk_lines in [1, 3, 7, 1024] {
                    let (to, from) = sync_channel(1 << 12);
                    let (_back, recycled) = sync_channel(4);
                    let mut r = std::io::BufReader::with_capacity(3, input.as_bytes());
                    read_chunks(&mut r, chunk_lines, block, vec![to], recycled);
                    let chunks: Vec<RawChunk> = from.iter().map(|c| c.unwrap()).collect();
                    let what = format!(
                        "{} bytes, blocks of {block}, {chunk_lines} lines",
                        input.len()
                    );
                    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data().to_vec()).collect();
                    assert_eq!(joined, input.as_bytes(), "{what}");
                    let mut next_line = 1;
                    for (i, c) in chunks.iter().enumerate() {
                        assert_eq!(c.first_line, next_line, "{what}");
                        let lines = c.data().split_inclusive(|&b| b == b'\n').count() as u64;
                        assert_eq!(c.lines, lines, "{what}");
                        if i + 1 < chunks.len() {
                            assert_eq!(c.lines, chunk_lines as u64, "{what}");
                        }
                        next_line += c.lines;
                    }
                }
            }
        }
    }

    /// A mapped file is cut into the same chunks as the same bytes read
    /// from a stream, whatever the window: lines and chunks across windows,
    /// a line longer than a window, a last line without a newline.
    #[test]
    fn mapped_input_is_cut_like_read_input() {
        let dir = tempfile::tempdir().unwrap();
        let long = "z".repeat(100);
        let many: String = (0..40_000)
            .map(|i| format!("{i}{}\n", &long[..i % 90]))
            .collect();
        let inputs: Vec<String> = vec![
            "a".into(),
            "a\n".into(),
            "a\nb".into(),
            "\n\n".into(),
            many.clone(),
            format!("{many}{}\n{many}end", "y".repeat(300_000)),
        ];
        let cut = |chunks: Receiver<io::Result<RawChunk>>| -> Vec<RawChunk> {
            chunks.iter().map(|c| c.unwrap()).collect()
        };
        let parts = |chunks: &[RawChunk]| -> Vec<(Vec<u8>, u64, u64)> {
            chunks
                .iter()
                .map(|c| (c.data().to_vec(), c.first_line, c.lines))
                .collect()
        };
        for (i, input) in inputs.iter().enumerate() {
            let path = dir.path().join(format!("{i}.jsonl"));
            std::fs::write(&path, input).unwrap();
            for chunk_lines in [1, 3, 7, 1024] {
                let (to, from) = sync_channel(1 << 20);
                let (_back, recycled) = sync_channel(4);
                let mut r = std::io::BufReader::with_capacity(3, input.as_bytes());
                read_chunks(&mut r, chunk_lines, 1 << 16, vec![to], recycled);
                let read = parts(&cut(from));
                for window in [MAP_ALIGN as usize, MAP_WINDOW] {
                    let file = mappable(path.to_str().unwrap()).expect("a regular file");
                    let (to, from) = sync_channel(1 << 20);
                    assert!(cut_mapped(&file, window, chunk_lines, &[to]).is_ok());
                    let mapped = cut(from);
                    let what = format!("input {i}, {chunk_lines} lines, window {window}");
                    assert_eq!(parts(&mapped), read, "{what}");
                    // Large inputs are mapped a window at a time.
                    let mut windows = mapped
                        .iter()
                        .map(|c| Arc::as_ptr(&c.block))
                        .collect::<Vec<_>>();
                    windows.dedup();
                    if input.len() > 2 * window {
                        assert!(windows.len() > 1, "{what}");
                    }
                }
            }
        }
        // Neither stdin nor an empty or missing file nor a directory is mapped.
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        assert!(mappable("-").is_none());
        assert!(mappable(empty.to_str().unwrap()).is_none());
        assert!(mappable(dir.path().join("missing").to_str().unwrap()).is_none());
        assert!(mappable(dir.path().to_str().unwrap()).is_none());
    }

    /// Blank lines are skipped; every other line is routed once, with its
    /// number and its bytes.
    #[test]
    fn a_chunk_is_routed_line_by_line() {
        let text = "{\"host\":\"a\"}\n\n  \r\n{\"host\":\"b\"}\r\nbad\n{\"host\":\"c\"}";
        let chunk = RawChunk {
            block: Arc::new(Bytes::Read(
                format!("ignored\n{text}\nignored").into_bytes(),
            )),
            start: 8,
            end: 8 + text.len(),
            first_line: 10,
            lines: 6,
        };
        let mut parts = vec![Vec::new(), Vec::new()];
        Router::new().route_chunk(&chunk, &mut parts);
        let mut got: Vec<(u64, &str)> = parts
            .iter()
            .flatten()
            .map(|l| {
                (
                    l.no,
                    std::str::from_utf8(&chunk.data()[l.start..l.end]).unwrap(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (10, "{\"host\":\"a\"}"),
                (13, "{\"host\":\"b\"}"),
                (14, "bad"),
                (15, "{\"host\":\"c\"}"),
            ]
        );
        assert!(
            parts[0].iter().any(|l| l.no == 14),
            "hostless lines go to engine 0"
        );
        for (w, p) in parts.iter().enumerate() {
            for l in p.iter().filter(|l| l.no != 14) {
                let host = std::str::from_utf8(&chunk.data()[l.start + 9..l.end - 2]).unwrap();
                assert_eq!(shard_of(host, 2), w, "line {}", l.no);
            }
        }
    }
}
