//! Collector configuration: TOML with serde defaults, every option also a
//! flag (see [`crate::cli::CollectorArgs`]); flags win. `validate()` reports
//! every problem, not only the first.

use std::net::SocketAddr;
use std::path::PathBuf;

use outflow_core::config::EngineConfig;
use serde::{Deserialize, Serialize};

/// Everything a collector needs to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// This collector's id in the shard map (e.g. `c1`).
    pub id: String,
    /// gRPC ingest address (agents connect here over mutual TLS).
    pub listen: SocketAddr,
    /// The endpoint agents are told to use for this collector in redirects
    /// and in the shard map (default: `https://<listen>`).
    pub advertise: Option<String>,
    /// HTTP address of `/metrics`, `/healthz`, `/readyz` and the evidence API.
    pub api: SocketAddr,
    /// Bearer token required by the evidence API. When the API listens off
    /// loopback and no token is set, evidence is refused (it is telemetry).
    pub api_token: Option<String>,
    /// Aggregator gRPC addresses (`host:port`). Empty: an embedded,
    /// non-replicated fleet store (a single collector, for tests and demos).
    pub aggregators: Vec<String>,
    /// Data directory (sled database).
    pub data: PathBuf,
    /// Certificate directory as written by `outflow certs dev`.
    pub certs: PathBuf,
    /// Certificate stem this collector serves with and presents to
    /// aggregators (`<stem>.pem`, `<stem>-key.pem`).
    pub cert_stem: String,
    /// Server name checked on aggregator certificates.
    pub aggregator_server_name: String,
    /// OTLP/gRPC endpoint for alerts (e.g. `http://127.0.0.1:4317`). Falls
    /// back to `OTEL_EXPORTER_OTLP_ENDPOINT`; none: no OTLP export.
    pub otlp_endpoint: Option<String>,
    /// Extra gRPC metadata for OTLP export (`key=value` pairs, e.g. an
    /// authorization token). Falls back to `OTEL_EXPORTER_OTLP_HEADERS`.
    pub otlp_headers: Vec<String>,
    /// PEM CA bundle trusted for an `https://` OTLP endpoint (default: the
    /// Outflow CA in `certs`).
    pub otlp_ca: Option<PathBuf>,
    /// Timeout of one OTLP export call, seconds.
    pub otlp_timeout_secs: u64,
    /// OTLP/gRPC endpoint (`http://host:port`, e.g. a local OpenTelemetry
    /// Collector) for the collector's own tracing spans, sent with
    /// `otlp_headers`. Falls back to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
    /// none: spans stay local (log lines only).
    pub traces_endpoint: Option<String>,
    /// Append every alert as one JSON line to this file.
    pub alerts_out: Option<PathBuf>,
    /// Largest accepted gRPC message, bytes (bigger: RESOURCE_EXHAUSTED).
    pub max_message_bytes: usize,
    /// Most events accepted in one batch (more: INVALID_ARGUMENT).
    pub max_batch_events: usize,
    /// Batches of one stream waiting to become durable before the stream
    /// stops reading (backpressure on the agent).
    pub stream_queue: usize,
    /// Most concurrent ingest streams.
    pub max_streams: usize,
    /// Longest a batch waits for its group commit before the commit starts,
    /// milliseconds (the flush itself follows).
    pub group_commit_ms: u64,
    /// Batches written in one group commit at most.
    pub group_commit_max: usize,
    /// Durable batches queued for the engines (backpressure on ingest).
    pub engine_queue: usize,
    /// Engine tasks hosts are split over (each uses up to one core);
    /// 0 = one per available core, at most 8.
    pub engine_shards: usize,
    /// Days batches (evidence) and alerts are kept before compaction.
    pub retention_days: u32,
    /// Seconds between compactions of expired data.
    pub compact_every_secs: u64,
    /// Seconds between partial-statistics submissions to the aggregator.
    pub partials_every_secs: u64,
    /// Seconds between heartbeats to the aggregator.
    pub heartbeat_every_secs: u64,
    /// Milliseconds between wall-clock ticks that close windows of idle hosts.
    pub tick_ms: u64,
    /// Alerts per export call to the SOC, at most.
    pub outbox_batch: usize,
    /// Longest pause between delivery retries, seconds.
    pub max_retry_secs: u64,
    /// The engine's windows, baselines and scoring.
    pub engine: EngineConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            id: "c1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7201)),
            advertise: None,
            api: SocketAddr::from(([127, 0, 0, 1], 7271)),
            api_token: None,
            aggregators: Vec::new(),
            data: PathBuf::from("outflow-collector-data"),
            certs: PathBuf::from("certs"),
            cert_stem: "server".into(),
            aggregator_server_name: "localhost".into(),
            otlp_endpoint: None,
            otlp_headers: Vec::new(),
            otlp_ca: None,
            otlp_timeout_secs: 10,
            traces_endpoint: None,
            alerts_out: None,
            max_message_bytes: 4 << 20,
            max_batch_events: 50_000,
            stream_queue: 64,
            max_streams: 10_000,
            group_commit_ms: 5,
            group_commit_max: 4096,
            engine_queue: 1024,
            engine_shards: 0,
            retention_days: 14,
            compact_every_secs: 600,
            partials_every_secs: 10,
            heartbeat_every_secs: 2,
            tick_ms: 500,
            outbox_batch: 256,
            max_retry_secs: 30,
            engine: EngineConfig::default(),
        }
    }
}

impl CollectorConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// The number of engine shards to run.
    pub fn engine_shard_count(&self) -> usize {
        if self.engine_shards > 0 {
            self.engine_shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(8)
        }
    }

    /// The endpoint agents use to reach this collector.
    pub fn advertised_endpoint(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| format!("https://{}", self.listen))
    }

    /// The OTLP endpoint: the option, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn resolved_otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|s| !s.trim().is_empty())
    }

    /// The traces endpoint: the option, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub fn resolved_traces_endpoint(&self) -> Option<String> {
        self.traces_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
            .filter(|s| !s.trim().is_empty())
    }

    /// OTLP headers: the option, else `OTEL_EXPORTER_OTLP_HEADERS`
    /// (`k=v,k2=v2`, values percent-decoded as the OpenTelemetry spec says).
    pub fn resolved_otlp_headers(&self) -> Result<Vec<(String, String)>, String> {
        let raw: Vec<String> = if self.otlp_headers.is_empty() {
            std::env::var("OTEL_EXPORTER_OTLP_HEADERS")
                .ok()
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            self.otlp_headers.clone()
        };
        let mut out = Vec::new();
        for h in raw.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (k, v) = h
                .split_once('=')
                .ok_or_else(|| format!("OTLP header `{h}` is not key=value"))?;
            out.push((k.trim().to_ascii_lowercase(), percent_decode(v.trim())));
        }
        Ok(out)
    }

    /// Every problem with this configuration.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            errs.push(format!(
                "id `{}` must be non-empty and use only A-Z a-z 0-9 - _ .",
                self.id
            ));
        }
        if self.cert_stem.is_empty() {
            errs.push("cert_stem must not be empty".into());
        }
        for a in &self.aggregators {
            if a.trim().is_empty() {
                errs.push("aggregators: empty address".into());
            }
        }
        let positive: [(&str, u64); 10] = [
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_batch_events", self.max_batch_events as u64),
            ("stream_queue", self.stream_queue as u64),
            ("max_streams", self.max_streams as u64),
            ("group_commit_max", self.group_commit_max as u64),
            ("engine_queue", self.engine_queue as u64),
            ("retention_days", u64::from(self.retention_days)),
            ("tick_ms", self.tick_ms),
            ("outbox_batch", self.outbox_batch as u64),
            ("partials_every_secs", self.partials_every_secs),
        ];
        for (name, v) in positive {
            if v == 0 {
                errs.push(format!("{name} must be greater than 0"));
            }
        }
        if self.group_commit_ms > 100 {
            errs.push(format!(
                "group_commit_ms {} is above 100: acknowledgements would wait too long",
                self.group_commit_ms
            ));
        }
        if self.heartbeat_every_secs == 0 || self.compact_every_secs == 0 {
            errs.push("heartbeat_every_secs and compact_every_secs must be greater than 0".into());
        }
        if self.otlp_timeout_secs == 0 || self.max_retry_secs == 0 {
            errs.push("otlp_timeout_secs and max_retry_secs must be greater than 0".into());
        }
        if let Some(ep) = self.resolved_traces_endpoint() {
            if !ep.starts_with("http://") {
                errs.push(format!(
                    "traces_endpoint {ep:?} must be an http:// OTLP/gRPC endpoint (spans go to a local OpenTelemetry Collector; TLS is not supported for them)"
                ));
            }
        }
        if let Some(ep) = self.resolved_otlp_endpoint() {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                errs.push(format!(
                    "OTLP endpoint `{ep}` must start with http:// or https://"
                ));
            }
        }
        if let Err(e) = self.resolved_otlp_headers() {
            errs.push(e);
        }
        if let Err(e) = self.engine.validate() {
            errs.extend(e.into_iter().map(|m| format!("engine: {m}")));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_toml_round_trips() {
        let c = CollectorConfig::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: CollectorConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_reported() {
        let err = toml::from_str::<CollectorConfig>("id = \"c1\"\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_addr"), "{err}");
        let c = CollectorConfig {
            id: "bad id".into(),
            stream_queue: 0,
            group_commit_ms: 500,
            otlp_endpoint: Some("grpc://x".into()),
            ..CollectorConfig::default()
        };
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn otlp_headers_are_parsed_and_decoded() {
        let c = CollectorConfig {
            otlp_headers: vec!["Authorization=Bearer%20abc".into(), "x-tenant=7".into()],
            ..CollectorConfig::default()
        };
        assert_eq!(
            c.resolved_otlp_headers().unwrap(),
            vec![
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-tenant".to_string(), "7".to_string())
            ]
        );
        let bad = CollectorConfig {
            otlp_headers: vec!["novalue".into()],
            ..CollectorConfig::default()
        };
        assert!(bad.resolved_otlp_headers().is_err());
    }
}
