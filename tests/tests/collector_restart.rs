//! A collector process killed with SIGKILL mid-stream and restarted on the
//! same data directory: no batch lost, none counted twice, no alert
//! duplicated. The collector runs as a child process (this test binary
//! re-executed in "child mode"), so the kill is a real one.

mod collector_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use collector_common::*;
use outflow_collector::shipper::{connect, ship};
use outflow_collector::CollectorConfig;
use outflow_pki::CertDir;

const CHILD_ENV: &str = "OUTFLOW_TEST_COLLECTOR_CHILD_CONFIG";

/// Child mode: run a collector from the config named by the environment,
/// write its addresses next to its data, and serve until killed.
#[test]
#[ignore = "helper: runs only as the child process of collector_killed_and_restarted"]
fn collector_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let text = std::fs::read_to_string(&path).expect("child config");
    let cfg: CollectorConfig = toml::from_str(&text).expect("child config parses");
    let addr_file = cfg.data.with_extension("addr");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let c = outflow_collector::start(cfg, None)
            .await
            .expect("child collector starts");
        let tmp = addr_file.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}", c.ingest_addr, c.api_addr)).unwrap();
        std::fs::rename(&tmp, &addr_file).unwrap();
        std::future::pending::<()>().await;
    });
}

struct Child {
    proc: std::process::Child,
    ingest: String,
    api: std::net::SocketAddr,
}

async fn spawn_child(config_path: &Path, cfg: &CollectorConfig) -> Child {
    let addr_file = cfg.data.with_extension("addr");
    let _ = std::fs::remove_file(&addr_file);
    let proc = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["collector_child", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ENV, config_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child collector");
    wait_for("the child collector", Duration::from_secs(60), || {
        addr_file.exists()
    })
    .await;
    let text = std::fs::read_to_string(&addr_file).unwrap();
    let (ingest, api) = text.split_once(' ').unwrap();
    Child {
        proc,
        ingest: format!("https://{ingest}"),
        api: api.parse().unwrap(),
    }
}

async fn child_metric(api: std::net::SocketAddr, line: &str) -> f64 {
    let (_, text) = http_get(api, "/metrics").await;
    metric(&text, line).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_and_restarted_loses_nothing_and_counts_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(tmp.path(), &[]);
    let receiver = Receiver::default();
    let otlp = receiver.start().await;
    let cfg = config(tmp.path(), &certs, Some(format!("http://{otlp}")));
    let config_path: PathBuf = tmp.path().join("collector.toml");
    std::fs::write(&config_path, toml::to_string(&cfg).unwrap()).unwrap();
    let alerts_file = cfg.alerts_out.clone().unwrap();

    let (events, _) = fleet_events(40, 23);
    let batches = batches(&events, 300);
    let total = event_count(&batches);
    let tls = CertDir::new(&certs).client_tls("importer").unwrap();

    // First life: ship in chunks; kill -9 while a chunk is in flight.
    let mut child = spawn_child(&config_path, &cfg).await;
    let chunk = 100;
    let kill_at = batches.len() * 2 / 5;
    let mut next = 0; // first batch not known to be acknowledged
    let mut client = connect(&child.ingest, tls.clone()).await.unwrap();
    while next < kill_at {
        let end = (next + chunk).min(batches.len());
        let out = ship(&mut client, batches[next..end].to_vec())
            .await
            .unwrap();
        assert_eq!(out.acked.len(), end - next);
        next = end;
    }
    let end = (next + chunk * 3).min(batches.len());
    let inflight = {
        let mut c = client.clone();
        let b = batches[next..end].to_vec();
        tokio::spawn(async move { ship(&mut c, b).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    child.proc.kill().expect("SIGKILL the collector");
    let _ = child.proc.wait();
    let r = inflight.await.unwrap();
    assert!(r.is_err() || r.unwrap().acked.len() <= end - next);
    eprintln!(
        "killed after {next} of {} batches acknowledged",
        batches.len()
    );

    // Second life: the client resends everything not acknowledged.
    let mut child = spawn_child(&config_path, &cfg).await;
    let mut client = connect(&child.ingest, tls.clone()).await.unwrap();
    while next < batches.len() {
        let end = (next + chunk).min(batches.len());
        let out = ship(&mut client, batches[next..end].to_vec())
            .await
            .unwrap();
        assert_eq!(out.acked.len(), end - next);
        next = end;
    }
    let engine_line = "outflow_collector_engine_events_total{collector=\"c1\"}";
    let start = std::time::Instant::now();
    loop {
        let n = child_metric(child.api, engine_line).await;
        if n == total as f64 {
            break;
        }
        assert!(
            n < total as f64,
            "engine counted {n} events of {total}: some twice"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "engine stuck at {n}/{total}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Quiet for the windows to close, then every alert out of the outbox.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let backlog = "outflow_collector_outbox_backlog{collector=\"c1\",sink=\"otlp\"}";
    let file_backlog = "outflow_collector_outbox_backlog{collector=\"c1\",sink=\"file\"}";
    let start = std::time::Instant::now();
    while child_metric(child.api, backlog).await != 0.0
        || child_metric(child.api, file_backlog).await != 0.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "outbox not drained"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.proc.kill().unwrap();
    let _ = child.proc.wait();

    // The durable log holds every (host, sequence) exactly once.
    let store = outflow_collector::store::Store::open(&cfg.data).unwrap();
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut stored_events = 0u64;
    for b in store.iter_log() {
        let b = b.unwrap();
        stored_events += b.batch.events.len() as u64;
        *seen
            .entry((b.batch.host_id.clone(), b.batch.sequence))
            .or_default() += 1;
    }
    assert_eq!(seen.len(), batches.len(), "no batch lost");
    assert!(seen.values().all(|n| *n == 1), "no batch stored twice");
    assert_eq!(stored_events, total);

    let ids = receiver.ids();
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert!(!unique.is_empty(), "the fleet raised alerts");
    assert_eq!(
        unique.len(),
        ids.len(),
        "no alert delivered twice over OTLP"
    );
    let file = file_ids(&alerts_file);
    let file_unique: BTreeSet<_> = file.iter().cloned().collect();
    assert_eq!(file_unique.len(), file.len(), "no alert written twice");
    assert_eq!(file_unique, unique);
    eprintln!(
        "restart: {} batches, {} events, {} alerts, all once",
        batches.len(),
        total,
        unique.len()
    );
}
