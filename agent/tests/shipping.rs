//! Shipping over real mTLS gRPC to a minimal in-test collector (an Ingest
//! server that stores batches by (host, sequence), acknowledges them and can
//! redirect): exactly-once delivery across collector kills, agent restarts
//! resuming from the spool, redirects, identity from the certificate, and
//! the counted drop policy of a full spool.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{certs, events, free_port, Store, TestCollector, TestServer};
use outflow_agent::ship::{ShipError, Shipper, ShipperConfig};
use outflow_pki::CertDir;

fn cfg(url: &str, certs: &CertDir, spool: &std::path::Path) -> ShipperConfig {
    let mut c = ShipperConfig::new(url, certs.dir(), spool);
    c.backoff_initial = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
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
        // At least one kill was noticed mid-stream and survived by reconnecting
        // (a kill landing between two sends may go unnoticed until the restart).
        assert!(
            st.connects >= 2 && st.stream_errors >= 1,
            "reconnected: {st:?}"
        );
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
