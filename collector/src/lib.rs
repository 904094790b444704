//! `outflow collector`: receives agent streams over mutual TLS, makes every
//! batch durable before acknowledging it, runs the engine on the durable
//! stream, ships per-application partial statistics to the aggregator,
//! applies the fleet baseline it gets back, and delivers alerts over OTLP
//! through a durable outbox.
//!
//! ```text
//! agents ─mTLS─▶ ingest (per-stream bounded queues)
//!                  └▶ group committer ─batch log (source of truth)─▶ engine tasks
//!                                          └▶ sled index (evidence, dedup marks)
//!                                                                  ├▶ alerts ─▶ outboxes ─▶ OTLP / file / aggregator
//!                       aggregator ◀── partials (epoch) ───────────┤
//!                       aggregator ──▶ feed (baseline, shard map, policy)
//! ```
//!
//! [`start`] runs a collector in-process (tests, `outflow demo`);
//! [`run_collector`] runs one until a shutdown future completes.

pub mod api;
pub mod batchlog;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod fleet;
pub mod ingest;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod selftrace;
pub mod shipper;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use outflow_core::engine::Engine;
use outflow_core::policy::Policy;
use outflow_core::shard::{Member, ShardMap};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

pub use cli::{run, CollectorArgs};
pub use config::CollectorConfig;
pub use fleet::{EmbeddedFleet, FleetClient, GrpcFleet};
pub use metrics::Metrics;

use crate::delivery::{Sink, SINK_FILE, SINK_FLEET, SINK_OTLP};
use crate::ingest::{IngestLimits, IngestService};
use crate::pipeline::AlertRaiser;
use crate::store::Store;

/// A collector running in this process.
pub struct RunningCollector {
    /// The bound ingest address (useful with port 0).
    pub ingest_addr: SocketAddr,
    /// The bound HTTP API address.
    pub api_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub shard_map: ingest::SharedShardMap,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    engines: Vec<JoinHandle<()>>,
    committer: JoinHandle<()>,
}

impl RunningCollector {
    /// Stops accepting, lets in-flight commits finish, stops every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        // Graceful first; long-lived agent streams may keep it open, so cap it.
        let server = self.server;
        let abort = server.abort_handle();
        match tokio::time::timeout(Duration::from_secs(3), server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "ingest server ended with an error"),
            Err(_) => abort.abort(),
            _ => {}
        }
        // With the service gone the committer drains and ends, closing the
        // engine's channel.
        let abort = self.committer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(3), self.committer)
            .await
            .is_err()
        {
            abort.abort();
        }
        for e in self.engines {
            let abort = e.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), e)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let _ = self.store.sync_log();
        let _ = self.store.flush().await;
    }
}

/// Starts a collector. With `fleet` `None`, the client is chosen from the
/// configuration: the aggregators' `Fleet` service when `aggregators` is
/// set, else an embedded store holding this collector alone.
pub async fn start(
    cfg: CollectorConfig,
    fleet: Option<Arc<dyn FleetClient>>,
) -> anyhow::Result<RunningCollector> {
    if let Err(errs) = cfg.validate() {
        anyhow::bail!("invalid collector configuration:\n  {}", errs.join("\n  "));
    }
    outflow_pki::install_ring_provider();
    let certs = outflow_pki::CertDir::new(&cfg.certs);
    let server_tls = tls::ingest_server_config(&certs, &cfg.cert_stem)
        .context("ingest TLS (mutual TLS is required)")?;

    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("cannot create data directory {}", cfg.data.display()))?;
    let store = Store::open(&cfg.data)?;
    let metrics = Arc::new(Metrics::default());

    let fleet: Arc<dyn FleetClient> = match fleet {
        Some(f) => f,
        None if cfg.aggregators.is_empty() => {
            let f = EmbeddedFleet::new(cfg.engine.horizon_days, Policy::default());
            f.set_members(vec![Member {
                collector_id: cfg.id.clone(),
                endpoint: cfg.advertised_endpoint(),
            }]);
            Arc::new(f)
        }
        None => {
            let tls = certs
                .client_tls_for(&cfg.cert_stem, &cfg.aggregator_server_name)
                .context("aggregator client TLS")?;
            Arc::new(GrpcFleet::new(&cfg.aggregators, tls)?)
        }
    };

    // Sinks and their outboxes.
    let mut sinks: Vec<Sink> = vec![Sink::Fleet(fleet.clone())];
    if let Some(ep) = cfg.resolved_otlp_endpoint() {
        let headers = cfg
            .resolved_otlp_headers()
            .map_err(|e| anyhow::anyhow!(e))?;
        let ca = if ep.starts_with("https://") {
            Some(match &cfg.otlp_ca {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("OTLP CA bundle {}", p.display()))?,
                None => certs.ca_pem()?,
            })
        } else {
            None
        };
        sinks.push(Sink::Otlp(otlp::OtlpExporter::new(
            &ep,
            &headers,
            ca,
            Duration::from_secs(cfg.otlp_timeout_secs),
        )?));
        tracing::info!(endpoint = %ep, "alerts exported over OTLP/gRPC");
    }
    if let Some(p) = &cfg.alerts_out {
        sinks.push(Sink::File(p.clone()));
    }
    let sink_names: Vec<&'static str> = sinks.iter().map(Sink::name).collect();
    debug_assert!(sink_names
        .iter()
        .all(|s| [SINK_OTLP, SINK_FILE, SINK_FLEET].contains(s)));
    let notify = Arc::new(Notify::new());
    let raiser = AlertRaiser {
        store: store.clone(),
        sinks: sink_names,
        metrics: metrics.clone(),
        notify: notify.clone(),
    };

    // Rebuild the engines from the durable log.
    let started = std::time::Instant::now();
    let shards = cfg.engine_shard_count();
    let mut engines: Vec<Engine> = (0..shards)
        .map(|_| Engine::new(cfg.engine.clone(), Policy::default()))
        .collect();
    let raiser = Arc::new(raiser);
    let in_log = {
        let store = store.clone();
        let metrics = metrics.clone();
        let raiser = raiser.clone();
        tokio::task::spawn_blocking(move || {
            let seen = pipeline::replay(&mut engines, &store, &raiser, &metrics);
            (engines, seen)
        })
    };
    let (engines, seen) = in_log.await.context("replay task")?;
    let seen = seen.context("replaying the batch log")?;
    let mut high_water = store.load_high_water()?;
    for (h, s) in seen {
        let e = high_water.entry(h).or_insert(0);
        *e = (*e).max(s);
    }
    tracing::info!(
        batches = metrics.replayed_batches.load(Ordering::Relaxed),
        events = metrics.engine_events.load(Ordering::Relaxed),
        hosts = high_water.len(),
        shards,
        ms = started.elapsed().as_millis() as u64,
        "engines rebuilt from the batch log"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Engine tasks, one per shard.
    let mut shard_handles = pipeline::EngineShards {
        batches: Vec::new(),
        control: Vec::new(),
    };
    let mut engine_tasks = Vec::new();
    for engine in engines {
        let (engine_tx, engine_rx) = mpsc::channel(cfg.engine_queue.div_ceil(shards).max(1));
        let (control_tx, control_rx) = mpsc::channel(64);
        shard_handles.batches.push(engine_tx);
        shard_handles.control.push(control_tx);
        engine_tasks.push(tokio::spawn(pipeline::run_engine(
            engine,
            engine_rx,
            control_rx,
            raiser.clone(),
            metrics.clone(),
            Duration::from_millis(cfg.tick_ms),
        )));
    }
    let control = pipeline::EngineShards {
        batches: Vec::new(),
        control: shard_handles.control.clone(),
    };

    // Group committer.
    let (commit_tx, commit_rx) = mpsc::channel(cfg.group_commit_max.max(cfg.stream_queue));
    let committer = tokio::spawn(ingest::run_committer(
        store.clone(),
        commit_rx,
        shard_handles,
        metrics.clone(),
        high_water,
        Duration::from_millis(cfg.group_commit_ms),
        cfg.group_commit_max,
    ));

    // Delivery loops.
    for sink in sinks {
        tasks.push(tokio::spawn(delivery::run_delivery(
            store.clone(),
            sink,
            cfg.id.clone(),
            notify.clone(),
            metrics.clone(),
            cfg.outbox_batch,
            Duration::from_secs(cfg.max_retry_secs),
            shutdown_rx.clone(),
        )));
    }

    // Feed: shard map for ingest, baseline and policy for the engine.
    let shard_map: ingest::SharedShardMap = Arc::new(RwLock::new(ShardMap::default()));
    {
        let fleet = fleet.clone();
        let id = cfg.id.clone();
        let map = shard_map.clone();
        let control = control.clone();
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match fleet.watch_feed(&id).await {
                    Ok(mut stream) => {
                        backoff = Duration::from_millis(200);
                        while let Some(u) = stream.next().await {
                            match u {
                                Ok(mut view) => {
                                    if let Some(m) = view.shard_map.take() {
                                        let mut cur =
                                            map.write().unwrap_or_else(|e| e.into_inner());
                                        if m.version >= cur.version {
                                            *cur = m;
                                        }
                                    }
                                    if control.feed(view).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "feed update refused");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot watch the fleet feed; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }));
    }

    // Partials up.
    {
        let fleet = fleet.clone();
        let id = cfg.id.clone();
        let control = control.clone();
        let store = store.clone();
        let metrics = metrics.clone();
        let every = Duration::from_secs(cfg.partials_every_secs);
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                let Ok(partials) = control.partials().await else {
                    return;
                };
                if partials.is_empty() {
                    continue;
                }
                let epoch = match store.next_epoch() {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot allocate a partials epoch");
                        continue;
                    }
                };
                match fleet.submit_partials(&id, epoch, partials).await {
                    Ok(()) => {
                        metrics.partial_submissions.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, epoch, "partials not submitted; next round resends them"),
                }
            }
        }));
    }

    // Heartbeats.
    {
        let fleet = fleet.clone();
        let id = cfg.id.clone();
        let endpoint = cfg.advertised_endpoint();
        let control = control.clone();
        let every = Duration::from_secs(cfg.heartbeat_every_secs);
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                let Ok(hosts) = control.hosts().await else {
                    return;
                };
                let hb = fleet::Heartbeat {
                    collector_id: id.clone(),
                    endpoint: endpoint.clone(),
                    unix_ms: ingest::now_ms(),
                    hosts,
                };
                if let Err(e) = fleet.heartbeat(hb).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        }));
    }

    // Compaction.
    {
        let store = store.clone();
        let metrics = metrics.clone();
        let retention_days = i64::from(cfg.retention_days);
        let every = Duration::from_secs(cfg.compact_every_secs);
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::time::interval(every);
            loop {
                t.tick().await;
                let now_ms = ingest::now_ms();
                let cutoff_ms = now_ms - retention_days * 86_400_000;
                let store = store.clone();
                let r = tokio::task::spawn_blocking(move || {
                    store.compact(cutoff_ms, cutoff_ms.saturating_mul(1000))
                })
                .await;
                match r {
                    Ok(Ok((b, a))) => {
                        metrics.compacted_batches.fetch_add(b, Ordering::Relaxed);
                        if b + a > 0 {
                            tracing::info!(batches = b, alerts = a, "expired data compacted");
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "compaction failed"),
                    Err(e) => tracing::error!(error = %e, "compaction task failed"),
                }
            }
        }));
    }

    // HTTP API.
    let api_listener = tokio::net::TcpListener::bind(cfg.api)
        .await
        .with_context(|| format!("cannot bind API address {}", cfg.api))?;
    let api_addr = api_listener.local_addr()?;
    {
        let app = api::router(api::ApiState {
            collector_id: cfg.id.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            evidence_auth: match (&cfg.api_token, api_addr.ip().is_loopback()) {
                (Some(t), _) => Ok(Some(t.clone())),
                (None, true) => Ok(None),
                (None, false) => Err(format!(
                    "evidence is telemetry: the API listens on {api_addr}, off loopback, \
                     so set api_token (--api-token) to serve it"
                )),
            },
        });
        let mut sd = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(api_listener, app)
                .with_graceful_shutdown(async move {
                    let _ = sd.wait_for(|v| *v).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "API server failed");
            }
        }));
    }

    // Ingest server.
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind ingest address {}", cfg.listen))?;
    let ingest_addr = listener.local_addr()?;
    let svc = IngestService {
        collector_id: cfg.id.clone(),
        limits: IngestLimits {
            max_batch_events: cfg.max_batch_events,
            stream_queue: cfg.stream_queue,
        },
        commit_tx,
        shard_map: shard_map.clone(),
        metrics: metrics.clone(),
        streams: Arc::new(Semaphore::new(cfg.max_streams)),
    };
    let server = {
        let mut sd = shutdown_rx.clone();
        let svc = ingest::IngestServer::new(svc, cfg.max_message_bytes);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(svc);
        tokio::spawn(router.serve_with_incoming_shutdown(
            tls::incoming(listener, server_tls, metrics.clone()),
            async move {
                let _ = sd.wait_for(|v| *v).await;
            },
        ))
    };
    metrics.ready.store(true, Ordering::Relaxed);
    tracing::info!(id = %cfg.id, ingest = %ingest_addr, api = %api_addr, "collector ready");
    Ok(RunningCollector {
        ingest_addr,
        api_addr,
        metrics,
        store,
        shard_map,
        shutdown_tx,
        tasks,
        server,
        engines: engine_tasks,
        committer,
    })
}

/// Runs a collector until `shutdown` completes (for `outflow demo`, tests
/// and the `outflow collector` command).
pub async fn run_collector(
    cfg: CollectorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start(cfg, None).await?;
    shutdown.await;
    tracing::info!("collector shutting down");
    running.shutdown().await;
    Ok(())
}
