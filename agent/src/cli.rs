//! The `outflow-agent` commands: `run`, `check`, `replay`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use outflow_core::telemetry::Event;

use crate::config::AgentConfig;
use crate::ship::{Shipper, ShipperConfig};
use crate::source::{ShedLevel, Source};
use crate::watchdog::Watchdog;

#[derive(Parser, Debug)]
#[command(
    name = "outflow-agent",
    version,
    about = "Outflow endpoint agent: per-process, per-destination network byte counters, shipped over mTLS gRPC."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Observe this host and ship telemetry (or write it as JSONL with --output).
    Run(RunArgs),
    /// Print which probes work on this host and what is missing.
    Check,
    /// Stream a telemetry JSONL file to a collector (importer certificate).
    Replay(ReplayArgs),
}

/// Every config file option, as a flag (flags win over the file).
#[derive(Args, Debug, Default, Clone)]
pub struct CommonArgs {
    /// TOML configuration file (see docs/agent.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Collector endpoint, e.g. https://127.0.0.1:7201.
    #[arg(long)]
    pub collector: Option<String>,
    /// Directory with ca.pem and the client certificate (`outflow certs dev`).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Host id; must match the agent certificate's name.
    #[arg(long)]
    pub host_id: Option<String>,
    /// Certificate file stem in --certs (default agent-<host-id>; `importer` for replay).
    #[arg(long)]
    pub cert_stem: Option<String>,
    /// Durable spool directory.
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Spool size bound in bytes (oldest batches dropped, counted and reported beyond it).
    #[arg(long)]
    pub spool_max_bytes: Option<u64>,
    /// Largest batch, in events.
    #[arg(long)]
    pub max_batch_events: Option<usize>,
    /// First reconnect delay (ms).
    #[arg(long)]
    pub backoff_initial_ms: Option<u64>,
    /// Longest reconnect delay (ms).
    #[arg(long)]
    pub backoff_max_ms: Option<u64>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Write telemetry JSONL to FILE (`-` = stdout) instead of shipping it.
    #[arg(long)]
    pub output: Option<String>,
    /// Socket counter sampling period (ms).
    #[arg(long)]
    pub sample_interval_ms: Option<u64>,
    /// Seal a batch at least this often (ms).
    #[arg(long)]
    pub batch_interval_ms: Option<u64>,
    /// Full /proc rescan period (s).
    #[arg(long)]
    pub proc_rescan_secs: Option<u64>,
    /// Destinations never reported (CIDR or IP; repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Disable packet capture (DNS, SNI, UDP/443 bytes).
    #[arg(long)]
    pub no_capture: bool,
    /// Do not count UDP/443 (QUIC) bytes from the capture.
    #[arg(long)]
    pub no_count_udp: bool,
    /// Watchdog CPU budget, percent of one core.
    #[arg(long)]
    pub cpu_limit_percent: Option<f64>,
    /// Watchdog memory budget (MiB).
    #[arg(long)]
    pub rss_limit_mb: Option<u64>,
    /// Watchdog averaging window (s).
    #[arg(long)]
    pub watchdog_window_secs: Option<u64>,
    /// Host label KEY=VALUE sent in the `host` event (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Stop after this many seconds (tests, benchmarks).
    #[arg(long)]
    pub duration_secs: Option<f64>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Telemetry JSONL (DESIGN.md section 2); `-` = stdin.
    #[arg(long)]
    pub input: String,
    /// Stop at the first bad line (non-zero exit).
    #[arg(long)]
    pub strict: bool,
    /// Give up waiting for acknowledgements after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub ack_timeout_secs: u64,
}

fn load_config(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?;
            AgentConfig::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))
        }
        None => Ok(AgentConfig::default()),
    }
}

impl CommonArgs {
    fn apply(&self, c: &mut AgentConfig) {
        if let Some(v) = &self.collector {
            c.collector = Some(v.clone());
        }
        if let Some(v) = &self.certs {
            c.certs = Some(v.clone());
        }
        if let Some(v) = &self.host_id {
            c.host_id = Some(v.clone());
        }
        if let Some(v) = &self.cert_stem {
            c.cert_stem = Some(v.clone());
        }
        if let Some(v) = &self.spool {
            c.spool = v.clone();
        }
        if let Some(v) = self.spool_max_bytes {
            c.spool_max_bytes = v;
        }
        if let Some(v) = self.max_batch_events {
            c.max_batch_events = v;
        }
        if let Some(v) = self.backoff_initial_ms {
            c.backoff_initial_ms = v;
        }
        if let Some(v) = self.backoff_max_ms {
            c.backoff_max_ms = v;
        }
    }
}

impl RunArgs {
    /// The effective configuration: defaults ← file ← flags.
    pub fn config(&self) -> anyhow::Result<AgentConfig> {
        let mut c = load_config(self.common.config.as_deref())?;
        self.common.apply(&mut c);
        if let Some(v) = &self.output {
            c.output = Some(v.clone());
        }
        if let Some(v) = self.sample_interval_ms {
            c.sample_interval_ms = v;
        }
        if let Some(v) = self.batch_interval_ms {
            c.batch_interval_ms = v;
        }
        if let Some(v) = self.proc_rescan_secs {
            c.proc_rescan_secs = v;
        }
        if !self.exclude.is_empty() {
            c.exclude = self.exclude.clone();
        }
        if self.no_capture {
            c.capture = false;
        }
        if self.no_count_udp {
            c.count_udp = false;
        }
        if let Some(v) = self.cpu_limit_percent {
            c.cpu_limit_percent = v;
        }
        if let Some(v) = self.rss_limit_mb {
            c.rss_limit_mb = v;
        }
        if let Some(v) = self.watchdog_window_secs {
            c.watchdog_window_secs = v;
        }
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .with_context(|| format!("--label `{l}`: expected KEY=VALUE"))?;
            c.labels.insert(k.to_string(), v.to_string());
        }
        Ok(c)
    }
}

fn validate(c: &AgentConfig) -> anyhow::Result<()> {
    if let Err(errs) = c.validate() {
        bail!("invalid configuration:\n  - {}", errs.join("\n  - "));
    }
    Ok(())
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTFLOW_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Entry point of the `outflow-agent` binary.
pub fn main_with(cli: Cli) -> anyhow::Result<ExitCode> {
    init_logging();
    match cli.command {
        Command::Run(a) => run(a),
        Command::Check => check(),
        Command::Replay(a) => replay(a),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(target_os = "linux")]
pub fn check() -> anyhow::Result<ExitCode> {
    let probes = crate::linux::check_probes();
    let mut core_ok = true;
    println!("outflow-agent probes on this host:");
    for p in &probes {
        println!(
            "  [{}] {:<48} {}",
            if p.ok { " ok " } else { "MISS" },
            p.name,
            p.detail
        );
        if !p.ok {
            println!("         needs: {}", p.needs);
            if p.name.starts_with("sock_diag") {
                core_ok = false;
            }
        }
    }
    let missing = probes.iter().filter(|p| !p.ok).count();
    if missing == 0 {
        println!("all probes work: full fidelity.");
    } else {
        println!("{missing} probe(s) missing: the agent runs with reduced fidelity (see above).");
    }
    Ok(if core_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(windows)]
pub fn check() -> anyhow::Result<ExitCode> {
    let ok = crate::windows::check();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(not(any(target_os = "linux", windows)))]
pub fn check() -> anyhow::Result<ExitCode> {
    println!("no probes for this operating system");
    Ok(ExitCode::FAILURE)
}

fn make_source(host: &str, cfg: &AgentConfig) -> anyhow::Result<Box<dyn Source>> {
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(crate::linux::LinuxSource::new(host, cfg)?))
    }
    #[cfg(windows)]
    {
        Ok(Box::new(crate::windows::EtwSource::new(host, cfg)?))
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        let _ = (host, cfg);
        bail!("no telemetry source for this operating system")
    }
}

fn default_host_name() -> String {
    #[cfg(target_os = "linux")]
    {
        crate::linux::hostname()
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::env::var("COMPUTERNAME").unwrap_or_else(|_| "localhost".into())
    }
}

enum Sink {
    Output(Box<dyn Write + Send>),
    Ship(Shipper),
}

fn shipper_config(c: &AgentConfig, default_stem: Option<&str>) -> anyhow::Result<ShipperConfig> {
    let endpoint = c.collector.clone().context("no --collector given")?;
    let certs = c.certs.clone().context("no --certs given")?;
    let mut sc = ShipperConfig::new(&endpoint, certs, c.spool.clone());
    sc.cert_stem = c.cert_stem.clone().or(default_stem.map(str::to_string));
    sc.host_id = c.host_id.clone();
    sc.spool_max_bytes = c.spool_max_bytes;
    sc.max_batch_events = c.max_batch_events;
    sc.backoff_initial = Duration::from_millis(c.backoff_initial_ms);
    sc.backoff_max = Duration::from_millis(c.backoff_max_ms);
    Ok(sc)
}

/// `outflow-agent run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config()?;
    validate(&cfg)?;
    let rt = runtime()?;
    rt.block_on(run_async(
        cfg,
        args.duration_secs.map(Duration::from_secs_f64),
    ))
}

async fn run_async(cfg: AgentConfig, duration: Option<Duration>) -> anyhow::Result<ExitCode> {
    let (mut sink, host) = match &cfg.output {
        Some(o) => {
            let w: Box<dyn Write + Send> = if o == "-" {
                Box::new(std::io::BufWriter::new(std::io::stdout()))
            } else {
                Box::new(std::io::BufWriter::new(
                    std::fs::File::create(o)
                        .with_context(|| format!("cannot create --output {o}"))?,
                ))
            };
            let host = cfg.host_id.clone().unwrap_or_else(default_host_name);
            (Sink::Output(w), host)
        }
        None => {
            std::fs::create_dir_all(&cfg.spool).with_context(|| {
                format!("cannot create spool directory {}", cfg.spool.display())
            })?;
            let shipper = Shipper::start(shipper_config(&cfg, None)?)?;
            let host = shipper.identity().name.clone();
            (Sink::Ship(shipper), host)
        }
    };
    tracing::info!(host = %host, "outflow-agent starting");
    let mut source = make_source(&host, &cfg)?;

    // The source runs on its own thread at the sampling period; events come
    // over a bounded queue (overflow is counted and reported, never silent).
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Event>>(256);
    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(AtomicU8::new(0));
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sample = cfg.sample_interval();
    let src_thread = {
        let stop = stop.clone();
        let shed = shed.clone();
        let dropped = dropped.clone();
        std::thread::Builder::new()
            .name("source".into())
            .spawn(move || {
                let mut level = ShedLevel::Normal;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let want = match shed.load(Ordering::Relaxed) {
                        0 => ShedLevel::Normal,
                        1 => ShedLevel::NoCapture,
                        _ => ShedLevel::Minimal,
                    };
                    if want != level {
                        level = want;
                        source.set_shed_level(level);
                    }
                    let mut evs = Vec::new();
                    if let Err(e) = source.poll(crate::source::now(), &mut evs) {
                        tracing::warn!(source = source.name(), "poll failed: {e}");
                    }
                    if !evs.is_empty() {
                        let n = evs.len() as u64;
                        if let Err(std::sync::mpsc::TrySendError::Full(_)) = tx.try_send(evs) {
                            dropped.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                    let period = if level == ShedLevel::Minimal {
                        sample * 4
                    } else {
                        sample
                    };
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                let st = source.stats();
                tracing::info!(?st, "source stopped");
            })
            .context("cannot start the source thread")?
    };

    let mut watchdog = Watchdog::new(
        cfg.cpu_limit_percent,
        cfg.rss_limit_mb,
        Duration::from_secs(cfg.watchdog_window_secs),
    );
    let started = Instant::now();
    let mut last_seal = Instant::now();
    let mut last_wd = Instant::now();
    let mut last_stats = Instant::now();
    let mut pending: Vec<Event> = Vec::new();
    let mut term = signal_stream()?;
    let mut total_events: u64 = 0;
    loop {
        let tick = tokio::time::sleep(Duration::from_millis(100));
        let mut stopping = false;
        tokio::select! {
            _ = tick => {}
            _ = term.recv() => stopping = true,
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            stopping = true;
        }
        while let Ok(mut evs) = rx.try_recv() {
            pending.append(&mut evs);
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                events = lost,
                "event queue full: events dropped (reported in the next batch)"
            );
            if let Sink::Ship(s) = &sink {
                s.note_dropped(lost);
            }
        }
        if stopping
            || last_seal.elapsed() >= cfg.batch_interval()
            || pending.len() >= cfg.max_batch_events
        {
            last_seal = Instant::now();
            if !pending.is_empty() {
                total_events += pending.len() as u64;
                let batch = std::mem::take(&mut pending);
                match &mut sink {
                    Sink::Output(w) => {
                        let mut buf = String::with_capacity(batch.len() * 160);
                        for e in &batch {
                            e.write_json(&mut buf);
                            buf.push('\n');
                        }
                        if let Err(e) = w.write_all(buf.as_bytes()).and_then(|_| w.flush()) {
                            tracing::error!("writing --output failed: {e}");
                        }
                    }
                    Sink::Ship(s) => {
                        if let Err(e) = tokio::task::block_in_place(|| s.send(batch)) {
                            tracing::error!("{e}");
                        }
                    }
                }
            }
        }
        if last_wd.elapsed() >= Duration::from_secs(2) {
            last_wd = Instant::now();
            if let Some(r) = watchdog.sample() {
                if r.changed {
                    // Upstream, not only in the log: a `host` event whose
                    // labels carry the level and the reason.
                    pending.push(crate::watchdog::shed_event(
                        &host,
                        &cfg.labels,
                        &r,
                        watchdog.transitions,
                        crate::source::now(),
                    ));
                }
                let l = match r.level {
                    ShedLevel::Normal => 0,
                    ShedLevel::NoCapture => 1,
                    ShedLevel::Minimal => 2,
                };
                shed.store(l, Ordering::Relaxed);
            }
        }
        if last_stats.elapsed() >= Duration::from_secs(60) {
            last_stats = Instant::now();
            let ship = match &sink {
                Sink::Ship(s) => Some(s.stats()),
                Sink::Output(_) => None,
            };
            let shed = watchdog.stats(Instant::now());
            tracing::info!(events = total_events, ?shed, ?ship, "agent status");
        }
        if stopping {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || src_thread.join()).await;
    // Events produced while stopping.
    while let Ok(mut evs) = rx.try_recv() {
        pending.append(&mut evs);
    }
    match sink {
        Sink::Output(mut w) => {
            let mut buf = String::new();
            for e in &pending {
                e.write_json(&mut buf);
                buf.push('\n');
            }
            w.write_all(buf.as_bytes())?;
            w.flush()?;
        }
        Sink::Ship(s) => {
            if !pending.is_empty() {
                let _ = tokio::task::block_in_place(|| s.send(pending));
            }
            if !s.wait_drained(Duration::from_secs(5)).await {
                tracing::info!(
                    "unacknowledged batches stay in the spool and are sent at next start"
                );
            }
            s.shutdown().await;
        }
    }
    tracing::info!(events = total_events, "outflow-agent stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM / SIGINT (Ctrl-C) as a stream of stop requests.
fn signal_stream() -> anyhow::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut t = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let tx2 = tx.clone();
        tokio::spawn(async move {
            while t.recv().await.is_some() {
                let _ = tx2.send(()).await;
            }
        });
    }
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(()).await;
        }
    });
    Ok(rx)
}

/// `outflow-agent replay`: a JSONL file through the same shipping path.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(args.common.config.as_deref())?;
    args.common.apply(&mut cfg);
    // Replay never writes to the live agent's spool unless told to.
    let temp_spool = args.common.spool.is_none();
    if temp_spool {
        cfg.spool =
            std::env::temp_dir().join(format!("outflow-agent-replay-{}", std::process::id()));
    }
    cfg.output = None;
    validate(&cfg)?;
    let reader: Box<dyn BufRead> = if args.input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("cannot open --input {}", args.input))?,
        ))
    };
    let rt = runtime()?;
    let spool_dir = cfg.spool.clone();
    let res = rt.block_on(async {
        let shipper = Shipper::start(shipper_config(&cfg, Some("importer"))?)?;
        let started = Instant::now();
        let (mut read, mut bad, mut chunk) = (0u64, 0u64, Vec::new());
        for (i, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading {} line {}", args.input, i + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            match outflow_core::telemetry::parse_line(&line) {
                Ok(e) => {
                    read += 1;
                    chunk.push(e);
                }
                Err(e) => {
                    bad += 1;
                    eprintln!("{}:{}: {e}", args.input, i + 1);
                    if args.strict {
                        bail!("{}:{}: bad line (--strict)", args.input, i + 1);
                    }
                }
            }
            if chunk.len() >= cfg.max_batch_events {
                tokio::task::block_in_place(|| shipper.send(std::mem::take(&mut chunk)))?;
            }
        }
        if !chunk.is_empty() {
            tokio::task::block_in_place(|| shipper.send(chunk))?;
        }
        let drained = shipper
            .wait_drained(Duration::from_secs(args.ack_timeout_secs))
            .await;
        let st = shipper.stats();
        shipper.shutdown().await;
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "replay: {read} events read, {bad} rejected, {} batches acknowledged, {} duplicates, {:.0} events/s",
            st.batches_acked,
            st.duplicates_reported,
            read as f64 / secs.max(1e-9)
        );
        if !drained {
            bail!(
                "{} batches were not acknowledged within {} s (they stay in spool {})",
                st.spool.pending_batches,
                args.ack_timeout_secs,
                cfg.spool.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    });
    if temp_spool && res.is_ok() {
        let _ = std::fs::remove_dir_all(&spool_dir);
    }
    res
}
