//! Collector benchmarks (run by `bench/collector/run.sh`, not in CI).
//!
//! * `serve --mode collector|noop`: a real collector, or a no-op `Ingest`
//!   sink (decodes each batch and acknowledges it at once) over the same
//!   mutual TLS, as a separate process so CPU can be split.
//! * `throughput`: N streams of realistic batches as fast as acknowledged.
//! * `fleet`: many agents at 1 Hz in wall-clock event time, some uploading
//!   bursts; measures from a window's close (window end + lateness) to its
//!   alert arriving at an OTLP receiver in this process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use outflow_collector::CollectorConfig;
use outflow_pki::CertDir;
use outflow_proto::pb;
use outflow_proto::pb::ingest_client::IngestClient;
use tokio_stream::wrappers::ReceiverStream;

/// The allocator of the `outflow` binary, so the collector is measured as it
/// runs in production (and the no-op sink with the same one).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Certs {
        #[arg(long)]
        out: PathBuf,
    },
    Serve {
        #[arg(long)]
        mode: String,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7301")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:7371")]
        api: SocketAddr,
        #[arg(long)]
        otlp: Option<String>,
        #[arg(long, default_value_t = 30)]
        lateness: u64,
        /// Batches per stream in flight (the collector's `stream_queue`).
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    Throughput {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value_t = 4)]
        streams: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long)]
        server_pid: u32,
        /// Batches per stream in flight.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    Fleet {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value_t = 5000)]
        agents: usize,
        #[arg(long, default_value_t = 240)]
        seconds: u64,
        /// Hosts uploading a burst in each window.
        #[arg(long, default_value_t = 10)]
        bursts: usize,
        #[arg(long, default_value = "127.0.0.1:7399")]
        otlp_listen: SocketAddr,
        #[arg(long, default_value_t = 30)]
        lateness: u64,
        #[arg(long)]
        server_pid: u32,
    },
}

fn cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_mib(pid: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

struct Noop;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for Noop {
    type StreamStream = ReceiverStream<Result<pb::IngestReply, tonic::Status>>;
    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::Batch>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let _peer = outflow_pki::peer_identity(&request)?;
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(Some(b)) = inbound.message().await {
                let ack = pb::IngestReply {
                    kind: Some(pb::ingest_reply::Kind::Ack(pb::Ack {
                        host_id: b.host_id,
                        durable_through: b.sequence,
                        duplicates: 0,
                    })),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// One host's synthetic telemetry: a few processes, flows to a spread of
/// destinations, event time advancing one second per batch.
struct HostGen {
    host: String,
    seq: u64,
    ts: i64,
}

const APPS: [&str; 5] = [
    "winword.exe",
    "chrome.exe",
    "teams.exe",
    "outlook.exe",
    "svchost.exe",
];

fn net(ts: i64, pid: u32, i: usize, out: u64, inb: u64, sni: &str) -> pb::TelemetryEvent {
    pb::TelemetryEvent {
        kind: Some(pb::telemetry_event::Kind::Net(pb::NetDelta {
            ts_us: ts,
            pid,
            transport: 0,
            dst_ip: vec![52, 96, (i % 200) as u8, (i % 13) as u8 + 1],
            dst_port: 443,
            bytes_out: out,
            bytes_in: inb,
            sni: Some(sni.to_string()),
            domain: None,
            pid_unknown: false,
        })),
    }
}

impl HostGen {
    fn batch(&mut self, n: usize, burst: bool) -> pb::Batch {
        self.seq += 1;
        let mut events = Vec::with_capacity(n + APPS.len());
        if self.seq == 1 {
            for (i, app) in APPS.iter().enumerate() {
                events.push(pb::TelemetryEvent {
                    kind: Some(pb::telemetry_event::Kind::ProcessStart(pb::ProcessStart {
                        ts_us: self.ts - 1_000_000,
                        pid: 1000 + i as u32,
                        name: app.to_string(),
                        ppid: Some(1),
                        exe: Some(format!("C:\\Program Files\\{app}")),
                        cmdline: None,
                        user: Some("bench".into()),
                        parent_name: Some("explorer.exe".into()),
                    })),
                });
            }
        }
        for i in 0..n {
            let pid = 1000 + (i % APPS.len()) as u32;
            events.push(net(
                self.ts + i as i64,
                pid,
                i + self.seq as usize,
                1_500 + (i as u64 * 37) % 4_000,
                6_000 + (i as u64 * 91) % 20_000,
                "outlook.office365.com",
            ));
        }
        if burst {
            // winword.exe uploads 200 MiB to Dropbox this second.
            events.push(net(
                self.ts + n as i64,
                1000,
                7,
                200 << 20,
                300_000,
                "content.dropboxapi.com",
            ));
        }
        let b = pb::Batch {
            host_id: self.host.clone(),
            sequence: self.seq,
            sealed_unix_ms: 0,
            events,
            dropped_events: 0,
            agent_version: "bench".into(),
        };
        self.ts += 1_000_000;
        b
    }
}

async fn client(endpoint: &str, certs: &PathBuf) -> IngestClient<tonic::transport::Channel> {
    outflow_collector::shipper::connect(
        endpoint,
        CertDir::new(certs).client_tls("importer").unwrap(),
    )
    .await
    .expect("connect")
}

#[derive(Clone, Default)]
struct Receiver {
    arrivals: Arc<Mutex<Vec<(String, String, i64)>>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let now = now_us();
        let mut a = self.arrivals.lock().unwrap();
        for rl in request.into_inner().resource_logs {
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    let get = |k: &str| {
                        r.attributes
                            .iter()
                            .find(|x| x.key == k)
                            .and_then(|x| x.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(Value::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default()
                    };
                    a.push((get("host.name"), get("outflow.window.end"), now));
                }
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Certs { out } => {
                outflow_pki::generate_dev(&out, &outflow_pki::DevOptions::default())?;
            }
            Cmd::Serve {
                mode,
                certs,
                data,
                listen,
                api,
                otlp,
                lateness,
                window,
            } => {
                if mode == "noop" {
                    // The collector's own TLS acceptor: the same handshake,
                    // verification and record layer on both sides.
                    let tls = outflow_collector::tls::ingest_server_config(
                        &CertDir::new(&certs),
                        "server",
                    )?;
                    let listener = tokio::net::TcpListener::bind(listen).await?;
                    let metrics = Arc::new(outflow_collector::Metrics::default());
                    println!("ready noop {listen}");
                    tonic::transport::Server::builder()
                        .http2_keepalive_interval(Some(Duration::from_secs(30)))
                        .add_service(pb::ingest_server::IngestServer::new(Noop))
                        .serve_with_incoming(outflow_collector::tls::incoming(
                            listener, tls, metrics,
                        ))
                        .await?;
                } else {
                    let mut cfg = CollectorConfig {
                        id: "bench".into(),
                        listen,
                        api,
                        data,
                        certs,
                        otlp_endpoint: otlp,
                        max_streams: 20_000,
                        stream_queue: window,
                        ..CollectorConfig::default()
                    };
                    cfg.engine.allowed_lateness_secs = lateness;
                    cfg.engine.learning_secs = 0;
                    cfg.engine.min_peers = 5;
                    // Latency is about the pipeline, not detection: every
                    // judged window (only the bursts reach 1 MiB) alerts.
                    cfg.engine.alert_score = 0.0;
                    let c = outflow_collector::start(cfg, None).await?;
                    println!("ready collector {}", c.ingest_addr);
                    std::future::pending::<()>().await;
                }
            }
            Cmd::Throughput {
                endpoint,
                certs,
                streams,
                batch,
                seconds,
                server_pid,
                window,
            } => {
                let acked = Arc::new(AtomicU64::new(0));
                let samples = Arc::new(AtomicU64::new(0));
                let sp = server_pid.to_string();
                let (c0, s0) = (cpu_secs("self"), cpu_secs(&sp));
                let start = Instant::now();
                let deadline = start + Duration::from_secs(seconds);
                let base = now_us() - 86_400_000_000;
                let mut tasks = Vec::new();
                for s in 0..streams {
                    let mut cl = client(&endpoint, &certs).await;
                    let acked = acked.clone();
                    let samples = samples.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut hosts: Vec<HostGen> = (0..20)
                            .map(|h| HostGen {
                                host: format!("bench-{s}-{h}"),
                                seq: 0,
                                ts: base,
                            })
                            .collect();
                        let (tx, rx) = tokio::sync::mpsc::channel(window);
                        let sizes: Arc<Mutex<HashMap<(String, u64), usize>>> = Default::default();
                        let sz = sizes.clone();
                        tokio::spawn(async move {
                            let mut k = 0usize;
                            while Instant::now() < deadline {
                                let h = &mut hosts[k % 20];
                                let b = h.batch(batch, false);
                                sz.lock().unwrap().insert((b.host_id.clone(), b.sequence), b.events.len());
                                if tx.send(b).await.is_err() {
                                    break;
                                }
                                k += 1;
                            }
                        });
                        let mut replies = cl.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
                        while let Ok(Some(r)) = replies.message().await {
                            if let Some(pb::ingest_reply::Kind::Ack(a)) = r.kind {
                                acked.fetch_add(1, Ordering::Relaxed);
                                let n = sizes
                                    .lock()
                                    .unwrap()
                                    .remove(&(a.host_id, a.durable_through))
                                    .unwrap_or(0);
                                samples.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
                let el = start.elapsed().as_secs_f64();
                let (c1, s1) = (cpu_secs("self"), cpu_secs(&sp));
                let n = samples.load(Ordering::Relaxed) as f64;
                println!(
                    "{{\"samples_per_s\": {:.0}, \"batches_per_s\": {:.0}, \"seconds\": {:.1}, \"load_cpu_s\": {:.2}, \"server_cpu_s\": {:.2}, \"server_cores\": {:.2}, \"samples_per_server_core_s\": {:.0}, \"server_rss_mib\": {:.0}}}",
                    n / el,
                    acked.load(Ordering::Relaxed) as f64 / el,
                    el,
                    c1 - c0,
                    s1 - s0,
                    (s1 - s0) / el,
                    n / (s1 - s0).max(0.001),
                    rss_mib(&sp, "VmRSS")
                );
            }
            Cmd::Fleet {
                endpoint,
                certs,
                agents,
                seconds,
                bursts,
                otlp_listen,
                lateness,
                server_pid,
            } => {
                let receiver = Receiver::default();
                let listener = tokio::net::TcpListener::bind(otlp_listen).await?;
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(LogsServiceServer::new(receiver.clone()))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
                );
                let sp = server_pid.to_string();
                let window_us = 60_000_000i64;
                // Connections: one per agent, like real agents.
                let burst_hosts: Arc<Mutex<HashMap<(String, i64), ()>>> = Default::default();
                let mut tasks = Vec::new();
                let start = Instant::now();
                let deadline = start + Duration::from_secs(seconds);
                let sent = Arc::new(AtomicU64::new(0));
                let acked = Arc::new(AtomicU64::new(0));
                for a in 0..agents {
                    let mut cl = client(&endpoint, &certs).await;
                    let bh = burst_hosts.clone();
                    let sent = sent.clone();
                    let acked = acked.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut g = HostGen {
                            host: format!("agent-{a:05}"),
                            seq: 0,
                            ts: 0,
                        };
                        let (tx, rx) = tokio::sync::mpsc::channel(8);
                        let replies = cl.stream(ReceiverStream::new(rx)).await;
                        let Ok(replies) = replies else { return };
                        let mut replies = replies.into_inner();
                        tokio::spawn(async move {
                            while let Ok(Some(_)) = replies.message().await {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        // Spread agents over the second.
                        tokio::time::sleep(Duration::from_millis((a as u64 * 997) % 1000)).await;
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        while Instant::now() < deadline {
                            tick.tick().await;
                            let now = now_us();
                            g.ts = now;
                            let win = now - now.rem_euclid(window_us);
                            // Hosts `a % 100 < bursts` take turns, one burst
                            // per window, 20 s into it.
                            let second = (now - win) / 1_000_000;
                            let turn = (win / window_us) as usize;
                            let burst = second == 20
                                && a % 97 == turn % 97
                                && (a / 97) < bursts;
                            if burst {
                                bh.lock().unwrap().insert((g.host.clone(), win + window_us), ());
                            }
                            let b = g.batch(5, burst);
                            if tx.send(b).await.is_err() {
                                break;
                            }
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_secs(lateness + 15)).await;
                    }));
                }
                eprintln!("{agents} agents connected in {:.1}s", start.elapsed().as_secs_f64());
                // Sample server CPU and memory while running.
                let mut cpu_prev = cpu_secs(&sp);
                let mut t_prev = Instant::now();
                let mut cores = Vec::new();
                let mut rss_max: f64 = 0.0;
                while Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let c = cpu_secs(&sp);
                    cores.push((c - cpu_prev) / t_prev.elapsed().as_secs_f64());
                    cpu_prev = c;
                    t_prev = Instant::now();
                    rss_max = rss_max.max(rss_mib(&sp, "VmRSS"));
                }
                for t in tasks {
                    let _ = t.await;
                }
                let arrivals = receiver.arrivals.lock().unwrap().clone();
                let bursts_sent = burst_hosts.lock().unwrap().clone();
                let mut lat = Vec::new();
                let mut matched = 0;
                for (host, wend, at) in &arrivals {
                    let Ok(end) = outflow_core::Timestamp::parse_rfc3339(wend) else {
                        continue;
                    };
                    if bursts_sent.contains_key(&(host.clone(), end.as_micros())) {
                        matched += 1;
                    }
                    let close = end.as_micros() + lateness as i64 * 1_000_000;
                    lat.push((at - close) as f64 / 1e6);
                }
                let avg_cores = cores.iter().sum::<f64>() / cores.len().max(1) as f64;
                println!(
                    "{{\"agents\": {agents}, \"batches_sent\": {}, \"batches_acked\": {}, \"bursts\": {}, \"alerts\": {}, \"alerts_on_bursts\": {matched}, \"latency_after_close_p50_s\": {:.2}, \"latency_after_close_p99_s\": {:.2}, \"latency_after_close_max_s\": {:.2}, \"server_cores_avg\": {:.2}, \"server_rss_max_mib\": {:.0}, \"server_rss_hwm_mib\": {:.0}}}",
                    sent.load(Ordering::Relaxed),
                    acked.load(Ordering::Relaxed),
                    bursts_sent.len(),
                    arrivals.len(),
                    percentile(&mut lat.clone(), 50.0),
                    percentile(&mut lat.clone(), 99.0),
                    percentile(&mut lat, 100.0),
                    avg_cores,
                    rss_max,
                    rss_mib(&sp, "VmHWM"),
                );
            }
        }
        Ok::<(), anyhow::Error>(())
    })
}
