//! `outflow replay`: telemetry JSONL through the engine in event time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use outflow_core::telemetry::{parse_line_bytes, ParseError};
use outflow_core::{Alert, Engine, EngineConfig, EngineStats, Event, Policy, Timestamp};
use serde::Deserialize;

#[derive(Args, Debug, Clone, Default)]
pub struct EngineFlags {
    /// Config file (TOML) with `[engine]` and `[policy]` tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Policy file (JSON or TOML): approved services, suppressions.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Window length in seconds (default 60).
    #[arg(long)]
    pub window_secs: Option<u64>,
    /// Allowed lateness in seconds (default 30).
    #[arg(long)]
    pub lateness_secs: Option<u64>,
    /// Baseline horizon in days (default 14).
    #[arg(long)]
    pub horizon_days: Option<u32>,
    /// Fewer peer hosts than this: the baseline is thin (default 10).
    #[arg(long)]
    pub min_peers: Option<u64>,
    /// Event time during which the fleet is learnt and nothing alerts (default 86400).
    #[arg(long)]
    pub learning_secs: Option<u64>,
    /// Score from which an alert is raised (default 5.0).
    #[arg(long)]
    pub alert_score: Option<f64>,
    /// Internal networks, comma-separated CIDRs (replaces the default list).
    #[arg(long, value_delimiter = ',')]
    pub internal_networks: Option<Vec<String>>,
}

/// The replay/demo config file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub engine: EngineConfig,
    pub policy: Policy,
}

impl EngineFlags {
    /// Config file, then flags (flags win); validated.
    pub fn resolve(&self) -> anyhow::Result<(EngineConfig, Policy)> {
        let mut fc = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config file {}", p.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("config file {} is not valid", p.display()))?
            }
            None => FileConfig::default(),
        };
        if let Some(p) = &self.policy {
            fc.policy = load_policy(p)?;
        }
        let e = &mut fc.engine;
        if let Some(v) = self.window_secs {
            e.window_secs = v;
        }
        if let Some(v) = self.lateness_secs {
            e.allowed_lateness_secs = v;
        }
        if let Some(v) = self.horizon_days {
            e.horizon_days = v;
        }
        if let Some(v) = self.min_peers {
            e.min_peers = v;
        }
        if let Some(v) = self.learning_secs {
            e.learning_secs = v;
        }
        if let Some(v) = self.alert_score {
            e.alert_score = v;
        }
        if let Some(nets) = &self.internal_networks {
            e.internal_networks = nets
                .iter()
                .map(|n| {
                    n.trim()
                        .parse()
                        .with_context(|| format!("--internal-networks: {n:?} is not a CIDR"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Err(errs) = fc.engine.validate() {
            bail!("invalid engine configuration: {}", errs.join("; "));
        }
        if let Err(errs) = fc.policy.validate() {
            bail!("invalid policy: {}", errs.join("; "));
        }
        Ok((fc.engine, fc.policy))
    }
}

fn load_policy(p: &Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read policy file {}", p.display()))?;
    if text.trim_start().starts_with('{') {
        serde_json::from_str(&text)
            .with_context(|| format!("policy file {} is not valid JSON policy", p.display()))
    } else {
        toml::from_str(&text)
            .with_context(|| format!("policy file {} is not valid TOML policy", p.display()))
    }
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Telemetry JSONL file, or '-' for stdin. With --shards above 1 a
    /// regular file is mapped into memory and read in place: do not truncate
    /// it during the replay (reading a lost page stops the process with
    /// SIGBUS); replay a copy, or pipe it to '-', if it may change.
    #[arg(long)]
    pub input: String,
    /// Where alerts go, one JSON object per line (default: stdout).
    #[arg(long)]
    pub alerts_out: Option<PathBuf>,
    /// Stop at the first bad line with a non-zero exit.
    #[arg(long)]
    pub strict: bool,
    /// Print a JSON summary on stderr instead of text.
    #[arg(long)]
    pub json_summary: bool,
    /// Split the hosts over this many engines on as many threads, which
    /// swap baselines every ~250 k lines the way collectors do (1: one
    /// engine sees every host at once). Alerts are the same for a given
    /// number of shards on every run; not with --strict.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub shards: u16,
    /// With --shards: lines per chunk handed to a shard (tests, tuning).
    #[arg(long, hide = true, default_value_t = crate::replay_sharded::CHUNK_LINES)]
    pub shard_chunk_lines: usize,
    /// With --shards: chunks between baseline exchanges (tests, tuning).
    #[arg(long, hide = true, default_value_t = crate::replay_sharded::EXCHANGE_CHUNKS)]
    pub shard_exchange_chunks: u64,
    #[command(flatten)]
    pub engine: EngineFlags,
}

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplaySummary {
    pub lines: u64,
    pub events: u64,
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// The first rejected lines, with line numbers and reasons.
    pub rejected_examples: Vec<String>,
    pub alerts: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub engine: EngineStats,
}

/// Why a replay stopped early.
#[derive(Debug)]
pub struct StrictStop {
    pub line: u64,
    pub error: ParseError,
}

const EXAMPLES: usize = 20;

/// Streams `input` through `engine`, handing each alert to `on_alert` as it
/// fires. Memory is bounded by the engine's live state, not by the input.
/// Lines parsed per batch handed from the parser thread to the engine.
const BATCH_LINES: usize = 2048;
/// Batches in flight between the two threads: bounds memory.
const BATCHES_IN_FLIGHT: usize = 8;

/// (line number, parse result), in input order; blank lines skipped.
type ParsedLines = Vec<(u64, Result<Event, ParseError>)>;

struct ParsedBatch {
    lines: ParsedLines,
    bytes: u64,
    last_line: u64,
}

/// Streams `input` through `engine`, handing each alert to `on_alert` as it
/// fires. One thread reads and parses, the caller's thread runs the engine;
/// a bounded channel between them keeps memory bounded whatever the input.
pub fn run_stream(
    input: &mut (dyn BufRead + Send),
    engine: &mut Engine,
    strict: bool,
    on_alert: &mut dyn FnMut(&Alert) -> io::Result<()>,
    on_progress: &mut dyn FnMut(u64),
) -> anyhow::Result<Result<ReplaySummary, (ReplaySummary, StrictStop)>> {
    let started = Instant::now();
    let mut s = ReplaySummary::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<ParsedBatch>>(BATCHES_IN_FLIGHT);
    // Spent batches go back to the parser thread, which frees their events
    // (cheaper on the thread that allocated them) and reuses the vectors.
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<ParsedLines>(BATCHES_IN_FLIGHT);
    let outcome = std::thread::scope(|scope| -> anyhow::Result<Option<StrictStop>> {
        // Owned here: returning early drops it, which stops the parser.
        let rx = rx;
        scope.spawn(move || parse_batches(input, &tx, &back_rx));
        let mut bytes = 0u64;
        for batch in rx.iter() {
            let batch = batch.context("reading input")?;
            bytes += batch.bytes;
            s.lines = batch.last_line;
            // Events are ingested in groups (`Engine::ingest_batch` asks for
            // a group's memory first); a bad line ends a group, so alerts and
            // a strict stop come exactly where they would one by one.
            let mut group: Vec<&Event> = Vec::with_capacity(INGEST_GROUP);
            let mut ingest = |group: &mut Vec<&Event>, s: &mut ReplaySummary| -> io::Result<()> {
                engine.ingest_batch(group);
                group.clear();
                for a in engine.drain_alerts() {
                    s.alerts += 1;
                    on_alert(&a)?;
                }
                Ok(())
            };
            for (line_no, parsed) in &batch.lines {
                match parsed {
                    Ok(ev) => {
                        s.events += 1;
                        group.push(ev);
                        if group.len() == INGEST_GROUP {
                            ingest(&mut group, &mut s)?;
                        }
                    }
                    Err(error) => {
                        ingest(&mut group, &mut s)?;
                        let line_no = *line_no;
                        s.rejected += 1;
                        *s.rejected_by_reason
                            .entry(error.reason_key().to_string())
                            .or_default() += 1;
                        if s.rejected_examples.len() < EXAMPLES {
                            s.rejected_examples.push(format!("line {line_no}: {error}"));
                        }
                        if strict {
                            s.lines = line_no;
                            // Dropping the receiver stops the parser.
                            return Ok(Some(StrictStop {
                                line: line_no,
                                error: error.clone(),
                            }));
                        }
                    }
                }
            }
            ingest(&mut group, &mut s)?;
            close_idle_hosts(engine);
            for a in engine.drain_alerts() {
                s.alerts += 1;
                on_alert(&a)?;
            }
            on_progress(bytes);
            // If the parser has finished (or is behind on frees), drop here.
            let _ = back_tx.try_send(batch.lines);
        }
        Ok(None)
    })?;
    finish(&mut s, engine, started, on_alert)?;
    match outcome {
        Some(stop) => Ok(Err((s, stop))),
        None => Ok(Ok(s)),
    }
}

fn parse_batches(
    input: &mut (dyn BufRead + Send),
    tx: &std::sync::mpsc::SyncSender<io::Result<ParsedBatch>>,
    back: &std::sync::mpsc::Receiver<ParsedLines>,
) {
    let mut reader = LineReader::new(input);
    let mut line_no = 0u64;
    loop {
        let lines = match back.try_recv() {
            Ok(mut spent) => {
                spent.clear();
                spent
            }
            Err(_) => Vec::with_capacity(BATCH_LINES),
        };
        let mut batch = ParsedBatch {
            lines,
            bytes: 0,
            last_line: line_no,
        };
        let mut eof = false;
        while batch.lines.len() < BATCH_LINES {
            match reader.next_line() {
                Ok(None) => {
                    eof = true;
                    break;
                }
                Ok(Some(raw)) => {
                    batch.bytes += raw.len() as u64;
                    line_no += 1;
                    let line = trim_newline(raw);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    batch.lines.push((line_no, parse_line_bytes(line)));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        batch.last_line = line_no;
        if tx.send(Ok(batch)).is_err() || eof {
            return;
        }
    }
}

/// Events the single engine ingests as a group.
const INGEST_GROUP: usize = 16;

/// Bytes read from the input at a time. At least the input's own buffer
/// (1 MiB, see `open_input`), so reads bypass that buffer instead of being
/// copied through it.
const READ_BLOCK: usize = 4 << 20;

/// Splits a reader into lines the way `BufRead::read_until(b'\n')` does
/// (newline included; a last line without one is a line), reading large
/// blocks instead of one line at a time.
pub(crate) struct LineReader<'r> {
    input: &'r mut (dyn BufRead + Send),
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

impl<'r> LineReader<'r> {
    pub(crate) fn new(input: &'r mut (dyn BufRead + Send)) -> Self {
        LineReader {
            input,
            buf: vec![0; READ_BLOCK],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// The next line with its newline, if it has one; `None` at the end.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        // Unread bytes known to hold no newline.
        let mut searched = 0;
        loop {
            if let Some(p) = memchr::memchr(b'\n', &self.buf[self.start + searched..self.end]) {
                let line = self.start..self.start + searched + p + 1;
                self.start = line.end;
                return Ok(Some(&self.buf[line]));
            }
            searched = self.end - self.start;
            if self.eof || !self.fill()? {
                if self.start == self.end {
                    return Ok(None);
                }
                let line = self.start..self.end;
                self.start = self.end;
                return Ok(Some(&self.buf[line]));
            }
        }
    }

    /// Reads more after the unread bytes (moved to the front); false at
    /// the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_BLOCK / 2 {
            // A line longer than the free space: grow.
            self.buf.resize(self.buf.len() + READ_BLOCK, 0);
        }
        loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn finish(
    s: &mut ReplaySummary,
    engine: &mut Engine,
    started: Instant,
    on_alert: &mut dyn FnMut(&Alert) -> io::Result<()>,
) -> anyhow::Result<()> {
    engine.flush();
    for a in engine.drain_alerts() {
        s.alerts += 1;
        on_alert(&a)?;
    }
    s.seconds = started.elapsed().as_secs_f64();
    s.events_per_sec = if s.seconds > 0.0 {
        s.events as f64 / s.seconds
    } else {
        0.0
    };
    s.engine = engine.stats();
    Ok(())
}

/// Hosts that went quiet: closes their windows once the input's event time
/// is a window, its lateness and five minutes past them.
pub(crate) fn close_idle_hosts(engine: &mut Engine) {
    let idle_us = engine.config().lateness_us() + engine.config().window_us() + 300_000_000;
    engine.advance_to(Timestamp(engine.max_ts().0.saturating_sub(idle_us)));
}

pub(crate) fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && (b[end - 1] == b'\n' || b[end - 1] == b'\r') {
        end -= 1;
    }
    &b[..end]
}

pub fn render_summary(s: &ReplaySummary) -> String {
    let mut out = format!(
        "replay: {} events, {} rejected, {} alerts in {:.2} s ({:.0} events/s)\n",
        s.events, s.rejected, s.alerts, s.seconds, s.events_per_sec
    );
    if !s.rejected_by_reason.is_empty() {
        let reasons: Vec<String> = s
            .rejected_by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out.push_str(&format!("rejected by reason: {}\n", reasons.join(", ")));
        for e in &s.rejected_examples {
            out.push_str(&format!("  {e}\n"));
        }
        if s.rejected > s.rejected_examples.len() as u64 {
            out.push_str(&format!(
                "  … and {} more\n",
                s.rejected - s.rejected_examples.len() as u64
            ));
        }
    }
    let e = &s.engine;
    out.push_str(&format!(
        "engine: {} net records ({} internal, {} not HTTPS, {} unknown pid, {} late), {} windows judged of {} closed, {} hosts; not raised: {} learning, {} suppressed, {} repeats\n",
        e.net_records, e.internal_records, e.non_https_records, e.unknown_pid_records, e.late_records,
        e.windows_judged, e.windows_closed, e.hosts, e.learning, e.suppressed, e.repeats
    ));
    out
}

pub fn open_input(input: &str) -> anyhow::Result<(Box<dyn BufRead + Send>, Option<u64>)> {
    if input == "-" {
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, io::stdin())),
            None,
        ))
    } else {
        let f = File::open(input).with_context(|| format!("cannot open input {input}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, f)) as Box<dyn BufRead + Send>,
            len,
        ))
    }
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let (cfg, policy) = args.engine.resolve()?;
    let (mut input, len) = open_input(&args.input)?;
    let mut out: Box<dyn Write> = match &args.alerts_out {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    if args.shards > 1 && args.strict {
        bail!("--strict stops at the first bad line of one ordered stream: use it with --shards 1");
    }
    let bar = progress_bar(len);
    let mut engine = Engine::new(cfg.clone(), policy.clone());
    let mut on_alert = |a: &Alert| -> io::Result<()> {
        out.write_all(a.to_json().as_bytes())?;
        out.write_all(b"\n")
    };
    let mut on_progress = |b: u64| {
        if let Some(bar) = &bar {
            bar.set_position(b);
        }
    };
    let result = if args.shards > 1 {
        let engines = (0..args.shards)
            .map(|_| Engine::new(cfg.clone(), policy.clone()))
            .collect();
        let source = match crate::replay_sharded::mappable(&args.input) {
            Some(file) => crate::replay_sharded::Source::File(file),
            None => crate::replay_sharded::Source::Stream(&mut input),
        };
        Ok(crate::replay_sharded::run_sharded(
            source,
            engines,
            crate::replay_sharded::ShardOptions {
                chunk_lines: args.shard_chunk_lines,
                exchange_chunks: args.shard_exchange_chunks,
            },
            &mut on_alert,
            &mut on_progress,
        )?)
    } else {
        run_stream(
            &mut input,
            &mut engine,
            args.strict,
            &mut on_alert,
            &mut on_progress,
        )?
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let (summary, stop) = match result {
        Ok(s) => (s, None),
        Err((s, stop)) => (s, Some(stop)),
    };
    out.flush().context("writing alerts")?;
    if args.json_summary {
        eprintln!("{}", serde_json::to_string(&summary)?);
    } else {
        eprint!("{}", render_summary(&summary));
    }
    if let Some(stop) = stop {
        eprintln!(
            "outflow replay: --strict: stopped at line {}: {}",
            stop.line, stop.error
        );
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(len: Option<u64>) -> Option<indicatif::ProgressBar> {
    let len = len?;
    if !io::stderr().is_terminal() || len < (64 << 20) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Reads all of a reader (for tests of small inputs).
#[allow(dead_code)]
pub fn read_all(mut r: impl Read) -> io::Result<String> {
    let mut s = String::new();
    r.read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn lines_by_read_until(data: &[u8]) -> Vec<Vec<u8>> {
        let mut r = data;
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).unwrap() == 0 {
                return out;
            }
            out.push(line);
        }
    }

    fn lines_by_line_reader(data: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut input = BufReader::with_capacity(
            7,
            Trickle {
                data: data.to_vec(),
                at: 0,
                step,
            },
        );
        let mut reader = LineReader::new(&mut input);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(line.to_vec());
        }
        out
    }

    /// Lines, newlines and a last line without one come out exactly as
    /// `read_until` gives them, whatever the read sizes.
    #[test]
    fn line_reader_splits_like_read_until() {
        let long = "x".repeat(READ_BLOCK * 2 + 3);
        let inputs: Vec<String> = vec![
            String::new(),
            "\n".into(),
            "\n\n\r\n".into(),
            "a".into(),
            "a\nb".into(),
            "a\r\nb\r\n".into(),
            "{\"k\":1}\n\n  \n{\"k\":2}\n".into(),
            format!("a\n{long}\nb"),
            long.clone(),
            (0..5000).map(|i| format!("line {i}\n")).collect(),
        ];
        for input in &inputs {
            let want = lines_by_read_until(input.as_bytes());
            for step in [1, 3, 64, 1 << 20, usize::MAX] {
                assert!(
                    lines_by_line_reader(input.as_bytes(), step) == want,
                    "input of {} bytes, reads of {step}",
                    input.len()
                );
            }
        }
    }
}
