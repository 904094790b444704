//! `outflow collector`: every option of the config file is also a flag, and
//! flags win. `--set KEY=VALUE` reaches any option, nested ones included
//! (e.g. `--set engine.min_peers=5`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::CollectorConfig;

/// A collector process: mTLS ingest, durable windows, scoring, OTLP alerts.
#[derive(Debug, Default, clap::Args)]
pub struct CollectorArgs {
    /// TOML configuration file (options below override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Collector id in the shard map.
    #[arg(long)]
    pub id: Option<String>,
    /// gRPC ingest address.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Endpoint advertised to agents (default https://<listen>).
    #[arg(long)]
    pub advertise: Option<String>,
    /// HTTP address for /metrics, /healthz, /readyz and evidence.
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Bearer token for the evidence API (needed off loopback).
    #[arg(long, env = "OUTFLOW_COLLECTOR_API_TOKEN")]
    pub api_token: Option<String>,
    /// Aggregator addresses, comma-separated (none: embedded fleet store).
    #[arg(long, value_delimiter = ',')]
    pub aggregators: Option<Vec<String>>,
    /// Data directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Certificate directory (`outflow certs dev --out DIR`).
    #[arg(long)]
    pub certs: Option<PathBuf>,
    /// Certificate stem served and presented to aggregators.
    #[arg(long)]
    pub cert_stem: Option<String>,
    /// Server name checked on aggregator certificates.
    #[arg(long)]
    pub aggregator_server_name: Option<String>,
    /// OTLP/gRPC endpoint for alerts (else OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// OTLP header `key=value` (repeatable; else OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long = "otlp-header")]
    pub otlp_headers: Vec<String>,
    /// CA bundle for an https OTLP endpoint.
    #[arg(long)]
    pub otlp_ca: Option<PathBuf>,
    /// OTLP export timeout, seconds.
    #[arg(long)]
    pub otlp_timeout_secs: Option<u64>,
    /// Append alerts as JSON lines to this file.
    #[arg(long)]
    pub alerts_out: Option<PathBuf>,
    /// Largest accepted gRPC message, bytes.
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// Most events per batch.
    #[arg(long)]
    pub max_batch_events: Option<usize>,
    /// Batches per stream waiting to be durable (backpressure).
    #[arg(long)]
    pub stream_queue: Option<usize>,
    /// Most concurrent ingest streams.
    #[arg(long)]
    pub max_streams: Option<usize>,
    /// Group-commit gathering time, ms (≤ 100).
    #[arg(long)]
    pub group_commit_ms: Option<u64>,
    /// Most batches per group commit.
    #[arg(long)]
    pub group_commit_max: Option<usize>,
    /// Durable batches queued for the engines.
    #[arg(long)]
    pub engine_queue: Option<usize>,
    /// Engine shards (0 = one per core, at most 8).
    #[arg(long)]
    pub engine_shards: Option<usize>,
    /// Days of batches (evidence) and alerts kept.
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Seconds between compactions.
    #[arg(long)]
    pub compact_every_secs: Option<u64>,
    /// Seconds between partial submissions.
    #[arg(long)]
    pub partials_every_secs: Option<u64>,
    /// Seconds between heartbeats.
    #[arg(long)]
    pub heartbeat_every_secs: Option<u64>,
    /// Milliseconds between window-closing ticks.
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Alerts per delivery call.
    #[arg(long)]
    pub outbox_batch: Option<usize>,
    /// Longest pause between delivery retries, seconds.
    #[arg(long)]
    pub max_retry_secs: Option<u64>,
    /// Engine window length, seconds.
    #[arg(long)]
    pub window_secs: Option<u64>,
    /// Engine allowed lateness, seconds.
    #[arg(long)]
    pub allowed_lateness_secs: Option<u64>,
    /// Any option as KEY=VALUE (TOML value), e.g. `engine.min_peers=5`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl CollectorArgs {
    /// The effective configuration: defaults, then the file, then flags.
    pub fn resolve(&self) -> anyhow::Result<CollectorConfig> {
        let base = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", p.display()))?;
                text.parse::<toml::Table>()
                    .map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut table = base;
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--set `{kv}`: expected KEY=VALUE"))?;
            let value: toml::Value = match format!("v = {v}").parse::<toml::Table>() {
                Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(v.to_string())),
                // Bare words are strings.
                Err(_) => toml::Value::String(v.to_string()),
            };
            set_path(&mut table, k.trim(), value)?;
        }
        let mut c: CollectorConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        macro_rules! over {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        over!(
            id,
            listen,
            api,
            aggregators,
            data,
            certs,
            cert_stem,
            aggregator_server_name,
            otlp_timeout_secs,
            max_message_bytes,
            max_batch_events,
            stream_queue,
            max_streams,
            group_commit_ms,
            group_commit_max,
            engine_queue,
            engine_shards,
            retention_days,
            compact_every_secs,
            partials_every_secs,
            heartbeat_every_secs,
            tick_ms,
            outbox_batch,
            max_retry_secs
        );
        if self.api_token.is_some() {
            c.api_token = self.api_token.clone();
        }
        if self.advertise.is_some() {
            c.advertise = self.advertise.clone();
        }
        if self.otlp_endpoint.is_some() {
            c.otlp_endpoint = self.otlp_endpoint.clone();
        }
        if !self.otlp_headers.is_empty() {
            c.otlp_headers = self.otlp_headers.clone();
        }
        if self.otlp_ca.is_some() {
            c.otlp_ca = self.otlp_ca.clone();
        }
        if self.alerts_out.is_some() {
            c.alerts_out = self.alerts_out.clone();
        }
        if let Some(v) = self.window_secs {
            c.engine.window_secs = v;
        }
        if let Some(v) = self.allowed_lateness_secs {
            c.engine.allowed_lateness_secs = v;
        }
        Ok(c)
    }
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts
        .pop()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--set: empty key"))?;
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| anyhow::anyhow!("--set {path}: `{p}` is not a table"))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Runs `outflow collector` until Ctrl-C / SIGTERM.
pub fn run(args: CollectorArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.resolve()?;
    if let Err(errs) = cfg.validate() {
        anyhow::bail!("invalid collector configuration:\n  {}", errs.join("\n  "));
    }
    if args.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let traces = match cfg.resolved_traces_endpoint() {
        Some(ep) => {
            let headers = cfg.resolved_otlp_headers().map_err(anyhow::Error::msg)?;
            let timeout = std::time::Duration::from_secs(cfg.otlp_timeout_secs);
            // The exporter's channel must be made inside the runtime.
            let _guard = rt.enter();
            Some(crate::selftrace::tracer_provider(&ep, &headers, timeout)?)
        }
        None => None,
    };
    let traces = crate::selftrace::init("info", traces);
    let result = rt.block_on(crate::run_collector(cfg, shutdown_signal()));
    if let Some(p) = traces {
        // Spans still queued go out before the process ends.
        let _guard = rt.enter();
        if let Err(e) = p.shutdown() {
            eprintln!("outflow collector: flushing trace spans: {e}");
        }
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: CollectorArgs,
    }

    #[test]
    fn flags_override_the_file_and_set_reaches_nested_options() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("c.toml");
        std::fs::write(
            &f,
            "id = \"from-file\"\nretention_days = 3\n[engine]\nmin_peers = 7\n",
        )
        .unwrap();
        let t = T::parse_from([
            "x",
            "--config",
            f.to_str().unwrap(),
            "--id",
            "c9",
            "--aggregators",
            "127.0.0.1:7101,127.0.0.1:7102",
            "--set",
            "engine.window_secs=30",
            "--set",
            "otlp_headers=[\"a=b\"]",
        ]);
        let c = t.a.resolve().unwrap();
        assert_eq!(c.id, "c9");
        assert_eq!(c.retention_days, 3);
        assert_eq!(c.engine.min_peers, 7);
        assert_eq!(c.engine.window_secs, 30);
        assert_eq!(c.aggregators.len(), 2);
        assert_eq!(c.otlp_headers, vec!["a=b".to_string()]);
        let bad = T::parse_from(["x", "--set", "no_such_option=1"]);
        let err = bad.a.resolve().unwrap_err().to_string();
        assert!(err.contains("no_such_option"), "{err}");
    }
}
