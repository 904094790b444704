//! Shipping: batches from the spool to the collector that owns the host,
//! over one long-lived mTLS gRPC stream (`outflow.v1.Ingest/Stream`).
//!
//! * Every batch is in the spool before it is sent and leaves it only when
//!   acknowledged (`Ack.durable_through`); after a reconnect, everything
//!   unacknowledged is resent (the collector deduplicates by sequence).
//! * A `Redirect` moves the host to the owning collector: a worker per
//!   endpoint streams the hosts routed to it.
//! * Reconnects back off exponentially with full jitter.
//! * The host identity is the agent certificate's: batches of an agent carry
//!   the certificate name as `host_id`. An importer certificate may send for
//!   any host (`outflow-agent replay`).
//!
//! [`Shipper`] is a library type so tests and `outflow demo` can run simulated
//! agents over real mTLS gRPC.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outflow_core::telemetry::Event;
use outflow_pki::{CertDir, PeerIdentity, Role};
use outflow_proto::pb;
use outflow_proto::pb::ingest_client::IngestClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::spool::{Spool, SpoolError, SpoolStats};

pub const AGENT_VERSION: &str = concat!("outflow-agent/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("certificates: {0}")]
    Pki(#[from] outflow_pki::PkiError),
    #[error("certificate {stem}.pem has role {role}, but shipping needs an agent or importer certificate")]
    WrongRole { stem: String, role: Role },
    #[error("host id `{given}` does not match the agent certificate's name `{cert}` (the certificate decides; fix --host-id or use agent-{given}.pem)")]
    HostMismatch { given: String, cert: String },
    #[error("event for host `{event_host}` cannot be sent with the agent certificate of `{cert}`")]
    ForeignHost { event_host: String, cert: String },
    #[error("no agent certificate found in {dir}: give --host-id or --cert-stem (files agent-<host>.pem / agent-<host>-key.pem from `outflow certs dev --hosts <host>`)")]
    NoCertificate { dir: String },
    #[error("more than one agent certificate in {dir} ({found}): give --host-id or --cert-stem")]
    AmbiguousCertificate { dir: String, found: String },
    #[error("collector endpoint `{0}` is not a valid URL")]
    BadEndpoint(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// `https://host:port` of the collector to start with.
    pub endpoint: String,
    pub certs: PathBuf,
    /// Certificate stem in `certs`; `None`: `agent-<host_id>`, or the only
    /// `agent-*.pem` there.
    pub cert_stem: Option<String>,
    /// Expected host id (checked against the certificate).
    pub host_id: Option<String>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub max_batch_events: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Batches sent but not yet acknowledged, at most.
    pub window: usize,
}

impl ShipperConfig {
    pub fn new(endpoint: &str, certs: impl Into<PathBuf>, spool_dir: impl Into<PathBuf>) -> Self {
        ShipperConfig {
            endpoint: endpoint.to_string(),
            certs: certs.into(),
            cert_stem: None,
            host_id: None,
            spool_dir: spool_dir.into(),
            spool_max_bytes: 256 * 1024 * 1024,
            max_batch_events: 5000,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            window: 32,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShipStats {
    pub spool: SpoolStats,
    pub batches_sealed: u64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub duplicates_reported: u64,
    pub connects: u64,
    pub connect_failures: u64,
    pub stream_errors: u64,
    pub redirects: u64,
}

struct Inner {
    spool: Mutex<Spool>,
    certs: CertDir,
    stem: String,
    default_endpoint: String,
    routes: Mutex<HashMap<String, String>>,
    workers: Mutex<HashMap<String, JoinHandle<()>>>,
    wake: watch::Sender<u64>,
    acked: watch::Sender<u64>,
    stats: Mutex<ShipStats>,
    shutdown: watch::Sender<bool>,
    backoff_initial: Duration,
    backoff_max: Duration,
    window: usize,
}

pub struct Shipper {
    inner: Arc<Inner>,
    identity: PeerIdentity,
    max_batch_events: usize,
}

fn normalize_endpoint(e: &str) -> String {
    if e.starts_with("http://") || e.starts_with("https://") {
        e.trim_end_matches('/').to_string()
    } else {
        format!("https://{}", e.trim_end_matches('/'))
    }
}

/// The host part of an endpoint URL (for the TLS server name check).
fn endpoint_host(e: &str) -> Option<String> {
    let rest = e.split_once("://").map(|x| x.1).unwrap_or(e);
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().map(str::to_string);
    }
    Some(
        authority
            .rsplit_once(':')
            .map(|x| x.0)
            .unwrap_or(authority)
            .to_string(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn find_stem(cfg: &ShipperConfig) -> Result<String, ShipError> {
    if let Some(s) = &cfg.cert_stem {
        return Ok(s.clone());
    }
    if let Some(h) = &cfg.host_id {
        return Ok(format!("agent-{h}"));
    }
    let dir = cfg.certs.display().to_string();
    let mut found: Vec<String> = std::fs::read_dir(&cfg.certs)
        .map_err(|_| ShipError::NoCertificate { dir: dir.clone() })?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("agent-") && n.ends_with(".pem") && !n.ends_with("-key.pem"))
        .map(|n| n.trim_end_matches(".pem").to_string())
        .collect();
    found.sort();
    match found.len() {
        0 => Err(ShipError::NoCertificate { dir }),
        1 => Ok(found.remove(0)),
        _ => Err(ShipError::AmbiguousCertificate {
            dir,
            found: found.join(", "),
        }),
    }
}

impl Shipper {
    /// Loads the identity, opens the spool (resuming it) and starts shipping
    /// whatever it holds. Must be called inside a tokio runtime.
    pub fn start(cfg: ShipperConfig) -> Result<Shipper, ShipError> {
        let certs = CertDir::new(&cfg.certs);
        let stem = find_stem(&cfg)?;
        let identity = certs.identity(&stem)?;
        match identity.role {
            Role::Agent => {
                if let Some(h) = &cfg.host_id {
                    if *h != identity.name {
                        return Err(ShipError::HostMismatch {
                            given: h.clone(),
                            cert: identity.name.clone(),
                        });
                    }
                }
            }
            Role::Importer => {}
            role => return Err(ShipError::WrongRole { stem, role }),
        }
        // Fail early on unreadable keys / CA rather than at first connect.
        certs.client_tls(&stem)?;
        if endpoint_host(&cfg.endpoint).is_none() {
            return Err(ShipError::BadEndpoint(cfg.endpoint.clone()));
        }
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?;
        let (wake, _) = watch::channel(0u64);
        let (acked, _) = watch::channel(0u64);
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            spool: Mutex::new(spool),
            certs,
            stem,
            default_endpoint: normalize_endpoint(&cfg.endpoint),
            routes: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            wake,
            acked,
            stats: Mutex::new(ShipStats::default()),
            shutdown,
            backoff_initial: cfg.backoff_initial,
            backoff_max: cfg.backoff_max,
            window: cfg.window.max(1),
        });
        ensure_worker(&inner, &inner.default_endpoint.clone());
        Ok(Shipper {
            inner,
            identity,
            max_batch_events: cfg.max_batch_events.max(1),
        })
    }

    /// The identity in the certificate (its name is the host id of an agent).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// Seals `events` into batches (per host, at most `max_batch_events`
    /// each), stores them in the spool and wakes the senders. Blocks for the
    /// spool's fsync (a few ms). Returns the number of batches sealed.
    pub fn send(&self, events: Vec<Event>) -> Result<usize, ShipError> {
        let mut by_host: BTreeMap<String, Vec<pb::TelemetryEvent>> = BTreeMap::new();
        for e in &events {
            if self.identity.role == Role::Agent && e.host() != self.identity.name {
                return Err(ShipError::ForeignHost {
                    event_host: e.host().to_string(),
                    cert: self.identity.name.clone(),
                });
            }
            by_host
                .entry(e.host().to_string())
                .or_default()
                .push(outflow_proto::event_to_pb(e));
        }
        let mut sealed = 0;
        let now_ms = crate::source::now().0 / 1000;
        let mut first_err = None;
        for (host, evs) in by_host {
            let mut evs = evs.into_iter().peekable();
            while evs.peek().is_some() {
                let chunk: Vec<_> = evs.by_ref().take(self.max_batch_events).collect();
                let r = lock(&self.inner.spool).append(&host, chunk, AGENT_VERSION, now_ms);
                match r {
                    Ok(_) => sealed += 1,
                    // The spool logs its own failures (once per episode).
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let ep = self.route(&host);
            ensure_worker(&self.inner, &ep);
        }
        lock(&self.inner.stats).batches_sealed += sealed as u64;
        self.inner.wake.send_modify(|g| *g += 1);
        match first_err {
            Some(e) if sealed == 0 => Err(e.into()),
            _ => Ok(sealed),
        }
    }

    fn route(&self, host: &str) -> String {
        lock(&self.inner.routes)
            .get(host)
            .cloned()
            .unwrap_or_else(|| self.inner.default_endpoint.clone())
    }

    /// Counts events lost before they could be spooled; they are reported to
    /// the collector in the next batch's `dropped_events`.
    pub fn note_dropped(&self, events: u64) {
        lock(&self.inner.spool).note_dropped(events);
    }

    /// Waits until every spooled batch is acknowledged (true) or `timeout`.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.acked.subscribe();
        let fut = async {
            loop {
                if lock(&self.inner.spool).is_empty() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.is_ok() && lock(&self.inner.spool).is_empty()
    }

    pub fn stats(&self) -> ShipStats {
        let mut s = lock(&self.inner.stats).clone();
        s.spool = lock(&self.inner.spool).stats();
        s
    }

    /// Stops the senders; the spool keeps what was not acknowledged.
    pub async fn shutdown(self) {
        // send_replace: stores the value even if no worker has subscribed yet
        // (`send` would drop it and a late worker would never stop).
        self.inner.shutdown.send_replace(true);
        let handles: Vec<JoinHandle<()>> =
            lock(&self.inner.workers).drain().map(|(_, h)| h).collect();
        for h in handles {
            let _ = h.await;
        }
    }
}

fn ensure_worker(inner: &Arc<Inner>, endpoint: &str) {
    let mut w = lock(&inner.workers);
    if w.get(endpoint).is_some_and(|h| !h.is_finished()) {
        return;
    }
    let inner2 = inner.clone();
    let ep = endpoint.to_string();
    w.insert(
        endpoint.to_string(),
        tokio::spawn(async move { worker(inner2, ep).await }),
    );
}

/// Hosts whose batches go to `endpoint` and have something pending.
fn hosts_for(inner: &Inner, endpoint: &str) -> Vec<String> {
    let hosts = lock(&inner.spool).hosts();
    let routes = lock(&inner.routes);
    hosts
        .into_iter()
        .filter(|h| {
            routes
                .get(h)
                .map(String::as_str)
                .unwrap_or(&inner.default_endpoint)
                == endpoint
        })
        .collect()
}

fn backoff_delay(inner: &Inner, attempt: u32) -> Duration {
    use rand::Rng;
    let cap = backoff_cap(inner.backoff_initial, inner.backoff_max, attempt);
    jittered(cap, rand::thread_rng().gen_range(0.0..=1.0))
}

/// The ceiling of the `attempt`-th reconnect delay (0-based): doubles from
/// `initial` and stays at `max` once it gets there.
pub fn backoff_cap(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial.saturating_mul(1u32 << attempt.min(20)).min(max)
}

/// The delay actually slept for ceiling `cap` and a uniform draw `u` in
/// [0, 1]: full jitter in [cap/2, cap] keeps some spacing.
pub fn jittered(cap: Duration, u: f64) -> Duration {
    let ms = cap.as_millis().max(1) as u64;
    let lo = ms / 2;
    Duration::from_millis(lo + ((ms - lo) as f64 * u.clamp(0.0, 1.0)).round() as u64)
}

async fn connect(
    inner: &Inner,
    endpoint: &str,
) -> Result<IngestClient<tonic::transport::Channel>, String> {
    let domain = endpoint_host(endpoint).ok_or_else(|| format!("bad endpoint {endpoint}"))?;
    let tls = inner
        .certs
        .client_tls_for(&inner.stem, &domain)
        .map_err(|e| e.to_string())?;
    let ep = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let ep = if endpoint.starts_with("https://") {
        ep.tls_config(tls).map_err(|e| format!("TLS config: {e}"))?
    } else {
        ep
    };
    let ch = ep.connect().await.map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(x) = src {
            s.push_str(": ");
            s.push_str(&x.to_string());
            src = x.source();
        }
        s
    })?;
    Ok(IngestClient::new(ch)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

enum SessionEnd {
    Shutdown,
    Idle,
    Failed(String),
}

async fn worker(inner: Arc<Inner>, endpoint: String) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut wake = inner.wake.subscribe();
    let mut attempt: u32 = 0;
    let mut outage_logged = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if hosts_for(&inner, &endpoint).is_empty() {
            tokio::select! {
                _ = wake.changed() => continue,
                _ = shutdown.changed() => return,
            }
        }
        let client = match connect(&inner, &endpoint).await {
            Ok(c) => c,
            Err(e) => {
                lock(&inner.stats).connect_failures += 1;
                if !outage_logged {
                    tracing::warn!(%endpoint, "collector unreachable: {e}; batches stay in the spool, retrying with backoff");
                    outage_logged = true;
                } else {
                    tracing::debug!(%endpoint, "reconnect failed: {e}");
                }
                let d = backoff_delay(&inner, attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(d) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        lock(&inner.stats).connects += 1;
        if outage_logged {
            tracing::info!(%endpoint, "collector reachable again: resending the spool");
            outage_logged = false;
        }
        match session(
            &inner,
            &endpoint,
            client,
            &mut wake,
            &mut shutdown,
            &mut attempt,
        )
        .await
        {
            SessionEnd::Shutdown => return,
            SessionEnd::Idle => {}
            SessionEnd::Failed(e) => {
                lock(&inner.stats).stream_errors += 1;
                tracing::warn!(%endpoint, "ingest stream ended: {e}; reconnecting");
                let d = backoff_delay(&inner, attempt);
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

async fn session(
    inner: &Arc<Inner>,
    endpoint: &str,
    mut client: IngestClient<tonic::transport::Channel>,
    wake: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
    attempt: &mut u32,
) -> SessionEnd {
    let (tx, rx) = mpsc::channel::<pb::Batch>(inner.window + 1);
    // Per host: highest sequence sent on this stream, highest acknowledged.
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let fill = |sent: &mut HashMap<String, u64>,
                acked: &HashMap<String, u64>,
                tx: &mpsc::Sender<pb::Batch>|
     -> u64 {
        let mut n = 0;
        for host in hosts_for(inner, endpoint) {
            let inflight: u64 = sent
                .iter()
                .map(|(h, s)| s.saturating_sub(*acked.get(h).unwrap_or(&0)))
                .sum();
            let room = (inner.window as u64).saturating_sub(inflight) as usize;
            if room == 0 {
                break;
            }
            let after = *sent.get(&host).unwrap_or(&0);
            let batches = lock(&inner.spool).pending(&host, after, room);
            for b in batches {
                let seq = b.sequence;
                if tx.try_send(b).is_err() {
                    return n;
                }
                sent.insert(host.clone(), seq);
                n += 1;
            }
        }
        n
    };
    let n = fill(&mut sent, &acked, &tx);
    lock(&inner.stats).batches_sent += n;
    let mut stream = match client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return SessionEnd::Failed(status_text(&s)),
    };
    loop {
        if sent.is_empty() && hosts_for(inner, endpoint).is_empty() {
            // Nothing left for this collector: keep the stream open while
            // more batches may come (an agent always has more).
        }
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(reply)) => match reply.kind {
                    Some(pb::ingest_reply::Kind::Ack(a)) => {
                        *attempt = 0;
                        let last = lock(&inner.spool).last_seq(&a.host_id);
                        if a.durable_through > last {
                            tracing::warn!(host = %a.host_id, collector_has = a.durable_through, ours = last,
                                "collector knows later batches of this host than the spool (spool reset?): renumbering pending batches");
                            if let Err(e) = lock(&inner.spool).resequence_after(&a.host_id, a.durable_through) {
                                tracing::error!("{e}");
                            }
                            sent.insert(a.host_id.clone(), a.durable_through);
                            acked.insert(a.host_id.clone(), a.durable_through);
                        } else {
                            let n = lock(&inner.spool).ack(&a.host_id, a.durable_through);
                            let e = acked.entry(a.host_id.clone()).or_insert(0);
                            *e = (*e).max(a.durable_through);
                            let mut st = lock(&inner.stats);
                            st.batches_acked += n as u64;
                            st.duplicates_reported += u64::from(a.duplicates);
                        }
                        inner.acked.send_modify(|g| *g += 1);
                    }
                    Some(pb::ingest_reply::Kind::Redirect(r)) => {
                        let to = normalize_endpoint(&r.endpoint);
                        tracing::info!(host = %r.host_id, owner = %r.owner_id, endpoint = %to, "redirected to the owning collector");
                        lock(&inner.stats).redirects += 1;
                        if to == endpoint {
                            return SessionEnd::Failed(format!("redirected to itself ({to})"));
                        }
                        lock(&inner.routes).insert(r.host_id.clone(), to.clone());
                        sent.remove(&r.host_id);
                        acked.remove(&r.host_id);
                        ensure_worker(inner, &to);
                        inner.wake.send_modify(|g| *g += 1);
                        if hosts_for(inner, endpoint).is_empty() && sent.is_empty() {
                            return SessionEnd::Idle;
                        }
                    }
                    None => {}
                },
                Ok(None) => return SessionEnd::Failed("collector closed the stream".into()),
                Err(s) => return SessionEnd::Failed(status_text(&s)),
            },
            _ = wake.changed() => {}
            _ = shutdown.changed() => return SessionEnd::Shutdown,
        }
        let n = fill(&mut sent, &acked, &tx);
        if n > 0 {
            lock(&inner.stats).batches_sent += n;
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    let hint = match s.code() {
        tonic::Code::Unauthenticated => " (is the certificate issued by the collector's CA?)",
        tonic::Code::PermissionDenied => " (the certificate may not send for this host)",
        _ => "",
    };
    format!("{}: {}{}", s.code(), s.message(), hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:7201"),
            "https://127.0.0.1:7201"
        );
        assert_eq!(
            endpoint_host("https://127.0.0.1:7201").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(endpoint_host("https://[::1]:7201/").as_deref(), Some("::1"));
        assert_eq!(
            endpoint_host("https://collector.example").as_deref(),
            Some("collector.example")
        );
    }
}
