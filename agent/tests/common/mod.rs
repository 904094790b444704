//! Shared test helpers: a minimal Ingest collector over real mTLS.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outflow_core::telemetry::{Event, NetRecord, Transport};
use outflow_core::Timestamp;
use outflow_pki::{CertDir, DevOptions, Role};
use outflow_proto::pb;
use outflow_proto::pb::ingest_server::{Ingest, IngestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// `n` net records of `host` (pids 100..), `tag` in their time and bytes out.
pub fn events(host: &str, n: usize, tag: u64) -> Vec<Event> {
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

/// What the collector made "durable"; survives a collector kill.
#[derive(Default, Debug)]
pub struct Store {
    /// (host, seq) → events in the batch
    pub batches: BTreeMap<(String, u64), usize>,
    pub duplicates: u64,
    pub dropped_reported: u64,
    /// (certificate identity, batch host) pairs seen
    pub peers: Vec<(String, String)>,
    pub high: BTreeMap<String, u64>,
}

#[derive(Clone)]
pub struct TestCollector {
    pub store: Arc<Mutex<Store>>,
    pub redirect_to: Option<String>,
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
pub struct TestServer {
    rt: Option<tokio::runtime::Runtime>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start(certs: &CertDir, port: u16, svc: TestCollector) -> TestServer {
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

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn kill(&mut self) {
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

pub fn certs(hosts: &[&str]) -> (tempfile::TempDir, CertDir) {
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

#[path = "../../../tests/src/ports.rs"]
mod ports;

pub fn free_port() -> u16 {
    ports::free_port()
}
