//! Shipping over real mTLS gRPC to a minimal in-test collector (an Ingest
//! server that stores batches by (host, sequence), acknowledges them and can
//! redirect): exactly-once delivery across collector kills, agent restarts
//! resuming from the spool, redirects, identity from the certificate, and
//! the counted drop policy of a full spool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outflow_agent::ship::{ShipError, Shipper, ShipperConfig};
use outflow_core::telemetry::{Event, NetRecord, Transport};
use outflow_core::Timestamp;
use outflow_pki::{CertDir, DevOptions, Role};
use outflow_proto::pb;
use outflow_proto::pb::ingest_server::{Ingest, IngestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What the collector made "durable"; survives a collector kill.
#[derive(Default, Debug)]
struct Store {
    /// (host, seq) → events in the batch
    batches: BTreeMap<(String, u64), usize>,
    duplicates: u64,
    dropped_reported: u64,
    /// (certificate identity, batch host) pairs seen
    peers: Vec<(String, String)>,
    high: BTreeMap<String, u64>,
}

#[derive(Clone)]
struct TestCollector {
    store: Arc<Mutex<Store>>,
    redirect_to: Option<String>,
}

#[tonic::async_trait]
impl Ingest for TestCollector {
    type StreamStream = ReceiverStream<Result<pb::IngestReply, tonic::Status>>;

    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<pb::Batch>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let peer = outflow_pki::peer_identity(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(b)) = inbound.message().await {
                if let Some(to) = &me.redirect_to {
                    let r = pb::IngestReply {
                        kind: Some(pb::ingest_reply::Kind::Redirect(pb::Redirect {
                            host_id: b.host_id.clone(),
                            owner_id: "c2".into(),
                            endpoint: to.clone(),
                            shard_map_version: 1,
                        })),
                    };
                    let _ = tx.send(Ok(r)).await;
                    continue;
                }
                if peer.role != Role::Importer && peer.name != b.host_id {
                    let _ = tx
                        .send(Err(tonic::Status::permission_denied(
                            "host id is not the certificate's",
                        )))
                        .await;
                    return;
                }
                let ack = {
                    let mut s = me.store.lock().unwrap();
                    s.peers.push((peer.name.clone(), b.host_id.clone()));
                    let dup = s.batches.contains_key(&(b.host_id.clone(), b.sequence));
                    if dup {
                        s.duplicates += 1;
                    } else {
                        s.batches
                            .insert((b.host_id.clone(), b.sequence), b.events.len());
                        s.dropped_reported += b.dropped_events;
                    }
                    let h = s.high.entry(b.host_id.clone()).or_insert(0);
                    *h = (*h).max(b.sequence);
                    pb::Ack {
                        host_id: b.host_id.clone(),
                        durable_through: *h,
                        duplicates: u32::from(dup),
                    }
                };
                let r = pb::IngestReply {
                    kind: Some(pb::ingest_reply::Kind::Ack(ack)),
                };
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// A collector in its own runtime, so killing it drops every connection.
struct TestServer {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl TestServer {
    fn start(certs: &CertDir, port: u16, svc: TestCollector) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let tls = certs.server_tls().unwrap();
        // The port may linger briefly after a kill.
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("bind: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(IngestServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        TestServer { rt: Some(rt), addr }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn certs(hosts: &[&str]) -> (tempfile::TempDir, CertDir) {
    let dir = tempfile::tempdir().unwrap();
    outflow_pki::generate_dev(
        dir.path(),
        &DevOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        },
    )
    .unwrap();
    let cd = CertDir::new(dir.path());
    (dir, cd)
}

fn events(host: &str, n: usize, tag: u64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::Net(NetRecord {
                ts: Timestamp(1_700_000_000_000_000 + tag as i64),
                host: host.into(),
                pid: 100 + i as u32,
                proto: Transport::Tcp,
                dst_ip: "1.2.3.4".parse().unwrap(),
                dst_port: 443,
                bytes_out: tag,
                bytes_in: 1,
                sni: None,
                domain: None,
            })
        })
        .collect()
}

fn cfg(url: &str, certs: &CertDir, spool: &std::path::Path) -> ShipperConfig {
    let mut c = ShipperConfig::new(url, certs.dir(), spool);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_arrives_exactly_once_across_collector_kills() {
    let (_d, certs) = certs(&["ws-1"]);
    let spool = tempfile::tempdir().unwrap();
    let store = Arc::new(Mutex::new(Store::default()));
    let svc = TestCollector {
        store: store.clone(),
        redirect_to: None,
    };
    let port = free_port();
    let mut server = TestServer::start(&certs, port, svc.clone());
    let shipper = Shipper::start(cfg(&server.url(), &certs, spool.path())).unwrap();
    assert_eq!(
        shipper.identity().name,
        "ws-1",
        "host id from the certificate"
    );
    let total = 120u64;
    for i in 1..=total {
        shipper.send(events("ws-1", 7, i)).unwrap();
        if i == 40 || i == 80 {
            // Kill the collector under traffic, keep producing, bring it back.
            server.kill();
            for j in 0..10 {
                shipper.send(events("ws-1", 7, 1000 * i + j)).unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            server = TestServer::start(&certs, port, svc.clone());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        shipper.wait_drained(Duration::from_secs(30)).await,
        "spool drained: {:?}",
        shipper.stats()
    );
    let sent_batches = total + 20;
    {
        let s = store.lock().unwrap();
        let seqs: Vec<u64> = s.batches.keys().map(|(_, q)| *q).collect();
        assert_eq!(
            seqs,
            (1..=sent_batches).collect::<Vec<_>>(),
            "every sequence once, no gaps"
        );
        let ev: usize = s.batches.values().sum();
        assert_eq!(ev as u64, sent_batches * 7);
        assert_eq!(s.dropped_reported, 0);
        let st = shipper.stats();
        assert!(st.connects >= 3, "reconnected after each kill: {st:?}");
        assert_eq!(st.spool.pending_batches, 0);
        eprintln!(
            "stats: {st:?}; collector saw {} duplicate resends",
            s.duplicates
        );
    }
    shipper.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_resends_its_spool_and_keeps_numbering() {
    let (_d, certs) = certs(&["ws-2"]);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    // No collector yet.
    let url = format!("https://127.0.0.1:{port}");
    {
        let shipper = Shipper::start(cfg(&url, &certs, spool.path())).unwrap();
        for i in 0..5 {
            shipper.send(events("ws-2", 3, i)).unwrap();
        }
        assert!(!shipper.wait_drained(Duration::from_millis(300)).await);
        assert_eq!(shipper.stats().spool.pending_batches, 5);
        shipper.shutdown().await;
    }
    let store = Arc::new(Mutex::new(Store::default()));
    let _server = TestServer::start(
        &certs,
        port,
        TestCollector {
            store: store.clone(),
            redirect_to: None,
        },
    );
    let shipper = Shipper::start(cfg(&url, &certs, spool.path())).unwrap();
    shipper.send(events("ws-2", 3, 9)).unwrap();
    assert!(shipper.wait_drained(Duration::from_secs(20)).await);
    {
        let s = store.lock().unwrap();
        let seqs: Vec<u64> = s.batches.keys().map(|(_, q)| *q).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    }
    shipper.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_redirect_to_the_owning_collector() {
    let (_d, certs) = certs(&["ws-3"]);
    let spool = tempfile::tempdir().unwrap();
    let owner_store = Arc::new(Mutex::new(Store::default()));
    let owner = TestServer::start(
        &certs,
        0,
        TestCollector {
            store: owner_store.clone(),
            redirect_to: None,
        },
    );
    let wrong_store = Arc::new(Mutex::new(Store::default()));
    let wrong = TestServer::start(
        &certs,
        0,
        TestCollector {
            store: wrong_store.clone(),
            redirect_to: Some(format!("127.0.0.1:{}", owner.addr.port())),
        },
    );
    let shipper = Shipper::start(cfg(&wrong.url(), &certs, spool.path())).unwrap();
    for i in 0..10 {
        shipper.send(events("ws-3", 2, i)).unwrap();
    }
    assert!(
        shipper.wait_drained(Duration::from_secs(20)).await,
        "{:?}",
        shipper.stats()
    );
    assert_eq!(owner_store.lock().unwrap().batches.len(), 10);
    assert!(wrong_store.lock().unwrap().batches.is_empty());
    assert!(shipper.stats().redirects >= 1);
    shipper.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_certificate() {
    let (_d, certs) = certs(&["ws-4", "ws-5"]);
    let spool = tempfile::tempdir().unwrap();
    let mut c = cfg("https://127.0.0.1:1", &certs, spool.path());
    c.host_id = Some("ws-4".into());
    c.cert_stem = Some("agent-ws-5".into());
    match Shipper::start(c) {
        Err(ShipError::HostMismatch { given, cert }) => {
            assert_eq!((given.as_str(), cert.as_str()), ("ws-4", "ws-5"))
        }
        other => panic!("expected a host mismatch, got {:?}", other.err()),
    }
    // Two agent certificates and no host id: ambiguous, says which.
    let c = cfg("https://127.0.0.1:1", &certs, spool.path());
    assert!(matches!(
        Shipper::start(c),
        Err(ShipError::AmbiguousCertificate { .. })
    ));
    // An agent may not send another host's events.
    let mut c = cfg("https://127.0.0.1:1", &certs, spool.path());
    c.host_id = Some("ws-4".into());
    let s = Shipper::start(c).unwrap();
    assert!(matches!(
        s.send(events("ws-5", 1, 1)),
        Err(ShipError::ForeignHost { .. })
    ));
    s.shutdown().await;
    // The importer certificate may send for any host: each host gets its
    // own sequence.
    let store = Arc::new(Mutex::new(Store::default()));
    let server = TestServer::start(
        &certs,
        0,
        TestCollector {
            store: store.clone(),
            redirect_to: None,
        },
    );
    let spool2 = tempfile::tempdir().unwrap();
    let mut c = cfg(&server.url(), &certs, spool2.path());
    c.cert_stem = Some("importer".into());
    let s = Shipper::start(c).unwrap();
    let mut evs = events("h-a", 2, 1);
    evs.extend(events("h-b", 3, 2));
    s.send(evs).unwrap();
    assert!(s.wait_drained(Duration::from_secs(20)).await);
    {
        let st = store.lock().unwrap();
        assert_eq!(
            st.batches.keys().cloned().collect::<Vec<_>>(),
            vec![("h-a".to_string(), 1), ("h-b".to_string(), 1)]
        );
        assert!(st.peers.iter().all(|(p, _)| p == "importer"));
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_drops_oldest_and_the_loss_is_reported_exactly() {
    let (_d, certs) = certs(&["ws-6"]);
    let spool = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut c = cfg(&url, &certs, spool.path());
    c.spool_max_bytes = 6_000;
    let shipper = Shipper::start(c).unwrap();
    let batches = 60u64;
    for i in 0..batches {
        shipper.send(events("ws-6", 5, i)).unwrap();
    }
    let st = shipper.stats();
    assert!(st.spool.dropped_batches > 0, "{st:?}");
    assert!(st.spool.pending_bytes <= 6_000);
    let store = Arc::new(Mutex::new(Store::default()));
    let _server = TestServer::start(
        &certs,
        port,
        TestCollector {
            store: store.clone(),
            redirect_to: None,
        },
    );
    let t0 = Instant::now();
    assert!(shipper.wait_drained(Duration::from_secs(20)).await);
    eprintln!("drained in {:?}", t0.elapsed());
    // A final batch carries any drop not yet reported.
    shipper.send(events("ws-6", 1, 999)).unwrap();
    assert!(shipper.wait_drained(Duration::from_secs(20)).await);
    {
        let s = store.lock().unwrap();
        let received: usize = s.batches.values().sum();
        // Every event sent is either received or reported as dropped.
        assert_eq!(received as u64 + s.dropped_reported, batches * 5 + 1);
        assert_eq!(s.dropped_reported, st.spool.dropped_events);
    }
    shipper.shutdown().await;
}
