//! Helpers shared by the collector tests: certificates, a simulated fleet
//! cut into batches, an OTLP receiver (tonic LogsService from the official
//! opentelemetry-proto crate) and waiting for a collector to settle.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use outflow_collector::CollectorConfig;
use outflow_core::telemetry::parse_line_bytes;
use outflow_core::{EngineConfig, Event};
use outflow_proto::pb;

pub fn certs(dir: &Path, hosts: &[&str]) -> PathBuf {
    let d = dir.join("certs");
    outflow_pki::generate_dev(
        &d,
        &outflow_pki::DevOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        },
    )
    .expect("dev certificates");
    d
}

/// A collector configuration for tests: loopback, port 0, fast ticks.
pub fn config(dir: &Path, certs: &Path, otlp: Option<String>) -> CollectorConfig {
    CollectorConfig {
        id: "c1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        api: "127.0.0.1:0".parse().unwrap(),
        data: dir.join("data"),
        certs: certs.to_path_buf(),
        otlp_endpoint: otlp,
        alerts_out: Some(dir.join("alerts.jsonl")),
        tick_ms: 100,
        partials_every_secs: 1,
        heartbeat_every_secs: 1,
        max_retry_secs: 1,
        engine: EngineConfig {
            allowed_lateness_secs: 2,
            ..EngineConfig::default()
        },
        ..CollectorConfig::default()
    }
}

/// A small simulated fleet with incidents, as events in event-time order.
pub fn fleet_events(hosts: usize, seed: u64) -> (Vec<Event>, Vec<outflow_sim::Incident>) {
    let opts = outflow_sim::SimOptions {
        hosts,
        days: 2,
        seed,
        incidents: 4,
        quiet_days: 1,
        ..Default::default()
    };
    let mut buf = Vec::new();
    let summary = outflow_sim::simulate(&opts, &mut buf, |_, _| {}).expect("simulate");
    let events = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_line_bytes(l).expect("sim output parses"))
        .collect();
    (events, summary.incidents)
}

/// Cuts events into per-host batches of at most `slice_secs` of event time,
/// in event-time order across hosts (as live agents would deliver them),
/// numbering each host's batches from 1.
pub fn batches(events: &[Event], slice_secs: i64) -> Vec<pb::Batch> {
    let slice_us = slice_secs * 1_000_000;
    let mut out = Vec::new();
    let mut seq: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending: BTreeMap<String, Vec<pb::TelemetryEvent>> = BTreeMap::new();
    let mut slice_end = i64::MIN;
    let mut flush = |pending: &mut BTreeMap<String, Vec<pb::TelemetryEvent>>,
                     out: &mut Vec<pb::Batch>| {
        for (host, evs) in std::mem::take(pending) {
            let s = seq.entry(host.clone()).or_insert(0);
            *s += 1;
            out.push(pb::Batch {
                host_id: host,
                sequence: *s,
                events: evs,
                ..Default::default()
            });
        }
    };
    for e in events {
        let t = e.ts().as_micros();
        if slice_end == i64::MIN {
            slice_end = t - t.rem_euclid(slice_us) + slice_us;
        }
        if t >= slice_end {
            flush(&mut pending, &mut out);
            slice_end = t - t.rem_euclid(slice_us) + slice_us;
        }
        pending
            .entry(e.host().to_string())
            .or_default()
            .push(outflow_proto::event_to_pb(e));
    }
    flush(&mut pending, &mut out);
    out
}

pub fn event_count(batches: &[pb::Batch]) -> u64 {
    batches.iter().map(|b| b.events.len() as u64).sum()
}

/// An OTLP logs receiver; `failing` makes it answer UNAVAILABLE.
#[derive(Clone, Default)]
pub struct Receiver {
    pub records: Arc<Mutex<Vec<LogRecord>>>,
    pub failing: Arc<AtomicBool>,
    pub refused_calls: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if self.failing.load(Ordering::SeqCst) {
            self.refused_calls.fetch_add(1, Ordering::SeqCst);
            return Err(tonic::Status::unavailable("SOC pipeline down (test)"));
        }
        let mut recs = self.records.lock().unwrap();
        for rl in request.into_inner().resource_logs {
            for sl in rl.scope_logs {
                recs.extend(sl.log_records);
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl Receiver {
    pub async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = LogsServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    pub fn ids(&self) -> Vec<String> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| string_attr(r, "outflow.alert.id"))
            .collect()
    }
}

pub fn string_attr(r: &LogRecord, key: &str) -> Option<String> {
    r.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

/// Alert ids in a JSON-lines alert file.
pub fn file_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("alert line is JSON");
            v["id"].as_str().expect("alert has an id").to_string()
        })
        .collect()
}

/// Waits until `f` holds, polling; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches a metric value from a collector's /metrics text.
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A tiny HTTP/1.1 GET (the API is plain HTTP on loopback).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect API");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: good enough for our JSON/text checks to search within.
    (status, body)
}
