//! `outflow replay --shards N`: the input's hosts split over N engines on N
//! threads, the way collectors split a fleet.
//!
//! A splitter thread cuts the input into chunks of whole lines and, in the
//! same pass, reads each line's host and sends each engine the places of its
//! hosts' lines in the shared chunk. Engine `w` takes chunk parts in chunk
//! order, so it sees its hosts' events in input order, and parses its lines
//! itself: an event is built, used and freed on one thread, and never
//! crosses between cores. Every `exchange_chunks` chunks the engines swap
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
/// Chunk parts the splitter sends an engine at once (each message may cost
/// a wake-up on both sides).
const PARTS_PER_MESSAGE: usize = 4;
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
/// kernel's copy of every block into the splitter's buffer costs more than
/// the splitter's own work; a mapped window has its lines read in place.
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

/// What the splitter sends an engine: where its hosts' lines of one chunk
/// are.
struct Part {
    chunk: Arc<RawChunk>,
    lines: Vec<LineRef>,
    /// Input bytes of the chunk (engine 0's copy only, else 0).
    bytes: u64,
}

/// What an engine tells the main thread after each `DONE_CHUNKS` chunks
/// (and after its last): the alerts of those chunks, with the chunk of
/// each. One message per chunk cost each engine a wake-up of the main
/// thread per chunk.
#[derive(Default)]
struct ChunkDone {
    alerts: Vec<(u64, Alert)>,
    bytes: u64,
}

/// Chunks an engine reports on at once.
const DONE_CHUNKS: u64 = 32;

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
    // Splitter → engine w.
    let (to_engine, from_splitter): (Vec<_>, Vec<_>) =
        (0..n).map(|_| sync_channel::<Vec<Part>>(IN_FLIGHT)).unzip();
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
    // Engines → splitter: blocks to fill again, sent by the last engine done
    // with a block's chunks (a fresh block costs page faults and zeroing in
    // the kernel), and spent line lists.
    let (recycle_tx, recycle_rx) = sync_channel::<Vec<u8>>(2 * n * IN_FLIGHT);
    let (spent_tx, spent_rx) = sync_channel::<Vec<LineRef>>(2 * n * IN_FLIGHT);
    let (done_tx, done_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| sync_channel::<ChunkDone>(IN_FLIGHT * 2))
        .unzip();

    let mut s = ReplaySummary::default();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let splitter = scope.spawn(move || -> anyhow::Result<u64> {
            let mut out = Splitter::new(&to_engine, spent_rx, opts.chunk_lines);
            let read = match input {
                Source::Stream(input) => split_stream(input, BLOCK, &mut out, &recycle_rx),
                Source::File(file) => match split_mapped(&file, MAP_WINDOW, &mut out) {
                    Ok(read) => read,
                    // Not mappable after all: read it.
                    Err(file) => {
                        let mut input = io::BufReader::with_capacity(1 << 20, file);
                        split_stream(&mut input, BLOCK, &mut out, &recycle_rx)
                    }
                },
            };
            // What is read goes on even after a read error.
            out.flush();
            // Returning drops the senders: the engines learn the input ended.
            read.context("reading input")
        });
        let engines: Vec<_> = engines
            .into_iter()
            .zip(from_splitter)
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
        drop((recycle_tx, spent_tx));
        // Alerts in chunk order, then engine order. Every engine reports on
        // the same chunks at once (each sees every chunk).
        let mut bytes = 0u64;
        let mut batch: Vec<(u64, usize, Alert)> = Vec::new();
        let mut emit = |batch: &mut Vec<(u64, usize, Alert)>| -> io::Result<()> {
            // Stable: engine order within a chunk.
            batch.sort_by_key(|(c, w, _)| (*c, *w));
            for (_, _, a) in batch.drain(..) {
                s.alerts += 1;
                on_alert(&a)?;
            }
            Ok(())
        };
        'batches: loop {
            for (w, rx) in done_rx.iter().enumerate() {
                match rx.recv() {
                    Ok(d) => {
                        bytes += d.bytes;
                        batch.extend(d.alerts.into_iter().map(|(c, a)| (c, w, a)));
                    }
                    Err(_) => break 'batches,
                }
            }
            emit(&mut batch)?;
            on_progress(bytes);
        }
        // What the other engines sent for the last chunks, if anything.
        for (w, rx) in done_rx.iter().enumerate() {
            while let Ok(d) = rx.recv() {
                batch.extend(d.alerts.into_iter().map(|(c, a)| (c, w, a)));
            }
        }
        emit(&mut batch)?;
        drop(done_rx);
        s.lines = splitter
            .join()
            .map_err(|_| anyhow::anyhow!("the replay splitter panicked"))??;
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

/// Cuts the input into chunks of `chunk_lines` lines and sends each engine
/// the places of its hosts' lines in each chunk, in one pass over the bytes:
/// the line ends that cut chunks are the ones that separate lines to route.
/// A chunk is cut from one block of input (a mapped window, or a buffer
/// read from a stream); an unfinished chunk is finished in the next block,
/// which starts at the chunk's first byte, so the places already noted hold
/// (they count from the chunk's start).
struct Splitter<'a> {
    router: Router,
    to: &'a [SyncSender<Vec<Part>>],
    /// Parts not sent yet, per engine.
    outbox: Vec<Vec<Part>>,
    /// Line lists the engines are done with.
    spent: Receiver<Vec<LineRef>>,
    pool: Vec<Vec<LineRef>>,
    chunk_lines: u64,
    /// Lines in the chunks sent.
    line_no: u64,
    /// The unfinished chunk: its lines so far, per engine, and how many
    /// lines and bytes from its start have been read.
    parts: Vec<Vec<LineRef>>,
    lines: u64,
    read: usize,
}

impl<'a> Splitter<'a> {
    fn new(
        to: &'a [SyncSender<Vec<Part>>],
        spent: Receiver<Vec<LineRef>>,
        chunk_lines: usize,
    ) -> Self {
        Splitter {
            router: Router::new(),
            to,
            outbox: (0..to.len()).map(|_| Vec::new()).collect(),
            spent,
            pool: Vec::new(),
            chunk_lines: chunk_lines as u64,
            line_no: 0,
            parts: (0..to.len()).map(|_| Vec::new()).collect(),
            lines: 0,
            read: 0,
        }
    }

    /// Reads the lines of `block[from..len]`, where the unfinished chunk
    /// starts (a line start), and sends every chunk completed. At the end of the
    /// input (`at_end`) the rest is a last chunk (a last line without a
    /// newline counts). `Some((start, progress))`: where the chunk still
    /// unfinished starts, and whether a line was read; `None` once the
    /// engines are gone.
    fn split(
        &mut self,
        block: &Arc<Bytes>,
        from: usize,
        len: usize,
        at_end: bool,
    ) -> Option<(usize, bool)> {
        let data = &block[..len];
        let n = self.to.len();
        let (mut start, mut pos) = (from, from + self.read);
        let mut progress = false;
        while pos < data.len() {
            let end = match memchr::memchr(b'\n', &data[pos..]) {
                Some(p) => pos + p,
                None if at_end => data.len(),
                None => break,
            };
            let line = trim_newline(&data[pos..end]);
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.parts[self.router.engine_of(line, n)].push(LineRef {
                    start: pos - start,
                    end: pos - start + line.len(),
                    no: self.line_no + self.lines + 1,
                });
            }
            self.lines += 1;
            progress = true;
            pos = (end + 1).min(data.len());
            if self.lines == self.chunk_lines {
                self.send(block, start, pos)?;
                start = pos;
            }
        }
        if at_end && self.lines > 0 {
            self.send(block, start, data.len())?;
            start = data.len();
        }
        self.read = pos - start;
        Some((start, progress))
    }

    /// Sends the unfinished chunk, `block[start..end]`, to every engine.
    fn send(&mut self, block: &Arc<Bytes>, start: usize, end: usize) -> Option<()> {
        let chunk = Arc::new(RawChunk {
            block: block.clone(),
            start,
            end,
        });
        self.line_no += self.lines;
        self.lines = 0;
        while let Ok(mut v) = self.spent.try_recv() {
            v.clear();
            if self.pool.len() < self.to.len() * (IN_FLIGHT + 2) {
                self.pool.push(v);
            }
        }
        let bytes = (end - start) as u64;
        for w in 0..self.to.len() {
            let lines = std::mem::replace(&mut self.parts[w], self.pool.pop().unwrap_or_default());
            self.outbox[w].push(Part {
                chunk: chunk.clone(),
                lines,
                // Counted once, for progress.
                bytes: if w == 0 { bytes } else { 0 },
            });
        }
        if self.outbox[0].len() == PARTS_PER_MESSAGE {
            self.flush()?;
        }
        Some(())
    }

    /// Sends the parts not sent yet; `None` once the engines are gone.
    fn flush(&mut self) -> Option<()> {
        for (tx, parts) in self.to.iter().zip(&mut self.outbox) {
            if !parts.is_empty() {
                tx.send(std::mem::take(parts)).ok()?;
            }
        }
        Some(())
    }
}

/// Splits a stream, read `block_size` bytes at a time into blocks that the
/// chunks share (a block grows when a line does not fit). The lines read.
fn split_stream(
    input: &mut (dyn BufRead + Send),
    block_size: usize,
    out: &mut Splitter<'_>,
    recycled: &Receiver<Vec<u8>>,
) -> io::Result<u64> {
    // `block[..filled]`: input not yet sent, from the unfinished chunk's start.
    let mut block = vec![0u8; block_size];
    let mut filled = 0;
    let mut eof = false;
    loop {
        while !eof && filled < block.len() {
            match input.read(&mut block[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let shared = Arc::new(Bytes::Read(block));
        let Some((from, progress)) = out.split(&shared, 0, filled, eof) else {
            return Ok(out.line_no);
        };
        if eof {
            return Ok(out.line_no);
        }
        // What is left starts the next block: a bigger one if no line fit.
        let left = filled - from;
        let want = if progress {
            (left + block_size / 2).max(block_size)
        } else {
            2 * filled
        };
        block = recycled.try_recv().unwrap_or_default();
        if block.len() < want {
            block.resize(want, 0);
        }
        block[..left].copy_from_slice(&shared[from..filled]);
        filled = left;
    }
}

/// `split_stream` of a regular file, mapped `window` bytes at a time: the
/// same chunks, cut in place. `Err(file)` (with nothing sent) if the file
/// cannot be mapped at all.
fn split_mapped<'f>(
    file: &'f File,
    window: usize,
    out: &mut Splitter<'_>,
) -> Result<io::Result<u64>, &'f File> {
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return Err(file),
    };
    // `pos`: where the unfinished chunk starts (a line start).
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
            Err(e) => return Ok(Err(e)),
        };
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let map = Arc::new(Bytes::Mapped(map));
        let Some((from, progress)) = out.split(&map, (pos - base) as usize, map.len(), at_end)
        else {
            break;
        };
        if at_end {
            break;
        }
        // Room for the chunk so far and more; twice the size if not even
        // one line fit.
        size = if progress {
            window.max(out.read + MAP_ALIGN as usize + window / 2)
        } else {
            size.saturating_mul(2)
        };
        pos = base + from as u64;
    }
    Ok(Ok(out.line_no))
}

/// Where an engine sends what it is done with.
struct Recycle {
    /// Line lists.
    lines: SyncSender<Vec<LineRef>>,
    /// Chunk buffers (sent by the last engine to let go).
    chunks: SyncSender<Vec<u8>>,
}

type EngineResult = anyhow::Result<(u64, EngineStats, Vec<Alert>, ParseTally)>;

#[allow(clippy::too_many_arguments)]
fn run_engine(
    me: usize,
    n: usize,
    opts: ShardOptions,
    mut engine: Engine,
    parts: Receiver<Vec<Part>>,
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
    let mut report = ChunkDone::default();
    // A closed channel is the end.
    for (c, part) in (0u64..).zip(parts.iter().flatten()) {
        let data = part.chunk.data();
        // Lines are parsed a group at a time and the group ingested at once:
        // the engine asks for the memory of a group's records before
        // ingesting the first (`Engine::ingest_batch`).
        let mut group = Vec::with_capacity(PARSE_GROUP);
        for (g, lines) in part.lines.chunks(PARSE_GROUP).enumerate() {
            // The next group's lines start loading while this one is parsed
            // and ingested (the splitter, on another core, read them last).
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
        let _ = back.lines.try_send(lines);
        // The last user of a block sends it back to the splitter.
        if let Some(Bytes::Read(block)) =
            Arc::into_inner(chunk).and_then(|c| Arc::into_inner(c.block))
        {
            let _ = back.chunks.try_send(block);
        }
        report.alerts.extend(alerts.into_iter().map(|a| (c, a)));
        report.bytes += bytes;
        if (c + 1) % DONE_CHUNKS == 0 && done.send(std::mem::take(&mut report)).is_err() {
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
    // The last chunks' report (every engine sends one, maybe empty, so the
    // main thread's rounds stay in step).
    let _ = done.send(report);
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
        if let Some(host) = net_host(line) {
            return Some(host);
        }
        let at = self.host_key.find(line)? + self.host_key.needle().len();
        let rest = &line[at..];
        if self.host_key.find(rest).is_some() || memchr::memchr_iter(b'{', line).nth(1).is_some() {
            return None;
        }
        let value = &rest[..memchr::memchr2(b'"', b'\\', rest)?];
        (rest[value.len()] == b'"').then_some(value)
    }
}

/// The host of a `net` line in the usual form (`type`, `ts`, then `host`
/// first, as the parser's fast path reads it), from those three fields
/// alone: most lines are routed without a scan of the whole line. The two
/// strings must hold no backslash. A later `host` key would make the line
/// a duplicate-key error, and a nested one is not the record's host, so a
/// line that parses has this host.
fn net_host(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"{\"type\":\"net\",\"ts\":\"")?;
    let ts_end = memchr::memchr2(b'"', b'\\', rest)?;
    let rest = rest[ts_end..].strip_prefix(b"\",\"host\":\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
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
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"a","pid":1,"host":"b"}"#.to_string(),
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"ws-2","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":2,"labels":{"host":"decoy"}}"#.to_string(),
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"ws-3","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":2,"sni":"x","host":"ws-4"}"#.to_string(),
            r#"{"type":"net","ts":"2024-05-01\",\"host\":\"decoy","host":"ws-5","pid":1}"#.to_string(),
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"ws\u0036","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":2}"#.to_string(),
            r#"{"type":"net","ts":"2024-05-01T12:00:00Z","host":"ws-7","pid":1,"dst_ip":"1.2.3.4","dst_port":443,"bytes_out":1,"bytes_in":2}"#.to_string(),
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
        let net = |host: &str| lines.iter().find(|l| l.contains(host)).unwrap().as_bytes();
        assert_eq!(net_host(net("ws-7")), Some(&b"ws-7"[..]));
        assert!(parse_line_bytes(net("ws-7")).is_ok());
        assert_eq!(net_host(net("ws-2")), Some(&b"ws-2"[..]));
        assert_eq!(net_host(net("ws\\u0036")), None);
        assert_eq!(net_host(net("ws-5")), None);
        // An escaped quote cannot start the key: the decoy is not taken.
        assert_eq!(r.quick_host(lines[5].as_bytes()), Some(&b"real"[..]));
        for l in lines[1..5].iter().chain(&lines[6..8]) {
            assert_eq!(r.quick_host(l.as_bytes()), None, "{l}");
        }
    }

    /// What the splitter sent: per chunk, its bytes, each engine's lines and
    /// the block it was cut from.
    type Split = Vec<(Vec<u8>, Vec<Vec<LineRef>>, *const Bytes)>;

    /// Runs `split` (a splitter over `n` engines) on its own thread and
    /// takes what it sends as engines would; and the lines it read.
    fn run_split(
        n: usize,
        chunk_lines: usize,
        split: impl FnOnce(&mut Splitter<'_>) -> io::Result<u64> + Send,
    ) -> (Split, u64) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..n).map(|_| sync_channel::<Vec<Part>>(4)).unzip();
        std::thread::scope(|scope| {
            let h = scope.spawn(move || {
                let (_spent, spent_rx) = sync_channel(4);
                let mut out = Splitter::new(&tx, spent_rx, chunk_lines);
                let read = split(&mut out).unwrap();
                out.flush();
                read
            });
            let mut got = Split::new();
            // Chunks stay alive, so no two blocks share an address.
            let mut keep = Vec::new();
            let mut rx: Vec<_> = rx.iter().map(|r| r.iter().flatten()).collect();
            'chunks: loop {
                let mut chunk: Option<Arc<RawChunk>> = None;
                let mut lines = Vec::new();
                for r in &mut rx {
                    let Some(p) = r.next() else {
                        assert!(lines.is_empty(), "every engine gets every chunk");
                        break 'chunks;
                    };
                    if let Some(c) = &chunk {
                        assert!(Arc::ptr_eq(c, &p.chunk), "one chunk for all engines");
                    }
                    chunk = Some(p.chunk.clone());
                    lines.push(p.lines);
                }
                let chunk = chunk.expect("n > 0");
                got.push((chunk.data().to_vec(), lines, Arc::as_ptr(&chunk.block)));
                keep.push(chunk);
            }
            (got, h.join().unwrap())
        })
    }

    fn split_read(input: &[u8], block: usize, chunk_lines: usize, n: usize) -> (Split, u64) {
        run_split(n, chunk_lines, |out| {
            let (_back, recycled) = sync_channel(4);
            let mut r = std::io::BufReader::with_capacity(3, input);
            split_stream(&mut r, block, out, &recycled)
        })
    }

    /// Chunks hold `chunk_lines` whole lines (the last may hold fewer) and
    /// together are the input byte for byte, whatever the block size: lines
    /// across blocks, lines longer than a block, a last line without a
    /// newline. Every line that is not blank goes to one engine, its own
    /// host's, numbered on, with its bytes.
    #[test]
    fn chunks_are_whole_lines_in_order_and_routed_once() {
        let long = "z".repeat(100);
        let inputs: Vec<String> = vec![
            String::new(),
            "a".into(),
            "a\n".into(),
            "a\nb".into(),
            "\n\n".into(),
            (0..50)
                .map(|i| format!("{{\"host\":\"h{i}\"}}\n"))
                .collect(),
            (0..50)
                .map(|i| format!("{i}{}\n", &long[..i]))
                .collect::<String>()
                + "end",
        ];
        let router = Router::new();
        for input in &inputs {
            for block in [4, 16, 1000, 1 << 20] {
                for chunk_lines in [1, 3, 7, 1024] {
                    let what = format!(
                        "{} bytes, blocks of {block}, {chunk_lines} lines",
                        input.len()
                    );
                    let (split, read) = split_read(input.as_bytes(), block, chunk_lines, 2);
                    let joined: Vec<u8> = split.iter().flat_map(|(d, ..)| d.clone()).collect();
                    assert_eq!(joined, input.as_bytes(), "{what}");
                    let mut line_no = 0;
                    for (i, (data, lines, _)) in split.iter().enumerate() {
                        let all: Vec<&[u8]> = data.split_inclusive(|&b| b == b'\n').collect();
                        if i + 1 < split.len() {
                            assert_eq!(all.len(), chunk_lines, "{what}");
                        }
                        let mut want = Vec::new();
                        for (k, l) in all.iter().enumerate() {
                            let l = trim_newline(l);
                            if !l.iter().all(u8::is_ascii_whitespace) {
                                want.push((line_no + k as u64 + 1, l.to_vec()));
                            }
                        }
                        let mut got = Vec::new();
                        for (w, refs) in lines.iter().enumerate() {
                            for r in refs {
                                let l = &data[r.start..r.end];
                                assert_eq!(router.engine_of(l, 2), w, "{what}");
                                got.push((r.no, l.to_vec()));
                            }
                        }
                        got.sort();
                        assert_eq!(got, want, "{what}");
                        line_no += all.len() as u64;
                    }
                    assert_eq!(read, line_no, "{what}");
                }
            }
        }
    }

    /// A mapped file is cut and routed like the same bytes read from a
    /// stream, whatever the window: lines and chunks across windows, a line
    /// longer than a window, a last line without a newline.
    #[test]
    fn mapped_input_is_cut_like_read_input() {
        let dir = tempfile::tempdir().unwrap();
        let long = "z".repeat(100);
        let many: String = (0..40_000)
            .map(|i| format!("{{\"host\":\"h{i}\",\"x\":\"{}\"}}\n", &long[..i % 90]))
            .collect();
        let inputs: Vec<String> = vec![
            "a".into(),
            "a\n".into(),
            "a\nb".into(),
            "\n\n".into(),
            many.clone(),
            format!("{many}{}\n{many}end", "y".repeat(300_000)),
        ];
        let refs = |split: &Split| {
            split
                .iter()
                .map(|(d, l, _)| (d.clone(), l.clone()))
                .collect::<Vec<_>>()
        };
        for (i, input) in inputs.iter().enumerate() {
            let path = dir.path().join(format!("{i}.jsonl"));
            std::fs::write(&path, input).unwrap();
            for chunk_lines in [1, 3, 7, 1024] {
                let (read, read_lines) = split_read(input.as_bytes(), 1 << 16, chunk_lines, 2);
                for window in [MAP_ALIGN as usize, MAP_WINDOW] {
                    let file = mappable(path.to_str().unwrap()).expect("a regular file");
                    let (mapped, mapped_lines) = run_split(2, chunk_lines, |out| {
                        split_mapped(&file, window, out).expect("mappable")
                    });
                    let what = format!("input {i}, {chunk_lines} lines, window {window}");
                    assert_eq!(refs(&mapped), refs(&read), "{what}");
                    assert_eq!(mapped_lines, read_lines, "{what}");
                    // Large inputs are mapped a window at a time.
                    let mut windows: Vec<_> = mapped.iter().map(|c| c.2).collect();
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
    /// number and its bytes; a line without a host goes to engine 0.
    #[test]
    fn lines_are_routed_one_by_one() {
        let text = "{\"host\":\"a\"}\n\n  \r\n{\"host\":\"b\"}\r\nbad\n{\"host\":\"c\"}";
        let (split, read) = split_read(text.as_bytes(), 1 << 10, 1024, 2);
        assert_eq!((split.len(), read), (1, 6));
        let (data, parts, _) = &split[0];
        let mut got: Vec<(u64, &str)> = parts
            .iter()
            .flatten()
            .map(|l| (l.no, std::str::from_utf8(&data[l.start..l.end]).unwrap()))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, "{\"host\":\"a\"}"),
                (4, "{\"host\":\"b\"}"),
                (5, "bad"),
                (6, "{\"host\":\"c\"}"),
            ]
        );
        assert!(
            parts[0].iter().any(|l| l.no == 5),
            "hostless lines go to engine 0"
        );
        for (w, p) in parts.iter().enumerate() {
            for l in p.iter().filter(|l| l.no != 5) {
                let host = std::str::from_utf8(&data[l.start + 9..l.end - 2]).unwrap();
                assert_eq!(shard_of(host, 2), w, "line {}", l.no);
            }
        }
    }
}
