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
    /// Telemetry JSONL file, or '-' for stdin.
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
            for (line_no, parsed) in &batch.lines {
                let line_no = *line_no;
                match parsed {
                    Ok(ev) => {
                        s.events += 1;
                        engine.ingest(ev);
                    }
                    Err(error) => {
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
                if engine.pending_alerts() > 0 {
                    for a in engine.drain_alerts() {
                        s.alerts += 1;
                        on_alert(&a)?;
                    }
                }
            }
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
    let mut buf = Vec::with_capacity(512);
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
            buf.clear();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    batch.bytes += n as u64;
                    line_no += 1;
                    let line = trim_newline(&buf);
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
        Ok(crate::replay_sharded::run_sharded(
            &mut input,
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
