//! Importers: existing telemetry (Windows Sysmon logs, Zeek logs, packet
//! captures) into Outflow telemetry JSONL (DESIGN.md section 2).
//!
//! Sysmon knows the process of a connection but not its bytes; Zeek and
//! packet captures know the bytes but not the process. [`import`] reads every
//! source given, joins flows to Sysmon network connections (EventID 3) on the
//! 5-tuple within a clock-skew tolerance, and writes `net` records as
//! per-interval deltas per (host, process, destination), sorted by event time.
//! Everything it could not read is reported with its location in the
//! [`ImportReport`]; the rest is still imported.
//!
//! Pipeline: [`source`] opens files and zip members, [`sysmon`], [`zeek`] and
//! [`pcap`] parse them into [`flow::Flow`]s and contract events, [`join`]
//! attributes flows to processes and emits the sorted output.

pub mod cli;
pub mod config;
pub mod dns;
pub mod flow;
pub mod join;
pub mod pcap;
pub mod report;
pub mod source;
pub mod synthetic;
pub mod sysmon;
pub mod tls;
pub mod zeek;

use std::io::Write;
use std::path::PathBuf;

pub use config::ImportConfig;
pub use report::{ImportReport, Rejection, SourceKind};

/// What to import and how.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Sysmon JSON-lines files (NXLog or Winlogbeat), or zips of them.
    pub sysmon: Vec<PathBuf>,
    /// pcap / pcapng files, or zips of them.
    pub pcap: Vec<PathBuf>,
    /// Zeek log directories (or single log files): conn, ssl, dns; TSV or JSON.
    pub zeek: Vec<PathBuf>,
    /// Tunables (interval, clock skew, …).
    pub config: ImportConfig,
}

/// Errors that stop an import as a whole. Problems with one record, file or
/// zip member do not: they are counted in the [`ImportReport`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no input: give at least one --sysmon, --pcap or --zeek source")]
    NoInput,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("writing the output failed: {0}")]
    Output(#[from] std::io::Error),
}

/// Reads every source in `opts`, joins them and writes telemetry JSONL to
/// `out`, sorted by `ts`. Returns the summary of what was read, rejected,
/// joined and left unmatched.
pub fn import(opts: &ImportOptions, out: &mut impl Write) -> Result<ImportReport, ImportError> {
    if opts.sysmon.is_empty() && opts.pcap.is_empty() && opts.zeek.is_empty() {
        return Err(ImportError::NoInput);
    }
    opts.config.validate().map_err(ImportError::Config)?;
    let started = std::time::Instant::now();
    let mut report = ImportReport {
        max_listed: Some(opts.config.max_listed_rejections),
        ..ImportReport::default()
    };
    let events = collect(opts, &mut report);
    let mut line = String::with_capacity(256);
    for e in &events {
        line.clear();
        e.write_json(&mut line);
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    report.events_written = events.len() as u64;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Reads and joins everything, returning the sorted events without writing
/// them: for callers that feed the engine directly (tests, replay).
pub fn import_events(
    opts: &ImportOptions,
) -> Result<(Vec<outflow_core::Event>, ImportReport), ImportError> {
    if opts.sysmon.is_empty() && opts.pcap.is_empty() && opts.zeek.is_empty() {
        return Err(ImportError::NoInput);
    }
    opts.config.validate().map_err(ImportError::Config)?;
    let started = std::time::Instant::now();
    let mut report = ImportReport {
        max_listed: Some(opts.config.max_listed_rejections),
        ..ImportReport::default()
    };
    let events = collect(opts, &mut report);
    report.events_written = events.len() as u64;
    report.elapsed = started.elapsed();
    Ok((events, report))
}

fn collect(opts: &ImportOptions, report: &mut ImportReport) -> Vec<outflow_core::Event> {
    let cfg = &opts.config;
    let mut host_log = sysmon::SysmonLog::default();
    for path in &opts.sysmon {
        sysmon::read_path(path, &mut host_log, report);
    }
    let mut net = flow::NetworkData::default();
    if !opts.pcap.is_empty() {
        pcap::read_paths(&opts.pcap, cfg, &mut net, report);
    }
    if !opts.zeek.is_empty() {
        zeek::read_paths(&opts.zeek, cfg, &mut net, report);
    }
    join::join(host_log, net, cfg, report)
}
