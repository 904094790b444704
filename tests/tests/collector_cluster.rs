//! Two collectors against a real three-node aggregator group (raft-rs) over
//! mutual TLS, through the production `GrpcFleet` client: heartbeats make the
//! shard map, hosts owned by the other collector are redirected, partials go
//! up and the merged baseline comes back, alerts reach the replicated store.

mod collector_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_common::*;
use outflow_aggregator::config::AggregatorConfig;
use outflow_collector::shipper::{connect, ship};
use outflow_pki::CertDir;
use outflow_proto::pb;

use outflow_tests::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_share_the_fleet_through_the_aggregator_group() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), &[]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let cfg = AggregatorConfig {
            id: i as u64 + 1,
            listen: format!("127.0.0.1:{p}"),
            api: "127.0.0.1:0".into(),
            peers: peers.clone(),
            data: tmp.path().join(format!("agg{}", i + 1)),
            certs: Some(certs.clone()),
            ..AggregatorConfig::default()
        };
        nodes.push(
            outflow_aggregator::server::start_aggregator(cfg)
                .await
                .expect("aggregator starts"),
        );
    }
    let aggregators: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();

    let mut collectors = Vec::new();
    for id in ["c1", "c2"] {
        let dir = tmp.path().join(id);
        let port = free_port();
        let mut cfg = config(&dir, &certs, None);
        cfg.id = id.into();
        cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
        cfg.aggregators = aggregators.clone();
        collectors.push(
            outflow_collector::start(cfg, None)
                .await
                .expect("collector"),
        );
    }
    // Heartbeats → membership → both collectors see a two-member map.
    for c in &collectors {
        wait_for(
            "a shard map with both collectors",
            Duration::from_secs(60),
            || c.shard_map.read().unwrap().members.len() == 2,
        )
        .await;
    }
    let map = collectors[0].shard_map.read().unwrap().clone();
    assert_eq!(map, collectors[1].shard_map.read().unwrap().clone());

    // Each host goes to its owner; a wrong collector redirects.
    let (events, _) = fleet_events(30, 3);
    let all = batches(&events, 300);
    let total = event_count(&all);
    let tls = CertDir::new(&certs).client_tls("importer").unwrap();
    let mut clients = Vec::new();
    for c in &collectors {
        clients.push(
            connect(&format!("https://{}", c.ingest_addr), tls.clone())
                .await
                .unwrap(),
        );
    }
    let owner_index = |h: &str| {
        let id = &map.owner(h).unwrap().collector_id;
        usize::from(id == "c2")
    };
    let wrong = all.iter().find(|b| owner_index(&b.host_id) == 1).unwrap();
    let out = ship(&mut clients[0], vec![wrong.clone()]).await.unwrap();
    let r = out.redirect.expect("c1 redirects a host of c2");
    assert_eq!(r.owner_id, "c2");
    assert_eq!(r.endpoint, format!("https://{}", collectors[1].ingest_addr));
    let mut per: [Vec<pb::Batch>; 2] = [Vec::new(), Vec::new()];
    for b in all {
        per[owner_index(&b.host_id)].push(b);
    }
    assert!(!per[0].is_empty() && !per[1].is_empty());
    for (i, bs) in per.into_iter().enumerate() {
        let n = bs.len();
        let out = ship(&mut clients[i], bs).await.unwrap();
        assert_eq!(out.acked.len(), n);
        assert!(out.redirect.is_none());
    }
    let engine_total = || {
        collectors
            .iter()
            .map(|c| c.metrics.engine_events.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    wait_for("both engines", Duration::from_secs(120), || {
        engine_total() == total
    })
    .await;

    // Partials up, the merged baseline down to both.
    wait_for(
        "partials committed and the baseline fed back",
        Duration::from_secs(60),
        || {
            collectors.iter().all(|c| {
                c.metrics.partial_submissions.load(Ordering::Relaxed) > 0
                    && c.metrics.feed_updates.load(Ordering::Relaxed) > 1
            }) && nodes[0].node.read(|st| st.baseline_version()) > 0
        },
    )
    .await;

    // Alerts end up in the replicated store (for `ctl alerts`), once each.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let raised = || {
        collectors
            .iter()
            .map(|c| c.metrics.alerts.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    wait_for(
        "alerts reported to the aggregators",
        Duration::from_secs(60),
        || {
            let delivered: u64 = collectors
                .iter()
                .map(|c| c.metrics.alerts_delivered_fleet.load(Ordering::Relaxed))
                .sum();
            raised() > 0 && delivered == raised()
        },
    )
    .await;
    let stored = nodes[0]
        .node
        .read(|st| st.alerts_since(i64::MIN, 100_000).len());
    eprintln!(
        "cluster: {total} events over 2 collectors, {} alerts, {stored} in the replicated store",
        raised()
    );
    assert_eq!(stored as u64, raised(), "every alert stored once");
    for c in collectors {
        c.shutdown().await;
    }
    for n in nodes {
        n.stop().await;
    }
}
