//! Three aggregator nodes in one process over real mTLS gRPC on loopback,
//! each with its own sled log: leader election, Fleet submissions through a
//! follower, the feed, the admin API, authorisation, and failover; and
//! membership changes (a joining node added, a founding follower removed)
//! through the admin API.

use outflow_aggregator::ctl::Api;
use outflow_aggregator::{start_aggregator, AggregatorConfig, RunningAggregator};
use outflow_proto::pb;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[path = "../../tests/src/ports.rs"]
mod ports;
use ports::free_port;

struct Cluster {
    nodes: Vec<Option<RunningAggregator>>,
    configs: Vec<AggregatorConfig>,
    certs: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn cluster(n: u64) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    outflow_pki::generate_dev(
        &certs,
        &outflow_pki::DevOptions {
            hosts: vec!["ws-1".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (g, _))| format!("{}=127.0.0.1:{g}", i + 1))
        .collect();
    let mut configs = Vec::new();
    let mut nodes = Vec::new();
    for (i, (g, a)) in ports.iter().enumerate() {
        let cfg = AggregatorConfig {
            id: i as u64 + 1,
            listen: format!("127.0.0.1:{g}"),
            api: format!("127.0.0.1:{a}"),
            peers: peers.clone(),
            data: dir.path().join(format!("n{}", i + 1)),
            certs: Some(certs.clone()),
            tick_ms: 50,
            snapshot_interval: 20,
            compact_lag: 5,
            proposal_timeout_ms: 3000,
            ..Default::default()
        };
        nodes.push(Some(start_aggregator(cfg.clone()).await.unwrap()));
        configs.push(cfg);
    }
    Cluster {
        nodes,
        configs,
        certs,
        _dir: dir,
    }
}

impl Cluster {
    async fn leader(&self, timeout: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            let leaders: Vec<u64> = self
                .nodes
                .iter()
                .flatten()
                .filter(|n| n.node.status().role == "leader")
                .map(|n| n.node.id())
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(
                t0.elapsed() < timeout,
                "no single leader within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn channel(&self, id: u64, stem: &str) -> Channel {
        let dir = outflow_pki::CertDir::new(&self.certs);
        Endpoint::from_shared(format!(
            "https://{}",
            self.configs[(id - 1) as usize].listen
        ))
        .unwrap()
        .tls_config(dir.client_tls_for(stem, "127.0.0.1").unwrap())
        .unwrap()
        .connect()
        .await
        .unwrap()
    }

    fn api(&self, id: u64) -> Api {
        Api::parse(
            &format!("http://{}", self.configs[(id - 1) as usize].api),
            None,
            None,
        )
        .unwrap()
    }

    /// Start node `len + 1` with `join` (empty, waiting to be added), the
    /// founding members as its peer addresses, the same timings.
    async fn start_joining(&mut self) -> u64 {
        let id = self.configs.len() as u64 + 1;
        let base = &self.configs[0];
        let cfg = AggregatorConfig {
            id,
            listen: format!("127.0.0.1:{}", free_port()),
            api: format!("127.0.0.1:{}", free_port()),
            join: true,
            data: base.data.with_file_name(format!("n{id}")),
            ..base.clone()
        };
        self.nodes
            .push(Some(start_aggregator(cfg.clone()).await.unwrap()));
        self.configs.push(cfg);
        id
    }

    fn node(&self, id: u64) -> &RunningAggregator {
        self.nodes[(id - 1) as usize]
            .as_ref()
            .expect("node is running")
    }

    /// Write partials for `app`, epochs `epochs`, through node `via`.
    async fn write(&self, via: u64, collector: &str, app: &str, epochs: std::ops::Range<u64>) {
        let mut fleet = pb::fleet_client::FleetClient::new(self.channel(via, "server").await);
        for epoch in epochs {
            let r = fleet
                .submit_partials(pb::PartialBatch {
                    collector_id: collector.into(),
                    epoch,
                    partials: vec![partial(app, 20_000, epoch)],
                })
                .await;
            assert!(r.is_ok(), "write {collector}/{epoch} via node {via}: {r:?}");
        }
    }

    async fn converged_hashes(&self, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let views: Vec<(u64, String)> = self
                .nodes
                .iter()
                .flatten()
                .map(|n| n.node.read(|s| (s.applied_index(), s.state_hash())))
                .collect();
            if views.windows(2).all(|w| w[0] == w[1]) {
                return views[0].1.clone();
            }
            assert!(
                t0.elapsed() < timeout,
                "replicas did not converge: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Node ids from a JSON array, in its order (the API lists them by id).
fn json_ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn partial(app: &str, day: i64, hosts: u64) -> pb::AppDayPartial {
    pb::AppDayPartial {
        app: app.into(),
        day,
        hosts_running: hosts,
        hosts_active: hosts / 2,
        ratio_hist: vec![0, hosts],
        volume_hist: vec![hosts],
        daily_out_hist: vec![],
        services: vec![pb::ServiceCount {
            service: "onedrive".into(),
            hosts: 1,
            upload_hosts: 0,
        }],
        hosts_new: 0,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_fleet_state_over_mtls_and_survive_losing_the_leader() {
    let mut c = cluster(3).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // Partials through a follower (raft forwards to the leader).
    let mut fleet = pb::fleet_client::FleetClient::new(c.channel(follower, "server").await);
    let batch = pb::PartialBatch {
        collector_id: "c1".into(),
        epoch: 1,
        partials: vec![
            partial("winword.exe", 20_000, 40),
            partial("pwsh.exe", 20_000, 7),
        ],
    };
    let r = fleet
        .submit_partials(batch.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(r.index > 1 && !r.duplicate);
    let r2 = fleet.submit_partials(batch).await.unwrap().into_inner();
    assert!(
        r2.duplicate,
        "the same epoch again is reported as a duplicate"
    );
    let hb = fleet
        .heartbeat(pb::CollectorHeartbeat {
            collector_id: "c1".into(),
            endpoint: "https://127.0.0.1:7201".into(),
            unix_ms: 0,
            hosts: 47,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(hb.shard_map_version > 0);
    let alert = serde_json::json!({"id": "a-1", "host": "ws-1", "app": "winword.exe", "severity": "high",
        "window_end": "2024-10-01T10:01:00Z", "score": 9.5, "service": "dropbox", "bytes_out": 1000});
    fleet
        .report_alerts(pb::AlertBatch {
            collector_id: "c1".into(),
            alerts: vec![pb::AlertRecord {
                id: "a-1".into(),
                json: alert.to_string(),
                window_end_us: 5,
            }],
        })
        .await
        .unwrap();

    // An agent certificate may not submit partials.
    let mut as_agent = pb::fleet_client::FleetClient::new(c.channel(leader, "agent-ws-1").await);
    let denied = as_agent
        .submit_partials(pb::PartialBatch {
            collector_id: "evil".into(),
            epoch: 9,
            partials: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // The feed: a full first update with the merged baseline and shard map.
    let mut feed = fleet
        .watch_feed(pb::FeedRequest {
            collector_id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), feed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = first.baseline.expect("baseline in the first feed update");
    let apps: Vec<&str> = b.apps.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(apps, vec!["pwsh.exe", "winword.exe"]);
    assert_eq!(b.apps[1].days[0].hosts_running, 40);
    let sm = first.shard_map.expect("shard map in the first feed update");
    assert_eq!(sm.members[0].collector_id, "c1");

    // Admin API on a follower: linearizable reads, the cluster view.
    let api = c.api(follower);
    let bl = api
        .call("GET", "/api/v1/baselines/winword.exe", None)
        .await
        .unwrap();
    assert_eq!(bl["stale"], false);
    assert_eq!(bl["days"][0]["hosts_running"], 40);
    let al = api
        .call("GET", "/api/v1/alerts?since=0", None)
        .await
        .unwrap();
    assert_eq!(al["alerts"][0]["id"], "a-1");
    let hash = c.converged_hashes(Duration::from_secs(5)).await;
    let cl = api.call("GET", "/api/v1/cluster", None).await.unwrap();
    assert_eq!(cl["leader"], leader);
    let nodes = cl["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes.iter().all(|n| n["state_hash"] == hash.as_str()),
        "{cl}"
    );
    assert!(api
        .call("GET", "/api/v1/baselines/nope.exe", None)
        .await
        .is_err());
    let policy = serde_json::json!({"approved": [], "suppressions": []});
    let put = api
        .call(
            "PUT",
            "/api/v1/policy?comment=test",
            Some(policy.to_string().into_bytes()),
        )
        .await;
    assert!(put.is_ok(), "{put:?}");
    let pol = c
        .api(leader)
        .call("GET", "/api/v1/policy", None)
        .await
        .unwrap();
    assert_eq!(pol["audit"][0]["comment"], "test");
    assert!(pol["audit"][0]["principal"]
        .as_str()
        .unwrap()
        .starts_with("local"));

    // Enough writes for snapshots and log compaction.
    for epoch in 2..60u64 {
        fleet
            .submit_partials(pb::PartialBatch {
                collector_id: "c2".into(),
                epoch,
                partials: vec![partial("excel.exe", 20_000, epoch)],
            })
            .await
            .unwrap();
    }
    let m = c.api(leader).call("GET", "/metrics", None).await;
    // /metrics is text, which `call` returns as a JSON string.
    let text = m.unwrap().as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("outflow_raft_snapshots_taken_total"),
        "{text}"
    );

    // Lose the leader: a new one is elected and writes go on.
    let old = c.nodes[(leader - 1) as usize].take().unwrap();
    assert!(
        old.stop().await,
        "a clean stop ends every server (peer streams, feeds) without its timeout"
    );
    let t0 = Instant::now();
    let new_leader = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover (in-process, graceful stop) took {:?}",
        t0.elapsed()
    );
    let survivor = (1..=3).find(|i| *i != leader).unwrap();
    let mut fleet2 = pb::fleet_client::FleetClient::new(c.channel(survivor, "server").await);
    fleet2
        .submit_partials(pb::PartialBatch {
            collector_id: "c3".into(),
            epoch: 1,
            partials: vec![partial("curl", 20_000, 1)],
        })
        .await
        .unwrap();

    // The old leader comes back and catches up (log or snapshot).
    let cfg = c.configs[(leader - 1) as usize].clone();
    c.nodes[(leader - 1) as usize] = Some(start_aggregator(cfg).await.unwrap());
    c.converged_hashes(Duration::from_secs(15)).await;
    let back = c.nodes[(leader - 1) as usize].as_ref().unwrap();
    assert!(back.node.read(|s| s.app_baseline("curl").len()) == 1);
    for n in c.nodes.into_iter().flatten() {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_node_is_added_catches_up_and_a_removed_follower_stops_counting() {
    let mut c = cluster(3).await;
    let leader = c.leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|i| *i != leader).unwrap();

    // Baseline: partials, a policy, enough entries for snapshots and log
    // compaction (snapshot_interval 20, compact_lag 5), so the new node
    // cannot be served from the log alone.
    c.write(follower, "c1", "winword.exe", 1..40).await;
    let policy = serde_json::json!({"approved": [], "suppressions": []});
    let put = c
        .api(leader)
        .call(
            "PUT",
            "/api/v1/policy?comment=before-join",
            Some(policy.to_string().into_bytes()),
        )
        .await;
    assert!(put.is_ok(), "{put:?}");
    let before = c.converged_hashes(Duration::from_secs(15)).await;
    assert!(
        c.node(leader).node.status().snapshots_taken > 0,
        "the leader compacted its log before the new node joins"
    );

    // Node 4 starts empty: it must not found a group of its own.
    let new = c.start_joining().await;
    assert_eq!(new, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s4 = c.node(new).node.status();
    assert_eq!(s4.leader, 0, "a joining node does not elect itself: {s4:?}");
    assert_ne!(c.node(new).node.read(|s| s.state_hash()), before);

    // Added through a follower's admin API (forwarded to the leader).
    let added = c
        .api(follower)
        .call(
            "POST",
            "/api/v1/nodes",
            Some(
                serde_json::json!({"id": new, "address": c.configs[(new - 1) as usize].listen})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert!(added.is_ok(), "{added:?}");

    // More writes after the join, through the new node itself.
    c.write(new, "c2", "excel.exe", 1..10).await;
    let after_join = c.converged_hashes(Duration::from_secs(30)).await;
    assert_ne!(after_join, before);
    let s4 = c.node(new).node.status();
    assert!(
        s4.snapshots_installed > 0,
        "the new node started from a snapshot: {s4:?}"
    );
    assert_eq!(s4.voters, vec![1, 2, 3, 4], "{s4:?}");
    let bl = c
        .api(new)
        .call("GET", "/api/v1/baselines/winword.exe", None)
        .await
        .unwrap();
    assert_eq!(bl["stale"], false, "{bl}");
    assert_eq!(bl["days"][0]["hosts_running"], 39, "{bl}");
    let pol = c
        .api(new)
        .call("GET", "/api/v1/policy", None)
        .await
        .unwrap();
    assert_eq!(pol["audit"][0]["comment"], "before-join", "{pol}");
    let cl = c
        .api(new)
        .call("GET", "/api/v1/cluster", None)
        .await
        .unwrap();
    assert_eq!(json_ids(&cl["voters"]), vec![1, 2, 3, 4], "{cl}");
    let nodes = cl["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{cl}");
    assert!(
        nodes.iter().all(|n| n["state_hash"] == after_join.as_str()),
        "{cl}"
    );

    // Remove a founding follower through the leader's admin API.
    let leader = c.leader(Duration::from_secs(10)).await;
    let gone = (1..=3).find(|i| *i != leader).unwrap();
    let removed = c
        .api(leader)
        .call("DELETE", &format!("/api/v1/nodes/{gone}"), None)
        .await;
    assert!(removed.is_ok(), "{removed:?}");
    // Wait on the leader's view: the removed node itself may never learn
    // that the entry removing it committed (the leader stops talking to it).
    let t0 = Instant::now();
    while c.node(leader).node.status().voters.contains(&gone) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the leader never applied the removal of node {gone}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The removed node keeps running (as an operator would leave it until
    // stopped) but is out of the comparison: it no longer applies entries.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = c.nodes[(gone - 1) as usize].take().unwrap();
    let out_applied = out.node.status().applied_index;

    let others: Vec<u64> = (1..=4).filter(|i| *i != gone).collect();
    c.write(others[0], "c3", "curl", 1..10).await;
    let after_remove = c.converged_hashes(Duration::from_secs(15)).await;
    assert_ne!(after_remove, after_join);
    let leader = c.leader(Duration::from_secs(10)).await;
    let cl = c
        .api(leader)
        .call("GET", "/api/v1/cluster", None)
        .await
        .unwrap();
    assert_eq!(json_ids(&cl["voters"]), others, "{cl}");
    let nodes = cl["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "the removed node is not listed: {cl}");
    assert!(
        nodes
            .iter()
            .all(|n| n["state_hash"] == after_remove.as_str() && n["id"] != gone),
        "{cl}"
    );
    assert_eq!(
        out.node.status().applied_index,
        out_applied,
        "the removed node applies nothing more"
    );

    // The removed node no longer counts towards the quorum: with it and one
    // more follower stopped, 2 of the 3 remaining voters still commit (2 of
    // 4 would not: the writes would time out).
    assert!(out.stop().await);
    let stopped = *others.iter().find(|i| **i != leader).unwrap();
    let down = c.nodes[(stopped - 1) as usize].take().unwrap();
    assert!(down.stop().await);
    c.write(leader, "c4", "ssh", 1..5).await;
    c.converged_hashes(Duration::from_secs(15)).await;
    assert_eq!(c.node(leader).node.read(|s| s.app_baseline("ssh").len()), 1);

    for n in c.nodes.into_iter().flatten() {
        n.stop().await;
    }
}
