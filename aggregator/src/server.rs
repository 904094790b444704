//! Wiring one aggregator node: write-ahead Raft log, Raft thread, gRPC server (Raft
//! transport, Fleet, Admin) and the admin HTTP API, with one shutdown.

use crate::api::{self, ApiMetrics, ApiState, ConnInfo, TlsListener};
use crate::config::AggregatorConfig;
use crate::grpc::{AdminService, FleetService};
use crate::node::transport::{GrpcTransport, RaftService, MAX_MESSAGE_BYTES};
use crate::node::{Node, NodeHandle, NodeOptions};
use crate::raft::{Disk, SledDisk, WalDisk};
use anyhow::Context as _;
use outflow_pki::CertDir;
use outflow_proto::pb;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

/// A node running in this process (the demo runs three).
pub struct RunningAggregator {
    pub node: NodeHandle,
    pub grpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    raft: Option<Node>,
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl RunningAggregator {
    /// Stop serving, stop the Raft thread (its log is synced), and wait.
    /// True when the servers stopped by themselves; false when one of them
    /// had to be abandoned after 5 s.
    pub async fn stop(mut self) -> bool {
        let _ = self.shutdown.send(true);
        let mut clean = true;
        for t in self.tasks.drain(..) {
            clean &= tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_ok();
        }
        if let Some(mut n) = self.raft.take() {
            let _ = tokio::task::spawn_blocking(move || n.stop()).await;
        }
        clean
    }
}

/// Start a node and return once it is serving.
pub async fn start_aggregator(cfg: AggregatorConfig) -> anyhow::Result<RunningAggregator> {
    if let Err(errs) = cfg.validate() {
        anyhow::bail!(
            "invalid aggregator configuration:\n  - {}",
            errs.join("\n  - ")
        );
    }
    outflow_pki::install_ring_provider();
    std::fs::create_dir_all(&cfg.data)
        .with_context(|| format!("creating data directory {}", cfg.data.display()))?;
    let log_dir = cfg.data.join("raft-wal");
    let sled_dir = cfg.data.join("raft-log");
    let disk = if !WalDisk::exists(&log_dir) && sled_dir.exists() {
        // Earlier versions kept the log in sled: carry it over once.
        let p = SledDisk::open(&sled_dir)
            .and_then(|d| d.load())
            .with_context(|| format!("reading the Raft log in {}", sled_dir.display()))?;
        let d = WalDisk::create_with(&log_dir, &p)
            .with_context(|| format!("writing the Raft log to {}", log_dir.display()))?;
        tracing::info!(from = %sled_dir.display(), to = %log_dir.display(), "Raft log moved to the write-ahead log file; the old directory is no longer read and can be deleted");
        d
    } else {
        WalDisk::open(&log_dir)
            .with_context(|| format!("opening the Raft log in {}", log_dir.display()))?
    };
    if disk.dropped_on_open() > 0 {
        tracing::warn!(bytes = disk.dropped_on_open(), "dropped an incomplete write at the end of the Raft log (interrupted by a crash before it was synced)");
    }
    let certs = cfg.certs.as_ref().map(CertDir::new);
    let client_tls = match &certs {
        Some(c) => Some(
            c.client_tls("server")
                .context("client TLS for peers (server.pem)")?,
        ),
        None => None,
    };
    let grpc_listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding the gRPC address {}", cfg.listen))?;
    let api_listener = tokio::net::TcpListener::bind(&cfg.api)
        .await
        .with_context(|| format!("binding the admin API address {}", cfg.api))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    let rt = tokio::runtime::Handle::current();
    let opts = NodeOptions {
        replica: cfg.replica_config(),
        tick: Duration::from_millis(cfg.tick_ms),
        bootstrap: cfg.bootstrap(),
        proposal_timeout: Duration::from_millis(cfg.proposal_timeout_ms),
        collector_timeout_ms: cfg.collector_timeout_ms,
    };
    let tls_for_transport = client_tls.clone();
    let configured = cfg.peer_map();
    let source = cfg.source_ip;
    let node = Node::start(opts, disk, move |h| {
        std::sync::Arc::new(
            GrpcTransport::new(rt, h, tls_for_transport, configured).with_source(source),
        )
    })
    .context("starting the Raft node")?;
    let handle = node.handle.clone();
    let require_identity = certs.is_some();
    let (sd_tx, sd_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let mut builder = tonic::transport::Server::builder();
    if let Some(c) = &certs {
        builder = builder
            .tls_config(c.server_tls().context("server TLS (server.pem, ca.pem)")?)
            .context("server TLS")?;
    }
    let router = builder
        .add_service(
            pb::raft_transport_server::RaftTransportServer::new(RaftService {
                node: handle.clone(),
                require_identity,
                shutdown: sd_rx.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::fleet_server::FleetServer::new(FleetService {
                node: handle.clone(),
                require_identity,
                shutdown: sd_rx.clone(),
            })
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(pb::admin_server::AdminServer::new(AdminService {
            node: handle.clone(),
            require_identity,
            listen: cfg.listen.clone(),
        }));
    let rx = sd_rx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), wait_for(rx))
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    }));

    let state = ApiState {
        node: handle.clone(),
        token: cfg.api_token.clone(),
        peer_tls: client_tls,
        listen: cfg.listen.clone(),
        metrics: Arc::new(ApiMetrics::default()),
    };
    let app = api::router(state).into_make_service_with_connect_info::<ConnInfo>();
    let rx = sd_rx.clone();
    if cfg.api_tls {
        let c = certs.as_ref().context("api_tls needs certs")?;
        let acceptor = tokio_rustls::TlsAcceptor::from(c.rustls_server_config()?);
        let listener = TlsListener {
            tcp: api_listener,
            acceptor,
        };
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(wait_for(rx))
                .await
            {
                tracing::error!(error = %e, "admin API failed");
            }
        }));
    } else {
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(api_listener, app)
                .with_graceful_shutdown(wait_for(rx))
                .await
            {
                tracing::error!(error = %e, "admin API failed");
            }
        }));
    }
    tracing::info!(id = cfg.id, grpc = %grpc_addr, api = %api_addr, tls = require_identity, "aggregator node serving");
    Ok(RunningAggregator {
        node: handle,
        grpc_addr,
        api_addr,
        shutdown: sd_tx,
        tasks,
        raft: Some(node),
    })
}

/// Run a node until `shutdown` resolves (or its Raft loop dies).
pub async fn run_aggregator(
    cfg: AggregatorConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let running = start_aggregator(cfg).await?;
    let mut status = running.node.watch_status();
    let fatal = async {
        loop {
            if let Some(f) = status.borrow().fatal.clone() {
                return f;
            }
            if status.changed().await.is_err() {
                return "raft loop ended".to_string();
            }
        }
    };
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        f = fatal => Err(anyhow::anyhow!("aggregator node stopped: {f}")),
    };
    running.stop().await;
    result
}

async fn signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `outflow aggregator`.
pub fn run(args: crate::config::AggregatorArgs) -> anyhow::Result<std::process::ExitCode> {
    let cfg = args.resolve()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_aggregator(cfg, signal()))?;
    Ok(std::process::ExitCode::SUCCESS)
}
