//! `outflow demo` (default): the whole distributed system on loopback, in
//! one process. Dev certificates are made on the fly; three aggregator
//! (Raft) nodes, two collectors and one mTLS agent shipper per simulated
//! host run here over real gRPC; alerts print live as the collectors raise
//! them; the admin API answers on 127.0.0.1:7070.
//!
//! Pacing. The simulated fleet is historic data replayed fast, and every
//! host has its own agent stream, so hosts would drift apart in event time.
//! The collectors' engines close windows as the newest event time they see
//! advances, so the fleet is shipped in steps of `--step-secs` of event time:
//! a step's batches are spooled for every host, then the demo waits until
//! every agent's spool is acknowledged (durable at its collector) before the
//! next step. Hosts are then never more than one step apart, and the
//! collectors' allowed lateness is raised to cover a step. At the end every
//! agent sends a `host` record past the last window so the final windows
//! close without waiting for the wall clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use outflow_agent::ship::{Shipper, ShipperConfig};
use outflow_aggregator::config::AggregatorConfig;
use outflow_aggregator::server::{start_aggregator, RunningAggregator};
use outflow_collector::{CollectorConfig, RunningCollector};
use outflow_core::config::EngineConfig;
use outflow_core::telemetry::{parse_line, Event, HostEvent};
use outflow_core::{Alert, Timestamp};
use outflow_sim::eval::{evaluate, render};
use outflow_sim::{simulate, SimOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Options of the distributed demo (besides the fleet and engine options
/// shared with `--embedded`).
#[derive(Args, Debug, Clone)]
pub struct ClusterFlags {
    /// Every port is this plus a fixed offset: admin APIs +70..+72
    /// (7070-7072), Raft/gRPC +101..+103, collector ingest +201/+202,
    /// collector HTTP +271/+272.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Event time shipped per step, seconds (hosts stay within one step of
    /// each other; the collectors' allowed lateness covers it).
    #[arg(long, default_value_t = 1800)]
    pub step_secs: u64,
    /// Shortest wall time of one step, milliseconds (slows the demo down to
    /// watch it; 0: as fast as the cluster acknowledges).
    #[arg(long, default_value_t = 0)]
    pub step_ms: u64,
    /// Stop by itself once the fleet is shipped, every event is scored and
    /// no new alert arrived for `--settle-secs` (otherwise: run until Ctrl-C).
    #[arg(long)]
    pub exit_when_done: bool,
    /// Quiet seconds after which the alerts count as settled.
    #[arg(long, default_value_t = 4)]
    pub settle_secs: u64,
    /// OTLP/gRPC endpoint for alerts (default: `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Keep the cluster's files (certificates, Raft logs, collector stores,
    /// spools, alert files) in this directory instead of a temporary one that
    /// is removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The fleet to simulate, as resolved by `demo::run`.
pub struct Fleet {
    pub opts: SimOptions,
    pub json: bool,
    /// Replicated through the aggregators' admin API when not the default.
    pub policy: outflow_core::Policy,
}

struct Ports {
    api: [u16; 3],
    raft: [u16; 3],
    ingest: [u16; 2],
    collector_api: [u16; 2],
}

impl Ports {
    fn new(base: u16) -> anyhow::Result<Ports> {
        let p = |off: u16| {
            base.checked_add(off).with_context(|| {
                format!("--base-port {base} is too high: ports up to base+272 are needed")
            })
        };
        Ok(Ports {
            api: [p(70)?, p(71)?, p(72)?],
            raft: [p(101)?, p(102)?, p(103)?],
            ingest: [p(201)?, p(202)?],
            collector_api: [p(271)?, p(272)?],
        })
    }

    /// Fails naming the first port that is already in use.
    fn check_free(&self) -> anyhow::Result<()> {
        let mut all: Vec<(u16, String)> = Vec::new();
        for i in 0..3 {
            all.push((self.api[i], format!("admin API of aggregator {}", i + 1)));
            all.push((self.raft[i], format!("Raft/gRPC of aggregator {}", i + 1)));
        }
        for i in 0..2 {
            all.push((self.ingest[i], format!("ingest of collector c{}", i + 1)));
            all.push((
                self.collector_api[i],
                format!("HTTP API of collector c{}", i + 1),
            ));
        }
        for (port, what) in all {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                anyhow::bail!(
                    "port 127.0.0.1:{port} ({what}) is not available: {e}; \
                     stop whatever uses it or move every port with --base-port"
                );
            }
        }
        Ok(())
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Midnight UTC `days` days ago: the simulated fleet ends today, so its
/// alerts are recent for the collectors' retention and the wall clock.
pub fn recent_start(days: u32) -> Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Timestamp::from_secs(now - now.rem_euclid(86_400) - i64::from(days) * 86_400)
}

pub fn run(fleet: Fleet, engine: EngineConfig, flags: ClusterFlags) -> anyhow::Result<ExitCode> {
    // The components log through tracing: warnings by default, RUST_LOG to
    // see more (e.g. RUST_LOG=info).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(fleet, engine, flags))
}

/// Everything started, so it can be stopped in order whatever happens.
#[derive(Default)]
struct Cluster {
    aggregators: Vec<RunningAggregator>,
    collectors: Vec<RunningCollector>,
    shippers: Arc<Vec<Shipper>>,
}

impl Cluster {
    async fn stop(self) {
        // Send and wait tasks of an interrupted step may still hold the
        // agents for a moment.
        let mut shippers = self.shippers;
        for _ in 0..50 {
            match Arc::try_unwrap(shippers) {
                Ok(all) => {
                    for s in all {
                        s.shutdown().await;
                    }
                    tracing::info!("agents stopped");
                    break;
                }
                Err(still) => {
                    shippers = still;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        for c in self.collectors {
            c.shutdown().await;
        }
        tracing::info!("collectors stopped");
        // Together: each node's server waits for its peers' connections,
        // which close only when those peers stop too.
        let mut stops = tokio::task::JoinSet::new();
        for a in self.aggregators {
            stops.spawn(a.stop());
        }
        while stops.join_next().await.is_some() {}
        tracing::info!("aggregators stopped");
    }
}

async fn run_async(
    fleet: Fleet,
    engine: EngineConfig,
    flags: ClusterFlags,
) -> anyhow::Result<ExitCode> {
    outflow_pki::install_ring_provider();
    let ports = Ports::new(flags.base_port)?;
    ports.check_free()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nCtrl-C: stopping the fleet, the collectors and the aggregators… \
                 (Ctrl-C again to quit at once)"
            );
            let _ = stop_tx.send(true);
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second Ctrl-C: quitting without a clean shutdown");
            std::process::exit(130);
        }
    });

    let tmp;
    let root: PathBuf = match &flags.dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("creating the demo directory {}", d.display()))?;
            let used = std::fs::read_dir(d)
                .with_context(|| format!("reading the demo directory {}", d.display()))?
                .next()
                .is_some();
            if used {
                anyhow::bail!(
                    "--dir {} is not empty: the demo starts from nothing (a new CA, empty \
                     Raft logs, stores and spools); give a new or empty directory",
                    d.display()
                );
            }
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("outflow-demo-")
                .tempdir()
                .context("creating a temporary directory for the demo")?;
            tmp.path().to_path_buf()
        }
    };

    // The fleet's telemetry, simulated up front (it also names the hosts).
    let opts = fleet.opts.clone();
    let (events, sim) = tokio::task::spawn_blocking(move || simulate_events(&opts))
        .await
        .context("simulator task")??;
    let hosts: BTreeSet<String> = events.iter().map(|e| e.host().to_string()).collect();
    eprintln!(
        "outflow demo: {} hosts over {} days (seed {}), {} events, {} injected exfiltration incidents;\n\
         the first day is the learning period.",
        hosts.len(),
        fleet.opts.days,
        fleet.opts.seed,
        events.len(),
        sim.incidents.len()
    );

    check_open_files(hosts.len())?;
    let certs = root.join("certs");
    let host_list: Vec<String> = hosts.iter().cloned().collect();
    let certs2 = certs.clone();
    tokio::task::spawn_blocking(move || {
        outflow_pki::generate_dev(
            &certs2,
            &outflow_pki::DevOptions {
                hosts: host_list,
                validity_days: 7,
                reuse_ca: false,
                ..Default::default()
            },
        )
    })
    .await
    .context("certificate task")?
    .with_context(|| format!("making dev certificates in {}", certs.display()))?;
    eprintln!(
        "dev CA and {} certificates made in {}",
        hosts.len() + 3,
        certs.display()
    );

    let interrupted = stop_rx.clone();
    let mut cluster = Cluster::default();
    let result = drive(
        &mut cluster,
        &fleet,
        engine,
        &flags,
        &ports,
        &root,
        &certs,
        events,
        stop_rx,
    )
    .await;
    let alert_files: Vec<PathBuf> = (1..=2)
        .map(|i| root.join(format!("alerts-c{i}.jsonl")))
        .collect();
    eprintln!("stopping agents, collectors and aggregators…");
    let t = Instant::now();
    cluster.stop().await;
    eprintln!("stopped in {:.1} s", t.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(o) => o,
        Err(e) if *interrupted.borrow() => {
            eprintln!("interrupted while starting ({e:#}); everything is stopped");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };

    // Whatever the collectors raised, including the last alerts.
    let mut printer = outcome.printer;
    printer.poll(&alert_files);
    let alerts = printer.alerts.lock().map(|a| a.clone()).unwrap_or_default();
    eprintln!(
        "\n{} events shipped by {} agents in {:.1} s; {} alerts.",
        outcome.shipped,
        hosts.len(),
        outcome.elapsed.as_secs_f64(),
        alerts.len()
    );
    eprintln!("Against the simulator's truth:");
    eprint!("{}", render(&evaluate(&sim.incidents, &alerts)));
    if flags.dir.is_some() {
        eprintln!("files kept in {}", root.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Each agent holds a spool (sled: a few files) and a connection, whose
/// other end is in this process too: fail early with a clear message rather
/// than with "too many open files" midway. Measured: ~3 per host.
fn check_open_files(hosts: usize) -> anyhow::Result<()> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    let need = hosts * 5 + 256;
    match soft {
        Some(limit) if limit < need => anyhow::bail!(
            "{hosts} simulated agents need about {need} open files (a spool and a \
             connection each) but this process may open {limit}: raise the limit \
             (`ulimit -n {need}`) or simulate fewer --hosts"
        ),
        _ => Ok(()),
    }
}

fn simulate_events(opts: &SimOptions) -> anyhow::Result<(Vec<Event>, outflow_sim::SimSummary)> {
    let mut buf = Vec::new();
    let sim = simulate(opts, &mut buf, |_, _| {}).context("simulating the fleet")?;
    let mut events = Vec::with_capacity(sim.events as usize);
    for (i, line) in buf.lines().enumerate() {
        let line = line.context("reading the simulated telemetry")?;
        match parse_line(&line) {
            Ok(e) => events.push(e),
            Err(e) => tracing::warn!(line = i + 1, "simulated event skipped: {e}"),
        }
    }
    Ok((events, sim))
}

struct Outcome {
    printer: AlertPrinter,
    shipped: u64,
    elapsed: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    cluster: &mut Cluster,
    fleet: &Fleet,
    mut engine: EngineConfig,
    flags: &ClusterFlags,
    ports: &Ports,
    root: &Path,
    certs: &Path,
    events: Vec<Event>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    // Aggregators: a three-node Raft group.
    let peers: Vec<String> = (0..3)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports.raft[i]))
        .collect();
    for i in 0..3 {
        let cfg = AggregatorConfig {
            id: i as u64 + 1,
            listen: format!("127.0.0.1:{}", ports.raft[i]),
            api: format!("127.0.0.1:{}", ports.api[i]),
            peers: peers.clone(),
            data: root.join(format!("aggregator-{}", i + 1)),
            certs: Some(certs.to_path_buf()),
            horizon_days: engine.horizon_days,
            collector_timeout_ms: 15_000,
            ..AggregatorConfig::default()
        };
        let a = start_aggregator(cfg)
            .await
            .with_context(|| format!("starting aggregator {}", i + 1))?;
        cluster.aggregators.push(a);
    }
    let api = addr(ports.api[0]);
    let leader = wait_leader(api, Duration::from_secs(20), &mut stop).await?;
    eprintln!(
        "aggregators: 3 Raft nodes on 127.0.0.1:{}-{}, leader {} (term {})",
        ports.raft[0], ports.raft[2], leader.0, leader.1
    );
    if fleet.policy != outflow_core::Policy::default() {
        // Policy is replicated state: set it the way an operator would.
        let body = serde_json::to_string(&fleet.policy).context("encoding the policy")?;
        let v = http(api, "PUT", "/api/v1/policy?comment=outflow-demo", &body)
            .await
            .context("setting the policy through the admin API")?;
        eprintln!("policy replicated (Raft index {})", v["index"]);
    }

    // Collectors: windows must stay open for a whole step of event time.
    engine.allowed_lateness_secs = engine
        .allowed_lateness_secs
        .max(flags.step_secs + engine.window_secs);
    let aggregators: Vec<String> = ports
        .raft
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    for i in 0..2 {
        let cfg = CollectorConfig {
            id: format!("c{}", i + 1),
            listen: addr(ports.ingest[i]),
            api: addr(ports.collector_api[i]),
            aggregators: aggregators.clone(),
            data: root.join(format!("collector-c{}", i + 1)),
            certs: certs.to_path_buf(),
            otlp_endpoint: flags.otlp_endpoint.clone(),
            alerts_out: Some(root.join(format!("alerts-c{}.jsonl", i + 1))),
            partials_every_secs: 2,
            heartbeat_every_secs: 1,
            tick_ms: 250,
            engine: engine.clone(),
            ..CollectorConfig::default()
        };
        let c = outflow_collector::start(cfg, None)
            .await
            .with_context(|| format!("starting collector c{}", i + 1))?;
        cluster.collectors.push(c);
    }
    // Hosts are sharded over the collectors by the aggregators' shard map:
    // wait until both collectors are in it so no host moves mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = cluster.collectors.iter().all(|c| {
            c.shard_map
                .read()
                .map(|m| m.members.len() == 2)
                .unwrap_or(false)
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the collectors did not both join the shard map within 30 s");
        }
        if stopped(&mut stop, Duration::from_millis(100)).await {
            return Err(anyhow::anyhow!("interrupted while starting"));
        }
    }
    eprintln!(
        "collectors: c1 on 127.0.0.1:{}, c2 on 127.0.0.1:{} (mTLS ingest), joined the shard map",
        ports.ingest[0], ports.ingest[1]
    );
    eprintln!(
        "admin API: http://127.0.0.1:{}  (try: outflow ctl --api http://127.0.0.1:{} cluster)",
        ports.api[0], ports.api[0]
    );
    let otlp = flags.otlp_endpoint.clone().or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    if let Some(ep) = &otlp {
        eprintln!("alerts are also exported over OTLP/gRPC to {ep}");
    }

    // One agent shipper per host, with the host's own certificate, pointed at
    // the collector that owns the host (a redirect would move it anyway).
    let map = cluster.collectors[0]
        .shard_map
        .read()
        .map(|m| m.clone())
        .map_err(|_| anyhow::anyhow!("shard map lock poisoned"))?;
    let hosts: BTreeSet<String> = events.iter().map(|e| e.host().to_string()).collect();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut shippers = Vec::with_capacity(hosts.len());
    for host in &hosts {
        let endpoint = map
            .owner(host)
            .map(|m| m.endpoint.clone())
            .unwrap_or_else(|| format!("https://127.0.0.1:{}", ports.ingest[0]));
        let mut cfg = ShipperConfig::new(&endpoint, certs, root.join("spool").join(host));
        cfg.host_id = Some(host.clone());
        cfg.backoff_initial = Duration::from_millis(100);
        cfg.backoff_max = Duration::from_secs(2);
        let s = Shipper::start(cfg).with_context(|| format!("starting the agent of {host}"))?;
        index.insert(host.clone(), shippers.len());
        shippers.push(s);
    }
    cluster.shippers = Arc::new(shippers);
    eprintln!(
        "agents: {} simulated hosts, one mTLS stream each; alerts print as they fire:\n",
        hosts.len()
    );

    let alert_files: Vec<PathBuf> = (1..=2)
        .map(|i| root.join(format!("alerts-c{i}.jsonl")))
        .collect();
    let printer = AlertPrinter::new(fleet.json);
    let printing = {
        let mut p = printer.clone();
        let files = alert_files.clone();
        tokio::spawn(async move {
            loop {
                p.poll(&files);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let mut shipped = 0u64;
    let r = ship_fleet(
        &cluster.shippers,
        &index,
        events,
        &engine,
        flags,
        &mut stop,
        &mut shipped,
    )
    .await;
    match r {
        Ok(true) => {}
        Ok(false) => {
            printing.abort();
            return Ok(Outcome {
                printer,
                shipped,
                elapsed: started.elapsed(),
            });
        }
        Err(e) => {
            printing.abort();
            return Err(e);
        }
    }
    let elapsed = started.elapsed();

    // Wait for the engines to score everything and the alerts to settle.
    let mut last = (u64::MAX, Instant::now());
    let mut announced = false;
    let mut settled_at: Option<Instant> = None;
    loop {
        let processed: u64 = cluster
            .collectors
            .iter()
            .map(|c| c.metrics.engine_events.load(Ordering::Relaxed))
            .sum();
        let raised: u64 = cluster
            .collectors
            .iter()
            .map(|c| c.metrics.alerts.load(Ordering::Relaxed))
            .sum();
        let written: u64 = cluster
            .collectors
            .iter()
            .map(|c| c.metrics.alerts_delivered_file.load(Ordering::Relaxed))
            .sum();
        if raised != last.0 {
            last = (raised, Instant::now());
        }
        let exported: u64 = cluster
            .collectors
            .iter()
            .map(|c| c.metrics.alerts_delivered_otlp.load(Ordering::Relaxed))
            .sum();
        let replicated: u64 = cluster
            .collectors
            .iter()
            .map(|c| c.metrics.alerts_delivered_fleet.load(Ordering::Relaxed))
            .sum();
        let settled = processed >= shipped
            && written == raised
            && replicated == raised
            && last.1.elapsed() >= Duration::from_secs(flags.settle_secs);
        if !settled {
            settled_at = None;
        } else if settled_at.is_none() {
            settled_at = Some(Instant::now());
        }
        // With OTLP, exit once the SOC has every alert too, or give up on an
        // unreachable endpoint after a while (the outboxes keep the rest).
        let exported_all = otlp.is_none() || exported >= raised;
        let otlp_waited = settled_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(30));
        if settled && flags.exit_when_done && !exported_all && otlp_waited {
            eprintln!(
                "warning: {} of {raised} alerts not delivered over OTLP within 30 s \
                 (is the endpoint up?); exiting anyway",
                raised - exported
            );
        }
        if settled && flags.exit_when_done && (exported_all || otlp_waited) {
            if otlp.is_some() {
                eprintln!("\n{exported} of {raised} alerts exported over OTLP");
            }
            if let Ok(c) = get_json(api, "/api/v1/cluster").await {
                eprintln!(
                    "\ncluster: leader {}, term {}, commit index {}, shard map version {}",
                    c["leader"], c["term"], c["commit_index"], c["shard_map_version"]
                );
            }
            // Every node answers from the replicated state.
            let mut held = Vec::new();
            for (i, port) in ports.api.iter().enumerate() {
                let n = match get_json(addr(*port), "/api/v1/alerts?limit=10000").await {
                    Ok(v) => v["alerts"]
                        .as_array()
                        .map(|a| a.len().to_string())
                        .unwrap_or_else(|| "?".into()),
                    Err(e) => format!("error ({e:#})"),
                };
                held.push(format!("node {}: {n}", i + 1));
            }
            eprintln!("alerts held by the aggregators: {}", held.join(", "));
            break;
        }
        if settled && !announced {
            eprintln!(
                "\nThe whole fleet is shipped and scored ({raised} alerts). The cluster keeps \
                 running: query it with `outflow ctl --api http://{api} cluster` or `… alerts`. Ctrl-C to stop."
            );
            announced = true;
        }
        if stopped(&mut stop, Duration::from_millis(250)).await {
            break;
        }
    }
    printing.abort();
    Ok(Outcome {
        printer,
        shipped,
        elapsed,
    })
}

/// Ships the fleet step by step, counting acknowledged events in `shipped`.
/// `Ok(false)`: interrupted.
#[allow(clippy::too_many_arguments)]
async fn ship_fleet(
    shippers: &Arc<Vec<Shipper>>,
    index: &HashMap<String, usize>,
    events: Vec<Event>,
    engine: &EngineConfig,
    flags: &ClusterFlags,
    stop: &mut watch::Receiver<bool>,
    shipped: &mut u64,
) -> anyhow::Result<bool> {
    let Some(first) = events.first().map(Event::ts) else {
        anyhow::bail!("the simulator produced no events");
    };
    let last = events.iter().map(Event::ts).max().unwrap_or(first);
    let step_us = (flags.step_secs.max(1) as i64) * 1_000_000;
    let mut it = events.into_iter().peekable();
    let mut step_end = first.saturating_add_us(step_us);
    let mut next_report = first.saturating_add_us(6 * 3600 * 1_000_000);
    let hosts: Vec<String> = index.keys().cloned().collect();
    let mut closing = false;
    loop {
        let t0 = Instant::now();
        let mut by_host: BTreeMap<usize, Vec<Event>> = BTreeMap::new();
        if !closing {
            while let Some(e) = it.next_if(|e| e.ts() < step_end) {
                match index.get(e.host()) {
                    Some(&i) => by_host.entry(i).or_default().push(e),
                    None => tracing::warn!(host = e.host(), "no agent for this host"),
                }
            }
        } else {
            // Past the last window: every agent reports its host once more,
            // so the collectors close their last windows now.
            let ts = last.saturating_add_us(
                ((engine.allowed_lateness_secs + 2 * engine.window_secs) as i64) * 1_000_000,
            );
            for h in &hosts {
                by_host.insert(
                    index[h],
                    vec![Event::Host(HostEvent {
                        ts,
                        host: h.clone(),
                        os: None,
                        labels: Default::default(),
                    })],
                );
            }
        }
        let n: u64 = by_host.values().map(|v| v.len() as u64).sum();
        let mut sends = tokio::task::JoinSet::new();
        let touched: Vec<usize> = by_host.keys().copied().collect();
        for (i, evs) in by_host {
            let shippers = shippers.clone();
            sends.spawn_blocking(move || shippers[i].send(evs).map_err(|e| (i, e)));
        }
        while let Some(r) = sends.join_next().await {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((i, e))) => {
                    tracing::warn!(host = %shippers[i].identity().name, "batch not spooled: {e}")
                }
                Err(e) => anyhow::bail!("an agent send task failed: {e}"),
            }
        }
        // Wait until every touched agent's spool is acknowledged.
        let mut waits = tokio::task::JoinSet::new();
        for i in touched {
            let shippers = shippers.clone();
            waits
                .spawn(async move { (i, shippers[i].wait_drained(Duration::from_secs(60)).await) });
        }
        loop {
            tokio::select! {
                r = waits.join_next() => match r {
                    None => break,
                    Some(Ok((_, true))) => {}
                    Some(Ok((i, false))) => tracing::warn!(
                        host = %shippers[i].identity().name,
                        "agent spool not acknowledged within 60 s; going on (it keeps resending)"
                    ),
                    Some(Err(e)) => anyhow::bail!("an agent wait task failed: {e}"),
                },
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return Ok(false);
                    }
                }
            }
        }
        *shipped += n;
        if closing {
            return Ok(true);
        }
        if step_end >= next_report || it.peek().is_none() {
            eprintln!(
                "  … event time {}: {} events shipped",
                step_end.to_rfc3339(),
                *shipped
            );
            next_report = next_report.saturating_add_us(6 * 3600 * 1_000_000);
        }
        let pause = Duration::from_millis(flags.step_ms).saturating_sub(t0.elapsed());
        if stopped(stop, pause).await {
            return Ok(false);
        }
        if it.peek().is_none() {
            closing = true;
        }
        step_end = step_end.saturating_add_us(step_us);
    }
}

/// Sleeps for `d`; true when Ctrl-C was pressed.
async fn stopped(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return *stop.borrow(),
            r = stop.changed() => {
                if r.is_err() {
                    // The signal task is gone: only the sleep is left.
                    (&mut sleep).await;
                    return *stop.borrow();
                }
                if *stop.borrow() {
                    return true;
                }
            }
        }
    }
}

/// Polls `/api/v1/cluster` until a leader is known: (leader, term).
async fn wait_leader(
    api: SocketAddr,
    within: Duration,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + within;
    let mut last_err = String::from("no answer yet");
    while Instant::now() < deadline {
        match get_json(api, "/api/v1/cluster").await {
            Ok(v) => {
                let leader = v["leader"].as_u64().unwrap_or(0);
                if leader != 0 {
                    return Ok((leader, v["term"].as_u64().unwrap_or(0)));
                }
                last_err = "no leader elected yet".into();
            }
            Err(e) => last_err = format!("{e:#}"),
        }
        if stopped(stop, Duration::from_millis(200)).await {
            anyhow::bail!("interrupted while the aggregators elected a leader");
        }
    }
    anyhow::bail!(
        "the aggregators elected no leader within {} s (admin API http://{api}: {last_err})",
        within.as_secs()
    )
}

/// A minimal HTTP/1.1 GET on loopback, returning the JSON body of a 200.
async fn get_json(api: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    http(api, "GET", path, "").await
}

/// One HTTP/1.1 request on loopback (the admin API needs no credentials
/// there); the JSON body of a 200.
async fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(api)
            .await
            .with_context(|| format!("connecting to {api}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("{method} {path}: no HTTP header in the answer"))?;
        if !head.starts_with("HTTP/1.1 200") {
            anyhow::bail!(
                "{method} {path}: {} {}",
                head.lines().next().unwrap_or("no status line"),
                body.trim()
            );
        }
        serde_json::from_str(body.trim()).with_context(|| format!("{method} {path}: not JSON"))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .with_context(|| format!("{method} http://{api}{path} timed out"))?
}

/// Tails the collectors' alert files and prints each new alert once.
#[derive(Clone)]
struct AlertPrinter {
    json: bool,
    offsets: Arc<Mutex<HashMap<PathBuf, u64>>>,
    seen: Arc<Mutex<BTreeSet<String>>>,
    alerts: Arc<Mutex<Vec<Alert>>>,
}

impl AlertPrinter {
    fn new(json: bool) -> Self {
        AlertPrinter {
            json,
            offsets: Arc::default(),
            seen: Arc::default(),
            alerts: Arc::default(),
        }
    }

    fn poll(&mut self, files: &[PathBuf]) {
        use std::io::{Read, Seek, SeekFrom};
        for f in files {
            let Ok(mut file) = std::fs::File::open(f) else {
                continue;
            };
            let mut offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
            let off = offsets.entry(f.clone()).or_insert(0);
            if file.seek(SeekFrom::Start(*off)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if file.read_to_end(&mut buf).is_err() {
                continue;
            }
            // Only whole lines; a partly written one is read next time.
            let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            *off += end as u64 + 1;
            for (n, line) in buf[..end].split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<Alert>(line) {
                    Ok(a) => self.print(a),
                    Err(e) => {
                        tracing::warn!(file = %f.display(), line = n + 1, "alert skipped: {e}")
                    }
                }
            }
        }
    }

    fn print(&self, a: Alert) {
        let new = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.id.clone());
        if !new {
            return;
        }
        let line = if self.json {
            a.to_json()
        } else {
            format!(
                "[{:<8}] {} {} (score {:.1}, id {})",
                a.severity.as_str(),
                a.window_end,
                a.summary(),
                a.score,
                a.id.get(..12).unwrap_or(&a.id)
            )
        };
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
        self.alerts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a);
    }
}
